//! The failure event of the JSON contract (DESIGN.md section 5), with
//! Elastic Common Schema field names.

use std::net::IpAddr;

use observer_common::Action;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const FAILURE_DATASET: &str = "observer.failure";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEvent {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
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
    pub dataset: String,
    #[serde(with = "action_name")]
    pub action: Action,
    /// Kernel occurrences this record stands for.
    pub count: u64,
    pub kind: String,
    pub category: Vec<String>,
    pub outcome: String,
    /// True for a reconciliation record: occurrences the kernel counted
    /// exactly but no sample carried (rate limit, full ring buffer), reported
    /// per local endpoint without a client (observer/src/counters.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconciled: bool,
}

impl EventMeta {
    pub fn failure(action: Action, count: u64) -> EventMeta {
        EventMeta {
            dataset: FAILURE_DATASET.to_owned(),
            action,
            count,
            kind: "event".to_owned(),
            category: vec!["network".to_owned()],
            outcome: "failure".to_owned(),
            reconciled: false,
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
    pub transport: String,
    #[serde(rename = "type")]
    pub kind: String,
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
    pub stage: Option<String>,
    /// The listening socket, when the kernel gave its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerQueue>,
    /// `inbound` (a client reached this host) or `outbound` (this host connected).
    pub direction: String,
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
