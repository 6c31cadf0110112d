//! The one exit of every program: exact count, per-key sampling, ring buffer.
//!
//! A hook that has its key before it builds the record calls `count` and
//! builds the record only when a sample is due (`submit`); the others call
//! `record`. Counting first is what makes the daemon's reconciliation exact
//! (observer/src/counters.rs): a sample is always submitted after its
//! occurrence was counted.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use observer_common::{
    counter::{Counter, LossSlot},
    CountKey, FailureRecord,
};

use crate::maps::{config, BUDGET, COUNTERS, EVENTS, LOSS};

const WINDOW_NS: u64 = 1_000_000_000;

fn loss(slot: LossSlot, n: u64) {
    if let Some(p) = LOSS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU array slot of this CPU; no other writer runs
        // concurrently on the same CPU's slot within one program.
        unsafe { *p += n };
    }
}

/// Counts one occurrence under `key`; true when the per-key rate limit lets
/// a sample of it through (then `submit` it).
///
/// A sample stands for its own occurrence only (`count` = 1). Suppressed
/// occurrences are not carried by a later sample: the daemon reports them
/// from the exact counters. Carrying them here too would let a late sample
/// repeat counts the daemon already reported, and the daemon cannot take
/// them out of this map atomically.
#[inline(always)]
pub fn count(key: &CountKey) -> bool {
    // (bpf_ktime_get_coarse_ns would be cheaper, but tracing programs may
    // not call it: they can run in NMI context.)
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let limit = config!(samples_per_sec);
    match COUNTERS.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: per-CPU value of this CPU, valid while the program runs.
            let c = unsafe { &mut *p };
            c.count += 1;
            if now.wrapping_sub(c.window_start_ns) >= WINDOW_NS {
                c.window_start_ns = now;
                c.sent = 0;
            }
            if c.sent >= limit || !within_budget(now) {
                return false;
            }
            c.sent += 1;
            true
        }
        None => {
            let send = within_budget(now);
            let c = Counter { count: 1, window_start_ns: now, sent: send as u32, _pad: 0 };
            if COUNTERS.insert(key, c, 0).is_err() {
                loss(LossSlot::CounterMapFull, 1);
            }
            send
        }
    }
}

/// Takes one sample from this CPU's budget of all keys together; false
/// when this second's budget is spent. Asked only after the key's own limit
/// let the sample through, so that a quiet key never spends it.
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let total = config!(samples_total_per_sec);
    if total == 0 {
        return true;
    }
    let Some(p) = BUDGET.get_ptr_mut(0) else { return true };
    // SAFETY: per-CPU array slot of this CPU, valid while the program runs;
    // programs do not nest on one CPU for the same slot (recursion is skipped).
    let b = unsafe { &mut *p };
    if now.wrapping_sub(b.window_start_ns) >= WINDOW_NS {
        b.window_start_ns = now;
        b.sent = 0;
    }
    if b.sent >= total {
        return false;
    }
    b.sent += 1;
    true
}

/// Sends a sample whose occurrence `count` has counted.
#[inline(always)]
pub fn submit(mut rec: FailureRecord) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    rec.ts_ns = unsafe { bpf_ktime_get_ns() };
    rec.count = 1;
    match EVENTS.reserve::<FailureRecord>(0) {
        Some(mut entry) => {
            entry.write(rec);
            entry.submit(0);
        }
        None => loss(LossSlot::RingbufFull, 1),
    }
}

/// Records one failure. `key` is what the exact counter is kept by; the
/// record is sent only when the per-key sampler lets it through.
#[inline(always)]
pub fn record(key: &CountKey, rec: FailureRecord) {
    if count(key) {
        submit(rec);
    }
}

/// A kernel read failed and the occurrence could not be attributed.
pub fn read_failed() {
    loss(LossSlot::ReadFailed, 1);
}

/// The counter key for a record: its namespace, action and local endpoint.
/// `local_port`/`local_addr` must be the record's `dst_port`/`dst_addr`
/// (the server side, or the remote end of an outbound connect): the daemon
/// finds a sample's counter by them when it reconciles.
pub fn key_of(rec: &FailureRecord, local_port: u16, local_addr: [u8; 16]) -> CountKey {
    CountKey::new(rec, local_port, local_addr)
}
