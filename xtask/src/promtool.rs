//! The shipped Prometheus rules (`dashboards/alerts.yml`): `promtool check rules` and
//! `promtool test rules` (`dashboards/alerts_test.yml`). `promtool` comes with Debian's
//! `prometheus` package, which setup installs (`xtask/src/packages.rs`).
//!
//! `cargo xtask test` runs both as steps. On a host running systemd the package's postinst also
//! enables and starts a `prometheus` service on :9090.

use crate::{output, root};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The directory holding the dashboards, the rules and their tests.
pub fn dashboards_dir() -> PathBuf {
    root().join("dashboards")
}

/// Makes sure `promtool` is on PATH (setup installed it, as root).
pub fn ensure_installed() -> Result<()> {
    let path = which::which("promtool").context(
        "promtool is missing: `cargo xtask setup` installs it as root (Debian package prometheus), or put \
         Prometheus's promtool on PATH",
    )?;
    let version = output(Command::new(&path).arg("--version")).unwrap_or_default();
    let version = version.lines().next().unwrap_or("").trim().to_string();
    println!("setup: promtool: already installed ({version} at {})", path.display());
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
