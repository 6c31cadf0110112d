//! Builds the programs' `KernelConfig` from the running kernel.
//!
//! Each hook's requirements are resolved separately: a field or struct
//! member the kernel lacks disables only the hooks that need it, and the
//! reason is kept for `observer doctor` and the start-up log.

use std::collections::{BTreeMap, HashMap};

use observer_common::config::{KernelConfig, TupleLayout};

use super::{btf::KernelBtf, tracefs::Tracefs};
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
    /// Whether BTF was readable (doctor).
    pub btf: Result<(), String>,
}

fn tuple(f: &super::tracefs::Format) -> Result<TupleLayout, String> {
    let o = |name: &str, size| f.offset(name, Some(size)).map_err(|e| e.to_string());
    Ok(TupleLayout {
        skaddr: o("skaddr", 8)?,
        sport: o("sport", 2)?,
        dport: o("dport", 2)?,
        family: o("family", 2)?,
        saddr: o("saddr", 4)?,
        daddr: o("daddr", 4)?,
        saddr_v6: o("saddr_v6", 16)?,
        daddr_v6: o("daddr_v6", 16)?,
    })
}

impl KernelLayout {
    pub fn discover(tracefs: &Tracefs, btf_path: &std::path::Path, samples_per_sec: u32) -> KernelLayout {
        let mut config = KernelConfig::UNSET;
        config.samples_per_sec = samples_per_sec;
        let mut names = NameTables::default();
        let mut unavailable = BTreeMap::new();

        // Struct offsets: each is optional; hooks list which they need.
        let mut struct_errors: HashMap<&'static str, String> = HashMap::new();
        let btf = KernelBtf::load(btf_path);
        let btf_status = btf.as_ref().map(|_| ()).map_err(|e| e.to_string());
        {
            let s = &mut config.structs;
            let fields: [(&'static str, &mut u16, &str, &[&str]); 13] = [
                ("skb_sk", &mut s.skb_sk, "sk_buff", &["sk"]),
                ("skb_dev", &mut s.skb_dev, "sk_buff", &["dev"]),
                ("skb_head", &mut s.skb_head, "sk_buff", &["head"]),
                ("skb_network_header", &mut s.skb_network_header, "sk_buff", &["network_header"]),
                ("skb_transport_header", &mut s.skb_transport_header, "sk_buff", &["transport_header"]),
                ("dev_nd_net", &mut s.dev_nd_net, "net_device", &["nd_net", "net"]),
                ("net_ns_inum", &mut s.net_ns_inum, "net", &["ns", "inum"]),
                ("sk_net", &mut s.sk_net, "sock", &["__sk_common", "skc_net", "net"]),
                ("sk_err", &mut s.sk_err, "sock", &["sk_err"]),
                ("sk_ack_backlog", &mut s.sk_ack_backlog, "sock", &["sk_ack_backlog"]),
                ("sk_max_ack_backlog", &mut s.sk_max_ack_backlog, "sock", &["sk_max_ack_backlog"]),
                ("icsk_syn_qlen", &mut s.icsk_syn_qlen, "inet_connection_sock", &["icsk_accept_queue", "qlen"]),
                ("sk_state", &mut s.sk_state, "sock", &["__sk_common", "skc_state"]),
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

        // tcp:tcp_send_reset
        match tracefs.format("tcp", "tcp_send_reset") {
            Ok(f) => {
                let r = (|| -> Result<(), String> {
                    let o = |name: &str, size| f.offset(name, Some(size)).map_err(|e| e.to_string());
                    let l = &mut config.send_reset;
                    l.skbaddr = o("skbaddr", 8)?;
                    l.skaddr = o("skaddr", 8)?;
                    l.state = o("state", 4)?;
                    l.reason = o("reason", 4)?;
                    l.saddr = o("saddr", 28)?;
                    l.daddr = o("daddr", 28)?;
                    Ok(())
                })();
                if let Err(e) = r {
                    unavailable.insert(Hook::TcpSendReset, e);
                }
                if let Some(t) = f.table_with("NO_SOCKET") {
                    names.rst_reasons = t;
                }
                if let Some(t) = f.table_with("TCP_LISTEN") {
                    names.tcp_states = t;
                }
            }
            Err(e) => {
                unavailable.insert(Hook::TcpSendReset, e.to_string());
            }
        }
        need(
            Hook::TcpSendReset,
            &["skb_dev", "dev_nd_net", "net_ns_inum", "sk_net", "skb_head", "skb_transport_header"],
            &mut unavailable,
        );

        // The 4-tuple tracepoints.
        for (hook, category, name, slot) in [
            (Hook::TcpReceiveReset, "tcp", "tcp_receive_reset", &mut config.receive_reset),
            (Hook::TcpRetransmitSynack, "tcp", "tcp_retransmit_synack", &mut config.retransmit_synack),
        ] {
            match tracefs.format(category, name).map_err(|e| e.to_string()).and_then(|f| tuple(&f)) {
                Ok(t) => *slot = t,
                Err(e) => {
                    unavailable.insert(hook, e);
                }
            }
            need(hook, &["sk_net", "net_ns_inum", "sk_state"], &mut unavailable);
        }

        // sock:inet_sock_set_state
        match tracefs.format("sock", "inet_sock_set_state") {
            Ok(f) => {
                let r = (|| -> Result<(), String> {
                    let o = |name: &str, size| f.offset(name, Some(size)).map_err(|e| e.to_string());
                    config.set_state.tuple = tuple(&f)?;
                    config.set_state.oldstate = o("oldstate", 4)?;
                    config.set_state.newstate = o("newstate", 4)?;
                    config.set_state.protocol = o("protocol", 2)?;
                    Ok(())
                })();
                if let Err(e) = r {
                    unavailable.insert(Hook::InetSockSetState, e);
                }
                let states = f.table_with("TCP_SYN_SENT").unwrap_or_default();
                let find = |n: &str| states.iter().find(|(_, v)| *v == n).map(|(k, _)| *k as u32);
                match (find("TCP_SYN_SENT"), find("TCP_CLOSE"), find("TCP_LISTEN"), find("TCP_ESTABLISHED")) {
                    (Some(a), Some(b), Some(c), Some(d)) => {
                        config.values.tcp_syn_sent = a;
                        config.values.tcp_close = b;
                        config.values.tcp_listen = c;
                        config.values.tcp_established = d;
                    }
                    _ => {
                        unavailable
                            .entry(Hook::InetSockSetState)
                            .or_insert_with(|| "no TCP state table in inet_sock_set_state's print fmt".into());
                    }
                }
            }
            Err(e) => {
                unavailable.insert(Hook::InetSockSetState, e.to_string());
            }
        }
        need(Hook::InetSockSetState, &["sk_net", "net_ns_inum", "sk_err"], &mut unavailable);

        // skb:kfree_skb
        match tracefs.format("skb", "kfree_skb") {
            Ok(f) => {
                let r = (|| -> Result<(), String> {
                    let o = |name: &str, size| f.offset(name, Some(size)).map_err(|e| e.to_string());
                    config.kfree_skb.skbaddr = o("skbaddr", 8)?;
                    config.kfree_skb.protocol = o("protocol", 2)?;
                    config.kfree_skb.reason = o("reason", 4)?;
                    // Optional: only used to attribute final-ACK overflows to the listener.
                    config.kfree_skb.rx_sk = o("rx_sk", 8).unwrap_or(observer_common::config::UNSET);
                    Ok(())
                })();
                if let Err(e) = r {
                    unavailable.insert(Hook::KfreeSkb, e);
                }
                match f.table_with("NETFILTER_DROP") {
                    Some(t) => {
                        let find = |n: &str| t.iter().find(|(_, v)| *v == n).map(|(k, _)| *k as u32);
                        config.values.drop_netfilter = find("NETFILTER_DROP").unwrap_or(u32::MAX);
                        config.values.drop_listen_overflow = find("TCP_LISTEN_OVERFLOW").unwrap_or(u32::MAX);
                        names.drop_reasons = t;
                    }
                    None => {
                        unavailable
                            .entry(Hook::KfreeSkb)
                            .or_insert_with(|| "kfree_skb has no drop reason table (kernel older than 5.17)".into());
                    }
                }
            }
            Err(e) => {
                unavailable.insert(Hook::KfreeSkb, e.to_string());
            }
        }
        need(
            Hook::KfreeSkb,
            &["skb_dev", "dev_nd_net", "net_ns_inum", "skb_head", "skb_network_header", "skb_sk", "sk_net"],
            &mut unavailable,
        );
        // net:net_dev_queue
        match tracefs.format("net", "net_dev_queue").map_err(|e| e.to_string()).and_then(|f| {
            f.offset("skbaddr", Some(8)).map_err(|e| e.to_string())
        }) {
            Ok(off) => config.dev_queue_skbaddr = off,
            Err(e) => {
                unavailable.insert(Hook::NetDevQueue, e);
            }
        }
        need(Hook::NetDevQueue, &["skb_head", "skb_network_header"], &mut unavailable);
        if unavailable.contains_key(&Hook::KfreeSkb) {
            // The reject marker is only read by kfree_skb.
            unavailable
                .entry(Hook::NetDevQueue)
                .or_insert_with(|| "needs the kfree_skb hook, which is unavailable".into());
        }

        need(
            Hook::ListenerIngress,
            &["sk_ack_backlog", "sk_max_ack_backlog", "icsk_syn_qlen", "sk_net", "net_ns_inum"],
            &mut unavailable,
        );

        KernelLayout { config, names, unavailable, btf: btf_status }
    }
}
