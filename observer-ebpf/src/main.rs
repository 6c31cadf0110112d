//! Kernel programs of the connection-failure observer.
//!
//! Every program follows the same path: read what the hook gives, decide the
//! action, then `emit::record` counts it exactly and maybe samples it. The
//! programs never fail the hook: errors are counted and the hook returns.
#![no_std]
#![no_main]

mod emit;
mod kread;
mod maps;
mod connect;
mod drop;
mod listener;
mod reject;
mod reset;
mod synack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never executed; it only satisfies no_std's requirement.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
