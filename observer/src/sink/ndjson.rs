//! The NDJSON log: one JSON object per line, for SIEM shippers.
//!
//! Flush policy: lines are buffered and flushed whenever the pipeline has
//! no more events waiting (so a shipper tailing the file sees an event
//! within milliseconds), and fsync'd on shutdown. A write error (disk full)
//! is counted and reported, never fatal: the record stays in the history.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

pub struct NdjsonSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl NdjsonSink {
    pub fn open(path: &Path) -> std::io::Result<NdjsonSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(NdjsonSink { path: path.to_owned(), out: BufWriter::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Flushes and fsyncs: what is acknowledged is on disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
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
}
