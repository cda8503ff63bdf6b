//! agent-monitor's own measurements: a round with the daemon (start-up, footprint, every
//! workload in the loaded and agent cases, the events it logged), and enforcement (refused
//! requests against a byte-counting server, the time to a kill).

use super::daemon::{self, metric_sum, Measured};
use super::results::Enforcement;
use super::workloads::{Case, Monitor};
use super::{kv, settle, Bench, AGENT, DENY_AGENT, DENY_PORT, KILL_AGENT, METRICS_REFRESH};
use crate::harness;
use crate::{output, show};
use agent_monitor_e2e::{Bg, Daemon};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

impl Bench {
    pub(super) fn bench_policy(&self) -> String {
        format!(
            "# cargo xtask bench: the load generator's copy `{AGENT}` is the agent; its copy \
             `{DENY_AGENT}` may reach 127.0.0.1:{DENY_PORT} only.\n\
             [[agent]]\nname = \"bench\"\naction = \"alert\"\n[agent.match]\ncomm = [\"{AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"127.0.0.1:*\"]\n\n\
             [[agent]]\nname = \"bench-deny\"\naction = \"deny\"\n[agent.match]\ncomm = [\"{DENY_AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"127.0.0.1:{DENY_PORT}\"]\n",
            w = self.work.display()
        )
    }

    pub(super) fn agent_monitor_round(&mut self, round: usize) -> Result<()> {
        let ddir = self.dir.join(format!("daemon-{round}"));
        let (daemon, startup) = daemon::start(&self.daemon_bin, ddir, &self.bench_policy())?;
        self.r.startup_s.push(startup);
        self.r.attach_s.extend(daemon.attach_secs());
        // Idle: one second with nothing to do.
        let c0 = daemon.cpu_secs(self.clk_tck);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        if let Some(c1) = daemon.cpu_secs(self.clk_tck) {
            self.r.cpu_idle.0 += c1 - c0.unwrap_or(c1);
            self.r.cpu_idle.1 += t.elapsed().as_secs_f64();
        }
        if let Some(rss) = daemon.status_kib("VmRSS") {
            self.r.rss_idle_mib.push(rss as f64 / 1024.0);
        }
        if let Some(hwm) = daemon.status_kib("VmHWM") {
            self.r.hwm_start_mib.push(hwm as f64 / 1024.0);
        }
        for _ in 0..self.opts.reps {
            for (i, w) in self.r.workloads.clone().iter().enumerate() {
                self.measure(round, i, *w, Monitor::Ours, Case::Loaded, Some(&daemon))?;
            }
        }
        let idle_agent = Command::new(&self.agent).arg("sleep").stdin(Stdio::null()).spawn();
        let mut idle_agent = Bg(idle_agent.context("could not start the idle agent")?);
        let mut refused_ops = 0;
        // Operations the deny agent saw refused, per workload.
        let mut denied: BTreeMap<usize, u64> = BTreeMap::new();
        for _ in 0..self.opts.reps {
            for (i, w) in self.r.workloads.clone().iter().enumerate() {
                for case in w.agent_cases() {
                    let refused = self.measure(round, i, *w, Monitor::Ours, case, Some(&daemon))?;
                    if case == Case::AgentRefused && i == 0 {
                        refused_ops += self.r.n[i];
                    }
                    if case == Case::AgentDenied {
                        *denied.entry(i).or_default() += refused;
                    }
                }
            }
        }
        self.count_our_events(&daemon, refused_ops, &denied);
        let _ = idle_agent.0.kill();
        let _ = idle_agent.0.wait();
        if let Some(rss) = daemon.status_kib("VmRSS") {
            self.r.rss_load_mib.push(rss as f64 / 1024.0);
        }
        if let Some(hwm) = daemon.status_kib("VmHWM") {
            self.r.rss_peak_mib.push(hwm as f64 / 1024.0);
        }
        drop(daemon); // stopped, its directory removed
        Ok(())
    }

    /// After the refused-alert open runs: wait for the events log to settle, count its
    /// violations for the file outside `work/` (and any for the allowed file), read the
    /// lost-events counter.
    fn count_our_events(&mut self, daemon: &Daemon, ops: u64, denied: &BTreeMap<usize, u64>) {
        settle(&daemon.events);
        let target = |dir: &Path| format!("\"target\":\"{}\"", dir.join("f").display());
        let (outside, work) = (target(&self.outside), target(&self.work));
        let text = fs::read_to_string(&daemon.events).unwrap_or_default();
        let comm = format!("\"comm\":\"{DENY_AGENT}\"");
        for (&i, &refused) in denied {
            let kind = if self.r.workloads[i].mode == "connect" { "net.connect" } else { "net.send" };
            let kind = format!("\"kind\":\"{kind}\"");
            let events = text
                .lines()
                .filter(|l| l.contains(&kind) && l.contains("\"verdict\":\"violation\"") && l.contains(&comm))
                .count() as u64;
            let d = self.r.denied.entry(self.r.workloads[i].name).or_default();
            d.0 += refused;
            d.1 += events;
        }
        let violations: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"kind\":\"file.write\"") && l.contains("\"verdict\":\"violation\""))
            .collect();
        let delivered = violations.iter().filter(|l| l.contains(&outside)).count() as u64;
        let spurious = violations.iter().filter(|l| l.contains(&work)).count() as u64;
        std::thread::sleep(METRICS_REFRESH); // the kernel's drop counter reaches /metrics
        let lost = harness::get(&daemon.metrics_addr, "/metrics")
            .map(|m| metric_sum(&m, "agent_monitor_events_lost_total"))
            .unwrap_or(0.0) as u64;
        let d = self.r.delivery.entry(Monitor::Ours).or_default();
        d.ops += ops;
        d.delivered += delivered;
        d.spurious += spurious;
        d.lost += lost; // a counter per daemon start
    }

    fn enforcement_policy(&self) -> String {
        format!(
            "# cargo xtask bench, enforcement: `{AGENT}` may read HTTP only; `{KILL_AGENT}` is killed.\n\
             [[agent]]\nname = \"bench-deny\"\naction = \"deny\"\n[agent.match]\ncomm = [\"{AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"127.0.0.1:*\"]\n\n\
             [[agent]]\nname = \"bench-kill\"\naction = \"kill\"\n[agent.match]\ncomm = [\"{KILL_AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n",
            w = self.work.display()
        )
    }

    /// Refused HTTP requests against a byte-counting server, and the time to a kill.
    pub(super) fn enforcement(&mut self) -> Result<()> {
        let ddir = self.dir.join("daemon-enforce");
        let (daemon, startup) = daemon::start(&self.daemon_bin, ddir, &self.enforcement_policy())?;
        self.r.startup_s.push(startup);
        self.r.attach_s.extend(daemon.attach_secs());
        let sink = Sink::start()?;
        let mut e = Enforcement::default();
        // The agent's POSTs, on connections its policy allows: dropped in the kernel (deny).
        // Where deny falls back to kill, each killed process counts as one attempt.
        while e.attempts < self.opts.attempts {
            let k = if e.agent_killed_runs > 0 { 1 } else { self.opts.attempts - e.attempts };
            let mut cmd = Command::new(&self.agent);
            cmd.args(["post", &k.to_string(), &sink.port.to_string(), "5"]).stdin(Stdio::null());
            let out = cmd.stderr(Stdio::null()).output().with_context(|| format!("could not run `{}`", show(&cmd)))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                e.attempts += kv(&text, "attempts").unwrap_or(0.0) as u64;
                e.connected += kv(&text, "connected").unwrap_or(0.0) as u64;
                e.sent += kv(&text, "sent").unwrap_or(0.0) as u64;
                e.replies += kv(&text, "replies").unwrap_or(0.0) as u64;
            } else if out.status.signal() == Some(9) {
                e.agent_killed_runs += 1;
                e.attempts += 1;
            } else {
                bail!("`{}` failed ({})", show(&cmd), out.status);
            }
        }
        std::thread::sleep(Duration::from_secs(1)); // anything in flight lands
        e.bytes_at_server = sink.bytes();
        // The same requests from a process that is not an agent do reach the server.
        e.validation_attempts = 20;
        let out = output(Command::new(&self.load).args(["post", "20", &sink.port.to_string(), "5"]))?;
        let per_request = kv(&out, "request_bytes").unwrap_or(0.0) as u64;
        e.validation_expected = per_request * e.validation_attempts;
        std::thread::sleep(Duration::from_millis(500));
        e.validation_bytes = sink.bytes() - e.bytes_at_server;
        sink.stop();

        // Time from a forbidden open to the agent's death, seen by its parent (not an agent).
        let mut cmd = Command::new(&self.load);
        cmd.args(["killtime", &self.opts.kills.to_string()]).arg(&self.kill_agent).arg(self.outside.join("kill"));
        let out = output(&mut cmd)?;
        let lat = out.lines().find_map(|l| l.strip_prefix("latencies_ns=")).unwrap_or("");
        e.kill_latency_us = lat.split(',').filter_map(|v| v.parse::<f64>().ok()).map(|ns| ns / 1000.0).collect();
        e.kill_survived = kv(&out, "survived").unwrap_or(0.0) as u64;
        drop(daemon); // stopped, its directory removed
        self.r.enforcement = Some(e);
        Ok(())
    }
}

/// A TCP server on loopback that counts every byte it receives, on every connection, and
/// answers nothing. One thread, non-blocking sockets: a refused request's connection is never
/// closed by its (blocked) client, so idle connections are dropped after 2 s.
struct Sink {
    port: u16,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (bytes, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (b, s) = (bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(TcpStream, Instant)> = Vec::new();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let mut busy = false;
                while let Ok((c, _)) = listener.accept() {
                    if c.set_nonblocking(true).is_ok() {
                        conns.push((c, Instant::now()));
                    }
                    busy = true;
                }
                conns.retain_mut(|(c, last)| match c.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        *last = Instant::now();
                        busy = true;
                        true
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => last.elapsed() < Duration::from_secs(2),
                    Err(_) => false,
                });
                if !busy {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Ok(Sink { port, bytes, stop, thread: Some(thread) })
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
