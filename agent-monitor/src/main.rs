//! agent-monitor: a kernel-enforced read-only boundary around AI agent processes.
mod bpf;
mod cli;
mod daemon;
mod events;
mod metrics;
mod policy;
mod sinks;

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use cli::{Cli, Command};

fn init_tracing() {
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn check(file: &std::path::Path) -> ExitCode {
    match policy::load(file) {
        Ok(p) => {
            let c = policy::compile(&p);
            println!("{}: ok ({} agent(s), policy hash {})", file.display(), c.agents.len(), c.hash);
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::from(1)
        }
    }
}

fn events(follow: bool, file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file {
        Some(f) => f,
        None => {
            let source = daemon::PolicySource::resolve(config);
            let p = source
                .load()
                .map_err(|d| anyhow::anyhow!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
            PathBuf::from(p.daemon.events_file.unwrap_or_else(|| daemon::DEFAULT_EVENTS_FILE.into()))
        }
    };
    let mut f = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the events log {}: {e}", path.display()))?;
    let mut pos = 0u64;
    loop {
        f.seek(SeekFrom::Start(pos))?;
        let mut r = BufReader::new(&f);
        let mut line = String::new();
        while r.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break; // a line still being written
            }
            print!("{line}");
            pos += line.len() as u64;
            line.clear();
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Check { file } => return check(&file),
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(daemon::run(args))
        }
        Command::Events { follow, file, config } => events(follow, file, config),
        Command::Exec { .. } | Command::Status | Command::Approve { .. } | Command::Deny { .. } => Err(
            anyhow::anyhow!("this subcommand needs the daemon's control socket, which this build does not have yet"),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-monitor: {e:#}");
            ExitCode::from(1)
        }
    }
}
