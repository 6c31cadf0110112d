//! One test per failure action: each builds the failure for real in its own
//! network namespace on the running kernel, then asserts the decoded event.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use observer::event::{Direction, Family, Stage};

use std::{
    io::{ErrorKind, Read, Write},
    net::IpAddr,
    time::Duration,
};

use common::{
    connect_blocking, connect_from, connect_with_syn_retries, listener, sa, start_connect, thread_comm, Daemon, Netns,
};
use observer::event::FailureEvent;
use observer_common::Action;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every connect_failed event of a namespace, once late ones had time to arrive.
fn connect_failures(daemon: &Daemon, ns: &Netns) -> Vec<FailureEvent> {
    let settled = daemon.events_in(ns.inode(), Duration::from_millis(500));
    settled.into_iter().filter(|e| e.event.action == Action::ConnectFailed).collect()
}

/// Asserts that a namespace saw exactly one connect_failed and returns it:
/// waits for the first (an emulated VM under load can take seconds), then
/// gives a second one time to show up.
fn exactly_one_connect_failure(daemon: &Daemon, ns: &Netns) -> FailureEvent {
    let netns = ns.inode();
    daemon.expect_event("connect_failed", |e| e.observer.netns == netns && e.event.action == Action::ConnectFailed);
    let mut all = connect_failures(daemon, ns);
    assert_eq!(all.len(), 1, "exactly one connect_failed per failed connect(): {all:#?}");
    all.remove(0)
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
    // The RST reason exists where the kernel's tcp_send_reset names one
    // (6.10+); older kernels give none, and the record says none.
    let names_reasons = std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
        .map(|f| f.contains("field:enum sk_rst_reason reason"))
        .unwrap_or(false);
    match sent.observer.reason.as_deref() {
        Some(reason) => {
            assert!(names_reasons, "a reason ({reason}) where the kernel gives none");
            assert!(reason.starts_with("TCP_"), "an RST reason from the kernel's table, got {reason}");
        }
        None => assert!(!names_reasons, "the kernel names RST reasons, the record has none"),
    }

    let received = daemon
        .expect_event("reset_received", |e| e.observer.netns == ns.inode() && e.event.action == Action::ResetReceived);
    // The client opened the connection: it is the source, and its process is known.
    assert_eq!(received.observer.direction, Direction::Outbound);
    assert_eq!((received.source.ip, received.source.port), (ip("127.0.0.1"), 43001));
    assert_eq!(received.destination.port, 8081);
    assert_eq!(received.network.kind, Family::Ipv4);
    assert_eq!(received.process.expect("client process").pid, std::process::id());
    assert_eq!(sent.observer.direction, Direction::Inbound);
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
    assert_eq!(e.network.kind, Family::Ipv6);
    assert_eq!(e.observer.stage, Some(Stage::Syn));
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
    assert_eq!(e.network.kind, Family::Ipv6);
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
    assert_eq!(e.observer.direction, Direction::Inbound);
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
    assert_eq!(e.observer.direction, Direction::Outbound);
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 48001));
    assert_eq!(e.destination.port, 8086);
    let p = e.process.expect("connecting process");
    assert_eq!(p.pid, std::process::id());
    assert!(!p.name.is_empty());
    exactly_one_connect_failure(&daemon, &ns);
    daemon.stop();
}

/// A blocking connect() gets the RST's ECONNREFUSED as its own return value:
/// set_state and sys_exit_connect both see the failure, one reports it.
#[test]
fn connect_failed_refused_blocking_is_reported_once() {
    let daemon = Daemon::start();
    let ns = Netns::new("cfrefb");
    let r = ns.run(|| connect_blocking(sa("::1", 48011), sa("::1", 8097)).err().and_then(|e| e.raw_os_error()));
    assert_eq!(r, Some(libc::ECONNREFUSED));
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"));
    assert_eq!((e.source.ip, e.source.port), (ip("::1"), 48011));
    assert_eq!((e.destination.ip, e.destination.port), (ip("::1"), 8097));
    assert_eq!(e.process.expect("process").pid, std::process::id());
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
    // The blocking connect() returned ETIMEDOUT too: still one event.
    exactly_one_connect_failure(&daemon, &ns);
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
    assert_eq!(rej.network.kind, Family::Ipv4);
    // The matching connect_failed: see the connect_failed_ehostunreach tests.
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
    assert_eq!(cf.network.kind, Family::Ipv6);
    let rej = daemon.expect_event("firewall_reject v6", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::FirewallReject
    });
    assert_eq!((rej.source.port, rej.destination.port), (47301, 8093));
    daemon.stop();
}

/// A blocking connect() through an ICMP host-unreachable reject on IPv4
/// loopback. The first ICMP arrives while connect() holds the socket (it is
/// only a soft error then); the SYN retransmitted after 1 s draws a second
/// one that fails the socket with sk_err, and connect() returns it.
#[test]
fn connect_failed_ehostunreach_blocking_ipv4() {
    let daemon = Daemon::start();
    let ns = Netns::new("cfhub");
    ns.nft(&reject_syns_to(8094, "icmp type host-unreachable"));
    let (r, comm) = ns.run(|| {
        let r = connect_blocking(sa("127.0.0.1", 48101), sa("127.0.0.1", 8094)).err().and_then(|e| e.raw_os_error());
        (r, thread_comm())
    });
    assert_eq!(r, Some(libc::EHOSTUNREACH));
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.observer.reason.as_deref(), Some("EHOSTUNREACH"));
    assert_eq!(e.observer.netns, ns.inode());
    assert_eq!(e.observer.direction, Direction::Outbound);
    assert_eq!(e.network.kind, Family::Ipv4);
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 48101));
    assert_eq!((e.destination.ip, e.destination.port), (ip("127.0.0.1"), 8094));
    let p = e.process.expect("connecting process");
    assert_eq!((p.pid, p.name), (std::process::id(), comm));
    daemon.stop();
}

/// The same reject with a non-blocking connect() and poll, as event loops
/// do: connect() returns EINPROGRESS, the ICMP handled while it still held
/// the socket is queued and wakes poll at once, SO_ERROR returns
/// EHOSTUNREACH and the application closes a socket whose sk_err is 0.
#[test]
fn connect_failed_ehostunreach_when_the_application_reads_so_error() {
    let daemon = Daemon::start();
    let ns = Netns::new("cfhunb");
    ns.nft(&reject_syns_to(8095, "icmp type host-unreachable"));
    let (r, comm) = ns.run(|| {
        let r = connect_from(sa("127.0.0.1", 48102), sa("127.0.0.1", 8095), Duration::from_secs(3))
            .err()
            .and_then(|e| e.raw_os_error());
        (r, thread_comm())
    });
    assert_eq!(r, Some(libc::EHOSTUNREACH));
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.observer.reason.as_deref(), Some("EHOSTUNREACH"));
    assert_eq!(e.observer.netns, ns.inode());
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 48102));
    assert_eq!((e.destination.ip, e.destination.port), (ip("127.0.0.1"), 8095));
    let p = e.process.expect("connecting process");
    assert_eq!((p.pid, p.name), (std::process::id(), comm));
    daemon.stop();
}

/// A namespace with only loopback has no route to 203.0.113.1: connect()
/// fails in the route lookup, before the socket ever reaches SYN_SENT.
#[test]
fn connect_failed_enetunreach_without_a_route_ipv4() {
    let daemon = Daemon::start();
    if let Some(why) = daemon.hook_unavailable("tcp_connect") {
        eprintln!(
            "skipped: only hook tcp_connect sees connect() failing inside the call, and here it is unavailable: {why}"
        );
        return;
    }
    let ns = Netns::new("cfnoroute");
    let (r, comm) = ns.run(|| {
        let r = connect_blocking(sa("0.0.0.0", 48103), sa("203.0.113.1", 80)).err().and_then(|e| e.raw_os_error());
        (r, thread_comm())
    });
    assert_eq!(r, Some(libc::ENETUNREACH));
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.observer.reason.as_deref(), Some("ENETUNREACH"));
    assert_eq!(e.observer.netns, ns.inode());
    assert_eq!(e.observer.direction, Direction::Outbound);
    assert_eq!(e.network.kind, Family::Ipv4);
    assert_eq!((e.destination.ip, e.destination.port), (ip("203.0.113.1"), 80));
    // The socket was bound to a port but never got a source address.
    assert_eq!((e.source.ip, e.source.port), (ip("0.0.0.0"), 48103));
    let p = e.process.expect("connecting process");
    assert_eq!((p.pid, p.name), (std::process::id(), comm));
    daemon.stop();
}

#[test]
fn connect_failed_enetunreach_without_a_route_ipv6() {
    let daemon = Daemon::start();
    if let Some(why) = daemon.hook_unavailable("tcp_connect") {
        eprintln!(
            "skipped: only hook tcp_connect sees connect() failing inside the call, and here it is unavailable: {why}"
        );
        return;
    }
    let ns = Netns::new("cfnoroute6");
    let r = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        s.connect(&sa("2001:db8::1", 443).into()).err().and_then(|e| e.raw_os_error())
    });
    assert_eq!(r, Some(libc::ENETUNREACH));
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.observer.reason.as_deref(), Some("ENETUNREACH"));
    assert_eq!(e.network.kind, Family::Ipv6);
    assert_eq!((e.destination.ip, e.destination.port), (ip("2001:db8::1"), 443));
    // Never bound: the kernel knows no source.
    assert_eq!((e.source.ip, e.source.port), (ip("::"), 0));
    assert_eq!(e.process.expect("process").pid, std::process::id());
    daemon.stop();
}

/// UDP connect() fails the same way without a route, but it is not a TCP
/// connection failure. A TCP connect afterwards shows the hook is live.
#[test]
fn udp_connect_without_a_route_is_not_reported() {
    let daemon = Daemon::start();
    if let Some(why) = daemon.hook_unavailable("tcp_connect") {
        eprintln!(
            "skipped: only hook tcp_connect sees connect() failing inside the call, and here it is unavailable: {why}"
        );
        return;
    }
    let ns = Netns::new("cfudp");
    let (udp, tcp) = ns.run(|| {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let udp = u.connect("203.0.113.1:53").err().and_then(|e| e.raw_os_error());
        let tcp = connect_blocking(sa("0.0.0.0", 48104), sa("203.0.113.2", 80)).err().and_then(|e| e.raw_os_error());
        (udp, tcp)
    });
    assert_eq!((udp, tcp), (Some(libc::ENETUNREACH), Some(libc::ENETUNREACH)));
    daemon.expect_event("tcp connect_failed", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed
    });
    let e = exactly_one_connect_failure(&daemon, &ns);
    assert_eq!(e.destination.ip, ip("203.0.113.2"), "the UDP connect must not be reported: {e:#?}");
    daemon.stop();
}

/// Drops the pure ACKs the client sends from `port`: its handshake's final
/// ACK never leaves, so the server keeps that connection in SYN_RECV.
fn hold_acks_from(port: u16) -> String {
    format!("table inet client {{\n  chain output {{\n    type filter hook output priority 0;\n    tcp sport {port} tcp flags == ack drop\n  }}\n}}\n")
}

/// The accept queue is full when a final ACK arrives. Connection C sends
/// its SYN first (the queues are empty) but its final ACK is held by the
/// client's firewall; A and B then complete and fill the accept queue
/// (backlog 1 holds 2). Once the rule is gone, the server's SYN-ACK
/// retransmission (after ~1 s) draws C's ACK, which finds the queue full:
/// kfree_skb with TCP_LISTEN_OVERFLOW, once per retransmission.
#[test]
fn listen_overflow_at_the_final_ack_names_the_listener_queue() {
    let daemon = Daemon::start();
    let ns = Netns::new("lovack");
    ns.nft(&hold_acks_from(45103));
    let keep = ns.run(|| {
        let l = listener(sa("127.0.0.1", 8096), 1);
        let c = start_connect(sa("127.0.0.1", 45103), sa("127.0.0.1", 8096));
        std::thread::sleep(Duration::from_millis(100));
        let a = start_connect(sa("127.0.0.1", 45101), sa("127.0.0.1", 8096));
        let b = start_connect(sa("127.0.0.1", 45102), sa("127.0.0.1", 8096));
        std::thread::sleep(Duration::from_millis(200));
        (l, c, a, b)
    });
    ns.exec(&["nft", "delete", "table", "inet", "client"]);
    let e = daemon.expect_event("listen_overflow at the final ACK", |e| {
        e.observer.netns == ns.inode()
            && e.event.action == Action::ListenOverflow
            && e.observer.stage == Some(Stage::Ack)
    });
    assert_eq!(e.observer.reason.as_deref(), Some("TCP_LISTEN_OVERFLOW"));
    assert_eq!(e.observer.direction, Direction::Inbound);
    assert_eq!((e.source.ip, e.source.port), (ip("127.0.0.1"), 45103));
    assert_eq!((e.destination.ip, e.destination.port), (ip("127.0.0.1"), 8096));
    assert_eq!(e.network.kind, Family::Ipv4);
    let q = e.observer.listener.clone().expect("listener queue");
    assert_eq!((q.backlog, q.queue_len), (1, 2));
    // A's and B's SYNs found room: no SYN-stage overflow here.
    let ours = daemon.events_in(ns.inode(), Duration::from_millis(300));
    assert!(
        ours.iter().all(|e| e.event.action != Action::ListenOverflow || e.observer.stage == Some(Stage::Ack)),
        "{ours:#?}"
    );
    drop(keep);
    daemon.stop();
}
