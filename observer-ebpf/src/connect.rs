//! sock:inet_sock_set_state (raw tracepoint): outbound connects that fail.
//!
//! Why this hook: SYN_SENT -> CLOSE is where every failed connect ends
//! (RST: ECONNREFUSED, retries exhausted: ETIMEDOUT, ICMP: EHOSTUNREACH...),
//! with `sk_err` already set. That moment runs in softirq or timer context,
//! so the connecting process is remembered at CLOSE -> SYN_SENT, which runs
//! in connect() itself, and kept until the socket closes: the reset hooks
//! name the process of this host's own connections from it.
//!
//! Why a raw tracepoint: the hook fires for every state change of every
//! TCP socket, several per healthy connection. A classic tracepoint first
//! copies the tuple into a perf record for each of them; the raw one hands
//! over the socket and the two states, so a change that is none of ours
//! (most of them) costs two compares.
//!
//! A socket the application closes in SYN_SENT with `sk_err` 0 failed too
//! when the kernel kept a soft ICMP error for it (see `kread::soft_error`):
//! a non-blocking connect() on IPv4 loopback returns EINPROGRESS, the ICMP
//! arrives while connect() still holds the socket, and the application
//! learns EHOSTUNREACH from SO_ERROR, then closes. With neither error the
//! socket was closed before an answer (not a failure), or connect() itself
//! closed it (no local port): then `sysconnect` reports connect()'s errno.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use observer_common::{record::flags, Action, FailureRecord};

use crate::{
    emit,
    kread::{self, Res},
    maps::config,
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; 16],
}

/// One slot of `OWNERS`: the socket it holds (0: none), and its owner.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OwnerSlot {
    pub sk: u64,
    pub owner: Owner,
    pub _pad: u32,
}

/// Slots of `OWNERS`: a power of two.
const OWNER_SLOTS: u32 = 1 << 16;

/// Sockets this host opened actively -> the process that called connect(),
/// from SYN_SENT until the socket closes. Lets the reset hooks tell which
/// side initiated a connection exactly; sockets opened before the daemon
/// started default to inbound.
///
/// Why a direct-mapped array and not a hash map: it is written for every
/// outbound connection and looked at whenever any socket closes, the
/// healthy path. An array slot is an inlined load and a store, where a
/// hash map update takes a bucket lock and an LRU list. The price is that
/// two connecting sockets whose addresses map to one slot share it: the
/// newer one keeps it, and if the older one then fails, its record names
/// no process (the failure is still counted). With 65,536 slots that takes
/// tens of thousands of connects in flight at once.
#[map]
static OWNERS: Array<OwnerSlot> = Array::with_max_entries(OWNER_SLOTS, 0);

/// The slot of socket `sk`: a multiplicative hash of its address (slab
/// objects share their low bits, so the address itself would collide).
#[inline(always)]
fn slot(sk: u64) -> u32 {
    (sk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32 & (OWNER_SLOTS - 1)
}

/// The process that opened `sk` actively, if this host initiated it.
#[inline(always)]
pub fn active_owner(sk: *const u8) -> Option<Owner> {
    let s = OWNERS.get(slot(sk as u64))?;
    (s.sk == sk as u64).then_some(s.owner)
}

/// Forgets the owner of `sk` if its slot still holds it.
#[inline(always)]
fn forget(sk: u64) {
    if let Some(p) = OWNERS.get_ptr_mut(slot(sk)) {
        // SAFETY: a valid array slot while the program runs; a racing
        // writer on another CPU at worst leaves a slot that names another
        // socket, which no lookup for this one matches.
        unsafe {
            if (*p).sk == sk {
                (*p).sk = 0;
            }
        }
    }
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if try_inet_sock_set_state(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Res<()> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let syn_sent = config!(values.tcp_syn_sent) as i32;
    let close = config!(values.tcp_close) as i32;
    // The cheapest test first: most changes of a healthy connection
    // (ESTABLISHED -> FIN_WAIT1, ...) neither start nor end a connect nor
    // close a socket.
    if new != syn_sent && old != syn_sent && new != close {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let protocol: u16 = kread::at(sk, config!(structs.sk_protocol))?;
    if protocol != kread::IPPROTO_TCP as u16 {
        return Ok(());
    }
    let skaddr = sk as u64;
    if new == syn_sent {
        if let Some(p) = OWNERS.get_ptr_mut(slot(skaddr)) {
            let current = bpf_get_current_pid_tgid();
            let comm = bpf_get_current_comm().unwrap_or([0; 16]);
            // SAFETY: a valid array slot while the program runs.
            unsafe { *p = OwnerSlot { sk: skaddr, owner: Owner { pid: (current >> 32) as u32, comm }, _pad: 0 } };
        }
        return Ok(());
    }
    if old != syn_sent {
        // An open connection closes: forget its owner (nothing to do for
        // the sockets this host accepted).
        forget(skaddr);
        return Ok(());
    }
    if new != close {
        // SYN_SENT -> ESTABLISHED: success; the owner stays for the reset hooks.
        return Ok(());
    }
    let owner = active_owner(sk);
    forget(skaddr);
    let hard: i32 = kread::at(sk, config!(structs.sk_err))?;
    let err = if hard > 0 {
        hard as u32
    } else {
        match kread::soft_error(sk) {
            // Closed by the application before an answer (not a failure),
            // or by connect() itself, which `sysconnect` reports.
            0 => return Ok(()),
            soft => soft,
        }
    };
    let t = kread::sock_tuple(sk)?;
    let mut rec = FailureRecord::zeroed();
    rec.action = Action::ConnectFailed as u8;
    rec.family = t.family;
    rec.netns = kread::sock_netns(sk)?;
    rec.reason = err;
    rec.state = old as u8;
    rec.flags = flags::OUTBOUND;
    rec.src_addr = t.saddr;
    rec.src_port = t.sport;
    rec.dst_addr = t.daddr;
    rec.dst_port = t.dport;
    if let Some(o) = owner {
        rec.pid = o.pid;
        rec.comm = o.comm;
        rec.flags |= flags::HAS_PROCESS;
    }
    // Outbound: the key is the remote endpoint that failed.
    let key = emit::key_of(&rec, t.dport, t.daddr);
    emit::record(&key, rec);
    Ok(())
}
