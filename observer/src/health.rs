//! The running daemon's health, for `observer doctor`: what it has lost
//! and why, in a file the doctor (another process) reads.
//!
//! Why a file under the runtime directory (/run/observer, a tmpfs) and not
//! the state directory: the losses that matter most happen when the disk
//! that holds the log and the history is full, and that is exactly when a
//! file there cannot be written. The metrics endpoint carries the same
//! counters for scrapers; this file is for the admin at a shell, and works
//! with the endpoint off. It is replaced atomically (write, rename) every
//! few seconds and at shutdown, so a reader never sees half of one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub use crate::stats::Output;
use crate::stats::Stats;

pub const FILE: &str = "status.json";
/// How often the file is rewritten while the daemon runs.
pub const EVERY: Duration = Duration::from_secs(2);

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub started: String,
    pub updated: String,
    /// The daemon's counters (`Stats`), by field name.
    pub counters: BTreeMap<String, u64>,
    /// The outputs' counters (syslog, alerts, OTLP), by field name; absent
    /// in the files of older daemons.
    #[serde(default)]
    pub outputs: BTreeMap<String, u64>,
    pub last_errors: BTreeMap<Output, String>,
}

/// One line per kind of loss that happened, for the doctor.
pub fn losses(status: &Status) -> Vec<String> {
    let n = |k: &str| status.counters.get(k).copied().unwrap_or(0);
    let last = |o: Output| status.last_errors.get(&o).map(|e| format!("; last: {e}")).unwrap_or_default();
    let mut lines = Vec::new();
    if n("write_errors") > 0 {
        lines.push(format!(
            "{} records could not be written to the JSON log{}",
            n("write_errors"),
            last(Output::JsonLog)
        ));
    }
    if n("history_errors") > 0 {
        lines.push(format!("{} history commits failed and were retried{}", n("history_errors"), last(Output::History)));
    }
    if n("diagnosis_dropped") > 0 {
        lines.push(format!(
            "{} events are in the log but not in the diagnoses' counts (the diagnose stage fell behind)",
            n("diagnosis_dropped")
        ));
    }
    if n("history_dropped") > 0 {
        lines.push(format!(
            "{} records were dropped from the history (more than history.pending_max waited for the disk)",
            n("history_dropped")
        ));
    }
    let o = |k: &str| status.outputs.get(k).copied().unwrap_or(0);
    for (key, what) in [
        ("syslog_dropped", "records were not sent to syslog: its queue was full (syslog.queue)"),
        ("alerts_dropped", "alerts were not queued: the webhook queue was full (alerts.queue)"),
        ("alerts_failed", "alerts could not be delivered (given up after retries, or refused)"),
        ("otlp_dropped", "records were not sent over OTLP: its queue was full (otlp.queue)"),
        (
            "otlp_failed",
            "log records could not be delivered to the OTLP endpoint (given up after retries, refused or \
             rejected)",
        ),
        ("otlp_metrics_failed", "exports of the counters to the OTLP endpoint were given up or refused"),
    ] {
        if o(key) > 0 {
            lines.push(format!("{} {what}", o(key)));
        }
    }
    for (key, what) in [
        ("kernel_counter_map_full", "occurrences were not counted: the counter map was full (capture.counter_entries)"),
        ("kernel_read_failed", "occurrences were not counted: a kernel read failed in a hook"),
        ("kernel_hook_misses", "hook runs were skipped by the kernel (another eBPF program ran on that CPU)"),
        ("decode_errors", "kernel records could not be decoded"),
    ] {
        if n(key) > 0 {
            lines.push(format!("{} {what}", n(key)));
        }
    }
    lines
}

pub struct Writer {
    path: PathBuf,
    started: String,
}

impl Writer {
    /// Creates the directory; `None` (with the reason) when it cannot be.
    pub fn new(runtime_dir: &Path) -> std::io::Result<Writer> {
        std::fs::create_dir_all(runtime_dir)?;
        Ok(Writer {
            path: runtime_dir.join(FILE),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `outputs`: the outputs' counters by name (`OutputStats::snapshot`).
    pub fn write(&self, stats: &Stats, outputs: &BTreeMap<String, u64>) -> std::io::Result<()> {
        let status = Status {
            pid: std::process::id(),
            started: self.started.clone(),
            updated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            counters: stats.snapshot(),
            outputs: outputs.clone(),
            last_errors: stats.last_errors.snapshot(),
        };
        let text = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// The status a daemon left in `runtime_dir`, and whether it still runs.
pub fn read(runtime_dir: &Path) -> Option<(Status, bool)> {
    let text = std::fs::read_to_string(runtime_dir.join(FILE)).ok()?;
    let status: Status = serde_json::from_str(&text).ok()?;
    let running = Path::new(&format!("/proc/{}", status.pid)).exists();
    Some((status, running))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_names_each_loss() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::new(dir.path()).unwrap();
        let stats = Stats::default();
        Stats::inc(&stats.write_errors);
        stats.last_errors.set(Output::JsonLog, &"No space left on device (os error 28)");
        w.write(&stats, &BTreeMap::from([("otlp_dropped".to_owned(), 7), ("otlp_sent".to_owned(), 3)])).unwrap();
        let (status, running) = read(dir.path()).unwrap();
        assert!(running, "this process wrote it");
        let lines = losses(&status);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("1 records could not be written to the JSON log; last: No space left"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("7 records were not sent over OTLP: its queue was full"), "{lines:?}");
    }
}
