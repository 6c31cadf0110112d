//! Loading and attaching the hooks of the table (`kernel::hook`) one by
//! one, and what is lost when one cannot run.
//!
//! A hook that does not load or attach never stops the daemon: its status
//! says why, and the rest keep reporting.

use aya::{
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use std::path::Path;

use observer_common::KernelConfig;

use crate::{
    config::CaptureConfig,
    kernel::{
        hook::{Attach, Hook, HookSpec, HookState, HookStatus, HOOKS},
        layout::KernelLayout,
    },
};

/// The eBPF object, embedded at build time by aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// The daemon's settings for the hooks, from its `[capture]` section (the
/// daemon hands them over; this stage never sees the whole configuration).
pub struct Settings<'a> {
    pub ring_buffer_bytes: u32,
    pub counter_entries: u32,
    /// Samples per second per key, and in all per CPU (the rest are counted).
    pub samples_per_sec: u32,
    pub samples_total_per_sec: u32,
    /// Hooks turned off (`capture.disable_hooks`).
    pub disabled: &'a [Hook],
}

impl<'a> Settings<'a> {
    pub fn new(capture: &CaptureConfig, disabled: &'a [Hook]) -> Settings<'a> {
        Settings {
            ring_buffer_bytes: capture.ring_buffer_bytes,
            counter_entries: capture.counter_entries,
            samples_per_sec: capture.samples_per_sec,
            samples_total_per_sec: capture.samples_total_per_sec,
            disabled,
        }
    }
}

/// Loads the object with the discovered layout and these settings, and
/// attaches every hook that can run. BTF tracepoints and fentry/fexit
/// programs are loaded against `btf` (`kernel.btf`), the file the layout's
/// offsets were read from. Fails only when the object itself cannot be
/// loaded (maps, BTF); per-hook problems are returned as statuses.
pub fn load(
    layout: &KernelLayout,
    btf: &Path,
    settings: &Settings<'_>,
) -> Result<(Ebpf, Vec<HookStatus>), aya::EbpfError> {
    let config = KernelConfig {
        samples_per_sec: settings.samples_per_sec,
        samples_total_per_sec: settings.samples_total_per_sec,
        ..layout.config
    };
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", settings.ring_buffer_bytes)
        .map_max_entries("COUNTERS", settings.counter_entries)
        .load(OBJECT)?;
    let btf_path = btf;
    // BTF tracepoints and fentry/fexit programs are loaded against the
    // kernel's BTF; without it only they fail (each hook says so).
    let btf = Btf::parse_file(btf_path, aya::Endianness::default())
        .map_err(|e| format!("reading the kernel's BTF {}: {e}", btf_path.display()));
    let mut statuses: Vec<HookStatus> = Vec::new();
    for spec in HOOKS {
        let state = if settings.disabled.contains(&spec.hook) {
            HookState::Disabled
        } else if let Some(why) = layout.unavailable.get(&spec.hook) {
            HookState::Unavailable(why.clone())
        } else if let Some(why) = layout.not_needed.get(&spec.hook) {
            HookState::NotNeeded(why.clone())
        } else if let Some(why) = fallback_not_needed(spec, &statuses) {
            HookState::NotNeeded(why)
        } else {
            match set_roles(&mut ebpf, spec, &statuses).and_then(|()| attach(&mut ebpf, spec, btf.as_ref())) {
                Ok(()) => HookState::Attached,
                Err(why) => HookState::Unavailable(why),
            }
        };
        statuses.push(HookStatus { hook: spec.hook, state });
    }
    Ok((ebpf, statuses))
}

/// Whether a primary hook still needs its fallback: it should run (not
/// turned off, not made unnecessary) and could not.
fn needs_fallback(primary: Hook, statuses: &[HookStatus]) -> bool {
    statuses.iter().find(|s| s.hook == primary).is_some_and(|s| matches!(s.state, HookState::Unavailable(_)))
}

/// Why a fallback hook stays detached: every hook it stands in for runs
/// (or is off). None for a hook that is nobody's fallback.
fn fallback_not_needed(spec: &HookSpec, statuses: &[HookStatus]) -> Option<String> {
    if spec.fallback_for.is_empty() || spec.fallback_for.iter().any(|h| needs_fallback(*h, statuses)) {
        return None;
    }
    let names: Vec<&str> = spec.fallback_for.iter().map(|h| h.name()).collect();
    Some(format!("stands in for {} where the kernel cannot run it; not needed here", names.join(" and ")))
}

/// Tells the cgroup listener program which overflows it counts: those
/// of the fentry hooks it stands in for.
fn set_roles(ebpf: &mut Ebpf, spec: &HookSpec, statuses: &[HookStatus]) -> Result<(), String> {
    if spec.hook != Hook::ListenerIngress {
        return Ok(());
    }
    let map = ebpf.map_mut("LISTENER_ROLES").ok_or("map LISTENER_ROLES is not in the eBPF object")?;
    let mut roles: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
    for (i, primary) in [Hook::TcpConnRequest, Hook::SynRecvSock].into_iter().enumerate() {
        let value = needs_fallback(primary, statuses) as u32;
        roles.set(i as u32, value, 0).map_err(|e| format!("setting the listener's roles: {e}"))?;
    }
    Ok(())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| format!("program {name} is not in the eBPF object"))?;
    p.try_into().map_err(|e| format!("{e}"))
}

fn attach(ebpf: &mut Ebpf, spec: &HookSpec, btf: Result<&Btf, &String>) -> Result<(), String> {
    match spec.attach {
        Attach::Tracepoint { category, name } => {
            let tp: &mut TracePoint = program(ebpf, spec.program)?;
            tp.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            tp.attach(category, name).map_err(|e| format!("attach {category}:{name}: {}", error_chain(&e)))?;
        }
        Attach::RawTracepoint { name } => {
            let tp: &mut RawTracePoint = program(ebpf, spec.program)?;
            tp.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            tp.attach(name).map_err(|e| format!("attach raw tracepoint {name}: {}", error_chain(&e)))?;
        }
        Attach::BtfTracepoint { name } => {
            let btf = btf.map_err(|e| e.clone())?;
            let tp: &mut BtfTracePoint = program(ebpf, spec.program)?;
            tp.load(name, btf).map_err(|e| format!("load: {}", error_chain(&e)))?;
            tp.attach().map_err(|e| format!("attach BTF tracepoint {name}: {}", error_chain(&e)))?;
        }
        Attach::FEntry(parts) => {
            let btf = btf.map_err(|e| e.clone())?;
            attach_all(ebpf, parts, |ebpf, program_name, function| {
                let p: &mut FEntry = program(ebpf, program_name)?;
                p.load(function, btf).map_err(|e| format!("load fentry {function}: {}", error_chain(&e)))?;
                let link = p.attach().map_err(|e| format!("attach fentry {function}: {}", error_chain(&e)))?;
                Ok(Detach::FEntry(link))
            })?;
        }
        Attach::CgroupIngress => {
            let prog: &mut CgroupSkb = program(ebpf, spec.program)?;
            prog.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            let root = crate::kernel::cgroup_root();
            let cgroup =
                std::fs::File::open(&root).map_err(|e| format!("open cgroup v2 root {}: {e}", root.display()))?;
            // Single: AllowMultiple through bpf_link returns EINVAL on the
            // kernels this was built on.
            prog.attach(&cgroup, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map_err(|e| format!("attach to {}: {}", root.display(), error_chain(&e)))?;
        }
        Attach::FExit(parts) => {
            let btf = btf.map_err(|e| e.clone())?;
            attach_all(ebpf, parts, |ebpf, program_name, function| {
                let p: &mut FExit = program(ebpf, program_name)?;
                p.load(function, btf).map_err(|e| format!("load fexit {function}: {}", error_chain(&e)))?;
                let link = p.attach().map_err(|e| format!("attach fexit {function}: {}", error_chain(&e)))?;
                Ok(Detach::FExit(link))
            })?;
        }
    }
    Ok(())
}

/// An attached part of a hook, to take down again if a later part fails.
enum Detach {
    FEntry(aya::programs::fentry::FEntryLinkId),
    FExit(aya::programs::fexit::FExitLinkId),
}

/// Attaches every `(program, function)`; if one fails, detaches those
/// already attached and returns why.
fn attach_all(
    ebpf: &mut Ebpf,
    parts: &[(&'static str, &'static str)],
    mut one: impl FnMut(&mut Ebpf, &str, &str) -> Result<Detach, String>,
) -> Result<(), String> {
    let mut attached = Vec::new();
    for &(program_name, function) in parts {
        match one(ebpf, program_name, function) {
            Ok(link) => attached.push((program_name, link)),
            Err(why) => {
                for (name, link) in attached {
                    let _ = match link {
                        Detach::FEntry(l) => program::<FEntry>(ebpf, name).map(|p| p.detach(l).is_ok()),
                        Detach::FExit(l) => program::<FExit>(ebpf, name).map(|p| p.detach(l).is_ok()),
                    };
                }
                return Err(why);
            }
        }
    }
    Ok(())
}

/// An error with its sources on one line (verifier logs cut to their end).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        let tail: String =
            text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / ");
        s.push_str(": ");
        s.push_str(&tail);
        src = inner.source();
    }
    s
}
