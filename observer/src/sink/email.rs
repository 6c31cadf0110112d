//! E-mail alerts over SMTP: one message per opening and escalation (or the
//! statuses `email.statuses` names), to every recipient at once.
//!
//! The message: `Subject: [observer] KIND VERB on HOST: ADDR:PORT`, a
//! plain-text body (the summary, the facts, the advice, the evidence that
//! matters, and the `observer why` command to run on the host) and, unless
//! `html = false`, the same as an HTML alternative. The Message-ID is made
//! from the diagnosis id and its start, and an escalation or resolution
//! refers to the opening's (`In-Reply-To`, `References`), so that mail
//! clients thread an episode.
//!
//! The session is lettre's SMTP connection driven step by step, each step
//! under its own deadline (`timeout_ms`): connecting (TCP, the greeting and
//! EHLO; the TLS handshake with implicit TLS), STARTTLS with its handshake,
//! AUTH, then MAIL, each RCPT, DATA and the message. lettre's ready-made
//! transport bounds only the TCP connect, and a server that accepts and
//! then stalls must not hold the alerts behind it. TLS is rustls with the
//! system's CAs plus `ca_file`; certificates are always verified.
//!
//! Delivery is the webhook's (`delivery`): a bounded queue filled with
//! `try_send`, retries with backoff on 4xx replies, timeouts and connection
//! errors; 5xx replies, TLS and AUTH failures are final and counted as
//! losses (`observer_email_failed_total`); a rate limit whose overflow is
//! summarized in one message.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lettre::{
    message::{header::ContentType, Mailbox, MultiPart},
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, Certificate, TlsParameters},
        commands::{Data, Mail, Rcpt},
        extension::{ClientId, MailParameter},
    },
    Message,
};
use tokio::sync::mpsc;

use super::{
    delivery::{self, endpoint, verb, Attempt, Backoff, Channel, Counters, RateLimit, Suppressed},
    host_name,
    outputs::{OutputStats, WarnLimiter},
    Record,
};
use crate::{
    config::{AlertStatus, EmailConfig, SmtpTls, StartTls},
    diagnose::record::{DiagnosisRecord, Evidence, Status},
    netns,
};

pub struct EmailSink {
    tx: mpsc::Sender<Box<DiagnosisRecord>>,
    statuses: Vec<AlertStatus>,
    stats: Arc<OutputStats>,
}

fn alert_status(s: Status) -> AlertStatus {
    match s {
        Status::Open => AlertStatus::Open,
        Status::Ongoing => AlertStatus::Ongoing,
        Status::Escalated => AlertStatus::Escalated,
        Status::Resolved => AlertStatus::Resolved,
    }
}

impl EmailSink {
    /// Reads the password and CA files and starts the sender. Fails on
    /// what the admin must fix (a file that cannot be read, a CA file
    /// without certificates); a server that is down is retried.
    pub fn start(
        cfg: &EmailConfig,
        stats: Arc<OutputStats>,
    ) -> anyhow::Result<(EmailSink, tokio::task::JoinHandle<()>)> {
        let mailer = Mailer::new(cfg, stats.clone(), Duration::from_secs(60))?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        let sink = EmailSink { tx, statuses: cfg.statuses.clone(), stats };
        Ok((sink, tokio::spawn(delivery::run(mailer, rx))))
    }

    /// Queues a message for a diagnosis of a chosen status; never waits.
    pub fn offer(&self, record: &Record) {
        let Record::Diagnosis(d) = record else { return };
        if self.statuses.contains(&alert_status(d.diagnosis.status)) && self.tx.try_send(d.clone()).is_err() {
            OutputStats::inc(&self.stats.email_dropped);
        }
    }
}

/// How the connection gets (or does not get) TLS.
enum Security {
    Implicit(TlsParameters),
    StartTls { params: TlsParameters, required: bool },
    Plain,
}

/// One SMTP server, and the steps of one delivery.
struct Smtp {
    server: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
}

/// Why a step failed.
enum StepError {
    Timeout,
    Smtp(lettre::transport::smtp::Error),
}

impl From<lettre::transport::smtp::Error> for StepError {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        StepError::Smtp(e)
    }
}

impl Smtp {
    fn new(cfg: &EmailConfig, host: &str) -> anyhow::Result<Smtp> {
        let tls = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(cfg.server.clone());
            if !cfg.ca_file.as_os_str().is_empty() {
                b = b.add_root_certificate(read_ca(&cfg.ca_file)?);
            }
            b.build().with_context(|| format!("email: TLS for {}", cfg.server))
        };
        let security = match (cfg.tls, cfg.starttls) {
            (SmtpTls::Implicit, _) => Security::Implicit(tls()?),
            (SmtpTls::Starttls, StartTls::Required) => Security::StartTls { params: tls()?, required: true },
            (SmtpTls::Starttls, StartTls::Opportunistic) => Security::StartTls { params: tls()?, required: false },
            (SmtpTls::Starttls, StartTls::Off) => Security::Plain,
        };
        let credentials = if cfg.username.is_empty() {
            None
        } else {
            Some(Credentials::new(cfg.username.clone(), read_password(cfg)?))
        };
        Ok(Smtp {
            server: cfg.server.clone(),
            port: cfg.port(),
            security,
            credentials,
            // RFC 5321 4.1.4: our name if it is one, else an address literal.
            hello: if dot_atom(host) { ClientId::Domain(host.to_owned()) } else { ClientId::default() },
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }

    /// One step under the deadline.
    async fn step<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, (&'static str, StepError)> {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err((what, StepError::Timeout)),
            Ok(r) => r.map_err(|e| (what, StepError::Smtp(e))),
        }
    }

    async fn send(&self, message: &Message) -> Attempt {
        let server = format!("{}:{}", self.server, self.port);
        match self.session(message).await {
            Ok(()) => Attempt::Delivered,
            Err((step, StepError::Timeout)) => {
                Attempt::Retry { after: None, why: format!("{server}: {step}: no answer within {:?}", self.timeout) }
            }
            Err((step, StepError::Smtp(e))) => {
                let why = format!("{server}: {step}: {e}");
                if e.is_permanent() {
                    Attempt::Final(why)
                } else if let Some(tls) = tls_failure(&e) {
                    // A certificate that does not verify will not verify on
                    // the next try either.
                    Attempt::Final(format!("{server}: {step}: TLS: {tls} (is the server's CA in email.ca_file?)"))
                } else if e.is_tls() || e.is_client() {
                    // Our side refuses: no STARTTLS offered while required,
                    // no AUTH mechanism in common, an address the server
                    // cannot take.
                    Attempt::Final(why)
                } else {
                    // 4xx, connection and network errors, a garbled reply.
                    Attempt::Retry { after: None, why }
                }
            }
        }
    }

    async fn session(&self, message: &Message) -> Result<(), (&'static str, StepError)> {
        let implicit = match &self.security {
            Security::Implicit(p) => Some(p.clone()),
            _ => None,
        };
        let addr = (self.server.as_str(), self.port);
        let mut conn = self
            .step(
                "connecting",
                AsyncSmtpConnection::connect_tokio1(addr, Some(self.timeout), &self.hello, implicit, None),
            )
            .await?;
        self.transaction(&mut conn, message).await?;
        let _ = self.step("QUIT", conn.quit()).await;
        // After a failure the connection is dropped (closed) without QUIT:
        // a failed STARTTLS leaves lettre's stream unusable, and writing to
        // it then trips an assertion inside lettre.
        Ok(())
    }

    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> Result<(), (&'static str, StepError)> {
        if let Security::StartTls { params, required } = &self.security {
            if *required || conn.can_starttls() {
                self.step("STARTTLS", conn.starttls(params.clone(), &self.hello)).await?;
            }
        }
        if let Some(c) = &self.credentials {
            self.step("AUTH", conn.auth(&[Mechanism::Plain, Mechanism::Login], c)).await?;
        }
        let envelope = message.envelope();
        let mut params = Vec::new();
        // Non-ASCII addresses need SMTPUTF8 (RFC 6531); a server without it
        // refuses MAIL, which is final.
        if envelope.from().into_iter().chain(envelope.to()).any(|a| !AsRef::<str>::as_ref(a).is_ascii()) {
            params.push(MailParameter::SmtpUtfEight);
        }
        self.step("MAIL FROM", conn.command(Mail::new(envelope.from().cloned(), params))).await?;
        for to in envelope.to() {
            self.step("RCPT TO", conn.command(Rcpt::new(to.clone(), vec![]))).await?;
        }
        self.step("DATA", conn.command(Data)).await?;
        self.step("the message", conn.message(&message.formatted())).await?;
        Ok(())
    }
}

/// The TLS failure behind a lettre error, if there is one: lettre reports
/// a failed handshake as a connection error, with rustls's error inside
/// the I/O error.
fn tls_failure(e: &lettre::transport::smtp::Error) -> Option<String> {
    use std::error::Error as _;
    let mut cur = e.source();
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        let inner = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(t) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = std::fs::read(path).with_context(|| format!("email.ca_file {}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        bail!("email.ca_file {}: no PEM certificate in it", path.display());
    }
    Certificate::from_pem(&pem).with_context(|| format!("email.ca_file {}", path.display()))
}

fn read_password(cfg: &EmailConfig) -> anyhow::Result<String> {
    if cfg.password_file.as_os_str().is_empty() {
        return Ok(cfg.password.clone());
    }
    let path = &cfg.password_file;
    let text = std::fs::read_to_string(path).with_context(|| format!("email.password_file {}", path.display()))?;
    let password = text.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&text);
    if password.is_empty() {
        bail!("email.password_file {}: empty", path.display());
    }
    Ok(password.to_owned())
}

/// A name that can stand in a Message-ID and EHLO: letters, digits, `-`, `.`.
fn dot_atom(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

struct Mailer {
    smtp: Arc<Smtp>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: String,
    html: bool,
    host: String,
    own_netns: Option<u32>,
    policy: Backoff,
    limit: RateLimit,
    suppressed: Suppressed,
    stats: Arc<OutputStats>,
    warn: WarnLimiter,
}

impl Mailer {
    fn new(cfg: &EmailConfig, stats: Arc<OutputStats>, rate_period: Duration) -> anyhow::Result<Mailer> {
        let host = host_name();
        let from = cfg.from.parse().with_context(|| format!("email.from = {:?}", cfg.from))?;
        let to = cfg
            .to
            .iter()
            .map(|t| t.parse().with_context(|| format!("email.to: {t:?}")))
            .collect::<anyhow::Result<Vec<Mailbox>>>()?;
        Ok(Mailer {
            smtp: Arc::new(Smtp::new(cfg, &host)?),
            from,
            to,
            subject_prefix: cfg.subject_prefix.clone(),
            html: cfg.html,
            host,
            own_netns: netns::own(),
            policy: Backoff::from_millis(cfg.max_retries, cfg.backoff_ms, cfg.backoff_max_ms),
            limit: RateLimit::new(cfg.max_per_minute as usize, rate_period),
            suppressed: Suppressed::default(),
            stats,
            warn: WarnLimiter::new("email", Duration::from_secs(60)),
        })
    }

    fn subject(&self, rest: &str) -> String {
        if self.subject_prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{} {rest}", self.subject_prefix)
        }
    }

    fn builder(&self, subject: String) -> lettre::message::MessageBuilder {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .date_now()
            .user_agent(concat!("observer/", env!("CARGO_PKG_VERSION")).to_owned());
        for to in &self.to {
            b = b.to(to.clone());
        }
        b
    }

    fn message_id(&self, d: &DiagnosisRecord, status: Status) -> String {
        let start = d.diagnosis.first_seen.duration_since(std::time::UNIX_EPOCH).map(|t| t.as_millis()).unwrap_or(0);
        let domain = if dot_atom(&self.host) { self.host.as_str() } else { "observer.invalid" };
        format!("<{}.{start}.{}@{domain}>", d.diagnosis.id, status.as_str())
    }

    /// The message of one diagnosis.
    pub fn message(&self, d: &DiagnosisRecord) -> Result<Message, lettre::error::Error> {
        let g = &d.diagnosis;
        let addr = SocketAddr::new(d.destination.ip, d.destination.port);
        let subject = self.subject(&format!("{} {} on {}: {addr}", g.kind, verb(g.status), self.host));
        let mut b = self.builder(subject).message_id(Some(self.message_id(d, g.status)));
        if g.status != Status::Open {
            let opening = self.message_id(d, Status::Open);
            b = b.in_reply_to(opening.clone()).references(opening);
        }
        let why = delivery::why_command(d, self.own_netns);
        let text = text_body(d, &self.host, &why);
        if self.html {
            b.multipart(MultiPart::alternative_plain_html(text, html_body(d, &self.host, &why)))
        } else {
            b.header(ContentType::TEXT_PLAIN).body(text)
        }
    }

    async fn deliver(&mut self, message: &Message) {
        let counters = Counters {
            sent: &self.stats.email_sent,
            failed: &self.stats.email_failed,
            retries: &self.stats.email_retries,
        };
        let smtp = &self.smtp;
        delivery::deliver(&self.policy, &counters, &mut self.warn, "the message", || {
            // Each attempt in a task of its own: a panic inside the SMTP
            // client costs this message, not the channel.
            let (smtp, message) = (smtp.clone(), message.clone());
            async move {
                match tokio::spawn(async move { smtp.send(&message).await }).await {
                    Ok(attempt) => attempt,
                    Err(e) => Attempt::Final(format!("the SMTP client failed: {e}")),
                }
            }
        })
        .await;
    }
}

impl Channel for Mailer {
    async fn alert(&mut self, d: Box<DiagnosisRecord>) {
        let d = &*d;
        if !self.limit.admit(Instant::now()) {
            OutputStats::inc(&self.stats.email_rate_limited);
            self.suppressed.add(d);
            return;
        }
        match self.message(d) {
            Ok(m) => self.deliver(&m).await,
            Err(e) => {
                OutputStats::inc(&self.stats.email_failed);
                self.warn.warn(format_args!("building the message: {e}; the alert is dropped"));
            }
        }
    }

    /// One message that says how many alerts the rate limit held back.
    async fn summarize(&mut self) {
        let n = self.suppressed.count();
        if n == 0 || !self.limit.admit(Instant::now()) {
            return;
        }
        let s = std::mem::take(&mut self.suppressed);
        let subject = self.subject(&format!("{n} more alerts held back on {}", self.host));
        let text = format!(
            "{}\n\nThe diagnoses are in the JSON log and the history: observer summary --since 1h\n",
            s.message(&self.host, self.limit.max)
        );
        match self.builder(subject).message_id(None).header(ContentType::TEXT_PLAIN).body(text) {
            Ok(m) => self.deliver(&m).await,
            Err(e) => {
                OutputStats::inc(&self.stats.email_failed);
                self.warn.warn(format_args!("building the summary: {e}; it is dropped"));
            }
        }
    }
}

/// The evidence worth reading in a message, as (label, value) lines; the
/// whole record is in the log and `observer why`.
fn evidence_lines(e: &Evidence) -> Vec<(&'static str, String)> {
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    };
    let listener = |l: &crate::diagnose::record::ListenerEvidence| {
        let mut s = format!("{} backlog {}, queue {}", SocketAddr::new(l.address, l.port), l.backlog, l.queue);
        if let (Some(name), Some(pid)) = (&l.name, l.pid) {
            s.push_str(&format!(", {name} (pid {pid})"));
        }
        s
    };
    let mut out = Vec::new();
    if !e.actions.is_empty() {
        out.push(("actions", counts(&e.actions)));
    }
    if !e.reasons.is_empty() {
        out.push(("reasons", counts(&e.reasons)));
    }
    if !e.sample_clients.is_empty() {
        let c: Vec<String> = e.sample_clients.iter().map(|ip| ip.to_string()).collect();
        out.push(("sample clients", c.join(", ")));
    }
    if let Some(l) = &e.listener {
        out.push(("listener", listener(l)));
    }
    for l in &e.other_listeners {
        out.push(("other listener", listener(l)));
    }
    if let Some(p) = &e.previous_listener {
        out.push((
            "previous listener",
            format!(
                "{}, last seen {}, gone by {}",
                listener(&p.listener),
                humantime::format_rfc3339_seconds(p.last_seen),
                humantime::format_rfc3339_seconds(p.gone_by)
            ),
        ));
    }
    if let Some(q) = &e.queue_seen {
        out.push(("queue seen", format!("backlog {}, longest queue {}", q.backlog, q.max_queue_len)));
    }
    if let Some(r) = &e.firewall_rule {
        let handle = r.handle.map(|h| format!(" (handle {h})")).unwrap_or_default();
        out.push(("firewall rule", format!("{} {} {}{handle}: {}", r.family, r.table, r.chain, r.rule)));
    }
    if !e.sysctls.is_empty() {
        let s: Vec<String> = e.sysctls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(("sysctls", s.join(", ")));
    }
    if !e.processes.is_empty() {
        let p: Vec<String> = e.processes.iter().map(|p| format!("{} (pid {})", p.name, p.pid)).collect();
        out.push(("processes", p.join(", ")));
    }
    if !e.ports.is_empty() {
        let p: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        out.push(("ports probed", p.join(", ")));
    }
    for u in &e.unavailable {
        out.push(("not read", u.clone()));
    }
    out
}

/// The facts under the summary, as (label, value).
fn fact_lines(d: &DiagnosisRecord, host: &str) -> Vec<(&'static str, String)> {
    let g = &d.diagnosis;
    let mut out = vec![("Host", host.to_owned()), ("Endpoint", endpoint(d))];
    if let Some(p) = &d.process {
        out.push(("Process", format!("{} (pid {})", p.name, p.pid)));
    }
    if let Some(s) = &d.source {
        out.push(("Source", s.ip.to_string()));
    }
    out.extend([
        ("Failures", format!("{} from {} client(s)", g.count, g.clients)),
        ("First seen", humantime::format_rfc3339_millis(g.first_seen).to_string()),
        ("Last seen", humantime::format_rfc3339_seconds(g.last_seen).to_string()),
        ("Diagnosis", format!("{}, id {}, {}", g.kind, g.id, g.status.as_str())),
    ]);
    out
}

/// The plain-text body.
pub fn text_body(d: &DiagnosisRecord, host: &str, why: &str) -> String {
    let g = &d.diagnosis;
    let mut s = format!(
        "observer on {host}: {} {} on port {}\n\n{}\n\n",
        g.kind,
        verb(g.status),
        d.destination.port,
        g.summary
    );
    for (k, v) in fact_lines(d, host) {
        s.push_str(&format!("{:<12}{v}\n", format!("{k}:")));
    }
    if !g.advice.is_empty() {
        s.push_str("\nWhat to do:\n");
        for a in &g.advice {
            s.push_str(&format!("  - {a}\n"));
        }
    }
    let evidence = evidence_lines(&g.evidence);
    if !evidence.is_empty() {
        s.push_str("\nEvidence:\n");
        for (k, v) in evidence {
            s.push_str(&format!("  {:<19}{v}\n", format!("{k}:")));
        }
    }
    s.push_str(&format!("\nMore, on {host}: {why}\n"));
    s
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML alternative: the same content, every text escaped.
pub fn html_body(d: &DiagnosisRecord, host: &str, why: &str) -> String {
    let g = &d.diagnosis;
    let e = html_escape;
    let rows = |lines: Vec<(&'static str, String)>| {
        lines
            .iter()
            .map(|(k, v)| format!("<tr><th align=\"left\">{}</th><td>{}</td></tr>", e(k), e(v)))
            .collect::<String>()
    };
    let mut s = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\
         <h2>{} {} on {}</h2><p>{}</p><table>{}</table>",
        e(&format!("{} {} on {host}", g.kind, verb(g.status))),
        e(g.kind.as_str()),
        verb(g.status),
        e(host),
        e(&g.summary),
        rows(fact_lines(d, host))
    );
    if !g.advice.is_empty() {
        s.push_str("<h3>What to do</h3><ul>");
        for a in &g.advice {
            s.push_str(&format!("<li>{}</li>", e(a)));
        }
        s.push_str("</ul>");
    }
    let evidence = evidence_lines(&g.evidence);
    if !evidence.is_empty() {
        s.push_str(&format!("<h3>Evidence</h3><table>{}</table>", rows(evidence)));
    }
    s.push_str(&format!("<p>More, on {}: <code>{}</code></p></body></html>\n", e(host), e(why)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chat's fixed diagnosis, with plainer text and more evidence.
    fn diagnosis() -> DiagnosisRecord {
        let mut d = crate::sink::chat::tests::diagnosis();
        d.diagnosis.summary = "Nothing listens on port 8080 since <web> stopped.".into();
        d.diagnosis.advice = vec!["Start web again.".into()];
        d.diagnosis.evidence = serde_json::from_value(serde_json::json!({
            "actions": { "refused": 6 }, "reasons": { "NO_SOCKET": 6 }, "sample_clients": ["10.0.0.2"],
            "previous_listener": { "address": "0.0.0.0", "port": 8080, "backlog": 511, "queue": 0,
                "pid": 7, "name": "web", "last_seen": "2026-01-01T00:00:00Z", "gone_by": "2026-01-01T00:00:01Z" },
            "unavailable": ["nftables ruleset: nft: not found"]
        }))
        .unwrap();
        d
    }

    #[test]
    fn the_text_body_of_a_fixed_diagnosis() {
        let text = text_body(&diagnosis(), "web-1", "observer why 8080");
        let expected = "\
observer on web-1: no_listener opened on port 8080

Nothing listens on port 8080 since <web> stopped.

Host:       web-1
Endpoint:   10.0.0.1:8080 (inbound, netns 4026531840)
Failures:   6 from 1 client(s)
First seen: 2026-01-01T00:00:00.250Z
Last seen:  2026-01-01T00:00:05Z
Diagnosis:  no_listener, id a41c0a3c2e8f1b77, open

What to do:
  - Start web again.

Evidence:
  actions:           refused 6
  reasons:           NO_SOCKET 6
  sample clients:    10.0.0.2
  previous listener: 0.0.0.0:8080 backlog 511, queue 0, web (pid 7), last seen 2026-01-01T00:00:00Z, gone by 2026-01-01T00:00:01Z
  not read:          nftables ruleset: nft: not found

More, on web-1: observer why 8080
";
        assert_eq!(text, expected, "{text}");
    }

    #[test]
    fn the_html_body_escapes_every_text() {
        let html = html_body(&diagnosis(), "web-1", "observer why 8080");
        assert!(html.contains("<p>Nothing listens on port 8080 since &lt;web&gt; stopped.</p>"), "{html}");
        assert!(html.contains("<li>Start web again.</li>"), "{html}");
        assert!(html.contains("<code>observer why 8080</code>"), "{html}");
        assert!(!html.contains("<web>"), "{html}");
    }

    fn mailer(cfg: &EmailConfig) -> Mailer {
        let mut m = Mailer::new(cfg, Arc::new(OutputStats::default()), Duration::from_secs(60)).unwrap();
        m.host = "web-1".into();
        m.own_netns = Some(4026531840);
        m
    }

    fn config() -> EmailConfig {
        EmailConfig {
            enabled: true,
            server: "127.0.0.1".into(),
            from: "observer <observer@example.com>".into(),
            to: vec!["oncall@example.com".into(), "Ops <ops@example.com>".into()],
            ..EmailConfig::default()
        }
    }

    #[test]
    fn the_message_has_its_headers_and_threads_an_episode() {
        let m = mailer(&config());
        let mut d = diagnosis();
        let open = String::from_utf8(m.message(&d).unwrap().formatted()).unwrap();
        assert!(open.contains("From: observer <observer@example.com>\r\n"), "{open}");
        assert!(open.contains("To: oncall@example.com, Ops <ops@example.com>\r\n"), "{open}");
        assert!(open.contains("Subject: [observer] no_listener opened on web-1: 10.0.0.1:8080\r\n"), "{open}");
        assert!(open.contains("Message-ID: <a41c0a3c2e8f1b77.1767225600250.open@web-1>\r\n"), "{open}");
        assert!(open.contains("multipart/alternative"), "{open}");
        assert!(!open.contains("In-Reply-To"), "{open}");
        d.diagnosis.status = Status::Escalated;
        let escalated = String::from_utf8(m.message(&d).unwrap().formatted()).unwrap();
        assert!(escalated.contains("Message-ID: <a41c0a3c2e8f1b77.1767225600250.escalated@web-1>\r\n"));
        assert!(escalated.contains("In-Reply-To: <a41c0a3c2e8f1b77.1767225600250.open@web-1>\r\n"), "{escalated}");
        let plain = mailer(&EmailConfig { html: false, subject_prefix: String::new(), ..config() });
        let text = String::from_utf8(plain.message(&d).unwrap().formatted()).unwrap();
        assert!(text.contains("Subject: no_listener escalated on web-1: 10.0.0.1:8080\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
        assert_eq!(m.message(&d).unwrap().envelope().to().len(), 2);
    }

    #[test]
    fn only_the_chosen_statuses_are_queued() {
        let (tx, mut rx) = mpsc::channel(4);
        let stats = Arc::new(OutputStats::default());
        let sink = EmailSink { tx, statuses: vec![AlertStatus::Open, AlertStatus::Resolved], stats };
        for status in [Status::Open, Status::Ongoing, Status::Escalated, Status::Resolved] {
            let mut d = diagnosis();
            d.diagnosis.status = status;
            sink.offer(&Record::Diagnosis(Box::new(d)));
        }
        let queued: Vec<Status> = std::iter::from_fn(|| rx.try_recv().ok()).map(|d| d.diagnosis.status).collect();
        assert_eq!(queued, [Status::Open, Status::Resolved]);
    }

    #[test]
    fn unreadable_or_empty_files_stop_the_start_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let stats = || Arc::new(OutputStats::default());
        let missing = EmailConfig { ca_file: dir.path().join("nope.pem"), ..config() };
        let err = Mailer::new(&missing, stats(), Duration::from_secs(60)).err().unwrap();
        assert!(format!("{err:#}").starts_with("email.ca_file"), "{err:#}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err =
            Mailer::new(&EmailConfig { ca_file: empty, ..config() }, stats(), Duration::from_secs(60)).err().unwrap();
        assert!(format!("{err:#}").contains("no PEM certificate"), "{err:#}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let cfg = EmailConfig { username: "u".into(), password_file: pw.clone(), ..config() };
        assert_eq!(read_password(&cfg).unwrap(), "s3cret");
        std::fs::write(&pw, "\n").unwrap();
        assert!(read_password(&cfg).is_err());
    }
}
