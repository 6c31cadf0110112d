//! Kernel programs of the connection-failure observer.
//!
//! Every program follows the same path: read what the hook gives, decide the
//! action, then `emit::record` counts it exactly and maybe samples it. The
//! programs never fail the hook: errors are counted and the hook returns.
#![no_std]
#![no_main]

mod connect;
mod drop;
mod emit;
mod kread;
mod listener;
mod listener_skb;
mod maps;
mod reject;
mod reset;
mod synack;
mod sysconnect;

// Only the BPF target needs it; a host build (clippy, tests) links std's.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never executed; it only satisfies no_std's requirement.
    unsafe { core::hint::unreachable_unchecked() }
}

// SAFETY: a unique symbol in the section the kernel reads the license from.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
