//! The failure event of the JSON contract (docs/contract.md), with Elastic
//! Common Schema field names, and the closed sets its fields take.
//!
//! Every closed set is a type (`Direction`, `Family`, `Stage`, ...) whose
//! serde names are the contract's words, so the JSON stays byte for byte
//! what it was when these were strings, and a typo is a compile error
//! instead of an event that no query finds. Times are `SystemTime`, written
//! as RFC 3339 at the precision each record has always had (`rfc3339`).

use std::{net::IpAddr, time::SystemTime};

use observer_common::Action;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `event.dataset`: which kind of record a line of the log is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dataset {
    #[serde(rename = "observer.failure")]
    Failure,
    #[serde(rename = "observer.diagnosis")]
    Diagnosis,
}

/// `event.kind` (ECS): a failure is an `event`, a diagnosis an `alert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Event,
    Alert,
}

/// `event.category` (ECS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Network,
}

/// `event.outcome` (ECS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Failure,
}

/// `network.transport` (ECS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
}

/// `network.type` (ECS): the address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// `observer.direction`: whether a client reached this host or this host
/// connected out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `observer.stage`: the handshake stage whose queue overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The SYN found the accept queue (or the SYN queue) full.
    Syn,
    /// The final ACK found the accept queue full.
    Ack,
}

/// RFC 3339 text for `SystemTime` fields, at a fixed precision per field
/// (`with = "rfc3339::micros"`); read back at any precision.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }

    macro_rules! precision {
        ($name:ident, $format:path) => {
            pub mod $name {
                use super::*;

                pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
                    s.collect_str(&$format(*t))
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
                    parse(d)
                }
            }
        };
    }

    precision!(micros, humantime::format_rfc3339_micros);
    precision!(millis, humantime::format_rfc3339_millis);
    precision!(seconds, humantime::format_rfc3339_seconds);
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEvent {
    #[serde(rename = "@timestamp", with = "rfc3339::micros")]
    pub timestamp: SystemTime,
    pub event: EventMeta,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub network: Network,
    pub observer: ObserverFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    pub dataset: Dataset,
    #[serde(with = "action_name")]
    pub action: Action,
    /// Kernel occurrences this record stands for.
    pub count: u64,
    pub kind: EventKind,
    pub category: Vec<Category>,
    pub outcome: Outcome,
    /// True for a reconciliation record: occurrences the kernel counted
    /// exactly but no sample carried (rate limit, full ring buffer), reported
    /// per local endpoint without a client (observer/src/counters.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconciled: bool,
}

impl FailureEvent {
    /// The one way a failure event is made (a sample in `decode`, a
    /// reconciliation record in `counters`): the ECS constants and the
    /// family are set here once; the optional fields start empty.
    pub fn new(
        timestamp: SystemTime,
        action: Action,
        count: u64,
        netns: u32,
        direction: Direction,
        source: Endpoint,
        destination: Endpoint,
    ) -> FailureEvent {
        FailureEvent {
            timestamp,
            event: EventMeta {
                dataset: Dataset::Failure,
                action,
                count,
                kind: EventKind::Event,
                category: vec![Category::Network],
                outcome: Outcome::Failure,
                reconciled: false,
            },
            network: Network { transport: Transport::Tcp, kind: Family::of(destination.ip) },
            source,
            destination,
            observer: ObserverFields { netns, reason: None, tcp_state: None, stage: None, listener: None, direction },
            process: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub transport: Transport,
    #[serde(rename = "type")]
    pub kind: Family,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverFields {
    /// Network namespace inode.
    pub netns: u32,
    /// The kernel's name for why (RST reason, drop reason, errno name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// TCP state of the socket involved, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<String>,
    /// For listen overflows: `syn` or `ack`, the handshake stage that overflowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The listening socket, when the kernel gave its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerQueue>,
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerQueue {
    pub backlog: u32,
    pub queue_len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
}

pub mod action_name {
    use super::*;

    pub fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let name = String::deserialize(d)?;
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event.action {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as the daemon wrote them before the fields were typed (the
    /// README's and the lab's): each must read back and write out byte for
    /// byte, so that the typed fields keep the contract's names and shapes.
    const RECORDS: [&str; 4] = [
        r#"{"@timestamp":"2026-11-21T19:26:12.873991Z","event":{"dataset":"observer.failure","action":"refused","count":1,"kind":"event","category":["network"],"outcome":"failure"},"source":{"ip":"127.0.0.1","port":40001},"destination":{"ip":"127.0.0.1","port":8080},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":4026532177,"reason":"NO_SOCKET","direction":"inbound"}}"#,
        r#"{"@timestamp":"2026-11-21T20:47:55.712243Z","event":{"dataset":"observer.failure","action":"refused","count":499,"kind":"event","category":["network"],"outcome":"failure","reconciled":true},"source":{"ip":"0.0.0.0","port":0},"destination":{"ip":"127.0.0.1","port":8080},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":4026532177,"direction":"inbound"}}"#,
        r#"{"@timestamp":"2026-11-21T19:52:44.873991Z","event":{"dataset":"observer.failure","action":"listen_overflow","count":1,"kind":"event","category":["network"],"outcome":"failure"},"source":{"ip":"fd77:5::2","port":40001},"destination":{"ip":"fd77:5::1","port":7005},"network":{"transport":"tcp","type":"ipv6"},"observer":{"netns":4026532453,"reason":"TCP_LISTEN_OVERFLOW","tcp_state":"TCP_LISTEN","stage":"ack","listener":{"backlog":1,"queue_len":2},"direction":"inbound"},"process":{"pid":19758,"name":"lab-slow"}}"#,
        r#"{"@timestamp":"2026-11-23T10:02:17.402118Z","event":{"dataset":"observer.failure","action":"connect_failed","count":1,"kind":"event","category":["network"],"outcome":"failure"},"source":{"ip":"10.0.0.1","port":51000},"destination":{"ip":"10.0.0.7","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":4026531840,"reason":"ECONNREFUSED","tcp_state":"TCP_SYN_SENT","stage":"syn","direction":"outbound"},"process":{"pid":812,"name":"worker"}}"#,
    ];

    #[test]
    fn records_of_the_contract_read_back_and_write_out_byte_for_byte() {
        for text in RECORDS {
            let e: FailureEvent = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&e).unwrap(), text);
        }
    }

    #[test]
    fn the_builder_writes_what_the_contract_says() {
        let at = humantime::parse_rfc3339("2026-11-21T19:26:12.873991Z").unwrap();
        let mut e = FailureEvent::new(
            at,
            Action::Refused,
            1,
            4026532177,
            Direction::Inbound,
            Endpoint { ip: "127.0.0.1".parse().unwrap(), port: 40001 },
            Endpoint { ip: "127.0.0.1".parse().unwrap(), port: 8080 },
        );
        e.observer.reason = Some("NO_SOCKET".into());
        assert_eq!(serde_json::to_string(&e).unwrap(), RECORDS[0]);
    }

    #[test]
    fn a_closed_set_refuses_a_word_outside_it() {
        let bad = RECORDS[0].replace(r#""direction":"inbound""#, r#""direction":"sideways""#);
        assert!(serde_json::from_str::<FailureEvent>(&bad).is_err());
    }
}
