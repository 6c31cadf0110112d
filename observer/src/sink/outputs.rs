//! The outputs beside the NDJSON log: syslog, the metrics endpoint and
//! webhook alerts. The sink task offers every record here after writing
//! it to the log; nothing in `offer` waits on the network.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    metrics::{self, Metrics, MetricsConfig},
    syslog::{SyslogConfig, SyslogSink},
    webhook::{AlertsConfig, WebhookSink},
    Record,
};
use crate::{config::Config, hooks::HookStatus, stats::Stats};

/// The outputs' own health, exported as metrics.
#[derive(Debug, Default)]
pub struct OutputStats {
    pub syslog_sent: AtomicU64,
    pub syslog_dropped: AtomicU64,
    pub syslog_errors: AtomicU64,
    pub alerts_sent: AtomicU64,
    pub alerts_failed: AtomicU64,
    pub alerts_retries: AtomicU64,
    pub alerts_rate_limited: AtomicU64,
    pub alerts_dropped: AtomicU64,
}

impl OutputStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One warning per period for a failing output, saying how many more
/// there were: a dead receiver must not flood the daemon's own log.
pub struct WarnLimiter {
    what: &'static str,
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl WarnLimiter {
    pub fn new(what: &'static str, every: Duration) -> WarnLimiter {
        WarnLimiter { what, every, last: None, held: 0 }
    }

    pub fn warn(&mut self, msg: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            warn!("{}: {msg} (and {} more warnings since the last one)", self.what, self.held);
        } else {
            warn!("{}: {msg}", self.what);
        }
        self.last = Some(now);
        self.held = 0;
    }
}

pub struct Outputs {
    metrics: Option<Arc<Metrics>>,
    syslog: Option<SyslogSink>,
    webhook: Option<WebhookSink>,
    senders: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    pub stats: Arc<OutputStats>,
}

impl Outputs {
    /// Starts what the configuration turns on. Fails only on what the
    /// admin must fix (the metrics port is taken, a bad URL); receivers
    /// that are down are retried, not fatal.
    pub async fn start(config: &Config, stats: Arc<Stats>, hooks: &[HookStatus]) -> anyhow::Result<Outputs> {
        let out_stats = Arc::new(OutputStats::default());
        let mut outputs = Outputs {
            metrics: None,
            syslog: None,
            webhook: None,
            senders: Vec::new(),
            server: None,
            stats: out_stats.clone(),
        };
        if !config.metrics.listen.is_empty() {
            let listener = metrics::bind(&config.metrics.listen)
                .await
                .with_context(|| format!("metrics endpoint: binding {}", config.metrics.listen))?;
            let local = listener.local_addr().context("metrics endpoint: local address")?;
            let m = Arc::new(Metrics::new(&config.metrics, hooks));
            let registry = Arc::new(m.registry(stats, out_stats.clone()));
            outputs.server = Some(tokio::spawn(metrics::serve(listener, registry)));
            outputs.metrics = Some(m);
            info!("metrics: serving http://{local}/metrics");
        }
        let s = &config.syslog;
        if s.enabled {
            let (sink, task) = SyslogSink::start(s, out_stats.clone());
            let what = match (s.failures, s.diagnoses) {
                (true, true) => "failures and diagnoses",
                (true, false) => "failures",
                _ => "diagnoses",
            };
            info!("syslog: sending {what} over {} to {}", s.transport.as_str(), s.address);
            outputs.syslog = Some(sink);
            outputs.senders.push(task);
        }
        if !config.alerts.webhook_url.is_empty() {
            let (sink, task) = WebhookSink::start(&config.alerts, out_stats).map_err(anyhow::Error::msg)?;
            info!("alerts: POSTing openings and escalations to {}", config.alerts.webhook_url);
            outputs.webhook = Some(sink);
            outputs.senders.push(task);
        }
        Ok(outputs)
    }

    pub fn offer(&self, record: &Record) {
        if let Some(m) = &self.metrics {
            m.observe(record);
        }
        if let Some(s) = &self.syslog {
            s.offer(record);
        }
        if let Some(w) = &self.webhook {
            w.offer(record);
        }
    }

    /// Lets the senders deliver what is queued, for at most `grace`; the
    /// metrics endpoint stays up until then.
    pub async fn shutdown(mut self, grace: Duration) {
        self.syslog = None;
        self.webhook = None;
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.senders.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                warn!("outputs: undelivered syslog messages or alerts dropped at shutdown after {grace:?}");
            }
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The `[syslog]`, `[metrics]` and `[alerts]` sections of `observer config`.
pub fn documented_defaults() -> String {
    let s = SyslogConfig::default();
    let m = MetricsConfig::default();
    let a = AlertsConfig::default();
    let transport = s.transport.as_str();
    let facility = serde_json::to_value(s.facility).ok().and_then(|v| v.as_str().map(str::to_owned));
    format!(
        r#"[syslog]
# RFC 5424 messages: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`
# with MSGID `failure` or `diagnosis` and MSG the record's JSON, the same
# line as in the JSON log. Severity: failures informational, diagnoses
# warning (open, ongoing), error (escalated), notice (resolved). Receivers
# should accept messages of 64 KiB (rsyslog: global(maxMessageSize="64k")).
enabled = {enabled}
# udp, tcp (octet-counting framing, RFC 6587) or unix (a datagram socket
# such as /dev/log; rsyslog's imuxsock needs UseSpecialParser="off" to read
# RFC 5424 there).
transport = {transport:?}
# host:port for udp and tcp; the socket path for unix.
address = {address:?}
# kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv,
# ftp, local0 ... local7.
facility = {facility:?}
# APP-NAME: 1 to 48 printable ASCII characters.
app_name = {app:?}
# HOSTNAME; empty: the kernel's host name.
hostname = ""
# Which records to send.
failures = {failures}
diagnoses = {diagnoses}
# Records waiting to be sent. When the receiver is slow or down (TCP
# reconnects with backoff) the queue fills and further records are
# dropped and counted (observer_syslog_dropped_total); the log and the
# pipeline never wait for syslog.
queue = {queue}

[metrics]
# Prometheus endpoint (OpenMetrics text at /metrics), e.g. "127.0.0.1:9464";
# empty: off. Not authenticated: bind it to loopback or a management
# network.
listen = ""
# Destination ports with their own `port` label in observer_failures_total:
# the first ones seen since start; the rest are counted as port="other",
# which bounds the number of series.
max_ports = {max_ports}

[alerts]
# Webhook: one JSON POST (the diagnosis record, plus `message` and
# `host.name`) when a diagnosis opens and when it escalates; never per
# event or per update. http:// only. Empty: no alerts.
webhook_url = ""
# Per attempt, in milliseconds.
timeout_ms = {timeout}
# Retries after the first attempt, on connection errors, timeouts, 5xx and
# 429 (other 4xx are final); delays start at backoff_ms and double up to
# backoff_max_ms (a Retry-After from the receiver is honoured).
max_retries = {retries}
backoff_ms = {backoff}
backoff_max_ms = {backoff_max}
# POSTs in any 60 seconds. Alerts beyond it are counted
# (observer_alerts_rate_limited_total) and summarized in one POST
# (event.dataset observer.alert_summary) when the window has room again.
max_per_minute = {per_minute}
# Alerts waiting for delivery; beyond it they are dropped and counted.
queue = {alert_queue}
"#,
        enabled = s.enabled,
        address = s.address,
        facility = facility.unwrap_or_default(),
        app = s.app_name,
        failures = s.failures,
        diagnoses = s.diagnoses,
        queue = s.queue,
        max_ports = m.max_ports,
        timeout = a.timeout_ms,
        retries = a.max_retries,
        backoff = a.backoff_ms,
        backoff_max = a.backoff_max_ms,
        per_minute = a.max_per_minute,
        alert_queue = a.queue,
    )
}
