//! `observer lab`: builds every situation the observer diagnoses for real,
//! in network namespaces, runs the real daemon, and prints the diagnosis
//! it produced next to the one expected, plus healthy traffic that must
//! produce none. The test suite runs it; new users can run it as a demo.

pub mod ns;
pub mod peer;
pub mod scenarios;

use std::{
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use self::scenarios::{Expect, Rig, Scenario};
use crate::diagnose::record::{DiagnosisRecord, Kind};

/// The latency budget: a diagnosis must appear this soon after its
/// failures start (docs/contract.md, 3.2 Timing).
pub const BUDGET: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct Produced {
    pub kind: Kind,
    pub port: u16,
    pub process: Option<String>,
    pub summary: String,
    /// From the failures' start to the record's arrival in the log.
    pub latency_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub what: String,
    /// `kind :port process`, or `nothing`.
    pub expected: String,
    pub produced: Vec<Produced>,
    pub pass: bool,
    pub why: String,
}

/// Diagnosis records as they arrive in the daemon's log, with arrival time.
#[derive(Default)]
struct Seen {
    records: Vec<(SystemTime, DiagnosisRecord)>,
}

fn tail(log: PathBuf, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut pos = 0u64;
    let mut partial = String::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut f) = std::fs::File::open(&log) {
            if f.seek(SeekFrom::Start(pos)).is_ok() {
                let mut chunk = String::new();
                if let Ok(n) = f.read_to_string(&mut chunk) {
                    pos += n as u64;
                    partial.push_str(&chunk);
                    let now = SystemTime::now();
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        if !line.contains("\"observer.diagnosis\"") {
                            continue;
                        }
                        if let (Ok(r), Ok(mut s)) = (serde_json::from_str::<DiagnosisRecord>(&line), seen.lock()) {
                            s.records.push((now, r));
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(exe: &Path, dir: &Path, state: &Path, config: Option<&Path>) -> anyhow::Result<Daemon> {
        let mut cmd = Command::new(exe);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--state-dir")
            .arg(state)
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .arg("run")
            .arg("--shared")
            .arg("--json-log")
            .arg(dir.join("events.ndjson"));
        // The readiness line is logged at info, whatever the caller's level.
        cmd.env("OBSERVER_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting observer run")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = tx.send(Ok(()));
                }
                lines.push(line);
            }
            let _ = tx.send(Err(lines.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(Daemon { child }),
            Ok(Err(out)) => bail!("the daemon exited before it was ready:\n{out}"),
            Err(_) => {
                let _ = child.kill();
                bail!("the daemon was not ready within 60 s")
            }
        }
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

pub struct Options {
    pub only: Vec<String>,
    /// At most this many scenarios at once; None: all at once.
    pub jobs: Option<u16>,
    pub config: Option<PathBuf>,
    /// Keep the lab daemon's history here (else a temporary directory).
    pub state_dir: Option<PathBuf>,
}

/// Runs the scenarios (in parallel: each has its own namespaces and
/// ports) against one daemon.
pub fn run(opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    let exe = std::env::current_exe().context("finding the observer binary")?;
    let dir = std::env::temp_dir().join(format!("observer-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = crate::config::Config::load(opts.config.as_deref())?;
    let poll = Duration::from_millis(config.enrich.poll_interval_ms) + Duration::from_millis(500);
    let state = opts.state_dir.clone().unwrap_or_else(|| dir.join("state"));
    let daemon = Daemon::start(&exe, &dir, &state, opts.config.as_deref())?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tailer = {
        let (log, seen, stop) = (dir.join("events.ndjson"), seen.clone(), stop.clone());
        std::thread::spawn(move || tail(log, seen, stop))
    };
    let chosen: Vec<(u8, Scenario)> = scenarios::all()
        .into_iter()
        .zip(1u8..)
        .map(|(s, n)| (n, s))
        .filter(|(_, s)| opts.only.is_empty() || opts.only.iter().any(|o| o == s.name))
        .collect();
    // Workers take the next scenario from a shared queue; each scenario has
    // its own namespaces and ports, so any number can run side by side.
    let workers = opts.jobs.map_or(chosen.len(), usize::from).max(1);
    let queue = Arc::new(Mutex::new(chosen.into_iter().collect::<std::collections::VecDeque<_>>()));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (exe, seen, queue) = (exe.clone(), seen.clone(), queue.clone());
            std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some((net, s)) = next else { break };
                    done.push((net, one(s, net, exe.clone(), poll, &seen)));
                }
                done
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        match h.join() {
            Ok(o) => out.extend(o),
            Err(_) => bail!("a scenario thread panicked"),
        }
    }
    // In the scenarios' own order, whoever ran them.
    out.sort_by_key(|(net, _)| *net);
    let out: Vec<Outcome> = out.into_iter().map(|(_, o)| o).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tailer.join();
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn one(s: Scenario, net: u8, exe: PathBuf, poll: Duration, seen: &Mutex<Seen>) -> Outcome {
    // The kernel reuses a deleted namespace's inode: when scenarios run one
    // after another, a new namespace can carry the inode of one that is
    // gone, so diagnoses from before this scenario began are not its own.
    let begun = SystemTime::now();
    let mut rig = Rig { exe, net, link: None, started: None, settle: BUDGET + Duration::from_secs(1), poll };
    let expected = match &s.expect {
        Expect::Diagnosis { kind, port, process } => {
            format!("{kind} :{port} {}", process.unwrap_or("-"))
        }
        Expect::Nothing { allowed: [] } => "nothing".to_owned(),
        Expect::Nothing { allowed } => {
            format!("nothing (or {})", allowed.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))
        }
    };
    let mut outcome = Outcome {
        scenario: s.name.to_owned(),
        what: s.what.to_owned(),
        expected,
        produced: vec![],
        pass: false,
        why: String::new(),
    };
    if let Err(e) = (s.build)(&mut rig) {
        outcome.why = format!("building the scenario failed: {e}");
        return outcome;
    }
    let started = rig.started.unwrap_or_else(SystemTime::now);
    let Some(link) = rig.link.as_ref() else {
        outcome.why = "the scenario built no namespaces".to_owned();
        return outcome;
    };
    let (server_ns, client_ns) = (link.server.inode(), link.client.inode());
    let produced = |seen: &Mutex<Seen>| -> Vec<Produced> {
        let Ok(seen) = seen.lock() else { return vec![] };
        let mut v: Vec<Produced> = Vec::new();
        for (at, r) in &seen.records {
            if r.observer.netns != server_ns && r.observer.netns != client_ns {
                continue;
            }
            // Allow a second for clocks: the record's time is the daemon's.
            let first = r.diagnosis.first_seen;
            if *at < begun || first + Duration::from_secs(1) < begun {
                continue;
            }
            if v.iter().any(|p| p.kind == r.diagnosis.kind && p.port == r.destination.port) {
                continue;
            }
            v.push(Produced {
                kind: r.diagnosis.kind,
                port: r.destination.port,
                process: r.process.as_ref().map(|p| p.name.clone()),
                summary: r.diagnosis.summary.clone(),
                latency_ms: at.duration_since(started).ok().map(|d| d.as_millis() as u64),
            });
        }
        v
    };
    match s.expect {
        Expect::Diagnosis { kind, port, process } => {
            // Wait past the budget so that a late diagnosis is shown as late, not as missing.
            let deadline = Instant::now() + BUDGET + Duration::from_secs(3);
            loop {
                outcome.produced = produced(seen);
                let hit = outcome.produced.iter().find(|p| p.kind == kind && p.port == port);
                if let Some(p) = hit {
                    let late = p.latency_ms.is_none_or(|ms| ms > BUDGET.as_millis() as u64);
                    let wrong_process = process.is_some_and(|want| p.process.as_deref() != Some(want));
                    outcome.pass = !late && !wrong_process;
                    outcome.why = if late {
                        format!("late: {} ms, budget {} ms", p.latency_ms.unwrap_or(0), BUDGET.as_millis())
                    } else if wrong_process {
                        format!("process {:?}, expected {:?}", p.process, process)
                    } else {
                        String::new()
                    };
                    break;
                }
                if Instant::now() > deadline {
                    outcome.why = "the expected diagnosis did not appear".to_owned();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Expect::Nothing { allowed } => {
            std::thread::sleep(rig.settle);
            outcome.produced = produced(seen);
            let bad: Vec<String> = outcome
                .produced
                .iter()
                .filter(|p| !allowed.contains(&p.kind))
                .map(|p| format!("{} :{}", p.kind, p.port))
                .collect();
            outcome.pass = bad.is_empty();
            if !outcome.pass {
                outcome.why = format!("healthy traffic was diagnosed: {}", bad.join(", "));
            }
        }
    }
    outcome
}

/// The lab's report for a terminal.
pub fn print(outcomes: &[Outcome]) {
    for o in outcomes {
        let mark = if o.pass { "PASS" } else { "FAIL" };
        println!("{mark}  {:<22} {}", o.scenario, o.what);
        println!("      expected  {}", o.expected);
        if o.produced.is_empty() {
            println!("      produced  nothing");
        }
        for p in &o.produced {
            let latency = p.latency_ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| "?".into());
            println!(
                "      produced  {} :{} {}  (after {latency})",
                p.kind,
                p.port,
                p.process.as_deref().unwrap_or("-")
            );
            println!("                \"{}\"", p.summary);
        }
        if !o.why.is_empty() {
            println!("      why       {}", o.why);
        }
        println!();
    }
    let passed = outcomes.iter().filter(|o| o.pass).count();
    println!("lab: {passed} of {} scenarios passed", outcomes.len());
}
