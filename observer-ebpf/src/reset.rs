//! tcp:tcp_send_reset: refused connections and resets the stack sends.
//!
//! Why this hook: it fires for every RST the TCP stack itself generates, with
//! the kernel's RST reason and, when there was no socket, the packet that
//! caused it. A SYN answered by an RST without a socket is exactly a refused
//! connection ("nothing listens"); netfilter rejects do not pass here, so the
//! two stay apart.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::{
    config::{source, UNSET},
    record::{flags, AF_INET, AF_INET6},
    Action, FailureRecord,
};

use crate::{
    emit,
    kread::{self, field, Res},
    maps::config,
};

/// A `struct sockaddr_in6`-sized buffer from the tracepoint (sockaddr_in or
/// sockaddr_in6 inside): family, then big-endian port, then the address.
type SockaddrBuf = [u8; 28];

fn port_of(sa: &SockaddrBuf) -> u16 {
    u16::from_be_bytes([sa[2], sa[3]])
}

fn addr_of(sa: &SockaddrBuf, family: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    if family == AF_INET {
        out[..4].copy_from_slice(&sa[4..8]);
    } else {
        out.copy_from_slice(&sa[8..24]);
    }
    out
}

fn swap_ends(rec: &mut FailureRecord) {
    core::mem::swap(&mut rec.src_addr, &mut rec.dst_addr);
    core::mem::swap(&mut rec.src_port, &mut rec.dst_port);
}

/// This host opened the connection: it is the source, and its process is known.
fn outbound(rec: &mut FailureRecord, owner: crate::connect::Owner) {
    rec.flags |= flags::OUTBOUND | flags::HAS_PROCESS;
    rec.pid = owner.pid;
    rec.comm = owner.comm;
    swap_ends(rec);
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    if try_tcp_send_reset(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Res<()> {
    if config!(send_reset_tuple.skaddr) != UNSET {
        return send_reset_on_socket(ctx);
    }
    let skaddr: u64 = field(ctx, config!(send_reset.skaddr))?;
    let skbaddr: u64 = field(ctx, config!(send_reset.skbaddr))?;
    let state: i32 = field(ctx, config!(send_reset.state))?;
    let reason: u32 = field(ctx, config!(send_reset.reason))?;
    // The tracepoint stores the local end in saddr and the peer in daddr,
    // also when it had to take them (reversed) from the incoming packet.
    let local: SockaddrBuf = field(ctx, config!(send_reset.saddr))?;
    let remote: SockaddrBuf = field(ctx, config!(send_reset.daddr))?;
    let family = local[0];
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }

    let mut rec = FailureRecord::zeroed();
    rec.family = family;
    rec.reason = reason;
    rec.state = state as u8;
    rec.src_addr = addr_of(&remote, family);
    rec.src_port = port_of(&remote);
    rec.dst_addr = addr_of(&local, family);
    rec.dst_port = port_of(&local);

    if skaddr == 0 {
        if config!(sources.no_socket) != source::NO_SOCKET_SEND_RESET {
            return Ok(()); // kfree_skb reports these on this kernel.
        }
        let skb = skbaddr as *const u8;
        rec.netns = kread::skb_netns(skb)?;
        // Only an initial SYN without a socket is a refused connection; an
        // RST for a segment of an unknown connection (e.g. after a restart)
        // is a reset the server sent.
        let tcp_flags = kread::skb_tcp_flags(skb)?;
        rec.action = if tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK) == kread::TCP_FLAG_SYN {
            Action::Refused as u8
        } else {
            Action::ResetSent as u8
        };
    } else {
        let sk = skaddr as *const u8;
        rec.netns = kread::sock_netns(sk)?;
        rec.action = Action::ResetSent as u8;
        if let Some(o) = crate::connect::active_owner(sk) {
            outbound(&mut rec, o);
        }
    }
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}

/// tcp_send_reset before 6.10: the kernel fires it only for resets sent on
/// a full socket (application aborts, data for a closed socket), with the
/// socket's 4-tuple. RSTs without a socket are found by `drop` instead.
fn send_reset_on_socket(ctx: &TracePointContext) -> Res<()> {
    let l = config!(send_reset_tuple);
    let t = kread::tuple(ctx, &l)?;
    let mut rec = t.peer_initiated(Action::ResetSent)?;
    let state: i32 = field(ctx, config!(send_reset.state))?;
    rec.state = state as u8;
    if let Some(o) = crate::connect::active_owner(t.skaddr) {
        outbound(&mut rec, o);
    }
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}

/// tcp:tcp_receive_reset: an RST arrived on one of this host's sockets.
/// In SYN_SENT that is an outbound connect refused by the peer (also seen as
/// connect_failed); otherwise the peer reset an open connection.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if try_tcp_receive_reset(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Res<()> {
    let l = config!(receive_reset);
    let t = kread::tuple(ctx, &l)?;
    // By default the peer initiated; corrected below for this host's connects.
    let mut rec = t.peer_initiated(Action::ResetReceived)?;
    rec.state = kread::sock_state(t.skaddr).unwrap_or(0);
    if let Some(o) = crate::connect::active_owner(t.skaddr) {
        outbound(&mut rec, o);
    } else if rec.state as u32 == config!(values.tcp_syn_sent) {
        // Still connecting: this host initiated (the owner is in CONNECTING).
        rec.flags |= flags::OUTBOUND;
        swap_ends(&mut rec);
    }
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}
