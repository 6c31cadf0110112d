//! Reads from kernel memory at offsets that came from the running kernel.
//!
//! All offsets are `CONFIG` values (BTF or tracefs); `UNSET` means the
//! running kernel did not provide them, and the read fails instead of
//! reading from a guessed place.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use observer_common::config::UNSET;

use crate::maps::config;

pub type Res<T> = Result<T, i32>;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn at<T>(base: *const u8, off: u16) -> Res<T> {
    if off == UNSET || base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails with an
    // error instead of faulting; `base` is a kernel pointer from the hook.
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

/// Reads a tracepoint field at a format-file offset.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, off: u16) -> Res<T> {
    if off == UNSET {
        return Err(-1);
    }
    // SAFETY: the offset comes from this tracepoint's format file, and
    // read_at goes through bpf_probe_read_kernel (no direct dereference).
    unsafe { ctx.read_at::<T>(off as usize) }
}

/// Network namespace inode of a `struct net *`.
#[inline(always)]
fn net_inum(net: *const u8) -> Res<u32> {
    at::<u32>(net, config!(structs.net_ns_inum))
}

/// Network namespace of a socket (`sk->__sk_common.skc_net`).
#[inline(always)]
pub fn sock_netns(sk: *const u8) -> Res<u32> {
    let net: *const u8 = at(sk, config!(structs.sk_net))?;
    net_inum(net)
}

/// Network namespace of a packet without a socket, through its device.
#[inline(always)]
pub fn skb_netns(skb: *const u8) -> Res<u32> {
    let dev: *const u8 = at(skb, config!(structs.skb_dev))?;
    let net: *const u8 = at(dev, config!(structs.dev_nd_net))?;
    net_inum(net)
}

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;
pub const TCP_FLAG_RST: u8 = 0x04;

/// Network namespace of a packet: through its socket `sk` when it has one
/// (the output path, before a device is set), else through its device.
#[inline(always)]
pub fn skb_any_netns(skb: *const u8, sk: *const u8) -> Res<u32> {
    if sk.is_null() {
        skb_netns(skb)
    } else {
        sock_netns(sk)
    }
}

/// The socket the packet belongs to, or null.
#[inline(always)]
pub fn skb_sock(skb: *const u8) -> Res<*const u8> {
    at(skb, config!(structs.skb_sk))
}

/// TCP state of a socket (`skc_state`).
#[inline(always)]
pub fn sock_state(sk: *const u8) -> Res<u8> {
    at(sk, config!(structs.sk_state))
}

/// Accept-queue length and limit of a listening socket.
#[inline(always)]
pub fn listener_queue(sk: *const u8) -> Res<(u32, u32)> {
    let (len_off, max_off) = (config!(structs.sk_ack_backlog), config!(structs.sk_max_ack_backlog));
    // Adjacent in struct sock on the kernels we know: one read instead of two
    // (this runs for every SYN of a flood).
    if len_off != UNSET && max_off == len_off.wrapping_add(4) {
        let both: [u32; 2] = at(sk, len_off)?;
        return Ok((both[0], both[1]));
    }
    let len: u32 = at(sk, len_off)?;
    let max: u32 = at(sk, max_off)?;
    Ok((len, max))
}

/// SYN-queue length (request socks) of a listening socket.
#[inline(always)]
pub fn listener_syn_queue(sk: *const u8) -> Res<u32> {
    at(sk, config!(structs.icsk_syn_qlen))
}

pub const IPPROTO_TCP: u8 = 6;
pub const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// An IP header: the protocol it carries and where that starts.
pub struct Ip {
    pub proto: u8,
    pub l4: *const u8,
}

/// Reads the IP header at `ip` (kernel memory). IPv6 extension headers are
/// not walked: `proto` is then the extension's, not TCP, and callers skip it.
#[inline(always)]
pub fn ip_header(ip: *const u8) -> Res<Ip> {
    let first: u8 = at(ip, 0)?;
    let version = first >> 4;
    let (proto, l4_off) = match version {
        4 => (at::<u8>(ip, 9)?, ((first & 0x0f) as usize) * 4),
        6 => (at::<u8>(ip, 6)?, 40),
        _ => return Err(-1),
    };
    // SAFETY: pointer arithmetic only; reads go through bpf_probe_read_kernel.
    Ok(Ip { proto, l4: unsafe { ip.add(l4_off) } })
}

/// The network header of an skb: `head + network_header`.
#[inline(always)]
pub fn skb_network_header(skb: *const u8) -> Res<*const u8> {
    let head: *const u8 = at(skb, config!(structs.skb_head))?;
    let nh: u16 = at(skb, config!(structs.skb_network_header))?;
    if nh == u16::MAX || head.is_null() {
        return Err(-1);
    }
    // SAFETY: pointer arithmetic only; reads go through bpf_probe_read_kernel.
    Ok(unsafe { head.add(nh as usize) })
}

/// Source and destination port of a TCP header (host order).
#[inline(always)]
pub fn tcp_ports(th: *const u8) -> Res<(u16, u16)> {
    let p: [u8; 4] = at(th, 0)?;
    Ok((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// The IP and TCP headers of a packet, parsed into a 4-tuple and TCP flags.
pub struct Packet {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

/// Parses a TCP packet of an skb whose `protocol` (ethertype) is given by
/// the hook; anything but TCP over IPv4/IPv6 is Err.
///
/// Four reads in all (head, network header offset, the IP header, the
/// TCP header's first 14 bytes): this runs for every failure of a storm,
/// and each read is a helper call.
#[inline(always)]
pub fn skb_packet(skb: *const u8, protocol: u16) -> Res<Packet> {
    let ip = skb_network_header(skb)?;
    let mut p = Packet { family: 0, saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, tcp_flags: 0 };
    let l4_off = match protocol {
        ETH_P_IP => {
            let h: [u8; 20] = at(ip, 0)?;
            if h[0] >> 4 != 4 || h[9] != IPPROTO_TCP {
                return Err(-1);
            }
            p.saddr[..4].copy_from_slice(&h[12..16]);
            p.daddr[..4].copy_from_slice(&h[16..20]);
            p.family = observer_common::record::AF_INET;
            ((h[0] & 0x0f) as usize) * 4
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = at(ip, 0)?;
            // Extension headers are not walked: TCP must follow directly.
            if h[0] >> 4 != 6 || h[6] != IPPROTO_TCP {
                return Err(-1);
            }
            p.saddr.copy_from_slice(&h[8..24]);
            p.daddr.copy_from_slice(&h[24..40]);
            p.family = observer_common::record::AF_INET6;
            40
        }
        _ => return Err(-1),
    };
    // SAFETY: pointer arithmetic only; the read goes through bpf_probe_read_kernel.
    let th: [u8; 14] = at(unsafe { ip.add(l4_off) }, 0)?;
    p.sport = u16::from_be_bytes([th[0], th[1]]);
    p.dport = u16::from_be_bytes([th[2], th[3]]);
    p.tcp_flags = th[13];
    Ok(p)
}

/// The classic 4-tuple tracepoint fields (host-order ports).
pub struct Tuple {
    pub skaddr: *const u8,
    pub family: u8,
    /// The socket's TCP state, where read from the socket (0 otherwise).
    pub state: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// A record for a connection the peer initiated: the socket's own side
    /// (sport/saddr) is the destination, the peer the source.
    #[inline(always)]
    pub fn peer_initiated(&self, action: observer_common::Action) -> Res<observer_common::FailureRecord> {
        let mut rec = observer_common::FailureRecord::zeroed();
        rec.action = action as u8;
        rec.family = self.family;
        rec.netns = sock_netns(self.skaddr)?;
        rec.src_addr = self.daddr;
        rec.src_port = self.dport;
        rec.dst_addr = self.saddr;
        rec.dst_port = self.sport;
        Ok(rec)
    }
}

#[inline(always)]
pub fn tuple(ctx: &TracePointContext, l: &observer_common::config::TupleLayout) -> Res<Tuple> {
    let skaddr: u64 = field(ctx, l.skaddr)?;
    let family: u16 = if l.family == UNSET {
        // Older layouts have no `family`: the kernel fills it from the
        // socket's own, so read that (request socks share the prefix).
        at(skaddr as *const u8, config!(structs.sk_family))?
    } else {
        field(ctx, l.family)?
    };
    let mut t = Tuple {
        skaddr: skaddr as *const u8,
        family: family as u8,
        state: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: field(ctx, l.sport)?,
        dport: field(ctx, l.dport)?,
    };
    if t.family == observer_common::record::AF_INET {
        let s: [u8; 4] = field(ctx, l.saddr)?;
        let d: [u8; 4] = field(ctx, l.daddr)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if t.family == observer_common::record::AF_INET6 {
        t.saddr = field(ctx, l.saddr_v6)?;
        t.daddr = field(ctx, l.daddr_v6)?;
    } else {
        return Err(-1);
    }
    Ok(t)
}

/// The 4-tuple and state of a socket, read from the socket itself
/// (`sock_common`): what the classic tracepoints copy into their records,
/// for the hooks that get only the socket (raw tracepoints, fentry/fexit).
///
/// `sock_common` starts with the IPv4 addresses, the hash, the ports, the
/// family and the state, 20 bytes, on every kernel we know: where BTF says
/// so, one read takes them all (this runs for every failure of a storm).
#[inline(always)]
pub fn sock_tuple(sk: *const u8) -> Res<Tuple> {
    let (family, state, sport, dport, v4_daddr, v4_saddr) = if config!(structs.sk_daddr) == 0
        && config!(structs.sk_rcv_saddr) == 4
        && config!(structs.sk_dport) == 12
        && config!(structs.sk_num) == 14
        && config!(structs.sk_family) == 16
        && config!(structs.sk_state) == 18
    {
        let h: [u8; 20] = at(sk, 0)?;
        let dport = u16::from_be_bytes([h[12], h[13]]);
        let sport = u16::from_ne_bytes([h[14], h[15]]);
        let family = u16::from_ne_bytes([h[16], h[17]]) as u8;
        (family, h[18], sport, dport, [h[0], h[1], h[2], h[3]], [h[4], h[5], h[6], h[7]])
    } else {
        let family: u16 = at(sk, config!(structs.sk_family))?;
        let dport: u16 = at(sk, config!(structs.sk_dport))?;
        let sport: u16 = at(sk, config!(structs.sk_num))?;
        let d: [u8; 4] = at(sk, config!(structs.sk_daddr))?;
        let l: [u8; 4] = at(sk, config!(structs.sk_rcv_saddr))?;
        (family as u8, sock_state(sk).unwrap_or(0), sport, u16::from_be(dport), d, l)
    };
    // A full socket that closed gave its port back (inet_put_port zeroes
    // `skc_num`; an abortive close sends its RST after that): its
    // `inet_sport` still has it. Request and TIME_WAIT socks keep theirs.
    let sport =
        if sport == 0 { at::<u16>(sk, config!(structs.inet_sport)).map(u16::from_be).unwrap_or(0) } else { sport };
    let mut t = Tuple { skaddr: sk, family, state, saddr: [0; 16], daddr: [0; 16], sport, dport };
    if family == observer_common::record::AF_INET {
        t.saddr[..4].copy_from_slice(&v4_saddr);
        t.daddr[..4].copy_from_slice(&v4_daddr);
    } else if family == observer_common::record::AF_INET6 {
        t.saddr = at(sk, config!(structs.sk_v6_rcv_saddr))?;
        t.daddr = at(sk, config!(structs.sk_v6_daddr))?;
    } else {
        return Err(-1);
    }
    Ok(t)
}

/// The ethertype of a packet (`skb->protocol`, host order).
#[inline(always)]
pub fn skb_protocol(skb: *const u8) -> Res<u16> {
    let p: u16 = at(skb, config!(structs.skb_protocol))?;
    Ok(u16::from_be(p))
}

/// The local address and port a socket has (zero when not bound yet).
#[inline(always)]
pub fn sock_local(sk: *const u8, family: u8) -> Res<([u8; 16], u16)> {
    let port: u16 = at(sk, config!(structs.sk_num))?;
    let mut addr = [0u8; 16];
    if family == observer_common::record::AF_INET {
        let a: [u8; 4] = at(sk, config!(structs.sk_rcv_saddr))?;
        addr[..4].copy_from_slice(&a);
    } else {
        addr = at(sk, config!(structs.sk_v6_rcv_saddr))?;
    }
    Ok((addr, port))
}

/// `SO_EE_ORIGIN_ICMP` and `SO_EE_ORIGIN_ICMP6`: Linux UAPI (errqueue.h).
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// The ICMP error the kernel kept for a socket without failing it, or 0.
///
/// An ICMP error that arrives while the owner holds the socket lock (on
/// loopback: inside connect() itself, which sends the SYN) is not fatal: the
/// kernel stores it in `sk_err_soft` and (IPv4, seen on 6.18 without
/// IP_RECVERR; IPv6 queued nothing there) also queues it on
/// `sk_error_queue` and wakes pollers. An application that then reads
/// SO_ERROR gets that errno (and clears `sk_err_soft`), so the queued
/// error's `ee_errno` is the only trace left when it closes the socket.
/// Only ICMP-origin entries count: timestamps use the same queue.
#[inline(always)]
pub fn soft_error(sk: *const u8) -> u32 {
    let soft: i32 = at(sk, config!(structs.sk_err_soft)).unwrap_or(0);
    if soft > 0 {
        return soft as u32;
    }
    let queued: u32 = at(sk, config!(structs.sk_errq_len)).unwrap_or(0);
    if queued == 0 {
        return 0;
    }
    let Ok(skb) = at::<*const u8>(sk, config!(structs.sk_errq_next)) else {
        return 0;
    };
    // struct sock_extended_err (UAPI): u32 ee_errno, then u8 ee_origin.
    let Ok(ee) = at::<[u8; 8]>(skb, config!(structs.skb_ee)) else {
        return 0;
    };
    if ee[4] != SO_EE_ORIGIN_ICMP && ee[4] != SO_EE_ORIGIN_ICMP6 {
        return 0;
    }
    u32::from_ne_bytes([ee[0], ee[1], ee[2], ee[3]])
}
