//! The hook table: every hook the programs provide, what it sees, how it
//! attaches, what the kernel must have for it, and what is lost while it
//! cannot run; and the state each hook ends up in. Data only: `hooks`
//! loads and attaches them, `layout` checks their needs against the
//! running kernel, `doctor` and the daemon report from it.

use std::fmt;

use observer_common::Action;
use serde::Serialize;

use super::layout::Member;

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
    /// The kernel struct members its programs read (their offsets come
    /// from BTF); any one missing makes the hook unavailable. Needs that
    /// depend on the tracepoint's layout are added by `layout`.
    pub needs: &'static [Member],
}

pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        hook: Hook::TcpSendReset,
        program: "tcp_send_reset",
        attach: Attach::RawTracepoint { name: "tcp_send_reset" },
        actions: &[Action::Refused, Action::ResetSent],
        loses: "resets this host sends on open connections (and refused connections where it is their source)",
        fallback_for: &[],
        needs: &[Member::SkNet, Member::NetNsInum, Member::SkFamily, Member::SkState, Member::SkNum, Member::SkDport, Member::SkRcvSaddr, Member::SkDaddr, Member::SkV6RcvSaddr, Member::SkV6Daddr],
    },
    HookSpec {
        hook: Hook::TcpReceiveReset,
        program: "tcp_receive_reset",
        attach: Attach::RawTracepoint { name: "tcp_receive_reset" },
        actions: &[Action::ResetReceived],
        loses: "resets received from peers",
        fallback_for: &[],
        needs: &[Member::SkNet, Member::NetNsInum, Member::SkFamily, Member::SkState, Member::SkNum, Member::SkDport, Member::SkRcvSaddr, Member::SkDaddr, Member::SkV6RcvSaddr, Member::SkV6Daddr],
    },
    HookSpec {
        hook: Hook::TcpRetransmitSynack,
        program: "tcp_retransmit_synack",
        attach: Attach::Tracepoint { category: "tcp", name: "tcp_retransmit_synack" },
        actions: &[Action::SynackRetransmit],
        loses: "handshakes whose final ACK never arrives",
        fallback_for: &[],
        needs: &[Member::SkNet, Member::NetNsInum, Member::SkState],
    },
    HookSpec {
        hook: Hook::InetSockSetState,
        program: "inet_sock_set_state",
        attach: Attach::RawTracepoint { name: "inet_sock_set_state" },
        actions: &[Action::ConnectFailed],
        loses: "outbound connect() failures and the connecting process",
        fallback_for: &[],
        needs: &[Member::SkNet, Member::NetNsInum, Member::SkFamily, Member::SkState, Member::SkNum, Member::SkDport, Member::SkRcvSaddr, Member::SkDaddr, Member::SkV6RcvSaddr, Member::SkV6Daddr, Member::SkErr, Member::SkProtocol],
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
        needs: &[Member::SkFamily, Member::SkNet, Member::NetNsInum, Member::SkState, Member::SkRcvSaddr, Member::SkV6RcvSaddr, Member::SkNum],
    },
    HookSpec {
        hook: Hook::KfreeSkb,
        program: "kfree_skb",
        attach: Attach::RawTracepoint { name: "kfree_skb" },
        actions: &[Action::FirewallDrop, Action::FirewallReject, Action::ListenOverflow],
        loses: "firewall drops/rejects of SYNs and accept-queue overflows at the final ACK",
        fallback_for: &[],
        needs: &[Member::SkbDev, Member::DevNdNet, Member::NetNsInum, Member::SkbHead, Member::SkbNetworkHeader, Member::SkbSk, Member::SkNet, Member::SkbProtocol],
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
        needs: &[],
    },
    HookSpec {
        hook: Hook::TcpConnRequest,
        program: "tcp_conn_request",
        attach: Attach::FEntry(&[("tcp_conn_request", "tcp_conn_request")]),
        actions: &[Action::ListenOverflow, Action::SynQueueOverflow],
        loses: "accept-queue overflows at the SYN stage and SYN-queue overflows",
        fallback_for: &[],
        needs: &[Member::SkAckBacklog, Member::SkMaxAckBacklog, Member::IcskSynQlen, Member::SkNet, Member::NetNsInum, Member::SkbProtocol, Member::SkbHead, Member::SkbNetworkHeader],
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
        needs: &[Member::SkAckBacklog, Member::SkMaxAckBacklog, Member::IcskSynQlen, Member::SkNet, Member::NetNsInum, Member::SkbProtocol, Member::SkbHead, Member::SkbNetworkHeader],
    },
    HookSpec {
        hook: Hook::ListenerIngress,
        program: "listener_ingress",
        attach: Attach::CgroupIngress,
        actions: &[Action::ListenOverflow, Action::SynQueueOverflow],
        loses: "queue overflows tcp_conn_request or syn_recv_sock would have seen",
        fallback_for: &[Hook::TcpConnRequest, Hook::SynRecvSock],
        needs: &[Member::SkAckBacklog, Member::SkMaxAckBacklog, Member::IcskSynQlen, Member::SkNet, Member::NetNsInum],
    },
    HookSpec {
        hook: Hook::NetDevQueue,
        program: "net_dev_queue",
        attach: Attach::BtfTracepoint { name: "net_dev_queue" },
        actions: &[Action::FirewallReject],
        loses: "firewall rejects (reported as firewall_drop instead) and, where kfree_skb is their source, refused connections",
        fallback_for: &[Hook::Answers],
        needs: &[Member::SkbHead, Member::SkbNetworkHeader, Member::SkbSk, Member::SkProtocol],
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
