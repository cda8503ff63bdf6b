//! QEMU: installed from the host release's backports, and one guest per kernel (TCG) that runs
//! the test binaries and writes their output to a 9p share.

use super::apt::Apt;
use super::initramfs::initramfs;
use super::kernels::Kernel;
use super::report::{BinaryResult, Report};
use super::{results_root, TestBinary};
use crate::{output, run_cmd, show};
use anyhow::{ensure, Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Guest memory and vCPUs.
const MEMORY: &str = "2G";
const CPUS: &str = "2";

/// LSMs the guest boots with: Debian's default list plus `bpf`.
const LSM: &str = "lockdown,capability,landlock,yama,apparmor,bpf";

/// QEMU from the host release's backports: the machine's qemu-utils comes from there, and the
/// release's own qemu-system-x86 would replace it with an older one.
pub fn ensure_qemu(apt: &Apt) -> Result<()> {
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

/// What every guest runs: the initramfs's busybox, the daemon and the test binaries (snapshots),
/// the harness's filter, and how long a guest may take.
pub struct Guests<'a> {
    pub busybox: &'a Path,
    pub daemon: &'a Path,
    pub bins: &'a [TestBinary],
    pub filter: &'a [String],
    pub timeout: Duration,
}

impl Guests<'_> {
    /// Boots `k` with the tests, in `target/vm/KVER/`; its report, printed.
    pub fn run(&self, k: &Kernel) -> Result<Report> {
        println!("\n==> kernel {} ({} {}, {})", k.kver, k.package, k.version, k.suite);
        let dir = results_root().join(&k.kver);
        let _ = fs::remove_dir_all(&dir);
        let share = dir.join("share");
        fs::create_dir_all(share.join("run")).with_context(|| format!("cannot create {}", share.display()))?;
        let initrd = dir.join("initramfs.cpio");
        fs::write(&initrd, initramfs(k, self.busybox)?)?;
        self.write_run(&share)?;

        let mut qemu = qemu(k, &initrd, &share);
        println!("{}", show(&qemu));
        let start = Instant::now();
        let console = dir.join("console.log");
        let timed_out = boot(&mut qemu, &console, &k.kver, self.timeout)?;
        let time = start.elapsed();

        let read = |name: &str| fs::read_to_string(share.join(name)).unwrap_or_default().trim().to_string();
        let mut report = Report { kver: k.kver.clone(), lsm: read("lsm"), time, problem: None, bins: Vec::new() };
        if timed_out {
            report.problem = Some(format!("QEMU killed after {}s (AGENT_MONITOR_VM_TIMEOUT)", self.timeout.as_secs()));
        } else if !share.join("done").exists() {
            report.problem = Some(format!("the guest stopped before finishing; see {}", console.display()));
        }
        for b in self.bins {
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

    /// What the guest runs, in the share's `run/` (xtask/vm/guest.sh reads these).
    fn write_run(&self, share: &Path) -> Result<()> {
        let mut tests = String::new();
        for b in self.bins {
            for p in [&b.exe, &b.cwd] {
                ensure!(
                    !p.to_string_lossy().contains(['\t', '\n']),
                    "{} has a tab or newline in its path",
                    p.display()
                );
            }
            writeln!(tests, "{}\t{}\t{}", b.name, b.exe.display(), b.cwd.display()).unwrap();
        }
        let args: Vec<String> = ["--test-threads=1", "--show-output"]
            .iter()
            .map(|s| s.to_string())
            .chain(self.filter.iter().cloned())
            .collect();
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let env = [
            format!("AGENT_MONITOR_BIN={}", self.daemon.display()),
            format!("HOME={home}"),
            format!("PATH={home}/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "RUST_BACKTRACE=1".into(),
            "NO_COLOR=1".into(),
            // Every guest boots with BPF LSM: a layer that does not load fails the tests there.
            "AGENT_MONITOR_EXPECT_LSM=1".into(),
            // Verifying the programs under TCG, three guests on two cores: minutes on 6.1.
            "AGENT_MONITOR_START_TIMEOUT_SECS=400".into(),
        ];
        fs::write(share.join("run/tests"), tests)?;
        fs::write(share.join("run/args"), args.join("\n") + "\n")?;
        fs::write(share.join("run/env"), env.join("\n") + "\n")?;
        Ok(())
    }
}

/// The QEMU command line: TCG, the kernel with BPF LSM on, and three 9p shares: the host's root
/// (read-only), the results share, the kernel's modules (read-only).
fn qemu(k: &Kernel, initrd: &Path, share: &Path) -> Command {
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
        .arg(initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 quiet lsm={LSM} mitigations=off")])
        .args(["-virtfs", &virtfs(Path::new("/"), "hostroot", true)])
        .args(["-virtfs", &virtfs(share, "results", false)])
        .args(["-virtfs", &virtfs(&k.modules, "modules", true)]);
    qemu
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
