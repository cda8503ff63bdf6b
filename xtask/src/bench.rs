//! `cargo xtask bench`: one benchmark run of issue 7, results as JSON and Markdown under
//! `bench/`. These are benchmarks, not tests: a missed target is reported, and the run still
//! succeeds.
//!
//! **Syscall overhead.** A C load generator (`xtask/bench/load.c`, built here with `cc -O2`,
//! with OpenSSL when libssl-dev is there or installs) times a loop of one operation and prints
//! ns/op: open, write(2), SSL_write (in-process TLS over memory BIOs, self-signed certificate
//! from the `openssl` CLI), TCP connect, UDP sendto, fork, exec. Run as `load` it is not an
//! agent; run through its copy `am-bench` it is the agent of the bench policy (`comm =
//! ["am-bench"]`, writable = the scratch `work/`, allow `127.0.0.1:*`, action `alert`); through
//! its copy `am-bench-deny` it is a second agent (action `deny`, only `127.0.0.1:9` allowed).
//! The ladder:
//!
//! | case                  | state                                                            |
//! | --------------------- | ---------------------------------------------------------------- |
//! | `none`                | no monitor of ours running                                      |
//! | `loaded`              | the daemon enforcing the bench policy, no agent process alive   |
//! | `non-agent`           | the same, an agent alive (`am-bench sleep`); `load` runs        |
//! | `agent-allowed`       | `am-bench` runs: every operation is allowed by its policy       |
//! | `agent-refused-alert` | open only: `am-bench` opens outside `work/`; one event per op    |
//! | `agent-refused-deny`  | connect, udp: `am-bench-deny` to an unlisted port: EPERM, events |
//!
//! Fork and exec have nothing to refuse (reported as not applicable), nor has a write(2) on an
//! open descriptor; a refused method in SSL_write is a kill, not a refusal.
//!
//! Peers (every workload, if installed): Debian's auditd with rules equivalent to the policy
//! as far as audit can filter (write-opens by the agent's executable outside `work/`; connect
//! and sendto of the agents' executables; forks of the agent; execs) and a bpftrace script with
//! the policy's filters printing one line per event, on the same agent cases.
//!
//! **Event path.** An agent's refused-alert opens paced at rising rates (and unpaced), one
//! daemon start: events offered, in the events log, and lost by the daemon's and the kernel's
//! counters per step, bisected to the highest rate without loss.
//!
//! "Interleaved" means per round: a round measures every workload once in every state (none,
//! then a daemon start for loaded/non-agent/agent, then auditd, then bpftrace) and the rounds
//! repeat. A ratio is taken within a round (`ns(case) / ns(none)` of the same round and
//! workload), so slow drift of the machine cancels; the table shows min/median/max over rounds.
//!
//! **Also:** start-up until "enforcing" (every daemon start), daemon RSS and CPU idle and under
//! load, events delivered for the refused runs, the bytes of refused HTTP requests that reach a
//! server (1000 attempts, `deny`), the time from a forbidden open to the agent's death (`kill`)
//! and events/s through decode and decision. Anything of issue 7 this run could not measure is
//! listed as not measured yet.

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
/// The agent whose connects and sends to anything but `127.0.0.1:DENY_PORT` are refused (deny).
const DENY_AGENT: &str = "am-bench-deny";
const DENY_PORT: u16 = 9;

/// The event path: the rates offered (events/s; 0 = as fast as the load generator can), the
/// seconds of each step and the threads of the load generator.
const EVENT_RATES: [u64; 6] = [20_000, 50_000, 100_000, 200_000, 400_000, 0];
const EVENT_STEP_SECS: f64 = 2.0;
const EVENT_THREADS: u32 = 2;
/// Steps between the fastest zero-loss step and the first lossy one (bisection).
const EVENT_BISECT: usize = 2;
/// The daemon refreshes its kernel counters every 2 s: wait this long before reading them.
const METRICS_REFRESH: Duration = Duration::from_millis(2300);

/// Issue 7's targets.
const NON_AGENT_MAX: f64 = 1.02;
const AGENT_MAX: f64 = 1.3;
const STARTUP_MAX_S: f64 = 1.0;
const RSS_MAX_MIB: f64 = 40.0;

/// What issue 7 asks for that this version does not measure (more may be added at run time,
/// e.g. `SSL_write` where OpenSSL's headers cannot be installed).
const NOT_MEASURED: &[&str] = &[];

/// Workloads with no agent-refused case, and why.
const REFUSED_NOT_APPLICABLE: &[(&str, &str)] = &[
    ("write", "write(2) on a descriptor already open is not checked again (the open is)"),
    (
        "SSL_write",
        "a refused method in SSL_write cannot be refused (a uprobe cannot fail the call): `deny` falls back \
         to kill",
    ),
    ("fork", "not applicable: the policy has nothing to refuse in a fork"),
    ("exec", "not applicable: the policy has nothing to refuse in an exec"),
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
    /// The load generator's mode.
    mode: &'static str,
    what: &'static str,
    /// Operations of the calibration run (no monitor), and the most a run may do.
    calib: u64,
    max: u64,
    /// The agent case where every operation is refused or a violation, if there is one.
    refused: Option<Case>,
}

/// `open` stays first (the delivery counts and the peers' open rules use index 0).
const WORKLOADS: [Workload; 7] = [
    Workload {
        name: "open",
        mode: "open",
        what: "open(O_WRONLY|O_CREAT) + close",
        calib: 20_000,
        max: 2_000_000,
        refused: Some(Case::AgentRefused),
    },
    Workload {
        name: "write",
        mode: "write",
        what: "write(2) of 64 bytes to a file already open (in the writable directory)",
        calib: 100_000,
        max: 5_000_000,
        refused: None,
    },
    Workload {
        name: "SSL_write",
        mode: "ssl",
        what: "OpenSSL SSL_write of a 64-byte `GET` request (an allowed method) on a TLS 1.3 client \
               connected in-process through memory BIOs (handshake outside the loop, self-signed \
               P-256 certificate from the `openssl` CLI); the uprobe path",
        calib: 20_000,
        max: 2_000_000,
        refused: None,
    },
    Workload {
        name: "connect",
        mode: "connect",
        what: "TCP connect + close, 127.0.0.1",
        calib: 2_000,
        max: 200_000,
        refused: Some(Case::AgentDenied),
    },
    Workload {
        name: "udp",
        mode: "udp",
        what: "UDP sendto 127.0.0.1, 1 byte",
        calib: 20_000,
        max: 2_000_000,
        refused: Some(Case::AgentDenied),
    },
    Workload { name: "fork", mode: "fork", what: "fork + waitpid", calib: 200, max: 50_000, refused: None },
    Workload {
        name: "exec",
        mode: "exec",
        what: "fork + execve /bin/true + waitpid",
        calib: 100,
        max: 20_000,
        refused: None,
    },
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
    AgentDenied,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "none",
            Case::Loaded => "loaded",
            Case::NonAgent => "non-agent",
            Case::AgentAllowed => "agent-allowed",
            Case::AgentRefused => "agent-refused-alert",
            Case::AgentDenied => "agent-refused-deny",
        }
    }

    fn is_agent(self) -> bool {
        matches!(self, Case::AgentAllowed | Case::AgentRefused | Case::AgentDenied)
    }

    /// Issue 7's bound on the ratio to no monitor (for agent-monitor's rows).
    fn target(self) -> Option<f64> {
        match self {
            Case::Baseline => None,
            Case::Loaded | Case::NonAgent => Some(NON_AGENT_MAX),
            Case::AgentAllowed | Case::AgentRefused | Case::AgentDenied => Some(AGENT_MAX),
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
    // BPF programs already in the kernel run in every case, `none` included, and make every
    // ratio look better than it is (an earlier session's benchmarks ran beside 96 programs
    // left pinned by interrupted tests: open+close took 2.8 us instead of 2.1 us with no monitor).
    let loaded = loaded_bpf_programs();
    ensure!(
        loaded.is_empty(),
        "{} BPF programs are already loaded ({}{}): they would run in every case, the baseline included. \
         Stop the monitors that own them; programs an agent-monitor left pinned go with \
         `agent-monitor cleanup --pin-path DIR` (or removing their directory under /sys/fs/bpf)",
        loaded.len(),
        loaded.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if loaded.len() > 5 { ", ..." } else { "" }
    );
    run_cmd(cargo().args(["build", "--release", "-p", "agent-monitor"]))?;
    let daemon_bin = target_dir().join("release/agent-monitor");
    let (load, ssl) = build_load()?;
    let mut bench = Bench::new(opts, daemon_bin, load, ssl)?;
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

/// Compile the load generator into `target/bench/load`, with OpenSSL (`SSL_write`) when its
/// headers are there or can be installed (Debian package libssl-dev); returns whether it has it.
fn build_load() -> Result<(PathBuf, Result<(), String>)> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let bin = dir.join("load");
    let src = root().join("xtask/bench/load.c");
    let cc = which::which("cc").context("no C compiler `cc` (Debian package gcc) for xtask/bench/load.c")?;
    let headers = || Path::new("/usr/include/openssl/ssl.h").exists();
    if !headers() {
        eprintln!("bench: installing OpenSSL's headers (Debian package libssl-dev) for the SSL_write workload");
        let st = Command::new("apt-get")
            .args(["install", "-y", "-qq", "libssl-dev"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("bench: apt-get install libssl-dev failed; SSL_write is not measured");
        }
    }
    if headers() {
        let mut cmd = Command::new(&cc);
        cmd.args(["-O2", "-Wall", "-pthread", "-DHAVE_SSL", "-o"]).arg(&bin).arg(&src).args(["-lssl", "-lcrypto"]);
        match run_cmd(&mut cmd) {
            Ok(()) => return Ok((bin, Ok(()))),
            Err(e) => eprintln!("bench: the load generator did not build with OpenSSL ({e:#}); without it"),
        }
    }
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-pthread", "-o"]).arg(&bin).arg(&src);
    run_cmd(&mut cmd)?;
    let why =
        if headers() { "the load generator did not build with OpenSSL" } else { "no OpenSSL headers (libssl-dev)" };
    Ok((bin, Err(why.into())))
}

/// A self-signed certificate and key for the in-process TLS server (`openssl` CLI).
fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"]);
    cmd.arg(&key).arg("-out").arg(&cert).args(["-days", "2", "-subj", "/CN=am-bench"]);
    run_quiet(&mut cmd)?;
    Ok((cert, key))
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
    deny_agent: PathBuf,
    work: PathBuf,
    outside: PathBuf,
    /// The TLS server's certificate and key (SSL_write).
    cert: PathBuf,
    key: PathBuf,
    clk_tck: f64,
    /// The workloads measured here (`SSL_write` only with OpenSSL).
    workloads: Vec<Workload>,
    /// Operations per run, per workload.
    n: Vec<u64>,
    /// ns/op per round.
    samples: BTreeMap<Key, Vec<Option<f64>>>,
    /// Operations that failed (a load generator error count), per row.
    errors: BTreeMap<Key, u64>,
    /// Operations refused with EPERM, and operations run, per row.
    refused: BTreeMap<Key, (u64, u64)>,
    delivery: BTreeMap<Monitor, Delivery>,
    /// Our events for the deny agent's refused operations, per workload: (refused, events).
    denied: BTreeMap<&'static str, (u64, u64)>,
    /// Peers' records per (monitor, workload, case): (operations, records). auditd's are counted
    /// after every run; bpftrace's per probe and agent comm when it exits (see `Bpftrace`).
    peer_records: BTreeMap<Key, (u64, u64)>,
    /// The event path: paced refused-alert opens, one step per offered rate.
    event_path: Vec<EventStep>,
    not_measured: Vec<String>,
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

/// One step of the event path.
#[derive(Default, Clone)]
struct EventStep {
    /// Requested events/s (0: unpaced), and what the load generator achieved.
    requested: u64,
    offered: f64,
    secs: f64,
    ops: u64,
    delivered: u64,
    /// agent_monitor_events_lost_total, and agent_monitor_kernel_drops_total by reason (deltas).
    lost: u64,
    kernel_drops: BTreeMap<String, u64>,
    /// Daemon CPU during the step and its drain, % of one core.
    cpu_percent: f64,
    /// Seconds from the end of the load until the events log stopped growing.
    drain_s: f64,
}

impl EventStep {
    fn zero_loss(&self) -> bool {
        let full = self.kernel_drops.get("ringbuf_full").copied().unwrap_or(0);
        self.ops > 0 && self.delivered == self.ops && self.lost == 0 && full == 0
    }
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
    fn new(opts: Options, daemon_bin: PathBuf, load: PathBuf, ssl: Result<(), String>) -> Result<Bench> {
        let dir = PathBuf::from(format!("/tmp/am-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (work, outside) = (dir.join("work"), dir.join("outside"));
        fs::create_dir_all(&work)?;
        fs::create_dir_all(&outside)?;
        let (agent, kill_agent, deny_agent) = (dir.join(AGENT), dir.join(KILL_AGENT), dir.join(DENY_AGENT));
        fs::copy(&load, &agent)?;
        fs::copy(&load, &kill_agent)?;
        fs::copy(&load, &deny_agent)?;
        let mut not_measured: Vec<String> = NOT_MEASURED.iter().map(|s| s.to_string()).collect();
        let ssl = ssl.and_then(|()| make_cert(&dir).map_err(|e| format!("no certificate: {}", short_error(&e))));
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let workloads = WORKLOADS.iter().copied().filter(|w| w.mode != "ssl" || ssl.is_ok()).collect();
        if let Err(why) = &ssl {
            not_measured.push(format!("workload `SSL_write` through OpenSSL (the uprobe path): {why}"));
        }
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
            deny_agent,
            work,
            outside,
            cert,
            key,
            clk_tck,
            workloads,
            n: Vec::new(),
            samples: BTreeMap::new(),
            errors: BTreeMap::new(),
            refused: BTreeMap::new(),
            delivery: BTreeMap::new(),
            denied: BTreeMap::new(),
            peer_records: BTreeMap::new(),
            event_path: Vec::new(),
            not_measured,
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
        eprintln!("bench: the event path: paced refused-alert opens, zero loss and the loss curve");
        self.measure_event_path()?;
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
        for w in self.workloads.clone() {
            let (ns, _, _) = self.load_run(w, Case::Baseline, w.calib)?;
            let n = ((self.opts.run_secs * 1e9 / ns) as u64).clamp(20, w.max);
            eprintln!("bench: calibrate {}: {ns:.0} ns/op, {n} ops per run", w.name);
            self.n.push(n);
        }
        Ok(())
    }

    fn round(&mut self, round: usize) -> Result<()> {
        for _ in 0..self.opts.reps {
            for (i, w) in self.workloads.clone().iter().enumerate() {
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
            "# cargo xtask bench: the load generator's copy `{AGENT}` is the agent; its copy \
             `{DENY_AGENT}` may reach 127.0.0.1:{DENY_PORT} only.\n\
             [[agent]]\nname = \"bench\"\naction = \"alert\"\n[agent.match]\ncomm = [\"{AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"127.0.0.1:*\"]\n\n\
             [[agent]]\nname = \"bench-deny\"\naction = \"deny\"\n[agent.match]\ncomm = [\"{DENY_AGENT}\"]\n\
             [agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"127.0.0.1:{DENY_PORT}\"]\n",
            w = self.work.display()
        )
    }

    /// The cases of the state "agent processes alive", per workload, in their order.
    fn agent_cases(w: &Workload) -> Vec<Case> {
        let mut v = vec![Case::NonAgent, Case::AgentAllowed];
        v.extend(w.refused);
        v
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
            for (i, w) in self.workloads.clone().iter().enumerate() {
                self.measure(round, i, *w, Monitor::Ours, Case::Loaded, Some(&daemon))?;
            }
        }
        let idle_agent = Command::new(&self.agent).arg("sleep").stdin(Stdio::null()).spawn();
        let mut idle_agent = Bg(idle_agent.context("could not start the idle agent")?);
        let mut refused_ops = 0;
        // Operations the deny agent saw refused, per workload.
        let mut denied: BTreeMap<usize, u64> = BTreeMap::new();
        for _ in 0..self.opts.reps {
            for (i, w) in self.workloads.clone().iter().enumerate() {
                for case in Self::agent_cases(w) {
                    let refused = self.measure(round, i, *w, Monitor::Ours, case, Some(&daemon))?;
                    if case == Case::AgentRefused && i == 0 {
                        refused_ops += self.n[i];
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
    fn count_our_events(&mut self, daemon: &Daemon, ops: u64, denied: &BTreeMap<usize, u64>) {
        settle(&daemon.events);
        let target = |dir: &Path| format!("\"target\":\"{}\"", dir.join("f").display());
        let (outside, work) = (target(&self.outside), target(&self.work));
        let text = fs::read_to_string(&daemon.events).unwrap_or_default();
        let comm = format!("\"comm\":\"{DENY_AGENT}\"");
        for (&i, &refused) in denied {
            let kind = if self.workloads[i].mode == "connect" { "net.connect" } else { "net.send" };
            let kind = format!("\"kind\":\"{kind}\"");
            let events = text
                .lines()
                .filter(|l| l.contains(&kind) && l.contains("\"verdict\":\"violation\"") && l.contains(&comm))
                .count() as u64;
            let d = self.denied.entry(self.workloads[i].name).or_default();
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
        let sel = AuditSel { agent: &self.agent, deny_agent: &self.deny_agent, work: &self.work };
        let mut auditd = Auditd::start(&self.dir.join("auditd"), &sel)?;
        let rules_text = Auditd::rules_text(&sel);
        for _ in 0..self.opts.reps {
            for (i, w) in self.workloads.clone().iter().enumerate() {
                for case in Self::agent_cases(w) {
                    let before = auditd.records();
                    self.measure(round, i, *w, Monitor::Auditd, case, None)?;
                    settle(&auditd.log);
                    let got = auditd.records().saturating_sub(before);
                    if i == 0 {
                        self.delivered(Monitor::Auditd, case, self.n[i], got);
                    }
                    let e = self.peer_records.entry((i, Monitor::Auditd, case)).or_default();
                    e.0 += self.n[i];
                    e.1 += got;
                }
            }
        }
        let lost = auditd.lost();
        auditd.stop();
        let d = self.delivery.entry(Monitor::Auditd).or_default();
        d.lost += lost;
        self.peers
            .entry(Monitor::Auditd)
            .or_insert_with(|| format!("auditd {} (Debian), rules: {rules_text}; {AUDIT_DOC}", audit_version()));
        Ok(())
    }

    fn bpftrace_round(&mut self, round: usize) -> Result<()> {
        let libssl = self.workloads.iter().any(|w| w.mode == "ssl").then(|| linked_lib(&self.load, "libssl.so"));
        let libssl = libssl.flatten();
        let bt =
            Bpftrace::start(&self.dir.join("bpftrace"), &self.agent, &self.work, &self.outside, libssl.as_deref())?;
        for _ in 0..self.opts.reps {
            for (i, w) in self.workloads.clone().iter().enumerate() {
                for case in Self::agent_cases(w) {
                    self.measure(round, i, *w, Monitor::Bpftrace, case, None)?;
                }
            }
        }
        // bpftrace hands events to its output lazily: count once it has drained them, on exit.
        let version = bt.version.clone();
        let (delivered, spurious, lost, tagged) = bt.finish(&self.outside.join("f"), &self.work);
        let i = 0; // open
        let d = self.delivery.entry(Monitor::Bpftrace).or_default();
        d.ops += self.opts.reps as u64 * self.n[i];
        d.delivered += delivered;
        d.spurious += spurious;
        d.lost += lost;
        // The other workloads' lines, by probe (workload) and comm (case).
        for (i, w) in self.workloads.clone().iter().enumerate() {
            for case in Self::agent_cases(w) {
                let got = match (i, case) {
                    (0, Case::AgentRefused) => delivered,
                    (0, Case::AgentAllowed) => spurious,
                    (0, _) => 0,
                    (_, Case::AgentAllowed) => tagged.get(&(w.mode, AGENT)).copied().unwrap_or(0),
                    (_, Case::AgentDenied) => tagged.get(&(w.mode, DENY_AGENT)).copied().unwrap_or(0),
                    _ => 0,
                };
                let e = self.peer_records.entry((i, Monitor::Bpftrace, case)).or_default();
                e.0 += self.opts.reps as u64 * self.n[i];
                e.1 += got;
            }
        }
        let ssl_doc = match &libssl {
            Some(lib) => format!("uprobe {}:SSL_write", lib.display()),
            None => "no SSL_write probe".into(),
        };
        self.peers.entry(Monitor::Bpftrace).or_insert_with(|| {
            format!("{version} (Debian), -B none, one line per event to a file; script: {BPF_SCRIPT_DOC} ({ssl_doc})")
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
    /// Returns the operations refused (EPERM).
    fn measure(
        &mut self,
        round: usize,
        i: usize,
        w: Workload,
        monitor: Monitor,
        case: Case,
        daemon: Option<&Daemon>,
    ) -> Result<u64> {
        let foreign = foreign_daemons(daemon.map(|d| d.pid()));
        let cpu0 = daemon.and_then(|d| d.cpu_secs(self.clk_tck));
        let t = Instant::now();
        let (ns, errors, refused) = self.load_run(w, case, self.n[i])?;
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
        let r = self.refused.entry(key).or_default();
        r.0 += refused;
        r.1 += self.n[i];
        Ok(refused)
    }

    /// Run the load generator once: (ns/op, failed operations, refused operations).
    fn load_run(&self, w: Workload, case: Case, n: u64) -> Result<(f64, u64, u64)> {
        let bin = match case {
            Case::AgentDenied => &self.deny_agent,
            c if c.is_agent() => &self.agent,
            _ => &self.load,
        };
        let mut cmd = Command::new(bin);
        cmd.arg(w.mode).arg(n.to_string());
        match w.mode {
            "open" => {
                let dir = if case == Case::AgentRefused { &self.outside } else { &self.work };
                cmd.arg(dir.join("f"));
            }
            "write" => {
                cmd.arg(self.work.join("w"));
            }
            "ssl" => {
                cmd.arg(&self.cert).arg(&self.key).arg("GET");
            }
            _ => {}
        }
        let out = output(cmd.stdin(Stdio::null()))?;
        let ns = kv(&out, "ns_per_op").with_context(|| format!("`{}` printed no ns_per_op: {out}", show(&cmd)))?;
        Ok((ns, kv(&out, "errors").unwrap_or(0.0) as u64, kv(&out, "refused").unwrap_or(0.0) as u64))
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

    /// The event path: an agent (`alert`) opening a file outside its writable directory, paced
    /// at each rate of [`EVENT_RATES`] (one violation event per open), then bisected between
    /// the fastest step without loss and the first with loss. Per step: events offered, in the
    /// events log, and lost by the daemon's and the kernel's counters.
    fn measure_event_path(&mut self) -> Result<()> {
        let ddir = self.dir.join("daemon-events");
        let (daemon, startup) = Daemon::start(&self.daemon_bin, &ddir, &self.bench_policy())?;
        self.startup_s.push(startup);
        self.attach_s.extend(daemon.attach_secs());
        std::thread::sleep(METRICS_REFRESH);
        let mut counters = DropCounters::read(&daemon)?;
        for rate in EVENT_RATES {
            let step = self.event_step(&daemon, rate, &mut counters)?;
            self.event_path.push(step);
        }
        for _ in 0..EVENT_BISECT {
            let lo = self.event_path.iter().filter(|s| s.zero_loss()).map(|s| s.offered).reduce(f64::max);
            let hi = self
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
            self.event_path.push(step);
        }
        daemon.stop();
        let _ = fs::remove_dir_all(&ddir);
        Ok(())
    }

    fn event_step(&self, daemon: &Daemon, rate: u64, counters: &mut DropCounters) -> Result<EventStep> {
        let k = self.event_path.len();
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
        let denied = self.denied.values().all(|(refused, events)| refused == events);
        self.delivery.get(&Monitor::Ours).map(|d| d.ops > 0 && d.delivered == d.ops && d.lost == 0 && denied)
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
                format!("{r:.3}x ({} {})", self.workloads[k.0].name, k.2.name()),
                pass(r <= NON_AGENT_MAX),
            ));
        }
        if let Some((r, k)) = worst(&[Case::AgentAllowed, Case::AgentRefused, Case::AgentDenied]) {
            let all = self.delivered_all().unwrap_or(false);
            t.push((
                "an agent (allowed, refused-alert, refused-deny): worst median ratio, every event delivered".into(),
                format!("<= {AGENT_MAX}x, no loss"),
                format!(
                    "{r:.3}x ({} {}); events {}",
                    self.workloads[k.0].name,
                    k.2.name(),
                    if all { "all delivered" } else { "NOT all delivered" }
                ),
                pass(r <= AGENT_MAX && all),
            ));
        }
        if let Some((rate, first_loss)) = self.zero_loss_rate() {
            t.push((
                "event path: highest offered events/s that reached the events log with zero loss".into(),
                "none set (reported)".into(),
                format!(
                    "{rate:.0} events/s{}",
                    first_loss.map(|f| format!("; first loss at {f:.0} events/s")).unwrap_or_default()
                ),
                "-",
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
        let _ = writeln!(md, "`cargo xtask bench` (issue 7). Benchmarks, not tests.\n");
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
             then starts the daemon (loaded; then non-agent, agent-allowed, agent-refused-alert or \
             agent-refused-deny), then auditd, then bpftrace.\n",
            self.opts.rounds, self.opts.reps, self.opts.run_secs
        );
        let _ = writeln!(
            md,
            "| workload | monitor | case | ops/run | ns/op | ratio | min | max | target | status |\n\
             | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        );
        for ((wi, mon, case), med, ratios) in self.rows() {
            let w = self.workloads[wi];
            let (target, status) = match (mon, case.target(), median(&ratios)) {
                (Monitor::Ours, Some(t), Some(r)) => (format!("<= {t}x"), pass(r <= t)),
                _ => ("".into(), ""),
            };
            let errors = self.errors.get(&(wi, mon, case)).copied().unwrap_or(0);
            let mut status = if errors > 0 { format!("{status} ({errors} ops failed)") } else { status.to_string() };
            if mon == Monitor::Ours && case == Case::AgentDenied {
                let (refused, ops) = self.refused.get(&(wi, mon, case)).copied().unwrap_or((0, 0));
                if refused == ops {
                    let _ = write!(status, " (all {ops} refused)");
                } else {
                    let _ = write!(status, " (only {refused} of {ops} refused)");
                }
            }
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
        for w in &self.workloads {
            let _ = writeln!(md, "- `{}`: {}", w.name, w.what);
        }
        let _ = writeln!(
            md,
            "\nCases: `loaded` = the daemon enforcing a policy whose agents (`{AGENT}`, `{DENY_AGENT}`) have \
             no process; `non-agent` = the same with an agent process alive, the load generator not an \
             agent; `agent-allowed` = the load generator is the agent `{AGENT}`, every operation allowed \
             (writable work directory, `127.0.0.1:*` allowed, `GET` among the default HTTP methods); \
             `agent-refused-alert` = the agent opens a file outside its writable directory with action \
             `alert`: every operation is a violation event; `agent-refused-deny` = the load generator is \
             the agent `{DENY_AGENT}` (action `deny`, only `127.0.0.1:{DENY_PORT}` allowed), its connect or \
             sendto to its own loopback listener's port (unlisted) is refused with EPERM before any \
             packet leaves: every operation is a violation event. For auditd and bpftrace the same \
             cases (they cannot refuse: the refused-deny operations go through there; see the peer \
             records for what their rules record)."
        );
        let _ = writeln!(md, "\nNo agent-refused case:");
        for (w, why) in REFUSED_NOT_APPLICABLE {
            let _ = writeln!(md, "- `{w}`: {why}");
        }

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
        if !self.denied.is_empty() {
            let _ = writeln!(
                md,
                "\nagent-monitor, agent-refused-deny (one violation event per refused operation; the lost counter \
                 above is the daemon's, for all its events):\n\n\
                 | workload | operations refused (EPERM) | events in the log |\n| --- | ---: | ---: |"
            );
            for (w, (refused, events)) in &self.denied {
                let _ = writeln!(md, "| {w} | {refused} | {events} |");
            }
        }

        self.markdown_event_path(&mut md);

        if !self.peer_records.is_empty() {
            let _ = writeln!(
                md,
                "\n## Peer records (what their rules record per workload and case)\n\n\
                 auditd: SYSCALL records with the bench's key, counted after every run. bpftrace: output \
                 lines by probe and agent comm, counted when it exits; a non-agent's operations never match \
                 its comm filter. The open refused-alert rows are the events-delivered table's.\n\n\
                 | workload | monitor | case | operations | records | records/op |\n\
                 | --- | --- | --- | ---: | ---: | ---: |"
            );
            for (&(wi, m, case), &(ops, records)) in &self.peer_records {
                let per = if ops > 0 { records as f64 / ops as f64 } else { 0.0 };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {ops} | {records} | {per:.3} |",
                    self.workloads[wi].name,
                    m.name(),
                    case.name()
                );
            }
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
                .map(|(p, wi, c)| format!("{p:.1} % of one core during {} {}", self.workloads[wi].name, c.name()))
                .unwrap_or_else(|| "-".into())
        );

        let _ = writeln!(md, "\n## Not measured yet\n");
        for n in &self.not_measured {
            let _ = writeln!(md, "- {n}");
        }
        if self.not_measured.is_empty() {
            let _ = writeln!(md, "- nothing of issue 7's list");
        }
        md
    }

    /// (the highest offered rate of a step without loss, the lowest offered rate with loss above it).
    fn zero_loss_rate(&self) -> Option<(f64, Option<f64>)> {
        let best = self.event_path.iter().filter(|s| s.zero_loss()).map(|s| s.offered).reduce(f64::max)?;
        let first_loss =
            self.event_path.iter().filter(|s| !s.zero_loss() && s.offered > best).map(|s| s.offered).reduce(f64::min);
        Some((best, first_loss))
    }

    fn markdown_event_path(&self, md: &mut String) {
        if self.event_path.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Event path (zero loss and the loss curve)\n");
        let _ = writeln!(
            md,
            "One daemon start; the agent `{AGENT}` (action `alert`) opens a file outside its writable \
             directory (one `file.write` violation event per open) from {EVENT_THREADS} threads, paced \
             together to the requested rate (`max`: unpaced) for {EVENT_STEP_SECS} s a step; then up to \
             {EVENT_BISECT} steps bisect between the fastest step without loss and the first with loss. \
             Offered = opens/s the load generator achieved; in the log = the step's events in the events \
             log once it stopped growing; lost = the step's delta of `agent_monitor_events_lost_total`, \
             kernel drops = of `agent_monitor_kernel_drops_total` by reason (the daemon's copies of the \
             kernel's counters, read {:.1} s after the log settled). The ring buffer holds 4 MiB \
             (about 6800 events of 616 bytes).\n",
            METRICS_REFRESH.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| step | requested (events/s) | offered (events/s) | operations | in the log | lost | kernel drops \
             | missing | daemon CPU (% of a core) | drain after the load (s) | zero loss |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"
        );
        for (k, st) in self.event_path.iter().enumerate() {
            let drops: Vec<String> = st.kernel_drops.iter().map(|(r, v)| format!("{r} {v}")).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} |",
                k + 1,
                if st.requested == 0 { "max".to_string() } else { st.requested.to_string() },
                st.offered,
                st.ops,
                st.delivered,
                st.lost,
                if drops.is_empty() { "-".to_string() } else { drops.join(", ") },
                st.ops.saturating_sub(st.delivered),
                st.cpu_percent,
                st.drain_s,
                if st.zero_loss() { "yes" } else { "no" }
            );
        }
        match self.zero_loss_rate() {
            Some((rate, first)) => {
                let _ = writeln!(
                    md,
                    "\nHighest offered rate with zero loss: **{rate:.0} events/s**{}.",
                    first.map(|f| format!("; the first step with loss offered {f:.0} events/s")).unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(md, "\nNo step was without loss.");
            }
        }
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
                ("workload", J::S(self.workloads[wi].name.into())),
                ("monitor", J::S(mon.name().into())),
                ("case", J::S(case.name().into())),
                ("ops_per_run", J::N(self.n[wi] as f64)),
                ("median_ns_per_op", J::N(med)),
                ("ns_per_op_per_round", J::A(per_round)),
                ("ratio", stats(&ratios)),
                ("failed_ops", J::N(self.errors.get(&(wi, mon, case)).copied().unwrap_or(0) as f64)),
                ("refused_ops", J::N(self.refused.get(&(wi, mon, case)).map_or(0, |r| r.0) as f64)),
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
                ("workload", J::S(self.workloads[wi].name.into())),
                ("case", J::S(c.name().into())),
                ("cpu_percent", J::N(if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 })),
            ])
        });
        let denied = self.denied.iter().map(|(w, (refused, events))| {
            J::O(vec![
                ("workload", J::S(w.to_string())),
                ("refused_ops", J::N(*refused as f64)),
                ("events", J::N(*events as f64)),
            ])
        });
        let peer_records = self.peer_records.iter().map(|(&(wi, m, case), &(ops, records))| {
            J::O(vec![
                ("workload", J::S(self.workloads[wi].name.into())),
                ("monitor", J::S(m.name().into())),
                ("case", J::S(case.name().into())),
                ("ops", J::N(ops as f64)),
                ("records", J::N(records as f64)),
            ])
        });
        let steps = self.event_path.iter().map(|st| {
            J::O(vec![
                (
                    "requested_events_per_s",
                    if st.requested == 0 { J::S("max".into()) } else { J::N(st.requested as f64) },
                ),
                ("offered_events_per_s", J::N(st.offered)),
                ("secs", J::N(st.secs)),
                ("ops", J::N(st.ops as f64)),
                ("delivered", J::N(st.delivered as f64)),
                ("lost", J::N(st.lost as f64)),
                (
                    "kernel_drops",
                    J::A(
                        st.kernel_drops
                            .iter()
                            .map(|(r, v)| J::O(vec![("reason", J::S(r.clone())), ("count", J::N(*v as f64))]))
                            .collect(),
                    ),
                ),
                ("daemon_cpu_percent", J::N(st.cpu_percent)),
                ("drain_s", J::N(st.drain_s)),
                ("zero_loss", J::S(if st.zero_loss() { "yes" } else { "no" }.into())),
            ])
        });
        let (zero, first_loss) = self.zero_loss_rate().map_or((None, None), |(z, f)| (Some(z), f));
        let event_path = J::O(vec![
            ("threads", J::N(EVENT_THREADS as f64)),
            ("step_secs", J::N(EVENT_STEP_SECS)),
            ("steps", J::A(steps.collect())),
            ("zero_loss_events_per_s", num(zero)),
            ("first_loss_events_per_s", num(first_loss)),
        ]);
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
            ("denied_events", J::A(denied.collect())),
            ("peer_records", J::A(peer_records.collect())),
            ("event_path", event_path),
            (
                "no_refused_case",
                J::O(REFUSED_NOT_APPLICABLE.iter().map(|(w, why)| (*w, J::S(why.to_string()))).collect()),
            ),
            ("not_measured", J::A(self.not_measured.iter().map(|s| J::S(s.clone())).collect())),
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

/// Names of the BPF programs loaded in the kernel (`bpftool prog show`, Debian's `bpftool`;
/// without it nothing is checked and the bench says so on stderr).
fn loaded_bpf_programs() -> Vec<String> {
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        eprintln!("bench: bpftool not found: BPF programs already loaded are not checked for");
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|id| id.trim().parse::<u32>().is_ok()))
        .map(|l| l.split_whitespace().skip_while(|w| *w != "name").nth(1).unwrap_or("?").to_string())
        .collect()
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

/// The daemon's loss counters from /metrics: events lost, and kernel drops by reason.
struct DropCounters {
    lost: f64,
    drops: BTreeMap<String, f64>,
}

impl DropCounters {
    fn read(daemon: &Daemon) -> Result<DropCounters> {
        let m = http_get(&daemon.metrics, "/metrics").context("reading the daemon's /metrics")?;
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

/// The sum of a Prometheus metric's samples over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The path of a shared library a binary links (`ldd`), by the start of its file name.
fn linked_lib(bin: &Path, prefix: &str) -> Option<PathBuf> {
    let out = Command::new("ldd").arg(bin).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = text.lines().filter_map(|l| l.split_once("=>")).find(|(name, _)| name.trim().starts_with(prefix))?.1;
    let path = PathBuf::from(path.split_whitespace().next()?);
    Some(fs::canonicalize(&path).unwrap_or(path))
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
    /// How far the log has been read, and the bench's records in it so far.
    read_to: u64,
    records: u64,
}

/// What the audit rules select: the agents' executables and the writable directory.
struct AuditSel<'a> {
    agent: &'a Path,
    deny_agent: &'a Path,
    work: &'a Path,
}

const AUDIT_DOC: &str = "audit filters on syscall arguments that are values, not on the memory they point to, \
                         so the connect and sendto rules record every connect/sendto of the agents' \
                         executables (allowed destinations included); `exe=` is checked when the syscall \
                         returns, so for execve it is the new image (`/usr/bin/true`, run by the non-agent's \
                         exec workload too: audit has no process-lineage filter); no rule can see SSL_write \
                         (a library call) or a write(2) on an open descriptor";

impl Auditd {
    /// The policy as audit rules: opens for write under `work` are allowed (never), other opens
    /// for write (O_WRONLY|O_RDWR|O_CREAT|O_TRUNC = 0x243) by the agent's executable recorded.
    /// audit has no comm filter: `exe=` is the closest selector (it does not follow children).
    /// Then connect and sendto of both agents' executables, forks (clone without CLONE_THREAD
    /// is what glibc's fork calls; threads use clone3) of the agent, and execs of
    /// `/usr/bin/true` (see [`AUDIT_DOC`]).
    fn rules(sel: &AuditSel) -> Vec<Vec<String>> {
        let (exe, dir) = (format!("exe={}", sel.agent.display()), format!("dir={}", sel.work.display()));
        let deny_exe = format!("exe={}", sel.deny_agent.display());
        let true_bin = fs::canonicalize("/bin/true").unwrap_or_else(|_| PathBuf::from("/usr/bin/true"));
        let true_exe = format!("exe={}", true_bin.display());
        let rule = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let always =
            |sys: &str, exe: &str| rule(&["-a", "always,exit", "-F", "arch=b64", "-S", sys, "-F", exe, "-k", AGENT]);
        vec![
            rule(&["-b", "8192"]),
            rule(&["-a", "never,exit", "-F", "arch=b64", "-S", "open,openat,creat", "-F", &dir]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "openat", "-F", &exe, "-F", "a2&0x243", "-k", AGENT]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "open", "-F", &exe, "-F", "a1&0x243", "-k", AGENT]),
            always("creat", &exe),
            always("connect", &exe),
            always("connect", &deny_exe),
            always("sendto,sendmsg", &exe),
            always("sendto,sendmsg", &deny_exe),
            always("clone,fork,vfork", &exe),
            always("execve,execveat", &true_exe),
        ]
    }

    fn rules_text(sel: &AuditSel) -> String {
        let rules = Self::rules(sel).into_iter().map(|r| format!("`auditctl {}`", r.join(" ")));
        rules.collect::<Vec<_>>().join(", ")
    }

    fn start(dir: &Path, sel: &AuditSel) -> Result<Auditd> {
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
        let mut a = Auditd { child: Some(child), log, lost_at_start: 0, read_to: 0, records: 0 };
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
        for rule in Self::rules(sel) {
            run_quiet(Command::new("auditctl").args(&rule))?;
        }
        a.lost_at_start = kernel_audit_lost();
        Ok(a)
    }

    /// SYSCALL records with the bench's key in the log so far (read on from where the last
    /// call stopped, whole lines only).
    fn records(&mut self) -> u64 {
        use std::io::{Seek, SeekFrom};
        let mut new = Vec::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.read_to)).is_ok() {
                let _ = f.read_to_end(&mut new);
            }
        }
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        self.read_to += whole as u64;
        let key = format!("key=\"{AGENT}\"");
        let text = String::from_utf8_lossy(&new[..whole]);
        self.records += text.lines().filter(|l| l.starts_with("type=SYSCALL") && l.contains(&key)).count() as u64;
        self.records
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
                              the writable directory, printf of pid, comm and path; sys_enter_connect and \
                              sys_enter_sendto of either agent comm, AF_INET destination read from user memory \
                              and tested like the policy (`am-bench`: not 127.0.0.1; `am-bench-deny`: not \
                              127.0.0.1:9); SSL_write of either agent whose plaintext starts with POST/PUT/\
                              PATCH/DELETE (not a default method); sys_enter_clone without CLONE_THREAD and \
                              sys_enter_execve by `am-bench` (its children keep its comm until they exec; the \
                              exec workload's forks count under fork); one printf per event";

/// bpftrace with the policy's filter, one output line per event, unbuffered, into a file.
struct Bpftrace {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    version: String,
}

impl Bpftrace {
    fn script(work: &Path, libssl: Option<&Path>) -> String {
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
        // Network: the destination (struct sockaddr_in) is in user memory.
        let agents = format!("(comm == \"{AGENT}\" || comm == \"{DENY_AGENT}\")");
        for (tp, arg, tag) in [("sys_enter_connect", "uservaddr", "connect"), ("sys_enter_sendto", "addr", "udp")] {
            let _ = write!(
                s,
                "tracepoint:syscalls:{tp}\n\
                 /{agents} && args->{arg} != 0/\n\
                 {{ $a = (uint64)args->{arg}; $fam = *(uint16 *)uptr($a); \
                 $port = bswap(*(uint16 *)uptr($a + 2)); $ip = *(uint32 *)uptr($a + 4);\n  \
                 if ($fam == 2 && ((comm == \"{AGENT}\" && $ip != 0x0100007f) || \
                 (comm == \"{DENY_AGENT}\" && ($ip != 0x0100007f || $port != {DENY_PORT})))) \
                 {{ printf(\"{tag} %d %s %d\\n\", pid, comm, $port); }} }}\n"
            );
        }
        if let Some(lib) = libssl {
            let _ = write!(
                s,
                "uprobe:{}:SSL_write\n/{agents}/\n\
                 {{ $m = str(uptr(arg1), 5);\n  \
                 if (strncmp($m, \"POST\", 4) == 0 || strncmp($m, \"PUT \", 4) == 0 || \
                 strncmp($m, \"PATC\", 4) == 0 || strncmp($m, \"DELE\", 4) == 0) \
                 {{ printf(\"ssl %d %s %s\\n\", pid, comm, $m); }} }}\n",
                lib.display()
            );
        }
        let _ = write!(
            s,
            "tracepoint:syscalls:sys_enter_clone\n/comm == \"{AGENT}\" && (args->clone_flags & 0x10000) == 0/\n\
             {{ printf(\"fork %d %s\\n\", pid, comm); }}\n\
             tracepoint:syscalls:sys_enter_execve\n/comm == \"{AGENT}\"/\n\
             {{ printf(\"exec %d %s\\n\", pid, comm); }}\n"
        );
        s
    }

    fn start(dir: &Path, agent: &Path, work: &Path, outside: &Path, libssl: Option<&Path>) -> Result<Bpftrace> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let (script, out, err) = (dir.join("bench.bt"), dir.join("bpftrace.out"), dir.join("bpftrace.err"));
        fs::write(&script, Self::script(work, libssl))?;
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
    /// `refused`, event lines for anything under `work`, events bpftrace says it lost, the other
    /// probes' lines by (tag = the load generator's mode, comm)).
    #[allow(clippy::type_complexity)]
    fn finish(mut self, refused: &Path, work: &Path) -> (u64, u64, u64, BTreeMap<(&'static str, &'static str), u64>) {
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
        let mut tagged = BTreeMap::new();
        for l in out.lines() {
            let mut f = l.split_whitespace();
            let (Some(tag), Some(_pid), Some(comm)) = (f.next(), f.next(), f.next()) else { continue };
            let Some(tag) = ["connect", "udp", "ssl", "fork", "exec"].into_iter().find(|t| *t == tag) else { continue };
            let Some(comm) = [AGENT, DENY_AGENT].into_iter().find(|c| *c == comm) else { continue };
            *tagged.entry((tag, comm)).or_default() += 1;
        }
        (delivered, spurious, lost, tagged)
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
        let s = Bpftrace::script(Path::new("/tmp/w"), Some(Path::new("/lib/libssl.so.3")));
        assert!(s.contains("strncmp(str(args->filename), \"/tmp/w/\", 7) != 0"), "{s}");
        assert!(s.contains("/comm == \"am-bench\" && (args->flags & 0x243) != 0"), "{s}");
        assert!(s.contains("uprobe:/lib/libssl.so.3:SSL_write"), "{s}");
        assert!(s.contains("$port != 9"), "{s}");
        assert!(s.contains("strncmp(str(args->pathname)"), "{s}");
    }
}
