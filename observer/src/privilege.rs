//! Checks, before anything is loaded, that the process may do what the
//! daemon needs, so that a missing capability is one clear line instead of
//! an EPERM from deep inside the loader.

use caps::{CapSet, Capability};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "missing capability {missing} (needed to {why}); run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_RESOURCE (see dist/observer.service)"
)]
pub struct MissingCapability {
    pub missing: &'static str,
    pub why: &'static str,
}

fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// The capabilities without which no hook can run.
pub fn check() -> Result<(), MissingCapability> {
    // CAP_SYS_ADMIN covers BPF and perf on every kernel, including those
    // older than 5.8 that do not know CAP_BPF.
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    if !has(Capability::CAP_BPF) {
        return Err(MissingCapability { missing: "CAP_BPF", why: "load eBPF programs and maps" });
    }
    if !has(Capability::CAP_PERFMON) {
        return Err(MissingCapability { missing: "CAP_PERFMON", why: "attach to tracepoints and read kernel memory" });
    }
    Ok(())
}
