//! What runs next to the load: nothing (the baseline), the observer (this
//! very binary, `observer run`), the observer without its per-packet
//! fallback hooks, or a bpftrace one-liner counting the same tracepoints.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// The tracepoints the observer's hooks use where the kernel has no BPF
/// trampolines (as here); the bpftrace peer counts them. Debian 12's
/// bpftrace (0.17) attaches only classic tracepoints (its `rawtracepoint`
/// probes came later), so it counts them the classic way, as a generic
/// tracer would; it cannot attach cgroup_skb programs, so it has no
/// listener hook.
pub const TRACEPOINTS: &[&str] = &[
    "tracepoint:tcp:tcp_send_reset",
    "tracepoint:tcp:tcp_receive_reset",
    "tracepoint:tcp:tcp_retransmit_synack",
    "tracepoint:sock:inet_sock_set_state",
    "tracepoint:skb:kfree_skb",
    "tracepoint:net:net_dev_queue",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Baseline,
    Observer,
    /// The observer with `capture.disable_hooks = ["listener_ingress",
    /// "net_dev_queue"]`: on a kernel without BPF trampolines those stand
    /// in for the fentry hooks and run for every packet; this shows what
    /// they cost (and an admin can choose it, losing what doctor says).
    ObserverNoFallbacks,
    Bpftrace,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Baseline, Peer::Observer, Peer::ObserverNoFallbacks, Peer::Bpftrace];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Baseline => "baseline",
            Peer::Observer => "observer",
            Peer::ObserverNoFallbacks => "observer -fallbacks",
            Peer::Bpftrace => "bpftrace",
        }
    }

    pub fn is_observer(self) -> bool {
        matches!(self, Peer::Observer | Peer::ObserverNoFallbacks)
    }
}

/// The bpftrace program: one per-CPU count per tracepoint, as cheap as a
/// tracing peer gets.
pub fn bpftrace_program() -> String {
    format!("{} {{ @[probe] = count(); }}", TRACEPOINTS.join(", "))
}

/// User + system CPU time of a running process, all its threads.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm (which may contain spaces):
    // utime is field 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// One eBPF program's counters (bpf_prog_info run_cnt and run_time_ns).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramStat {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// A started peer process.
pub struct Running {
    pub peer: Peer,
    child: Option<Child>,
    /// The observer's JSON log.
    pub log: Option<PathBuf>,
    /// What the process wrote to stderr (the observer's warnings, say).
    pub stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Waits for a line containing `ready` on `stream`, collecting every line.
fn watch(
    stream: impl std::io::Read + Send + 'static,
    ready: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = tx.send(());
            }
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });
    (rx, reader)
}

impl Running {
    /// Starts `peer`; returns once it is ready (programs attached).
    pub fn start(peer: Peer, dir: &Path, observer: &Path, bpftrace: Option<&str>) -> anyhow::Result<Running> {
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (child, ready, log) = match peer {
            Peer::Baseline => return Ok(Running { peer, child: None, log: None, stderr, reader: None }),
            Peer::Observer | Peer::ObserverNoFallbacks => {
                let config = dir.join("observer.toml");
                let disabled =
                    if peer == Peer::ObserverNoFallbacks { "\"listener_ingress\", \"net_dev_queue\"" } else { "" };
                std::fs::write(&config, format!("[capture]\ndisable_hooks = [{disabled}]\n"))
                    .with_context(|| format!("writing {}", config.display()))?;
                let log = dir.join("events.ndjson");
                let _ = std::fs::remove_file(&log);
                let _ = std::fs::remove_dir_all(dir.join("state"));
                let mut child = Command::new(observer)
                    .arg("--config")
                    .arg(&config)
                    .arg("--state-dir")
                    .arg(dir.join("state"))
                    .arg("run")
                    .arg("--json-log")
                    .arg(&log)
                    .env("OBSERVER_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting observer run")?;
                let err = child.stderr.take().context("observer stderr")?;
                let ready = watch(err, "ready:", stderr.clone());
                (child, ready, Some(log))
            }
            Peer::Bpftrace => {
                let mut child = Command::new("bpftrace")
                    .arg("-e")
                    .arg(bpftrace.map_or_else(bpftrace_program, str::to_owned))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace (cargo xtask setup installs it)")?;
                let out = child.stdout.take().context("bpftrace stdout")?;
                let ready = watch(out, "Attaching", stderr.clone());
                (child, ready, None)
            }
        };
        let (ready, reader) = ready;
        let mut running = Running { peer, child: Some(child), log, stderr, reader: Some(reader) };
        if ready.recv_timeout(Duration::from_secs(60)).is_err() {
            running.stop();
            let said = running.stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
            bail!("{} was not ready within 60 s:\n{said}", peer.name());
        }
        if peer == Peer::Bpftrace {
            // "Attaching N probes..." comes before the last probe is attached.
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// User + system CPU time of the process so far.
    pub fn cpu(&self) -> Option<Duration> {
        process_cpu(self.pid()?)
    }

    /// Peak resident set size (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGTERM (the observer drains, reconciles and writes its last
    /// records) or SIGINT (bpftrace prints its maps), then waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signal = if self.peer == Peer::Bpftrace {
                nix::sys::signal::Signal::SIGINT
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
        // The pipe closed with the process: the reader has every line.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Run count and run time of each of the process's eBPF programs, by
    /// name (kernel.bpf_stats_enabled must be 1 for the times to move).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        let Some(pid) = self.pid() else { return Vec::new() };
        let mut ids = std::collections::HashSet::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
            for entry in dir.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
                if let Some(id) = text.lines().find_map(|l| l.strip_prefix("prog_id:")) {
                    if let Ok(id) = id.trim().parse::<u32>() {
                        ids.insert(id);
                    }
                }
            }
        }
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .map(|p| ProgramStat {
                name: p.name_as_str().unwrap_or("?").to_owned(),
                runs: p.run_count(),
                ns: p.run_time().as_nanos() as u64,
            })
            .collect()
    }

    /// The counts bpftrace printed at exit, per tracepoint.
    pub fn bpftrace_counts(&self) -> Vec<(String, u64)> {
        let lines = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .filter_map(|l| {
                let (probe, n) = l.strip_prefix("@[")?.split_once("]: ")?;
                Some((probe.to_owned(), n.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
