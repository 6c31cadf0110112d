//! fentry tcp_conn_request and tcp_v4/v6_syn_recv_sock: SYNs that reach a
//! listener whose accept queue or SYN queue is already full, and (on
//! kernels whose kfree_skb names no TCP_LISTEN_OVERFLOW) final ACKs that
//! reach a listener whose accept queue is full.
//!
//! Why these hooks: at the SYN stage the kernel frees an overflowing SYN
//! with consume_skb, so kfree_skb never sees it, and no tracepoint fires.
//! tcp_conn_request is where every SYN to a listener goes (IPv4 and IPv6),
//! and its first tests are the two queue checks; reading the queues at its
//! entry sees the lengths the kernel is about to compare, with the same
//! ">". Likewise tcp_v4/v6_syn_recv_sock, called once per completed
//! handshake, first tests whether the accept queue is full. Both run once
//! per connection attempt, not once per packet: the cgroup_skb program they
//! replace ran for every packet delivered to any socket.

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use observer_common::{
    config::source,
    record::{flags, inferred},
    Action, CountKey, FailureRecord,
};

use crate::{
    emit,
    kread::{self, Res},
    maps::config,
};

/// `TCP_LISTEN` (include/net/tcp_states.h): stable since the first TCP.
const TCP_LISTEN: u8 = 10;

/// `tcp_conn_request(rsk_ops, af_ops, struct sock *sk, struct sk_buff *skb)`.
#[fentry(function = "tcp_conn_request")]
pub fn tcp_conn_request(ctx: FEntryContext) -> i32 {
    if try_conn_request(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_conn_request(ctx: &FEntryContext) -> Res<()> {
    let sk: *const u8 = ctx.arg(2);
    let (acceptq, max) = kread::listener_queue(sk)?;
    // The kernel's own conditions: inet_csk_reqsk_queue_is_full() and
    // sk_acceptq_is_full() compare with ">". A healthy SYN leaves here.
    let (action, queue_len) = if acceptq > max {
        (Action::ListenOverflow, acceptq)
    } else {
        let synq = kread::listener_syn_queue(sk)?;
        if synq <= max {
            return Ok(());
        }
        (Action::SynQueueOverflow, synq)
    };
    let mut f = if action == Action::ListenOverflow { flags::SYN_STAGE } else { 0 };
    f |= flags::HAS_LISTENER;
    overflow(sk, ctx.arg(3), action, queue_len, max, f, 0)
}

/// `tcp_v4_syn_recv_sock(const struct sock *sk, struct sk_buff *skb, ...)`.
#[fentry(function = "tcp_v4_syn_recv_sock")]
pub fn tcp_v4_syn_recv_sock(ctx: FEntryContext) -> i32 {
    if try_syn_recv_sock(&ctx, false).is_err() {
        emit::read_failed();
    }
    0
}

/// The IPv6 one calls the IPv4 one for a v4-mapped connection: that final
/// ACK is counted there.
#[fentry(function = "tcp_v6_syn_recv_sock")]
pub fn tcp_v6_syn_recv_sock(ctx: FEntryContext) -> i32 {
    if try_syn_recv_sock(&ctx, true).is_err() {
        emit::read_failed();
    }
    0
}

fn try_syn_recv_sock(ctx: &FEntryContext, v6: bool) -> Res<()> {
    if config!(sources.ack_overflow) != source::ACK_OVERFLOW_SYN_RECV_SOCK {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let (acceptq, max) = kread::listener_queue(sk)?;
    if acceptq <= max {
        return Ok(());
    }
    let skb: *const u8 = ctx.arg(1);
    if v6 && kread::skb_protocol(skb)? == kread::ETH_P_IP {
        return Ok(());
    }
    let f = flags::HAS_LISTENER | flags::REASON_INFERRED;
    overflow(sk, skb, Action::ListenOverflow, acceptq, max, f, inferred::TCP_LISTEN_OVERFLOW)
}

/// Counts an overflow of listener `sk` by the packet `skb` (a SYN or a
/// final ACK).
#[inline(always)]
fn overflow(
    sk: *const u8,
    skb: *const u8,
    action: Action,
    queue_len: u32,
    backlog: u32,
    rec_flags: u8,
    reason: u32,
) -> Res<()> {
    let p = kread::skb_packet(skb, kread::skb_protocol(skb)?)?;
    let o = Overflow { action, queue_len, backlog, flags: rec_flags, reason };
    report(kread::sock_netns(sk)?, p.family, (p.daddr, p.dport), || Ok((p.saddr, p.sport)), o)
}

/// What an overflow record says besides its endpoints.
pub struct Overflow {
    pub action: Action,
    pub queue_len: u32,
    pub backlog: u32,
    pub flags: u8,
    pub reason: u32,
}

/// Counts an overflow of the listener at `dst` (address, port) and, when a
/// sample is due, sends it with the client `src` gives. During a flood this
/// runs for every SYN: the key first, the rest only for the samples (the
/// cgroup_skb fallback reads the client's address only then).
#[inline(always)]
pub fn report(
    netns: u32,
    family: u8,
    dst: ([u8; 16], u16),
    src: impl FnOnce() -> Res<([u8; 16], u16)>,
    o: Overflow,
) -> Res<()> {
    let key = CountKey { netns, port: dst.1, action: o.action as u8, family, addr: dst.0, class: 0, _pad: [0; 3] };
    if !emit::count(&key) {
        return Ok(());
    }
    let mut rec = FailureRecord::zeroed();
    rec.action = o.action as u8;
    rec.family = family;
    rec.flags = o.flags;
    rec.reason = o.reason;
    rec.backlog = o.backlog;
    rec.queue_len = o.queue_len;
    rec.state = TCP_LISTEN;
    rec.netns = netns;
    (rec.dst_addr, rec.dst_port) = dst;
    (rec.src_addr, rec.src_port) = src()?;
    emit::submit(rec);
    Ok(())
}
