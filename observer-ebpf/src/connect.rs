//! sock:inet_sock_set_state: outbound connects that fail.
//!
//! Why this hook: SYN_SENT -> CLOSE is where every failed connect ends
//! (RST: ECONNREFUSED, retries exhausted: ETIMEDOUT, ICMP: EHOSTUNREACH...),
//! with `sk_err` already set. That moment runs in softirq or timer context,
//! so the connecting process is remembered at CLOSE -> SYN_SENT, which runs
//! in connect() itself.
//!
//! A socket the application closes in SYN_SENT with `sk_err` 0 failed too
//! when the kernel kept a soft ICMP error for it (see `kread::soft_error`):
//! a non-blocking connect() on IPv4 loopback returns EINPROGRESS, the ICMP
//! arrives while connect() still holds the socket, and the application
//! learns EHOSTUNREACH from SO_ERROR, then closes. How this path and
//! `sysconnect` report each failed connect() once is described there.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use observer_common::{record::flags, Action, FailureRecord};

use crate::{
    emit,
    kread::{self, field, Res},
    maps::config,
    sysconnect,
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pub pid: u32,
    /// The thread that called connect(): its pid_tgid is `pid << 32 | tid`.
    pub tid: u32,
    pub comm: [u8; 16],
}

/// Connecting sockets (by address) -> the process that called connect().
#[map]
static CONNECTING: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Established sockets this host opened (active open) -> their process.
/// Lets the reset hooks tell which side initiated a connection exactly;
/// sockets opened before the daemon started default to inbound.
#[map]
static ACTIVE: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// The process that opened `sk` actively, if this host initiated it.
#[inline(always)]
pub fn active_owner(sk: *const u8) -> Option<Owner> {
    // SAFETY: the value is copied out at once.
    unsafe { ACTIVE.get(sk as u64) }.copied()
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if try_inet_sock_set_state(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Res<()> {
    let protocol: u16 = field(ctx, config!(set_state.protocol))?;
    if protocol != kread::IPPROTO_TCP as u16 {
        return Ok(());
    }
    let old: i32 = field(ctx, config!(set_state.oldstate))?;
    let new: i32 = field(ctx, config!(set_state.newstate))?;
    let syn_sent = config!(values.tcp_syn_sent) as i32;
    let closing = new == config!(values.tcp_close) as i32;
    let skaddr: u64 = field(ctx, config!(set_state.tuple.skaddr))?;
    let current = bpf_get_current_pid_tgid();
    if new == syn_sent {
        let owner =
            Owner { pid: (current >> 32) as u32, tid: current as u32, comm: bpf_get_current_comm().unwrap_or([0; 16]) };
        let _ = CONNECTING.insert(skaddr, owner, 0);
        return Ok(());
    }
    if closing {
        let _ = ACTIVE.remove(skaddr);
    }
    if old != syn_sent {
        return Ok(());
    }
    let l = config!(set_state.tuple);
    let t = kread::tuple(ctx, &l)?;
    // SAFETY: the value is copied out at once; the LRU map may evict it later.
    let owner = unsafe { CONNECTING.get(skaddr) }.copied();
    let _ = CONNECTING.remove(skaddr);
    if !closing {
        // SYN_SENT -> ESTABLISHED: success; remember who initiated.
        if let Some(o) = owner {
            let _ = ACTIVE.insert(skaddr, o, 0);
        }
        return Ok(());
    }
    let hard: i32 = kread::at(t.skaddr, config!(structs.sk_err))?;
    let err = if hard > 0 {
        hard as u32
    } else if sysconnect::in_connect(current, t.skaddr) {
        // connect() closed the socket itself (no local port...): its
        // return value is the errno, and sys_exit_connect reports it.
        return Ok(());
    } else {
        match kread::soft_error(t.skaddr) {
            0 => return Ok(()), // closed by the application before an answer: not a failure.
            soft => soft,
        }
    };
    // The thread that may still be inside connect() on this socket.
    let caller = owner.map_or(current, |o| ((o.pid as u64) << 32) | o.tid as u64);
    sysconnect::mark_handled(caller, t.skaddr);
    let mut rec = FailureRecord::zeroed();
    rec.action = Action::ConnectFailed as u8;
    rec.family = t.family;
    rec.netns = kread::sock_netns(t.skaddr)?;
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
