//! Prometheus metrics endpoint (`GET /metrics`, OpenMetrics text format).
//!
//! Failures and diagnoses are counted as records pass the sink task; the
//! daemon's health counters (`Stats`, the outputs' own counters) are read
//! at scrape time, so there is one source of truth for each number.
//!
//! Label cardinality is bounded: `port` takes the first `max_ports`
//! distinct destination ports seen since start; later ones are counted
//! under `port="other"`. First-come rather than a moving top-N, because a
//! counter series must never disappear or move between labels (rates
//! computed over it would jump). `action`, `direction`, `kind`, `status`
//! and `hook` are closed sets.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{outputs::OutputStats, Record};
use crate::{
    config::MetricsConfig,
    diagnose::record::{Kind, Status},
    kernel::hook::HookStatus,
    stats::Stats,
};

/// Monotonic counters, or gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One metric family with its series, as read at one instant. The
/// Prometheus endpoint encodes these and the OTLP exporter sends them, so
/// both carry the same names, labels and values from one source.
#[derive(Clone, Debug)]
pub struct Family {
    /// Without the `_total` a Prometheus counter's samples get.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// Open diagnoses tracked for the gauge at most.
const MAX_ACTIVE: usize = 100_000;

#[derive(Debug, Default)]
struct Tracked {
    ports: HashSet<u16>,
    /// Diagnoses opened and not resolved yet, by id.
    active: HashMap<String, Kind>,
    /// (action, port label, direction) -> occurrences.
    failures: BTreeMap<(&'static str, String, &'static str), u64>,
    /// (kind, status) -> records.
    diagnoses: BTreeMap<(&'static str, &'static str), u64>,
}

#[derive(Debug)]
pub struct Metrics {
    tracked: Mutex<Tracked>,
    /// (hook, attached): fixed at start.
    hooks: Vec<(&'static str, bool)>,
    max_ports: usize,
}

impl Metrics {
    pub fn new(cfg: &MetricsConfig, hooks: &[HookStatus]) -> Metrics {
        Metrics {
            tracked: Mutex::new(Tracked::default()),
            hooks: hooks.iter().map(|h| (h.hook.name(), h.attached())).collect(),
            max_ports: cfg.max_ports,
        }
    }

    /// Counts one record; called by the sink task for every record.
    pub fn observe(&self, record: &Record) {
        let Ok(mut tracked) = self.tracked.lock() else { return };
        match record {
            Record::Failure(e) => {
                let port = e.destination.port;
                let known = tracked.ports.contains(&port);
                if !known && tracked.ports.len() < self.max_ports {
                    tracked.ports.insert(port);
                }
                let port = if known || tracked.ports.contains(&port) { port.to_string() } else { "other".to_owned() };
                let key = (e.event.action.as_str(), port, e.observer.direction.as_str());
                *tracked.failures.entry(key).or_default() += e.event.count;
            }
            Record::Diagnosis(d) => {
                let kind = d.diagnosis.kind;
                let status = d.diagnosis.status;
                *tracked.diagnoses.entry((kind.as_str(), status.as_str())).or_default() += 1;
                // An update of a diagnosis opened before the engine forgot
                // it still counts as open: the id is what matters.
                match status {
                    Status::Resolved => {
                        tracked.active.remove(&d.diagnosis.id);
                    }
                    // Bounded like the engine's own endpoint table: an id
                    // the engine forgot without resolving it must not
                    // grow this map forever.
                    _ if tracked.active.len() >= MAX_ACTIVE && !tracked.active.contains_key(&d.diagnosis.id) => {}
                    _ => {
                        tracked.active.insert(d.diagnosis.id.clone(), kind);
                    }
                }
            }
        }
    }

    /// Every family, the record counts and the health counters read now.
    pub fn families(&self, stats: &Stats, outputs: &OutputStats) -> Vec<Family> {
        let mut out = Vec::new();
        if let Ok(t) = self.tracked.lock() {
            let failures = t
                .failures
                .iter()
                .map(|((action, port, direction), n)| Series {
                    labels: vec![
                        ("action", (*action).to_owned()),
                        ("port", port.clone()),
                        ("direction", (*direction).to_owned()),
                    ],
                    value: *n,
                })
                .collect();
            let diagnoses = t
                .diagnoses
                .iter()
                .map(|((kind, status), n)| Series {
                    labels: vec![("kind", (*kind).to_owned()), ("status", (*status).to_owned())],
                    value: *n,
                })
                .collect();
            // Every kind, 0 included, so that alert rules and dashboards
            // do not see "no data" instead of "nothing open". Counted
            // here rather than on every change: a scrape is rare, records
            // are not.
            let mut open: BTreeMap<&'static str, u64> = Kind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
            for k in t.active.values() {
                *open.entry(k.as_str()).or_default() += 1;
            }
            let open =
                open.into_iter().map(|(k, n)| Series { labels: vec![("kind", k.to_owned())], value: n }).collect();
            out.extend([
                Family {
                    name: "observer_failures",
                    help: "Connection failures seen by the kernel (event.count summed), by action, destination port \
                           and direction",
                    kind: MetricKind::Counter,
                    series: failures,
                },
                Family {
                    name: "observer_diagnoses",
                    help: "Diagnosis records written, by kind and status",
                    kind: MetricKind::Counter,
                    series: diagnoses,
                },
                Family {
                    name: "observer_diagnoses_open",
                    help: "Diagnoses open now (not resolved), by kind",
                    kind: MetricKind::Gauge,
                    series: open,
                },
            ]);
        }
        out.push(Family {
            name: "observer_hook_up",
            help: "1 when the hook is attached, 0 when disabled or unavailable",
            kind: MetricKind::Gauge,
            series: self
                .hooks
                .iter()
                .map(|(h, up)| Series { labels: vec![("hook", (*h).to_owned())], value: u64::from(*up) })
                .collect(),
        });
        out.extend(health(stats, outputs));
        out
    }

    /// The registry a scrape encodes: `families`, read at scrape time.
    pub fn registry(self: &Arc<Self>, stats: Arc<Stats>, outputs: Arc<OutputStats>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(Exposition { metrics: self.clone(), stats, outputs }));
        r
    }
}

/// The daemon's counters, without labels.
fn health(stats: &Stats, outputs: &OutputStats) -> Vec<Family> {
    // `..` so that a counter added to `Stats` does not break the build
    // of whoever adds it; the test `every_stats_counter_is_exported`
    // fails instead until it is listed here.
    let Stats {
        records,
        decode_errors,
        written,
        write_errors,
        history_written,
        history_errors,
        history_dropped,
        diagnosis_dropped,
        kernel_ringbuf_full,
        kernel_counter_map_full,
        kernel_read_failed,
        kernel_hook_misses,
        reconciled_records,
        reconciled_occurrences,
        counter_resets,
        counter_keys_evicted,
        counter_poll_errors,
        ..
    } = stats;
    let counters = [
        ("observer_records_read", "Records read from the kernel ring buffer", records),
        ("observer_decode_errors", "Ring buffer records rejected as malformed", decode_errors),
        ("observer_records_written", "Records written to the JSON log", written),
        ("observer_write_errors", "Records that could not be written to the JSON log", write_errors),
        ("observer_history_written", "Records committed to the history database", history_written),
        ("observer_history_errors", "Failed history commits (retried with the next batch)", history_errors),
        ("observer_history_dropped", "Records the history could not keep (queue full)", history_dropped),
        (
            "observer_diagnosis_dropped",
            "Events the diagnose stage could not take (queue full): logged, not in the diagnoses' counts",
            diagnosis_dropped,
        ),
        (
            "observer_kernel_ringbuf_full",
            "Samples the kernel could not put into the full ring buffer (their occurrences are reconciled)",
            kernel_ringbuf_full,
        ),
        (
            "observer_kernel_counter_map_full",
            "Occurrences lost because the kernel counter map refused their key",
            kernel_counter_map_full,
        ),
        ("observer_kernel_read_failed", "Occurrences lost because a kernel read in a hook failed", kernel_read_failed),
        (
            "observer_kernel_hook_misses",
            "Hook runs the kernel skipped because another eBPF program ran on that CPU (not counted)",
            kernel_hook_misses,
        ),
        (
            "observer_reconciled_records",
            "Reconciliation records written for occurrences no sample carried",
            reconciled_records,
        ),
        ("observer_reconciled_occurrences", "Occurrences the reconciliation records stand for", reconciled_occurrences),
        (
            "observer_counter_resets",
            "Counter keys the kernel evicted and re-created before they were read (counts may be low)",
            counter_resets,
        ),
        (
            "observer_counter_keys_evicted",
            "Keys whose reconciliation state was dropped to stay within the memory cap",
            counter_keys_evicted,
        ),
        ("observer_counter_poll_errors", "Failed reads of the kernel's counter or loss maps", counter_poll_errors),
    ];
    let lost = Stats::get(kernel_counter_map_full) + Stats::get(kernel_read_failed) + Stats::get(kernel_hook_misses);
    counters
        .into_iter()
        .map(|(name, help, v)| (name, help, Stats::get(v)))
        .chain(outputs.counters().into_iter().map(|(_, name, help, v)| (name, help, v)))
        .chain([(
            "observer_events_lost",
            "Failure occurrences in no count (kernel map full, kernel read failed, hook skipped)",
            lost,
        )])
        .map(|(name, help, value)| Family {
            name,
            help,
            kind: MetricKind::Counter,
            series: vec![Series { labels: vec![], value }],
        })
        .collect()
}

/// `Metrics::families` in the OpenMetrics text, read at scrape time.
#[derive(Debug)]
struct Exposition {
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    outputs: Arc<OutputStats>,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.metrics.families(&self.stats, &self.outputs) {
            let kind = match family.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for s in &family.series {
                let gauge = ConstGauge::new(i64::try_from(s.value).unwrap_or(i64::MAX));
                let counter = ConstCounter::new(s.value);
                if s.labels.is_empty() {
                    // Unlabelled families hold one series.
                    encode_value(family.kind, &counter, &gauge, metric)?;
                    break;
                }
                let labelled = metric.encode_family(&s.labels)?;
                encode_value(family.kind, &counter, &gauge, labelled)?;
            }
        }
        Ok(())
    }
}

fn encode_value(
    kind: MetricKind,
    counter: &ConstCounter<u64>,
    gauge: &ConstGauge<i64>,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricKind::Counter => counter.encode(encoder),
        MetricKind::Gauge => gauge.encode(encoder),
    }
}

/// Binds now, so that a taken port fails the start-up with its reason.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Connections served at once. A scraper needs one; the bound keeps a flood
/// of them from costing the daemon memory.
const MAX_CONNECTIONS: usize = 32;
/// A client has this long to send its request headers, and a connection
/// lives at most `MAX_LIFETIME` (a scrape takes milliseconds).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_LIFETIME: Duration = Duration::from_secs(30);

/// Serves the registry until the task is aborted.
///
/// Idle or slow clients cannot starve a scrape: when every slot is taken,
/// the oldest connection is closed to make room for the new one (rather
/// than the new one being refused, which let 16 idle connections block
/// every scrape for as long as they stayed), and each connection is closed
/// when its headers take longer than `HEADER_TIMEOUT`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let mut open: std::collections::VecDeque<tokio::task::JoinHandle<()>> = std::collections::VecDeque::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                debug!("metrics endpoint: {MAX_CONNECTIONS} connections open, closing the oldest for {peer}");
                oldest.abort();
            }
        }
        let registry = registry.clone();
        open.push_back(tokio::spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_LIFETIME, conn).await {
                Ok(Err(e)) => debug!("metrics endpoint: {peer}: {e}"),
                Err(_) => debug!("metrics endpoint: {peer}: closed after {MAX_LIFETIME:?}"),
                Ok(Ok(())) => {}
            }
        }));
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding: {e}\n")),
            }
        }
        "/" => reply(StatusCode::OK, "text/plain", "observer: metrics at /metrics\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found; metrics at /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixtures::failure;

    fn scrape(m: &Arc<Metrics>) -> String {
        let r = m.registry(Arc::new(Stats::default()), Arc::new(OutputStats::default()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    /// Field names of `Stats` from its Debug output: no list to keep in step.
    fn stats_fields() -> Vec<String> {
        let text = format!("{:?}", Stats::default());
        let inner = text.trim_start_matches("Stats {").trim_end_matches('}');
        // The counters: `name: 0` pairs (the last errors are not numbers).
        inner
            .split(',')
            .filter_map(|f| f.split_once(':'))
            .filter(|(_, v)| v.trim().parse::<u64>().is_ok())
            .map(|(f, _)| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect()
    }

    #[test]
    fn the_health_file_has_every_counter() {
        let snapshot: Vec<String> = Stats::default().snapshot().into_keys().collect();
        let mut fields = stats_fields();
        fields.sort();
        assert_eq!(snapshot, fields, "add the new counter to Stats::snapshot");
    }

    #[test]
    fn every_stats_counter_is_exported() {
        let text = scrape(&Arc::new(Metrics::new(&MetricsConfig::default(), &[])));
        let exported: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP ")).collect();
        let fields = stats_fields();
        assert!(fields.len() >= 4, "{fields:?}");
        for field in fields {
            let name = match field.as_str() {
                "records" => "observer_records_read".to_owned(),
                "written" => "observer_records_written".to_owned(),
                f => format!("observer_{f}"),
            };
            assert!(
                exported.iter().any(|h| h.starts_with(&format!("{name} "))),
                "Stats.{field} is not exported as {name} (add it to Health::encode in sink/metrics.rs):\n{text}"
            );
        }
    }

    fn diagnosis(id: &str, status: &str) -> Record {
        Record::Diagnosis(crate::sink::fixtures::diagnosis("syn_flood", id, status))
    }

    #[test]
    fn open_gauge_follows_ids_until_resolved() {
        let m = Arc::new(Metrics::new(&MetricsConfig::default(), &[]));
        for (id, status) in [("a", "open"), ("b", "open"), ("a", "ongoing"), ("a", "escalated"), ("b", "resolved")] {
            m.observe(&diagnosis(id, status));
        }
        let text = scrape(&m);
        assert!(text.contains("observer_diagnoses_open{kind=\"syn_flood\"} 1\n"), "{text}");
        assert!(text.contains("observer_diagnoses_total{kind=\"syn_flood\",status=\"open\"} 2\n"), "{text}");
        assert!(text.contains("observer_diagnoses_total{kind=\"syn_flood\",status=\"resolved\"} 1\n"), "{text}");
        m.observe(&diagnosis("a", "resolved"));
        assert!(scrape(&m).contains("observer_diagnoses_open{kind=\"syn_flood\"} 0\n"));
    }

    #[test]
    fn ports_beyond_the_cap_are_counted_as_other() {
        let m = Arc::new(Metrics::new(&MetricsConfig { listen: String::new(), max_ports: 2 }, &[]));
        for (port, n) in [(80, 1), (443, 2), (8080, 3), (9090, 4), (80, 5)] {
            m.observe(&failure(port, n));
        }
        let text = scrape(&m);
        let line =
            |p: &str| format!("observer_failures_total{{action=\"refused\",port=\"{p}\",direction=\"inbound\"}}");
        assert!(text.contains(&format!("{} 6\n", line("80"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("443"))), "{text}");
        assert!(text.contains(&format!("{} 7\n", line("other"))), "{text}");
        assert!(!text.contains("port=\"8080\""), "{text}");
        assert!(text.contains("observer_diagnoses_open{kind=\"no_listener\"} 0\n"), "{text}");
        assert!(text.contains("observer_records_read_total 0\n"), "{text}");
    }
}
