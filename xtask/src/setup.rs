//! `cargo xtask setup`: each step prints one line, what it did or that it was already done.
//! Any failure is one sentence: what is missing and how to fix it.

use crate::packages::{self, Need};
use crate::{is_root, output, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{fs, os::unix::fs::symlink};

const BPF_LINKER: &str = "bpf-linker@0.13.0";

/// Runs every step: the toolchain, the Debian packages for `needs` (none for `run`: the daemon
/// needs none), the kernel filesystems unless `mounts` is false (`test --no-root` needs none).
pub fn run(home: &Path, mounts: bool, needs: &[Need]) -> Result<()> {
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker(home)?;
    packages::ensure(needs)?;
    if mounts {
        kernel_filesystems()?;
    } else {
        println!("setup: kernel filesystems: skipped (--no-root)");
    }
    Ok(())
}

pub fn nightly_toolchain() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the toolchains; install it from https://rustup.rs")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: nightly toolchain: already installed");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("could not install the nightly toolchain; check network access to static.rust-lang.org")?;
    println!("setup: nightly toolchain: installed");
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the nightly rustc does not run; reinstall it with `rustup toolchain install nightly --force`")?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn rust_src() -> Result<()> {
    if nightly_sysroot()?.join("lib/rustlib/src").is_dir() {
        println!("setup: rust-src (nightly): already installed");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src to nightly (needed for -Z build-std); check network access")?;
    println!("setup: rust-src (nightly): installed");
    Ok(())
}

fn bpf_linker(home: &Path) -> Result<()> {
    if let Some(version) = bpf_linker_version() {
        let at = which::which("bpf-linker").map(|p| p.display().to_string()).unwrap_or_default();
        println!("setup: bpf-linker: already installed ({version} at {at})");
        return Ok(());
    }
    println!("setup: bpf-linker: not working, building {BPF_LINKER} against nightly's LLVM (about a minute)");
    build_bpf_linker(home).context("could not build bpf-linker (see /work/shared/TOOLCHAIN.md)")?;
    match bpf_linker_version() {
        Some(version) => println!("setup: bpf-linker: installed ({version})"),
        None => bail!("bpf-linker was installed but `bpf-linker --version` still fails; is ~/.cargo/bin on PATH?"),
    }
    Ok(())
}

/// `bpf-linker --version`, if it runs (PATH already has ~/.cargo/bin first).
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// As TOOLCHAIN.md: link against the libLLVM inside the nightly sysroot, through a prefix of
/// symlinks that must persist (the binary's RUNPATH points into it).
fn build_bpf_linker(home: &Path) -> Result<()> {
    let libdir = nightly_sysroot()?.join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("cannot read {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .find(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}; reinstall nightly", libdir.display()))?;
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&verbose)?;

    let prefix = home.join(".cache/agent-monitor/llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), &lib] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link); // `ln -sf`
        symlink(libdir.join(&lib), &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    let features = format!("llvm-{major}");
    let args = ["install", BPF_LINKER, "--locked", "--force", "--no-default-features", "--features", &features];
    run_cmd(Command::new("cargo").args(args).env("LLVM_PREFIX", &prefix).current_dir(home))
}

/// The major of the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(rustc_vv: &str) -> Result<u32> {
    let version = rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version:"));
    let major = version.and_then(|v| v.trim().split('.').next()?.parse().ok());
    major.context("`rustc +nightly -vV` prints no `LLVM version:` line; reinstall nightly")
}

fn kernel_filesystems() -> Result<()> {
    if !is_root()? {
        bail!(
            "setup must run as root to mount tracefs, bpffs and securityfs: rerun as root \
             (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`), or use `cargo xtask test --no-root`"
        );
    }
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts; is /proc mounted?")?;
    let mounted =
        |dir: &str, fstype: &str| mounts.lines().any(|l| l.split_whitespace().skip(1).take(2).eq([dir, fstype]));
    let tracefs = Path::new("/sys/kernel/tracing/events").exists();
    mount("tracefs", "nodev", "/sys/kernel/tracing", tracefs)?;
    mount("bpf", "bpf", "/sys/fs/bpf", mounted("/sys/fs/bpf", "bpf"))?;
    mount("securityfs", "securityfs", "/sys/kernel/security", mounted("/sys/kernel/security", "securityfs"))
}

fn mount(fstype: &str, source: &str, dir: &str, already: bool) -> Result<()> {
    if already {
        println!("setup: {fstype}: already mounted at {dir}");
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", fstype, source, dir])).with_context(|| {
        format!("could not mount {fstype} at {dir}; the kernel must support it and we need CAP_SYS_ADMIN")
    })?;
    println!("setup: {fstype}: mounted at {dir}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_parses_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(super::llvm_major(vv).unwrap(), 22);
        assert!(super::llvm_major("rustc 1.97.0\n").is_err());
    }
}
