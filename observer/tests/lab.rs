//! The scenario lab, run as a test: every situation the observer diagnoses
//! is built for real; a scenario whose diagnosis kind, port or process is
//! wrong, or that comes later than 5 s after its failures start, fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::process::Command;

#[test]
fn every_lab_scenario_is_diagnosed_right_and_in_time() {
    // OBSERVER_LAB_JOBS: how many scenarios at once (the kernel VMs, which
    // are emulated and slow, run fewer so the timing stays the kernel's).
    let mut args = vec!["lab".to_owned(), "--format".into(), "json".into()];
    if let Ok(jobs) = std::env::var("OBSERVER_LAB_JOBS") {
        args.extend(["--jobs".into(), jobs]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(&args)
        .env("OBSERVER_LOG", "warn")
        .output()
        .expect("run observer lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcomes: Vec<serde_json::Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("lab output is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(outcomes.len(), 15, "every scenario ran");
    let failed: Vec<_> = outcomes.iter().filter(|o| o["pass"] != true).collect();
    assert!(failed.is_empty(), "failed scenarios:\n{}", serde_json::to_string_pretty(&failed).unwrap_or_default());
    assert!(out.status.success(), "{stderr}");
    // The produced diagnoses carry the expected kinds with latencies.
    let kinds: Vec<&str> = outcomes
        .iter()
        .flat_map(|o| o["produced"].as_array().into_iter().flatten())
        .filter_map(|p| p["kind"].as_str())
        .collect();
    for k in [
        "no_listener",
        "listener_address_mismatch",
        "accept_queue_full",
        "syn_flood",
        "firewall_drop",
        "firewall_reject",
        "server_reset",
        "handshake_incomplete",
        "outbound_refused",
        "outbound_timeout",
        "outbound_unreachable",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}
