//! Builds the programs' `KernelConfig` from the running kernel.
//!
//! Each hook's requirements are resolved separately: a field or struct
//! member the kernel lacks disables only the hooks that need it, and the
//! reason is kept for `observer doctor` and the start-up log.

use std::collections::{BTreeMap, HashMap};

use observer_common::config::{KernelConfig, TupleLayout, UNSET};

use super::hook::{Hook, HOOKS};
use super::{
    btf::KernelBtf,
    kallsyms::Functions,
    sources,
    tracefs::{Format, Tracefs},
};

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

/// A kernel struct member the programs read, by the `StructOffsets` slot
/// its BTF offset goes into. Each hook lists the members it needs on its
/// `HookSpec`; one the kernel's BTF lacks makes only those hooks
/// unavailable, with the reason. A type rather than a name: a hook that
/// names a member that does not exist does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    SkbSk,
    SkbDev,
    SkbHead,
    SkbNetworkHeader,
    DevNdNet,
    NetNsInum,
    SkNet,
    SkErr,
    SkAckBacklog,
    SkMaxAckBacklog,
    IcskSynQlen,
    SkState,
    SkErrSoft,
    SkErrqLen,
    SkErrqNext,
    SkProtocol,
    SkRcvSaddr,
    SkV6RcvSaddr,
    SkNum,
    SkDport,
    SkDaddr,
    SkV6Daddr,
    SkbProtocol,
    InetSport,
    SkFamily,
}

impl Member {
    pub const ALL: [Member; 25] = [
        Member::SkbSk,
        Member::SkbDev,
        Member::SkbHead,
        Member::SkbNetworkHeader,
        Member::DevNdNet,
        Member::NetNsInum,
        Member::SkNet,
        Member::SkErr,
        Member::SkAckBacklog,
        Member::SkMaxAckBacklog,
        Member::IcskSynQlen,
        Member::SkState,
        Member::SkErrSoft,
        Member::SkErrqLen,
        Member::SkErrqNext,
        Member::SkProtocol,
        Member::SkRcvSaddr,
        Member::SkV6RcvSaddr,
        Member::SkNum,
        Member::SkDport,
        Member::SkDaddr,
        Member::SkV6Daddr,
        Member::SkbProtocol,
        Member::InetSport,
        Member::SkFamily,
    ];

    /// Where the member is: the struct, and the path of members inside it.
    fn place(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Member::SkbSk => ("sk_buff", &["sk"]),
            Member::SkbDev => ("sk_buff", &["dev"]),
            Member::SkbHead => ("sk_buff", &["head"]),
            Member::SkbNetworkHeader => ("sk_buff", &["network_header"]),
            Member::DevNdNet => ("net_device", &["nd_net", "net"]),
            Member::NetNsInum => ("net", &["ns", "inum"]),
            Member::SkNet => ("sock", &["__sk_common", "skc_net", "net"]),
            Member::SkErr => ("sock", &["sk_err"]),
            Member::SkAckBacklog => ("sock", &["sk_ack_backlog"]),
            Member::SkMaxAckBacklog => ("sock", &["sk_max_ack_backlog"]),
            Member::IcskSynQlen => ("inet_connection_sock", &["icsk_accept_queue", "qlen"]),
            Member::SkState => ("sock", &["__sk_common", "skc_state"]),
            Member::SkErrSoft => ("sock", &["sk_err_soft"]),
            Member::SkErrqLen => ("sock", &["sk_error_queue", "qlen"]),
            Member::SkErrqNext => ("sock", &["sk_error_queue", "next"]),
            Member::SkProtocol => ("sock", &["sk_protocol"]),
            Member::SkRcvSaddr => ("sock", &["__sk_common", "skc_rcv_saddr"]),
            Member::SkV6RcvSaddr => ("sock", &["__sk_common", "skc_v6_rcv_saddr"]),
            Member::SkNum => ("sock", &["__sk_common", "skc_num"]),
            Member::SkDport => ("sock", &["__sk_common", "skc_dport"]),
            Member::SkDaddr => ("sock", &["__sk_common", "skc_daddr"]),
            Member::SkV6Daddr => ("sock", &["__sk_common", "skc_v6_daddr"]),
            Member::SkbProtocol => ("sk_buff", &["protocol"]),
            Member::InetSport => ("inet_sock", &["inet_sport"]),
            Member::SkFamily => ("sock", &["__sk_common", "skc_family"]),
        }
    }

    /// Its slot in the programs' offsets.
    fn slot(self, s: &mut observer_common::config::StructOffsets) -> &mut u16 {
        match self {
            Member::SkbSk => &mut s.skb_sk,
            Member::SkbDev => &mut s.skb_dev,
            Member::SkbHead => &mut s.skb_head,
            Member::SkbNetworkHeader => &mut s.skb_network_header,
            Member::DevNdNet => &mut s.dev_nd_net,
            Member::NetNsInum => &mut s.net_ns_inum,
            Member::SkNet => &mut s.sk_net,
            Member::SkErr => &mut s.sk_err,
            Member::SkAckBacklog => &mut s.sk_ack_backlog,
            Member::SkMaxAckBacklog => &mut s.sk_max_ack_backlog,
            Member::IcskSynQlen => &mut s.icsk_syn_qlen,
            Member::SkState => &mut s.sk_state,
            Member::SkErrSoft => &mut s.sk_err_soft,
            Member::SkErrqLen => &mut s.sk_errq_len,
            Member::SkErrqNext => &mut s.sk_errq_next,
            Member::SkProtocol => &mut s.sk_protocol,
            Member::SkRcvSaddr => &mut s.sk_rcv_saddr,
            Member::SkV6RcvSaddr => &mut s.sk_v6_rcv_saddr,
            Member::SkNum => &mut s.sk_num,
            Member::SkDport => &mut s.sk_dport,
            Member::SkDaddr => &mut s.sk_daddr,
            Member::SkV6Daddr => &mut s.sk_v6_daddr,
            Member::SkbProtocol => &mut s.skb_protocol,
            Member::InetSport => &mut s.inet_sport,
            Member::SkFamily => &mut s.sk_family,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Member::SkbSk => "skb_sk",
            Member::SkbDev => "skb_dev",
            Member::SkbHead => "skb_head",
            Member::SkbNetworkHeader => "skb_network_header",
            Member::DevNdNet => "dev_nd_net",
            Member::NetNsInum => "net_ns_inum",
            Member::SkNet => "sk_net",
            Member::SkErr => "sk_err",
            Member::SkAckBacklog => "sk_ack_backlog",
            Member::SkMaxAckBacklog => "sk_max_ack_backlog",
            Member::IcskSynQlen => "icsk_syn_qlen",
            Member::SkState => "sk_state",
            Member::SkErrSoft => "sk_err_soft",
            Member::SkErrqLen => "sk_errq_len",
            Member::SkErrqNext => "sk_errq_next",
            Member::SkProtocol => "sk_protocol",
            Member::SkRcvSaddr => "sk_rcv_saddr",
            Member::SkV6RcvSaddr => "sk_v6_rcv_saddr",
            Member::SkNum => "sk_num",
            Member::SkDport => "sk_dport",
            Member::SkDaddr => "sk_daddr",
            Member::SkV6Daddr => "sk_v6_daddr",
            Member::SkbProtocol => "skb_protocol",
            Member::InetSport => "inet_sport",
            Member::SkFamily => "sk_family",
        }
    }
}

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
    pub fn discover(tracefs: &Tracefs, btf_path: &std::path::Path, kallsyms: &std::path::Path) -> KernelLayout {
        let mut config = KernelConfig::UNSET;
        let mut names = NameTables::default();
        let mut unavailable = BTreeMap::new();
        let mut send_reset_no_socket = false;

        // Struct offsets: each is optional; hooks list which they need.
        let mut struct_errors: HashMap<Member, String> = HashMap::new();
        let btf = KernelBtf::load(btf_path);
        let btf_status = btf.as_ref().map(|_| ()).map_err(|e| e.to_string());
        for member in Member::ALL {
            let (root, path) = member.place();
            match btf.as_ref().map_err(|e| e.to_string()).and_then(|b| b.offset(root, path).map_err(|e| e.to_string()))
            {
                Ok(off) => *member.slot(&mut config.structs) = off,
                Err(e) => {
                    struct_errors.insert(member, e);
                }
            }
        }
        let need = |hook: Hook, structs: &[Member], unavailable: &mut BTreeMap<Hook, String>| {
            for s in structs {
                if let Some(e) = struct_errors.get(s) {
                    unavailable.entry(hook).or_insert_with(|| e.clone());
                }
            }
        };
        // What every hook needs whatever the tracepoints look like (the
        // table's); a tracepoint's own reason, found below, replaces these.
        for spec in HOOKS {
            need(spec.hook, spec.needs, &mut unavailable);
        }

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
        if send_reset_no_socket {
            need(
                Hook::TcpSendReset,
                &[Member::SkbDev, Member::DevNdNet, Member::SkbHead, Member::SkbNetworkHeader, Member::SkbProtocol],
                &mut unavailable,
            );
        }

        // Attached raw (the tuple is read from the socket): the format
        // only proves the tracepoint exists.
        with_format(tracefs, ("tcp", "tcp_receive_reset"), Hook::TcpReceiveReset, &mut unavailable, |_| Ok(()));
        with_format(tracefs, ("tcp", "tcp_retransmit_synack"), Hook::TcpRetransmitSynack, &mut unavailable, |f| {
            config.retransmit_synack = tuple(f)?;
            Ok(())
        });
        if config.retransmit_synack.family == UNSET {
            need(Hook::TcpRetransmitSynack, &[Member::SkFamily], &mut unavailable);
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
        if unavailable.contains_key(&Hook::KfreeSkb) {
            // The answer markers are only read by kfree_skb.
            for hook in [Hook::Answers, Hook::NetDevQueue] {
                unavailable.entry(hook).or_insert_with(|| "needs the kfree_skb hook, which is unavailable".into());
            }
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
