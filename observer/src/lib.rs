//! The connection-failure observer: daemon and CLI.
//!
//! One module per stage of the data flow (docs/design.md, section 3):
//! `kernel` (what the running kernel provides) -> `hooks` (load/attach) ->
//! `capture` (ring buffer) -> `decode` (wire record -> `event`) -> `enrich` +
//! `diagnose` (sliding windows -> diagnosis records) -> `sink`.

pub mod capture;
pub mod cli;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod decode;
pub mod diagnose;
pub mod doctor;
pub mod enrich;
pub mod event;
pub mod health;
pub mod history;
pub mod hooks;
pub mod instance;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod privilege;
pub mod sink;
pub mod stats;
pub mod views;
