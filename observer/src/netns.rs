//! Network namespaces by inode: the kernel names a namespace only by its
//! inode (`observer.netns`), so enrichment has to find a file that refers
//! to it before it can look inside (sock_diag, sysctls, nftables).

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {0} not found: no process, thread or /run/netns entry refers to it")]
    NotFound(u32),
    #[error("opening {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("entering network namespace {0}: {1}")]
    Enter(u32, nix::Error),
    #[error("the thread that worked in network namespace {0} panicked")]
    Panicked(u32),
}

/// The inode of a namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The daemon's own namespace.
pub fn own() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// Where namespaces are found, refreshed on a miss. Named namespaces
/// (`ip netns add`) are bind mounts under /run/netns; container namespaces
/// are held by their processes; a thread can sit in a namespace of its own
/// after setns(2), so threads are the last resort.
#[derive(Debug, Default)]
pub struct Directory {
    paths: HashMap<u32, PathBuf>,
}

impl Directory {
    /// A file that refers to `netns`, rescanning when the known one is gone.
    pub fn path(&mut self, netns: u32) -> Result<PathBuf, NetnsError> {
        if let Some(p) = self.paths.get(&netns) {
            if inode_of(p) == Some(netns) {
                return Ok(p.clone());
            }
        }
        self.rescan(true);
        self.paths.get(&netns).cloned().ok_or(NetnsError::NotFound(netns))
    }

    /// Every namespace currently reachable (threads not included: those are
    /// looked up only for a namespace an event named).
    pub fn all(&mut self) -> Vec<u32> {
        self.rescan(false);
        let mut v: Vec<u32> = self.paths.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn rescan(&mut self, with_threads: bool) {
        self.paths.retain(|ns, p| inode_of(p) == Some(*ns));
        let mut found = |p: PathBuf| {
            if let Some(ino) = inode_of(&p) {
                self.paths.entry(ino).or_insert(p);
            }
        };
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            dir.flatten().for_each(|e| found(e.path()));
        }
        let Ok(procs) = std::fs::read_dir("/proc") else { return };
        for pid in procs.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())) {
            found(pid.path().join("ns/net"));
            if with_threads {
                if let Ok(tasks) = std::fs::read_dir(pid.path().join("task")) {
                    tasks.flatten().for_each(|t| found(t.path().join("ns/net")));
                }
            }
        }
    }
}

/// Runs `f` on a new thread that has joined `netns` (setns changes only the
/// calling thread, so the daemon's own threads stay where they are).
/// Sockets opened, /proc/sys/net files read and commands spawned there see
/// that namespace.
pub fn run_in<T: Send + 'static>(
    dir: &mut Directory,
    netns: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let path = dir.path(netns)?;
    let file = File::open(&path).map_err(|e| NetnsError::Open(path.clone(), e))?;
    if own() == Some(netns) {
        return Ok(f());
    }
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::Enter(netns, e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(netns))?
}
