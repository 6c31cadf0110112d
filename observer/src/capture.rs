//! Capture stage: the ring buffer, read with tokio's `AsyncFd`.
//!
//! The ring buffer's fd becomes readable when the kernel submits a record, so
//! the reader sleeps instead of polling. On shutdown the buffer is drained
//! once more so that nothing submitted before the signal is lost.
//!
//! The counter-polling stage (counters.rs) runs in this task, on a timer:
//! its reconciliation is exact only when it polls right after a drain.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, watch},
};
use tracing::warn;

use observer_common::FailureRecord;

use crate::{
    counters::{self, CounterStage},
    decode::{DecodeError, Decoder},
    event::FailureEvent,
    stats::Stats,
};

pub struct Capture {
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    stats: Arc<Stats>,
    counters: Option<CounterStage>,
}

impl Capture {
    pub fn new(ring: RingBuf<MapData>, decoder: Decoder, stats: Arc<Stats>) -> std::io::Result<Capture> {
        // SAFETY: RingBuf owns its map fd for its whole life and always
        // returns that same fd from as_raw_fd; the AsyncFd owns the RingBuf.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Capture { ring, decoder, stats, counters: None })
    }

    /// Adds the counter-polling stage (reconciliation and loss accounting).
    pub fn with_counters(mut self, counters: CounterStage) -> Capture {
        self.counters = Some(counters);
        self
    }

    /// Reads until `shutdown` turns true, then drains and returns. The
    /// programs should be detached before `shutdown`: then the last drain
    /// and counter poll see everything.
    pub async fn run(mut self, tx: mpsc::Sender<FailureEvent>, mut shutdown: watch::Receiver<bool>) {
        let every = self.counters.as_ref().map_or(Duration::from_secs(3600), |c| c.every());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            warn!("ring buffer poll failed: {e}; capture stops");
                            break;
                        }
                    };
                    let batch = Self::drain(guard.get_inner_mut(), &self.decoder, &self.stats, &mut self.counters);
                    guard.clear_ready();
                    if !Self::send(&tx, batch).await {
                        return;
                    }
                }
                _ = tick.tick(), if self.counters.is_some() => {
                    let mut batch =
                        Self::drain(self.ring.get_mut(), &self.decoder, &self.stats, &mut self.counters);
                    if let Some(c) = self.counters.as_mut() {
                        batch.extend(c.poll());
                    }
                    if !Self::send(&tx, batch).await {
                        return;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        if self.counters.is_some() {
            // A program that was running when it was detached finishes within
            // microseconds; its sample must be in the last drain.
            tokio::time::sleep(counters::settle(Duration::ZERO)).await;
        }
        let mut batch = Self::drain(self.ring.get_mut(), &self.decoder, &self.stats, &mut self.counters);
        if let Some(c) = self.counters.as_mut() {
            batch.extend(c.finish());
        }
        Self::send(&tx, batch).await;
    }

    async fn send(tx: &mpsc::Sender<FailureEvent>, batch: Vec<FailureEvent>) -> bool {
        for event in batch {
            if tx.send(event).await.is_err() {
                return false;
            }
        }
        true
    }

    fn drain(
        ring: &mut RingBuf<MapData>,
        decoder: &Decoder,
        stats: &Stats,
        counters: &mut Option<CounterStage>,
    ) -> Vec<FailureEvent> {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            Stats::inc(&stats.records);
            let decoded = FailureRecord::try_from(&item[..]).map_err(DecodeError::from);
            match decoded {
                Ok(rec) => {
                    if let Some(c) = counters.as_mut() {
                        c.sampled(&rec);
                    }
                    out.push(decoder.event(&rec));
                }
                Err(e) => {
                    let n = stats.decode_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Rate-limited: the first, then every 1000th.
                    if n.is_multiple_of(1000) {
                        warn!("dropping ring buffer record: {e} ({} so far)", n + 1);
                    }
                }
            }
        }
        out
    }
}
