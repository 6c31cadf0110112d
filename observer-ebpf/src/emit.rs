//! The one exit of every program: exact count, per-key sampling, ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use observer_common::{
    counter::{LossSlot, SamplerState},
    CountKey, FailureRecord,
};

use crate::maps::{config, COUNTERS, EVENTS, LOSS, SAMPLER};

const WINDOW_NS: u64 = 1_000_000_000;

fn loss(slot: LossSlot, n: u64) {
    if let Some(p) = LOSS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU array slot of this CPU; no other writer runs
        // concurrently on the same CPU's slot within one program.
        unsafe { *p += n };
    }
}

/// Counts one occurrence under `key`; true when the per-key rate limit
/// lets a sample of it through.
///
/// A sample stands for its own occurrence only (`count` = 1). Suppressed
/// occurrences are not carried by a later sample: the daemon reports them
/// from the exact counters (observer/src/counters.rs). Carrying them here
/// too would let a late sample repeat counts the daemon already reported,
/// and the daemon cannot take them out of this map atomically.
fn count_and_sample(key: &CountKey, now: u64) -> bool {
    match COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU, valid while the program runs.
        Some(p) => unsafe { *p += 1 },
        None => {
            if COUNTERS.insert(key, 1u64, 0).is_err() {
                loss(LossSlot::CounterMapFull, 1);
            }
        }
    }
    let limit = config!(samples_per_sec);
    match SAMPLER.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: per-CPU value of this CPU, valid while the program runs.
            let s = unsafe { &mut *p };
            if now.wrapping_sub(s.window_start_ns) >= WINDOW_NS {
                s.window_start_ns = now;
                s.sent = 0;
            }
            if s.sent >= limit {
                return false;
            }
            s.sent += 1;
            true
        }
        None => {
            let s = SamplerState { window_start_ns: now, sent: 1, _pad: 0 };
            // A failed insert only loses rate-limit state, not the sample.
            let _ = SAMPLER.insert(key, s, 0);
            true
        }
    }
}

/// Records one failure. `key` is what the exact counter is kept by; the
/// record is sent only when the per-key sampler lets it through.
#[inline(always)]
pub fn record(key: &CountKey, mut rec: FailureRecord) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !count_and_sample(key, now) {
        return;
    }
    rec.ts_ns = now;
    rec.count = 1;
    match EVENTS.reserve::<FailureRecord>(0) {
        Some(mut entry) => {
            entry.write(rec);
            entry.submit(0);
        }
        None => loss(LossSlot::RingbufFull, 1),
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
    CountKey { netns: rec.netns, port: local_port, action: rec.action, family: rec.family, addr: local_addr }
}
