//! The kinds of failure the kernel side reports (`event.action`).

/// One kernel-observed failure kind. The numeric values are the wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// SYN to a port with no listener; the stack answered RST.
    Refused = 1,
    /// The stack sent RST on a connection that had a socket.
    ResetSent = 2,
    /// An RST arrived on a connection of this host.
    ResetReceived = 3,
    /// The listener's accept queue was full (SYN or final-ACK stage).
    ListenOverflow = 4,
    /// The listener's SYN queue was full (SYN cookies or SYN drops).
    SynQueueOverflow = 5,
    /// Netfilter dropped an inbound SYN.
    FirewallDrop = 6,
    /// Netfilter rejected an inbound SYN (RST or ICMP answer).
    FirewallReject = 7,
    /// The server retransmitted a SYN-ACK: the final ACK did not arrive.
    SynackRetransmit = 8,
    /// An outbound connect() from this host failed.
    ConnectFailed = 9,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Refused,
        Action::ResetSent,
        Action::ResetReceived,
        Action::ListenOverflow,
        Action::SynQueueOverflow,
        Action::FirewallDrop,
        Action::FirewallReject,
        Action::SynackRetransmit,
        Action::ConnectFailed,
    ];

    /// The `event.action` string of the JSON contract.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Refused => "refused",
            Action::ResetSent => "reset_sent",
            Action::ResetReceived => "reset_received",
            Action::ListenOverflow => "listen_overflow",
            Action::SynQueueOverflow => "syn_queue_overflow",
            Action::FirewallDrop => "firewall_drop",
            Action::FirewallReject => "firewall_reject",
            Action::SynackRetransmit => "synack_retransmit",
            Action::ConnectFailed => "connect_failed",
        }
    }
}

/// A byte that is not a known [`Action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownAction(pub u8);

impl TryFrom<u8> for Action {
    type Error = UnknownAction;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Action::ALL.iter().copied().find(|a| *a as u8 == value).ok_or(UnknownAction(value))
    }
}
