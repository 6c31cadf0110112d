//! Which source each failure is read from on the running kernel.
//!
//! Why: the best source of a failure differs between kernels, and the
//! servers our users run span 5.10 to the newest. A refused connection is
//! tcp_send_reset without a socket on 6.10+, kfree_skb's NO_SOCKET drop
//! reason on 5.17 to 6.9, and a kfree_skb from tcp_v4_rcv/tcp_v6_rcv before
//! drop reasons existed. The choice is made here from what tracefs and
//! /proc/kallsyms say the kernel has (never from its version number, so a
//! vendor kernel with backports gets the best path it supports), exactly
//! one source per failure, so no occurrence is counted twice. The choice
//! goes to the programs (`CONFIG.sources`) and to `observer doctor`.

use observer_common::{
    config::{source, KernelConfig},
    Action,
};
use serde::Serialize;

use super::hook::{Hook, HookState, HookStatus, HOOKS};
use super::kallsyms::{Functions, KallsymsError};

/// One way of seeing one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    SendResetNoSocket,
    DropReasonNoSocket,
    DropLocationTcpRcv,
    SendResetOnSocket,
    ReceiveReset,
    RetransmitSynack,
    ConnRequest,
    DropReasonListenOverflow,
    SynRecvSock,
    DropReasonNetfilter,
    DropLocationNfHookSlow,
    RejectAnswerDropReason,
    RejectAnswerDropLocation,
    SetState,
    TcpConnect,
}

impl Source {
    /// What the source is, for a person reading `observer doctor`.
    pub fn describe(self) -> &'static str {
        match self {
            Source::SendResetNoSocket => "tcp_send_reset without a socket (6.10+ layout, with the RST reason)",
            Source::DropReasonNoSocket => {
                "kfree_skb drop reason NO_SOCKET, confirmed by the RST the host sent (tcp_v4/v6_send_reset)"
            }
            Source::DropLocationTcpRcv => {
                "kfree_skb from tcp_v4_rcv/tcp_v6_rcv (no drop reasons here), confirmed by the RST the host sent (tcp_v4/v6_send_reset)"
            }
            Source::SendResetOnSocket => "tcp_send_reset on the connection's socket",
            Source::ReceiveReset => "tcp_receive_reset",
            Source::RetransmitSynack => "tcp_retransmit_synack",
            Source::ConnRequest => "tcp_conn_request: a SYN reaching a listener whose queue is full",
            Source::DropReasonListenOverflow => "kfree_skb drop reason TCP_LISTEN_OVERFLOW",
            Source::SynRecvSock => {
                "tcp_v4/v6_syn_recv_sock: a final ACK reaching a listener whose accept queue is full (no TCP_LISTEN_OVERFLOW reason here)"
            }
            Source::DropReasonNetfilter => "kfree_skb drop reason NETFILTER_DROP of a SYN",
            Source::DropLocationNfHookSlow => {
                "kfree_skb of a SYN from nf_hook_slow or nft_do_chain (no drop reasons here)"
            }
            Source::RejectAnswerDropReason => {
                "kfree_skb drop reason NETFILTER_DROP of a SYN the reject rule answered (nf_ct_attach, __icmp_send, icmp6_send)"
            }
            Source::RejectAnswerDropLocation => {
                "kfree_skb of a SYN from nf_hook_slow or nft_do_chain that the reject rule answered (nf_ct_attach, __icmp_send, icmp6_send)"
            }
            Source::SetState => "inet_sock_set_state SYN_SENT -> CLOSE, with the socket's error",
            Source::TcpConnect => "the return value of tcp_v4/v6_connect and tcp_v4/v6_pre_connect",
        }
    }

    /// The hooks that must all run for this source to see anything.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            Source::SendResetNoSocket | Source::SendResetOnSocket => &[Hook::TcpSendReset],
            Source::DropReasonNoSocket
            | Source::DropLocationTcpRcv
            | Source::RejectAnswerDropReason
            | Source::RejectAnswerDropLocation => &[Hook::KfreeSkb, Hook::Answers],
            Source::ReceiveReset => &[Hook::TcpReceiveReset],
            Source::RetransmitSynack => &[Hook::TcpRetransmitSynack],
            Source::ConnRequest => &[Hook::TcpConnRequest],
            Source::SynRecvSock => &[Hook::SynRecvSock],
            Source::DropReasonListenOverflow | Source::DropReasonNetfilter | Source::DropLocationNfHookSlow => {
                &[Hook::KfreeSkb]
            }
            Source::SetState => &[Hook::InetSockSetState],
            Source::TcpConnect => &[Hook::TcpConnect],
        }
    }
}

/// One failure (an action, and for some a case of it) and its source here.
#[derive(Clone, Debug, Serialize)]
pub struct Coverage {
    #[serde(with = "crate::event::action_name")]
    pub action: Action,
    /// Which occurrences of the action, when it has several sources.
    pub case: &'static str,
    /// The source, or why this kernel offers none.
    pub source: Result<Source, String>,
}

/// What the running kernel offers, as far as the choice depends on it.
pub struct Offer<'a> {
    /// tcp_send_reset has the 6.10 layout and fires without a socket.
    pub send_reset_no_socket: bool,
    /// kfree_skb has drop reasons.
    pub drop_reasons: bool,
    /// Text ranges for kfree_skb's location, read only when there are no
    /// drop reasons (None then means kfree_skb's format was unusable).
    pub functions: Option<&'a Result<Functions, KallsymsError>>,
}

pub struct Choice {
    pub coverage: Vec<Coverage>,
    /// Why kfree_skb has nothing to report on this kernel, if so.
    pub drop_source_missing: Option<String>,
}

/// Picks one source per failure, writes the choice into `config`, and says
/// what was chosen.
pub fn choose(config: &mut KernelConfig, offer: &Offer<'_>) -> Choice {
    let s = &mut config.sources;
    let mut drop_source_missing = None;
    // Ranges for kfree_skb's location, when it has no reasons.
    let ranges = match offer.functions {
        Some(Ok(f)) => match (f.range("tcp_v4_rcv"), f.range("tcp_v6_rcv"), f.range("nf_hook_slow")) {
            (Ok(v4), v6, nf) => {
                // IPv6 may be absent (a module not loaded, or not built).
                s.tcp_v4_rcv = v4;
                s.tcp_v6_rcv = v6.unwrap_or(observer_common::config::TextRange::EMPTY);
                Ok(nf)
            }
            (Err(e), _, _) => Err(e.to_string()),
        },
        Some(Err(e)) => Err(e.to_string()),
        None => Err("kfree_skb is unavailable".to_owned()),
    };

    let no_socket = if offer.send_reset_no_socket {
        s.no_socket = source::NO_SOCKET_SEND_RESET;
        s.answers_without_tcp_socket = 1;
        Ok(Source::SendResetNoSocket)
    } else if offer.drop_reasons && config.values.drop_no_socket != u32::MAX {
        s.no_socket = source::NO_SOCKET_DROP_REASON;
        Ok(Source::DropReasonNoSocket)
    } else if offer.drop_reasons {
        Err("kfree_skb's reason table has no NO_SOCKET and tcp_send_reset fires only on a socket".to_owned())
    } else {
        match &ranges {
            Ok(_) => {
                s.no_socket = source::NO_SOCKET_DROP_LOCATION;
                Ok(Source::DropLocationTcpRcv)
            }
            Err(e) => Err(format!("no drop reasons, and kfree_skb's location cannot be resolved: {e}")),
        }
    };

    let (netfilter, reject) = if offer.drop_reasons && config.values.drop_netfilter != u32::MAX {
        s.netfilter = source::NETFILTER_DROP_REASON;
        (Ok(Source::DropReasonNetfilter), Ok(Source::RejectAnswerDropReason))
    } else if offer.drop_reasons {
        let why = "kfree_skb's reason table has no NETFILTER_DROP".to_owned();
        (Err(why.clone()), Err(why))
    } else {
        match &ranges {
            Ok(Ok(nf)) => {
                s.netfilter = source::NETFILTER_DROP_LOCATION;
                s.nf_hook_slow = *nf;
                if let Some(Ok(f)) = offer.functions {
                    s.nft_do_chain = f.range("nft_do_chain").unwrap_or(observer_common::config::TextRange::EMPTY);
                }
                (Ok(Source::DropLocationNfHookSlow), Ok(Source::RejectAnswerDropLocation))
            }
            Ok(Err(e)) => (Err(e.to_string()), Err(e.to_string())),
            Err(e) => {
                let why = format!("no drop reasons, and kfree_skb's location cannot be resolved: {e}");
                (Err(why.clone()), Err(why))
            }
        }
    };
    if !offer.drop_reasons {
        if let Err(e) = &ranges {
            drop_source_missing = Some(format!("no drop reasons, and kfree_skb's location cannot be resolved: {e}"));
        }
    }

    let ack_overflow = if config.values.drop_listen_overflow != u32::MAX {
        s.ack_overflow = source::ACK_OVERFLOW_DROP_REASON;
        Source::DropReasonListenOverflow
    } else {
        s.ack_overflow = source::ACK_OVERFLOW_SYN_RECV_SOCK;
        Source::SynRecvSock
    };

    let coverage = vec![
        Coverage { action: Action::Refused, case: "SYN to a port nothing listens on", source: no_socket.clone() },
        Coverage { action: Action::ResetSent, case: "on an open connection", source: Ok(Source::SendResetOnSocket) },
        Coverage { action: Action::ResetSent, case: "segment of an unknown connection", source: no_socket },
        Coverage { action: Action::ResetReceived, case: "", source: Ok(Source::ReceiveReset) },
        Coverage { action: Action::ListenOverflow, case: "at the SYN", source: Ok(Source::ConnRequest) },
        Coverage { action: Action::ListenOverflow, case: "at the final ACK", source: Ok(ack_overflow) },
        Coverage { action: Action::SynQueueOverflow, case: "", source: Ok(Source::ConnRequest) },
        Coverage { action: Action::FirewallDrop, case: "", source: netfilter },
        Coverage { action: Action::FirewallReject, case: "", source: reject },
        Coverage { action: Action::SynackRetransmit, case: "", source: Ok(Source::RetransmitSynack) },
        Coverage { action: Action::ConnectFailed, case: "after the SYN was sent", source: Ok(Source::SetState) },
        Coverage { action: Action::ConnectFailed, case: "inside connect()", source: Ok(Source::TcpConnect) },
    ];
    Choice { coverage, drop_source_missing }
}

impl Coverage {
    /// Why this failure is not seen with these hook states, or None when
    /// its source runs.
    pub fn lost_because(&self, statuses: &[HookStatus]) -> Option<String> {
        let source = match &self.source {
            Ok(s) => *s,
            Err(why) => return Some(why.clone()),
        };
        source.hooks().iter().find_map(|hook| {
            let status = statuses.iter().find(|s| s.hook == *hook)?;
            // A fallback that stands in for the hook sees what it would.
            let fallback = HOOKS.iter().find(|spec| spec.fallback_for.contains(hook));
            if let Some(f) = fallback {
                if statuses.iter().any(|s| s.hook == f.hook && s.attached()) {
                    return None;
                }
            }
            match &status.state {
                HookState::Attached => None,
                HookState::Disabled => Some(format!("hook {hook} is disabled")),
                HookState::NotNeeded(_) => None,
                HookState::Unavailable(why) => Some(format!("hook {hook} is unavailable: {why}")),
            }
        })
    }

    /// The action with its case, as the doctor table shows it.
    pub fn label(&self) -> String {
        if self.case.is_empty() {
            self.action.as_str().to_owned()
        } else {
            format!("{} ({})", self.action.as_str(), self.case)
        }
    }
}
