//! One test per failure action: each builds the failure for real in its own
//! network namespace on the running kernel, then asserts the decoded event.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::IpAddr,
    time::Duration,
};

use common::{connect_from, connect_with_syn_retries, listener, sa, start_connect, Daemon, Netns};
use observer_common::Action;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn reset_sent_and_received_when_a_socket_is_closed_with_linger_zero() {
    let daemon = Daemon::start();
    let ns = Netns::new("rst");
    ns.run(|| {
        let l = listener(sa("127.0.0.1", 8081), 16);
        let mut c = connect_from(sa("127.0.0.1", 43001), sa("127.0.0.1", 8081), Duration::from_secs(2)).unwrap();
        let (server, _) = l.accept().unwrap();
        // SO_LINGER 0: close() aborts with an RST instead of a FIN.
        server.set_linger(Some(Duration::ZERO)).unwrap();
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 1];
        let err = c.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        let _ = c.write(b"x");
    });
    let sent =
        daemon.expect_event("reset_sent", |e| e.observer.netns == ns.inode() && e.event.action == Action::ResetSent);
    // The client initiated: it is the source, the server the destination.
    assert_eq!((sent.source.ip, sent.source.port), (ip("127.0.0.1"), 43001));
    assert_eq!((sent.destination.ip, sent.destination.port), (ip("127.0.0.1"), 8081));
    // tcp_disconnect() moves the socket to CLOSE before it sends the abort RST.
    let state = sent.observer.tcp_state.as_deref();
    assert!(matches!(state, Some("TCP_CLOSE" | "TCP_ESTABLISHED")), "{state:?}");
    let reason = sent.observer.reason.clone().unwrap();
    assert!(reason.starts_with("TCP_"), "an RST reason from the kernel's table, got {reason}");
    eprintln!("reset_sent reason on this kernel: {reason}");

    let received = daemon
        .expect_event("reset_received", |e| e.observer.netns == ns.inode() && e.event.action == Action::ResetReceived);
    // The client opened the connection: it is the source, and its process is known.
    assert_eq!(received.observer.direction, "outbound");
    assert_eq!((received.source.ip, received.source.port), (ip("127.0.0.1"), 43001));
    assert_eq!(received.destination.port, 8081);
    assert_eq!(received.network.kind, "ipv4");
    assert_eq!(received.process.expect("client process").pid, std::process::id());
    assert_eq!(sent.observer.direction, "inbound");
    daemon.stop();
}

#[test]
fn listen_overflow_at_the_syn_stage_names_the_listener_queue() {
    let daemon = Daemon::start();
    let ns = Netns::new("lov");
    let clients = ns.run(|| {
        // backlog 1: the accept queue is full once it holds 2 connections.
        let l = listener(sa("::1", 8082), 1);
        let clients: Vec<_> = (0..4u16).map(|i| start_connect(sa("::1", 44001 + i), sa("::1", 8082))).collect();
        std::thread::sleep(Duration::from_millis(300));
        (l, clients)
    });
    let e = daemon.expect_event("listen_overflow", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::ListenOverflow
    });
    assert_eq!(e.destination.port, 8082);
    assert_eq!(e.destination.ip, ip("::1"));
    assert!((44001..44005).contains(&e.source.port), "{e:?}");
    assert_eq!(e.network.kind, "ipv6");
    assert_eq!(e.observer.stage.as_deref(), Some("syn"));
    let q = e.observer.listener.clone().expect("listener queue");
    assert_eq!(q.backlog, 1);
    assert_eq!(q.queue_len, 2);
    drop(clients);
    daemon.stop();
}

/// The client's own firewall drops SYN-ACKs: it never sends the final ACK.
const DROP_SYNACK: &str = "table inet client {
  chain input {
    type filter hook input priority 0;
    tcp flags & (syn | ack) == syn | ack drop
  }
}
";

/// A server-side rule that drops SYNs to `port`.
fn drop_syns_to(port: u16) -> String {
    format!("table inet fw {{\n  chain input {{\n    type filter hook input priority 0;\n    tcp dport {port} tcp flags syn drop\n  }}\n}}\n")
}

#[test]
fn syn_queue_overflow_when_final_acks_never_arrive() {
    let daemon = Daemon::start();
    let ns = Netns::new("synq");
    ns.nft(DROP_SYNACK);
    let keep = ns.run(|| {
        let l = listener(sa("127.0.0.1", 8083), 1);
        let clients: Vec<_> =
            (0..4u16).map(|i| start_connect(sa("127.0.0.1", 45001 + i), sa("127.0.0.1", 8083))).collect();
        std::thread::sleep(Duration::from_millis(300));
        (l, clients)
    });
    let e = daemon.expect_event("syn_queue_overflow", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::SynQueueOverflow
    });
    assert_eq!(e.destination.port, 8083);
    assert!((45001..45005).contains(&e.source.port), "{e:?}");
    let q = e.observer.listener.clone().expect("listener queue");
    assert_eq!(q.backlog, 1);
    assert_eq!(q.queue_len, 2, "two request sockets already wait");
    drop(keep);
    daemon.stop();
}

#[test]
fn synack_retransmit_when_the_clients_firewall_drops_the_synack() {
    let daemon = Daemon::start();
    let ns = Netns::new("synack");
    ns.nft(DROP_SYNACK);
    let keep = ns.run(|| {
        let l = listener(sa("::1", 8084), 128);
        let c = start_connect(sa("::1", 46001), sa("::1", 8084));
        (l, c)
    });
    // The first retransmission follows the initial 1 s RTO.
    let e = daemon.expect_event("synack_retransmit", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::SynackRetransmit
    });
    assert_eq!((e.source.ip, e.source.port), (ip("::1"), 46001));
    assert_eq!((e.destination.ip, e.destination.port), (ip("::1"), 8084));
    assert_eq!(e.network.kind, "ipv6");
    drop(keep);
    daemon.stop();
}

#[test]
fn firewall_drop_of_an_inbound_syn() {
    let daemon = Daemon::start();
    let ns = Netns::new("fwdrop");
    ns.nft(&drop_syns_to(8085));
    let r = ns.run(|| {
        let _l = listener(sa("127.0.0.1", 8085), 16);
        connect_from(sa("127.0.0.1", 47001), sa("127.0.0.1", 8085), Duration::from_millis(500)).err().map(|e| e.kind())
    });
    assert_eq!(r, Some(ErrorKind::TimedOut));
    let e = daemon
        .expect_event("firewall_drop", |e| e.observer.netns == ns.inode() && e.event.action == Action::FirewallDrop);
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 47001));
    assert_eq!((e.destination.ip, e.destination.port), (ip("127.0.0.1"), 8085));
    assert_eq!(e.observer.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(e.observer.direction, "inbound");
    daemon.stop();
}

#[test]
fn connect_failed_refused_names_errno_and_process() {
    let daemon = Daemon::start();
    let ns = Netns::new("cfref");
    let r = ns.run(|| {
        connect_from(sa("127.0.0.1", 48001), sa("127.0.0.1", 8086), Duration::from_secs(2)).err().map(|e| e.kind())
    });
    assert_eq!(r, Some(ErrorKind::ConnectionRefused));
    let e = daemon
        .expect_event("connect_failed", |e| e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed);
    assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(e.observer.direction, "outbound");
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 48001));
    assert_eq!(e.destination.port, 8086);
    let p = e.process.expect("connecting process");
    assert_eq!(p.pid, std::process::id());
    assert!(!p.name.is_empty());
    daemon.stop();
}

#[test]
fn connect_failed_timeout_when_syns_are_dropped() {
    let daemon = Daemon::start();
    let ns = Netns::new("cfto");
    ns.nft(&drop_syns_to(8087));
    let r = ns.run(|| connect_with_syn_retries(sa("::1", 48002), sa("::1", 8087), 1).err().map(|e| e.kind()));
    assert_eq!(r, Some(ErrorKind::TimedOut));
    let e = daemon
        .expect_event("connect_failed", |e| e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed);
    assert_eq!(e.observer.reason.as_deref(), Some("ETIMEDOUT"));
    assert_eq!((e.source.ip, e.source.port), (ip("::1"), 48002));
    assert_eq!(e.destination.port, 8087);
    assert_eq!(e.process.expect("process").pid, std::process::id());
    daemon.stop();
}

/// A server-side rule that rejects SYNs to `port` with `how`.
fn reject_syns_to(port: u16, how: &str) -> String {
    format!("table inet fw {{\n  chain input {{\n    type filter hook input priority 0;\n    tcp dport {port} tcp flags syn reject with {how}\n  }}\n}}\n")
}

#[test]
fn firewall_reject_with_tcp_reset_is_not_a_refused_connection() {
    let daemon = Daemon::start();
    let ns = Netns::new("fwrej");
    ns.nft(&reject_syns_to(8091, "tcp reset"));
    let r = ns.run(|| {
        let _l = listener(sa("127.0.0.1", 8091), 16);
        connect_from(sa("127.0.0.1", 47101), sa("127.0.0.1", 8091), Duration::from_secs(2)).err().map(|e| e.kind())
    });
    assert_eq!(r, Some(ErrorKind::ConnectionRefused));
    let e = daemon.expect_event("firewall_reject", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::FirewallReject
    });
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 47101));
    assert_eq!((e.destination.ip, e.destination.port), (ip("127.0.0.1"), 8091));
    assert_eq!(e.observer.reason.as_deref(), Some("NETFILTER_DROP"));
    let ours = daemon.events_in(ns.inode(), Duration::from_millis(300));
    assert!(
        ours.iter().all(|e| !matches!(e.event.action, Action::Refused | Action::FirewallDrop)),
        "a reject is neither a refused connection nor a silent drop: {ours:#?}"
    );
    daemon.stop();
}

#[test]
fn firewall_reject_with_icmp_host_unreachable() {
    let daemon = Daemon::start();
    let ns = Netns::new("fwicmp");
    ns.nft(&reject_syns_to(8092, "icmpx type host-unreachable"));
    let r = ns.run(|| {
        connect_from(sa("127.0.0.1", 47201), sa("127.0.0.1", 8092), Duration::from_secs(3))
            .err()
            .map(|e| e.raw_os_error())
    });
    assert_eq!(r, Some(Some(libc::EHOSTUNREACH)));
    let rej = daemon.expect_event("firewall_reject", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::FirewallReject
    });
    assert_eq!((rej.source.port, rej.destination.port), (47201, 8092));
    assert_eq!(rej.network.kind, "ipv4");
    // Over IPv4 loopback the ICMP is handled while connect() still holds the
    // socket, so the error is connect()'s return value and sk_err stays 0:
    // connect_failed does not see that synchronous path yet (known gap,
    // needs a sys_exit_connect hook). The IPv6 test below sees it.
    daemon.stop();
}

#[test]
fn connect_failed_enetunreach_from_an_icmp_network_unreachable_ipv6() {
    let daemon = Daemon::start();
    let ns = Netns::new("netunr");
    ns.nft(&reject_syns_to(8093, "icmpx type no-route"));
    let r = ns.run(|| {
        connect_from(sa("::1", 47301), sa("::1", 8093), Duration::from_secs(3)).err().map(|e| e.raw_os_error())
    });
    assert_eq!(r, Some(Some(libc::ENETUNREACH)));
    let cf = daemon
        .expect_event("connect_failed", |e| e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed);
    assert_eq!(cf.observer.reason.as_deref(), Some("ENETUNREACH"));
    assert_eq!(cf.network.kind, "ipv6");
    let rej = daemon.expect_event("firewall_reject v6", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::FirewallReject
    });
    assert_eq!((rej.source.port, rej.destination.port), (47301, 8093));
    daemon.stop();
}
