//! The outputs' sections: `[syslog]`, `[metrics]`, `[alerts]` and
//! `[email]`, with the checks of their values. The sinks in `sink` read them.

use std::{net::SocketAddr, path::PathBuf};

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

/// The body of a webhook alert: what the receiver at the URL understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The diagnosis record of the contract plus `message` and `host.name`.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` plus Block Kit `blocks`).
    Slack,
    /// A Microsoft Teams message carrying an Adaptive Card (Teams workflows
    /// and incoming webhooks).
    Teams,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Teams => "teams",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// http://host:port/path to POST alerts to (http:// only: https through a
    /// local relay); empty: no alerts.
    pub webhook_url: String,
    /// The body: "json" (the diagnosis record plus `message` and `host.name`),
    /// "slack" (an incoming-webhook message with Block Kit blocks) or "teams"
    /// (a message with an Adaptive Card, for Teams workflows and incoming webhooks).
    pub format: WebhookFormat,
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
            format: WebhookFormat::Json,
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

/// How the SMTP connection is encrypted from its first byte on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain TCP first, upgraded by STARTTLS as `starttls` says (port 587).
    #[default]
    Starttls,
    /// TLS from the start (SMTPS, port 465).
    Implicit,
}

/// Whether a plain connection is upgraded with STARTTLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// STARTTLS or no delivery: a server that does not offer it is an error.
    #[default]
    Required,
    /// STARTTLS when the server offers it, plain text otherwise (an attacker
    /// on the path can strip the offer).
    Opportunistic,
    /// Never: the message and any password cross the network in clear.
    Off,
}

/// A diagnosis status, as the e-mail channel's filter names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Open,
    Ongoing,
    Escalated,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Ongoing => "ongoing",
            AlertStatus::Escalated => "escalated",
            AlertStatus::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// Send e-mail alerts.
    pub enabled: bool,
    /// The SMTP server (submission relay): a host name or an IP address; its
    /// certificate must carry that name.
    pub server: String,
    /// The server's port; unset: 587, or 465 with tls = "implicit".
    pub port: Option<u16>,
    /// "starttls" (plain TCP upgraded as `starttls` says) or "implicit" (TLS
    /// from the first byte, SMTPS).
    pub tls: SmtpTls,
    /// With tls = "starttls": "required" (no delivery without it), "opportunistic"
    /// (when offered; an attacker on the path can strip the offer) or "off"
    /// (everything in clear; refused with a username).
    pub starttls: StartTls,
    /// PEM file of CA certificates trusted besides the system's (a company CA,
    /// a relay's self-signed certificate). Certificates are always verified.
    pub ca_file: PathBuf,
    /// SMTP AUTH (PLAIN or LOGIN, over TLS) user; empty: no AUTH.
    pub username: String,
    /// The password, inline; prefer password_file.
    pub password: String,
    /// A file holding the password (one line; a trailing newline is ignored),
    /// read at start, so that it need not sit in the config file.
    pub password_file: PathBuf,
    /// The sender, "Name <address>" or "address".
    pub from: String,
    /// Recipients, each "Name <address>" or "address"; one message to all.
    pub to: Vec<String>,
    /// Put before every subject, which then says the kind, status, host and endpoint.
    pub subject_prefix: String,
    /// Diagnosis statuses that send a message: open, ongoing, escalated, resolved.
    pub statuses: Vec<AlertStatus>,
    /// Add an HTML alternative to the plain-text body.
    pub html: bool,
    /// Deadline of each step, in milliseconds: connecting (TCP, the greeting and
    /// EHLO, TLS with tls = "implicit"), STARTTLS, AUTH, and each command of the
    /// transaction (MAIL, RCPT, DATA, the message).
    pub timeout_ms: u64,
    /// Retries after the first attempt, on temporary failures: 4xx replies,
    /// timeouts, connection errors. 5xx replies and TLS or AUTH failures are final.
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds; it doubles on each further
    /// one up to backoff_max_ms.
    pub backoff_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// Messages in any 60 seconds, summaries included. Alerts beyond it are
    /// counted (observer_email_rate_limited_total) and summarized in one message
    /// when the window has room again.
    pub max_per_minute: u32,
    /// Alerts waiting for delivery; beyond it they are dropped and counted.
    pub queue: usize,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            enabled: false,
            server: String::new(),
            port: None,
            tls: SmtpTls::Starttls,
            starttls: StartTls::Required,
            ca_file: PathBuf::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            from: String::new(),
            to: Vec::new(),
            subject_prefix: "[observer]".to_owned(),
            statuses: vec![AlertStatus::Open, AlertStatus::Escalated],
            html: true,
            timeout_ms: 10_000,
            max_retries: 5,
            backoff_ms: 5000,
            backoff_max_ms: 300_000,
            max_per_minute: 5,
            queue: 64,
        }
    }
}

impl EmailConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.server.trim().is_empty() || self.server.contains(char::is_whitespace) {
            return Err(format!("email.server = {:?}: a host name or IP address is needed", self.server));
        }
        if self.server.parse::<SocketAddr>().is_ok() || self.server.matches(':').count() == 1 {
            return Err(format!("email.server = {:?}: the host alone; the port goes in email.port", self.server));
        }
        if self.port == Some(0) {
            return Err("email.port must be 1 to 65535".into());
        }
        self.from.parse::<lettre::message::Mailbox>().map_err(|e| format!("email.from = {:?}: {e}", self.from))?;
        if self.to.is_empty() {
            return Err("email.to: at least one recipient is needed".into());
        }
        for to in &self.to {
            to.parse::<lettre::message::Mailbox>().map_err(|e| format!("email.to: {to:?}: {e}"))?;
        }
        if self.subject_prefix.chars().any(char::is_control) {
            return Err(format!("email.subject_prefix = {:?}: no control characters", self.subject_prefix));
        }
        let has_password = !self.password.is_empty() || !self.password_file.as_os_str().is_empty();
        if !self.password.is_empty() && !self.password_file.as_os_str().is_empty() {
            return Err("email.password and email.password_file are both set; keep one".into());
        }
        if self.username.is_empty() && has_password {
            return Err("email.password: set email.username too (or neither, for no AUTH)".into());
        }
        if !self.username.is_empty() && !has_password {
            return Err("email.username: set email.password_file (or email.password) too".into());
        }
        match (self.tls, self.starttls) {
            (SmtpTls::Implicit, StartTls::Opportunistic | StartTls::Off) => {
                return Err("email.starttls: applies to tls = \"starttls\" only; with tls = \"implicit\" the connection is TLS from the start".into())
            }
            (SmtpTls::Starttls, StartTls::Off) if !self.username.is_empty() => {
                return Err("email.starttls = \"off\" with email.username would send the password in clear; use \"required\"".into())
            }
            _ => {}
        }
        if self.statuses.is_empty() {
            return Err("email.statuses: at least one status; set enabled = false instead".into());
        }
        if self.timeout_ms == 0 {
            return Err("email.timeout_ms must be at least 1".into());
        }
        if self.backoff_ms == 0 || self.backoff_max_ms < self.backoff_ms {
            return Err("email.backoff_ms must be at least 1 and at most email.backoff_max_ms".into());
        }
        if self.max_per_minute == 0 || self.queue == 0 {
            return Err("email.max_per_minute and email.queue must be at least 1".into());
        }
        Ok(())
    }

    /// The port to connect to: the configured one, or the usual one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
        })
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

    #[test]
    fn the_webhook_format_is_one_of_three() {
        let parse = |t: &str| toml::from_str::<AlertsConfig>(t).map(|c| c.format);
        assert_eq!(parse("").unwrap(), WebhookFormat::Json);
        assert_eq!(parse("format = \"slack\"").unwrap(), WebhookFormat::Slack);
        assert_eq!(parse("format = \"teams\"").unwrap(), WebhookFormat::Teams);
        assert!(parse("format = \"discord\"").is_err());
    }

    #[test]
    fn email_needs_a_server_a_sender_and_recipients() {
        let on = EmailConfig {
            enabled: true,
            server: "smtp.example.com".into(),
            from: "observer <observer@example.com>".into(),
            to: vec!["oncall@example.com".into()],
            ..EmailConfig::default()
        };
        assert!(on.validate().is_ok());
        assert_eq!(on.port(), 587);
        assert_eq!(EmailConfig { tls: SmtpTls::Implicit, ..on.clone() }.port(), 465);
        assert_eq!(EmailConfig { port: Some(2525), ..on.clone() }.port(), 2525);
        let err = |c: EmailConfig| c.validate().unwrap_err();
        assert!(err(EmailConfig { server: String::new(), ..on.clone() }).starts_with("email.server"));
        assert!(err(EmailConfig { server: "smtp.example.com:25".into(), ..on.clone() }).contains("email.port"));
        assert!(err(EmailConfig { from: "not an address".into(), ..on.clone() }).starts_with("email.from"));
        assert!(err(EmailConfig { to: vec![], ..on.clone() }).starts_with("email.to"));
        assert!(err(EmailConfig { to: vec!["a@b".into(), "@".into()], ..on.clone() }).starts_with("email.to"));
        assert!(err(EmailConfig { subject_prefix: "a\r\nBcc: x@y".into(), ..on.clone() }).contains("control"));
        assert!(err(EmailConfig { statuses: vec![], ..on.clone() }).starts_with("email.statuses"));
        assert!(err(EmailConfig { port: Some(0), ..on.clone() }).starts_with("email.port"));
    }

    #[test]
    fn email_credentials_come_in_pairs_and_never_in_clear() {
        let on = EmailConfig {
            enabled: true,
            server: "127.0.0.1".into(),
            from: "observer@example.com".into(),
            to: vec!["oncall@example.com".into()],
            username: "observer".into(),
            password_file: "/etc/observer/smtp-password".into(),
            ..EmailConfig::default()
        };
        assert!(on.validate().is_ok());
        let err = |c: EmailConfig| c.validate().unwrap_err();
        assert!(err(EmailConfig { password: "x".into(), ..on.clone() }).contains("both"));
        assert!(err(EmailConfig { username: String::new(), ..on.clone() }).starts_with("email.password"));
        assert!(err(EmailConfig { password_file: PathBuf::new(), ..on.clone() }).starts_with("email.username"));
        assert!(err(EmailConfig { starttls: StartTls::Off, ..on.clone() }).contains("in clear"));
        assert!(err(EmailConfig { tls: SmtpTls::Implicit, starttls: StartTls::Off, ..on.clone() }).contains("implicit"));
        assert!(EmailConfig { tls: SmtpTls::Implicit, ..on.clone() }.validate().is_ok());
        let statuses = toml::from_str::<EmailConfig>("statuses = [\"open\", \"resolved\"]").unwrap().statuses;
        assert_eq!(statuses, [AlertStatus::Open, AlertStatus::Resolved]);
        assert!(toml::from_str::<EmailConfig>("starttls = \"maybe\"").is_err());
    }
}
