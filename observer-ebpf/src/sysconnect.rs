//! syscalls:sys_enter_connect / sys_exit_connect: TCP connect() calls that
//! fail inside the syscall.
//!
//! Why this hook: some failures never end SYN_SENT -> CLOSE with `sk_err`
//! set, so `inet_sock_set_state` cannot name them. No route (ENETUNREACH,
//! IPv4 and IPv6) fails in the route lookup before the socket leaves CLOSE;
//! no free local port (EADDRNOTAVAIL) or a cgroup/LSM refusal (EPERM,
//! EACCES) closes it again with `sk_err` 0. connect()'s return value is
//! their only record, and sys_exit is where it is visible.
//!
//! Only TCP: the socket is found at sys_enter through the fd (task ->
//! files -> fdtable -> file -> socket, BTF offsets) and kept only when it is
//! SOCK_STREAM with protocol IPPROTO_TCP. A marker left by set_state would
//! not do: the no-route failure happens before any state change, so a UDP
//! and a TCP ENETUNREACH would look the same. Reading the socket also gives
//! the namespace and the local address, and excludes MPTCP (whose TCP
//! subflows set_state reports under another socket).
//!
//! Exactly one event per failed connect(), whichever program sees it:
//! - set_state emits whenever it has an errno (`sk_err`, or the soft ICMP
//!   error of a socket the application closes). If the connecting thread is
//!   then still inside connect() on that socket, set_state marks the call
//!   `handled` and sys_exit emits nothing (a blocking connect() whose RST or
//!   ICMP ended the handshake returns the same errno set_state reported).
//! - set_state with no errno inside connect() emits nothing: connect()
//!   closed the socket itself, its return value is the errno, and sys_exit
//!   reports it.
//! - EINPROGRESS and friends are not failures: a non-blocking connect's
//!   outcome arrives later through set_state.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use observer_common::{
    record::{flags, AF_INET, AF_INET6},
    Action, FailureRecord,
};

use crate::{
    emit,
    kread::{self, field, Res},
    maps::config,
};

/// One connect() in progress on a TCP socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Call {
    sk: u64,
    uservaddr: u64,
    addrlen: u64,
    /// set_state already reported this call's failure.
    handled: u64,
}

/// Threads inside connect() on a TCP socket, by pid_tgid. LRU: an exit the
/// program never sees (attached mid-call) must not leak an entry.
#[map]
static CALLS: LruHashMap<u64, Call> = LruHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if try_enter(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_enter(ctx: &TracePointContext) -> Res<()> {
    let fd: u64 = field(ctx, config!(sys_connect.fd))?;
    let Some(sk) = kread::tcp_sock_of_fd(fd) else {
        return Ok(()); // UDP, unix, not a socket: not ours.
    };
    let call = Call {
        sk: sk as u64,
        uservaddr: field(ctx, config!(sys_connect.uservaddr))?,
        addrlen: field(ctx, config!(sys_connect.addrlen))?,
        handled: 0,
    };
    let _ = CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
    Ok(())
}

/// Whether thread `pid_tgid` is inside connect() on socket `sk`.
#[inline(always)]
pub fn in_connect(pid_tgid: u64, sk: *const u8) -> bool {
    // SAFETY: the value is copied out at once.
    unsafe { CALLS.get(pid_tgid) }.is_some_and(|c| c.sk == sk as u64)
}

/// set_state reported the failure of `sk`: if thread `pid_tgid` is still
/// inside connect() on it, sys_exit must not report it again.
#[inline(always)]
pub fn mark_handled(pid_tgid: u64, sk: *const u8) {
    if let Some(c) = CALLS.get_ptr_mut(pid_tgid) {
        // SAFETY: a valid map value while the program runs; a plain store
        // of one field, read by sys_exit after connect() returned.
        unsafe {
            if (*c).sk == sk as u64 {
                (*c).handled = 1;
            }
        }
    }
}

// Linux errno values (ABI).
const EINTR: u32 = 4;
const EBADF: u32 = 9;
const EAGAIN: u32 = 11;
const EFAULT: u32 = 14;
const EINVAL: u32 = 22;
const ENOTSOCK: u32 = 88;
const EPROTOTYPE: u32 = 91;
const EAFNOSUPPORT: u32 = 97;
const EISCONN: u32 = 106;
const EALREADY: u32 = 114;
const EINPROGRESS: u32 = 115;
/// ERESTARTSYS and the other restart codes start here: kernel-internal,
/// the tracepoint sees them before signal handling turns them into EINTR.
const KERNEL_INTERNAL: u32 = 512;

/// Whether connect() returning `-err` means the connection attempt failed.
/// Not failures: a connect still in progress or already done (EINPROGRESS,
/// EALREADY, EISCONN), an interrupted or retried call (EINTR, EAGAIN, the
/// restart codes), and calls that never attempted a connection because the
/// caller passed a bad fd, address or family.
#[inline(always)]
fn is_connect_failure(err: u32) -> bool {
    !matches!(
        err,
        EINPROGRESS
            | EALREADY
            | EISCONN
            | EINTR
            | EAGAIN
            | EBADF
            | ENOTSOCK
            | EFAULT
            | EINVAL
            | EPROTOTYPE
            | EAFNOSUPPORT
    ) && err < KERNEL_INTERNAL
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    if try_exit(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_exit(ctx: &TracePointContext) -> Res<()> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { CALLS.get(id) }).copied() else {
        return Ok(());
    };
    let _ = CALLS.remove(id);
    let ret: i64 = field(ctx, config!(sys_connect.ret))?;
    if ret >= 0 || call.handled != 0 {
        return Ok(());
    }
    let err = ret.unsigned_abs().min(u32::MAX as u64) as u32;
    if !is_connect_failure(err) {
        return Ok(());
    }
    // The sockaddr is read now, not at sys_enter: connect() has copied it,
    // so the page is resident and the user read cannot fault.
    let Some((family, dst_addr, dst_port)) = user_sockaddr(call.uservaddr, call.addrlen)? else {
        return Ok(()); // AF_UNSPEC (disconnect) or a family TCP does not connect to.
    };
    let sk = call.sk as *const u8;
    let mut rec = FailureRecord::zeroed();
    rec.action = Action::ConnectFailed as u8;
    rec.family = family;
    rec.netns = kread::sock_netns(sk)?;
    rec.reason = err;
    rec.state = kread::sock_state(sk).unwrap_or(0);
    rec.flags = flags::OUTBOUND | flags::HAS_PROCESS;
    rec.pid = (id >> 32) as u32;
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // Whatever the socket is bound to; zero when it never got an address.
    (rec.src_addr, rec.src_port) = kread::sock_local(sk, family).unwrap_or(([0; 16], 0));
    rec.dst_addr = dst_addr;
    rec.dst_port = dst_port;
    // Outbound: the key is the remote endpoint that failed, as in set_state.
    let key = emit::key_of(&rec, dst_port, dst_addr);
    emit::record(&key, rec);
    Ok(())
}

/// Family, address and port of connect()'s `struct sockaddr` argument, or
/// None for a family other than IPv4/IPv6 or a too short `addrlen`.
#[inline(always)]
fn user_sockaddr(ptr: u64, len: u64) -> Res<Option<(u8, [u8; 16], u16)>> {
    let p = ptr as *const u8;
    // SAFETY: bpf_probe_read_user validates the user address and fails
    // instead of faulting.
    let family: u16 = unsafe { bpf_probe_read_user(p.cast::<u16>()) }?;
    let mut addr = [0u8; 16];
    // sockaddr_in: family, big-endian port, 4-byte address (16 bytes in all).
    if family == AF_INET as u16 && len >= 16 {
        // SAFETY: as above; 8 bytes lie within the 16 the caller passed.
        let b: [u8; 8] = unsafe { bpf_probe_read_user(p.cast::<[u8; 8]>()) }?;
        addr[..4].copy_from_slice(&b[4..8]);
        return Ok(Some((AF_INET, addr, u16::from_be_bytes([b[2], b[3]]))));
    }
    // sockaddr_in6: family, port, flowinfo, 16-byte address (24 of 28 bytes).
    if family == AF_INET6 as u16 && len >= 24 {
        // SAFETY: as above; 24 bytes lie within the addrlen the caller passed.
        let b: [u8; 24] = unsafe { bpf_probe_read_user(p.cast::<[u8; 24]>()) }?;
        addr.copy_from_slice(&b[8..24]);
        return Ok(Some((AF_INET6, addr, u16::from_be_bytes([b[2], b[3]]))));
    }
    Ok(None)
}
