//! `observer doctor`: what this kernel offers and which hooks would run.
//!
//! It does what `run` does up to attaching (so the answer is the real one,
//! verifier included), prints the table, and detaches again.

use std::path::Path;

use serde::Serialize;

use crate::{
    config::Config,
    daemon::cgroup_root,
    hooks::{self, HookState, HookStatus},
    kernel::{layout::KernelLayout, tracefs::Tracefs},
    privilege,
};

#[derive(Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: String,
    pub tracefs: String,
    pub cgroup_v2_root: String,
    pub privileges: String,
    pub hooks: Vec<HookStatus>,
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
    let layout = KernelLayout::discover(&tracefs, &config.kernel.btf, config.capture.samples_per_sec);
    let cgroup = cgroup_root(config);
    let privileges = match privilege::check() {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let hooks = if privileges == "ok" {
        match hooks::load_configured(config, &layout) {
            Ok((_ebpf, statuses)) => statuses,
            Err(e) => all_unavailable(&format!("eBPF object did not load: {}", hooks::error_chain(&e))),
        }
    } else {
        all_unavailable(&privileges)
    };
    Report {
        kernel: kernel_release(),
        btf: match &layout.btf {
            Ok(()) => format!("{}", config.kernel.btf.display()),
            Err(e) => e.clone(),
        },
        tracefs: tracefs_state,
        cgroup_v2_root: if Path::new(&cgroup).join("cgroup.controllers").exists() {
            cgroup.display().to_string()
        } else {
            format!("{}: not a cgroup v2 mount", cgroup.display())
        },
        privileges,
        hooks,
    }
}

fn all_unavailable(why: &str) -> Vec<HookStatus> {
    hooks::HOOKS.iter().map(|s| HookStatus { hook: s.hook, state: HookState::Unavailable(why.to_owned()) }).collect()
}

pub fn print(report: &Report) {
    println!("kernel       {}", report.kernel);
    println!("BTF          {}", report.btf);
    println!("tracefs      {}", report.tracefs);
    println!("cgroup v2    {}", report.cgroup_v2_root);
    println!("privileges   {}", report.privileges);
    println!();
    println!("{:<24} {:<12} SEES / WHY NOT", "HOOK", "STATUS");
    for s in &report.hooks {
        let spec = s.hook.spec();
        let actions = spec.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ");
        match &s.state {
            HookState::Attached => println!("{:<24} {:<12} {}", s.hook.name(), "ok", actions),
            HookState::Disabled => println!("{:<24} {:<12} not seen: {}", s.hook.name(), "disabled", spec.loses),
            HookState::Unavailable(why) => {
                println!("{:<24} {:<12} {why}", s.hook.name(), "unavailable");
                println!("{:<24} {:<12} not seen: {}", "", "", spec.loses);
            }
        }
    }
    let degraded = report.hooks.iter().filter(|s| !s.attached()).count();
    println!();
    if degraded == 0 {
        println!("all {} hooks work on this kernel", report.hooks.len());
    } else {
        println!("{degraded} of {} hooks degraded", report.hooks.len());
    }
}
