//! The event path: how many events/s reach the events log with zero loss (an agent's refused
//! opens, paced at rising rates, then bisected), and events/s through the daemon's userspace
//! path alone (its `decode_throughput` test).

use super::daemon::{self, metric_sum, Measured};
use super::results::EventStep;
use super::{kv, settle, Bench, METRICS_REFRESH};
use crate::harness;
use crate::{cargo, output};
use agent_monitor_e2e::Daemon;
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The rates offered (events/s; 0 = as fast as the load generator can), the seconds of each
/// step and the threads of the load generator.
const EVENT_RATES: [u64; 6] = [20_000, 50_000, 100_000, 200_000, 400_000, 0];
pub const EVENT_STEP_SECS: f64 = 2.0;
pub const EVENT_THREADS: u32 = 2;
/// Steps between the fastest zero-loss step and the first lossy one (bisection).
pub const EVENT_BISECT: usize = 2;

impl Bench {
    /// The event path: an agent (`alert`) opening a file outside its writable directory, paced
    /// at each rate of [`EVENT_RATES`] (one violation event per open), then bisected between
    /// the fastest step without loss and the first with loss. Per step: events offered, in the
    /// events log, and lost by the daemon's and the kernel's counters.
    pub(super) fn measure_event_path(&mut self) -> Result<()> {
        let ddir = self.dir.join("daemon-events");
        let (daemon, startup) = daemon::start(&self.daemon_bin, ddir, &self.bench_policy())?;
        self.r.startup_s.push(startup);
        self.r.attach_s.extend(daemon.attach_secs());
        std::thread::sleep(METRICS_REFRESH);
        let mut counters = DropCounters::read(&daemon)?;
        for rate in EVENT_RATES {
            let step = self.event_step(&daemon, rate, &mut counters)?;
            self.r.event_path.push(step);
        }
        for _ in 0..EVENT_BISECT {
            let lo = self.r.event_path.iter().filter(|s| s.zero_loss()).map(|s| s.offered).reduce(f64::max);
            let hi = self
                .r
                .event_path
                .iter()
                .filter(|s| !s.zero_loss() && lo.is_none_or(|lo| s.offered > lo))
                .map(|s| s.offered)
                .reduce(f64::min);
            // With loss at every step, bisect below the slowest one.
            let (lo, Some(hi)) = (lo.unwrap_or(0.0), hi) else { break };
            if hi - lo < 0.05 * lo {
                break;
            }
            let step = self.event_step(&daemon, ((lo + hi) / 2.0).max(1000.0) as u64, &mut counters)?;
            self.r.event_path.push(step);
        }
        drop(daemon); // stopped, its directory removed
        Ok(())
    }

    fn event_step(&self, daemon: &Daemon, rate: u64, counters: &mut DropCounters) -> Result<EventStep> {
        let k = self.r.event_path.len();
        let path = self.outside.join(format!("ev-{k}"));
        let offset = fs::metadata(&daemon.events).map(|m| m.len()).unwrap_or(0);
        let cpu0 = daemon.cpu_secs(self.clk_tck);
        let t = Instant::now();
        let mut cmd = Command::new(&self.agent);
        cmd.args(["pace", &rate.to_string(), &EVENT_STEP_SECS.to_string(), &EVENT_THREADS.to_string()]).arg(&path);
        let out = output(cmd.stdin(Stdio::null()))?;
        let load_end = Instant::now();
        settle(&daemon.events);
        let drain_s = (load_end.elapsed().as_secs_f64() - 0.3).max(0.0);
        let cpu = match (cpu0, daemon.cpu_secs(self.clk_tck)) {
            (Some(a), Some(b)) => 100.0 * (b - a) / t.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        std::thread::sleep(METRICS_REFRESH);
        let now = DropCounters::read(daemon)?;
        let delivered = count_lines_from(
            &daemon.events,
            offset,
            &[&format!("\"target\":\"{}\"", path.display()), "\"kind\":\"file.write\"", "\"verdict\":\"violation\""],
        );
        let step = EventStep {
            requested: rate,
            offered: kv(&out, "rate").unwrap_or(0.0),
            secs: kv(&out, "secs").unwrap_or(0.0),
            ops: kv(&out, "ops").unwrap_or(0.0) as u64,
            delivered,
            lost: (now.lost - counters.lost).max(0.0) as u64,
            kernel_drops: now
                .drops
                .iter()
                .map(|(r, v)| (r.clone(), (v - counters.drops.get(r).copied().unwrap_or(0.0)).max(0.0) as u64))
                .collect(),
            cpu_percent: cpu,
            drain_s,
        };
        eprintln!(
            "bench: event path: requested {} /s, offered {:.0} /s: {} ops, {} in the log, {} lost",
            if rate == 0 { "max".to_string() } else { rate.to_string() },
            step.offered,
            step.ops,
            step.delivered,
            step.lost
        );
        *counters = now;
        Ok(step)
    }
}

/// The daemon's loss counters from /metrics: events lost, and kernel drops by reason.
struct DropCounters {
    lost: f64,
    drops: BTreeMap<String, f64>,
}

impl DropCounters {
    fn read(daemon: &Daemon) -> Result<DropCounters> {
        let m = harness::get(&daemon.metrics_addr, "/metrics").context("reading the daemon's /metrics")?;
        let mut drops = BTreeMap::new();
        for l in m.lines() {
            let Some(rest) = l.strip_prefix("agent_monitor_kernel_drops_total{reason=\"") else { continue };
            let Some((reason, value)) = rest.split_once("\"}") else { continue };
            if let Ok(v) = value.trim().parse::<f64>() {
                drops.insert(reason.to_string(), v);
            }
        }
        Ok(DropCounters { lost: metric_sum(&m, "agent_monitor_events_lost_total"), drops })
    }
}

/// Lines of a file from byte `offset` on that contain every needle (read as a stream).
fn count_lines_from(path: &Path, offset: u64, needles: &[&str]) -> u64 {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else { return 0 };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return 0;
    }
    let mut r = BufReader::with_capacity(1 << 20, f);
    let (mut line, mut n) = (Vec::new(), 0);
    while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        let l = String::from_utf8_lossy(&line);
        if needles.iter().all(|x| l.contains(x)) {
            n += 1;
        }
        line.clear();
    }
    n
}

/// The daemon's per-event userspace work (decode; + metrics and JSON; + audit chain and write),
/// measured by its own release-built test on synthetic events.
pub fn decode_rates() -> Result<Vec<(String, f64)>> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "agent-monitor", "decode_throughput", "--", "--ignored", "--nocapture"]);
    let out = output(&mut cmd)?;
    let rates: Vec<(String, f64)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("decode_throughput ")?.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect();
    ensure!(!rates.is_empty(), "decode_throughput printed no rates:\n{out}");
    Ok(rates)
}
