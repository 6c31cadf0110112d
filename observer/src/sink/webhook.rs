//! Webhook alerts: one JSON POST when a diagnosis opens and when it
//! escalates; never per failure event, never per ongoing update.
//!
//! The body is the diagnosis record of the JSON contract (the same object
//! as in the log), plus ECS `message` (one line for chat tools and pagers)
//! and `host.name` (a receiver serves many hosts). `Idempotency-Key` is the
//! same on every retry of one alert, so a receiver can drop duplicates
//! when a response was lost.
//!
//! Delivery: connection errors, timeouts, 5xx and 429 are retried with
//! exponential backoff (honouring Retry-After); other 4xx are final.
//! Rate limit: at most `max_per_minute` POSTs in any 60 s; alerts beyond
//! it are counted by kind and sent as one summary when the window has
//! room again. The sink task hands alerts over with `try_send` to a
//! bounded queue: a slow or dead receiver never holds up the pipeline.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Request, StatusCode, Uri};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    host_name,
    http::{self, jitter, Client},
    outputs::{OutputStats, WarnLimiter},
    Record,
};
use crate::{
    config::AlertsConfig,
    diagnose::record::{DiagnosisRecord, Status},
};

/// Whether a record is worth waking someone for.
pub fn alerts_on(record: &DiagnosisRecord) -> bool {
    matches!(record.diagnosis.status, Status::Open | Status::Escalated)
}

pub struct WebhookSink {
    tx: mpsc::Sender<Box<DiagnosisRecord>>,
    stats: Arc<OutputStats>,
}

impl WebhookSink {
    pub fn start(
        cfg: &AlertsConfig,
        stats: Arc<OutputStats>,
    ) -> Result<(WebhookSink, tokio::task::JoinHandle<()>), String> {
        let poster = Poster::new(cfg, stats.clone(), Duration::from_secs(60))?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        Ok((WebhookSink { tx, stats }, tokio::spawn(poster.run(rx))))
    }

    /// Queues an alert for an opening or escalation; ignores everything
    /// else; never waits.
    pub fn offer(&self, record: &Record) {
        let Record::Diagnosis(d) = record else { return };
        if alerts_on(d) && self.tx.try_send(d.clone()).is_err() {
            OutputStats::inc(&self.stats.alerts_dropped);
        }
    }
}

/// At most `max` events in any `period`.
struct RateLimit {
    max: usize,
    period: Duration,
    sent: VecDeque<Instant>,
}

impl RateLimit {
    fn new(max: usize, period: Duration) -> RateLimit {
        RateLimit { max, period, sent: VecDeque::new() }
    }

    fn has_room(&mut self, now: Instant) -> bool {
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= self.period) {
            self.sent.pop_front();
        }
        self.sent.len() < self.max
    }

    fn admit(&mut self, now: Instant) -> bool {
        let ok = self.has_room(now);
        if ok {
            self.sent.push_back(now);
        }
        ok
    }
}

#[derive(Default)]
struct Suppressed {
    since: Option<SystemTime>,
    by_kind: BTreeMap<String, u64>,
}

impl Suppressed {
    fn count(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

struct Poster {
    client: Client,
    uri: Uri,
    host: String,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    backoff_max: Duration,
    limit: RateLimit,
    suppressed: Suppressed,
    stats: Arc<OutputStats>,
    warn: WarnLimiter,
}

enum Attempt {
    Delivered,
    Retry(Option<Duration>),
    Final(String),
}

impl Poster {
    fn new(cfg: &AlertsConfig, stats: Arc<OutputStats>, rate_period: Duration) -> Result<Poster, String> {
        Ok(Poster {
            client: http::client(Duration::from_millis(cfg.timeout_ms)),
            uri: cfg.uri()?,
            host: host_name(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_retries: cfg.max_retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            limit: RateLimit::new(cfg.max_per_minute as usize, rate_period),
            suppressed: Suppressed::default(),
            stats,
            warn: WarnLimiter::new("webhook", Duration::from_secs(60)),
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Box<DiagnosisRecord>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(d) => self.alert(&d).await,
                    None => break,
                },
                _ = tick.tick() => self.summarize().await,
            }
        }
        self.summarize().await;
    }

    async fn alert(&mut self, d: &DiagnosisRecord) {
        if !self.limit.admit(Instant::now()) {
            OutputStats::inc(&self.stats.alerts_rate_limited);
            self.suppressed.since.get_or_insert_with(SystemTime::now);
            *self.suppressed.by_kind.entry(d.diagnosis.kind.as_str().to_owned()).or_default() += 1;
            return;
        }
        let Some(body) = alert_body(d, &self.host) else {
            OutputStats::inc(&self.stats.alerts_failed);
            return;
        };
        let status = match d.diagnosis.status {
            Status::Escalated => "escalated",
            _ => "open",
        };
        let key = format!("{}/{}/{status}", d.diagnosis.id, humantime::format_rfc3339_millis(d.diagnosis.first_seen));
        self.deliver(body, &key).await;
    }

    /// One POST that says how many alerts the rate limit held back.
    async fn summarize(&mut self) {
        let n = self.suppressed.count();
        if n == 0 || !self.limit.admit(Instant::now()) {
            return;
        }
        let s = std::mem::take(&mut self.suppressed);
        let since = humantime::format_rfc3339_micros(s.since.unwrap_or_else(SystemTime::now)).to_string();
        let kinds: Vec<String> = s.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let body = json!({
            "@timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "event": { "dataset": "observer.alert_summary", "kind": "alert", "category": ["network"] },
            "host": { "name": self.host },
            "message": format!(
                "observer on {}: {n} more alerts held back by the rate limit ({} per minute) since {since}: {}",
                self.host, self.limit.max, kinds.join(", ")
            ),
            "suppressed": { "count": n, "since": since, "by_kind": s.by_kind },
        });
        let key = format!("summary/{since}");
        self.deliver(Bytes::from(body.to_string()), &key).await;
    }

    async fn deliver(&mut self, body: Bytes, key: &str) {
        let mut delay = self.backoff;
        let mut retries = 0;
        loop {
            match self.post(body.clone(), key).await {
                Attempt::Delivered => {
                    OutputStats::inc(&self.stats.alerts_sent);
                    return;
                }
                Attempt::Final(why) => {
                    OutputStats::inc(&self.stats.alerts_failed);
                    self.warn.warn(format_args!("{why}; the alert is dropped"));
                    return;
                }
                Attempt::Retry(after) => {
                    if retries == self.max_retries {
                        OutputStats::inc(&self.stats.alerts_failed);
                        self.warn.warn(format_args!("giving up on an alert after {} attempts", retries + 1));
                        return;
                    }
                    retries += 1;
                    OutputStats::inc(&self.stats.alerts_retries);
                    // The receiver's Retry-After is taken as is; our own
                    // backoff gets jitter.
                    let wait = after.map_or_else(|| jitter(delay), |a| a.min(self.backoff_max));
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(self.backoff_max);
                }
            }
        }
    }

    async fn post(&mut self, body: Bytes, key: &str) -> Attempt {
        let req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, http::USER_AGENT)
            .header("Idempotency-Key", key)
            .body(Full::new(body));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Final(format!("building the request: {e}")),
        };
        let uri = &self.uri;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => {
                self.warn.warn(format_args!("POST {uri}: no response within {:?}; retrying", self.timeout));
                Attempt::Retry(None)
            }
            Ok(Err(e)) => {
                self.warn.warn(format_args!("POST {uri}: {e}; retrying"));
                Attempt::Retry(None)
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    let after = http::retry_after(resp.headers(), SystemTime::now());
                    self.warn.warn(format_args!("POST {uri}: {status}; retrying"));
                    Attempt::Retry(after)
                } else {
                    Attempt::Final(format!("POST {uri}: {status}"))
                }
            }
        }
    }
}

/// The diagnosis record plus `message` and `host.name`.
pub fn alert_body(d: &DiagnosisRecord, host: &str) -> Option<Bytes> {
    let mut v = serde_json::to_value(d).ok()?;
    let obj = v.as_object_mut()?;
    let what = match d.diagnosis.status {
        Status::Escalated => "escalated",
        _ => "opened",
    };
    let message = format!(
        "observer on {host}: {} {what} on port {}: {}",
        d.diagnosis.kind, d.destination.port, d.diagnosis.summary
    );
    obj.insert("message".into(), message.into());
    obj.insert("host".into(), json!({ "name": host }));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_is_a_sliding_window() {
        let mut r = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.admit(t0));
        assert!(r.admit(t0 + Duration::from_secs(10)));
        assert!(!r.admit(t0 + Duration::from_secs(59)));
        assert!(r.admit(t0 + Duration::from_secs(60)));
        assert!(!r.admit(t0 + Duration::from_secs(61)));
        assert!(r.admit(t0 + Duration::from_secs(70)));
    }

    fn diagnosis(id: &str) -> Box<DiagnosisRecord> {
        crate::sink::fixtures::diagnosis("no_listener", id, "open")
    }

    /// Answers 200 to every POST and keeps the bodies.
    fn receiver() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(&mut conn);
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        (url, bodies)
    }

    #[tokio::test]
    async fn alerts_beyond_the_rate_limit_are_summarized_in_one_post() {
        let (url, bodies) = receiver();
        let cfg = AlertsConfig { webhook_url: url, max_per_minute: 1, ..AlertsConfig::default() };
        let stats = Arc::new(OutputStats::default());
        let poster = Poster::new(&cfg, stats.clone(), Duration::from_millis(300)).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(poster.run(rx));
        for id in ["a", "b", "c"] {
            tx.send(diagnosis(id)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while bodies.lock().unwrap().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(tx);
        task.await.unwrap();
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2, "{bodies:#?}");
        assert_eq!(bodies[0]["diagnosis"]["id"], "a");
        assert_eq!(bodies[1]["event"]["dataset"], "observer.alert_summary");
        assert_eq!(bodies[1]["suppressed"]["count"], 2);
        assert_eq!(bodies[1]["suppressed"]["by_kind"]["no_listener"], 2);
        assert_eq!(OutputStats::get(&stats.alerts_rate_limited), 2);
        assert_eq!(OutputStats::get(&stats.alerts_sent), 2);
    }
}
