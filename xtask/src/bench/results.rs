//! What a run measured: everything the report (`report.rs`, `json.rs`) is made of.

use super::system::Info;
use super::workloads::{Case, Key, Monitor, Workload};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Results {
    pub info: Info,
    /// The plan: rounds, runs per case in a round, and seconds per run (with no monitor).
    pub rounds: usize,
    pub reps: usize,
    pub run_secs: f64,
    /// The workloads measured here (`SSL_write` only with OpenSSL).
    pub workloads: Vec<Workload>,
    /// Operations per run, per workload.
    pub n: Vec<u64>,
    /// ns/op per round.
    pub samples: BTreeMap<Key, Vec<Option<f64>>>,
    /// Operations that failed (a load generator error count), per row.
    pub errors: BTreeMap<Key, u64>,
    /// Operations refused with EPERM, and operations run, per row.
    pub refused: BTreeMap<Key, (u64, u64)>,
    pub delivery: BTreeMap<Monitor, Delivery>,
    /// Our events for the deny agent's refused operations, per workload: (refused, events).
    pub denied: BTreeMap<&'static str, (u64, u64)>,
    /// Peers' records per (monitor, workload, case): (operations, records). auditd's are counted
    /// after every run; bpftrace's per probe and agent comm when it exits (see `Bpftrace`).
    pub peer_records: BTreeMap<Key, (u64, u64)>,
    /// The event path: paced refused-alert opens, one step per offered rate.
    pub event_path: Vec<EventStep>,
    pub not_measured: Vec<String>,
    /// Events/s through the daemon's userspace path without the ring buffer, per stage
    /// (`decode_throughput` in agent-monitor/src/events/decode.rs).
    pub decode_rates: Vec<(String, f64)>,
    pub startup_s: Vec<f64>,
    /// Of the start-up, the time from "policy loaded" to "eBPF programs attached" in its log.
    pub attach_s: Vec<f64>,
    /// VmRSS 1 s after enforcing, and VmHWM then (the start-up's peak).
    pub rss_idle_mib: Vec<f64>,
    pub hwm_start_mib: Vec<f64>,
    /// VmRSS after every workload of the round ran, and VmHWM then (the peak of its life).
    pub rss_load_mib: Vec<f64>,
    pub rss_peak_mib: Vec<f64>,
    /// Daemon CPU seconds and wall seconds: idle, and per (workload, case).
    pub cpu_idle: (f64, f64),
    pub cpu_load: BTreeMap<(usize, Case), (f64, f64)>,
    /// Runs measured while another agent-monitor (not ours) was running, of all runs.
    pub foreign_runs: (u64, u64),
    pub peers: BTreeMap<Monitor, String>,
    pub enforcement: Option<Enforcement>,
    pub notes: Vec<String>,
}

/// Events a monitor recorded for the refused-alert open runs (one expected per operation).
#[derive(Default, Clone, Copy)]
pub struct Delivery {
    pub ops: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Records for operations that were not violations (must stay 0).
    pub spurious: u64,
}

/// One step of the event path.
#[derive(Default, Clone)]
pub struct EventStep {
    /// Requested events/s (0: unpaced), and what the load generator achieved.
    pub requested: u64,
    pub offered: f64,
    pub secs: f64,
    pub ops: u64,
    pub delivered: u64,
    /// agent_monitor_events_lost_total, and agent_monitor_kernel_drops_total by reason (deltas).
    pub lost: u64,
    pub kernel_drops: BTreeMap<String, u64>,
    /// Daemon CPU during the step and its drain, % of one core.
    pub cpu_percent: f64,
    /// Seconds from the end of the load until the events log stopped growing.
    pub drain_s: f64,
}

impl EventStep {
    pub fn zero_loss(&self) -> bool {
        let full = self.kernel_drops.get("ringbuf_full").copied().unwrap_or(0);
        self.ops > 0 && self.delivered == self.ops && self.lost == 0 && full == 0
    }
}

/// Refused HTTP requests against a byte-counting server, and the time to a kill.
#[derive(Default)]
pub struct Enforcement {
    pub attempts: u64,
    pub connected: u64,
    pub sent: u64,
    pub replies: u64,
    pub bytes_at_server: u64,
    pub agent_killed_runs: u64,
    pub validation_attempts: u64,
    pub validation_bytes: u64,
    pub validation_expected: u64,
    pub kill_latency_us: Vec<f64>,
    pub kill_survived: u64,
}
