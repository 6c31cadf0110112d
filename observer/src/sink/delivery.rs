//! What the alert channels (webhook, e-mail) share: the sliding-window
//! rate limit with its summary of what it held back, and delivery with
//! retries, exponential backoff and jitter. Each channel says what one
//! attempt is and how its failures split into retried and final; the
//! counting and the warnings are the same for all.

use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    sync::atomic::AtomicU64,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use super::outputs::{OutputStats, WarnLimiter};
use crate::diagnose::record::{DiagnosisRecord, Status};

/// At most `max` events in any `period`.
pub struct RateLimit {
    pub max: usize,
    period: Duration,
    sent: VecDeque<Instant>,
}

impl RateLimit {
    pub fn new(max: usize, period: Duration) -> RateLimit {
        RateLimit { max, period, sent: VecDeque::new() }
    }

    fn has_room(&mut self, now: Instant) -> bool {
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= self.period) {
            self.sent.pop_front();
        }
        self.sent.len() < self.max
    }

    pub fn admit(&mut self, now: Instant) -> bool {
        let ok = self.has_room(now);
        if ok {
            self.sent.push_back(now);
        }
        ok
    }
}

/// Alerts the rate limit held back, by kind, for the summary.
#[derive(Default)]
pub struct Suppressed {
    pub since: Option<SystemTime>,
    pub by_kind: BTreeMap<String, u64>,
}

impl Suppressed {
    pub fn count(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn add(&mut self, d: &DiagnosisRecord) {
        self.since.get_or_insert_with(SystemTime::now);
        *self.by_kind.entry(d.diagnosis.kind.as_str().to_owned()).or_default() += 1;
    }

    /// `observer on HOST: N more alerts held back by the rate limit (M per
    /// minute) since T: KIND n, ...`, the line every channel's summary carries.
    pub fn message(&self, host: &str, per_minute: usize) -> String {
        let kinds: Vec<String> = self.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "observer on {host}: {} more alerts held back by the rate limit ({per_minute} per minute) since {}: {}",
            self.count(),
            self.since_rfc3339(),
            kinds.join(", ")
        )
    }

    pub fn since_rfc3339(&self) -> String {
        humantime::format_rfc3339_micros(self.since.unwrap_or_else(SystemTime::now)).to_string()
    }
}

/// What a diagnosis's status did, as a verb for subjects and headings.
pub fn verb(status: Status) -> &'static str {
    match status {
        Status::Open => "opened",
        Status::Ongoing => "ongoing",
        Status::Escalated => "escalated",
        Status::Resolved => "resolved",
    }
}

/// The endpoint a diagnosis is about, for people: `10.0.0.1:8080 (inbound,
/// netns 4026531840)` (IPv6 in brackets).
pub fn endpoint(d: &DiagnosisRecord) -> String {
    let addr = std::net::SocketAddr::new(d.destination.ip, d.destination.port);
    format!("{addr} ({}, netns {})", d.observer.direction.as_str(), d.observer.netns)
}

/// The command that shows the rest on the host: `observer why PORT`, with
/// `--netns` when the diagnosis is about another namespace than the
/// daemon's own (`own`).
pub fn why_command(d: &DiagnosisRecord, own: Option<u32>) -> String {
    if own == Some(d.observer.netns) {
        format!("observer why {}", d.destination.port)
    } else {
        format!("observer why {} --netns {}", d.destination.port, d.observer.netns)
    }
}

/// The outcome of one attempt at delivering.
pub enum Attempt {
    Delivered,
    /// Worth another try (after the receiver's own delay, if it gave one).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Resending the same thing will not help.
    Final(String),
}

/// The retry policy of a channel.
pub struct Backoff {
    pub max_retries: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn from_millis(max_retries: u32, first_ms: u64, max_ms: u64) -> Backoff {
        Backoff { max_retries, first: Duration::from_millis(first_ms), max: Duration::from_millis(max_ms) }
    }
}

/// An alert channel's sender task: what it does with one alert, and with
/// what its rate limit held back.
pub trait Channel {
    fn alert(&mut self, d: Box<DiagnosisRecord>) -> impl Future<Output = ()> + Send;
    /// Sends the summary of the held-back alerts, if any and if the rate
    /// limit has room.
    fn summarize(&mut self) -> impl Future<Output = ()> + Send;
}

/// Takes the channel's queue until it closes, trying the summary every
/// second, and once more at the end.
pub async fn run<C: Channel>(mut channel: C, mut rx: mpsc::Receiver<Box<DiagnosisRecord>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(d) => channel.alert(d).await,
                None => break,
            },
            _ = tick.tick() => channel.summarize().await,
        }
    }
    channel.summarize().await;
}

/// A channel's counters in `OutputStats`.
pub struct Counters<'a> {
    pub sent: &'a AtomicU64,
    pub failed: &'a AtomicU64,
    pub retries: &'a AtomicU64,
}

/// Runs `attempt` until it delivers, fails for good, or the retries are
/// used up; counts the outcome and warns (rate-limited) on failures.
/// `what` names the thing delivered in the warnings ("an alert").
pub async fn deliver<F, Fut>(
    policy: &Backoff,
    counters: &Counters<'_>,
    warn: &mut WarnLimiter,
    what: &str,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut delay = policy.first;
    let mut retries = 0;
    loop {
        match attempt().await {
            Attempt::Delivered => {
                OutputStats::inc(counters.sent);
                return;
            }
            Attempt::Final(why) => {
                OutputStats::inc(counters.failed);
                warn.warn(format_args!("{why}; {what} is dropped"));
                return;
            }
            Attempt::Retry { after, why } => {
                if retries == policy.max_retries {
                    OutputStats::inc(counters.failed);
                    warn.warn(format_args!("{why}; giving up on {what} after {} attempts", retries + 1));
                    return;
                }
                warn.warn(format_args!("{why}; retrying"));
                retries += 1;
                OutputStats::inc(counters.retries);
                // The receiver's own delay is taken as is; ours gets jitter.
                let wait = after.map_or_else(|| jitter(delay), |a| a.min(policy.max));
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(policy.max);
            }
        }
    }
}

/// Up to a quarter less than `d`, so that hosts alerting the same
/// receiver after an outage do not retry in lockstep.
pub fn jitter(d: Duration) -> Duration {
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0)
        ^ std::process::id();
    let quarter = d.as_millis() as u64 / 4;
    if quarter == 0 {
        return d;
    }
    d.saturating_sub(Duration::from_millis(u64::from(seed) % quarter))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use super::*;

    #[test]
    fn rate_limit_is_a_sliding_window() {
        let mut r = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.admit(t0));
        assert!(r.admit(t0 + Duration::from_secs(10)));
        assert!(!r.admit(t0 + Duration::from_secs(59)));
        assert!(r.admit(t0 + Duration::from_secs(60)));
        assert!(!r.admit(t0 + Duration::from_secs(61)));
        assert!(r.admit(t0 + Duration::from_secs(70)));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for ms in [0, 3, 100, 1000] {
            let d = Duration::from_millis(ms);
            let j = jitter(d);
            assert!(j <= d && j >= d - d / 4, "{ms}: {j:?}");
        }
    }

    async fn run(outcomes: Vec<Attempt>) -> (OutputStats, u32) {
        let stats = OutputStats::default();
        let calls = Arc::new(AtomicU32::new(0));
        let outcomes = std::sync::Mutex::new(outcomes.into_iter());
        let policy = Backoff { max_retries: 2, first: Duration::from_millis(1), max: Duration::from_millis(2) };
        let counters = Counters { sent: &stats.email_sent, failed: &stats.email_failed, retries: &stats.email_retries };
        let mut warn = WarnLimiter::new("test", Duration::from_secs(60));
        deliver(&policy, &counters, &mut warn, "a test", || {
            calls.fetch_add(1, Ordering::Relaxed);
            let next = outcomes.lock().unwrap().next().unwrap_or(Attempt::Delivered);
            async move { next }
        })
        .await;
        let n = calls.load(Ordering::Relaxed);
        (stats, n)
    }

    fn retry() -> Attempt {
        Attempt::Retry { after: None, why: "busy".into() }
    }

    #[tokio::test]
    async fn retries_until_delivered_or_used_up_and_stops_at_a_final_failure() {
        let (s, calls) = run(vec![retry(), retry()]).await;
        assert_eq!((calls, OutputStats::get(&s.email_sent), OutputStats::get(&s.email_retries)), (3, 1, 2));
        let (s, calls) = run(vec![retry(), retry(), retry()]).await;
        assert_eq!((calls, OutputStats::get(&s.email_failed), OutputStats::get(&s.email_retries)), (3, 1, 2));
        let (s, calls) = run(vec![retry(), Attempt::Final("550".into())]).await;
        assert_eq!((calls, OutputStats::get(&s.email_failed), OutputStats::get(&s.email_sent)), (2, 1, 0));
    }
}
