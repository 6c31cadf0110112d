//! Keys of the exact per-CPU counters and the loss counters.
//!
//! Counters are the ground truth: they count every occurrence, while the
//! ring buffer carries only rate-limited samples. Keying by local endpoint
//! (not by client) keeps the map small during a flood from many sources.

/// Counter key: one network namespace, action and local endpoint. The
/// endpoint is always the record's destination (`dst_addr`, `dst_port`), so
/// the daemon can find the counter of every sample it reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CountKey {
    pub netns: u32,
    /// Local (server-side for inbound, remote for outbound) port.
    pub port: u16,
    pub action: u8,
    pub family: u8,
    pub addr: [u8; 16],
    /// What the diagnosis depends on beyond the action, so that the
    /// reconciliation record of a storm is diagnosed as its samples are:
    /// the errno of a failed connect (ECONNREFUSED, EHOSTUNREACH and
    /// ETIMEDOUT are different diagnoses); 0 for the other actions.
    pub class: u8,
    /// Explicit, so that the map never hashes uninitialised padding.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<CountKey>() == 28);

impl CountKey {
    /// The key a record is counted under; `port`/`addr` are its local
    /// endpoint, which is always its destination.
    pub fn new(rec: &crate::FailureRecord, port: u16, addr: [u8; 16]) -> CountKey {
        let class = if rec.action == crate::Action::ConnectFailed as u8 {
            // Errnos are below 256; a larger one would share the last class.
            rec.reason.min(255) as u8
        } else {
            0
        };
        CountKey { netns: rec.netns, port, action: rec.action, family: rec.family, addr, class, _pad: [0; 3] }
    }
}

/// Value of the `COUNTERS` map, per CPU: the exact count, and the rate
/// limiter's one-second window with the samples sent in it. One value for
/// both, so that a hook pays for one map lookup.
///
/// What the window suppresses is not kept: `count` has it, and the daemon
/// reports it (reconciliation in observer/src/counters.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Every occurrence, sampled or not.
    pub count: u64,
    /// CLOCK_MONOTONIC start of the current sampling window.
    pub window_start_ns: u64,
    /// Samples sent in that window.
    pub sent: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 24);

/// Slots of the `LOSS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossSlot {
    /// Samples that could not be reserved in the ring buffer (their
    /// occurrences are in the exact counters).
    RingbufFull = 0,
    /// Occurrences not counted because the counter map was full.
    CounterMapFull = 1,
    /// Hook fired but a kernel read failed (record dropped).
    ReadFailed = 2,
}

pub const LOSS_SLOTS: u32 = 3;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain repr(C) integers and byte arrays without implicit padding
    // (size asserted above), so every byte is initialised.
    unsafe impl aya::Pod for super::CountKey {}
    // SAFETY: as above; two u64 first, then two u32: no padding (size asserted).
    unsafe impl aya::Pod for super::Counter {}
}
