//! Layouts the daemon reads from the running kernel and hands to the
//! programs as one read-only global (`CONFIG`).
//!
//! Rust eBPF emits no CO-RE relocations, so a compiled-in offset would be
//! wrong on another kernel. Instead: tracepoint field offsets come from
//! tracefs format files, struct member offsets from BTF, enum values from the
//! tracepoints' print fmt, and the programs read them from here.
//!
//! Every field is a `u16` offset (or `u32` value); `UNSET` marks "not
//! available on this kernel" and makes the program that needs it skip the
//! read rather than read garbage.

/// Marks an offset or value the kernel does not provide.
pub const UNSET: u16 = u16::MAX;

/// tcp_retransmit_synack: the classic TCP 4-tuple tracepoint layout. `family` is UNSET where the kernel's
/// tracepoint has none (tcp_retransmit_synack before 5.11): the
/// programs then read the socket's `skc_family` through BTF, which is what
/// newer kernels copy into the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleLayout {
    pub skaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
}

impl TupleLayout {
    pub const UNSET: TupleLayout = TupleLayout {
        skaddr: UNSET,
        sport: UNSET,
        dport: UNSET,
        family: UNSET,
        saddr: UNSET,
        daddr: UNSET,
        saddr_v6: UNSET,
        daddr_v6: UNSET,
    };
}

/// tcp:tcp_send_reset, attached raw: whether the kernel passes the RST
/// reason (6.10+, the release that also made the tracepoint fire without
/// a socket). 1 when it does; the tracepoint's format file says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetArgs {
    pub reason: u8,
    pub _pad: [u8; 7],
}

/// skb:kfree_skb, attached raw: which arguments the kernel passes after
/// `skb` and `location`. 1 when it does; the tracepoint's format file says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbArgs {
    /// `enum skb_drop_reason` (5.17+); absent on older kernels, which are
    /// read through `location` (the caller of kfree_skb) instead.
    pub reason: u8,
    /// The socket the packet was delivered to (6.12+ `rx_sk`); optional.
    pub rx_sk: u8,
    pub _pad: [u8; 6],
}

/// A function's text, `[start, end)`, from /proc/kallsyms: a kfree_skb
/// `location` inside it means that function dropped the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRange {
    pub start: u64,
    pub end: u64,
}

impl TextRange {
    pub const EMPTY: TextRange = TextRange { start: 0, end: 0 };

    #[inline(always)]
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// Where each failure that has more than one possible source is read from
/// on this kernel. The daemon picks one source per failure from what tracefs
/// and BTF offer, so that no occurrence is counted by two programs.
pub mod source {
    /// Nobody reports it.
    pub const NONE: u8 = 0;
    /// RSTs sent without a socket (refused SYNs, segments of unknown
    /// connections): tcp_send_reset fires for them (6.10+ layout).
    pub const NO_SOCKET_SEND_RESET: u8 = 1;
    /// ... kfree_skb's drop reason NO_SOCKET, confirmed by the RST the host
    /// transmitted for the same ports (net_dev_queue).
    pub const NO_SOCKET_DROP_REASON: u8 = 2;
    /// ... kfree_skb called from tcp_v4_rcv/tcp_v6_rcv (kernels without drop
    /// reasons), confirmed by the RST the host transmitted.
    pub const NO_SOCKET_DROP_LOCATION: u8 = 3;
    /// Netfilter drops: kfree_skb's drop reason NETFILTER_DROP.
    pub const NETFILTER_DROP_REASON: u8 = 1;
    /// ... kfree_skb called from nf_hook_slow or nft_do_chain (kernels
    /// without drop reasons).
    pub const NETFILTER_DROP_LOCATION: u8 = 2;
    /// Final-ACK accept-queue overflows: kfree_skb's TCP_LISTEN_OVERFLOW.
    pub const ACK_OVERFLOW_DROP_REASON: u8 = 1;
    /// ... tcp_v4/v6_syn_recv_sock is called for a final ACK while the
    /// listener's accept queue is full (fentry), or, where that cannot
    /// run, the cgroup_skb listener program sees the final ACK reach it.
    pub const ACK_OVERFLOW_SYN_RECV_SOCK: u8 = 2;
}

/// The chosen sources (`source::*`) and the function ranges they need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    pub no_socket: u8,
    pub netfilter: u8,
    pub ack_overflow: u8,
    /// 1 where the stack's own RSTs need no confirmation (tcp_send_reset
    /// reports refused SYNs): the transmit fallback then looks only at
    /// packets without a socket (a reject's RST) or from an ICMP socket.
    pub answers_without_tcp_socket: u8,
    pub _pad: [u8; 4],
    pub tcp_v4_rcv: TextRange,
    pub tcp_v6_rcv: TextRange,
    pub nf_hook_slow: TextRange,
    /// Where nf_tables frees a dropped packet itself (kernels that do,
    /// when the module is loaded at start-up); empty otherwise.
    pub nft_do_chain: TextRange,
}

impl Sources {
    pub const NONE: Sources = Sources {
        no_socket: source::NONE,
        netfilter: source::NONE,
        ack_overflow: source::NONE,
        answers_without_tcp_socket: 0,
        _pad: [0; 4],
        tcp_v4_rcv: TextRange::EMPTY,
        tcp_v6_rcv: TextRange::EMPTY,
        nf_hook_slow: TextRange::EMPTY,
        nft_do_chain: TextRange::EMPTY,
    };
}

/// Member offsets (bytes from the start of the named struct) from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StructOffsets {
    /// `sk_buff.dev`
    pub skb_dev: u16,
    /// `sk_buff.head`
    pub skb_head: u16,
    /// `sk_buff.network_header` (u16 offset from head)
    pub skb_network_header: u16,
    /// `net_device.nd_net` (a possible_net_t: one `struct net *`)
    pub dev_nd_net: u16,
    /// `net.ns.inum`
    pub net_ns_inum: u16,
    /// `sock.__sk_common.skc_net`
    pub sk_net: u16,
    /// `sock.sk_err`
    pub sk_err: u16,
    /// `sock.sk_ack_backlog`
    pub sk_ack_backlog: u16,
    /// `sock.sk_max_ack_backlog`
    pub sk_max_ack_backlog: u16,
    /// `inet_connection_sock.icsk_accept_queue.qlen`
    pub icsk_syn_qlen: u16,
    /// `sock.__sk_common.skc_state` (one byte)
    pub sk_state: u16,
    /// `sk_buff.sk`
    pub skb_sk: u16,
    /// `sock.sk_err_soft`
    pub sk_err_soft: u16,
    /// `sock.sk_error_queue.qlen`
    pub sk_errq_len: u16,
    /// `sock.sk_error_queue.next` (the oldest queued error)
    pub sk_errq_next: u16,
    /// `sk_buff.cb` + `sock_exterr_skb.ee`: the queued error's
    /// `struct sock_extended_err` (UAPI: errno, then origin)
    pub skb_ee: u16,
    /// `sock.sk_protocol` (u16 since 5.6; a bitfield before)
    pub sk_protocol: u16,
    /// `sock.__sk_common.skc_rcv_saddr` (IPv4 local address)
    pub sk_rcv_saddr: u16,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (IPv6 local address)
    pub sk_v6_rcv_saddr: u16,
    /// `sock.__sk_common.skc_num` (local port, host order)
    pub sk_num: u16,
    /// `sock.__sk_common.skc_dport` (remote port, network order)
    pub sk_dport: u16,
    /// `sock.__sk_common.skc_daddr` (IPv4 remote address)
    pub sk_daddr: u16,
    /// `sock.__sk_common.skc_v6_daddr` (IPv6 remote address)
    pub sk_v6_daddr: u16,
    /// `sk_buff.protocol` (the ethertype, network order)
    pub skb_protocol: u16,
    /// `inet_sock.inet_sport` (local port, network order): kept when a
    /// closing socket gives its port back and `skc_num` reads 0.
    pub inet_sport: u16,
    /// `sock.__sk_common.skc_family` (also `request_sock`'s, same prefix)
    pub sk_family: u16,
    pub _pad: [u16; 2],
}

impl StructOffsets {
    pub const UNSET: StructOffsets = StructOffsets {
        skb_dev: UNSET,
        skb_head: UNSET,
        skb_network_header: UNSET,
        dev_nd_net: UNSET,
        net_ns_inum: UNSET,
        sk_net: UNSET,
        sk_err: UNSET,
        sk_ack_backlog: UNSET,
        sk_max_ack_backlog: UNSET,
        icsk_syn_qlen: UNSET,
        sk_state: UNSET,
        skb_sk: UNSET,
        sk_err_soft: UNSET,
        sk_errq_len: UNSET,
        sk_errq_next: UNSET,
        skb_ee: UNSET,
        sk_protocol: UNSET,
        sk_rcv_saddr: UNSET,
        sk_v6_rcv_saddr: UNSET,
        sk_num: UNSET,
        sk_dport: UNSET,
        sk_daddr: UNSET,
        sk_v6_daddr: UNSET,
        skb_protocol: UNSET,
        inet_sport: UNSET,
        sk_family: UNSET,
        _pad: [0; 2],
    };
}

/// Enum values the programs compare against, from the kernel's own tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelValues {
    /// `SKB_DROP_REASON_NETFILTER_DROP`
    pub drop_netfilter: u32,
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`
    pub drop_listen_overflow: u32,
    /// `SKB_DROP_REASON_NO_SOCKET`
    pub drop_no_socket: u32,
    pub _pad: u32,
    /// `TCP_SYN_SENT` and `TCP_CLOSE` from inet_sock_set_state's print fmt
    /// (the raw tracepoint passes the states as numbers).
    pub tcp_syn_sent: u32,
    pub tcp_close: u32,
}

/// Everything the programs need to know about the running kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub send_reset: SendResetArgs,
    pub retransmit_synack: TupleLayout,
    pub kfree_skb: KfreeSkbArgs,
    pub structs: StructOffsets,
    pub values: KernelValues,
    pub sources: Sources,
    /// Sampled events per second per key and CPU; beyond it only counters move.
    pub samples_per_sec: u32,
    /// Samples per second of all keys together, per CPU (0: no limit).
    /// Beyond it only counters move, as beyond `samples_per_sec`: a burst
    /// over many keys (a port scan) costs the log this many records a
    /// second, not one per connection.
    pub samples_total_per_sec: u32,
}

impl KernelConfig {
    /// A config that makes every program skip its optional reads; the daemon
    /// fills in what the running kernel provides.
    pub const UNSET: KernelConfig = KernelConfig {
        send_reset: SendResetArgs { reason: 0, _pad: [0; 7] },
        retransmit_synack: TupleLayout::UNSET,
        kfree_skb: KfreeSkbArgs { reason: 0, rx_sk: 0, _pad: [0; 6] },
        structs: StructOffsets::UNSET,
        values: KernelValues {
            drop_netfilter: u32::MAX,
            drop_listen_overflow: u32::MAX,
            drop_no_socket: u32::MAX,
            _pad: 0,
            tcp_syn_sent: u32::MAX,
            tcp_close: u32::MAX,
        },
        sources: Sources::NONE,
        samples_per_sec: 64,
        samples_total_per_sec: 0,
    };
}

// The layout is shared with the kernel: a change in size is a wire change.
const _: () = assert!(core::mem::size_of::<KernelConfig>().is_multiple_of(8));
// Sources holds u64s: the fields before it must end on an 8-byte boundary,
// or the compiler would insert padding no field names (and aya::Pod needs
// every byte initialised).
const _: () = assert!(core::mem::offset_of!(KernelConfig, sources).is_multiple_of(8));

#[cfg(feature = "user")]
// SAFETY: KernelConfig is repr(C), Copy, made only of integers, with every
// padding byte spelled out as a field, so all of its bytes are initialised.
unsafe impl aya::Pod for KernelConfig {}
