//! The TOML configuration. Every key is optional (`#[serde(default)]`);
//! unknown keys and bad values are refused with their line number.
//! `observer config` prints the defaults with their documentation
//! (`template`).
//!
//! The stages read their sections from here, and this module imports
//! nothing from them: it says which values a file may hold, not what a
//! stage does with them. So a stage's table stays out of it too:
//! `capture.disable_hooks` is kept as the names written, and the hooks
//! module turns them into hooks (`kernel::hook::parse_disabled`).

mod otlp;
mod sinks;
mod template;

use std::path::{Path, PathBuf};

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::{
    otlp::{Destination, OtlpConfig, OtlpEnv, OtlpSettings, Signal},
    sinks::{
        AlertStatus, AlertsConfig, EmailConfig, Facility, MetricsConfig, SmtpTls, StartTls, SyslogConfig, Transport,
        WebhookFormat,
    },
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{path}: line {line}, column {column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    /// A value out of its range; `line` is where its key is, when it is in the file.
    #[error("{}{}: {}", .path.display(), .line.map(|l| format!(": line {l}")).unwrap_or_default(), .message)]
    Invalid { path: PathBuf, line: Option<usize>, message: String },
}

/// The whole file. Each field is a `[section]`; its doc comment is the
/// comment above the section's header in `observer config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the daemon writes: the JSON log, the state and its health.
    pub daemon: DaemonConfig,
    /// The history of failures and diagnoses that the CLI reads.
    pub history: HistoryConfig,
    /// The kernel side: the ring buffer, sampling, the exact counters and
    /// the hooks.
    pub capture: CaptureConfig,
    /// How failures are grouped into diagnoses, and when those open,
    /// escalate and resolve.
    pub diagnosis: DiagnosisConfig,
    /// The live system's facts a diagnosis names: listeners and their
    /// processes, sysctls, firewall rules.
    pub enrich: EnrichConfig,
    /// The kernel's files, for hosts that have them elsewhere.
    pub kernel: KernelPaths,
    /// RFC 5424 messages: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`
    /// with MSGID `failure` or `diagnosis` and MSG the record's JSON, the same
    /// line as in the JSON log. Severity: failures informational, diagnoses
    /// warning (open, ongoing), error (escalated), notice (resolved). Receivers
    /// should accept messages of 64 KiB (rsyslog: global(maxMessageSize="64k")).
    pub syslog: SyslogConfig,
    /// Prometheus endpoint: OpenMetrics text at `/metrics`.
    pub metrics: MetricsConfig,
    /// Webhook: one POST when a diagnosis opens and when it escalates, never
    /// per event or per update. The body is the diagnosis record plus `message`
    /// and `host.name` (format "json"), a Slack message or a Teams card.
    pub alerts: AlertsConfig,
    /// E-mail over SMTP (STARTTLS or implicit TLS, certificates verified): one
    /// message per opening and escalation (or the statuses chosen), plain text
    /// with an HTML alternative, with the same retries and rate limit as the webhook.
    pub email: EmailConfig,
    /// OpenTelemetry: the records as OTLP log records, the counters as OTLP
    /// metrics, over HTTP with protobuf (POST /v1/logs and /v1/metrics) to a
    /// Collector. Keys left unset here are taken from the standard variables
    /// (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT and their _LOGS_/_METRICS_
    /// forms, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_METRIC_EXPORT_INTERVAL): a key set in this file wins over the
    /// environment, the environment over the defaults.
    pub otlp: OtlpConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// NDJSON log of failure events and diagnoses, one JSON object per line.
    pub json_log: PathBuf,
    /// History (SQLite) and the instance lock (observer.pid) that keeps a
    /// second daemon from starting on it.
    pub state_dir: PathBuf,
    /// The running daemon's health (status.json: counters, what was lost and
    /// why), read by `observer doctor`. A tmpfs, so that it is written even when
    /// the disk of the log and the history is full.
    pub runtime_dir: PathBuf,
    /// Size-based rotation of the JSON log: past this many bytes (0: never)
    /// it is renamed to .1 (older ones shift up to .json_log_keep) and a new
    /// file is started; shippers follow by inode.
    pub json_log_max_bytes: u64,
    /// Rotated JSON logs kept (.1 is the newest).
    pub json_log_keep: u32,
    /// Lines reach the kernel at once; they are fsync'd at most this often
    /// (milliseconds) while records arrive, before each rotation and at
    /// shutdown: a host crash loses at most this much of the log.
    pub json_log_fsync_ms: u64,
    /// Group whose members may read the history with the CLI, without root
    /// (the directory is made 0750 and the database 0640 for it). Empty: root only.
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep the history that `observer summary`, `events` and `why` read, in
    /// state_dir. When on, the daemon refuses to start if the state directory
    /// cannot hold it (a file, read-only, another daemon's); off: none is kept.
    pub enabled: bool,
    /// Failure events and diagnoses older than this many days are deleted.
    pub max_age_days: u64,
    /// The database is kept under this many bytes; the oldest failure events
    /// are deleted first.
    pub max_bytes: u64,
    /// Records held in memory while the disk is slow or full (at least 1;
    /// about 1 KB each); beyond it new ones are dropped, counted and reported.
    pub pending_max: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { enabled: true, max_age_days: 30, max_bytes: 256 << 20, pending_max: 20_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Ring buffer between the kernel programs and the daemon, in bytes (a
    /// power of two, at least 4096). When it is full, samples are counted as
    /// lost; the exact counters are not affected.
    pub ring_buffer_bytes: u32,
    /// Sampled events per second for each (netns, action, local endpoint) on
    /// each CPU (at least 1). Beyond it only the exact counters move; the daemon
    /// reports the rest as reconciliation records (event.reconciled = true,
    /// event.count = how many), so the counts in the log add up to the kernel's.
    pub samples_per_sec: u32,
    /// The same for all keys together, per CPU (0: no limit): a burst over
    /// many keys, such as a scan of thousands of ports, costs the log at most
    /// this many samples a second; the counters carry the rest.
    pub samples_total_per_sec: u32,
    /// Reconciliation records written per counter poll at most (at least 1),
    /// the largest counts first; the keys left over are reported at the next
    /// poll, so the counts stay exact and the log volume of a burst stays bounded.
    pub reconciliation_records_per_poll: u32,
    /// Keys (netns, action, local endpoint) tracked by the counters and the
    /// sampler, 1 to 1048576 (each key costs kernel memory on every CPU); the
    /// least recently used is evicted beyond it. The daemon keeps
    /// reconciliation state for at most twice as many.
    pub counter_entries: u32,
    /// How often the exact counters are read and reconciled with the samples,
    /// in milliseconds (100 to 60000). Reconciliation records follow a burst
    /// within two periods.
    pub counter_poll_ms: u64,
    /// Least time between two warnings about lost samples or counts, in
    /// seconds (at least 1).
    pub loss_warning_secs: u64,
    /// Hooks not to attach, by name (`observer doctor` lists them): tcp_send_reset,
    /// tcp_receive_reset, tcp_retransmit_synack, inet_sock_set_state, tcp_connect,
    /// kfree_skb, answers, tcp_conn_request, syn_recv_sock, listener_ingress,
    /// net_dev_queue.
    /// On a kernel without BPF trampolines (`observer doctor` shows
    /// listener_ingress and net_dev_queue standing in), disabling those two
    /// per-packet fallbacks makes short connections cheaper, and loses what
    /// doctor then says (SYN-stage overflows, reject vs drop).
    pub disable_hooks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnosisConfig {
    /// Sliding window over which failures are counted, in seconds (1 to 3600).
    pub window_secs: u64,
    /// Failures of one endpoint within the window that open a diagnosis (at
    /// least 1). A port scan's single SYN per port stays below it.
    pub min_failures: u64,
    /// Least time between two updates (same id, new counts) of an open
    /// diagnosis, in seconds.
    pub update_interval_secs: u64,
    /// Quiet time after which a diagnosis is resolved, in seconds.
    pub resolve_after_secs: u64,
    /// An open diagnosis escalates once when its window count reaches this many
    /// times the count it opened with (0: never). Alerts fire on open and escalate.
    pub escalate_factor: u64,
    /// Distinct ports one source fails on within the window that make it a
    /// port scan, reported as port_scan instead of outages (0: no scan detection).
    pub scan_ports: usize,
    /// Memory bound: endpoints (netns, kind, address, port) tracked at once
    /// (at least 1); the least recently failing ones are forgotten beyond it.
    pub max_endpoints: usize,
    /// Memory bound: distinct clients remembered per endpoint (at least 1;
    /// the counts stay exact).
    pub max_clients: usize,
    /// Memory bound: sources tracked for scan detection (at least 1).
    pub max_scan_sources: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// The nft binary: diagnoses name the nftables rule that drops or rejects.
    pub nft: String,
    /// Deadline of each external command the enrichment runs (`nft`), in
    /// milliseconds (100 to 60000): a command that does not answer in time
    /// is killed, and the diagnosis says the rule could not be read.
    pub command_timeout_ms: u64,
    /// How often every network namespace's listeners are polled into the
    /// history, in milliseconds (at least 100), so that a listener that goes
    /// away is remembered with its process.
    pub poll_interval_ms: u64,
    /// How old a namespace's listeners, sysctls and ruleset may be when a
    /// diagnosis reuses them, in milliseconds.
    pub snapshot_max_age_ms: u64,
    /// How long a listener that went away is remembered, in seconds.
    pub listener_history_secs: u64,
    /// Listeners that went away remembered at most (the oldest are forgotten first).
    pub max_listener_history: usize,
    /// How often the load is written to the history, in seconds (1 to 3600,
    /// at least one poll interval; 0: not kept): per namespace the connections
    /// accepted (handshakes completed) and opened outbound, per listener the
    /// deepest and the mean accept queue seen at the polls. One row per
    /// namespace and listener that had any, so idle ones cost nothing.
    pub load_interval_secs: u64,
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        DiagnosisConfig {
            window_secs: 60,
            min_failures: 3,
            update_interval_secs: 5,
            resolve_after_secs: 120,
            escalate_factor: 10,
            scan_ports: 10,
            max_endpoints: 10_000,
            max_clients: 1024,
            max_scan_sources: 16_384,
        }
    }
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            nft: "nft".to_owned(),
            command_timeout_ms: 2000,
            poll_interval_ms: 2000,
            snapshot_max_age_ms: 1000,
            listener_history_secs: 3600,
            max_listener_history: 4096,
            load_interval_secs: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct KernelPaths {
    /// tracefs; mounted here when absent.
    pub tracefs: PathBuf,
    /// Kernel BTF: struct member offsets are read from it, and the BTF
    /// tracepoint and the fentry/fexit programs are loaded against it.
    pub btf: PathBuf,
    /// Kernel symbols: on kernels without drop reasons (before 5.17) they tell
    /// which function dropped a packet (refused connections, firewall drops).
    pub kallsyms: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            json_log: PathBuf::from("/var/log/observer/events.ndjson"),
            state_dir: PathBuf::from("/var/lib/observer"),
            runtime_dir: PathBuf::from("/run/observer"),
            json_log_max_bytes: 100 << 20,
            json_log_keep: 5,
            json_log_fsync_ms: 5000,
            group: String::new(),
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            ring_buffer_bytes: 1 << 20,
            samples_per_sec: 64,
            samples_total_per_sec: 1000,
            reconciliation_records_per_poll: 1000,
            counter_entries: 16384,
            counter_poll_ms: 1000,
            loss_warning_secs: 10,
            disable_hooks: vec![],
        }
    }
}

impl KernelPaths {
    /// Where the kernel has them by default; the kernel modules' own tests
    /// read them there too.
    pub const TRACEFS: &'static str = "/sys/kernel/tracing";
    pub const BTF: &'static str = "/sys/kernel/btf/vmlinux";
    pub const KALLSYMS: &'static str = "/proc/kallsyms";
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            tracefs: PathBuf::from(KernelPaths::TRACEFS),
            btf: PathBuf::from(KernelPaths::BTF),
            kallsyms: PathBuf::from(KernelPaths::KALLSYMS),
        }
    }
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().to_owned() }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            line: message.split([' ', ',', ':']).next().and_then(|key| key_line(text, key)),
            message,
        })?;
        Ok(config)
    }

    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.to_owned(), e))?;
                Config::parse(&text, p)
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let rb = self.capture.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(format!("capture.ring_buffer_bytes = {rb}: must be a power of two, at least 4096"));
        }
        if self.capture.samples_per_sec == 0 {
            return Err("capture.samples_per_sec must be at least 1".into());
        }
        if self.capture.counter_entries == 0 || self.capture.counter_entries > 1 << 20 {
            return Err(format!(
                "capture.counter_entries = {}: must be 1 to 1048576 (each key costs kernel memory on every CPU)",
                self.capture.counter_entries
            ));
        }
        if self.capture.reconciliation_records_per_poll == 0 {
            return Err("capture.reconciliation_records_per_poll must be at least 1".into());
        }
        if !(100..=60_000).contains(&self.capture.counter_poll_ms) {
            return Err(format!("capture.counter_poll_ms = {}: must be 100 to 60000", self.capture.counter_poll_ms));
        }
        if self.history.pending_max == 0 {
            return Err("history.pending_max must be at least 1 (records held while the disk is full)".into());
        }
        if self.capture.loss_warning_secs == 0 {
            return Err("capture.loss_warning_secs must be at least 1".into());
        }
        let d = &self.diagnosis;
        if d.window_secs == 0 || d.window_secs > 3600 {
            return Err(format!("diagnosis.window_secs = {}: must be 1 to 3600", d.window_secs));
        }
        if d.min_failures == 0 {
            return Err("diagnosis.min_failures must be at least 1".into());
        }
        if d.max_endpoints == 0 || d.max_clients == 0 || d.max_scan_sources == 0 {
            return Err("diagnosis.max_endpoints, max_clients and max_scan_sources must be at least 1".into());
        }
        if self.enrich.poll_interval_ms < 100 {
            return Err(format!("enrich.poll_interval_ms = {}: must be at least 100", self.enrich.poll_interval_ms));
        }
        let load = self.enrich.load_interval_secs;
        if load != 0 && (load > 3600 || load * 1000 < self.enrich.poll_interval_ms) {
            return Err(format!(
                "enrich.load_interval_secs = {load}: must be 0 (off) or 1 to 3600, and at least \
                 enrich.poll_interval_ms ({} ms)",
                self.enrich.poll_interval_ms
            ));
        }
        if !(100..=60_000).contains(&self.enrich.command_timeout_ms) {
            return Err(format!(
                "enrich.command_timeout_ms = {}: must be 100 to 60000",
                self.enrich.command_timeout_ms
            ));
        }
        self.syslog.validate()?;
        self.metrics.validate()?;
        self.alerts.validate()?;
        self.email.validate()?;
        self.otlp.validate()
    }
}

/// The line of a dotted key (`capture.counter_poll_ms`) in the file, for
/// errors found after parsing: a value out of range is reported where it is.
fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        if parts.peek().is_none() {
            return Some(line_col(text, key.span().start).0);
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    None
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("[capture]\nsamples_per_sec = 5\n").unwrap();
        assert_eq!(c.capture.samples_per_sec, 5);
        assert_eq!(c.capture.ring_buffer_bytes, CaptureConfig::default().ring_buffer_bytes);
        assert_eq!(c.daemon, DaemonConfig::default());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = parse("[daemon]\njson_log = \"/tmp/x\"\nbogus = 1\n").unwrap_err();
        match err {
            ConfigError::Parse { line, message, .. } => {
                assert_eq!(line, 3, "{message}");
                assert!(message.contains("bogus"), "{message}");
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn bad_value_type_names_its_line() {
        let err = parse("\n[capture]\nsamples_per_sec = \"lots\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 3, .. }), "{err}");
        assert!(err.to_string().starts_with("test.toml: line 3"), "{err}");
    }

    #[test]
    fn malformed_line_is_refused() {
        let err = parse("[capture\nsamples_per_sec = 3\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(matches!(parse("[capture]\nring_buffer_bytes = 5000\n"), Err(ConfigError::Invalid { .. })));
        assert!(matches!(parse("[capture]\nsamples_per_sec = 0\n"), Err(ConfigError::Invalid { .. })));
        // Hook names are the hooks module's to check (kernel::hook::parse_disabled).
        assert!(parse("[capture]\ndisable_hooks = [\"nope\"]\n").is_ok());
        let err = parse("[capture]\ncounter_entries = 4294967295\n").unwrap_err();
        assert!(
            err.to_string().contains("line 2: capture.counter_entries = 4294967295: must be 1 to 1048576"),
            "{err}"
        );
        assert!(parse("[capture]\nreconciliation_records_per_poll = 0\n").is_err());
        let err = parse("[enrich]\npoll_interval_ms = 5000\nload_interval_secs = 2\n").unwrap_err();
        assert!(
            err.to_string().contains("line 3: enrich.load_interval_secs = 2: must be 0 (off) or 1 to 3600"),
            "{err}"
        );
        assert!(parse("[enrich]\nload_interval_secs = 3601\n").is_err());
        assert!(parse("[enrich]\nload_interval_secs = 0\n").is_ok(), "0 turns the load history off");
    }

    #[test]
    fn a_value_out_of_range_names_its_line() {
        let err = parse("# tuned\n[capture]\nsamples_per_sec = 5\ncounter_poll_ms = 5\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: Some(4), .. }), "{err}");
        assert_eq!(err.to_string(), "test.toml: line 4: capture.counter_poll_ms = 5: must be 100 to 60000");
        // Dotted keys and inline tables are found too.
        let err = parse("diagnosis = { window_secs = 0 }\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: Some(1), .. }), "{err}");
        let err = parse("\nhistory.pending_max = 0\n").unwrap_err();
        assert!(err.to_string().starts_with("test.toml: line 2: history.pending_max must be at least 1"), "{err}");
    }
}
