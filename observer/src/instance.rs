//! One daemon per host: the start-up check that comes before any program
//! is loaded.
//!
//! Two daemons would each count every failure, so every record, history row
//! and alert would be doubled, and nothing in either log would say so. Two
//! checks, because the two ways it happens differ:
//! - Same state directory (a second `observer run`, or a unit started
//!   twice): an exclusive `flock` on `<state_dir>/observer.pid`, which holds
//!   the owner's pid so that the refusal can name it. A lock, not the
//!   presence of the file: the kernel drops it when the process dies, even by
//!   `kill -9`, so a stale file never blocks a restart.
//! - Different state directories (or containers with their own /run): only
//!   the kernel knows. Every process whose executable has our name and that
//!   holds one of our programs (by the program's name, as the kernel keeps
//!   it) is another observer. `run --shared` lets a second one run beside
//!   it on purpose (tests, a trial of a new version); both then say so.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

pub const PID_FILE: &str = "observer.pid";

#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(
        "another observer (pid {pid}) is running with the state directory {dir}; stop it first \
         (`systemctl stop observer`), or give this one its own --state-dir"
    )]
    Running { pid: String, dir: PathBuf },
    #[error("the state directory cannot hold the lock {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
}

/// Held for the daemon's lifetime; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: Flock<File>,
}

/// Takes the state directory's lock, or says which process holds it.
/// The directory must exist (the history creates it with its modes).
pub fn lock_state_dir(dir: &Path) -> Result<StateDirLock, InstanceError> {
    let path = dir.join(PID_FILE);
    let io = |e| InstanceError::StateDir(path.clone(), e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            return Err(InstanceError::Running { pid, dir: dir.to_owned() });
        }
        Err((_, e)) => return Err(io(e.into())),
    };
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    lock.sync_all().map_err(io)?;
    Ok(StateDirLock { _lock: lock })
}

/// Another process holding our programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Other {
    pub pid: u32,
    pub exe: PathBuf,
}

impl std::fmt::Display for Other {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.exe.display())
    }
}

/// The kernel keeps a program's name cut to 15 bytes (BPF_OBJ_NAME_LEN).
const KERNEL_NAME_LEN: usize = 15;

/// Other observers whose programs are in the kernel now: processes whose
/// executable has our file name, other than this one, holding a program
/// named like one of `programs`. Processes that vanish while we look are
/// skipped.
pub fn others_attached(programs: &[&str]) -> Vec<Other> {
    let Ok(me) = std::env::current_exe() else { return Vec::new() };
    let Some(my_name) = exe_name(&me) else { return Vec::new() };
    let own_pid = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let candidates: Vec<Other> = procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            (pid != own_pid && exe_name(&exe).as_ref() == Some(&my_name)).then_some(Other { pid, exe })
        })
        .collect();
    if candidates.is_empty() {
        return candidates;
    }
    // The kernel's programs by id, read once: only our names matter.
    let ours: Vec<&[u8]> = programs.iter().map(|p| &p.as_bytes()[..p.len().min(KERNEL_NAME_LEN)]).collect();
    let our_ids: std::collections::HashSet<u32> =
        aya::programs::loaded_programs().flatten().filter(|p| ours.contains(&p.name())).map(|p| p.id()).collect();
    candidates.into_iter().filter(|c| holds_program(c.pid, &our_ids)).collect()
}

/// The executable's file name, without the " (deleted)" the kernel adds
/// when the binary was replaced (an upgrade under a running daemon).
fn exe_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    Some(name.trim_end_matches(" (deleted)").to_owned())
}

/// Whether `pid` holds a program fd, or a link fd, whose program is one of ours.
fn holds_program(pid: u32, our_ids: &std::collections::HashSet<u32>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return false };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|text| prog_id(&text))
        .any(|id| our_ids.contains(&id))
}

/// The `prog_id:` line of a program's or a link's fdinfo.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_state_dir(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        match lock_state_dir(dir.path()) {
            Err(InstanceError::Running { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Running, got {other:?}"),
        }
        drop(first);
        lock_state_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_an_error_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(lock_state_dir(&file), Err(InstanceError::StateDir(..))));
    }

    #[test]
    fn prog_id_is_read_from_program_and_link_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tf\nmemlock:\t4096\nprog_id:\t42\n";
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\tperf\nlink_id:\t7\nprog_tag:\tf\nprog_id:\t43\n";
        assert_eq!(prog_id(prog), Some(42));
        assert_eq!(prog_id(link), Some(43));
        assert_eq!(prog_id("pos:\t0\nflags:\t0100002\n"), None);
    }

    #[test]
    fn a_replaced_binary_keeps_its_name() {
        assert_eq!(exe_name(Path::new("/usr/bin/observer (deleted)")).as_deref(), Some("observer"));
    }
}
