//! `cargo xtask bench`: one benchmark run of issue 7 (first version), results as JSON and
//! Markdown under `bench/`. These are benchmarks, not tests: a missed target is reported, and
//! the run still succeeds.
//!
//! **Syscall overhead.** A C load generator (`xtask/bench/load.c`, built here with `cc -O2`)
//! times a loop of one operation and prints ns/op. Run as `load` it is not an agent; run
//! through its copy `am-bench` it is the agent of the bench policy (`comm = ["am-bench"]`,
//! writable = the scratch `work/`, allow `127.0.0.1:*`, action `alert`). The ladder:
//!
//! | case                  | state                                                            |
//! | --------------------- | ---------------------------------------------------------------- |
//! | `none`                | no monitor of ours running                                      |
//! | `loaded`              | the daemon enforcing the bench policy, no agent process alive   |
//! | `non-agent`           | the same, an agent alive (`am-bench sleep`); `load` runs        |
//! | `agent-allowed`       | `am-bench` runs: every operation is allowed by its policy       |
//! | `agent-refused-alert` | open only: `am-bench` opens outside `work/`; one event per op    |
//!
//! Peers (open workload, if installed): Debian's auditd with rules equivalent to the policy
//! (write-opens by the agent's executable outside `work/`) and a bpftrace script with the same
//! filter printing one line per event, on the same three agent cases.
//!
//! "Interleaved" means per round: a round measures every workload once in every state (none,
//! then a daemon start for loaded/non-agent/agent, then auditd, then bpftrace) and the rounds
//! repeat. A ratio is taken within a round (`ns(case) / ns(none)` of the same round and
//! workload), so slow drift of the machine cancels; the table shows min/median/max over rounds.
//!
//! **Also:** start-up until "enforcing" (every daemon start), daemon RSS and CPU idle and under
//! load, events delivered for the refused-alert runs, the bytes of refused HTTP requests that
//! reach a server (1000 attempts, `deny`), and the time from a forbidden open to the agent's
//! death (`kill`). What issue 7 asks for beyond that is listed as not measured yet.

use crate::demo::{free_port, http_get};
use crate::{cargo, output, root, run_cmd, setup, show, target_dir};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The comm of the bench agent, and of the agent the enforcement phase kills.
const AGENT: &str = "am-bench";
const KILL_AGENT: &str = "am-bench-kill";

/// Issue 7's targets.
const NON_AGENT_MAX: f64 = 1.02;
const AGENT_MAX: f64 = 1.3;
const STARTUP_MAX_S: f64 = 1.0;
const RSS_MAX_MIB: f64 = 40.0;

/// What issue 7 asks for that this version does not measure.
const NOT_MEASURED: &[&str] = &[
    "workload `write` (write(2) on an open file)",
    "workload `SSL_write` through OpenSSL (the uprobe path)",
    "agent-refused cases for connect, UDP send, fork and exec",
    "auditd and bpftrace on workloads other than open",
    "the event path: the highest events/s that reaches the events log with zero loss, and the \
     loss curve beyond it",
];

pub struct Options {
    pub rounds: usize,
    pub reps: usize,
    pub run_secs: f64,
    pub attempts: u64,
    pub kills: u64,
    pub peers: bool,
    pub out: PathBuf,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    what: &'static str,
    /// Operations of the calibration run (no monitor), and the most a run may do.
    calib: u64,
    max: u64,
}

const WORKLOADS: [Workload; 5] = [
    Workload { name: "open", what: "open(O_WRONLY|O_CREAT) + close", calib: 20_000, max: 2_000_000 },
    Workload { name: "connect", what: "TCP connect + close, 127.0.0.1", calib: 2_000, max: 200_000 },
    Workload { name: "udp", what: "UDP sendto 127.0.0.1, 1 byte", calib: 20_000, max: 2_000_000 },
    Workload { name: "fork", what: "fork + waitpid", calib: 200, max: 50_000 },
    Workload { name: "exec", what: "fork + execve /bin/true + waitpid", calib: 100, max: 20_000 },
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Monitor {
    None,
    Ours,
    Auditd,
    Bpftrace,
}

impl Monitor {
    fn name(self) -> &'static str {
        match self {
            Monitor::None => "none",
            Monitor::Ours => "agent-monitor",
            Monitor::Auditd => "auditd",
            Monitor::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Case {
    Baseline,
    Loaded,
    NonAgent,
    AgentAllowed,
    AgentRefused,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "none",
            Case::Loaded => "loaded",
            Case::NonAgent => "non-agent",
            Case::AgentAllowed => "agent-allowed",
            Case::AgentRefused => "agent-refused-alert",
        }
    }

    fn is_agent(self) -> bool {
        matches!(self, Case::AgentAllowed | Case::AgentRefused)
    }

    /// Issue 7's bound on the ratio to no monitor (for agent-monitor's rows).
    fn target(self) -> Option<f64> {
        match self {
            Case::Baseline => None,
            Case::Loaded | Case::NonAgent => Some(NON_AGENT_MAX),
            Case::AgentAllowed | Case::AgentRefused => Some(AGENT_MAX),
        }
    }
}

type Key = (usize, Monitor, Case);

/// Events a monitor recorded for the refused-alert open runs (one expected per operation).
#[derive(Default, Clone, Copy)]
struct Delivery {
    ops: u64,
    delivered: u64,
    lost: u64,
    /// Records for operations that were not violations (must stay 0).
    spurious: u64,
}

pub fn run(home: &Path, opts: Options) -> Result<()> {
    let started = Instant::now();
    ensure!(fs::metadata("/proc/self")?.uid() == 0, "the bench loads eBPF: run it as root (e.g. `sudo -i`)");
    ensure!(
        opts.rounds >= 1 && opts.reps >= 1 && opts.run_secs > 0.0,
        "--rounds and --reps must be at least 1, --run-secs positive"
    );
    setup::run(home, true)?;
    run_cmd(cargo().args(["build", "--release", "-p", "agent-monitor"]))?;
    let daemon_bin = target_dir().join("release/agent-monitor");
    let load = build_load()?;
    let mut bench = Bench::new(opts, daemon_bin, load)?;
    let result = bench.run_all();
    bench.cleanup();
    result?;
    let (json, md) = (bench.json(), bench.markdown());
    fs::create_dir_all(&bench.opts.out)?;
    let stem = bench.opts.out.join(format!("results-{}", bench.info.date));
    let (json_path, md_path) = (stem.with_extension("json"), stem.with_extension("md"));
    fs::write(&json_path, json).with_context(|| format!("could not write {}", json_path.display()))?;
    fs::write(&md_path, &md).with_context(|| format!("could not write {}", md_path.display()))?;
    println!("{md}");
    eprintln!(
        "bench: done in {:.0}s: {} and {}",
        started.elapsed().as_secs_f64(),
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

/// The daemon's per-event userspace work (decode; + metrics and JSON; + audit chain and write),
/// measured by its own release-built test on synthetic events.
fn decode_rates() -> Result<Vec<(String, f64)>> {
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

/// Compile the load generator into `target/bench/load`.
fn build_load() -> Result<PathBuf> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let bin = dir.join("load");
    let src = root().join("xtask/bench/load.c");
    let cc = which::which("cc").context("no C compiler `cc` (Debian package gcc) for xtask/bench/load.c")?;
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-pthread", "-o"]).arg(&bin).arg(&src);
    run_cmd(&mut cmd)?;
    Ok(bin)
}

/// The machine and the checkout the numbers belong to.
struct Info {
    date: String,
    kernel: String,
    cpu: String,
    cores: usize,
    commit: String,
    loadavg_start: String,
    loadavg_end: String,
}

impl Info {
    fn collect() -> Info {
        let cmd_out = |prog: &str, args: &[&str]| {
            let out = Command::new(prog).args(args).current_dir(root()).stderr(Stdio::null()).output();
            out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':'));
        let commit = cmd_out("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = cmd_out("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        Info {
            date: cmd_out("date", &["-u", "+%F"]).unwrap_or_else(|| "unknown-date".into()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            cpu: cpu.map(|(_, m)| m.trim().to_string()).unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            commit: if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

fn loadavg() -> String {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

struct Bench {
    opts: Options,
    info: Info,
    dir: PathBuf,
    daemon_bin: PathBuf,
    load: PathBuf,
    agent: PathBuf,
    kill_agent: PathBuf,
    work: PathBuf,
    outside: PathBuf,
    clk_tck: f64,
    /// Operations per run, per workload.
    n: Vec<u64>,
    /// ns/op per round.
    samples: BTreeMap<Key, Vec<Option<f64>>>,
    /// Operations that failed (a load generator error count), per row.
    errors: BTreeMap<Key, u64>,
    delivery: BTreeMap<Monitor, Delivery>,
    /// Events/s through the daemon's userspace path without the ring buffer, per stage
    /// (`decode_throughput` in agent-monitor/src/events/decode.rs).
    decode_rates: Vec<(String, f64)>,
    startup_s: Vec<f64>,
    /// Of the start-up, the time from "policy loaded" to "eBPF programs attached" in its log.
    attach_s: Vec<f64>,
    /// VmRSS 1 s after enforcing, and VmHWM then (the start-up's peak).
    rss_idle_mib: Vec<f64>,
    hwm_start_mib: Vec<f64>,
    /// VmRSS after every workload of the round ran, and VmHWM then (the peak of its life).
    rss_load_mib: Vec<f64>,
    rss_peak_mib: Vec<f64>,
    /// Daemon CPU seconds and wall seconds: idle, and per (workload, case).
    cpu_idle: (f64, f64),
    cpu_load: BTreeMap<(usize, Case), (f64, f64)>,
    /// Runs measured while another agent-monitor (not ours) was running, of all runs.
    foreign_runs: (u64, u64),
    peers: BTreeMap<Monitor, String>,
    enforcement: Option<Enforcement>,
    notes: Vec<String>,
    /// Our running daemon, so a failure stops it; peers stop themselves on drop.
    auditd_ok: bool,
    bpftrace_ok: bool,
}

#[derive(Default)]
struct Enforcement {
    attempts: u64,
    connected: u64,
    sent: u64,
    replies: u64,
    bytes_at_server: u64,
    agent_killed_runs: u64,
    validation_attempts: u64,
    validation_bytes: u64,
    validation_expected: u64,
    kill_latency_us: Vec<f64>,
    kill_survived: u64,
}

impl Bench {
    fn new(opts: Options, daemon_bin: PathBuf, load: PathBuf) -> Result<Bench> {
        let dir = PathBuf::from(format!("/tmp/am-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (work, outside) = (dir.join("work"), dir.join("outside"));
        fs::create_dir_all(&work)?;
        fs::create_dir_all(&outside)?;
        let (agent, kill_agent) = (dir.join(AGENT), dir.join(KILL_AGENT));
        fs::copy(&load, &agent)?;
        fs::copy(&load, &kill_agent)?;
        let clk = Command::new("getconf").arg("CLK_TCK").output().ok();
        let clk_tck = clk.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0);
        Ok(Bench {
            opts,
            info: Info::collect(),
            dir,
            daemon_bin,
            load,
            agent,
            kill_agent,
            work,
            outside,
            clk_tck,
            n: Vec::new(),
            samples: BTreeMap::new(),
            errors: BTreeMap::new(),
            delivery: BTreeMap::new(),
            decode_rates: Vec::new(),
            startup_s: Vec::new(),
            attach_s: Vec::new(),
            rss_idle_mib: Vec::new(),
            hwm_start_mib: Vec::new(),
            rss_load_mib: Vec::new(),
            rss_peak_mib: Vec::new(),
            cpu_idle: (0.0, 0.0),
            cpu_load: BTreeMap::new(),
            foreign_runs: (0, 0),
            peers: BTreeMap::new(),
            enforcement: None,
            notes: Vec::new(),
            auditd_ok: false,
            bpftrace_ok: false,
        })
    }

    fn run_all(&mut self) -> Result<()> {
        if self.opts.peers {
            self.find_peers();
        } else {
            self.peers.insert(Monitor::Auditd, "not run (--no-peers)".into());
            self.peers.insert(Monitor::Bpftrace, "not run (--no-peers)".into());
        }
        self.calibrate()?;
        for round in 0..self.opts.rounds {
            eprintln!("bench: round {}/{} (load average {})", round + 1, self.opts.rounds, loadavg());
            self.round(round)?;
        }
        eprintln!("bench: enforcement: refused requests and the time to a kill");
        self.enforcement()?;
        eprintln!("bench: events/s through decode and decision (userspace, no ring buffer)");
        self.decode_rates = decode_rates()?;
        self.info.loadavg_end = loadavg();
        Ok(())
    }

    /// Install auditd and bpftrace where missing (failure tolerated) and say which can run.
    fn find_peers(&mut self) {
        let have = |p: &str| which::which(p).is_ok();
        if !(have("auditd") && have("auditctl") && have("bpftrace")) {
            eprintln!("bench: installing the peers (Debian packages auditd, bpftrace)");
            let st = Command::new("apt-get")
                .args(["install", "-y", "-qq", "auditd", "bpftrace"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
            if !st.is_ok_and(|s| s.success()) {
                eprintln!("bench: apt-get install auditd bpftrace failed; the missing peers are skipped");
            }
        }
        self.auditd_ok = have("auditd") && have("auditctl");
        if !self.auditd_ok {
            self.peers.insert(Monitor::Auditd, "not installed (Debian package auditd)".into());
        } else if let Some(pid) = audit_daemon_pid() {
            self.auditd_ok = false;
            self.peers.insert(Monitor::Auditd, format!("skipped: an audit daemon (pid {pid}) already runs here"));
        }
        self.bpftrace_ok = have("bpftrace");
        if !self.bpftrace_ok {
            self.peers.insert(Monitor::Bpftrace, "not installed (Debian package bpftrace)".into());
        }
    }

    /// Operations per run: what takes `run_secs` with no monitor.
    fn calibrate(&mut self) -> Result<()> {
        for w in WORKLOADS {
            let (ns, _) = self.load_run(w, Case::Baseline, w.calib)?;
            let n = ((self.opts.run_secs * 1e9 / ns) as u64).clamp(20, w.max);
            eprintln!("bench: calibrate {}: {ns:.0} ns/op, {n} ops per run", w.name);
            self.n.push(n);
        }
        Ok(())
    }

    fn round(&mut self, round: usize) -> Result<()> {
        for _ in 0..self.opts.reps {
            for (i, w) in WORKLOADS.iter().enumerate() {
                self.measure(round, i, *w, Monitor::None, Case::Baseline, None)?;
            }
        }
        self.agent_monitor_round(round)?;
        if self.auditd_ok {
            if let Err(e) = self.auditd_round(round) {
                eprintln!("bench: auditd: {e:#}; skipped from now on");
                self.peers.insert(Monitor::Auditd, format!("could not run here: {}", short_error(&e)));
                self.auditd_ok = false;
            }
        }
        if self.bpftrace_ok {
            if let Err(e) = self.bpftrace_round(round) {
                eprintln!("bench: bpftrace: {e:#}; skipped from now on");
                self.peers.insert(Monitor::Bpftrace, format!("could not run here: {}", short_error(&e)));
                self.bpftrace_ok = false;
            }
        }
        Ok(())
    }

    fn bench_policy(&self) -> String {
        format!(
            "# cargo xtask bench: the load generator's copy `{AGENT}` is the agent.\n\
             [[agent]]\nname = \"bench\"\naction = \"alert\"\n[agent.match]\ncomm = [\"{AGENT}\"]\n\
             [agent.files]\nwritable = [\"{}\"]\n[agent.network]\nallow = [\"127.0.0.1:*\"]\n",
            self.work.display()
        )
    }

    fn agent_monitor_round(&mut self, round: usize) -> Result<()> {
        let ddir = self.dir.join(format!("daemon-{round}"));
        let (daemon, startup) = Daemon::start(&self.daemon_bin, &ddir, &self.bench_policy())?;
        self.startup_s.push(startup);
        self.attach_s.extend(daemon.attach_secs());
        // Idle: one second with nothing to do.
        let c0 = daemon.cpu_secs(self.clk_tck);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        if let Some(c1) = daemon.cpu_secs(self.clk_tck) {
            self.cpu_idle.0 += c1 - c0.unwrap_or(c1);
            self.cpu_idle.1 += t.elapsed().as_secs_f64();
        }
        if let Some(rss) = daemon.status_kib("VmRSS") {
            self.rss_idle_mib.push(rss as f64 / 1024.0);
        }
        if let Some(hwm) = daemon.status_kib("VmHWM") {
            self.hwm_start_mib.push(hwm as f64 / 1024.0);
        }
        for _ in 0..self.opts.reps {
            for (i, w) in WORKLOADS.iter().enumerate() {
                self.measure(round, i, *w, Monitor::Ours, Case::Loaded, Some(&daemon))?;
            }
        }
        let idle_agent = Command::new(&self.agent).arg("sleep").stdin(Stdio::null()).spawn();
        let mut idle_agent = Bg(idle_agent.context("could not start the idle agent")?);
        let mut refused_ops = 0;
        for _ in 0..self.opts.reps {
            for (i, w) in WORKLOADS.iter().enumerate() {
                for case in [Case::NonAgent, Case::AgentAllowed, Case::AgentRefused] {
                    if case == Case::AgentRefused && w.name != "open" {
                        continue;
                    }
                    self.measure(round, i, *w, Monitor::Ours, case, Some(&daemon))?;
                    if case == Case::AgentRefused {
                        refused_ops += self.n[i];
                    }
                }
            }
        }
        self.count_our_events(&daemon, refused_ops);
        let _ = idle_agent.0.kill();
        let _ = idle_agent.0.wait();
        if let Some(rss) = daemon.status_kib("VmRSS") {
            self.rss_load_mib.push(rss as f64 / 1024.0);
        }
        if let Some(hwm) = daemon.status_kib("VmHWM") {
            self.rss_peak_mib.push(hwm as f64 / 1024.0);
        }
        daemon.stop();
        let _ = fs::remove_dir_all(&ddir);
        Ok(())
    }

    /// After the refused-alert open runs: wait for the events log to settle, count its
    /// violations for the file outside `work/` (and any for the allowed file), read the
    /// lost-events counter.
    fn count_our_events(&mut self, daemon: &Daemon, ops: u64) {
        settle(&daemon.events);
        let target = |dir: &Path| format!("\"target\":\"{}\"", dir.join("f").display());
        let (outside, work) = (target(&self.outside), target(&self.work));
        let text = fs::read_to_string(&daemon.events).unwrap_or_default();
        let violations: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"kind\":\"file.write\"") && l.contains("\"verdict\":\"violation\""))
            .collect();
        let delivered = violations.iter().filter(|l| l.contains(&outside)).count() as u64;
        let spurious = violations.iter().filter(|l| l.contains(&work)).count() as u64;
        let lost = http_get(&daemon.metrics, "/metrics")
            .map(|m| metric_sum(&m, "agent_monitor_events_lost_total"))
            .unwrap_or(0.0) as u64;
        let d = self.delivery.entry(Monitor::Ours).or_default();
        d.ops += ops;
        d.delivered += delivered;
        d.spurious += spurious;
        d.lost += lost; // a counter per daemon start
    }

    fn auditd_round(&mut self, round: usize) -> Result<()> {
        let i = 0; // open
        let auditd = Auditd::start(&self.dir.join("auditd"), &self.agent, &self.work)?;
        for case in (0..self.opts.reps).flat_map(|_| [Case::NonAgent, Case::AgentAllowed, Case::AgentRefused]) {
            let before = auditd.records();
            self.measure(round, i, WORKLOADS[i], Monitor::Auditd, case, None)?;
            settle(&auditd.log);
            let got = auditd.records().saturating_sub(before);
            self.delivered(Monitor::Auditd, case, self.n[i], got);
        }
        let lost = auditd.lost();
        auditd.stop();
        let d = self.delivery.entry(Monitor::Auditd).or_default();
        d.lost += lost;
        self.peers.entry(Monitor::Auditd).or_insert_with(|| {
            format!("auditd {} (Debian), rules: {}", audit_version(), Auditd::rules_text(&self.agent, &self.work))
        });
        Ok(())
    }

    fn bpftrace_round(&mut self, round: usize) -> Result<()> {
        let i = 0; // open
        let bt = Bpftrace::start(&self.dir.join("bpftrace"), &self.agent, &self.work, &self.outside)?;
        for case in (0..self.opts.reps).flat_map(|_| [Case::NonAgent, Case::AgentAllowed, Case::AgentRefused]) {
            self.measure(round, i, WORKLOADS[i], Monitor::Bpftrace, case, None)?;
        }
        // bpftrace hands events to its output lazily: count once it has drained them, on exit.
        let version = bt.version.clone();
        let (delivered, spurious, lost) = bt.finish(&self.outside.join("f"), &self.work);
        let d = self.delivery.entry(Monitor::Bpftrace).or_default();
        d.ops += self.opts.reps as u64 * self.n[i];
        d.delivered += delivered;
        d.spurious += spurious;
        d.lost += lost;
        self.peers.entry(Monitor::Bpftrace).or_insert_with(|| {
            format!("{version} (Debian), -B none, one line per event to a file; script: {}", BPF_SCRIPT_DOC)
        });
        Ok(())
    }

    /// A peer's records after one run: expected one per op in the refused case, none otherwise.
    fn delivered(&mut self, m: Monitor, case: Case, ops: u64, got: u64) {
        let d = self.delivery.entry(m).or_default();
        if case == Case::AgentRefused {
            d.ops += ops;
            d.delivered += got;
        } else {
            d.spurious += got;
        }
    }

    /// One run of one workload in one case; the round's sample is the fastest of its runs.
    fn measure(
        &mut self,
        round: usize,
        i: usize,
        w: Workload,
        monitor: Monitor,
        case: Case,
        daemon: Option<&Daemon>,
    ) -> Result<()> {
        let foreign = foreign_daemons(daemon.map(|d| d.pid()));
        let cpu0 = daemon.and_then(|d| d.cpu_secs(self.clk_tck));
        let t = Instant::now();
        let (ns, errors) = self.load_run(w, case, self.n[i])?;
        let wall = t.elapsed().as_secs_f64();
        if let (Some(d), Some(c0)) = (daemon, cpu0) {
            if let Some(c1) = d.cpu_secs(self.clk_tck) {
                let e = self.cpu_load.entry((i, case)).or_default();
                e.0 += c1 - c0;
                e.1 += wall;
            }
        }
        self.foreign_runs.1 += 1;
        if foreign > 0 {
            self.foreign_runs.0 += 1;
        }
        let key = (i, monitor, case);
        let slot = &mut self.samples.entry(key).or_insert_with(|| vec![None; self.opts.rounds])[round];
        *slot = Some(slot.map_or(ns, |old| old.min(ns)));
        *self.errors.entry(key).or_default() += errors;
        Ok(())
    }

    /// Run the load generator once: (ns/op, failed operations).
    fn load_run(&self, w: Workload, case: Case, n: u64) -> Result<(f64, u64)> {
        let bin = if case.is_agent() { &self.agent } else { &self.load };
        let mut cmd = Command::new(bin);
        cmd.arg(w.name).arg(n.to_string());
        if w.name == "open" {
            let dir = if case == Case::AgentRefused { &self.outside } else { &self.work };
            cmd.arg(dir.join("f"));
        }
        let out = output(cmd.stdin(Stdio::null()))?;
        let ns = kv(&out, "ns_per_op").with_context(|| format!("`{}` printed no ns_per_op: {out}", show(&cmd)))?;
        Ok((ns, kv(&out, "errors").unwrap_or(0.0) as u64))
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
    fn enforcement(&mut self) -> Result<()> {
        let ddir = self.dir.join("daemon-enforce");
        let (daemon, startup) = Daemon::start(&self.daemon_bin, &ddir, &self.enforcement_policy())?;
        self.startup_s.push(startup);
        self.attach_s.extend(daemon.attach_secs());
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
        daemon.stop();
        let _ = fs::remove_dir_all(&ddir);
        self.enforcement = Some(e);
        Ok(())
    }

    fn cleanup(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    // ---- results ----

    /// (median ns/op, ratios to none of the same round).
    fn row(&self, key: Key) -> Option<(f64, Vec<f64>)> {
        let s = self.samples.get(&key)?;
        let base = self.samples.get(&(key.0, Monitor::None, Case::Baseline))?;
        let ns: Vec<f64> = s.iter().flatten().copied().collect();
        let ratios = s.iter().zip(base).filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?)).collect();
        Some((median(&ns)?, ratios))
    }

    /// The rows in table order: workload, then monitor, then case.
    fn rows(&self) -> Vec<(Key, f64, Vec<f64>)> {
        let mut keys: Vec<Key> = self.samples.keys().copied().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.row(k).map(|(m, r)| (k, m, r))).collect()
    }

    fn delivered_all(&self) -> Option<bool> {
        self.delivery.get(&Monitor::Ours).map(|d| d.ops > 0 && d.delivered == d.ops && d.lost == 0)
    }

    /// (name, target, value, PASS/MISS/not measured)
    fn targets(&self) -> Vec<(String, String, String, &'static str)> {
        let mut t = Vec::new();
        let rows = self.rows();
        let worst = |cases: &[Case]| {
            rows.iter()
                .filter(|(k, _, _)| k.1 == Monitor::Ours && cases.contains(&k.2))
                .filter_map(|(k, _, r)| Some((median(r)?, *k)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        if let Some((r, k)) = worst(&[Case::Loaded, Case::NonAgent]) {
            t.push((
                "a non-agent process (loaded, non-agent): worst median ratio".into(),
                format!("<= {NON_AGENT_MAX}x"),
                format!("{r:.3}x ({} {})", WORKLOADS[k.0].name, k.2.name()),
                pass(r <= NON_AGENT_MAX),
            ));
        }
        if let Some((r, k)) = worst(&[Case::AgentAllowed, Case::AgentRefused]) {
            let all = self.delivered_all().unwrap_or(false);
            t.push((
                "an agent (allowed, refused-alert): worst median ratio, every event delivered".into(),
                format!("<= {AGENT_MAX}x, no loss"),
                format!(
                    "{r:.3}x ({} {}); events {}",
                    WORKLOADS[k.0].name,
                    k.2.name(),
                    if all { "all delivered" } else { "NOT all delivered" }
                ),
                pass(r <= AGENT_MAX && all),
            ));
        }
        match self.decode_rates.last() {
            Some((_, full)) => {
                let stages: Vec<String> =
                    self.decode_rates.iter().map(|(s, r)| format!("{s} {:.2} M/s", r / 1e6)).collect();
                t.push((
                    "events/s through decode and decision (one core)".into(),
                    ">= 1 M/s".into(),
                    stages.join("; "),
                    pass(*full >= 1e6),
                ));
            }
            None => {
                t.push(("events/s through decode and decision".into(), ">= 1 M/s".into(), "-".into(), "not measured"))
            }
        }
        if let Some(m) = median(&self.startup_s) {
            t.push((
                "start-up until enforcing (median)".into(),
                format!("< {STARTUP_MAX_S} s"),
                format!("{m:.3} s"),
                pass(m < STARTUP_MAX_S),
            ));
        }
        let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
        if let (Some(idle), Some(load)) = (max(&self.rss_idle_mib), max(&self.rss_load_mib)) {
            let (start, end) = (max(&self.hwm_start_mib).unwrap_or(0.0), max(&self.rss_peak_mib).unwrap_or(0.0));
            t.push((
                "daemon RSS (VmRSS) idle and after the heaviest load, worst round".into(),
                format!("< {RSS_MAX_MIB} MiB"),
                format!(
                    "idle {idle:.1} MiB, after load {load:.1} MiB (VmHWM {start:.1} MiB 1 s after start-up, \
                     {end:.1} MiB at the end)"
                ),
                pass(idle.max(load) < RSS_MAX_MIB),
            ));
        }
        if let Some(e) = &self.enforcement {
            t.push((
                "bytes of refused requests reaching the server".into(),
                "0 over >= 1000 attempts".into(),
                format!("{} over {} attempts", e.bytes_at_server, e.attempts),
                pass(e.bytes_at_server == 0 && e.attempts >= 1000 && e.validation_bytes == e.validation_expected),
            ));
        }
        t
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let i = &self.info;
        let _ = writeln!(md, "# agent-monitor benchmarks, {}\n", i.date);
        let _ = writeln!(md, "`cargo xtask bench` (issue 7, first version). Benchmarks, not tests.\n");
        let _ = writeln!(md, "- kernel: `{}`", i.kernel);
        let _ = writeln!(md, "- CPU: {} ({} cores)", i.cpu, i.cores);
        let _ = writeln!(md, "- commit: {}; daemon: release build", i.commit);
        let _ = writeln!(
            md,
            "- {} rounds x {} runs of ~{} s (with no monitor) per case; load average {} at the start, {} at \
             the end",
            self.opts.rounds, self.opts.reps, self.opts.run_secs, i.loadavg_start, i.loadavg_end
        );
        for n in self.noise_notes() {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | bound | result | status |\n| --- | --- | --- | --- |");
        for (name, bound, value, status) in self.targets() {
            let _ = writeln!(md, "| {name} | {bound} | {value} | {status} |");
        }

        let _ = writeln!(md, "\n## Syscall overhead\n");
        let _ = writeln!(
            md,
            "Ratio = ns/op of the case / ns/op with no monitor, in the same round; median, min and max \
             over {} rounds. A round's sample is the fastest of {} runs of ~{} s (with no monitor), the \
             runs of the cases that share a state alternating (A, B, C, A, B, C, ...); ns/op is the \
             median of the rounds' samples. Interleaved means per round: each round measures none, \
             then starts the daemon (loaded; then non-agent, agent-allowed, agent-refused-alert), then \
             auditd, then bpftrace.\n",
            self.opts.rounds, self.opts.reps, self.opts.run_secs
        );
        let _ = writeln!(
            md,
            "| workload | monitor | case | ops/run | ns/op | ratio | min | max | target | status |\n\
             | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        );
        for ((wi, mon, case), med, ratios) in self.rows() {
            let w = WORKLOADS[wi];
            let (target, status) = match (mon, case.target(), median(&ratios)) {
                (Monitor::Ours, Some(t), Some(r)) => (format!("<= {t}x"), pass(r <= t)),
                _ => ("".into(), ""),
            };
            let errors = self.errors.get(&(wi, mon, case)).copied().unwrap_or(0);
            let status = if errors > 0 { format!("{status} ({errors} ops failed)") } else { status.to_string() };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {target} | {status} |",
                w.name,
                mon.name(),
                case.name(),
                self.n[wi],
                med,
                fmt_opt(median(&ratios), 3),
                fmt_opt(ratios.iter().copied().reduce(f64::min), 3),
                fmt_opt(ratios.iter().copied().reduce(f64::max), 3),
            );
        }
        let _ = writeln!(md, "\nWorkloads:");
        for w in WORKLOADS {
            let _ = writeln!(md, "- `{}`: {}", w.name, w.what);
        }
        let _ = writeln!(
            md,
            "\nCases: `loaded` = the daemon enforcing a policy whose agent (`{AGENT}`) has no process; \
             `non-agent` = the same with an agent process alive, the load generator not an agent; \
             `agent-allowed` = the load generator is the agent, every operation allowed (writable \
             work directory, `127.0.0.1:*` allowed); `agent-refused-alert` = the agent opens a file \
             outside its writable directory with action `alert`: every operation is a violation \
             event. For auditd and bpftrace the same cases: their rules record the third one only."
        );

        let _ = writeln!(md, "\n## Events delivered (open outside writable, one event per operation)\n");
        let _ = writeln!(
            md,
            "| monitor | operations | offered (events/s, median) | events delivered | lost (monitor's own \
             counter) | events on allowed ops |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for (m, d) in &self.delivery {
            let rate = fmt_opt(self.offered_rate(*m), 0);
            let _ =
                writeln!(md, "| {} | {} | {rate} | {} | {} | {} |", m.name(), d.ops, d.delivered, d.lost, d.spurious);
        }

        let _ = writeln!(md, "\n## Peers\n");
        for (m, s) in &self.peers {
            let _ = writeln!(md, "- {}: {}", m.name(), s);
        }

        let _ = writeln!(md, "\n## Enforcement\n");
        if let Some(e) = &self.enforcement {
            let _ = writeln!(
                md,
                "- refused requests: {} raw `POST /answer` requests by the agent (`deny`, `127.0.0.1:*` \
                 allowed, default http_methods) on {} connections; {} sent by the client, {} replies; \
                 **{} bytes reached the server** (a byte-counting TCP server). Check: {} requests from a \
                 process that is not an agent delivered {} of {} bytes.{}",
                e.attempts,
                e.connected,
                e.sent,
                e.replies,
                e.bytes_at_server,
                e.validation_attempts,
                e.validation_bytes,
                e.validation_expected,
                if e.agent_killed_runs > 0 {
                    format!(" The agent was killed {} times (deny fell back to kill).", e.agent_killed_runs)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                md,
                "- time from a forbidden open (action `kill`) to the agent's death, as seen by its parent's \
                 waitpid: median {} µs, min {}, max {} over {} kills ({} survived)",
                fmt_opt(median(&e.kill_latency_us), 1),
                fmt_opt(e.kill_latency_us.iter().copied().reduce(f64::min), 1),
                fmt_opt(e.kill_latency_us.iter().copied().reduce(f64::max), 1),
                e.kill_latency_us.len(),
                e.kill_survived
            );
        }
        let s = &self.startup_s;
        let _ = writeln!(
            md,
            "- start-up until the daemon logs \"enforcing\" (release build, spawn to log line): median {} s, \
             min {}, max {} over {} starts; of which loading and attaching the eBPF programs (\"policy \
             loaded\" to \"eBPF programs attached\" in its log): median {} s",
            fmt_opt(median(s), 3),
            fmt_opt(s.iter().copied().reduce(f64::min), 3),
            fmt_opt(s.iter().copied().reduce(f64::max), 3),
            s.len(),
            fmt_opt(median(&self.attach_s), 3),
        );

        let _ = writeln!(md, "\n## Footprint (daemon)\n");
        let _ = writeln!(
            md,
            "- RSS (VmRSS) idle, 1 s after enforcing: median {} MiB (max {}); after all workloads: median {} \
             MiB (max {}); peak (VmHWM): {} MiB at the idle point, i.e. during start-up, and {} MiB at the \
             end (max over rounds)",
            fmt_opt(median(&self.rss_idle_mib), 1),
            fmt_opt(self.rss_idle_mib.iter().copied().reduce(f64::max), 1),
            fmt_opt(median(&self.rss_load_mib), 1),
            fmt_opt(self.rss_load_mib.iter().copied().reduce(f64::max), 1),
            fmt_opt(self.hwm_start_mib.iter().copied().reduce(f64::max), 1),
            fmt_opt(self.rss_peak_mib.iter().copied().reduce(f64::max), 1),
        );
        let (idle_cpu, idle_wall) = self.cpu_idle;
        let _ = writeln!(
            md,
            "- CPU idle: {} % of one core; under load (heaviest case): {}",
            fmt_opt((idle_wall > 0.0).then(|| 100.0 * idle_cpu / idle_wall), 2),
            self.heaviest_cpu()
                .map(|(p, wi, c)| format!("{p:.1} % of one core during {} {}", WORKLOADS[wi].name, c.name()))
                .unwrap_or_else(|| "-".into())
        );

        let _ = writeln!(md, "\n## Not measured yet\n");
        for n in NOT_MEASURED {
            let _ = writeln!(md, "- {n}");
        }
        md
    }

    /// Events per second a monitor was offered in the refused-alert open runs (median ns/op).
    fn offered_rate(&self, m: Monitor) -> Option<f64> {
        self.row((0, m, Case::AgentRefused)).map(|(ns, _)| 1e9 / ns)
    }

    fn heaviest_cpu(&self) -> Option<(f64, usize, Case)> {
        self.cpu_load
            .iter()
            .filter(|(_, (_, wall))| *wall > 0.0)
            .map(|(&(wi, c), &(cpu, wall))| (100.0 * cpu / wall, wi, c))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }

    fn noise_notes(&self) -> Vec<String> {
        let mut v = vec![format!(
            "Noise: a {}-core VM, shared with another engineer's cargo builds and root end-to-end tests \
             (which start debug agent-monitor daemons whose eBPF programs then run for every process, \
             including in the `none` case). Ratios within a few percent of 1.0 are within the noise; \
             read min/max beside the median.",
            self.info.cores
        )];
        let (f, all) = self.foreign_runs;
        if all > 0 {
            v.push(format!(
                "{f} of {all} runs were measured while another agent-monitor daemon (not this bench's) ran."
            ));
        }
        v.extend(self.notes.iter().cloned());
        v
    }

    fn json(&self) -> String {
        let i = &self.info;
        let num = |v: Option<f64>| v.map(J::N).unwrap_or(J::Null);
        let stats = |v: &[f64]| {
            J::O(vec![
                ("min", num(v.iter().copied().reduce(f64::min))),
                ("median", num(median(v))),
                ("max", num(v.iter().copied().reduce(f64::max))),
                ("all", J::A(v.iter().map(|x| J::N(*x)).collect())),
            ])
        };
        let rows = self.rows().into_iter().map(|((wi, mon, case), med, ratios)| {
            let per_round = self.samples[&(wi, mon, case)].iter().map(|s| num(*s)).collect();
            J::O(vec![
                ("workload", J::S(WORKLOADS[wi].name.into())),
                ("monitor", J::S(mon.name().into())),
                ("case", J::S(case.name().into())),
                ("ops_per_run", J::N(self.n[wi] as f64)),
                ("median_ns_per_op", J::N(med)),
                ("ns_per_op_per_round", J::A(per_round)),
                ("ratio", stats(&ratios)),
                ("failed_ops", J::N(self.errors.get(&(wi, mon, case)).copied().unwrap_or(0) as f64)),
                (
                    "target",
                    match (mon, case.target()) {
                        (Monitor::Ours, Some(t)) => J::N(t),
                        _ => J::Null,
                    },
                ),
            ])
        });
        let delivery = self.delivery.iter().map(|(m, d)| {
            J::O(vec![
                ("monitor", J::S(m.name().into())),
                ("ops", J::N(d.ops as f64)),
                ("offered_events_per_s", self.offered_rate(*m).map(J::N).unwrap_or(J::Null)),
                ("delivered", J::N(d.delivered as f64)),
                ("lost", J::N(d.lost as f64)),
                ("records_on_allowed_ops", J::N(d.spurious as f64)),
            ])
        });
        let enforcement = self.enforcement.as_ref().map(|e| {
            J::O(vec![
                ("refused_attempts", J::N(e.attempts as f64)),
                ("refused_connected", J::N(e.connected as f64)),
                ("refused_sent_by_client", J::N(e.sent as f64)),
                ("refused_replies", J::N(e.replies as f64)),
                ("refused_bytes_at_server", J::N(e.bytes_at_server as f64)),
                ("agent_killed_runs", J::N(e.agent_killed_runs as f64)),
                ("check_non_agent_attempts", J::N(e.validation_attempts as f64)),
                ("check_non_agent_bytes", J::N(e.validation_bytes as f64)),
                ("check_non_agent_expected_bytes", J::N(e.validation_expected as f64)),
                ("kill_latency_us", stats(&e.kill_latency_us)),
                ("kill_survived", J::N(e.kill_survived as f64)),
            ])
        });
        let targets = self.targets().into_iter().map(|(name, bound, value, status)| {
            J::O(vec![
                ("name", J::S(name)),
                ("bound", J::S(bound)),
                ("value", J::S(value)),
                ("status", J::S(status.into())),
            ])
        });
        let (idle_cpu, idle_wall) = self.cpu_idle;
        let cpu_load = self.cpu_load.iter().map(|(&(wi, c), &(cpu, wall))| {
            J::O(vec![
                ("workload", J::S(WORKLOADS[wi].name.into())),
                ("case", J::S(c.name().into())),
                ("cpu_percent", J::N(if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 })),
            ])
        });
        let doc = J::O(vec![
            ("date", J::S(i.date.clone())),
            ("kernel", J::S(i.kernel.clone())),
            ("cpu", J::S(i.cpu.clone())),
            ("cores", J::N(i.cores as f64)),
            ("commit", J::S(i.commit.clone())),
            ("rounds", J::N(self.opts.rounds as f64)),
            ("runs_per_round", J::N(self.opts.reps as f64)),
            ("run_secs", J::N(self.opts.run_secs)),
            ("loadavg_start", J::S(i.loadavg_start.clone())),
            ("loadavg_end", J::S(i.loadavg_end.clone())),
            ("notes", J::A(self.noise_notes().into_iter().map(J::S).collect())),
            ("targets", J::A(targets.collect())),
            ("syscall_overhead", J::A(rows.collect())),
            ("events_delivered", J::A(delivery.collect())),
            ("peers", J::O(self.peers.iter().map(|(m, s)| (m.name(), J::S(s.clone()))).collect())),
            ("enforcement", enforcement.unwrap_or(J::Null)),
            ("startup_s", stats(&self.startup_s)),
            ("startup_ebpf_load_attach_s", stats(&self.attach_s)),
            ("rss_idle_mib", stats(&self.rss_idle_mib)),
            ("hwm_after_startup_mib", stats(&self.hwm_start_mib)),
            ("rss_after_load_mib", stats(&self.rss_load_mib)),
            ("hwm_at_end_mib", stats(&self.rss_peak_mib)),
            ("cpu_idle_percent", num((idle_wall > 0.0).then(|| 100.0 * idle_cpu / idle_wall))),
            ("cpu_under_load", J::A(cpu_load.collect())),
            ("not_measured", J::A(NOT_MEASURED.iter().map(|s| J::S(s.to_string())).collect())),
        ]);
        let mut s = String::new();
        doc.write(&mut s, 0);
        s.push('\n');
        s
    }
}

/// An error's first line that says something (bpftrace's RLIMIT_MEMLOCK complaint is harmless).
fn short_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let mut lines = text.lines().filter(|l| !l.contains("RLIMIT_MEMLOCK") && !l.trim().is_empty());
    lines.next().unwrap_or("unknown error").trim().to_string()
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 })
}

/// `key=value` in the load generator's output.
fn kv(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Wait until a file stops growing (300 ms without change, at most 30 s).
fn settle(path: &Path) {
    let size = || fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (t, mut last, mut since) = (Instant::now(), size(), Instant::now());
    while t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_millis(300) {
            return;
        }
    }
}

/// The time of day, in seconds, of a log line that starts with an RFC 3339 UTC timestamp.
fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':').map(|p| p.parse::<f64>().ok());
    Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
}

/// Processes named agent-monitor other than `ours`: another engineer's daemons add load.
fn foreign_daemons(ours: Option<u32>) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours)
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "agent-monitor"))
        .count()
}

/// The sum of a Prometheus metric's samples over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A child killed (SIGKILL) and reaped on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM/SIGINT a child we started (xtask has no libc), wait up to 10 s, else SIGKILL.
fn stop_child(child: &mut Child, signal: &str) {
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
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    events: PathBuf,
    metrics: String,
}

impl Daemon {
    /// Start `agent-monitor run` with this policy; returns it and the seconds until "enforcing".
    fn start(bin: &Path, dir: &Path, policy: &str) -> Result<(Daemon, f64)> {
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
    fn attach_secs(&self) -> Option<f64> {
        let log = fs::read_to_string(&self.log).ok()?;
        let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_time);
        Some(at("eBPF programs attached")? - at("policy loaded")?)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A `kB` line of /proc/PID/status (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// User + system CPU seconds so far (/proc/PID/stat fields 14 and 15).
    fn cpu_secs(&self, clk_tck: f64) -> Option<f64> {
        let s = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &s[s.rfind(')')? + 2..]; // after "pid (comm) ": field 3 on
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clk_tck)
    }

    fn stop(mut self) {
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

/// The pid of the audit daemon registered with the kernel, if any (`auditctl -s`).
fn audit_daemon_pid() -> Option<u32> {
    let out = Command::new("auditctl").arg("-s").stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.lines().find_map(|l| l.strip_prefix("pid "))?.trim().parse().ok()?;
    (pid != 0).then_some(pid)
}

/// The kernel's count of audit records lost (`auditctl -s`), since boot.
fn kernel_audit_lost() -> u64 {
    let out = Command::new("auditctl").arg("-s").output().ok();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("lost ")?.trim().parse().ok()).unwrap_or(0)
}

fn audit_version() -> String {
    let out = Command::new("auditctl").arg("-v").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().replace("auditctl version ", "")).unwrap_or_default()
}

/// Debian's auditd (`auditd -n`, its own config directory and log), with rules equivalent to the
/// bench policy; rules removed and auditing disabled again on stop.
struct Auditd {
    child: Option<Child>,
    log: PathBuf,
    /// The kernel's lost-records counter when we started (it is never reset).
    lost_at_start: u64,
}

impl Auditd {
    /// The policy as audit rules: opens for write under `work` are allowed (never), other opens
    /// for write (O_WRONLY|O_RDWR|O_CREAT|O_TRUNC = 0x243) by the agent's executable recorded.
    /// audit has no comm filter: `exe=` is the closest selector (it does not follow children).
    fn rules(agent: &Path, work: &Path) -> Vec<Vec<String>> {
        let (exe, dir) = (format!("exe={}", agent.display()), format!("dir={}", work.display()));
        let rule = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        vec![
            rule(&["-b", "8192"]),
            rule(&["-a", "never,exit", "-F", "arch=b64", "-S", "open,openat,creat", "-F", &dir]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "openat", "-F", &exe, "-F", "a2&0x243", "-k", AGENT]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "open", "-F", &exe, "-F", "a1&0x243", "-k", AGENT]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "creat", "-F", &exe, "-k", AGENT]),
        ]
    }

    fn rules_text(agent: &Path, work: &Path) -> String {
        let rules = Self::rules(agent, work).into_iter().map(|r| format!("`auditctl {}`", r.join(" ")));
        rules.collect::<Vec<_>>().join(", ")
    }

    fn start(dir: &Path, agent: &Path, work: &Path) -> Result<Auditd> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let log = dir.join("audit.log");
        // Debian's configuration, with its own log file that is never rotated (so every record
        // can be counted).
        let conf = fs::read_to_string("/etc/audit/auditd.conf").context("no /etc/audit/auditd.conf")?;
        let conf: Vec<String> = conf
            .lines()
            .map(|l| match l.split('=').next().map(str::trim) {
                Some("log_file") => format!("log_file = {}", log.display()),
                Some("max_log_file_action") => "max_log_file_action = IGNORE".into(),
                _ => l.to_string(),
            })
            .collect();
        let conf_path = dir.join("auditd.conf");
        fs::write(&conf_path, conf.join("\n") + "\n")?;
        fs::set_permissions(&conf_path, fs::Permissions::from_mode(0o640))?;
        let mut cmd = Command::new("auditd");
        cmd.arg("-n").arg("-c").arg(dir).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(dir.join("auditd.err"))?);
        let child = cmd.spawn().context("could not start auditd")?;
        let mut a = Auditd { child: Some(child), log, lost_at_start: 0 };
        let pid = a.child.as_ref().unwrap().id();
        let t = Instant::now();
        while audit_daemon_pid() != Some(pid) {
            if let Some(st) = a.child.as_mut().unwrap().try_wait()? {
                let err = fs::read_to_string(dir.join("auditd.err")).unwrap_or_default();
                bail!("auditd exited ({st}): {}", err.trim());
            }
            ensure!(t.elapsed() < Duration::from_secs(10), "auditd did not register with the kernel within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        for rule in Self::rules(agent, work) {
            run_quiet(Command::new("auditctl").args(&rule))?;
        }
        a.lost_at_start = kernel_audit_lost();
        Ok(a)
    }

    /// SYSCALL records with the bench's key in the log so far.
    fn records(&self) -> u64 {
        let text = fs::read(&self.log).unwrap_or_default();
        let key = format!("key=\"{AGENT}\"");
        let text = String::from_utf8_lossy(&text);
        text.lines().filter(|l| l.starts_with("type=SYSCALL") && l.contains(&key)).count() as u64
    }

    /// Records the kernel lost since we started.
    fn lost(&self) -> u64 {
        kernel_audit_lost().saturating_sub(self.lost_at_start)
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run_quiet(Command::new("auditctl").arg("-D"));
            stop_child(&mut c, "-TERM");
            let _ = run_quiet(Command::new("auditctl").args(["-e", "0"]));
        }
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not run `{}`", show(cmd)))?;
    ensure!(out.status.success(), "`{}` failed: {}", show(cmd), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

const BPF_SCRIPT_DOC: &str = "sys_enter_open/openat/creat, comm == \"am-bench\", flags & 0x243, path not under \
                              the writable directory, printf of pid, comm and path";

/// bpftrace with the policy's filter, one output line per event, unbuffered, into a file.
struct Bpftrace {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    version: String,
}

impl Bpftrace {
    fn script(work: &Path) -> String {
        let prefix = format!("{}/", work.display());
        let n = prefix.len();
        // One probe per syscall: (tracepoint, its path field, the write-flags test).
        let probes = [
            ("sys_enter_openat", "filename", " && (args->flags & 0x243) != 0"),
            ("sys_enter_open", "filename", " && (args->flags & 0x243) != 0"),
            ("sys_enter_creat", "pathname", ""),
        ];
        let mut s = String::new();
        for (tp, path, flags) in probes {
            let _ = write!(
                s,
                "tracepoint:syscalls:{tp}\n\
                 /comm == \"{AGENT}\"{flags} && strncmp(str(args->{path}), \"{prefix}\", {n}) != 0/\n\
                 {{ printf(\"%d %s %s\\n\", pid, comm, str(args->{path})); }}\n"
            );
        }
        s
    }

    fn start(dir: &Path, agent: &Path, work: &Path, outside: &Path) -> Result<Bpftrace> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let (script, out, err) = (dir.join("bench.bt"), dir.join("bpftrace.out"), dir.join("bpftrace.err"));
        fs::write(&script, Self::script(work))?;
        let version = Command::new("bpftrace").arg("--version").output().ok();
        let version = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-B", "none", "-o"]).arg(&out).arg(&script).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(&err)?);
        let child = cmd.spawn().context("could not start bpftrace")?;
        let mut b = Bpftrace { child: Some(child), out, err, version };
        let t = Instant::now();
        // bpftrace's "Attaching N probes..." comes before the probes are attached, and it reads
        // its per-CPU buffers only past a watermark: ready is when a burst of events of our own
        // (the agent opening `outside/bt-ready`) comes out.
        let ready = outside.join("bt-ready");
        let needle = format!(" {AGENT} {}", ready.display());
        while !fs::read_to_string(&b.out).unwrap_or_default().contains(&needle) {
            if let Some(st) = b.child.as_mut().unwrap().try_wait()? {
                let err = fs::read_to_string(&b.err).unwrap_or_default();
                bail!("bpftrace exited ({st}): {}", err.trim());
            }
            ensure!(t.elapsed() < Duration::from_secs(120), "bpftrace did not attach within 120 s");
            if fs::read_to_string(&b.out).unwrap_or_default().contains("Attaching") {
                let _ = Command::new(agent).arg("open").arg("1000").arg(&ready).stdout(Stdio::null()).status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// Stop (SIGINT: bpftrace drains its buffers) and count its output: (event lines for
    /// `refused`, event lines for anything under `work`, events bpftrace says it lost).
    fn finish(mut self, refused: &Path, work: &Path) -> (u64, u64, u64) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-INT");
        }
        let out = String::from_utf8_lossy(&fs::read(&self.out).unwrap_or_default()).into_owned();
        let (hit, allowed) = (format!(" {AGENT} {}", refused.display()), format!(" {AGENT} {}/", work.display()));
        let delivered = out.lines().filter(|l| l.ends_with(&hit)).count() as u64;
        let spurious = out.lines().filter(|l| l.contains(&allowed)).count() as u64;
        let err = fs::read_to_string(&self.err).unwrap_or_default();
        let lost = (out.lines().chain(err.lines()))
            .filter_map(|l| l.trim().strip_prefix("Lost ")?.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        (delivered, spurious, lost)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-INT");
        }
    }
}

/// A TCP server on loopback that counts every byte it receives, on every connection, and
/// answers nothing. One thread, non-blocking sockets: a refused request's connection is never
/// closed by its (blocked) client, so idle connections are dropped after 2 s.
struct Sink {
    port: u16,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
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

/// Just enough JSON for the results (no serde in xtask).
enum J {
    Null,
    N(f64),
    S(String),
    A(Vec<J>),
    O(Vec<(&'static str, J)>),
}

impl J {
    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(d));
        };
        match self {
            J::Null => out.push_str("null"),
            J::N(v) if !v.is_finite() => out.push_str("null"),
            J::N(v) if v.fract() == 0.0 && v.abs() < 1e15 => {
                let _ = write!(out, "{}", *v as i64);
            }
            J::N(v) => {
                let _ = write!(out, "{}", (v * 1e4).round() / 1e4);
            }
            J::S(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::A(items) if items.iter().all(|i| matches!(i, J::N(_) | J::Null)) => {
                out.push('[');
                for (k, item) in items.iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, depth);
                }
                out.push(']');
            }
            J::A(items) => {
                out.push('[');
                for (k, item) in items.iter().enumerate() {
                    out.push_str(if k > 0 { "," } else { "" });
                    pad(out, depth + 1);
                    item.write(out, depth + 1);
                }
                if !items.is_empty() {
                    pad(out, depth);
                }
                out.push(']');
            }
            J::O(members) => {
                out.push('{');
                for (k, (name, v)) in members.iter().enumerate() {
                    out.push_str(if k > 0 { "," } else { "" });
                    pad(out, depth + 1);
                    let _ = write!(out, "\"{name}\": ");
                    v.write(out, depth + 1);
                }
                if !members.is_empty() {
                    pad(out, depth);
                }
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(kv("ns_per_op=1852.5 ops=100 errors=0\n", "ns_per_op"), Some(1852.5));
        assert_eq!(kv("ns_per_op=1 ops=100 errors=3", "errors"), Some(3.0));
        assert_eq!(kv("ops=1", "missing"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let t = log_time("2026-11-27T10:33:50.798187Z  INFO eBPF programs attached").unwrap();
        assert!((t - (10.0 * 3600.0 + 33.0 * 60.0 + 50.798187)).abs() < 1e-6);
        let m = "# HELP x\nagent_monitor_events_lost_total 2\nagent_monitor_events_lost_total{a=\"b\"} 3\n\
                 agent_monitor_events_lost_totalx 9\n";
        assert_eq!(metric_sum(m, "agent_monitor_events_lost_total"), 5.0);
        let mut s = String::new();
        J::O(vec![("a", J::A(vec![J::N(1.0), J::N(0.5), J::Null])), ("b", J::S("q\"\n".into()))]).write(&mut s, 0);
        assert_eq!(s, "{\n  \"a\": [1, 0.5, null],\n  \"b\": \"q\\\"\\n\"\n}");
    }

    #[test]
    fn bpftrace_script_filters_like_the_policy() {
        let s = Bpftrace::script(Path::new("/tmp/w"));
        assert!(s.contains("strncmp(str(args->filename), \"/tmp/w/\", 7) != 0"), "{s}");
        assert_eq!(s.matches("comm == \"am-bench\"").count(), 3);
        assert!(s.contains("strncmp(str(args->pathname)"), "{s}");
    }
}
