//! The Debian package as an SRE installs it: `dpkg -i` puts the binary, the unit, the
//! configuration and the dashboards where the unit expects them; the unit verifies; the shipped
//! configuration passes `check`; `dpkg --purge` removes it all.
use std::{path::Path, process::Command};

use agent_monitor_e2e::*;

#[test]
fn the_deb_installs_where_the_unit_expects_and_removes_cleanly() {
    if !can_run_root_tests("the_deb_installs_where_the_unit_expects_and_removes_cleanly") {
        return;
    }
    let Some(deb) = std::env::var_os("AGENT_MONITOR_DEB") else {
        eprintln!("SKIPPED: AGENT_MONITOR_DEB is not set (`cargo xtask test` builds the .deb and sets it)");
        return;
    };
    if Path::new("/var/lib/dpkg/info/agent-monitor.list").exists() {
        eprintln!("SKIPPED: agent-monitor is installed on this machine already; not touching it");
        return;
    }
    let st = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(st.success(), "dpkg -i failed: {st}");
    let installed = || {
        for f in [
            "/usr/bin/agent-monitor",
            "/lib/systemd/system/agent-monitor.service",
            "/etc/agent-monitor/agent-monitor.toml",
            "/usr/share/agent-monitor/dashboards/agent-monitor.json",
            "/usr/share/agent-monitor/dashboards/alerts.yml",
            "/usr/share/man/man1/agent-monitor.1.gz",
            "/usr/share/bash-completion/completions/agent-monitor",
            "/usr/share/zsh/vendor-completions/_agent-monitor",
            "/usr/share/fish/vendor_completions.d/agent-monitor.fish",
            "/usr/share/doc/agent-monitor/copyright",
            "/etc/logrotate.d/agent-monitor",
        ] {
            assert!(Path::new(f).exists(), "{f} is missing after dpkg -i");
        }
    };
    installed();
    // The unit's ExecStart is the installed binary, and the unit verifies against it.
    let unit = std::fs::read_to_string("/lib/systemd/system/agent-monitor.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/agent-monitor run"), "{unit}");
    if have("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .args(["verify", "/lib/systemd/system/agent-monitor.service"])
            .output()
            .unwrap();
        assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The manual page renders and names the subcommands.
    if have("man") {
        let out = Command::new("man").args(["-P", "cat", "agent-monitor"]).env("MANWIDTH", "100").output().unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(page.contains("agent-monitor-check") || page.contains("check"), "{page}");
    }
    // The shipped logrotate configuration is valid for logrotate (a dry run).
    if have("logrotate") {
        let out = Command::new("logrotate").args(["-d", "/etc/logrotate.d/agent-monitor"]).output().unwrap();
        assert!(out.status.success(), "logrotate -d: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The shipped configuration, where `run` reads it by default, is valid.
    let out = Command::new("/usr/bin/agent-monitor")
        .args(["check", "/etc/agent-monitor/agent-monitor.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = run(Command::new("dpkg").args(["--purge", "agent-monitor"]));
    assert!(st.success(), "dpkg --purge failed: {st}");
    for f in
        ["/usr/bin/agent-monitor", "/lib/systemd/system/agent-monitor.service", "/etc/agent-monitor/agent-monitor.toml"]
    {
        assert!(!Path::new(f).exists(), "{f} is still there after purge");
    }
}
