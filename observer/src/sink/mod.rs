//! Sinks: where events and diagnoses leave the daemon.

pub mod chat;
pub mod delivery;
pub mod email;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod metrics;
pub mod ndjson;
pub mod otlp;
pub mod outputs;
pub mod syslog;
pub mod webhook;

use serde::Serialize;

use crate::{diagnose::record::DiagnosisRecord, event::FailureEvent};

/// One line of output: the contract's two record types share the log and
/// are told apart by `event.dataset`.
///
/// Failures are the hot path and stay inline (boxing would allocate once per
/// event); diagnoses are rare and large, so they are boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Record {
    Failure(FailureEvent),
    Diagnosis(Box<DiagnosisRecord>),
}

/// The kernel's host name, for receivers that serve many hosts (the
/// webhook's `host.name`, OTLP's resource); empty when unreadable.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}
