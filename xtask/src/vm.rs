//! Boots a Debian kernel image in a VM and runs a shell script there.
//!
//! virtme-ng (`vng`) boots the image under qemu with the host's root file
//! system shared read-only (9p), so the guest runs the host's programs and
//! test binaries as they are: nothing is copied in and the guest never
//! compiles. Writable in the guest: /tmp, /run, /var/tmp (tmpfs or overlays
//! in guest memory, gone at power-off) and the host directories handed over
//! with `--rwdir` (the test runner's report directories).
//!
//! Why TCG: KVM does not work on these machines (qemu asserts on MSR
//! 0x10a), so the CPUs are emulated, about ten times slower than the host;
//! a boot takes 15 to 20 s.
//!
//! The console: vng prints the guest's serial console (on stderr when
//! stdout is not a terminal, as in CI), the boot messages first, then the script's output. The script is wrapped so
//! that it first turns kernel messages off the console (`dmesg -n 1`: they
//! would land in the middle of the script's lines; they stay in the kernel
//! log), then prints a begin marker, runs, and prints an exit marker with
//! its exit code. virtme-ng's own "script exited with code N" line is a
//! kernel message, so it is gone with `dmesg -n 1`: the markers are ours.
//! Every console line goes to a log file; the lines between the markers are
//! handed to the caller as they arrive.
//!
//! Stopping: vng runs qemu through a shell and virtme-run, so a timeout
//! kills the whole process tree. vng stays in our process group, so Ctrl-C
//! on a terminal reaches qemu as well.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::kernels::{Image, Vng};

/// Memory and CPUs of a guest: the tests' namespaces, the daemon and the
/// lab's processes fit in 3 GiB with room for /tmp; the host has 2 cores.
const MEMORY: &str = "3G";
const CPUS: &str = "2";

/// How a guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The script ran to its end with this exit code.
    Exited(i32),
    /// The deadline passed; the VM was killed.
    TimedOut(Duration),
    /// The VM ended before the script did: a boot failure, a kernel panic,
    /// qemu or vng failing (their status here).
    Died(String),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "the script exited with code {code}"),
            Ending::TimedOut(d) => write!(f, "the VM did not finish within {} s and was killed", d.as_secs()),
            Ending::Died(status) => write!(f, "the VM ended before the script did ({status})"),
        }
    }
}

/// One VM run: which kernel, what the guest may write, how long it may take.
pub struct Guest<'a> {
    pub vng: &'a Vng,
    pub image: &'a Image,
    /// Host directories the guest may write to (the rest is read-only).
    pub rwdirs: Vec<PathBuf>,
    pub timeout: Duration,
    /// Where the whole console (boot messages included) is saved.
    pub console_log: PathBuf,
    /// Where the generated guest scripts are written (host, readable by the guest).
    pub scratch: PathBuf,
}

impl Guest<'_> {
    /// Boots the VM, runs `script` (POSIX sh) there, hands each of its
    /// output lines (stdout and stderr) to `on_line` as they come.
    pub fn run(&self, script: &str, mut on_line: impl FnMut(&str)) -> anyhow::Result<Ending> {
        std::fs::create_dir_all(&self.scratch).with_context(|| format!("creating {}", self.scratch.display()))?;
        if let Some(dir) = self.console_log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Unique per run, so that concurrent runs and the script's own
        // output cannot be taken for the markers.
        let nonce = format!("{}-{}", std::process::id(), nanos());
        let markers = Markers::new(&nonce);
        let body = self.scratch.join(format!("{nonce}.sh"));
        let wrapper = self.scratch.join(format!("{nonce}-wrapper.sh"));
        std::fs::write(&body, script).with_context(|| format!("writing {}", body.display()))?;
        std::fs::write(&wrapper, markers.wrapper(&body)).with_context(|| format!("writing {}", wrapper.display()))?;
        let ending = self.boot(&wrapper, &markers, &mut on_line);
        let _ = std::fs::remove_file(&body);
        let _ = std::fs::remove_file(&wrapper);
        ending
    }

    fn boot(&self, wrapper: &Path, markers: &Markers, on_line: &mut dyn FnMut(&str)) -> anyhow::Result<Ending> {
        let log = std::fs::File::create(&self.console_log)
            .with_context(|| format!("creating {}", self.console_log.display()))?;
        let mut cmd = self.vng.command();
        cmd.arg("-r").arg(&self.image.vmlinuz).args(["--disable-kvm", "--verbose", "--memory", MEMORY, "--cpus", CPUS]);
        for dir in &self.rwdirs {
            cmd.arg(format!("--rwdir={}", dir.display()));
        }
        cmd.arg("--exec").arg(format!("sh {}", wrapper.display()));
        // The console is on vng's stderr when its stdout is not a terminal,
        // qemu's and vng's own messages too: one pipe for both, in order.
        let (console, writer) = std::io::pipe().context("creating the console pipe")?;
        let writer2 = writer.try_clone().context("duplicating the console pipe")?;
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let spawned = cmd.spawn();
        // Our copies of the write end must go, or the console never ends.
        drop(cmd);
        let mut child = spawned.with_context(|| format!("starting {}", self.vng.path.display()))?;

        let timed_out = Arc::new(AtomicBool::new(false));
        let (done, watchdog_rx) = mpsc::channel::<()>();
        let watchdog = {
            let (pid, timeout, flag) = (child.id(), self.timeout, timed_out.clone());
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = watchdog_rx.recv_timeout(timeout) {
                    flag.store(true, Ordering::SeqCst);
                    kill_tree(pid);
                }
            })
        };

        let mut log = std::io::LineWriter::new(log);
        let mut inside = false;
        let mut code = None;
        let mut reader = BufReader::new(console);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    kill_tree(child.id());
                    let _ = child.wait();
                    return Err(e).context("reading the VM console");
                }
            }
            let text = String::from_utf8_lossy(&raw);
            let line = text.trim_end_matches(['\n', '\r']);
            log.write_all(line.as_bytes()).and_then(|()| log.write_all(b"\n")).context("writing the console log")?;
            match markers.classify(line, inside) {
                Console::Boot => {}
                Console::Begin => inside = true,
                Console::Output(l) => on_line(l),
                Console::Exit(before, c) => {
                    if !before.is_empty() {
                        on_line(before);
                    }
                    code = Some(c);
                    inside = false;
                }
            }
        }
        let status: ExitStatus = child.wait().context("waiting for vng")?;
        drop(done);
        let _ = watchdog.join();
        Ok(if timed_out.load(Ordering::SeqCst) {
            Ending::TimedOut(self.timeout)
        } else if let Some(c) = code {
            Ending::Exited(c)
        } else {
            Ending::Died(format!("vng {status}"))
        })
    }
}

/// The markers the wrapper prints around the script's output.
struct Markers {
    begin: String,
    exit: String,
}

/// What a console line is.
#[derive(Debug, PartialEq, Eq)]
enum Console<'a> {
    /// Before the script: boot messages, virtme-ng's set-up.
    Boot,
    Begin,
    Output(&'a str),
    /// The exit marker, with what the script printed on that line before it
    /// (output without a final newline).
    Exit(&'a str, i32),
}

impl Markers {
    fn new(nonce: &str) -> Markers {
        Markers { begin: format!("@@xtask-begin-{nonce}"), exit: format!("@@xtask-exit-{nonce}") }
    }

    fn wrapper(&self, body: &Path) -> String {
        format!(
            "# Written by cargo xtask: runs in the guest, then it powers off.\n\
             # Kernel messages stay in the kernel log, off the console.\n\
             dmesg -n 1 2>/dev/null\n\
             echo '{begin}'\n\
             sh '{body}' 2>&1\n\
             echo '{exit}' $?\n",
            begin = self.begin,
            exit = self.exit,
            body = body.display(),
        )
    }

    fn classify<'a>(&self, line: &'a str, inside: bool) -> Console<'a> {
        if !inside {
            return if line.ends_with(&self.begin) { Console::Begin } else { Console::Boot };
        }
        if let Some(at) = line.find(&self.exit) {
            let code = line[at + self.exit.len()..].trim().parse().unwrap_or(-1);
            return Console::Exit(&line[..at], code);
        }
        Console::Output(line)
    }
}

/// Kills `pid` and every process below it (vng -> sh -> virtme-run -> qemu).
fn kill_tree(pid: u32) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
                if let Some(ppid) = parent_of(&stat) {
                    parents.push((p, ppid));
                }
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    let _ = Command::new("kill").arg("-KILL").args(tree.iter().map(u32::to_string)).stderr(Stdio::null()).status();
}

/// The parent pid from /proc/PID/stat (`pid (comm) state ppid ...`; comm
/// may hold spaces and parentheses, so read after the last `)`).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Quotes `args` for sh, one word each.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_split_at_the_markers() {
        let m = Markers::new("7-1");
        assert_eq!(m.classify("[    5.2] virtme-ng-init: starting script", false), Console::Boot);
        assert_eq!(m.classify("@@xtask-begin-7-1", false), Console::Begin);
        assert_eq!(m.classify("hello", true), Console::Output("hello"));
        assert_eq!(m.classify("@@xtask-exit-7-1 3", true), Console::Exit("", 3));
        assert_eq!(m.classify("no newline@@xtask-exit-7-1 0", true), Console::Exit("no newline", 0));
        // The wrapper's own echo command is never on the console; its output is.
        assert!(m.wrapper(Path::new("/t/b.sh")).contains("echo '@@xtask-exit-7-1' $?"));
    }

    #[test]
    fn the_parent_pid_is_read_after_the_command_name() {
        assert_eq!(parent_of("4242 (qemu (x) y) S 4241 4240 0"), Some(4241));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        let args = ["observer", "doctor", "--json", "it's here", ""].map(String::from);
        assert_eq!(shell_words(&args), r"observer doctor --json 'it'\''s here' ''");
    }
}
