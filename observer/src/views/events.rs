//! `observer events`: the failure events of a period, and `--follow` for
//! new ones as the daemon commits them.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use super::{fit, short_time};
use crate::{event::FailureEvent, history::Reader};

/// Rows printed at most without `--follow` (the newest).
pub const LIMIT: usize = 1000;

pub fn header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<18} {:<24} {:<24} {:>6} {:<18} {:<16} NETNS",
        "TIME", "ACTION", "SOURCE", "DESTINATION", "COUNT", "REASON", "PROCESS"
    )
}

fn addr(ip: std::net::IpAddr, port: u16) -> String {
    crate::diagnose::explain::endpoint(ip, port)
}

pub fn row(e: &FailureEvent, now: SystemTime, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<18} {:<24} {:<24} {:>6} {:<18} {:<16} {}",
        short_time(e.timestamp, now),
        e.event.action.as_str(),
        fit(&addr(e.source.ip, e.source.port), 24),
        fit(&addr(e.destination.ip, e.destination.port), 24),
        e.event.count,
        fit(e.observer.reason.as_deref().unwrap_or("-"), 18),
        fit(&e.process.as_ref().map(|p| format!("{} ({})", p.name, p.pid)).unwrap_or_else(|| "-".into()), 16),
        e.observer.netns
    )
}

/// Prints the events since `since`, then, with `follow`, new ones until
/// interrupted. `json`: one JSON object per line, as in the log.
pub fn show(reader: &Reader, since: Duration, port: Option<u16>, json: bool, follow: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !json {
        header(&mut out)?;
    }
    let mut last = 0;
    let mut from = SystemTime::now() - since;
    loop {
        let rows = reader.failures(from, port, last, if follow && last > 0 { usize::MAX >> 1 } else { LIMIT })?;
        let now = SystemTime::now();
        for (id, e) in &rows {
            last = *id;
            if json {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            } else {
                row(e, now, &mut out)?;
            }
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        if last == 0 {
            last = reader.latest_id()?;
            from = SystemTime::UNIX_EPOCH;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
