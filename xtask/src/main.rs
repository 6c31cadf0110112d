//! Developer and CI tasks: `cargo xtask setup | test | vm | run | lab | bench | install | modules`.
//!
//! Everything a fresh machine needs is installed from here, idempotently, so
//! that the README's two commands work on a machine nobody touched by hand.

mod install;
mod kernels;
mod modules;
mod setup;
mod suite;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "observer's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and packages the build and tests need (idempotent).
    Setup,
    /// Set up, then run the whole test suite (unit and real-kernel
    /// integration tests) on this machine's kernel, and the real-kernel
    /// tests on Debian's kernels in VMs. Ends with one line per kernel and
    /// a total `N passed, N failed` line.
    Test {
        /// Which kernels, comma-separated: `host` (the whole suite here),
        /// `5.10`, `6.1`, `6.12` (in VMs), or `all`.
        #[arg(long, value_delimiter = ',', default_values_t = suite::DEFAULT_KERNELS.to_vec())]
        kernel: Vec<suite::KernelChoice>,
        /// Extra arguments: for cargo nextest on the host, for the test
        /// binaries (libtest) in the VMs. A test-name filter works on both
        /// (e.g. `refused_ipv4`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot one of the test kernels in a VM and run a command there, with
    /// the host's file system read-only (/tmp writable). One argument is a
    /// shell command line; several are one command and its arguments.
    /// Exits with the command's exit code.
    Vm {
        #[arg(long)]
        kernel: kernels::Series,
        /// Kill the VM after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Set up, build, and run the daemon in the foreground (as root).
    Run {
        /// Arguments for `observer run`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The observer crate's module graph: which module names which, its
    /// cycles and the edges back up the data flow (fails on either).
    Modules,
    /// Build a release and install it as a systemd service: binary, group,
    /// config (kept if present) and the hardened unit (dist/observer.service).
    Install {
        /// Install under this root instead of / (for packaging); no group or systemctl then.
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
    },
    /// Set up, build, and run the scenario lab: every failure the observer
    /// diagnoses, built for real in network namespaces (as root).
    Lab {
        /// Arguments for `observer lab` (e.g. `--only no_listener`, `--format json`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build (release), and benchmark the observer under a refused
    /// storm and a SYN flood against a baseline, a bpftrace peer and the
    /// kernel's counters; prints a table, writes target/bench/bench-<time>.json.
    Bench {
        /// Arguments for `observer-bench` (e.g. `--rounds 5 --seconds 3`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Task::Test { kernel, args } => test(&kernel, &args),
        task => run(task).unwrap_or_else(|e| {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }),
    }
}

/// The test suite always ends with its `N passed, N failed` line, also when
/// the set-up fails (CI reads the last line).
fn test(kernel: &[suite::KernelChoice], args: &[String]) -> ExitCode {
    let ready = setup::run().and_then(|()| {
        if !nix_is_root() {
            bail!("the test suite needs root (it loads eBPF programs and creates network namespaces)");
        }
        Ok(())
    });
    if let Err(e) = ready {
        eprintln!("xtask: {e:#}");
        println!("0 passed, 1 failed");
        return ExitCode::FAILURE;
    }
    if suite::run(workspace(), kernel, args) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every task but `test`.
fn run(task: Task) -> anyhow::Result<ExitCode> {
    match task {
        Task::Setup | Task::Test { .. } => setup::run()?,
        Task::Vm { kernel, timeout, command } => return vm(kernel, std::time::Duration::from_secs(timeout), &command),
        Task::Run { args } => observer(&["run"], &args)?,
        Task::Lab { args } => observer(&["lab"], &args)?,
        Task::Bench { args } => {
            if !nix_is_root() {
                bail!("the benchmark needs root (it loads eBPF programs and creates network namespaces)");
            }
            setup::run()?;
            // The observer measured is the release build an admin installs;
            // the benchmark and its load generators are a crate of their own
            // (observer-bench), never part of that binary.
            status(Command::new("cargo").args(["build", "--release", "-p", "observer", "-p", "observer-bench"]))?;
            let release = workspace().join("target/release");
            // The report lands in the workspace's target/, wherever cargo was started.
            status(
                Command::new(release.join("observer-bench"))
                    .arg("--observer")
                    .arg(release.join("observer"))
                    .arg("--out")
                    .arg(workspace().join("target/bench"))
                    .args(&args),
            )?
        }
        Task::Install { root } => install::run(&root)?,
        Task::Modules => modules::run(&workspace().join("observer/src"))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask vm`: the command's output on stdout, its exit code as ours.
fn vm(series: kernels::Series, timeout: std::time::Duration, command: &[String]) -> anyhow::Result<ExitCode> {
    let vng = kernels::ensure_vm_tools(workspace())?;
    let image = kernels::image(workspace(), series)?;
    let script = match command {
        [line] => line.clone(),
        words => format!("exec {}", vm::shell_words(words)),
    };
    let log = workspace().join("target/kernels/logs").join(format!("vm-{}.log", image.release));
    let guest = vm::Guest {
        vng: &vng,
        image: &image,
        rwdirs: vec![],
        timeout,
        console_log: log.clone(),
        scratch: workspace().join("target/kernels/tmp"),
    };
    eprintln!("xtask: booting {} (console in {})", image.release, log.display());
    match guest.run(&script, |line| println!("{line}"))? {
        vm::Ending::Exited(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        other => bail!("{other} (console: {})", log.display()),
    }
}

/// Set up, then `observer <command> <args>` from a release build.
fn observer(command: &[&str], args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    status(Command::new("cargo").args(["run", "--release", "-p", "observer", "--"]).args(command).args(args))
}

fn workspace() -> &'static std::path::Path {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}
