//! Command-line interface (docs/contract.md, section 8).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Explains, from the server's own kernel, why clients fail to connect.
#[derive(Debug, Parser)]
#[command(name = "observer", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML); see `observer config` for every option.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// History and runtime state (overrides daemon.state_dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The running daemon's health file (overrides daemon.runtime_dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Diagnoses of a period: what failed and why (from the history).
    Summary(SummaryArgs),
    /// Failure events of a period, or as they happen with --follow.
    Events(EventsArgs),
    /// Everything the host knows about one port, now and recently.
    Why(WhyArgs),
    /// One self-contained HTML page of the patterns in the history: failures
    /// by kind over time against the load, the hours they happen, the
    /// diagnoses that come back, the endpoints that fail most.
    Report(ReportArgs),
    /// Kernel, BTF, tracefs, cgroups: which hooks load here and what is degraded.
    Doctor(DoctorArgs),
    /// Print the default configuration, every option documented.
    Config,
    /// Build every failure the observer diagnoses for real, in network
    /// namespaces, and show the diagnosis produced next to the one expected.
    Lab(LabArgs),
    /// A lab stand-in server or client (used by `observer lab`).
    #[command(hide = true)]
    LabPeer(crate::lab::peer::PeerArgs),
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Run only this scenario (repeatable).
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// Run at most this many scenarios at once (default: all of them). On a
    /// slow machine, such as an emulated VM, fewer keep the timing honest.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write failure events and diagnoses as NDJSON here (overrides daemon.json_log).
    #[arg(long, value_name = "PATH")]
    pub json_log: Option<PathBuf>,
    /// Run even while another observer has its programs in the kernel
    /// (a trial of a new version beside the service, the lab, tests). Each
    /// then counts every failure, and both logs say so. Without it, the
    /// daemon refuses to start and names the other one.
    #[arg(long)]
    pub shared: bool,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// How far back (e.g. 15m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = crate::views::parse_since)]
    pub since: std::time::Duration,
    /// Only diagnoses of this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// `table` for people, `json` for a JSON array of diagnosis records.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// How far back (e.g. 15m, 1h, 2d).
    #[arg(long, default_value = "15m", value_parser = crate::views::parse_since)]
    pub since: std::time::Duration,
    /// Only events whose destination is this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Keep printing new events as the daemon records them.
    #[arg(long)]
    pub follow: bool,
    /// `table`, or `json` (one JSON object per line, as in the log).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The port (local for inbound failures, remote for outbound ones).
    pub port: u16,
    /// How far back the history is read (e.g. 15m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = crate::views::parse_since)]
    pub since: std::time::Duration,
    /// Look at the live state of this network namespace (its inode, as in
    /// `observer.netns`) instead of the caller's own.
    #[arg(long)]
    pub netns: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// How far back (e.g. 1d, 7d, 30d).
    #[arg(long, default_value = "7d", value_parser = crate::views::parse_since)]
    pub since: std::time::Duration,
    /// Write the page to this file (created 0640) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
