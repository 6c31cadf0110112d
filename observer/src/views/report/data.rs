//! The report's numbers: every one is a query over the history (bound
//! parameters only), read once into `Data`, so that the page and the SVG
//! only lay them out.
//!
//! Fields of the records' JSON are read with `json_extract` over
//! `json_valid` rows only: one row the daemon could not serialize (it
//! writes an empty text then) must not make the whole report an error.
//!
//! Time is UTC throughout, as in the rest of the CLI: the heat map's hours
//! and weekdays, the buckets and the axis labels. Buckets are aligned to
//! whole multiples of their width since the epoch (hours start at :00, days
//! at midnight), so that the same failure lands in the same bucket in every
//! report; the first one may begin before the period does, and only the
//! period's rows are counted in it.

use std::{net::IpAddr, str::FromStr as _};

use observer_common::Action;
use rusqlite::{params, Connection, OptionalExtension as _};

use crate::{diagnose::record::DiagnosisRecord, diagnose::record::Kind, event::Direction};

/// The bucket widths a report may use, smallest first: the first that
/// gives at most `MAX_BUCKETS` over the period is taken.
const WIDTHS_MS: [i64; 10] =
    [60_000, 300_000, 900_000, 1_800_000, 3_600_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000, 604_800_000];
/// A week of hours: fine enough to see the peak hours in the charts,
/// coarse enough that each is a few pixels wide.
const MAX_BUCKETS: i64 = 168;
/// Rows of the endpoint and recurring tables.
pub const TOP: usize = 10;
/// Listeners drawn in the queue chart.
pub const QUEUE_SERIES: usize = 5;

/// The period and its buckets, in ms since the epoch; the period is
/// `[from, to]`, bucket `i` is `[start + i * width, start + (i + 1) * width)`.
#[derive(Clone, Copy, Debug)]
pub struct Period {
    pub from: i64,
    pub to: i64,
    pub start: i64,
    pub width: i64,
    pub buckets: usize,
}

impl Period {
    pub fn new(from: i64, to: i64) -> Period {
        let to = to.max(from + 1);
        let width = WIDTHS_MS
            .iter()
            .copied()
            .find(|w| (to - from) / w <= MAX_BUCKETS)
            .unwrap_or(WIDTHS_MS[WIDTHS_MS.len() - 1]);
        let start = from.div_euclid(width) * width;
        let buckets = ((to - start) / width + 1) as usize;
        Period { from, to, start, width, buckets }
    }

    /// The start of bucket `i`.
    pub fn at(&self, i: usize) -> i64 {
        self.start + i as i64 * self.width
    }

    fn index(&self, b: i64) -> Option<usize> {
        usize::try_from(b).ok().filter(|&i| i < self.buckets)
    }
}

/// The header's totals.
#[derive(Debug, Default)]
pub struct Totals {
    /// Failure occurrences (`event.count` summed).
    pub failures: u64,
    /// Failure records (samples and reconciliation records).
    pub records: u64,
    pub inbound: u64,
    pub outbound: u64,
    /// Diagnosis episodes that overlap the period.
    pub episodes: u64,
    /// Diagnosis ids with more than one episode in the period.
    pub recurring: u64,
    /// Distinct endpoints (namespace, direction, address, port) that failed.
    pub endpoints: u64,
    /// Connections accepted, all namespaces (load history).
    pub accepted: u64,
    pub connects: u64,
    /// Load rows in the period: none means no load history (an older
    /// daemon, or `enrich.load_interval_secs = 0`).
    pub load_rows: u64,
    pub peak_queue: Option<PeakQueue>,
}

#[derive(Clone, Debug)]
pub struct PeakQueue {
    pub netns: u32,
    pub address: String,
    pub port: u16,
    pub queue: u32,
    pub backlog: u32,
    pub at: i64,
}

/// One action's failures over the period.
#[derive(Debug)]
pub struct ActionSeries {
    pub action: Action,
    pub total: u64,
    pub values: Vec<u64>,
}

/// One listener's deepest queue per bucket (`None`: not seen non-empty).
#[derive(Debug)]
pub struct QueueSeries {
    pub netns: u32,
    pub address: String,
    pub port: u16,
    pub backlog: u32,
    pub peak: u32,
    pub values: Vec<Option<u32>>,
}

/// The diagnoses of one kind in the period.
#[derive(Debug)]
pub struct KindRow {
    pub kind: Kind,
    pub episodes: u64,
    /// Occurrences in those episodes (their `diagnosis.count`).
    pub failures: u64,
    /// Distinct diagnosis ids (endpoints).
    pub ids: u64,
    pub first: i64,
    pub last: i64,
}

#[derive(Clone, Debug)]
pub struct Episode {
    pub first: i64,
    pub last: i64,
    pub count: u64,
    pub status: String,
}

/// A diagnosis id and its episodes in the period.
#[derive(Debug)]
pub struct Diagnosed {
    pub id: String,
    pub kind: Kind,
    pub netns: u32,
    pub port: u16,
    pub episodes: Vec<Episode>,
    /// The latest episode's record (summary, process, endpoint).
    pub latest: Option<DiagnosisRecord>,
}

/// One endpoint's failures.
#[derive(Debug)]
pub struct EndpointRow {
    pub netns: u32,
    pub direction: Direction,
    pub ip: String,
    pub port: u16,
    pub failures: u64,
    pub actions: Vec<(Action, u64)>,
    /// The listener's process (inbound) or the connecting one (outbound),
    /// from its diagnoses or its failure events.
    pub process: Option<(String, u32)>,
    /// The deepest accept queue of its listener and that listener's backlog.
    pub peak_queue: Option<(u32, u32)>,
    /// Connections its namespace accepted in the period.
    pub accepted: u64,
    pub values: Vec<u64>,
}

/// Everything the page shows.
#[derive(Debug)]
pub struct Data {
    pub period: Period,
    pub totals: Totals,
    pub actions: Vec<ActionSeries>,
    pub accepted: Vec<u64>,
    pub connects: Vec<u64>,
    pub queues: Vec<QueueSeries>,
    /// Failures by weekday (0 = Monday) and hour of day.
    pub heat: [[u64; 24]; 7],
    pub kinds: Vec<KindRow>,
    /// Every episode in the period, for the timeline, by kind.
    pub episodes: Vec<(Kind, String, Episode)>,
    pub recurring: Vec<Diagnosed>,
    pub endpoints: Vec<EndpointRow>,
}

fn count(v: i64) -> u64 {
    v.max(0) as u64
}

fn action(s: &str) -> Option<Action> {
    Action::ALL.into_iter().find(|a| a.as_str() == s)
}

fn direction(s: &str) -> Direction {
    if s == Direction::Outbound.as_str() {
        Direction::Outbound
    } else {
        Direction::Inbound
    }
}

impl Data {
    pub fn read(conn: &Connection, period: Period) -> rusqlite::Result<Data> {
        let p = period;
        let (accepted, connects) = load(conn, p)?;
        Ok(Data {
            period: p,
            totals: totals(conn, p)?,
            actions: actions(conn, p)?,
            accepted,
            connects,
            queues: queues(conn, p)?,
            heat: heat(conn, p)?,
            kinds: kinds(conn, p)?,
            episodes: episodes(conn, p)?,
            recurring: recurring(conn, p)?,
            endpoints: endpoints(conn, p)?,
        })
    }
}

fn totals(conn: &Connection, p: Period) -> rusqlite::Result<Totals> {
    let mut t = Totals::default();
    conn.query_row(
        "SELECT coalesce(sum(count), 0), count(*),
                coalesce(sum(CASE WHEN direction = 'inbound' THEN count ELSE 0 END), 0),
                coalesce(sum(CASE WHEN direction = 'outbound' THEN count ELSE 0 END), 0)
         FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2",
        params![p.from, p.to],
        |r| {
            t.failures = count(r.get(0)?);
            t.records = count(r.get(1)?);
            t.inbound = count(r.get(2)?);
            t.outbound = count(r.get(3)?);
            Ok(())
        },
    )?;
    t.endpoints = count(conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2
         GROUP BY netns, direction, dst_ip, dst_port)",
        params![p.from, p.to],
        |r| r.get(0),
    )?);
    (t.episodes, t.recurring) = conn.query_row(
        "SELECT coalesce(sum(n), 0), coalesce(sum(n > 1), 0) FROM (SELECT count(*) AS n FROM diagnoses
         WHERE last_seen_ms >= ?1 AND first_seen_ms <= ?2 GROUP BY id)",
        params![p.from, p.to],
        |r| Ok((count(r.get(0)?), count(r.get(1)?))),
    )?;
    (t.accepted, t.connects) = conn.query_row(
        "SELECT coalesce(sum(accepted), 0), coalesce(sum(connects), 0) FROM load_netns
         WHERE ts_ms >= ?1 AND ts_ms <= ?2",
        params![p.from, p.to],
        |r| Ok((count(r.get(0)?), count(r.get(1)?))),
    )?;
    t.load_rows = count(conn.query_row(
        "SELECT (SELECT count(*) FROM load_netns WHERE ts_ms >= ?1 AND ts_ms <= ?2)
              + (SELECT count(*) FROM load_listeners WHERE ts_ms >= ?1 AND ts_ms <= ?2)",
        params![p.from, p.to],
        |r| r.get(0),
    )?);
    t.peak_queue = conn
        .query_row(
            "SELECT netns, address, port, max_queue, backlog, ts_ms FROM load_listeners
             WHERE ts_ms >= ?1 AND ts_ms <= ?2 ORDER BY max_queue DESC, ts_ms LIMIT 1",
            params![p.from, p.to],
            |r| {
                Ok(PeakQueue {
                    netns: r.get(0)?,
                    address: r.get(1)?,
                    port: r.get(2)?,
                    queue: r.get(3)?,
                    backlog: r.get(4)?,
                    at: r.get(5)?,
                })
            },
        )
        .optional()?;
    Ok(t)
}

/// Failures per action and bucket, in the order of `Action::ALL`; actions
/// without any are left out.
fn actions(conn: &Connection, p: Period) -> rusqlite::Result<Vec<ActionSeries>> {
    let mut st = conn.prepare(
        "SELECT action, (ts_ms - ?1) / ?2 AS b, sum(count) FROM failures
         WHERE ts_ms >= ?3 AND ts_ms <= ?4 GROUP BY action, b",
    )?;
    let mut series: Vec<ActionSeries> =
        Action::ALL.iter().map(|&action| ActionSeries { action, total: 0, values: vec![0; p.buckets] }).collect();
    let rows = st.query_map(params![p.start, p.width, p.from, p.to], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (name, b, n) = row?;
        let (Some(a), Some(i)) = (action(&name), p.index(b)) else { continue };
        if let Some(s) = series.iter_mut().find(|s| s.action == a) {
            s.values[i] += count(n);
            s.total += count(n);
        }
    }
    series.retain(|s| s.total > 0);
    Ok(series)
}

/// Accepted connections and outbound connects per bucket, all namespaces.
fn load(conn: &Connection, p: Period) -> rusqlite::Result<(Vec<u64>, Vec<u64>)> {
    let mut st = conn.prepare(
        "SELECT (ts_ms - ?1) / ?2 AS b, sum(accepted), sum(connects) FROM load_netns
         WHERE ts_ms >= ?3 AND ts_ms <= ?4 GROUP BY b",
    )?;
    let (mut accepted, mut connects) = (vec![0; p.buckets], vec![0; p.buckets]);
    let rows = st.query_map(params![p.start, p.width, p.from, p.to], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (b, a, c) = row?;
        if let Some(i) = p.index(b) {
            accepted[i] = count(a);
            connects[i] = count(c);
        }
    }
    Ok((accepted, connects))
}

/// The listeners whose queues went deepest, with their deepest queue per bucket.
fn queues(conn: &Connection, p: Period) -> rusqlite::Result<Vec<QueueSeries>> {
    let mut st = conn.prepare(
        "SELECT netns, address, port, max(max_queue) AS peak, max(backlog) FROM load_listeners
         WHERE ts_ms >= ?1 AND ts_ms <= ?2 GROUP BY netns, address, port ORDER BY peak DESC, port LIMIT ?3",
    )?;
    let listeners = st
        .query_map(params![p.from, p.to, QUEUE_SERIES as i64], |r| {
            Ok(QueueSeries {
                netns: r.get(0)?,
                address: r.get(1)?,
                port: r.get(2)?,
                peak: r.get(3)?,
                backlog: r.get(4)?,
                values: vec![None; p.buckets],
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = conn.prepare(
        "SELECT (ts_ms - ?1) / ?2 AS b, max(max_queue) FROM load_listeners
         WHERE netns = ?3 AND address = ?4 AND port = ?5 AND ts_ms >= ?6 AND ts_ms <= ?7 GROUP BY b",
    )?;
    let mut out = Vec::with_capacity(listeners.len());
    for mut l in listeners {
        let rows = st.query_map(params![p.start, p.width, l.netns, l.address, l.port, p.from, p.to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
        })?;
        for row in rows {
            let (b, q) = row?;
            if let Some(i) = p.index(b) {
                l.values[i] = Some(q);
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// Failures by weekday (Monday first) and hour, UTC.
fn heat(conn: &Connection, p: Period) -> rusqlite::Result<[[u64; 24]; 7]> {
    let mut st = conn.prepare(
        "SELECT CAST(strftime('%w', ts_ms / 1000, 'unixepoch') AS INTEGER) AS dow,
                CAST(strftime('%H', ts_ms / 1000, 'unixepoch') AS INTEGER) AS hour, sum(count)
         FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2 GROUP BY dow, hour",
    )?;
    let mut heat = [[0u64; 24]; 7];
    let rows =
        st.query_map(params![p.from, p.to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?;
    for row in rows {
        let (dow, hour, n) = row?;
        // strftime's %w: 0 is Sunday.
        let day = ((dow + 6) % 7) as usize;
        if let Some(cell) = heat.get_mut(day).and_then(|d| d.get_mut(hour as usize)) {
            *cell += count(n);
        }
    }
    Ok(heat)
}

fn kinds(conn: &Connection, p: Period) -> rusqlite::Result<Vec<KindRow>> {
    let mut st = conn.prepare(
        "SELECT kind, count(*), coalesce(sum(json_extract(iif(json_valid(json), json, '{}'), '$.diagnosis.count')), 0), count(DISTINCT id),
                min(first_seen_ms), max(last_seen_ms)
         FROM diagnoses WHERE last_seen_ms >= ?1 AND first_seen_ms <= ?2 GROUP BY kind ORDER BY 3 DESC, 1",
    )?;
    let rows = st.query_map(params![p.from, p.to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, episodes, failures, ids, first, last) = row?;
        let Ok(kind) = Kind::from_str(&kind) else { continue };
        out.push(KindRow { kind, episodes: count(episodes), failures: count(failures), ids: count(ids), first, last });
    }
    Ok(out)
}

fn episodes(conn: &Connection, p: Period) -> rusqlite::Result<Vec<(Kind, String, Episode)>> {
    let mut st = conn.prepare(
        "SELECT kind, id, first_seen_ms, last_seen_ms, coalesce(json_extract(iif(json_valid(json), json, '{}'), '$.diagnosis.count'), 0), status
         FROM diagnoses WHERE last_seen_ms >= ?1 AND first_seen_ms <= ?2 ORDER BY first_seen_ms",
    )?;
    let rows = st.query_map(params![p.from, p.to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            Episode { first: r.get(2)?, last: r.get(3)?, count: count(r.get(4)?), status: r.get(5)? },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, id, e) = row?;
        if let Ok(kind) = Kind::from_str(&kind) {
            out.push((kind, id, e));
        }
    }
    Ok(out)
}

/// Diagnosis ids that were opened more than once in the period: the
/// problems that come back.
fn recurring(conn: &Connection, p: Period) -> rusqlite::Result<Vec<Diagnosed>> {
    let mut st = conn.prepare(
        "SELECT id, kind, netns, port FROM diagnoses WHERE last_seen_ms >= ?1 AND first_seen_ms <= ?2
         GROUP BY id HAVING count(*) > 1 ORDER BY count(*) DESC, max(last_seen_ms) DESC LIMIT ?3",
    )?;
    let ids = st
        .query_map(params![p.from, p.to, TOP as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?, r.get::<_, u16>(3)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = conn.prepare(
        "SELECT first_seen_ms, last_seen_ms, coalesce(json_extract(iif(json_valid(json), json, '{}'), '$.diagnosis.count'), 0), status, json
         FROM diagnoses WHERE id = ?1 AND last_seen_ms >= ?2 AND first_seen_ms <= ?3 ORDER BY first_seen_ms",
    )?;
    let mut out = Vec::new();
    for (id, kind, netns, port) in ids {
        let Ok(kind) = Kind::from_str(&kind) else { continue };
        let mut episodes = Vec::new();
        let mut latest = None;
        let rows = st.query_map(params![id, p.from, p.to], |r| {
            Ok((
                Episode { first: r.get(0)?, last: r.get(1)?, count: count(r.get(2)?), status: r.get(3)? },
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (e, json) = row?;
            episodes.push(e);
            latest = Some(json);
        }
        let latest = latest.and_then(|j| serde_json::from_str(&j).ok());
        out.push(Diagnosed { id, kind, netns, port, episodes, latest });
    }
    Ok(out)
}

fn endpoints(conn: &Connection, p: Period) -> rusqlite::Result<Vec<EndpointRow>> {
    let mut st = conn.prepare(
        "SELECT netns, direction, dst_ip, dst_port, sum(count) AS n FROM failures WHERE ts_ms >= ?1 AND ts_ms <= ?2
         GROUP BY netns, direction, dst_ip, dst_port ORDER BY n DESC, dst_port, dst_ip LIMIT ?3",
    )?;
    let top = st
        .query_map(params![p.from, p.to, TOP as i64], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u16>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut by_action = conn.prepare(
        "SELECT action, sum(count) AS n FROM failures WHERE netns = ?1 AND direction = ?2 AND dst_ip = ?3
         AND dst_port = ?4 AND ts_ms >= ?5 AND ts_ms <= ?6 GROUP BY action ORDER BY n DESC, action",
    )?;
    let mut buckets = conn.prepare(
        "SELECT (ts_ms - ?1) / ?2 AS b, sum(count) FROM failures WHERE netns = ?3 AND direction = ?4 AND dst_ip = ?5
         AND dst_port = ?6 AND ts_ms >= ?7 AND ts_ms <= ?8 GROUP BY b",
    )?;
    // The process: the latest diagnosis of the endpoint that names one,
    // else a failure event that carries one (outbound connects do).
    let mut diagnosed = conn.prepare(
        "SELECT json_extract(iif(json_valid(json), json, '{}'), '$.process.name'), json_extract(iif(json_valid(json), json, '{}'), '$.process.pid') FROM diagnoses
         WHERE netns = ?1 AND port = ?2 AND json_extract(iif(json_valid(json), json, '{}'), '$.destination.ip') = ?3
         AND json_extract(iif(json_valid(json), json, '{}'), '$.process.name') IS NOT NULL ORDER BY last_seen_ms DESC LIMIT 1",
    )?;
    let mut sampled = conn.prepare(
        "SELECT json_extract(iif(json_valid(json), json, '{}'), '$.process.name'), json_extract(iif(json_valid(json), json, '{}'), '$.process.pid') FROM failures
         WHERE dst_port = ?1 AND netns = ?2 AND dst_ip = ?3 AND ts_ms >= ?4 AND ts_ms <= ?5
         AND json_extract(iif(json_valid(json), json, '{}'), '$.process.name') IS NOT NULL ORDER BY ts_ms DESC LIMIT 1",
    )?;
    let mut queue = conn.prepare(
        "SELECT max(max_queue), max(backlog) FROM load_listeners WHERE netns = ?1 AND port = ?2
         AND ts_ms >= ?3 AND ts_ms <= ?4",
    )?;
    let mut accepted = conn.prepare(
        "SELECT coalesce(sum(accepted), 0) FROM load_netns WHERE netns = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3",
    )?;
    let mut out = Vec::with_capacity(top.len());
    for (netns, dir, ip, port, n) in top {
        let actions = by_action
            .query_map(params![netns, dir, ip, port, p.from, p.to], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(a, n)| action(&a).map(|a| (a, count(n))))
            .collect();
        let mut values = vec![0; p.buckets];
        let rows = buckets.query_map(params![p.start, p.width, netns, dir, ip, port, p.from, p.to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (b, n) = row?;
            if let Some(i) = p.index(b) {
                values[i] += count(n);
            }
        }
        let named = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?));
        let direction = direction(&dir);
        let mut process = diagnosed.query_row(params![netns, port, ip], named).optional()?;
        // Only outbound failure events carry a process (contract, 2): an
        // inbound endpoint's events need not be read for one.
        if process.is_none() && direction == Direction::Outbound {
            process = sampled.query_row(params![port, netns, ip, p.from, p.to], named).optional()?;
        }
        let peak_queue = if direction == Direction::Inbound {
            queue
                .query_row(params![netns, port, p.from, p.to], |r| {
                    Ok(r.get::<_, Option<u32>>(0)?.zip(r.get::<_, Option<u32>>(1)?))
                })
                .optional()?
                .flatten()
        } else {
            None
        };
        let accepted = count(accepted.query_row(params![netns, p.from, p.to], |r| r.get(0))?);
        out.push(EndpointRow {
            netns,
            direction,
            ip,
            port,
            failures: count(n),
            actions,
            process,
            peak_queue,
            accepted,
            values,
        });
    }
    Ok(out)
}

/// Whether an address text is the unspecified one (a port scan's endpoint).
pub fn unspecified(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_is_hours_and_an_hour_is_minutes() {
        let h = 3_600_000;
        let p = Period::new(10 * h + 1234, 10 * h + 1234 + 7 * 24 * h);
        assert_eq!((p.width, p.start, p.buckets), (h, 10 * h, 169));
        let p = Period::new(0, h);
        assert_eq!((p.width, p.buckets), (60_000, 61));
        assert_eq!(p.index(-1), None);
        assert_eq!(p.index(60), Some(60));
        assert_eq!(p.index(61), None);
    }
}
