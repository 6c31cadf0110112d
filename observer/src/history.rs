//! The history: failure events (as sampled, with their counts) and
//! diagnosis episodes in SQLite under the state directory, so that the CLI
//! can answer "what failed in the last hour, and why?" after restarts.
//!
//! Choices:
//! - Rollback journal, not WAL: a WAL reader must be able to create the
//!   `-shm` file, so members of the observer group (read-only on the
//!   directory) could not read a stopped daemon's history. The daemon is
//!   the only writer and commits in batches, so WAL's concurrency is not needed.
//! - One writer thread fed by a bounded channel: a slow or full disk stalls
//!   neither the kernel capture nor the other outputs. A batch that fails
//!   (disk full) is kept and retried, up to `pending_max` records; beyond
//!   that the oldest are dropped and counted, never silently.
//! - A diagnosis episode is one row keyed by (id, first_seen), updated by
//!   each record of the episode, so the row always holds the latest counts.
//! - Load (`enrich::load`) is two tables beside the failures, because its
//!   two halves have different keys: `load_netns` (connections accepted and
//!   opened per namespace and period: the kernel counts them per namespace)
//!   and `load_listeners` (accept-queue depth per listener and period). They
//!   age out with the failures (`max_age_days`), and the size cap deletes
//!   the oldest rows of all three first, so that a week of load never
//!   pushes out a day of failures.

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use observer_common::Action;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use thiserror::Error;
use tracing::warn;

use crate::{
    config::HistoryConfig, diagnose::record::DiagnosisRecord, enrich::LoadSample, event::FailureEvent, sink::Record,
    stats::Stats,
};

pub const DB_FILE: &str = "history.sqlite";

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("history database {0}: {1}")]
    Sql(PathBuf, rusqlite::Error),
    #[error("no history at {0} (has the daemon run with this --state-dir?)")]
    Missing(PathBuf),
    #[error("group {0:?} does not exist")]
    NoGroup(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    netns INTEGER NOT NULL,
    action TEXT NOT NULL,
    direction TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    count INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_ts ON failures(ts_ms);
CREATE INDEX IF NOT EXISTS failures_port ON failures(dst_port, ts_ms);
CREATE TABLE IF NOT EXISTS diagnoses (
    id TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    netns INTEGER NOT NULL,
    port INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (id, first_seen_ms)
);
CREATE INDEX IF NOT EXISTS diagnoses_last ON diagnoses(last_seen_ms);
";

/// The load tables (a history written before them has none: `Reader`
/// reads it as one without load).
const LOAD_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS load_netns (
    ts_ms INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    netns INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    connects INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS load_netns_ts ON load_netns(ts_ms);
CREATE TABLE IF NOT EXISTS load_listeners (
    ts_ms INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    netns INTEGER NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    backlog INTEGER NOT NULL,
    max_queue INTEGER NOT NULL,
    mean_queue REAL NOT NULL,
    samples INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS load_listeners_ts ON load_listeners(ts_ms);
CREATE INDEX IF NOT EXISTS load_listeners_port ON load_listeners(netns, port, ts_ms);
";

/// The tables whose rows age out by `ts_ms` and that the size cap trims,
/// oldest rows first whichever table holds them. Names, not values: they
/// are written into the statements, the values are bound.
const TIMED: [&str; 3] = ["failures", "load_netns", "load_listeners"];

/// What the writer thread commits: the records of the sinks, and the load
/// samples, which only the history keeps.
#[derive(Clone, Debug)]
pub enum Entry {
    Record(Record),
    Load(Box<LoadSample>),
}

pub fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Creates the state directory readable by `group` (0750) or by root only (0700).
fn prepare_dir(dir: &Path, gid: Option<nix::unistd::Gid>) -> Result<(), HistoryError> {
    std::fs::create_dir_all(dir).map_err(|e| HistoryError::Io(dir.to_owned(), e))?;
    let mode = if gid.is_some() { 0o750 } else { 0o700 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| HistoryError::Io(dir.to_owned(), e))?;
    if let Some(g) = gid {
        nix::unistd::chown(dir, None, Some(g)).map_err(|e| HistoryError::Io(dir.to_owned(), e.into()))?;
    }
    Ok(())
}

pub fn group_id(group: &str) -> Result<Option<nix::unistd::Gid>, HistoryError> {
    if group.is_empty() {
        return Ok(None);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(Some(g.gid)),
        _ => Err(HistoryError::NoGroup(group.to_owned())),
    }
}

/// Creates the state directory with the history's modes and group, so
/// that the instance lock can be taken in it before anything is loaded.
pub fn prepare_state_dir(state_dir: &Path, group: &str) -> Result<(), HistoryError> {
    prepare_dir(state_dir, group_id(group)?)
}

/// The writer side, owned by the history thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    cfg: HistoryConfig,
    last_prune: Option<Instant>,
}

impl Store {
    pub fn open(state_dir: &Path, cfg: &HistoryConfig, group: &str) -> Result<Store, HistoryError> {
        let gid = group_id(group)?;
        prepare_dir(state_dir, gid)?;
        let path = state_dir.join(DB_FILE);
        let sql = |e| HistoryError::Sql(path.clone(), e);
        let conn = Connection::open(&path).map_err(sql)?;
        // The journal inherits the database file's mode and owner (SQLite
        // copies them), so setting them here covers both.
        let mode = if gid.is_some() { 0o640 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| HistoryError::Io(path.clone(), e))?;
        if let Some(g) = gid {
            nix::unistd::chown(&path, None, Some(g)).map_err(|e| HistoryError::Io(path.clone(), e.into()))?;
        }
        conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; PRAGMA auto_vacuum=INCREMENTAL;")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute_batch(LOAD_SCHEMA).map_err(sql)?;
        Ok(Store { conn, path, cfg: cfg.clone(), last_prune: None })
    }

    /// Writes a batch in one transaction: all of it or nothing.
    pub fn write(&mut self, batch: &[Entry]) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let sql = |e| HistoryError::Sql(path.clone(), e);
        let tx = self.conn.transaction().map_err(sql)?;
        for entry in batch {
            match entry {
                Entry::Record(Record::Failure(e)) => insert_failure(&tx, e).map_err(sql)?,
                Entry::Record(Record::Diagnosis(d)) => upsert_diagnosis(&tx, d).map_err(sql)?,
                Entry::Load(l) => insert_load(&tx, l).map_err(sql)?,
            }
        }
        tx.commit().map_err(sql)
    }

    /// Deletes what is older than `max_age_days`, at most once a minute.
    pub fn prune(&mut self, now: SystemTime) -> Result<u64, HistoryError> {
        if self.last_prune.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return Ok(0);
        }
        self.last_prune = Some(Instant::now());
        let path = self.path.clone();
        let sql = |e| HistoryError::Sql(path.clone(), e);
        let cutoff = ms(now) - (self.cfg.max_age_days as i64) * 86_400_000;
        let mut deleted = 0;
        for table in TIMED {
            deleted +=
                self.conn.execute(&format!("DELETE FROM {table} WHERE ts_ms < ?1"), [cutoff]).map_err(sql)? as u64;
        }
        deleted += self.conn.execute("DELETE FROM diagnoses WHERE last_seen_ms < ?1", [cutoff]).map_err(sql)? as u64;
        Ok(deleted + self.cap_size()?)
    }

    /// Deletes the oldest failure events and load rows until the database
    /// is under `max_bytes`, and gives the freed pages back to the file
    /// system. Checked after every commit (reading the page counts is
    /// cheap), so a burst cannot grow the file past its cap by more than
    /// one batch.
    pub fn cap_size(&mut self) -> Result<u64, HistoryError> {
        let path = self.path.clone();
        let sql = |e| HistoryError::Sql(path.clone(), e);
        let mut deleted = 0;
        for _ in 0..1000 {
            if self.size_bytes().map_err(sql)? <= self.cfg.max_bytes {
                break;
            }
            // The table that holds the oldest row (each min() is one step
            // down its ts_ms index).
            let mut oldest: Option<(i64, &str)> = None;
            for table in TIMED {
                let min: Option<i64> =
                    self.conn.query_row(&format!("SELECT min(ts_ms) FROM {table}"), [], |r| r.get(0)).map_err(sql)?;
                if let Some(min) = min {
                    if oldest.is_none_or(|(o, _)| min < o) {
                        oldest = Some((min, table));
                    }
                }
            }
            let Some((_, table)) = oldest else { break };
            let n = self
                .conn
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY ts_ms LIMIT 1000)"
                    ),
                    [],
                )
                .map_err(sql)?;
            deleted += n as u64;
            if n == 0 {
                break;
            }
        }
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).map_err(sql)?;
        if deleted > 0 || free > 0 {
            // Stepped to the end: each step gives back only some of the free
            // pages, and execute_batch steps once.
            let mut st = self.conn.prepare("PRAGMA incremental_vacuum").map_err(sql)?;
            let mut rows = st.query([]).map_err(sql)?;
            while rows.next().map_err(sql)?.is_some() {}
        }
        Ok(deleted)
    }

    fn size_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(((pages - free).max(0) * size) as u64)
    }
}

fn insert_failure(tx: &rusqlite::Transaction<'_>, e: &FailureEvent) -> rusqlite::Result<()> {
    let json = serde_json::to_string(e).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO failures (ts_ms, netns, action, direction, src_ip, dst_ip, dst_port, count, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        ms(e.timestamp),
        e.observer.netns,
        e.event.action.as_str(),
        e.observer.direction.as_str(),
        e.source.ip.to_string(),
        e.destination.ip.to_string(),
        e.destination.port,
        e.event.count as i64,
        json
    ])?;
    Ok(())
}

fn upsert_diagnosis(tx: &rusqlite::Transaction<'_>, d: &DiagnosisRecord) -> rusqlite::Result<()> {
    let json = serde_json::to_string(d).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO diagnoses (id, first_seen_ms, last_seen_ms, kind, status, netns, port, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id, first_seen_ms) DO UPDATE SET
           last_seen_ms = excluded.last_seen_ms, status = excluded.status, json = excluded.json",
    )?
    .execute(params![
        d.diagnosis.id,
        ms(d.diagnosis.first_seen),
        ms(d.diagnosis.last_seen),
        d.diagnosis.kind.as_str(),
        d.diagnosis.status.as_str(),
        d.observer.netns,
        d.destination.port,
        json
    ])?;
    Ok(())
}

fn insert_load(tx: &rusqlite::Transaction<'_>, l: &LoadSample) -> rusqlite::Result<()> {
    let (at, period) = (ms(l.at), l.period.as_millis() as i64);
    let mut ns = tx.prepare_cached(
        "INSERT INTO load_netns (ts_ms, period_ms, netns, accepted, connects) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for n in &l.namespaces {
        ns.execute(params![at, period, n.netns, n.accepted as i64, n.connects as i64])?;
    }
    let mut ls = tx.prepare_cached(
        "INSERT INTO load_listeners (ts_ms, period_ms, netns, address, port, backlog, max_queue, mean_queue, samples)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for q in &l.listeners {
        ls.execute(params![
            at,
            period,
            q.netns,
            q.address.to_string(),
            q.port,
            q.backlog,
            q.max_queue,
            q.mean_queue,
            q.samples
        ])?;
    }
    Ok(())
}

/// Records committed per transaction. A backlog (the disk was full for a
/// while) is written back in transactions of this size, each with its own
/// commit, rather than one transaction of the whole backlog: that one needed
/// as much free space again as the backlog itself (the rollback journal),
/// refilled the disk as soon as it had room, failed, and started over at
/// full CPU.
const BATCH: usize = 2000;

/// The writer thread's handle: records go in with `send` (never blocking
/// the pipeline); `close` commits what is left and waits.
pub struct Writer {
    tx: Option<mpsc::Sender<Entry>>,
    /// Records sent and not yet committed (in the channel or held for a
    /// retry). One count for both bounds the memory the history may hold
    /// to `pending_max` records, however long the disk stays full. Not a
    /// `sync_channel`, whose slots are allocated up front: 100,000 of them
    /// were 37 MB of resident memory.
    held: Arc<AtomicUsize>,
    pending_max: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(mut store: Store, stats: Arc<Stats>, pending_max: usize) -> Writer {
        let (tx, rx) = mpsc::channel::<Entry>();
        let held = Arc::new(AtomicUsize::new(0));
        let committed = held.clone();
        let thread = std::thread::Builder::new()
            .name("history".to_owned())
            .spawn(move || {
                let mut pending: VecDeque<Entry> = VecDeque::new();
                let mut health = WriteHealth::default();
                loop {
                    let wait = if health.failing { RETRY_AFTER } else { Duration::from_secs(60) };
                    let first = match rx.recv_timeout(wait) {
                        Ok(r) => Some(r),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            pending.extend(rx.try_iter());
                            let n = flush(&mut store, &mut pending, &stats, &mut health);
                            committed.fetch_sub(n, Ordering::Relaxed);
                            return;
                        }
                    };
                    pending.extend(first);
                    pending.extend(rx.try_iter());
                    let n = flush(&mut store, &mut pending, &stats, &mut health);
                    committed.fetch_sub(n, Ordering::Relaxed);
                    if let Err(e) = store.prune(SystemTime::now()) {
                        health.failed(&e, &stats, pending.len());
                    }
                }
            })
            .ok();
        Writer { tx: Some(tx), held, pending_max: pending_max.max(1), thread }
    }

    /// Queues a record, or drops and counts it when `pending_max` records
    /// already wait for the disk.
    pub fn send(&self, r: &Record, stats: &Stats) {
        let Some(tx) = &self.tx else { return };
        queue(tx, &self.held, self.pending_max, Entry::Record(r.clone()), stats);
    }

    /// A handle that queues load samples from another task (the listener
    /// poller), within the same `pending_max`. `close` waits for every
    /// handle to be dropped.
    pub fn loads(&self) -> LoadSender {
        LoadSender { tx: self.tx.clone(), held: self.held.clone(), pending_max: self.pending_max }
    }

    /// Commits everything sent so far and stops the thread (once every
    /// `LoadSender` is gone too).
    pub fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Queues load samples for the writer thread (`Writer::loads`).
pub struct LoadSender {
    tx: Option<mpsc::Sender<Entry>>,
    held: Arc<AtomicUsize>,
    pending_max: usize,
}

impl LoadSender {
    /// Queues a sample, or drops and counts it (`history_dropped`) when
    /// `pending_max` entries already wait for the disk.
    pub fn send(&self, sample: LoadSample, stats: &Stats) {
        let Some(tx) = &self.tx else { return };
        queue(tx, &self.held, self.pending_max, Entry::Load(Box::new(sample)), stats);
    }
}

fn queue(tx: &mpsc::Sender<Entry>, held: &AtomicUsize, pending_max: usize, entry: Entry, stats: &Stats) {
    if held.load(Ordering::Relaxed) >= pending_max {
        stats.history_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    held.fetch_add(1, Ordering::Relaxed);
    if tx.send(entry).is_err() {
        held.fetch_sub(1, Ordering::Relaxed);
        stats.history_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// How soon a failed commit is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Least time between two warnings while writes keep failing.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether writes fail, and the rate limit of the warnings that say so.
#[derive(Default)]
struct WriteHealth {
    failing: bool,
    last_warning: Option<Instant>,
    failures_since_warning: u64,
}

impl WriteHealth {
    fn failed(&mut self, e: &HistoryError, stats: &Stats, held: usize) {
        stats.history_errors.fetch_add(1, Ordering::Relaxed);
        stats.last_errors.set(crate::health::Output::History, e);
        self.failing = true;
        self.failures_since_warning += 1;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                "{e}; {} failed commits since the last warning; holding {held} records to retry every {}s, \
                 {} dropped so far (history.pending_max)",
                self.failures_since_warning,
                RETRY_AFTER.as_secs(),
                stats.history_dropped.load(Ordering::Relaxed),
            );
            self.last_warning = Some(Instant::now());
            self.failures_since_warning = 0;
        }
    }

    fn succeeded(&mut self, stats: &Stats) {
        if self.failing {
            warn!(
                "history writes work again; {} records were dropped while they failed",
                stats.history_dropped.load(Ordering::Relaxed)
            );
        }
        *self = WriteHealth::default();
    }
}

/// Commits what is pending in transactions of `BATCH` records, oldest
/// first, until all are in or one fails (the rest wait for the retry).
/// Returns how many were committed.
fn flush(store: &mut Store, pending: &mut VecDeque<Entry>, stats: &Stats, health: &mut WriteHealth) -> usize {
    let mut committed = 0;
    while !pending.is_empty() {
        let n = pending.len().min(BATCH);
        let (front, back) = pending.as_slices();
        let result = if front.len() >= n {
            store.write(&front[..n])
        } else {
            let batch: Vec<Entry> = front.iter().chain(back.iter()).take(n).cloned().collect();
            store.write(&batch)
        };
        match result {
            Ok(()) => {
                pending.drain(..n);
                committed += n;
                stats.history_written.fetch_add(n as u64, Ordering::Relaxed);
                health.succeeded(stats);
                if let Err(e) = store.cap_size() {
                    health.failed(&e, stats, pending.len());
                    break;
                }
            }
            Err(e) => {
                health.failed(&e, stats, pending.len());
                break;
            }
        }
    }
    committed
}

/// The read side, for the CLI: read-only, so members of the observer
/// group can use it.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(state_dir: &Path) -> Result<Reader, HistoryError> {
        let path = state_dir.join(DB_FILE);
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(HistoryError::Missing(path)),
            Err(e) => return Err(HistoryError::Io(path, e)),
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| HistoryError::Sql(path.clone(), e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| HistoryError::Sql(path.clone(), e))?;
        // A permission problem shows at the first read, not at open: check now.
        let load: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'load_netns'", [], |r| {
                r.get(0)
            })
            .map_err(|e| HistoryError::Sql(path.clone(), e))?;
        if load == 0 {
            // A history from before the load tables, which a read-only
            // reader cannot add to the file: empty temporary ones (in this
            // connection only) stand in.
            let empty = LOAD_SCHEMA
                .replace("CREATE TABLE IF NOT EXISTS ", "CREATE TEMP TABLE IF NOT EXISTS ")
                .replace("CREATE INDEX IF NOT EXISTS ", "CREATE INDEX IF NOT EXISTS temp.");
            conn.execute_batch(&format!("PRAGMA temp_store = MEMORY; {empty}"))
                .map_err(|e| HistoryError::Sql(path.clone(), e))?;
        }
        Ok(Reader { conn })
    }

    /// The read-only connection, for views whose queries are their own
    /// (`observer report`); the tables are those of `SCHEMA` and `LOAD_SCHEMA`.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Diagnosis episodes seen since `since`, most recent first.
    pub fn diagnoses(&self, since: SystemTime, port: Option<u16>) -> rusqlite::Result<Vec<DiagnosisRecord>> {
        let mut st = self.conn.prepare(
            "SELECT json FROM diagnoses WHERE last_seen_ms >= ?1 AND (?2 IS NULL OR port = ?2)
             ORDER BY last_seen_ms DESC",
        )?;
        let rows = st.query_map(params![ms(since), port], |r| r.get::<_, String>(0))?;
        Ok(rows.filter_map(Result::ok).filter_map(|j| serde_json::from_str(&j).ok()).collect())
    }

    /// Failure events with row id above `after`, oldest first.
    pub fn failures(
        &self,
        since: SystemTime,
        port: Option<u16>,
        after: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<(i64, FailureEvent)>> {
        let mut st = self.conn.prepare(
            "SELECT id, json FROM failures WHERE id > ?1 AND ts_ms >= ?2 AND (?3 IS NULL OR dst_port = ?3)
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = st.query_map(params![after, ms(since), port, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut v: Vec<(i64, FailureEvent)> =
            rows.filter_map(Result::ok).filter_map(|(id, j)| serde_json::from_str(&j).ok().map(|e| (id, e))).collect();
        v.reverse();
        Ok(v)
    }

    /// Occurrences per interval: `n` equal intervals from `from` to `to`,
    /// of the given actions at a namespace's endpoint (or from a source,
    /// for scans).
    pub fn buckets(
        &self,
        q: &BucketQuery<'_>,
        from: SystemTime,
        to: SystemTime,
        n: usize,
    ) -> rusqlite::Result<Vec<u64>> {
        let (start, end) = (ms(from), ms(to).max(ms(from) + 1));
        let width = ((end - start) as f64 / n.max(1) as f64).max(1.0);
        let mut out = vec![0u64; n.max(1)];
        // The actions are bound too: only their placeholders (?6, ?7, ...)
        // are written into the statement.
        let placeholders = (0..q.actions.len()).map(|i| format!("?{}", i + 6)).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT ts_ms, count FROM failures WHERE netns = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3 AND action IN ({placeholders})
             AND (?4 IS NULL OR dst_port = ?4) AND (?5 IS NULL OR src_ip = ?5)"
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&q.netns, &start, &end, &q.port, &q.source];
        let actions: Vec<&'static str> = q.actions.iter().map(|a| a.as_str()).collect();
        bound.extend(actions.iter().map(|a| a as &dyn rusqlite::ToSql));
        let rows = st.query_map(bound.as_slice(), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for (ts, count) in rows.filter_map(Result::ok) {
            let i = (((ts - start) as f64) / width) as usize;
            out[i.min(n.max(1) - 1)] += count.max(0) as u64;
        }
        Ok(out)
    }

    /// Failure counts by action for a port since `since`.
    pub fn actions_for_port(&self, port: u16, since: SystemTime) -> rusqlite::Result<Vec<(u32, String, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT netns, action, sum(count) FROM failures WHERE dst_port = ?1 AND ts_ms >= ?2
             GROUP BY netns, action ORDER BY 3 DESC",
        )?;
        let rows = st.query_map(params![port, ms(since)], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.filter_map(Result::ok).collect())
    }

    pub fn latest_id(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT max(id) FROM failures", [], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(|v| v.flatten().unwrap_or(0))
    }
}

pub struct BucketQuery<'a> {
    pub netns: u32,
    pub actions: &'a [Action],
    pub port: Option<u16>,
    pub source: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::load::{ListenerLoad, NetnsLoad};

    fn failure(ts: SystemTime) -> Entry {
        let json = serde_json::json!({
            "@timestamp": humantime::format_rfc3339_micros(ts).to_string(),
            "event": {"dataset": "observer.failure", "action": "refused", "count": 1, "kind": "event",
                      "category": ["network"], "outcome": "failure"},
            "source": {"ip": "192.0.2.1", "port": 40000}, "destination": {"ip": "10.0.0.1", "port": 80},
            "network": {"transport": "tcp", "type": "ipv4"}, "observer": {"netns": 1, "direction": "inbound"},
        });
        Entry::Record(Record::Failure(serde_json::from_value(json).unwrap()))
    }

    fn load(at: SystemTime, listeners: u16) -> Entry {
        Entry::Load(Box::new(LoadSample {
            at,
            period: Duration::from_secs(60),
            namespaces: vec![NetnsLoad { netns: 1, accepted: 10, connects: 2 }],
            listeners: (0..listeners)
                .map(|port| ListenerLoad {
                    netns: 1,
                    address: "10.0.0.1".parse().unwrap(),
                    port,
                    backlog: 128,
                    max_queue: 3,
                    mean_queue: 1.5,
                    samples: 30,
                })
                .collect(),
        }))
    }

    fn rows(store: &Store, table: &str) -> i64 {
        store.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_size_cap_trims_the_oldest_rows_of_failures_and_load_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), &HistoryConfig::default(), "").unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(86_400);
        // A day ago the load, then the failures: the load is older.
        let old: Vec<Entry> = (0..20).map(|i| load(t0 + Duration::from_secs(i), 200)).collect();
        store.write(&old).unwrap();
        let new: Vec<Entry> = (0..2000).map(|i| failure(t0 + Duration::from_secs(3600 + i))).collect();
        store.write(&new).unwrap();
        assert_eq!(
            (rows(&store, "load_listeners"), rows(&store, "load_netns"), rows(&store, "failures")),
            (4000, 20, 2000)
        );
        store.cfg.max_bytes = store.size_bytes().unwrap() * 3 / 4;
        let deleted = store.cap_size().unwrap();
        assert!(deleted > 0 && store.size_bytes().unwrap() <= store.cfg.max_bytes);
        assert!(rows(&store, "load_listeners") < 4000, "the oldest rows went first");
        assert_eq!(rows(&store, "failures"), 2000, "newer failures stay while older load rows remain to delete");
    }

    #[test]
    fn a_history_from_before_the_load_tables_reads_as_one_without_load() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        drop(conn);
        let reader = Reader::open(dir.path()).unwrap();
        let n: i64 = reader
            .connection()
            .query_row("SELECT count(*) + (SELECT count(*) FROM load_listeners) FROM load_netns", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // And a current one keeps its own.
        let mut store = Store::open(dir.path(), &HistoryConfig::default(), "").unwrap();
        store.write(&[load(SystemTime::now(), 1)]).unwrap();
        let reader = Reader::open(dir.path()).unwrap();
        let n: i64 = reader.connection().query_row("SELECT count(*) FROM load_listeners", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn load_ages_out_with_the_failures() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HistoryConfig { max_age_days: 1, ..HistoryConfig::default() };
        let mut store = Store::open(dir.path(), &cfg, "").unwrap();
        let now = SystemTime::now();
        let batch = [
            load(now - Duration::from_secs(2 * 86_400), 1),
            failure(now - Duration::from_secs(2 * 86_400)),
            load(now - Duration::from_secs(60), 2),
        ];
        store.write(&batch).unwrap();
        store.prune(now).unwrap();
        assert_eq!((rows(&store, "load_netns"), rows(&store, "load_listeners"), rows(&store, "failures")), (1, 2, 0));
    }
}
