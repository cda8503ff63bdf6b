//! The kernel's per-program statistics (`BPF_ENABLE_STATS`), behind
//! `agent_monitor_bpf_program_runs_total` and `..._run_seconds_total`.
//!
//! The switch is system-wide: while it is on, the kernel reads the clock twice around every run
//! of every BPF program, so a process that is not an agent pays for it on each traced syscall
//! (measured: open+close of a non-agent 1.25x no monitor without statistics, 1.35x with them).
//! `sampled` (the default) turns it on one second in every ten and scales what the kernel counted
//! by ten: the rates and the time per run stay right on average, for a tenth of the cost.
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::policy::model::BpfStats;

/// Of each period, the statistics are on for `SAMPLE_ON` (mode `sampled`).
const SAMPLE_ON: Duration = Duration::from_secs(1);
const SAMPLE_PERIOD: Duration = Duration::from_secs(10);

pub struct StatsSampler {
    mode: BpfStats,
    /// Whether the kernel accepted the switch (false: the counters cannot move).
    available: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Mode `on`: held for the daemon's lifetime.
    _fd: Option<OwnedFd>,
}

fn enable() -> Result<OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.to_string())
}

impl StatsSampler {
    pub fn start(mode: BpfStats) -> Self {
        let available = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut fd = None;
        match mode {
            BpfStats::Off => {
                info!("kernel BPF statistics off (bpf_stats = \"off\"): agent_monitor_bpf_program_* stay at 0")
            }
            BpfStats::On => match enable() {
                Ok(f) => {
                    available.store(true, Ordering::Relaxed);
                    fd = Some(f);
                }
                Err(e) => warn!(error = %e, "kernel BPF statistics unavailable: agent_monitor_bpf_program_* stay at 0"),
            },
            BpfStats::Sampled => match enable() {
                Ok(first) => {
                    available.store(true, Ordering::Relaxed);
                    let stop = stop.clone();
                    let spawned = std::thread::Builder::new().name("bpf-stats".into()).spawn(move || {
                        let mut on = Some(first);
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(SAMPLE_ON);
                            on.take();
                            sleep_unless(&stop, SAMPLE_PERIOD - SAMPLE_ON);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            on = enable().ok();
                        }
                    });
                    if let Err(e) = spawned {
                        warn!(error = %e, "could not start the BPF statistics sampler: statistics stay on");
                    }
                    info!(
                        on_secs = SAMPLE_ON.as_secs(),
                        period_secs = SAMPLE_PERIOD.as_secs(),
                        "kernel BPF statistics sampled (bpf_stats = \"sampled\"): counters are scaled estimates"
                    );
                }
                Err(e) => warn!(error = %e, "kernel BPF statistics unavailable: agent_monitor_bpf_program_* stay at 0"),
            },
        }
        StatsSampler { mode, available, stop, _fd: fd }
    }

    /// What one run the kernel counted stands for: 10 when sampled, else 1.
    pub fn scale(&self) -> f64 {
        match self.mode {
            BpfStats::Sampled => SAMPLE_PERIOD.as_secs_f64() / SAMPLE_ON.as_secs_f64(),
            BpfStats::On | BpfStats::Off => 1.0,
        }
    }

    /// The share of time the kernel counts (`agent_monitor_bpf_stats_sample_ratio`): 1, 0.1, or
    /// 0 when off or refused by the kernel.
    pub fn ratio(&self) -> f64 {
        if !self.available.load(Ordering::Relaxed) {
            return 0.0;
        }
        1.0 / self.scale()
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

impl Drop for StatsSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
