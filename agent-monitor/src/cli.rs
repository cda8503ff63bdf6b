//! The command line (docs/DESIGN.md, "CLI").
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "agent-monitor", version, about = "A kernel-enforced read-only boundary around AI agent processes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to stderr: `auto` (plain, without colours or a timestamp of
    /// its own, when stderr is the systemd journal; coloured on a terminal), `plain`, `json`
    /// (one object per line). Levels and modules are chosen with RUST_LOG (default: `info`
    /// for `run`, `warn` for the other commands).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the eBPF programs and enforce the policy.
    Run(RunArgs),
    /// Validate a policy file; print FILE:LINE:COL: message for each error (exit 1).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Start CMD as an instance of agent NAME, inside the boundary from its first instruction.
    ///
    /// The command runs with no_new_privs and a Landlock ruleset compiled from the agent's profile
    /// (writes only beneath `writable`, TCP connects only to the ports of `allow`, no signals to
    /// processes outside it), in its own cgroup. Exits with the command's status (128+N if
    /// killed by signal N).
    Exec {
        /// The `[[agent]]` profile to apply.
        #[arg(long)]
        agent: String,
        /// Policy file (default: /etc/agent-monitor/agent-monitor.toml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start the command even if the daemon is not answering (Landlock still applies).
        #[arg(long)]
        allow_unmonitored: bool,
        /// The command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Print a shell completion script (the package installs them for bash, zsh and fish).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page, agent-monitor(1), in roff (the package installs it).
    #[command(hide = true)]
    Manpage,
    /// Start the agent commands users type (claude, codex, gemini, ...) through `exec`: shell
    /// scripts of those names in a directory put first on PATH.
    Shims {
        #[command(subcommand)]
        cmd: ShimsCmd,
    },
    /// Show the daemon's layers, agents and their processes, TLS visibility and counters.
    Status {
        /// Control socket (default: the policy's control_socket).
        #[arg(long)]
        control_socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to re-read its policy (like SIGHUP); a bad policy is refused.
    Reload {
        #[arg(long)]
        control_socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the event log; --follow streams live events from the daemon.
    Events {
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        control_socket: Option<PathBuf>,
        /// Events file (default: the policy's events_file).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove everything the daemon left pinned (its programs detach).
    Cleanup {
        #[arg(long)]
        pin_path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The tamper-evident audit trail of the events log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Learn a least-privilege profile from recorded events (a learning run with `audit =
    /// true`): prints one `[[agent]]` table, each line with its evidence and anything broad or
    /// risky flagged. Check it with `policy test` before switching to deny or kill.
    Profile {
        /// The agent whose profile to learn.
        #[arg(long)]
        agent: String,
        /// Events logs, oldest first (`.gz` rotations too; default: the policy's events_file and
        /// its rotations).
        #[arg(long = "events", value_name = "FILE")]
        events: Vec<PathBuf>,
        /// Only events at or after this time (RFC 3339, as the events' `ts`).
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// The `action` the profile is written with.
        #[arg(long, default_value = "alert", value_parser = ["alert", "deny", "kill", "hold"])]
        action: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Policy tools that need no daemon.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Approve a held action (`status` lists them): a paused call continues once; a held
    /// connect is granted once (within 60 s) or, with --for, to that instance and destination
    /// for a while.
    Approve {
        id: String,
        /// Grant the held action once (the default).
        #[arg(long, conflicts_with = "for")]
        once: bool,
        /// Grant it for this long (e.g. 90s, 10m, 2h).
        #[arg(long = "for", value_name = "DURATION")]
        r#for: Option<String>,
        #[arg(long)]
        control_socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Deny a held action: a paused call's instance is killed; a held request stays refused.
    Deny {
        id: String,
        #[arg(long)]
        control_socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Policy file (default: /etc/agent-monitor/agent-monitor.toml, else the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for /metrics and /healthz (default: the policy's metrics_listen, 127.0.0.1:9750).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Events file, JSON lines; "-" is stdout (default: the policy's events_file).
    #[arg(long)]
    pub events: Option<String>,
    /// Control socket path (default: the policy's control_socket).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Pin programs and maps under this bpffs directory so that enforcement survives the
    /// daemon (default: the policy's pin_path; none: programs detach when the daemon exits).
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain of events logs (rotated files oldest first); names the first
    /// broken line.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// What-if: replay recorded events through a candidate policy's decisions. Prints what it
    /// would have refused (by agent, kind, target and rule, with counts), what it would allow
    /// that was refused when recorded, and what it grants that was never used. Exit 0: it
    /// refuses nothing; 1: it refuses something; 2: the candidate or the events cannot be read.
    Test {
        /// The candidate policy file.
        candidate: PathBuf,
        /// Events logs, oldest first (`.gz` rotations too; default: the policy's events_file and
        /// its rotations).
        #[arg(long = "events", value_name = "FILE")]
        events: Vec<PathBuf>,
        /// Only this agent's events.
        #[arg(long)]
        agent: Option<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// The policy whose events_file is read when --events is not given.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShimsCmd {
    /// Write a shim per command: every plain `comm` selector of the policy's agents, or the
    /// COMMAND=AGENT pairs given. Each runs `agent-monitor exec --agent AGENT -- REAL "$@"`,
    /// REAL being the command found on PATH outside DIR.
    Install {
        /// Where the shims go (put it first on PATH).
        #[arg(long, default_value = crate::enforce::shims::DEFAULT_DIR)]
        dir: PathBuf,
        /// Policy file the shims' `exec` reads (default: /etc/agent-monitor/agent-monitor.toml,
        /// else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also write /etc/profile.d/agent-monitor-shims.sh: DIR first on login shells' PATH.
        #[arg(long)]
        profile: bool,
        /// COMMAND=AGENT pairs (default: every plain comm selector, as its agent).
        #[arg(value_name = "COMMAND=AGENT")]
        pairs: Vec<String>,
    },
    /// Remove the shims from DIR (only files agent-monitor wrote), and the profile script.
    Remove {
        #[arg(long, default_value = crate::enforce::shims::DEFAULT_DIR)]
        dir: PathBuf,
        /// Also remove /etc/profile.d/agent-monitor-shims.sh.
        #[arg(long)]
        profile: bool,
    },
}
