//! OTLP exporter: failure events and diagnoses as OTLP log records, the
//! daemon's counters as OTLP metrics, over HTTP with protobuf
//! (`POST /v1/logs`, `POST /v1/metrics`, `Content-Type:
//! application/x-protobuf`) to an OpenTelemetry Collector.
//!
//! The messages are `opentelemetry-proto`'s generated types, encoded with
//! prost; the transport is the webhook's hyper-util client. Not the
//! OpenTelemetry SDK: its batch processors bring their own queue, thread
//! and retry policy, and would hide from the daemon's counters what it
//! drops. Here the exporter is two tasks on the daemon's runtime with the
//! daemon's own rules: a bounded queue fed with `try_send` (a full queue
//! counts a drop), batches of `batch_size` or `batch_delay`, retries with
//! exponential backoff and jitter on connection errors, timeouts, 429,
//! 502, 503 and 504 (the statuses the OTLP/HTTP specification calls
//! retryable), honouring Retry-After; everything else is final, counted
//! and warned about at most once a minute.
//!
//! One log record per record of the JSON contract:
//! - body: the record's JSON, the very line of the JSON log, as a string.
//!   A string rather than an AnyValue map because every backend shows a
//!   string body as the message and a SIEM parses it with the parser it
//!   already has for the file and the syslog feed; the fields are in the
//!   attributes for queries anyway, so a map body would only carry them twice.
//! - attributes: every field of the record under its dotted ECS name
//!   (`event.action`, `destination.port`, `diagnosis.kind`, ...), scalars
//!   typed, arrays as arrays; `@timestamp` is the record's time instead.
//! - severity: failures INFO; diagnoses WARN while open, ongoing or
//!   escalated, INFO once resolved.
//! - event_name: `event.dataset` (`observer.failure`, `observer.diagnosis`).
//!
//! Metrics: `sink::metrics::Metrics::families`, the very families the
//! Prometheus endpoint serves, every `metrics_interval`: counters as
//! cumulative monotonic Sums, gauges as Gauges, under the same names, so
//! that a Collector exporting to Prometheus produces the endpoint's series
//! (`observer_failures` becomes `observer_failures_total`) and one
//! dashboard serves both paths.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{header, Request, StatusCode};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
        metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    },
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prost::Message as _;
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    delivery::jitter,
    host_name,
    http::{self, Client},
    metrics::{Family, MetricKind, Metrics},
    outputs::{OutputStats, WarnLimiter},
    Record,
};
use crate::{
    config::{Destination, OtlpSettings, Signal},
    diagnose::record::Status,
    stats::Stats,
};

/// A response body is read up to this size (a partial-success message
/// is a few hundred bytes).
const MAX_RESPONSE: usize = 64 << 10;

/// The handle the sink task offers records to. Dropping it ends the
/// exporter: the logs task sends what it holds, the metrics task sends the
/// counters one last time.
pub struct OtlpSink {
    logs: Option<mpsc::Sender<Record>>,
    failures: bool,
    diagnoses: bool,
    stats: Arc<OutputStats>,
    _stop_metrics: Option<oneshot::Sender<()>>,
}

impl OtlpSink {
    /// Starts a task per signal the settings turn on. Nothing is connected
    /// yet: a Collector that is down at start is the same as one that goes
    /// away later.
    pub fn start(
        settings: &OtlpSettings,
        metrics: Option<(Arc<Metrics>, Arc<Stats>)>,
        out: Arc<OutputStats>,
    ) -> (OtlpSink, Vec<JoinHandle<()>>) {
        let resource = resource(&settings.resource);
        let mut tasks = Vec::new();
        let mut sink = OtlpSink {
            logs: None,
            failures: settings.failures,
            diagnoses: settings.diagnoses,
            stats: out.clone(),
            _stop_metrics: None,
        };
        if let Some(dest) = &settings.logs {
            let (tx, rx) = mpsc::channel(settings.queue);
            let exporter = Exporter::new(Signal::Logs, dest, settings, out.clone());
            let batch = Batching { size: settings.batch_size, delay: settings.batch_delay };
            tasks.push(tokio::spawn(run_logs(exporter, rx, resource.clone(), batch)));
            sink.logs = Some(tx);
        }
        if let (Some(dest), Some((families, stats))) = (&settings.metrics, metrics) {
            let (stop, stopped) = oneshot::channel();
            let exporter = Exporter::new(Signal::Metrics, dest, settings, out.clone());
            let source = Source { metrics: families, stats, outputs: out, start: SystemTime::now() };
            tasks.push(tokio::spawn(run_metrics(exporter, source, resource, settings.metrics_interval, stopped)));
            sink._stop_metrics = Some(stop);
        }
        (sink, tasks)
    }

    /// Queues a record when its type is wanted; never waits.
    pub fn offer(&self, record: &Record) {
        let Some(tx) = &self.logs else { return };
        let wanted = match record {
            Record::Failure(_) => self.failures,
            Record::Diagnosis(_) => self.diagnoses,
        };
        if wanted && tx.try_send(record.clone()).is_err() {
            OutputStats::inc(&self.stats.otlp_dropped);
        }
    }
}

/// The resource of every request: the settings' attributes, and this
/// host's name unless they name one.
fn resource(attrs: &BTreeMap<String, String>) -> Resource {
    let mut attrs = attrs.clone();
    attrs.entry("host.name".to_owned()).or_insert_with(host_name);
    Resource { attributes: attrs.into_iter().map(|(k, v)| kv(k, string(v))).collect(), ..Resource::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "observer".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    }
}

fn kv(key: String, value: AnyValue) -> KeyValue {
    KeyValue { key, value: Some(value), ..KeyValue::default() }
}

fn string(s: String) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s)) }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// JSON as an OTLP value: integers as integers (a u64 past i64 as a
/// double), arrays as arrays, objects as key-value lists.
fn any(v: &Value) -> AnyValue {
    use any_value::Value as V;
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(V::BoolValue(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Some(V::StringValue(s.clone())),
        Value::Array(a) => Some(V::ArrayValue(ArrayValue { values: a.iter().map(any).collect() })),
        Value::Object(m) => {
            Some(V::KvlistValue(KeyValueList { values: m.iter().map(|(k, v)| kv(k.clone(), any(v))).collect() }))
        }
    };
    AnyValue { value }
}

/// Every leaf of a record under its dotted name; arrays are leaves.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<KeyValue>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        leaf => out.push(kv(prefix.to_owned(), any(leaf))),
    }
}

/// The severity a record has for an operator (the module comment says why).
pub fn severity(record: &Record) -> SeverityNumber {
    match record {
        Record::Failure(_) => SeverityNumber::Info,
        Record::Diagnosis(d) => match d.diagnosis.status {
            Status::Open | Status::Ongoing | Status::Escalated => SeverityNumber::Warn,
            Status::Resolved => SeverityNumber::Info,
        },
    }
}

/// One record as one log record.
pub fn log_record(record: &Record, observed: SystemTime) -> Result<LogRecord, serde_json::Error> {
    let body = serde_json::to_string(record)?;
    let mut json = serde_json::to_value(record)?;
    let (time, dataset) = match record {
        Record::Failure(e) => (e.timestamp, "observer.failure"),
        Record::Diagnosis(d) => (d.timestamp, "observer.diagnosis"),
    };
    // The time as the body says it (microseconds for failures, seconds
    // for diagnoses), so that a backend's timestamp and the body agree.
    let written = json
        .as_object_mut()
        .and_then(|obj| obj.remove("@timestamp"))
        .and_then(|t| t.as_str().and_then(|t| humantime::parse_rfc3339(t).ok()));
    let time = written.unwrap_or(time);
    let mut attributes = Vec::new();
    flatten("", &json, &mut attributes);
    let severity = severity(record);
    Ok(LogRecord {
        time_unix_nano: nanos(time),
        observed_time_unix_nano: nanos(observed),
        severity_number: severity as i32,
        severity_text: match severity {
            SeverityNumber::Warn => "WARN",
            _ => "INFO",
        }
        .to_owned(),
        body: Some(string(body)),
        attributes,
        event_name: dataset.to_owned(),
        ..LogRecord::default()
    })
}

pub fn logs_request(resource: Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records, ..ScopeLogs::default() }],
            ..ResourceLogs::default()
        }],
    }
}

/// The families as OTLP metrics: counters cumulative since `start`.
pub fn metrics_request(
    resource: Resource,
    families: &[Family],
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .map(|f| {
            let points = f
                .series
                .iter()
                .map(|s| NumberDataPoint {
                    attributes: s.labels.iter().map(|(k, v)| kv((*k).to_owned(), string(v.clone()))).collect(),
                    start_time_unix_nano: nanos(start),
                    time_unix_nano: nanos(now),
                    value: Some(number_data_point::Value::AsInt(i64::try_from(s.value).unwrap_or(i64::MAX))),
                    ..NumberDataPoint::default()
                })
                .collect();
            let data = match f.kind {
                MetricKind::Counter => metric::Data::Sum(Sum {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                MetricKind::Gauge => metric::Data::Gauge(Gauge { data_points: points }),
            };
            Metric { name: f.name.to_owned(), description: f.help.to_owned(), data: Some(data), ..Metric::default() }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..ScopeMetrics::default() }],
            ..ResourceMetrics::default()
        }],
    }
}

struct Batching {
    size: usize,
    delay: Duration,
}

/// Collects records into batches (full, or `delay` after the first one)
/// and sends each; while a batch is being retried the queue fills, and
/// the sink task's `try_send` drops at the door, which bounds memory.
async fn run_logs(mut exporter: Exporter, mut rx: mpsc::Receiver<Record>, resource: Resource, batch: Batching) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let deadline = tokio::time::Instant::now() + batch.delay;
        let mut records = vec![first];
        while records.len() < batch.size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let now = SystemTime::now();
        let mut logs = Vec::with_capacity(records.len());
        for r in &records {
            match log_record(r, now) {
                Ok(l) => logs.push(l),
                Err(e) => {
                    OutputStats::inc(&exporter.stats.otlp_failed);
                    exporter.warn.warn(format_args!("encoding a record: {e}"));
                }
            }
        }
        if logs.is_empty() {
            continue;
        }
        let n = logs.len() as u64;
        let body = logs_request(resource.clone(), logs).encode_to_vec();
        let stats = exporter.stats.clone();
        match exporter.export(Bytes::from(body)).await {
            Ok(resp) => {
                let rejected = ExportLogsServiceResponse::decode(resp)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (u64::try_from(p.rejected_log_records).unwrap_or(0).min(n), p.error_message))
                    .unwrap_or_default();
                stats.otlp_sent.fetch_add(n - rejected.0, std::sync::atomic::Ordering::Relaxed);
                if rejected.0 > 0 {
                    stats.otlp_failed.fetch_add(rejected.0, std::sync::atomic::Ordering::Relaxed);
                    exporter
                        .warn
                        .warn(format_args!("the endpoint rejected {} of {n} log records: {}", rejected.0, rejected.1));
                }
            }
            Err(why) => {
                stats.otlp_failed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                exporter.warn.warn(format_args!("{why}; {n} log records dropped"));
            }
        }
    }
}

/// What the metrics task reads at each export.
struct Source {
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    outputs: Arc<OutputStats>,
    /// The start of the cumulative sums: the counters begin at 0 here.
    start: SystemTime,
}

/// The counters every `interval`, and once more when the sink goes away.
async fn run_metrics(
    mut exporter: Exporter,
    source: Source,
    resource: Resource,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => export_metrics(&mut exporter, &source, &resource).await,
            _ = &mut stop => break,
        }
    }
    export_metrics(&mut exporter, &source, &resource).await;
}

async fn export_metrics(exporter: &mut Exporter, source: &Source, resource: &Resource) {
    let families = source.metrics.families(&source.stats, &source.outputs);
    let body = metrics_request(resource.clone(), &families, source.start, SystemTime::now()).encode_to_vec();
    match exporter.export(Bytes::from(body)).await {
        Ok(resp) => {
            OutputStats::inc(&exporter.stats.otlp_metrics_sent);
            let partial = ExportMetricsServiceResponse::decode(resp).ok().and_then(|r| r.partial_success);
            if let Some(p) = partial.filter(|p| p.rejected_data_points > 0) {
                exporter.warn.warn(format_args!(
                    "the endpoint rejected {} metric data points: {}",
                    p.rejected_data_points, p.error_message
                ));
            }
        }
        Err(why) => {
            OutputStats::inc(&exporter.stats.otlp_metrics_failed);
            exporter.warn.warn(format_args!("{why}; this export of the counters is dropped"));
        }
    }
}

enum Attempt {
    Delivered(Bytes),
    Retry(Option<Duration>, String),
    Final(String),
}

/// One signal's requests: POST, retry, give up.
struct Exporter {
    client: Client,
    dest: Destination,
    max_retries: u32,
    backoff: Duration,
    backoff_max: Duration,
    stats: Arc<OutputStats>,
    warn: WarnLimiter,
}

impl Exporter {
    fn new(signal: Signal, dest: &Destination, s: &OtlpSettings, stats: Arc<OutputStats>) -> Exporter {
        Exporter {
            client: http::client(dest.timeout),
            dest: dest.clone(),
            max_retries: s.max_retries,
            backoff: s.backoff,
            backoff_max: s.backoff_max,
            stats,
            warn: WarnLimiter::new(
                match signal {
                    Signal::Logs => "otlp logs",
                    Signal::Metrics => "otlp metrics",
                },
                Duration::from_secs(60),
            ),
        }
    }

    /// The response body once delivered; why not, once given up.
    async fn export(&mut self, body: Bytes) -> Result<Bytes, String> {
        let mut delay = self.backoff;
        let mut retries = 0;
        loop {
            match self.post(body.clone()).await {
                Attempt::Delivered(resp) => return Ok(resp),
                Attempt::Final(why) => return Err(why),
                Attempt::Retry(after, why) => {
                    if retries == self.max_retries {
                        return Err(format!("{why}; given up after {} attempts", retries + 1));
                    }
                    retries += 1;
                    OutputStats::inc(&self.stats.otlp_retries);
                    // The Collector's Retry-After as it is (capped); our
                    // own backoff with jitter.
                    let wait = after.map_or_else(|| jitter(delay), |a| a.min(self.backoff_max));
                    self.warn.warn(format_args!("{why}; retrying in {wait:?}"));
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(self.backoff_max);
                }
            }
        }
    }

    async fn post(&self, body: Bytes) -> Attempt {
        let uri = &self.dest.uri;
        let mut req = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::USER_AGENT, http::USER_AGENT);
        for (k, v) in &self.dest.headers {
            req = req.header(k, v);
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Attempt::Final(format!("building the request: {e}")),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| format!("POST {uri}: {e}"))?;
            let status = resp.status();
            let after = http::retry_after(resp.headers(), SystemTime::now());
            // The body too: a success carries the partial-success message,
            // and reading it lets the connection be reused.
            let body = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await.map(|b| b.to_bytes());
            Ok::<_, String>((status, after, body.unwrap_or_default()))
        };
        match tokio::time::timeout(self.dest.timeout, exchange).await {
            Err(_) => Attempt::Retry(None, format!("POST {uri}: no response within {:?}", self.dest.timeout)),
            Ok(Err(why)) => Attempt::Retry(None, why),
            Ok(Ok((status, after, body))) => {
                if status.is_success() {
                    Attempt::Delivered(body)
                } else if retryable(status) {
                    Attempt::Retry(after, format!("POST {uri}: {status}"))
                } else {
                    Attempt::Final(format!("POST {uri}: {status}{}", detail(&body)))
                }
            }
        }
    }
}

/// The statuses the OTLP/HTTP specification says to retry.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// The start of an error body, for the warning (a Collector answers a
/// google.rpc.Status in protobuf; its message is readable text within it).
fn detail(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().filter(|c| !c.is_control()).take(200).collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(" ({})", text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Record {
        crate::sink::fixtures::failure(8080, 3)
    }

    fn attr<'a>(l: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        l.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_failure_is_one_log_record_with_its_fields_as_dotted_attributes() {
        let r = failure();
        let l = log_record(&r, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(l.time_unix_nano, 1_767_225_600_000_001_000);
        assert_eq!(l.severity_number, SeverityNumber::Info as i32);
        assert_eq!(l.severity_text, "INFO");
        assert_eq!(l.event_name, "observer.failure");
        use any_value::Value as V;
        assert_eq!(attr(&l, "event.action"), Some(&V::StringValue("refused".into())));
        assert_eq!(attr(&l, "event.count"), Some(&V::IntValue(3)));
        assert_eq!(attr(&l, "destination.port"), Some(&V::IntValue(8080)));
        assert_eq!(attr(&l, "destination.ip"), Some(&V::StringValue("10.0.0.2".into())));
        assert_eq!(attr(&l, "observer.netns"), Some(&V::IntValue(4026532177)));
        assert_eq!(attr(&l, "observer.reason"), Some(&V::StringValue("NO_SOCKET".into())));
        let category = attr(&l, "event.category").unwrap();
        assert!(matches!(category, V::ArrayValue(a) if a.values.len() == 1), "{category:?}");
        assert!(attr(&l, "@timestamp").is_none(), "the time is the record's timestamp");
        // The body is the log line itself.
        let Some(V::StringValue(body)) = l.body.and_then(|b| b.value) else { panic!("no string body") };
        assert_eq!(body, serde_json::to_string(&r).unwrap());
    }

    #[test]
    fn severities_follow_the_diagnosis_status() {
        let d = |status: &str| Record::Diagnosis(crate::sink::fixtures::diagnosis("no_listener", "a", status));
        for (status, sev) in [
            ("open", SeverityNumber::Warn),
            ("ongoing", SeverityNumber::Warn),
            ("escalated", SeverityNumber::Warn),
            ("resolved", SeverityNumber::Info),
        ] {
            let l = log_record(&d(status), SystemTime::now()).unwrap();
            assert_eq!(l.severity_number, sev as i32, "{status}");
            assert_eq!(l.event_name, "observer.diagnosis");
            assert_eq!(attr(&l, "diagnosis.kind"), Some(&any_value::Value::StringValue("no_listener".into())));
            assert_eq!(attr(&l, "diagnosis.evidence.actions.refused"), Some(&any_value::Value::IntValue(3)));
        }
    }

    #[test]
    fn requests_round_trip_through_protobuf() {
        let res = resource(&BTreeMap::from([("service.name".to_owned(), "observer".to_owned())]));
        assert!(res.attributes.iter().any(|kv| kv.key == "host.name"));
        let req = logs_request(res.clone(), vec![log_record(&failure(), SystemTime::now()).unwrap()]);
        let back = ExportLogsServiceRequest::decode(Bytes::from(req.encode_to_vec())).unwrap();
        assert_eq!(back, req);

        let m = Arc::new(Metrics::new(&crate::config::MetricsConfig::default(), &[]));
        m.observe(&failure());
        let families = m.families(&Stats::default(), &OutputStats::default());
        let req = metrics_request(res, &families, SystemTime::UNIX_EPOCH, SystemTime::now());
        let back = ExportMetricsServiceRequest::decode(Bytes::from(req.encode_to_vec())).unwrap();
        let metrics = &back.resource_metrics[0].scope_metrics[0].metrics;
        let failures = metrics.iter().find(|m| m.name == "observer_failures").unwrap();
        let Some(metric::Data::Sum(sum)) = &failures.data else { panic!("not a sum: {failures:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsInt(3)));
        let open = metrics.iter().find(|m| m.name == "observer_diagnoses_open").unwrap();
        assert!(matches!(open.data, Some(metric::Data::Gauge(_))));
        assert!(metrics.iter().any(|m| m.name == "observer_otlp_dropped"));
    }

    #[test]
    fn only_the_specs_retryable_statuses_are_retried() {
        for (code, retry) in [(429, true), (502, true), (503, true), (504, true), (500, false), (400, false)] {
            assert_eq!(retryable(StatusCode::from_u16(code).unwrap()), retry, "{code}");
        }
    }
}
