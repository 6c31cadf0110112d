//! The outputs' sections: `[syslog]`, `[metrics]` and `[alerts]`, with
//! the checks of their values. The sinks in `sink` read them.

use std::net::SocketAddr;

use documented::DocumentedFields;
use hyper::Uri;
use serde::{Deserialize, Serialize};

/// How syslog messages leave the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Unix,
}

/// RFC 5424 section 6.2.1 facilities, by their usual names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogConfig {
    /// Send records to syslog.
    pub enabled: bool,
    /// udp, tcp (octet-counting framing, RFC 6587) or unix (a datagram socket
    /// such as /dev/log; rsyslog's imuxsock needs UseSpecialParser="off" to read
    /// RFC 5424 there).
    pub transport: Transport,
    /// host:port for udp and tcp; the socket path for unix.
    pub address: String,
    /// kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv,
    /// ftp, local0 ... local7.
    pub facility: Facility,
    /// RFC 5424 APP-NAME: 1 to 48 printable ASCII characters.
    pub app_name: String,
    /// RFC 5424 HOSTNAME (up to 255 printable ASCII characters); empty: the
    /// kernel's host name.
    pub hostname: String,
    /// Send failure events.
    pub failures: bool,
    /// Send diagnoses (every status).
    pub diagnoses: bool,
    /// Records waiting to be sent. When the receiver is slow or down (TCP
    /// reconnects with backoff) the queue fills and further records are
    /// dropped and counted (observer_syslog_dropped_total); the log and the
    /// pipeline never wait for syslog.
    pub queue: usize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            enabled: false,
            transport: Transport::Udp,
            address: "127.0.0.1:514".to_owned(),
            facility: Facility::Daemon,
            app_name: "observer".to_owned(),
            hostname: String::new(),
            failures: true,
            diagnoses: true,
            queue: 4096,
        }
    }
}

impl SyslogConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.app_name.is_empty() || self.app_name.len() > 48 || !printable(&self.app_name) {
            return Err(format!(
                "syslog.app_name = {:?}: 1 to 48 printable ASCII characters, no spaces",
                self.app_name
            ));
        }
        if self.hostname.len() > 255 || !printable(&self.hostname) {
            return Err(format!("syslog.hostname = {:?}: up to 255 printable ASCII characters", self.hostname));
        }
        if self.queue == 0 {
            return Err("syslog.queue must be at least 1".into());
        }
        if !self.failures && !self.diagnoses {
            return Err("syslog: failures and diagnoses are both off; set enabled = false instead".into());
        }
        match self.transport {
            Transport::Unix if self.address.is_empty() => Err("syslog.address: a socket path is needed".into()),
            Transport::Udp | Transport::Tcp if !self.address.contains(':') => {
                Err(format!("syslog.address = {:?}: host:port expected for {:?}", self.address, self.transport))
            }
            _ => Ok(()),
        }
    }
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (33..=126).contains(&b))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// address:port to serve /metrics on, e.g. "127.0.0.1:9464"; empty: no
    /// endpoint. Not authenticated: bind it to loopback or a management network.
    pub listen: String,
    /// Destination ports with their own `port` label in observer_failures_total:
    /// the first ones seen since start; the rest are counted as port="other",
    /// which bounds the number of series.
    pub max_ports: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: String::new(), max_ports: 100 }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(format!("metrics.listen = {:?}: an address:port such as \"127.0.0.1:9464\"", self.listen));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// http://host:port/path to POST alerts to (http:// only: https through a
    /// local relay); empty: no alerts.
    pub webhook_url: String,
    /// Per attempt (connect, send, and the response's status line), in milliseconds.
    pub timeout_ms: u64,
    /// Retries after the first attempt, on connection errors, timeouts, 5xx and
    /// 429 (other 4xx are final).
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds; it doubles on each
    /// further one up to backoff_max_ms (a Retry-After from the receiver is
    /// honoured).
    pub backoff_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// POSTs in any 60 seconds, summaries included. Alerts beyond it are
    /// counted (observer_alerts_rate_limited_total) and summarized in one POST
    /// (event.dataset observer.alert_summary) when the window has room again.
    pub max_per_minute: u32,
    /// Alerts waiting for delivery; beyond it they are dropped and counted.
    pub queue: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: String::new(),
            timeout_ms: 5000,
            max_retries: 5,
            backoff_ms: 1000,
            backoff_max_ms: 60_000,
            max_per_minute: 10,
            queue: 256,
        }
    }
}

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.webhook_url.is_empty() {
            return Ok(());
        }
        self.uri()?;
        if self.timeout_ms == 0 {
            return Err("alerts.timeout_ms must be at least 1".into());
        }
        if self.backoff_ms == 0 || self.backoff_max_ms < self.backoff_ms {
            return Err("alerts.backoff_ms must be at least 1 and at most alerts.backoff_max_ms".into());
        }
        if self.max_per_minute == 0 || self.queue == 0 {
            return Err("alerts.max_per_minute and alerts.queue must be at least 1".into());
        }
        Ok(())
    }

    /// The parsed `webhook_url`, for the webhook's client.
    pub fn uri(&self) -> Result<Uri, String> {
        let bad = |why: &str| format!("alerts.webhook_url = {:?}: {why}", self.webhook_url);
        let uri: Uri = self.webhook_url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; send to a local relay over http (e.g. a reverse proxy on 127.0.0.1)",
                ))
            }
            _ => return Err(bad("an http:// URL is needed")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_names_and_addresses() {
        let on = SyslogConfig { enabled: true, ..SyslogConfig::default() };
        assert!(on.validate().is_ok());
        assert!(SyslogConfig { app_name: "a b".into(), ..on.clone() }.validate().is_err());
        assert!(SyslogConfig { app_name: "x".repeat(49), ..on.clone() }.validate().is_err());
        assert!(SyslogConfig { address: "localhost".into(), ..on.clone() }.validate().is_err());
        assert!(SyslogConfig { transport: Transport::Unix, address: "/dev/log".into(), ..on.clone() }
            .validate()
            .is_ok());
        assert!(SyslogConfig { failures: false, diagnoses: false, ..on }.validate().is_err());
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        let cfg = |url: &str| AlertsConfig { webhook_url: url.into(), ..AlertsConfig::default() };
        assert!(cfg("").validate().is_ok());
        assert!(cfg("http://127.0.0.1:8080/hook").validate().is_ok());
        assert!(cfg("https://example.com/hook").validate().unwrap_err().contains("https"));
        assert!(cfg("ftp://example.com/").validate().is_err());
        assert!(cfg("/just/a/path").validate().is_err());
        assert!(AlertsConfig { max_per_minute: 0, ..cfg("http://h/") }.validate().is_err());
    }
}
