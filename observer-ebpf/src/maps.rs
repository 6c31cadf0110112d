//! Maps and the read-only configuration global.

use aya_ebpf::{
    macros::map,
    maps::{LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use observer_common::{config::KernelConfig, counter::Counter, CountKey};

/// Layouts and values of the running kernel, written by the daemon before load.
// SAFETY: the symbol name is unique in the object; aya finds the global by it.
#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::UNSET;

/// Sampled failure records. The daemon sizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Exact occurrence counts per (netns, action, local endpoint), with the
/// per-key rate limiter's state. LRU per-CPU: no atomics on the hot path, and
/// a flood of new keys evicts the coldest instead of failing the insert.
#[map]
pub static COUNTERS: LruPerCpuHashMap<CountKey, Counter> = LruPerCpuHashMap::with_max_entries(16384, 0);

/// The sampling window of all keys together, on this CPU
/// (`samples_total_per_sec`); `count` is unused.
#[map]
pub static BUDGET: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Loss accounting, indexed by `LossSlot`.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(observer_common::counter::LOSS_SLOTS, 0);

/// Reads one field of `CONFIG`. Volatile so the compiler cannot fold the
/// compiled-in placeholder: the loader rewrites the value before load.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a valid static; read_volatile of a Copy field is sound.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::CONFIG.$($field).+)) }
    };
}
pub(crate) use config;
