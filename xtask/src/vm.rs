//! `cargo xtask test --vm`: the root end-to-end tests inside QEMU guests running Debian's own
//! kernels, booted with BPF LSM enabled, so the LSM path is tested where the host cannot load it.
//!
//! For each kernel series (the newest kernel of each suite in [`SERIES`], looked up at run time:
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

use crate::{cargo, output, run_cmd, setup, show, target_dir};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel series tested: the newest package matching `pattern` (an apt-cache regex) in `suite`.
/// The generic flavour: the cloud flavour has no 9p.
const SERIES: &[Series] = &[
    // The oldest kernel we support: Debian 12's own (6.1 LTS).
    Series { suite: "bookworm", pattern: r"^linux-image-[0-9.]+-[0-9]+-amd64-unsigned$" },
    // Debian 12's backported kernel (6.12 LTS, also Debian 13's kernel).
    Series { suite: "bookworm-backports", pattern: r"^linux-image-[0-9.]+\+deb12-amd64-unsigned$" },
    // The newest stable kernel Debian builds (7.x), split into binary, modules and base packages.
    Series { suite: "trixie-backports", pattern: r"^linux-binary-unsigned-[0-9.]+\+deb13-amd64$" },
];

/// What `--vm` runs without `--full` or a FILTER (and what CI runs): every test where the BPF
/// LSM layer decides, or where the kernel matters — file writes refused with EPERM, connects
/// and datagrams refused by the LSM hooks (and the cgroup ones behind them), self-protection,
/// the bypasses, held connects, an `exec`'d agent, the kill path through the process tree, and
/// the per-agent TLS hooks (the kernel's uprobe filter and perf event inheritance).
/// Under TCG each test pays ~20 s of verifier for its daemon: the whole suite takes too long
/// for CI (see xtask/vm/README.md).
const DEFAULT_BINARIES: &[&str] = &["files", "lsm", "network", "holds", "exec"];
const DEFAULT_TESTS: &[&str] = &[
    "every_file_kind_is_refused_with_eperm_before_it_happens",
    "signalling_or_tracing_the_daemon_is_self_tamper",
    "the_daemons_own_files_are_off_limits_whatever_writable_says",
    "kill_on_append_outside_writable_and_not_for_others",
    "bypasses_of_syscall_tracing_are_violations_unless_allowed",
    "descendants_and_copied_binaries_stay_in_scope_and_the_tree_dies",
    "unlisted_destinations_are_refused_in_the_kernel",
    "io_uring_connect_is_covered_by_the_cgroup_hooks",
    "read_only_http_in_clear_text_and_inside_tls",
    "tls_hooks_are_written_into_agent_processes_only",
    "unanswered_holds_time_out_and_held_connects_are_granted_then_expire",
    "a_held_file_write_is_refused_then_granted_then_expires",
    "tcp_connects_only_to_allowed_ports",
];

/// Guests run side by side (one per kernel, at most this many): under TCG a guest keeps about
/// one host core busy, and three guests on two cores finish well before three in a row.
const PARALLEL: usize = 3;

/// Guest memory, vCPUs, and how long one guest may run before it is killed (overridable with
/// AGENT_MONITOR_VM_TIMEOUT, in seconds).
const MEMORY: &str = "1G";
const CPUS: &str = "2";
const TIMEOUT_SUBSET: Duration = Duration::from_secs(20 * 60);
const TIMEOUT_FULL: Duration = Duration::from_secs(30 * 60);

/// LSMs the guest boots with: Debian's default list plus `bpf`.
const LSM: &str = "lockdown,capability,landlock,yama,apparmor,bpf";

/// Modules the initramfs loads (with their dependencies) if they are not built in.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

struct Series {
    suite: &'static str,
    pattern: &'static str,
}

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
    ensure!(
        setup::is_root()?,
        "`cargo xtask test --vm` must run as root (it installs QEMU and exports / to the guest)"
    );
    setup::run(home, true)?;
    let cache = home.join(".cache/agent-monitor/vm");
    let _lock = lock(&cache)?;
    let apt = Apt::new(&cache.join("apt"))?;
    apt.update()?;
    ensure_qemu(&apt)?;
    let busybox = busybox(&apt, &cache.join("busybox"))?;
    let kernels = kernels(&apt, &cache.join("kernels"), opts.kernels)?;

    println!("\n==> build: the daemon and the e2e test binaries");
    run_cmd(cargo().args(["build", "-p", "agent-monitor"]))?;
    let bins = select_binaries(test_binaries()?, opts)?;
    let (daemon, bins) = snapshot(&target_dir().join("debug/agent-monitor"), bins)?;
    let names: Vec<_> = bins.iter().map(|b| b.name.as_str()).collect();
    println!("vm: test binaries: {}; filter: {}", names.join(" "), opts.filter.join(" "));

    let timeout = match std::env::var("AGENT_MONITOR_VM_TIMEOUT") {
        Ok(s) => Duration::from_secs(s.parse().context("AGENT_MONITOR_VM_TIMEOUT must be a number of seconds")?),
        Err(_) if opts.full => TIMEOUT_FULL,
        Err(_) => TIMEOUT_SUBSET,
    };
    let default_filter: Vec<String> = DEFAULT_TESTS.iter().map(|s| s.to_string()).collect();
    let filter = if opts.full || !opts.filter.is_empty() { opts.filter } else { &default_filter[..] };
    let parallel = std::env::var("AGENT_MONITOR_VM_PARALLEL")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(PARALLEL)
        .max(1);
    println!("vm: {} kernel(s), {} guest(s) at a time", kernels.len(), parallel.min(kernels.len()));
    let mut reports = Vec::new();
    for batch in kernels.chunks(parallel) {
        let results: Vec<Result<Report>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                batch.iter().map(|k| s.spawn(|| run_kernel(k, &busybox, &daemon, &bins, filter, timeout))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("guest thread panicked"))))
                .collect()
        });
        for r in results {
            reports.push(r?);
        }
    }

    println!("\nvm summary:");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in &reports {
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

// ---------------------------------------------------------------------------------------------
// apt with a private configuration

/// apt-get/apt-cache with their own sources, lists and caches under `dir`; the system's dpkg
/// status (for installing QEMU) and keyrings are the system's.
struct Apt {
    dir: PathBuf,
    /// The host's own suites (release, -updates, -security, -backports): for installing QEMU.
    host_list: PathBuf,
    /// Those plus the kernel suites: for updating and looking kernels up.
    all_list: PathBuf,
    codename: String,
}

impl Apt {
    fn new(dir: &Path) -> Result<Apt> {
        for d in ["lists/partial", "cache/archives/partial", "sources.list.d", "debs"] {
            fs::create_dir_all(dir.join(d)).with_context(|| format!("cannot create {}", dir.join(d).display()))?;
        }
        let os = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
        let codename = os_codename(&os).context("/etc/os-release has no VERSION_CODENAME: is this Debian?")?;
        let entries = system_sources()?;
        let mirror = entries.iter().find(|e| e.suite == codename).map(|e| e.uri.clone()).with_context(|| {
            format!("no apt source for suite {codename} in /etc/apt/sources.list or /etc/apt/sources.list.d/")
        })?;
        let mut host = vec![
            (mirror.clone(), codename.clone()),
            (mirror.clone(), format!("{codename}-updates")),
            (mirror.clone(), format!("{codename}-backports")),
        ];
        let security = format!("{codename}-security");
        if let Some(e) = entries.iter().find(|e| e.suite == security) {
            host.push((e.uri.clone(), security));
        }
        let mut all = host.clone();
        for s in SERIES {
            if !all.iter().any(|(_, suite)| suite == s.suite) {
                all.push((mirror.clone(), s.suite.to_string()));
            }
        }
        let write = |name: &str, list: &[(String, String)]| -> Result<PathBuf> {
            let path = dir.join(name);
            let text: String = list.iter().map(|(uri, suite)| format!("deb {uri} {suite} main\n")).collect();
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        let host_list = write("host.list", &host)?;
        let all_list = write("all.list", &all)?;
        Ok(Apt { dir: dir.to_path_buf(), host_list, all_list, codename })
    }

    fn cmd(&self, tool: &str, list: &Path) -> Command {
        let mut cmd = Command::new(tool);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::Etc::sourcelist", list),
            opt("Dir::Etc::sourceparts", &self.dir.join("sources.list.d")),
            opt("Dir::State::Lists", &self.dir.join("lists")),
            opt("Dir::Cache", &self.dir.join("cache")),
            opt("Dir::Cache::archives", &self.dir.join("cache/archives")),
            // Downloads land in directories _apt cannot write.
            "APT::Sandbox::User=root".into(),
            "DPkg::Lock::Timeout=300".into(),
            // Only the Packages indexes: no AppStream metadata, no Contents.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Refreshes the lists; a failure is only a warning when older lists are there (offline,
    /// the cached kernels still boot).
    fn update(&self) -> Result<()> {
        println!("vm: apt-get update (private lists in {})", self.dir.join("lists").display());
        let mut cmd = self.cmd("apt-get", &self.all_list);
        cmd.args(["update", "-qq"]);
        let Err(e) = run_cmd(&mut cmd) else { return Ok(()) };
        let lists = fs::read_dir(self.dir.join("lists"))?.filter_map(|e| e.ok());
        if lists.filter(|e| e.file_name().to_string_lossy().contains("_Packages")).count() == 0 {
            return Err(e).context("apt-get update failed; check network access to the Debian archive");
        }
        println!("vm: warning: {e:#}; going on with the lists from an earlier run");
        Ok(())
    }

    /// Package names matching an apt-cache regex.
    fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = output(self.cmd("apt-cache", &self.all_list).args(["search", "--names-only", pattern]))?;
        Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    /// `(package, version)` of every version of `names` in `suite`.
    fn versions_in(&self, names: &[String], suite: &str) -> Result<Vec<(String, String)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = output(self.cmd("apt-cache", &self.all_list).arg("madison").args(names))?;
        Ok(madison_in_suite(&out, suite))
    }

    /// `apt-get download PKG=VERSION...` into `dir`.
    fn download(&self, pkgs: &[String], dir: &Path) -> Result<()> {
        let mut cmd = self.cmd("apt-get", &self.all_list);
        cmd.args(["download", "-q"]).args(pkgs).current_dir(dir);
        run_cmd(&mut cmd).context("apt-get download failed")
    }
}

/// One `deb` line of the system's sources.
#[derive(Debug, PartialEq)]
struct SourceEntry {
    uri: String,
    suite: String,
}

/// The `deb` entries of /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}.
fn system_sources() -> Result<Vec<SourceEntry>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut entries = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822_sources(&text)),
            Some("list") => entries.extend(parse_one_line_sources(&text)),
            _ if f == Path::new("/etc/apt/sources.list") => entries.extend(parse_one_line_sources(&text)),
            _ => {}
        }
    }
    Ok(entries)
}

/// `deb [options] URI SUITE COMPONENTS...` lines.
fn parse_one_line_sources(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']').map(|(_, r)| r.trim_start()).unwrap_or("");
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push(SourceEntry { uri: uri.trim_end_matches('/').into(), suite: suite.into() });
        }
    }
    entries
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), one entry per URI and suite.
fn parse_deb822_sources(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut last = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    let v: &mut String = fields.entry(String::clone(k)).or_default();
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace() {
                entries.push(SourceEntry { uri: uri.trim_end_matches('/').into(), suite: suite.into() });
            }
        }
    }
    entries
}

fn os_codename(os_release: &str) -> Option<String> {
    let v = os_release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME="))?;
    let v = v.trim().trim_matches('"');
    (!v.is_empty()).then(|| v.to_string())
}

/// `pkg | version | URI SUITE/COMPONENT ARCH Packages` lines of apt-cache madison, in `suite`.
fn madison_in_suite(out: &str, suite: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in out.lines() {
        let cols: Vec<_> = line.split('|').map(str::trim).collect();
        if let [pkg, version, source] = cols[..] {
            let in_suite = source.split_whitespace().any(|w| w.split('/').next() == Some(suite));
            if in_suite && !found.iter().any(|(p, v)| p == pkg && v == version) {
                found.push((pkg.to_string(), version.to_string()));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// QEMU and busybox

/// QEMU from the host release's backports: the machine's qemu-utils comes from there, and the
/// release's own qemu-system-x86 would replace it with an older one.
fn ensure_qemu(apt: &Apt) -> Result<()> {
    if let Ok(path) = which::which("qemu-system-x86_64") {
        let version = output(Command::new(&path).arg("--version")).unwrap_or_default();
        println!("vm: qemu: {} ({})", version.lines().next().unwrap_or("").trim(), path.display());
        return Ok(());
    }
    let backports = format!("{}-backports", apt.codename);
    println!("vm: qemu: installing qemu-system-x86 from {backports}");
    let mut cmd = apt.cmd("apt-get", &apt.host_list);
    cmd.args(["install", "-y", "-qq", "--no-install-recommends", "-t", &backports, "qemu-system-x86"]);
    run_cmd(&mut cmd).with_context(|| format!("could not install qemu-system-x86 from {backports}"))?;
    which::which("qemu-system-x86_64").context("qemu-system-x86 is installed but qemu-system-x86_64 is not on PATH")?;
    Ok(())
}

/// A static busybox for the initramfs, from the host release's `busybox-static`, unpacked once.
fn busybox(apt: &Apt, dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("root/bin/busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = apt.cmd("apt-get", &apt.host_list);
    cmd.args(["download", "-q", "busybox-static"]).current_dir(dir);
    run_cmd(&mut cmd).context("could not download busybox-static")?;
    for deb in debs_in(dir)? {
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
        fs::remove_file(&deb)?;
    }
    ensure!(bin.is_file(), "busybox-static has no /bin/busybox");
    Ok(bin)
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "deb")).collect())
}

// ---------------------------------------------------------------------------------------------
// Kernels

struct Kernel {
    suite: &'static str,
    package: String,
    version: String,
    /// `uname -r` of the kernel.
    kver: String,
    vmlinuz: PathBuf,
    /// `.../lib/modules/KVER` with modules.dep.
    modules: PathBuf,
}

/// The newest kernel of each selected series, downloaded and unpacked (cached).
fn kernels(apt: &Apt, cache: &Path, select: &[String]) -> Result<Vec<Kernel>> {
    let mut kernels = Vec::new();
    for s in SERIES {
        let names = apt.search(s.pattern)?;
        let mut found = apt.versions_in(&names, s.suite)?;
        found.sort_by(|a, b| deb_version_cmp(&a.1, &b.1));
        let Some((package, version)) = found.pop() else {
            bail!("no kernel package matching {} in {}", s.pattern, s.suite);
        };
        let kver = kernel_release(&package).with_context(|| format!("cannot tell the kernel release of {package}"))?;
        if !select.is_empty() && !select.iter().any(|want| selects(want, s.suite, &kver)) {
            continue;
        }
        println!("vm: kernel {kver}: {package} {version} ({})", s.suite);
        kernels.push(unpack(apt, &cache.join(s.suite), s.suite, package, version, kver)?);
    }
    ensure!(!kernels.is_empty(), "no kernel matches --kernel {}", select.join(" "));
    Ok(kernels)
}

/// `--kernel` matches a suite, or a version prefix ending at a part boundary (`6.1` is not `6.12`).
fn selects(want: &str, suite: &str, kver: &str) -> bool {
    let at_boundary = |rest: &str| rest.is_empty() || rest.starts_with(['.', '-', '+']);
    want == suite || kver.strip_prefix(want).is_some_and(at_boundary)
}

/// `linux-image-6.1.0-50-amd64-unsigned` -> `6.1.0-50-amd64`; `linux-binary-unsigned-7.3.4+deb13-amd64` -> `7.3.4+deb13-amd64`.
fn kernel_release(package: &str) -> Option<String> {
    if let Some(k) = package.strip_prefix("linux-binary-unsigned-") {
        return Some(k.to_string());
    }
    package.strip_prefix("linux-image-")?.strip_suffix("-unsigned").map(str::to_owned)
}

/// Downloads and unpacks a kernel into `series_dir/KVER_VERSION` unless it is there already;
/// removes other versions of the series.
fn unpack(
    apt: &Apt,
    series_dir: &Path,
    suite: &'static str,
    package: String,
    version: String,
    kver: String,
) -> Result<Kernel> {
    let dir = series_dir.join(format!("{kver}_{version}"));
    let root = dir.join("root");
    let ready = dir.join(".ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut pkgs = vec![format!("{package}={version}")];
        if package.starts_with("linux-binary-unsigned-") {
            pkgs.push(format!("linux-modules-{kver}={version}"));
            pkgs.push(format!("linux-base-{kver}={version}"));
        }
        println!("vm: downloading {}", pkgs.join(" "));
        apt.download(&pkgs, &dir)?;
        for deb in debs_in(&dir)? {
            run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            fs::remove_file(&deb)?;
        }
        // depmod -b looks in BASE/lib/modules; newer packages ship usr/lib/modules only.
        if !root.join("lib").exists() && root.join("usr/lib").is_dir() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&kver))
            .with_context(|| format!("depmod failed for {kver}"))?;
        fs::write(&ready, "")?;
    }
    // Prune older versions of this series: Debian has dropped them anyway.
    for entry in fs::read_dir(series_dir)?.filter_map(|e| e.ok()) {
        if entry.path() != dir {
            println!("vm: removing the cached {}", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let modules = root.join("lib/modules").join(&kver);
    let vmlinuz =
        [root.join("boot").join(format!("vmlinuz-{kver}")), modules.join("vmlinuz.unsigned"), modules.join("vmlinuz")]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no vmlinuz in {}", root.display()))?;
    ensure!(modules.join("modules.dep").is_file(), "no modules.dep in {}", modules.display());
    Ok(Kernel { suite, package, version, kver, vmlinuz, modules })
}

/// Debian version order (`dpkg --compare-versions`): epoch, upstream, revision; `~` sorts first.
fn deb_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            Some(b'~') => -1,
            None => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(mut a: &[u8], mut b: &[u8]) -> std::cmp::Ordering {
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefixes, character by character.
            loop {
                let (ca, cb) = (
                    a.first().copied().filter(|c| !c.is_ascii_digit()),
                    b.first().copied().filter(|c| !c.is_ascii_digit()),
                );
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let o = order(ca).cmp(&order(cb));
                if o.is_ne() {
                    return o;
                }
                a = &a[1..];
                b = &b[1..];
            }
            // Digit runs, numerically.
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let num = |s: &[u8]| s.iter().fold(0u128, |n, c| n * 10 + u128::from(c - b'0'));
            let o = num(&a[..na]).cmp(&num(&b[..nb]));
            if o.is_ne() {
                return o;
            }
            a = &a[na..];
            b = &b[nb..];
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua.as_bytes(), ub.as_bytes())).then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// The initramfs

/// Module file names (relative to the modules dir) to load, dependencies first, for `wanted`
/// modules that are not built in. `dep` is modules.dep, `builtin` modules.builtin.
fn module_load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((path, rest)) = line.split_once(':') {
            let d = rest.split_whitespace().map(name_of).collect();
            deps.insert(name_of(path), (path.to_string(), d));
        }
    }
    let builtin: BTreeSet<String> = builtin.lines().map(name_of).collect();
    fn visit(
        m: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        if let Some((path, d)) = deps.get(m) {
            for x in d {
                visit(x, deps, seen, order);
            }
            order.push(path.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for w in wanted {
        let w = w.replace('-', "_");
        if deps.contains_key(&w) {
            visit(&w, &deps, &mut seen, &mut order);
        } else if !builtin.contains(&w) {
            bail!("the kernel has no module {w}, built in or loadable");
        }
    }
    Ok(order)
}

/// The initramfs: busybox, /init, /guest.sh, the modules and their load order.
fn initramfs(k: &Kernel, busybox: &Path) -> Result<Vec<u8>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let dep = String::from_utf8_lossy(&read(&k.modules.join("modules.dep"))?).into_owned();
    let builtin = fs::read_to_string(k.modules.join("modules.builtin")).unwrap_or_default();
    let order = module_load_order(&dep, &builtin, INITRAMFS_MODULES)?;
    let vm = crate::root().join("xtask/vm");

    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    c.node("dev/console", 0o020600, &[], (5, 1));
    c.file("bin/busybox", 0o755, &read(busybox)?);
    c.file("init", 0o755, &read(&vm.join("init"))?);
    c.file("guest.sh", 0o755, &read(&vm.join("guest.sh"))?);
    let mut names = String::new();
    for path in &order {
        let file = path.rsplit('/').next().unwrap_or(path);
        let name = file.split(".ko").next().unwrap_or(file).to_string() + ".ko";
        // busybox insmod wants the plain ELF: Debian compresses modules with xz (or zstd).
        let data = decompress(&k.modules.join(path))?;
        c.file(&format!("modules/{name}"), 0o644, &data);
        writeln!(names, "{name}").unwrap();
    }
    c.file("modules/order", 0o644, names.as_bytes());
    Ok(c.finish())
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("cannot read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {}", path.display()))?;
    ensure!(out.status.success(), "{tool} -dc {} failed", path.display());
    Ok(out.stdout)
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }
    fn node(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.entry(name, mode, data, rdev);
    }
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields =
            [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

// ---------------------------------------------------------------------------------------------
// Test binaries

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

// ---------------------------------------------------------------------------------------------
// One guest

fn results_root() -> PathBuf {
    target_dir().join("vm")
}

fn run_kernel(
    k: &Kernel,
    busybox: &Path,
    daemon: &Path,
    bins: &[TestBinary],
    filter: &[String],
    timeout: Duration,
) -> Result<Report> {
    println!("\n==> kernel {} ({} {}, {})", k.kver, k.package, k.version, k.suite);
    let dir = results_root().join(&k.kver);
    let _ = fs::remove_dir_all(&dir);
    let share = dir.join("share");
    fs::create_dir_all(share.join("run")).with_context(|| format!("cannot create {}", share.display()))?;
    let initrd = dir.join("initramfs.cpio");
    fs::write(&initrd, initramfs(k, busybox)?)?;

    // What the guest runs (xtask/vm/guest.sh reads these).
    let mut tests = String::new();
    for b in bins {
        for p in [&b.exe, &b.cwd] {
            ensure!(!p.to_string_lossy().contains(['\t', '\n']), "{} has a tab or newline in its path", p.display());
        }
        writeln!(tests, "{}\t{}\t{}", b.name, b.exe.display(), b.cwd.display()).unwrap();
    }
    let args: Vec<String> =
        ["--test-threads=1", "--show-output"].iter().map(|s| s.to_string()).chain(filter.iter().cloned()).collect();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let env = [
        format!("AGENT_MONITOR_BIN={}", daemon.display()),
        format!("HOME={home}"),
        format!("PATH={home}/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "RUST_BACKTRACE=1".into(),
        "NO_COLOR=1".into(),
        // Every guest boots with BPF LSM: a layer that does not load fails the tests there.
        "AGENT_MONITOR_EXPECT_LSM=1".into(),
    ];
    fs::write(share.join("run/tests"), tests)?;
    fs::write(share.join("run/args"), args.join("\n") + "\n")?;
    fs::write(share.join("run/env"), env.join("\n") + "\n")?;

    let virtfs = |path: &Path, tag: &str, ro: bool| {
        let ro = if ro { ",readonly=on" } else { "" };
        format!("local,path={},mount_tag={tag},security_model=none,multidevs=remap{ro}", path.display())
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", CPUS, "-m", MEMORY])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 quiet lsm={LSM} mitigations=off")])
        .args(["-virtfs", &virtfs(Path::new("/"), "hostroot", true)])
        .args(["-virtfs", &virtfs(&share, "results", false)])
        .args(["-virtfs", &virtfs(&k.modules, "modules", true)]);
    println!("{}", show(&qemu));
    let start = Instant::now();
    let console = dir.join("console.log");
    let timed_out = boot(&mut qemu, &console, &k.kver, timeout)?;
    let time = start.elapsed();

    let read = |name: &str| fs::read_to_string(share.join(name)).unwrap_or_default().trim().to_string();
    let mut report = Report { kver: k.kver.clone(), lsm: read("lsm"), time, problem: None, bins: Vec::new() };
    if timed_out {
        report.problem = Some(format!("QEMU killed after {}s (AGENT_MONITOR_VM_TIMEOUT)", timeout.as_secs()));
    } else if !share.join("done").exists() {
        report.problem = Some(format!("the guest stopped before finishing; see {}", console.display()));
    }
    for b in bins {
        let out = fs::read_to_string(share.join(format!("{}.out", b.name)));
        let rc = read(&format!("{}.rc", b.name)).parse::<i32>().ok();
        report.bins.push(match out {
            Ok(out) => BinaryResult::parse(&b.name, &out, rc),
            Err(_) => BinaryResult { name: b.name.clone(), rc: None, ..Default::default() },
        });
    }
    report.print(&dir);
    Ok(report)
}

/// Runs QEMU with its serial console on a pipe: every line goes to `log`, the lines that show
/// progress to our stdout. Kills it at the deadline; true if it had to.
fn boot(qemu: &mut Command, log: &Path, tag: &str, timeout: Duration) -> Result<bool> {
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not start qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let mut file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let tag = tag.to_string();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            let _ = writeln!(file, "{line}");
            if shows_progress(line) {
                println!("  [{tag}] {line}");
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = reader.join();
    Ok(timed_out)
}

/// Console lines worth echoing: ours, libtest's per-test and summary lines, skips, panics and
/// kernel trouble. The rest (the tests' own output) is in the log and the result files.
fn shows_progress(line: &str) -> bool {
    const PREFIXES: &[&str] = &["am-vm:", "test ", "running ", "SKIPPED", "thread '"];
    const KERNEL: &[&str] = &["Kernel panic", "BUG:", "Oops", "WARNING:", "Call Trace"];
    PREFIXES.iter().any(|p| line.starts_with(p)) || KERNEL.iter().any(|k| line.contains(k))
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Default, Debug)]
struct BinaryResult {
    name: String,
    /// The harness's exit code; None if it never finished.
    rc: Option<i32>,
    /// libtest's counts, from its `test result:` line (passed includes skipped tests).
    counts: Option<(u32, u32, u32)>,
    /// Tests that printed `SKIPPED name: reason`.
    skipped: Vec<(String, String)>,
    failures: Vec<String>,
}

impl BinaryResult {
    fn parse(name: &str, out: &str, rc: Option<i32>) -> BinaryResult {
        let mut r = BinaryResult { name: name.into(), rc, ..Default::default() };
        let mut in_failure_list = false;
        let mut section = String::new(); // the test whose captured output we are in
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("test result: ") {
                r.counts = parse_counts(rest);
            }
            if let Some(t) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
                section = t.to_string();
            }
            // `SKIPPED name: reason`, or `SKIPPED: reason` inside the test's captured output.
            if let Some(pos) = line.find("SKIPPED") {
                let rest = &line[pos + "SKIPPED".len()..];
                let (test, why) = match (rest.strip_prefix(": "), rest.strip_prefix(' ')) {
                    (Some(why), _) => (section.as_str(), why),
                    (None, Some(rest)) => rest.split_once(": ").unwrap_or((rest, "")),
                    _ => ("", ""),
                };
                if !test.is_empty() && !r.skipped.iter().any(|(t, _)| t == test) {
                    r.skipped.push((test.into(), why.into()));
                }
            }
            // libtest ends with "failures:" and the failed tests' names, indented.
            if line == "failures:" {
                in_failure_list = true;
                r.failures.clear();
            } else if in_failure_list {
                match line.strip_prefix("    ") {
                    Some(t) if !t.starts_with(' ') => r.failures.push(t.trim().into()),
                    _ if line.trim().is_empty() && !r.failures.is_empty() => in_failure_list = false,
                    _ => {}
                }
            }
        }
        r
    }
    fn passed(&self) -> u32 {
        self.counts.map_or(0, |c| c.0.saturating_sub(self.skipped.len() as u32))
    }
    fn ignored(&self) -> u32 {
        self.counts.map_or(0, |c| c.2)
    }
    /// Failed tests; a harness that crashed, hung or failed without a failing test counts as one.
    fn failed(&self) -> u32 {
        let failed = self.counts.map_or(0, |c| c.1);
        if failed == 0 && self.rc != Some(0) {
            1
        } else {
            failed
        }
    }
}

/// `ok. 3 passed; 1 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.00s`
fn parse_counts(s: &str) -> Option<(u32, u32, u32)> {
    let num = |word: &str| {
        s.split(';').find_map(|part| {
            let mut w = part.split_whitespace().rev();
            let (kind, n) = (w.next()?, w.next()?);
            (kind == word).then(|| n.parse().ok()).flatten()
        })
    };
    Some((num("passed")?, num("failed")?, num("ignored")?))
}

struct Report {
    kver: String,
    lsm: String,
    time: Duration,
    /// The guest did not finish: killed at the deadline, or stopped early.
    problem: Option<String>,
    bins: Vec<BinaryResult>,
}

impl Report {
    fn passed(&self) -> u32 {
        self.bins.iter().map(BinaryResult::passed).sum()
    }
    fn failed(&self) -> u32 {
        self.bins.iter().map(BinaryResult::failed).sum::<u32>() + u32::from(self.problem.is_some())
    }
    fn skipped(&self) -> u32 {
        self.bins.iter().map(|b| b.skipped.len() as u32 + b.ignored()).sum()
    }
    fn ok(&self) -> bool {
        self.failed() == 0
    }
    fn line(&self) -> String {
        format!(
            "kernel {}: {} passed, {} failed, {} skipped ({:.0} s)",
            self.kver,
            self.passed(),
            self.failed(),
            self.skipped(),
            self.time.as_secs_f64()
        )
    }
    fn print(&self, dir: &Path) {
        println!("<== kernel {}: lsm={}", self.kver, if self.lsm.is_empty() { "(unknown)" } else { &self.lsm });
        if !self.lsm.split(',').any(|l| l == "bpf") {
            println!("  warning: bpf is not among the active LSMs: the BPF LSM path was not tested");
        }
        for b in &self.bins {
            if b.rc == Some(0) && b.counts.is_some_and(|(p, f, i)| p + f + i == 0) {
                continue; // the filter matched none of its tests
            }
            let rc = b.rc.map_or("did not finish".to_string(), |rc| format!("exit {rc}"));
            println!(
                "  {}: {} passed, {} failed, {} skipped ({rc}; output in {})",
                b.name,
                b.passed(),
                b.failed(),
                b.skipped.len() as u32 + b.ignored(),
                dir.join("share").join(format!("{}.out", b.name)).display()
            );
            for (t, why) in &b.skipped {
                println!("    SKIPPED {t}: {why}");
            }
            for t in &b.failures {
                println!("    FAILED {t}");
            }
        }
        if let Some(p) = &self.problem {
            println!("  FAILED: {p}");
        }
        println!("{}", self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_order_like_dpkg() {
        use std::cmp::Ordering::*;
        let cases = [
            ("6.1.176-1", "6.1.170-3", Greater),
            ("7.3.4-1~bpo13+1", "7.2.12-1~bpo13+1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1:1.0-1", "2.0-1", Greater),
            ("6.12.95-1~bpo12+1", "6.12.95-1", Less),
            ("1.0-1", "1.0-1", Equal),
            ("1.0a-1", "1.0-1", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(deb_version_cmp(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn sources_in_both_formats() {
        let deb822 =
            "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb-src\nURIs: http://x/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://y/\nSuites: sid\nEnabled: no\n";
        let e = parse_deb822_sources(deb822);
        assert_eq!(
            e,
            [
                SourceEntry { uri: "http://deb.debian.org/debian".into(), suite: "bookworm".into() },
                SourceEntry { uri: "http://deb.debian.org/debian".into(), suite: "bookworm-updates".into() },
            ]
        );
        let list = "# x\ndeb [signed-by=/k.gpg arch=amd64] http://m/debian bookworm main\ndeb-src http://m/debian bookworm main\n";
        assert_eq!(
            parse_one_line_sources(list),
            [SourceEntry { uri: "http://m/debian".into(), suite: "bookworm".into() }]
        );
        assert_eq!(os_codename("ID=debian\nVERSION_CODENAME=bookworm\n").as_deref(), Some("bookworm"));
    }

    #[test]
    fn madison_lines_are_filtered_by_suite() {
        let out = "linux-image-6.1.0-50-amd64-unsigned |  6.1.176-1 | http://m/debian bookworm/main amd64 Packages\n\
                   linux-image-6.12.95+deb12-amd64-unsigned | 6.12.95-1~bpo12+1 | http://m/debian bookworm-backports/main amd64 Packages\n";
        assert_eq!(
            madison_in_suite(out, "bookworm"),
            [("linux-image-6.1.0-50-amd64-unsigned".into(), "6.1.176-1".into())]
        );
        assert_eq!(madison_in_suite(out, "bookworm-backports").len(), 1);
        assert_eq!(kernel_release("linux-image-6.1.0-50-amd64-unsigned").as_deref(), Some("6.1.0-50-amd64"));
        assert_eq!(kernel_release("linux-binary-unsigned-7.3.4+deb13-amd64").as_deref(), Some("7.3.4+deb13-amd64"));
        assert!(
            selects("6.1", "bookworm", "6.1.0-50-amd64")
                && !selects("6.1", "bookworm-backports", "6.12.95+deb12-amd64")
        );
        assert!(
            selects("7", "trixie-backports", "7.3.4+deb13-amd64") && selects("bookworm", "bookworm", "6.1.0-50-amd64")
        );
    }

    #[test]
    fn modules_load_dependencies_first_and_skip_builtins() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\nkernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\nkernel/fs/overlayfs/overlay.ko.xz:\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let order = module_load_order(dep, builtin, INITRAMFS_MODULES).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz"
            ]
        );
        assert!(module_load_order(dep, "", INITRAMFS_MODULES).is_err(), "virtio_pci is neither");
    }

    #[test]
    fn libtest_output_gives_counts_skips_and_failures() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ok\n\nsuccesses:\n\n---- c stdout ----\n\
                   SKIPPED c: needs prometheus\n\nsuccesses:\n    a\n    c\n\nfailures:\n\n---- b stdout ----\nboom\n\n\
                   failures:\n    b\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.0s\n";
        let r = BinaryResult::parse("files", out, Some(101));
        assert_eq!(r.counts, Some((2, 1, 0)));
        assert_eq!((r.passed(), r.failed()), (1, 1));
        assert_eq!(r.skipped, [("c".to_string(), "needs prometheus".to_string())]);
        assert_eq!(r.failures, ["b"]);
        let out = "running 1 test\ntest p ... ok\n\nsuccesses:\n\n---- p stdout ----\nSKIPPED: no .deb\n\n\
                   test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.04s\n";
        let r = BinaryResult::parse("package", out, Some(0));
        assert_eq!((r.passed(), r.failed(), r.skipped.len()), (0, 0, 1));
        assert_eq!(r.skipped[0], ("p".to_string(), "no .deb".to_string()));
        let crashed = BinaryResult::parse("files", "running 3 tests\ntest a ... ", None);
        assert_eq!((crashed.passed(), crashed.failed()), (0, 1));
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let buf = c.finish();
        assert!(buf.starts_with(b"070701"));
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
