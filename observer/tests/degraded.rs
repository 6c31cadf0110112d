//! A kernel without one of the tracepoints: the daemon says which hook is
//! unavailable, why and what cannot be seen, and the rest keep reporting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use observer::event::Family;

use std::{path::Path, time::Duration};

use std::io::ErrorKind;

use common::{connect_from, sa, Daemon, Netns};
use observer_common::Action;

/// A tracefs tree with every format file the hooks read, except one.
fn tracefs_without(dir: &Path, missing: &str) {
    tracefs_edited(dir, missing, &[]);
}

/// A tracefs tree with every format file the hooks read, except `missing`,
/// and without the lines that declare the fields in `drop_fields`
/// (`"skb/kfree_skb:reason"`): the layout of an older kernel whose other
/// fields sit where this kernel's do.
fn tracefs_edited(dir: &Path, missing: &str, drop_fields: &[&str]) {
    let real = Path::new("/sys/kernel/tracing/events");
    for tp in [
        "tcp/tcp_send_reset",
        "tcp/tcp_receive_reset",
        "tcp/tcp_retransmit_synack",
        "sock/inet_sock_set_state",
        "skb/kfree_skb",
    ] {
        if tp == missing {
            continue;
        }
        let to = dir.join("events").join(tp);
        std::fs::create_dir_all(&to).unwrap();
        let format = std::fs::read_to_string(real.join(tp).join("format")).unwrap();
        let kept: Vec<&str> = format
            .lines()
            .filter(|line| {
                !drop_fields.iter().any(|d| {
                    d.split_once(':')
                        .is_some_and(|(t, f)| t == tp && line.contains("field:") && line.contains(&format!(" {f};")))
                })
            })
            .collect();
        std::fs::write(to.join("format"), kept.join("\n")).unwrap();
    }
}

/// The daemon on a copy of tracefs without `tracepoint` (kept alive with it).
fn daemon_without(tracepoint: &str) -> (tempfile::TempDir, Daemon) {
    let fake = tempfile::tempdir().unwrap();
    tracefs_without(fake.path(), tracepoint);
    let config = format!("[kernel]\ntracefs = {:?}\n", fake.path().display().to_string());
    let daemon = Daemon::start_with(&[], Some(&config));
    (fake, daemon)
}

#[test]
fn a_missing_tracepoint_degrades_only_its_hook() {
    let (_fake, daemon) = daemon_without("tcp/tcp_receive_reset");
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("hook tcp_receive_reset unavailable: tracepoint tcp:tcp_receive_reset not found"),
        "{stderr}"
    );
    assert!(stderr.contains("not visible: resets received from peers"), "{stderr}");
    assert!(stderr.contains("reset_received: not visible on this kernel: hook tcp_receive_reset is unavailable"));
    // One hook fewer than this kernel attaches with every tracepoint.
    let full = tempfile::tempdir().unwrap();
    tracefs_without(full.path(), "");
    let hooks = doctor_on(full.path())["hooks"].as_array().unwrap().clone();
    let attached = hooks.iter().filter(|h| h["status"] == "attached").count();
    let ready = format!("ready: {} of {} hooks attached", attached - 1, hooks.len());
    assert!(stderr.contains(&ready), "{ready}:\n{stderr}");

    // The other hooks still report.
    let ns = Netns::new("degraded");
    ns.run(|| connect_from(sa("127.0.0.1", 49001), sa("127.0.0.1", 8090), Duration::from_secs(2)).err());
    let e = daemon
        .expect_event("connect_failed", |e| e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed);
    assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"));
    daemon.expect_event("refused", |e| e.observer.netns == ns.inode() && e.event.action == Action::Refused);
    daemon.stop();
}

/// Without tcp_send_reset, refused connections are still seen, through the
/// next source this kernel has: kfree_skb's NO_SOCKET confirmed by the RST.
#[test]
fn without_tcp_send_reset_refused_connections_come_from_kfree_skb() {
    let (_fake, daemon) = daemon_without("tcp/tcp_send_reset");
    let stderr = daemon.stderr();
    assert!(stderr.contains("hook tcp_send_reset unavailable: tracepoint tcp:tcp_send_reset not found"), "{stderr}");
    // NO_SOCKET where kfree_skb names reasons, its location where it does not (5.10).
    assert!(stderr.contains("refused (SYN to a port nothing listens on): seen through kfree_skb"), "{stderr}");
    assert!(stderr.contains("reset_sent (on an open connection): not visible on this kernel"), "{stderr}");

    let ns = Netns::new("degraded");
    let refused = ns.run(|| {
        (0..20u16)
            .filter(|i| {
                connect_from(sa("127.0.0.1", 49100 + i), sa("127.0.0.1", 8091), Duration::from_secs(2))
                    .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
            })
            .count()
    });
    assert_eq!(refused, 20);
    let e = daemon.expect_event("refused", |e| e.observer.netns == ns.inode() && e.event.action == Action::Refused);
    assert_eq!(e.observer.reason.as_deref(), Some("NO_SOCKET"));
    let ours = daemon.events_in(ns.inode(), Duration::from_millis(1500));
    let total: u64 = ours.iter().filter(|e| e.event.action == Action::Refused).map(|e| e.event.count).sum();
    assert_eq!(total, 20, "{ours:#?}");
    daemon.stop();
}

/// `observer doctor --json` on the fake tracefs in `fake`.
fn doctor_on(fake: &Path) -> serde_json::Value {
    let cfg = fake.join("observer.toml");
    std::fs::write(&cfg, format!("[kernel]\ntracefs = {:?}\n", fake.display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--config")
        .arg(&cfg)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `observer doctor --json`'s hook table with one tracepoint removed from a fake tracefs.
fn doctor_hooks_without(tracepoint: &str) -> Vec<serde_json::Value> {
    let fake = tempfile::tempdir().unwrap();
    tracefs_without(fake.path(), tracepoint);
    let report = doctor_on(fake.path());
    report["hooks"].as_array().unwrap().clone()
}

#[test]
fn doctor_reports_the_missing_hook() {
    // What this kernel attaches with every tracepoint present (the fentry
    // hooks depend on BPF trampolines, not on tracefs).
    let full = tempfile::tempdir().unwrap();
    tracefs_without(full.path(), "");
    let before = doctor_on(full.path())["hooks"].as_array().unwrap().clone();
    let hooks = doctor_hooks_without("skb/kfree_skb");
    let kfree = hooks.iter().find(|h| h["hook"] == "kfree_skb").unwrap();
    assert_eq!(kfree["status"], "unavailable");
    assert!(kfree["why"].as_str().unwrap().contains("skb:kfree_skb not found"), "{kfree}");
    // The answer markers only feed kfree_skb, so they go down with it,
    // and so does their fallback. (Final-ACK overflows then need their
    // own hook: syn_recv_sock and its fallback change too.)
    for name in ["answers", "net_dev_queue"] {
        let h = hooks.iter().find(|h| h["hook"] == name).unwrap();
        assert_eq!(h["status"], "unavailable", "{h}");
        assert!(h["why"].as_str().unwrap().contains("kfree_skb"), "{h}");
    }
    let changed = ["kfree_skb", "answers", "net_dev_queue", "syn_recv_sock", "listener_ingress"];
    for h in hooks.iter().filter(|h| !changed.contains(&h["hook"].as_str().unwrap())) {
        let was = before.iter().find(|b| b["hook"] == h["hook"]).unwrap();
        assert_eq!(h["status"], was["status"], "{h} was {was}");
    }
}

/// A kernel without drop reasons (before 5.17) and with the old
/// tcp_send_reset, made from this kernel's formats without those fields:
/// refused connections and firewall drops then come from kfree_skb's
/// location (tcp_v4_rcv/tcp_v6_rcv, nf_hook_slow) confirmed by the answer
/// the host sent, and stay exact; healthy connections report nothing.
#[test]
fn without_drop_reasons_refused_and_firewall_drops_come_from_the_drop_location() {
    let fake = tempfile::tempdir().unwrap();
    tracefs_edited(fake.path(), "", &["skb/kfree_skb:reason", "tcp/tcp_send_reset:reason"]);
    let config = format!("[kernel]\ntracefs = {:?}\n", fake.path().display().to_string());
    let report = doctor_on(fake.path());
    let source_of = |action: &str| {
        report["failures"].as_array().unwrap().iter().find(|f| f["action"] == action).unwrap()["source"].clone()
    };
    assert_eq!(source_of("refused"), "drop_location_tcp_rcv", "{report:#}");
    assert_eq!(source_of("firewall_drop"), "drop_location_nf_hook_slow", "{report:#}");

    // The ruleset first: nf_tables (a module) is then loaded when the
    // daemon reads the kernel's symbols.
    let ns = Netns::new("noreasons");
    ns.nft(
        "table inet t {\n  chain input {\n    type filter hook input priority 0;\n    tcp dport 8093 drop\n  }\n}\n",
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let (refused, dropped) = ns.run(|| {
        let healthy = std::net::TcpListener::bind("127.0.0.1:8094").unwrap();
        let mut refused = 0;
        for i in 0..40u16 {
            let v4 = connect_from(sa("127.0.0.1", 50000 + i), sa("127.0.0.1", 8092), Duration::from_secs(2));
            let v6 = connect_from(sa("::1", 50100 + i), sa("::1", 8092), Duration::from_secs(2));
            refused +=
                [v4, v6].iter().filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)).count();
            // Healthy connections, opened and closed, on the same host.
            let c = std::net::TcpStream::connect("127.0.0.1:8094").unwrap();
            let (s, _) = healthy.accept().unwrap();
            drop((c, s));
        }
        let dropped = connect_from(sa("127.0.0.1", 50300), sa("127.0.0.1", 8093), Duration::from_millis(300)).is_err();
        (refused, dropped)
    });
    assert_eq!(refused, 80);
    assert!(dropped);
    let drop = daemon.expect_event("firewall_drop", |e| {
        e.observer.netns == ns.inode() && e.event.action == Action::FirewallDrop && e.destination.port == 8093
    });
    assert_eq!(drop.observer.reason.as_deref(), Some("NETFILTER_DROP"));
    let ours = daemon.events_in(ns.inode(), Duration::from_millis(1500));
    let refused_events: Vec<_> = ours.iter().filter(|e| e.event.action == Action::Refused).collect();
    let total: u64 = refused_events.iter().map(|e| e.event.count).sum();
    assert_eq!(total, 80, "every refused connection exactly once:\n{refused_events:#?}");
    assert!(refused_events
        .iter()
        .all(|e| e.destination.port == 8092 && e.observer.reason.as_deref() == Some("NO_SOCKET")));
    assert!(refused_events.iter().any(|e| e.network.kind == Family::Ipv6));
    assert!(ours.iter().all(|e| e.destination.port != 8094), "a healthy connection was reported: {ours:#?}");
    daemon.stop();
}
