//! Throwaway network namespaces for the lab (and the integration tests):
//! created with iproute2, joined per thread with setns, removed on drop.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::AsFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; its stderr becomes the error.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace with loopback up, removed (with the processes
/// started in it) on drop.
pub struct Netns {
    pub name: String,
    peers: Vec<Child>,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("obs-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, peers: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace inode, as the observer reports it (`observer.netns`).
    pub fn inode(&self) -> u32 {
        crate::netns::inode_of(&self.path()).unwrap_or(0)
    }

    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset.as_bytes()).map_err(|e| format!("nft stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Runs `f` on a thread that joined this namespace (setns changes only
    /// the calling thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let file = File::open(self.path()).map_err(|e| format!("{}: {e}", self.path().display()))?;
        // Named: the thread's name is the comm the kernel reports for its connects.
        std::thread::Builder::new()
            .name("lab-client".to_owned())
            .spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns: {e}"))?;
                Ok(f())
            })
            .map_err(|e| format!("spawning a thread: {e}"))?
            .join()
            .map_err(|_| "namespace thread panicked".to_owned())?
    }

    /// Starts a process inside the namespace and waits until it prints its
    /// first line (its readiness); it is killed when the namespace goes.
    pub fn spawn(&mut self, program: &std::path::Path, args: &[&str]) -> Result<u32, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", program.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        self.peers.push(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("peer: {e}"))?;
        if line.trim().is_empty() {
            return Err(format!("peer {args:?} exited before it was ready"));
        }
        Ok(pid)
    }

    /// Kills the processes started with `spawn`.
    pub fn stop_peers(&mut self) {
        for mut c in self.peers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_peers();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair, like a client and a server on one
/// network: `server` has `.1`, `client` has `.2` of 10.77.`net`.0/24 and
/// fd77:`net`::/64.
pub struct Link {
    pub server: Netns,
    pub client: Netns,
    pub net: u8,
}

impl Link {
    pub fn new(tag: &str, net: u8) -> Result<Link, String> {
        let server = Netns::new(&format!("{tag}-s"))?;
        let client = Netns::new(&format!("{tag}-c"))?;
        let (s_if, c_if) =
            (format!("obs{net}s{}", std::process::id() % 10000), format!("obs{net}c{}", std::process::id() % 10000));
        sh(&[
            "ip",
            "link",
            "add",
            &s_if,
            "netns",
            &server.name,
            "type",
            "veth",
            "peer",
            "name",
            &c_if,
            "netns",
            &client.name,
        ])?;
        for (ns, ifname, host) in [(&server, &s_if, 1), (&client, &c_if, 2)] {
            ns.ip(&["addr", "add", &format!("10.77.{net}.{host}/24"), "dev", ifname])?;
            ns.ip(&["addr", "add", &format!("fd77:{net}::{host}/64"), "dev", ifname, "nodad"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(Link { server, client, net })
    }

    pub fn server_v4(&self) -> std::net::IpAddr {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 77, self.net, 1))
    }

    pub fn server_v6(&self) -> std::net::IpAddr {
        format!("fd77:{}::1", self.net).parse().unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))
    }
}
