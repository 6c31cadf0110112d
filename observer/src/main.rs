use std::process::ExitCode;

use clap::Parser as _;
use observer::{
    cli::{Cli, Command, Format},
    config::Config,
    daemon, doctor,
    history::Reader,
    privilege::MissingCapability,
    views,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // The CLI's output is read by pipelines (`observer events | head`):
        // a reader that leaves ends it quietly, as it ends `cat`. Rust
        // ignores SIGPIPE, which turned that into an error or a panic in
        // println!. The daemon keeps ignoring it: a syslog or webhook peer
        // that closes must give an EPIPE to handle, not kill it.
        // SAFETY: called before any thread is started; setting a signal's
        // disposition to its default has no other effect on this process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OBSERVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, with the chain of causes: what an admin reads first.
            eprintln!("observer: {err:#}");
            if err.downcast_ref::<MissingCapability>().is_some() {
                ExitCode::from(77) // EX_NOPERM
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref())?;
    if let Some(dir) = cli.global.state_dir.clone() {
        config.daemon.state_dir = dir;
    }
    if let Some(dir) = cli.global.runtime_dir.clone() {
        config.daemon.runtime_dir = dir;
    }
    match cli.command {
        Command::Run(args) => {
            if let Some(path) = args.json_log {
                config.daemon.json_log = path;
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(daemon::run(config, args.shared))
        }
        Command::Summary(args) => {
            let reader = Reader::open(&config.daemon.state_dir)?;
            match args.format {
                Format::Json => println!("{}", views::summary::json(&reader, args.since, args.port)?),
                Format::Table => views::summary::table(&reader, args.since, args.port, &mut std::io::stdout().lock())?,
            }
            Ok(())
        }
        Command::Events(args) => {
            let reader = Reader::open(&config.daemon.state_dir)?;
            views::events::show(&reader, args.since, args.port, args.format == Format::Json, args.follow)
        }
        Command::Why(args) => {
            let reader = Reader::open(&config.daemon.state_dir).map_err(|e| e.to_string());
            let why = views::why::WhyArgs {
                port: args.port,
                since: args.since,
                netns: args.netns,
                nft: config.enrich.nft,
                nft_timeout: std::time::Duration::from_millis(config.enrich.command_timeout_ms),
            };
            views::why::show(&why, reader, &mut std::io::stdout().lock())
        }
        Command::Report(args) => {
            let reader = Reader::open(&config.daemon.state_dir)?;
            let html = views::report::render(&reader, args.since, std::time::SystemTime::now())?;
            views::report::write(&html, args.out.as_deref())?;
            if let Some(out) = &args.out {
                eprintln!("observer: wrote {} ({} KiB)", out.display(), html.len().div_ceil(1024));
            }
            Ok(())
        }
        Command::Doctor(args) => {
            let report = doctor::report(&config);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                doctor::print(&report);
            }
            Ok(())
        }
        Command::Config => {
            print!("{}", Config::documented_defaults()?);
            Ok(())
        }
        Command::Lab(args) => {
            let opts = observer::lab::Options {
                only: args.only,
                jobs: args.jobs,
                config: cli.global.config,
                state_dir: cli.global.state_dir.is_some().then(|| config.daemon.state_dir.clone()),
            };
            let outcomes = observer::lab::run(&opts)?;
            match args.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
                Format::Table => observer::lab::print(&outcomes),
            }
            let failed = outcomes.iter().filter(|o| !o.pass).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} lab scenarios failed", outcomes.len());
            }
            Ok(())
        }
        Command::LabPeer(args) => observer::lab::peer::run(args),
    }
}
