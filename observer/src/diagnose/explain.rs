//! Turns a group of failures plus the live system's facts into the
//! sentence and the advice an admin reads. The kind of a refused
//! connection is decided here, because only the listeners tell
//! "nothing listens" from "listens on the wrong address".

use std::{fmt::Write as _, net::IpAddr, time::SystemTime};

use super::{
    group::{Class, Group, Key},
    record::{
        Diagnosis, DiagnosisMeta, DiagnosisRecord, Evidence, Kind, ListenerEvidence, PreviousListener, SourceIp,
        Status, Where,
    },
};
use crate::{
    enrich::{Facts, OwnedListener},
    event::{Direction, Endpoint, Network, Process, Transport},
};

/// The kind a group's diagnosis has, given the facts.
pub fn kind(key: &Key, facts: &Facts) -> Kind {
    if let Some(k) = key.class.kind() {
        return k;
    }
    // Served, but not where these clients connect: on another address or
    // family here (on_port), or only in another namespace (elsewhere).
    let served_elsewhere = !facts.on_port.is_empty() || !facts.elsewhere.is_empty();
    if served_elsewhere && facts.serving(key.ip).is_none() {
        Kind::ListenerAddressMismatch
    } else {
        Kind::NoListener
    }
}

/// A stable id: the same kind, namespace and endpoint always give the same
/// id, across restarts and hosts' daemons (FNV-1a, not the randomised std hasher).
pub fn id(kind: Kind, key: &Key) -> String {
    // A scan of X and a scan by X are two diagnoses (both at port 0).
    let out = if key.class == Class::OutboundScan { "|out" } else { "" };
    let text = format!("{}|{}|{}|{}{out}", kind.as_str(), key.netns, key.ip, key.port);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn who(l: &OwnedListener) -> String {
    match &l.owner {
        Some(o) => format!("{} (pid {})", o.name, o.pid),
        None => "a process this host did not name".to_owned(),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Everything a diagnosis record needs besides the group.
pub struct Context<'a> {
    pub kind: Kind,
    pub status: Status,
    pub facts: &'a Facts,
    pub per_second: Vec<u64>,
    pub now: SystemTime,
    /// The daemon's own namespace: others are named in the sentence.
    pub own_netns: Option<u32>,
}

/// A group's diagnosis record: what every kind has is made here, what each
/// kind says (summary, advice, process, its evidence) by its own function below.
pub fn record(key: &Key, g: &Group, cx: Context<'_>) -> DiagnosisRecord {
    let facts = cx.facts;
    let clients = g.clients();
    let clients_txt =
        if g.clients_capped { format!("{clients}+ clients") } else { plural(clients, "client", "clients") };
    let s = Scene {
        key,
        g,
        facts,
        here: if cx.own_netns == Some(key.netns) { String::new() } else { format!(" in netns {}", key.netns) },
        at: endpoint(key.ip, key.port),
        tries: format!("{} from {clients_txt}", plural(g.count, "attempt", "attempts")),
        clients: clients_txt,
    };
    let mut ev = Evidence {
        actions: g.actions.clone(),
        reasons: g.reasons.clone(),
        per_second: cx.per_second,
        sample_clients: g.top_clients(10),
        queue_seen: g.queue,
        unavailable: facts.errors.clone(),
        ..Evidence::default()
    };
    let told = match cx.kind {
        Kind::NoListener => no_listener(&s, &mut ev),
        Kind::ListenerAddressMismatch => listener_address_mismatch(&s, &mut ev),
        Kind::AcceptQueueFull => accept_queue_full(&s, &mut ev),
        Kind::SynFlood => syn_flood(&s, &mut ev),
        Kind::FirewallDrop => firewall(&s, &mut ev, ("drops", "dropped")),
        Kind::FirewallReject => firewall(&s, &mut ev, ("rejects", "rejected")),
        Kind::ServerReset => server_reset(&s, &mut ev),
        Kind::HandshakeIncomplete => handshake_incomplete(&s, &mut ev),
        Kind::OutboundRefused | Kind::OutboundTimeout | Kind::OutboundUnreachable => outbound(&s, &mut ev, cx.kind),
        Kind::PortScan if key.class == Class::OutboundScan => outbound_port_scan(&s, &mut ev),
        Kind::PortScan => port_scan(&s, &mut ev),
    };
    let id = id(cx.kind, key);
    let outbound = cx.kind.outbound() || key.class == Class::OutboundScan;
    DiagnosisRecord {
        timestamp: cx.now,
        event: DiagnosisMeta::default(),
        diagnosis: Diagnosis {
            kind: cx.kind,
            id,
            status: cx.status,
            summary: told.summary,
            advice: told.advice,
            evidence: ev,
            first_seen: g.first_seen,
            last_seen: g.last_seen,
            count: g.count,
            clients,
        },
        source: (key.class == Class::Scan).then_some(SourceIp { ip: key.ip }),
        destination: Endpoint {
            ip: if key.class == Class::Scan { unspecified(key.ip) } else { key.ip },
            port: key.port,
        },
        network: Network { transport: Transport::Tcp, kind: g.family },
        observer: Where {
            netns: key.netns,
            direction: if outbound { Direction::Outbound } else { Direction::Inbound },
        },
        process: told.process,
    }
}

/// What every kind's sentence is made of, worked out once per record.
struct Scene<'a> {
    key: &'a Key,
    g: &'a Group,
    facts: &'a Facts,
    /// ` in netns N`, for a namespace other than the daemon's; else empty.
    here: String,
    /// The endpoint, `address:port`.
    at: String,
    /// `N attempts from M clients`.
    tries: String,
    /// `M clients`, `M+ clients` once the group stopped counting them.
    clients: String,
}

impl Scene<'_> {
    /// The listener that takes these connections, else any on the port.
    fn listener_of_port(&self) -> Option<&OwnedListener> {
        self.facts.serving(self.key.ip).or(self.facts.on_port.first())
    }
}

/// The parts of a record that each kind words in its own way; the kind's
/// function also fills in the evidence it is about.
struct Told {
    summary: String,
    advice: Vec<String>,
    /// The listener's process (inbound) or the connecting one (outbound).
    process: Option<Process>,
}

fn owner_of(l: &OwnedListener) -> Option<Process> {
    l.owner.as_ref().map(|o| Process { pid: o.pid, name: o.name.clone() })
}

fn listener_evidence(l: &OwnedListener) -> ListenerEvidence {
    ListenerEvidence::new(&l.listener, l.owner.as_ref(), None)
}

fn no_listener(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (port, here, tries, at) = (s.key.port, &s.here, &s.tries, &s.at);
    let mut summary = format!("Nothing listens on port {port}{here}: {tries} to {at} were refused");
    let mut advice = vec![format!(
        "Start the service that should listen on port {port}, or point clients at the port it really uses (`ss -ltnp 'sport = :{port}'`)."
    )];
    let mut process = None;
    if let Some(prev) = &s.facts.recent {
        let gone = prev.gone.unwrap_or(prev.last_present);
        let _ = write!(
            summary,
            "; {} listened on {} until {} and is gone",
            who(&prev.listener),
            endpoint(prev.listener.listener.address, port),
            time(prev.last_present)
        );
        if let Some(o) = &prev.listener.owner {
            advice.insert(
                0,
                format!(
                    "Find out why {} stopped (its logs, `journalctl`, the OOM killer in `dmesg`) and restart it.",
                    o.name
                ),
            );
        }
        process = owner_of(&prev.listener);
        ev.previous_listener = Some(PreviousListener {
            listener: listener_evidence(&prev.listener),
            last_seen: prev.last_present,
            gone_by: gone,
        });
    }
    if let Some(l) = s.facts.serving(s.key.ip) {
        let _ = write!(summary, "; {} listens there again now", who(l));
        process = owner_of(l).or(process);
        advice.push("The service is back; if the failures stop, nothing else is needed.".to_owned());
        ev.listener = Some(listener_evidence(l));
    }
    summary.push('.');
    Told { summary, advice, process }
}

fn listener_address_mismatch(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (key, port, here, tries, at) = (s.key, s.key.port, &s.here, &s.tries, &s.at);
    let facts = s.facts;
    ev.other_listeners = facts
        .on_port
        .iter()
        .map(listener_evidence)
        .chain(facts.elsewhere.iter().map(|(ns, l)| ListenerEvidence::new(&l.listener, l.owner.as_ref(), Some(*ns))))
        .collect();
    if let Some(l) = facts.on_port.first() {
        let bound = endpoint(l.listener.address, port);
        let why = match (l.listener.address, key.ip) {
            (IpAddr::V4(_), IpAddr::V6(_)) => "IPv4 only, while these clients use IPv6".to_owned(),
            (IpAddr::V6(a), IpAddr::V4(_)) if a.is_unspecified() => {
                "IPv6 only (IPV6_V6ONLY), while these clients use IPv4".to_owned()
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => "IPv6 only, while these clients use IPv4".to_owned(),
            _ => format!("only on {}, while clients connect to {}", l.listener.address, key.ip),
        };
        Told {
            summary: format!("Port {port}{here} is served by {} on {bound}, {why}: {tries} to {at} were refused.", who(l)),
            advice: vec![
                format!(
                    "Bind {} to the address clients use ({}), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).",
                    l.owner.as_ref().map_or("the service", |o| o.name.as_str()),
                    key.ip
                ),
                format!("Or point clients at {bound}."),
            ],
            process: owner_of(l),
        }
    } else if let Some((ns, l)) = facts.elsewhere.first() {
        Told {
            summary: format!(
                "Port {port} is served by {} in another network namespace ({ns}), not{}: {tries} to {at} were refused.",
                who(l),
                if here.is_empty() { " in this one" } else { here }
            ),
            advice: vec![format!(
                "Publish the port from namespace {ns} (a port mapping or DNAT rule), or run the service in the namespace clients reach."
            )],
            process: owner_of(l),
        }
    } else {
        Told { summary: format!("Port {port}{here}: {tries} refused."), advice: vec![], process: None }
    }
}

fn accept_queue_full(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, port, here) = (s.g, s.key.port, &s.here);
    let somaxconn = s.facts.sysctls.get("net.core.somaxconn").copied();
    let l = s.listener_of_port();
    let process = l.and_then(owner_of);
    let name = l.map_or_else(|| "the listener".to_owned(), who);
    let backlog = g.queue.map(|q| q.backlog).or(l.map(|l| l.listener.backlog));
    let queued = g.queue.map(|q| q.max_queue_len).or(l.map(|l| l.listener.queue));
    let mut summary =
        format!("{name} on port {port}{here} does not accept connections fast enough: its accept queue is full");
    if let (Some(b), Some(q)) = (backlog, queued) {
        let _ = write!(summary, " (backlog {b}, {q} queued)");
    }
    let _ = write!(summary, ", {} dropped", plural(g.count, "connection attempt", "connection attempts"));
    summary.push('.');
    let app = process.as_ref().map_or("the service", |p| p.name.as_str());
    let mut advice = vec![format!(
        "Make {app} call accept() faster: more worker processes or threads, or find what blocks its accept loop."
    )];
    match (backlog, somaxconn) {
        (Some(b), Some(max)) if (b as i64) < max => advice
            .push(format!("Raise {app}'s listen backlog (now {b}) up to net.core.somaxconn ({max}) to absorb bursts.")),
        (Some(b), Some(max)) => advice.push(format!(
            "The backlog ({b}) is already at net.core.somaxconn ({max}): raise both (`sysctl -w net.core.somaxconn=...`) and the listen() backlog."
        )),
        _ => {}
    }
    ev.listener = l.map(listener_evidence);
    ev.sysctls = pick(s.facts, &["net.core.somaxconn"]);
    Told { summary, advice, process }
}

fn syn_flood(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, port, here, clients) = (s.g, s.key.port, &s.here, &s.clients);
    let cookies = s.facts.sysctls.get("net.ipv4.tcp_syncookies").copied();
    let max_syn = s.facts.sysctls.get("net.ipv4.tcp_max_syn_backlog").copied();
    let l = s.listener_of_port();
    let name = l.map_or_else(|| "the listener".to_owned(), who);
    let effect = match cookies {
        Some(0) => "SYN cookies are off, so new SYNs are dropped",
        Some(2) => "SYN cookies are always on",
        Some(_) => "the kernel answers with SYN cookies (clients connect, with reduced TCP options)",
        None => "SYN cookies unknown",
    };
    let summary = format!(
        "The SYN queue of {name} on port {port}{here} overflowed {}: {} half-open connections from {clients}; {effect}.",
        plural(g.count, "time", "times"),
        g.queue.map_or("many".to_owned(), |q| q.max_queue_len.to_string()),
    );
    let mut advice = Vec::new();
    if cookies == Some(0) {
        advice.push("Turn SYN cookies on: `sysctl -w net.ipv4.tcp_syncookies=1`.".to_owned());
    }
    if let Some(m) = max_syn {
        advice.push(format!(
            "Raise the SYN backlog (net.ipv4.tcp_max_syn_backlog = {m}, and the listen() backlog, which also caps it)."
        ));
    }
    advice.push(
        "If few sources send most SYNs (see sample_clients), rate-limit them with nftables (`limit rate` / meters)."
            .to_owned(),
    );
    ev.listener = l.map(listener_evidence);
    ev.sysctls = pick(s.facts, &["net.ipv4.tcp_syncookies", "net.ipv4.tcp_max_syn_backlog", "net.core.somaxconn"]);
    Told { summary, advice, process: l.and_then(owner_of) }
}

/// `firewall_drop` and `firewall_reject`, told apart by the verb and the
/// participle (`drops`, `dropped`).
fn firewall(s: &Scene<'_>, ev: &mut Evidence, (verb, noun): (&str, &str)) -> Told {
    let (port, here, tries) = (s.key.port, &s.here, &s.tries);
    let l = s.listener_of_port();
    let target = l.map(|l| format!(" to {}", who(l))).unwrap_or_default();
    let summary = match &s.facts.firewall {
        Some(r) if r.handle.is_some() => format!(
            "nftables {verb} SYNs to port {port}{here}{target}: rule `{}` in table {} {} chain {} (handle {}); {} {noun}.",
            r.rule,
            r.family,
            r.table,
            r.chain,
            r.handle.unwrap_or_default(),
            tries
        ),
        Some(r) => format!(
            "nftables {verb} SYNs to port {port}{here}{target}: the policy of chain {} {} {} drops them; {tries} {noun}.",
            r.family, r.table, r.chain
        ),
        None => format!(
            "The firewall {verb} SYNs to port {port}{here}{target} (no matching nftables rule found: iptables-legacy?); {tries} {noun}."
        ),
    };
    let mut advice = vec![];
    if let Some(r) = &s.facts.firewall {
        advice.push(format!(
            "If these clients should reach port {port}, allow them before that rule: `nft insert rule {} {} {} tcp dport {port} accept` (narrow it to their addresses).",
            r.family, r.table, r.chain
        ));
    }
    advice.push("If the block is intended, nothing is broken: tell the clients' owners.".to_owned());
    ev.listener = l.map(listener_evidence);
    ev.firewall_rule = s.facts.firewall.clone();
    Told { summary, advice, process: l.and_then(owner_of) }
}

fn server_reset(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, port, here, clients) = (s.g, s.key.port, &s.here, &s.clients);
    let l = s.listener_of_port();
    let process = l.and_then(owner_of);
    let name = l.map_or_else(|| "The server".to_owned(), who);
    let top = g.reasons.iter().max_by_key(|(_, n)| **n).map(|(r, _)| r.as_str()).unwrap_or("unknown");
    let summary = format!(
        "{name} on port {port}{here} resets open connections: {} sent to {clients} (kernel reason {top}).",
        plural(g.count, "RST", "RSTs")
    );
    let mut advice = vec![format!(
        "Check {}'s logs for aborted requests and crashes around {}.",
        process.as_ref().map_or("the service", |p| p.name.as_str()),
        time(g.last_seen)
    )];
    advice.push(match top {
        "TCP_ABORT_ON_CLOSE" | "NOT_SPECIFIED" => {
            "The application closes sockets with unread data: it reads the request only partly, or closes on error."
                .to_owned()
        }
        "TCP_STATE" => {
            "Sockets are closed with SO_LINGER 0 (an abortive close) or get segments after close.".to_owned()
        }
        other => format!("The kernel's RST reason is {other}: see its meaning in include/net/rstreason.h."),
    });
    ev.listener = l.map(listener_evidence);
    Told { summary, advice, process }
}

fn handshake_incomplete(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, port, here) = (s.g, s.key.port, &s.here);
    let l = s.listener_of_port();
    let list: Vec<String> = g.top_clients(5).iter().map(IpAddr::to_string).collect();
    let summary = format!(
        "Clients {} do not complete the TCP handshake with port {port}{here}: the SYN-ACK was retransmitted {} and the final ACK never arrived.",
        list.join(", "),
        plural(g.count, "time", "times")
    );
    let advice = vec![
        "Check the return path to these clients: asymmetric routing, rp_filter, or a NAT/load balancer that does not see the SYN-ACK.".to_owned(),
        "Check firewalls on the clients' side or in between that drop inbound SYN-ACKs.".to_owned(),
    ];
    ev.listener = l.map(listener_evidence);
    ev.sysctls = pick(s.facts, &["net.ipv4.tcp_synack_retries"]);
    Told { summary, advice, process: l.and_then(owner_of) }
}

/// `outbound_refused`, `outbound_timeout` and `outbound_unreachable`: this
/// host's connections, named by the process that made them.
fn outbound(s: &Scene<'_>, ev: &mut Evidence, kind: Kind) -> Told {
    let (g, key, port, here, at) = (s.g, s.key, s.key.port, &s.here, &s.at);
    ev.processes = g.top_processes(5);
    let process = ev.processes.first().cloned();
    let by = process.as_ref().map(|p| format!(" by {} (pid {})", p.name, p.pid)).unwrap_or_default();
    let n = plural(g.count, "outbound connection", "outbound connections");
    let (summary, advice) = match kind {
        Kind::OutboundRefused => (
            format!("{n}{by}{here} to {at} were refused: nothing listens there, or a firewall rejects them."),
            vec![format!(
                "Check that the service at {at} runs and listens on that address; check the configured address and port."
            )],
        ),
        Kind::OutboundTimeout => (
            format!("{n}{by}{here} to {at} timed out: no answer to the SYNs."),
            vec![
                format!("A firewall (here, in between, or at {}) drops the SYNs, or the host is down.", key.ip),
                format!("Test the path: `nc -vz {} {port}`, `traceroute -T -p {port} {}`.", key.ip, key.ip),
            ],
        ),
        _ => {
            let top = g.reasons.keys().next().cloned().unwrap_or_default();
            (
                format!("{n}{by}{here} to {at} failed: {} is unreachable ({top}).", key.ip),
                vec![format!(
                    "Check the route to {} (`ip route get {}`) and ICMP errors from routers or firewalls.",
                    key.ip, key.ip
                )],
            )
        }
    };
    Told { summary, advice, process }
}

/// This host probing many ports of one destination (`port_scan`, outbound).
fn outbound_port_scan(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, key, here) = (s.g, s.key, &s.here);
    ev.ports = g.ports.clone();
    let process = g.top_processes(1).into_iter().next();
    let by = process.as_ref().map(|p| format!(" by {} (pid {})", p.name, p.pid)).unwrap_or_default();
    let summary = format!(
        "This host probed {} ports of {}{by}{here} ({}): a port scan from here, not an outage of {}.",
        g.distinct_ports,
        key.ip,
        plural(g.count, "failed connect", "failed connects"),
        key.ip
    );
    let advice = vec!["If this scan is not yours, find the process (`ss -tnp`) and what started it.".to_owned()];
    Told { summary, advice, process }
}

/// One source probing many ports of this host (`port_scan`, inbound).
fn port_scan(s: &Scene<'_>, ev: &mut Evidence) -> Told {
    let (g, key, here) = (s.g, s.key, &s.here);
    ev.ports = g.ports.clone();
    let summary = format!(
        "{} probed {} ports{here} ({}): a port scan, not a service problem.",
        key.ip,
        g.distinct_ports,
        plural(g.count, "failed attempt", "failed attempts")
    );
    let advice = vec![format!("If scans from {} are unwanted, block it in the firewall.", key.ip)];
    Told { summary, advice, process: None }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

fn pick(facts: &Facts, names: &[&str]) -> std::collections::BTreeMap<String, i64> {
    facts.sysctls.iter().filter(|(k, _)| names.contains(&k.as_str())).map(|(k, v)| (k.clone(), *v)).collect()
}

#[cfg(test)]
mod tests {
    //! The whole record of each kind, as JSON: what an admin reads (the
    //! summary and the advice) and what a SIEM reads, pinned byte for byte.

    use std::time::{Duration, UNIX_EPOCH};

    use observer_common::Action;

    use super::*;
    use crate::{
        enrich::{FirewallRule, Listener, Owner, Seen},
        event::{FailureEvent, Family, ListenerQueue},
    };

    /// Seconds after 2026-01-01T00:00:00Z.
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + secs)
    }

    fn key(class: Class, ip: &str, port: u16) -> Key {
        Key { netns: 7, class, ip: ip.parse().unwrap(), port }
    }

    fn ev(action: Action, src: &str, dst: &str, dport: u16) -> FailureEvent {
        let direction = if action == Action::ConnectFailed { Direction::Outbound } else { Direction::Inbound };
        FailureEvent::new(
            UNIX_EPOCH,
            action,
            1,
            7,
            direction,
            Endpoint { ip: src.parse().unwrap(), port: 40000 },
            Endpoint { ip: dst.parse().unwrap(), port: dport },
        )
    }

    /// A queue overflow at 10.0.0.1:`port`, with the queue the kernel reported.
    fn overflow(action: Action, port: u16, queue: ListenerQueue) -> impl Fn(&str) -> FailureEvent {
        move |client| {
            let mut e = ev(action, client, "10.0.0.1", port);
            e.observer.listener = Some(queue.clone());
            e
        }
    }

    fn with_reason(mut e: FailureEvent, reason: &str) -> FailureEvent {
        e.observer.reason = Some(reason.to_owned());
        e
    }

    fn group(events: &[FailureEvent]) -> Group {
        let mut g = Group::new(at(0), Family::Ipv4);
        for (i, e) in events.iter().enumerate() {
            g.add(e, at(i as u64), 60, 1024);
        }
        g
    }

    /// `n` failures from `clients` clients, round robin.
    fn failures(n: usize, clients: usize, make: impl Fn(&str) -> FailureEvent) -> Group {
        let events: Vec<FailureEvent> = (0..n).map(|i| make(&format!("192.0.2.{}", 1 + i % clients))).collect();
        group(&events)
    }

    fn listener(address: &str, port: u16, owner: Option<(u32, &str)>) -> OwnedListener {
        OwnedListener {
            listener: Listener {
                address: address.parse().unwrap(),
                port,
                backlog: 128,
                queue: 3,
                v6only: false,
                inode: 0,
            },
            owner: owner.map(|(pid, name)| Owner { pid, name: name.to_owned() }),
        }
    }

    fn json(kind: Kind, key: &Key, g: &Group, facts: &Facts, own_netns: Option<u32>) -> String {
        let cx = Context { kind, status: Status::Open, facts, per_second: vec![0, 2, 1], now: at(30), own_netns };
        serde_json::to_string(&record(key, g, cx)).unwrap()
    }

    fn sysctls(pairs: &[(&str, i64)]) -> std::collections::BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn no_listener() {
        let k = key(Class::Refused, "10.0.0.1", 8080);
        let g = failures(5, 2, |c| ev(Action::Refused, c, "10.0.0.1", 8080));
        assert_eq!(
            json(Kind::NoListener, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"no_listener","id":"2f3eec653aebe752","status":"open","summary":"Nothing listens on port 8080: 5 attempts from 2 clients to 10.0.0.1:8080 were refused.","advice":["Start the service that should listen on port 8080, or point clients at the port it really uses (`ss -ltnp 'sport = :8080'`)."],"evidence":{"actions":{"refused":5},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:04Z","count":5,"clients":2},"destination":{"ip":"10.0.0.1","port":8080},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        // Gone (with its process), and back again, in another namespace.
        let facts = Facts {
            recent: Some(Seen {
                netns: 7,
                listener: listener("0.0.0.0", 8080, Some((4242, "api"))),
                last_present: at(1),
                gone: Some(at(2)),
            }),
            on_port: vec![listener("0.0.0.0", 8080, Some((4343, "api")))],
            errors: vec!["nft: not found".to_owned()],
            ..Facts::default()
        };
        assert_eq!(
            json(Kind::NoListener, &k, &g, &facts, Some(1)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"no_listener","id":"2f3eec653aebe752","status":"open","summary":"Nothing listens on port 8080 in netns 7: 5 attempts from 2 clients to 10.0.0.1:8080 were refused; api (pid 4242) listened on 0.0.0.0:8080 until 2026-01-01T00:00:01Z and is gone; api (pid 4343) listens there again now.","advice":["Find out why api stopped (its logs, `journalctl`, the OOM killer in `dmesg`) and restart it.","Start the service that should listen on port 8080, or point clients at the port it really uses (`ss -ltnp 'sport = :8080'`).","The service is back; if the failures stop, nothing else is needed."],"evidence":{"actions":{"refused":5},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2"],"listener":{"address":"0.0.0.0","port":8080,"backlog":128,"queue":3,"pid":4343,"name":"api"},"previous_listener":{"address":"0.0.0.0","port":8080,"backlog":128,"queue":3,"pid":4242,"name":"api","last_seen":"2026-01-01T00:00:01Z","gone_by":"2026-01-01T00:00:02Z"},"unavailable":["nft: not found"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:04Z","count":5,"clients":2},"destination":{"ip":"10.0.0.1","port":8080},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":4343,"name":"api"}}"#
        );
    }

    #[test]
    fn listener_address_mismatch() {
        let g = failures(4, 1, |c| ev(Action::Refused, c, "10.0.0.1", 5432));
        let mismatch = |ip: &str, on: &str| {
            let facts = Facts { on_port: vec![listener(on, 5432, Some((77, "postgres")))], ..Facts::default() };
            json(Kind::ListenerAddressMismatch, &key(Class::Refused, ip, 5432), &g, &facts, Some(7))
        };
        assert_eq!(
            mismatch("2001:db8::1", "127.0.0.1"),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"45692bce317e92ea","status":"open","summary":"Port 5432 is served by postgres (pid 77) on 127.0.0.1:5432, IPv4 only, while these clients use IPv6: 4 attempts from 1 client to [2001:db8::1]:5432 were refused.","advice":["Bind postgres to the address clients use (2001:db8::1), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).","Or point clients at 127.0.0.1:5432."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"127.0.0.1","port":5432,"backlog":128,"queue":3,"pid":77,"name":"postgres"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"2001:db8::1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":77,"name":"postgres"}}"#
        );
        assert_eq!(
            mismatch("10.0.0.1", "::"),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432 is served by postgres (pid 77) on [::]:5432, IPv6 only (IPV6_V6ONLY), while these clients use IPv4: 4 attempts from 1 client to 10.0.0.1:5432 were refused.","advice":["Bind postgres to the address clients use (10.0.0.1), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).","Or point clients at [::]:5432."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"::","port":5432,"backlog":128,"queue":3,"pid":77,"name":"postgres"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":77,"name":"postgres"}}"#
        );
        assert_eq!(
            mismatch("10.0.0.1", "::1"),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432 is served by postgres (pid 77) on [::1]:5432, IPv6 only, while these clients use IPv4: 4 attempts from 1 client to 10.0.0.1:5432 were refused.","advice":["Bind postgres to the address clients use (10.0.0.1), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).","Or point clients at [::1]:5432."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"::1","port":5432,"backlog":128,"queue":3,"pid":77,"name":"postgres"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":77,"name":"postgres"}}"#
        );
        assert_eq!(
            mismatch("10.0.0.1", "127.0.0.1"),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432 is served by postgres (pid 77) on 127.0.0.1:5432, only on 127.0.0.1, while clients connect to 10.0.0.1: 4 attempts from 1 client to 10.0.0.1:5432 were refused.","advice":["Bind postgres to the address clients use (10.0.0.1), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).","Or point clients at 127.0.0.1:5432."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"127.0.0.1","port":5432,"backlog":128,"queue":3,"pid":77,"name":"postgres"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":77,"name":"postgres"}}"#
        );
        let k = key(Class::Refused, "10.0.0.1", 5432);
        let elsewhere = Facts { elsewhere: vec![(9, listener("0.0.0.0", 5432, None))], ..Facts::default() };
        assert_eq!(
            json(Kind::ListenerAddressMismatch, &k, &g, &elsewhere, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432 is served by a process this host did not name in another network namespace (9), not in this one: 4 attempts from 1 client to 10.0.0.1:5432 were refused.","advice":["Publish the port from namespace 9 (a port mapping or DNAT rule), or run the service in the namespace clients reach."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"0.0.0.0","port":5432,"backlog":128,"queue":3,"netns":9}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        assert_eq!(
            json(Kind::ListenerAddressMismatch, &k, &g, &elsewhere, None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432 is served by a process this host did not name in another network namespace (9), not in netns 7: 4 attempts from 1 client to 10.0.0.1:5432 were refused.","advice":["Publish the port from namespace 9 (a port mapping or DNAT rule), or run the service in the namespace clients reach."],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"other_listeners":[{"address":"0.0.0.0","port":5432,"backlog":128,"queue":3,"netns":9}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        assert_eq!(
            json(Kind::ListenerAddressMismatch, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"listener_address_mismatch","id":"30825764762d1532","status":"open","summary":"Port 5432: 4 attempts from 1 client refused.","advice":[],"evidence":{"actions":{"refused":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":1},"destination":{"ip":"10.0.0.1","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn accept_queue_full() {
        let k = key(Class::AcceptQueue, "10.0.0.1", 80);
        let g = failures(6, 3, overflow(Action::ListenOverflow, 80, ListenerQueue { backlog: 128, queue_len: 129 }));
        let facts = |somaxconn: i64| Facts {
            on_port: vec![listener("0.0.0.0", 80, Some((10, "nginx")))],
            sysctls: sysctls(&[("net.core.somaxconn", somaxconn), ("net.ipv4.tcp_syncookies", 1)]),
            ..Facts::default()
        };
        assert_eq!(
            json(Kind::AcceptQueueFull, &k, &g, &facts(4096), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"accept_queue_full","id":"630fec0801cd3d42","status":"open","summary":"nginx (pid 10) on port 80 does not accept connections fast enough: its accept queue is full (backlog 128, 129 queued), 6 connection attempts dropped.","advice":["Make nginx call accept() faster: more worker processes or threads, or find what blocks its accept loop.","Raise nginx's listen backlog (now 128) up to net.core.somaxconn (4096) to absorb bursts."],"evidence":{"actions":{"listen_overflow":6},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3"],"listener":{"address":"0.0.0.0","port":80,"backlog":128,"queue":3,"pid":10,"name":"nginx"},"queue_seen":{"backlog":128,"max_queue_len":129},"sysctls":{"net.core.somaxconn":4096}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:05Z","count":6,"clients":3},"destination":{"ip":"10.0.0.1","port":80},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":10,"name":"nginx"}}"#
        );
        assert_eq!(
            json(Kind::AcceptQueueFull, &k, &g, &facts(128), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"accept_queue_full","id":"630fec0801cd3d42","status":"open","summary":"nginx (pid 10) on port 80 does not accept connections fast enough: its accept queue is full (backlog 128, 129 queued), 6 connection attempts dropped.","advice":["Make nginx call accept() faster: more worker processes or threads, or find what blocks its accept loop.","The backlog (128) is already at net.core.somaxconn (128): raise both (`sysctl -w net.core.somaxconn=...`) and the listen() backlog."],"evidence":{"actions":{"listen_overflow":6},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3"],"listener":{"address":"0.0.0.0","port":80,"backlog":128,"queue":3,"pid":10,"name":"nginx"},"queue_seen":{"backlog":128,"max_queue_len":129},"sysctls":{"net.core.somaxconn":128}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:05Z","count":6,"clients":3},"destination":{"ip":"10.0.0.1","port":80},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":10,"name":"nginx"}}"#
        );
        // Nothing known: no queue from the kernel, no listener, no sysctl.
        let g = failures(1, 1, |c| ev(Action::ListenOverflow, c, "10.0.0.1", 80));
        assert_eq!(
            json(Kind::AcceptQueueFull, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"accept_queue_full","id":"630fec0801cd3d42","status":"open","summary":"the listener on port 80 does not accept connections fast enough: its accept queue is full, 1 connection attempt dropped.","advice":["Make the service call accept() faster: more worker processes or threads, or find what blocks its accept loop."],"evidence":{"actions":{"listen_overflow":1},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00Z","count":1,"clients":1},"destination":{"ip":"10.0.0.1","port":80},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn syn_flood() {
        let k = key(Class::SynQueue, "10.0.0.1", 443);
        let g = failures(8, 4, overflow(Action::SynQueueOverflow, 443, ListenerQueue { backlog: 512, queue_len: 512 }));
        let facts = |cookies: i64| Facts {
            on_port: vec![listener("::", 443, Some((20, "haproxy")))],
            sysctls: sysctls(&[
                ("net.ipv4.tcp_syncookies", cookies),
                ("net.ipv4.tcp_max_syn_backlog", 1024),
                ("net.core.somaxconn", 4096),
                ("net.ipv4.tcp_synack_retries", 5),
            ]),
            ..Facts::default()
        };
        assert_eq!(
            json(Kind::SynFlood, &k, &g, &facts(0), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"syn_flood","id":"8939cc7309c8e384","status":"open","summary":"The SYN queue of haproxy (pid 20) on port 443 overflowed 8 times: 512 half-open connections from 4 clients; SYN cookies are off, so new SYNs are dropped.","advice":["Turn SYN cookies on: `sysctl -w net.ipv4.tcp_syncookies=1`.","Raise the SYN backlog (net.ipv4.tcp_max_syn_backlog = 1024, and the listen() backlog, which also caps it).","If few sources send most SYNs (see sample_clients), rate-limit them with nftables (`limit rate` / meters)."],"evidence":{"actions":{"syn_queue_overflow":8},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3","192.0.2.4"],"listener":{"address":"::","port":443,"backlog":128,"queue":3,"pid":20,"name":"haproxy"},"queue_seen":{"backlog":512,"max_queue_len":512},"sysctls":{"net.core.somaxconn":4096,"net.ipv4.tcp_max_syn_backlog":1024,"net.ipv4.tcp_syncookies":0}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:07Z","count":8,"clients":4},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":20,"name":"haproxy"}}"#
        );
        assert_eq!(
            json(Kind::SynFlood, &k, &g, &facts(1), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"syn_flood","id":"8939cc7309c8e384","status":"open","summary":"The SYN queue of haproxy (pid 20) on port 443 overflowed 8 times: 512 half-open connections from 4 clients; the kernel answers with SYN cookies (clients connect, with reduced TCP options).","advice":["Raise the SYN backlog (net.ipv4.tcp_max_syn_backlog = 1024, and the listen() backlog, which also caps it).","If few sources send most SYNs (see sample_clients), rate-limit them with nftables (`limit rate` / meters)."],"evidence":{"actions":{"syn_queue_overflow":8},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3","192.0.2.4"],"listener":{"address":"::","port":443,"backlog":128,"queue":3,"pid":20,"name":"haproxy"},"queue_seen":{"backlog":512,"max_queue_len":512},"sysctls":{"net.core.somaxconn":4096,"net.ipv4.tcp_max_syn_backlog":1024,"net.ipv4.tcp_syncookies":1}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:07Z","count":8,"clients":4},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":20,"name":"haproxy"}}"#
        );
        assert_eq!(
            json(Kind::SynFlood, &k, &g, &facts(2), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"syn_flood","id":"8939cc7309c8e384","status":"open","summary":"The SYN queue of haproxy (pid 20) on port 443 overflowed 8 times: 512 half-open connections from 4 clients; SYN cookies are always on.","advice":["Raise the SYN backlog (net.ipv4.tcp_max_syn_backlog = 1024, and the listen() backlog, which also caps it).","If few sources send most SYNs (see sample_clients), rate-limit them with nftables (`limit rate` / meters)."],"evidence":{"actions":{"syn_queue_overflow":8},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3","192.0.2.4"],"listener":{"address":"::","port":443,"backlog":128,"queue":3,"pid":20,"name":"haproxy"},"queue_seen":{"backlog":512,"max_queue_len":512},"sysctls":{"net.core.somaxconn":4096,"net.ipv4.tcp_max_syn_backlog":1024,"net.ipv4.tcp_syncookies":2}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:07Z","count":8,"clients":4},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":20,"name":"haproxy"}}"#
        );
        let g = failures(1, 1, |c| ev(Action::SynQueueOverflow, c, "10.0.0.1", 443));
        assert_eq!(
            json(Kind::SynFlood, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"syn_flood","id":"8939cc7309c8e384","status":"open","summary":"The SYN queue of the listener on port 443 overflowed 1 time: many half-open connections from 1 client; SYN cookies unknown.","advice":["If few sources send most SYNs (see sample_clients), rate-limit them with nftables (`limit rate` / meters)."],"evidence":{"actions":{"syn_queue_overflow":1},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00Z","count":1,"clients":1},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn firewall() {
        let rule = |handle: Option<u64>, verdict: &str| FirewallRule {
            family: "inet".into(),
            table: "filter".into(),
            chain: "input".into(),
            hook: "input".into(),
            handle,
            rule: if handle.is_some() { format!("tcp dport 22 {verdict}") } else { format!("policy {verdict}") },
            verdict: verdict.into(),
        };
        let drop = key(Class::FirewallDrop, "10.0.0.1", 22);
        let g = failures(3, 3, |c| ev(Action::FirewallDrop, c, "10.0.0.1", 22));
        let facts = Facts {
            firewall: Some(rule(Some(12), "drop")),
            on_port: vec![listener("0.0.0.0", 22, Some((1, "sshd")))],
            ..Facts::default()
        };
        assert_eq!(
            json(Kind::FirewallDrop, &drop, &g, &facts, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"firewall_drop","id":"12eaca795036fd36","status":"open","summary":"nftables drops SYNs to port 22 to sshd (pid 1): rule `tcp dport 22 drop` in table inet filter chain input (handle 12); 3 attempts from 3 clients dropped.","advice":["If these clients should reach port 22, allow them before that rule: `nft insert rule inet filter input tcp dport 22 accept` (narrow it to their addresses).","If the block is intended, nothing is broken: tell the clients' owners."],"evidence":{"actions":{"firewall_drop":3},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3"],"listener":{"address":"0.0.0.0","port":22,"backlog":128,"queue":3,"pid":1,"name":"sshd"},"firewall_rule":{"family":"inet","table":"filter","chain":"input","hook":"input","handle":12,"rule":"tcp dport 22 drop","verdict":"drop"}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:02Z","count":3,"clients":3},"destination":{"ip":"10.0.0.1","port":22},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":1,"name":"sshd"}}"#
        );
        let policy = Facts { firewall: Some(rule(None, "drop")), ..Facts::default() };
        assert_eq!(
            json(Kind::FirewallDrop, &drop, &g, &policy, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"firewall_drop","id":"12eaca795036fd36","status":"open","summary":"nftables drops SYNs to port 22: the policy of chain inet filter input drops them; 3 attempts from 3 clients dropped.","advice":["If these clients should reach port 22, allow them before that rule: `nft insert rule inet filter input tcp dport 22 accept` (narrow it to their addresses).","If the block is intended, nothing is broken: tell the clients' owners."],"evidence":{"actions":{"firewall_drop":3},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3"],"firewall_rule":{"family":"inet","table":"filter","chain":"input","hook":"input","rule":"policy drop","verdict":"drop"}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:02Z","count":3,"clients":3},"destination":{"ip":"10.0.0.1","port":22},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        assert_eq!(
            json(Kind::FirewallDrop, &drop, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"firewall_drop","id":"12eaca795036fd36","status":"open","summary":"The firewall drops SYNs to port 22 (no matching nftables rule found: iptables-legacy?); 3 attempts from 3 clients dropped.","advice":["If the block is intended, nothing is broken: tell the clients' owners."],"evidence":{"actions":{"firewall_drop":3},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:02Z","count":3,"clients":3},"destination":{"ip":"10.0.0.1","port":22},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        let reject = key(Class::FirewallReject, "10.0.0.1", 22);
        let g = failures(2, 1, |c| ev(Action::FirewallReject, c, "10.0.0.1", 22));
        let facts = Facts { firewall: Some(rule(Some(9), "reject")), ..Facts::default() };
        assert_eq!(
            json(Kind::FirewallReject, &reject, &g, &facts, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"firewall_reject","id":"a49a4cfc41d16998","status":"open","summary":"nftables rejects SYNs to port 22: rule `tcp dport 22 reject` in table inet filter chain input (handle 9); 2 attempts from 1 client rejected.","advice":["If these clients should reach port 22, allow them before that rule: `nft insert rule inet filter input tcp dport 22 accept` (narrow it to their addresses).","If the block is intended, nothing is broken: tell the clients' owners."],"evidence":{"actions":{"firewall_reject":2},"per_second":[0,2,1],"sample_clients":["192.0.2.1"],"firewall_rule":{"family":"inet","table":"filter","chain":"input","hook":"input","handle":9,"rule":"tcp dport 22 reject","verdict":"reject"}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:01Z","count":2,"clients":1},"destination":{"ip":"10.0.0.1","port":22},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        assert_eq!(
            json(Kind::FirewallReject, &reject, &g, &Facts::default(), None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"firewall_reject","id":"a49a4cfc41d16998","status":"open","summary":"The firewall rejects SYNs to port 22 in netns 7 (no matching nftables rule found: iptables-legacy?); 2 attempts from 1 client rejected.","advice":["If the block is intended, nothing is broken: tell the clients' owners."],"evidence":{"actions":{"firewall_reject":2},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:01Z","count":2,"clients":1},"destination":{"ip":"10.0.0.1","port":22},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn server_reset() {
        let k = key(Class::ServerReset, "10.0.0.1", 8443);
        let facts = Facts { on_port: vec![listener("10.0.0.1", 8443, Some((33, "java")))], ..Facts::default() };
        let resets = |reason: &'static str| {
            failures(4, 2, move |c| with_reason(ev(Action::ResetSent, c, "10.0.0.1", 8443), reason))
        };
        let g = resets("TCP_ABORT_ON_CLOSE");
        assert_eq!(
            json(Kind::ServerReset, &k, &g, &facts, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"server_reset","id":"4270a988fd5f5006","status":"open","summary":"java (pid 33) on port 8443 resets open connections: 4 RSTs sent to 2 clients (kernel reason TCP_ABORT_ON_CLOSE).","advice":["Check java's logs for aborted requests and crashes around 2026-01-01T00:00:03Z.","The application closes sockets with unread data: it reads the request only partly, or closes on error."],"evidence":{"actions":{"reset_sent":4},"reasons":{"TCP_ABORT_ON_CLOSE":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2"],"listener":{"address":"10.0.0.1","port":8443,"backlog":128,"queue":3,"pid":33,"name":"java"}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":2},"destination":{"ip":"10.0.0.1","port":8443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":33,"name":"java"}}"#
        );
        let g = resets("TCP_STATE");
        assert_eq!(
            json(Kind::ServerReset, &k, &g, &facts, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"server_reset","id":"4270a988fd5f5006","status":"open","summary":"java (pid 33) on port 8443 resets open connections: 4 RSTs sent to 2 clients (kernel reason TCP_STATE).","advice":["Check java's logs for aborted requests and crashes around 2026-01-01T00:00:03Z.","Sockets are closed with SO_LINGER 0 (an abortive close) or get segments after close."],"evidence":{"actions":{"reset_sent":4},"reasons":{"TCP_STATE":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2"],"listener":{"address":"10.0.0.1","port":8443,"backlog":128,"queue":3,"pid":33,"name":"java"}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":2},"destination":{"ip":"10.0.0.1","port":8443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":33,"name":"java"}}"#
        );
        let g = resets("TCP_RFC7323_PAWS");
        assert_eq!(
            json(Kind::ServerReset, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"server_reset","id":"4270a988fd5f5006","status":"open","summary":"The server on port 8443 resets open connections: 4 RSTs sent to 2 clients (kernel reason TCP_RFC7323_PAWS).","advice":["Check the service's logs for aborted requests and crashes around 2026-01-01T00:00:03Z.","The kernel's RST reason is TCP_RFC7323_PAWS: see its meaning in include/net/rstreason.h."],"evidence":{"actions":{"reset_sent":4},"reasons":{"TCP_RFC7323_PAWS":4},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:03Z","count":4,"clients":2},"destination":{"ip":"10.0.0.1","port":8443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        let g = failures(1, 1, |c| ev(Action::ResetSent, c, "10.0.0.1", 8443));
        assert_eq!(
            json(Kind::ServerReset, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"server_reset","id":"4270a988fd5f5006","status":"open","summary":"The server on port 8443 resets open connections: 1 RST sent to 1 client (kernel reason unknown).","advice":["Check the service's logs for aborted requests and crashes around 2026-01-01T00:00:00Z.","The kernel's RST reason is unknown: see its meaning in include/net/rstreason.h."],"evidence":{"actions":{"reset_sent":1},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00Z","count":1,"clients":1},"destination":{"ip":"10.0.0.1","port":8443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn handshake_incomplete() {
        let k = key(Class::Handshake, "10.0.0.1", 443);
        let g = failures(7, 6, |c| ev(Action::SynackRetransmit, c, "10.0.0.1", 443));
        let facts = Facts {
            on_port: vec![listener("0.0.0.0", 443, Some((20, "haproxy")))],
            sysctls: sysctls(&[("net.ipv4.tcp_synack_retries", 5), ("net.core.somaxconn", 4096)]),
            ..Facts::default()
        };
        assert_eq!(
            json(Kind::HandshakeIncomplete, &k, &g, &facts, Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"handshake_incomplete","id":"e50167d25a537433","status":"open","summary":"Clients 192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4, 192.0.2.5 do not complete the TCP handshake with port 443: the SYN-ACK was retransmitted 7 times and the final ACK never arrived.","advice":["Check the return path to these clients: asymmetric routing, rp_filter, or a NAT/load balancer that does not see the SYN-ACK.","Check firewalls on the clients' side or in between that drop inbound SYN-ACKs."],"evidence":{"actions":{"synack_retransmit":7},"per_second":[0,2,1],"sample_clients":["192.0.2.1","192.0.2.2","192.0.2.3","192.0.2.4","192.0.2.5","192.0.2.6"],"listener":{"address":"0.0.0.0","port":443,"backlog":128,"queue":3,"pid":20,"name":"haproxy"},"sysctls":{"net.ipv4.tcp_synack_retries":5}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:06Z","count":7,"clients":6},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"},"process":{"pid":20,"name":"haproxy"}}"#
        );
        let g = failures(1, 1, |c| ev(Action::SynackRetransmit, c, "10.0.0.1", 443));
        assert_eq!(
            json(Kind::HandshakeIncomplete, &k, &g, &Facts::default(), None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"handshake_incomplete","id":"e50167d25a537433","status":"open","summary":"Clients 192.0.2.1 do not complete the TCP handshake with port 443 in netns 7: the SYN-ACK was retransmitted 1 time and the final ACK never arrived.","advice":["Check the return path to these clients: asymmetric routing, rp_filter, or a NAT/load balancer that does not see the SYN-ACK.","Check firewalls on the clients' side or in between that drop inbound SYN-ACKs."],"evidence":{"actions":{"synack_retransmit":1},"per_second":[0,2,1],"sample_clients":["192.0.2.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00Z","count":1,"clients":1},"destination":{"ip":"10.0.0.1","port":443},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn outbound() {
        let connect = |reason: &'static str, process: bool| {
            move |_: &str| {
                let mut e = with_reason(ev(Action::ConnectFailed, "10.0.0.1", "203.0.113.5", 5432), reason);
                e.process = process.then(|| Process { pid: 501, name: "worker".into() });
                e
            }
        };
        let refused = key(Class::OutboundRefused, "203.0.113.5", 5432);
        let g = failures(3, 1, connect("ECONNREFUSED", true));
        assert_eq!(
            json(Kind::OutboundRefused, &refused, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"outbound_refused","id":"59eef5e71bf58f0a","status":"open","summary":"3 outbound connections by worker (pid 501) to 203.0.113.5:5432 were refused: nothing listens there, or a firewall rejects them.","advice":["Check that the service at 203.0.113.5:5432 runs and listens on that address; check the configured address and port."],"evidence":{"actions":{"connect_failed":3},"reasons":{"ECONNREFUSED":3},"per_second":[0,2,1],"sample_clients":["10.0.0.1"],"processes":[{"pid":501,"name":"worker"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:02Z","count":3,"clients":1},"destination":{"ip":"203.0.113.5","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"},"process":{"pid":501,"name":"worker"}}"#
        );
        let timeout = key(Class::OutboundTimeout, "203.0.113.5", 5432);
        let g = failures(1, 1, connect("ETIMEDOUT", false));
        assert_eq!(
            json(Kind::OutboundTimeout, &timeout, &g, &Facts::default(), None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"outbound_timeout","id":"d65fa312b18b254f","status":"open","summary":"1 outbound connection in netns 7 to 203.0.113.5:5432 timed out: no answer to the SYNs.","advice":["A firewall (here, in between, or at 203.0.113.5) drops the SYNs, or the host is down.","Test the path: `nc -vz 203.0.113.5 5432`, `traceroute -T -p 5432 203.0.113.5`."],"evidence":{"actions":{"connect_failed":1},"reasons":{"ETIMEDOUT":1},"per_second":[0,2,1],"sample_clients":["10.0.0.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00Z","count":1,"clients":1},"destination":{"ip":"203.0.113.5","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"}}"#
        );
        let unreachable = key(Class::OutboundUnreachable, "203.0.113.5", 5432);
        let g = failures(2, 1, connect("EHOSTUNREACH", true));
        assert_eq!(
            json(Kind::OutboundUnreachable, &unreachable, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"outbound_unreachable","id":"526e8b9775643884","status":"open","summary":"2 outbound connections by worker (pid 501) to 203.0.113.5:5432 failed: 203.0.113.5 is unreachable (EHOSTUNREACH).","advice":["Check the route to 203.0.113.5 (`ip route get 203.0.113.5`) and ICMP errors from routers or firewalls."],"evidence":{"actions":{"connect_failed":2},"reasons":{"EHOSTUNREACH":2},"per_second":[0,2,1],"sample_clients":["10.0.0.1"],"processes":[{"pid":501,"name":"worker"}]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:01Z","count":2,"clients":1},"destination":{"ip":"203.0.113.5","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"},"process":{"pid":501,"name":"worker"}}"#
        );
        let g = failures(2, 1, |_| ev(Action::ConnectFailed, "10.0.0.1", "203.0.113.5", 5432));
        assert_eq!(
            json(Kind::OutboundUnreachable, &unreachable, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"outbound_unreachable","id":"526e8b9775643884","status":"open","summary":"2 outbound connections to 203.0.113.5:5432 failed: 203.0.113.5 is unreachable ().","advice":["Check the route to 203.0.113.5 (`ip route get 203.0.113.5`) and ICMP errors from routers or firewalls."],"evidence":{"actions":{"connect_failed":2},"per_second":[0,2,1],"sample_clients":["10.0.0.1"]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:01Z","count":2,"clients":1},"destination":{"ip":"203.0.113.5","port":5432},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"}}"#
        );
    }

    #[test]
    fn port_scan() {
        // A source scanning this host: the key is the scanner, at port 0.
        let k = key(Class::Scan, "198.51.100.9", 0);
        let mut g =
            group(&(0..12).map(|p| ev(Action::Refused, "198.51.100.9", "10.0.0.1", 1000 + p)).collect::<Vec<_>>());
        (0..12).for_each(|p| g.add_port(1000 + p, 20));
        assert_eq!(
            json(Kind::PortScan, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"port_scan","id":"62e8083ab686ca4b","status":"open","summary":"198.51.100.9 probed 12 ports (12 failed attempts): a port scan, not a service problem.","advice":["If scans from 198.51.100.9 are unwanted, block it in the firewall."],"evidence":{"actions":{"refused":12},"per_second":[0,2,1],"sample_clients":["198.51.100.9"],"ports":[1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:11Z","count":12,"clients":1},"source":{"ip":"198.51.100.9"},"destination":{"ip":"0.0.0.0","port":0},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
        assert_eq!(
            json(Kind::PortScan, &k, &g, &Facts::default(), None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"port_scan","id":"62e8083ab686ca4b","status":"open","summary":"198.51.100.9 probed 12 ports in netns 7 (12 failed attempts): a port scan, not a service problem.","advice":["If scans from 198.51.100.9 are unwanted, block it in the firewall."],"evidence":{"actions":{"refused":12},"per_second":[0,2,1],"sample_clients":["198.51.100.9"],"ports":[1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:11Z","count":12,"clients":1},"source":{"ip":"198.51.100.9"},"destination":{"ip":"0.0.0.0","port":0},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"inbound"}}"#
        );
    }

    #[test]
    fn outbound_port_scan() {
        // This host scanning a destination: the key is the destination.
        let k = key(Class::OutboundScan, "203.0.113.5", 0);
        let probe = |p: u16, process: bool| {
            let mut e = ev(Action::ConnectFailed, "10.0.0.1", "203.0.113.5", p);
            e.process = process.then(|| Process { pid: 900, name: "nmap".into() });
            e
        };
        let mut g = group(&(0..11).map(|p| probe(20 + p, true)).collect::<Vec<_>>());
        (0..11).for_each(|p| g.add_port(20 + p, 20));
        assert_eq!(
            json(Kind::PortScan, &k, &g, &Facts::default(), Some(7)),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"port_scan","id":"d8857b3b93858fba","status":"open","summary":"This host probed 11 ports of 203.0.113.5 by nmap (pid 900) (11 failed connects): a port scan from here, not an outage of 203.0.113.5.","advice":["If this scan is not yours, find the process (`ss -tnp`) and what started it."],"evidence":{"actions":{"connect_failed":11},"per_second":[0,2,1],"sample_clients":["10.0.0.1"],"ports":[20,21,22,23,24,25,26,27,28,29,30]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:10Z","count":11,"clients":1},"destination":{"ip":"203.0.113.5","port":0},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"},"process":{"pid":900,"name":"nmap"}}"#
        );
        let mut g = group(&(0..11).map(|p| probe(20 + p, false)).collect::<Vec<_>>());
        (0..11).for_each(|p| g.add_port(20 + p, 20));
        assert_eq!(
            json(Kind::PortScan, &k, &g, &Facts::default(), None),
            r#"{"@timestamp":"2026-01-01T00:00:30Z","event":{"dataset":"observer.diagnosis","kind":"alert","category":["network"]},"diagnosis":{"kind":"port_scan","id":"d8857b3b93858fba","status":"open","summary":"This host probed 11 ports of 203.0.113.5 in netns 7 (11 failed connects): a port scan from here, not an outage of 203.0.113.5.","advice":["If this scan is not yours, find the process (`ss -tnp`) and what started it."],"evidence":{"actions":{"connect_failed":11},"per_second":[0,2,1],"sample_clients":["10.0.0.1"],"ports":[20,21,22,23,24,25,26,27,28,29,30]},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:10Z","count":11,"clients":1},"destination":{"ip":"203.0.113.5","port":0},"network":{"transport":"tcp","type":"ipv4"},"observer":{"netns":7,"direction":"outbound"}}"#
        );
    }
}
