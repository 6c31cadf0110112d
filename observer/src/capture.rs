//! Capture stage: the ring buffer, read with tokio's `AsyncFd`.
//!
//! The ring buffer's fd becomes readable when the kernel submits a record, so
//! the reader sleeps instead of polling. On shutdown the buffer is drained
//! once more so that nothing submitted before the signal is lost.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, watch},
};
use tracing::warn;

use crate::{decode::Decoder, event::FailureEvent, stats::Stats};

pub struct Capture {
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    stats: Arc<Stats>,
}

impl Capture {
    pub fn new(ring: RingBuf<MapData>, decoder: Decoder, stats: Arc<Stats>) -> std::io::Result<Capture> {
        // SAFETY: RingBuf owns its map fd for its whole life and always
        // returns that same fd from as_raw_fd; the AsyncFd owns the RingBuf.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Capture { ring, decoder, stats })
    }

    /// Reads until `shutdown` turns true, then drains and returns.
    pub async fn run(mut self, tx: mpsc::Sender<FailureEvent>, mut shutdown: watch::Receiver<bool>) {
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
                    let batch = Self::drain(guard.get_inner_mut(), &self.decoder, &self.stats);
                    guard.clear_ready();
                    for event in batch {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let batch = Self::drain(self.ring.get_mut(), &self.decoder, &self.stats);
        for event in batch {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }

    fn drain(ring: &mut RingBuf<MapData>, decoder: &Decoder, stats: &Stats) -> Vec<FailureEvent> {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            Stats::inc(&stats.records);
            match decoder.decode(&item) {
                Ok(event) => out.push(event),
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
