//! Listening TCP sockets of the calling thread's network namespace, with
//! their accept queues, through sock_diag (NETLINK_SOCK_DIAG): the same
//! source `ss -ltn` reads. For a listener the kernel reports the current
//! accept-queue length as `recv_queue` and the backlog limit as
//! `send_queue`.

use std::net::IpAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use serde::{Deserialize, Serialize};

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub address: IpAddr,
    pub port: u16,
    /// The accept-queue limit: listen(2)'s backlog, capped by net.core.somaxconn.
    pub backlog: u32,
    /// Connections waiting in the accept queue now.
    pub queue: u32,
    /// IPv6 socket that refuses IPv4 (IPV6_V6ONLY); false for IPv4 sockets.
    #[serde(default)]
    pub v6only: bool,
    /// Socket inode, to find the owning process in /proc.
    #[serde(skip)]
    pub inode: u32,
}

impl Listener {
    /// Whether a connection to `ip` would reach this socket (exact address,
    /// the family's wildcard, or an IPv6 wildcard that is dual-stack).
    pub fn serves(&self, ip: IpAddr) -> bool {
        if self.address == ip {
            return true;
        }
        match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(_)) => a.is_unspecified(),
            (IpAddr::V6(a), IpAddr::V6(_)) => a.is_unspecified(),
            (IpAddr::V6(a), IpAddr::V4(_)) => a.is_unspecified() && !self.v6only,
            (IpAddr::V4(_), IpAddr::V6(b)) => b.to_ipv4_mapped().is_some_and(|m| self.serves(IpAddr::V4(m))),
        }
    }
}

/// Every TCP listener of the calling thread's namespace, IPv4 and IPv6.
pub fn dump() -> std::io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    for (family, id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        request(&socket, family, id)?;
        receive(&socket, &mut out)?;
    }
    Ok(out)
}

fn request(socket: &Socket, family: u8, socket_id: SocketId) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    // serialize() panics on a short buffer: size it from the packet itself.
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    Ok(())
}

fn receive(socket: &Socket, out: &mut Vec<Listener>) -> std::io::Result<()> {
    loop {
        let (buf, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    out.push(Listener {
                        address: h.socket_id.source_address,
                        port: h.socket_id.source_port,
                        backlog: h.send_queue,
                        queue: h.recv_queue,
                        v6only: r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true))),
                        inode: h.inode,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(std::io::Error::other(format!("sock_diag: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(addr: &str, v6only: bool) -> Listener {
        Listener { address: addr.parse().unwrap(), port: 80, backlog: 1, queue: 0, v6only, inode: 0 }
    }

    #[test]
    fn which_addresses_a_listener_serves() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l("0.0.0.0", false).serves(ip("10.0.0.1")));
        assert!(!l("127.0.0.1", false).serves(ip("10.0.0.1")));
        assert!(!l("0.0.0.0", false).serves(ip("::1")));
        assert!(l("::", false).serves(ip("10.0.0.1")));
        assert!(!l("::", true).serves(ip("10.0.0.1")));
        assert!(l("127.0.0.1", false).serves(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn dumps_a_listener_of_this_namespace() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let all = dump().unwrap();
        let me = all.iter().find(|l| l.port == port).expect("own listener in the dump");
        assert_eq!(me.address, ip4_loopback());
        assert!(me.backlog > 0 && me.inode > 0, "{me:?}");
    }

    fn ip4_loopback() -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }
}
