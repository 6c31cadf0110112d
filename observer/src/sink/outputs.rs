//! The outputs beside the NDJSON log: syslog, the metrics endpoint,
//! webhook and e-mail alerts. The sink task offers every record here after writing
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
    syslog::SyslogSink,
    webhook::WebhookSink,
    Record,
};
use crate::{
    config::{AlertsConfig, EmailConfig, MetricsConfig, SyslogConfig},
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
    email: Option<EmailSink>,
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
            senders: Vec::new(),
            server: None,
            stats: out_stats.clone(),
        };
        if !config.metrics.listen.is_empty() {
            let listener = metrics::bind(&config.metrics.listen)
                .await
                .with_context(|| format!("metrics endpoint: binding {}", config.metrics.listen))?;
            let local = listener.local_addr().context("metrics endpoint: local address")?;
            let m = Arc::new(Metrics::new(config.metrics, hooks));
            let registry = Arc::new(m.registry(stats, out_stats.clone()));
            outputs.server = Some(tokio::spawn(metrics::serve(listener, registry)));
            outputs.metrics = Some(m);
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
            let (sink, task) = EmailSink::start(e, out_stats)?;
            let statuses: Vec<&str> = e.statuses.iter().map(|s| s.as_str()).collect();
            info!("email: sending {} to {} via {}:{}", statuses.join(", "), e.to.join(", "), e.server, e.port());
            outputs.email = Some(sink);
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
        if let Some(e) = &self.email {
            e.offer(record);
        }
    }

    /// Lets the senders deliver what is queued, for at most `grace`; the
    /// metrics endpoint stays up until then.
    pub async fn shutdown(mut self, grace: Duration) {
        self.syslog = None;
        self.webhook = None;
        self.email = None;
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.senders.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                warn!("outputs: undelivered syslog messages, alerts or e-mails dropped at shutdown after {grace:?}");
            }
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
