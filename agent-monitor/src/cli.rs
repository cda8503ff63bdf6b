//! The command line (DESIGN.md, "CLI").
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "agent-monitor", version, about = "A kernel-enforced read-only boundary around AI agent processes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    Exec {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the daemon's layers, agents and counters.
    Status,
    /// Print the event log; --follow keeps printing new events.
    Events {
        #[arg(long, short)]
        follow: bool,
        /// Events file (default: the policy's events_file).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Approve a held action.
    Approve { id: String },
    /// Deny a held action.
    Deny { id: String },
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
}
