//! `cargo xtask dist`: a Debian package (`target/dist/agent-monitor_<version>_<arch>.deb`) with
//! the binary, the systemd unit, the commented default configuration (a conffile) and the
//! dashboards, installed and started the way SREs expect.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cargo, output, root, run_cmd, target_dir};

const POSTINST: &str = r#"#!/bin/sh
set -e
# Start (or restart) the daemon where systemd runs; elsewhere the files are in place and
# `agent-monitor run` starts it by hand.
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable agent-monitor.service >/dev/null || true
    systemctl restart agent-monitor.service || true
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
    systemctl stop agent-monitor.service >/dev/null || true
    systemctl disable agent-monitor.service >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] || [ "$1" = "purge" ]; then
    # Programs left pinned by the daemon (so that enforcement outlived it) go with the package.
    rm -rf /sys/fs/bpf/agent-monitor
    [ -d /run/systemd/system ] && systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = "purge" ]; then
    rm -rf /var/log/agent-monitor
fi
exit 0
"#;

/// Build the package; returns its path.
pub fn run() -> Result<PathBuf> {
    run_cmd(cargo().args(["build", "--release", "-p", "agent-monitor"]))?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture")).context("dpkg is needed to build a .deb")?;
    let arch = arch.trim();
    let dist = target_dir().join("dist");
    let stage = dist.join(format!("agent-monitor_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    let put = |rel: &str, src: &Path, mode: u32| -> Result<()> {
        let dst = stage.join(rel);
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/agent-monitor", &target_dir().join("release/agent-monitor"), 0o755)?;
    put("lib/systemd/system/agent-monitor.service", &root().join("deploy/agent-monitor.service"), 0o644)?;
    put("etc/agent-monitor/agent-monitor.toml", &root().join("deploy/agent-monitor.toml"), 0o640)?;
    put("usr/share/doc/agent-monitor/README.md", &root().join("README.md"), 0o644)?;
    put("etc/logrotate.d/agent-monitor", &root().join("deploy/agent-monitor.logrotate"), 0o644)?;
    put("usr/share/doc/agent-monitor/copyright", &root().join("deploy/copyright"), 0o644)?;
    // The manual page and shell completions, generated from the CLI itself (clap_mangen,
    // clap_complete): they cannot drift from it.
    let bin = target_dir().join("release/agent-monitor");
    let generated = |rel: &str, args: &[&str]| -> Result<()> {
        let dst = stage.join(rel);
        fs::create_dir_all(dst.parent().unwrap())?;
        let out = Command::new(&bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
        anyhow::ensure!(out.status.success(), "agent-monitor {args:?} failed");
        fs::write(&dst, out.stdout)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    generated("usr/share/man/man1/agent-monitor.1", &["manpage"])?;
    run_cmd(Command::new("gzip").args(["-9nf"]).arg(stage.join("usr/share/man/man1/agent-monitor.1")))?;
    generated("usr/share/bash-completion/completions/agent-monitor", &["completions", "bash"])?;
    generated("usr/share/zsh/vendor-completions/_agent-monitor", &["completions", "zsh"])?;
    generated("usr/share/fish/vendor_completions.d/agent-monitor.fish", &["completions", "fish"])?;
    for entry in fs::read_dir(root().join("dashboards"))? {
        let p = entry?.path();
        if p.is_file() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            put(&format!("usr/share/agent-monitor/dashboards/{name}"), &p, 0o644)?;
        }
    }
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kib = dir_size(&stage)? / 1024;
    fs::write(
        debian.join("control"),
        format!(
            "Package: agent-monitor\nVersion: {version}\nArchitecture: {arch}\nMaintainer: agent-monitor developers <agent-monitor@localhost>\n\
             Installed-Size: {size_kib}\nDepends: libc6\nRecommends: systemd\nSection: admin\nPriority: optional\n\
             Description: kernel-enforced read-only boundary around AI agent processes\n \
             eBPF programs trace the file, network and process activity of AI agent processes and\n \
             refuse, kill or alert on every outbound write their policy does not grant.\n"
        ),
    )?;
    fs::write(debian.join("conffiles"), "/etc/agent-monitor/agent-monitor.toml\n/etc/logrotate.d/agent-monitor\n")?;
    for (name, body) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        fs::write(debian.join(name), body)?;
        fs::set_permissions(debian.join(name), fs::Permissions::from_mode(0o755))?;
    }
    let deb = dist.join(format!("agent-monitor_{version}_{arch}.deb"));
    run_cmd(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&stage).arg(&deb))?;
    println!("built {}", deb.display());
    Ok(deb)
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(n)
}
