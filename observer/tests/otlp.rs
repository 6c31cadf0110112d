//! The OTLP exporter against a real OTLP/HTTP receiver: a hyper server in
//! this file that decodes every request body with the same
//! `opentelemetry-proto` types a Collector's receiver implements
//! (`ExportLogsServiceRequest`, `ExportMetricsServiceRequest`), and answers
//! with the status the test picks. The daemon is the real binary; the
//! failures are real refused connections in a namespace of the test's own
//! (the daemon sees every namespace, so each assertion filters on it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{free_tcp_port, http_get, refuse, wait_for, Daemon, Netns};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{any_value::Value as V, AnyValue, KeyValue},
    logs::v1::LogRecord,
    metrics::v1::{metric::Data, number_data_point, AggregationTemporality, Metric},
};
use prost::Message as _;

// ---------------------------------------------------------------- the receiver

#[derive(Clone, Debug)]
enum Body {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    /// What did not decode (or came to another path), and why.
    Bad(String),
}

/// One request as the receiver decoded it.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    path: String,
    headers: BTreeMap<String, String>,
    body: Body,
    /// The status it was answered with.
    status: u16,
}

impl Received {
    fn logs(&self) -> Vec<&LogRecord> {
        match &self.body {
            Body::Logs(r) => r.resource_logs.iter().flat_map(|r| &r.scope_logs).flat_map(|s| &s.log_records).collect(),
            _ => vec![],
        }
    }

    fn metrics(&self) -> Vec<&Metric> {
        match &self.body {
            Body::Metrics(r) => {
                r.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).collect()
            }
            _ => vec![],
        }
    }

    fn resource(&self) -> BTreeMap<String, String> {
        let attrs = match &self.body {
            Body::Logs(r) => r.resource_logs.first().and_then(|r| r.resource.as_ref()).map(|r| r.attributes.clone()),
            Body::Metrics(r) => {
                r.resource_metrics.first().and_then(|r| r.resource.as_ref()).map(|r| r.attributes.clone())
            }
            Body::Bad(_) => None,
        };
        attrs.unwrap_or_default().iter().filter_map(|kv| Some((kv.key.clone(), string(kv.value.as_ref())?))).collect()
    }
}

type Respond = dyn Fn(&Received, &[Received]) -> (u16, Option<&'static str>) + Send + Sync;

/// An OTLP/HTTP receiver on 127.0.0.1:0: `POST /v1/logs` and
/// `/v1/metrics` with protobuf bodies, decoded and kept; anything it cannot
/// decode fails the test. `respond` picks the status (and a Retry-After)
/// for each request, given those before it.
struct Receiver {
    endpoint: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(
        respond: impl Fn(&Received, &[Received]) -> (u16, Option<&'static str>) + Send + Sync + 'static,
    ) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let respond: Arc<Respond> = Arc::new(respond);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (seen, respond) = (seen.clone(), respond.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let (seen, respond) = (seen.clone(), respond.clone());
                            async move { Ok::<_, Infallible>(handle(req, &seen, &*respond).await) }
                        });
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            });
        });
        Receiver { endpoint, got }
    }

    /// Every request so far; one that did not decode fails the test.
    fn got(&self) -> Vec<Received> {
        let got = self.got.lock().unwrap().clone();
        for r in &got {
            if let Body::Bad(why) = &r.body {
                panic!("the receiver could not decode a request to {}: {why}", r.path);
            }
        }
        got
    }
}

async fn handle(req: Request<Incoming>, seen: &Mutex<Vec<Received>>, respond: &Respond) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers: BTreeMap<String, String> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body = match (method, path.as_str()) {
        (hyper::Method::POST, "/v1/logs") => ExportLogsServiceRequest::decode(bytes)
            .map_or_else(|e| Body::Bad(format!("not an ExportLogsServiceRequest: {e}")), Body::Logs),
        (hyper::Method::POST, "/v1/metrics") => ExportMetricsServiceRequest::decode(bytes)
            .map_or_else(|e| Body::Bad(format!("not an ExportMetricsServiceRequest: {e}")), Body::Metrics),
        (m, p) => Body::Bad(format!("{m} {p}")),
    };
    let bad = matches!(body, Body::Bad(_));
    let mut r = Received { at: Instant::now(), path, headers, body, status: 0 };
    let mut all = seen.lock().unwrap();
    let (status, retry_after) = if bad { (400, None) } else { respond(&r, &all) };
    r.status = status;
    all.push(r);
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
    if let Some(after) = retry_after {
        resp.headers_mut().insert("retry-after", after.parse().unwrap());
    }
    resp
}

fn string(v: Option<&AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        V::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a V> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        V::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        V::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn is(l: &LogRecord, key: &str, value: &str) -> bool {
    text(&l.attributes, key).as_deref() == Some(value)
}

/// Log records of our namespace, by `event.dataset`.
fn ours<'a>(got: &'a [Received], netns: u32, dataset: &str) -> Vec<(&'a Received, &'a LogRecord)> {
    got.iter()
        .flat_map(|r| r.logs().into_iter().map(move |l| (r, l)))
        .filter(|(_, l)| int(&l.attributes, "observer.netns") == Some(i64::from(netns)))
        .filter(|(_, l)| text(&l.attributes, "event.dataset").as_deref() == Some(dataset))
        .collect()
}

/// The value of a counter or gauge point whose attributes include `labels`,
/// in the latest metrics request that has it.
fn point(got: &[Received], name: &str, labels: &[(&str, &str)]) -> Option<(i64, &'static str)> {
    got.iter().rev().flat_map(|r| r.metrics()).filter(|m| m.name == name).find_map(|m| {
        let (points, kind) = match m.data.as_ref()? {
            Data::Sum(s) => {
                assert!(s.is_monotonic, "{name}");
                assert_eq!(s.aggregation_temporality, AggregationTemporality::Cumulative as i32, "{name}");
                (&s.data_points, "sum")
            }
            Data::Gauge(g) => (&g.data_points, "gauge"),
            other => panic!("{name}: {other:?}"),
        };
        points.iter().find(|p| labels.iter().all(|(k, v)| text(&p.attributes, k).as_deref() == Some(*v))).map(|p| {
            assert!(p.time_unix_nano >= p.start_time_unix_nano, "{name}");
            match p.value {
                Some(number_data_point::Value::AsInt(i)) => (i, kind),
                ref v => panic!("{name}: {v:?}"),
            }
        })
    })
}

// ---------------------------------------------------------------- tests

#[test]
fn failures_and_diagnoses_arrive_as_log_records_and_the_counters_as_metrics() {
    let receiver = Receiver::start(|_, _| (200, None));
    // The file names the endpoint and some headers and attributes; the
    // environment points elsewhere (a dead port: the file must win) and
    // adds what the file leaves unset.
    let config = format!(
        "[otlp]\nenabled = true\nendpoint = \"{}\"\nmetrics_interval_ms = 500\nbatch_delay_ms = 100\n\
         headers = {{ \"x-tenant\" = \"file\" }}\n\
         resource_attributes = {{ \"deployment.environment.name\" = \"test\" }}\n",
        receiver.endpoint
    );
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", dead.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=env,authorization=Bearer%20from-env"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=env,team=net"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start_env(dir, &state, &[], Some(&config), &env);
    let port = 47921; // no other test's
    let ns = Netns::new("otlp");
    let netns = ns.inode();
    refuse(&ns, port, 3, Duration::from_millis(20));

    let p = port.to_string();
    let refused = [("action", "refused"), ("port", p.as_str()), ("direction", "inbound")];
    let got =
        wait_for("a failure and a diagnosis as logs, and the counters as metrics", Duration::from_secs(20), || {
            let got = receiver.got();
            let failures = ours(&got, netns, "observer.failure").iter().any(|(_, l)| is(l, "event.action", "refused"));
            let diagnoses =
                ours(&got, netns, "observer.diagnosis").iter().any(|(_, l)| is(l, "diagnosis.kind", "no_listener"));
            let counted = point(&got, "observer_failures", &refused).is_some_and(|(v, _)| v == 3)
                && point(&got, "observer_diagnoses", &[("kind", "no_listener"), ("status", "open")]).is_some();
            (failures && diagnoses && counted).then_some(got)
        });

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    for r in &got {
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/x-protobuf"), "{r:?}");
        assert!(r.headers.get("user-agent").is_some_and(|u| u.starts_with("observer/")), "{:?}", r.headers);
        assert_eq!(r.headers.get("x-tenant").map(String::as_str), Some("file"), "the file's header wins");
        assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer from-env"), "merged");
        let res = r.resource();
        assert_eq!(res.get("service.name").map(String::as_str), Some("observer"), "{res:?}");
        assert_eq!(res.get("host.name"), Some(&hostname), "{res:?}");
        assert_eq!(res.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")), "{res:?}");
        assert_eq!(res.get("deployment.environment.name").map(String::as_str), Some("test"), "{res:?}");
        assert_eq!(res.get("team").map(String::as_str), Some("net"), "{res:?}");
    }
    assert!(got.iter().any(|r| r.path == "/v1/logs") && got.iter().any(|r| r.path == "/v1/metrics"));

    // The failure: INFO, its fields as dotted attributes, the log line as body.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    // (The namespace also has the clients' side: connect_failed, outbound_refused.)
    let (_, f) = *ours(&got, netns, "observer.failure").iter().find(|(_, l)| is(l, "event.action", "refused")).unwrap();
    assert_eq!(f.severity_text, "INFO");
    assert_eq!(f.severity_number, 9);
    assert_eq!(f.event_name, "observer.failure");
    assert_eq!(text(&f.attributes, "event.action").as_deref(), Some("refused"));
    assert_eq!(int(&f.attributes, "destination.port"), Some(i64::from(port)));
    assert_eq!(text(&f.attributes, "destination.ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(text(&f.attributes, "observer.reason").as_deref(), Some("NO_SOCKET"));
    assert_eq!(text(&f.attributes, "network.transport").as_deref(), Some("tcp"));
    assert!(matches!(attr(&f.attributes, "event.category"), Some(V::ArrayValue(a)) if a.values.len() == 1));
    let body = string(f.body.as_ref()).expect("a string body");
    assert!(log.lines().any(|l| l == body), "the body is a line of the JSON log: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ts = humantime::parse_rfc3339(json["@timestamp"].as_str().unwrap()).unwrap();
    let ts = ts.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert_eq!(f.time_unix_nano, ts, "the record's own time");
    assert!(f.observed_time_unix_nano >= f.time_unix_nano);

    // The diagnosis: WARN while open.
    let (_, d) =
        *ours(&got, netns, "observer.diagnosis").iter().find(|(_, l)| is(l, "diagnosis.kind", "no_listener")).unwrap();
    assert_eq!(d.severity_text, "WARN");
    assert_eq!(d.severity_number, 13);
    assert_eq!(d.event_name, "observer.diagnosis");
    assert_eq!(text(&d.attributes, "diagnosis.kind").as_deref(), Some("no_listener"));
    assert_eq!(text(&d.attributes, "diagnosis.status").as_deref(), Some("open"));
    assert_eq!(int(&d.attributes, "destination.port"), Some(i64::from(port)));
    assert!(int(&d.attributes, "diagnosis.count").is_some_and(|n| n >= 3));
    assert!(text(&d.attributes, "diagnosis.summary").is_some_and(|s| !s.is_empty()));
    let body: serde_json::Value = serde_json::from_str(&string(d.body.as_ref()).unwrap()).unwrap();
    assert_eq!(body["diagnosis"]["kind"], "no_listener");

    // The counters: the same families as the Prometheus endpoint.
    assert_eq!(point(&got, "observer_failures", &refused), Some((3, "sum")));
    assert!(point(&got, "observer_diagnoses", &[("kind", "no_listener"), ("status", "open")])
        .is_some_and(|(v, k)| v >= 1 && k == "sum"));
    assert!(point(&got, "observer_diagnoses_open", &[("kind", "no_listener")]).is_some_and(|(_, k)| k == "gauge"));
    assert_eq!(point(&got, "observer_hook_up", &[("hook", "tcp_send_reset")]), Some((1, "gauge")));
    assert!(point(&got, "observer_records_read", &[]).is_some_and(|(v, _)| v >= 3));
    assert!(point(&got, "observer_otlp_sent", &[]).is_some_and(|(v, _)| v >= 1), "log records accepted, counted");
    assert_eq!(point(&got, "observer_otlp_failed", &[]).map(|p| p.0), Some(0));

    let (stderr, _) = daemon.stop();
    let line =
        format!("otlp: sending failures and diagnoses as logs to {}/v1/logs (from otlp.endpoint)", receiver.endpoint);
    assert!(stderr.contains(&line), "{stderr}");
}

#[test]
fn a_503_with_retry_after_gets_the_batch_retried() {
    // 503 with Retry-After: 2 to the first request that carries our
    // failure, 200 to everything else.
    let netns_cell = Arc::new(Mutex::new(0u32));
    let cell = netns_cell.clone();
    let has_ours = move |r: &Received, netns: u32| {
        r.logs().iter().any(|l| int(&l.attributes, "observer.netns") == Some(i64::from(netns)))
    };
    let check = has_ours;
    let receiver = Receiver::start(move |req, before| {
        let netns = *cell.lock().unwrap();
        if netns != 0 && check(req, netns) && !before.iter().any(|r| check(r, netns)) {
            (503, Some("2"))
        } else {
            (200, None)
        }
    });
    // A short backoff of our own: the wait must be the receiver's.
    let config = format!(
        "[otlp]\nenabled = true\nendpoint = \"{}\"\nbatch_delay_ms = 50\nbackoff_ms = 100\nmetrics = false\n",
        receiver.endpoint
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("otlp503");
    let netns = ns.inode();
    *netns_cell.lock().unwrap() = netns;
    refuse(&ns, 47922, 1, Duration::ZERO);

    let tries = wait_for("the batch, refused with 503 and then accepted", Duration::from_secs(15), || {
        let tries: Vec<Received> = receiver.got().into_iter().filter(|r| has_ours(r, netns)).collect();
        (tries.len() >= 2).then_some(tries)
    });
    assert_eq!(tries[0].status, 503);
    assert_eq!(tries[1].status, 200);
    let ids = |r: &Received| -> Vec<String> { r.logs().iter().filter_map(|l| string(l.body.as_ref())).collect() };
    assert_eq!(ids(&tries[0]), ids(&tries[1]), "the same batch is resent");
    let waited = tries[1].at - tries[0].at;
    assert!(waited >= Duration::from_millis(1900), "Retry-After: 2 honoured, not the 100 ms backoff: {waited:?}");
    std::thread::sleep(Duration::from_millis(500));
    let after = receiver.got().into_iter().filter(|r| has_ours(r, netns)).count();
    assert_eq!(after, 2, "delivered once, then no more");
    let (stderr, _) = daemon.stop();
    assert!(stderr.contains("503 Service Unavailable; retrying in 2s"), "{stderr}");
}

#[test]
fn a_dead_receiver_only_costs_counted_losses() {
    // Nothing listens on the endpoint: every request fails to connect. A
    // tiny queue and one retry, so that records are both dropped at the
    // queue and given up after retries; the log must still get everything.
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let config = format!(
        "[otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\nqueue = 2\nbatch_size = 1\nbatch_delay_ms = 10\n\
         max_retries = 1\nbackoff_ms = 200\nmetrics_interval_ms = 200\n[metrics]\nlisten = \"{metrics}\"\n",
        free_tcp_port()
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("otlpdead");
    let netns = ns.inode();
    let started = Instant::now();
    refuse(&ns, 47923, 20, Duration::ZERO);
    assert!(started.elapsed() < Duration::from_secs(5), "the failures were not held up");
    wait_for("20 refusals in the log", Duration::from_secs(10), || (daemon.refused_in(netns) == 20).then_some(()));
    let counter = |body: &str, name: &str| -> u64 {
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let body = wait_for("losses counted on /metrics", Duration::from_secs(10), || {
        let body = http_get(&metrics, "/metrics").2;
        let lost = ["observer_otlp_dropped_total", "observer_otlp_failed_total", "observer_otlp_metrics_failed_total"];
        lost.iter().all(|name| counter(&body, name) > 0).then_some(body)
    });
    assert_eq!(counter(&body, "observer_otlp_sent_total"), 0);
    assert!(counter(&body, "observer_otlp_retries_total") > 0, "{body}");
    // The doctor names the losses, from the status file.
    std::thread::sleep(Duration::from_millis(2500));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--runtime-dir")
        .arg(daemon.run.path())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let losses: Vec<String> =
        doctor["daemon"]["losses"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    assert!(losses.iter().any(|l| l.contains("records were not sent over OTLP: its queue was full")), "{losses:?}");
    assert!(losses.iter().any(|l| l.contains("could not be delivered to the OTLP endpoint")), "{losses:?}");
    let (stderr, _) = daemon.stop();
    // Warnings are rate-limited: one a minute per signal, not one per record.
    let warnings = stderr.lines().filter(|l| l.contains("otlp logs:")).count();
    assert!((1..=3).contains(&warnings), "{warnings} warnings:\n{stderr}");
}

#[test]
fn a_grpc_protocol_in_the_environment_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("observer.toml");
    std::fs::write(&config, "[otlp]\nenabled = true\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .args(["run", "--shared", "--json-log"])
        .arg(dir.path().join("log.ndjson"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL = grpc: observer sends OTLP over http/protobuf only"),
        "{stderr}"
    );
}
