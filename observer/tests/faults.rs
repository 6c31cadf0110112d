//! Faults an admin meets every week, on the real daemon: a second
//! instance, logrotate's rename and SIGHUP, a state directory that cannot
//! hold the history, a disk that fills up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{connect_from, sa, Daemon, Netns};
use observer::event::FailureEvent;
use observer_common::Action;

/// `observer run` without `--shared`, expected to stop at once.
fn run_refused(state: &Path, dir: &Path, extra: &[&str], config: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_observer"));
    if let Some(text) = config {
        let path = dir.join("refused.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    cmd.arg("--state-dir")
        .arg(state)
        .arg("--runtime-dir")
        .arg(dir.join("run2"))
        .arg("run")
        .args(extra)
        .arg("--json-log")
        .arg(dir.join("second.ndjson"));
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second daemon did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn refuse(ns: &Netns, port: u16, n: u16, first_src: u16) {
    ns.run(move || {
        for i in 0..n {
            let _ = connect_from(sa("127.0.0.1", first_src + i), sa("127.0.0.1", port), Duration::from_secs(1));
        }
    });
}

fn refused_in(events: &[FailureEvent], netns: u32, port: u16) -> u64 {
    events
        .iter()
        .filter(|e| e.observer.netns == netns && e.event.action == Action::Refused && e.destination.port == port)
        .map(|e| e.event.count)
        .sum()
}

fn events_of(path: &Path) -> Vec<FailureEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"]["dataset"] == "observer.failure")
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_names_the_first() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let first = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], None);
    // Even with --shared: one state directory, one history, one writer.
    let out = run_refused(&state, keep.path(), &["--shared"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("another observer (pid {}) is running with the state directory", first.pid())),
        "{err}"
    );
    assert!(!err.contains("ready:"), "{err}");
    first.stop();
}

#[test]
fn a_second_daemon_elsewhere_is_refused_unless_shared() {
    let keep = tempfile::tempdir().unwrap();
    let first = Daemon::start();
    let out = run_refused(&keep.path().join("other-state"), keep.path(), &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another observer has its programs in the kernel"), "{err}");
    // Other tests' daemons may run too; ours is among those named.
    assert!(err.contains(&format!("pid {} (", first.pid())), "{err}");
    assert!(err.contains("--shared"), "the way out is named: {err}");
    first.stop();
}

#[test]
fn sighup_after_a_rename_reopens_the_log_and_loses_nothing() {
    let d = Daemon::start();
    let ns = Netns::new("hup");
    let netns = ns.inode();
    refuse(&ns, 8191, 5, 42001);
    d.expect_event("the first five", |e| e.observer.netns == netns && e.source.port == 42005);
    // logrotate without copytruncate: rename, then `postrotate kill -HUP`.
    let log = d.log.clone();
    let rotated = log.with_extension("ndjson.1");
    std::fs::rename(&log, &rotated).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    refuse(&ns, 8191, 5, 42011);
    d.expect_event("the next five, in the new file", |e| e.observer.netns == netns && e.source.port == 42015);
    std::thread::sleep(Duration::from_millis(500));
    let (old, new) = (events_of(&rotated), events_of(&log));
    let (stderr, _) = d.stop();
    assert!(stderr.contains("SIGHUP: reopening the JSON log"), "{stderr}");
    assert!(stderr.contains("stopped:"), "{stderr}");
    assert_eq!(refused_in(&old, netns, 8191), 5, "the rotated file keeps what was written before");
    assert_eq!(refused_in(&new, netns, 8191), 5, "the new file has what came after");
}

#[test]
fn a_state_dir_that_cannot_hold_the_history_stops_the_start() {
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("state-is-a-file");
    std::fs::write(&file, "").unwrap();
    let out = run_refused(&file, keep.path(), &["--shared"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot hold the history") && err.contains("history.enabled = false"), "{err}");
    // Said explicitly, the daemon runs without one.
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &file, &[], Some("[history]\nenabled = false\n"));
    assert!(d.stderr().contains("history off"), "{}", d.stderr());
    d.stop();
}

/// A small tmpfs, unmounted on drop: a disk that can be filled for real.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk { path, _dir: dir }
    }

    /// Fills what is left with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn cli(state: &Path, run: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--state-dir")
        .arg(state)
        .arg("--runtime-dir")
        .arg(run)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_is_counted_warned_about_sparingly_and_survived() {
    let disk = SmallDisk::new("8m");
    let state = disk.path.join("state");
    let d = Daemon::start_in(tempfile::tempdir_in(&disk.path).unwrap(), &state, &[], None);
    let run = d.run.path().to_owned();
    let ns = Netns::new("full");
    let netns = ns.inode();
    refuse(&ns, 8193, 3, 42101);
    d.expect_event("before the disk fills", |e| e.observer.netns == netns && e.source.port == 42103);
    std::thread::sleep(Duration::from_millis(1500)); // the history commits
    let filler = disk.fill();

    // Hundreds of records the disk cannot take, over two seconds.
    for round in 0..4u16 {
        refuse(&ns, 8193, 100, 43000 + round * 100);
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let stderr = d.stderr();
    let warnings = stderr.lines().filter(|l| l.contains("No space left")).count();
    assert!((1..=3).contains(&warnings), "{warnings} warnings about the full disk:\n{stderr}");
    assert!(stderr.contains("records lost from the log so far"), "the warning counts: {stderr}");

    // The CLI still reads what the history holds, while the daemon cannot write it.
    let out = cli(&state, &run, &["events", "--port", "8193", "--format", "json", "--since", "10m"]);
    assert!(out.status.success(), "events: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42103"), "the committed events are there");

    // The doctor names the loss.
    let out = cli(&state, &run, &["doctor"]);
    let doctor = String::from_utf8_lossy(&out.stdout);
    assert!(doctor.contains("records could not be written to the JSON log; last: No space left"), "{doctor}");

    // Space comes back: both outputs write again, and the daemon never stopped.
    std::fs::remove_file(&filler).unwrap();
    refuse(&ns, 8193, 3, 44001);
    d.expect_event("after space came back", |e| e.observer.netns == netns && e.source.port == 44003);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = cli(&state, &run, &["events", "--port", "8193", "--format", "json", "--since", "10m"]);
        if String::from_utf8_lossy(&out.stdout).contains("44003") {
            break;
        }
        assert!(Instant::now() < deadline, "the history did not take new events after space came back");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (stderr, _) = d.stop();
    assert!(stderr.contains("writes work again"), "{stderr}");
}

#[test]
fn a_refused_storm_above_the_sampling_limit_stays_outbound_refused() {
    let d = Daemon::start();
    let ns = Netns::new("storm");
    let netns = ns.inode();
    // 1,000 refused connects to one closed port in well under a second: the
    // kernel samples 64 a second per CPU, the rest come as reconciliation
    // records, which used to carry no errno and read "unreachable ()".
    ns.run(|| {
        for _ in 0..1000 {
            let _ = std::net::TcpStream::connect(("127.0.0.1", 8197));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let outbound = |d: &Daemon| -> Vec<FailureEvent> {
        d.events()
            .into_iter()
            .filter(|e| e.observer.netns == netns && e.event.action == Action::ConnectFailed)
            .collect()
    };
    while outbound(&d).iter().map(|e| e.event.count).sum::<u64>() < 1000 {
        assert!(Instant::now() < deadline, "not all 1,000 connect failures were reported");
        std::thread::sleep(Duration::from_millis(300));
    }
    let events = outbound(&d);
    assert!(events.iter().any(|e| e.event.reconciled), "the storm went past the sampling limit");
    for e in &events {
        assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"), "{e:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(&d.log).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"]["dataset"] == "observer.diagnosis" && v["observer"]["netns"] == netns)
        .filter(|v| v["observer"]["direction"] == "outbound")
        .map(|v| v["diagnosis"]["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    d.stop();
    assert!(kinds.iter().any(|k| k == "outbound_refused"), "{kinds:?}");
    assert!(kinds.iter().all(|k| k == "outbound_refused"), "{kinds:?}");
}

/// A hung `nft` (a stub first on the daemon's PATH that sleeps) must not
/// hold the log: while a firewall-drop diagnosis waits for the stub's
/// deadline, every drop still reaches the JSON log at once, and a
/// diagnosis of another kind (nothing listens, in another namespace) does
/// not wait behind it; then the stub is killed and the firewall diagnosis
/// says the rule could not be read.
#[test]
fn a_hung_nft_does_not_delay_the_log() {
    let stubs = tempfile::tempdir().unwrap();
    // A marker argument, to find the stub's process afterwards.
    let marker = format!("59{}", std::process::id());
    let nft = stubs.path().join("nft");
    std::fs::write(&nft, format!("#!/bin/sh\nexec sleep {marker}\n")).unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", stubs.path().display(), std::env::var("PATH").unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let timeout_ms = 3000;
    let config = format!("[enrich]\ncommand_timeout_ms = {timeout_ms}\n");
    let d = Daemon::start_env(dir, &state, &[], Some(&config), &[("PATH", &path)]);
    let ns = Netns::new("hungnft");
    ns.nft("table inet fw {\n  chain input {\n    type filter hook input priority 0;\n    tcp dport 8097 tcp flags syn drop\n  }\n}\n");
    let other = Netns::new("hungnft-refused");
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut refused_at = None;
    let mut no_listener_after = None;
    // One dropped SYN every 250 ms for longer than the stub's deadline:
    // the diagnosis opens after the first few and waits on the stub.
    for i in 0..20u16 {
        let from = sa("127.0.0.1", 47300 + i);
        let sent = Instant::now();
        let _s = ns.run(move || common::start_connect(from, sa("127.0.0.1", 8097)));
        loop {
            let seen = d.events().iter().any(|e| {
                e.event.action == Action::FirewallDrop && e.source.port == 47300 + i && e.observer.netns == ns.inode()
            });
            if seen {
                worst = worst.max(sent.elapsed());
                break;
            }
            assert!(sent.elapsed() < Duration::from_secs(5), "drop {i} not in the log within 5 s:\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        if i == 6 {
            // 1.5 s in: the firewall diagnosis is waiting on the stub.
            refused_at = Some(Instant::now());
            other.run(|| {
                for port in 0..5u16 {
                    let _ = connect_from(sa("127.0.0.1", 47400 + port), sa("127.0.0.1", 8098), Duration::from_secs(1));
                }
            });
        }
        if let (Some(at), None) = (refused_at, no_listener_after) {
            if d.diagnoses().iter().any(|r| r["diagnosis"]["kind"] == "no_listener") {
                no_listener_after = Some(at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250).saturating_sub(sent.elapsed()));
    }
    let no_listener_after = no_listener_after.expect("a no_listener diagnosis while nft hung");
    assert!(
        no_listener_after < Duration::from_millis(1500),
        "the no_listener diagnosis waited {no_listener_after:?} behind the hung nft"
    );
    assert!(started.elapsed() > Duration::from_millis(timeout_ms), "the drops must outlast the stub's deadline");
    // The log's flush follows each burst at once; one second is the bound
    // a reader of the log would notice, far below the stub's 3 s.
    assert!(worst < Duration::from_secs(1), "a drop took {worst:?} to reach the log while nft hung");
    let deadline = Instant::now() + Duration::from_secs(10);
    let diagnosis = loop {
        let found = d.diagnoses().into_iter().find(|r| r["diagnosis"]["kind"] == "firewall_drop");
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no firewall_drop diagnosis:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = diagnosis["diagnosis"]["evidence"].to_string();
    assert!(text.contains(&format!("no answer within {timeout_ms} ms (killed)")), "evidence: {text}");
    let stub_left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker)));
    assert!(!stub_left, "the hung nft stub was not killed");
    d.stop();
}
