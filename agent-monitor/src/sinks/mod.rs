//! Where events go after the decoder: the events log with its hash chain (`log`, `audit`), the
//! daemon's own log (the journal, rate-limited: `journal`) and webhooks (`webhook`).
//!
//! A new sink is a module here, fed by `daemon::pipeline` (decoded events) and depending on
//! nothing above `events` and `metrics`.
pub mod audit;
pub mod journal;
pub mod log;
pub mod syslog;
pub mod webhook;

use std::collections::BTreeMap;

/// Where events come from, on every events-log line and webhook alert: the host's name and the
/// operator's labels (`[daemon] host_name`, `labels`), so that a fleet's events and alerts say
/// which host and group and inhibit per host in Alertmanager.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    pub host: String,
    pub labels: BTreeMap<String, String>,
}

impl Origin {
    pub fn new(config: &crate::policy::DaemonConfig) -> Origin {
        let host = config.host_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        });
        Origin { host, labels: config.labels.clone() }
    }

    /// The fields every events-log line ends with: `,"host":"...","labels":{...}` (no labels
    /// field when there are none).
    pub fn json_fields(&self) -> String {
        let mut out = format!(",\"host\":{}", serde_json::Value::from(self.host.as_str()));
        if !self.labels.is_empty() {
            out.push_str(",\"labels\":");
            out.push_str(&serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into()));
        }
        out
    }
}
