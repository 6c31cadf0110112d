//! Healthy workloads: what the observer costs a server whose connections
//! all succeed, measured with the programs an admin runs, not ours.
//!
//! - web: nginx from Debian answering a tiny response, loaded by wrk with
//!   `Connection: close`, so every request is a whole TCP connection
//!   (handshake, request, response, teardown): the path of every
//!   connection-state hook;
//! - small messages: iperf3 writing 128-byte messages with TCP_NODELAY, so
//!   every message is a segment of its own: the path of every per-packet
//!   and per-syscall hook.
//!
//! Both run in one namespace on loopback. The servers start once and serve
//! every run; a run is one client invocation. Its CPU time is the client's
//! (wait4's rusage) plus the server's during the run (/proc/PID/stat): on
//! loopback the kernel's work for both ends, hooks included, runs on their
//! stacks, so units per CPU-second is the throughput the peers are compared
//! by, as in the storms.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

use super::{load::Load, peer::process_cpu};
use observer::lab::ns::Netns;

const WEB_PORT: u16 = 8081;
const IPERF_PORT: u16 = 5201;
/// The message size of the small-message workload.
pub const MESSAGE_BYTES: u64 = 128;
/// wrk's connections: enough to keep nginx's one worker busy on a 2-CPU
/// machine without making the run about queueing.
const WRK_CONNECTIONS: &str = "16";

/// The namespace with nginx and an iperf3 server running in it.
pub struct Healthy {
    ns: Netns,
    nginx: Child,
    iperf: Child,
}

impl Healthy {
    pub fn start(dir: &Path) -> anyhow::Result<Healthy> {
        let ns = Netns::new("bench-healthy").map_err(|e| anyhow!(e))?;
        // Short connections leave TIME_WAIT sockets behind: let the client
        // reuse them, and give it the whole ephemeral port range.
        for (key, value) in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000")] {
            ns.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]).map_err(|e| anyhow!(e))?;
        }
        let conf = nginx_config(dir)?;
        let nginx = spawn(&ns, &["nginx", "-c", &conf.to_string_lossy()], "nginx (cargo xtask setup installs it)")?;
        let iperf = spawn(&ns, &["iperf3", "--server", "--port", &IPERF_PORT.to_string()], "iperf3")?;
        let healthy = Healthy { ns, nginx, iperf };
        healthy.wait_listening(WEB_PORT)?;
        healthy.wait_listening(IPERF_PORT)?;
        Ok(healthy)
    }

    pub fn netns_inode(&self) -> u32 {
        self.ns.inode()
    }

    fn wait_listening(&self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = self.ns.run(move || TcpStream::connect(("127.0.0.1", port)).is_ok()).map_err(|e| anyhow!(e))?;
            if up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on :{port} in the benchmark namespace after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// wrk against nginx for `seconds`: `attempts` are completed requests.
    pub fn web(&self, seconds: f64) -> anyhow::Result<Load> {
        let secs = format!("{}s", seconds.ceil().max(1.0) as u64);
        let url = format!("http://127.0.0.1:{WEB_PORT}/");
        let args = ["wrk", "-t1", "-c", WRK_CONNECTIONS, "-d", &secs, "-H", "Connection: close", &url];
        let (out, load) = self.client(&self.nginx, &args)?;
        let requests = parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))?;
        Ok(Load { attempts: requests, ..load })
    }

    /// iperf3 sending 128-byte messages for `seconds`: `attempts` are messages.
    pub fn small_messages(&self, seconds: f64) -> anyhow::Result<Load> {
        let secs = (seconds.ceil().max(1.0) as u64).to_string();
        let (port, len) = (IPERF_PORT.to_string(), MESSAGE_BYTES.to_string());
        let args = ["iperf3", "-c", "127.0.0.1", "-p", &port, "-l", &len, "-N", "-t", &secs, "-J"];
        let (out, load) = self.client(&self.iperf, &args)?;
        let bytes = parse_iperf(&out).with_context(|| format!("reading iperf3's JSON:\n{out}"))?;
        Ok(Load { attempts: bytes / MESSAGE_BYTES, ..load })
    }

    /// Runs a client to completion in the namespace; its output, and the
    /// run's wall time and CPU time (the client's and `server`'s).
    fn client(&self, server: &Child, args: &[&str]) -> anyhow::Result<(String, Load)> {
        let server_cpu0 = process_cpu(server.id()).context("the server's CPU time")?;
        let began = Instant::now();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (cargo xtask setup installs it)", args[0]))?;
        let (status, client_cpu, out, err) = wait_with_rusage(child)?;
        let elapsed = began.elapsed();
        let server_cpu = process_cpu(server.id()).context("the server's CPU time")?.saturating_sub(server_cpu0);
        if !status.success() {
            bail!("{} failed ({status}): {}", args[0], err.trim());
        }
        Ok((out, Load { attempts: 0, elapsed, cpu: client_cpu + server_cpu }))
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        for child in [&mut self.nginx, &mut self.iperf] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(ns: &Netns, args: &[&str], what: &str) -> anyhow::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))
}

/// One process, in the foreground (so that its pid is the one we started
/// and its CPU time is all of it), one worker, no logs, every path it
/// writes in the benchmark's directory.
fn nginx_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr crit;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n  \
         fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n  \
         server {{\n    listen 127.0.0.1:{WEB_PORT} backlog=4096;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits for `child` with wait4, for its CPU time (utime + stime, in
/// microseconds rather than /proc's clock ticks), collecting its output.
fn wait_with_rusage(mut child: Child) -> anyhow::Result<(std::process::ExitStatus, Duration, String, String)> {
    use std::io::Read as _;
    let mut stdout = child.stdout.take().context("client stdout")?;
    let mut stderr = child.stderr.take().context("client stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    stdout.read_to_string(&mut out).context("reading the client's output")?;
    let err = reader.join().unwrap_or_default();
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (std's Child is never
    // waited on afterwards: it is forgotten below); the pointers are valid
    // for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    std::mem::forget(child);
    if rc != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Ok((std::os::unix::process::ExitStatusExt::from_raw(status), cpu, out, err))
}

/// Completed requests from wrk's summary line `N requests in 3.00s, ...`.
fn parse_wrk(out: &str) -> anyhow::Result<u64> {
    let line = out.lines().find(|l| l.contains(" requests in ")).context("no 'requests in' line")?;
    let n: u64 = line.split_whitespace().next().context("empty line")?.parse().context("request count")?;
    if let Some(errors) = out.lines().find(|l| l.trim_start().starts_with("Socket errors:")) {
        bail!("wrk saw socket errors, the workload is not healthy: {}", errors.trim());
    }
    if n == 0 {
        bail!("wrk completed no request");
    }
    Ok(n)
}

/// Bytes the client sent, from iperf3's JSON (`end.sum_sent.bytes`).
fn parse_iperf(out: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(out).context("not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    v.pointer("/end/sum_sent/bytes").and_then(|b| b.as_u64()).context("no end.sum_sent.bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_is_parsed_and_errors_refused() {
        let ok = "Running 3s test @ http://127.0.0.1:8081/\n  1 threads and 16 connections\n  \
                  62841 requests in 3.00s, 9.89MB read\nRequests/sec:  20934.12\n";
        assert_eq!(parse_wrk(ok).unwrap(), 62841);
        let bad = format!("{ok}  Socket errors: connect 0, read 12, write 0, timeout 0\n");
        assert!(parse_wrk(&bad).unwrap_err().to_string().contains("Socket errors"));
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn iperf_bytes_and_errors() {
        assert_eq!(parse_iperf(r#"{"end":{"sum_sent":{"bytes":1280}}}"#).unwrap(), 1280);
        let e = parse_iperf(r#"{"error":"unable to connect"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"));
    }
}
