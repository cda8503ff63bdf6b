//! The daemon under measurement, and the children the bench starts.

use crate::demo::free_port;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child killed (SIGKILL) and reaped on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM/SIGINT a child we started (xtask has no libc), wait up to 10 s, else SIGKILL.
pub fn stop_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).stderr(Stdio::null()).status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Our daemon, stopped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub events: PathBuf,
    pub metrics: String,
}

impl Daemon {
    /// Start `agent-monitor run` with this policy; returns it and the seconds until "enforcing".
    pub fn start(bin: &Path, dir: &Path, policy: &str) -> Result<(Daemon, f64)> {
        fs::create_dir_all(dir)?;
        let config = dir.join("policy.toml");
        fs::write(&config, policy)?;
        let (log, events) = (dir.join("daemon.log"), dir.join("events.jsonl"));
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&config).arg("--events").arg(&events);
        cmd.args(["--metrics-listen", &metrics]).arg("--control-socket").arg(dir.join("control.sock"));
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(&log)?);
        let t = Instant::now();
        let child = cmd.spawn().with_context(|| format!("could not start {}", bin.display()))?;
        let mut d = Daemon { child: Some(child), log, events, metrics };
        loop {
            let text = fs::read_to_string(&d.log).unwrap_or_default();
            if text.contains("enforcing") {
                return Ok((d, t.elapsed().as_secs_f64()));
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait()? {
                bail!("agent-monitor exited ({status}) before enforcing; its log:\n{text}");
            }
            ensure!(t.elapsed() < Duration::from_secs(60), "agent-monitor was not enforcing after 60 s:\n{text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Seconds between the log's "policy loaded" and "eBPF programs attached" lines.
    pub fn attach_secs(&self) -> Option<f64> {
        let log = fs::read_to_string(&self.log).ok()?;
        let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_time);
        Some(at("eBPF programs attached")? - at("policy loaded")?)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A `kB` line of /proc/PID/status (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// User + system CPU seconds so far (/proc/PID/stat fields 14 and 15).
    pub fn cpu_secs(&self, clk_tck: f64) -> Option<f64> {
        let s = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &s[s.rfind(')')? + 2..]; // after "pid (comm) ": field 3 on
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clk_tck)
    }

    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-TERM");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-TERM");
        }
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
