//! agent-monitor: a kernel-enforced read-only boundary around AI agent processes.
//!
//! The command line's entry point; the daemon and everything else is the library (`lib.rs`).
use std::process::ExitCode;

use agent_monitor::{cli, client, control, daemon, enforce, learning, sinks};
use clap::Parser;
use cli::{Cli, Command};
use client::Show;
use control::Request;

/// Log lines to stderr, as `format` says. `default_level` applies without RUST_LOG: the daemon
/// says what it does (`info`); a command run in someone's terminal (`exec` before the agent it
/// starts) says only what went wrong (`warn`).
fn init_tracing(format: cli::LogFormat, default_level: &str) {
    use std::io::IsTerminal as _;
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        cli::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        cli::LogFormat::Plain => builder.with_ansi(false).try_init(),
        cli::LogFormat::Auto if stderr_is_journal() => builder.with_ansi(false).without_time().try_init(),
        cli::LogFormat::Auto => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
            .try_init(),
    };
}

/// Is stderr the systemd journal? systemd says so in `JOURNAL_STREAM` (`DEVICE:INODE` of the
/// stream it connected), which a child with another stderr inherits too: compared with stderr.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" });
    let result = match cli.command {
        Command::Check { file } => return client::check(&file),
        Command::Run(args) => {
            daemon::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(daemon::run(args))
        }
        Command::Events { follow: true, control_socket, file: None, config } => {
            client::request(&client::socket_path(control_socket, config), Request::Events, Show::Raw)
        }
        Command::Events { follow, file, config, .. } => client::events(follow, file, config),
        Command::Cleanup { pin_path, config } => client::cleanup(pin_path, config),
        Command::Audit { cmd: cli::AuditCmd::Verify { files } } => match sinks::audit::verify(&files) {
            Ok(n) => {
                println!("ok: {n} lines, the chain is intact");
                Ok(())
            }
            Err(b) => {
                eprintln!("{b}");
                return ExitCode::from(1);
            }
        },
        Command::Status { control_socket, config, json } => {
            let show = if json { Show::Raw } else { Show::Status };
            client::request(&client::socket_path(control_socket, config), Request::Status, show)
        }
        Command::Reload { control_socket, config } => {
            client::request(&client::socket_path(control_socket, config), Request::Reload, Show::Raw)
        }
        Command::Exec { agent, config, allow_unmonitored, cmd } => {
            return enforce::exec::main(&agent, config, allow_unmonitored, &cmd)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "agent-monitor", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(anyhow::Error::from)
        }
        Command::Shims { cmd } => {
            use enforce::shims;
            let profile = |on: bool| on.then(|| std::path::Path::new(shims::PROFILE));
            match cmd {
                cli::ShimsCmd::Install { dir, config, profile: p, pairs } => {
                    shims::install(&dir, config, &pairs, profile(p))
                }
                cli::ShimsCmd::Remove { dir, profile: p } => shims::remove(&dir, profile(p)).map(|_| ()),
            }
        }
        Command::Profile { agent, events, since, until, action, config } => {
            let w = learning::Window { since: since.as_deref(), until: until.as_deref() };
            learning::event_files(events, config).and_then(|files| learning::profile(&agent, &action, &files, &w))
        }
        Command::Policy { cmd: cli::PolicyCmd::Test { candidate, events, agent, since, until, config, json } } => {
            let w = learning::Window { since: since.as_deref(), until: until.as_deref() };
            return match learning::event_files(events, config) {
                Ok(files) => learning::policy_test(&candidate, &files, agent.as_deref(), &w, json),
                Err(e) => {
                    eprintln!("agent-monitor: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Approve { id, once: _, r#for, control_socket, config } => {
            let for_secs = match r#for.as_deref().map(enforce::holds::parse_duration).transpose() {
                Ok(d) => d.map(|d| d.as_secs()).unwrap_or(0),
                Err(e) => {
                    eprintln!("agent-monitor: {e:#}");
                    return ExitCode::from(2);
                }
            };
            client::request(&client::socket_path(control_socket, config), Request::Approve { id, for_secs }, Show::Raw)
        }
        Command::Deny { id, control_socket, config } => {
            client::request(&client::socket_path(control_socket, config), Request::Deny { id }, Show::Raw)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-monitor: {e:#}");
            ExitCode::from(1)
        }
    }
}
