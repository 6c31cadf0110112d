//! The daemon's own health counters, shared by the stages.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

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
    /// Records committed to the history database.
    pub history_written: AtomicU64,
    /// Failed history commits (each retried with the next batch).
    pub history_errors: AtomicU64,
    /// Records the history could not keep (its queue was full).
    pub history_dropped: AtomicU64,
    /// Events the diagnose stage could not take (its queue was full): in
    /// the log and the history, missing from the diagnoses' counts.
    pub diagnosis_dropped: AtomicU64,

    // Loss accounting (observer/src/counters.rs). The kernel_* values are the
    // kernel's `LOSS` slots summed over CPUs: totals since the programs
    // loaded, stored (not added) at every counter poll.
    /// Samples the kernel could not put into the full ring buffer. Their
    /// occurrences are in the exact counters and reach the log as
    /// reconciliation records: no count is lost, only the samples' details.
    pub kernel_ringbuf_full: AtomicU64,
    /// Occurrences the kernel could not count because the counter map
    /// refused their key. Lost: in no count.
    pub kernel_counter_map_full: AtomicU64,
    /// Occurrences lost because a kernel read in a hook failed. Lost: in no count.
    pub kernel_read_failed: AtomicU64,
    /// Hook runs the kernel skipped because another eBPF program was running
    /// on that CPU (the programs' `recursion_misses`). Lost: in no count.
    pub kernel_hook_misses: AtomicU64,
    /// Reconciliation records written: occurrences the kernel counted that
    /// no sample carried (rate limit, full ring buffer, undecodable record).
    pub reconciled_records: AtomicU64,
    /// Occurrences those reconciliation records stand for (sum of their event.count).
    pub reconciled_occurrences: AtomicU64,
    /// Counter keys the kernel evicted (LRU, `capture.counter_entries`) and
    /// re-created before the daemon read them: their counts may be low.
    pub counter_resets: AtomicU64,
    /// Keys whose reconciliation state the daemon dropped to stay within its
    /// memory cap (twice `capture.counter_entries`).
    pub counter_keys_evicted: AtomicU64,
    /// Failed reads of the kernel's counter or loss maps.
    pub counter_poll_errors: AtomicU64,
    /// The last error of the log and the history (`observer doctor`).
    pub last_errors: LastErrors,
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter by its field name (the health file).
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("records", &self.records),
            ("decode_errors", &self.decode_errors),
            ("written", &self.written),
            ("write_errors", &self.write_errors),
            ("history_written", &self.history_written),
            ("history_errors", &self.history_errors),
            ("history_dropped", &self.history_dropped),
            ("diagnosis_dropped", &self.diagnosis_dropped),
            ("kernel_ringbuf_full", &self.kernel_ringbuf_full),
            ("kernel_counter_map_full", &self.kernel_counter_map_full),
            ("kernel_read_failed", &self.kernel_read_failed),
            ("kernel_hook_misses", &self.kernel_hook_misses),
            ("reconciled_records", &self.reconciled_records),
            ("reconciled_occurrences", &self.reconciled_occurrences),
            ("counter_resets", &self.counter_resets),
            ("counter_keys_evicted", &self.counter_keys_evicted),
            ("counter_poll_errors", &self.counter_poll_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Stats::get(v)))
        .collect()
    }
}

/// Where a loss happened, with its last error text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    JsonLog,
    History,
}

/// The last error of each output, kept beside the counters.
#[derive(Debug, Default)]
pub struct LastErrors(Mutex<BTreeMap<Output, String>>);

impl LastErrors {
    pub fn set(&self, output: Output, error: &dyn std::fmt::Display) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(output, format!("{error} (at {})", humantime::format_rfc3339_seconds(SystemTime::now())));
        }
    }

    pub fn snapshot(&self) -> BTreeMap<Output, String> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
