//! What the daemon does every two seconds: hook the TLS of agent processes not covered yet (and
//! the TLS libraries they map), and refresh the gauges and kernel counters.
use std::time::Instant;

use tracing::warn;

use super::state::State;
use crate::{
    bpf::{maps as kmaps, tls_libs},
    metrics::refresh::{KernelSample, Refresh},
    policy::TlsUprobes,
};

impl State {
    /// One refresh: TLS hooks first (they read the process table the gauges count).
    pub fn refresh(&self, r: &mut Refresh) {
        let seen = Instant::now();
        let (tracked, stats, visible, programs) = {
            let k = self.kernel.lock().unwrap();
            (kmaps::tracked(&k.ebpf), kmaps::stats(&k.ebpf), kmaps::tls_visible(&k.ebpf), k.program_stats())
        };
        if self.tls_uprobes != TlsUprobes::Off {
            let found = tls_libs::mapped_tls_libs(&tracked);
            if !found.is_empty() {
                self.kernel.lock().unwrap().hook_new_tls_libs(found);
            }
        }
        {
            let mut k = self.kernel.lock().unwrap();
            if let Some(armed) = k.hook_uncovered_agents(&tracked, seen) {
                self.metrics.tls_hooked.set(armed as i64);
            }
            // Whole filesystems mounted on the host since (never a bind mount); the daemon's
            // threads; the kill marks of instances that are gone.
            kmaps::learn_mounts(&mut k.ebpf, &kmaps::mount_ids("1"), false);
            kmaps::sync_daemon_tids(&mut k.ebpf);
            kmaps::forget_dead_kills(&mut k.ebpf, &tracked);
        }
        let tls_invisible = {
            let mut inv = self.tls_invisible.lock().unwrap();
            inv.retain(|pid| tracked.iter().any(|(p, _)| p == pid));
            inv.clone()
        };
        let sample = KernelSample {
            tracked,
            stats,
            tls_visible: visible,
            tls_invisible,
            programs,
            stats_scale: self.bpf_stats.scale(),
            stats_ratio: self.bpf_stats.ratio(),
        };
        let names = self.compiled.lock().unwrap().names_by_id();
        let lost = r.apply(&self.metrics, &names, &sample);
        if lost > 0 {
            warn!(lost, "events lost: the ring buffer was full (enforcement is unaffected)");
        }
    }
}
