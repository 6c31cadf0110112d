//! Records for the sinks' unit tests: one refused connection, one
//! diagnosis of any kind and status.
#![allow(clippy::unwrap_used)] // test data that does not parse is a failed test

use super::Record;
use crate::{
    diagnose::record::DiagnosisRecord,
    event::{Direction, Endpoint, FailureEvent},
};

/// `count` refused connections from 10.0.0.1:40000 to 10.0.0.2:`port`,
/// in namespace 4026532177, at 2026-01-01T00:00:00.000001Z.
pub fn failure(port: u16, count: u64) -> Record {
    let mut e = FailureEvent::new(
        humantime::parse_rfc3339("2026-01-01T00:00:00.000001Z").unwrap(),
        observer_common::Action::Refused,
        count,
        4026532177,
        Direction::Inbound,
        Endpoint { ip: "10.0.0.1".parse().unwrap(), port: 40000 },
        Endpoint { ip: "10.0.0.2".parse().unwrap(), port },
    );
    e.observer.reason = Some("NO_SOCKET".into());
    Record::Failure(e)
}

/// A diagnosis of port 8080 with three refused connections as evidence.
pub fn diagnosis(kind: &str, id: &str, status: &str) -> Box<DiagnosisRecord> {
    let v = serde_json::json!({
        "@timestamp": "2026-01-01T00:00:00Z",
        "event": { "dataset": "observer.diagnosis", "kind": "alert", "category": ["network"] },
        "diagnosis": {
            "kind": kind, "id": id, "status": status, "summary": "nothing listens",
            "advice": [], "evidence": { "actions": { "refused": 3 }, "sample_clients": [] },
            "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z",
            "count": 3, "clients": 1
        },
        "destination": { "ip": "127.0.0.1", "port": 8080 },
        "network": { "transport": "tcp", "type": "ipv4" },
        "observer": { "netns": 1, "direction": "inbound" }
    });
    Box::new(serde_json::from_value(v).unwrap())
}
