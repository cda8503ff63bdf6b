//! The end-to-end harness (`tests/src/lib.rs`, crate `agent-monitor-e2e`) as xtask uses it: the
//! bench and the demo start the daemon and read its metrics through it, and get errors for
//! xtask's one-line messages where the tests get panics.

use agent_monitor_e2e::{try_http_get, Daemon, Launch, StartError};
use anyhow::{anyhow, ensure, Result};
use std::time::Duration;

/// Start the daemon as `launch` says: it, and the time from spawning it to its "enforcing".
pub fn start_daemon(launch: Launch) -> Result<(Daemon, Duration)> {
    let timeout = launch.timeout.as_secs();
    Daemon::launch(launch).map_err(|e| match e {
        StartError::Io(what, e) => anyhow!(e).context(what),
        StartError::Exited(status, log) => anyhow!("agent-monitor exited ({status}) before enforcing; its log:\n{log}"),
        StartError::TimedOut(log) => anyhow!("agent-monitor was not enforcing after {timeout} s; its log:\n{log}"),
    })
}

/// The body of a GET answered with 200.
pub fn get(addr: &str, path: &str) -> Result<String> {
    let response = try_http_get(addr, path).map_err(|e| anyhow!(e))?;
    ensure!(response.ok(), "GET {path}: {}", response.head.lines().next().unwrap_or(""));
    Ok(response.body)
}
