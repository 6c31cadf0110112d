//! Sinks: where events and diagnoses leave the daemon.

pub mod metrics;
pub mod ndjson;
pub mod outputs;
pub mod syslog;
pub mod webhook;

use serde::Serialize;

use crate::{diagnose::record::DiagnosisRecord, event::FailureEvent};

/// One line of output: the contract's two record types share the log and
/// are told apart by `event.dataset`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Record {
    Failure(FailureEvent),
    Diagnosis(Box<DiagnosisRecord>),
}
