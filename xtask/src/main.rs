//! Developer and CI tasks: `cargo xtask setup | test | run | lab | bench`.
//!
//! Everything a fresh machine needs is installed from here, idempotently, so
//! that the README's two commands work on a machine nobody touched by hand.

mod install;
mod setup;

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
    /// Set up, then run the whole test suite (unit and real-kernel integration tests).
    Test {
        /// Extra arguments for cargo nextest (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the daemon in the foreground (as root).
    Run {
        /// Arguments for `observer run`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
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
        /// Arguments for `observer bench` (e.g. `--rounds 5 --seconds 3`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Task::Setup => setup::run(),
        Task::Test { args } => {
            setup::run()?;
            // Tests load programs into the kernel and create namespaces.
            if !nix_is_root() {
                bail!("the test suite needs root (it loads eBPF programs and creates network namespaces)");
            }
            status(Command::new("cargo").args(["nextest", "run", "--no-fail-fast", "--cargo-quiet"]).args(&args))
        }
        Task::Run { args } => observer(&["run"], &args),
        Task::Lab { args } => observer(&["lab"], &args),
        Task::Bench { args } => {
            if !nix_is_root() {
                bail!("the benchmark needs root (it loads eBPF programs and creates network namespaces)");
            }
            // The report lands in the workspace's target/, wherever cargo was started.
            let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = xtask.parent().unwrap_or(xtask).join("target/bench").to_string_lossy().into_owned();
            observer(&["bench", "--out", &out], &args)
        }
        Task::Install { root } => install::run(&root),
    }
}

/// Set up, then `observer <command> <args>` from a release build.
fn observer(command: &[&str], args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    status(Command::new("cargo").args(["run", "--release", "-p", "observer", "--"]).args(command).args(args))
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
