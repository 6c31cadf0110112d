//! Enrich stage: what the live system says about an endpoint that fails.
//!
//! The kernel's events say what happened to a packet; a diagnosis also
//! needs who listens (sock_diag), which process owns it (/proc), the
//! namespace's sysctls, and the firewall rule involved (nftables). All of
//! it is per network namespace, read on a thread that joins it.
//!
//! Listener history: a listener that went away before clients failed is
//! the most useful fact of a `no_listener` diagnosis, and it cannot be read
//! afterwards. So every namespace is polled (`poll`), and each listener is
//! remembered with its owner until `history` after it disappears.
//!
//! Load: the same polls read each namespace's TCP counters and listener
//! queues into load samples for the history (`load`).

pub mod command;
pub mod firewall;
pub mod listeners;
pub mod load;
pub mod owners;
pub mod sysctl;
pub mod worker;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::debug;

pub use self::{
    firewall::FirewallRule,
    listeners::Listener,
    load::{LoadSample, TcpCounters},
    owners::Owner,
};
use crate::netns::{self, Directory};

/// A listener and the process that holds it (when /proc told).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnedListener {
    #[serde(flatten)]
    pub listener: Listener,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// One namespace at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub listeners: Vec<OwnedListener>,
    pub sysctls: BTreeMap<String, i64>,
    /// The namespace's load counters; `None` when they could not be read.
    pub counters: Option<TcpCounters>,
}

/// A listener seen by the poller, kept after it goes away.
#[derive(Clone, Debug)]
pub struct Seen {
    pub netns: u32,
    pub listener: OwnedListener,
    pub last_present: SystemTime,
    /// When a poll first found it gone.
    pub gone: Option<SystemTime>,
}

/// What the live system says about one local endpoint.
#[derive(Debug, Default)]
pub struct Facts {
    /// Listeners on the port in the same namespace, any address.
    pub on_port: Vec<OwnedListener>,
    /// Listeners on the port in other namespaces (present now).
    pub elsewhere: Vec<(u32, OwnedListener)>,
    /// The latest listener on the port in this namespace that went away.
    pub recent: Option<Seen>,
    pub sysctls: BTreeMap<String, i64>,
    pub firewall: Option<FirewallRule>,
    /// What could not be read, for the evidence (never silently missing).
    pub errors: Vec<String>,
}

impl Facts {
    /// The listener that would take a connection to `ip` on the port.
    pub fn serving(&self, ip: IpAddr) -> Option<&OwnedListener> {
        self.on_port.iter().find(|l| l.listener.serves(ip))
    }
}

/// What a diagnosis asks the enricher about.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub netns: u32,
    pub port: u16,
    pub client: Option<IpAddr>,
    /// The firewall verdict whose rule is wanted (firewall diagnoses).
    pub verdict: Option<Verdict>,
    /// Read the namespace now rather than reuse a recent snapshot: when a
    /// diagnosis opens, a listener that closed a moment ago must not count.
    pub fresh: bool,
}

/// What nftables did to the packet, for the rule that did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Reject,
}

impl Verdict {
    /// The verdict's word in the nftables ruleset.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
        }
    }
}

/// The facts read from the kernel and /proc: sock_diag, sysctls, owners,
/// and the listener history. Blocking, and quick (no external command):
/// the worker runs it on the blocking pool, and the firewall after it.
pub struct Enricher {
    dir: Directory,
    max_age: Duration,
    history_for: Duration,
    history_cap: usize,
    snapshots: HashMap<u32, (Instant, Arc<Snapshot>)>,
    owners: HashMap<u64, Owner>,
    history: HashMap<(u32, IpAddr, u16), Seen>,
    load: Option<load::Aggregator>,
}

impl Enricher {
    /// `max_age`: how old a namespace snapshot may be when reused;
    /// `history_for`: how long a listener is remembered after it went away.
    pub fn new(max_age: Duration, history_for: Duration, history_cap: usize) -> Enricher {
        Enricher {
            dir: Directory::default(),
            max_age,
            history_for,
            history_cap,
            snapshots: HashMap::new(),
            owners: HashMap::new(),
            history: HashMap::new(),
            load: None,
        }
    }

    /// Samples the load at every poll, and hands it out every `every`
    /// (`poll` returns it).
    pub fn with_load(mut self, every: Duration) -> Enricher {
        self.load = Some(load::Aggregator::new(every));
        self
    }

    /// Snapshots every reachable namespace, so that listeners are in the
    /// history before they go away; returns the load sample of the period
    /// that ended, if one did.
    pub fn poll(&mut self) -> Option<LoadSample> {
        let now = SystemTime::now();
        let all = self.dir.all();
        for &ns in &all {
            match self.refresh(ns, now) {
                Ok(s) => {
                    if let Some(load) = &mut self.load {
                        let listeners: Vec<Listener> = s.listeners.iter().map(|l| l.listener.clone()).collect();
                        load.add(now, ns, s.counters, &listeners);
                    }
                }
                Err(e) => debug!("polling netns {ns}: {e}"),
            }
        }
        self.prune(now);
        let load = self.load.as_mut()?;
        load.retain(&all);
        load.take_due(now)
    }

    /// A file that refers to the namespace, for a command run inside it;
    /// `None` for the daemon's own namespace (nothing to join).
    pub fn netns_path(&mut self, netns: u32) -> Result<Option<std::path::PathBuf>, String> {
        if netns::own() == Some(netns) {
            return Ok(None);
        }
        self.dir.path(netns).map(Some).map_err(|e| e.to_string())
    }

    /// The facts for a query, from a snapshot at most `max_age` old; all
    /// but the firewall rule, which the worker reads after.
    pub fn facts(&mut self, q: Query) -> Facts {
        let mut facts = Facts::default();
        let now = SystemTime::now();
        let snapshot = match self.snapshots.get(&q.netns) {
            Some((at, s)) if !q.fresh && at.elapsed() < self.max_age => Ok(s.clone()),
            _ => self.refresh(q.netns, now),
        };
        match snapshot {
            Ok(s) => {
                facts.on_port = s.listeners.iter().filter(|l| l.listener.port == q.port).cloned().collect();
                facts.sysctls = s.sysctls.clone();
            }
            Err(e) => facts.errors.push(e),
        }
        facts.elsewhere = self
            .history
            .values()
            .filter(|s| s.netns != q.netns && s.gone.is_none() && s.listener.listener.port == q.port)
            .map(|s| (s.netns, s.listener.clone()))
            .collect();
        facts.elsewhere.sort_by_key(|(ns, l)| (*ns, l.listener.address));
        facts.recent = self
            .history
            .values()
            .filter(|s| s.netns == q.netns && s.gone.is_some() && s.listener.listener.port == q.port)
            .max_by_key(|s| s.last_present)
            .cloned();
        facts
    }

    fn refresh(&mut self, netns: u32, now: SystemTime) -> Result<Arc<Snapshot>, String> {
        let (listeners, sysctls, counters) =
            netns::run_in(&mut self.dir, netns, || (listeners::dump(), sysctl::read(), load::read_counters()))
                .map_err(|e| e.to_string())?;
        let listeners = listeners.map_err(|e| format!("sock_diag in netns {netns}: {e}"))?;
        let counters = counters.map_err(|e| debug!("netns {netns}: {e}")).ok();
        let unknown: HashSet<u64> =
            listeners.iter().map(|l| l.inode as u64).filter(|i| !self.owners.contains_key(i)).collect();
        self.owners.extend(owners::find(&unknown));
        let listeners: Vec<OwnedListener> = listeners
            .into_iter()
            .map(|l| {
                let owner = self.owners.get(&(l.inode as u64)).cloned();
                OwnedListener { listener: l, owner }
            })
            .collect();
        for s in self.history.values_mut().filter(|s| s.netns == netns) {
            let present = listeners.iter().any(|l| {
                l.listener.address == s.listener.listener.address && l.listener.port == s.listener.listener.port
            });
            if !present && s.gone.is_none() {
                s.gone = Some(now);
            }
        }
        for l in &listeners {
            self.history.insert(
                (netns, l.listener.address, l.listener.port),
                Seen { netns, listener: l.clone(), last_present: now, gone: None },
            );
        }
        let snapshot = Arc::new(Snapshot { listeners, sysctls, counters });
        self.snapshots.insert(netns, (Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Forgets listeners gone longer than `history_for`, namespaces that
    /// no longer exist, and owners of sockets no longer listed; caps the
    /// history (oldest first) so that a host with churning listeners does
    /// not grow the daemon.
    fn prune(&mut self, now: SystemTime) {
        let keep_for = self.history_for;
        self.history.retain(|_, s| s.gone.is_none_or(|g| now.duration_since(g).unwrap_or_default() < keep_for));
        if self.history.len() > self.history_cap {
            let mut by_age: Vec<_> = self.history.iter().map(|(k, s)| (s.last_present, *k)).collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(self.history.len() - self.history_cap) {
                self.history.remove(k);
            }
        }
        let live: HashSet<u64> = self.history.values().map(|s| s.listener.listener.inode as u64).collect();
        self.owners.retain(|ino, _| live.contains(ino));
        let max_age = self.max_age;
        self.snapshots.retain(|_, (at, _)| at.elapsed() < max_age * 4);
    }
}
