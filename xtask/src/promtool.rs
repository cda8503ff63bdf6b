//! The shipped Prometheus rules (`dashboards/alerts.yml`): `promtool check rules` and
//! `promtool test rules` (`dashboards/alerts_test.yml`), installing Debian's `prometheus` package
//! (which carries `promtool` and `prometheus`) when `promtool` is missing.
//!
//! `cargo xtask test` runs both as steps. Installing needs root and network access to Debian's archive. On a host running systemd the
//! package's postinst also enables and starts a `prometheus` service on :9090.

use crate::{output, root, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The directory holding the dashboards, the rules and their tests.
pub fn dashboards_dir() -> PathBuf {
    root().join("dashboards")
}

/// Makes sure `promtool` is on PATH, installing the `prometheus` package with apt-get if not.
pub fn ensure_installed() -> Result<()> {
    if let Ok(path) = which::which("promtool") {
        let version = output(Command::new(&path).arg("--version")).unwrap_or_default();
        let version = version.lines().next().unwrap_or("").trim().to_string();
        println!("setup: promtool: already installed ({version} at {})", path.display());
        return Ok(());
    }
    if which::which("apt-get").is_err() {
        bail!("promtool is missing and there is no apt-get; install Prometheus (it ships promtool) and put it on PATH");
    }
    if !is_root() {
        bail!("promtool is missing; install it as root with `apt-get update && apt-get install -y prometheus`");
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_cmd(&mut apt(&["update", "-qq"]))
        .context("apt-get update failed; check network access to the Debian archive")?;
    run_cmd(&mut apt(&["install", "-y", "-qq", "--no-install-recommends", "prometheus"]))
        .context("could not install the prometheus package (it provides promtool)")?;
    which::which("promtool").context("the prometheus package is installed but promtool is not on PATH")?;
    println!("setup: promtool: installed (Debian package prometheus)");
    Ok(())
}

/// `promtool check rules dashboards/alerts.yml`: syntax, PromQL and templates of the rules.
pub fn check_rules() -> Command {
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules", "alerts.yml"]).current_dir(dashboards_dir());
    cmd
}

/// `promtool test rules alerts_test.yml`, run in `dashboards/` (the test file names `alerts.yml`
/// relative to itself).
pub fn test_rules() -> Command {
    let mut cmd = Command::new("promtool");
    cmd.args(["test", "rules", "alerts_test.yml"]).current_dir(dashboards_dir());
    cmd
}

/// Effective uid 0, from the second field of `Uid:` in /proc/self/status.
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1).map(str::to_owned));
    uid.as_deref() == Some("0")
}
