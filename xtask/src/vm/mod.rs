//! `cargo xtask test --vm`: the root end-to-end tests inside QEMU guests running Debian's own
//! kernels, booted with BPF LSM enabled, so the LSM path is tested where the host cannot load it.
//!
//! For each kernel series (the newest kernel of each suite in [`kernels::SERIES`], looked up at run time:
//! Debian drops old kernel packages from the archive when new ones arrive):
//!
//! 1. apt, with a private configuration under `~/.cache/agent-monitor/vm/apt` (the mirror taken
//!    from the system's own sources; the system's lists and sources are left alone), finds and
//!    downloads the kernel packages; they are unpacked once into
//!    `~/.cache/agent-monitor/vm/kernels/SUITE/KVER_VERSION` (older versions are pruned) and
//!    `depmod` runs there.
//! 2. A small initramfs (written here as a newc cpio): busybox (from `busybox-static`), the
//!    modules that 9p and overlayfs need in modules.dep order, `xtask/vm/init` and
//!    `xtask/vm/guest.sh`.
//! 3. QEMU (TCG: KVM on these machines is PVM and cannot run stock kernels) boots it with
//!    `lsm=...,bpf`; the init mounts the host's root read-only over 9p with a tmpfs overlay on
//!    top, and switch_roots into it, so the guest runs the very binaries the host built, at the
//!    same paths. A second 9p share carries what to run in and the results out; a third is the
//!    kernel's modules tree, so the guest loads modules on demand (veth, ...).
//! 4. `guest.sh` mounts securityfs, tracefs, bpffs and cgroup2, runs each e2e test binary with
//!    `--test-threads=1 --show-output`, writes its output and exit code to the share and powers
//!    off. QEMU is killed if it outlives its deadline (under TCG a guest fault can hang it).
//!
//! The host then reads each binary's libtest output: passed, failed, and skipped (a test that
//! printed `SKIPPED name: reason` passed in libtest's eyes, but is counted as skipped here).
//!
//! The rooms: `apt.rs` (apt with a private configuration), `debver.rs` (Debian's version
//! order), `kernels.rs` (which kernels, downloaded and unpacked), `initramfs.rs` (busybox, modules,
//! the cpio), `qemu.rs` (QEMU and one guest), `report.rs` (libtest's output read back). How to
//! run it, and what it costs: `xtask/vm/README.md`.

mod apt;
mod debver;
mod initramfs;
mod kernels;
mod qemu;
mod report;

use crate::packages::Need;
use crate::{cargo, is_root, output, run_cmd, setup, show, target_dir};
use anyhow::{bail, ensure, Context, Result};
use apt::Apt;
use qemu::Guests;
use report::Report;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `--vm` runs without `--full` or a FILTER (and what CI runs): one test of each thing
/// where the BPF LSM layer decides, or where the kernel matters — file writes refused with
/// EPERM, the kill path through the process tree, self-protection, connects refused by the LSM
/// hooks (and the cgroup ones behind them), read-only HTTP in clear text and inside TLS (the
/// kernel's uprobe filter), a held write, an `exec`'d agent; and of issue 20's hardening where
/// BPF LSM changes the outcome (metadata, Unix connects, the daemon's threads). (TIOCSTI is
/// not here: in the 6.1 and 7.3 guests the agent cannot open the test's `/dev/pts/N`.)
///
/// Under TCG each test pays for its daemon's verification: measured 2026-12-03, three guests
/// side by side on two cores, 35-60 s a start (6.12 fastest; 6.1 and 7.3 walk the HTTP parser
/// two to three times longer) and 75-85 s a test. Eleven tests fit the 20-minute guest budget
/// with room; `--full` (30 min) or a FILTER runs the rest.
const DEFAULT_BINARIES: &[&str] =
    &["files", "lsm", "network", "holds", "exec", "hardening_files", "hardening_ipc", "hardening_self"];
const DEFAULT_TESTS: &[&str] = &[
    "every_file_kind_is_refused_with_eperm_before_it_happens",
    "signalling_or_tracing_the_daemon_is_self_tamper",
    "kill_on_append_outside_writable_and_not_for_others",
    "descendants_and_copied_binaries_stay_in_scope_and_the_tree_dies",
    "unlisted_destinations_are_refused_in_the_kernel",
    "read_only_http_in_clear_text_and_inside_tls",
    "a_held_file_write_is_refused_then_granted_then_expires",
    "tcp_connects_only_to_allowed_ports",
    "metadata_changes_outside_writable_are_judged",
    "a_unix_stream_connect_to_an_unlisted_path_delivers_nothing",
    "the_daemons_threads_and_process_group_are_the_daemon",
];

/// Guests run side by side (one per kernel, at most this many): under TCG a guest keeps about
/// one host core busy, and three guests on two cores finish well before three in a row.
const PARALLEL: usize = 3;

/// How long one guest may run before it is killed (overridable with AGENT_MONITOR_VM_TIMEOUT,
/// in seconds).
const TIMEOUT_SUBSET: Duration = Duration::from_secs(36 * 60);
const TIMEOUT_FULL: Duration = Duration::from_secs(30 * 60);

pub struct Options<'a> {
    /// Every e2e test binary, not only [`DEFAULT_BINARIES`].
    pub full: bool,
    /// Kernel selectors: a suite (`bookworm`) or a version prefix (`6.1`); empty for all.
    pub kernels: &'a [String],
    /// Test name filters for the harness.
    pub filter: &'a [String],
}

pub fn run(home: &Path, opts: &Options) -> Result<()> {
    let start = Instant::now();
    ensure!(is_root()?, "`cargo xtask test --vm` must run as root (it installs QEMU and exports / to the guest)");
    setup::run(home, true, &[Need::Tests])?;
    let cache = home.join(".cache/agent-monitor/vm");
    let _lock = lock(&cache)?;
    let suites: Vec<&str> = kernels::SERIES.iter().map(|s| s.suite).collect();
    let apt = Apt::new(&cache.join("apt"), &suites)?;
    apt.update()?;
    qemu::ensure_qemu(&apt)?;
    let busybox = initramfs::busybox(&apt, &cache.join("busybox"))?;
    let kernels = kernels::kernels(&apt, &cache.join("kernels"), opts.kernels)?;

    println!("\n==> build: the daemon and the e2e test binaries");
    run_cmd(cargo().args(["build", "-p", "agent-monitor"]))?;
    let bins = select_binaries(test_binaries()?, opts)?;
    let (daemon, bins) = snapshot(&target_dir().join("debug/agent-monitor"), bins)?;
    let names: Vec<_> = bins.iter().map(|b| b.name.as_str()).collect();
    println!("vm: test binaries: {}; filter: {}", names.join(" "), opts.filter.join(" "));

    let default_filter: Vec<String> = DEFAULT_TESTS.iter().map(|s| s.to_string()).collect();
    let filter = if opts.full || !opts.filter.is_empty() { opts.filter } else { &default_filter[..] };
    let guests = Guests { busybox: &busybox, daemon: &daemon, bins: &bins, filter, timeout: timeout(opts)? };
    let parallel = std::env::var("AGENT_MONITOR_VM_PARALLEL")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(PARALLEL)
        .max(1);
    println!("vm: {} kernel(s), {} guest(s) at a time", kernels.len(), parallel.min(kernels.len()));
    let mut reports = Vec::new();
    for batch in kernels.chunks(parallel) {
        let results: Vec<Result<Report>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|k| s.spawn(|| guests.run(k))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("guest thread panicked"))))
                .collect()
        });
        for r in results {
            reports.push(r?);
        }
    }
    summary(&reports, start)
}

fn timeout(opts: &Options) -> Result<Duration> {
    Ok(match std::env::var("AGENT_MONITOR_VM_TIMEOUT") {
        Ok(s) => Duration::from_secs(s.parse().context("AGENT_MONITOR_VM_TIMEOUT must be a number of seconds")?),
        Err(_) if opts.full => TIMEOUT_FULL,
        Err(_) => TIMEOUT_SUBSET,
    })
}

/// Each kernel's line and the totals; an error names the kernels with a failure.
fn summary(reports: &[Report], start: Instant) -> Result<()> {
    println!("\nvm summary:");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in reports {
        println!("  {}  lsm={}", r.line(), r.lsm);
        passed += r.passed();
        failed += r.failed();
        skipped += r.skipped();
    }
    println!(
        "  {} kernels in {:.0}s; logs and outputs in {}",
        reports.len(),
        start.elapsed().as_secs_f64(),
        results_root().display()
    );
    println!("vm: {passed} passed, {failed} failed, {skipped} skipped");
    let bad: Vec<_> = reports.iter().filter(|r| !r.ok()).map(|r| r.kver.as_str()).collect();
    if !bad.is_empty() {
        bail!("the VM tests failed on {}", bad.join(", "));
    }
    Ok(())
}

/// One `--vm` run at a time on a machine: they share the kernel cache and target/vm, and two
/// TCG guests would starve each other (and the rest of the machine) of CPU.
fn lock(cache: &Path) -> Result<fs::File> {
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let path = cache.join("lock");
    let file = fs::File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            println!("vm: waiting for another `cargo xtask test --vm` to finish (lock {})", path.display());
            file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    Ok(file)
}

/// Copies the daemon and the test binaries to target/vm/bin: the guests run them from the host's
/// disk for many minutes, and a `cargo build` meanwhile (another shell, another engineer) must
/// not swap them mid-run.
fn snapshot(daemon: &Path, bins: Vec<TestBinary>) -> Result<(PathBuf, Vec<TestBinary>)> {
    let dir = results_root().join("bin");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = dir.join(name);
        fs::copy(from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    let daemon = copy(daemon, "agent-monitor")?;
    let bins =
        bins.into_iter().map(|b| Ok(TestBinary { exe: copy(&b.exe, &b.name)?, ..b })).collect::<Result<Vec<_>>>()?;
    Ok((daemon, bins))
}

struct TestBinary {
    name: String,
    exe: PathBuf,
    /// The package directory: where cargo runs its tests.
    cwd: PathBuf,
}

/// The e2e test binaries, built: `cargo test -p agent-monitor-e2e --no-run --message-format=json`.
fn test_binaries() -> Result<Vec<TestBinary>> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "agent-monitor-e2e", "--no-run", "--message-format=json"]);
    println!("{}", show(&cmd));
    let out = output(&mut cmd)?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test_target = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true || !is_test_target {
            continue;
        }
        let (Some(name), Some(exe), Some(manifest)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let cwd = Path::new(manifest).parent().unwrap_or(Path::new("/")).to_path_buf();
        bins.push(TestBinary { name: name.into(), exe: exe.into(), cwd });
    }
    ensure!(!bins.is_empty(), "cargo built no e2e test binaries");
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bins)
}

/// Without `--full` or a filter, only [`DEFAULT_BINARIES`].
fn select_binaries(bins: Vec<TestBinary>, opts: &Options) -> Result<Vec<TestBinary>> {
    if opts.full || !opts.filter.is_empty() {
        return Ok(bins);
    }
    // (and [`DEFAULT_TESTS`] as the filter)
    let chosen: Vec<_> = bins.into_iter().filter(|b| DEFAULT_BINARIES.contains(&b.name.as_str())).collect();
    ensure!(!chosen.is_empty(), "none of the default VM test binaries ({}) was built", DEFAULT_BINARIES.join(", "));
    Ok(chosen)
}

fn results_root() -> PathBuf {
    target_dir().join("vm")
}
