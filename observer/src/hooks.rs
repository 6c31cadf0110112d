//! The kernel hooks: what each one sees, loading and attaching them one by
//! one, and what is lost when one cannot run.
//!
//! A hook that does not load or attach never stops the daemon: its status
//! says why, and the rest keep reporting.

use std::fmt;

use aya::{
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
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
    TcpConnect,
    KfreeSkb,
    Answers,
    TcpConnRequest,
    SynRecvSock,
    ListenerIngress,
    NetDevQueue,
}

/// How a hook's programs are attached. Several programs that only work
/// together are attached as one hook: if one fails, those already attached
/// are detached again (half a hook would only fill its maps).
pub enum Attach {
    /// A classic tracepoint (`category:name`); the program has the hook's name.
    Tracepoint { category: &'static str, name: &'static str },
    /// A raw tracepoint: no perf record is built for the program (the
    /// hooks that fire on the healthy path); the program has the hook's name.
    RawTracepoint { name: &'static str },
    /// A BTF tracepoint (typed arguments, direct member reads; needs BTF
    /// but no trampoline); the program has the hook's name.
    BtfTracepoint { name: &'static str },
    /// fentry programs, `(program, kernel function)`.
    FEntry(&'static [(&'static str, &'static str)]),
    /// fexit programs, `(program, kernel function)`.
    FExit(&'static [(&'static str, &'static str)]),
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
    /// The hooks this one stands in for where the kernel cannot run them
    /// (fentry needs BPF trampolines): attached only then, because it
    /// costs the healthy path what they do not.
    pub fallback_for: &'static [Hook],
}

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        hook: Hook::TcpSendReset,
        program: "tcp_send_reset",
        attach: Attach::RawTracepoint { name: "tcp_send_reset" },
        actions: &[Action::Refused, Action::ResetSent],
        loses: "resets this host sends on open connections (and refused connections where it is their source)",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::TcpReceiveReset,
        program: "tcp_receive_reset",
        attach: Attach::RawTracepoint { name: "tcp_receive_reset" },
        actions: &[Action::ResetReceived],
        loses: "resets received from peers",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::TcpRetransmitSynack,
        program: "tcp_retransmit_synack",
        attach: Attach::Tracepoint { category: "tcp", name: "tcp_retransmit_synack" },
        actions: &[Action::SynackRetransmit],
        loses: "handshakes whose final ACK never arrives",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::InetSockSetState,
        program: "inet_sock_set_state",
        attach: Attach::RawTracepoint { name: "inet_sock_set_state" },
        actions: &[Action::ConnectFailed],
        loses: "outbound connect() failures and the connecting process",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::TcpConnect,
        program: "tcp_connect",
        attach: Attach::FExit(&[
            ("tcp_v4_connect", "tcp_v4_connect"),
            ("tcp_v6_connect", "tcp_v6_connect"),
            ("tcp_v4_pre_connect", "tcp_v4_pre_connect"),
            ("tcp_v6_pre_connect", "tcp_v6_pre_connect"),
        ]),
        actions: &[Action::ConnectFailed],
        loses: "connect() calls that fail inside the call: no route (ENETUNREACH), no local port, cgroup refusals",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::KfreeSkb,
        program: "kfree_skb",
        attach: Attach::RawTracepoint { name: "kfree_skb" },
        actions: &[Action::FirewallDrop, Action::FirewallReject, Action::ListenOverflow],
        loses: "firewall drops/rejects of SYNs and accept-queue overflows at the final ACK",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::Answers,
        program: "answers",
        attach: Attach::FEntry(&[
            ("nf_ct_attach", "nf_ct_attach"),
            ("icmp_send", "__icmp_send"),
            ("icmp6_send", "icmp6_send"),
            ("tcp_v4_send_reset", "tcp_v4_send_reset"),
            ("tcp_v6_send_reset", "tcp_v6_send_reset"),
        ]),
        actions: &[Action::FirewallReject],
        loses: "firewall rejects (reported as firewall_drop instead) and, where kfree_skb is their source, refused connections",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::TcpConnRequest,
        program: "tcp_conn_request",
        attach: Attach::FEntry(&[("tcp_conn_request", "tcp_conn_request")]),
        actions: &[Action::ListenOverflow, Action::SynQueueOverflow],
        loses: "accept-queue overflows at the SYN stage and SYN-queue overflows",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::SynRecvSock,
        program: "syn_recv_sock",
        attach: Attach::FEntry(&[
            ("tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"),
            ("tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"),
        ]),
        actions: &[Action::ListenOverflow],
        loses: "accept-queue overflows at the final ACK, on kernels whose kfree_skb has no TCP_LISTEN_OVERFLOW reason",
        fallback_for: &[],
    },
    HookSpec {
        hook: Hook::ListenerIngress,
        program: "listener_ingress",
        attach: Attach::CgroupIngress,
        actions: &[Action::ListenOverflow, Action::SynQueueOverflow],
        loses: "queue overflows tcp_conn_request or syn_recv_sock would have seen",
        fallback_for: &[Hook::TcpConnRequest, Hook::SynRecvSock],
    },
    HookSpec {
        hook: Hook::NetDevQueue,
        program: "net_dev_queue",
        attach: Attach::BtfTracepoint { name: "net_dev_queue" },
        actions: &[Action::FirewallReject],
        loses: "firewall rejects (reported as firewall_drop instead) and, where kfree_skb is their source, refused connections",
        fallback_for: &[Hook::Answers],
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

/// The hooks `capture.disable_hooks` names. The configuration keeps the
/// names as written (it does not know this table); an unknown one is
/// refused here, at the daemon's start.
pub fn parse_disabled(names: &[String]) -> Result<Vec<Hook>, String> {
    names
        .iter()
        .map(|n| Hook::from_name(n).ok_or_else(|| format!("capture.disable_hooks: unknown hook {n:?}")))
        .collect()
}

/// Every program in the object, by its function name (what the kernel
/// reports for a loaded program, cut to 15 bytes).
pub fn program_names() -> Vec<&'static str> {
    HOOKS
        .iter()
        .flat_map(|s| match &s.attach {
            Attach::FEntry(parts) | Attach::FExit(parts) => parts.iter().map(|(program, _)| *program).collect(),
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
    /// Not attached because another source sees its failures on this
    /// kernel (it would only cost): why.
    NotNeeded(String),
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
    /// Hooks whose failures another source sees on this kernel, with why.
    pub not_needed: &'a std::collections::BTreeMap<Hook, String>,
    /// The kernel's BTF (`kernel.btf`), which the BTF tracepoint and the
    /// fentry/fexit programs are loaded against: the file layout discovery
    /// read its offsets from.
    pub btf: &'a std::path::Path,
}

/// Loads and attaches with the daemon's configuration and the discovered layout.
pub fn load_configured(
    config: &crate::config::Config,
    layout: &crate::kernel::layout::KernelLayout,
) -> Result<(Ebpf, Vec<HookStatus>), aya::EbpfError> {
    let disabled = parse_disabled(&config.capture.disable_hooks).unwrap_or_default();
    let kernel = KernelConfig { samples_total_per_sec: config.capture.samples_total_per_sec, ..layout.config };
    load(&LoadOptions {
        config: &kernel,
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        counter_entries: config.capture.counter_entries,
        disabled: &disabled,
        unavailable: &layout.unavailable,
        not_needed: &layout.not_needed,
        btf: &config.kernel.btf,
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
    // BTF tracepoints and fentry/fexit programs are loaded against the
    // kernel's BTF; without it only they fail (each hook says so).
    let btf = Btf::parse_file(opts.btf, aya::Endianness::default())
        .map_err(|e| format!("reading the kernel's BTF {}: {e}", opts.btf.display()));
    let mut statuses: Vec<HookStatus> = Vec::new();
    for spec in HOOKS {
        let state = if opts.disabled.contains(&spec.hook) {
            HookState::Disabled
        } else if let Some(why) = opts.unavailable.get(&spec.hook) {
            HookState::Unavailable(why.clone())
        } else if let Some(why) = opts.not_needed.get(&spec.hook) {
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
            let root = cgroup_root();
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

/// The cgroup v2 root: unified at /sys/fs/cgroup, or the hybrid layout's
/// /sys/fs/cgroup/unified.
fn cgroup_root() -> std::path::PathBuf {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if std::path::Path::new(candidate).join("cgroup.controllers").exists() {
            return candidate.into();
        }
    }
    "/sys/fs/cgroup/unified".into()
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
            Hook::TcpConnect,
            Hook::KfreeSkb,
            Hook::Answers,
            Hook::TcpConnRequest,
            Hook::SynRecvSock,
            Hook::ListenerIngress,
            Hook::NetDevQueue,
        ];
        for h in all {
            assert_eq!(h.spec().hook, h);
            assert_eq!(Hook::from_name(h.name()), Some(h));
        }
        assert_eq!(HOOKS.len(), all.len());
    }

    #[test]
    fn disabled_hooks_are_parsed_by_name() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_disabled(&names(&["kfree_skb", "answers"])), Ok(vec![Hook::KfreeSkb, Hook::Answers]));
        assert_eq!(parse_disabled(&[]), Ok(vec![]));
        assert_eq!(
            parse_disabled(&names(&["kfree_skb", "nope"])),
            Err("capture.disable_hooks: unknown hook \"nope\"".to_owned())
        );
    }

    /// The doc comment of `capture.disable_hooks`, which `observer config`
    /// prints, lists the hooks by hand: this keeps the list and HOOKS equal.
    #[test]
    fn the_disable_hooks_doc_lists_every_hook() {
        use documented::DocumentedFields as _;
        let doc = crate::config::CaptureConfig::get_field_docs("disable_hooks").unwrap();
        // "Hooks not to attach, by name (...): a, b,\nc.\n..."
        let (_, list) = doc.split_once("): ").unwrap();
        let (list, _) = list.split_once('.').unwrap();
        let listed: Vec<&str> = list.split(',').map(str::trim).collect();
        let programs: Vec<&str> = HOOKS.iter().map(|h| h.program).collect();
        assert_eq!(listed, programs, "the doc comment of CaptureConfig::disable_hooks");
        let template = crate::config::Config::documented_defaults().unwrap();
        for h in HOOKS {
            assert!(template.contains(h.program), "{} is not in the template", h.program);
        }
    }

    #[test]
    fn every_action_is_seen_by_some_hook() {
        for a in Action::ALL {
            assert!(HOOKS.iter().any(|s| s.actions.contains(&a)), "{a:?} has no hook");
        }
    }
}
