//! The workloads, the cases they run in, and the load generator (`xtask/bench/load.c`) that
//! times them: built here, calibrated, run once per case and round.

use super::daemon::Measured;
use super::{kv, run_quiet, system, Bench};
use crate::{output, root, run_cmd, show, target_dir};
use agent_monitor_e2e::Daemon;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    /// The load generator's mode.
    pub mode: &'static str,
    pub what: &'static str,
    /// Operations of the calibration run (no monitor), and the most a run may do.
    pub calib: u64,
    pub max: u64,
    /// The agent case where every operation is refused or a violation, if there is one.
    pub refused: Option<Case>,
}

impl Workload {
    /// The cases of the state "agent processes alive", in their order.
    pub fn agent_cases(&self) -> Vec<Case> {
        let mut v = vec![Case::NonAgent, Case::AgentAllowed];
        v.extend(self.refused);
        v
    }
}

/// `open` stays first (the delivery counts and the peers' open rules use index 0).
pub const WORKLOADS: [Workload; 7] = [
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

/// Workloads with no agent-refused case, and why.
pub const REFUSED_NOT_APPLICABLE: &[(&str, &str)] = &[
    ("write", "write(2) on a descriptor already open is not checked again (the open is)"),
    (
        "SSL_write",
        "a refused method in SSL_write cannot be refused (a uprobe cannot fail the call): `deny` falls back \
         to kill",
    ),
    ("fork", "not applicable: the policy has nothing to refuse in a fork"),
    ("exec", "not applicable: the policy has nothing to refuse in an exec"),
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Monitor {
    None,
    Ours,
    Auditd,
    Bpftrace,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::None => "none",
            Monitor::Ours => "agent-monitor",
            Monitor::Auditd => "auditd",
            Monitor::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Case {
    Baseline,
    Loaded,
    NonAgent,
    AgentAllowed,
    AgentRefused,
    AgentDenied,
}

impl Case {
    pub fn name(self) -> &'static str {
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
}

/// A row of the results: (index into the workloads, monitor, case).
pub type Key = (usize, Monitor, Case);

/// Compile the load generator into `target/bench/load`, with OpenSSL (`SSL_write`) when its
/// headers are there (Debian package libssl-dev, installed with the bench's packages); returns
/// whether it has it.
pub fn build_load() -> Result<(PathBuf, Result<(), String>)> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let bin = dir.join("load");
    let src = root().join("xtask/bench/load.c");
    let cc = which::which("cc").context("no C compiler `cc` (Debian package gcc) for xtask/bench/load.c")?;
    let headers = || Path::new("/usr/include/openssl/ssl.h").exists();
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
pub fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"]);
    cmd.arg(&key).arg("-out").arg(&cert).args(["-days", "2", "-subj", "/CN=am-bench"]);
    run_quiet(&mut cmd)?;
    Ok((cert, key))
}

impl Bench {
    /// Operations per run: what takes `run_secs` with no monitor.
    pub(super) fn calibrate(&mut self) -> Result<()> {
        for w in self.r.workloads.clone() {
            let (ns, _, _) = self.load_run(w, Case::Baseline, w.calib)?;
            let n = ((self.opts.run_secs * 1e9 / ns) as u64).clamp(20, w.max);
            eprintln!("bench: calibrate {}: {ns:.0} ns/op, {n} ops per run", w.name);
            self.r.n.push(n);
        }
        Ok(())
    }

    /// One run of one workload in one case; the round's sample is the fastest of its runs.
    /// Returns the operations refused (EPERM).
    pub(super) fn measure(
        &mut self,
        round: usize,
        i: usize,
        w: Workload,
        monitor: Monitor,
        case: Case,
        daemon: Option<&Daemon>,
    ) -> Result<u64> {
        let foreign = system::foreign_daemons(daemon.map(|d| d.pid()));
        let cpu0 = daemon.and_then(|d| d.cpu_secs(self.clk_tck));
        let t = Instant::now();
        let (ns, errors, refused) = self.load_run(w, case, self.r.n[i])?;
        let wall = t.elapsed().as_secs_f64();
        let r = &mut self.r;
        if let (Some(d), Some(c0)) = (daemon, cpu0) {
            if let Some(c1) = d.cpu_secs(self.clk_tck) {
                let e = r.cpu_load.entry((i, case)).or_default();
                e.0 += c1 - c0;
                e.1 += wall;
            }
        }
        r.foreign_runs.1 += 1;
        if foreign > 0 {
            r.foreign_runs.0 += 1;
        }
        let key = (i, monitor, case);
        let slot = &mut r.samples.entry(key).or_insert_with(|| vec![None; self.opts.rounds])[round];
        *slot = Some(slot.map_or(ns, |old| old.min(ns)));
        *r.errors.entry(key).or_default() += errors;
        let e = r.refused.entry(key).or_default();
        e.0 += refused;
        e.1 += r.n[i];
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
}
