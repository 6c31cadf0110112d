//! Real-kernel test harness: network namespaces the test creates and
//! removes, the real daemon binary, and `expect_event` on its JSON log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use observer::event::FailureEvent;

/// The lab's namespace helper (`observer::lab::ns`, one implementation for
/// the lab and the tests), in the tests' manner: a namespace that cannot be
/// set up fails the test with the reason.
pub struct Netns(pub observer::lab::ns::Netns);

impl std::ops::Deref for Netns {
    type Target = observer::lab::ns::Netns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn must<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Netns {
    /// A new namespace with loopback up.
    pub fn new(tag: &str) -> Netns {
        Netns(must(observer::lab::ns::Netns::new(tag)))
    }

    pub fn ip(&self, args: &[&str]) {
        must(self.0.ip(args))
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) {
        must(self.0.exec(args))
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        must(self.0.nft(ruleset))
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        must(self.0.run(f))
    }
}

/// A TCP socket bound to `local` (SO_REUSEADDR, so tests can reuse ports).
pub fn bound_socket(local: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = if local.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    Ok(s)
}

/// Connects from `from` to `to`, returning the error kind (refused, etc.).
pub fn connect_from(from: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    let s = bound_socket(from)?;
    s.connect_timeout(&to.into(), timeout)?;
    Ok(s.into())
}

/// The real daemon, started on its own JSON log.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
    /// The runtime directory (health file), apart from the log's and the
    /// state's, as /run is on a host.
    pub run: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[], None)
    }

    /// Starts `observer run` with extra args and an optional config file
    /// text; waits for its readiness line.
    pub fn start_with(args: &[&str], config: Option<&str>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Daemon::start_in(dir, &state, args, config)
    }

    /// Starts the daemon on a given state directory (to restart it on the
    /// same history); `dir` holds the log and the config file.
    pub fn start_in(dir: tempfile::TempDir, state: &Path, args: &[&str], config: Option<&str>) -> Daemon {
        Daemon::start_env(dir, state, args, config, &[])
    }

    /// `start_in` with extra environment variables (a PATH with stubs, say).
    pub fn start_env(
        dir: tempfile::TempDir,
        state: &Path,
        args: &[&str],
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = dir.path().join("events.ndjson");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_observer"));
        cmd.envs(env.iter().copied());
        if let Some(text) = config {
            let path = dir.path().join("observer.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let run = tempfile::tempdir().expect("runtime tempdir");
        cmd.arg("--state-dir").arg(state).arg("--runtime-dir").arg(run.path());
        // Tests run side by side, each daemon beside the others.
        cmd.arg("run").arg("--shared").arg("--json-log").arg(&log).args(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn observer");
        let stderr = child.stderr.take().expect("stderr");
        let text = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains("ready:");
                sink.lock().unwrap().push_str(&(line + "\n"));
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut d = Daemon { child: Some(child), log, dir, run, stderr: text };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!("observer did not become ready ({status:?}):\n{}", d.stderr());
        }
        d
    }

    /// The daemon's process id (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Why the daemon said `hook` is unavailable on this kernel, if it did
    /// (a test of what only that hook sees then has nothing to test).
    pub fn hook_unavailable(&self, hook: &str) -> Option<String> {
        let marker = format!("hook {hook} unavailable: ");
        self.stderr().lines().find_map(|l| l.split_once(&marker).map(|(_, why)| why.to_owned()))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every record of a dataset written so far, as JSON (a torn last line is ignored).
    fn records(&self, dataset: &str) -> Vec<serde_json::Value> {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"]["dataset"] == dataset)
            .collect()
    }

    /// Every diagnosis record written so far, as JSON.
    pub fn diagnoses(&self) -> Vec<serde_json::Value> {
        self.records("observer.diagnosis")
    }

    /// Every event written so far.
    pub fn events(&self) -> Vec<FailureEvent> {
        self.records("observer.failure").into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
    }

    /// Waits until an event matching `pred` is in the log; returns it.
    pub fn expect_event(&self, what: &str, pred: impl Fn(&FailureEvent) -> bool) -> FailureEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!("no event {what} within 10 s; got:\n{:#?}\nobserver stderr:\n{}", self.events(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Refused connections of one namespace in the log so far (`event.count` summed).
    pub fn refused_in(&self, netns: u32) -> u64 {
        self.events()
            .iter()
            .filter(|e| e.observer.netns == netns && e.event.action.as_str() == "refused")
            .map(|e| e.event.count)
            .sum()
    }

    /// Events of one namespace, waiting `settle` for stragglers.
    pub fn events_in(&self, netns: u32, settle: Duration) -> Vec<FailureEvent> {
        std::thread::sleep(settle);
        self.events().into_iter().filter(|e| e.observer.netns == netns).collect()
    }

    /// SIGTERM; the exit status must be success. Returns stderr and every
    /// event in the log after shutdown (before the temp dir goes away).
    pub fn stop(mut self) -> (String, Vec<FailureEvent>) {
        let mut child = self.child.take().expect("child");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("kill");
        let status = child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr();
        assert!(status.success(), "observer exited with {status}:\n{err}");
        (err, self.events())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A listening socket with the given backlog that never accepts.
pub fn listener(addr: SocketAddr, backlog: i32) -> socket2::Socket {
    let s = bound_socket(addr).expect("bind listener");
    s.listen(backlog).expect("listen");
    s
}

/// Starts a non-blocking connect from a fixed port and leaves it in flight.
pub fn start_connect(from: SocketAddr, to: SocketAddr) -> socket2::Socket {
    let s = bound_socket(from).expect("bind client");
    s.set_nonblocking(true).expect("nonblocking");
    let _ = s.connect(&to.into());
    s
}

/// A blocking connect whose SYN is retried `syn_retries` times before the
/// kernel gives up with ETIMEDOUT (TCP_SYNCNT), so a timeout takes seconds.
pub fn connect_with_syn_retries(from: SocketAddr, to: SocketAddr, syn_retries: i32) -> std::io::Result<()> {
    let s = bound_socket(from)?;
    observer::lab::peer::set_syn_retries(&s, syn_retries)?;
    s.connect(&to.into())
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("ip"), port)
}

pub fn log_path(d: &Daemon) -> &Path {
    &d.log
}

/// A blocking connect from `from`: connect() itself returns the error.
pub fn connect_blocking(from: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    bound_socket(from)?.connect(&to.into())
}

/// The calling thread's name as the kernel reports it (`process.name`).
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm").expect("comm").trim_end().to_owned()
}

/// Connections to a closed port inside `ns`, `n` of them, `every` apart.
pub fn refuse(ns: &Netns, port: u16, n: usize, every: Duration) {
    ns.run(move || {
        for _ in 0..n {
            let r = connect_from(sa("127.0.0.1", 0), sa("127.0.0.1", port), Duration::from_secs(2));
            assert_eq!(r.err().map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
            std::thread::sleep(every);
        }
    });
}

/// `f`'s first `Some`, polled every 100 ms; fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.1: the status, the content type and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}
