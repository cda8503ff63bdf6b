//! The peers, on the same workloads and cases: Debian's auditd with rules equivalent to the
//! policy as far as audit can filter, and a bpftrace script with the policy's filters.

use super::system::linked_lib;
use super::workloads::{Case, Monitor};
use super::{run_quiet, settle, Bench, AGENT, DENY_AGENT, DENY_PORT};
use agent_monitor_e2e::{stop_child, Signal};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

impl Bench {
    /// Say which peers can run here (the bench's packages installed them where they could).
    pub(super) fn find_peers(&mut self) {
        let have = |p: &str| which::which(p).is_ok();
        self.auditd_ok = have("auditd") && have("auditctl");
        if !self.auditd_ok {
            self.r.peers.insert(Monitor::Auditd, "not installed (Debian package auditd)".into());
        } else if let Some(pid) = audit_daemon_pid() {
            self.auditd_ok = false;
            self.r.peers.insert(Monitor::Auditd, format!("skipped: an audit daemon (pid {pid}) already runs here"));
        }
        self.bpftrace_ok = have("bpftrace");
        if !self.bpftrace_ok {
            self.r.peers.insert(Monitor::Bpftrace, "not installed (Debian package bpftrace)".into());
        }
    }

    pub(super) fn auditd_round(&mut self, round: usize) -> Result<()> {
        let sel = AuditSel { agent: &self.agent, deny_agent: &self.deny_agent, work: &self.work };
        let mut auditd = Auditd::start(&self.dir.join("auditd"), &sel)?;
        let rules_text = Auditd::rules_text(&sel);
        for _ in 0..self.opts.reps {
            for (i, w) in self.r.workloads.clone().iter().enumerate() {
                for case in w.agent_cases() {
                    let before = auditd.records();
                    self.measure(round, i, *w, Monitor::Auditd, case, None)?;
                    settle(&auditd.log);
                    let got = auditd.records().saturating_sub(before);
                    if i == 0 {
                        self.delivered(Monitor::Auditd, case, self.r.n[i], got);
                    }
                    let e = self.r.peer_records.entry((i, Monitor::Auditd, case)).or_default();
                    e.0 += self.r.n[i];
                    e.1 += got;
                }
            }
        }
        let lost = auditd.lost();
        auditd.stop();
        let d = self.r.delivery.entry(Monitor::Auditd).or_default();
        d.lost += lost;
        self.r
            .peers
            .entry(Monitor::Auditd)
            .or_insert_with(|| format!("auditd {} (Debian), rules: {rules_text}; {AUDIT_DOC}", audit_version()));
        Ok(())
    }

    pub(super) fn bpftrace_round(&mut self, round: usize) -> Result<()> {
        let libssl = self.r.workloads.iter().any(|w| w.mode == "ssl").then(|| linked_lib(&self.load, "libssl.so"));
        let libssl = libssl.flatten();
        let bt =
            Bpftrace::start(&self.dir.join("bpftrace"), &self.agent, &self.work, &self.outside, libssl.as_deref())?;
        for _ in 0..self.opts.reps {
            for (i, w) in self.r.workloads.clone().iter().enumerate() {
                for case in w.agent_cases() {
                    self.measure(round, i, *w, Monitor::Bpftrace, case, None)?;
                }
            }
        }
        // bpftrace hands events to its output lazily: count once it has drained them, on exit.
        let version = bt.version.clone();
        let (delivered, spurious, lost, tagged) = bt.finish(&self.outside.join("f"), &self.work);
        let i = 0; // open
        let d = self.r.delivery.entry(Monitor::Bpftrace).or_default();
        d.ops += self.opts.reps as u64 * self.r.n[i];
        d.delivered += delivered;
        d.spurious += spurious;
        d.lost += lost;
        // The other workloads' lines, by probe (workload) and comm (case).
        for (i, w) in self.r.workloads.clone().iter().enumerate() {
            for case in w.agent_cases() {
                let got = match (i, case) {
                    (0, Case::AgentRefused) => delivered,
                    (0, Case::AgentAllowed) => spurious,
                    (0, _) => 0,
                    (_, Case::AgentAllowed) => tagged.get(&(w.mode, AGENT)).copied().unwrap_or(0),
                    (_, Case::AgentDenied) => tagged.get(&(w.mode, DENY_AGENT)).copied().unwrap_or(0),
                    _ => 0,
                };
                let e = self.r.peer_records.entry((i, Monitor::Bpftrace, case)).or_default();
                e.0 += self.opts.reps as u64 * self.r.n[i];
                e.1 += got;
            }
        }
        let ssl_doc = match &libssl {
            Some(lib) => format!("uprobe {}:SSL_write", lib.display()),
            None => "no SSL_write probe".into(),
        };
        self.r.peers.entry(Monitor::Bpftrace).or_insert_with(|| {
            format!("{version} (Debian), -B none, one line per event to a file; script: {BPF_SCRIPT_DOC} ({ssl_doc})")
        });
        Ok(())
    }

    /// A peer's records after one run: expected one per op in the refused case, none otherwise.
    fn delivered(&mut self, m: Monitor, case: Case, ops: u64, got: u64) {
        let d = self.r.delivery.entry(m).or_default();
        if case == Case::AgentRefused {
            d.ops += ops;
            d.delivered += got;
        } else {
            d.spurious += got;
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
            stop_child(&mut c, Signal::SIGTERM, Duration::from_secs(10));
            let _ = run_quiet(Command::new("auditctl").args(["-e", "0"]));
        }
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        self.shutdown();
    }
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
            stop_child(&mut c, Signal::SIGINT, Duration::from_secs(10));
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
            stop_child(&mut c, Signal::SIGINT, Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
