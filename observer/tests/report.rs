//! `observer report` on the real pieces: a week of history written through
//! the daemon's own history writer with chosen timestamps and known counts,
//! the page rendered by the real binary, its numbers read back from the
//! HTML and checked against the SQLite file and against the counts the test
//! wrote, and the page drawn by a real headless Chromium whose screenshot
//! must show the charts. And the load history of a real daemon: the
//! connections a listener's namespace accepted and its accept queue, equal
//! to the kernel's own counters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{Daemon, Netns};
use observer::{
    config::HistoryConfig,
    enrich::load::{ListenerLoad, LoadSample, NetnsLoad},
    history::{Store, Writer},
    sink::Record,
    stats::Stats,
};
use scraper::{Html, Selector};

const H: i64 = 3_600_000;
const NS1: u32 = 4_000_000_001;
const NS2: u32 = 4_000_000_002;
const NO_LISTENER: &str = "1111aaaa2222bbbb";
const QUEUE_FULL: &str = "3333cccc4444dddd";
const OUTBOUND: &str = "5555eeee6666ffff";
/// A process name with markup in it (any process can call itself that):
/// the page must show it as text.
const SNEAKY: &str = "<i>api</i>";
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn hour_of_day(ms: i64) -> i64 {
    ms.div_euclid(H).rem_euclid(24)
}

/// 0 = Monday (1970-01-01 was a Thursday).
fn weekday(ms: i64) -> usize {
    (ms.div_euclid(24 * H) + 3).rem_euclid(7) as usize
}

/// One failure row the test wrote, to compute the expected numbers from.
struct Wrote {
    ts: i64,
    netns: u32,
    action: &'static str,
    outbound: bool,
    ip: &'static str,
    port: u16,
    count: u64,
}

fn failure(w: &Wrote, process: Option<(&str, u32)>) -> Record {
    let mut v = serde_json::json!({
        "@timestamp": humantime::format_rfc3339_micros(at(w.ts)).to_string(),
        "event": {"dataset": "observer.failure", "action": w.action, "count": w.count, "kind": "event",
                  "category": ["network"], "outcome": "failure"},
        "source": {"ip": if w.outbound { "10.1.0.1" } else { "192.0.2.7" }, "port": 40000},
        "destination": {"ip": w.ip, "port": w.port},
        "network": {"transport": "tcp", "type": "ipv4"},
        "observer": {"netns": w.netns, "direction": if w.outbound { "outbound" } else { "inbound" }},
    });
    if w.count > 1 {
        v["event"]["reconciled"] = true.into();
    }
    if let Some((name, pid)) = process {
        v["process"] = serde_json::json!({"pid": pid, "name": name});
    }
    Record::Failure(serde_json::from_value(v).unwrap())
}

#[allow(clippy::too_many_arguments)]
fn diagnosis(
    id: &str,
    kind: &str,
    action: &str,
    netns: u32,
    ip: &str,
    port: u16,
    first: i64,
    last: i64,
    count: u64,
    process: Option<(&str, u32)>,
) -> Record {
    let outbound = kind.starts_with("outbound");
    let mut v = serde_json::json!({
        "@timestamp": humantime::format_rfc3339_seconds(at(last)).to_string(),
        "event": {"dataset": "observer.diagnosis", "kind": "alert", "category": ["network"]},
        "diagnosis": {"kind": kind, "id": id, "status": "resolved",
                      "summary": format!("{kind} on port {port}: {count} failures."), "advice": [],
                      "evidence": {"actions": {action: count}, "sample_clients": []},
                      "first_seen": humantime::format_rfc3339_millis(at(first)).to_string(),
                      "last_seen": humantime::format_rfc3339_seconds(at(last)).to_string(),
                      "count": count, "clients": 1},
        "destination": {"ip": ip, "port": port},
        "network": {"transport": "tcp", "type": "ipv4"},
        "observer": {"netns": netns, "direction": if outbound { "outbound" } else { "inbound" }},
    });
    if let Some((name, pid)) = process {
        v["process"] = serde_json::json!({"pid": pid, "name": name});
    }
    Record::Diagnosis(Box::new(serde_json::from_value(v).unwrap()))
}

/// What the test wrote, for the expected numbers.
#[derive(Default)]
struct Week {
    failures: Vec<Wrote>,
    accepted: u64,
    episodes: BTreeMap<&'static str, usize>,
}

/// A week of history with known counts: refused bursts every morning
/// (09-12 UTC), accept-queue overflows every afternoon (14-16) while the
/// listener's queue is at its backlog, outbound connects failing every
/// eight hours, firewall drops at 02:00 on weekends; the matching
/// diagnoses (two of them recurring daily) and the load, every ten minutes.
fn write_week(state: &Path, now: i64) -> Week {
    let store = Store::open(state, &HistoryConfig::default(), "").unwrap();
    let stats = Arc::new(Stats::default());
    let writer = Writer::start(store, stats.clone(), 1_000_000);
    let loads = writer.loads();
    let start = (now - 7 * 24 * H + H).div_euclid(H) * H + H;
    let mut week = Week::default();
    let mut day_refused: BTreeMap<i64, (i64, i64, u64)> = BTreeMap::new();
    let mut day_overflow: BTreeMap<i64, (i64, i64, u64)> = BTreeMap::new();
    for slot in 0..164 {
        let t = start + slot * H;
        let hod = hour_of_day(t);
        let day = t.div_euclid(24 * H);
        let mut rows = Vec::new();
        let refused = if (9..12).contains(&hod) { 10 + (slot % 7) as u64 } else { u64::from(hod % 6 == 0) };
        if refused > 0 {
            // Five samples, and a reconciliation record for the rest.
            let samples = refused.min(5);
            for i in 0..samples {
                rows.push((
                    Wrote {
                        ts: t + i as i64 * 37_000,
                        netns: NS1,
                        action: "refused",
                        outbound: false,
                        ip: "10.1.0.1",
                        port: 8080,
                        count: 1,
                    },
                    None,
                ));
            }
            if refused > samples {
                rows.push((
                    Wrote {
                        ts: t + 30 * 60_000,
                        netns: NS1,
                        action: "refused",
                        outbound: false,
                        ip: "10.1.0.1",
                        port: 8080,
                        count: refused - samples,
                    },
                    None,
                ));
            }
            if (9..12).contains(&hod) {
                let e = day_refused.entry(day).or_insert((t + 1000, t, 0));
                e.1 = t + 50 * 60_000;
                e.2 += refused;
            }
        }
        if (14..16).contains(&hod) {
            rows.push((
                Wrote {
                    ts: t + 5 * 60_000,
                    netns: NS2,
                    action: "listen_overflow",
                    outbound: false,
                    ip: "10.2.0.1",
                    port: 8443,
                    count: 40,
                },
                None,
            ));
            let e = day_overflow.entry(day).or_insert((t + 5 * 60_000, t, 0));
            e.1 = t + 55 * 60_000;
            e.2 += 40;
        }
        if hod % 8 == 3 {
            for i in 0..3 {
                rows.push((
                    Wrote {
                        ts: t + 20 * 60_000 + i * 1000,
                        netns: NS1,
                        action: "connect_failed",
                        outbound: true,
                        ip: "10.9.9.9",
                        port: 5432,
                        count: 1,
                    },
                    Some((SNEAKY, 4242)),
                ));
            }
        }
        if weekday(t) >= 5 && hod == 2 {
            rows.push((
                Wrote {
                    ts: t + 12 * 60_000,
                    netns: NS1,
                    action: "firewall_drop",
                    outbound: false,
                    ip: "10.1.0.1",
                    port: 22,
                    count: 7,
                },
                None,
            ));
        }
        for (w, process) in rows {
            writer.send(&failure(&w, process), &stats);
            week.failures.push(w);
        }
        // The load, every ten minutes.
        for j in 0..6 {
            let ts = t + (j + 1) * 10 * 60_000;
            let (a1, a2) =
                (if (9..12).contains(&hod) { 300 } else { 50 }, if (14..16).contains(&hod) { 120 } else { 10 });
            week.accepted += a1 + a2;
            let mut listeners = Vec::new();
            if (14..16).contains(&hod) {
                listeners.push(ListenerLoad {
                    netns: NS2,
                    address: "10.2.0.1".parse().unwrap(),
                    port: 8443,
                    backlog: 128,
                    max_queue: 128,
                    mean_queue: 96.5,
                    samples: 300,
                });
            }
            if (9..12).contains(&hod) {
                listeners.push(ListenerLoad {
                    netns: NS1,
                    address: "10.1.0.1".parse().unwrap(),
                    port: 443,
                    backlog: 511,
                    max_queue: 3 + j as u32,
                    mean_queue: 1.0,
                    samples: 300,
                });
            }
            loads.send(
                LoadSample {
                    at: at(ts),
                    period: Duration::from_secs(600),
                    namespaces: vec![
                        NetnsLoad { netns: NS1, accepted: a1, connects: 5 },
                        NetnsLoad { netns: NS2, accepted: a2, connects: 0 },
                    ],
                    listeners,
                },
                &stats,
            );
        }
    }
    for (first, last, count) in day_refused.values() {
        writer.send(
            &diagnosis(NO_LISTENER, "no_listener", "refused", NS1, "10.1.0.1", 8080, *first, *last, *count, None),
            &stats,
        );
        *week.episodes.entry(NO_LISTENER).or_default() += 1;
    }
    for (first, last, count) in day_overflow.values() {
        writer.send(
            &diagnosis(
                QUEUE_FULL,
                "accept_queue_full",
                "listen_overflow",
                NS2,
                "10.2.0.1",
                8443,
                *first,
                *last,
                *count,
                Some(("lab-slow", 777)),
            ),
            &stats,
        );
        *week.episodes.entry(QUEUE_FULL).or_default() += 1;
    }
    writer.send(
        &diagnosis(
            OUTBOUND,
            "outbound_refused",
            "connect_failed",
            NS1,
            "10.9.9.9",
            5432,
            start + 3 * H,
            start + 4 * H,
            3,
            Some((SNEAKY, 4242)),
        ),
        &stats,
    );
    *week.episodes.entry(OUTBOUND).or_default() += 1;
    drop(loads);
    writer.close();
    assert_eq!(Stats::get(&stats.history_dropped), 0);
    week
}

fn observer(state: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_observer")).arg("--state-dir").arg(state).args(args).output().unwrap();
    assert!(out.status.success(), "observer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

/// The number an element shows (`1,234` -> 1234).
fn number(text: &str) -> u64 {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number in {text:?}"))
}

fn text_of(doc: &Html, css: &str) -> String {
    doc.select(&sel(css)).next().unwrap_or_else(|| panic!("no {css} in the page")).text().collect()
}

fn db(state: &Path) -> rusqlite::Connection {
    let c =
        rusqlite::Connection::open_with_flags(state.join("history.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn q(c: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> i64 {
    c.query_row(sql, params, |r| r.get::<_, Option<i64>>(0)).unwrap().unwrap_or(0)
}

/// The period the page says it covers (`#summary`'s data attributes).
fn period(doc: &Html) -> (i64, i64) {
    let s = doc.select(&sel("#summary")).next().expect("#summary");
    let attr = |n: &str| s.value().attr(n).unwrap().parse::<i64>().unwrap();
    (attr("data-from"), attr("data-to"))
}

fn target_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_report_shows_the_history_numbers_and_chromium_draws_its_charts() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let now = ms(SystemTime::now());
    let week = write_week(&state, now);

    let page = target_dir().join("report.html");
    let out = observer(&state, &["report", "--since", "7d", "--out", page.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrote"), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    let doc = Html::parse_document(&html);
    let c = db(&state);
    let (from, to) = period(&doc);
    assert!(to >= now && to - from == 7 * 24 * H, "the period is the last 7 days: {from} {to}");
    assert!(week.failures.iter().all(|w| w.ts >= from && w.ts <= to), "the test wrote inside the period");

    // Self-contained: nothing to fetch, nothing to run.
    for tag in ["script", "link", "img", "iframe", "object", "embed", "[src]"] {
        assert!(doc.select(&sel(tag)).next().is_none(), "the page has a {tag}");
    }
    assert!(!html.contains("url(") && !html.contains("@import") && !html.contains("http://www.w3.org/1999/xlink"));

    // Totals.
    let total: u64 = week.failures.iter().map(|w| w.count).sum();
    let sql_total = q(&c, "SELECT sum(count) FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2", [from, to]) as u64;
    assert_eq!(sql_total, total);
    assert_eq!(number(&text_of(&doc, "#total-failures")), total);
    let outbound: u64 = week.failures.iter().filter(|w| w.outbound).map(|w| w.count).sum();
    assert_eq!(number(&text_of(&doc, "#total-outbound")), outbound);
    assert_eq!(number(&text_of(&doc, "#total-inbound")), total - outbound);
    assert_eq!(number(&text_of(&doc, "#total-records")), week.failures.len() as u64);
    let accepted = q(&c, "SELECT sum(accepted) FROM load_netns WHERE ts_ms >= ?1 AND ts_ms <= ?2", [from, to]) as u64;
    assert_eq!(accepted, week.accepted);
    assert_eq!(number(&text_of(&doc, "#total-accepted")), accepted);
    assert_eq!(number(&text_of(&doc, "#total-endpoints")), 4);
    let episodes: usize = week.episodes.values().sum();
    assert_eq!(number(&text_of(&doc, "#total-episodes")), episodes as u64);
    assert_eq!(number(&text_of(&doc, "#total-recurring")), 2);
    assert!(
        text_of(&doc, "#peak-queue").starts_with("128 of 128 on 10.2.0.1:8443"),
        "{}",
        text_of(&doc, "#peak-queue")
    );

    // Failures by kind: every action of the history, with its count.
    let mut by_action = BTreeMap::new();
    for row in doc.select(&sel("#by-action tr[data-action]")) {
        let a = row.value().attr("data-action").unwrap().to_owned();
        let n = number(&row.select(&sel("td.count")).next().unwrap().text().collect::<String>());
        by_action.insert(a, n);
    }
    let mut st =
        c.prepare("SELECT action, sum(count) FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2 GROUP BY action").unwrap();
    let sql: BTreeMap<String, u64> = st
        .query_map([from, to], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(by_action, sql);
    let mut wrote: BTreeMap<String, u64> = BTreeMap::new();
    for w in &week.failures {
        *wrote.entry(w.action.to_owned()).or_default() += w.count;
    }
    assert_eq!(by_action, wrote);

    // The heat map: all 168 cells, against SQLite's calendar and the test's own.
    let mut st = c
        .prepare(
            "SELECT CAST(strftime('%w', ts_ms / 1000, 'unixepoch') AS INTEGER), CAST(strftime('%H', ts_ms / 1000, 'unixepoch') AS INTEGER),
             sum(count) FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2 GROUP BY 1, 2",
        )
        .unwrap();
    let mut sql_heat = [[0u64; 24]; 7];
    for row in
        st.query_map([from, to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))).unwrap()
    {
        let (dow, hour, n) = row.unwrap();
        sql_heat[((dow + 6) % 7) as usize][hour as usize] = n as u64;
    }
    let mut wrote_heat = [[0u64; 24]; 7];
    for w in &week.failures {
        wrote_heat[weekday(w.ts)][hour_of_day(w.ts) as usize] += w.count;
    }
    assert_eq!(sql_heat, wrote_heat);
    let cells: Vec<_> = doc.select(&sel("#chart-heat g.cell")).collect();
    assert_eq!(cells.len(), 168);
    for cell in cells {
        let day = WEEKDAYS.iter().position(|d| Some(*d) == cell.value().attr("data-weekday")).unwrap();
        let hour: usize = cell.value().attr("data-hour").unwrap().parse().unwrap();
        let n: u64 = cell.value().attr("data-count").unwrap().parse().unwrap();
        assert_eq!(n, sql_heat[day][hour], "{} {hour:02}", WEEKDAYS[day]);
        let shown: String = cell.select(&sel("text")).map(|t| t.text().collect::<String>()).collect();
        assert_eq!(shown, if n == 0 { String::new() } else { n.to_string() }, "the number written in the cell");
    }
    for t in doc.select(&sel("#chart-heat text.day-total")) {
        let day = WEEKDAYS.iter().position(|d| Some(*d) == t.value().attr("data-weekday")).unwrap();
        assert_eq!(number(&t.text().collect::<String>()), sql_heat[day].iter().sum::<u64>());
    }

    // Top endpoints: the order and the counts of a GROUP BY over the file.
    let mut st = c
        .prepare(
            "SELECT netns, dst_ip, dst_port, sum(count) AS n FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2
             GROUP BY netns, direction, dst_ip, dst_port ORDER BY n DESC, dst_port, dst_ip",
        )
        .unwrap();
    let sql: Vec<(u32, String, u16, u64)> = st
        .query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows: Vec<_> = doc.select(&sel("#endpoints-table tbody tr")).collect();
    let shown: Vec<(u32, String, u16, u64)> = rows
        .iter()
        .map(|r| {
            let v = r.value();
            (
                v.attr("data-netns").unwrap().parse().unwrap(),
                v.attr("data-ip").unwrap().to_owned(),
                v.attr("data-port").unwrap().parse().unwrap(),
                number(&r.select(&sel("td.count")).next().unwrap().text().collect::<String>()),
            )
        })
        .collect();
    assert_eq!(shown, sql);
    let row = |port: &str| rows.iter().find(|r| r.value().attr("data-port") == Some(port)).unwrap();
    let cells = |port: &str| row(port).select(&sel("td")).map(|t| t.text().collect::<String>()).collect::<Vec<_>>();
    let overflow = cells("8443");
    assert!(overflow[3].starts_with("lab-slow"), "the process from its diagnosis: {overflow:?}");
    assert_eq!(overflow[6], "128 / 128", "deepest queue of its listener");
    let ns2 = q(
        &c,
        "SELECT sum(accepted) FROM load_netns WHERE netns = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3",
        [i64::from(NS2), from, to],
    );
    assert_eq!(number(&overflow[7]), ns2 as u64);
    // The process name with markup is text, not markup.
    assert!(cells("5432")[3].starts_with(SNEAKY), "{:?}", cells("5432"));
    assert!(
        doc.select(&sel("#endpoints-table i, #recurring-table i")).next().is_none(),
        "a process name became markup"
    );

    // Diagnoses by kind, and the recurring ones with their episodes.
    for row in doc.select(&sel("#by-kind tr[data-kind]")) {
        let kind = row.value().attr("data-kind").unwrap();
        let n = number(&row.select(&sel("td.episodes")).next().unwrap().text().collect::<String>());
        let sql = q(
            &c,
            "SELECT count(*) FROM diagnoses WHERE kind = ?1 AND last_seen_ms >= ?2 AND first_seen_ms <= ?3",
            rusqlite::params![kind, from, to],
        );
        assert_eq!(n, sql as u64, "{kind}");
    }
    let recurring: BTreeMap<String, u64> = doc
        .select(&sel("#recurring-table tr[data-id]"))
        .map(|r| {
            (
                r.value().attr("data-id").unwrap().to_owned(),
                number(&r.select(&sel("td.episodes")).next().unwrap().text().collect::<String>()),
            )
        })
        .collect();
    let ids: BTreeSet<&str> = recurring.keys().map(String::as_str).collect();
    assert_eq!(ids, BTreeSet::from([NO_LISTENER, QUEUE_FULL]), "the two that came back every day, not the one-off");
    for (id, n) in &recurring {
        let sql = q(
            &c,
            "SELECT count(*) FROM diagnoses WHERE id = ?1 AND last_seen_ms >= ?2 AND first_seen_ms <= ?3",
            rusqlite::params![id, from, to],
        );
        assert_eq!(*n, sql as u64, "{id}");
        assert_eq!(*n as usize, week.episodes[id.as_str()], "{id}");
    }
    assert!(doc.select(&sel("#chart-failures polygon")).count() >= 4, "one layer per action");
    assert!(doc.select(&sel("#chart-queues polyline")).next().is_some());

    // A real browser draws it.
    let shot = target_dir().join("report.png");
    screenshot(&page, &shot, (1280, 2000));
    let img = Image::read(&shot);
    assert_eq!((img.width, img.height), (1280, 2000));
    let background = |p: [u8; 3]| p == [255, 255, 255] || p == [0xf6, 0xf7, 0xf9];
    let ink = img.count(|p| !background(p));
    assert!(ink > img.width * img.height / 20, "the page is nearly blank: {ink} pixels drawn");
    // Each chart's own colour, in the page's order: the failures' stacked
    // areas (refused, 85% over white), the accepted connections (55%), the
    // queue line of the deepest listener, the heat map's peak cell.
    let near =
        |c: [u8; 3], tol: i32| move |p: [u8; 3]| (0..3).all(|i| (i32::from(p[i]) - i32::from(c[i])).abs() <= tol);
    let charts = [
        ("failures", img.bounds(near([105, 141, 180], 6))),
        ("load", img.bounds(near([166, 222, 215], 6))),
        ("queues", img.bounds(near([214, 39, 40], 12))),
        ("heat map", img.bounds(near([127, 15, 18], 6))),
    ];
    let mut above = 0;
    for (name, b) in &charts {
        let b = b.unwrap_or_else(|| panic!("the {name} chart has none of its colour in {}", shot.display()));
        assert!(b.pixels > 200, "{name}: {b:?}");
        assert!(b.top >= above, "{name} is below the chart before it: {b:?}");
        above = b.top;
    }
    let failures = charts[0].1.unwrap();
    assert!(failures.right - failures.left > 600, "the failures chart spans the page: {failures:?}");

    // A taller shot of the whole page, to look at.
    screenshot(&page, &target_dir().join("report-full.png"), (1280, 4200));
}

/// Renders `page` in headless Chromium into a PNG of `size`.
fn screenshot(page: &Path, png: &Path, size: (u32, u32)) {
    let profile = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_file(png);
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (cargo xtask setup installs it)");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success() && png.exists(), "chromium: {status}: {}", String::from_utf8_lossy(&out.stderr));
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

#[derive(Clone, Copy, Debug)]
struct Bounds {
    left: usize,
    right: usize,
    top: usize,
    pixels: usize,
}

impl Image {
    fn read(path: &Path) -> Image {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let step = info.color_type.samples();
        assert!(step >= 3, "{:?}", info.color_type);
        let rgb = buf[..info.buffer_size()].chunks(step).map(|p| [p[0], p[1], p[2]]).collect();
        Image { width: info.width as usize, height: info.height as usize, rgb }
    }

    fn count(&self, f: impl Fn([u8; 3]) -> bool) -> usize {
        self.rgb.iter().filter(|p| f(**p)).count()
    }

    fn bounds(&self, f: impl Fn([u8; 3]) -> bool) -> Option<Bounds> {
        let mut b: Option<Bounds> = None;
        for (i, p) in self.rgb.iter().enumerate() {
            if f(*p) {
                let (x, y) = (i % self.width, i / self.width);
                let b = b.get_or_insert(Bounds { left: x, right: x, top: y, pixels: 0 });
                b.left = b.left.min(x);
                b.right = b.right.max(x);
                b.pixels += 1;
            }
        }
        b
    }
}

/// The TCP counters of the calling thread's namespace, read the way `nstat` does.
fn passive_opens() -> u64 {
    let text = std::fs::read_to_string(format!("/proc/self/task/{}/net/snmp", nix::unistd::gettid())).unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "PassiveOpens").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn the_daemon_keeps_the_load_a_listener_had() {
    let ns = Netns::new("load");
    let netns = ns.inode();
    // A listener with a backlog of 4 that never accepts: its queue holds
    // five connections, and the kernel drops what comes after. And one that
    // holds a first connection, to know when the daemon has polled the
    // namespace (its first poll is the baseline, which counts nothing).
    let (listener, warm) = ns.run(|| {
        let listen = |port, backlog| {
            let s = common::bound_socket(common::sa("127.0.0.1", port)).unwrap();
            s.listen(backlog).unwrap();
            s
        };
        (listen(7300, 4), listen(7299, 4))
    });
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let config = "[enrich]\npoll_interval_ms = 200\nload_interval_secs = 1\n";
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &state, &[], Some(config));
    let first = ns.run(|| {
        common::connect_from(common::sa("127.0.0.1", 47299), common::sa("127.0.0.1", 7299), Duration::from_secs(2))
            .unwrap()
    });
    let c = db(&state);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 15 s\n{}", daemon.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let sum = || q(&c, "SELECT sum(accepted) FROM load_netns WHERE netns = ?1", [i64::from(netns)]) as u64;
    // The sample that has the first connection in the queue was written with
    // the counters of that same poll: what follows is counted after it.
    wait("the first connection queued in the load history", &|| {
        q(&c, "SELECT count(*) FROM load_listeners WHERE netns = ?1 AND port = 7299", [i64::from(netns)]) > 0
    });
    let before = sum();
    let (opened, clients) = ns.run(|| {
        let before = passive_opens();
        let mut clients = Vec::new();
        for i in 0..8u16 {
            let from = common::sa("127.0.0.1", 47300 + i);
            if let Ok(c) = common::connect_from(from, common::sa("127.0.0.1", 7300), Duration::from_millis(300)) {
                clients.push(c);
            }
        }
        (passive_opens() - before, clients)
    });
    assert_eq!(opened, 5, "the kernel completed five handshakes: the queue's room");
    assert_eq!(clients.len(), 5);
    wait("the five connections in the load history", &|| sum() >= before + opened);
    std::thread::sleep(Duration::from_millis(1500));
    let accepted = sum() - before;
    assert_eq!(accepted, opened, "accepted = the namespace's TcpPassiveOpens between polls, exactly");
    let (queue, backlog) = c
        .query_row(
            "SELECT max(max_queue), max(backlog) FROM load_listeners WHERE netns = ?1 AND port = 7300",
            [i64::from(netns)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .unwrap();
    assert_eq!((queue, backlog), (5, 4), "the queue held every accepted connection, the backlog is listen()'s");
    drop(c);
    let (stderr, _) = daemon.stop();
    drop((clients, first, listener, warm));

    // The report of that history shows the same.
    let page = keep.path().join("load.html");
    observer(&state, &["report", "--since", "1h", "--out", page.to_str().unwrap()]);
    let doc = Html::parse_document(&std::fs::read_to_string(&page).unwrap());
    let (from, to) = period(&doc);
    let c = db(&state);
    let total = q(&c, "SELECT sum(accepted) FROM load_netns WHERE ts_ms >= ?1 AND ts_ms <= ?2", [from, to]);
    assert_eq!(number(&text_of(&doc, "#total-accepted")), total as u64, "{stderr}");
    let name = format!("127.0.0.1:7300 (netns {netns})");
    let legend = doc
        .select(&sel("#load li[data-listener]"))
        .find(|l| l.value().attr("data-listener") == Some(name.as_str()))
        .unwrap_or_else(|| panic!("no queue line for {name}"))
        .text()
        .collect::<String>();
    assert!(legend.contains("deepest 5 of backlog 4"), "{legend}");
    // The overflows are failures at that endpoint, next to its namespace's load.
    if let Some(row) = doc.select(&sel("#endpoints-table tbody tr")).find(|r| {
        r.value().attr("data-netns") == Some(netns.to_string().as_str()) && r.value().attr("data-port") == Some("7300")
    }) {
        let cells: Vec<String> = row.select(&sel("td")).map(|t| t.text().collect()).collect();
        let sql = q(
            &c,
            "SELECT sum(count) FROM failures WHERE netns = ?1 AND dst_port = 7300 AND ts_ms >= ?2 AND ts_ms <= ?3",
            [i64::from(netns), from, to],
        );
        assert_eq!(number(&cells[4]), sql as u64, "{cells:?}");
        assert_eq!(cells[6], "5 / 4", "{cells:?}");
        assert_eq!(number(&cells[7]), accepted, "{cells:?}");
    } else {
        panic!("no endpoint row for port 7300 in netns {netns}: the overflows were not recorded\n{stderr}");
    }
}
