//! cgroup_skb ingress on the cgroup v2 root, where the kernel cannot run
//! the fentry programs of `listener` (no BPF trampolines: arm64 before
//! 6.0, kernels built without DYNAMIC_FTRACE_WITH_DIRECT_CALLS): SYNs that
//! reach a listener
//! whose accept queue or SYN queue is already full, and (on kernels whose
//! kfree_skb names no TCP_LISTEN_OVERFLOW) final ACKs that reach a listener
//! whose accept queue is full.
//!
//! Why this hook: at the SYN stage the kernel frees an overflowing SYN with
//! consume_skb, so kfree_skb never sees it, and no tracepoint fires. A
//! cgroup_skb ingress program runs for every packet delivered to a socket,
//! listeners included, right before tcp_conn_request checks the queues, so
//! it sees the same queue lengths the kernel is about to compare: the
//! packets counted here as `ack_backlog > max_ack_backlog` matched the
//! kernel's ListenOverflows exactly in our measurements. It must always
//! return 1 (pass): it observes, never filters. The price: it runs for
//! every packet delivered to any socket, which `listener` avoids.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_skc_to_tcp_sock},
    macros::{cgroup_skb, map},
    maps::Array,
    programs::SkBuffContext,
};
use observer_common::{
    record::{flags, inferred, AF_INET, AF_INET6},
    Action,
};

use crate::{
    emit,
    kread::{self, Res},
    listener::{report, Overflow},
};

/// Which overflows this program counts, written by the daemon before it
/// attaches the program: [0] SYN-stage overflows (tcp_conn_request's
/// fentry could not run), [1] final-ACK overflows (kfree_skb has no
/// TCP_LISTEN_OVERFLOW reason and tcp_v4/v6_syn_recv_sock's fentry could
/// not run). Nonzero: count them.
#[map]
pub static LISTENER_ROLES: Array<u32> = Array::with_max_entries(2, 0);

#[inline(always)]
fn role(i: u32) -> bool {
    LISTENER_ROLES.get(i).is_some_and(|v| *v != 0)
}

/// `BPF_TCP_LISTEN`: bpf_sock's state uses the UAPI enum, stable ABI.
const BPF_TCP_LISTEN: u32 = 10;

#[cgroup_skb(ingress)]
pub fn listener_ingress(ctx: SkBuffContext) -> i32 {
    if try_listener_ingress(&ctx).is_err() {
        emit::read_failed();
    }
    1
}

/// Reads `T` at `off` of the packet (from the IP header on): straight from
/// the linear data when it is there (no helper call: this runs for every
/// SYN of a flood), else through bpf_skb_load_bytes.
#[inline(always)]
fn pkt<T: Copy>(ctx: &SkBuffContext, off: usize) -> Res<T> {
    let skb = ctx.skb.skb;
    // SAFETY: ctx.skb is the program's context pointer; the verifier turns
    // these field reads into the packet's data and data_end pointers.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: the bounds check above keeps the read inside the packet's
        // linear data, as the verifier requires for direct packet access.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load(off).map_err(|_| -1)
}

/// The IPv4 (`alen` 4) or IPv6 address at `off` of the packet, in the
/// records' 16-byte form.
#[inline(always)]
fn addr(ctx: &SkBuffContext, off: usize, alen: usize) -> Res<[u8; 16]> {
    if alen == 16 {
        return pkt(ctx, off);
    }
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&pkt::<[u8; 4]>(ctx, off)?);
    Ok(a)
}

fn try_listener_ingress(ctx: &SkBuffContext) -> Res<()> {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: ctx.skb is the program's context pointer, valid for the run.
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // The cheapest test first (this runs for every packet delivered to a
    // socket): `state` is readable on any socket the context hands over,
    // full or not, without a helper call.
    // SAFETY: non-null socket pointer from the context; the verifier
    // allows reading bpf_sock's common fields from it.
    if unsafe { (*sk).state } != BPF_TCP_LISTEN {
        return Ok(());
    }
    // SAFETY: the helper accepts any socket pointer from the context and
    // returns null when it is not a full socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return Ok(());
    }
    // SAFETY: non-null result of bpf_sk_fullsock, readable by the verifier's rules.
    let (state, protocol, family) = unsafe { ((*full).state, (*full).protocol, (*full).family) };
    if state != BPF_TCP_LISTEN || protocol != kread::IPPROTO_TCP as u32 {
        return Ok(());
    }
    // Packet data starts at the IP header in cgroup_skb programs.
    let (ip_len, saddr_off, daddr_off, alen) = if family == AF_INET as u32 {
        // Two bytes, not one: a one-byte bounds check compiles to a form
        // the verifier takes as no range at all.
        let vihl = pkt::<[u8; 2]>(ctx, 0)?[0];
        (((vihl & 0x0f) as usize) * 4, 12usize, 16usize, 4usize)
    } else if family == AF_INET6 as u32 {
        let next = pkt::<[u8; 2]>(ctx, 6)?[0];
        if next != kread::IPPROTO_TCP {
            return Ok(());
        }
        (40, 8, 24, 16)
    } else {
        return Ok(());
    };
    let tcp_flags = pkt::<[u8; 2]>(ctx, ip_len + 12)?[1];
    let syn = tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK) == kread::TCP_FLAG_SYN && role(0);
    // A segment with ACK and without SYN or RST that reaches a listener is
    // the final ACK of a handshake (of a request sock, or a SYN cookie's):
    // the kernel's syn_recv_sock is about to make the connection and checks
    // the accept queue with the same ">". Watched here only on kernels
    // whose kfree_skb has no TCP_LISTEN_OVERFLOW reason, where the fentry
    // program cannot run.
    let final_ack =
        tcp_flags & (kread::TCP_FLAG_SYN | kread::TCP_FLAG_ACK | kread::TCP_FLAG_RST) == kread::TCP_FLAG_ACK && role(1);
    if !syn && !final_ack {
        return Ok(());
    }
    // SAFETY: the helper takes a socket pointer and returns null when the
    // socket is not a TCP socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(full.cast()) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    let (acceptq, max) = kread::listener_queue(tp)?;
    // The kernel's own conditions: sk_acceptq_is_full() and
    // inet_csk_reqsk_queue_is_full() compare with ">".
    let (action, queue_len) = if acceptq > max {
        (Action::ListenOverflow, acceptq)
    } else if final_ack {
        return Ok(());
    } else {
        let synq = kread::listener_syn_queue(tp)?;
        if synq <= max {
            return Ok(());
        }
        (Action::SynQueueOverflow, synq)
    };
    let dst_addr = addr(ctx, daddr_off, alen)?;
    let ports: [u8; 4] = pkt(ctx, ip_len)?;
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    let mut rec_flags = flags::HAS_LISTENER;
    let mut reason = 0;
    if final_ack {
        rec_flags |= flags::REASON_INFERRED;
        reason = inferred::TCP_LISTEN_OVERFLOW;
    } else if action == Action::ListenOverflow {
        rec_flags |= flags::SYN_STAGE;
    }
    let src = || Ok((addr(ctx, saddr_off, alen)?, u16::from_be_bytes([ports[0], ports[1]])));
    let o = Overflow { action, queue_len, backlog: max, flags: rec_flags, reason };
    report(kread::sock_netns(tp)?, family as u8, (dst_addr, dst_port), src, o)
}
