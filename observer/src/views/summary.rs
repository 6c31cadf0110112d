//! `observer summary`: the diagnoses of a period, with a sparkline of
//! their failures so that peaks and patterns show at a glance.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use super::{actions_of, fit, short_time, sparkline};
use crate::{
    diagnose::record::Kind,
    history::{BucketQuery, Reader},
};

/// Intervals in the activity column.
pub const INTERVALS: usize = 24;

pub fn json(reader: &Reader, since: Duration, port: Option<u16>) -> anyhow::Result<String> {
    let records = reader.diagnoses(SystemTime::now() - since, port)?;
    Ok(serde_json::to_string_pretty(&records)?)
}

pub fn table(reader: &Reader, since: Duration, port: Option<u16>, out: &mut impl Write) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let from = now - since;
    let records = reader.diagnoses(from, port)?;
    if records.is_empty() {
        writeln!(out, "No diagnoses in the last {}.", humantime::format_duration(since))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<26} {:<22} {:<18} {:>7} {:>7}  {:<8} {:<8} {:<9} ACTIVITY (last {}, {} intervals)",
        "KIND",
        "ENDPOINT",
        "PROCESS",
        "COUNT",
        "CLIENTS",
        "FIRST",
        "LAST",
        "STATUS",
        humantime::format_duration(since),
        INTERVALS
    )?;
    for r in &records {
        let d = &r.diagnosis;
        let endpoint = match (d.kind, r.source.as_ref()) {
            (Kind::PortScan, Some(s)) => format!("from {}", s.ip),
            _ => crate::diagnose::explain::endpoint(r.destination.ip, r.destination.port),
        };
        let process = r.process.as_ref().map(|p| format!("{} ({})", p.name, p.pid)).unwrap_or_else(|| "-".to_owned());
        let q = BucketQuery {
            netns: r.observer.netns,
            actions: actions_of(d.kind),
            port: (d.kind != Kind::PortScan).then_some(r.destination.port),
            source: r.source.as_ref().map(|s| s.ip.to_string()),
        };
        let activity = reader.buckets(&q, from, now, INTERVALS).map(|b| sparkline(&b)).unwrap_or_default();
        let status = d.status.as_str();
        writeln!(
            out,
            "{:<26} {:<22} {:<18} {:>7} {:>7}  {:<8} {:<8} {:<9} |{activity}|",
            d.kind.as_str(),
            fit(&endpoint, 22),
            fit(&process, 18),
            d.count,
            d.clients,
            short_time(d.first_seen, now),
            short_time(d.last_seen, now),
            status,
        )?;
        writeln!(out, "    {}", d.summary)?;
    }
    Ok(())
}
