//! Bursts on the real daemon: a port scan of 200,000 connects to 5,000
//! ports. Run alone (nextest profile `burst`): the flood reaches every
//! daemon on the host.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::Duration;

use common::{Daemon, Netns};
use observer_common::Action;

const PORTS: u16 = 5000;
const CONNECTS: u32 = 200_000;
const FIRST_PORT: u16 = 20000;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_port_scan_is_one_diagnosis_each_way_with_bounded_log_memory_and_exact_counts() {
    // A small history cap, to see it hold through the burst.
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], Some("[history]\nmax_bytes = 2097152\n"));
    let history = state.join("history.sqlite");
    let ns = Netns::new("scan");
    let netns = ns.inode();
    // Sweeps over 5,000 closed ports from loopback: this host scans itself,
    // so it is both the scanned host (refused) and the scanner (ECONNREFUSED).
    ns.run(|| {
        for i in 0..CONNECTS {
            let port = FIRST_PORT + (i % PORTS as u32) as u16;
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        }
    });
    // The reconciliation of the last keys, at most 1,000 records a poll.
    let settle = std::time::Instant::now() + Duration::from_secs(30);
    let refused = |d: &Daemon| -> u64 {
        d.events()
            .iter()
            .filter(|e| e.observer.netns == netns && e.event.action == Action::Refused)
            .map(|e| e.event.count)
            .sum()
    };
    while refused(&d) < CONNECTS as u64 && std::time::Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let hwm = vm_hwm_kib(d.pid());
    let log_bytes = std::fs::metadata(&d.log).map(|m| m.len()).unwrap_or(0);
    let text = std::fs::read_to_string(&d.log).unwrap_or_default();
    let diagnoses: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"]["dataset"] == "observer.diagnosis" && v["observer"]["netns"] == netns)
        .collect();
    let records = text.lines().count();
    let (stderr, events) = d.stop();
    // After the last commit at shutdown: at its cap.
    let history_bytes = std::fs::metadata(&history).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "scan: {records} records, {log_bytes} bytes of log, {history_bytes} bytes of history, peak RSS {hwm} KiB"
    );
    let count = |action: Action| -> u64 {
        events.iter().filter(|e| e.observer.netns == netns && e.event.action == action).map(|e| e.event.count).sum()
    };
    // Exact, however much was sampled.
    assert_eq!(count(Action::Refused), CONNECTS as u64, "{stderr}");
    assert_eq!(count(Action::ConnectFailed), CONNECTS as u64, "{stderr}");
    // One port_scan each way, no per-port outage.
    let kinds: std::collections::BTreeMap<String, usize> = diagnoses.iter().fold(Default::default(), |mut m, v| {
        if v["diagnosis"]["status"] == "open" {
            *m.entry(v["diagnosis"]["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        }
        m
    });
    assert_eq!(kinds.get("port_scan"), Some(&2), "{kinds:?}");
    assert_eq!(kinds.len(), 1, "only scans open: {kinds:?}");
    // Volume bounded by sampling and reconciliation, not by connections:
    // 400,000 failures in far fewer records.
    assert!(records < 40_000, "{records} records, {log_bytes} bytes of log");
    assert!(history_bytes > 0 && history_bytes <= 2_097_152 + 256 * 1024, "history of {history_bytes} bytes");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
}
