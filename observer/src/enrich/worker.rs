//! The enrich worker: the facts for batches of queries, on a task of its
//! own, so that nothing upstream waits for them.
//!
//! Why a worker and not a call: enrichment reads the live system (sock_diag
//! and /proc on the blocking pool, `nft` as a child process) and can take
//! from milliseconds to its deadline. The diagnose stage hands it a batch
//! and goes on taking events; the facts come back on a channel with the
//! batch's tag, and only then are the batch's records written. The JSON log
//! and the history never see this stage at all: they take the events from
//! the fan-out after decode.
//!
//! Every external command has a deadline (`command`); a ruleset that could
//! not be read is an error in the evidence, cached like a good one for
//! `max_age` so that a hung `nft` costs one deadline per namespace, not one
//! per diagnosis.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{firewall, Enricher, Facts, LoadSample, Query};

/// How the worker reads the firewall.
#[derive(Clone, Debug)]
pub struct FirewallSettings {
    /// The nft binary.
    pub nft: String,
    /// Deadline of each nft run.
    pub timeout: Duration,
    /// How long a ruleset read is reused.
    pub max_age: Duration,
}

type Cached = Arc<Result<firewall::Ruleset, String>>;

struct Rulesets {
    settings: FirewallSettings,
    cache: HashMap<u32, (Instant, Cached)>,
}

impl Rulesets {
    async fn get(&mut self, netns: u32, path: &Result<Option<PathBuf>, String>) -> Cached {
        if let Some((at, rs)) = self.cache.get(&netns) {
            if at.elapsed() < self.settings.max_age {
                return rs.clone();
            }
        }
        let s = &self.settings;
        let rs = Arc::new(match path {
            Ok(path) => firewall::load(&s.nft, path.as_deref(), s.timeout).await,
            Err(e) => Err(e.clone()),
        });
        let max_age = s.max_age;
        self.cache.retain(|_, (at, _)| at.elapsed() < max_age * 4);
        self.cache.insert(netns, (Instant::now(), rs.clone()));
        rs
    }
}

/// Jobs the worker runs at once. Why more than one: a firewall diagnosis
/// waits for `nft` (up to its deadline), and a diagnosis of another kind due
/// at the same moment must not wait behind it. Why a few and not one per
/// job: the blocking reads share one enricher (its snapshots and listener
/// history) and would only queue on its lock.
const CONCURRENT_JOBS: usize = 4;

/// The two ends of a running worker: `jobs` takes `(tag, queries)`, `done`
/// answers `(tag, facts)`, one `Facts` per query, in order; jobs may finish
/// out of order.
///
/// Unbounded channels, on purpose: the diagnose stage must never wait to
/// hand over a job (it would stop taking events), and it hands out at most
/// one job per tracked endpoint at a time, so the endpoints' cap
/// (`diagnosis.max_endpoints`) bounds both queues.
pub struct Handle<T> {
    pub jobs: mpsc::UnboundedSender<(T, Vec<Query>)>,
    pub done: mpsc::UnboundedReceiver<(T, Vec<Facts>)>,
}

/// Starts the worker. It ends when `jobs` is dropped, after answering what
/// it holds.
pub fn spawn<T: Send + 'static>(enricher: Arc<Mutex<Enricher>>, firewall: FirewallSettings) -> Handle<T> {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<(T, Vec<Query>)>();
    let (done_tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // One cache of rulesets, locked across a read: two diagnoses in one
        // namespace run nft once, and a hung nft holds only the firewall's
        // diagnoses, for its deadline.
        let rulesets = Arc::new(tokio::sync::Mutex::new(Rulesets { settings: firewall, cache: HashMap::new() }));
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_JOBS));
        let mut running = tokio::task::JoinSet::new();
        while let Some((tag, queries)) = jobs.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let (enricher, rulesets, done) = (enricher.clone(), rulesets.clone(), done_tx.clone());
            running.spawn(async move {
                let facts = facts(&enricher, &rulesets, queries).await;
                let _ = done.send((tag, facts));
                drop(permit);
            });
            // Reap what finished, so the set does not grow with the daemon's age.
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    });
    Handle { jobs: jobs_tx, done }
}

async fn facts(
    enricher: &Arc<Mutex<Enricher>>,
    rulesets: &tokio::sync::Mutex<Rulesets>,
    queries: Vec<Query>,
) -> Vec<Facts> {
    let n = queries.len();
    let enricher = enricher.clone();
    let asked = queries.clone();
    // The kernel's and /proc's part, and where each namespace's file is for
    // the firewall's part.
    let local = tokio::task::spawn_blocking(move || match enricher.lock() {
        Ok(mut e) => queries
            .into_iter()
            .map(|q| {
                let path = q.verdict.map(|_| e.netns_path(q.netns));
                (e.facts(q), path)
            })
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    })
    .await
    .unwrap_or_default();
    if local.len() != n {
        return (0..n).map(|_| Facts { errors: vec!["enrichment failed".to_owned()], ..Facts::default() }).collect();
    }
    let mut out = Vec::with_capacity(n);
    for (q, (mut facts, path)) in asked.into_iter().zip(local) {
        if let (Some(verdict), Some(path)) = (q.verdict, path) {
            let rs = rulesets.lock().await.get(q.netns, &path).await;
            match rs.as_ref() {
                Ok(rs) => facts.firewall = rs.matching(q.port, q.client, verdict.as_str()),
                Err(e) => facts.errors.push(format!("nftables ruleset: {e}")),
            }
        }
        out.push(facts);
    }
    out
}

/// Polls every namespace's listeners into the listener history, on the
/// blocking pool, every `every` (a listener that goes away before clients
/// fail is the best fact of a `no_listener` diagnosis, and cannot be read
/// afterwards). The load samples the polls add up to go to `on_load`: the
/// daemon hands them to the history, which this stage does not know.
pub async fn poll_listeners(enricher: Arc<Mutex<Enricher>>, every: Duration, mut on_load: impl FnMut(LoadSample)) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let enricher = enricher.clone();
        let sample = tokio::task::spawn_blocking(move || enricher.lock().ok().and_then(|mut e| e.poll())).await;
        if let Ok(Some(sample)) = sample {
            on_load(sample);
        }
    }
}
