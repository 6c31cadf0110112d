//! tcp:tcp_send_reset and tcp:tcp_receive_reset (raw tracepoints):
//! refused connections and resets the stack sends, and resets it receives.
//!
//! Why tcp_send_reset: it fires for every RST the TCP stack itself
//! generates, with the kernel's RST reason (6.10+) and, when there was no
//! socket, the packet that caused it. A SYN answered by an RST without a
//! socket is exactly a refused connection ("nothing listens"); netfilter
//! rejects do not pass here, so the two stay apart.
//!
//! Why raw: in a refused storm both run for every attempt. The raw
//! tracepoints hand over the socket and the packet; the tuple is read from
//! them in two or three reads, and no perf record is built.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use observer_common::{config::source, record::flags, Action, FailureRecord};

use crate::{
    emit,
    kread::{self, Res},
    maps::config,
};

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

// TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, enum
// sk_rst_reason reason (6.10+)]).
const ARG_SK: usize = 0;
const ARG_SKB: usize = 1;
const ARG_REASON: usize = 2;

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    if try_tcp_send_reset(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_tcp_send_reset(ctx: &RawTracePointContext) -> Res<()> {
    let sk: *const u8 = ctx.arg(ARG_SK);
    let mut rec = if sk.is_null() {
        // 6.10+: an RST for a segment no socket took. Before, the
        // tracepoint stays silent here and kfree_skb reports these.
        if config!(sources.no_socket) != source::NO_SOCKET_SEND_RESET {
            return Ok(());
        }
        let skb: *const u8 = ctx.arg(ARG_SKB);
        let p = kread::skb_packet(skb, kread::skb_protocol(skb)?)?;
        let mut rec = FailureRecord::zeroed();
        rec.family = p.family;
        rec.netns = kread::skb_netns(skb)?;
        // The segment's sender is the peer; its destination is this host.
        rec.src_addr = p.saddr;
        rec.src_port = p.sport;
        rec.dst_addr = p.daddr;
        rec.dst_port = p.dport;
        // Only an initial SYN without a socket is a refused connection; an
        // RST for a segment of an unknown connection (e.g. after a restart)
        // is a reset the server sent.
        let syn = p.tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK) == kread::TCP_FLAG_SYN;
        rec.action = if syn { Action::Refused as u8 } else { Action::ResetSent as u8 };
        rec
    } else {
        // A reset on a connection (full, request or TIME_WAIT socket: all
        // start with sock_common).
        let t = kread::sock_tuple(sk)?;
        let mut rec = t.peer_initiated(Action::ResetSent)?;
        rec.state = t.state;
        if let Some(o) = crate::connect::active_owner(sk) {
            outbound(&mut rec, o);
        }
        rec
    };
    if config!(send_reset.reason) != 0 {
        rec.reason = ctx.arg(ARG_REASON);
    }
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}

/// tcp:tcp_receive_reset (raw tracepoint): an RST arrived on one of this
/// host's sockets. In SYN_SENT that is an outbound connect refused by the
/// peer (also seen as connect_failed); otherwise the peer reset an open
/// connection. Raw: the tuple is read from the socket, and no perf record
/// is built (in a refused storm this runs for every attempt).
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    if try_tcp_receive_reset(ctx.arg(0)).is_err() {
        emit::read_failed();
    }
    0
}

fn try_tcp_receive_reset(sk: *const u8) -> Res<()> {
    let t = kread::sock_tuple(sk)?;
    // By default the peer initiated; corrected below for this host's connects.
    let mut rec = t.peer_initiated(Action::ResetReceived)?;
    rec.state = t.state;
    if let Some(o) = crate::connect::active_owner(sk) {
        outbound(&mut rec, o);
    } else if rec.state as u32 == config!(values.tcp_syn_sent) {
        // Still connecting: this host initiated (opened before the daemon).
        rec.flags |= flags::OUTBOUND;
        swap_ends(&mut rec);
    }
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}
