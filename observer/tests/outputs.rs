//! The outputs beside the JSON log, each against a real receiver: a real
//! rsyslogd from Debian (UDP, TCP with octet counting, unix socket), the
//! Prometheus endpoint scraped over HTTP and parsed, and a local webhook
//! receiver. Failures are made for real in a namespace of the test's own;
//! the daemon sees every namespace, so each assertion filters on it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{free_tcp_port, http_get, refuse, wait_for, Daemon, Netns};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------- syslog

/// A private rsyslogd: its own config, pid file, work directory, inputs
/// on a free UDP port, a TCP port it picks itself, and a unix socket;
/// every message is written with the fields rsyslog parsed out of it.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    udp_port: u16,
    tcp_port: u16,
}

/// One message as rsyslog parsed it.
#[derive(Clone, Debug)]
struct Parsed {
    protocol_version: String,
    pri: u32,
    facility: String,
    severity: u32,
    app_name: String,
    procid: String,
    msgid: String,
    hostname: String,
    msg: serde_json::Value,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let udp_port = free_udp_port();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp_port}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{d}/tcp.port")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" socket="{d}/log.sock" useSpecialParser="off" parseHostname="on")
template(name="fields" type="string"
  string="%protocol-version%\t%pri%\t%syslogfacility-text%\t%syslogseverity%\t%app-name%\t%procid%\t%msgid%\t%hostname%\t%msg%\n")
action(type="omfile" file="{d}/out.log" template="fields")
"#
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rsyslogd (Debian package rsyslog; `cargo xtask setup` installs it)");
        let mut rs = Rsyslog { child, dir, udp_port, tcp_port: 0 };
        let port_file = rs.dir.path().join("tcp.port");
        let socket = rs.socket();
        rs.tcp_port = wait_for("rsyslogd's inputs", Duration::from_secs(10), || {
            if let Ok(Some(status)) = rs.child.try_wait() {
                let mut err = String::new();
                let _ = rs.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("rsyslogd exited with {status}: {err}");
            }
            let port = std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()?;
            socket.exists().then_some(port)
        });
        rs
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    fn messages(&self) -> Vec<Parsed> {
        let Ok(f) = std::fs::File::open(self.dir.path().join("out.log")) else { return vec![] };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(9, '\t').collect();
                let msg = serde_json::from_str(f.get(8)?.trim_start()).ok()?;
                Some(Parsed {
                    protocol_version: f[0].into(),
                    pri: f[1].parse().ok()?,
                    facility: f[2].into(),
                    severity: f[3].parse().ok()?,
                    app_name: f[4].into(),
                    procid: f[5].into(),
                    msgid: f[6].into(),
                    hostname: f[7].into(),
                    msg,
                })
            })
            .collect()
    }

    fn raw(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn syslog_reaches_rsyslog(transport: &str) {
    let rs = Rsyslog::start();
    let address = match transport {
        "udp" => format!("127.0.0.1:{}", rs.udp_port),
        "tcp" => format!("127.0.0.1:{}", rs.tcp_port),
        _ => rs.socket().display().to_string(),
    };
    let config = format!(
        "[syslog]\nenabled = true\ntransport = \"{transport}\"\naddress = \"{address}\"\nfacility = \"local4\"\n\
         app_name = \"observer-test\"\n"
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("syslog");
    let netns = ns.inode();
    refuse(&ns, 8081, 3, Duration::from_millis(20));

    let ours = |p: &Parsed| p.app_name == "observer-test" && p.msg["observer"]["netns"] == netns;
    let (failure, diagnosis) =
        wait_for("a failure and a diagnosis in rsyslog's output", Duration::from_secs(15), || {
            let msgs = rs.messages();
            let f = msgs.iter().find(|p| ours(p) && p.msgid == "failure" && p.msg["event"]["action"] == "refused")?;
            let d = msgs
                .iter()
                .find(|p| ours(p) && p.msgid == "diagnosis" && p.msg["diagnosis"]["kind"] == "no_listener")?;
            Some((f.clone(), d.clone()))
        });
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    for p in [&failure, &diagnosis] {
        assert_eq!(p.protocol_version, "1", "rsyslog parsed it as RFC 5424: {p:?}");
        assert_eq!(p.facility, "local4", "{p:?}");
        assert_eq!(p.pri, 20 * 8 + p.severity, "{p:?}");
        assert_eq!(p.hostname, hostname, "{p:?}");
        assert!(p.procid.parse::<u32>().is_ok(), "{p:?}");
    }
    assert_eq!(failure.severity, 6, "failures are informational");
    assert_eq!(failure.msg["event"]["dataset"], "observer.failure");
    assert_eq!(failure.msg["destination"]["port"], 8081);
    assert_eq!(failure.msg["observer"]["reason"], "NO_SOCKET");
    assert_eq!(diagnosis.severity, 4, "an open diagnosis is a warning");
    assert_eq!(diagnosis.msg["event"]["dataset"], "observer.diagnosis");
    assert_eq!(diagnosis.msg["diagnosis"]["kind"], "no_listener");
    assert_eq!(diagnosis.msg["diagnosis"]["status"], "open");
    assert_eq!(diagnosis.msg["destination"]["port"], 8081);

    // The same records as the JSON log, byte for byte.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let id = diagnosis.msg["diagnosis"]["id"].as_str().unwrap().to_owned();
    let logged: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["diagnosis"]["id"] == id.as_str() && v["diagnosis"]["status"] == "open")
        .unwrap_or_else(|| panic!("diagnosis {id} not in the log:\n{log}\nrsyslog:\n{}", rs.raw()));
    assert_eq!(logged, diagnosis.msg);
    let (stderr, _) = daemon.stop();
    assert!(stderr.contains(&format!("syslog: sending failures and diagnoses over {transport}")), "{stderr}");
}

#[test]
fn syslog_over_udp_reaches_a_real_rsyslog() {
    syslog_reaches_rsyslog("udp");
}

#[test]
fn syslog_over_tcp_octet_counted_reaches_a_real_rsyslog() {
    syslog_reaches_rsyslog("tcp");
}

#[test]
fn syslog_over_a_unix_socket_reaches_a_real_rsyslog() {
    syslog_reaches_rsyslog("unix");
}

#[test]
fn an_unreachable_syslog_receiver_does_not_hold_up_the_log() {
    // TCP to a port where nothing listens: the sender backs off and
    // retries, the queue (2) overflows, and the log still gets everything.
    let port = free_tcp_port();
    let config = format!("[syslog]\nenabled = true\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nqueue = 2\n");
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("syslogdown");
    refuse(&ns, 8082, 20, Duration::ZERO);
    let netns = ns.inode();
    wait_for("20 refusals in the log", Duration::from_secs(10), || (daemon.refused_in(netns) == 20).then_some(()));
    let (stderr, _) = daemon.stop();
    assert!(stderr.contains("syslog: connecting to 127.0.0.1:"), "one rate-limited warning expected:\n{stderr}");
    assert_eq!(stderr.matches("syslog: connecting").count(), 1, "{stderr}");
}

// ---------------------------------------------------------------- metrics

/// Every line is a HELP/TYPE/UNIT comment, a sample of a declared family,
/// or the final `# EOF`; then prometheus-parse reads the samples.
fn parse_exposition(text: &str) -> prometheus_parse::Scrape {
    let mut families: Vec<(String, String)> = vec![];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            families.push((name.to_owned(), kind.to_owned()));
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().unwrap();
            let (family, kind) = families.last().unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            let expected = if kind == "counter" { format!("{family}_total") } else { family.clone() };
            assert_eq!(name, expected, "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
            }
        }
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

#[test]
fn metrics_endpoint_is_scraped_over_http_and_counts_right() {
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    // One hook off: it must show as down.
    let config = format!("[metrics]\nlisten = \"{addr}\"\n[capture]\ndisable_hooks = [\"tcp_retransmit_synack\"]\n");
    let daemon = Daemon::start_with(&[], Some(&config));
    // A port no other test uses: the daemon counts every namespace.
    let target = 47913;
    let ns = Netns::new("metrics");
    refuse(&ns, target, 3, Duration::from_millis(20));

    let refused = [("action", "refused"), ("port", "47913"), ("direction", "inbound")];
    let scrape = wait_for("3 refusals and a no_listener diagnosis in /metrics", Duration::from_secs(15), || {
        let (status, ctype, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let scrape = parse_exposition(&body);
        let opened = value(&scrape, "observer_diagnoses_total", &[("kind", "no_listener"), ("status", "open")]);
        (value(&scrape, "observer_failures_total", &refused) == Some(3.0) && opened >= Some(1.0)).then_some(scrape)
    });
    assert!(value(&scrape, "observer_diagnoses_open", &[("kind", "no_listener")]) >= Some(1.0));
    assert_eq!(value(&scrape, "observer_diagnoses_open", &[("kind", "syn_flood")]).map(|v| v >= 0.0), Some(true));
    assert_eq!(value(&scrape, "observer_hook_up", &[("hook", "tcp_send_reset")]), Some(1.0));
    assert_eq!(value(&scrape, "observer_hook_up", &[("hook", "tcp_retransmit_synack")]), Some(0.0));
    assert!(value(&scrape, "observer_records_read_total", &[]) >= Some(3.0));
    assert!(value(&scrape, "observer_records_written_total", &[]) >= Some(3.0));
    for health in ["observer_decode_errors_total", "observer_write_errors_total", "observer_events_lost_total"] {
        assert!(value(&scrape, health, &[]).is_some(), "{health} missing");
    }
    assert_eq!(value(&scrape, "observer_syslog_dropped_total", &[]), Some(0.0));
    assert_eq!(http_get(&addr, "/nope").0, 404);

    // Three more: the counter moves by exactly three.
    refuse(&ns, target, 3, Duration::from_millis(20));
    wait_for("6 refusals", Duration::from_secs(10), || {
        let scrape = parse_exposition(&http_get(&addr, "/metrics").2);
        (value(&scrape, "observer_failures_total", &refused) == Some(6.0)).then_some(())
    });
    daemon.stop();
}

#[test]
fn sixty_slow_clients_cannot_starve_a_scrape() {
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(&[], Some(&format!("[metrics]\nlisten = \"{addr}\"\n")));
    // Idle connections, and ones that send half a request and stall: what
    // a port scanner, a broken health check or a slowloris leaves behind.
    let mut slow = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Each scrape is answered at once, while all 60 are still open.
    for _ in 0..5 {
        let start = Instant::now();
        let (status, _, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("observer_records_read_total"), "{body}");
        assert!(start.elapsed() < Duration::from_secs(1), "a scrape took {:?}", start.elapsed());
    }
    drop(slow);
    daemon.stop();
}

#[test]
fn a_taken_metrics_port_stops_the_start_with_its_reason() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("observer.toml");
    std::fs::write(&config, format!("[metrics]\nlisten = \"{addr}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["run", "--shared", "--json-log"])
        .arg(dir.path().join("log.ndjson"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("metrics endpoint: binding {addr}")), "{stderr}");
}

// ---------------------------------------------------------------- webhook

#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

/// A webhook receiver on 127.0.0.1:0 that records every request and
/// answers with the status `respond` picks for it.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(respond: impl Fn(&Request, &[Request]) -> u16 + Send + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(req) = read_request(&mut conn) else { continue };
                let code = {
                    let mut all = seen.lock().unwrap();
                    let code = respond(&req, &all);
                    all.push(req);
                    code
                };
                let _ = write!(conn, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    assert!(line.starts_with("POST /hook HTTP/1.1"), "{line}");
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request { at: Instant::now(), headers, body: serde_json::from_slice(&body).ok()? })
}

fn ours(r: &Request, netns: u32) -> bool {
    r.body["observer"]["netns"] == netns && r.body["diagnosis"]["kind"] == "no_listener"
}

#[test]
fn webhook_alerts_once_per_opening_not_per_event_or_update() {
    let receiver = Receiver::start(|_, _| 200);
    // Updates every second; no escalation, so that one opening is one alert.
    let config = format!(
        "[alerts]\nwebhook_url = \"{}\"\n[diagnosis]\nupdate_interval_secs = 1\nescalate_factor = 0\n",
        receiver.url
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("webhook");
    let netns = ns.inode();
    // A service that stays down for 3 s: a refusal every 100 ms.
    refuse(&ns, 8083, 30, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));

    let alerts: Vec<Request> = receiver.requests().into_iter().filter(|r| ours(r, netns)).collect();
    assert_eq!(alerts.len(), 1, "exactly one alert: {alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert!(a.headers.get("user-agent").is_some_and(|u| u.starts_with("observer/")), "{:?}", a.headers);
    let id = a.body["diagnosis"]["id"].as_str().unwrap().to_owned();
    assert!(a.headers.get("idempotency-key").is_some_and(|k| k.starts_with(&id)), "{:?}", a.headers);
    assert_eq!(a.body["event"]["dataset"], "observer.diagnosis");
    assert_eq!(a.body["diagnosis"]["status"], "open");
    assert_eq!(a.body["destination"]["port"], 8083);
    assert!(a.body["diagnosis"]["summary"].as_str().is_some_and(|s| !s.is_empty()));
    let message = a.body["message"].as_str().unwrap();
    assert!(message.contains("no_listener opened on port 8083"), "{message}");
    assert!(a.body["host"]["name"].is_string());

    // Meanwhile the log has the failures and several updates of the same id.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let records: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let updates =
        records.iter().filter(|v| v["diagnosis"]["id"] == id.as_str() && v["diagnosis"]["status"] == "ongoing").count();
    assert!(updates >= 2, "expected ongoing updates in the log, got {updates}");
    let failures = records
        .iter()
        .filter(|v| v["observer"]["netns"] == netns && v["event"]["action"] == "refused")
        .filter_map(|v| v["event"]["count"].as_u64())
        .sum::<u64>();
    assert_eq!(failures, 30);
    daemon.stop();
}

#[test]
fn webhook_retries_a_5xx_with_backoff_and_delivers_on_the_third_try() {
    let netns_cell = Arc::new(Mutex::new(0u32));
    let cell = netns_cell.clone();
    // 500 to the first two attempts at our alert, 200 to everything else
    // (other tests' namespaces alert this daemon's receiver too).
    let receiver = Receiver::start(move |req, before| {
        let netns = *cell.lock().unwrap();
        let tries = before.iter().filter(|r| ours(r, netns)).count();
        if ours(req, netns) && tries < 2 {
            500
        } else {
            200
        }
    });
    let config = format!(
        "[alerts]\nwebhook_url = \"{}\"\nbackoff_ms = 400\nmax_retries = 3\n[diagnosis]\nescalate_factor = 0\n",
        receiver.url
    );
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("webhook5xx");
    let netns = ns.inode();
    *netns_cell.lock().unwrap() = netns;
    refuse(&ns, 8084, 3, Duration::from_millis(20));

    let tries = wait_for("three attempts at the alert", Duration::from_secs(15), || {
        let tries: Vec<Request> = receiver.requests().into_iter().filter(|r| ours(r, netns)).collect();
        (tries.len() >= 3).then_some(tries)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<Request> = receiver.requests().into_iter().filter(|r| ours(r, netns)).collect();
    assert_eq!(after.len(), 3, "delivered on the third try, then no more: {after:#?}");
    assert_eq!(tries[0].body, tries[2].body, "the same alert is retried");
    assert_eq!(tries[0].headers.get("idempotency-key"), tries[2].headers.get("idempotency-key"));
    // Backoff: 400 ms then 800 ms, each less at most a quarter of jitter.
    let first = tries[1].at - tries[0].at;
    let second = tries[2].at - tries[1].at;
    assert!(first >= Duration::from_millis(300), "{first:?}");
    assert!(second >= Duration::from_millis(600) && second > first, "{first:?} then {second:?}");
    daemon.stop();
}

// ---------------------------------------------------------------- dashboard

/// Metric and label names a PromQL expression uses.
#[derive(Default)]
struct Names {
    /// (metric, labels of its selector's matchers)
    selectors: Vec<(String, Vec<String>)>,
    /// Labels of `by (...)` / `without (...)`.
    grouping: Vec<String>,
}

impl promql_parser::util::ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, String> {
        use promql_parser::parser::{AggregateExpr, Expr, LabelModifier, VectorSelector};
        let mut selector = |vs: &VectorSelector| {
            let name = vs.name.clone().ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
            let labels = vs.matchers.matchers.iter().map(|m| m.name.clone()).filter(|l| l != "__name__").collect();
            self.selectors.push((name, labels));
            Ok::<_, String>(())
        };
        match expr {
            Expr::VectorSelector(vs) => selector(vs)?,
            Expr::MatrixSelector(m) => selector(&m.vs)?,
            Expr::Aggregate(AggregateExpr {
                modifier: Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)),
                ..
            }) => self.grouping.extend(l.labels.iter().cloned()),
            _ => {}
        }
        Ok(true)
    }
}

/// Every PromQL query of a Grafana dashboard: the panels' `expr`s and the
/// template variables' `label_values(...)` queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    ("query", serde_json::Value::String(q)) if q.starts_with("label_values(") => {
                        // label_values(METRIC, LABEL): the metric is the query.
                        let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
                        out.push(inner.split(',').next().unwrap().trim().to_owned());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(&[], Some(&format!("[metrics]\nlisten = \"{addr}\"\n")));
    // A failure and a diagnosis, so that the labelled families have series.
    let ns = Netns::new("dashboard");
    refuse(&ns, 47914, 3, Duration::from_millis(20));
    let body = wait_for("a failure and a diagnosis in /metrics", Duration::from_secs(15), || {
        let body = http_get(&addr, "/metrics").2;
        let scrape = parse_exposition(&body);
        let opened = value(&scrape, "observer_diagnoses_total", &[("kind", "no_listener"), ("status", "open")]);
        (opened >= Some(1.0)).then_some(body)
    });
    daemon.stop();
    // What a Prometheus scraping this endpoint has: every declared family
    // (counters with `_total`), with the labels of its samples, plus the
    // target labels Prometheus adds itself.
    let scrape = parse_exposition(&body);
    let mut exported: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for line in body.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let series = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            exported.entry(series).or_default().extend(["instance".to_owned(), "job".to_owned()]);
        }
    }
    for s in &scrape.samples {
        exported.entry(s.metric.clone()).or_default().extend(s.labels.keys().map(|k| (*k).to_owned()));
    }

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut used = std::collections::BTreeSet::new();
    for q in &queries {
        // Grafana's variables, as Grafana substitutes them.
        let promql = q
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "6h")
            .replace("${instance}", ".*")
            .replace("$instance", ".*");
        let expr = promql_parser::parser::parse(&promql).unwrap_or_else(|e| panic!("{q}: not PromQL: {e}"));
        let mut names = Names::default();
        promql_parser::util::walk_expr(&mut names, &expr).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(!names.selectors.is_empty(), "{q}: names no metric");
        for (metric, labels) in &names.selectors {
            let known = exported.get(metric).unwrap_or_else(|| panic!("{q}: {metric} is not exported:\n{body}"));
            for l in labels.iter().chain(&names.grouping) {
                assert!(known.contains(l), "{q}: {metric} has no label {l} (it has {known:?})");
            }
            used.insert(metric.clone());
        }
    }
    // The panels the dashboard promises.
    for metric in [
        "observer_failures_total",
        "observer_diagnoses_total",
        "observer_diagnoses_open",
        "observer_hook_up",
        "observer_kernel_ringbuf_full_total",
        "observer_kernel_counter_map_full_total",
        "observer_kernel_read_failed_total",
        "observer_history_dropped_total",
        "observer_write_errors_total",
        "observer_syslog_dropped_total",
        "observer_alerts_dropped_total",
        "observer_otlp_dropped_total",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
}

// ---------------------------------------------------------------- slack

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

/// The no_listener opening of a namespace, as the log has it.
fn opening(daemon: &Daemon, netns: u32) -> serde_json::Value {
    let open = |d: &serde_json::Value| {
        d["observer"]["netns"] == netns && d["diagnosis"]["kind"] == "no_listener" && d["diagnosis"]["status"] == "open"
    };
    daemon.diagnoses().into_iter().find(open).unwrap_or_else(|| panic!("no opening in netns {netns}"))
}

/// Slack's own rules for an incoming-webhook message (Block Kit
/// reference): a `text` and at most 50 blocks of known types; a header of
/// plain text up to 150 characters; sections with text up to 3000 or up to
/// 10 fields of up to 2000; context with 1 to 10 elements. In mrkdwn, `<`,
/// `>` and `&` appear only escaped (our text has no links or mentions).
fn assert_valid_slack_message(v: &serde_json::Value) {
    let chars = |t: &serde_json::Value| t.as_str().map(|s| s.chars().count()).unwrap_or(0);
    let text_object = |t: &serde_json::Value, max: usize| {
        let kind = t["type"].as_str().unwrap_or_else(|| panic!("text object without type: {t}"));
        assert!(["plain_text", "mrkdwn"].contains(&kind), "{t}");
        let s = t["text"].as_str().unwrap_or_else(|| panic!("text object without text: {t}"));
        assert!(!s.is_empty() && chars(&t["text"]) <= max, "{} characters (at most {max}): {t}", chars(&t["text"]));
        if kind == "mrkdwn" {
            assert!(!s.contains('<') && !s.contains('>'), "unescaped < or > in mrkdwn: {s}");
            for (i, _) in s.match_indices('&') {
                assert!(["&amp;", "&lt;", "&gt;"].iter().any(|e| s[i..].starts_with(e)), "bare & in mrkdwn: {s}");
            }
        }
    };
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    for key in obj.keys() {
        assert!(["text", "blocks"].contains(&key.as_str()), "unexpected key {key}: {v}");
    }
    assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "no fallback text: {v}");
    let blocks = v["blocks"].as_array().unwrap_or_else(|| panic!("no blocks: {v}"));
    assert!(!blocks.is_empty() && blocks.len() <= 50, "{} blocks", blocks.len());
    for b in blocks {
        if let Some(id) = b.get("block_id") {
            assert!(chars(id) <= 255, "{b}");
        }
        match b["type"].as_str() {
            Some("header") => {
                assert_eq!(b["text"]["type"], "plain_text", "{b}");
                text_object(&b["text"], 150);
            }
            Some("section") => {
                assert!(b.get("text").is_some() || b.get("fields").is_some(), "empty section: {b}");
                if let Some(t) = b.get("text") {
                    text_object(t, 3000);
                }
                if let Some(fields) = b.get("fields") {
                    let fields = fields.as_array().unwrap();
                    assert!(!fields.is_empty() && fields.len() <= 10, "{b}");
                    fields.iter().for_each(|f| text_object(f, 2000));
                }
            }
            Some("context") => {
                let elements = b["elements"].as_array().unwrap();
                assert!(!elements.is_empty() && elements.len() <= 10, "{b}");
                elements.iter().for_each(|e| text_object(e, 3000));
            }
            Some("divider") => {}
            other => panic!("block type {other:?} not expected: {b}"),
        }
    }
}

#[test]
fn a_slack_format_alert_reaches_its_receiver_as_a_valid_slack_message() {
    let receiver = Receiver::start(|_, _| 200);
    let config =
        format!("[alerts]\nwebhook_url = \"{}\"\nformat = \"slack\"\n[diagnosis]\nescalate_factor = 0\n", receiver.url);
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("slack");
    let netns = ns.inode();
    refuse(&ns, 8461, 5, Duration::from_millis(50));

    // Other tests' namespaces alert this receiver too: ours names our
    // namespace in its endpoint field.
    let endpoint = format!("*Endpoint*\n127.0.0.1:8461 (inbound, netns {netns})");
    let ours = |r: &Request| {
        r.body["blocks"][2]["fields"].as_array().is_some_and(|f| f.iter().any(|f| f["text"] == endpoint.as_str()))
    };
    let alert =
        wait_for("the Slack alert", Duration::from_secs(15), || receiver.requests().into_iter().find(|r| ours(r)));
    assert_eq!(alert.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_valid_slack_message(&alert.body);

    let host = hostname();
    let b = &alert.body;
    assert_eq!(b["blocks"][0]["text"]["text"], format!("no_listener opened on {host}").as_str());
    let text = b["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("observer on {host}: no_listener opened on port 8461: ")), "{text}");
    // The summary is the diagnosis's, as the log has it (escaped for Slack).
    let logged = opening(&daemon, netns);
    let summary = logged["diagnosis"]["summary"].as_str().unwrap();
    let escaped = summary.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert_eq!(b["blocks"][1]["text"]["text"], escaped.as_str());
    let fields: Vec<&str> =
        b["blocks"][2]["fields"].as_array().unwrap().iter().filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(fields[0], format!("*Host*\n{host}"));
    assert_eq!(fields[2], format!("*Count*\n{}", logged["diagnosis"]["count"]));
    assert!(fields.iter().any(|f| f.starts_with("*First seen*\n")), "{fields:?}");
    let context = b["blocks"].as_array().unwrap().last().unwrap()["elements"][0]["text"].as_str().unwrap().to_owned();
    assert!(context.contains(&format!("`observer why 8461 --netns {netns}`")), "{context}");
    assert!(context.contains(logged["diagnosis"]["id"].as_str().unwrap()), "{context}");
    daemon.stop();
}

// ---------------------------------------------------------------- e-mail

/// A real SMTP server: Debian's aiosmtpd on 127.0.0.1, STARTTLS required
/// with a certificate of the test's own CA, AUTH (PLAIN or LOGIN, only
/// after STARTTLS) required. It parses every message it accepts with
/// Python's email package and writes it as JSON into its directory; in
/// `refuse` mode it answers RCPT with 550.
struct Smtpd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

const SMTPD: &str = r#"
import email, email.policy, json, os, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out, cert, key, port, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()
count = [0]

def write(kind, record):
    with lock:
        count[0] += 1
        n = count[0]
    tmp = os.path.join(out, f".{kind}-{n}.json")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.rename(tmp, os.path.join(out, f"{kind}-{n}.json"))

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if mode == "refuse":
            write("refused", {"rcpt": address, "tls": session.ssl is not None})
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        write("message", {
            "mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None, "cipher": (session.ssl or {}).get("cipher"), "login": login,
            "headers": {k: str(v) for k, v in msg.items()},
            # Lines end in CRLF on the wire; as text, in \n.
            "text": plain.get_content().replace("\r\n", "\n") if plain else None,
            "html": html.get_content().replace("\r\n", "\n") if html else None,
        })
        return "250 2.0.0 Message accepted"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"observer" and auth_data.password == b"s3cret pass"
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
               authenticator=authenticator, auth_required=True, auth_require_tls=True)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

impl Smtpd {
    fn start(mode: &str) -> Smtpd {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        // A CA of the test's own, and the server's certificate for
        // 127.0.0.1 signed by it: the daemon trusts it through ca_file.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "observer test CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(path("smtpd.py"), SMTPD).unwrap();
        std::fs::create_dir(path("mail")).unwrap();
        let port = free_tcp_port();
        // Debian's interpreter, where python3-aiosmtpd is installed.
        let mut child = Command::new("/usr/bin/python3")
            .arg(path("smtpd.py"))
            .args([path("mail"), path("cert.pem"), path("key.pem")])
            .args([&port.to_string(), mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (python3-aiosmtpd; cargo xtask setup installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        Smtpd { child, dir, port }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// What the server wrote of a kind (`message`, `refused`), in order.
    fn records(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_owned();
                let n = name.strip_prefix(&format!("{kind}-"))?.strip_suffix(".json")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        files.sort();
        files.iter().map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn email_config(smtpd: &Smtpd, dir: &std::path::Path, extra: &str) -> String {
    let password = dir.join("smtp-password");
    std::fs::write(&password, "s3cret pass\n").unwrap();
    format!(
        "[email]\nenabled = true\nserver = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\nusername = \"observer\"\n\
         password_file = \"{}\"\nfrom = \"observer <observer@example.test>\"\n\
         to = [\"oncall@example.test\", \"Ops <ops@example.test>\"]\nbackoff_ms = 200\ntimeout_ms = 5000\n{extra}\n\
         [diagnosis]\nupdate_interval_secs = 1\nescalate_factor = 0\n",
        smtpd.port,
        smtpd.ca_file().display(),
        password.display()
    )
}

#[test]
fn an_email_per_opening_reaches_a_real_smtp_server_over_starttls() {
    let smtpd = Smtpd::start("accept");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(&[], Some(&email_config(&smtpd, dir.path(), "")));
    let ns = Netns::new("email");
    let netns = ns.inode();
    // Down for 3 s, with updates every second: one opening, one message.
    refuse(&ns, 8462, 30, Duration::from_millis(100));

    let endpoint = format!("127.0.0.1:8462 (inbound, netns {netns})");
    let ours = |m: &serde_json::Value| m["text"].as_str().is_some_and(|t| t.contains(&endpoint));
    wait_for("the e-mail", Duration::from_secs(15), || smtpd.records("message").into_iter().find(|m| ours(m)));
    std::thread::sleep(Duration::from_secs(2));
    let mails: Vec<serde_json::Value> = smtpd.records("message").into_iter().filter(|m| ours(m)).collect();
    assert_eq!(mails.len(), 1, "one message per opening, not per update: {mails:#?}");
    let m = &mails[0];

    // The session: STARTTLS, then AUTH with the password from its file.
    assert_eq!(m["tls"], true, "{m:#}");
    assert!(m["cipher"].is_array(), "{m:#}");
    assert_eq!(m["login"], "observer");
    assert_eq!(m["mail_from"], "observer@example.test");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["oncall@example.test", "ops@example.test"]));

    let host = hostname();
    let h = &m["headers"];
    assert_eq!(h["From"], "observer <observer@example.test>");
    assert_eq!(h["To"], "oncall@example.test, Ops <ops@example.test>");
    assert_eq!(h["Subject"], format!("[observer] no_listener opened on {host}: 127.0.0.1:8462").as_str());
    assert!(h["Content-Type"].as_str().unwrap().starts_with("multipart/alternative"), "{h:#}");
    let logged = opening(&daemon, netns);
    let id = logged["diagnosis"]["id"].as_str().unwrap();
    assert!(h["Message-ID"].as_str().unwrap().starts_with(&format!("<{id}.")), "{h:#}");

    let text = m["text"].as_str().unwrap();
    let summary = logged["diagnosis"]["summary"].as_str().unwrap();
    assert!(text.starts_with(&format!("observer on {host}: no_listener opened on port 8462\n\n{summary}\n")), "{text}");
    assert!(text.contains(&format!("Endpoint:   {endpoint}\n")), "{text}");
    assert!(text.contains(&format!("Diagnosis:  no_listener, id {id}, open\n")), "{text}");
    assert!(text.contains("\nWhat to do:\n  - "), "{text}");
    assert!(text.contains("  actions:           refused "), "{text}");
    assert!(text.contains(&format!("observer why 8462 --netns {netns}\n")), "{text}");
    let html = m["html"].as_str().unwrap();
    assert!(html.contains(&format!("<code>observer why 8462 --netns {netns}</code>")), "{html}");
    let (stderr, _) = daemon.stop();
    assert!(
        stderr.contains("email: sending open, escalated to oncall@example.test, Ops <ops@example.test>"),
        "{stderr}"
    );
}

#[test]
fn a_server_that_refuses_counts_a_loss_and_the_daemon_keeps_logging() {
    let smtpd = Smtpd::start("refuse");
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let config = format!("{}[metrics]\nlisten = \"{metrics}\"\n", email_config(&smtpd, dir.path(), ""));
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("email550");
    let netns = ns.inode();
    refuse(&ns, 8463, 3, Duration::from_millis(20));

    let scrape = || parse_exposition(&http_get(&metrics, "/metrics").2);
    wait_for("a counted loss", Duration::from_secs(15), || {
        (value(&scrape(), "observer_email_failed_total", &[]) >= Some(1.0)).then_some(())
    });
    // The refusal came after STARTTLS and AUTH, at RCPT; a 5xx is final.
    let refused = smtpd.records("refused");
    assert!(!refused.is_empty() && refused.iter().all(|r| r["tls"] == true), "{refused:#?}");
    let s = scrape();
    assert_eq!(value(&s, "observer_email_sent_total", &[]), Some(0.0));
    assert_eq!(value(&s, "observer_email_retries_total", &[]), Some(0.0), "a 5xx is not retried");
    assert!(smtpd.records("message").is_empty());

    // The daemon goes on: new failures still reach the log.
    refuse(&ns, 8464, 2, Duration::from_millis(20));
    daemon.expect_event("a refusal after the lost e-mail", |e| e.observer.netns == netns && e.destination.port == 8464);
    let (stderr, _) = daemon.stop();
    assert!(stderr.contains("email: 127.0.0.1:") && stderr.contains("RCPT TO: permanent error (550)"), "{stderr}");
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused_not_retried() {
    let smtpd = Smtpd::start("accept");
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    // No ca_file: the test CA is not among the system's.
    let config =
        email_config(&smtpd, dir.path(), "").replace(&format!("ca_file = \"{}\"\n", smtpd.ca_file().display()), "");
    let config = format!("{config}[metrics]\nlisten = \"{metrics}\"\n");
    let daemon = Daemon::start_with(&[], Some(&config));
    let ns = Netns::new("emailca");
    refuse(&ns, 8465, 3, Duration::from_millis(20));

    let scrape = || parse_exposition(&http_get(&metrics, "/metrics").2);
    wait_for("a counted loss", Duration::from_secs(15), || {
        (value(&scrape(), "observer_email_failed_total", &[]) >= Some(1.0)).then_some(())
    });
    assert_eq!(value(&scrape(), "observer_email_retries_total", &[]), Some(0.0));
    assert!(smtpd.records("message").is_empty(), "nothing is sent over an unverified connection");
    let (stderr, _) = daemon.stop();
    assert!(stderr.contains("STARTTLS") && stderr.contains("email.ca_file"), "{stderr}");
}
