//! Reads from kernel memory at offsets that came from the running kernel.
//!
//! All offsets are `CONFIG` values (BTF or tracefs); `UNSET` means the
//! running kernel did not provide them, and the read fails instead of
//! reading from a guessed place.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use observer_common::config::UNSET;

use crate::maps::config;

pub type Res<T> = Result<T, i32>;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn at<T>(base: *const u8, off: u16) -> Res<T> {
    if off == UNSET || base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails with an
    // error instead of faulting; `base` is a kernel pointer from the hook.
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

/// Reads a tracepoint field at a format-file offset.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, off: u16) -> Res<T> {
    if off == UNSET {
        return Err(-1);
    }
    // SAFETY: the offset comes from this tracepoint's format file, and
    // read_at goes through bpf_probe_read_kernel (no direct dereference).
    unsafe { ctx.read_at::<T>(off as usize) }
}

/// Network namespace inode of a `struct net *`.
#[inline(always)]
fn net_inum(net: *const u8) -> Res<u32> {
    at::<u32>(net, config!(structs.net_ns_inum))
}

/// Network namespace of a socket (`sk->__sk_common.skc_net`).
#[inline(always)]
pub fn sock_netns(sk: *const u8) -> Res<u32> {
    let net: *const u8 = at(sk, config!(structs.sk_net))?;
    net_inum(net)
}

/// Network namespace of a packet without a socket, through its device.
#[inline(always)]
pub fn skb_netns(skb: *const u8) -> Res<u32> {
    let dev: *const u8 = at(skb, config!(structs.skb_dev))?;
    let net: *const u8 = at(dev, config!(structs.dev_nd_net))?;
    net_inum(net)
}

/// The TCP header flags byte of a received packet (`th->flags`, byte 13).
#[inline(always)]
pub fn skb_tcp_flags(skb: *const u8) -> Res<u8> {
    let head: *const u8 = at(skb, config!(structs.skb_head))?;
    let th: u16 = at(skb, config!(structs.skb_transport_header))?;
    if th == u16::MAX {
        return Err(-1);
    }
    at::<u8>(head, th.wrapping_add(13))
}

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;
