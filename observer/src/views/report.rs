//! `observer report`: the patterns in the history as one self-contained
//! HTML page: failures by kind over time against the load they came under,
//! the hours and weekdays they happen, the diagnoses that come back, and
//! the endpoints that fail most.
//!
//! Why one static file: an admin mails it, attaches it to a ticket or
//! opens it from a jump host, where no server runs and scripts and remote
//! fonts are blocked. So it has no script, no external font, image or style
//! sheet: inline CSS, inline SVG drawn here (`svg`), system fonts, and the
//! browser's own tooltips (`<title>`). It reads the same printed.
//!
//! Why maud: the page is built by a compile-time-checked template (a typo
//! in the markup is a build error) that escapes every value it is given.
//! Escaping matters here: process names come from /proc (any process can
//! name itself `<script>`), and diagnosis summaries quote them.
//!
//! Every number comes from a query over the history (`data`); the elements
//! that carry them have `id`s and `data-*` attributes, so that a test (or a
//! script an admin writes) can read them back.

mod data;
mod svg;

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use observer_common::Action;

use self::data::{Data, Period};
use crate::{
    diagnose::record::Kind,
    event::Direction,
    history::{ms, Reader},
};

/// The report of the `since` before `now`, as HTML.
pub fn render(reader: &Reader, since: Duration, now: SystemTime) -> anyhow::Result<String> {
    let to = ms(now);
    let from = to - i64::try_from(since.as_millis()).unwrap_or(i64::MAX / 2).min(to);
    let conn = reader.connection();
    // The report reads the period several times over (totals, buckets,
    // heat map, endpoints): mapped, the file's pages are read without a
    // system call each, which halves the time on a history at its size
    // cap. Safe against the daemon's truncation (incremental vacuum): it
    // needs the write lock, which waits for each read transaction to end,
    // and SQLite maps the file anew at the next.
    conn.pragma_update(None, "mmap_size", 256i64 << 20).context("reading the history")?;
    let data = Data::read(conn, Period::new(from, to)).context("reading the history")?;
    Ok(page(&data, &host_name(), since, to).into_string())
}

/// Writes the report to `out` (created 0640: it holds what the history
/// holds, which is 0640 too), or to stdout.
pub fn write(html: &str, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        None => std::io::stdout().lock().write_all(html.as_bytes()).context("writing the report to stdout"),
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(html.as_bytes()).with_context(|| format!("writing {}", path.display()))
        }
    }
}

fn host_name() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "this host".to_owned())
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bucket width or a period for people: `1 h`, `15 min`, `7 days`.
pub fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s % 86_400 == 0 && s >= 86_400 => {
            let d = s / 86_400;
            if d == 1 {
                "1 day".to_owned()
            } else {
                format!("{d} days")
            }
        }
        s if s % 3600 == 0 && s >= 3600 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A UTC time broken down (the proleptic Gregorian calendar, from days
/// since the epoch: Howard Hinnant's `civil_from_days`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0 = Monday.
    pub weekday: usize,
}

pub fn utc(ms: i64) -> Utc {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    Utc { year, month, day, hour: (rem / 3600) as u32, minute: (rem % 3600 / 60) as u32, weekday }
}

impl Utc {
    pub fn full(&self) -> String {
        format!("{}-{:02}-{:02} {:02}:{:02}", self.year, self.month, self.day, self.hour, self.minute)
    }
    pub fn hm(&self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }
    pub fn day_label(&self) -> String {
        format!("{} {:02}-{:02}", svg::WEEKDAYS[self.weekday], self.month, self.day)
    }
    /// `Tue 09:14`, for when an episode began.
    pub fn when(&self) -> String {
        format!("{} {:02}-{:02} {:02}:{:02}", svg::WEEKDAYS[self.weekday], self.month, self.day, self.hour, self.minute)
    }
}

fn endpoint(ip: &str, port: u16) -> String {
    match ip.parse::<IpAddr>() {
        Ok(ip) => crate::diagnose::explain::endpoint(ip, port),
        Err(_) => format!("{ip}:{port}"),
    }
}

pub fn listener_name(netns: u32, address: &str, port: u16) -> String {
    format!("{} (netns {netns})", endpoint(address, port))
}

/// The colour of an action in the failure charts (colour-blind safe
/// Tableau 10, in the order of `Action::ALL`).
fn action_color(a: Action) -> &'static str {
    match a {
        Action::Refused => "#4e79a7",
        Action::ResetSent => "#f28e2b",
        Action::ResetReceived => "#edc948",
        Action::ListenOverflow => "#e15759",
        Action::SynQueueOverflow => "#b07aa1",
        Action::FirewallDrop => "#76b7b2",
        Action::FirewallReject => "#59a14f",
        Action::SynackRetransmit => "#ff9da7",
        Action::ConnectFailed => "#9c755f",
    }
}

/// What an action means, for the legend.
fn action_meaning(a: Action) -> &'static str {
    match a {
        Action::Refused => "a SYN to a port nothing listens on (answered with RST)",
        Action::ResetSent => "this host reset a connection",
        Action::ResetReceived => "a peer reset a connection of this host",
        Action::ListenOverflow => "the listener's accept queue was full",
        Action::SynQueueOverflow => "the listener's SYN queue was full",
        Action::FirewallDrop => "netfilter dropped a SYN",
        Action::FirewallReject => "netfilter rejected a SYN",
        Action::SynackRetransmit => "the client's final ACK did not arrive",
        Action::ConnectFailed => "an outbound connect() failed",
    }
}

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #111827;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 4px; }
p.lead { margin: 0 0 14px; color: #4b5563; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 16px 18px; margin: 0 0 16px; }
section > p.note { color: #4b5563; margin: 2px 0 10px; }
dl.totals { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; margin: 12px 0 0; }
dl.totals div { background: #f9fafb; border: 1px solid #eef0f3; border-radius: 6px; padding: 8px 10px; }
dl.totals dt { font-size: 12px; color: #4b5563; }
dl.totals dd { margin: 2px 0 0; font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
dl.totals dd small { font-size: 12px; font-weight: 400; color: #4b5563; }
svg.chart { display: block; width: 100%; height: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eef0f3; vertical-align: middle; }
th { font-size: 12px; color: #4b5563; font-weight: 600; background: #f9fafb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fcfcfd; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; margin-right: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 6px 0 0; padding: 0; list-style: none; font-size: 13px; }
.muted { color: #6b7280; }
.summary { color: #374151; font-size: 13px; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; background: #f3f4f6; padding: 1px 4px; border-radius: 3px; }
footer { color: #6b7280; font-size: 12px; }
@media print { body { background: #fff; } section { break-inside: avoid; border-color: #ccc; } }
"#;

fn page(d: &Data, host: &str, since: Duration, generated: i64) -> Markup {
    let p = d.period;
    let t = &d.totals;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "observer report: " (host) ", " (utc(p.from).full()) " to " (utc(p.to).full()) " UTC" }
                style { (PreEscaped(CSS)) }
            }
            body {
                main {
                    (header(d, host, since, generated))
                    (failures(d))
                    (load(d))
                    (heat(d))
                    (diagnoses(d))
                    (recurring(d))
                    (endpoints(d))
                    footer {
                        p {
                            "Made by observer " (env!("CARGO_PKG_VERSION")) " from its history, "
                            (utc(generated).full()) " UTC. Every number is a query over the history: "
                            "failures are kernel occurrences (" code { "event.count" } " summed, reconciliation "
                            "records included); accepted connections are handshakes the kernel completed for a "
                            "listener (" code { "TcpPassiveOpens" } "), per network namespace; queue depths are "
                            "what the listeners' accept queues held at the daemon's polls. "
                            (thousands(t.records)) " failure records and " (thousands(t.load_rows))
                            " load rows in the period."
                        }
                    }
                }
            }
        }
    }
}

fn header(d: &Data, host: &str, since: Duration, generated: i64) -> Markup {
    let p = d.period;
    let t = &d.totals;
    let per_thousand = (t.accepted > 0).then(|| t.inbound as f64 * 1000.0 / t.accepted as f64);
    html! {
        section id="summary" data-from=(p.from) data-to=(p.to) data-bucket-ms=(p.width) data-generated=(generated) {
            h1 { "Connection failures on " span id="host" { (host) } }
            p.lead {
                "From " strong { (utc(p.from).full()) } " to " strong { (utc(p.to).full()) } " UTC ("
                (duration(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))) "); charts in " (duration(p.width)) " steps."
            }
            dl.totals {
                div { dt { "Failures" } dd id="total-failures" { (thousands(t.failures)) } }
                div { dt { "Inbound / outbound" } dd {
                    span id="total-inbound" { (thousands(t.inbound)) } small { " / " }
                    span id="total-outbound" { (thousands(t.outbound)) }
                } }
                div { dt { "Failing endpoints" } dd id="total-endpoints" { (thousands(t.endpoints)) } }
                div { dt { "Diagnosis episodes" } dd id="total-episodes" { (thousands(t.episodes)) } }
                div { dt { "Recurring diagnoses" } dd id="total-recurring" { (thousands(t.recurring)) } }
                div { dt { "Accepted connections" } dd id="total-accepted" { (thousands(t.accepted)) } }
                div { dt { "Outbound connects" } dd id="total-connects" { (thousands(t.connects)) } }
                div { dt { "Inbound failures per 1,000 accepted" } dd id="failures-per-thousand" {
                    @match per_thousand { Some(r) => (format!("{r:.1}")), None => "-" }
                } }
                div { dt { "Deepest accept queue" }
                    @match &t.peak_queue {
                        Some(q) => dd id="peak-queue" title=(format!("netns {}, {} UTC", q.netns, utc(q.at).full())) {
                            (q.queue) small { " of " (q.backlog) " on " (endpoint(&q.address, q.port)) }
                        },
                        None => dd id="peak-queue" { "-" },
                    }
                }
                div { dt { "Failure records" } dd id="total-records" { (thousands(t.records)) } }
            }
            @if t.load_rows == 0 {
                p.note {
                    "No load history in this period: the daemon writes it every "
                    code { "enrich.load_interval_secs" } " (a history from before that, or it is 0)."
                }
            }
        }
    }
}

fn failures(d: &Data) -> Markup {
    let series: Vec<svg::Series<'_>> = d
        .actions
        .iter()
        .map(|a| svg::Series { label: a.action.as_str().to_owned(), color: action_color(a.action), values: &a.values })
        .collect();
    let body = (!d.actions.is_empty()).then(|| {
        html! {
        (svg::stacked("chart-failures", "Failures by kind over time", d.period, &series, "failures"))
        table id="by-action" {
            thead { tr { th { "action" } th { "what happened" } th.num { "failures" } th.num { "share" } } }
            tbody {
                @for a in &d.actions {
                    tr data-action=(a.action.as_str()) {
                        td { span.swatch style=(format!("background:{}", action_color(a.action))) {} (a.action.as_str()) }
                        td.muted { (action_meaning(a.action)) }
                        td.num.count { (thousands(a.total)) }
                        td.num { (format!("{:.1}%", a.total as f64 * 100.0 / d.totals.failures.max(1) as f64)) }
                    }
                }
            }
        }
        }
    });
    section(
        "failures",
        "Failures by kind over time",
        html! { "Kernel occurrences per " (duration(d.period.width)) ", stacked by " code { "event.action" } "." },
        body,
        "No failures in this period.",
    )
}

fn load(d: &Data) -> Markup {
    html! {
        section id="load" {
            h2 { "Load: connections accepted and opened" }
            p.note {
                "Per " (duration(d.period.width)) ", all network namespaces: handshakes the kernel completed for "
                "this host's listeners (accepted) and connects this host started (outbound). Set against the "
                "failures above: failures that grow with the load are capacity; failures without load are "
                "configuration."
            }
            (svg::load("chart-load", "Accepted connections and outbound connects over time", d.period, &d.accepted, &d.connects))
            ul.legend {
                li { span.swatch style=(format!("background:{}", svg::ACCEPTED)) {} "accepted " strong { (thousands(d.totals.accepted)) } }
                li { span.swatch style=(format!("background:{}", svg::CONNECTS)) {} "outbound connects (dashed) " strong { (thousands(d.totals.connects)) } }
            }
            h2 style="margin-top:14px" { "Accept queue depth" }
            p.note {
                "The deepest accept queue seen at a poll per " (duration(d.period.width))
                ", for the listeners whose queues went deepest. A queue that reaches its backlog drops connections ("
                code { "listen_overflow" } ")."
            }
            @if d.queues.is_empty() {
                p.muted id="no-queues" { "No listener had connections waiting in its accept queue at a poll in this period." }
            } @else {
                (svg::queues("chart-queues", "Accept queue depth over time", d.period, &d.queues))
                ul.legend {
                    @for (q, color) in d.queues.iter().zip(svg::QUEUE_COLORS) {
                        li data-listener=(listener_name(q.netns, &q.address, q.port)) {
                            span.swatch style=(format!("background:{color}")) {}
                            (listener_name(q.netns, &q.address, q.port)) ": deepest " strong { (q.peak) }
                            " of backlog " (q.backlog)
                        }
                    }
                }
            }
        }
    }
}

fn heat(d: &Data) -> Markup {
    let mut cells: Vec<(u64, usize, usize)> = Vec::new();
    for (day, row) in d.heat.iter().enumerate() {
        for (hour, n) in row.iter().enumerate() {
            if *n > 0 {
                cells.push((*n, day, hour));
            }
        }
    }
    cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    html! {
        section id="heat" {
            h2 { "When failures happen: hour of day by weekday" }
            p.note { "Failures of the whole period, by the weekday and hour (UTC) they happened in." }
            (svg::heatmap("chart-heat", "Failures by hour of day and weekday", &d.heat))
            @if !cells.is_empty() {
                p id="peak-hours" {
                    "Busiest hours: "
                    @for (i, (n, day, hour)) in cells.iter().take(3).enumerate() {
                        @if i > 0 { ", " }
                        strong { (svg::WEEKDAYS[*day]) " " (format!("{hour:02}:00")) } " (" (thousands(*n)) ")"
                    }
                    "."
                }
            }
        }
    }
}

fn diagnoses(d: &Data) -> Markup {
    let kinds: Vec<Kind> = d.kinds.iter().map(|k| k.kind).collect();
    let body = (!d.kinds.is_empty()).then(|| {
        html! {
            (svg::timeline("chart-diagnoses", "Diagnosis episodes over time", d.period, &kinds, &d.episodes))
            table id="by-kind" {
                thead { tr {
                    th { "kind" } th.num { "episodes" } th.num { "failures" } th.num { "endpoints" }
                    th { "first" } th { "last" }
                } }
                tbody {
                    @for k in &d.kinds {
                        tr data-kind=(k.kind.as_str()) {
                            td { span.swatch style=(format!("background:{}", svg::kind_color(k.kind))) {} (k.kind.as_str()) }
                            td.num.episodes { (thousands(k.episodes)) }
                            td.num.count { (thousands(k.failures)) }
                            td.num { (thousands(k.ids)) }
                            td { (utc(k.first).full()) }
                            td { (utc(k.last).full()) }
                        }
                    }
                }
            }
        }
    });
    let note = "Episodes that overlap the period: a diagnosis opens when failures at one endpoint add up and is \
                resolved after a quiet period.";
    section("diagnoses", "Diagnoses by kind", html! { (note) }, body, "No diagnosis in this period.")
}

/// A section of the page: its title, a note on what it shows, and its
/// charts and tables, or a line saying the period had nothing for it.
fn section(id: &str, title: &str, note: Markup, body: Option<Markup>, empty: &str) -> Markup {
    html! {
        section id=(id) {
            h2 { (title) }
            p.note { (note) }
            @match body {
                Some(body) => (body),
                None => p.muted { (empty) },
            }
        }
    }
}

/// A table cell's process: its name and pid, or a dash.
fn process(p: Option<(&str, u32)>) -> Markup {
    html! {
        @match p {
            Some((name, pid)) => { (name) " " span.muted { "(" (pid) ")" } }
            None => span.muted { "-" },
        }
    }
}

fn recurring(d: &Data) -> Markup {
    let body = (!d.recurring.is_empty()).then(|| {
        html! {
        table id="recurring-table" {
            thead { tr {
                th { "kind" } th { "endpoint" } th { "process" } th.num { "episodes" } th.num { "failures" }
                th { "when (UTC)" } th { "episodes over the period" }
            } }
            tbody {
                @for r in &d.recurring {
                    @let failures: u64 = r.episodes.iter().map(|e| e.count).sum();
                    @let ip = r.latest.as_ref().map(|l| l.destination.ip.to_string()).unwrap_or_default();
                    tr data-id=(r.id) data-kind=(r.kind.as_str()) {
                        td { (r.kind.as_str()) br; span.muted { code { (r.id) } } }
                        td { (if r.kind == Kind::PortScan { "(many ports)".to_owned() } else { endpoint(&ip, r.port) }) br;
                             span.muted { "netns " (r.netns) } }
                        td { (process(r.latest.as_ref().and_then(|l| l.process.as_ref()).map(|p| (p.name.as_str(), p.pid)))) }
                        td.num.episodes { (r.episodes.len()) }
                        td.num.count { (thousands(failures)) }
                        td.summary {
                            @for (i, e) in r.episodes.iter().take(8).enumerate() {
                                @if i > 0 { ", " }
                                (utc(e.first).when())
                            }
                            @if r.episodes.len() > 8 { ", and " (r.episodes.len() - 8) " more" }
                            @if let Some(l) = &r.latest { br; span.muted { (l.diagnosis.summary) } }
                        }
                        td { (svg::strip(d.period, &r.episodes, svg::kind_color(r.kind))) }
                    }
                }
            }
        }
        }
    });
    section(
        "recurring",
        "Recurring diagnoses",
        html! { "The same diagnosis (same kind, namespace and endpoint, so the same id) opened again after it was resolved: a problem that comes back." },
        body,
        "No diagnosis came back in this period.",
    )
}

fn endpoints(d: &Data) -> Markup {
    let body = (!d.endpoints.is_empty()).then(|| {
        html! {
        table id="endpoints-table" {
            thead { tr {
                th { "endpoint" } th { "direction" } th.num { "netns" } th { "process" } th.num { "failures" }
                th { "by action" } th.num { "deepest queue" } th.num { "accepted in netns" } th { "over the period" }
            } }
            tbody {
                @for e in &d.endpoints {
                    @let color = e.actions.first().map(|(a, _)| action_color(*a)).unwrap_or("#6b7280");
                    tr data-netns=(e.netns) data-port=(e.port) data-ip=(e.ip) data-direction=(e.direction.as_str()) {
                        td { code { (if e.port == 0 && data::unspecified(&e.ip) { "(scan)".to_owned() } else { endpoint(&e.ip, e.port) }) } }
                        td { (match e.direction { Direction::Inbound => "inbound", Direction::Outbound => "outbound" }) }
                        td.num { (e.netns) }
                        td { (process(e.process.as_ref().map(|(name, pid)| (name.as_str(), *pid)))) }
                        td.num.count { (thousands(e.failures)) }
                        td.summary {
                            @for (i, (a, n)) in e.actions.iter().enumerate() {
                                @if i > 0 { ", " }
                                span.swatch style=(format!("background:{}", action_color(*a))) {}
                                (a.as_str()) " " (thousands(*n))
                            }
                        }
                        td.num { @match e.peak_queue {
                            Some((q, b)) => { (q) span.muted { " / " (b) } }
                            None => span.muted { "-" },
                        } }
                        td.num { (thousands(e.accepted)) }
                        td { (svg::spark(&e.values, color)) }
                    }
                }
            }
        }
        }
    });
    section(
        "endpoints",
        "Top endpoints by failures",
        html! { "The local endpoint for inbound failures, the remote server for outbound ones; the process from its diagnoses (or, outbound, its events)." },
        body,
        "No failures in this period.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_history_is_a_page_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::history::Store::open(dir.path(), &crate::config::HistoryConfig::default(), "").unwrap());
        let reader = Reader::open(dir.path()).unwrap();
        let html = render(&reader, Duration::from_secs(3600), SystemTime::now()).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert!(html.contains("No failures in this period.") && html.contains("No load history in this period"));
        assert!(html.contains(r#"<dd id="total-failures">0</dd>"#), "{html}");
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn calendar_and_weekday_in_utc() {
        let at = |s| ms(humantime::parse_rfc3339(s).unwrap());
        let u = utc(at("2026-11-30T09:05:00Z"));
        assert_eq!((u.year, u.month, u.day, u.hour, u.minute, u.weekday), (2026, 11, 30, 9, 5, 0), "a Monday");
        assert_eq!(utc(at("2024-02-29T23:59:59Z")).full(), "2024-02-29 23:59");
        assert_eq!(utc(0).weekday, 3, "1970-01-01 was a Thursday");
        assert_eq!(utc(at("2026-12-06T00:00:00Z")).day_label(), "Sun 12-06");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(900_000), "15 min");
        assert_eq!(duration(604_800_000), "7 days");
        assert_eq!(duration(86_400_000), "1 day");
    }
}
