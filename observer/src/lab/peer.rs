//! `observer lab-peer`: the lab's stand-in servers and clients, as real
//! processes with names of their own (comm), so that a diagnosis has to
//! find the right process the way it would on a real host.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use clap::{Args, Subcommand, ValueEnum};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Process name (comm) to take.
    #[arg(long)]
    pub name: String,
    #[command(subcommand)]
    pub role: Role,
}

#[derive(Debug, Subcommand)]
pub enum Role {
    /// Listen and serve until killed.
    Listen {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 128)]
        backlog: i32,
        #[arg(long, value_enum, default_value_t = Serve::Echo)]
        serve: Serve,
    },
    /// Connect `count` times at once, then exit.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// TCP_SYNCNT: SYN retransmissions before ETIMEDOUT.
        #[arg(long)]
        syn_retries: Option<i32>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Serve {
    /// Never accept: the accept queue fills.
    Never,
    /// Accept, echo until the client closes, close normally.
    Echo,
    /// Accept and close at once with SO_LINGER 0: an RST.
    Abort,
}

pub fn run(args: PeerArgs) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(args.name.clone())?;
    nix::sys::prctl::set_name(&name)?;
    match args.role {
        Role::Listen { addr, backlog, serve } => listen(addr, backlog, serve),
        Role::Connect { to, count, syn_retries } => {
            println!("ready");
            let threads: Vec<_> = (0..count).map(|_| std::thread::spawn(move || connect(to, syn_retries))).collect();
            for t in threads {
                let _ = t.join();
            }
            Ok(())
        }
    }
}

fn listen(addr: SocketAddr, backlog: i32, serve: Serve) -> anyhow::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.listen(backlog)?;
    println!("ready");
    std::io::stdout().flush()?;
    if let Serve::Never = serve {
        loop {
            std::thread::park();
        }
    }
    loop {
        let (conn, _) = s.accept()?;
        match serve {
            Serve::Abort => {
                conn.set_linger(Some(Duration::ZERO))?;
                drop(conn);
            }
            _ => {
                std::thread::spawn(move || {
                    let mut conn: TcpStream = conn.into();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
}

fn connect(to: SocketAddr, syn_retries: Option<i32>) -> std::io::Result<()> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(n) = syn_retries {
        set_syn_retries(&s, n)?;
    }
    s.connect(&SockAddr::from(to))
}

/// TCP_SYNCNT: how many times the SYN is retried before connect() gives up
/// with ETIMEDOUT (socket2 has no setter for it).
pub fn set_syn_retries(s: &impl std::os::fd::AsRawFd, n: i32) -> std::io::Result<()> {
    // SAFETY: a valid socket fd and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&n as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
