//! Diagnose stage: failure events in, diagnosis records out.
//!
//! `engine` decides what is due (pure bookkeeping over sliding windows),
//! the enrich worker adds what the live system says (on its own task; see
//! `enrich::worker`), `explain` writes the sentence and the advice.

pub mod engine;
pub mod explain;
pub mod group;
pub mod record;

use std::{collections::HashSet, time::SystemTime};

use self::{
    engine::{Due, Engine},
    group::{Class, Key},
    record::DiagnosisRecord,
};
use crate::{
    config::DiagnosisConfig,
    enrich::{Facts, Query, Verdict},
    event::FailureEvent,
};

/// The engine and what it waits for. Synchronous: the facts are read by
/// the enrich worker, between `due` (which hands out a batch and its
/// queries) and `write` (which takes the batch back with its facts).
pub struct Diagnoser {
    engine: Engine,
    own_netns: Option<u32>,
    /// Endpoints whose batch is with the enricher: not handed out again
    /// until it is written, so that one diagnosis is not opened twice.
    waiting: HashSet<Key>,
}

/// Diagnoses due, waiting for their facts.
#[derive(Debug)]
pub struct Batch {
    due: Vec<Due>,
}

impl Diagnoser {
    pub fn new(cfg: DiagnosisConfig) -> Diagnoser {
        Diagnoser { engine: Engine::new(cfg), own_netns: crate::netns::own(), waiting: HashSet::new() }
    }

    pub fn observe(&mut self, e: &FailureEvent) {
        self.engine.observe(e, SystemTime::now());
    }

    pub fn evicted(&self) -> u64 {
        self.engine.stats.evicted
    }

    /// Whether a batch is with the enricher.
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The diagnoses due now, and what to ask the enricher for them.
    pub fn due(&mut self) -> Vec<(Batch, Vec<Query>)> {
        let due = self.engine.due(SystemTime::now());
        self.batches(due)
    }

    /// At shutdown: the open diagnoses whose last counts are not written yet.
    pub fn unwritten(&mut self) -> Vec<(Batch, Vec<Query>)> {
        let due = self.engine.unwritten();
        self.batches(due)
    }

    /// At most two batches: the firewall's diagnoses, whose facts wait for
    /// `nft` (up to its deadline), apart from the others, which the kernel
    /// and /proc answer in milliseconds and must not wait behind them.
    fn batches(&mut self, due: Vec<Due>) -> Vec<(Batch, Vec<Query>)> {
        let (firewall, other): (Vec<Due>, Vec<Due>) = due
            .into_iter()
            .filter(|d| !self.waiting.contains(&d.key))
            .partition(|d| matches!(d.key.class, Class::FirewallDrop | Class::FirewallReject));
        [other, firewall].into_iter().filter(|b| !b.is_empty()).map(|due| self.batch(due)).collect()
    }

    fn batch(&mut self, due: Vec<Due>) -> (Batch, Vec<Query>) {
        let queries = due
            .iter()
            .map(|d| Query {
                netns: d.key.netns,
                port: d.key.port,
                client: self.engine.group_of(&d.key).and_then(|g| g.top_clients(1).first().copied()),
                verdict: match d.key.class {
                    Class::FirewallDrop => Some(Verdict::Drop),
                    Class::FirewallReject => Some(Verdict::Reject),
                    _ => None,
                },
                fresh: d.status == record::Status::Open,
            })
            .collect();
        self.waiting.extend(due.iter().map(|d| d.key));
        (Batch { due }, queries)
    }

    /// The records of a batch, now that its facts are here (one per due
    /// diagnosis, in order).
    pub fn write(&mut self, batch: Batch, facts: Vec<Facts>) -> Vec<DiagnosisRecord> {
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(batch.due.len());
        let facts = facts.into_iter().chain(std::iter::repeat_with(|| Facts {
            errors: vec!["enrichment failed".to_owned()],
            ..Facts::default()
        }));
        for (d, facts) in batch.due.iter().zip(facts) {
            self.waiting.remove(&d.key);
            let Some(g) = self.engine.group_of(&d.key) else { continue };
            let kind = g.opened.as_ref().map(|o| o.kind).unwrap_or_else(|| explain::kind(&d.key, &facts));
            let cx = explain::Context {
                kind,
                status: d.status,
                facts: &facts,
                per_second: self.engine.window(&d.key, now),
                now,
                own_netns: self.own_netns,
            };
            let mut rec = explain::record(&d.key, g, cx);
            if rec.process.is_none() {
                rec.process = g.opened.as_ref().and_then(|o| o.process.clone());
            }
            self.engine.emitted(&d.key, kind, &rec.diagnosis.id, d.status, now, rec.process.as_ref());
            out.push(rec);
        }
        out
    }
}
