//! The `[otlp]` section, and the standard OpenTelemetry environment
//! variables (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`), resolved
//! together into the exporter's settings.
//!
//! Precedence, value by value: what the file sets, then the environment,
//! then the default. The file wins because it is the one place an admin
//! writes this daemon's configuration (and `observer config` documents),
//! while the environment of a service is often shared: a fleet's base
//! image or a systemd drop-in sets `OTEL_EXPORTER_OTLP_ENDPOINT` for every
//! program on the host, and a key written in observer.toml on purpose must
//! not be overridden by it. The environment still fills in whatever the
//! file leaves unset, which is how a fleet points every host at its
//! Collector without templating the file. Within one source, a
//! signal-specific value wins over the generic one, as the OpenTelemetry
//! specification says for the variables: `logs_endpoint` over `endpoint`,
//! `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` over `OTEL_EXPORTER_OTLP_ENDPOINT`.
//! Headers and resource attributes are merged key by key in the same order.
//!
//! The variables are read by the daemon (`OtlpEnv::from_lookup` with the
//! process environment) and handed in here: this module does not read the
//! environment itself, so that a test resolves any combination without
//! touching its own.

use std::{collections::BTreeMap, time::Duration};

use documented::DocumentedFields;
use hyper::{
    header::{HeaderName, HeaderValue},
    Uri,
};
use serde::{Deserialize, Serialize};

/// The Collector's OTLP/HTTP port on the same host: where an agent listens.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// The specification's default export timeout.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The specification's default metric export interval (OTEL_METRIC_EXPORT_INTERVAL).
const DEFAULT_INTERVAL_MS: u64 = 60_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Send the records as OTLP logs and the counters as OTLP metrics, over
    /// HTTP with protobuf, to an OpenTelemetry Collector. Only this key turns
    /// it on: an OTEL_EXPORTER_OTLP_ENDPOINT in the environment alone does not.
    pub enabled: bool,
    /// Base URL (http:// only; https through a local Collector): /v1/logs and
    /// /v1/metrics are appended. Unset: OTEL_EXPORTER_OTLP_ENDPOINT, else
    /// http://localhost:4318.
    pub endpoint: Option<String>,
    /// Full URL for logs, used as it is. Unset: from endpoint, else
    /// OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/logs.
    pub logs_endpoint: Option<String>,
    /// Full URL for metrics, used as it is. Unset: from endpoint, else
    /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/metrics.
    pub metrics_endpoint: Option<String>,
    /// HTTP headers on every request (an API key, a tenant), merged with
    /// OTEL_EXPORTER_OTLP_HEADERS (or the _LOGS_/_METRICS_ variant); a header
    /// set here wins.
    pub headers: BTreeMap<String, String>,
    /// Per request (connect, send, response), in milliseconds (1 to 600000).
    /// Unset: OTEL_EXPORTER_OTLP_TIMEOUT (or the _LOGS_/_METRICS_ variant),
    /// else 10000.
    pub timeout_ms: Option<u64>,
    /// Resource attributes, e.g. { "deployment.environment.name" = "prod" },
    /// merged with OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; a key set
    /// here wins. service.name defaults to "observer"; host.name and
    /// service.version are filled in unless given.
    pub resource_attributes: BTreeMap<String, String>,
    /// Send failure events as log records.
    pub failures: bool,
    /// Send diagnoses (every status) as log records.
    pub diagnoses: bool,
    /// Send the daemon's counters (those of the Prometheus endpoint) as metrics.
    pub metrics: bool,
    /// How often the counters are sent, in milliseconds (100 to 3600000).
    /// Unset: OTEL_METRIC_EXPORT_INTERVAL, else 60000.
    pub metrics_interval_ms: Option<u64>,
    /// Records waiting to be sent (at least 1). While the Collector is slow or
    /// down the queue fills, and further records are dropped and counted
    /// (observer_otlp_dropped_total); the log never waits for it.
    pub queue: usize,
    /// Log records per request at most (1 to 10000).
    pub batch_size: usize,
    /// A batch that is not full is sent after this many milliseconds (1 to 60000).
    pub batch_delay_ms: u64,
    /// Retries of one request after the first attempt, on connection errors,
    /// timeouts, 429, 502, 503 and 504 (other statuses are final); the batch is
    /// then dropped and counted (observer_otlp_failed_total).
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds; it doubles on each
    /// further one up to backoff_max_ms. A Retry-After from the Collector is
    /// honoured, up to backoff_max_ms.
    pub backoff_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: None,
            logs_endpoint: None,
            metrics_endpoint: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            resource_attributes: BTreeMap::new(),
            failures: true,
            diagnoses: true,
            metrics: true,
            metrics_interval_ms: None,
            queue: 4096,
            batch_size: 512,
            batch_delay_ms: 1000,
            max_retries: 5,
            backoff_ms: 1000,
            backoff_max_ms: 30_000,
        }
    }
}

/// The OpenTelemetry variables this exporter reads; empty ones count as
/// unset, as the specification says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpEnv {
    vars: BTreeMap<&'static str, String>,
}

impl OtlpEnv {
    pub const NAMES: &'static [&'static str] = &[
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ];

    /// The variables of `NAMES` that `get` knows (the daemon passes the
    /// process environment; tests pass a table).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> OtlpEnv {
        let vars = OtlpEnv::NAMES
            .iter()
            .filter_map(|name| get(name).filter(|v| !v.trim().is_empty()).map(|v| (*name, v.trim().to_owned())))
            .collect();
        OtlpEnv { vars }
    }

    fn get(&self, name: &str) -> Option<(&'static str, &str)> {
        self.vars.get_key_value(name).map(|(k, v)| (*k, v.as_str()))
    }

    /// The signal's variable, else the generic one: `OTEL_EXPORTER_OTLP_{SIGNAL}_{what}`.
    fn signal(&self, signal: Signal, what: &str) -> Option<(&'static str, &str)> {
        self.get(&format!("OTEL_EXPORTER_OTLP_{}_{what}", signal.env()))
            .or_else(|| self.get(&format!("OTEL_EXPORTER_OTLP_{what}")))
    }
}

/// The two signals this exporter sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    fn env(self) -> &'static str {
        match self {
            Signal::Logs => "LOGS",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path the specification appends to a base endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// Where one signal goes, resolved.
#[derive(Clone, Debug)]
pub struct Destination {
    pub uri: Uri,
    /// Which key or variable gave the URL (for the start-up line).
    pub from: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
}

/// What the exporter runs with: the file and the environment resolved.
#[derive(Clone, Debug)]
pub struct OtlpSettings {
    /// None when neither failures nor diagnoses are sent.
    pub logs: Option<Destination>,
    /// None when `metrics = false`.
    pub metrics: Option<Destination>,
    pub failures: bool,
    pub diagnoses: bool,
    /// service.name and service.version at least; host.name is the sink's
    /// to detect when absent.
    pub resource: BTreeMap<String, String>,
    pub metrics_interval: Duration,
    pub queue: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    pub max_retries: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Variables that were read but do not change what is sent (a
    /// compression this exporter does not do), for a warning at start.
    pub notes: Vec<String>,
}

impl OtlpConfig {
    /// The file's own checks (the environment is checked by `resolve`).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !self.failures && !self.diagnoses && !self.metrics {
            return Err("otlp: failures, diagnoses and metrics are all off; set enabled = false instead".into());
        }
        for (key, url) in [
            ("endpoint", &self.endpoint),
            ("logs_endpoint", &self.logs_endpoint),
            ("metrics_endpoint", &self.metrics_endpoint),
        ] {
            if let Some(url) = url {
                http_uri(url).map_err(|why| format!("otlp.{key} = {url:?}: {why}"))?;
            }
        }
        for (name, value) in &self.headers {
            header(name, value).map_err(|why| format!("otlp.headers: {why}"))?;
        }
        if let Some(t) = self.timeout_ms {
            range("otlp.timeout_ms", t, 1, 600_000)?;
        }
        if let Some(i) = self.metrics_interval_ms {
            range("otlp.metrics_interval_ms", i, 100, 3_600_000)?;
        }
        if self.queue == 0 {
            return Err("otlp.queue must be at least 1".into());
        }
        range("otlp.batch_size", self.batch_size as u64, 1, 10_000)?;
        range("otlp.batch_delay_ms", self.batch_delay_ms, 1, 60_000)?;
        if self.backoff_ms == 0 || self.backoff_max_ms < self.backoff_ms {
            return Err("otlp.backoff_ms must be at least 1 and at most otlp.backoff_max_ms".into());
        }
        Ok(())
    }

    /// This section with the environment's values where it leaves them
    /// unset. An unusable variable is an error naming it: sending to the
    /// wrong place, or with the wrong protocol, must not look like success.
    pub fn resolve(&self, env: &OtlpEnv) -> Result<OtlpSettings, String> {
        let mut notes = Vec::new();
        let logs = (self.failures || self.diagnoses).then(|| self.destination(Signal::Logs, env)).transpose()?;
        let metrics = self.metrics.then(|| self.destination(Signal::Metrics, env)).transpose()?;
        for signal in [Signal::Logs, Signal::Metrics] {
            if let Some((var, value)) = env.signal(signal, "COMPRESSION") {
                if value != "none" {
                    notes.push(format!("{var} = {value}: requests are sent uncompressed (no compression here)"));
                }
            }
        }
        let interval = match (self.metrics_interval_ms, env.get("OTEL_METRIC_EXPORT_INTERVAL")) {
            (Some(ms), _) => ms,
            (None, Some((var, v))) => {
                let ms = number(var, v)?;
                range(var, ms, 100, 3_600_000)?;
                ms
            }
            (None, None) => DEFAULT_INTERVAL_MS,
        };
        Ok(OtlpSettings {
            logs,
            metrics,
            failures: self.failures,
            diagnoses: self.diagnoses,
            resource: self.resource(env)?,
            metrics_interval: Duration::from_millis(interval),
            queue: self.queue,
            batch_size: self.batch_size,
            batch_delay: Duration::from_millis(self.batch_delay_ms),
            max_retries: self.max_retries,
            backoff: Duration::from_millis(self.backoff_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            notes,
        })
    }

    fn destination(&self, signal: Signal, env: &OtlpEnv) -> Result<Destination, String> {
        if let Some((var, protocol)) = env.signal(signal, "PROTOCOL") {
            if protocol != "http/protobuf" {
                return Err(format!(
                    "{var} = {protocol}: observer sends OTLP over http/protobuf only; unset it, or point the \
                     endpoint at the Collector's OTLP/HTTP receiver (port 4318)"
                ));
            }
        }
        let specific = match signal {
            Signal::Logs => ("otlp.logs_endpoint", &self.logs_endpoint),
            Signal::Metrics => ("otlp.metrics_endpoint", &self.metrics_endpoint),
        };
        let specific_var = match signal {
            Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        };
        let (from, url) = if let (key, Some(url)) = specific {
            (key, url.clone())
        } else if let Some(base) = &self.endpoint {
            ("otlp.endpoint", join(base, signal))
        } else if let Some((var, url)) = env.get(specific_var) {
            (var, url.to_owned())
        } else if let Some((var, base)) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (var, join(base, signal))
        } else {
            ("the default", join(DEFAULT_ENDPOINT, signal))
        };
        let uri = http_uri(&url).map_err(|why| format!("{from} = {url:?}: {why}"))?;

        // Headers: the environment's (the signal's variable replaces the
        // generic one), then the file's over them.
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        if let Some((var, list)) = env.signal(signal, "HEADERS") {
            for (k, v) in pairs(var, list)? {
                headers.insert(k.to_ascii_lowercase(), v);
            }
        }
        for (k, v) in &self.headers {
            headers.insert(k.to_ascii_lowercase(), v.clone());
        }
        let headers = headers
            .iter()
            .map(|(k, v)| header(k, v).map_err(|why| format!("otlp headers (file or environment): {why}")))
            .collect::<Result<_, _>>()?;

        let timeout = match (self.timeout_ms, env.signal(signal, "TIMEOUT")) {
            (Some(ms), _) => ms,
            (None, Some((var, v))) => {
                let ms = number(var, v)?;
                range(var, ms, 1, 600_000)?;
                ms
            }
            (None, None) => DEFAULT_TIMEOUT_MS,
        };
        Ok(Destination { uri, from, headers, timeout: Duration::from_millis(timeout) })
    }

    /// Defaults, then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME
    /// (which the specification puts over the service.name in the former),
    /// then the file.
    fn resource(&self, env: &OtlpEnv) -> Result<BTreeMap<String, String>, String> {
        let mut r = BTreeMap::from([
            ("service.name".to_owned(), "observer".to_owned()),
            ("service.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]);
        if let Some((var, list)) = env.get("OTEL_RESOURCE_ATTRIBUTES") {
            r.extend(pairs(var, list)?);
        }
        if let Some((_, name)) = env.get("OTEL_SERVICE_NAME") {
            r.insert("service.name".to_owned(), name.to_owned());
        }
        r.extend(self.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(r)
    }
}

/// `base` + the signal's path, one slash between them (the specification's
/// rule for OTEL_EXPORTER_OTLP_ENDPOINT).
fn join(base: &str, signal: Signal) -> String {
    format!("{}{}", base.trim_end_matches('/'), signal.path())
}

fn http_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported; send to a Collector on this host or a local relay over http".into())
        }
        _ => return Err("an http:// URL is needed".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(uri)
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))?;
    let v = HeaderValue::from_str(value).map_err(|_| format!("the value of {name} is not a header value"))?;
    Ok((n, v))
}

/// `key1=value1,key2=value2` with percent-encoded values (the format of
/// OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES, W3C Baggage's).
fn pairs(var: &str, list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("{var}: {p:?} is not key=value"))?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s.trim())
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| format!("{var}: {p:?} is not UTF-8 once percent-decoded"))
            };
            let k = decode(k)?;
            if k.is_empty() {
                return Err(format!("{var}: {p:?} has no key"));
            }
            Ok((k, decode(v)?))
        })
        .collect()
}

fn number(var: &str, v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| format!("{var} = {v:?}: milliseconds expected (an integer)"))
}

fn range(key: &str, v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key} = {v}: must be {min} to {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> OtlpEnv {
        let table: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        OtlpEnv::from_lookup(|k| table.get(k).cloned())
    }

    fn on() -> OtlpConfig {
        OtlpConfig { enabled: true, ..OtlpConfig::default() }
    }

    fn logs_uri(cfg: &OtlpConfig, e: &OtlpEnv) -> String {
        cfg.resolve(e).unwrap().logs.unwrap().uri.to_string()
    }

    #[test]
    fn defaults_are_the_local_collector_and_the_spec_timings() {
        let s = on().resolve(&OtlpEnv::default()).unwrap();
        assert_eq!(s.logs.as_ref().unwrap().uri.to_string(), "http://localhost:4318/v1/logs");
        assert_eq!(s.metrics.as_ref().unwrap().uri.to_string(), "http://localhost:4318/v1/metrics");
        assert_eq!(s.logs.unwrap().timeout, Duration::from_secs(10));
        assert_eq!(s.metrics_interval, Duration::from_secs(60));
        assert_eq!(s.resource["service.name"], "observer");
        assert_eq!(s.resource["service.version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn the_generic_variable_gets_the_signal_path_and_the_specific_one_is_used_as_is() {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/")]);
        assert_eq!(logs_uri(&on(), &e), "http://collector:4318/base/v1/logs");
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9999/custom"),
        ]);
        let s = on().resolve(&e).unwrap();
        assert_eq!(s.logs.unwrap().uri.to_string(), "http://logs:9999/custom");
        assert_eq!(s.metrics.unwrap().uri.to_string(), "http://collector:4318/v1/metrics");
    }

    #[test]
    fn file_values_win_over_the_environment_and_the_environment_over_defaults() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs-from-env:4318/v1/logs"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20env,X-Tenant=env"),
            ("OTEL_SERVICE_NAME", "svc-env"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=attrs,deployment.environment.name=staging,team=net"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
        ]);
        // Nothing in the file: the environment.
        let s = on().resolve(&e).unwrap();
        let logs = s.logs.unwrap();
        assert_eq!(logs.uri.to_string(), "http://logs-from-env:4318/v1/logs");
        assert_eq!(logs.from, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
        assert_eq!(logs.timeout, Duration::from_millis(2500));
        let h: Vec<(String, String)> =
            logs.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
        assert_eq!(h, [("authorization".into(), "Bearer env".into()), ("x-tenant".into(), "env".into())]);
        assert_eq!(s.resource["service.name"], "svc-env", "OTEL_SERVICE_NAME over OTEL_RESOURCE_ATTRIBUTES");
        assert_eq!(s.resource["deployment.environment.name"], "staging");
        assert_eq!(s.metrics_interval, Duration::from_secs(15));

        // The file's keys win, even the generic endpoint over the
        // environment's signal-specific one.
        let file = OtlpConfig {
            endpoint: Some("http://from-file:4318".into()),
            timeout_ms: Some(700),
            headers: BTreeMap::from([("x-tenant".into(), "file".into())]),
            resource_attributes: BTreeMap::from([("deployment.environment.name".into(), "prod".into())]),
            metrics_interval_ms: Some(500),
            ..on()
        };
        let s = file.resolve(&e).unwrap();
        let logs = s.logs.unwrap();
        assert_eq!(logs.uri.to_string(), "http://from-file:4318/v1/logs");
        assert_eq!(logs.from, "otlp.endpoint");
        assert_eq!(logs.timeout, Duration::from_millis(700));
        let tenant = logs.headers.iter().find(|(k, _)| k == "x-tenant").unwrap();
        assert_eq!(tenant.1, "file");
        assert!(logs.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer env"), "merged");
        assert_eq!(s.resource["deployment.environment.name"], "prod");
        assert_eq!(s.resource["team"], "net", "merged key by key");
        assert_eq!(s.metrics_interval, Duration::from_millis(500));
        let file = OtlpConfig { logs_endpoint: Some("http://only-logs:1/x".into()), ..file };
        assert_eq!(logs_uri(&file, &e), "http://only-logs:1/x");
    }

    #[test]
    fn signal_specific_headers_and_timeouts_replace_the_generic_ones() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "200"),
        ]);
        let s = on().resolve(&e).unwrap();
        let (logs, metrics) = (s.logs.unwrap(), s.metrics.unwrap());
        assert_eq!(logs.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(metrics.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(logs.timeout, Duration::from_millis(200));
        assert_eq!(metrics.timeout, Duration::from_millis(100));
    }

    #[test]
    fn unusable_variables_are_refused_by_name() {
        let err = |vars: &[(&str, &str)]| on().resolve(&env(vars)).unwrap_err();
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).starts_with("OTEL_EXPORTER_OTLP_PROTOCOL = grpc"));
        assert!(err(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).starts_with("OTEL_EXPORTER_OTLP_TIMEOUT = \"10s\""));
        assert!(err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]).contains("https is not supported"));
        assert!(err(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).contains("not key=value"));
        assert!(err(&[("OTEL_METRIC_EXPORT_INTERVAL", "5")]).contains("must be 100 to 3600000"));
        // Empty means unset; an explicit http/protobuf is fine.
        assert!(on()
            .resolve(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " "), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]))
            .is_ok());
        let s = on().resolve(&env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")])).unwrap();
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
    }

    #[test]
    fn file_values_are_checked() {
        assert!(on().validate().is_ok());
        assert!(OtlpConfig { endpoint: Some("https://x".into()), ..on() }.validate().unwrap_err().contains("https"));
        assert!(OtlpConfig { timeout_ms: Some(0), ..on() }.validate().is_err());
        assert!(OtlpConfig { batch_size: 0, ..on() }.validate().is_err());
        assert!(OtlpConfig { headers: BTreeMap::from([("bad name".into(), "v".into())]), ..on() }.validate().is_err());
        assert!(OtlpConfig { failures: false, diagnoses: false, metrics: false, ..on() }.validate().is_err());
        // Off: nothing is checked, as for the other outputs.
        assert!(OtlpConfig { batch_size: 0, ..OtlpConfig::default() }.validate().is_ok());
        let s = OtlpConfig { failures: false, diagnoses: false, ..on() }.resolve(&OtlpEnv::default()).unwrap();
        assert!(s.logs.is_none() && s.metrics.is_some());
    }
}
