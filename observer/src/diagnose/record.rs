//! The diagnosis record of the JSON contract (docs/contract.md).

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    enrich::{FirewallRule, Listener},
    event::{rfc3339, Category, Dataset, Direction, Endpoint, EventKind, Network, Process},
};

/// What is wrong (docs/design.md, section 1; the kinds in docs/contract.md, section 3), plus `port_scan`: a scan is
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
    #[serde(rename = "@timestamp", with = "rfc3339::seconds")]
    pub timestamp: SystemTime,
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
    pub dataset: Dataset,
    /// ECS: a diagnosis is a finding about the host, not a raw event.
    pub kind: EventKind,
    pub category: Vec<Category>,
}

impl Default for DiagnosisMeta {
    fn default() -> Self {
        DiagnosisMeta { dataset: Dataset::Diagnosis, kind: EventKind::Alert, category: vec![Category::Network] }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Where {
    pub netns: u32,
    pub direction: Direction,
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
    /// To the millisecond: an episode's start is its identity in the
    /// history, and a daemon restarted within a second must not merge its
    /// new episode into the old one.
    #[serde(with = "rfc3339::millis")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339::seconds")]
    pub last_seen: SystemTime,
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
    #[serde(with = "rfc3339::seconds")]
    pub last_seen: SystemTime,
    /// First time it was found gone.
    #[serde(with = "rfc3339::seconds")]
    pub gone_by: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSeen {
    pub backlog: u32,
    /// The longest queue seen.
    pub max_queue_len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diagnosis as the daemon wrote it before its fields were typed
    /// (the README's, with `first_seen` to the millisecond): it must read
    /// back and write out byte for byte.
    const RECORD: &str = r#"{"@timestamp":"2026-11-21T19:52:45Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"no_listener","id":"a41c0a3c2e8f1b77","status":"open","summary":"Nothing listens on port 8080.","advice":["Start it."],"evidence":{"actions":{"refused":6},"reasons":{"NO_SOCKET":6},"per_second":[0,6],"sample_clients":["10.77.5.2"],"previous_listener":{"address":"0.0.0.0","port":8080,"backlog":511,"queue":0,"pid":19758,"name":"lab-web","last_seen":"2026-11-21T19:52:40Z","gone_by":"2026-11-21T19:52:42Z"},"sysctls":{"net.core.somaxconn":4096},"unavailable":["nftables ruleset: nft: no answer within 2000 ms (killed)"]},"first_seen":"2026-11-21T19:52:44.315Z","last_seen":"2026-11-21T19:52:45Z","count":6,"clients":1},"destination":{"ip":"10.77.5.1","port":8080},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":4026532453,"direction":"inbound"}}"#;

    #[test]
    fn a_diagnosis_of_the_contract_reads_back_and_writes_out_byte_for_byte() {
        let d: DiagnosisRecord = serde_json::from_str(RECORD).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), RECORD);
    }
}
