//! `observer run`: wires the stages together and owns their lifetimes.
//!
//! capture (ring buffer) -> decode -> fan-out: every event straight to the
//! sinks (JSON log, history, syslog, ...), and a copy to diagnose, whose
//! records join the sinks when the enrich worker has their facts. One
//! direction, each stage a task joined by channels; nothing on the way to
//! the log waits for a diagnosis (a hung `nft` delays only the diagnosis
//! that asked for it, by at most its deadline). Shutdown on
//! SIGINT/SIGTERM: stop reading, drain what the kernel already submitted,
//! detach the programs, fsync the log. SIGHUP (logrotate's postrotate)
//! reopens the JSON log and nothing else: the configuration is only read at
//! start, because most of it sizes kernel maps and programs already loaded.
//!
//! Before anything is loaded: one daemon per host (`instance`), and a
//! state directory that can hold the history, or a clear refusal.

use std::{sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context as _};
use aya::maps::RingBuf;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch, Notify},
};
use tracing::{info, warn};

use crate::{
    capture::Capture,
    config::{Config, OtlpEnv},
    counters::{CounterStage, KernelCounters},
    decode::{Clock, Decoder},
    diagnose::{record::DiagnosisRecord, Batch, Diagnoser},
    enrich::{worker, Enricher, Facts, Query},
    event::FailureEvent,
    health, history, hooks, instance,
    kernel::{
        hook::{parse_disabled, program_names, HookState},
        layout::KernelLayout,
        tracefs::Tracefs,
    },
    privilege,
    sink::{
        ndjson::{NdjsonSink, Policy},
        outputs::{OutputStats, Outputs, Sections, WarnLimiter},
        Record,
    },
    stats::Stats,
};

pub async fn run(config: Config, shared: bool) -> anyhow::Result<()> {
    privilege::check()?;
    // First of all: a SIGHUP from a logrotate run during start-up must not
    // kill the daemon (the default action), and a SIGTERM right after the
    // readiness line must find its handler installed.
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (_lock, store) = claim_state_dir(&config)?;
    let others = instance::others_attached(&program_names());
    if !others.is_empty() {
        let list = others.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if !shared {
            bail!(
                "another observer has its programs in the kernel: {list}; a second one would count every \
                 failure twice. Stop it (`systemctl stop observer`), or start this one with `run --shared` \
                 to run both on purpose"
            );
        }
        warn!("running beside another observer ({list}), as --shared asks: each counts every failure");
    }
    let tracefs = Tracefs::new(&config.kernel.tracefs);
    match tracefs.ensure_mounted() {
        Ok(true) => info!("mounted tracefs at {}", tracefs.root().display()),
        Ok(false) => {}
        Err(e) => warn!("{e}; tracepoint hooks will be unavailable"),
    }
    let layout = KernelLayout::discover(&tracefs, &config.kernel.btf, &config.kernel.kallsyms);
    let disabled = parse_disabled(&config.capture.disable_hooks).map_err(anyhow::Error::msg)?;
    let (mut ebpf, statuses) =
        hooks::load(&layout, &config.kernel.btf, &hooks::Settings::new(&config.capture, &disabled))
            .map_err(|e| explain_load_error(e, &config))?;
    for s in &statuses {
        match &s.state {
            HookState::Attached => info!("hook {} attached", s.hook),
            HookState::Disabled => info!("hook {} disabled by configuration", s.hook),
            HookState::NotNeeded(why) => info!("hook {} not attached: {why}", s.hook),
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
    let capture = capture.with_counters(
        CounterStage::new(
            counters,
            keys,
            Duration::from_millis(config.capture.counter_poll_ms),
            Duration::from_secs(config.capture.loss_warning_secs),
            stats.clone(),
        )
        .limit(config.capture.reconciliation_records_per_poll as usize),
    );
    let policy = Policy {
        max_bytes: config.daemon.json_log_max_bytes,
        keep: config.daemon.json_log_keep,
        fsync_interval: Duration::from_millis(config.daemon.json_log_fsync_ms),
        gid: history::group_id(&config.daemon.group).map_err(|e| anyhow!("daemon.group: {e}"))?.map(|g| g.as_raw()),
    };
    let log = NdjsonSink::with_policy(&config.daemon.json_log, policy)
        .with_context(|| format!("opening the JSON log {}", config.daemon.json_log.display()))?;
    // The OpenTelemetry variables are read here, once, and resolved with
    // [otlp] into the exporter's settings: the sink sees one section.
    let otlp = if config.otlp.enabled {
        let env = OtlpEnv::from_lookup(|name| std::env::var(name).ok());
        Some(config.otlp.resolve(&env).map_err(|e| anyhow!("otlp: {e}"))?)
    } else {
        None
    };
    let sections = Sections {
        syslog: &config.syslog,
        metrics: &config.metrics,
        alerts: &config.alerts,
        email: &config.email,
        otlp: otlp.as_ref(),
    };
    let outputs = Outputs::start(sections, stats.clone(), &statuses).await.context("starting the outputs")?;
    let output_stats = outputs.stats.clone();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (tx, events) = mpsc::channel::<FailureEvent>(4096);
    let capture_task = tokio::spawn(capture.run(tx, shutdown_rx));
    let (records_tx, rx) = mpsc::channel::<Record>(4096);
    let (diagnose_tx, diagnose_rx) = mpsc::channel::<FailureEvent>(DIAGNOSE_QUEUE);
    let fanout_task = tokio::spawn(fan_out(events, records_tx.clone(), diagnose_tx, stats.clone()));
    let history = store.map(|store| history::Writer::start(store, stats.clone(), config.history.pending_max));
    let mut enricher = Enricher::new(
        Duration::from_millis(config.enrich.snapshot_max_age_ms),
        Duration::from_secs(config.enrich.listener_history_secs),
        config.enrich.max_listener_history,
    );
    // The load goes to the history only: without one it is not sampled.
    let loads = history.as_ref().filter(|_| config.enrich.load_interval_secs > 0).map(history::Writer::loads);
    if loads.is_some() {
        enricher = enricher.with_load(Duration::from_secs(config.enrich.load_interval_secs));
    }
    let enricher = Arc::new(std::sync::Mutex::new(enricher));
    let load_stats = stats.clone();
    let poller = tokio::spawn(worker::poll_listeners(
        enricher.clone(),
        Duration::from_millis(config.enrich.poll_interval_ms),
        move |sample| {
            if let Some(l) = &loads {
                l.send(sample, &load_stats);
            }
        },
    ));
    let enrich = worker::spawn(
        enricher,
        worker::FirewallSettings {
            nft: config.enrich.nft.clone(),
            timeout: Duration::from_millis(config.enrich.command_timeout_ms),
            max_age: Duration::from_millis(config.enrich.snapshot_max_age_ms),
        },
    );
    let diagnose_task =
        tokio::spawn(diagnose(Diagnoser::new(config.diagnosis.clone()), diagnose_rx, enrich, records_tx));

    let reopen = Arc::new(Notify::new());
    let sink_task = tokio::spawn(sink(log, history, outputs, rx, reopen.clone(), stats.clone()));
    let health_writer = match health::Writer::new(&config.daemon.runtime_dir) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            warn!(
                "runtime directory {}: {e}; `observer doctor` will not see this daemon's losses",
                config.daemon.runtime_dir.display()
            );
            None
        }
    };
    let health_task =
        health_writer.clone().map(|w| tokio::spawn(report_health(w, stats.clone(), output_stats.clone())));

    // Readiness line: tests and service managers wait for it.
    info!("ready: {attached} of {} hooks attached; JSON log {}", statuses.len(), config.daemon.json_log.display());
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break }
            _ = sighup.recv() => {
                info!(
                    "SIGHUP: reopening the JSON log {}; the configuration is not re-read (restart to apply it)",
                    config.daemon.json_log.display()
                );
                reopen.notify_one();
            }
        }
    }
    // Detach first (the programs go with the object; the maps were taken
    // out): the last drain and counter poll then see every occurrence.
    drop(ebpf);
    let _ = shutdown_tx.send(true);
    poller.abort();
    // Awaited, so that its handle on the history is dropped before the
    // sink closes the history (the writer thread waits for every handle).
    let _ = poller.await;
    if let Err(e) = capture_task.await {
        warn!("capture task ended abnormally: {e}");
    }
    if let Err(e) = fanout_task.await {
        warn!("fan-out task ended abnormally: {e}");
    }
    if let Err(e) = diagnose_task.await {
        warn!("diagnose task ended abnormally: {e}");
    }
    if let Err(e) = sink_task.await {
        warn!("sink task ended abnormally: {e}");
    }
    if let (Some(task), Some(w)) = (health_task, health_writer) {
        // The final counts, with the start time the status has carried.
        task.abort();
        let _ = w.write(&stats, &output_stats.snapshot());
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

/// The state directory, claimed: its lock, and the history opened in it.
/// A directory that cannot hold them stops the start (under systemd a
/// daemon that runs without its history looks healthy and is not), unless
/// the configuration turns the history off.
fn claim_state_dir(config: &Config) -> anyhow::Result<(Option<instance::StateDirLock>, Option<history::Store>)> {
    if !config.history.enabled {
        info!("history off (history.enabled = false): `observer summary/events/why` will not see this run");
        return Ok((None, None));
    }
    let dir = &config.daemon.state_dir;
    let refuse = |e: &dyn std::fmt::Display| {
        anyhow!(
            "the state directory {} cannot hold the history: {e}; fix it, or set history.enabled = false \
             to run without one",
            dir.display()
        )
    };
    history::prepare_state_dir(dir, &config.daemon.group).map_err(|e| refuse(&e))?;
    let lock = instance::lock_state_dir(dir).map_err(|e| match e {
        instance::InstanceError::Running { .. } => anyhow!(e),
        instance::InstanceError::StateDir(..) => refuse(&e),
    })?;
    let store = history::Store::open(dir, &config.history, &config.daemon.group).map_err(|e| refuse(&e))?;
    Ok((Some(lock), Some(store)))
}

/// What an admin can do about an object that does not load: the map the
/// configuration sizes is named with its setting.
fn explain_load_error(e: aya::EbpfError, config: &Config) -> anyhow::Error {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = &e {
        let setting = match name.as_str() {
            "COUNTERS" => Some(format!("capture.counter_entries = {}", config.capture.counter_entries)),
            "EVENTS" => Some(format!("capture.ring_buffer_bytes = {}", config.capture.ring_buffer_bytes)),
            _ => None,
        };
        if let Some(setting) = setting {
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            return anyhow!(
                "the kernel refused to create the {name} map for {setting} ({io_error}); the counter map \
                 holds one entry per key on each of the {cpus} CPUs: lower the setting"
            );
        }
    }
    anyhow!(e).context("loading the eBPF object")
}

/// The sink stage: every record to the history, the JSON log and the other
/// outputs, in that order; one flush per burst. A failing log (disk full)
/// is counted and warned about at most once a minute, with how many more
/// failed, and never stops the others. `reopen` (SIGHUP) starts a new file
/// at the log's path.
async fn sink(
    mut log: NdjsonSink,
    history: Option<history::Writer>,
    outputs: Outputs,
    mut rx: mpsc::Receiver<Record>,
    reopen: Arc<Notify>,
    stats: Arc<Stats>,
) {
    let mut warnings = WarnLimiter::new("JSON log", Duration::from_secs(60));
    let mut failing = false;
    let mut report = |result: std::io::Result<()>, path: &std::path::Path| match result {
        Ok(()) => {
            if std::mem::take(&mut failing) {
                info!("JSON log {}: writes work again", path.display());
            }
        }
        Err(e) => {
            Stats::inc(&stats.write_errors);
            stats.last_errors.set(health::Output::JsonLog, &e);
            failing = true;
            warnings.warn(format_args!(
                "writing {}: {e} ({} records lost from the log so far; they are still in the history \
                 and the other outputs)",
                path.display(),
                Stats::get(&stats.write_errors)
            ));
        }
    };
    loop {
        let first = tokio::select! {
            biased;
            _ = reopen.notified() => {
                let result = log.reopen();
                report(result, log.path());
                continue;
            }
            first = rx.recv() => first,
        };
        let Some(first) = first else { break };
        // Write what is already queued, then flush once per burst.
        let mut next = Some(first);
        while let Some(record) = next.take() {
            if let Some(h) = &history {
                h.send(&record, &stats);
            }
            let result = log.write(&record);
            if result.is_ok() {
                Stats::inc(&stats.written);
            }
            report(result, log.path());
            outputs.offer(&record);
            next = rx.try_recv().ok();
        }
        let result = log.flush();
        report(result, log.path());
    }
    if let Err(e) = log.sync() {
        warn!("syncing {}: {e}", log.path().display());
    }
    outputs.shutdown(Duration::from_secs(2)).await;
    if let Some(h) = history {
        // Blocking join of the writer thread: it commits what it holds.
        let _ = tokio::task::spawn_blocking(move || h.close()).await;
    }
}

/// Rewrites the health file every few seconds; says once if it cannot.
async fn report_health(writer: Arc<health::Writer>, stats: Arc<Stats>, outputs: Arc<OutputStats>) {
    let mut tick = tokio::time::interval(health::EVERY);
    let mut warned = false;
    loop {
        tick.tick().await;
        if let Err(e) = writer.write(&stats, &outputs.snapshot()) {
            if !std::mem::replace(&mut warned, true) {
                warn!("writing {}: {e}; `observer doctor` will not see this daemon's losses", writer.path().display());
            }
        }
    }
}

/// Events the diagnose stage may hold before the fan-out drops its copies
/// (counted as `diagnosis_dropped`). It only keeps counts in memory, so it
/// falls this far behind only when its task is starved; the log and the
/// history have every event all the same.
const DIAGNOSE_QUEUE: usize = 65_536;

/// The fan-out after decode: every event to the sinks, and a copy to the
/// diagnose stage that never makes the sinks wait (`try_send`).
async fn fan_out(
    mut events: mpsc::Receiver<FailureEvent>,
    records: mpsc::Sender<Record>,
    diagnose: mpsc::Sender<FailureEvent>,
    stats: Arc<Stats>,
) {
    while let Some(e) = events.recv().await {
        if diagnose.try_send(e.clone()).is_err() {
            Stats::inc(&stats.diagnosis_dropped);
        }
        if records.send(Record::Failure(e)).await.is_err() {
            return;
        }
    }
}

/// The diagnose stage: feeds the engine, and on a 250 ms tick hands what
/// is due to the enrich worker; the records are sent to the sinks when
/// their facts come back. Looking for due diagnoses walks every tracked
/// endpoint, so it runs on the tick rather than after every burst, which
/// in a flood comes thousands of times a second; updates and resolutions
/// need the tick anyway.
async fn diagnose(
    mut diagnoser: Diagnoser,
    mut events: mpsc::Receiver<FailureEvent>,
    worker::Handle { jobs: enrich, done: mut facts }: worker::Handle<Batch>,
    out: mpsc::Sender<Record>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(first) = event else { break };
                let mut next = Some(first);
                while let Some(e) = next.take() {
                    diagnoser.observe(&e);
                    next = events.try_recv().ok();
                }
            }
            Some((batch, got)) = facts.recv() => {
                if !send(&out, diagnoser.write(batch, got)).await {
                    return;
                }
            }
            _ = tick.tick() => {
                for job in diagnoser.due() {
                    if enrich.send(job).is_err() {
                        return;
                    }
                }
            }
        }
    }
    // At shutdown: the batches with the enricher, what the next tick would
    // have opened (a burst right before the stop), then the last counts of
    // every open diagnosis. The worker's deadlines bound the wait.
    if !settle(&mut diagnoser, Vec::new(), &enrich, &mut facts, &out).await {
        return;
    }
    let due = diagnoser.due();
    if settle(&mut diagnoser, due, &enrich, &mut facts, &out).await {
        let unwritten = diagnoser.unwritten();
        settle(&mut diagnoser, unwritten, &enrich, &mut facts, &out).await;
    }
}

/// Hands `jobs` to the enrich worker and writes every batch it still holds
/// (at shutdown). False when a channel closed.
async fn settle(
    diagnoser: &mut Diagnoser,
    jobs: Vec<(Batch, Vec<Query>)>,
    enrich: &mpsc::UnboundedSender<(Batch, Vec<Query>)>,
    facts: &mut mpsc::UnboundedReceiver<(Batch, Vec<Facts>)>,
    out: &mpsc::Sender<Record>,
) -> bool {
    for job in jobs {
        if enrich.send(job).is_err() {
            return false;
        }
    }
    while diagnoser.waiting() {
        let Some((batch, got)) = facts.recv().await else { return false };
        if !send(out, diagnoser.write(batch, got)).await {
            return false;
        }
    }
    true
}

/// Diagnosis records to the sinks; false when they are gone.
async fn send(out: &mpsc::Sender<Record>, records: Vec<DiagnosisRecord>) -> bool {
    for d in records {
        if out.send(Record::Diagnosis(Box::new(d))).await.is_err() {
            return false;
        }
    }
    true
}
