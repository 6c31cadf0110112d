//! External commands the enrichment runs (today `nft`), each with a
//! deadline, in the namespace it asks about.
//!
//! Why a deadline on every one: an external command can hang for reasons
//! the daemon does not control (a ruleset being rewritten under a lock, a
//! wrapper script waiting on a terminal, an NFS mount on its path). Without
//! one, a hung `nft` held its diagnosis for ever, and when the diagnosis
//! stage still forwarded the events, the JSON log, the history and the
//! ring buffer behind them. A command that misses its deadline is killed
//! (`kill_on_drop`), and the diagnosis says in its evidence what could not
//! be read.
//!
//! Why the namespace is joined in the child: the daemon's async threads
//! cannot join one (setns changes the calling thread, and tokio moves tasks
//! between threads), so the child joins it between fork and exec and the
//! daemon's threads stay where they are.

use std::{os::fd::AsRawFd, path::Path, process::Stdio, time::Duration};

/// Runs `program args` in the namespace of `netns` (a namespace file such
/// as `/proc/PID/ns/net`; `None`: the daemon's own), and returns its
/// standard output; a failure, a non-zero exit or a missed deadline is the
/// error, in words for the evidence.
pub async fn output(program: &str, args: &[&str], netns: Option<&Path>, timeout: Duration) -> Result<String, String> {
    let line = || format!("{program} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // Open here, in the parent, and kept open until the child is spawned:
    // the child's setns uses the inherited descriptor (exec closes it, as
    // it is close-on-exec).
    let ns = match netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?),
        None => None,
    };
    if let Some(file) = &ns {
        let fd = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed: it makes one system call
        // (setns) and builds its error from errno without allocating. `fd`
        // is open in the child: `ns` outlives the spawn below.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let child = cmd.spawn().map_err(|e| format!("running {program}: {e}"))?;
    drop(ns);
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| format!("{}: {e}", line()))?,
        // The future owned the child: dropping it killed the command.
        Err(_) => return Err(format!("{}: no answer within {} ms (killed)", line(), timeout.as_millis())),
    };
    if !out.status.success() {
        return Err(format!("{}: {}", line(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{} output: {e}", line()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_at_its_deadline() {
        let started = std::time::Instant::now();
        let err = output("sleep", &["30"], None, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("no answer within 200 ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn output_and_failures_are_reported() {
        assert_eq!(output("echo", &["hi"], None, Duration::from_secs(5)).await.unwrap(), "hi\n");
        let err = output("sh", &["-c", "echo nope >&2; exit 3"], None, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.ends_with(": nope"), "{err}");
        let err = output("/nonexistent/nft", &[], None, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.starts_with("running /nonexistent/nft"), "{err}");
    }

    #[tokio::test]
    async fn the_command_runs_in_the_namespace_it_is_given() {
        // Our own namespace through its file: the child reports the same inode.
        let own = crate::netns::own().unwrap();
        let out =
            output("readlink", &["/proc/self/ns/net"], Some(Path::new("/proc/self/ns/net")), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(out.trim(), format!("net:[{own}]"));
    }
}
