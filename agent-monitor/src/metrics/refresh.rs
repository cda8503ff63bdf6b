//! The gauges and kernel counters the daemon refreshes every two seconds, from a sample of the
//! kernel's state that the caller takes (this module reads no map itself).
use std::collections::{HashMap, HashSet};

use agent_monitor_common::{stat, ProcState};

use super::Metrics;

/// What the kernel said at one refresh.
pub struct KernelSample {
    /// The process table: (tgid, state).
    pub tracked: Vec<(u32, ProcState)>,
    /// The kernel's counters (`agent_monitor_common::stat`), summed over CPUs.
    pub stats: [u64; stat::COUNT as usize],
    /// Agent processes whose TLS goes through a hooked library, and those seen doing TLS nothing
    /// hooks.
    pub tls_visible: HashSet<u32>,
    pub tls_invisible: HashSet<u32>,
    /// (program, runs, seconds) as the kernel counts them.
    pub programs: Vec<(String, u64, f64)>,
    /// What one counted run stands for (10 when statistics are sampled one second in ten), and
    /// the share of the time the kernel counts (`agent_monitor_bpf_stats_sample_ratio`).
    pub stats_scale: f64,
    pub stats_ratio: f64,
}

/// The last values seen, to turn the kernel's totals into counter increments.
#[derive(Default)]
pub struct Refresh {
    last_stats: [u64; stat::COUNT as usize],
    last_programs: HashMap<String, (u64, f64)>,
}

/// The kernel's drop and failure counters, with their `reason` label.
const DROP_REASONS: [(u32, &str); 4] = [
    (stat::RINGBUF_FULL, "ringbuf_full"),
    (stat::PATH_TRUNCATED, "path_truncated"),
    (stat::PROCS_FULL, "procs_full"),
    (stat::READ_FAILED, "read_failed"),
];

impl Refresh {
    /// Update every refreshed series from `s`. `names[id - 1]` is agent `id`'s name (empty: no
    /// agent). Returns how many events the ring buffer lost since the last refresh.
    pub fn apply(&mut self, m: &Metrics, names: &[String], s: &KernelSample) -> u64 {
        self.programs(m, s);
        let mut counts = vec![0i64; names.len() + 1];
        let mut vis = vec![(0i64, 0i64); names.len() + 1];
        for (pid, st) in &s.tracked {
            if let Some(c) = counts.get_mut(st.agent as usize) {
                *c += 1;
            }
            if let Some(v) = vis.get_mut(st.agent as usize) {
                if s.tls_invisible.contains(pid) {
                    v.1 += 1;
                } else if s.tls_visible.contains(pid) {
                    v.0 += 1;
                }
            }
        }
        for (i, name) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
            m.tracked.with_label_values(&[name]).set(counts[i + 1]);
            m.tls_visible.with_label_values(&[name, "true"]).set(vis[i + 1].0);
            m.tls_visible.with_label_values(&[name, "false"]).set(vis[i + 1].1);
        }
        let mut lost = 0;
        for (idx, reason) in DROP_REASONS {
            let delta = self.delta(s, idx);
            // (created at 0 so that the first drop is an increase Prometheus sees)
            m.kernel_drops.with_label_values(&[reason]).inc_by(delta);
            if idx == stat::RINGBUF_FULL {
                m.events_lost.inc_by(delta);
                lost = delta;
            }
        }
        m.tls_handshakes_held.inc_by(self.delta(s, stat::TLS_HANDSHAKE_HELD));
        lost
    }

    fn delta(&mut self, s: &KernelSample, idx: u32) -> u64 {
        let (now, last) = (s.stats[idx as usize], &mut self.last_stats[idx as usize]);
        let d = now.saturating_sub(*last);
        *last = now;
        d
    }

    /// `agent_monitor_bpf_program_*`. Sampled statistics stand for `stats_scale` times what the
    /// kernel counted (what ran before the daemon started is taken as it is).
    fn programs(&mut self, m: &Metrics, s: &KernelSample) {
        m.bpf_stats_ratio.set(s.stats_ratio);
        for (name, runs, secs) in &s.programs {
            let (k, (r0, s0)) = match self.last_programs.get(name) {
                Some(prev) => (s.stats_scale, *prev),
                None => (1.0, (0, 0.0)),
            };
            let runs_delta = (runs.saturating_sub(r0) as f64 * k).round() as u64;
            m.prog_runs.with_label_values(&[name]).inc_by(runs_delta);
            m.prog_seconds.with_label_values(&[name]).inc_by((secs - s0).max(0.0) * k);
            self.last_programs.insert(name.clone(), (*runs, *secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KernelSample {
        KernelSample {
            tracked: vec![
                (10, ProcState { agent: 1, ..Default::default() }),
                (11, ProcState { agent: 1, ..Default::default() }),
                (12, ProcState { agent: 2, ..Default::default() }),
            ],
            stats: [0; stat::COUNT as usize],
            tls_visible: [10].into(),
            tls_invisible: [12].into(),
            programs: vec![("p".into(), 5, 0.5)],
            stats_scale: 10.0,
            stats_ratio: 0.1,
        }
    }

    #[test]
    fn gauges_and_counter_increments() {
        let m = Metrics::new();
        let names = vec!["a".to_string(), "b".to_string()];
        let mut r = Refresh::default();
        let mut s = sample();
        assert_eq!(r.apply(&m, &names, &s), 0);
        assert_eq!(m.tracked.with_label_values(&["a"]).get(), 2);
        assert_eq!(m.tls_visible.with_label_values(&["a", "true"]).get(), 1);
        assert_eq!(m.tls_visible.with_label_values(&["b", "false"]).get(), 1);
        // The first sample is taken as it is; later ones are scaled.
        assert_eq!(m.prog_runs.with_label_values(&["p"]).get(), 5);
        s.programs = vec![("p".into(), 7, 0.6)];
        s.stats[stat::RINGBUF_FULL as usize] = 3;
        assert_eq!(r.apply(&m, &names, &s), 3);
        assert_eq!(m.prog_runs.with_label_values(&["p"]).get(), 25);
        assert_eq!(m.events_lost.get(), 3);
        assert_eq!(r.apply(&m, &names, &s), 0);
        assert_eq!(m.kernel_drops.with_label_values(&["ringbuf_full"]).get(), 3);
    }
}
