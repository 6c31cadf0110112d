//! The daemon's own health counters, shared by the stages.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Records rejected by the decoder.
    pub decode_errors: AtomicU64,
    /// Events written to the JSON log.
    pub written: AtomicU64,
    /// Events that could not be written (disk full, I/O error).
    pub write_errors: AtomicU64,
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
