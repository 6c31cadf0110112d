//! A SYN to a port where nothing listens becomes one `refused` event with
//! both endpoints, the namespace and the kernel's reason.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use observer::event::{Direction, Family, Transport};

use std::{io::ErrorKind, time::Duration};

use common::{connect_from, sa, Daemon, Netns};
use observer_common::Action;

#[test]
fn refused_ipv4_and_ipv6_are_reported_exactly_per_namespace() {
    let daemon = Daemon::start();
    let ns = Netns::new("refused");
    let other = Netns::new("other");

    // The test's namespace: one refused connection per family, from a known port.
    let errors = ns.run(|| {
        [
            connect_from(sa("127.0.0.1", 41001), sa("127.0.0.1", 8080), Duration::from_secs(2)),
            connect_from(sa("::1", 41002), sa("::1", 8080), Duration::from_secs(2)),
        ]
        .map(|r| r.err().map(|e| e.kind()))
    });
    assert_eq!(errors, [Some(ErrorKind::ConnectionRefused), Some(ErrorKind::ConnectionRefused)]);
    // Another namespace, same port: must not be counted as ours.
    let other_err = other.run(|| {
        connect_from(sa("127.0.0.1", 41003), sa("127.0.0.1", 8080), Duration::from_secs(2)).err().map(|e| e.kind())
    });
    assert_eq!(other_err, Some(ErrorKind::ConnectionRefused));

    let v4 = daemon.expect_event("refused v4", |e| e.observer.netns == ns.inode() && e.source.port == 41001);
    assert_eq!(v4.event.action, Action::Refused);
    assert_eq!(v4.event.dataset, observer::event::Dataset::Failure);
    assert_eq!(v4.event.count, 1);
    assert_eq!(v4.source.ip, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(v4.destination.ip, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(v4.destination.port, 8080);
    assert_eq!(v4.network.transport, Transport::Tcp);
    assert_eq!(v4.network.kind, Family::Ipv4);
    assert_eq!(v4.observer.reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(v4.observer.direction, Direction::Inbound);

    let v6 = daemon.expect_event("refused v6", |e| e.observer.netns == ns.inode() && e.source.port == 41002);
    assert_eq!(v6.event.action, Action::Refused);
    assert_eq!(v6.source.ip, "::1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(v6.destination.ip, "::1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(v6.destination.port, 8080);
    assert_eq!(v6.network.kind, Family::Ipv6);
    assert_eq!(v6.observer.reason.as_deref(), Some("NO_SOCKET"));

    let theirs = daemon.expect_event("refused in the other namespace", |e| e.source.port == 41003);
    assert_eq!(theirs.observer.netns, other.inode());
    assert_ne!(other.inode(), ns.inode());

    // Exactly the two of this namespace: the other one is not counted here.
    // (The client side of the same connects also yields reset_received and
    // connect_failed; those are other tests' business.)
    let ours: Vec<_> = daemon
        .events_in(ns.inode(), Duration::from_millis(300))
        .into_iter()
        .filter(|e| e.event.action == Action::Refused)
        .collect();
    assert_eq!(ours.len(), 2, "{ours:#?}");
    assert_eq!(ours.iter().map(|e| e.event.count).sum::<u64>(), 2);

    let (stderr, _) = daemon.stop();
    assert!(stderr.contains("stopped:"), "clean shutdown expected:\n{stderr}");
}

#[test]
fn the_log_is_complete_after_sigterm() {
    // Failures right before SIGTERM are drained and flushed, not lost.
    let daemon = Daemon::start();
    let ns = Netns::new("flush");
    ns.run(|| {
        for port in 42000..42050u16 {
            let _ = connect_from(sa("127.0.0.1", port), sa("127.0.0.1", 9), Duration::from_secs(1));
        }
    });
    let inode = ns.inode();
    let (_, events) = daemon.stop();
    let count = |a: Action| -> u64 {
        events.iter().filter(|e| e.observer.netns == inode && e.event.action == a).map(|e| e.event.count).sum()
    };
    assert_eq!(count(Action::Refused), 50);
    assert_eq!(count(Action::ConnectFailed), 50);
}
