//! `observer run`: wires the stages together and owns their lifetimes.
//!
//! capture (ring buffer) -> decode -> diagnose (+ enrich) -> sinks, one
//! direction, each stage a task joined by channels. Shutdown on
//! SIGINT/SIGTERM: stop reading, drain what the kernel already submitted,
//! detach the programs, fsync the log.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use aya::maps::RingBuf;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    capture::Capture,
    config::Config,
    counters::{CounterStage, KernelCounters},
    decode::{Clock, Decoder},
    diagnose::Diagnoser,
    event::FailureEvent,
    history,
    hooks::{self, HookState},
    kernel::{layout::KernelLayout, tracefs::Tracefs},
    privilege,
    sink::{
        ndjson::{NdjsonSink, Policy},
        outputs::Outputs,
        Record,
    },
    stats::Stats,
};

/// The cgroup v2 root: unified at /sys/fs/cgroup, or the hybrid layout's
/// /sys/fs/cgroup/unified.
pub fn cgroup_root(config: &Config) -> PathBuf {
    if !config.kernel.cgroup_root.as_os_str().is_empty() {
        return config.kernel.cgroup_root.clone();
    }
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if std::path::Path::new(candidate).join("cgroup.controllers").exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("/sys/fs/cgroup/unified")
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    privilege::check()?;
    let tracefs = Tracefs::new(&config.kernel.tracefs);
    match tracefs.ensure_mounted() {
        Ok(true) => info!("mounted tracefs at {}", tracefs.root().display()),
        Ok(false) => {}
        Err(e) => warn!("{e}; tracepoint hooks will be unavailable"),
    }
    let layout =
        KernelLayout::discover(&tracefs, &config.kernel.btf, &config.kernel.kallsyms, config.capture.samples_per_sec);
    config.disabled_hooks().map_err(anyhow::Error::msg)?;
    let (mut ebpf, statuses) = hooks::load_configured(&config, &layout).context("loading the eBPF object")?;
    for s in &statuses {
        match &s.state {
            HookState::Attached => info!("hook {} attached", s.hook),
            HookState::Disabled => info!("hook {} disabled by configuration", s.hook),
            HookState::Unavailable(why) => {
                warn!("hook {} unavailable: {why}; not visible: {}", s.hook, s.hook.spec().loses)
            }
        }
    }
    for c in &layout.coverage {
        match (c.lost_because(&statuses), &c.source) {
            (None, Ok(source)) => info!("{}: seen through {}", c.label(), source.describe()),
            (Some(why), _) => warn!("{}: not visible on this kernel: {why}", c.label()),
            (None, Err(why)) => warn!("{}: not visible on this kernel: {why}", c.label()),
        }
    }
    let attached = statuses.iter().filter(|s| s.attached()).count();
    if attached == 0 {
        bail!("no hook could be attached; run `observer doctor` for the reasons");
    }

    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing from the object")?)
        .context("EVENTS is not a ring buffer")?;
    let stats = Arc::new(Stats::default());
    let decoder = Decoder::new(Clock::now(), layout.names.clone());
    let capture = Capture::new(ring, decoder, stats.clone()).context("polling the ring buffer")?;
    let keys = config.capture.counter_entries as usize;
    let counters = KernelCounters::take(&mut ebpf, keys).context("taking the counter maps")?;
    let capture = capture.with_counters(CounterStage::new(
        counters,
        keys,
        Duration::from_millis(config.capture.counter_poll_ms),
        Duration::from_secs(config.capture.loss_warning_secs),
        stats.clone(),
    ));
    let policy = Policy {
        max_bytes: config.daemon.json_log_max_bytes,
        keep: config.daemon.json_log_keep,
        fsync_interval: Duration::from_millis(config.daemon.json_log_fsync_ms),
    };
    let mut sink = NdjsonSink::with_policy(&config.daemon.json_log, policy)
        .with_context(|| format!("opening the JSON log {}", config.daemon.json_log.display()))?;
    let outputs = Outputs::start(&config, stats.clone(), &statuses).await.context("starting the outputs")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (tx, events) = mpsc::channel::<FailureEvent>(4096);
    let capture_task = tokio::spawn(capture.run(tx, shutdown_rx));
    let (records_tx, mut rx) = mpsc::channel::<Record>(4096);
    let diagnoser = Diagnoser::new(config.diagnosis.clone(), &config.enrich);
    let poll_every = Duration::from_millis(config.enrich.poll_interval_ms);
    let poller = tokio::spawn(diagnoser.poller(poll_every));
    let diagnose_task = tokio::spawn(diagnose(diagnoser, events, records_tx));

    // The history is an output like the others: if it cannot open, the
    // daemon still captures and logs, and says what is missing.
    let history = match history::Store::open(&config.daemon.state_dir, &config.history, &config.daemon.group) {
        Ok(store) => Some(history::Writer::start(store, stats.clone(), config.history.pending_max)),
        Err(e) => {
            warn!("history unavailable: {e}; `observer summary/events/why` will not see this run");
            None
        }
    };
    let sink_stats = stats.clone();
    let sink_task = tokio::spawn(async move {
        let mut warned = false;
        let mut report = |result: std::io::Result<()>, path: &std::path::Path| match result {
            Ok(()) => warned = false,
            Err(e) => {
                Stats::inc(&sink_stats.write_errors);
                if !warned {
                    warn!("writing {}: {e}", path.display());
                    warned = true;
                }
            }
        };
        while let Some(first) = rx.recv().await {
            // Write what is already queued, then flush once per burst.
            let mut next = Some(first);
            while let Some(record) = next.take() {
                if let Some(h) = &history {
                    h.send(&record, &sink_stats);
                }
                let result = sink.write(&record);
                if result.is_ok() {
                    Stats::inc(&sink_stats.written);
                }
                report(result, sink.path());
                outputs.offer(&record);
                next = rx.try_recv().ok();
            }
            let result = sink.flush();
            report(result, sink.path());
        }
        if let Err(e) = sink.sync() {
            warn!("syncing {}: {e}", sink.path().display());
        }
        outputs.shutdown(Duration::from_secs(2)).await;
        if let Some(h) = history {
            // Blocking join of the writer thread: it commits what it holds.
            let _ = tokio::task::spawn_blocking(move || h.close()).await;
        }
    });

    // Readiness line: tests and service managers wait for it.
    info!("ready: {attached} of {} hooks attached; JSON log {}", statuses.len(), config.daemon.json_log.display());
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    // Detach first (the programs go with the object; the maps were taken
    // out): the last drain and counter poll then see every occurrence.
    drop(ebpf);
    let _ = shutdown_tx.send(true);
    poller.abort();
    if let Err(e) = capture_task.await {
        warn!("capture task ended abnormally: {e}");
    }
    if let Err(e) = diagnose_task.await {
        warn!("diagnose task ended abnormally: {e}");
    }
    if let Err(e) = sink_task.await {
        warn!("sink task ended abnormally: {e}");
    }
    info!(
        "stopped: {} records, {} decode errors, {} write errors; {} occurrences in {} reconciliation records; \
         kernel loss: {} samples (ring buffer full, counted), {} uncounted (counter map full), {} uncounted \
         (read failed), {} uncounted (hook skipped); {} counter resets",
        Stats::get(&stats.records),
        Stats::get(&stats.decode_errors),
        Stats::get(&stats.write_errors),
        Stats::get(&stats.reconciled_occurrences),
        Stats::get(&stats.reconciled_records),
        Stats::get(&stats.kernel_ringbuf_full),
        Stats::get(&stats.kernel_counter_map_full),
        Stats::get(&stats.kernel_read_failed),
        Stats::get(&stats.kernel_hook_misses),
        Stats::get(&stats.counter_resets),
    );
    Ok(())
}

/// The diagnose stage: forwards every failure event to the sinks, feeds
/// the engine, and writes what is due on a 250 ms tick. Looking for due
/// diagnoses walks every tracked endpoint, so it runs on the tick rather
/// than after every burst, which in a flood comes thousands of times a
/// second; updates and resolutions need the tick anyway.
async fn diagnose(mut diagnoser: Diagnoser, mut events: mpsc::Receiver<FailureEvent>, out: mpsc::Sender<Record>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(first) = event else {
                    for d in diagnoser.unwritten().await {
                        let _ = out.send(Record::Diagnosis(Box::new(d))).await;
                    }
                    break;
                };
                let mut next = Some(first);
                while let Some(e) = next.take() {
                    diagnoser.observe(&e);
                    if out.send(Record::Failure(e)).await.is_err() {
                        return;
                    }
                    next = events.try_recv().ok();
                }
            }
            _ = tick.tick() => {
                for d in diagnoser.due().await {
                    if out.send(Record::Diagnosis(Box::new(d))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
