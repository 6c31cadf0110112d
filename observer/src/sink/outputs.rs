//! The outputs beside the NDJSON log: syslog, the metrics endpoint,
//! webhook and e-mail alerts, and OTLP. The sink task offers every record here after writing
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
    email::EmailSink,
    metrics::{self, Metrics},
    otlp::OtlpSink,
    syslog::SyslogSink,
    webhook::WebhookSink,
    Record,
};
use crate::{
    config::{AlertsConfig, EmailConfig, MetricsConfig, OtlpSettings, SyslogConfig},
    kernel::hook::HookStatus,
    stats::Stats,
};

/// The configuration's sections of the outputs, handed over by the daemon.
#[derive(Clone, Copy)]
pub struct Sections<'a> {
    pub syslog: &'a SyslogConfig,
    pub metrics: &'a MetricsConfig,
    pub alerts: &'a AlertsConfig,
    pub email: &'a EmailConfig,
    /// `[otlp]` resolved with the environment (`OtlpConfig::resolve`);
    /// None when it is off.
    pub otlp: Option<&'a OtlpSettings>,
}

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
    pub email_sent: AtomicU64,
    pub email_failed: AtomicU64,
    pub email_retries: AtomicU64,
    pub email_rate_limited: AtomicU64,
    pub email_dropped: AtomicU64,
    /// Log records the OTLP endpoint accepted.
    pub otlp_sent: AtomicU64,
    /// Records refused at the OTLP queue (full).
    pub otlp_dropped: AtomicU64,
    /// Log records lost after they were queued: given up after retries,
    /// refused (a final status), or rejected in a partial success.
    pub otlp_failed: AtomicU64,
    /// OTLP requests retried (logs and metrics).
    pub otlp_retries: AtomicU64,
    /// Metric exports the OTLP endpoint accepted.
    pub otlp_metrics_sent: AtomicU64,
    /// Metric exports given up or refused.
    pub otlp_metrics_failed: AtomicU64,
}

impl OutputStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter: its field name (the status file's key), its metric
    /// name and help, and its value. One list for both readers.
    pub fn counters(&self) -> [(&'static str, &'static str, &'static str, u64); 19] {
        // Without `..`: a counter added above and not listed here does not compile.
        let OutputStats {
            syslog_sent,
            syslog_dropped,
            syslog_errors,
            alerts_sent,
            alerts_failed,
            alerts_retries,
            alerts_rate_limited,
            alerts_dropped,
            email_sent,
            email_failed,
            email_retries,
            email_rate_limited,
            email_dropped,
            otlp_sent,
            otlp_dropped,
            otlp_failed,
            otlp_retries,
            otlp_metrics_sent,
            otlp_metrics_failed,
        } = self;
        [
            ("syslog_sent", "observer_syslog_sent", "Syslog messages sent", syslog_sent),
            (
                "syslog_dropped",
                "observer_syslog_dropped",
                "Records not sent to syslog because its queue was full",
                syslog_dropped,
            ),
            ("syslog_errors", "observer_syslog_errors", "Syslog send or connect failures", syslog_errors),
            ("alerts_sent", "observer_alerts_sent", "Webhook alerts delivered (2xx)", alerts_sent),
            (
                "alerts_failed",
                "observer_alerts_failed",
                "Webhook alerts given up after retries or refused (4xx)",
                alerts_failed,
            ),
            (
                "alerts_retries",
                "observer_alerts_retries",
                "Webhook delivery attempts that were retried",
                alerts_retries,
            ),
            (
                "alerts_rate_limited",
                "observer_alerts_rate_limited",
                "Alerts suppressed by the rate limit (summarized)",
                alerts_rate_limited,
            ),
            (
                "alerts_dropped",
                "observer_alerts_dropped",
                "Alerts not queued because the webhook queue was full",
                alerts_dropped,
            ),
            ("email_sent", "observer_email_sent", "E-mail alerts the SMTP server accepted", email_sent),
            (
                "email_failed",
                "observer_email_failed",
                "E-mail alerts lost: refused (5xx, TLS, AUTH) or given up after retries",
                email_failed,
            ),
            (
                "email_retries",
                "observer_email_retries",
                "E-mail delivery attempts that were retried (4xx, timeouts)",
                email_retries,
            ),
            (
                "email_rate_limited",
                "observer_email_rate_limited",
                "E-mail alerts suppressed by the rate limit (summarized)",
                email_rate_limited,
            ),
            (
                "email_dropped",
                "observer_email_dropped",
                "E-mail alerts not queued because the e-mail queue was full",
                email_dropped,
            ),
            ("otlp_sent", "observer_otlp_sent", "Log records the OTLP endpoint accepted", otlp_sent),
            (
                "otlp_dropped",
                "observer_otlp_dropped",
                "Records not sent over OTLP because its queue was full",
                otlp_dropped,
            ),
            (
                "otlp_failed",
                "observer_otlp_failed",
                "Log records lost on the way to the OTLP endpoint (given up after retries, refused, or rejected)",
                otlp_failed,
            ),
            (
                "otlp_retries",
                "observer_otlp_retries",
                "OTLP requests (logs or metrics) that were retried",
                otlp_retries,
            ),
            (
                "otlp_metrics_sent",
                "observer_otlp_metrics_sent",
                "OTLP metric exports the endpoint accepted",
                otlp_metrics_sent,
            ),
            (
                "otlp_metrics_failed",
                "observer_otlp_metrics_failed",
                "OTLP metric exports given up or refused",
                otlp_metrics_failed,
            ),
        ]
        .map(|(field, name, help, v)| (field, name, help, OutputStats::get(v)))
    }

    /// Every counter by its field name (the status file).
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters().into_iter().map(|(field, _, _, v)| (field.to_owned(), v)).collect()
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
    email: Option<EmailSink>,
    otlp: Option<OtlpSink>,
    senders: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    pub stats: Arc<OutputStats>,
}

impl Outputs {
    /// Starts what the configuration turns on. Fails only on what the
    /// admin must fix (the metrics port is taken, a bad URL); receivers
    /// that are down are retried, not fatal.
    pub async fn start(config: Sections<'_>, stats: Arc<Stats>, hooks: &[HookStatus]) -> anyhow::Result<Outputs> {
        let out_stats = Arc::new(OutputStats::default());
        let mut outputs = Outputs {
            metrics: None,
            syslog: None,
            webhook: None,
            email: None,
            otlp: None,
            senders: Vec::new(),
            server: None,
            stats: out_stats.clone(),
        };
        // The record counts are kept when anything reads them: the
        // endpoint, or OTLP's metrics.
        let otlp_metrics = config.otlp.is_some_and(|o| o.metrics.is_some());
        if !config.metrics.listen.is_empty() || otlp_metrics {
            outputs.metrics = Some(Arc::new(Metrics::new(config.metrics, hooks)));
        }
        if let (false, Some(m)) = (config.metrics.listen.is_empty(), &outputs.metrics) {
            let listener = metrics::bind(&config.metrics.listen)
                .await
                .with_context(|| format!("metrics endpoint: binding {}", config.metrics.listen))?;
            let local = listener.local_addr().context("metrics endpoint: local address")?;
            let registry = Arc::new(m.registry(stats.clone(), out_stats.clone()));
            outputs.server = Some(tokio::spawn(metrics::serve(listener, registry)));
            info!("metrics: serving http://{local}/metrics");
        }
        let s = config.syslog;
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
            let (sink, task) = WebhookSink::start(config.alerts, out_stats.clone()).map_err(anyhow::Error::msg)?;
            info!(
                "alerts: POSTing openings and escalations to {} (format {})",
                config.alerts.webhook_url,
                config.alerts.format.as_str()
            );
            outputs.webhook = Some(sink);
            outputs.senders.push(task);
        }
        let e = config.email;
        if e.enabled {
            let (sink, task) = EmailSink::start(e, out_stats.clone())?;
            let statuses: Vec<&str> = e.statuses.iter().map(|s| s.as_str()).collect();
            info!("email: sending {} to {} via {}:{}", statuses.join(", "), e.to.join(", "), e.server, e.port());
            outputs.email = Some(sink);
            outputs.senders.push(task);
        }
        if let Some(o) = config.otlp {
            let source = outputs.metrics.clone().map(|m| (m, stats));
            let (sink, tasks) = OtlpSink::start(o, source, out_stats);
            if let Some(d) = &o.logs {
                let what = match (o.failures, o.diagnoses) {
                    (true, true) => "failures and diagnoses",
                    (true, false) => "failures",
                    _ => "diagnoses",
                };
                info!("otlp: sending {what} as logs to {} (from {})", d.uri, d.from);
            }
            if let Some(d) = &o.metrics {
                info!("otlp: sending the counters every {:?} to {} (from {})", o.metrics_interval, d.uri, d.from);
            }
            for note in &o.notes {
                warn!("otlp: {note}");
            }
            outputs.otlp = Some(sink);
            outputs.senders.extend(tasks);
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
        if let Some(e) = &self.email {
            e.offer(record);
        }
        if let Some(o) = &self.otlp {
            o.offer(record);
        }
    }

    /// Lets the senders deliver what is queued, for at most `grace`; the
    /// metrics endpoint stays up until then.
    pub async fn shutdown(mut self, grace: Duration) {
        self.syslog = None;
        self.webhook = None;
        self.email = None;
        self.otlp = None;
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.senders.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                warn!(
                    "outputs: undelivered syslog messages, alerts, e-mails or OTLP requests dropped at shutdown \
                     after {grace:?}"
                );
            }
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
