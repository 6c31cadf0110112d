//! The kernel hooks: what each one sees, loading and attaching them one by
//! one, and what is lost when one cannot run.
//!
//! A hook that does not load or attach never stops the daemon: its status
//! says why, and the rest keep reporting.

use std::{fmt, path::Path};

use aya::{
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TracePoint},
    Ebpf, EbpfLoader,
};
use observer_common::{Action, KernelConfig};
use serde::Serialize;

/// Every hook the programs provide. The order is the doctor table's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    TcpSendReset,
    TcpReceiveReset,
    TcpRetransmitSynack,
    InetSockSetState,
    SysConnect,
    KfreeSkb,
    NetDevQueue,
    ListenerIngress,
}

pub enum Attach {
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// Several programs that only work together: each `(program, category,
    /// name)` is attached, and if one fails, those already attached are
    /// detached again.
    Tracepoints(&'static [(&'static str, &'static str, &'static str)]),
    /// cgroup_skb ingress on the cgroup v2 root.
    CgroupIngress,
}

pub struct HookSpec {
    pub hook: Hook,
    /// The hook's name (doctor, configuration); for a single-program hook
    /// also the program's (function's) name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    pub actions: &'static [Action],
    /// What an admin cannot see while this hook is down.
    pub loses: &'static str,
}

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        hook: Hook::TcpSendReset,
        program: "tcp_send_reset",
        attach: Attach::Tracepoint { category: "tcp", name: "tcp_send_reset" },
        actions: &[Action::Refused, Action::ResetSent],
        loses: "resets this host sends on open connections (and refused connections where it is their source)",
    },
    HookSpec {
        hook: Hook::TcpReceiveReset,
        program: "tcp_receive_reset",
        attach: Attach::Tracepoint { category: "tcp", name: "tcp_receive_reset" },
        actions: &[Action::ResetReceived],
        loses: "resets received from peers",
    },
    HookSpec {
        hook: Hook::TcpRetransmitSynack,
        program: "tcp_retransmit_synack",
        attach: Attach::Tracepoint { category: "tcp", name: "tcp_retransmit_synack" },
        actions: &[Action::SynackRetransmit],
        loses: "handshakes whose final ACK never arrives",
    },
    HookSpec {
        hook: Hook::InetSockSetState,
        program: "inet_sock_set_state",
        attach: Attach::Tracepoint { category: "sock", name: "inet_sock_set_state" },
        actions: &[Action::ConnectFailed],
        loses: "outbound connect() failures and the connecting process",
    },
    HookSpec {
        hook: Hook::SysConnect,
        program: "sys_connect",
        attach: Attach::Tracepoints(&[
            ("sys_enter_connect", "syscalls", "sys_enter_connect"),
            ("sys_exit_connect", "syscalls", "sys_exit_connect"),
        ]),
        actions: &[Action::ConnectFailed],
        loses: "connect() calls that fail inside the syscall: no route (ENETUNREACH), no local port, policy refusals",
    },
    HookSpec {
        hook: Hook::KfreeSkb,
        program: "kfree_skb",
        attach: Attach::Tracepoint { category: "skb", name: "kfree_skb" },
        actions: &[Action::FirewallDrop, Action::FirewallReject, Action::ListenOverflow],
        loses: "firewall drops/rejects of SYNs and accept-queue overflows at the final ACK",
    },
    HookSpec {
        hook: Hook::NetDevQueue,
        program: "net_dev_queue",
        attach: Attach::Tracepoint { category: "net", name: "net_dev_queue" },
        actions: &[Action::FirewallReject],
        loses: "firewall rejects (reported as firewall_drop instead)",
    },
    HookSpec {
        hook: Hook::ListenerIngress,
        program: "listener_ingress",
        attach: Attach::CgroupIngress,
        actions: &[Action::ListenOverflow, Action::SynQueueOverflow],
        loses: "accept-queue overflows at the SYN stage and SYN-queue overflows",
    },
];

impl Hook {
    pub fn spec(self) -> &'static HookSpec {
        // HOOKS lists every variant; the test below keeps it that way.
        HOOKS.iter().find(|s| s.hook == self).unwrap_or(&HOOKS[0])
    }

    pub fn name(self) -> &'static str {
        self.spec().program
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        HOOKS.iter().find(|s| s.program == name).map(|s| s.hook)
    }
}

/// Every program in the object, by its function name (what the kernel
/// reports for a loaded program, cut to 15 bytes).
pub fn program_names() -> Vec<&'static str> {
    HOOKS
        .iter()
        .flat_map(|s| match &s.attach {
            Attach::Tracepoints(parts) => parts.iter().map(|(program, _, _)| *program).collect(),
            _ => vec![s.program],
        })
        .collect()
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "why", rename_all = "snake_case")]
pub enum HookState {
    Attached,
    /// Turned off in the configuration.
    Disabled,
    /// The kernel lacks what the hook needs, or load/attach failed.
    Unavailable(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: Hook,
    #[serde(flatten)]
    pub state: HookState,
}

impl HookStatus {
    pub fn attached(&self) -> bool {
        self.state == HookState::Attached
    }
}

/// The eBPF object, embedded at build time by aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

pub struct LoadOptions<'a> {
    pub config: &'a KernelConfig,
    pub ring_buffer_bytes: u32,
    pub counter_entries: u32,
    pub disabled: &'a [Hook],
    /// Hooks the kernel cannot support (from layout discovery), with why.
    pub unavailable: &'a std::collections::BTreeMap<Hook, String>,
    pub cgroup_root: &'a Path,
}

/// Loads and attaches with the daemon's configuration and the discovered layout.
pub fn load_configured(
    config: &crate::config::Config,
    layout: &crate::kernel::layout::KernelLayout,
) -> Result<(Ebpf, Vec<HookStatus>), aya::EbpfError> {
    let disabled = config.disabled_hooks().unwrap_or_default();
    let cgroup = crate::daemon::cgroup_root(config);
    let kernel = KernelConfig { samples_total_per_sec: config.capture.samples_total_per_sec, ..layout.config };
    load(&LoadOptions {
        config: &kernel,
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        counter_entries: config.capture.counter_entries,
        disabled: &disabled,
        unavailable: &layout.unavailable,
        cgroup_root: &cgroup,
    })
}

/// Loads the object and attaches every hook that can run. Fails only when
/// the object itself cannot be loaded (maps, BTF); per-hook problems are
/// returned as statuses.
pub fn load(opts: &LoadOptions<'_>) -> Result<(Ebpf, Vec<HookStatus>), aya::EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", opts.config, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("COUNTERS", opts.counter_entries)
        .load(OBJECT)?;
    let mut statuses = Vec::new();
    for spec in HOOKS {
        let state = if opts.disabled.contains(&spec.hook) {
            HookState::Disabled
        } else if let Some(why) = opts.unavailable.get(&spec.hook) {
            HookState::Unavailable(why.clone())
        } else {
            match attach(&mut ebpf, spec, opts.cgroup_root) {
                Ok(()) => HookState::Attached,
                Err(why) => HookState::Unavailable(why),
            }
        };
        statuses.push(HookStatus { hook: spec.hook, state });
    }
    Ok((ebpf, statuses))
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut TracePoint, String> {
    let p = ebpf.program_mut(program).ok_or_else(|| format!("program {program} is not in the eBPF object"))?;
    p.try_into().map_err(|e| format!("{e}"))
}

fn attach(ebpf: &mut Ebpf, spec: &HookSpec, cgroup_root: &Path) -> Result<(), String> {
    match spec.attach {
        Attach::Tracepoint { category, name } => {
            let tp = tracepoint(ebpf, spec.program)?;
            tp.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            tp.attach(category, name).map_err(|e| format!("attach {category}:{name}: {}", error_chain(&e)))?;
        }
        Attach::Tracepoints(parts) => {
            let mut attached = Vec::new();
            for &(program, category, name) in parts {
                let step = tracepoint(ebpf, program).and_then(|tp| {
                    tp.load().map_err(|e| format!("load {program}: {}", error_chain(&e)))?;
                    tp.attach(category, name).map_err(|e| format!("attach {category}:{name}: {}", error_chain(&e)))
                });
                match step {
                    Ok(link) => attached.push((program, link)),
                    Err(why) => {
                        // Half a hook would only fill its maps: take it down whole.
                        for (program, link) in attached {
                            if let Ok(tp) = tracepoint(ebpf, program) {
                                let _ = tp.detach(link);
                            }
                        }
                        return Err(why);
                    }
                }
            }
        }
        Attach::CgroupIngress => {
            let program = ebpf
                .program_mut(spec.program)
                .ok_or_else(|| format!("program {} is not in the eBPF object", spec.program))?;
            let prog: &mut CgroupSkb = program.try_into().map_err(|e| format!("{e}"))?;
            prog.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            let cgroup = std::fs::File::open(cgroup_root)
                .map_err(|e| format!("open cgroup v2 root {}: {e}", cgroup_root.display()))?;
            // Single: AllowMultiple through bpf_link returns EINVAL on the
            // kernels this was built on (see DESIGN.md section 4).
            prog.attach(&cgroup, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map_err(|e| format!("attach to {}: {}", cgroup_root.display(), error_chain(&e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_a_spec_and_a_unique_program() {
        let all = [
            Hook::TcpSendReset,
            Hook::TcpReceiveReset,
            Hook::TcpRetransmitSynack,
            Hook::InetSockSetState,
            Hook::SysConnect,
            Hook::KfreeSkb,
            Hook::NetDevQueue,
            Hook::ListenerIngress,
        ];
        for h in all {
            assert_eq!(h.spec().hook, h);
            assert_eq!(Hook::from_name(h.name()), Some(h));
        }
        assert_eq!(HOOKS.len(), all.len());
    }

    #[test]
    fn every_action_is_seen_by_some_hook() {
        for a in Action::ALL {
            assert!(HOOKS.iter().any(|s| s.actions.contains(&a)), "{a:?} has no hook");
        }
    }
}
