//! The counter-polling stage: reads the kernel's exact counters (`COUNTERS`)
//! and loss slots (`LOSS`), and reports what the samples did not carry.
//!
//! # Reconciliation
//!
//! Every hook counts each occurrence in `COUNTERS` under its key (netns,
//! action, family, destination address and port), and only then asks the
//! per-key rate limiter whether to send a sample; a sample stands for its own
//! occurrence (`event.count` = 1). The rest, suppressed by the rate limit or
//! lost because the ring buffer was full or a record did not decode, is
//! reported by this stage as *reconciliation records*: failure events with
//! `event.reconciled = true` and `event.count` = the occurrences they stand
//! for, so that the counts in the log add up to the kernel's counters.
//!
//! Per key the stage keeps `kernel` (the counter at the last snapshot),
//! `sampled` (the sum of `event.count` of the samples read) and `reconciled`
//! (what its records reported). Each poll, run by the capture task right
//! after it drained the ring buffer:
//!
//! 1. report `kernel - sampled - reconciled` for every key, where `kernel` is
//!    the *previous* snapshot, taken at least [`settle`] earlier;
//! 2. take a new snapshot.
//!
//! Why this is exact: a program counts first and submits its sample a few
//! microseconds later, in the same run. So the samples of every occurrence in
//! a snapshot are in the ring buffer long before the next poll drains it, and
//! `sampled` then covers all of them. A sample read after that drain belongs
//! to an occurrence counted after the snapshot. Hence `sampled + reconciled`
//! never exceeds the kernel's count, and once a key is quiet for two polls
//! it equals it. At shutdown the programs are detached first, so the last
//! drain and a fresh snapshot settle everything.
//!
//! The kernel cannot carry suppressed occurrences in a later sample instead:
//! after this stage reported them, a late sample would repeat them, and the
//! daemon has no atomic way to take them out of a per-CPU map.
//!
//! A reconciliation record has what the key has: `observer.netns`,
//! `event.action`, `network.type`, `destination.ip` and `destination.port`.
//! Missing: the client (`source.ip` is the unspecified address, `source.port`
//! 0), `observer.reason`, `observer.tcp_state`, `observer.stage`,
//! `observer.listener` and `process`. `observer.direction` is the direction
//! of the key's latest sample (exact), or by action when none was read.
//!
//! Limits: exactness holds while the keys fit in `capture.counter_entries`.
//! When the kernel's LRU evicts a key before it was read, the occurrences
//! since the last snapshot are gone; a counter found lower than before
//! (evicted and re-created) is counted in `Stats::counter_resets` and warned
//! about.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap};
use lru::LruCache;
use observer_common::{
    counter::{Counter, LossSlot, LOSS_SLOTS},
    record::{flags, AF_INET},
    Action, CountKey, FailureRecord,
};
use thiserror::Error;
use tracing::warn;

use crate::{
    event::{Direction, Endpoint, FailureEvent},
    stats::Stats,
};

#[derive(Debug, Error)]
pub enum CountersError {
    #[error("the eBPF object has no {0} map")]
    Missing(&'static str),
    #[error("{name} map: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// The key of the counter a sample was counted under (see
/// `observer-ebpf/src/emit.rs`, `key_of`: always the destination endpoint).
pub fn key_of(rec: &FailureRecord) -> CountKey {
    CountKey::new(rec, rec.dst_port, rec.dst_addr)
}

/// How old a snapshot must be before it is reconciled: programs run for
/// microseconds, so by then every sample of its occurrences was submitted.
pub fn settle(every: Duration) -> Duration {
    (every / 2).max(Duration::from_millis(100))
}

/// The kernel side: the two maps, taken out of the loaded object.
pub struct KernelCounters {
    counters: PerCpuHashMap<MapData, CountKey, Counter>,
    loss: PerCpuArray<MapData, u64>,
    max_keys: usize,
}

/// One reading of `COUNTERS`, summed over CPUs.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub counts: HashMap<CountKey, u64>,
    /// False when the walk was cut short (the kernel kept evicting keys
    /// while it ran): keys missing from it may still exist.
    pub complete: bool,
}

impl KernelCounters {
    /// Takes `COUNTERS` and `LOSS` from the object; they stay valid after the
    /// programs are detached, for the last reading at shutdown.
    pub fn take(ebpf: &mut aya::Ebpf, max_keys: usize) -> Result<KernelCounters, CountersError> {
        let map = ebpf.take_map("COUNTERS").ok_or(CountersError::Missing("COUNTERS"))?;
        let counters =
            PerCpuHashMap::try_from(map).map_err(|source| CountersError::Map { name: "COUNTERS", source })?;
        let map = ebpf.take_map("LOSS").ok_or(CountersError::Missing("LOSS"))?;
        let loss = PerCpuArray::try_from(map).map_err(|source| CountersError::Map { name: "LOSS", source })?;
        Ok(KernelCounters { counters, loss, max_keys: max_keys.max(1) })
    }

    pub fn snapshot(&self) -> Result<Snapshot, CountersError> {
        let mut counts = HashMap::new();
        // A key deleted (evicted) under the walk makes the kernel restart it
        // from the first key, so the walk is bounded and keys deduplicated.
        let bound = self.max_keys.saturating_mul(4);
        let mut visited = 0usize;
        for item in self.counters.iter() {
            visited += 1;
            if visited > bound {
                return Ok(Snapshot { counts, complete: false });
            }
            let (key, values) = item.map_err(|source| CountersError::Map { name: "COUNTERS", source })?;
            counts.insert(key, values.iter().fold(0u64, |a, v| a.wrapping_add(v.count)));
        }
        Ok(Snapshot { counts, complete: true })
    }

    /// The `LOSS` slots, summed over CPUs (totals since the programs loaded).
    pub fn loss(&self) -> Result<[u64; LOSS_SLOTS as usize], CountersError> {
        let mut out = [0u64; LOSS_SLOTS as usize];
        for (slot, total) in out.iter_mut().enumerate() {
            let values =
                self.loss.get(&(slot as u32), 0).map_err(|source| CountersError::Map { name: "LOSS", source })?;
            *total = values.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyState {
    /// The kernel's count at the last snapshot.
    kernel: u64,
    /// Occurrences carried by the samples read.
    sampled: u64,
    /// Of those, read since the last snapshot (to rebase a restarted counter).
    sampled_recent: u64,
    /// Occurrences reported by reconciliation records.
    reconciled: u64,
    /// Direction of the latest sample of this key; exact when known.
    outbound: Option<bool>,
}

impl KeyState {
    /// What the kernel counted that neither samples nor records reported.
    fn due(&self) -> u64 {
        self.kernel.saturating_sub(self.sampled.saturating_add(self.reconciled))
    }

    /// Reports `count` of it: the record's share, now counted as reconciled.
    fn report(&mut self, key: CountKey, count: u64) -> Owed {
        self.reconciled += count;
        Owed { key, count, outbound: self.outbound.unwrap_or(key.action == Action::ConnectFailed as u8) }
    }
}

/// What the samples of one key did not carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owed {
    pub key: CountKey,
    pub count: u64,
    pub outbound: bool,
}

/// What one snapshot changed, for the stats and warnings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Keys whose counter was lower than at the previous snapshot.
    pub resets: u64,
    /// Keys the bounded state had to forget to make room.
    pub evicted: u64,
}

/// The bookkeeping of reconciliation, without I/O (unit-tested below).
/// Memory: one entry per key, at most `cap` (LRU).
pub struct Reconciler {
    keys: LruCache<CountKey, KeyState>,
    snapshot_at: Option<Instant>,
    /// Reconciliation records per poll at most (see `owed`).
    max_per_poll: usize,
    /// What keys owed when they left the kernel's map: reported by the
    /// next `owed`, whatever the limit, since the key is gone after it.
    carry: Vec<Owed>,
}

impl Reconciler {
    pub fn new(cap: usize) -> Reconciler {
        let cap = NonZeroUsize::new(cap.max(1)).unwrap_or(NonZeroUsize::MIN);
        Reconciler { keys: LruCache::new(cap), snapshot_at: None, max_per_poll: usize::MAX, carry: Vec::new() }
    }

    /// Limits the records of one poll. The log volume of a burst over many
    /// keys (a scan of 5,000 ports) is then bounded by this, per poll,
    /// instead of by the number of keys; the counts stay exact, because a
    /// key not reported now keeps what it owes for the next poll. The
    /// largest debts go first, so a storm on one port is never the one
    /// that waits.
    pub fn limit(mut self, max_per_poll: usize) -> Reconciler {
        self.max_per_poll = max_per_poll.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A sample was read from the ring buffer. Returns true when a key had
    /// to be forgotten to make room.
    pub fn sampled(&mut self, key: CountKey, count: u64, outbound: bool) -> bool {
        let mut evicted = false;
        if !self.keys.contains(&key) && self.keys.len() == self.keys.cap().get() {
            evicted = self.keys.pop_lru().is_some();
        }
        let s = self.keys.get_or_insert_mut(key, KeyState::default);
        s.sampled = s.sampled.saturating_add(count);
        s.sampled_recent = s.sampled_recent.saturating_add(count);
        s.outbound = Some(outbound);
        evicted
    }

    /// What is owed per key against the previous snapshot. Call right after
    /// the ring buffer was drained; nothing is owed until that snapshot is
    /// `settle` old (its samples may still be on their way).
    pub fn owed(&mut self, now: Instant, settle: Duration) -> Vec<Owed> {
        match self.snapshot_at {
            Some(at) if now.saturating_duration_since(at) >= settle => {}
            _ => return Vec::new(),
        }
        let mut due: Vec<(CountKey, u64)> =
            self.keys.iter().map(|(k, s)| (*k, s.due())).filter(|(_, due)| *due > 0).collect();
        if due.len() > self.max_per_poll {
            due.sort_unstable_by_key(|d| std::cmp::Reverse(d.1));
            due.truncate(self.max_per_poll);
        }
        let mut out = std::mem::take(&mut self.carry);
        for (key, count) in due {
            if let Some(s) = self.keys.peek_mut(&key) {
                out.push(s.report(key, count));
            }
        }
        out
    }

    /// What is owed when no sample can arrive any more (programs detached,
    /// ring buffer drained, snapshot taken after both).
    pub fn settle_all(&mut self) -> Vec<Owed> {
        let mut out = std::mem::take(&mut self.carry);
        for (key, s) in self.keys.iter_mut() {
            let due = s.due();
            if due > 0 {
                out.push(s.report(*key, due));
            }
        }
        out
    }

    /// Takes in a new snapshot. Keys gone from a complete snapshot were
    /// evicted in the kernel: what they owed was reported by the `owed` call
    /// before, so they are forgotten.
    pub fn update(&mut self, snapshot: &Snapshot, now: Instant) -> Update {
        let mut update = Update::default();
        for (key, &count) in &snapshot.counts {
            if let Some(s) = self.keys.get_mut(key) {
                if count < s.kernel {
                    // Evicted and re-created between two snapshots: the new
                    // counter holds only what came after, and so do the
                    // samples read since the last snapshot, at most.
                    update.resets += 1;
                    s.sampled = s.sampled_recent.min(count);
                    s.reconciled = 0;
                }
                s.kernel = count;
                s.sampled_recent = 0;
            } else {
                if self.keys.len() == self.keys.cap().get() && self.keys.pop_lru().is_some() {
                    update.evicted += 1;
                }
                self.keys.put(*key, KeyState { kernel: count, ..KeyState::default() });
            }
        }
        if snapshot.complete {
            let gone: Vec<CountKey> =
                self.keys.iter().filter(|(k, _)| !snapshot.counts.contains_key(k)).map(|(k, _)| *k).collect();
            for k in gone {
                if let Some(mut s) = self.keys.pop(&k) {
                    let due = s.due();
                    if due > 0 {
                        self.carry.push(s.report(k, due));
                    }
                }
            }
        }
        self.snapshot_at = Some(now);
        update
    }
}

/// Hook runs the kernel skipped for this process's programs: the sum of
/// their `recursion_misses` (in /proc/self/fdinfo of each program fd). A
/// tracepoint program is skipped when another eBPF program is already
/// running on that CPU, say a hook interrupted by a softirq that fires
/// another hook; that occurrence is in no count. None when no program fd
/// is open (after detach).
pub fn hook_misses() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fdinfo").ok()?;
    let mut total = None;
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if !text.contains("prog_type:") {
            continue;
        }
        let misses = text.lines().find_map(|l| l.strip_prefix("recursion_misses:")?.trim().parse::<u64>().ok());
        if let Some(m) = misses {
            total = Some(total.unwrap_or(0) + m);
        }
    }
    total
}

/// Rate-limited warnings for the kernel's loss slots and counter resets.
struct LossWatch {
    every: Duration,
    last: Option<Instant>,
    /// Totals at the last warning.
    warned: [u64; LOSS_SLOTS as usize],
    resets_warned: u64,
    misses_warned: u64,
}

impl LossWatch {
    fn check(&mut self, now: Instant, totals: [u64; LOSS_SLOTS as usize], resets: u64, misses: u64) {
        let new = totals.iter().zip(self.warned).any(|(t, w)| *t > w)
            || resets > self.resets_warned
            || misses > self.misses_warned;
        if !new || self.last.is_some_and(|l| now.saturating_duration_since(l) < self.every) {
            return;
        }
        self.last = Some(now);
        let delta = |slot: LossSlot| totals[slot as usize].saturating_sub(self.warned[slot as usize]);
        let n = delta(LossSlot::RingbufFull);
        if n > 0 {
            let total = totals[LossSlot::RingbufFull as usize];
            warn!(
                "lost {n} samples: ring buffer full; counters stay exact ({total} since start; \
                 capture.ring_buffer_bytes sets its size)"
            );
        }
        let n = delta(LossSlot::CounterMapFull);
        if n > 0 {
            warn!("lost {n} occurrences: the counter map refused their key; they are not counted anywhere");
        }
        let n = delta(LossSlot::ReadFailed);
        if n > 0 {
            warn!("lost {n} occurrences: a kernel read failed in a hook; they are not counted anywhere");
        }
        let n = resets.saturating_sub(self.resets_warned);
        if n > 0 {
            warn!(
                "{n} counter keys were evicted in the kernel before they were read: their counts may be low \
                 (capture.counter_entries sets how many keys are kept)"
            );
        }
        let n = misses.saturating_sub(self.misses_warned);
        if n > 0 {
            warn!(
                "lost {n} occurrences: the kernel skipped a hook because another eBPF program was running on \
                 that CPU; they are not counted anywhere"
            );
        }
        self.warned = totals;
        self.resets_warned = resets;
        self.misses_warned = misses;
    }
}

/// The stage itself: owned and driven by the capture task (capture.rs), so
/// that "right after the ring buffer was drained" holds.
pub struct CounterStage {
    kernel: KernelCounters,
    reconciler: Reconciler,
    watch: LossWatch,
    stats: Arc<Stats>,
    every: Duration,
    /// One warning per run for failing map reads; they are counted too.
    poll_error_warned: bool,
}

impl CounterStage {
    /// `max_keys`: the kernel's `counter_entries`; the reconciliation state
    /// keeps twice as many (keys of one interval's samples on top of the map).
    pub fn new(
        kernel: KernelCounters,
        max_keys: usize,
        every: Duration,
        warn_every: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        CounterStage {
            kernel,
            reconciler: Reconciler::new(max_keys.saturating_mul(2)),
            watch: LossWatch {
                every: warn_every,
                last: None,
                warned: [0; LOSS_SLOTS as usize],
                resets_warned: 0,
                misses_warned: 0,
            },
            stats,
            every,
            poll_error_warned: false,
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Reconciliation records per poll at most (`Reconciler::limit`).
    pub fn limit(mut self, max_per_poll: usize) -> Self {
        self.reconciler = self.reconciler.limit(max_per_poll);
        self
    }

    /// A decoded sample was read from the ring buffer.
    pub fn sampled(&mut self, rec: &FailureRecord) {
        if self.reconciler.sampled(key_of(rec), rec.count as u64, rec.flags & flags::OUTBOUND != 0) {
            Stats::inc(&self.stats.counter_keys_evicted);
        }
    }

    /// One poll; the caller drained the ring buffer just before.
    pub fn poll(&mut self) -> Vec<FailureEvent> {
        let now = Instant::now();
        let owed = self.reconciler.owed(now, settle(self.every));
        let events = self.events(owed);
        // Reconcile against a snapshot only after it has settled: a newer one
        // is taken only when the previous one was used (or there was none).
        if self.reconciler.snapshot_at.is_none_or(|at| now.saturating_duration_since(at) >= settle(self.every)) {
            self.snapshot(now);
        }
        self.read_loss(now);
        events
    }

    /// The last poll: the programs are detached and the ring buffer drained,
    /// so a fresh snapshot settles every key.
    pub fn finish(&mut self) -> Vec<FailureEvent> {
        let now = Instant::now();
        self.snapshot(now);
        let owed = self.reconciler.settle_all();
        self.read_loss(now);
        self.events(owed)
    }

    fn snapshot(&mut self, now: Instant) {
        match self.kernel.snapshot() {
            Ok(snapshot) => {
                let u = self.reconciler.update(&snapshot, now);
                self.stats.counter_resets.fetch_add(u.resets, std::sync::atomic::Ordering::Relaxed);
                self.stats.counter_keys_evicted.fetch_add(u.evicted, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => self.poll_failed(e),
        }
    }

    fn read_loss(&mut self, now: Instant) {
        match self.kernel.loss() {
            Ok(totals) => {
                use std::sync::atomic::Ordering::Relaxed;
                // Totals since load, kept by the kernel: stored, not added.
                self.stats.kernel_ringbuf_full.store(totals[LossSlot::RingbufFull as usize], Relaxed);
                self.stats.kernel_counter_map_full.store(totals[LossSlot::CounterMapFull as usize], Relaxed);
                self.stats.kernel_read_failed.store(totals[LossSlot::ReadFailed as usize], Relaxed);
                // Kept at the last value once the programs are detached.
                if let Some(m) = hook_misses() {
                    self.stats.kernel_hook_misses.fetch_max(m, Relaxed);
                }
                let misses = Stats::get(&self.stats.kernel_hook_misses);
                self.watch.check(now, totals, Stats::get(&self.stats.counter_resets), misses);
            }
            Err(e) => self.poll_failed(e),
        }
    }

    fn poll_failed(&mut self, e: CountersError) {
        Stats::inc(&self.stats.counter_poll_errors);
        if !self.poll_error_warned {
            warn!("reading the kernel counters: {e}; reconciliation may lag");
            self.poll_error_warned = true;
        }
    }

    fn events(&self, owed: Vec<Owed>) -> Vec<FailureEvent> {
        let when = SystemTime::now();
        let events: Vec<FailureEvent> = owed.iter().filter_map(|o| reconciliation_event(o, when)).collect();
        let occurrences: u64 = events.iter().map(|e| e.event.count).sum();
        self.stats.reconciled_records.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats.reconciled_occurrences.fetch_add(occurrences, std::sync::atomic::Ordering::Relaxed);
        events
    }
}

/// A reconciliation record for what one key owes; None for a key whose
/// action byte is unknown (the kernel never writes one).
pub fn reconciliation_event(o: &Owed, when: SystemTime) -> Option<FailureEvent> {
    let action = Action::try_from(o.key.action).ok()?;
    let v4 = o.key.family == AF_INET;
    let (source, destination) = if v4 {
        let a = &o.key.addr;
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
    } else {
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::from(o.key.addr)))
    };
    let direction = if o.outbound { Direction::Outbound } else { Direction::Inbound };
    let mut e = FailureEvent::new(
        when,
        action,
        o.count,
        o.key.netns,
        direction,
        Endpoint { ip: source, port: 0 },
        Endpoint { ip: destination, port: o.key.port },
    );
    e.event.reconciled = true;
    // The errno class of a failed connect is in the key: a storm of
    // EHOSTUNREACH stays "unreachable", one of ECONNREFUSED "refused".
    e.observer.reason =
        (action == Action::ConnectFailed && o.key.class != 0).then(|| crate::decode::errno_name(o.key.class.into()));
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(500);

    fn key(port: u16) -> CountKey {
        CountKey {
            netns: 7,
            port,
            action: Action::Refused as u8,
            family: AF_INET,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            class: 0,
            _pad: [0; 3],
        }
    }

    fn snap(pairs: &[(CountKey, u64)]) -> Snapshot {
        Snapshot { counts: pairs.iter().copied().collect(), complete: true }
    }

    fn total(owed: &[Owed]) -> u64 {
        owed.iter().map(|o| o.count).sum()
    }

    /// Drives polls the way the stage does: owed (after drain), then update.
    struct Sim {
        r: Reconciler,
        t: Instant,
        reported: u64,
    }

    impl Sim {
        fn new() -> Sim {
            Sim { r: Reconciler::new(16), t: Instant::now(), reported: 0 }
        }
        fn sample(&mut self, k: CountKey) {
            self.r.sampled(k, 1, false);
            self.reported += 1;
        }
        fn poll(&mut self, kernel: &[(CountKey, u64)]) -> Vec<Owed> {
            self.t += Duration::from_secs(1);
            let owed = self.r.owed(self.t, SETTLE);
            self.reported += total(&owed);
            self.r.update(&snap(kernel), self.t);
            owed
        }
    }

    #[test]
    fn suppressed_occurrences_are_reported_once_the_burst_settles() {
        let mut s = Sim::new();
        let k = key(80);
        for _ in 0..3 {
            s.sample(k);
        }
        // 500 counted, 3 sampled.
        assert!(s.poll(&[(k, 500)]).is_empty(), "first snapshot is not reconciled yet");
        let owed = s.poll(&[(k, 500)]);
        assert_eq!(owed, vec![Owed { key: k, count: 497, outbound: false }]);
        assert_eq!(s.reported, 500);
        assert!(s.poll(&[(k, 500)]).is_empty(), "reported once");
    }

    #[test]
    fn samples_of_newer_occurrences_never_make_the_total_exceed_the_kernel() {
        let mut s = Sim::new();
        let k = key(80);
        let mut kernel = 0;
        // An ongoing storm: 100 per interval, 2 sampled each, for 5 intervals.
        for _ in 0..5 {
            kernel += 100;
            s.sample(k);
            s.sample(k);
            s.poll(&[(k, kernel)]);
            assert!(s.reported <= kernel, "{} > {kernel}", s.reported);
        }
        // Samples read after a snapshot belong to later occurrences.
        kernel += 1;
        s.sample(k);
        s.poll(&[(k, kernel)]);
        s.poll(&[(k, kernel)]);
        assert_eq!(s.reported, kernel);
    }

    #[test]
    fn nothing_is_reconciled_before_the_snapshot_settled() {
        let mut r = Reconciler::new(4);
        let t = Instant::now();
        r.update(&snap(&[(key(1), 10)]), t);
        assert!(r.owed(t + Duration::from_millis(10), SETTLE).is_empty());
        assert_eq!(total(&r.owed(t + SETTLE, SETTLE)), 10);
    }

    #[test]
    fn keys_gone_from_the_kernel_are_forgotten_and_state_is_capped() {
        let mut s = Sim::new();
        s.poll(&[(key(1), 1), (key(2), 2)]);
        assert_eq!(s.r.len(), 2);
        s.poll(&[(key(2), 2)]);
        assert_eq!(s.r.len(), 1);
        // An incomplete walk forgets nothing.
        s.r.update(&Snapshot { counts: HashMap::new(), complete: false }, s.t);
        assert_eq!(s.r.len(), 1);

        let mut r = Reconciler::new(3);
        let evicted = (0..10).filter(|p| r.sampled(key(*p), 1, false)).count();
        assert_eq!(r.len(), 3);
        assert_eq!(evicted, 7);
        let u = r.update(&snap(&[(key(100), 1), (key(101), 1), (key(102), 1), (key(103), 1)]), Instant::now());
        assert_eq!(r.len(), 3);
        assert_eq!(u.evicted, 4);
    }

    #[test]
    fn a_restarted_counter_is_counted_and_rebased() {
        let mut s = Sim::new();
        let k = key(9);
        s.poll(&[(k, 50)]);
        s.poll(&[(k, 50)]);
        assert_eq!(s.reported, 50);
        // Evicted and re-created: 5 new occurrences, 1 sampled.
        s.sample(k);
        s.r.update(&snap(&[(k, 5)]), s.t);
        s.t += Duration::from_secs(1);
        let owed = s.r.owed(s.t, SETTLE);
        assert_eq!(total(&owed), 4);
    }

    #[test]
    fn direction_comes_from_samples_else_from_the_action() {
        let mut r = Reconciler::new(4);
        let mut out = key(443);
        out.action = Action::ConnectFailed as u8;
        let reset = CountKey { action: Action::ResetSent as u8, ..key(22) };
        r.sampled(reset, 1, true);
        r.update(&snap(&[(out, 3), (reset, 2)]), Instant::now());
        let owed = r.settle_all();
        assert!(owed.iter().all(|o| o.outbound), "{owed:?}");
    }

    #[test]
    fn reconciliation_records_carry_the_key() {
        let o = Owed { key: key(8080), count: 42, outbound: false };
        let e = reconciliation_event(&o, SystemTime::now()).unwrap();
        assert_eq!(e.event.count, 42);
        assert!(e.event.reconciled);
        assert_eq!(e.destination, Endpoint { ip: "127.0.0.1".parse().unwrap(), port: 8080 });
        assert!(e.source.ip.is_unspecified());
        assert_eq!(e.observer.netns, 7);
        assert_eq!(e.network.kind, crate::event::Family::Ipv4);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"]["reconciled"], true);
        assert_eq!(json["event"]["action"], "refused");
    }

    #[test]
    fn a_failed_connect_storm_keeps_its_errno_class() {
        let mut rec = FailureRecord::zeroed();
        rec.action = Action::ConnectFailed as u8;
        rec.reason = 111;
        let refused = key_of(&rec);
        rec.reason = 113;
        let unreachable = key_of(&rec);
        assert_ne!(refused, unreachable, "ECONNREFUSED and EHOSTUNREACH are counted apart");
        let o = Owed { key: refused, count: 500, outbound: true };
        let e = reconciliation_event(&o, SystemTime::now()).unwrap();
        assert_eq!(e.observer.reason.as_deref(), Some("ECONNREFUSED"));
        // Other actions' reasons are details, not part of the key.
        rec.action = Action::Refused as u8;
        rec.reason = 2;
        assert_eq!(key_of(&rec).class, 0);
    }

    #[test]
    fn a_limited_poll_reports_the_largest_debts_first_and_the_rest_later_exactly() {
        let mut r = Reconciler::new(64).limit(2);
        let t = Instant::now();
        let keys: Vec<CountKey> = (0..5).map(|i| key(9000 + i)).collect();
        r.update(&snap(&[]), t);
        let counts: Vec<(CountKey, u64)> = keys.iter().enumerate().map(|(i, k)| (*k, 10 * (i as u64 + 1))).collect();
        r.update(&snap(&counts), t);
        let first = r.owed(t + SETTLE, SETTLE);
        assert_eq!(first.iter().map(|o| o.count).collect::<Vec<_>>(), [50, 40], "largest first, two per poll");
        let second = r.owed(t + SETTLE * 2, SETTLE);
        assert_eq!(second.iter().map(|o| o.count).collect::<Vec<_>>(), [30, 20]);
        // A key the kernel evicted meanwhile is still reported, beyond the limit.
        r.update(&snap(&counts[1..]), t + SETTLE * 2);
        let third = r.owed(t + SETTLE * 4, SETTLE);
        assert_eq!(total(&third), 10, "{third:?}");
        assert_eq!(total(&first) + total(&second) + total(&third), 150, "exact in the end");
    }
}
