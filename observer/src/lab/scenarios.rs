//! The lab's situations, each built for real: a server and a client
//! namespace joined by a veth pair, real listeners (lab-peer processes with
//! names of their own), real nftables rules, real connection attempts.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::ns::Link;
use crate::diagnose::record::Kind;

pub enum Expect {
    /// This diagnosis (kind, port, listener's or connecting process) in the
    /// server's namespace, or the client's for outbound kinds.
    Diagnosis { kind: Kind, port: u16, process: Option<&'static str> },
    /// No diagnosis in either namespace, except these kinds.
    Nothing { allowed: &'static [Kind] },
}

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub expect: Expect,
    pub build: fn(&mut Rig) -> Result<(), String>,
}

/// What a scenario builds, kept alive until its verdict.
pub struct Rig {
    pub exe: PathBuf,
    pub net: u8,
    pub link: Option<Link>,
    /// When the failures started (the latency budget counts from here).
    pub started: Option<SystemTime>,
    /// How long to wait after the build for diagnoses that must not come.
    pub settle: Duration,
    /// How long a listener must exist before it can be in the history.
    pub poll: Duration,
}

impl Rig {
    fn link(&mut self, tag: &str) -> Result<&mut Link, String> {
        self.link = Some(Link::new(tag, self.net)?);
        self.link.as_mut().ok_or_else(|| "no link".to_owned())
    }

    fn start(&mut self) {
        self.started = Some(SystemTime::now());
    }

    fn server_peer(&mut self, name: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.exe.clone();
        let link = self.link.as_mut().ok_or("no link")?;
        let mut v = vec!["lab-peer", "--name", name];
        v.extend_from_slice(args);
        link.server.spawn(&exe, &v).map(|_| ())
    }

    fn client_peer(&mut self, name: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.exe.clone();
        let link = self.link.as_mut().ok_or("no link")?;
        let mut v = vec!["lab-peer", "--name", name];
        v.extend_from_slice(args);
        link.client.spawn(&exe, &v).map(|_| ())
    }

    fn server(&self, v6: bool, port: u16) -> SocketAddr {
        let l = self.link.as_ref();
        let ip = l.map(|l| if v6 { l.server_v6() } else { l.server_v4() }).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        SocketAddr::new(ip, port)
    }

    /// `n` connection attempts from the client namespace at once, kept
    /// open (or in flight) for `hold`.
    fn spray(&self, to: SocketAddr, n: usize, hold: Duration) -> Result<(), String> {
        let link = self.link.as_ref().ok_or("no link")?;
        link.client.run(move || {
            let socks: Vec<Socket> = (0..n)
                .filter_map(|_| {
                    let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)).ok()?;
                    s.set_nonblocking(true).ok()?;
                    let _ = s.connect(&SockAddr::from(to));
                    Some(s)
                })
                .collect();
            std::thread::sleep(hold);
            drop(socks);
        })
    }

    /// `n` whole exchanges: connect, send, read the answer, close.
    fn exchanges(&self, to: SocketAddr, n: usize) -> Result<usize, String> {
        use std::io::{Read, Write};
        let link = self.link.as_ref().ok_or("no link")?;
        link.client.run(move || {
            (0..n)
                .filter(|_| {
                    let Ok(mut s) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                        return false;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 5];
                    s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok()
                })
                .count()
        })
    }
}

const DROP_SYNACK: &str = "table inet lab {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp flags & (syn | ack) == syn | ack drop
  }
}
";

fn server_rule(port: u16, verdict: &str) -> String {
    format!(
        "table inet filter {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} {verdict}
  }}
}}
"
    )
}

fn port_arg(b: &Rig, v6: bool, port: u16) -> String {
    b.server(v6, port).to_string()
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "no_listener",
            what: "clients connect to a port nothing listens on",
            expect: Expect::Diagnosis { kind: Kind::NoListener, port: 7001, process: None },
            build: |b| {
                b.link("nol")?;
                b.start();
                b.spray(b.server(false, 7001), 3, Duration::from_millis(100))
            },
        },
        Scenario {
            name: "listener_went_away",
            what: "lab-api listened on :7002, exited, clients keep coming",
            expect: Expect::Diagnosis { kind: Kind::NoListener, port: 7002, process: Some("lab-api") },
            build: |b| {
                b.link("gone")?;
                b.server_peer("lab-api", &["listen", "--addr", "0.0.0.0:7002"])?;
                std::thread::sleep(b.poll);
                if let Some(l) = b.link.as_mut() {
                    l.server.stop_peers();
                }
                b.start();
                b.spray(b.server(false, 7002), 3, Duration::from_millis(100))
            },
        },
        Scenario {
            name: "bound_to_loopback",
            what: "lab-admin listens on 127.0.0.1:7003 only; clients come over the network",
            expect: Expect::Diagnosis { kind: Kind::ListenerAddressMismatch, port: 7003, process: Some("lab-admin") },
            build: |b| {
                b.link("lo")?;
                b.server_peer("lab-admin", &["listen", "--addr", "127.0.0.1:7003"])?;
                b.start();
                b.spray(b.server(false, 7003), 3, Duration::from_millis(100))
            },
        },
        Scenario {
            name: "ipv4_only",
            what: "lab-v4 listens on 0.0.0.0:7004; clients use IPv6",
            expect: Expect::Diagnosis { kind: Kind::ListenerAddressMismatch, port: 7004, process: Some("lab-v4") },
            build: |b| {
                b.link("v4")?;
                b.server_peer("lab-v4", &["listen", "--addr", "0.0.0.0:7004"])?;
                b.start();
                b.spray(b.server(true, 7004), 3, Duration::from_millis(100))
            },
        },
        Scenario {
            name: "accept_queue_full",
            what: "lab-slow (backlog 1) never accepts; 8 clients connect",
            expect: Expect::Diagnosis { kind: Kind::AcceptQueueFull, port: 7005, process: Some("lab-slow") },
            build: |b| {
                b.link("aq")?;
                let addr = port_arg(b, false, 7005);
                b.server_peer("lab-slow", &["listen", "--addr", &addr, "--backlog", "1", "--serve", "never"])?;
                b.start();
                b.spray(b.server(false, 7005), 8, Duration::from_millis(1500))
            },
        },
        Scenario {
            name: "syn_flood",
            what: "8 half-open handshakes (clients drop SYN-ACKs) against lab-web, backlog 1",
            expect: Expect::Diagnosis { kind: Kind::SynFlood, port: 7006, process: Some("lab-web") },
            build: |b| {
                b.link("syn")?;
                let addr = port_arg(b, false, 7006);
                b.server_peer("lab-web", &["listen", "--addr", &addr, "--backlog", "1", "--serve", "never"])?;
                b.link.as_ref().ok_or("no link")?.client.nft(DROP_SYNACK)?;
                b.start();
                b.spray(b.server(false, 7006), 8, Duration::from_millis(1500))
            },
        },
        Scenario {
            name: "firewall_drop",
            what: "nftables drops SYNs to lab-ssh on :7007",
            expect: Expect::Diagnosis { kind: Kind::FirewallDrop, port: 7007, process: Some("lab-ssh") },
            build: |b| {
                b.link("fwd")?;
                b.server_peer("lab-ssh", &["listen", "--addr", "0.0.0.0:7007"])?;
                b.link.as_ref().ok_or("no link")?.server.nft(&server_rule(7007, "drop"))?;
                b.start();
                b.spray(b.server(false, 7007), 3, Duration::from_millis(500))
            },
        },
        Scenario {
            name: "firewall_reject",
            what: "nftables rejects SYNs to lab-db on :7008 with a TCP reset",
            expect: Expect::Diagnosis { kind: Kind::FirewallReject, port: 7008, process: Some("lab-db") },
            build: |b| {
                b.link("fwr")?;
                b.server_peer("lab-db", &["listen", "--addr", "0.0.0.0:7008"])?;
                b.link.as_ref().ok_or("no link")?.server.nft(&server_rule(7008, "reject with tcp reset"))?;
                b.start();
                b.spray(b.server(false, 7008), 3, Duration::from_millis(200))
            },
        },
        Scenario {
            name: "server_reset",
            what: "lab-abort accepts and closes every connection with SO_LINGER 0",
            expect: Expect::Diagnosis { kind: Kind::ServerReset, port: 7009, process: Some("lab-abort") },
            build: |b| {
                b.link("rst")?;
                b.server_peer("lab-abort", &["listen", "--addr", "0.0.0.0:7009", "--serve", "abort"])?;
                b.start();
                b.exchanges(b.server(false, 7009), 3).map(|_| ())
            },
        },
        Scenario {
            name: "handshake_incomplete",
            what: "clients' own firewall drops lab-app's SYN-ACKs on :7010",
            expect: Expect::Diagnosis { kind: Kind::HandshakeIncomplete, port: 7010, process: Some("lab-app") },
            build: |b| {
                b.link("hs")?;
                b.server_peer("lab-app", &["listen", "--addr", "0.0.0.0:7010"])?;
                b.link.as_ref().ok_or("no link")?.client.nft(DROP_SYNACK)?;
                b.start();
                b.spray(b.server(false, 7010), 3, Duration::from_millis(1500))
            },
        },
        Scenario {
            name: "outbound_refused",
            what: "lab-client on this host connects to a closed port :7011",
            expect: Expect::Diagnosis { kind: Kind::OutboundRefused, port: 7011, process: Some("lab-client") },
            build: |b| {
                b.link("obr")?;
                let to = port_arg(b, false, 7011);
                b.start();
                b.client_peer("lab-client", &["connect", "--to", &to, "--count", "3"])
            },
        },
        Scenario {
            name: "outbound_timeout",
            what: "lab-client connects to :7012 whose SYNs are dropped (TCP_SYNCNT 1)",
            expect: Expect::Diagnosis { kind: Kind::OutboundTimeout, port: 7012, process: Some("lab-client") },
            build: |b| {
                b.link("obt")?;
                b.link.as_ref().ok_or("no link")?.server.nft(&server_rule(7012, "drop"))?;
                let to = port_arg(b, false, 7012);
                b.start();
                b.client_peer("lab-client", &["connect", "--to", &to, "--count", "3", "--syn-retries", "1"])
            },
        },
        Scenario {
            name: "outbound_unreachable",
            what: "lab-client connects to :7013; the far side answers ICMP host-unreachable",
            expect: Expect::Diagnosis { kind: Kind::OutboundUnreachable, port: 7013, process: Some("lab-client") },
            build: |b| {
                b.link("obu")?;
                let rule = server_rule(7013, "reject with icmpx type host-unreachable");
                b.link.as_ref().ok_or("no link")?.server.nft(&rule)?;
                let to = port_arg(b, false, 7013);
                b.start();
                b.client_peer("lab-client", &["connect", "--to", &to, "--count", "3"])
            },
        },
        Scenario {
            name: "healthy_traffic",
            what: "20 clients connect to lab-echo, talk and close normally",
            expect: Expect::Nothing { allowed: &[] },
            build: |b| {
                b.link("ok")?;
                b.server_peer("lab-echo", &["listen", "--addr", "0.0.0.0:7014"])?;
                b.start();
                let done = b.exchanges(b.server(false, 7014), 20)?;
                if done == 20 {
                    Ok(())
                } else {
                    Err(format!("only {done} of 20 exchanges succeeded"))
                }
            },
        },
        Scenario {
            name: "port_scan",
            what: "one SYN to each of 200 closed ports: a scan, not an outage",
            expect: Expect::Nothing { allowed: &[Kind::PortScan] },
            build: |b| {
                b.link("scan")?;
                let ip = b.server(false, 0).ip();
                b.start();
                let link = b.link.as_ref().ok_or("no link")?;
                link.client.run(move || {
                    for port in 7100..7300u16 {
                        if let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)) {
                            let _ = s.set_nonblocking(true);
                            let _ = s.connect(&SockAddr::from(SocketAddr::new(ip, port)));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                })
            },
        },
    ]
}
