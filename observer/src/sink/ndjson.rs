//! The NDJSON log: one JSON object per line, for SIEM shippers.
//!
//! Durability policy:
//! - lines are buffered and handed to the kernel whenever the pipeline has
//!   no more records waiting, so a shipper tailing the file sees a record
//!   within milliseconds;
//! - fsync at most every `fsync_interval` while records arrive (a crash of
//!   the host loses at most that much of the log; the history database
//!   commits on its own), before each rotation, and at shutdown;
//! - size-based rotation: past `max_bytes` the file is renamed to `.1`
//!   (older ones shift to `.2` ... `.keep`, the oldest is deleted) and a new
//!   file is started, the way logrotate's `create` mode does, which every
//!   shipper follows by inode;
//! - a write error (disk full) is counted and reported, never fatal: the
//!   record is still in the history and the other outputs;
//! - logrotate-safe: `reopen` (on SIGHUP) starts writing to the file at the
//!   path again, and so does a check, at most once a second, that notices
//!   the path now names another file or none (logrotate's move-and-create
//!   without a postrotate signal) or a shorter one (copytruncate). The old
//!   file is flushed and fsync'd first, so no line is lost across a rotation;
//! - the file is 0640 and, with `group`, owned by that group, so the
//!   admins who read the history can read the log too.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

/// Rotation and fsync settings.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Rotate past this size (0: never).
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
    pub fsync_interval: Duration,
    /// Group given the file (read access through its 0640 mode).
    pub gid: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_bytes: 0, keep: 0, fsync_interval: Duration::from_secs(5), gid: None }
    }
}

/// How often the path is compared with the open file.
const MOVED_CHECK: Duration = Duration::from_secs(1);

pub struct NdjsonSink {
    path: PathBuf,
    out: BufWriter<File>,
    policy: Policy,
    size: u64,
    last_sync: Instant,
    last_moved_check: Instant,
    dirty: bool,
}

impl NdjsonSink {
    pub fn open(path: &Path) -> std::io::Result<NdjsonSink> {
        NdjsonSink::with_policy(path, Policy::default())
    }

    pub fn with_policy(path: &Path, policy: Policy) -> std::io::Result<NdjsonSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path, policy.gid)?;
        let size = file.metadata()?.len();
        Ok(NdjsonSink {
            path: path.to_owned(),
            out: BufWriter::new(file),
            policy,
            size,
            last_sync: Instant::now(),
            last_moved_check: Instant::now(),
            dirty: false,
        })
    }

    /// Finishes the open file (flush, fsync) and opens the one at the path,
    /// creating it if logrotate moved the old one away.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let file = open_append(&self.path, self.policy.gid)?;
        self.size = file.metadata()?.len();
        self.out = BufWriter::new(file);
        Ok(())
    }

    /// Whether the path no longer names the open file, or names it
    /// truncated (copytruncate): then the size count starts again.
    fn moved(&mut self) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let open = self.out.get_ref().metadata()?;
        match std::fs::metadata(&self.path) {
            Ok(at_path) if at_path.dev() == open.dev() && at_path.ino() == open.ino() => {
                if open.len() < self.size {
                    self.size = open.len();
                }
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.policy.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.policy.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Hands buffered lines to the kernel, and fsyncs when the interval has passed.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.last_moved_check.elapsed() >= MOVED_CHECK {
            self.last_moved_check = Instant::now();
            if self.moved()? {
                return self.reopen();
            }
        }
        if self.dirty && self.last_sync.elapsed() >= self.policy.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Flushes and fsyncs: what is acknowledged is on disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let keep = self.policy.keep;
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(keep));
            for n in (1..keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.out = BufWriter::new(open_append(&self.path, self.policy.gid)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path, gid: Option<u32>) -> std::io::Result<File> {
    // 0640: the log holds client addresses; readable by the observer group.
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
    if let Some(gid) = gid {
        std::os::unix::fs::fchown(&file, None, Some(gid))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_object_per_line_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/log.ndjson");
        let mut s = NdjsonSink::open(&path).unwrap();
        s.write(&serde_json::json!({"a": 1})).unwrap();
        s.write(&serde_json::json!({"b": "x\ny"})).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = NdjsonSink::open(&path).unwrap();
        s.write(&serde_json::json!({"c": 3})).unwrap();
        s.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for l in lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.ndjson");
        let policy = Policy { max_bytes: 100, keep: 2, fsync_interval: Duration::ZERO, gid: None };
        let mut s = NdjsonSink::with_policy(&path, policy).unwrap();
        for i in 0..40 {
            s.write(&serde_json::json!({"n": i, "pad": "xxxxxxxxxxxxxxxx"})).unwrap();
            s.flush().unwrap();
        }
        s.sync().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (cur, one, two) =
            (read(&path), read(&dir.path().join("log.ndjson.1")), read(&dir.path().join("log.ndjson.2")));
        assert!(!dir.path().join("log.ndjson.3").exists(), "only `keep` rotated files");
        for text in [&cur, &one, &two] {
            assert!(!text.is_empty() && text.len() <= 100, "{text:?}");
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        assert!(cur.contains("\"n\":39"), "the newest record is in the current file");
        let n = |t: &str| {
            t.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (n(&two), n(&one), n(&cur));
        assert!(a.last() < b.first() && b.last() < c.first(), "{a:?} {b:?} {c:?}");
    }

    #[test]
    fn reopen_after_a_move_writes_to_a_new_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.ndjson");
        let mut s = NdjsonSink::open(&path).unwrap();
        s.write(&serde_json::json!({"n": 1})).unwrap();
        // logrotate's default: rename, then signal.
        std::fs::rename(&path, dir.path().join("log.ndjson.1")).unwrap();
        s.write(&serde_json::json!({"n": 2})).unwrap();
        s.reopen().unwrap();
        s.write(&serde_json::json!({"n": 3})).unwrap();
        s.sync().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("log.ndjson.1")).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
    }

    #[test]
    fn a_move_without_a_signal_is_noticed_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.ndjson");
        let mut s = NdjsonSink::open(&path).unwrap();
        s.write(&serde_json::json!({"n": 1})).unwrap();
        s.flush().unwrap();
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::thread::sleep(MOVED_CHECK + Duration::from_millis(50));
        s.write(&serde_json::json!({"n": 2})).unwrap();
        s.flush().unwrap();
        s.write(&serde_json::json!({"n": 3})).unwrap();
        s.sync().unwrap();
        let old = std::fs::read_to_string(dir.path().join("old")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(format!("{old}{new}").lines().count(), 3, "old {old:?} new {new:?}");
        assert!(new.contains("\"n\":3"), "{new:?}");
    }
}
