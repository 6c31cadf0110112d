//! A kernel without one of the tracepoints: the daemon says which hook is
//! unavailable, why and what cannot be seen, and the rest keep reporting.

mod common;

use std::{path::Path, time::Duration};

use common::{connect_from, sa, Daemon, Netns};
use observer_common::Action;

/// A tracefs tree with every format file the hooks read, except one.
fn tracefs_without(dir: &Path, missing: &str) {
    let real = Path::new("/sys/kernel/tracing/events");
    for tp in [
        "tcp/tcp_send_reset",
        "tcp/tcp_receive_reset",
        "tcp/tcp_retransmit_synack",
        "sock/inet_sock_set_state",
        "skb/kfree_skb",
        "net/net_dev_queue",
        "syscalls/sys_enter_connect",
        "syscalls/sys_exit_connect",
    ] {
        if tp == missing {
            continue;
        }
        let to = dir.join("events").join(tp);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(real.join(tp).join("format"), to.join("format")).unwrap();
    }
}

#[test]
fn a_missing_tracepoint_degrades_only_its_hook() {
    let fake = tempfile::tempdir().unwrap();
    tracefs_without(fake.path(), "tcp/tcp_send_reset");
    let config = format!("[kernel]\ntracefs = {:?}\n", fake.path().display().to_string());
    let daemon = Daemon::start_with(&[], Some(&config));
    let stderr = daemon.stderr();
    assert!(stderr.contains("hook tcp_send_reset unavailable: tracepoint tcp:tcp_send_reset not found"), "{stderr}");
    assert!(stderr.contains("not visible: refused connections"), "{stderr}");
    assert!(stderr.contains("ready: 7 of 8 hooks attached"), "{stderr}");

    // connect_failed (another hook) still reports; refused does not.
    let ns = Netns::new("degraded");
    ns.run(|| connect_from(sa("127.0.0.1", 49001), sa("127.0.0.1", 8090), Duration::from_secs(2)).err());
    let e = daemon
        .expect_event("connect_failed", |e| e.observer.netns == ns.inode() && e.event.action == Action::ConnectFailed);
    assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"));
    let ours = daemon.events_in(ns.inode(), Duration::from_millis(300));
    assert!(ours.iter().all(|e| e.event.action != Action::Refused), "{ours:#?}");
    daemon.stop();
}

/// `observer doctor --json`'s hook table with one tracepoint removed from a fake tracefs.
fn doctor_hooks_without(tracepoint: &str) -> Vec<serde_json::Value> {
    let fake = tempfile::tempdir().unwrap();
    tracefs_without(fake.path(), tracepoint);
    let cfg = fake.path().join("observer.toml");
    std::fs::write(&cfg, format!("[kernel]\ntracefs = {:?}\n", fake.path().display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--config")
        .arg(&cfg)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["hooks"].as_array().unwrap().clone()
}

#[test]
fn doctor_reports_the_missing_hook() {
    let hooks = doctor_hooks_without("skb/kfree_skb");
    let kfree = hooks.iter().find(|h| h["hook"] == "kfree_skb").unwrap();
    assert_eq!(kfree["status"], "unavailable");
    assert!(kfree["why"].as_str().unwrap().contains("skb:kfree_skb not found"), "{kfree}");
    // The reject detector only feeds kfree_skb, so it goes down with it.
    let ndq = hooks.iter().find(|h| h["hook"] == "net_dev_queue").unwrap();
    assert_eq!(ndq["status"], "unavailable");
    assert!(ndq["why"].as_str().unwrap().contains("kfree_skb"), "{ndq}");
    for h in hooks.iter().filter(|h| h["hook"] != "kfree_skb" && h["hook"] != "net_dev_queue") {
        assert_eq!(h["status"], "attached", "{h}");
    }
}

/// Half of the syscall pair is enough to take the whole hook down (its
/// enter program alone would only fill a map), and nothing else.
#[test]
fn a_missing_sys_exit_connect_degrades_only_sys_connect() {
    let hooks = doctor_hooks_without("syscalls/sys_exit_connect");
    let sys = hooks.iter().find(|h| h["hook"] == "sys_connect").unwrap();
    assert_eq!(sys["status"], "unavailable");
    assert!(sys["why"].as_str().unwrap().contains("syscalls:sys_exit_connect not found"), "{sys}");
    for h in hooks.iter().filter(|h| h["hook"] != "sys_connect") {
        assert_eq!(h["status"], "attached", "{h}");
    }
}
