//! Storms on the real kernel: the exact counters and the daemon's
//! reconciliation records make the counts in the log add up to what
//! happened, while the samples stay few; a full ring buffer is warned about
//! and costs no count.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use observer::event::{Direction, Family};

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{sa, Daemon, Netns};
use observer::event::FailureEvent;
use observer_common::Action;

/// `n` connections to a closed port of the namespace's loopback, as fast as
/// one thread makes them; returns how many were refused.
fn refused_storm(ns: &Netns, to: SocketAddr, n: usize) -> usize {
    ns.run(move || {
        (0..n)
            .filter(|_| {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .count()
    })
}

fn refused_in(events: &[FailureEvent], netns: u32, port: u16) -> Vec<&FailureEvent> {
    events
        .iter()
        .filter(|e| e.observer.netns == netns && e.event.action == Action::Refused && e.destination.port == port)
        .collect()
}

fn total(events: &[&FailureEvent]) -> u64 {
    events.iter().map(|e| e.event.count).sum()
}

/// Waits until the refused count of (netns, port) reaches `want`, then a
/// little longer, so that an overshoot would show too.
fn settled_refused(daemon: &Daemon, netns: u32, port: u16, want: u64) -> Vec<FailureEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if total(&refused_in(&daemon.events(), netns, port)) >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.events_in(netns, Duration::from_millis(1500))
}

#[test]
fn a_sampled_refused_storm_adds_up_to_the_kernel_count() {
    let config = "[capture]\nsamples_per_sec = 1\ncounter_poll_ms = 250\n";
    let daemon = Daemon::start_with(&[], Some(config));
    let ns = Netns::new("storm");
    let refused = refused_storm(&ns, sa("127.0.0.1", 9), 500);
    assert_eq!(refused, 500, "every connection must be refused");

    let events = settled_refused(&daemon, ns.inode(), 9, 500);
    let ours = refused_in(&events, ns.inode(), 9);
    assert_eq!(total(&ours), 500, "counts must add up to the kernel's:\n{ours:#?}\n{}", daemon.stderr());
    assert!(ours.len() < 500, "sampling must have reduced the records: {}", ours.len());
    let samples: Vec<_> = ours.iter().filter(|e| !e.event.reconciled).collect();
    assert!(!samples.is_empty() && samples.iter().all(|e| e.event.count == 1), "{samples:#?}");
    let reconciled: Vec<_> = ours.iter().filter(|e| e.event.reconciled).collect();
    assert!(!reconciled.is_empty(), "the rest comes as reconciliation records");
    for r in &reconciled {
        assert!(r.source.ip.is_unspecified() && r.source.port == 0, "no client in {r:#?}");
        assert_eq!(r.destination.ip, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(r.observer.direction, Direction::Inbound);
        assert_eq!(r.network.kind, Family::Ipv4);
    }

    let (stderr, after) = daemon.stop();
    assert_eq!(total(&refused_in(&after, ns.inode(), 9)), 500, "shutdown must not add or lose counts");
    assert!(stderr.contains("occurrences in"), "stopped line reports reconciliation:\n{stderr}");
}

#[test]
fn a_full_ring_buffer_is_warned_about_and_the_counts_still_add_up() {
    // 4096 bytes hold about 40 records; with the reader paused, a burst of
    // 300 samples overflows it.
    let config = "[capture]\nring_buffer_bytes = 4096\nsamples_per_sec = 100000\ncounter_poll_ms = 250\n\
                  loss_warning_secs = 1\n";
    let daemon = Daemon::start_with(&[], Some(config));
    let ns = Netns::new("ringfull");
    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let refused = refused_storm(&ns, sa("::1", 7), 300);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(refused, 300);

    let events = settled_refused(&daemon, ns.inode(), 7, 300);
    let ours = refused_in(&events, ns.inode(), 7);
    assert_eq!(total(&ours), 300, "counts must add up:\n{ours:#?}\n{}", daemon.stderr());
    let samples = ours.iter().filter(|e| !e.event.reconciled).count();
    assert!(samples < 300, "the ring buffer should have dropped samples ({samples} arrived)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.stderr().contains("ring buffer full; counters stay exact") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = daemon.stderr();
    assert!(stderr.contains("samples: ring buffer full; counters stay exact"), "warning expected:\n{stderr}");

    let (stderr, _) = daemon.stop();
    let stopped = stderr.lines().find(|l| l.contains("stopped:")).expect("stopped line");
    assert!(!stopped.contains("kernel loss: 0 samples"), "{stopped}");
}
