//! Sinks: where events and diagnoses leave the daemon.

pub mod ndjson;
