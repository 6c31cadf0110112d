//! Groups failure events by namespace and local endpoint over a sliding
//! window and decides when a diagnosis opens, is updated, escalates and
//! resolves. Pure bookkeeping: no I/O, so the rules are unit-tested here and
//! the facts from the live system are added afterwards (`explain`).

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant, SystemTime},
};

use lru::LruCache;
use observer_common::Action;

use super::{
    group::{Class, Group, Key, Opened},
    record::{Kind, Status},
};
use crate::{
    config::DiagnosisConfig,
    event::{FailureEvent, Process},
};

/// A diagnosis to write now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub key: Key,
    pub status: Status,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Endpoints forgotten because `max_endpoints` was reached.
    pub evicted: u64,
}

pub struct Engine {
    cfg: DiagnosisConfig,
    groups: LruCache<Key, Group>,
    /// Distinct ports each source failed on, to tell a scan from an outage.
    sources: LruCache<(u32, IpAddr), Vec<u16>>,
    pub stats: EngineStats,
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN)
}

/// Which class an event feeds; `None` for events that are not a
/// connection problem of this host (a client resetting, say).
pub fn classify(e: &FailureEvent) -> Option<Class> {
    let inbound = e.observer.direction == "inbound";
    Some(match e.event.action {
        Action::Refused => Class::Refused,
        Action::ListenOverflow => Class::AcceptQueue,
        Action::SynQueueOverflow => Class::SynQueue,
        Action::FirewallDrop => Class::FirewallDrop,
        Action::FirewallReject => Class::FirewallReject,
        Action::ResetSent if inbound => Class::ServerReset,
        Action::SynackRetransmit => Class::Handshake,
        Action::ConnectFailed => match e.observer.reason.as_deref() {
            Some("ECONNREFUSED") => Class::OutboundRefused,
            Some("ETIMEDOUT") => Class::OutboundTimeout,
            _ => Class::OutboundUnreachable,
        },
        _ => return None,
    })
}

impl Engine {
    pub fn new(cfg: DiagnosisConfig) -> Engine {
        Engine {
            groups: LruCache::new(cap(cfg.max_endpoints)),
            sources: LruCache::new(cap(cfg.max_scan_sources)),
            cfg,
            stats: EngineStats::default(),
        }
    }

    pub fn observe(&mut self, e: &FailureEvent, now: SystemTime) {
        let Some(class) = classify(e) else { return };
        let (window, max_clients) = (self.cfg.window_secs, self.cfg.max_clients);
        // A reconciliation record has no client: it cannot make a source a scanner.
        if class.scannable() && self.cfg.scan_ports > 0 && !e.event.reconciled {
            let source = (e.observer.netns, e.source.ip);
            let ports = self.sources.get_or_insert_mut(source, Vec::new);
            if !ports.contains(&e.destination.port) && ports.len() <= self.cfg.scan_ports {
                ports.push(e.destination.port);
            }
            if ports.len() >= self.cfg.scan_ports {
                // A scanner's probes are the scan, not outages of the ports it hit.
                let ports = ports.clone();
                let key = Key { netns: e.observer.netns, class: Class::Scan, ip: e.source.ip, port: 0 };
                let g = self.group(key, now, &e.network.kind);
                g.add(e, now, window, max_clients);
                for p in ports.into_iter().chain([e.destination.port]) {
                    g.add_port(p, 20);
                }
                return;
            }
        }
        let key = Key { netns: e.observer.netns, class, ip: e.destination.ip, port: e.destination.port };
        self.group(key, now, &e.network.kind).add(e, now, window, max_clients);
    }

    fn group(&mut self, key: Key, now: SystemTime, network_type: &str) -> &mut Group {
        if !self.groups.contains(&key) && self.groups.len() == self.groups.cap().get() {
            self.stats.evicted += 1;
        }
        self.groups.get_or_insert_mut(key, || Group::new(now, network_type))
    }

    /// Diagnoses to write now: new episodes, updates at most every
    /// `update_interval_secs` while counts move, an escalation once per
    /// episode, and resolutions after `resolve_after_secs` of quiet.
    /// Quiet groups that never opened are forgotten.
    pub fn due(&mut self, now: SystemTime) -> Vec<Due> {
        let cfg = &self.cfg;
        let update = Duration::from_secs(cfg.update_interval_secs);
        let mut due = Vec::new();
        let mut forget = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            let quiet = now.duration_since(g.last_seen).unwrap_or_default();
            let rate = g.in_window(now, cfg.window_secs);
            let status = match &g.opened {
                None if key.class == Class::Scan => Some(Status::Open),
                None if rate >= cfg.min_failures => Some(Status::Open),
                None => {
                    if quiet > Duration::from_secs(cfg.window_secs) {
                        forget.push(*key);
                    }
                    None
                }
                Some(_) if quiet >= Duration::from_secs(cfg.resolve_after_secs) => Some(Status::Resolved),
                Some(o) if !o.escalated && cfg.escalate_factor > 0 && rate >= o.opening_rate * cfg.escalate_factor => {
                    Some(Status::Escalated)
                }
                Some(o) if g.count != o.emitted_count && o.last_emit.elapsed() >= update => Some(Status::Ongoing),
                Some(_) => None,
            };
            if let Some(status) = status {
                due.push(Due { key: *key, status });
            }
        }
        for k in forget {
            self.groups.pop(&k);
        }
        due
    }

    /// At shutdown: every open diagnosis whose counts moved since it was
    /// last written, so that the history ends with the final counts.
    pub fn unwritten(&self) -> Vec<Due> {
        self.groups
            .iter()
            .filter(|(_, g)| g.opened.as_ref().is_some_and(|o| o.emitted_count != g.count))
            .map(|(key, _)| Due { key: *key, status: Status::Ongoing })
            .collect()
    }

    pub fn group_of(&self, key: &Key) -> Option<&Group> {
        self.groups.peek(key)
    }

    pub fn window(&self, key: &Key, now: SystemTime) -> Vec<u64> {
        self.groups.peek(key).map(|g| g.per_second(now, self.cfg.window_secs)).unwrap_or_default()
    }

    /// Records that the diagnosis for `key` was written; a resolved episode
    /// ends, so the next failure there starts a new one (same id).
    pub fn emitted(
        &mut self,
        key: &Key,
        kind: Kind,
        id: &str,
        status: Status,
        now: SystemTime,
        process: Option<&Process>,
    ) {
        let window = self.cfg.window_secs;
        if status == Status::Resolved {
            self.groups.pop(key);
            return;
        }
        let Some(g) = self.groups.peek_mut(key) else { return };
        let rate = g.in_window(now, window);
        let count = g.count;
        let o = g.opened.get_or_insert_with(|| Opened {
            kind,
            id: id.to_owned(),
            last_emit: Instant::now(),
            last_status: status,
            emitted_count: count,
            opening_rate: rate.max(1),
            escalated: false,
            process: None,
        });
        if o.process.is_none() {
            o.process = process.cloned();
        }
        o.last_emit = Instant::now();
        o.last_status = status;
        o.emitted_count = count;
        o.escalated |= status == Status::Escalated;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Endpoint, EventMeta, Network, ObserverFields};

    fn cfg() -> DiagnosisConfig {
        DiagnosisConfig { update_interval_secs: 0, ..DiagnosisConfig::default() }
    }

    fn ev(action: Action, src: &str, dport: u16, reason: Option<&str>) -> FailureEvent {
        FailureEvent {
            timestamp: String::new(),
            event: EventMeta::failure(action, 1),
            source: Endpoint { ip: src.parse().unwrap(), port: 40000 },
            destination: Endpoint { ip: "10.0.0.1".parse().unwrap(), port: dport },
            network: Network { transport: "tcp".into(), kind: "ipv4".into() },
            observer: ObserverFields {
                netns: 1,
                reason: reason.map(str::to_owned),
                tcp_state: None,
                stage: None,
                listener: None,
                direction: if action == Action::ConnectFailed { "outbound" } else { "inbound" }.into(),
            },
            process: None,
        }
    }

    #[test]
    fn opens_at_the_threshold_then_updates_then_resolves() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        e.observe(&ev(Action::Refused, "192.0.2.1", 8080, None), t0);
        e.observe(&ev(Action::Refused, "192.0.2.1", 8080, None), t0);
        assert!(e.due(t0).is_empty(), "two failures stay below min_failures = 3");
        e.observe(&ev(Action::Refused, "192.0.2.2", 8080, None), t0);
        let due = e.due(t0);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].key.class, due[0].key.port, due[0].status), (Class::Refused, 8080, Status::Open));
        e.emitted(&due[0].key, Kind::NoListener, "x", Status::Open, t0, None);
        assert!(e.due(t0).is_empty(), "nothing new: no update");
        e.observe(&ev(Action::Refused, "192.0.2.3", 8080, None), t0);
        assert_eq!(e.due(t0)[0].status, Status::Ongoing);
        let g = e.group_of(&due[0].key).unwrap();
        assert_eq!((g.count, g.clients()), (4, 3));
        e.emitted(&due[0].key, Kind::NoListener, "x", Status::Ongoing, t0, None);
        let later = t0 + Duration::from_secs(cfg().resolve_after_secs);
        assert_eq!(e.due(later)[0].status, Status::Resolved);
    }

    #[test]
    fn a_scan_is_one_port_scan_not_many_outages() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        for port in 1000..1200 {
            e.observe(&ev(Action::Refused, "198.51.100.7", port, None), t0);
        }
        let due = e.due(t0);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].key.class, Class::Scan);
        assert_eq!(due[0].key.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let g = e.group_of(&due[0].key).unwrap();
        assert_eq!((g.ports.len(), g.distinct_ports), (20, 200));
    }

    #[test]
    fn outbound_errors_pick_the_kind_and_client_resets_are_ignored() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        for reason in ["ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH"] {
            for _ in 0..3 {
                e.observe(&ev(Action::ConnectFailed, "10.0.0.2", 5432, Some(reason)), t0);
            }
        }
        for _ in 0..5 {
            e.observe(&ev(Action::ResetReceived, "192.0.2.1", 80, None), t0);
        }
        let mut classes: Vec<_> = e.due(t0).into_iter().map(|d| d.key.class).collect();
        classes.sort();
        assert_eq!(classes, [Class::OutboundRefused, Class::OutboundTimeout, Class::OutboundUnreachable]);
    }

    #[test]
    fn memory_is_capped_by_endpoints_and_clients() {
        let mut e = Engine::new(DiagnosisConfig { max_endpoints: 8, max_clients: 4, scan_ports: 0, ..cfg() });
        let t0 = SystemTime::now();
        for i in 0..100u32 {
            let src = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            e.observe(&ev(Action::ListenOverflow, &src, 80, None), t0);
            e.observe(&ev(Action::Refused, &src, 2000 + i as u16, None), t0);
        }
        assert_eq!(e.groups.len(), 8);
        assert!(e.stats.evicted > 0);
        let key = Key { netns: 1, class: Class::AcceptQueue, ip: "10.0.0.1".parse().unwrap(), port: 80 };
        if let Some(g) = e.group_of(&key) {
            assert!(g.clients() <= 4 && g.clients_capped);
        }
    }
}
