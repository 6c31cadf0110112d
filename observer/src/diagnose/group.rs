//! The failures of one (namespace, class, local endpoint) over a sliding
//! window: what a diagnosis is made of. Every collection is capped so that
//! a flood from a million addresses costs a bounded amount of memory.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use super::record::{Kind, QueueSeen, Status};
use crate::event::{FailureEvent, Family, Process};

/// Which diagnosis family an event feeds. A refused connection becomes
/// `no_listener` or `listener_address_mismatch` only once the listeners
/// of the namespace have been looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Refused,
    AcceptQueue,
    SynQueue,
    FirewallDrop,
    FirewallReject,
    ServerReset,
    Handshake,
    OutboundRefused,
    OutboundTimeout,
    OutboundUnreachable,
    /// One source probing many ports of this host.
    Scan,
    /// This host probing many ports of one destination.
    OutboundScan,
}

impl Class {
    /// The kind, for classes that have exactly one.
    pub fn kind(self) -> Option<Kind> {
        Some(match self {
            Class::Refused => return None,
            Class::AcceptQueue => Kind::AcceptQueueFull,
            Class::SynQueue => Kind::SynFlood,
            Class::FirewallDrop => Kind::FirewallDrop,
            Class::FirewallReject => Kind::FirewallReject,
            Class::ServerReset => Kind::ServerReset,
            Class::Handshake => Kind::HandshakeIncomplete,
            Class::OutboundRefused => Kind::OutboundRefused,
            Class::OutboundTimeout => Kind::OutboundTimeout,
            Class::OutboundUnreachable => Kind::OutboundUnreachable,
            Class::Scan | Class::OutboundScan => Kind::PortScan,
        })
    }

    /// Failures a port scan produces: one SYN to each of many ports, seen
    /// at the scanned host (inbound) or at the scanning one (outbound).
    pub fn scannable(self) -> bool {
        matches!(
            self,
            Class::Refused
                | Class::FirewallDrop
                | Class::FirewallReject
                | Class::OutboundRefused
                | Class::OutboundTimeout
                | Class::OutboundUnreachable
        )
    }

    pub fn outbound(self) -> bool {
        matches!(
            self,
            Class::OutboundRefused | Class::OutboundTimeout | Class::OutboundUnreachable | Class::OutboundScan
        )
    }

    pub fn is_scan(self) -> bool {
        matches!(self, Class::Scan | Class::OutboundScan)
    }
}

/// A local endpoint (the destination for inbound failures, the remote
/// server for outbound ones; the scanner's address for a scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub netns: u32,
    pub class: Class,
    pub ip: IpAddr,
    pub port: u16,
}

/// The episode a group is in once its diagnosis has been emitted.
#[derive(Clone, Debug)]
pub struct Opened {
    pub kind: Kind,
    pub id: String,
    pub last_emit: Instant,
    pub last_status: Status,
    /// `count` at the last emission: an update is due only when it moved.
    pub emitted_count: u64,
    /// The window count when the episode opened, for escalation.
    pub opening_rate: u64,
    pub escalated: bool,
    /// The process named when the episode opened: it stays the answer
    /// after that process exits (a crashed listener is the point).
    pub process: Option<Process>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub count: u64,
    pub family: Family,
    /// (unix second, occurrences), oldest first, within the window.
    buckets: VecDeque<(u64, u64)>,
    pub actions: BTreeMap<String, u64>,
    pub reasons: BTreeMap<String, u64>,
    clients: HashMap<IpAddr, u64>,
    /// More distinct clients came than `max_clients` keeps.
    pub clients_capped: bool,
    processes: HashMap<Process, u64>,
    pub queue: Option<QueueSeen>,
    /// Ports probed (scans only): the first 20, and how many distinct.
    pub ports: Vec<u16>,
    pub distinct_ports: u32,
    /// One bit per port, allocated for scans only (8 KiB).
    port_bits: Option<Box<[u64; 1024]>>,
    pub opened: Option<Opened>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Group {
    pub fn new(now: SystemTime, family: Family) -> Group {
        Group {
            first_seen: now,
            last_seen: now,
            count: 0,
            family,
            buckets: VecDeque::new(),
            actions: BTreeMap::new(),
            reasons: BTreeMap::new(),
            clients: HashMap::new(),
            clients_capped: false,
            processes: HashMap::new(),
            queue: None,
            ports: Vec::new(),
            distinct_ports: 0,
            port_bits: None,
            opened: None,
        }
    }

    pub fn add(&mut self, e: &FailureEvent, now: SystemTime, window: u64, max_clients: usize) {
        let n = e.event.count.max(1);
        self.count += n;
        self.last_seen = now;
        let sec = unix_secs(now);
        match self.buckets.back_mut() {
            Some((s, c)) if *s == sec => *c += n,
            _ => self.buckets.push_back((sec, n)),
        }
        self.expire(now, window);
        *self.actions.entry(e.event.action.as_str().to_owned()).or_default() += n;
        if let Some(r) = &e.observer.reason {
            *self.reasons.entry(r.clone()).or_default() += n;
        }
        // A reconciliation record has no client: it is counted per endpoint only.
        let client = (!e.event.reconciled).then_some(e.source.ip);
        if let Some(client) = client {
            if let Some(c) = self.clients.get_mut(&client) {
                *c += n;
            } else if self.clients.len() < max_clients {
                self.clients.insert(client, n);
            } else {
                self.clients_capped = true;
            }
        }
        if let Some(p) = &e.process {
            if self.processes.len() < 64 || self.processes.contains_key(p) {
                *self.processes.entry(p.clone()).or_default() += n;
            }
        }
        if let Some(l) = &e.observer.listener {
            let q = self.queue.get_or_insert(QueueSeen { backlog: l.backlog, max_queue_len: 0 });
            q.backlog = l.backlog;
            q.max_queue_len = q.max_queue_len.max(l.queue_len);
        }
    }

    /// Whether every failure came from `client` (and none from a
    /// reconciliation record, whose client is unknown).
    pub fn only_from(&self, client: IpAddr) -> bool {
        !self.clients_capped && self.clients.len() == 1 && self.clients.get(&client) == Some(&self.count)
    }

    /// Takes in the failures of a group that turned out to be part of this
    /// one (the first probes of a scan, before it was recognised as one).
    pub fn absorb(&mut self, other: Group, max_clients: usize) {
        self.count += other.count;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        for (sec, n) in other.buckets {
            match self.buckets.iter_mut().find(|(s, _)| *s == sec) {
                Some((_, c)) => *c += n,
                None => {
                    let at = self.buckets.partition_point(|(s, _)| *s < sec);
                    self.buckets.insert(at, (sec, n));
                }
            }
        }
        for (k, n) in other.actions {
            *self.actions.entry(k).or_default() += n;
        }
        for (k, n) in other.reasons {
            *self.reasons.entry(k).or_default() += n;
        }
        for (client, n) in other.clients {
            if let Some(c) = self.clients.get_mut(&client) {
                *c += n;
            } else if self.clients.len() < max_clients {
                self.clients.insert(client, n);
            } else {
                self.clients_capped = true;
            }
        }
        for (p, n) in other.processes {
            if self.processes.len() < 64 || self.processes.contains_key(&p) {
                *self.processes.entry(p).or_default() += n;
            }
        }
    }

    pub fn add_port(&mut self, port: u16, cap: usize) {
        let bits = self.port_bits.get_or_insert_with(|| Box::new([0; 1024]));
        let (word, bit) = (port as usize / 64, 1u64 << (port % 64));
        if bits[word] & bit != 0 {
            return;
        }
        bits[word] |= bit;
        self.distinct_ports += 1;
        if self.ports.len() < cap {
            self.ports.push(port);
        }
    }

    fn expire(&mut self, now: SystemTime, window: u64) {
        let oldest = unix_secs(now).saturating_sub(window.saturating_sub(1));
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest) {
            self.buckets.pop_front();
        }
    }

    /// Occurrences within the window ending now.
    pub fn in_window(&mut self, now: SystemTime, window: u64) -> u64 {
        self.expire(now, window);
        self.buckets.iter().map(|(_, c)| c).sum()
    }

    /// Occurrences per second over the window, oldest first, ending now.
    pub fn per_second(&self, now: SystemTime, window: u64) -> Vec<u64> {
        let end = unix_secs(now);
        let start = end.saturating_sub(window.saturating_sub(1));
        let mut out = vec![0; (end - start + 1) as usize];
        for (s, c) in self.buckets.iter().filter(|(s, _)| (start..=end).contains(s)) {
            out[(s - start) as usize] += c;
        }
        out
    }

    /// Distinct clients (a lower bound once capped).
    pub fn clients(&self) -> u64 {
        self.clients.len() as u64
    }

    pub fn top_clients(&self, n: usize) -> Vec<IpAddr> {
        let mut v: Vec<_> = self.clients.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter().take(n).map(|(ip, _)| *ip).collect()
    }

    pub fn top_processes(&self, n: usize) -> Vec<Process> {
        let mut v: Vec<_> = self.processes.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.pid.cmp(&b.0.pid)));
        v.into_iter().take(n).map(|(p, _)| p.clone()).collect()
    }
}
