//! Load: how many connections each namespace accepted and opened, and how
//! deep each listener's accept queue was, so that the history can set the
//! failures against the load they happened under (`observer report`).
//!
//! What "accepted" means, and why it is read where it is:
//! - **Accepted** = handshakes the kernel completed for a listener of the
//!   namespace: the namespace's `TcpPassiveOpens` (`/proc/net/snmp`), which
//!   the kernel counts when it creates the connection's socket at the final
//!   ACK and queues it for accept(), whether or not the application has
//!   called accept() yet. A connection the accept queue has no room for is
//!   not counted (it is a `listen_overflow` failure instead). It is the
//!   kernel's own counter, so the difference between two polls is exact
//!   however many connections came and went in between; it costs one small
//!   file read per namespace and poll, on the thread that is in the
//!   namespace for sock_diag already.
//! - It is per namespace, not per listener: the kernel keeps no accept
//!   counter per listening socket. sock_diag's `tcp_info` of a listener
//!   carries only its queue and backlog (`tcpi_unacked`, `tcpi_sacked`), and
//!   counting established sockets per local port at each poll would miss
//!   every connection shorter than the poll interval (most of a web
//!   server's) and cost a dump of every connection of the host. A container's
//!   namespace usually holds one service, where the two are the same.
//! - **Connects** = `TcpActiveOpens` the same way: connect() calls that sent
//!   a SYN, the load behind outbound failures.
//! - **Queue** = the listener's accept queue at each poll (sock_diag's
//!   `recv_queue`, what `ss -lt` shows as Recv-Q), exact at that instant; a
//!   burst that fills and drains between two polls is not seen here (its
//!   overflows are, as failures).
//!
//! The polls come every `enrich.poll_interval_ms`; the history gets one
//! sample every `load_interval` (`Aggregator`), with the sum of the
//! accepted connections and the deepest and mean queue, and only for what
//! had any: a host with many idle listeners or namespaces writes nothing
//! for them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use super::Listener;

/// The namespace's TCP counters that measure load, from the kernel's MIB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `TcpPassiveOpens`: handshakes completed for this namespace's listeners.
    pub passive_opens: u64,
    /// `TcpActiveOpens`: connects that sent a SYN.
    pub active_opens: u64,
}

/// The calling thread's namespace's counters. `/proc/self/net` is the
/// namespace of the process's main thread, not of a thread that joined
/// another one with setns: the thread's own `/proc/self/task/TID/net` is.
pub fn read_counters() -> Result<TcpCounters, String> {
    let root = PathBuf::from(format!("/proc/self/task/{}", nix::unistd::gettid()));
    let snmp = procfs::process::Process::new_with_root(root)
        .and_then(|p| p.snmp())
        .map_err(|e| format!("reading the TCP counters (net/snmp): {e}"))?;
    Ok(TcpCounters { passive_opens: snmp.tcp_passive_opens, active_opens: snmp.tcp_active_opens })
}

/// One namespace over one sample period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsLoad {
    pub netns: u32,
    /// Connections accepted (handshakes completed) in the period.
    pub accepted: u64,
    /// Outbound connects in the period.
    pub connects: u64,
}

/// One listener over one sample period.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerLoad {
    pub netns: u32,
    pub address: IpAddr,
    pub port: u16,
    /// The accept-queue limit at the latest poll.
    pub backlog: u32,
    /// The deepest accept queue seen at a poll.
    pub max_queue: u32,
    /// The mean accept queue over the polls that saw the listener.
    pub mean_queue: f64,
    /// How many polls saw the listener in the period.
    pub samples: u32,
}

/// The load of one period, for the history.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSample {
    /// The period's end: when the sample was taken.
    pub at: SystemTime,
    pub period: Duration,
    /// Namespaces that accepted or opened a connection in the period.
    pub namespaces: Vec<NetnsLoad>,
    /// Listeners whose accept queue was not empty at some poll.
    pub listeners: Vec<ListenerLoad>,
}

#[derive(Default)]
struct Queue {
    backlog: u32,
    max: u32,
    sum: u64,
    samples: u32,
}

/// Sums the polls into one sample per period.
pub struct Aggregator {
    every: Duration,
    started: Option<SystemTime>,
    /// The counters at the latest poll of each namespace: the next poll's
    /// difference to them is what it accepted. A namespace's first poll
    /// only sets this: its counters hold everything since it was created,
    /// most of it before the daemon could see it.
    last: HashMap<u32, TcpCounters>,
    /// What the polls of this period added, per namespace.
    opened: BTreeMap<u32, (u64, u64)>,
    queues: BTreeMap<(u32, IpAddr, u16), Queue>,
}

impl Aggregator {
    pub fn new(every: Duration) -> Aggregator {
        Aggregator { every, started: None, last: HashMap::new(), opened: BTreeMap::new(), queues: BTreeMap::new() }
    }

    /// One poll of one namespace: its counters (when they could be read)
    /// and its listeners.
    pub fn add(&mut self, at: SystemTime, netns: u32, counters: Option<TcpCounters>, listeners: &[Listener]) {
        self.started.get_or_insert(at);
        if let Some(now) = counters {
            if let Some(before) = self.last.insert(netns, now) {
                // A counter lower than before is a new namespace under a
                // reused inode: it counted from zero.
                let since = |now: u64, before: u64| if now >= before { now - before } else { now };
                let entry = self.opened.entry(netns).or_default();
                entry.0 += since(now.passive_opens, before.passive_opens);
                entry.1 += since(now.active_opens, before.active_opens);
            }
        }
        for l in listeners {
            let q = self.queues.entry((netns, l.address, l.port)).or_default();
            q.backlog = l.backlog;
            q.max = q.max.max(l.queue);
            q.sum += u64::from(l.queue);
            q.samples += 1;
        }
    }

    /// Forgets the counters of namespaces that are gone (a long-running
    /// host creates and removes many).
    pub fn retain(&mut self, live: &[u32]) {
        self.last.retain(|ns, _| live.contains(ns));
    }

    /// The sample of the period that ended, once `every` has passed since
    /// it began (none when nothing accepted, connected or queued); the next
    /// period starts at `now`.
    pub fn take_due(&mut self, now: SystemTime) -> Option<LoadSample> {
        let started = self.started?;
        let period = now.duration_since(started).unwrap_or_default();
        if period < self.every {
            return None;
        }
        self.started = Some(now);
        let namespaces = std::mem::take(&mut self.opened)
            .into_iter()
            .filter(|(_, (a, c))| *a > 0 || *c > 0)
            .map(|(netns, (accepted, connects))| NetnsLoad { netns, accepted, connects })
            .collect();
        let listeners = std::mem::take(&mut self.queues)
            .into_iter()
            .filter(|(_, q)| q.max > 0)
            .map(|((netns, address, port), q)| ListenerLoad {
                netns,
                address,
                port,
                backlog: q.backlog,
                max_queue: q.max,
                mean_queue: q.sum as f64 / f64::from(q.samples.max(1)),
                samples: q.samples,
            })
            .collect();
        let sample = LoadSample { at: now, period, namespaces, listeners };
        (!sample.namespaces.is_empty() || !sample.listeners.is_empty()).then_some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16, queue: u32) -> Listener {
        Listener { address: "127.0.0.1".parse().unwrap(), port, backlog: 8, queue, v6only: false, inode: 1 }
    }

    fn c(passive_opens: u64, active_opens: u64) -> Option<TcpCounters> {
        Some(TcpCounters { passive_opens, active_opens })
    }

    #[test]
    fn a_period_sums_the_differences_and_keeps_the_deepest_queue() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s| t0 + Duration::from_secs(s);
        let mut a = Aggregator::new(Duration::from_secs(60));
        // The first poll is the baseline: 500 connections since the
        // namespace was created are not this period's.
        a.add(at(0), 7, c(500, 20), &[listener(80, 0), listener(22, 0)]);
        a.add(at(2), 7, c(503, 20), &[listener(80, 4), listener(22, 0)]);
        a.add(at(4), 7, c(510, 21), &[listener(80, 2), listener(22, 0)]);
        assert_eq!(a.take_due(at(30)), None, "not a whole period yet");
        a.add(at(60), 7, c(511, 21), &[listener(80, 0), listener(22, 0)]);
        let s = a.take_due(at(60)).unwrap();
        assert_eq!(s.period, Duration::from_secs(60));
        assert_eq!(s.namespaces, [NetnsLoad { netns: 7, accepted: 11, connects: 1 }]);
        assert_eq!(s.listeners.len(), 1, "the idle listener is left out: {:?}", s.listeners);
        let l = &s.listeners[0];
        assert_eq!((l.port, l.max_queue, l.samples, l.backlog), (80, 4, 4, 8));
        assert!((l.mean_queue - 1.5).abs() < 1e-9);
        // The next period starts from the last poll's counters.
        a.add(at(62), 7, c(511, 21), &[]);
        assert_eq!(a.take_due(at(120)), None, "a quiet period writes nothing");
    }

    #[test]
    fn a_reused_inode_counts_from_zero() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut a = Aggregator::new(Duration::from_secs(1));
        a.add(t0, 9, c(100, 0), &[]);
        a.add(t0 + Duration::from_secs(1), 9, c(3, 0), &[]);
        let s = a.take_due(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.namespaces, [NetnsLoad { netns: 9, accepted: 3, connects: 0 }]);
    }

    #[test]
    fn reads_this_threads_namespace_counters() {
        let before = read_counters().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let after = read_counters().unwrap();
        // Other tests of this process may connect too: at least ours.
        assert!(after.passive_opens > before.passive_opens, "{before:?} {after:?}");
        assert!(after.active_opens > before.active_opens, "{before:?} {after:?}");
    }
}
