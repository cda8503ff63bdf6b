//! Metrics: the Prometheus registry (here), the per-event counters (`series`), the gauges and
//! kernel counters refreshed every two seconds (`refresh`), the daemon's health (`health`), and
//! the `/metrics` + `/healthz` server (`server`).
//!
//! A new series goes into [`Metrics`] (declared and registered in `Metrics::new`); it is set by
//! the event path (`series`), by the periodic refresh (`refresh`), or where the daemon acts.
//! Label sets are bounded: agent names come from the policy, kinds and actions from fixed
//! lists; never a pid, path or address. This module depends on nothing of the daemon's but the
//! wire types.
pub mod health;
pub mod refresh;
pub mod series;
pub mod server;

pub use health::Health;
pub use series::EventSeries;

use prometheus::{CounterVec, Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub violations: IntCounterVec,
    pub kills: IntCounterVec,
    pub tracked: IntGaugeVec,
    pub tls_visible: IntGaugeVec,
    pub events_lost: IntCounter,
    pub kernel_drops: IntCounterVec,
    pub decode_errors: IntCounter,
    pub sink_errors: IntCounterVec,
    pub reloads: IntCounterVec,
    pub layer_up: IntGaugeVec,
    pub build_info: IntGaugeVec,
    /// 1 for the enforcing policy's hash (`agent_monitor_policy_info{hash}`): drift across a
    /// fleet is `count by (hash) (agent_monitor_policy_info)`.
    pub policy_info: IntGaugeVec,
    pub policy_agents: IntGauge,
    pub tls_hooked: IntGauge,
    pub tls_handshakes_held: IntCounter,
    pub webhook_sent: IntCounterVec,
    pub webhook_failures: IntCounterVec,
    pub webhook_dropped: IntCounterVec,
    pub webhook_queue: IntGauge,
    pub prog_runs: IntCounterVec,
    pub holds_pending: IntGauge,
    pub hold_decisions: IntCounterVec,
    pub hold_wait: prometheus::Histogram,
    pub prog_seconds: CounterVec,
    pub bpf_stats_ratio: prometheus::Gauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(name, help), labels).unwrap())
        };
        let gv =
            |name: &str, help: &str, labels: &[&str]| reg(&r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap());
        let m = Metrics {
            events: cv(
                "agent_monitor_events_total",
                "Events recorded, by agent, kind and verdict.",
                &["agent", "kind", "verdict"],
            ),
            violations: cv(
                "agent_monitor_violations_total",
                "Violations, by agent, kind and the action taken.",
                &["agent", "kind", "action"],
            ),
            kills: cv("agent_monitor_kills_total", "Agent processes killed.", &["agent"]),
            tracked: gv(
                "agent_monitor_tracked_processes",
                "Processes currently tracked as part of an agent.",
                &["agent"],
            ),
            tls_visible: gv(
                "agent_monitor_tls_visible_processes",
                "Agent processes doing TLS, by whether their plaintext is visible (a hooked TLS library) or not.",
                &["agent", "visible"],
            ),
            events_lost: reg(
                &r,
                IntCounter::new(
                    "agent_monitor_events_lost_total",
                    "Events dropped before reaching userspace (all reasons).",
                )
                .unwrap(),
            ),
            webhook_sent: cv("agent_monitor_webhook_sent_total", "Violations delivered to a webhook.", &["receiver"]),
            webhook_failures: cv(
                "agent_monitor_webhook_failures_total",
                "Failed webhook posts (each attempt).",
                &["receiver"],
            ),
            webhook_dropped: cv(
                "agent_monitor_webhook_dropped_total",
                "Violations not delivered to a webhook (queue full or retries exhausted); still in the events log.",
                &["receiver"],
            ),
            webhook_queue: reg(
                &r,
                IntGauge::new("agent_monitor_webhook_queue_length", "Violations waiting for webhook delivery.")
                    .unwrap(),
            ),
            prog_runs: cv(
                "agent_monitor_bpf_program_runs_total",
                "Runs of each eBPF program (kernel statistics; an estimate when bpf_stats is sampled).",
                &["program"],
            ),
            prog_seconds: reg(
                &r,
                CounterVec::new(
                    Opts::new(
                        "agent_monitor_bpf_program_run_seconds_total",
                        "CPU time spent in each eBPF program (kernel statistics; an estimate when bpf_stats is sampled).",
                    ),
                    &["program"],
                )
                .unwrap(),
            ),
            holds_pending: reg(
                &r,
                IntGauge::new("agent_monitor_holds_pending", "Held actions waiting for a person.").unwrap(),
            ),
            hold_decisions: cv(
                "agent_monitor_hold_decisions_total",
                "Decisions on held actions, by outcome.",
                &["outcome"],
            ),
            hold_wait: reg(
                &r,
                prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "agent_monitor_hold_wait_seconds",
                        "How long held actions waited for a decision.",
                    )
                    .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
                )
                .unwrap(),
            ),
            kernel_drops: cv(
                "agent_monitor_kernel_drops_total",
                "Kernel-side drops and failures, by reason.",
                &["reason"],
            ),
            decode_errors: reg(
                &r,
                IntCounter::new(
                    "agent_monitor_event_decode_errors_total",
                    "Ring-buffer records that could not be decoded.",
                )
                .unwrap(),
            ),
            sink_errors: cv("agent_monitor_sink_errors_total", "Failures writing events to a sink.", &["sink"]),
            reloads: cv("agent_monitor_policy_reloads_total", "Policy reloads, by result.", &["result"]),
            layer_up: gv("agent_monitor_layer_up", "1 if the enforcement layer is active on this host.", &["layer"]),
            build_info: gv("agent_monitor_build_info", "Build information.", &["version"]),
            policy_info: gv(
                "agent_monitor_policy_info",
                "1 for the hash of the policy in force (the same hash as `agent-monitor status` and policy.load events).",
                &["hash"],
            ),
            tls_hooked: reg(
                &r,
                IntGauge::new(
                    "agent_monitor_tls_hooked_processes",
                    "Agent processes whose TLS library calls the daemon hooked directly (tls_uprobes = \"agents\"); their descendants inherit the hooks.",
                )
                .unwrap(),
            ),
            tls_handshakes_held: reg(
                &r,
                IntCounter::new(
                    "agent_monitor_tls_handshakes_held_total",
                    "TLS ClientHellos of new agent processes held in the kernel until the daemon had hooked their TLS library (TCP sends them again, ~200 ms later).",
                )
                .unwrap(),
            ),
            policy_agents: reg(
                &r,
                IntGauge::new("agent_monitor_policy_agents", "Agent profiles in the enforcing policy.").unwrap(),
            ),
            bpf_stats_ratio: reg(
                &r,
                prometheus::Gauge::new(
                    "agent_monitor_bpf_stats_sample_ratio",
                    "Share of the time the kernel counts BPF program runs (1 on, 0.1 sampled, 0 off or refused); \
                     agent_monitor_bpf_program_* are what it counted divided by this.",
                )
                .unwrap(),
            ),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let _ = m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        for outcome in ["approved", "denied", "timeout", "restart"] {
            m.hold_decisions.with_label_values(&[outcome]);
        }
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Create each agent's violation and kill series at 0, so that the first violation is an
    /// increase Prometheus can see (a series born at 1 has no increase).
    /// The policy in force: its hash and how many agent profiles it has.
    pub fn set_policy(&self, hash: &str, agents: usize) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[hash]).set(1);
        self.policy_agents.set(agents as i64);
    }

    pub fn init_agents(&self, agents: &[&str]) {
        use agent_monitor_common::Kind;
        for agent in agents {
            self.kills.with_label_values(&[agent]);
            for kind in Kind::ALL.iter().filter(|k| !matches!(k, Kind::ProcessExec | Kind::ProcessExit)) {
                for action in ["alerted", "denied", "killed"] {
                    self.violations.with_label_values(&[agent, kind.name(), action]);
                }
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
