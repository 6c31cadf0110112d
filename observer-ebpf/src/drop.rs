//! skb:kfree_skb: packets the kernel drops, with its drop reason.
//!
//! Two reasons matter here and are filtered first, because this tracepoint
//! fires for every freed packet on the host:
//! - NETFILTER_DROP of a SYN: a firewall rule dropped a connection attempt
//!   (inbound, or this host's own SYN on the output path);
//! - TCP_LISTEN_OVERFLOW: the final ACK of a handshake found the listener's
//!   accept queue full (the SYN-stage overflow is seen in `listener`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::{record::flags, Action, FailureRecord};

use crate::{
    emit,
    kread::{self, field, Res},
    maps::config,
};

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    if try_kfree_skb(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Res<()> {
    let reason: u32 = field(ctx, config!(kfree_skb.reason))?;
    let netfilter = reason == config!(values.drop_netfilter);
    let overflow = reason == config!(values.drop_listen_overflow);
    if !netfilter && !overflow {
        return Ok(());
    }
    let skb: u64 = field(ctx, config!(kfree_skb.skbaddr))?;
    let skb = skb as *const u8;
    let protocol: u16 = field(ctx, config!(kfree_skb.protocol))?;
    let Ok(p) = kread::skb_packet(skb, protocol) else {
        return Ok(()); // not TCP: not ours to report.
    };
    let syn = p.tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK) == kread::TCP_FLAG_SYN;
    if netfilter && !syn {
        return Ok(());
    }
    let sk = kread::skb_sock(skb).unwrap_or(core::ptr::null());
    let mut rec = FailureRecord::zeroed();
    rec.netns = kread::skb_any_netns(skb, sk)?;
    rec.family = p.family;
    rec.reason = reason;
    // The packet's sender initiated: a SYN's or a final ACK's source is the client.
    rec.src_addr = p.saddr;
    rec.src_port = p.sport;
    rec.dst_addr = p.daddr;
    rec.dst_port = p.dport;
    if netfilter {
        rec.action = if crate::reject::was_rejected(p.sport, p.dport) {
            Action::FirewallReject as u8
        } else {
            Action::FirewallDrop as u8
        };
        if !sk.is_null() {
            // Only locally generated packets carry their socket this early.
            rec.flags |= flags::OUTBOUND;
        }
    } else {
        rec.action = Action::ListenOverflow as u8;
        let rx_sk: u64 = field(ctx, config!(kfree_skb.rx_sk)).unwrap_or(0);
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
