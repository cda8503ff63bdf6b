//! The daemon's state, shared by its tasks (the event pipeline, the control socket, the periodic
//! refresh, signal handling).
//!
//! **Lock order.** Where two of these locks are held at once, they are taken in this order, and
//! never the other way round: `registered` → `compiled` → `resolved` → `kernel` → `decoder` →
//! `log` → `journal`. `tls_invisible` and the locks inside `holds` are leaves (nothing is taken
//! while they are held). `kernel` is held only for map reads and writes, never across /proc walks
//! that can be done before taking it.
use std::{
    collections::HashSet,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_monitor_common::Event;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::{error, warn};

use crate::{
    bpf::{apply::Protected, stats::StatsSampler, Kernel},
    enforce::holds::Holds,
    events::{decode::rfc3339, Decoder, EventRecord},
    metrics::{Health, Metrics},
    policy::{CompiledPolicy, NetRule, PolicySource, TlsUprobes},
    sinks::{
        journal::{Admit, JournalLimiter},
        log::{open_sink, EventLog},
        webhook::WebhookSink,
    },
};

pub struct State {
    /// Where the policy comes from (a reload reads the same source).
    pub source: PolicySource,
    pub kernel: Mutex<Kernel>,
    /// The daemon's own paths (configuration, events log, pins, control socket, binary).
    pub protected: Vec<Protected>,
    pub decoder: Mutex<Decoder>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The events log's path ("-": stdout).
    pub events_path: String,
    /// The events log: its sink and its hash chain (see `sinks::audit`).
    pub log: Mutex<EventLog>,
    /// The live event lines (`events --follow`).
    pub live: broadcast::Sender<String>,
    pub compiled: Mutex<CompiledPolicy>,
    /// The current resolution of the policy's host names.
    pub resolved: Mutex<Vec<NetRule>>,
    /// Agent processes seen doing TLS the daemon cannot look into.
    pub tls_invisible: Mutex<HashSet<u32>>,
    pub webhooks: Vec<WebhookSink>,
    /// `[daemon] syslog`: every event also as an RFC 5424 message.
    pub syslog: Option<crate::sinks::syslog::SyslogSink>,
    /// Cgroups registered by `agent-monitor exec` (cgroup path, agent name): dynamic selectors
    /// kept across reloads.
    pub registered: Mutex<Vec<(String, String)>>,
    pub holds: Holds,
    pub hold_timeout: Duration,
    /// When the kernel counts program runs (`[daemon] bpf_stats`).
    pub bpf_stats: StatsSampler,
    /// Violation lines in the daemon's own log (the journal), rate-limited.
    pub journal: Mutex<JournalLimiter>,
    /// `[daemon] tls_uprobes`: where the TLS libraries agents map are hooked.
    pub tls_uprobes: TlsUprobes,
}

impl State {
    /// Count and write one event (`rec`, decoded from `ev`). The events log is the complete
    /// record: a failed write is counted and logged, never silently dropped.
    pub fn record(&self, ev: &Event, rec: &EventRecord) {
        let written = self.log.lock().unwrap().record(&self.metrics, ev, rec);
        self.sink_result(written);
        if let Some(s) = &self.syslog {
            s.send(rec);
        }
        if !rec.is_violation() {
            return;
        }
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
                kind = rec.kind.name(),
                target = rec.target,
                action = rec.action.name(),
                "violation"
            );
        }
        for w in &self.webhooks {
            w.send(rec);
        }
    }

    /// Seal a record that is not a decoded event (`policy.load`, `hold.decision`) into the audit
    /// chain and append it to the events log, with a `ts` and an `id`, and flush.
    pub fn write_record(&self, mut rec: Map<String, Value>) -> Value {
        rec.insert("ts".into(), Value::String(rfc3339(now_ns())));
        rec.insert("id".into(), Value::String(self.decoder.lock().unwrap().next_id()));
        let rec = Value::Object(rec);
        let json = rec.to_string();
        if let Some(s) = &self.syslog {
            let (kind, ts) = (rec["kind"].as_str().unwrap_or("record"), rec["ts"].as_str().unwrap_or_default());
            s.send_record(kind, ts, &json);
        }
        let written = self.log.lock().unwrap().write_json(&json);
        self.sink_result(written);
        self.flush();
        rec
    }

    /// The reader flushes once per ring-buffer batch; other writers right after writing.
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
    pub fn record_policy(&self, compiled: &CompiledPolicy) {
        let mut rec = Map::new();
        rec.insert("kind".into(), "policy.load".into());
        rec.insert("policy".into(), self.source.describe().into());
        rec.insert("policy_hash".into(), compiled.hash.clone().into());
        rec.insert("agents".into(), compiled.agents.len().into());
        self.write_record(rec);
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

    /// SIGKILL every process of an agent instance (`enforce::kill`).
    pub fn kill_instance(&self, run_id: u64) {
        crate::enforce::kill::kill_instance(&self.kernel, run_id);
    }

    /// A decision on a held action, carried out and written to the events log.
    pub fn decide_hold(&self, id: &str, d: crate::enforce::holds::Decision) -> anyhow::Result<Value> {
        let rec = self.holds.decide(id, d, &self.kernel, &self.metrics)?;
        Ok(self.write_record(rec))
    }

    /// Deny the holds nobody answered in time.
    pub fn expire_holds(&self) {
        for rec in self.holds.expire(self.hold_timeout, &self.kernel, &self.metrics) {
            self.write_record(rec);
        }
    }
}

pub fn now_ns() -> i128 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_nanos() as i128
}
