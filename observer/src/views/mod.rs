//! What the CLI shows: `summary`, `events`, `why` and `report` read the
//! daemon's history (and, for `why`, the live system). Readable by members
//! of the observer group without root.

pub mod events;
pub mod report;
pub mod summary;
pub mod why;

use std::time::{Duration, SystemTime};

use observer_common::Action;

use crate::diagnose::record::Kind;

/// `--since` values: `90s`, `15m`, `1h`, `2d`.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("--since {s:?}: {e} (use e.g. 15m, 1h, 2d)"))
}

/// A sparkline of counts: one character per interval, scaled to the
/// largest, blank where nothing happened so that quiet periods stand out.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&c| {
            if c == 0 || max == 0 {
                ' '
            } else {
                let n = BARS.len() as u64;
                BARS[((c * n).div_ceil(max) - 1).min(n - 1) as usize]
            }
        })
        .collect()
}

/// A timestamp for a table: time of day when it is today (UTC), else the date too.
pub fn short_time(t: SystemTime, now: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(t).to_string();
    let rfc3339 = rfc3339.as_str();
    let today = humantime::format_rfc3339_seconds(now).to_string();
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(day), Some(time)) if today.starts_with(day) => time.to_owned(),
        (Some(day), Some(time)) => format!("{day} {}", &time[..5]),
        _ => rfc3339.to_owned(),
    }
}

/// The failure actions that make up a diagnosis kind (for its activity).
pub fn actions_of(kind: Kind) -> &'static [Action] {
    match kind {
        Kind::NoListener | Kind::ListenerAddressMismatch => &[Action::Refused],
        Kind::AcceptQueueFull => &[Action::ListenOverflow],
        Kind::SynFlood => &[Action::SynQueueOverflow],
        Kind::FirewallDrop => &[Action::FirewallDrop],
        Kind::FirewallReject => &[Action::FirewallReject],
        Kind::ServerReset => &[Action::ResetSent],
        Kind::HandshakeIncomplete => &[Action::SynackRetransmit],
        Kind::OutboundRefused | Kind::OutboundTimeout | Kind::OutboundUnreachable => &[Action::ConnectFailed],
        Kind::PortScan => &[Action::Refused, Action::FirewallDrop, Action::FirewallReject],
    }
}

/// Cuts a string to `n` characters for a table column.
pub fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_peak_and_leaves_quiet_intervals_blank() {
        assert_eq!(sparkline(&[0, 1, 8, 4, 0]), " ▁█▄ ");
        assert_eq!(sparkline(&[0, 0]), "  ");
        assert_eq!(sparkline(&[5]), "█");
    }

    #[test]
    fn since_accepts_human_durations() {
        assert_eq!(parse_since("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_since("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_since("soon").unwrap_err().contains("--since"));
    }

    #[test]
    fn short_time_drops_the_date_for_today() {
        let now = humantime::parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        let at = |t| humantime::parse_rfc3339(t).unwrap();
        assert_eq!(short_time(at("2026-11-21T09:08:07Z"), now), "09:08:07");
        assert_eq!(short_time(at("2026-11-20T09:08:07Z"), now), "2026-11-20 09:08");
    }
}
