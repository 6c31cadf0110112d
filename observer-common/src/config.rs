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

/// Fields common to tcp_receive_reset, tcp_retransmit_synack,
/// inet_sock_set_state and inet_sk_error_report: the classic TCP 4-tuple
/// tracepoint layout.
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

/// tcp:tcp_send_reset. Addresses are `struct sockaddr_in6`-sized buffers
/// holding a sockaddr_in or sockaddr_in6 (family, port, address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetLayout {
    pub skbaddr: u16,
    pub skaddr: u16,
    pub state: u16,
    pub reason: u16,
    pub saddr: u16,
    pub daddr: u16,
}

/// sock:inet_sock_set_state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateLayout {
    pub tuple: TupleLayout,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub _pad: u16,
}

/// skb:kfree_skb.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbLayout {
    pub skbaddr: u16,
    pub protocol: u16,
    pub reason: u16,
    /// The socket the packet was delivered to (5.19+ `rx_sk`); optional.
    pub rx_sk: u16,
}

/// syscalls:sys_enter_connect and syscalls:sys_exit_connect. The syscall
/// tracepoints store every argument in an 8-byte slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysConnectLayout {
    /// sys_enter_connect `fd`
    pub fd: u16,
    /// sys_enter_connect `uservaddr` (a user pointer)
    pub uservaddr: u16,
    /// sys_enter_connect `addrlen`
    pub addrlen: u16,
    /// sys_exit_connect `ret`
    pub ret: u16,
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
    /// `sk_buff.transport_header` (u16 offset from head)
    pub skb_transport_header: u16,
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
    /// `task_struct.files`
    pub task_files: u16,
    /// `files_struct.fdt`
    pub files_fdt: u16,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u16,
    /// `fdtable.fd` (the `struct file *` array)
    pub fdt_fd: u16,
    /// `file.private_data` (a socket file's `struct socket *`)
    pub file_private_data: u16,
    /// `socket.type` (SOCK_STREAM, ...)
    pub socket_type: u16,
    /// `socket.sk`
    pub socket_sk: u16,
    /// `socket.file` (points back at the file: proves it is a socket)
    pub socket_file: u16,
    pub _pad: [u16; 3],
}

impl StructOffsets {
    pub const UNSET: StructOffsets = StructOffsets {
        skb_dev: UNSET,
        skb_head: UNSET,
        skb_network_header: UNSET,
        skb_transport_header: UNSET,
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
        task_files: UNSET,
        files_fdt: UNSET,
        fdt_max_fds: UNSET,
        fdt_fd: UNSET,
        file_private_data: UNSET,
        socket_type: UNSET,
        socket_sk: UNSET,
        socket_file: UNSET,
        _pad: [0; 3],
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
    /// `TCP_SYN_SENT` and `TCP_CLOSE` from inet_sock_set_state's print fmt.
    pub tcp_syn_sent: u32,
    pub tcp_close: u32,
}

/// Everything the programs need to know about the running kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub send_reset: SendResetLayout,
    /// net:net_dev_queue `skbaddr` (reject detection).
    pub dev_queue_skbaddr: u16,
    pub _pad0: u16,
    pub receive_reset: TupleLayout,
    pub retransmit_synack: TupleLayout,
    pub set_state: SetStateLayout,
    pub kfree_skb: KfreeSkbLayout,
    pub sys_connect: SysConnectLayout,
    pub structs: StructOffsets,
    pub values: KernelValues,
    /// Sampled events per second per key and CPU; beyond it only counters move.
    pub samples_per_sec: u32,
    pub _pad1: u32,
}

impl KernelConfig {
    /// A config that makes every program skip its optional reads; the daemon
    /// fills in what the running kernel provides.
    pub const UNSET: KernelConfig = KernelConfig {
        send_reset: SendResetLayout {
            skbaddr: UNSET,
            skaddr: UNSET,
            state: UNSET,
            reason: UNSET,
            saddr: UNSET,
            daddr: UNSET,
        },
        dev_queue_skbaddr: UNSET,
        _pad0: 0,
        receive_reset: TupleLayout::UNSET,
        retransmit_synack: TupleLayout::UNSET,
        set_state: SetStateLayout {
            tuple: TupleLayout::UNSET,
            oldstate: UNSET,
            newstate: UNSET,
            protocol: UNSET,
            _pad: 0,
        },
        kfree_skb: KfreeSkbLayout { skbaddr: UNSET, protocol: UNSET, reason: UNSET, rx_sk: UNSET },
        sys_connect: SysConnectLayout { fd: UNSET, uservaddr: UNSET, addrlen: UNSET, ret: UNSET },
        structs: StructOffsets::UNSET,
        values: KernelValues {
            drop_netfilter: u32::MAX,
            drop_listen_overflow: u32::MAX,
            tcp_syn_sent: u32::MAX,
            tcp_close: u32::MAX,
        },
        samples_per_sec: 64,
        _pad1: 0,
    };
}

// The layout is shared with the kernel: a change in size is a wire change.
const _: () = assert!(core::mem::size_of::<KernelConfig>().is_multiple_of(8));

#[cfg(feature = "user")]
// SAFETY: KernelConfig is repr(C), Copy, made only of integers, with every
// padding byte spelled out as a field, so all of its bytes are initialised.
unsafe impl aya::Pod for KernelConfig {}
