//! Webhook alerts: one JSON POST when a diagnosis opens and when it
//! escalates; never per failure event, never per ongoing update.
//!
//! The body (`alerts.format`): by default the diagnosis record of the JSON
//! contract (the same object as in the log), plus ECS `message` (one line
//! for chat tools and pagers) and `host.name` (a receiver serves many
//! hosts); or a Slack or Teams message (`chat`). The format changes the
//! body only: delivery, retries and the rate limit are the same.
//! `Idempotency-Key` is the same on every retry of one alert, so a receiver
//! can drop duplicates when a response was lost.
//!
//! Delivery: connection errors, timeouts, 5xx and 429 are retried with
//! exponential backoff (honouring Retry-After); other 4xx are final.
//! Rate limit: at most `max_per_minute` POSTs in any 60 s; alerts beyond
//! it are counted by kind and sent as one summary when the window has
//! room again. The sink task hands alerts over with `try_send` to a
//! bounded queue: a slow or dead receiver never holds up the pipeline.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Request, StatusCode, Uri};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    chat,
    delivery::{self, Attempt, Backoff, Channel, Counters, RateLimit, Suppressed},
    host_name, http,
    outputs::{OutputStats, WarnLimiter},
    Record,
};
use crate::{
    config::{AlertsConfig, WebhookFormat},
    diagnose::record::{DiagnosisRecord, Status},
    netns,
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
        Ok((WebhookSink { tx, stats }, tokio::spawn(delivery::run(poster, rx))))
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

struct Poster {
    sender: Sender,
    host: String,
    own_netns: Option<u32>,
    format: WebhookFormat,
    policy: Backoff,
    limit: RateLimit,
    suppressed: Suppressed,
    stats: Arc<OutputStats>,
    warn: WarnLimiter,
}

/// The HTTP side: one POST, and what its outcome means.
struct Sender {
    client: http::Client,
    uri: Uri,
    timeout: Duration,
}

impl Poster {
    fn new(cfg: &AlertsConfig, stats: Arc<OutputStats>, rate_period: Duration) -> Result<Poster, String> {
        Ok(Poster {
            sender: Sender {
                client: http::client(Duration::from_millis(cfg.timeout_ms)),
                uri: cfg.uri()?,
                timeout: Duration::from_millis(cfg.timeout_ms),
            },
            host: host_name(),
            own_netns: netns::own(),
            format: cfg.format,
            policy: Backoff::from_millis(cfg.max_retries, cfg.backoff_ms, cfg.backoff_max_ms),
            limit: RateLimit::new(cfg.max_per_minute as usize, rate_period),
            suppressed: Suppressed::default(),
            stats,
            warn: WarnLimiter::new("webhook", Duration::from_secs(60)),
        })
    }

    async fn deliver(&mut self, body: Bytes, key: &str) {
        let counters = Counters {
            sent: &self.stats.alerts_sent,
            failed: &self.stats.alerts_failed,
            retries: &self.stats.alerts_retries,
        };
        let sender = &self.sender;
        delivery::deliver(&self.policy, &counters, &mut self.warn, "the alert", || sender.post(body.clone(), key))
            .await;
    }
}

impl Channel for Poster {
    async fn alert(&mut self, d: Box<DiagnosisRecord>) {
        let d = &*d;
        if !self.limit.admit(Instant::now()) {
            OutputStats::inc(&self.stats.alerts_rate_limited);
            self.suppressed.add(d);
            return;
        }
        let why = delivery::why_command(d, self.own_netns);
        let body = match self.format {
            WebhookFormat::Json => alert_body(d, &self.host),
            WebhookFormat::Slack => serde_json::to_vec(&chat::slack(d, &self.host, &why)).ok().map(Bytes::from),
            WebhookFormat::Teams => serde_json::to_vec(&chat::teams(d, &self.host, &why)).ok().map(Bytes::from),
        };
        let Some(body) = body else {
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
        let since = s.since_rfc3339();
        let body = match self.format {
            WebhookFormat::Json => json!({
                "@timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                "event": { "dataset": "observer.alert_summary", "kind": "alert", "category": ["network"] },
                "host": { "name": self.host },
                "message": s.message(&self.host, self.limit.max),
                "suppressed": { "count": n, "since": since, "by_kind": s.by_kind },
            }),
            WebhookFormat::Slack => chat::slack_summary(&s, &self.host, self.limit.max),
            WebhookFormat::Teams => chat::teams_summary(&s, &self.host, self.limit.max),
        };
        let key = format!("summary/{since}");
        self.deliver(Bytes::from(body.to_string()), &key).await;
    }
}

impl Sender {
    async fn post(&self, body: Bytes, key: &str) -> Attempt {
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
            Err(_) => Attempt::Retry { after: None, why: format!("POST {uri}: no response within {:?}", self.timeout) },
            Ok(Err(e)) => Attempt::Retry { after: None, why: format!("POST {uri}: {e}") },
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    let after = http::retry_after(resp.headers(), SystemTime::now());
                    Attempt::Retry { after, why: format!("POST {uri}: {status}") }
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
    obj.insert("message".into(), chat::message(d, host).into());
    obj.insert("host".into(), json!({ "name": host }));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis(id: &str) -> Box<DiagnosisRecord> {
        crate::sink::fixtures::diagnosis("no_listener", id, "open")
    }

    /// The generic body as it always was: the record, `host.name` and
    /// `message`, keys in serde_json's order.
    #[test]
    fn the_json_body_is_the_record_plus_message_and_host() {
        let body = alert_body(&diagnosis("a"), "web-1").unwrap();
        let expected = concat!(
            r#"{"@timestamp":"2026-01-01T00:00:00Z","destination":{"ip":"127.0.0.1","port":8080},"#,
            r#""diagnosis":{"advice":[],"clients":1,"count":3,"evidence":{"actions":{"refused":3},"sample_clients":[]},"#,
            r#""first_seen":"2026-01-01T00:00:00.000Z","id":"a","kind":"no_listener","last_seen":"2026-01-01T00:00:00Z","#,
            r#""status":"open","summary":"nothing listens"},"#,
            r#""event":{"category":["network"],"dataset":"observer.diagnosis","kind":"alert"},"host":{"name":"web-1"},"#,
            r#""message":"observer on web-1: no_listener opened on port 8080: nothing listens","#,
            r#""network":{"transport":"tcp","type":"ipv4"},"observer":{"direction":"inbound","netns":1}}"#
        );
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
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
        let task = tokio::spawn(delivery::run(poster, rx));
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
