//! Diagnose stage: failure events in, diagnosis records out.
//!
//! `engine` decides what is due (pure bookkeeping over sliding windows),
//! the enricher adds what the live system says (blocking work, done off
//! the async threads), `explain` writes the sentence and the advice.

pub mod engine;
pub mod explain;
pub mod group;
pub mod record;

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use self::{engine::Engine, group::Class, record::DiagnosisRecord};
use crate::{
    config::{DiagnosisConfig, EnrichConfig},
    enrich::{Enricher, Facts, Query},
    event::FailureEvent,
};

pub struct Diagnoser {
    engine: Engine,
    enricher: Arc<Mutex<Enricher>>,
    own_netns: Option<u32>,
}

impl Diagnoser {
    pub fn new(cfg: DiagnosisConfig, enrich: &EnrichConfig) -> Diagnoser {
        let enricher = Enricher::new(
            &enrich.nft,
            std::time::Duration::from_millis(enrich.snapshot_max_age_ms),
            std::time::Duration::from_secs(enrich.listener_history_secs),
            enrich.max_listener_history,
        );
        Diagnoser { engine: Engine::new(cfg), enricher: Arc::new(Mutex::new(enricher)), own_netns: crate::netns::own() }
    }

    pub fn observe(&mut self, e: &FailureEvent) {
        self.engine.observe(e, SystemTime::now());
    }

    pub fn evicted(&self) -> u64 {
        self.engine.stats.evicted
    }

    /// A task that polls every namespace's listeners into the history, on
    /// the blocking pool, so that the event path never waits for it.
    pub fn poller(&self, every: std::time::Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        let enricher = self.enricher.clone();
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let enricher = enricher.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut e) = enricher.lock() {
                        e.poll();
                    }
                })
                .await;
            }
        }
    }

    /// The diagnoses due now, with their facts.
    pub async fn due(&mut self) -> Vec<DiagnosisRecord> {
        let due = self.engine.due(SystemTime::now());
        self.write(due).await
    }

    /// At shutdown: the open diagnoses whose last counts are not written yet.
    pub async fn unwritten(&mut self) -> Vec<DiagnosisRecord> {
        let due = self.engine.unwritten();
        self.write(due).await
    }

    async fn write(&mut self, due: Vec<engine::Due>) -> Vec<DiagnosisRecord> {
        let now = SystemTime::now();
        if due.is_empty() {
            return Vec::new();
        }
        let queries: Vec<Query> = due
            .iter()
            .map(|d| Query {
                netns: d.key.netns,
                port: d.key.port,
                client: self.engine.group_of(&d.key).and_then(|g| g.top_clients(1).first().copied()),
                verdict: match d.key.class {
                    Class::FirewallDrop => Some("drop"),
                    Class::FirewallReject => Some("reject"),
                    _ => None,
                },
                fresh: d.status == record::Status::Open,
            })
            .collect();
        let facts = self.facts(queries).await;
        let mut out = Vec::with_capacity(due.len());
        for (d, facts) in due.iter().zip(facts) {
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

    async fn facts(&self, queries: Vec<Query>) -> Vec<Facts> {
        let enricher = self.enricher.clone();
        let n = queries.len();
        let got = tokio::task::spawn_blocking(move || match enricher.lock() {
            Ok(mut e) => queries.into_iter().map(|q| e.facts(q)).collect(),
            Err(_) => Vec::new(),
        })
        .await
        .unwrap_or_default();
        if got.len() == n {
            got
        } else {
            (0..n).map(|_| Facts { errors: vec!["enrichment failed".to_owned()], ..Facts::default() }).collect()
        }
    }
}
