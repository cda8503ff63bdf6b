//! The Debian packages the tests, the VM tier and the bench need: one list, [`PACKAGES`], with
//! who needs each. `cargo xtask setup` installs the missing ones (`apt-get update` first, as
//! root); `test`, `test --vm` and `demo` run setup first, `bench` adds its own, and `.ci/run`
//! runs setup. Add a package here when a test, the VM tier or the bench starts running a
//! program that a fresh Debian machine does not have.
//!
//! Not here, on purpose:
//! - `qemu-system-x86`: `test --vm` installs it from the release's backports (the release's own
//!   would replace the machine's backported `qemu-utils`; see `vm/qemu.rs`);
//! - `busybox-static`: `test --vm` downloads it for the initramfs, it is not installed;
//! - Node.js: the one test that uses it wants a Node with OpenSSL linked statically, which
//!   Debian's `nodejs` is not (it skips without one);
//! - what every Debian system has: dpkg (`dpkg-deb`), util-linux (`setpriv`, `mount`), libc-bin
//!   (`ldd`, `getconf`), coreutils, bash.

use crate::{is_root, run_cmd};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// Who needs a package.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Need {
    /// The host tests, the VM tier (its guests run the host's programs) and the demo.
    Tests,
    /// `cargo xtask bench` only.
    Bench,
    /// The bench's peers, which `bench --no-peers` does not run.
    Peers,
}

pub struct Package {
    pub name: &'static str,
    pub need: Need,
    /// Who runs what from it.
    pub why: &'static str,
}

const fn p(name: &'static str, need: Need, why: &'static str) -> Package {
    Package { name, need, why }
}

#[rustfmt::skip]
pub const PACKAGES: &[Package] = &[
    p("curl", Need::Tests, "e2e: a real agent making HTTP(S) requests (copies of /usr/bin/curl)"),
    p("python3", Need::Tests, "e2e and demo: real agents (ssl -> SSL_write_ex), the loopback forum and test servers"),
    p("iproute2", Need::Tests, "e2e: `ip netns`, namespaces holding addresses that cannot leave the machine"),
    p("bpftool", Need::Tests, "e2e (pinning): counts loaded programs and pinned maps; bench: refuses to run beside loaded programs"),
    p("openssl", Need::Tests, "e2e, demo, bench: self-signed certificates for the HTTPS servers"),
    p("gnutls-bin", Need::Tests, "e2e: gnutls-cli, a GnuTLS client (gnutls_record_send)"),
    p("gcc", Need::Tests, "e2e: builds the io_uring connect probe; bench: builds xtask/bench/load.c"),
    p("libc6-dev", Need::Tests, "e2e, bench: the C headers for those"),
    p("golang-go", Need::Tests, "e2e (hardening_tls): builds a client with Go's own TLS, with symbols and stripped (hooked through .gopclntab)"),
    p("libssl-dev", Need::Tests, "e2e (hardening_tls): OpenSSL static libraries for a stripped static client whose TLS is opaque; bench: the headers for load.c's SSL_write workload"),
    p("prometheus", Need::Tests, "e2e (observability): scrapes the daemon, runs every dashboard query; test: promtool checks and tests dashboards/alerts.yml"),
    p("prometheus-alertmanager", Need::Tests, "e2e (observability): receives the daemon's webhook alerts"),
    p("rsyslog", Need::Tests, "e2e (observability): receives the events as RFC 5424 syslog and parses their structured data"),
    p("logrotate", Need::Tests, "e2e (files): rotates the events log with the shipped config's options; the chain goes on across files"),
    p("systemd", Need::Tests, "e2e (exec, package): `systemd-analyze verify` of the unit"),
    p("kmod", Need::Tests, "VM tier: depmod over each downloaded kernel's modules"),
    p("xz-utils", Need::Tests, "VM tier: decompresses the kernels' .ko.xz modules for the initramfs"),
    p("zstd", Need::Tests, "VM tier: decompresses .ko.zst modules, where a kernel ships them"),
    p("auditd", Need::Peers, "bench: auditd, a peer"),
    p("bpftrace", Need::Peers, "bench: bpftrace, a peer"),
];

/// The names of the packages for `needs`, in list order.
pub fn names(needs: &[Need]) -> Vec<&'static str> {
    PACKAGES.iter().filter(|p| needs.contains(&p.need)).map(|p| p.name).collect()
}

/// One line per package: its name and who needs it, for whoever has to install them by hand.
fn explain(names: &[&str]) -> String {
    let lines = PACKAGES.iter().filter(|p| names.contains(&p.name)).map(|p| format!("\n  {}: {}", p.name, p.why));
    lines.collect()
}

/// Installs the packages for `needs` that are not installed: one `setup:` line saying which.
/// Without root (`test --no-root`) it only says what is missing; without apt, what to install.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let wanted = names(needs);
    if wanted.is_empty() {
        return Ok(());
    }
    if which::which("dpkg-query").is_err() || which::which("apt-get").is_err() {
        println!("setup: Debian packages: no dpkg or apt-get here; install their equivalents:{}", explain(&wanted));
        return Ok(());
    }
    let installed = installed(&wanted)?;
    let missing: Vec<&str> = wanted.iter().copied().filter(|n| !installed.contains(*n)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages: already installed ({})", wanted.join(" "));
        return Ok(());
    }
    if !is_root()? {
        let why = explain(&missing);
        println!("setup: Debian packages: missing; rerun `cargo xtask setup` as root to install them:{why}");
        return Ok(());
    }
    println!("setup: Debian packages: installing {} (apt-get)", missing.join(" "));
    run_cmd(apt_get().args(["update", "-qq"]))
        .context("apt-get update failed; check network access to the Debian archive")?;
    let mut install = apt_get();
    install.args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing).stdout(Stdio::null());
    run_cmd(&mut install).with_context(|| format!("could not install the Debian packages {}", missing.join(" ")))?;
    println!("setup: Debian packages: installed {}", missing.join(" "));
    Ok(())
}

/// Of `names`, those dpkg has installed (state `ii`).
fn installed(names: &[&str]) -> Result<BTreeSet<String>> {
    // Exits 1 and complains on stderr about a package it has never seen: that one is missing.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${db:Status-Abbrev}\n"])
        .args(names)
        .stderr(Stdio::null())
        .output()
        .context("could not run dpkg-query")?;
    Ok(parse_installed(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_installed(dpkg_query: &str) -> BTreeSet<String> {
    let lines = dpkg_query.lines().filter_map(|l| l.split_once('\t'));
    lines.filter(|(_, status)| status.starts_with("ii")).map(|(name, _)| name.to_string()).collect()
}

/// apt-get, non-interactive, waiting up to 5 minutes for another apt or dpkg to finish.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(["-o", "DPkg::Lock::Timeout=300"]).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_well_formed() {
        let mut seen = BTreeSet::new();
        for p in PACKAGES {
            assert!(seen.insert(p.name), "{} is listed twice", p.name);
            let ok = p.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            assert!(ok && !p.why.is_empty(), "{}: a Debian package name and who needs it", p.name);
        }
        let tests = names(&[Need::Tests]);
        for needed in ["prometheus-alertmanager", "kmod", "bpftool", "gnutls-bin"] {
            assert!(tests.contains(&needed), "issue 16: `cargo xtask test` must install {needed}");
        }
        assert!(!tests.contains(&"auditd") && names(&[Need::Peers]) == ["auditd", "bpftrace"]);
    }

    #[test]
    fn dpkg_query_states() {
        let out = "curl\tii \nkmod\trc \nlibc6-dev\tii \nlibc6-dev\tun \n";
        assert_eq!(parse_installed(out), BTreeSet::from(["curl".to_string(), "libc6-dev".to_string()]));
    }
}
