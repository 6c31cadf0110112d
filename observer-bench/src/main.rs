//! `observer-bench` (`cargo xtask bench` builds it and the observer's
//! release binary, and runs it): what the observer costs, in network
//! namespaces on loopback, against a baseline taken in the same run.
//!
//! A developer tool, not part of the product: its load generators (a
//! raw-socket SYN flooder, connect() storms) have no place in the binary
//! an admin installs, so they live in this crate of their own, which
//! `cargo xtask install` never builds.
//!
//! 1. healthy web traffic: nginx answering wrk with `Connection: close`,
//!    requests per second; and small messages: iperf3 with 128-byte
//!    writes, messages per second (`healthy`). The observer must cost these
//!    nearly nothing, and report no failure for them;
//! 2. refused storm: connect() to a closed port, several threads; attempts
//!    per second;
//! 3. SYN flood: raw SYNs from `--clients` distinct addresses to a listener
//!    whose accept queue is full; SYNs the listener processed per second
//!    (TcpExtListenOverflows);
//! 4. the observer's CPU time (utime + stime of its process) per million
//!    failures, and its peak RSS (VmHWM) during the flood;
//! 5. exactness: the observer's count in its JSON log (samples plus
//!    reconciliation records) against the kernel's counter (nstat) for the
//!    same run: refused = TcpOutRsts, listen_overflow = TcpExtListenOverflows.
//!
//! Each workload runs with no observer (the baseline), with the observer,
//! and with a bpftrace one-liner counting the same hooks. Noise (two CPUs
//! shared with builds) is tamed by rounds: every round runs
//! each peer once per workload, in an order that alternates between rounds, and
//! each peer's throughput is reported as the median over rounds of its rate
//! divided by the baseline's rate of the same round. Every run is bounded by
//! `--seconds` and `--max-failures`.

mod healthy;
mod load;
mod peer;

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context as _};
use observer_common::Action;
use serde::Serialize;

use self::peer::{Peer, ProgramStat, Running};
use observer::{event::FailureEvent, lab::ns::Netns};

/// What the observer costs healthy traffic and failure storms, against a
/// baseline and a bpftrace peer in the same run (as root).
#[derive(Debug, clap::Parser)]
#[command(name = "observer-bench")]
pub struct BenchArgs {
    /// The observer binary to measure (default: `observer` beside this one).
    #[arg(long, value_name = "PATH")]
    pub observer: Option<PathBuf>,
    /// Rounds: each runs every peer once per workload, order alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Load threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Distinct client addresses in the SYN flood.
    #[arg(long, default_value_t = 100_000)]
    pub clients: u32,
    /// Most failures one run makes (the other bound besides --seconds).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_failures: u64,
    /// Directory for the JSON report (bench-<unix time>.json).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Skip the bpftrace peer (when bpftrace is not installed).
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Run only these peers (repeatable; the baseline always runs).
    #[arg(long, value_enum)]
    pub peer: Vec<Peer>,
    /// Run only these workloads (repeatable).
    #[arg(long, value_enum)]
    pub workload: Vec<Workload>,
    /// Another program for the bpftrace peer (experiments: raw tracepoints, say).
    #[arg(long, value_name = "PROGRAM")]
    pub bpftrace_program: Option<String>,
    /// Skip the profile runs (the observer with kernel.bpf_stats_enabled,
    /// for the kernel time of each hook per failure).
    #[arg(long)]
    pub no_profile: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Web,
    SmallMessages,
    Refused,
    SynFlood,
}

impl Workload {
    const ALL: [Workload; 4] = [Workload::Web, Workload::SmallMessages, Workload::Refused, Workload::SynFlood];

    fn name(self) -> &'static str {
        match self {
            Workload::Web => "web (nginx)",
            Workload::SmallMessages => "128 B messages",
            Workload::Refused => "refused storm",
            Workload::SynFlood => "SYN flood",
        }
    }

    /// What one unit of the workload is (the rates count them).
    fn unit(self) -> &'static str {
        match self {
            Workload::Web => "request",
            Workload::SmallMessages => "message",
            Workload::Refused | Workload::SynFlood => "failure",
        }
    }

    /// Healthy traffic: every connection succeeds; the observer must
    /// report nothing and cost nearly nothing.
    fn healthy(self) -> bool {
        matches!(self, Workload::Web | Workload::SmallMessages)
    }

    /// For a storm, the observer's action for each failure and the
    /// kernel's own counter of it.
    fn counted_as(self) -> Option<(Action, &'static str)> {
        match self {
            Workload::Refused => Some((Action::Refused, "TcpOutRsts")),
            Workload::SynFlood => Some((Action::ListenOverflow, "TcpExtListenOverflows")),
            Workload::Web | Workload::SmallMessages => None,
        }
    }
}

const REFUSED_PORT: u16 = 9;
const FLOOD_PORT: u16 = 8080;

/// The namespaces and the listener with a full accept queue.
struct Env {
    refused: Netns,
    flood: Netns,
    /// nginx and iperf3, when a healthy workload runs.
    healthy: Option<healthy::Healthy>,
    dir: PathBuf,
    /// The observer binary the observer peers run.
    observer: PathBuf,
    _listener: socket2::Socket,
    _queued: std::net::TcpStream,
}

impl Env {
    fn new(dir: PathBuf, observer: PathBuf, with_healthy: bool) -> anyhow::Result<Env> {
        let refused = Netns::new("bench-refused").map_err(|e| anyhow!(e))?;
        let flood = Netns::new("bench-flood").map_err(|e| anyhow!(e))?;
        let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, FLOOD_PORT));
        let (listener, queued) = flood
            .run(move || -> std::io::Result<(socket2::Socket, std::net::TcpStream)> {
                let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                l.bind(&to.into())?;
                // Backlog 0 holds one connection; the kernel's test is
                // "queued > backlog", so one handshake fills it for good.
                l.listen(0)?;
                let queued = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                std::thread::sleep(Duration::from_millis(50));
                Ok((l, queued))
            })
            .map_err(|e| anyhow!(e))?
            .context("a listener with a full accept queue")?;
        let healthy = if with_healthy { Some(healthy::Healthy::start(&dir)?) } else { None };
        Ok(Env { refused, flood, healthy, dir, observer, _listener: listener, _queued: queued })
    }

    fn healthy(&self) -> anyhow::Result<&healthy::Healthy> {
        self.healthy.as_ref().context("the healthy workloads were not started")
    }

    /// The namespace of a storm (the healthy workloads have their own).
    fn netns(&self, workload: Workload) -> &Netns {
        match workload {
            Workload::SynFlood => &self.flood,
            _ => &self.refused,
        }
    }

    fn netns_inode(&self, workload: Workload) -> u32 {
        match (&self.healthy, workload.healthy()) {
            (Some(h), true) => h.netns_inode(),
            _ => self.netns(workload).inode(),
        }
    }
}

/// nstat's absolute counters inside a namespace.
fn nstat(ns: &Netns) -> anyhow::Result<HashMap<String, u64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nstat", "-asz"])
        .output()
        .context("running nstat (iproute2)")?;
    if !out.status.success() {
        bail!("nstat: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect())
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0))
}

/// The observer's counts for one namespace, from its JSON log.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Logged {
    /// Sum of event.count.
    pub count: u64,
    /// Failure records (samples and reconciliation records).
    pub records: u64,
    pub reconciled_records: u64,
}

impl Logged {
    fn add(self, other: &Logged) -> Logged {
        Logged {
            count: self.count + other.count,
            records: self.records + other.records,
            reconciled_records: self.reconciled_records + other.reconciled_records,
        }
    }
}

fn logged(log: &Path, netns: u32) -> anyhow::Result<HashMap<Action, Logged>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut out: HashMap<Action, Logged> = HashMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<FailureEvent>(line) else { continue };
        if e.event.dataset != observer::event::Dataset::Failure || e.observer.netns != netns {
            continue;
        }
        let l = out.entry(e.event.action).or_default();
        l.count += e.event.count;
        l.records += 1;
        l.reconciled_records += e.event.reconciled as u64;
    }
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct ObserverRun {
    /// The observer's count of the storm's action (event.count summed);
    /// for healthy traffic, of any failure in its namespace.
    pub counted: u64,
    /// The kernel's counter for the same failures (nstat delta); 0 for
    /// healthy traffic.
    pub kernel: u64,
    pub exact: bool,
    pub records: u64,
    pub reconciled_records: u64,
    /// CPU time of the observer process during the run (and 1.5 s after).
    pub cpu_secs: f64,
    pub peak_rss_kib: Option<u64>,
    /// Outbound side of the refused workload: connect_failed vs TcpAttemptFails.
    pub connect_failed: Option<(u64, u64)>,
    /// Loss warnings the observer printed during the run.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub workload: Workload,
    pub peer: Peer,
    pub round: u32,
    pub seconds: f64,
    /// Connection attempts (refused) or SYNs sent (flood); requests or
    /// messages (healthy).
    pub attempts: u64,
    /// What the rates count: failures by the kernel's counter (TcpOutRsts
    /// or TcpExtListenOverflows), or the healthy workload's requests or
    /// messages.
    pub units: u64,
    /// Units per second of wall-clock time.
    pub rate: f64,
    /// CPU time of the load threads, kernel work on their behalf included.
    pub load_cpu_secs: f64,
    /// Units per CPU-second of the load: the throughput the peers are
    /// compared by (insensitive to other processes taking the CPUs).
    pub rate_per_cpu: f64,
    /// A profile run (bpf_stats on): not part of the throughput figures.
    pub profile: bool,
    /// Profile runs: each observer program's runs and kernel time.
    pub hooks: Vec<HookCost>,
    pub observer: Option<ObserverRun>,
    /// CPU time of the bpftrace process, and its counts per tracepoint.
    pub bpftrace_cpu_secs: Option<f64>,
    pub bpftrace_counts: Vec<(String, u64)>,
}

fn load(env: &Env, workload: Workload, args: &BenchArgs, threads: usize, seconds: f64) -> anyhow::Result<load::Load> {
    let path = env.netns(workload).path();
    let duration = Duration::from_secs_f64(seconds);
    match workload {
        Workload::Refused => load::refused_storm(
            &path,
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, REFUSED_PORT)),
            threads,
            duration,
            args.max_failures,
        ),
        Workload::SynFlood => load::syn_flood(
            &path,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, FLOOD_PORT),
            args.clients,
            threads,
            duration,
            args.max_failures,
        ),
        Workload::Web => env.healthy()?.web(seconds),
        Workload::SmallMessages => env.healthy()?.small_messages(seconds),
    }
}

/// One program's share of a unit (failure, request, message), from a profile run.
#[derive(Clone, Debug, Serialize)]
pub struct HookCost {
    pub program: String,
    pub runs_per_unit: f64,
    pub ns_per_run: f64,
    pub ns_per_unit: f64,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn hook_costs(before: &[ProgramStat], after: &[ProgramStat], units: u64) -> Vec<HookCost> {
    let f = units.max(1) as f64;
    let mut out: Vec<HookCost> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name);
            let runs = a.runs.saturating_sub(b.map_or(0, |b| b.runs));
            let ns = a.ns.saturating_sub(b.map_or(0, |b| b.ns));
            HookCost {
                program: a.name.clone(),
                runs_per_unit: runs as f64 / f,
                ns_per_run: if runs == 0 { 0.0 } else { ns as f64 / runs as f64 },
                ns_per_unit: ns as f64 / f,
            }
        })
        .collect();
    out.sort_by(|a, b| b.ns_per_unit.total_cmp(&a.ns_per_unit));
    out
}

fn one(
    env: &Env,
    workload: Workload,
    peer: Peer,
    round: u32,
    args: &BenchArgs,
    threads: usize,
    profile: bool,
) -> anyhow::Result<Run> {
    let ns = env.netns(workload);
    let mut running = Running::start(peer, &env.dir, &env.observer, args.bpftrace_program.as_deref())?;
    // The storms' failures are read from the kernel's counters; a healthy
    // workload's units (requests, messages) from its client.
    let counted_as = workload.counted_as();
    let before = if counted_as.is_some() { nstat(ns)? } else { HashMap::new() };
    let cpu0 = running.cpu();
    let progs0 = if profile { running.program_stats() } else { Vec::new() };
    let done = load(env, workload, args, threads, args.seconds)?;
    let progs1 = if profile { running.program_stats() } else { Vec::new() };
    let after = if counted_as.is_some() { nstat(ns)? } else { HashMap::new() };
    if peer.is_observer() {
        // Reconciliation runs every second: its cost belongs to the run.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let cpu = match (cpu0, running.cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let peak_rss_kib = running.peak_rss_kib();
    // The observer settles every count at shutdown (detach, drain, reconcile).
    running.stop();
    let units = match counted_as {
        Some((_, counter)) => delta(&before, &after, counter),
        None => done.attempts,
    };
    let rate = units as f64 / done.elapsed.as_secs_f64().max(1e-9);
    let mut run = Run {
        workload,
        peer,
        round,
        seconds: done.elapsed.as_secs_f64(),
        attempts: done.attempts,
        units,
        rate,
        load_cpu_secs: done.cpu.as_secs_f64(),
        rate_per_cpu: units as f64 / done.cpu.as_secs_f64().max(1e-9),
        profile,
        hooks: hook_costs(&progs0, &progs1, units),
        observer: None,
        bpftrace_cpu_secs: None,
        bpftrace_counts: Vec::new(),
    };
    match (&running.log, peer) {
        (Some(log), _) => {
            let counts = logged(log, env.netns_inode(workload))?;
            // A storm's action must match the kernel's counter; healthy
            // traffic must give no failure. Resets are not counted there:
            // wrk and iperf3 abort their last connections when they stop
            // (unread data at close), and those are real resets.
            let (ours, kernel) = match counted_as {
                Some((action, _)) => (counts.get(&action).copied().unwrap_or_default(), units),
                None => (
                    counts
                        .iter()
                        .filter(|(a, _)| !matches!(a, Action::ResetSent | Action::ResetReceived))
                        .fold(Logged::default(), |acc, (_, l)| acc.add(l)),
                    0,
                ),
            };
            let connect_failed = (workload == Workload::Refused).then(|| {
                (counts.get(&Action::ConnectFailed).map_or(0, |l| l.count), delta(&before, &after, "TcpAttemptFails"))
            });
            let warnings = running
                .stderr
                .lock()
                .map(|l| l.iter().filter(|l| l.contains("lost ")).cloned().collect())
                .unwrap_or_default();
            run.observer = Some(ObserverRun {
                counted: ours.count,
                kernel,
                exact: ours.count == kernel,
                records: ours.records,
                reconciled_records: ours.reconciled_records,
                cpu_secs: cpu.unwrap_or(f64::NAN),
                peak_rss_kib,
                connect_failed,
                warnings,
            });
        }
        (None, Peer::Bpftrace) => {
            run.bpftrace_cpu_secs = cpu;
            run.bpftrace_counts = running.bpftrace_counts();
        }
        _ => {}
    }
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerSummary {
    pub workload: Workload,
    pub peer: Peer,
    /// Median units per second (wall clock) over the rounds.
    pub rate: f64,
    /// Median units per CPU-second of the load over the rounds.
    pub rate_per_cpu: f64,
    /// Median over rounds of rate_per_cpu / the same round's baseline's:
    /// the throughput ratio the targets are judged by.
    pub ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
    /// The same with wall-clock rates (noisy on a shared machine).
    pub wall_ratio: f64,
    pub runs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ObserverSummary {
    pub workload: Workload,
    /// The observer's count and the kernel's over all its runs.
    pub counted: u64,
    pub kernel: u64,
    pub exact: bool,
    pub cpu_secs_per_million: f64,
    pub peak_rss_mib: f64,
}

/// Where the kernel time of one unit goes, from a profile run.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub workload: Workload,
    /// CPU time of one unit with no observer (baseline runs, median).
    pub baseline_ns_per_unit: f64,
    /// Kernel time of the observer's programs per unit (bpf_stats).
    pub hooks_ns_per_unit: f64,
    pub hooks: Vec<HookCost>,
}

fn profiles(runs: &[Run]) -> Vec<Profile> {
    Workload::ALL
        .into_iter()
        .filter_map(|workload| {
            let p = runs.iter().find(|r| r.workload == workload && r.profile)?;
            let baseline = median(
                runs.iter()
                    .filter(|r| r.workload == workload && r.peer == Peer::Baseline && !r.profile)
                    .map(|r| 1e9 / r.rate_per_cpu)
                    .collect(),
            );
            Some(Profile {
                workload,
                baseline_ns_per_unit: baseline,
                hooks_ns_per_unit: p.hooks.iter().map(|h| h.ns_per_unit).sum(),
                hooks: p.hooks.clone(),
            })
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started: String,
    pub kernel: String,
    pub cpus: usize,
    pub rounds: u32,
    pub seconds: f64,
    pub threads: usize,
    pub clients: u32,
    pub peers: Vec<PeerSummary>,
    pub observer: Vec<ObserverSummary>,
    pub profile: Vec<Profile>,
    pub targets: Vec<Target>,
    pub runs: Vec<Run>,
}

fn summarize(runs: &[Run]) -> (Vec<PeerSummary>, Vec<ObserverSummary>) {
    let mut peers = Vec::new();
    let mut observer = Vec::new();
    for workload in Workload::ALL {
        let baseline: BTreeMap<u32, &Run> = runs
            .iter()
            .filter(|r| r.workload == workload && r.peer == Peer::Baseline && !r.profile)
            .map(|r| (r.round, r))
            .collect();
        for peer in Peer::ALL {
            let mine: Vec<&Run> =
                runs.iter().filter(|r| r.workload == workload && r.peer == peer && !r.profile).collect();
            if mine.is_empty() {
                continue;
            }
            let ratios: Vec<f64> =
                mine.iter().filter_map(|r| baseline.get(&r.round).map(|b| r.rate_per_cpu / b.rate_per_cpu)).collect();
            let wall: Vec<f64> = mine.iter().filter_map(|r| baseline.get(&r.round).map(|b| r.rate / b.rate)).collect();
            peers.push(PeerSummary {
                workload,
                peer,
                rate: median(mine.iter().map(|r| r.rate).collect()),
                rate_per_cpu: median(mine.iter().map(|r| r.rate_per_cpu).collect()),
                wall_ratio: median(wall),
                ratio: median(ratios.clone()),
                min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                max_ratio: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                runs: mine.len(),
            });
        }
        let obs: Vec<&ObserverRun> = runs
            .iter()
            // The configuration an admin gets by default; the peer without
            // fallbacks does not see every failure on every kernel.
            .filter(|r| r.workload == workload && r.peer == Peer::Observer)
            .filter_map(|r| r.observer.as_ref())
            .collect();
        if !obs.is_empty() {
            let counted = obs.iter().map(|o| o.counted).sum();
            let kernel = obs.iter().map(|o| o.kernel).sum::<u64>();
            let cpu: f64 = obs.iter().map(|o| o.cpu_secs).sum();
            observer.push(ObserverSummary {
                workload,
                counted,
                kernel,
                exact: obs.iter().all(|o| o.exact),
                cpu_secs_per_million: cpu / (kernel.max(1) as f64 / 1e6),
                peak_rss_mib: obs.iter().filter_map(|o| o.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            });
        }
    }
    (peers, observer)
}

fn targets(peers: &[PeerSummary], observer: &[ObserverSummary], clients: u32) -> Vec<Target> {
    let ratio = |workload, peer| peers.iter().find(|p| p.workload == workload && p.peer == peer).map(|p| p.ratio);
    let mut out = Vec::new();
    for workload in Workload::ALL {
        if let Some(o) = ratio(workload, Peer::Observer) {
            // Healthy traffic is what the observer meets every hour: it
            // must cost it nearly nothing; a storm is rare.
            let floor = if workload.healthy() { 0.99 } else { 0.97 };
            out.push(Target {
                what: format!("{}: throughput with the observer", workload.name()),
                target: format!(">= {:.0}% of baseline", floor * 100.0),
                measured: format!("{:.1}%", o * 100.0),
                met: o >= floor,
            });
            if let (Some(b), false) = (ratio(workload, Peer::Bpftrace), workload.healthy()) {
                out.push(Target {
                    what: format!("{}: observer vs bpftrace peer", workload.name()),
                    target: "no worse than bpftrace".into(),
                    measured: format!("{:.1}% vs {:.1}%", o * 100.0, b * 100.0),
                    met: o >= b,
                });
            }
        }
    }
    for o in observer {
        out.push(if o.workload.healthy() {
            Target {
                what: format!("{}: failures the observer reports (teardown resets aside)", o.workload.name()),
                target: "none".into(),
                measured: o.counted.to_string(),
                met: o.counted == 0,
            }
        } else {
            Target {
                what: format!("{}: observer count vs kernel counter", o.workload.name()),
                target: "exact".into(),
                measured: format!("{} vs {}", o.counted, o.kernel),
                met: o.exact,
            }
        });
    }
    if let Some(f) = observer.iter().find(|o| o.workload == Workload::SynFlood) {
        out.push(Target {
            what: format!("peak RSS during a flood of {clients} client addresses"),
            target: "< 64 MiB".into(),
            measured: format!("{:.1} MiB", f.peak_rss_mib),
            met: f.peak_rss_mib < 64.0,
        });
    }
    let storms = || observer.iter().filter(|o| !o.workload.healthy());
    let cpu = storms().map(|o| o.cpu_secs_per_million).fold(0.0f64, f64::max);
    if storms().next().is_some() {
        out.push(Target {
            what: "observer CPU per million failures (worst workload)".into(),
            target: "< 1 s".into(),
            measured: format!("{cpu:.3} s"),
            met: cpu < 1.0,
        });
    }
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn print(report: &Report) {
    println!(
        "\nobserver bench: {} rounds x {:.1} s per run, {} load threads, {} flood clients; kernel {}, {} CPUs\n",
        report.rounds, report.seconds, report.threads, report.clients, report.kernel, report.cpus
    );
    println!(
        "{:<15} {:<24} {:>12} {:>13} {:>12} {:>15} {:>9}",
        "workload", "peer", "units/s", "per CPU-s", "vs baseline", "(min..max)", "wall"
    );
    for p in &report.peers {
        println!(
            "{:<15} {:<24} {:>12.0} {:>13.0} {:>11.1}% {:>7.1}..{:>5.1}% {:>8.1}%",
            p.workload.name(),
            p.peer.name(),
            p.rate,
            p.rate_per_cpu,
            p.ratio * 100.0,
            p.min_ratio * 100.0,
            p.max_ratio * 100.0,
            p.wall_ratio * 100.0
        );
    }
    println!();
    println!("{:<15} {:>34} {:>14} {:>12}", "observer", "count = kernel counter", "CPU s/M", "peak RSS");
    for o in &report.observer {
        let counter = o.workload.counted_as().map_or("healthy: expects 0", |(_, c)| c);
        println!(
            "{:<15} {:>34} {:>14.3} {:>8.1} MiB",
            o.workload.name(),
            format!("{} {} {} ({counter})", o.counted, if o.exact { "=" } else { "!=" }, o.kernel),
            o.cpu_secs_per_million,
            o.peak_rss_mib
        );
    }
    for p in &report.profile {
        let unit = p.workload.unit();
        println!(
            "\nCPU time per {unit}, {}: {:.0} ns without observer; the observer's programs add {:.0} ns ({:.2}%)",
            p.workload.name(),
            p.baseline_ns_per_unit,
            p.hooks_ns_per_unit,
            100.0 * p.hooks_ns_per_unit / p.baseline_ns_per_unit
        );
        let (runs, per) = (format!("runs/{unit}"), format!("ns/{unit}"));
        println!("  {:<24} {:>14} {:>10} {:>14}", "program", runs, "ns/run", per);
        for h in p.hooks.iter().filter(|h| h.runs_per_unit > 0.0) {
            println!("  {:<24} {:>14.2} {:>10.0} {:>14.0}", h.program, h.runs_per_unit, h.ns_per_run, h.ns_per_unit);
        }
    }
    println!("\ntargets");
    for t in &report.targets {
        println!("  [{}] {}: {} (target {})", if t.met { "met" } else { "MISSED" }, t.what, t.measured, t.target);
    }
}

fn main() -> std::process::ExitCode {
    let args = <BenchArgs as clap::Parser>::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("observer-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The observer binary: `--observer`, or `observer` beside this binary
/// (`cargo build --release -p observer -p observer-bench` puts both in
/// target/release).
fn observer_exe(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let exe = match &args.observer {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding this binary")?.with_file_name("observer"),
    };
    if !exe.is_file() {
        bail!("no observer binary at {} (build it, or name it with --observer)", exe.display());
    }
    Ok(exe)
}

fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs root (it loads eBPF programs and creates network namespaces)");
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = args.threads.unwrap_or(cpus).max(1);
    let started = SystemTime::now();
    let dir = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let peers: Vec<Peer> = Peer::ALL
        .into_iter()
        .filter(|p| !(args.no_bpftrace && *p == Peer::Bpftrace))
        .filter(|p| args.peer.is_empty() || *p == Peer::Baseline || args.peer.contains(p))
        .collect();
    let workloads: Vec<Workload> =
        Workload::ALL.into_iter().filter(|s| args.workload.is_empty() || args.workload.contains(s)).collect();
    let env = Env::new(dir.clone(), observer_exe(args)?, workloads.iter().any(|w| w.healthy()))?;
    // Warm-up, and a check that the storms really fail (the flood
    // overflows the listener) and the healthy workloads really work.
    for &workload in &workloads {
        let ns = env.netns(workload);
        let before = nstat(ns)?;
        let done = load(&env, workload, args, threads, 0.3)?;
        if let Some((_, counter)) = workload.counted_as() {
            if delta(&before, &nstat(ns)?, counter) == 0 {
                bail!("warm-up of the {}: the kernel counted no failure ({counter})", workload.name());
            }
        } else if done.attempts == 0 {
            bail!("warm-up of the {}: no {} completed", workload.name(), workload.unit());
        }
    }

    let mut runs = Vec::new();
    let total = args.rounds as usize * workloads.len() * peers.len();
    for round in 0..args.rounds {
        let mut order = peers.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for &workload in &workloads {
            for &peer in &order {
                eprintln!(
                    "bench: [{}/{total}] round {} {} with {}",
                    runs.len() + 1,
                    round + 1,
                    workload.name(),
                    peer.name()
                );
                let run = one(&env, workload, peer, round, args, threads, false)
                    .with_context(|| format!("{} with {}", workload.name(), peer.name()))?;
                runs.push(run);
            }
        }
    }
    if !args.no_profile {
        let was = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
        std::fs::write(BPF_STATS, "1").with_context(|| format!("enabling {BPF_STATS}"))?;
        for &workload in &workloads {
            eprintln!("bench: profile: {} with the observer, kernel.bpf_stats_enabled = 1", workload.name());
            let run = one(&env, workload, Peer::Observer, args.rounds, args, threads, true);
            match run {
                Ok(r) => runs.push(r),
                Err(e) => {
                    let _ = std::fs::write(BPF_STATS, was.trim());
                    return Err(e.context(format!("profile of the {}", workload.name())));
                }
            }
        }
        let _ = std::fs::write(BPF_STATS, was.trim());
    }
    let (peer_summary, observer) = summarize(&runs);
    let report = Report {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        kernel: kernel_release(),
        cpus,
        rounds: args.rounds,
        seconds: args.seconds,
        threads,
        clients: args.clients,
        targets: targets(&peer_summary, &observer, args.clients),
        peers: peer_summary,
        observer,
        profile: profiles(&runs),
        runs,
    };
    print(&report);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let secs = started.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let path = args.out.join(format!("bench-{secs}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nwritten: {}", path.display());
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workload: Workload, peer: Peer, round: u32, rate_per_cpu: f64) -> Run {
        Run {
            workload,
            peer,
            round,
            seconds: 1.0,
            attempts: 0,
            units: 1_000_000,
            rate: rate_per_cpu * 2.0,
            load_cpu_secs: 0.0,
            rate_per_cpu,
            profile: false,
            hooks: Vec::new(),
            observer: None,
            bpftrace_cpu_secs: None,
            bpftrace_counts: Vec::new(),
        }
    }

    #[test]
    fn median_of_odd_and_even_counts_ignores_nan() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn ratios_are_per_round_against_that_rounds_baseline() {
        // The machine got twice as slow in round 1: per-round ratios hide it.
        let runs = vec![
            run(Workload::Refused, Peer::Baseline, 0, 100.0),
            run(Workload::Refused, Peer::Observer, 0, 90.0),
            run(Workload::Refused, Peer::Baseline, 1, 50.0),
            run(Workload::Refused, Peer::Observer, 1, 45.0),
        ];
        let (peers, _) = summarize(&runs);
        let o = peers.iter().find(|p| p.peer == Peer::Observer).unwrap();
        assert!((o.ratio - 0.9).abs() < 1e-9, "{o:?}");
        assert!((o.min_ratio - 0.9).abs() < 1e-9 && (o.max_ratio - 0.9).abs() < 1e-9);
        let t = targets(&peers, &[], 1);
        assert!(t.iter().any(|t| !t.met && t.measured == "90.0%"), "{t:?}");
    }

    #[test]
    fn hook_costs_are_deltas_per_failure() {
        let before = vec![ProgramStat { name: "a".into(), runs: 10, ns: 1000 }];
        let after = vec![
            ProgramStat { name: "a".into(), runs: 30, ns: 5000 },
            ProgramStat { name: "b".into(), runs: 10, ns: 9000 },
        ];
        let c = hook_costs(&before, &after, 10);
        assert_eq!(c[0].program, "b", "most expensive first");
        assert_eq!((c[1].runs_per_unit, c[1].ns_per_run, c[1].ns_per_unit), (2.0, 200.0, 400.0));
    }
}
