//! The daemon under measurement: started through the e2e harness, read through /proc, its log
//! and its metrics.

use crate::harness::start_daemon;
use agent_monitor_e2e::{Daemon, Launch, TempDir};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Start `bin` enforcing `policy`, its files in `dir` (removed when it is dropped); returns it
/// and the seconds from spawning it to its "enforcing" (the log is read every 5 ms).
pub fn start(bin: &Path, dir: PathBuf, policy: &str) -> Result<(Daemon, f64)> {
    let dir = TempDir::at(dir.clone()).with_context(|| format!("cannot create {}", dir.display()))?;
    let launch = Launch {
        poll: Duration::from_millis(5),
        timeout: Duration::from_secs(60),
        ..Launch::new(bin.to_path_buf(), dir, policy)
    };
    let (daemon, startup) = start_daemon(launch)?;
    Ok((daemon, startup.as_secs_f64()))
}

/// What the bench reads of a running daemon.
pub trait Measured {
    /// Seconds between the log's "policy loaded" and "eBPF programs attached" lines.
    fn attach_secs(&self) -> Option<f64>;
    /// A `kB` line of /proc/PID/status (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> Option<u64>;
    /// User + system CPU seconds so far (/proc/PID/stat fields 14 and 15).
    fn cpu_secs(&self, clk_tck: f64) -> Option<f64>;
}

impl Measured for Daemon {
    fn attach_secs(&self) -> Option<f64> {
        let log = self.log_text();
        let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_time);
        Some(at("eBPF programs attached")? - at("policy loaded")?)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn cpu_secs(&self, clk_tck: f64) -> Option<f64> {
        let s = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &s[s.rfind(')')? + 2..]; // after "pid (comm) ": field 3 on
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clk_tck)
    }
}

/// The time of day, in seconds, of a log line that starts with an RFC 3339 UTC timestamp.
fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':').map(|p| p.parse::<f64>().ok());
    Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
}

/// The sum of a Prometheus metric's samples over all its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_and_metric_sums() {
        let t = log_time("2026-11-27T10:33:50.798187Z  INFO eBPF programs attached").unwrap();
        assert!((t - (10.0 * 3600.0 + 33.0 * 60.0 + 50.798187)).abs() < 1e-6);
        let m = "# HELP x\nagent_monitor_events_lost_total 2\nagent_monitor_events_lost_total{a=\"b\"} 3\n\
                 agent_monitor_events_lost_totalx 9\n";
        assert_eq!(metric_sum(m, "agent_monitor_events_lost_total"), 5.0);
    }
}
