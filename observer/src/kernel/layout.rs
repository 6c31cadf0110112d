//! Builds the programs' `KernelConfig` from the running kernel.
//!
//! Each hook's requirements are resolved separately: a field or struct
//! member the kernel lacks disables only the hooks that need it, and the
//! reason is kept for `observer doctor` and the start-up log.

use std::collections::{BTreeMap, HashMap};

use observer_common::config::{KernelConfig, TupleLayout, UNSET};

use super::{
    btf::KernelBtf,
    kallsyms::Functions,
    sources,
    tracefs::{Format, Tracefs},
};
use crate::hooks::Hook;

/// Kernel name tables used to turn numbers back into names.
#[derive(Clone, Debug, Default)]
pub struct NameTables {
    /// `enum sk_rst_reason` (tcp_send_reset)
    pub rst_reasons: HashMap<u64, String>,
    /// `enum skb_drop_reason` (kfree_skb)
    pub drop_reasons: HashMap<u64, String>,
    /// TCP states
    pub tcp_states: HashMap<u64, String>,
}

/// The result of discovery: what to hand the programs, and what is missing.
pub struct KernelLayout {
    pub config: KernelConfig,
    pub names: NameTables,
    /// Hooks that cannot work on this kernel, and why.
    pub unavailable: BTreeMap<Hook, String>,
    /// Hooks another source makes unnecessary on this kernel, and why.
    pub not_needed: BTreeMap<Hook, String>,
    /// Whether BTF was readable (doctor).
    pub btf: Result<(), String>,
    /// Where each failure is read from on this kernel (doctor, start-up log).
    pub coverage: Vec<sources::Coverage>,
}

/// What `kread::sock_tuple` reads: a socket's namespace, 4-tuple and state.
const SOCK_TUPLE: &[&str] = &[
    "sk_net",
    "net_ns_inum",
    "sk_family",
    "sk_state",
    "sk_num",
    "sk_dport",
    "sk_rcv_saddr",
    "sk_daddr",
    "sk_v6_rcv_saddr",
    "sk_v6_daddr",
];

/// A field offset, with its size checked, as a message for the hook table.
fn off(f: &Format, name: &str, size: usize) -> Result<u16, String> {
    f.offset(name, Some(size)).map_err(|e| e.to_string())
}

/// The number the kernel's table gives `name`.
fn value_of(table: &HashMap<u64, String>, name: &str) -> Option<u32> {
    table.iter().find(|(_, v)| *v == name).and_then(|(k, _)| u32::try_from(*k).ok())
}

/// The 4-tuple fields. `family` is optional (absent before 5.11 on
/// tcp_receive_reset and tcp_retransmit_synack, before 6.1 on
/// tcp_send_reset): the programs then read the socket's family via BTF,
/// so callers add `sk_family` to the hook's needs when it is UNSET.
fn tuple(f: &Format) -> Result<TupleLayout, String> {
    Ok(TupleLayout {
        skaddr: off(f, "skaddr", 8)?,
        sport: off(f, "sport", 2)?,
        dport: off(f, "dport", 2)?,
        family: off(f, "family", 2).unwrap_or(UNSET),
        saddr: off(f, "saddr", 4)?,
        daddr: off(f, "daddr", 4)?,
        saddr_v6: off(f, "saddr_v6", 16)?,
        daddr_v6: off(f, "daddr_v6", 16)?,
    })
}

/// Reads tracepoint `category:name` with `read`; a missing tracepoint, or
/// whatever `read` finds missing, makes `hook` unavailable with that reason.
fn with_format(
    tracefs: &Tracefs,
    (category, name): (&str, &str),
    hook: Hook,
    unavailable: &mut BTreeMap<Hook, String>,
    read: impl FnOnce(&Format) -> Result<(), String>,
) {
    if let Err(e) = tracefs.format(category, name).map_err(|e| e.to_string()).and_then(|f| read(&f)) {
        unavailable.insert(hook, e);
    }
}

impl KernelLayout {
    pub fn discover(
        tracefs: &Tracefs,
        btf_path: &std::path::Path,
        kallsyms: &std::path::Path,
        samples_per_sec: u32,
    ) -> KernelLayout {
        let mut config = KernelConfig::UNSET;
        config.samples_per_sec = samples_per_sec;
        let mut names = NameTables::default();
        let mut unavailable = BTreeMap::new();
        let mut send_reset_no_socket = false;

        // Struct offsets: each is optional; hooks list which they need.
        let mut struct_errors: HashMap<&'static str, String> = HashMap::new();
        let btf = KernelBtf::load(btf_path);
        let btf_status = btf.as_ref().map(|_| ()).map_err(|e| e.to_string());
        {
            let s = &mut config.structs;
            let fields: [(&'static str, &mut u16, &str, &[&str]); 25] = [
                ("skb_sk", &mut s.skb_sk, "sk_buff", &["sk"]),
                ("skb_dev", &mut s.skb_dev, "sk_buff", &["dev"]),
                ("skb_head", &mut s.skb_head, "sk_buff", &["head"]),
                ("skb_network_header", &mut s.skb_network_header, "sk_buff", &["network_header"]),
                ("dev_nd_net", &mut s.dev_nd_net, "net_device", &["nd_net", "net"]),
                ("net_ns_inum", &mut s.net_ns_inum, "net", &["ns", "inum"]),
                ("sk_net", &mut s.sk_net, "sock", &["__sk_common", "skc_net", "net"]),
                ("sk_err", &mut s.sk_err, "sock", &["sk_err"]),
                ("sk_ack_backlog", &mut s.sk_ack_backlog, "sock", &["sk_ack_backlog"]),
                ("sk_max_ack_backlog", &mut s.sk_max_ack_backlog, "sock", &["sk_max_ack_backlog"]),
                ("icsk_syn_qlen", &mut s.icsk_syn_qlen, "inet_connection_sock", &["icsk_accept_queue", "qlen"]),
                ("sk_state", &mut s.sk_state, "sock", &["__sk_common", "skc_state"]),
                ("sk_err_soft", &mut s.sk_err_soft, "sock", &["sk_err_soft"]),
                ("sk_errq_len", &mut s.sk_errq_len, "sock", &["sk_error_queue", "qlen"]),
                ("sk_errq_next", &mut s.sk_errq_next, "sock", &["sk_error_queue", "next"]),
                ("sk_protocol", &mut s.sk_protocol, "sock", &["sk_protocol"]),
                ("sk_rcv_saddr", &mut s.sk_rcv_saddr, "sock", &["__sk_common", "skc_rcv_saddr"]),
                ("sk_v6_rcv_saddr", &mut s.sk_v6_rcv_saddr, "sock", &["__sk_common", "skc_v6_rcv_saddr"]),
                ("sk_num", &mut s.sk_num, "sock", &["__sk_common", "skc_num"]),
                ("sk_dport", &mut s.sk_dport, "sock", &["__sk_common", "skc_dport"]),
                ("sk_daddr", &mut s.sk_daddr, "sock", &["__sk_common", "skc_daddr"]),
                ("sk_v6_daddr", &mut s.sk_v6_daddr, "sock", &["__sk_common", "skc_v6_daddr"]),
                ("skb_protocol", &mut s.skb_protocol, "sk_buff", &["protocol"]),
                ("inet_sport", &mut s.inet_sport, "inet_sock", &["inet_sport"]),
                ("sk_family", &mut s.sk_family, "sock", &["__sk_common", "skc_family"]),
            ];
            for (name, slot, root, path) in fields {
                match &btf {
                    Ok(btf) => match btf.offset(root, path) {
                        Ok(off) => *slot = off,
                        Err(e) => {
                            struct_errors.insert(name, e.to_string());
                        }
                    },
                    Err(e) => {
                        struct_errors.insert(name, e.to_string());
                    }
                }
            }
        }
        let need = |hook: Hook, structs: &[&str], unavailable: &mut BTreeMap<Hook, String>| {
            for s in structs {
                if let Some(e) = struct_errors.get(s) {
                    unavailable.entry(hook).or_insert_with(|| e.clone());
                }
            }
        };

        with_format(tracefs, ("tcp", "tcp_send_reset"), Hook::TcpSendReset, &mut unavailable, |f| {
            // Name tables first: the decoder uses them even if a field is off.
            if let Some(t) = f.table_with("NO_SOCKET") {
                names.rst_reasons = t;
            }
            if let Some(t) = f.table_with("TCP_LISTEN") {
                names.tcp_states = t;
            }
            // Attached raw: the format says whether the kernel passes the
            // reason, the mark of the 6.10 tracepoint, which fires without
            // a socket too (refused SYNs). Older ones fire only on a socket.
            if f.offset("reason", None).is_ok() {
                config.send_reset.reason = 1;
                send_reset_no_socket = true;
            }
            Ok(())
        });
        need(Hook::TcpSendReset, SOCK_TUPLE, &mut unavailable);
        if send_reset_no_socket {
            need(
                Hook::TcpSendReset,
                &["skb_dev", "dev_nd_net", "skb_head", "skb_network_header", "skb_protocol"],
                &mut unavailable,
            );
        }

        // Attached raw (the tuple is read from the socket): the format
        // only proves the tracepoint exists.
        with_format(tracefs, ("tcp", "tcp_receive_reset"), Hook::TcpReceiveReset, &mut unavailable, |_| Ok(()));
        need(Hook::TcpReceiveReset, SOCK_TUPLE, &mut unavailable);
        with_format(tracefs, ("tcp", "tcp_retransmit_synack"), Hook::TcpRetransmitSynack, &mut unavailable, |f| {
            config.retransmit_synack = tuple(f)?;
            Ok(())
        });
        for hook in [Hook::TcpReceiveReset, Hook::TcpRetransmitSynack] {
            need(hook, &["sk_net", "net_ns_inum", "sk_state"], &mut unavailable);
        }
        if config.retransmit_synack.family == UNSET {
            need(Hook::TcpRetransmitSynack, &["sk_family"], &mut unavailable);
        }

        with_format(tracefs, ("sock", "inet_sock_set_state"), Hook::InetSockSetState, &mut unavailable, |f| {
            // The state values first: tcp_receive_reset uses them too.
            let states = f.table_with("TCP_SYN_SENT").unwrap_or_default();
            let found = (value_of(&states, "TCP_SYN_SENT"), value_of(&states, "TCP_CLOSE"));
            if let (Some(syn_sent), Some(close)) = found {
                config.values.tcp_syn_sent = syn_sent;
                config.values.tcp_close = close;
            }
            // Attached raw: the program reads the states from the
            // arguments and the tuple from the socket.
            match found {
                (Some(_), Some(_)) => Ok(()),
                _ => Err("no TCP state table in inet_sock_set_state's print fmt".into()),
            }
        });
        need(Hook::InetSockSetState, SOCK_TUPLE, &mut unavailable);
        need(Hook::InetSockSetState, &["sk_err", "sk_protocol"], &mut unavailable);
        // The queued ICMP error's `struct sock_extended_err` sits in the
        // skb's control block, at `sock_exterr_skb.ee`. Optional: without
        // it (and the other soft-error offsets) only connects the
        // application closes after an ICMP error are not reported.
        config.structs.skb_ee = match &btf {
            Ok(btf) => match (btf.offset("sk_buff", &["cb"]), btf.offset("sock_exterr_skb", &["ee"])) {
                (Ok(cb), Ok(ee)) => cb.checked_add(ee).unwrap_or(observer_common::config::UNSET),
                _ => observer_common::config::UNSET,
            },
            Err(_) => observer_common::config::UNSET,
        };

        need(
            Hook::TcpConnect,
            &["sk_family", "sk_net", "net_ns_inum", "sk_state", "sk_rcv_saddr", "sk_v6_rcv_saddr", "sk_num"],
            &mut unavailable,
        );

        let mut drop_reasons = false;
        with_format(tracefs, ("skb", "kfree_skb"), Hook::KfreeSkb, &mut unavailable, |f| {
            // Attached raw: the format says which arguments the kernel
            // passes (the fields are the arguments), not where they are.
            let l = &mut config.kfree_skb;
            off(f, "skbaddr", 8)?;
            off(f, "location", 8)?;
            // Optional: only used to attribute final-ACK overflows to the listener.
            l.rx_sk = off(f, "rx_sk", 8).is_ok() as u8;
            if f.offset("reason", None).is_ok() {
                l.reason = 1;
                let t = f.table_with("NO_SOCKET").ok_or("kfree_skb has a reason field but no reason table")?;
                config.values.drop_netfilter = value_of(&t, "NETFILTER_DROP").unwrap_or(u32::MAX);
                config.values.drop_listen_overflow = value_of(&t, "TCP_LISTEN_OVERFLOW").unwrap_or(u32::MAX);
                config.values.drop_no_socket = value_of(&t, "NO_SOCKET").unwrap_or(u32::MAX);
                names.drop_reasons = t;
                drop_reasons = true;
            }
            Ok(())
        });
        need(
            Hook::KfreeSkb,
            &[
                "skb_dev",
                "dev_nd_net",
                "net_ns_inum",
                "skb_head",
                "skb_network_header",
                "skb_sk",
                "sk_net",
                "skb_protocol",
            ],
            &mut unavailable,
        );

        if unavailable.contains_key(&Hook::KfreeSkb) {
            // The answer markers are only read by kfree_skb.
            for hook in [Hook::Answers, Hook::NetDevQueue] {
                unavailable.entry(hook).or_insert_with(|| "needs the kfree_skb hook, which is unavailable".into());
            }
        }
        need(Hook::NetDevQueue, &["skb_head", "skb_network_header", "skb_sk", "sk_protocol"], &mut unavailable);
        need(
            Hook::ListenerIngress,
            &["sk_ack_backlog", "sk_max_ack_backlog", "icsk_syn_qlen", "sk_net", "net_ns_inum"],
            &mut unavailable,
        );

        for hook in [Hook::TcpConnRequest, Hook::SynRecvSock] {
            need(
                hook,
                &[
                    "sk_ack_backlog",
                    "sk_max_ack_backlog",
                    "icsk_syn_qlen",
                    "sk_net",
                    "net_ns_inum",
                    "skb_protocol",
                    "skb_head",
                    "skb_network_header",
                ],
                &mut unavailable,
            );
        }

        let functions = if drop_reasons || unavailable.contains_key(&Hook::KfreeSkb) {
            None
        } else {
            Some(Functions::read(kallsyms, &["tcp_v4_rcv", "tcp_v6_rcv", "nf_hook_slow", "nft_do_chain"]))
        };
        let choice = sources::choose(
            &mut config,
            &sources::Offer { send_reset_no_socket, drop_reasons, functions: functions.as_ref() },
        );
        if choice.drop_source_missing.is_some() && !drop_reasons {
            // kfree_skb without reasons and without the functions that
            // give its locations a meaning has nothing to report.
            if let Some(why) = &choice.drop_source_missing {
                unavailable.entry(Hook::KfreeSkb).or_insert_with(|| why.clone());
            }
        }

        let mut not_needed = BTreeMap::new();
        if config.sources.ack_overflow != observer_common::config::source::ACK_OVERFLOW_SYN_RECV_SOCK {
            not_needed.insert(
                Hook::SynRecvSock,
                "kfree_skb's drop reason TCP_LISTEN_OVERFLOW reports final-ACK overflows on this kernel".to_owned(),
            );
        }
        KernelLayout { config, names, unavailable, not_needed, btf: btf_status, coverage: choice.coverage }
    }
}
