//! `agent-monitor run`: load, enforce, record, reload, until told to stop.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_monitor_common::Event;
use anyhow::{anyhow, bail, Context as _};
use aya::maps::RingBuf;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::{
    bpf::{maps as kmaps, tls::Owner, Kernel},
    cli::RunArgs,
    events::{log::EventLog, reader, Decoder, EventRecord},
    metrics::{self, Metrics},
    policy::{self, CompiledPolicy, Policy, TlsUprobes},
    sinks::webhook::WebhookSink,
};

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9750";
pub const DEFAULT_EVENTS_FILE: &str = "/var/log/agent-monitor/events.jsonl";
/// How often allowed host names are resolved again.
pub const HOST_REFRESH: Duration = Duration::from_secs(2);

/// Where the policy comes from, so that a reload reads the same source.
#[derive(Clone, Debug)]
pub enum PolicySource {
    File(PathBuf),
    Embedded,
}

impl PolicySource {
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::File(p) => Some(p),
            PolicySource::Embedded => None,
        }
    }

    pub fn resolve(config: Option<PathBuf>) -> Self {
        match config {
            Some(p) => PolicySource::File(p),
            None if Path::new(policy::DEFAULT_CONFIG_PATH).exists() => {
                PolicySource::File(policy::DEFAULT_CONFIG_PATH.into())
            }
            None => PolicySource::Embedded,
        }
    }

    pub fn load(&self) -> Result<Policy, Vec<policy::Diagnostic>> {
        match self {
            PolicySource::File(p) => policy::load(p),
            PolicySource::Embedded => policy::parse(policy::DEFAULT_POLICY_NAME, policy::DEFAULT_POLICY),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Embedded => policy::DEFAULT_POLICY_NAME.to_string(),
        }
    }
}

/// State shared by the daemon's tasks.
pub struct Shared {
    pub kernel: Mutex<Kernel>,
    /// The daemon's own paths (configuration, events log, pins, control socket, binary).
    pub protected: Vec<kmaps::Protected>,
    pub decoder: Mutex<Decoder>,
    pub metrics: Arc<Metrics>,
    /// The events log's path ("-": stdout).
    pub events_path: String,
    /// The events log: its sink and its hash chain (see `audit`).
    pub log: Mutex<EventLog>,
    pub compiled: Mutex<CompiledPolicy>,
    /// The current resolution of the policy's host names.
    pub resolved: Mutex<Vec<crate::policy::NetRule>>,
    /// Agent processes seen doing TLS the daemon cannot look into.
    pub tls_invisible: Mutex<std::collections::HashSet<u32>>,
    pub webhooks: Vec<WebhookSink>,
    /// Cgroups registered by `agent-monitor exec` (cgroup path, agent name): dynamic selectors
    /// kept across reloads.
    pub registered: Mutex<Vec<(String, String)>>,
    pub holds: crate::enforce_holds::Holds,
    pub hold_timeout: Duration,
    /// Last kernel statistics per program, to turn them into counter increments.
    pub prog_stats: Mutex<std::collections::HashMap<String, (u64, f64)>>,
    /// When the kernel counts them (`[daemon] bpf_stats`).
    pub bpf_stats: crate::bpf::stats::StatsSampler,
    /// Violation lines in the daemon's own log (the journal), rate-limited.
    pub journal: Mutex<JournalLimiter>,
    /// `[daemon] tls_uprobes`: where the TLS libraries agents map are hooked.
    pub tls_uprobes: TlsUprobes,
}

/// The per-agent TLS hooks hold a few perf event fds per agent instance: the soft limit on open
/// files (1024 under systemd) goes up to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit(2) on a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                warn!(soft = lim.rlim_cur, "could not raise the open-files limit");
            }
        }
    }
}

/// After hooking (or failing to hook) `tried` agent processes: those that map a hooked TLS
/// library are marked visible (a handshake begun before the hooks would not have marked them),
/// then all of them get the token, which lets their waiting TLS handshakes go. One that could
/// not be hooked is let go too (its handshake counts as invisible): waiting would hang it.
fn release_tls_handshakes(k: &mut Kernel, hooked: &[u32], tried: &[u32], token: u32) {
    let visible: Vec<u32> = hooked
        .iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
                maps.lines().filter_map(|l| l.split_whitespace().nth(5)).any(|p| k.tls_libs.contains(Path::new(p)))
            })
        })
        .collect();
    kmaps::mark_tls_visible(&mut k.ebpf, &visible);
    kmaps::set_tls_token(&mut k.ebpf, tried, token);
}

/// At most `JOURNAL_LINES_PER_SEC` violations a second become a log line; the events log has
/// every one. A line costs more than the rest of an event's path (formatting plus a write to
/// stderr: ~1.3 us against ~0.75 us), and journald would drop a flood at its own rate limit,
/// arbitrarily and silently; here the first lines of each second are kept and the rest counted.
pub struct JournalLimiter {
    second: Instant,
    lines: u32,
    suppressed: u64,
}

pub const JOURNAL_LINES_PER_SEC: u32 = 20;

pub enum Admit {
    Line,
    /// A line, after saying how many were left out in the seconds before.
    LineAfter(u64),
    Quiet,
}

impl Default for JournalLimiter {
    fn default() -> Self {
        JournalLimiter { second: Instant::now(), lines: 0, suppressed: 0 }
    }
}

impl JournalLimiter {
    pub fn admit(&mut self) -> Admit {
        let now = Instant::now();
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.lines = 0;
        }
        if self.lines >= JOURNAL_LINES_PER_SEC {
            self.suppressed += 1;
            return Admit::Quiet;
        }
        self.lines += 1;
        match std::mem::take(&mut self.suppressed) {
            0 => Admit::Line,
            n => Admit::LineAfter(n),
        }
    }
}

impl Shared {
    /// Count and write one event (`rec`, decoded from `ev`). The events log is the complete
    /// record: a failed write is counted and logged, never silently dropped.
    pub fn record(&self, ev: &Event, rec: &EventRecord) {
        let written = self.log.lock().unwrap().record(&self.metrics, ev, rec);
        self.sink_result(written);
        if rec.verdict == "violation" {
            let admit = self.journal.lock().unwrap().admit();
            if let Admit::LineAfter(suppressed) = admit {
                warn!(
                    suppressed,
                    "more violations than the journal lines allowed per second: those are in the events log only"
                );
            }
            if !matches!(admit, Admit::Quiet) {
                warn!(
                    agent = rec.agent,
                    pid = rec.pid,
                    kind = rec.kind,
                    target = rec.target,
                    action = rec.action,
                    "violation"
                );
            }
            for w in &self.webhooks {
                w.send(rec);
            }
        }
    }

    /// Seal a JSON object into the audit chain and append it to the events log (and the live
    /// stream).
    /// Buffered: the reader flushes once per ring-buffer batch (`flush`), other writers right
    /// after writing.
    pub fn write_line(&self, json: &str) {
        let written = self.log.lock().unwrap().write_json(json);
        self.sink_result(written);
    }

    pub fn flush(&self) {
        let flushed = self.log.lock().unwrap().flush();
        self.sink_result(flushed);
    }

    fn sink_result(&self, r: io::Result<()>) {
        if let Err(e) = r {
            self.metrics.sink_errors.with_label_values(&["events_file"]).inc();
            error!(error = %e, "writing the events log failed");
        }
    }

    /// A `policy.load` record: which policy is enforcing from here on.
    pub fn record_policy(&self, source: &PolicySource, compiled: &CompiledPolicy) {
        let d = self.decoder.lock().unwrap();
        let rec = serde_json::json!({
            "ts": crate::events::decode::rfc3339(now_ns()),
            "id": d.next_id(),
            "kind": "policy.load",
            "policy": source.describe(),
            "policy_hash": compiled.hash,
            "agents": compiled.agents.len(),
        });
        drop(d);
        self.write_line(&rec.to_string());
        self.flush();
    }

    /// Reopen the events log (after logrotate moved it away); the chain goes on in the new file.
    pub fn reopen_sink(&self) {
        if self.events_path == "-" {
            return;
        }
        match open_sink(&self.events_path) {
            Ok(s) => self.log.lock().unwrap().sink = s,
            Err(e) => {
                self.metrics.sink_errors.with_label_values(&["events_file"]).inc();
                error!(error = %format!("{e:#}"), "reopening the events log failed; still writing the old file");
            }
        }
    }

    /// SIGKILL every process of an agent instance. The kernel already killed the offender and
    /// kills any other member it sees; this reaches the members that make no hooked call.
    pub fn kill_instance(&self, run_id: u64) {
        let own = std::process::id();
        for _ in 0..20 {
            let members: Vec<u32> = {
                let k = self.kernel.lock().unwrap();
                kmaps::tracked(&k.ebpf).into_iter().filter(|(_, st)| st.run_id == run_id).map(|(pid, _)| pid).collect()
            };
            let alive: Vec<u32> =
                members.into_iter().filter(|&p| p != own && Path::new(&format!("/proc/{p}")).exists()).collect();
            if alive.is_empty() {
                return;
            }
            for pid in alive {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(run = format!("{run_id:016x}"), "agent instance still has live processes after repeated SIGKILL");
    }

    /// A person's (or the timeout's) decision on a held action. `approver` is (uid, name).
    pub fn decide_hold(
        &self,
        id: &str,
        approve: bool,
        grant: crate::enforce_holds::Grant,
        approver: (u32, String),
        outcome: &str,
    ) -> anyhow::Result<Value> {
        use crate::enforce_holds::Grant;
        let h = self.holds.take(id)?;
        self.metrics.holds_pending.set(self.holds.len() as i64);
        self.metrics.hold_wait.observe(h.since.elapsed().as_secs_f64());
        let mut granted = Value::Null;
        if approve {
            if let Some(cookie) = h.socket {
                // Let exactly the held segment through, then push TCP's queue so it leaves now
                // rather than at the next retransmission timer, then continue the writer.
                {
                    let mut k = self.kernel.lock().unwrap();
                    kmaps::approve_socket(&mut k.ebpf, cookie)?;
                }
                if let Err(e) = crate::enforce_holds::push_socket(h.pid, cookie) {
                    warn!(hold = h.id, error = %format!("{e:#}"), "could not push the approved request; TCP sends it at its next retransmission");
                }
            }
            if h.paused {
                // The call was stopped at its entry: continuing it sends the request, once.
                unsafe { libc::kill(h.pid as i32, libc::SIGCONT) };
                granted = json!("the paused call continues, once");
            }
            // A held request approved as a grant: expiry in ns since boot, top bit = once.
            let (window, once) = match grant {
                Grant::Once => (crate::enforce_holds::ONCE_WINDOW, 1u64 << 63),
                Grant::For(d) => (d, 0),
            };
            let value = (kmaps::boot_clock_ns() + window.as_nanos() as u64) | once;
            let granted_text = |prep: &str| match grant {
                Grant::Once => json!(format!("one {} {prep} {} within {}s", h.kind, h.target, window.as_secs())),
                Grant::For(d) => json!(format!("{} {prep} {} for {}s", h.kind, h.target, d.as_secs())),
            };
            if let Some(key) = h.file_grant {
                let mut k = self.kernel.lock().unwrap();
                kmaps::add_file_grant(&mut k.ebpf, key, value)?;
                granted = granted_text("of");
            }
            if let Some(key) = h.grant {
                let mut k = self.kernel.lock().unwrap();
                kmaps::add_grant(&mut k.ebpf, key, value)?;
                granted = granted_text("to");
            }
        } else if h.paused {
            // The paused call must never run: the instance dies.
            self.kill_instance(h.run_id);
        }
        self.metrics.hold_decisions.with_label_values(&[outcome]).inc();
        let rec = json!({
            "ts": crate::events::decode::rfc3339(now_ns()),
            "id": self.decoder.lock().unwrap().next_id(),
            "kind": "hold.decision",
            "hold": h.id,
            "agent": h.agent,
            "pid": h.pid,
            "target": h.target,
            "detail": h.detail,
            "decision": if approve { "approved" } else { "denied" },
            "outcome": outcome,
            "granted": granted,
            "approver_uid": approver.0,
            "approver": approver.1,
            "waited_secs": h.since.elapsed().as_secs(),
        });
        self.write_line(&rec.to_string());
        self.flush();
        info!(hold = h.id, approve, approver = approver.1, "hold decided");
        Ok(rec)
    }

    /// Deny the holds nobody answered in time.
    pub fn expire_holds(&self) {
        for id in self.holds.expired(self.hold_timeout) {
            if let Err(e) =
                self.decide_hold(&id, false, crate::enforce_holds::Grant::Once, (u32::MAX, "timeout".into()), "timeout")
            {
                warn!(hold = id, error = %format!("{e:#}"), "expiring a hold failed");
            }
        }
    }

    /// Agent processes a previous daemon left stopped on a hold: nobody can approve them now.
    pub fn deny_stale_holds(&self) {
        let tracked = {
            let k = self.kernel.lock().unwrap();
            kmaps::tracked(&k.ebpf)
        };
        for (pid, st) in tracked {
            let stopped = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('T')))
                .unwrap_or(false);
            if stopped {
                warn!(pid, "an agent process was left paused on a hold by a previous daemon: denied (killed)");
                self.metrics.hold_decisions.with_label_values(&["restart"]).inc();
                self.kill_instance(st.run_id);
            }
        }
    }

    /// `agent-monitor exec` asks for its command's cgroup to select `agent`: the command is
    /// that agent from its first instruction (the exec hook matches the cgroup).
    ///
    /// `caller` (the `exec` process) has the TLS hooks before it starts the command, so the
    /// command and its descendants inherit them at fork.
    pub fn register_exec(&self, agent: &str, cgroup: &str, caller: u32) -> anyhow::Result<()> {
        let id = self.compiled.lock().unwrap().agent_id(agent).ok_or_else(|| anyhow!("no agent named {agent:?}"))?;
        let root = kmaps::cgroup2_root().ok_or_else(|| anyhow!("no cgroup v2 hierarchy"))?;
        let dir = root.join(cgroup.trim_start_matches('/'));
        let ino = std::os::unix::fs::MetadataExt::ino(
            &fs::metadata(&dir).with_context(|| format!("cgroup {}", dir.display()))?,
        );
        {
            let mut k = self.kernel.lock().unwrap();
            kmaps::add_cgroup_selector(&mut k.ebpf, ino, id)?;
            if let Some(t) = k.agent_tls.as_mut().filter(|_| caller != 0) {
                t.arm(Owner::Exec(caller), &[caller]);
            }
        }
        self.registered.lock().unwrap().push((cgroup.to_string(), agent.to_string()));
        info!(agent, cgroup, "exec instance registered");
        Ok(())
    }

    pub fn unregister_exec(&self, cgroup: &str, caller: u32) {
        self.registered.lock().unwrap().retain(|(c, _)| c != cgroup);
        if let Some(t) = self.kernel.lock().unwrap().agent_tls.as_mut() {
            t.disarm(Owner::Exec(caller));
        }
        if let Some(root) = kmaps::cgroup2_root() {
            if let Ok(m) = fs::metadata(root.join(cgroup.trim_start_matches('/'))) {
                let mut k = self.kernel.lock().unwrap();
                kmaps::remove_cgroup_selector(&mut k.ebpf, std::os::unix::fs::MetadataExt::ino(&m));
            }
        }
    }

    /// The registered `exec` cgroups as selectors of `compiled` (cgroup inode, agent id). An
    /// instance whose agent the new policy no longer has loses its registration (its running
    /// processes keep the agent they are); said in the log.
    fn exec_selectors(&self, compiled: &CompiledPolicy) -> Vec<(u64, u32)> {
        let root = kmaps::cgroup2_root();
        let mut regs = self.registered.lock().unwrap();
        let mut out = Vec::new();
        regs.retain(|(cgroup, agent)| {
            let Some(id) = compiled.agent_id(agent) else {
                warn!(agent, cgroup, "the reloaded policy has no such agent: exec instance no longer selected");
                return false;
            };
            let ino = root
                .as_ref()
                .and_then(|r| fs::metadata(r.join(cgroup.trim_start_matches('/'))).ok())
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            match ino {
                Some(ino) => {
                    out.push((ino, id));
                    true
                }
                None => false,
            }
        });
        out
    }

    /// Resolve the policy's host names again and update the kernel when an address changed.
    pub fn refresh_hosts(&self) {
        let (hosts, net) = {
            let c = self.compiled.lock().unwrap();
            (c.hosts.clone(), c.net.clone())
        };
        if hosts.is_empty() {
            return;
        }
        let resolved = kmaps::resolve_hosts(&hosts);
        let mut current = self.resolved.lock().unwrap();
        if *current == resolved {
            return;
        }
        let mut k = self.kernel.lock().unwrap();
        match kmaps::apply_net(&mut k.ebpf, &net, &resolved) {
            Ok(()) => {
                info!(addresses = resolved.len(), "allowed host names re-resolved");
                *current = resolved;
            }
            Err(e) => error!(error = %format!("{e:#}"), "updating resolved host addresses failed"),
        }
    }

    /// Hook the TLS libraries agent processes actually map (a vendored or private copy of
    /// libssl is a different file from the system's, with its own uprobes).
    fn hook_mapped_tls_libs(&self, tracked: &[(u32, agent_monitor_common::ProcState)]) {
        let mut found = std::collections::BTreeSet::new();
        for (pid, _) in tracked {
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
            for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
                let name = path.rsplit('/').next().unwrap_or_default();
                if crate::bpf::loader::TLS_LIBS.iter().any(|(prefix, _)| name.starts_with(prefix)) {
                    found.insert(PathBuf::from(path));
                }
            }
        }
        if found.is_empty() {
            return;
        }
        let mut k = self.kernel.lock().unwrap();
        let new: Vec<PathBuf> = found.into_iter().filter(|lib| !k.tls_libs.contains(lib)).collect();
        if !new.is_empty() {
            k.hook_tls_libs(&new);
        }
    }

    /// Hook the TLS of a new agent instance's first process (its exec event): as soon as the
    /// daemon reads it, before the process gets far (`bpf::tls`).
    pub fn hook_instance_tls(&self, run_id: u64, pid: u32) {
        let mut k = self.kernel.lock().unwrap();
        let Some(t) = k.agent_tls.as_mut() else { return };
        let token = t.token;
        let hooked = t.arm(Owner::Instance(run_id), &[pid]);
        self.metrics.tls_hooked.set(t.armed_processes() as i64);
        release_tls_handshakes(&mut k, &hooked, &[pid], token);
    }

    /// Per-agent TLS hooks: hook every agent process not covered yet (adopted at start or by a
    /// reload, forked before its instance was hooked, an exec event lost), and close the hooks
    /// of instances that are gone. `tracked` was read after `seen`.
    fn hook_agents_tls(&self, tracked: &[(u32, agent_monitor_common::ProcState)], seen: Instant) {
        let mut k = self.kernel.lock().unwrap();
        let Some(t) = k.agent_tls.as_mut() else { return };
        let token = t.token;
        let mut uncovered: std::collections::HashMap<u64, Vec<u32>> = Default::default();
        for (pid, st) in tracked.iter().filter(|(_, st)| st.tls_token != token) {
            uncovered.entry(st.run_id).or_default().push(*pid);
        }
        let mut hooked = Vec::new();
        let mut tried = Vec::new();
        for (run_id, pids) in uncovered {
            hooked.extend(t.arm(Owner::Instance(run_id), &pids));
            tried.extend(pids);
        }
        let live: std::collections::HashSet<u64> = tracked.iter().map(|(_, st)| st.run_id).collect();
        t.retain(seen, |owner| match owner {
            Owner::Instance(run_id) => live.contains(&run_id),
            Owner::Exec(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        });
        self.metrics.tls_hooked.set(t.armed_processes() as i64);
        let announce = !t.in_force && t.has_hooks();
        t.in_force |= announce;
        if !tried.is_empty() {
            debug!(processes = hooked.len(), of = tried.len(), "agent processes hooked for TLS");
            release_tls_handshakes(&mut k, &hooked, &tried, token);
        }
        if announce {
            // From now on a new agent process's TLS handshake waits until it is hooked.
            if let Err(e) = kmaps::set_tls_token_in_force(&mut k.ebpf, token) {
                warn!(error = %format!("{e:#}"), "per-agent TLS hooks: the kernel was not told; early handshakes do not wait");
            }
        }
    }

    /// Refresh gauges and kernel counters.
    fn refresh(&self, last_drops: &mut [u64; agent_monitor_common::stat::COUNT as usize]) {
        use agent_monitor_common::stat;
        let seen = Instant::now();
        let (tracked, stats, visible, progs) = {
            let k = self.kernel.lock().unwrap();
            (kmaps::tracked(&k.ebpf), kmaps::stats(&k.ebpf), kmaps::tls_visible(&k.ebpf), k.program_stats())
        };
        if self.tls_uprobes != TlsUprobes::Off {
            self.hook_mapped_tls_libs(&tracked);
        }
        self.hook_agents_tls(&tracked, seen);
        {
            let mut last = self.prog_stats.lock().unwrap();
            // Sampled statistics stand for ten times what the kernel counted (what ran before
            // the daemon started is taken as it is).
            let scale = self.bpf_stats.scale();
            self.metrics.bpf_stats_ratio.set(self.bpf_stats.ratio());
            for (name, runs, secs) in progs {
                let (k, (r0, s0)) = match last.get(&name) {
                    Some(prev) => (scale, *prev),
                    None => (1.0, (0, 0.0)),
                };
                let runs_delta = (runs.saturating_sub(r0) as f64 * k).round() as u64;
                self.metrics.prog_runs.with_label_values(&[&name]).inc_by(runs_delta);
                self.metrics.prog_seconds.with_label_values(&[&name]).inc_by((secs - s0).max(0.0) * k);
                last.insert(name, (runs, secs));
            }
        }
        let names: Vec<String> = self.compiled.lock().unwrap().names_by_id();
        let mut counts = vec![0i64; names.len() + 1];
        let mut vis = vec![(0i64, 0i64); names.len() + 1];
        let mut invisible = self.tls_invisible.lock().unwrap();
        invisible.retain(|pid| tracked.iter().any(|(p, _)| p == pid));
        for (pid, st) in &tracked {
            if let Some(c) = counts.get_mut(st.agent as usize) {
                *c += 1;
            }
            if let Some(v) = vis.get_mut(st.agent as usize) {
                if invisible.contains(pid) {
                    v.1 += 1;
                } else if visible.contains(pid) {
                    v.0 += 1;
                }
            }
        }
        drop(invisible);
        for (i, name) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
            self.metrics.tracked.with_label_values(&[name]).set(counts[i + 1]);
            self.metrics.tls_visible.with_label_values(&[name, "true"]).set(vis[i + 1].0);
            self.metrics.tls_visible.with_label_values(&[name, "false"]).set(vis[i + 1].1);
        }
        let reasons = [
            (stat::RINGBUF_FULL, "ringbuf_full"),
            (stat::PATH_TRUNCATED, "path_truncated"),
            (stat::PROCS_FULL, "procs_full"),
            (stat::READ_FAILED, "read_failed"),
        ];
        for (idx, reason) in reasons {
            let now = stats[idx as usize];
            let delta = now.saturating_sub(last_drops[idx as usize]);
            if delta > 0 {
                self.metrics.kernel_drops.with_label_values(&[reason]).inc_by(delta);
                if idx == stat::RINGBUF_FULL {
                    self.metrics.events_lost.inc_by(delta);
                    warn!(lost = delta, "events lost: the ring buffer was full (enforcement is unaffected)");
                }
            } else {
                self.metrics.kernel_drops.with_label_values(&[reason]);
            }
            last_drops[idx as usize] = now;
        }
        let held = stat::TLS_HANDSHAKE_HELD as usize;
        self.metrics.tls_handshakes_held.inc_by(stats[held].saturating_sub(last_drops[held]));
        last_drops[held] = stats[held];
    }
}

fn now_ns() -> i128 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_nanos() as i128
}

pub(crate) fn open_sink(path: &str) -> anyhow::Result<Box<dyn Write + Send>> {
    if path == "-" {
        return Ok(Box::new(io::BufWriter::new(io::stdout())));
    }
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening events file {path}"))?;
    Ok(Box::new(io::BufWriter::with_capacity(1 << 16, f)))
}

fn print_diagnostics(diags: &[policy::Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Allocator settings for the daemon, before its threads start.
///
/// glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB) and
/// its trim threshold to twice that. After a few full drains of the ring buffer (a batch `Vec`
/// of ~6800 events is ~4 MiB) blocks that size came from, and stayed in, the arena of each
/// worker thread that freed them: RSS went from 30 MiB idle to 46-56 MiB after bursts the
/// daemon could not keep up with (48 MiB in the bench). Fixed thresholds stop that: blocks of
/// 1 MiB or more get their own mapping, returned on free, and an arena keeps at most 2 MiB
/// free at its top. Only batches of more than ~1700 events pay an mmap; no cost was measurable
/// in daemon CPU per event, unpaced or with the daemon starved.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 20);
    }
}

/// Give the heap that start-up used and freed back to the kernel.
///
/// Loading parses the kernel's BTF (~20 MiB in memory) and the eBPF object, then frees them;
/// glibc keeps free memory that lies below live allocations, so without this the daemon idled
/// with ~10 MiB of resident heap it no longer used. `malloc_trim` releases the free pages of
/// every arena (MADV_DONTNEED), once, before the ring buffer is mapped (the start-up peak).
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tell systemd we are ready (Type=notify), if it is listening.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = PathBuf::from(path);
    let _ = sock.send_to(state.as_bytes(), &path);
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = PolicySource::resolve(args.config.clone());
    let policy = source.load().map_err(|d| {
        print_diagnostics(&d);
        anyhow!("the policy {} is invalid ({} error(s)); nothing was loaded", source.describe(), d.len())
    })?;
    let compiled = policy::compile(&policy);
    info!(policy = source.describe(), hash = compiled.hash, agents = compiled.agents.len(), "policy loaded");

    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "agent-monitor run needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_KILL) to load its eBPF programs"
        );
    }
    let metrics_addr: SocketAddr = args
        .metrics_listen
        .clone()
        .or_else(|| policy.daemon.metrics_listen.clone())
        .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string())
        .parse()
        .context("metrics listen address")?;
    let events_path =
        args.events.clone().or_else(|| policy.daemon.events_file.clone()).unwrap_or_else(|| DEFAULT_EVENTS_FILE.into());
    let sink = open_sink(&events_path)?;

    let metrics = Arc::new(Metrics::new());
    let pins = args.pin_path.clone().or_else(|| policy.daemon.pin_path.clone().map(PathBuf::from));
    let tls_uprobes = policy.daemon.tls_uprobes.unwrap_or_default();
    raise_fd_limit();
    let mut kernel = Kernel::load(pins.as_deref(), tls_uprobes)?;
    release_startup_memory();
    let resolved = kmaps::resolve_hosts(&compiled.hosts);
    let control_path = args
        .control_socket
        .clone()
        .or_else(|| policy.daemon.control_socket.clone().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::control::DEFAULT_CONTROL_SOCKET));
    let protected = protected_paths(source.path(), &events_path, pins.as_deref(), &control_path);
    info!(paths = ?protected.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), "the daemon's own paths are protected from agents");
    let gen = kmaps::apply_policy(&mut kernel.ebpf, &compiled, &resolved, &[], &protected)
        .context("writing the policy into the kernel maps")?;
    kmaps::adopt_running(&mut kernel.ebpf, &compiled)?;
    kmaps::set_daemon(&mut kernel.ebpf, std::process::id(), kernel.layers.bpf_lsm)?;
    let ring =
        RingBuf::try_from(kernel.ebpf.take_map(kmaps::names::EVENTS).ok_or_else(|| anyhow!("EVENTS map missing"))?)?;
    for (layer, up) in [
        ("tracepoint", kernel.layers.tracepoint),
        ("bpf_lsm", kernel.layers.bpf_lsm),
        ("cgroup", kernel.layers.cgroup),
        ("landlock", kernel.layers.landlock),
        ("uprobe", kernel.layers.uprobe),
    ] {
        metrics.layer_up.with_label_values(&[layer]).set(up as i64);
    }
    metrics.policy_agents.set(compiled.agents.len() as i64);
    metrics.init_agents(&compiled.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>());

    let names = compiled.names_by_id();
    let (live, _) = tokio::sync::broadcast::channel(4096);
    let shared = Arc::new(Shared {
        kernel: Mutex::new(kernel),
        decoder: Mutex::new({
            let mut d = Decoder::new(names);
            d.policy_by_gen[gen as usize] = Some(compiled.hash.clone());
            d
        }),
        metrics: metrics.clone(),
        log: Mutex::new(EventLog::new(
            sink,
            if events_path == "-" {
                crate::audit::Chain::new()
            } else {
                crate::audit::Chain::resume(Path::new(&events_path))
            },
            live.clone(),
        )),
        events_path: events_path.clone(),
        compiled: Mutex::new(compiled),
        resolved: Mutex::new(resolved),
        tls_invisible: Mutex::new(Default::default()),
        webhooks: policy.alerts.webhook.iter().map(|w| WebhookSink::start(w, metrics.clone())).collect(),
        registered: Mutex::new(Vec::new()),
        protected,
        holds: Default::default(),
        hold_timeout: policy
            .daemon
            .hold_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(crate::enforce_holds::DEFAULT_TIMEOUT),
        prog_stats: Mutex::new(Default::default()),
        bpf_stats: crate::bpf::stats::StatsSampler::start(policy.daemon.bpf_stats.unwrap_or_default()),
        journal: Default::default(),
        tls_uprobes,
    });

    {
        // Agents running before the daemon (or left by an earlier run): hooked before READY.
        let seen = Instant::now();
        let tracked = kmaps::tracked(&shared.kernel.lock().unwrap().ebpf);
        shared.hook_agents_tls(&tracked, seen);
    }
    let listener =
        metrics::bind(metrics_addr).await.with_context(|| format!("binding the metrics listener on {metrics_addr}"))?;
    tokio::spawn(metrics::serve(listener, metrics.clone()));
    tokio::spawn(reader::run(ring, shared.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = [0u64; agent_monitor_common::stat::COUNT as usize];
            loop {
                let sh = shared.clone();
                last = tokio::task::spawn_blocking(move || {
                    sh.refresh(&mut last);
                    last
                })
                .await
                .unwrap_or(last);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

    {
        // Keep allowed host names fresh: an agent resolving the same name must reach an
        // allowed address after the records change.
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HOST_REFRESH).await;
                let sh = shared.clone();
                let _ = tokio::task::spawn_blocking(move || sh.refresh_hosts()).await;
            }
        });
    }

    let (listener, control) = crate::control::Control::bind(&control_path, policy.daemon.admin_group.as_deref(), live)?;
    tokio::spawn(crate::control::serve(listener, Arc::new(control), shared.clone(), source.clone()));

    shared.record_policy(&source, &shared.compiled.lock().unwrap().clone());
    shared.deny_stale_holds();
    // systemd's watchdog: ping at half the period, only while the runtime runs and the lock on
    // the kernel maps can be taken (a deadlocked daemon stops pinging and is restarted).
    if let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()).filter(|u| *u > 0) {
        let shared = shared.clone();
        let period = Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let sh = shared.clone();
                let alive =
                    tokio::time::timeout(period, tokio::task::spawn_blocking(move || drop(sh.kernel.lock().unwrap())));
                if matches!(alive.await, Ok(Ok(()))) {
                    sd_notify("WATCHDOG=1");
                } else {
                    warn!("watchdog: the kernel maps' lock was not available in time; not pinging");
                }
            }
        });
    }
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sh = shared.clone();
                let _ = tokio::task::spawn_blocking(move || sh.expire_holds()).await;
            }
        });
    }
    info!(events = events_path, metrics = %metrics_addr, control = %control_path.display(), "enforcing");
    sd_notify("READY=1\nSTATUS=enforcing");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut interactive = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                // SIGHUP also reopens the events log, for logrotate.
                shared.reopen_sink();
                let (src, sh) = (source.clone(), shared.clone());
                let _ = tokio::task::spawn_blocking(move || reload(&src, &sh)).await;
                sd_notify("READY=1");
            }
            _ = term.recv() => break,
            _ = int.recv() => { interactive = true; break }
        }
    }
    sd_notify("STOPPING=1");
    let _ = std::fs::remove_file(&control_path);
    let mut k = shared.kernel.lock().unwrap();
    if let Some(t) = k.agent_tls.take() {
        // Agents' TLS handshakes no longer wait for hooks that no one will add.
        let _ = kmaps::set_tls_token_in_force(&mut k.ebpf, 0);
        if k.pin_dir.is_some() && !interactive {
            warn!(
                processes = t.armed_processes(),
                "the per-agent TLS hooks end with this process (tls_uprobes = \"agents\"): HTTP methods inside agents' TLS are not seen until the next start hooks them again"
            );
        }
        // Close the events, then remove them from tracefs.
        drop(t);
    }
    match (&k.pin_dir, interactive) {
        (Some(dir), false) => info!(
            pins = %dir.display(),
            "stopping: the programs stay attached and enforcing from their pins (the next start adopts them); `agent-monitor cleanup` removes them"
        ),
        (Some(dir), true) => {
            k.unpin_all();
            info!(pins = %dir.display(), "stopping (interrupted): pins removed, programs detached; agents are no longer confined")
        }
        (None, _) => info!("stopping: programs are detached and agents are no longer confined by this daemon"),
    }
    Ok(())
}

/// Re-read the policy; a bad one is rejected with its errors and the old one keeps enforcing.
/// Returns whether the new policy is enforcing.
pub fn reload(source: &PolicySource, shared: &Shared) -> bool {
    let policy = match source.load() {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags {
                error!("{d}");
            }
            shared.metrics.reloads.with_label_values(&["failure"]).inc();
            error!(errors = diags.len(), "policy reload rejected; the previous policy is still enforcing");
            return false;
        }
    };
    // Running agent processes carry their agent's id: keep ids stable by name.
    let compiled = policy::compile(&policy).with_stable_ids(&shared.compiled.lock().unwrap());
    let resolved = kmaps::resolve_hosts(&compiled.hosts);
    let exec_cgroups = shared.exec_selectors(&compiled);
    let mut k = shared.kernel.lock().unwrap();
    // Events decided by the new generation may be read before apply_policy returns.
    let next = 1 - kmaps::generation(&k.ebpf);
    {
        let mut d = shared.decoder.lock().unwrap();
        d.policy_by_gen[next as usize] = Some(compiled.hash.clone());
        // Names of both policies while both may be deciding (ids are stable by name).
        let new = compiled.names_by_id();
        let n = new.len().max(d.agent_names.len());
        let merged = (0..n)
            .map(|i| new.get(i).filter(|s| !s.is_empty()).or(d.agent_names.get(i)).cloned().unwrap_or_default())
            .collect();
        d.agent_names = merged;
    }
    let result = kmaps::apply_policy(&mut k.ebpf, &compiled, &resolved, &exec_cgroups, &shared.protected)
        .and_then(|_| kmaps::adopt_running(&mut k.ebpf, &compiled).map(|_| ()));
    drop(k);
    *shared.resolved.lock().unwrap() = resolved;
    match result {
        Ok(()) => {
            shared.decoder.lock().unwrap().agent_names = compiled.names_by_id();
            shared.metrics.policy_agents.set(compiled.agents.len() as i64);
            shared.metrics.init_agents(&compiled.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>());
            info!(hash = compiled.hash, agents = compiled.agents.len(), "policy reloaded");
            shared.record_policy(source, &compiled);
            *shared.compiled.lock().unwrap() = compiled;
            shared.metrics.reloads.with_label_values(&["success"]).inc();
            true
        }
        Err(e) => {
            shared.metrics.reloads.with_label_values(&["failure"]).inc();
            error!(error = %format!("{e:#}"), "applying the reloaded policy failed");
            false
        }
    }
}

/// The daemon's own paths, which no agent may write whatever its `writable` says: the
/// configuration file, the events log (and its rotated siblings), the pins, the control socket,
/// the daemon's binary, and the directories holding them when they are the daemon's own
/// (named `agent-monitor...`, as `/etc/agent-monitor`, `/var/log/agent-monitor`,
/// `/run/agent-monitor` and `/sys/fs/bpf/agent-monitor` are).
pub fn protected_paths(
    config: Option<&Path>,
    events: &str,
    pins: Option<&Path>,
    control: &Path,
) -> Vec<kmaps::Protected> {
    // The kernel compares resolved paths: resolve the directory (the file may not exist yet).
    let resolve = |p: &Path| -> PathBuf {
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
                .map(|d| d.join(name))
                .unwrap_or_else(|_| p.to_path_buf()),
            _ => p.to_path_buf(),
        }
    };
    let own_dir = |p: &Path| -> Option<String> {
        let dir = p.parent()?;
        dir.file_name()?.to_str()?.starts_with("agent-monitor").then(|| dir.display().to_string())
    };
    let mut out: Vec<kmaps::Protected> = Vec::new();
    let mut add = |path: String, raw_prefix: bool| {
        let p = kmaps::Protected { path, raw_prefix };
        if p.path.starts_with('/') && p.path != "/" && !out.contains(&p) {
            out.push(p);
        }
    };
    let mut files: Vec<(PathBuf, bool)> = vec![(resolve(control), false)];
    if let Some(c) = config {
        files.push((resolve(c), false));
    }
    if events != "-" {
        files.push((resolve(Path::new(events)), true));
    }
    if let Ok(exe) = fs::canonicalize("/proc/self/exe") {
        files.push((exe, false));
    }
    for (f, raw) in &files {
        add(f.display().to_string(), *raw);
        if let Some(d) = own_dir(f) {
            add(d, false);
        }
    }
    if let Some(p) = pins {
        add(resolve(p).display().to_string(), false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_gets_the_first_violations_of_each_second_and_a_count_of_the_rest() {
        let mut j = JournalLimiter::default();
        let lines = (0..JOURNAL_LINES_PER_SEC + 5).filter(|_| matches!(j.admit(), Admit::Line)).count();
        assert_eq!(lines, JOURNAL_LINES_PER_SEC as usize);
        // The next second: the first line says how many were left out.
        j.second -= Duration::from_millis(1100);
        assert!(matches!(j.admit(), Admit::LineAfter(5)));
        assert!(matches!(j.admit(), Admit::Line));
    }
}
