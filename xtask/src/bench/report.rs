//! The report of a run: its rows and targets, and the Markdown (`bench/results-DATE.md`).

use super::event_path::{EVENT_BISECT, EVENT_STEP_SECS, EVENT_THREADS};
use super::results::Results;
use super::workloads::{Case, Key, Monitor, REFUSED_NOT_APPLICABLE};
use super::{median, AGENT, DENY_AGENT, DENY_PORT, METRICS_REFRESH};
use serde::Serialize;
use std::fmt::Write as _;

/// Issue 7's targets.
const NON_AGENT_MAX: f64 = 1.02;
const AGENT_MAX: f64 = 1.3;
const STARTUP_MAX_S: f64 = 1.0;
const RSS_MAX_MIB: f64 = 40.0;

/// Issue 7's bound on the ratio to no monitor (for agent-monitor's rows).
pub fn case_target(case: Case) -> Option<f64> {
    match case {
        Case::Baseline => None,
        Case::Loaded | Case::NonAgent => Some(NON_AGENT_MAX),
        Case::AgentAllowed | Case::AgentRefused | Case::AgentDenied => Some(AGENT_MAX),
    }
}

/// One of issue 7's targets: what it bounds, the bound, this run's value, and PASS, MISS, `-`
/// (none set) or "not measured".
#[derive(Serialize)]
pub struct Target {
    pub name: String,
    pub bound: String,
    pub value: String,
    pub status: &'static str,
}

impl Target {
    fn new(name: &str, bound: impl Into<String>, value: impl Into<String>, status: &'static str) -> Target {
        Target { name: name.into(), bound: bound.into(), value: value.into(), status }
    }
}

impl Results {
    /// (median ns/op, ratios to none of the same round).
    pub fn row(&self, key: Key) -> Option<(f64, Vec<f64>)> {
        let s = self.samples.get(&key)?;
        let base = self.samples.get(&(key.0, Monitor::None, Case::Baseline))?;
        let ns: Vec<f64> = s.iter().flatten().copied().collect();
        let ratios = s.iter().zip(base).filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?)).collect();
        Some((median(&ns)?, ratios))
    }

    /// The rows in table order: workload, then monitor, then case.
    pub fn rows(&self) -> Vec<(Key, f64, Vec<f64>)> {
        let mut keys: Vec<Key> = self.samples.keys().copied().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.row(k).map(|(m, r)| (k, m, r))).collect()
    }

    fn delivered_all(&self) -> Option<bool> {
        let denied = self.denied.values().all(|(refused, events)| refused == events);
        self.delivery.get(&Monitor::Ours).map(|d| d.ops > 0 && d.delivered == d.ops && d.lost == 0 && denied)
    }

    /// Issue 7's targets, as met or missed by this run.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = self.overhead_targets();
        self.other_targets(&mut t);
        t
    }

    /// The worst median ratios of agent-monitor's rows: for a non-agent, and for an agent.
    fn overhead_targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let rows = self.rows();
        let worst = |cases: &[Case]| {
            rows.iter()
                .filter(|(k, _, _)| k.1 == Monitor::Ours && cases.contains(&k.2))
                .filter_map(|(k, _, r)| Some((median(r)?, *k)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        if let Some((r, k)) = worst(&[Case::Loaded, Case::NonAgent]) {
            t.push(Target::new(
                "a non-agent process (loaded, non-agent): worst median ratio",
                format!("<= {NON_AGENT_MAX}x"),
                format!("{r:.3}x ({} {})", self.workloads[k.0].name, k.2.name()),
                pass(r <= NON_AGENT_MAX),
            ));
        }
        if let Some((r, k)) = worst(&[Case::AgentAllowed, Case::AgentRefused, Case::AgentDenied]) {
            let all = self.delivered_all().unwrap_or(false);
            t.push(Target::new(
                "an agent (allowed, refused-alert, refused-deny): worst median ratio, every event delivered",
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
        t
    }

    /// The event path, decode, start-up, RSS and enforcement targets.
    fn other_targets(&self, t: &mut Vec<Target>) {
        if let Some((rate, first_loss)) = self.zero_loss_rate() {
            t.push(Target::new(
                "event path: highest offered events/s that reached the events log with zero loss",
                "none set (reported)",
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
                t.push(Target::new(
                    "events/s through decode and decision (one core)",
                    ">= 1 M/s",
                    stages.join("; "),
                    pass(*full >= 1e6),
                ));
            }
            None => t.push(Target::new("events/s through decode and decision", ">= 1 M/s", "-", "not measured")),
        }
        if let Some(m) = median(&self.startup_s) {
            t.push(Target::new(
                "start-up until enforcing (median)",
                format!("< {STARTUP_MAX_S} s"),
                format!("{m:.3} s"),
                pass(m < STARTUP_MAX_S),
            ));
        }
        let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
        if let (Some(idle), Some(load)) = (max(&self.rss_idle_mib), max(&self.rss_load_mib)) {
            let (start, end) = (max(&self.hwm_start_mib).unwrap_or(0.0), max(&self.rss_peak_mib).unwrap_or(0.0));
            t.push(Target::new(
                "daemon RSS (VmRSS) idle and after the heaviest load, worst round",
                format!("< {RSS_MAX_MIB} MiB"),
                format!(
                    "idle {idle:.1} MiB, after load {load:.1} MiB (VmHWM {start:.1} MiB 1 s after start-up, \
                     {end:.1} MiB at the end)"
                ),
                pass(idle.max(load) < RSS_MAX_MIB),
            ));
        }
        if let Some(e) = &self.enforcement {
            t.push(Target::new(
                "bytes of refused requests reaching the server",
                "0 over >= 1000 attempts",
                format!("{} over {} attempts", e.bytes_at_server, e.attempts),
                pass(e.bytes_at_server == 0 && e.attempts >= 1000 && e.validation_bytes == e.validation_expected),
            ));
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.md_header(&mut md);
        self.md_overhead(&mut md);
        self.md_cases(&mut md);
        self.md_delivery(&mut md);
        self.md_event_path(&mut md);
        self.md_peer_records(&mut md);
        self.md_peers(&mut md);
        self.md_enforcement(&mut md);
        self.md_footprint(&mut md);
        self.md_not_measured(&mut md);
        md
    }

    /// The title, the machine, the plan and the targets.
    fn md_header(&self, md: &mut String) {
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
            self.rounds, self.reps, self.run_secs, i.loadavg_start, i.loadavg_end
        );
        for n in self.noise_notes() {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | bound | result | status |\n| --- | --- | --- | --- |");
        for Target { name, bound, value, status } in self.targets() {
            let _ = writeln!(md, "| {name} | {bound} | {value} | {status} |");
        }
    }

    /// The syscall overhead table.
    fn md_overhead(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Syscall overhead\n");
        let _ = writeln!(
            md,
            "Ratio = ns/op of the case / ns/op with no monitor, in the same round; median, min and max \
             over {} rounds. A round's sample is the fastest of {} runs of ~{} s (with no monitor), the \
             runs of the cases that share a state alternating (A, B, C, A, B, C, ...); ns/op is the \
             median of the rounds' samples. Interleaved means per round: each round measures none, \
             then starts the daemon (loaded; then non-agent, agent-allowed, agent-refused-alert or \
             agent-refused-deny), then auditd, then bpftrace.\n",
            self.rounds, self.reps, self.run_secs
        );
        let _ = writeln!(
            md,
            "| workload | monitor | case | ops/run | ns/op | ratio | min | max | target | status |\n\
             | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        );
        for ((wi, mon, case), med, ratios) in self.rows() {
            let w = self.workloads[wi];
            let (target, status) = match (mon, case_target(case), median(&ratios)) {
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
    }

    /// What the workloads do, what the cases mean, and the workloads with no refused case.
    fn md_cases(&self, md: &mut String) {
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
    }

    /// Events delivered in the refused-alert open runs, and for the deny agent.
    fn md_delivery(&self, md: &mut String) {
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
    }

    /// What the peers' rules recorded per workload and case.
    fn md_peer_records(&self, md: &mut String) {
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
    }

    /// Which peers ran, and how.
    fn md_peers(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Peers\n");
        for (m, s) in &self.peers {
            let _ = writeln!(md, "- {}: {}", m.name(), s);
        }
    }

    /// Refused requests, the time to a kill, and the start-up.
    fn md_enforcement(&self, md: &mut String) {
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
    }

    /// The daemon's memory and CPU.
    fn md_footprint(&self, md: &mut String) {
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
    }

    /// What this run could not measure.
    fn md_not_measured(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Not measured yet\n");
        for n in &self.not_measured {
            let _ = writeln!(md, "- {n}");
        }
        if self.not_measured.is_empty() {
            let _ = writeln!(md, "- nothing of issue 7's list");
        }
    }

    /// (the highest offered rate of a step without loss, the lowest offered rate with loss above it).
    pub fn zero_loss_rate(&self) -> Option<(f64, Option<f64>)> {
        let best = self.event_path.iter().filter(|s| s.zero_loss()).map(|s| s.offered).reduce(f64::max)?;
        let first_loss =
            self.event_path.iter().filter(|s| !s.zero_loss() && s.offered > best).map(|s| s.offered).reduce(f64::min);
        Some((best, first_loss))
    }

    fn md_event_path(&self, md: &mut String) {
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
    pub fn offered_rate(&self, m: Monitor) -> Option<f64> {
        self.row((0, m, Case::AgentRefused)).map(|(ns, _)| 1e9 / ns)
    }

    fn heaviest_cpu(&self) -> Option<(f64, usize, Case)> {
        self.cpu_load
            .iter()
            .filter(|(_, (_, wall))| *wall > 0.0)
            .map(|(&(wi, c), &(cpu, wall))| (100.0 * cpu / wall, wi, c))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }

    pub fn noise_notes(&self) -> Vec<String> {
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
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}
