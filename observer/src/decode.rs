//! Decode stage: ring-buffer bytes -> `FailureEvent`.
//!
//! Length, action and family are checked before anything is read; a record
//! that fails is counted by kind and dropped, never a panic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use observer_common::{
    record::{flags, inferred, RecordError, AF_INET},
    Action, FailureRecord,
};
use thiserror::Error;

use crate::{
    event::{Direction, Endpoint, FailureEvent, ListenerQueue, Process, Stage},
    kernel::layout::NameTables,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed record: {0}")]
    Record(#[from] RecordError),
}

/// Converts the programs' CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Clock { epoch: SystemTime::now() - mono }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(mono_ns)
    }
}

pub struct Decoder {
    clock: Clock,
    names: NameTables,
}

fn ip(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn lookup(table: &std::collections::HashMap<u64, String>, value: u32) -> String {
    table.get(&(value as u64)).cloned().unwrap_or_else(|| format!("UNKNOWN_{value}"))
}

impl Decoder {
    pub fn new(clock: Clock, names: NameTables) -> Decoder {
        Decoder { clock, names }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<FailureEvent, DecodeError> {
        let rec = FailureRecord::try_from(bytes)?;
        Ok(self.event(&rec))
    }

    fn reason(&self, action: Action, rec: &FailureRecord) -> Option<String> {
        if rec.flags & flags::REASON_INFERRED != 0 {
            return inferred::name(rec.reason).map(str::to_owned);
        }
        if rec.flags & flags::REASON_DROP != 0 {
            return Some(lookup(&self.names.drop_reasons, rec.reason));
        }
        match action {
            // Before 6.10 tcp_send_reset names no reason (and has no table).
            Action::Refused | Action::ResetSent if self.names.rst_reasons.is_empty() => None,
            Action::Refused | Action::ResetSent => Some(lookup(&self.names.rst_reasons, rec.reason)),
            Action::FirewallDrop | Action::FirewallReject => Some(lookup(&self.names.drop_reasons, rec.reason)),
            Action::ListenOverflow if rec.flags & flags::SYN_STAGE == 0 => {
                Some(lookup(&self.names.drop_reasons, rec.reason))
            }
            Action::ConnectFailed => Some(errno_name(rec.reason)),
            _ => None,
        }
    }

    pub fn event(&self, rec: &FailureRecord) -> FailureEvent {
        // try_from validated the action already; Refused is never reached.
        let action = Action::try_from(rec.action).unwrap_or(Action::Refused);
        let when = self.clock.wall(rec.ts_ns);
        let tcp_state = (rec.state != 0).then(|| {
            self.names.tcp_states.get(&(rec.state as u64)).cloned().unwrap_or_else(|| format!("STATE_{}", rec.state))
        });
        let stage = (action == Action::ListenOverflow).then_some(if rec.flags & flags::SYN_STAGE != 0 {
            Stage::Syn
        } else {
            Stage::Ack
        });
        let direction = if rec.flags & flags::OUTBOUND != 0 { Direction::Outbound } else { Direction::Inbound };
        let mut e = FailureEvent::new(
            when,
            action,
            rec.count as u64,
            rec.netns,
            direction,
            Endpoint { ip: ip(rec.family, rec.src_addr), port: rec.src_port },
            Endpoint { ip: ip(rec.family, rec.dst_addr), port: rec.dst_port },
        );
        e.observer.reason = self.reason(action, rec);
        e.observer.tcp_state = tcp_state;
        e.observer.stage = stage;
        e.observer.listener = (rec.flags & flags::HAS_LISTENER != 0)
            .then_some(ListenerQueue { backlog: rec.backlog, queue_len: rec.queue_len });
        e.process = (rec.flags & flags::HAS_PROCESS != 0).then(|| Process { pid: rec.pid, name: comm(&rec.comm) });
        e
    }
}

/// `ECONNREFUSED` for 111, from the C library's own table.
pub fn errno_name(value: u32) -> String {
    let e = nix::errno::Errno::from_raw(value as i32);
    if e == nix::errno::Errno::UnknownErrno {
        format!("ERRNO_{value}")
    } else {
        format!("{e:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::record::AF_INET6;

    fn decoder() -> Decoder {
        let mut names = NameTables::default();
        names.rst_reasons.insert(1, "NO_SOCKET".into());
        names.tcp_states.insert(1, "TCP_ESTABLISHED".into());
        Decoder::new(Clock::now(), names)
    }

    fn refused() -> FailureRecord {
        let mut r = FailureRecord::zeroed();
        r.action = Action::Refused as u8;
        r.family = AF_INET;
        r.count = 1;
        r.netns = 4026531840;
        r.reason = 1;
        r.src_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.dst_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r.src_port = 40000;
        r.dst_port = 8080;
        r
    }

    #[test]
    fn decodes_a_refused_record() {
        let e = decoder().decode(refused().as_bytes()).unwrap();
        assert_eq!(e.event.action, Action::Refused);
        assert_eq!(e.event.count, 1);
        assert_eq!(e.source, Endpoint { ip: "127.0.0.1".parse().unwrap(), port: 40000 });
        assert_eq!(e.destination, Endpoint { ip: "127.0.0.2".parse().unwrap(), port: 8080 });
        assert_eq!(e.network.kind, crate::event::Family::Ipv4);
        assert_eq!(e.observer.netns, 4026531840);
        assert_eq!(e.observer.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(e.observer.tcp_state, None);
        assert!(e.process.is_none());
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"]["action"], "refused");
        assert_eq!(json["event"]["dataset"], "observer.failure");
        assert_eq!(json["destination"]["port"], 8080);
        assert!(json["@timestamp"].as_str().unwrap().ends_with('Z'));
        // Written to the microsecond: what reads back is the same record.
        let back: FailureEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }

    #[test]
    fn decodes_ipv6_and_unknown_reason() {
        let mut r = refused();
        r.family = AF_INET6;
        r.src_addr = Ipv6Addr::LOCALHOST.octets();
        r.reason = 999;
        let e = decoder().decode(r.as_bytes()).unwrap();
        assert_eq!(e.source.ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(e.network.kind, crate::event::Family::Ipv6);
        assert_eq!(e.observer.reason.as_deref(), Some("UNKNOWN_999"));
    }

    #[test]
    fn short_long_and_empty_records_are_rejected() {
        let d = decoder();
        let bytes = refused();
        let bytes = bytes.as_bytes();
        for len in [0, 1, FailureRecord::SIZE - 1] {
            assert_eq!(
                d.decode(&bytes[..len]),
                Err(DecodeError::Record(RecordError::Length { got: len, expected: FailureRecord::SIZE }))
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(d.decode(&long), Err(DecodeError::Record(RecordError::Length { .. }))));
    }

    #[test]
    fn bad_action_family_and_count_are_rejected() {
        let d = decoder();
        let mut r = refused();
        r.action = 0;
        assert_eq!(d.decode(r.as_bytes()), Err(DecodeError::Record(RecordError::Action(0))));
        r.action = 200;
        assert_eq!(d.decode(r.as_bytes()), Err(DecodeError::Record(RecordError::Action(200))));
        let mut r = refused();
        r.family = 7;
        assert_eq!(d.decode(r.as_bytes()), Err(DecodeError::Record(RecordError::Family(7))));
        let mut r = refused();
        r.count = 0;
        assert_eq!(d.decode(r.as_bytes()), Err(DecodeError::Record(RecordError::ZeroCount)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let d = decoder();
        // A cheap deterministic fuzz: every length up to 2 records, every
        // byte pattern from a xorshift stream.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..(2 * FailureRecord::SIZE) {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = d.decode(&buf);
        }
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(113), "EHOSTUNREACH");
        assert_eq!(errno_name(101), "ENETUNREACH");
        assert_eq!(errno_name(99999), "ERRNO_99999");
    }
}
