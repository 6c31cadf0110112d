//! The history on the real pieces: it survives a daemon restart in the
//! middle of a scenario, `summary --format json` lists a lab scenario's
//! diagnosis, only root and the observer group can read it, and a
//! malformed config is refused with its line number.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use common::{connect_from, sa, Daemon, Netns};
use observer_common::Action;

fn observer(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run observer")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn refuse(ns: &Netns, port: u16, n: u16, first_src: u16) {
    ns.run(move || {
        for i in 0..n {
            let _ = connect_from(sa("127.0.0.1", first_src + i), sa("127.0.0.1", port), Duration::from_secs(1));
        }
    });
}

#[test]
fn history_survives_a_restart_in_the_middle_of_a_scenario() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let ns = Netns::new("hist");
    let netns = ns.inode();

    let first = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], None);
    refuse(&ns, 8181, 3, 41001);
    first.expect_event("refused", |e| e.observer.netns == netns && e.source.port == 41003);
    let (_, _) = first.stop();

    let second = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], None);
    refuse(&ns, 8181, 3, 41011);
    second.expect_event("refused", |e| e.observer.netns == netns && e.source.port == 41013);
    second.stop();

    // Both runs' events are in the one history.
    let out = observer(&state, &["events", "--since", "10m", "--port", "8181", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| {
            e["observer"]["netns"] == netns && e["event"]["action"] == Action::Refused.as_str()
        })
        .collect();
    let ports: Vec<u64> = refused.iter().map(|e| e["source"]["port"].as_u64().unwrap()).collect();
    assert_eq!(ports, [41001, 41002, 41003, 41011, 41012, 41013], "events of both runs, in order");

    // The diagnosis of each run is there, with the same stable id.
    let list = json(&observer(&state, &["summary", "--since", "10m", "--port", "8181", "--format", "json"]));
    let mine: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["observer"]["netns"] == netns && d["diagnosis"]["kind"] == "no_listener")
        .collect();
    assert!(!mine.is_empty(), "{list:#}");
    let ids: std::collections::HashSet<&str> = mine.iter().map(|d| d["diagnosis"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one stable id across restarts: {ids:?}");
    let total: u64 = mine.iter().map(|d| d["diagnosis"]["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 6, "each run's episode keeps its final count: {list:#}");
}

#[test]
fn summary_json_lists_the_diagnosis_of_a_lab_scenario() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let lab = Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--state-dir")
        .arg(&state)
        .args(["lab", "--only", "accept_queue_full", "--format", "json"])
        .output()
        .unwrap();
    let outcomes = json(&lab);
    assert_eq!(outcomes[0]["pass"], true, "{outcomes:#}");
    let list = json(&observer(&state, &["summary", "--format", "json"]));
    let d = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["diagnosis"]["kind"] == "accept_queue_full")
        .unwrap_or_else(|| panic!("no accept_queue_full in {list:#}"));
    assert_eq!(d["destination"]["port"], 7005);
    assert_eq!(d["process"]["name"], "lab-slow");
    assert_eq!(d["event"]["dataset"], "observer.diagnosis");
    assert_eq!(d["diagnosis"]["evidence"]["queue_seen"]["backlog"], 1, "{d:#}");
    // The table view shows it too, with its activity sparkline.
    let table = observer(&state, &["summary"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("accept_queue_full") && text.contains("lab-slow"), "{text}");
    assert!(text.contains('█'), "a sparkline bar: {text}");
}

/// `setpriv` runs the CLI as nobody, with or without the group.
fn as_nobody(bin: &Path, state: &Path, groups: &str) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    cmd.arg(bin).arg("--state-dir").arg(state).args(["summary", "--format", "json"]).output().unwrap()
}

#[test]
fn only_root_and_the_observer_group_can_read_the_history() {
    let keep = tempfile::tempdir().unwrap();
    std::fs::set_permissions(keep.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = keep.path().join("state");
    // `staff` (gid 50) stands in for the observer group: every Debian has it.
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], Some("[daemon]\ngroup = \"staff\"\n"));
    let ns = Netns::new("perm");
    refuse(&ns, 8182, 3, 41021);
    d.expect_event("refused", |e| e.observer.netns == ns.inode() && e.source.port == 41023);
    use std::os::unix::fs::MetadataExt;
    // The JSON log too: the same admins ship or read it.
    let log = std::fs::metadata(&d.log).unwrap();
    assert_eq!((log.mode() & 0o777, log.gid()), (0o640, 50));
    d.stop();

    let dir = std::fs::metadata(&state).unwrap();
    assert_eq!((dir.mode() & 0o777, dir.gid()), (0o750, 50));
    let db = std::fs::metadata(state.join("history.sqlite")).unwrap();
    assert_eq!((db.mode() & 0o777, db.gid()), (0o640, 50));

    // A copy of the binary nobody can execute.
    let bin = keep.path().join("observer");
    std::fs::copy(env!("CARGO_BIN_EXE_observer"), &bin).unwrap();
    let outsider = as_nobody(&bin, &state, "");
    assert!(!outsider.status.success(), "nobody outside the group read the history");
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(err.contains("Permission denied") || err.contains("permission"), "{err}");

    let member = as_nobody(&bin, &state, "50");
    let list = json(&member);
    assert!(list.as_array().unwrap().iter().any(|d| d["destination"]["port"] == 8182), "{list:#}");
}

#[test]
fn a_malformed_config_is_refused_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("observer.toml");
    std::fs::write(&path, "[history]\nmax_age_days = 30\nmax_bytez = 5\n").unwrap();
    for sub in [&["summary"][..], &["run"][..], &["doctor"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_observer")).arg("--config").arg(&path).args(sub).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("line 3") && err.contains("max_bytez"), "{sub:?}: {err}");
    }
}

#[test]
fn events_follow_prints_new_failures_as_they_are_committed() {
    use std::io::{BufRead, BufReader};
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], None);
    let ns = Netns::new("follow");
    let netns = ns.inode();
    let mut follow = Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--state-dir")
        .arg(&state)
        .args(["events", "--follow", "--format", "json", "--port", "8183"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    refuse(&ns, 8183, 2, 41031);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            if e["observer"]["netns"] == netns && e["event"]["action"] == "refused" {
                seen.push(e["source"]["port"].as_u64().unwrap());
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    d.stop();
    assert_eq!(seen, [41031, 41032], "both new failures followed");
}

#[test]
fn events_piped_into_head_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], None);
    let ns = Netns::new("head");
    // `observer events --follow 2>&1 | head -1`: head reads the header and
    // exits; the next row meets a closed pipe.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--state-dir")
        .arg(&state)
        .args(["events", "--follow", "--port", "8184"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follow.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("TIME"), "{first:?}");
    refuse(&ns, 8184, 3, 41051);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "events --follow kept running after its reader left");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).unwrap();
    d.stop();
    // Ended by SIGPIPE, as `cat` or `grep` would be: no message, no panic.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {stderr}");
    assert_eq!(stderr, "");
}
