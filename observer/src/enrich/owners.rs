//! Which process owns a socket: the kernel's events do not say who
//! listens, but every process's file descriptors in /proc do
//! (`socket:[INODE]`), so sock_diag's inode leads to the owner.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub name: String,
}

/// Owners of the given socket inodes; inodes nobody holds are missing from
/// the result. One pass over /proc, stopping once all are found; processes
/// that vanish or deny access are skipped.
pub fn find(inodes: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(all) = procfs::process::all_processes() else { return found };
    for proc in all.flatten() {
        let Ok(fds) = proc.fd() else { continue };
        for fd in fds.flatten() {
            let procfs::process::FDTarget::Socket(ino) = fd.target else { continue };
            if !inodes.contains(&ino) || found.contains_key(&ino) {
                continue;
            }
            // comm, as process.name in the kernel's events: the same name `ps` shows.
            let name = proc.stat().map(|s| s.comm).unwrap_or_else(|_| "?".to_owned());
            found.insert(ino, Owner { pid: proc.pid() as u32, name });
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_the_owner_of_an_own_socket() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let owners = find(&HashSet::from([ino]));
        assert_eq!(owners[&ino].pid, std::process::id());
    }
}
