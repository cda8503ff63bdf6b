//! `cargo xtask`: developer tasks for agent-monitor (see `cargo xtask --help`).

mod agents;
mod bench;
mod demo;
mod dist;
mod fuzz;
mod harness;
mod packages;
mod promtool;
mod setup;
mod test;
mod vm;

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use packages::Need;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Developer tasks for agent-monitor")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain and the Debian packages, mount the kernel filesystems (idempotent).
    ///
    /// Ensures the nightly toolchain, its rust-src, and bpf-linker (built against nightly's LLVM);
    /// then, as root, installs the Debian packages the tests and the VM tier need that are missing
    /// (the list, with who needs each: xtask/src/packages.rs) and mounts tracefs, bpffs and
    /// securityfs where missing. `test`, `demo` and `bench` run this first; `run` too, without the
    /// packages.
    Setup {
        /// Also the bench's packages (OpenSSL's headers, auditd, bpftrace).
        #[arg(long)]
        bench: bool,
        /// Also install the pinned agent CLIs of the real-agent tier from the npm registry
        /// (cached in ~/.cache/agent-monitor/agents; `test` does this too). See docs/real-agents.md.
        #[arg(long)]
        agents: bool,
    },
    /// Build the daemon (release) and run it in the foreground, as root.
    ///
    /// Runs setup, `cargo build --release -p agent-monitor`, then replaces itself with
    /// `target/release/agent-monitor run ARGS...`. Without ARGS the daemon uses its
    /// configuration file or the embedded default policy.
    Run {
        /// Arguments for `agent-monitor run` (e.g. `-- --config deploy/agent-monitor.toml`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Build, run the unit tests, then the end-to-end tests as root.
    ///
    /// Steps: setup, `cargo build -p agent-monitor`, the unit tests of every crate, then
    /// `cargo test -p agent-monitor-e2e -- --test-threads=1 FILTER...` (serial: they load eBPF)
    /// with AGENT_MONITOR_BIN set to the debug binary, then the real-agent tier (installs the
    /// pinned agent CLIs, cached; skipped with the reason without node, npm or the registry;
    /// `-- real_agents` runs only it). Prints each step's time and a summary.
    Test {
        /// Skip the root end-to-end tests (and the mounts setup needs root for).
        #[arg(long)]
        no_root: bool,
        /// Instead of the host tiers, run the end-to-end tests inside QEMU guests (TCG), one per
        /// Debian kernel series: the newest of bookworm (6.1), bookworm-backports (6.12) and
        /// trixie-backports (7.x), each booted with BPF LSM enabled, as root. Without --full or a
        /// FILTER only the `files` and `lsm` test binaries run (5-6 min a kernel; the whole suite
        /// takes about 14 min a kernel under TCG, too long for CI); with a FILTER every binary
        /// runs, filtered. Kernels are downloaded once into ~/.cache/agent-monitor/vm; outputs
        /// and console logs go to target/vm/KVER/. Each guest is killed after 10 min (30 with
        /// --full), or AGENT_MONITOR_VM_TIMEOUT seconds. See xtask/vm/README.md.
        #[arg(long)]
        vm: bool,
        /// With --vm: run every end-to-end test binary in each guest.
        #[arg(long, requires = "vm")]
        full: bool,
        /// With --vm: only these kernels, by suite (`bookworm`) or version prefix (`6.1`, `7`).
        #[arg(long = "kernel", value_name = "KERNEL", requires = "vm")]
        kernels: Vec<String>,
        /// Test name filters passed to the end-to-end test harness.
        #[arg(last = true, value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Benchmarks against no monitor, auditd and bpftrace, as root (about 12 minutes).
    ///
    /// Runs setup, the release build and builds `xtask/bench/load.c`, then measures syscall
    /// overhead (open, write, SSL_write, TCP connect, UDP send, fork, exec) with no monitor,
    /// with the daemon loaded, for a non-agent and for an agent (allowed, refused), interleaved
    /// in rounds, beside auditd and bpftrace on every workload; then the event path (the highest
    /// zero-loss events/s and the loss curve), events/s through decode and decision, start-up
    /// time, RSS and CPU, the bytes of refused requests that reach a server, and the time to a
    /// kill. Writes `bench/results-DATE.json` and `.md` and prints the Markdown.
    Bench {
        /// Rounds; every case is measured once per round.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Runs per case in a round (alternating between the cases of a state); the fastest counts.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds one run of a workload takes with no monitor (sets the operations per run).
        #[arg(long, default_value_t = 0.1)]
        run_secs: f64,
        /// Refused HTTP requests sent by the agent.
        #[arg(long, default_value_t = 1000)]
        attempts: u64,
        /// Kills timed (forbidden open to death).
        #[arg(long, default_value_t = 200)]
        kills: u64,
        /// Do not run (or install) auditd and bpftrace.
        #[arg(long)]
        no_peers: bool,
        /// Where the results go (default: bench/ in the workspace).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Reproduce the forum-agent incident on loopback, as root (about 15 s after the build).
    ///
    /// Runs setup and the debug build, starts a loopback HTTPS forum and the daemon with a
    /// read-only policy for `forum-agent`, then runs the agent: it reads the question, then tries
    /// to post its advice and is killed before the POST leaves. Shows the forum's log, the
    /// violation event and the metrics; fails if the POST arrived or the agent was not killed.
    Demo,
    /// Fuzz the inputs an attacker controls: the event decoder, the control protocol, the policy
    /// parser (not in `test` or CI: minutes per target).
    ///
    /// Installs cargo-fuzz if `cargo fuzz --version` fails, then for each TARGET (default: all,
    /// in the order decode, control, policy) runs `cargo +nightly fuzz run -a TARGET
    /// fuzz/corpus/TARGET -- -max_total_time=SECS` (AYA_BUILD_SKIP=1: no eBPF build) and
    /// minimises the corpus with `cargo fuzz cmin`. A failing input lands in
    /// fuzz/artifacts/TARGET/ (not committed). Prints each target's runs, exec/s, coverage and
    /// corpus sizes. See fuzz/README.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Targets to run: decode, control, policy (default: all three).
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Build a Debian package (target/dist/*.deb): binary, systemd unit, default configuration
    /// (a conffile) and dashboards; installing it enables and starts the service under systemd.
    Dist,
}

fn main() {
    if let Err(e) = real_main() {
        // One line with its context chain, never a backtrace.
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let home = home()?;
    prepend_cargo_bin_to_path(&home)?;
    match cli.cmd {
        Cmd::Setup { bench, agents } => {
            let needs: &[Need] = if bench { &[Need::Tests, Need::Bench, Need::Peers] } else { &[Need::Tests] };
            setup::run(&home, true, needs).and_then(|()| if agents { agents::setup(&home) } else { Ok(()) })
        }
        Cmd::Run { args } => run_daemon(&home, &args),
        Cmd::Test { vm: true, full, kernels, filter, .. } => {
            vm::run(&home, &vm::Options { full, kernels: &kernels, filter: &filter })
        }
        Cmd::Test { no_root, filter, .. } => test::run(&home, no_root, &filter),
        Cmd::Bench { rounds, reps, run_secs, attempts, kills, no_peers, out } => {
            let out = out.unwrap_or_else(|| root().join("bench"));
            bench::run(&home, bench::Options { rounds, reps, run_secs, attempts, kills, peers: !no_peers, out })
        }
        Cmd::Demo => demo::run(&home),
        Cmd::Dist => dist::run().map(|_| ()),
        Cmd::Fuzz { secs, targets } => fuzz::run(secs, &targets),
    }
}

/// `cargo xtask run`: setup, release build, then replace this process with the daemon.
fn run_daemon(home: &Path, args: &[String]) -> Result<()> {
    setup::run(home, true, &[])?;
    run_cmd(cargo().args(["build", "--release", "-p", "agent-monitor"]))?;
    let bin = target_dir().join("release/agent-monitor");
    let err = Command::new(&bin).arg("run").args(args).exec();
    Err(err).with_context(|| format!("could not start {}", bin.display()))
}

/// The workspace root: the parent of this crate's directory.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace")
}

/// Cargo's target directory (`CARGO_TARGET_DIR` if set, else `<root>/target`), absolute.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir), // join keeps an absolute `dir` as is
        None => root().join("target"),
    }
}

fn home() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    home.map(PathBuf::from).context("HOME is not set; run from a login shell (e.g. `sudo -i`) so ~/.cargo can be found")
}

/// Put `~/.cargo/bin` first on PATH, for our lookups and every child (cargo, aya-build, rustup).
fn prepend_cargo_bin_to_path(home: &Path) -> Result<()> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(home.join(".cargo/bin")).chain(std::env::split_paths(&old));
    let path = std::env::join_paths(dirs).context("PATH contains a directory with a ':'")?;
    std::env::set_var("PATH", path); // single-threaded here, before any child starts
    Ok(())
}

/// A `cargo` command in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    cmd
}

/// Runs a command with inherited stdio; an error names the command and its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start `{}`", show(cmd)))?;
    ensure!(status.success(), "`{}` failed ({status})", show(cmd));
    Ok(())
}

/// Runs a command and returns its stdout (stderr inherited).
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    ensure!(out.status.success(), "`{}` failed ({})", show(cmd), out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective uid 0, from the second field of `Uid:` in /proc/self/status.
pub fn is_root() -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1).map(str::to_owned));
    Ok(uid.as_deref() == Some("0"))
}

/// The command line as a user would type it.
pub fn show(cmd: &Command) -> String {
    let env = cmd.get_envs().filter_map(|(k, v)| Some((k, v?)));
    let env = env.map(|(k, v)| format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
    let args = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    let args = args.map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    env.collect::<String>() + &args
}
