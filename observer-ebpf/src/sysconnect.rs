//! fexit tcp_v4_connect / tcp_v6_connect / tcp_v{4,6}_pre_connect: TCP
//! connect() calls that fail inside the call.
//!
//! Why these hooks: some failures never end SYN_SENT -> CLOSE with `sk_err`
//! set, so `connect` (inet_sock_set_state) cannot name them. No route
//! (ENETUNREACH) fails in the route lookup before the socket leaves CLOSE;
//! no free local port (EADDRNOTAVAIL) closes it again with `sk_err` 0; a
//! cgroup connect program's refusal (EPERM) fails in pre_connect. The
//! function's return value is their only record.
//!
//! Why fexit on TCP's own functions, not the connect() syscall: the
//! syscall tracepoints put every syscall of every process on the slow
//! path while they are attached, and fire for UDP and unix sockets too.
//! These run only for TCP connects, with the socket and the kernel's copy
//! of the address as arguments, and the cheapest test first: a call that
//! succeeded leaves at once.
//!
//! Exactly one event per failed connect(): these functions fail before the
//! SYN is sent, so `connect` never reports the same call (a handshake's
//! failure arrives after they returned 0). tcp_v6_connect hands a
//! v4-mapped address to tcp_v4_connect and returns its result, so the
//! IPv4 hook leaves IPv6 sockets to the IPv6 one.
//!
//! Not seen: a refusal by an LSM (SELinux's name_connect), which fails in
//! security_socket_connect before TCP is reached.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::fexit,
    programs::FExitContext,
};
use observer_common::{
    record::{flags, AF_INET, AF_INET6},
    Action, FailureRecord,
};

use crate::{
    emit,
    kread::{self, Res},
};

// (struct sock *sk, struct sockaddr *uaddr, int addr_len) -> int, for all four.
const ARG_SK: usize = 0;
const ARG_UADDR: usize = 1;
const ARG_ADDR_LEN: usize = 2;
const RET: usize = 3;

#[fexit(function = "tcp_v4_connect")]
pub fn tcp_v4_connect(ctx: FExitContext) -> i32 {
    returned(&ctx, AF_INET)
}

#[fexit(function = "tcp_v6_connect")]
pub fn tcp_v6_connect(ctx: FExitContext) -> i32 {
    returned(&ctx, AF_INET6)
}

#[fexit(function = "tcp_v4_pre_connect")]
pub fn tcp_v4_pre_connect(ctx: FExitContext) -> i32 {
    returned(&ctx, AF_INET)
}

#[fexit(function = "tcp_v6_pre_connect")]
pub fn tcp_v6_pre_connect(ctx: FExitContext) -> i32 {
    returned(&ctx, AF_INET6)
}

#[inline(always)]
fn returned(ctx: &FExitContext, family: u8) -> i32 {
    let ret: i32 = ctx.arg(RET);
    if ret >= 0 {
        return 0;
    }
    if try_failed(ctx, family, ret.unsigned_abs()).is_err() {
        emit::read_failed();
    }
    0
}

// Linux errno values (ABI).
const EINTR: u32 = 4;
const EAGAIN: u32 = 11;
const EFAULT: u32 = 14;
const EINVAL: u32 = 22;
const EAFNOSUPPORT: u32 = 97;
const EISCONN: u32 = 106;
const EALREADY: u32 = 114;
const EINPROGRESS: u32 = 115;
/// ERESTARTSYS and the other restart codes start here: kernel-internal.
const KERNEL_INTERNAL: u32 = 512;

/// Whether `-err` means the connection attempt failed. Not failures: a
/// connect still in progress or already done, an interrupted or retried
/// call, and calls that never attempted a connection because the caller
/// passed a bad address or family.
#[inline(always)]
fn is_connect_failure(err: u32) -> bool {
    !matches!(err, EINPROGRESS | EALREADY | EISCONN | EINTR | EAGAIN | EFAULT | EINVAL | EAFNOSUPPORT)
        && err < KERNEL_INTERNAL
}

fn try_failed(ctx: &FExitContext, hook_family: u8, err: u32) -> Res<()> {
    if !is_connect_failure(err) {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(ARG_SK);
    let sk_family = kread::at::<u16>(sk, crate::maps::config!(structs.sk_family))? as u8;
    if hook_family == AF_INET && sk_family == AF_INET6 {
        return Ok(()); // v4-mapped: tcp_v6_connect's hook reports it.
    }
    let len: i32 = ctx.arg(ARG_ADDR_LEN);
    let Some((family, dst_addr, dst_port)) = sockaddr(ctx.arg(ARG_UADDR), len)? else {
        return Ok(()); // AF_UNSPEC (disconnect) or a family TCP does not connect to.
    };
    let id = bpf_get_current_pid_tgid();
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
    (rec.src_addr, rec.src_port) = kread::sock_local(sk, sk_family).unwrap_or(([0; 16], 0));
    rec.dst_addr = dst_addr;
    rec.dst_port = dst_port;
    // Outbound: the key is the remote endpoint that failed, as in `connect`.
    let key = emit::key_of(&rec, dst_port, dst_addr);
    emit::record(&key, rec);
    Ok(())
}

/// Family, address and port of the kernel's copy of connect()'s `struct
/// sockaddr`, or None for another family or a too short `addr_len`.
#[inline(always)]
fn sockaddr(p: *const u8, len: i32) -> Res<Option<(u8, [u8; 16], u16)>> {
    // SAFETY: bpf_probe_read_kernel validates the address and fails
    // instead of faulting; `p` is the function's sockaddr argument.
    let family: u16 = unsafe { bpf_probe_read_kernel(p.cast::<u16>()) }?;
    let mut addr = [0u8; 16];
    // sockaddr_in: family, big-endian port, 4-byte address (16 bytes in all).
    if family == AF_INET as u16 && len >= 16 {
        // SAFETY: as above; 8 bytes lie within the 16 the caller passed.
        let b: [u8; 8] = unsafe { bpf_probe_read_kernel(p.cast::<[u8; 8]>()) }?;
        addr[..4].copy_from_slice(&b[4..8]);
        return Ok(Some((AF_INET, addr, u16::from_be_bytes([b[2], b[3]]))));
    }
    // sockaddr_in6: family, port, flowinfo, 16-byte address (24 of 28 bytes).
    if family == AF_INET6 as u16 && len >= 24 {
        // SAFETY: as above; 24 bytes lie within the addr_len the caller passed.
        let b: [u8; 24] = unsafe { bpf_probe_read_kernel(p.cast::<[u8; 24]>()) }?;
        addr.copy_from_slice(&b[8..24]);
        return Ok(Some((AF_INET6, addr, u16::from_be_bytes([b[2], b[3]]))));
    }
    Ok(None)
}
