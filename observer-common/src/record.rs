//! The sampled event record the kernel writes into the ring buffer.

/// `family` values on the wire. The kernel's AF_INET / AF_INET6 numbers are
/// used as they are so the programs can copy them without translation.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// `flags` bits.
pub mod flags {
    /// The listen overflow was seen at the SYN stage (else the final ACK).
    pub const SYN_STAGE: u8 = 1 << 0;
    /// `pid`/`comm` were captured in the process that owns the connection.
    pub const HAS_PROCESS: u8 = 1 << 1;
    /// `backlog`/`queue_len` describe the listening socket.
    pub const HAS_LISTENER: u8 = 1 << 2;
    /// The host initiated this connection (outbound).
    pub const OUTBOUND: u8 = 1 << 3;
    /// `reason` is an `enum skb_drop_reason` value (kfree_skb), whatever
    /// the action; without it refused/reset_sent carry an RST reason.
    pub const REASON_DROP: u8 = 1 << 4;
    /// `reason` is one of `inferred::*`: the kernel gave no reason, and the
    /// program established the condition from where the packet was dropped.
    pub const REASON_INFERRED: u8 = 1 << 5;
}

/// Reasons a program establishes on kernels that name none (kfree_skb
/// before drop reasons): the names are the ones newer kernels give the same
/// drop, so records and diagnoses read the same on every kernel.
pub mod inferred {
    /// No socket took the segment; the host answered with an RST.
    pub const NO_SOCKET: u32 = 1;
    /// A netfilter hook (nf_hook_slow) dropped the packet.
    pub const NETFILTER_DROP: u32 = 2;
    /// The final ACK reached a listener whose accept queue was full.
    pub const TCP_LISTEN_OVERFLOW: u32 = 3;

    /// The kernel's name for an inferred reason.
    pub fn name(reason: u32) -> Option<&'static str> {
        match reason {
            NO_SOCKET => Some("NO_SOCKET"),
            NETFILTER_DROP => Some("NETFILTER_DROP"),
            TCP_LISTEN_OVERFLOW => Some("TCP_LISTEN_OVERFLOW"),
            _ => None,
        }
    }
}

/// One sampled failure. `src_*` is always the side that initiated the
/// connection and `dst_*` the side it tried to reach, whatever the direction
/// of the packet that triggered the hook.
///
/// Layout: 8-byte field first, then 4-, 2- and 1-byte fields, so there is no
/// implicit padding; `_pad` makes the size a multiple of 8 explicitly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook fired.
    pub ts_ns: u64,
    /// Kernel occurrences this record stands for: 1. What the sampler
    /// suppresses the daemon reports from the exact counters.
    pub count: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Thread group id of the owning process, when `HAS_PROCESS`.
    pub pid: u32,
    /// Kernel reason number: RST reason, drop reason or errno, per action.
    pub reason: u32,
    /// Listener's accept-queue limit (`sk_max_ack_backlog`), when `HAS_LISTENER`.
    pub backlog: u32,
    /// Listener's queue length at the time (accept or SYN queue, per action).
    pub queue_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub action: u8,
    pub family: u8,
    /// TCP state of the socket involved, 0 when there was none.
    pub state: u8,
    pub flags: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub comm: [u8; 16],
}

impl FailureRecord {
    pub const SIZE: usize = core::mem::size_of::<FailureRecord>();

    pub const fn zeroed() -> Self {
        FailureRecord {
            ts_ns: 0,
            count: 0,
            netns: 0,
            pid: 0,
            reason: 0,
            backlog: 0,
            queue_len: 0,
            src_port: 0,
            dst_port: 0,
            action: 0,
            family: 0,
            state: 0,
            flags: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            comm: [0; 16],
        }
    }
}

const _: () = assert!(FailureRecord::SIZE == 88);

#[cfg(feature = "user")]
pub use user::*;

#[cfg(feature = "user")]
mod user {
    use super::FailureRecord;

    /// Why a ring-buffer record could not be decoded.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum RecordError {
        #[error("record is {got} bytes, expected {expected}")]
        Length { got: usize, expected: usize },
        #[error("unknown action {0}")]
        Action(u8),
        #[error("unknown address family {0}")]
        Family(u8),
        #[error("record stands for zero occurrences")]
        ZeroCount,
    }

    impl TryFrom<&[u8]> for FailureRecord {
        type Error = RecordError;

        /// Copies the record out of the ring buffer after checking its
        /// length, so a short or oversized record is an error, not UB.
        fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
            if bytes.len() != FailureRecord::SIZE {
                return Err(RecordError::Length { got: bytes.len(), expected: FailureRecord::SIZE });
            }
            // SAFETY: the length equals size_of::<FailureRecord>(), every
            // field is a plain integer or byte array (any bit pattern is
            // valid) and read_unaligned makes no alignment assumption.
            let record: FailureRecord = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
            crate::Action::try_from(record.action).map_err(|e| RecordError::Action(e.0))?;
            if record.family != super::AF_INET && record.family != super::AF_INET6 {
                return Err(RecordError::Family(record.family));
            }
            if record.count == 0 {
                return Err(RecordError::ZeroCount);
            }
            Ok(record)
        }
    }

    impl FailureRecord {
        /// The record's bytes as the kernel writes them (tests, fuzzing).
        pub fn as_bytes(&self) -> &[u8] {
            // SAFETY: FailureRecord is repr(C) with no implicit padding (the
            // size assertion above pins the layout), so every byte is initialised.
            unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), FailureRecord::SIZE) }
        }
    }
}
