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
    maps::LruHashMap,
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

/// Sockets this host opened actively (by address) -> the process that
/// called connect(), from SYN_SENT until the socket closes. Lets the reset
/// hooks tell which side initiated a connection exactly; sockets opened
/// before the daemon started default to inbound.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// The process that opened `sk` actively, if this host initiated it.
#[inline(always)]
pub fn active_owner(sk: *const u8) -> Option<Owner> {
    // SAFETY: the value is copied out at once.
    unsafe { OWNERS.get(sk as u64) }.copied()
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
        let current = bpf_get_current_pid_tgid();
        let owner = Owner { pid: (current >> 32) as u32, comm: bpf_get_current_comm().unwrap_or([0; 16]) };
        let _ = OWNERS.insert(skaddr, owner, 0);
        return Ok(());
    }
    if old != syn_sent {
        // An open connection closes: forget its owner (a miss for the
        // sockets this host accepted).
        let _ = OWNERS.remove(skaddr);
        return Ok(());
    }
    if new != close {
        // SYN_SENT -> ESTABLISHED: success; the owner stays for the reset hooks.
        return Ok(());
    }
    // SAFETY: the value is copied out at once; the LRU map may evict it later.
    let owner = unsafe { OWNERS.get(skaddr) }.copied();
    let _ = OWNERS.remove(skaddr);
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
