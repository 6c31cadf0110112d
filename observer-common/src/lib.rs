//! Wire types shared by the kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit
//! padding, so the byte layout is the same on both sides of the ring buffer
//! and the userspace decoder can check a record's length before reading it.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod action;
pub mod config;
pub mod counter;
pub mod record;

pub use action::Action;
pub use config::KernelConfig;
pub use counter::{CountKey, LossSlot};
pub use record::FailureRecord;
