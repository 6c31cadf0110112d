//! The diagnosis record of the JSON contract (DESIGN.md section 5).

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    enrich::{FirewallRule, Listener},
    event::{Endpoint, Network, Process},
};

pub const DIAGNOSIS_DATASET: &str = "observer.diagnosis";

/// What is wrong (DESIGN.md section 1), plus `port_scan`: a scan is
/// reported as what it is, not as a service problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NoListener,
    ListenerAddressMismatch,
    AcceptQueueFull,
    SynFlood,
    FirewallDrop,
    FirewallReject,
    ServerReset,
    HandshakeIncomplete,
    OutboundRefused,
    OutboundTimeout,
    OutboundUnreachable,
    PortScan,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::NoListener,
        Kind::ListenerAddressMismatch,
        Kind::AcceptQueueFull,
        Kind::SynFlood,
        Kind::FirewallDrop,
        Kind::FirewallReject,
        Kind::ServerReset,
        Kind::HandshakeIncomplete,
        Kind::OutboundRefused,
        Kind::OutboundTimeout,
        Kind::OutboundUnreachable,
        Kind::PortScan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NoListener => "no_listener",
            Kind::ListenerAddressMismatch => "listener_address_mismatch",
            Kind::AcceptQueueFull => "accept_queue_full",
            Kind::SynFlood => "syn_flood",
            Kind::FirewallDrop => "firewall_drop",
            Kind::FirewallReject => "firewall_reject",
            Kind::ServerReset => "server_reset",
            Kind::HandshakeIncomplete => "handshake_incomplete",
            Kind::OutboundRefused => "outbound_refused",
            Kind::OutboundTimeout => "outbound_timeout",
            Kind::OutboundUnreachable => "outbound_unreachable",
            Kind::PortScan => "port_scan",
        }
    }

    pub fn outbound(self) -> bool {
        matches!(self, Kind::OutboundRefused | Kind::OutboundTimeout | Kind::OutboundUnreachable)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown diagnosis kind {s:?}"))
    }
}

/// Where a diagnosis stands in its episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// First record of an episode.
    Open,
    /// The failures go on (same id, new counts).
    Ongoing,
    /// The failure rate grew well beyond what opened it.
    Escalated,
    /// No failure for the quiet period: the last record of the episode.
    Resolved,
}

impl Status {
    /// The serde name, for tables, labels and the history's index column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Ongoing => "ongoing",
            Status::Escalated => "escalated",
            Status::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: DiagnosisMeta,
    pub diagnosis: Diagnosis,
    /// The scanner, for `port_scan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceIp>,
    pub destination: Endpoint,
    pub network: Network,
    pub observer: Where,
    /// The listener's process (inbound) or the connecting process (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIp {
    pub ip: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosisMeta {
    pub dataset: String,
    /// ECS: a diagnosis is a finding about the host, not a raw event.
    pub kind: String,
    pub category: Vec<String>,
}

impl Default for DiagnosisMeta {
    fn default() -> Self {
        DiagnosisMeta {
            dataset: DIAGNOSIS_DATASET.to_owned(),
            kind: "alert".to_owned(),
            category: vec!["network".to_owned()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Where {
    pub netns: u32,
    pub direction: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub kind: Kind,
    /// Stable for the same kind, namespace and local endpoint.
    pub id: String,
    pub status: Status,
    pub summary: String,
    pub advice: Vec<String>,
    pub evidence: Evidence,
    pub first_seen: String,
    pub last_seen: String,
    /// Kernel occurrences in this episode (the events' `event.count` summed).
    pub count: u64,
    /// Distinct client addresses in this episode.
    pub clients: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Occurrences by `event.action`.
    pub actions: BTreeMap<String, u64>,
    /// Occurrences by the kernel's reason (RST reason, drop reason, errno).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, u64>,
    /// Failures per second over the diagnosis window, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_second: Vec<u64>,
    /// Up to ten client addresses, most frequent first.
    pub sample_clients: Vec<IpAddr>,
    /// The listener involved, as the kernel and /proc show it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerEvidence>,
    /// Listeners on the same port that do not take these connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_listeners: Vec<ListenerEvidence>,
    /// A listener on the port that went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_listener: Option<PreviousListener>,
    /// Accept- or SYN-queue state the kernel reported with the failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seen: Option<QueueSeen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_rule: Option<FirewallRule>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, i64>,
    /// Processes behind outbound failures, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    /// Ports probed, for a scan (up to 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Facts that could not be read (so that a missing one is never silent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerEvidence {
    pub address: IpAddr,
    pub port: u16,
    pub backlog: u32,
    pub queue: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub v6only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ListenerEvidence {
    pub fn new(l: &Listener, owner: Option<&crate::enrich::Owner>, netns: Option<u32>) -> ListenerEvidence {
        ListenerEvidence {
            address: l.address,
            port: l.port,
            backlog: l.backlog,
            queue: l.queue,
            v6only: l.v6only,
            netns,
            pid: owner.map(|o| o.pid),
            name: owner.map(|o| o.name.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousListener {
    #[serde(flatten)]
    pub listener: ListenerEvidence,
    /// Last time it was seen listening.
    pub last_seen: String,
    /// First time it was found gone.
    pub gone_by: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSeen {
    pub backlog: u32,
    /// The longest queue seen.
    pub max_queue_len: u32,
}
