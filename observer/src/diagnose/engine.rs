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
    event::{Direction, FailureEvent, Family, Process},
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

/// Who probes: a source of inbound failures, or, for this host's own
/// failed connects, their destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Prober {
    netns: u32,
    ip: IpAddr,
    outbound: bool,
}

/// What a prober hit before it was recognised as a scanner.
#[derive(Default)]
struct Probes {
    /// Distinct ports, up to `scan_ports`.
    ports: Vec<u16>,
    /// The per-port groups its first probes went to (up to 4 per port),
    /// which the scan takes over when it is recognised.
    keys: Vec<Key>,
}

/// Ports remembered as scanned, per namespace and direction, so that the
/// scan also gets the reconciliation records of those ports (they carry
/// no client): 16,384 entries, about 1.5 MiB.
const SCANNED_PORTS: usize = 16_384;

pub struct Engine {
    cfg: DiagnosisConfig,
    groups: LruCache<Key, Group>,
    /// Distinct ports each prober failed on, to tell a scan from an outage.
    sources: LruCache<Prober, Probes>,
    /// (netns, outbound, port) -> the scan that last probed it.
    scanned: LruCache<(u32, bool, u16), Key>,
    /// (netns, outbound) -> the scan seen last there.
    last_scan: LruCache<(u32, bool), Key>,
    pub stats: EngineStats,
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN)
}

/// Which class an event feeds; `None` for events that are not a
/// connection problem of this host (a client resetting, say).
pub fn classify(e: &FailureEvent) -> Option<Class> {
    let inbound = e.observer.direction == Direction::Inbound;
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
            scanned: LruCache::new(cap(SCANNED_PORTS)),
            last_scan: LruCache::new(cap(cfg.max_scan_sources)),
            cfg,
            stats: EngineStats::default(),
        }
    }

    /// Adds one failure event (a sample or a reconciliation record).
    ///
    /// Scans: a prober that fails on `scan_ports` distinct ports within the
    /// window is a scanner. From then on its failures feed one `port_scan`
    /// group, never per-port ones; the per-port groups its first probes
    /// went to are taken over by the scan (unless one already opened: then
    /// other clients failed there too, or it was an outage before the scan);
    /// and a reconciliation record of a port it probed joins the scan too,
    /// because in a scan that is where a port's excess comes from.
    pub fn observe(&mut self, e: &FailureEvent, now: SystemTime) {
        let Some(class) = classify(e) else { return };
        let (window, max_clients) = (self.cfg.window_secs, self.cfg.max_clients);
        let key = Key { netns: e.observer.netns, class, ip: e.destination.ip, port: e.destination.port };
        if class.scannable() && self.cfg.scan_ports > 0 {
            if let Some(scan) = self.scan_of(e, key, now) {
                let g = self.group(scan, now, e.network.kind);
                g.add(e, now, window, max_clients);
                g.add_port(e.destination.port, 20);
                self.scanned.put((key.netns, class.outbound(), key.port), scan);
                self.last_scan.put((key.netns, class.outbound()), scan);
                return;
            }
        }
        self.group(key, now, e.network.kind).add(e, now, window, max_clients);
    }

    /// The scan an event belongs to, if its prober is (now) a scanner.
    fn scan_of(&mut self, e: &FailureEvent, key: Key, now: SystemTime) -> Option<Key> {
        let outbound = key.class.outbound();
        // An inbound reconciliation record has no client: it joins the scan
        // that probed its port, or, when no sample of that port got through
        // the sampling budget, the scan going on in its namespace, unless
        // clients other than the scanner failed at that port.
        if e.event.reconciled && !outbound {
            let scan = match self.scanned.get(&(key.netns, false, key.port)) {
                Some(scan) => *scan,
                None if self.groups.peek(&key).is_some_and(|g| g.clients() > 0) => return None,
                None => *self.last_scan.get(&(key.netns, false))?,
            };
            let window = Duration::from_secs(self.cfg.window_secs);
            let g = self.groups.peek(&scan)?;
            return (now.duration_since(g.last_seen).unwrap_or_default() <= window).then_some(scan);
        }
        let prober = Prober { netns: key.netns, ip: if outbound { e.destination.ip } else { e.source.ip }, outbound };
        let scan_ports = self.cfg.scan_ports;
        let probes = self.sources.get_or_insert_mut(prober, Probes::default);
        if !probes.ports.contains(&key.port) && probes.ports.len() < scan_ports {
            probes.ports.push(key.port);
        }
        if probes.ports.len() < scan_ports {
            // A port may feed several classes (refused and unreachable).
            if !probes.keys.contains(&key) && probes.keys.len() < 4 * scan_ports {
                probes.keys.push(key);
            }
            return None;
        }
        let scan = Key {
            netns: key.netns,
            class: if outbound { Class::OutboundScan } else { Class::Scan },
            ip: prober.ip,
            port: 0,
        };
        let taken = std::mem::take(&mut probes.keys);
        let ports = probes.ports.clone();
        if !self.groups.contains(&scan) {
            let max_clients = self.cfg.max_clients;
            let mut first: Vec<Group> = Vec::new();
            for k in taken {
                let mine =
                    self.groups.peek(&k).is_some_and(|g| g.opened.is_none() && (outbound || g.only_from(prober.ip)));
                if mine {
                    first.extend(self.groups.pop(&k));
                }
            }
            let g = self.group(scan, now, e.network.kind);
            for other in first {
                g.absorb(other, max_clients);
            }
            for p in &ports {
                g.add_port(*p, 20);
            }
            for p in ports {
                self.scanned.put((key.netns, outbound, p), scan);
            }
        }
        Some(scan)
    }

    fn group(&mut self, key: Key, now: SystemTime, family: Family) -> &mut Group {
        if !self.groups.contains(&key) && self.groups.len() == self.groups.cap().get() {
            self.stats.evicted += 1;
        }
        self.groups.get_or_insert_mut(key, || Group::new(now, family))
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
                None if key.class.is_scan() => Some(Status::Open),
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
    use crate::event::Endpoint;

    fn cfg() -> DiagnosisConfig {
        DiagnosisConfig { update_interval_secs: 0, ..DiagnosisConfig::default() }
    }

    fn ev(action: Action, src: &str, dport: u16, reason: Option<&str>) -> FailureEvent {
        let direction = if action == Action::ConnectFailed { Direction::Outbound } else { Direction::Inbound };
        let mut e = FailureEvent::new(
            SystemTime::UNIX_EPOCH,
            action,
            1,
            1,
            direction,
            Endpoint { ip: src.parse().unwrap(), port: 40000 },
            Endpoint { ip: "10.0.0.1".parse().unwrap(), port: dport },
        );
        e.observer.reason = reason.map(str::to_owned);
        e
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

    fn reconciled(mut e: FailureEvent, count: u64) -> FailureEvent {
        e.source.ip = "0.0.0.0".parse().unwrap();
        e.event.count = count;
        e.event.reconciled = true;
        e
    }

    #[test]
    fn a_scanner_never_opens_per_port_diagnoses_even_with_reconciliation_records() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        // Sweeps over 300 ports, 40 connects each: the samples of the first
        // ports go to per-port groups before the source is known as a
        // scanner; the rate limit turns the rest into reconciliation records.
        for sweep in 0..2 {
            for port in 2000..2300 {
                e.observe(&ev(Action::Refused, "198.51.100.9", port, None), t0);
                if sweep == 1 {
                    e.observe(&reconciled(ev(Action::Refused, "198.51.100.9", port, None), 38), t0);
                }
            }
        }
        let due = e.due(t0);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].key.class, Class::Scan);
        let g = e.group_of(&due[0].key).unwrap();
        assert_eq!(g.count, 300 * 40, "every failure is the scan's");
        assert_eq!(g.distinct_ports, 300);
    }

    #[test]
    fn this_host_scanning_is_one_outbound_scan() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        // ev() connects from 10.0.0.2 to 10.0.0.1, port by port.
        for port in 3000..3100 {
            for reason in ["ECONNREFUSED", "ECONNREFUSED", "EHOSTUNREACH"] {
                e.observe(&ev(Action::ConnectFailed, "10.0.0.2", port, Some(reason)), t0);
            }
            // The outbound key has the destination: reconciliation records
            // are attributed like samples.
            e.observe(&reconciled(ev(Action::ConnectFailed, "10.0.0.2", port, Some("ECONNREFUSED")), 10), t0);
        }
        let due = e.due(t0);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].key.class, Class::OutboundScan);
        assert_eq!(e.group_of(&due[0].key).unwrap().count, 100 * 13);
    }

    #[test]
    fn an_outage_seen_before_a_scan_stays_an_outage() {
        let mut e = Engine::new(cfg());
        let t0 = SystemTime::now();
        for client in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            e.observe(&ev(Action::Refused, client, 8080, None), t0);
        }
        let due = e.due(t0);
        e.emitted(&due[0].key, Kind::NoListener, "x", Status::Open, t0, None);
        for port in 8070..8100 {
            e.observe(&ev(Action::Refused, "198.51.100.9", port, None), t0);
        }
        let classes: Vec<_> = e.groups.iter().map(|(k, _)| k.class).collect();
        assert!(classes.contains(&Class::Refused) && classes.contains(&Class::Scan), "{classes:?}");
    }
}
