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

pub fn record(key: &Key, g: &Group, cx: Context<'_>) -> DiagnosisRecord {
    let facts = cx.facts;
    let here = if cx.own_netns == Some(key.netns) { String::new() } else { format!(" in netns {}", key.netns) };
    let at = endpoint(key.ip, key.port);
    let port = key.port;
    let clients = g.clients();
    let clients_txt =
        if g.clients_capped { format!("{clients}+ clients") } else { plural(clients, "client", "clients") };
    let tries = format!("{} from {clients_txt}", plural(g.count, "attempt", "attempts"));
    let serving = facts.serving(key.ip);
    let listener_of_port = serving.or(facts.on_port.first());
    let mut ev = Evidence {
        actions: g.actions.clone(),
        reasons: g.reasons.clone(),
        per_second: cx.per_second,
        sample_clients: g.top_clients(10),
        queue_seen: g.queue,
        unavailable: facts.errors.clone(),
        ..Evidence::default()
    };
    let mut process: Option<Process> = None;
    let owner_of = |l: &OwnedListener| l.owner.as_ref().map(|o| Process { pid: o.pid, name: o.name.clone() });
    let (summary, advice): (String, Vec<String>) = match cx.kind {
        Kind::NoListener => {
            let mut s = format!("Nothing listens on port {port}{here}: {tries} to {at} were refused");
            let mut advice = vec![format!(
                "Start the service that should listen on port {port}, or point clients at the port it really uses (`ss -ltnp 'sport = :{port}'`)."
            )];
            if let Some(prev) = &facts.recent {
                let gone = prev.gone.unwrap_or(prev.last_present);
                let _ = write!(
                    s,
                    "; {} listened on {} until {} and is gone",
                    who(&prev.listener),
                    endpoint(prev.listener.listener.address, port),
                    time(prev.last_present)
                );
                if let Some(o) = &prev.listener.owner {
                    advice.insert(
                        0,
                        format!("Find out why {} stopped (its logs, `journalctl`, the OOM killer in `dmesg`) and restart it.", o.name),
                    );
                }
                process = owner_of(&prev.listener);
                ev.previous_listener = Some(PreviousListener {
                    listener: ListenerEvidence::new(&prev.listener.listener, prev.listener.owner.as_ref(), None),
                    last_seen: prev.last_present,
                    gone_by: gone,
                });
            }
            if let Some(l) = serving {
                let _ = write!(s, "; {} listens there again now", who(l));
                process = owner_of(l).or(process);
                advice.push("The service is back; if the failures stop, nothing else is needed.".to_owned());
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            s.push('.');
            (s, advice)
        }
        Kind::ListenerAddressMismatch => {
            let (s, advice) = if let Some(l) = facts.on_port.first() {
                process = owner_of(l);
                let bound = endpoint(l.listener.address, port);
                let why = match (l.listener.address, key.ip) {
                    (IpAddr::V4(_), IpAddr::V6(_)) => "IPv4 only, while these clients use IPv6".to_owned(),
                    (IpAddr::V6(a), IpAddr::V4(_)) if a.is_unspecified() => {
                        "IPv6 only (IPV6_V6ONLY), while these clients use IPv4".to_owned()
                    }
                    (IpAddr::V6(_), IpAddr::V4(_)) => "IPv6 only, while these clients use IPv4".to_owned(),
                    _ => format!("only on {}, while clients connect to {}", l.listener.address, key.ip),
                };
                (
                    format!("Port {port}{here} is served by {} on {bound}, {why}: {tries} to {at} were refused.", who(l)),
                    vec![
                        format!(
                            "Bind {} to the address clients use ({}), or to the wildcard (0.0.0.0 or [::] with IPV6_V6ONLY off).",
                            l.owner.as_ref().map_or("the service", |o| o.name.as_str()),
                            key.ip
                        ),
                        format!("Or point clients at {bound}."),
                    ],
                )
            } else if let Some((ns, l)) = facts.elsewhere.first() {
                process = owner_of(l);
                (
                    format!(
                        "Port {port} is served by {} in another network namespace ({ns}), not{}: {tries} to {at} were refused.",
                        who(l),
                        if here.is_empty() { " in this one".to_owned() } else { here.clone() }
                    ),
                    vec![
                        format!("Publish the port from namespace {ns} (a port mapping or DNAT rule), or run the service in the namespace clients reach."),
                    ],
                )
            } else {
                (format!("Port {port}{here}: {tries} refused."), vec![])
            };
            ev.other_listeners = facts
                .on_port
                .iter()
                .map(|l| ListenerEvidence::new(&l.listener, l.owner.as_ref(), None))
                .chain(
                    facts
                        .elsewhere
                        .iter()
                        .map(|(ns, l)| ListenerEvidence::new(&l.listener, l.owner.as_ref(), Some(*ns))),
                )
                .collect();
            (s, advice)
        }
        Kind::AcceptQueueFull => {
            let somaxconn = facts.sysctls.get("net.core.somaxconn").copied();
            let l = listener_of_port;
            process = l.and_then(owner_of);
            let name = l.map_or_else(|| "the listener".to_owned(), who);
            let backlog = g.queue.map(|q| q.backlog).or(l.map(|l| l.listener.backlog));
            let queued = g.queue.map(|q| q.max_queue_len).or(l.map(|l| l.listener.queue));
            let mut s = format!(
                "{name} on port {port}{here} does not accept connections fast enough: its accept queue is full"
            );
            if let (Some(b), Some(q)) = (backlog, queued) {
                let _ = write!(s, " (backlog {b}, {q} queued)");
            }
            let _ = write!(s, ", {} dropped", plural(g.count, "connection attempt", "connection attempts"));
            s.push('.');
            let app = process.as_ref().map_or("the service", |p| p.name.as_str());
            let mut advice = vec![
                format!("Make {app} call accept() faster: more worker processes or threads, or find what blocks its accept loop."),
            ];
            match (backlog, somaxconn) {
                (Some(b), Some(max)) if (b as i64) < max => advice.push(format!(
                    "Raise {app}'s listen backlog (now {b}) up to net.core.somaxconn ({max}) to absorb bursts."
                )),
                (Some(b), Some(max)) => advice.push(format!(
                    "The backlog ({b}) is already at net.core.somaxconn ({max}): raise both (`sysctl -w net.core.somaxconn=...`) and the listen() backlog."
                )),
                _ => {}
            }
            if let Some(l) = l {
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            ev.sysctls = pick(facts, &["net.core.somaxconn"]);
            (s, advice)
        }
        Kind::SynFlood => {
            let cookies = facts.sysctls.get("net.ipv4.tcp_syncookies").copied();
            let max_syn = facts.sysctls.get("net.ipv4.tcp_max_syn_backlog").copied();
            let l = listener_of_port;
            process = l.and_then(owner_of);
            let name = l.map_or_else(|| "the listener".to_owned(), who);
            let effect = match cookies {
                Some(0) => "SYN cookies are off, so new SYNs are dropped",
                Some(2) => "SYN cookies are always on",
                Some(_) => "the kernel answers with SYN cookies (clients connect, with reduced TCP options)",
                None => "SYN cookies unknown",
            };
            let s = format!(
                "The SYN queue of {name} on port {port}{here} overflowed {}: {} half-open connections from {clients_txt}; {effect}.",
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
            if let Some(l) = l {
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            ev.sysctls =
                pick(facts, &["net.ipv4.tcp_syncookies", "net.ipv4.tcp_max_syn_backlog", "net.core.somaxconn"]);
            (s, advice)
        }
        Kind::FirewallDrop | Kind::FirewallReject => {
            let (verb, noun) =
                if cx.kind == Kind::FirewallDrop { ("drops", "dropped") } else { ("rejects", "rejected") };
            process = listener_of_port.and_then(owner_of);
            let target = listener_of_port.map(|l| format!(" to {}", who(l))).unwrap_or_default();
            let s = match &facts.firewall {
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
            if let Some(r) = &facts.firewall {
                advice.push(format!(
                    "If these clients should reach port {port}, allow them before that rule: `nft insert rule {} {} {} tcp dport {port} accept` (narrow it to their addresses).",
                    r.family, r.table, r.chain
                ));
            }
            advice.push("If the block is intended, nothing is broken: tell the clients' owners.".to_owned());
            if let Some(l) = listener_of_port {
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            ev.firewall_rule = facts.firewall.clone();
            (s, advice)
        }
        Kind::ServerReset => {
            let l = listener_of_port;
            process = l.and_then(owner_of);
            let name = l.map_or_else(|| "The server".to_owned(), who);
            let top = g.reasons.iter().max_by_key(|(_, n)| **n).map(|(r, _)| r.as_str()).unwrap_or("unknown");
            let s = format!(
                "{name} on port {port}{here} resets open connections: {} sent to {clients_txt} (kernel reason {top}).",
                plural(g.count, "RST", "RSTs")
            );
            let mut advice = vec![format!(
                "Check {}'s logs for aborted requests and crashes around {}.",
                process.as_ref().map_or("the service", |p| p.name.as_str()),
                time(g.last_seen)
            )];
            advice.push(match top {
                "TCP_ABORT_ON_CLOSE" | "NOT_SPECIFIED" => {
                    "The application closes sockets with unread data: it reads the request only partly, or closes on error.".to_owned()
                }
                "TCP_STATE" => "Sockets are closed with SO_LINGER 0 (an abortive close) or get segments after close.".to_owned(),
                other => format!("The kernel's RST reason is {other}: see its meaning in include/net/rstreason.h."),
            });
            if let Some(l) = l {
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            (s, advice)
        }
        Kind::HandshakeIncomplete => {
            let l = listener_of_port;
            process = l.and_then(owner_of);
            let list: Vec<String> = g.top_clients(5).iter().map(IpAddr::to_string).collect();
            let s = format!(
                "Clients {} do not complete the TCP handshake with port {port}{here}: the SYN-ACK was retransmitted {} and the final ACK never arrived.",
                list.join(", "),
                plural(g.count, "time", "times")
            );
            let advice = vec![
                "Check the return path to these clients: asymmetric routing, rp_filter, or a NAT/load balancer that does not see the SYN-ACK.".to_owned(),
                "Check firewalls on the clients' side or in between that drop inbound SYN-ACKs.".to_owned(),
            ];
            if let Some(l) = l {
                ev.listener = Some(ListenerEvidence::new(&l.listener, l.owner.as_ref(), None));
            }
            ev.sysctls = pick(facts, &["net.ipv4.tcp_synack_retries"]);
            (s, advice)
        }
        Kind::OutboundRefused | Kind::OutboundTimeout | Kind::OutboundUnreachable => {
            ev.processes = g.top_processes(5);
            process = ev.processes.first().cloned();
            let by = process.as_ref().map(|p| format!(" by {} (pid {})", p.name, p.pid)).unwrap_or_default();
            let n = plural(g.count, "outbound connection", "outbound connections");
            let (s, advice) = match cx.kind {
                Kind::OutboundRefused => (
                    format!("{n}{by}{here} to {at} were refused: nothing listens there, or a firewall rejects them."),
                    vec![format!("Check that the service at {at} runs and listens on that address; check the configured address and port.")],
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
                        vec![
                            format!("Check the route to {} (`ip route get {}`) and ICMP errors from routers or firewalls.", key.ip, key.ip),
                        ],
                    )
                }
            };
            (s, advice)
        }
        Kind::PortScan if key.class == Class::OutboundScan => {
            ev.ports = g.ports.clone();
            process = g.top_processes(1).into_iter().next();
            let by = process.as_ref().map(|p| format!(" by {} (pid {})", p.name, p.pid)).unwrap_or_default();
            let s = format!(
                "This host probed {} ports of {}{by}{here} ({}): a port scan from here, not an outage of {}.",
                g.distinct_ports,
                key.ip,
                plural(g.count, "failed connect", "failed connects"),
                key.ip
            );
            (s, vec!["If this scan is not yours, find the process (`ss -tnp`) and what started it.".to_owned()])
        }
        Kind::PortScan => {
            ev.ports = g.ports.clone();
            let s = format!(
                "{} probed {} ports{here} ({}): a port scan, not a service problem.",
                key.ip,
                g.distinct_ports,
                plural(g.count, "failed attempt", "failed attempts")
            );
            (s, vec![format!("If scans from {} are unwanted, block it in the firewall.", key.ip)])
        }
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
            summary,
            advice,
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
        process,
    }
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
