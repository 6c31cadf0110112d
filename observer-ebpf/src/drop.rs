//! skb:kfree_skb (raw tracepoint): packets the kernel drops, and why.
//!
//! This tracepoint fires for every freed packet on the host, so it is
//! attached raw (no perf record is built for the packets that are none of
//! ours) and the cheap test comes first: the drop reason (5.17+) or, on kernels without
//! reasons, the dropping function (`location`, a return address, compared
//! with text ranges the daemon took from /proc/kallsyms). Three drops are
//! reported, each only where the daemon chose kfree_skb as its source
//! (`CONFIG.sources`), so no occurrence is counted by two programs:
//! - netfilter dropped a SYN (reason NETFILTER_DROP, or freed in
//!   nf_hook_slow): a firewall rule dropped a connection attempt (inbound,
//!   or this host's own SYN on the output path; freed in nft_do_chain on
//!   kernels whose nf_tables frees drops itself); a reject if `reject` saw
//!   the reject rule answer this very packet;
//! - the final ACK of a handshake found the listener's accept queue full
//!   (TCP_LISTEN_OVERFLOW; the SYN-stage overflow is seen in `listener`);
//! - no socket took a segment and the host answered with an RST (reason
//!   NO_SOCKET, or freed in tcp_v4_rcv/tcp_v6_rcv, before 6.10 where
//!   tcp_send_reset stays silent without a socket): a SYN is a refused
//!   connection, anything else a reset the server sent.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use observer_common::{
    config::source,
    record::{flags, inferred},
    Action, FailureRecord,
};

use crate::{
    emit,
    kread::{self, Res},
    maps::config,
};

/// The drops this program reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drop {
    Netfilter,
    ListenOverflow,
    NoSocket,
}

// TP_PROTO(struct sk_buff *skb, void *location[, enum skb_drop_reason
// reason (5.17+)[, struct sock *rx_sk (6.12+)]]): the daemon tells which
// arguments this kernel passes from the tracepoint's format.
const ARG_SKB: usize = 0;
const ARG_LOCATION: usize = 1;
const ARG_REASON: usize = 2;
const ARG_RX_SK: usize = 3;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    if try_kfree_skb(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

/// Which reported drop this is, with the reason to record and the flag that
/// says how to read it; None for every other freed packet.
#[inline(always)]
fn classify(ctx: &RawTracePointContext) -> Res<Option<(Drop, u32, u8)>> {
    if config!(kfree_skb.reason) != 0 {
        let reason: u32 = ctx.arg(ARG_REASON);
        let drop = if reason == config!(values.drop_netfilter)
            && config!(sources.netfilter) == source::NETFILTER_DROP_REASON
        {
            Drop::Netfilter
        } else if reason == config!(values.drop_listen_overflow)
            && config!(sources.ack_overflow) == source::ACK_OVERFLOW_DROP_REASON
        {
            Drop::ListenOverflow
        } else if reason == config!(values.drop_no_socket)
            && config!(sources.no_socket) == source::NO_SOCKET_DROP_REASON
        {
            Drop::NoSocket
        } else {
            return Ok(None);
        };
        return Ok(Some((drop, reason, flags::REASON_DROP)));
    }
    let location: u64 = ctx.arg(ARG_LOCATION);
    if config!(sources.netfilter) == source::NETFILTER_DROP_LOCATION
        && (config!(sources.nf_hook_slow).contains(location) || config!(sources.nft_do_chain).contains(location))
    {
        return Ok(Some((Drop::Netfilter, inferred::NETFILTER_DROP, flags::REASON_INFERRED)));
    }
    if config!(sources.no_socket) == source::NO_SOCKET_DROP_LOCATION
        && (config!(sources.tcp_v4_rcv).contains(location) || config!(sources.tcp_v6_rcv).contains(location))
    {
        return Ok(Some((Drop::NoSocket, inferred::NO_SOCKET, flags::REASON_INFERRED)));
    }
    Ok(None)
}

fn try_kfree_skb(ctx: &RawTracePointContext) -> Res<()> {
    let Some((drop, reason, reason_flag)) = classify(ctx)? else {
        return Ok(());
    };
    let skb: *const u8 = ctx.arg(ARG_SKB);
    let protocol = kread::skb_protocol(skb)?;
    let Ok(p) = kread::skb_packet(skb, protocol) else {
        return Ok(()); // not TCP: not ours to report.
    };
    let syn = p.tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK) == kread::TCP_FLAG_SYN;
    let action = match drop {
        Drop::Netfilter if !syn => return Ok(()),
        Drop::Netfilter if crate::reject::was_rejected(skb, p.sport, p.dport) => Action::FirewallReject,
        Drop::Netfilter => Action::FirewallDrop,
        Drop::ListenOverflow => Action::ListenOverflow,
        // An RST is never answered; anything else must have been, or the
        // kernel freed it for another cause (bad checksum, TIME_WAIT, ...).
        Drop::NoSocket if p.tcp_flags & kread::TCP_FLAG_RST != 0 => return Ok(()),
        Drop::NoSocket if !crate::reject::answered_with_rst(skb, p.sport, p.dport) => return Ok(()),
        // Only an initial SYN is a refused connection; an RST for a segment
        // of an unknown connection (e.g. after a restart) is a reset sent.
        Drop::NoSocket if syn => Action::Refused,
        Drop::NoSocket => Action::ResetSent,
    };
    let sk = kread::skb_sock(skb).unwrap_or(core::ptr::null());
    let mut rec = FailureRecord::zeroed();
    rec.action = action as u8;
    rec.netns = kread::skb_any_netns(skb, sk)?;
    rec.family = p.family;
    rec.reason = reason;
    rec.flags = reason_flag;
    // The packet's sender initiated: a SYN's or a final ACK's source is the client.
    rec.src_addr = p.saddr;
    rec.src_port = p.sport;
    rec.dst_addr = p.daddr;
    rec.dst_port = p.dport;
    if drop == Drop::Netfilter && !sk.is_null() {
        // Only locally generated packets carry their socket this early.
        rec.flags |= flags::OUTBOUND;
    }
    if drop == Drop::ListenOverflow {
        let rx_sk: u64 = if config!(kfree_skb.rx_sk) != 0 { ctx.arg(ARG_RX_SK) } else { 0 };
        if rx_sk != 0 {
            if let Ok((len, max)) = kread::listener_queue(rx_sk as *const u8) {
                rec.queue_len = len;
                rec.backlog = max;
                rec.flags |= flags::HAS_LISTENER;
            }
        }
    }
    // Inbound or outbound, the endpoint that was not reached is the key.
    let key = emit::key_of(&rec, rec.dst_port, rec.dst_addr);
    emit::record(&key, rec);
    Ok(())
}
