//! `observer doctor`: what this kernel offers and which hooks would run.
//!
//! It does what `run` does up to attaching (so the answer is the real one,
//! verifier included), prints the table, and detaches again.

use serde::Serialize;

use crate::{
    config::Config,
    hooks,
    kernel::{
        hook::{parse_disabled, Hook, HookState, HookStatus, HOOKS},
        layout::KernelLayout,
        sources::Source,
        tracefs::Tracefs,
    },
    privilege,
};

#[derive(Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: String,
    pub tracefs: String,
    pub privileges: String,
    pub hooks: Vec<HookStatus>,
    /// Per failure: the source in use on this kernel, or what is lost.
    pub failures: Vec<FailureSource>,
    /// The daemon that last ran with this runtime directory, and what it lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonHealth>,
}

#[derive(Serialize)]
pub struct DaemonHealth {
    pub pid: u32,
    pub running: bool,
    pub started: String,
    pub updated: String,
    /// One sentence per kind of loss since it started; empty: none.
    pub losses: Vec<String>,
}

#[derive(Serialize)]
pub struct FailureSource {
    #[serde(with = "crate::event::action_name")]
    pub action: observer_common::Action,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub case: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'static str>,
    /// Why it is not seen here; absent when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub fn report(config: &Config) -> Report {
    let tracefs = Tracefs::new(&config.kernel.tracefs);
    let tracefs_state = match tracefs.ensure_mounted() {
        Ok(true) => format!("{} (mounted now)", tracefs.root().display()),
        Ok(false) if tracefs.root().join("events").is_dir() => format!("{}", tracefs.root().display()),
        Ok(false) => format!("{}: no events directory", tracefs.root().display()),
        Err(e) => e.to_string(),
    };
    let layout = KernelLayout::discover(&tracefs, &config.kernel.btf, &config.kernel.kallsyms);
    let privileges = match privilege::check() {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let hooks = if privileges == "ok" {
        // A name the daemon would refuse is reported by `observer run`;
        // here the valid ones are taken.
        let disabled = parse_disabled(&config.capture.disable_hooks).unwrap_or_default();
        match hooks::load(&layout, &config.kernel.btf, &hooks::Settings::new(&config.capture, &disabled)) {
            Ok((_ebpf, statuses)) => statuses,
            Err(e) => all_unavailable(&format!("eBPF object did not load: {}", hooks::error_chain(&e))),
        }
    } else {
        all_unavailable(&privileges)
    };
    let failures = layout
        .coverage
        .iter()
        .map(|c| {
            let lost = c.lost_because(&hooks);
            let source = c.source.as_ref().ok().copied().filter(|_| lost.is_none());
            FailureSource { action: c.action, case: c.case, source, description: source.map(Source::describe), lost }
        })
        .collect();
    Report {
        kernel: kernel_release(),
        btf: match &layout.btf {
            Ok(()) => format!("{}", config.kernel.btf.display()),
            Err(e) => e.clone(),
        },
        tracefs: tracefs_state,
        privileges,
        hooks,
        failures,
        daemon: crate::health::read(&config.daemon.runtime_dir).map(|(status, running)| DaemonHealth {
            pid: status.pid,
            running,
            losses: crate::health::losses(&status),
            started: status.started,
            updated: status.updated,
        }),
    }
}

fn all_unavailable(why: &str) -> Vec<HookStatus> {
    HOOKS.iter().map(|s| HookStatus { hook: s.hook, state: HookState::Unavailable(why.to_owned()) }).collect()
}

/// The attached fallback hook that stands in for `hook`, if any.
fn stand_in(hook: Hook, statuses: &[HookStatus]) -> Option<Hook> {
    HOOKS
        .iter()
        .filter(|spec| spec.fallback_for.contains(&hook))
        .find(|spec| statuses.iter().any(|s| s.hook == spec.hook && s.attached()))
        .map(|spec| spec.hook)
}

pub fn print(report: &Report) {
    println!("kernel       {}", report.kernel);
    println!("BTF          {}", report.btf);
    println!("tracefs      {}", report.tracefs);
    println!("privileges   {}", report.privileges);
    println!();
    println!("{:<24} {:<12} SEES / WHY NOT", "HOOK", "STATUS");
    for s in &report.hooks {
        let spec = s.hook.spec();
        let actions = spec.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ");
        match &s.state {
            HookState::Attached => println!("{:<24} {:<12} {}", s.hook.name(), "ok", actions),
            HookState::Disabled => println!("{:<24} {:<12} not seen: {}", s.hook.name(), "disabled", spec.loses),
            HookState::NotNeeded(why) => println!("{:<24} {:<12} {why}", s.hook.name(), "not needed"),
            HookState::Unavailable(why) => {
                println!("{:<24} {:<12} {why}", s.hook.name(), "unavailable");
                match stand_in(s.hook, &report.hooks) {
                    Some(f) => println!("{:<24} {:<12} {f} stands in (it costs every packet)", "", ""),
                    None => println!("{:<24} {:<12} not seen: {}", "", "", spec.loses),
                }
            }
        }
    }
    println!();
    println!("{:<58} SOURCE ON THIS KERNEL / WHY NOT SEEN", "FAILURE");
    for f in &report.failures {
        let label = if f.case.is_empty() {
            f.action.as_str().to_owned()
        } else {
            format!("{} ({})", f.action.as_str(), f.case)
        };
        match (&f.description, &f.lost) {
            (Some(d), _) => println!("{label:<58} {d}"),
            (None, Some(why)) => println!("{label:<58} NOT SEEN: {why}"),
            (None, None) => println!("{label:<58} NOT SEEN"),
        }
    }
    // A hook is degraded when what it sees is lost: not when a fallback
    // stands in for it, nor when another source makes it unnecessary.
    let degraded = report
        .hooks
        .iter()
        .filter(|s| match s.state {
            HookState::Attached | HookState::NotNeeded(_) => false,
            HookState::Unavailable(_) => stand_in(s.hook, &report.hooks).is_none(),
            HookState::Disabled => true,
        })
        .count();
    let lost = report.failures.iter().filter(|f| f.lost.is_some()).count();
    println!();
    if lost == 0 {
        println!("every failure kind is seen on this kernel");
    } else {
        println!("{lost} of {} failure cases not seen on this kernel", report.failures.len());
    }
    if degraded == 0 {
        println!("all {} hooks work on this kernel", report.hooks.len());
    } else {
        println!("{degraded} of {} hooks degraded", report.hooks.len());
    }
    println!();
    match &report.daemon {
        None => println!("daemon       no status file: not running, or another --runtime-dir"),
        Some(d) => {
            let state = if d.running { "running" } else { "not running" };
            println!("daemon       pid {} {state}, started {}, status of {}", d.pid, d.started, d.updated);
            if d.losses.is_empty() {
                println!("losses       none");
            }
            for (i, loss) in d.losses.iter().enumerate() {
                println!("{:<12} {loss}", if i == 0 { "losses" } else { "" });
            }
        }
    }
}
