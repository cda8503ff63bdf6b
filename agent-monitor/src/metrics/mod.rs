//! The Prometheus registry and the `/metrics` + `/healthz` server.
//!
//! Label sets are bounded: agent names come from the policy, kinds and actions from fixed
//! lists; never a pid, path or address.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    sync::Arc,
};

use agent_monitor_common::{action, verdict, Event, AGENT_SLOTS_PER_GEN};

use prometheus::{CounterVec, Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

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

/// The series each decoded event counts into (`agent_monitor_events_total`, and
/// `agent_monitor_violations_total` and `agent_monitor_kills_total` for violations and kills),
/// kept by what the kernel said: (agent slot, kind, verdict, action). The event path counts
/// through these handles: `with_label_values` hashes its label strings, takes the metric's read
/// lock and clones the handle on every call, which showed in profiles of the event path.
#[derive(Default)]
pub struct EventSeries {
    map: HashMap<u64, Series, BuildHasherDefault<KeyHasher>>,
}

struct Series {
    /// The agent name the handles carry: after a reload a slot may be named differently.
    agent: String,
    events: IntCounter,
    violations: Option<IntCounter>,
    kills: Option<IntCounter>,
}

impl EventSeries {
    /// Count `rec`, decoded from `ev` (the key is taken from `ev`, the labels from `rec`).
    pub fn count(&mut self, m: &Metrics, ev: &Event, rec: &crate::events::EventRecord) {
        // At most 256 slots x the kinds x 2 verdicts x 5 actions: the map stays small.
        let action = match ev.action {
            action::ALERTED | action::DENIED | action::KILLED | action::HELD => ev.action,
            _ => action::NONE,
        };
        let key = (ev.agent & (AGENT_SLOTS_PER_GEN - 1)) as u64
            | ((ev.verdict == verdict::VIOLATION) as u64) << 8
            | (action as u64) << 9
            | (ev.kind as u64) << 16;
        let series = || Series {
            agent: rec.agent.clone(),
            events: m.events.with_label_values(&[&rec.agent, &rec.kind, &rec.verdict]),
            violations: (rec.verdict == "violation")
                .then(|| m.violations.with_label_values(&[&rec.agent, &rec.kind, &rec.action])),
            kills: (rec.action == "killed").then(|| m.kills.with_label_values(&[&rec.agent])),
        };
        let s = self.map.entry(key).or_insert_with(series);
        if s.agent != rec.agent {
            *s = series();
        }
        s.events.inc();
        if let Some(v) = &s.violations {
            v.inc();
        }
        if let Some(k) = &s.kills {
            k.inc();
        }
    }
}

/// For `EventSeries`' small integer keys: one multiply (as FxHash), rotated so that the
/// well-mixed high bits pick the bucket.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

/// Serve `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "metrics listening");
    }
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the whole request head (closing with unread bytes would reset the connection).
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::{kind, Kind};

    #[test]
    fn event_series_count_what_with_label_values_counts() {
        let m = Metrics::new();
        let mut series = EventSeries::default();
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.kind = kind::FILE_WRITE;
        ev.agent = 1;
        let mut rec = crate::events::EventRecord {
            agent: "a".into(),
            kind: Kind::FileWrite.name().into(),
            verdict: "allowed".into(),
            action: "none".into(),
            ..Default::default()
        };
        series.count(&m, &ev, &rec);
        series.count(&m, &ev, &rec);
        (ev.verdict, ev.action) = (verdict::VIOLATION, action::KILLED);
        (rec.verdict, rec.action) = ("violation".into(), "killed".into());
        series.count(&m, &ev, &rec);
        // A reload names slot 1 differently: its series are the new name's.
        rec.agent = "b".into();
        series.count(&m, &ev, &rec);
        let events = |a: &str, v: &str| m.events.with_label_values(&[a, "file.write", v]).get();
        assert_eq!((events("a", "allowed"), events("a", "violation"), events("b", "violation")), (2, 1, 1));
        assert_eq!(m.violations.with_label_values(&["a", "file.write", "killed"]).get(), 1);
        assert_eq!(m.violations.with_label_values(&["b", "file.write", "killed"]).get(), 1);
        assert_eq!((m.kills.with_label_values(&["a"]).get(), m.kills.with_label_values(&["b"]).get()), (1, 1));
        assert!(!m.render().contains("agent_monitor_violations_total{action=\"none\""));
    }
}
