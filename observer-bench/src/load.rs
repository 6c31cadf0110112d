//! Load generators, run on threads that joined a benchmark namespace.
//!
//! - refused storm: connect() to a closed port of the namespace's loopback,
//!   in a loop: each attempt is one SYN answered by one RST;
//! - SYN flood: raw IPv4 SYNs (IP_HDRINCL, sendmmsg batches) from many
//!   distinct 127/8 source addresses to a listener whose accept queue is
//!   full, so each SYN is dropped by the listener (ListenOverflows).
//!
//! Both are bounded by a duration and by a total count.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// What one load run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    /// Connection attempts (refused storm) or SYNs handed to the kernel (flood).
    pub attempts: u64,
    pub elapsed: Duration,
    /// CPU time of the load threads (CLOCK_THREAD_CPUTIME_ID: user, system
    /// and the softirq work done on their stack, which on loopback is the
    /// whole receive path, hooks included).
    pub cpu: Duration,
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

/// Runs `work` on `threads` threads that joined the namespace at `netns`,
/// started together; sums what they return.
fn on_threads(
    netns: &Path,
    threads: usize,
    work: impl Fn(usize) -> anyhow::Result<u64> + Send + Sync + 'static,
) -> anyhow::Result<Load> {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for i in 0..threads {
        let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        let (work, start) = (work.clone(), start.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-load-{i}"))
            .spawn(move || -> anyhow::Result<(u64, Duration)> {
                let joined = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                start.wait();
                joined.context("setns")?;
                let cpu0 = thread_cpu();
                let n = work(i)?;
                Ok((n, thread_cpu().saturating_sub(cpu0)))
            })
            .context("spawning a load thread")?;
        handles.push(handle);
    }
    start.wait();
    let began = Instant::now();
    let (mut attempts, mut cpu) = (0, Duration::ZERO);
    for h in handles {
        match h.join() {
            Ok(r) => {
                let (n, c) = r?;
                attempts += n;
                cpu += c;
            }
            Err(_) => bail!("a load thread panicked"),
        }
    }
    Ok(Load { attempts, elapsed: began.elapsed(), cpu })
}

/// Shared bounds: a deadline and a total count, claimed in chunks so that
/// the threads do not contend on one counter per attempt.
struct Budget {
    deadline: Instant,
    left: AtomicU64,
}

const CHUNK: u64 = 256;

impl Budget {
    fn new(duration: Duration, max: u64) -> Budget {
        Budget { deadline: Instant::now() + duration, left: AtomicU64::new(max) }
    }

    /// Up to CHUNK more attempts, or 0 when time or count is up.
    fn claim(&self) -> u64 {
        if Instant::now() >= self.deadline {
            return 0;
        }
        let mut left = self.left.load(Ordering::Relaxed);
        loop {
            let take = left.min(CHUNK);
            if take == 0 {
                return 0;
            }
            match self.left.compare_exchange_weak(left, left - take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return take,
                Err(now) => left = now,
            }
        }
    }
}

/// Connection attempts to `to` (a closed port) until `duration` or `max`.
pub fn refused_storm(
    netns: &Path,
    to: SocketAddr,
    threads: usize,
    duration: Duration,
    max: u64,
) -> anyhow::Result<Load> {
    let budget = Arc::new(Budget::new(duration, max));
    on_threads(netns, threads, move |_| {
        let mut n = 0u64;
        loop {
            let chunk = budget.claim();
            if chunk == 0 {
                return Ok(n);
            }
            for _ in 0..chunk {
                match TcpStream::connect(to) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => n += 1,
                    Err(e) => return Err(e).context("connect in the refused storm"),
                    Ok(_) => bail!("{to} accepted a connection: the refused storm needs a closed port"),
                }
            }
        }
    })
}

/// The 20-bit one's complement sum of `data` (RFC 1071), not yet inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += word as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 + TCP SYN with valid checksums (loopback does not skip the
/// TCP checksum check for packets from a raw socket).
pub fn syn_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4; // data offset: 5 words, no options
    p[33] = 0x02; // SYN
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = fold(sum16(&p[20..], sum16(&pseudo, 0)));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// The `i`-th of the flood's distinct client addresses, in 127.1.0.0/16
/// and up (all of 127/8 is loopback).
pub fn client_addr(i: u32) -> Ipv4Addr {
    let n = (1u32 << 16) + i;
    Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

const BATCH: usize = 64;

/// Raw SYNs to `to` from `clients` distinct addresses, round robin, until
/// `duration` or `max` packets.
pub fn syn_flood(
    netns: &Path,
    to: SocketAddrV4,
    clients: u32,
    threads: usize,
    duration: Duration,
    max: u64,
) -> anyhow::Result<Load> {
    let clients = clients.max(1);
    let packets: Arc<Vec<[u8; 40]>> = Arc::new(
        (0..clients)
            .map(|i| {
                let src = SocketAddrV4::new(client_addr(i), 1024 + (i % 60000) as u16);
                syn_packet(src, to, i.wrapping_mul(2654435761))
            })
            .collect(),
    );
    let budget = Arc::new(Budget::new(duration, max));
    let threads = threads.max(1);
    on_threads(netns, threads, move |t| {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw socket (needs CAP_NET_RAW)");
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut dst: libc::sockaddr_in =
            // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
            unsafe { std::mem::zeroed() };
        dst.sin_family = libc::AF_INET as libc::sa_family_t;
        dst.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
        // Each thread starts at its own offset of the address list.
        let mut next = (t * packets.len() / threads) % packets.len();
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let mut sent = 0u64;
        loop {
            let chunk = budget.claim();
            if chunk == 0 {
                return Ok(sent);
            }
            let mut left = chunk as usize;
            while left > 0 {
                let n = left.min(BATCH);
                iov.clear();
                for _ in 0..n {
                    let p = &packets[next];
                    next = (next + 1) % packets.len();
                    iov.push(libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
                }
                for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                    m.msg_hdr.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: msgs[..n] point at iovecs and packets that outlive
                // the call (the packets are never written to: the kernel only
                // reads them), and at `dst`, a valid sockaddr_in.
                let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
                if rc < 0 {
                    let e = std::io::Error::last_os_error();
                    // The loopback backlog overflowed: those SYNs never
                    // reached TCP (nobody counts them), go on.
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        return Err(e).context("sendmmsg of raw SYNs");
                    }
                } else {
                    sent += rc as u64;
                }
                left -= n;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet(SocketAddrV4::new(client_addr(5), 4000), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80), 7);
        assert_eq!(fold(sum16(&p[..20], 0)), 0, "IPv4 header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(fold(sum16(&p[20..], sum16(&pseudo, 0))), 0, "TCP checksum");
        assert_eq!(p[33], 0x02);
    }

    #[test]
    fn client_addresses_are_distinct_loopback_addresses() {
        let addrs: std::collections::HashSet<_> = (0..100_000).map(client_addr).collect();
        assert_eq!(addrs.len(), 100_000);
        assert!(addrs.iter().all(|a| a.is_loopback() && *a != Ipv4Addr::LOCALHOST));
    }
}
