//! Webhook alert sink.
//!
//! Sending never blocks or slows enforcement: the event path only `try_send`s into a bounded
//! queue per receiver; a worker thread posts with retries and backoff. Every send, failure and
//! drop is counted (`agent_monitor_webhook_*`). The events log stays the complete record.
use std::{
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use tracing::{debug, warn};

use crate::{
    events::EventRecord,
    metrics::Metrics,
    policy::{Webhook, WebhookFormat},
};

/// Events waiting per receiver before new ones are dropped (and counted).
pub const QUEUE: usize = 1024;
/// Attempts per event, with exponential backoff from `BACKOFF`.
pub const ATTEMPTS: u32 = 4;
pub const BACKOFF: Duration = Duration::from_millis(250);

pub struct WebhookSink {
    name: String,
    tx: SyncSender<EventRecord>,
    metrics: Arc<Metrics>,
}

/// The receiver's label: scheme, host and path, never credentials or a query string.
pub fn receiver_label(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
            format!("{scheme}://{rest}")
        }
        None => no_query.to_string(),
    }
}

/// The Alertmanager API v2 body for one violation. Its names are not the rule-based alerts'
/// (`AgentMonitorViolation` in dashboards/alerts.yml counts violations per agent from the
/// metrics): one alert per event, `AgentMonitorViolationEvent` (or `AgentMonitorHold` for a
/// held action), labelled with the host and the operator's labels.
pub fn alertmanager_body(e: &EventRecord, origin: &super::Origin) -> serde_json::Value {
    let severity = if e.action == agent_monitor_common::Action::Killed { "critical" } else { "warning" };
    // A held action waits for a person: its own alert, carrying the command that approves it.
    let (alertname, approve) = if e.action == agent_monitor_common::Action::Held {
        let cmd = e.detail.split('`').nth(1).unwrap_or_default().to_string();
        ("AgentMonitorHold", cmd)
    } else {
        ("AgentMonitorViolationEvent", String::new())
    };
    let mut labels = serde_json::Map::new();
    for (k, v) in &origin.labels {
        labels.insert(k.clone(), json!(v));
    }
    // The alert's own labels after the operator's (validation keeps the names apart).
    for (k, v) in [
        ("alertname", json!(alertname)),
        ("host", json!(origin.host)),
        ("agent", json!(e.agent)),
        ("kind", json!(e.kind)),
        ("action", json!(e.action)),
        ("severity", json!(severity)),
        ("source", json!("agent-monitor")),
    ] {
        labels.insert(k.into(), v);
    }
    json!([{
        "labels": labels,
        "annotations": {
            "summary": format!("agent {} {}: {} {}", e.agent, e.action, e.kind, e.target),
            "target": e.target,
            "event_id": e.id,
            "process": format!("{} (pid {}, {})", e.comm, e.pid, e.exe),
            "detail": e.detail,
            "run": e.run,
            "approve": approve,
        },
        "startsAt": e.ts,
    }])
}

impl WebhookSink {
    pub fn start(hook: &Webhook, metrics: Arc<Metrics>, origin: super::Origin) -> WebhookSink {
        let name = receiver_label(&hook.url);
        let (tx, rx) = sync_channel(QUEUE);
        let (hook, m, n) = (hook.clone(), metrics.clone(), name.clone());
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || worker(rx, hook, m, n, origin))
            .expect("spawn webhook worker");
        for c in [&metrics.webhook_sent, &metrics.webhook_failures, &metrics.webhook_dropped] {
            c.with_label_values(&[&name]);
        }
        WebhookSink { name, tx, metrics }
    }

    /// Queue a violation; never blocks.
    pub fn send(&self, e: &EventRecord) {
        match self.tx.try_send(e.clone()) {
            Ok(()) => self.metrics.webhook_queue.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.webhook_dropped.with_label_values(&[&self.name]).inc();
            }
        }
    }
}

/// The system's CA bundles, where Debian/Ubuntu, Fedora/RHEL and others keep them.
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The certificates an `https://` webhook is verified against: the system's CA store (the
/// first bundle found) and the hook's `ca_file`. Mozilla's bundled roots if neither gives one.
fn root_certs(hook: &Webhook, name: &str) -> ureq::tls::RootCerts {
    let mut certs = Vec::new();
    let mut load = |path: &str, what: &str| match std::fs::read(path) {
        Ok(pem) => {
            let before = certs.len();
            for item in ureq::tls::parse_pem(&pem).flatten() {
                if let ureq::tls::PemItem::Certificate(c) = item {
                    certs.push(c.to_owned());
                }
            }
            if certs.len() == before {
                warn!(receiver = name, path, "{what} holds no PEM certificate");
            }
            true
        }
        Err(e) => {
            if what == "ca_file" {
                warn!(receiver = name, path, error = %e, "cannot read the webhook's ca_file");
            }
            false
        }
    };
    let _ = SYSTEM_CA_BUNDLES.iter().any(|p| load(p, "the system CA bundle"));
    if let Some(ca) = &hook.ca_file {
        load(ca, "ca_file");
    }
    if certs.is_empty() {
        warn!(receiver = name, "no system CA store found: using the bundled Mozilla roots");
        return ureq::tls::RootCerts::WebPki;
    }
    ureq::tls::RootCerts::new_with_certs(&certs)
}

/// `Authorization: Bearer TOKEN` from the hook's token file, read now (a rotated token is used
/// at the next delivery). `Err` if the file is configured and cannot be read.
fn bearer(hook: &Webhook) -> Result<Option<String>, String> {
    let Some(path) = &hook.bearer_token_file else { return Ok(None) };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(format!("Bearer {}", t.trim()))),
        Ok(_) => Err(format!("the bearer token file {path} is empty")),
        Err(e) => Err(format!("cannot read the bearer token file {path}: {e}")),
    }
}

fn worker(rx: Receiver<EventRecord>, hook: Webhook, metrics: Arc<Metrics>, name: String, origin: super::Origin) {
    let (url, format) = (hook.url.clone(), hook.format);
    let mut config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).http_status_as_error(true);
    if url.starts_with("https://") {
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(root_certs(&hook, &name)).build());
    }
    let agent: ureq::Agent = config.build().into();
    while let Ok(e) = rx.recv() {
        metrics.webhook_queue.dec();
        let body = match format {
            WebhookFormat::Alertmanager => alertmanager_body(&e, &origin),
            WebhookFormat::Json => {
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("host".into(), json!(origin.host));
                    if !origin.labels.is_empty() {
                        o.insert("labels".into(), json!(origin.labels));
                    }
                }
                v
            }
        };
        let mut delay = BACKOFF;
        let mut ok = false;
        for attempt in 1..=ATTEMPTS {
            let auth = match bearer(&hook) {
                Ok(a) => a,
                Err(why) => {
                    metrics.webhook_failures.with_label_values(&[&name]).inc();
                    warn!(receiver = name, "{why}: the alert is not sent");
                    break;
                }
            };
            let mut req = agent.post(&url).content_type("application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match req.send(body.to_string()) {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(err) => {
                    metrics.webhook_failures.with_label_values(&[&name]).inc();
                    debug!(receiver = name, attempt, error = %err, "webhook post failed");
                    if attempt < ATTEMPTS {
                        std::thread::sleep(delay);
                        delay *= 2;
                    }
                }
            }
        }
        if ok {
            metrics.webhook_sent.with_label_values(&[&name]).inc();
        } else {
            metrics.webhook_dropped.with_label_values(&[&name]).inc();
            warn!(
                receiver = name,
                event = e.id,
                "webhook gave up after {ATTEMPTS} attempts; the event is in the events log"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hide_credentials_and_queries() {
        assert_eq!(receiver_label("http://127.0.0.1:9093/api/v2/alerts"), "http://127.0.0.1:9093/api/v2/alerts");
        assert_eq!(receiver_label("https://user:secret@hooks.example/x?token=abc"), "https://hooks.example/x");
    }

    #[test]
    fn alertmanager_payload_carries_labels_and_annotations() {
        let e = EventRecord {
            ts: "2026-11-27T09:24:43Z".into(),
            id: "abc-1".into(),
            agent: "forum-analyst".into(),
            run: "00ff".into(),
            pid: 42,
            ppid: 1,
            uid: 0,
            comm: "forum-agent".into(),
            exe: "/opt/forum-agent".into(),
            kind: agent_monitor_common::Kind::NetHttpWrite,
            target: "forum.internal:443".into(),
            verdict: agent_monitor_common::Verdict::Violation,
            action: agent_monitor_common::Action::Killed,
            layer: agent_monitor_common::Layer::Uprobe,
            rule: "network.http_methods".into(),
            detail: "POST /answer HTTP/1.1".into(),
            policy_hash: None,
        };
        let origin = crate::sinks::Origin {
            host: "web-3".into(),
            labels: [("site".to_string(), "fra1".to_string()), ("cluster".to_string(), "ci".to_string())].into(),
        };
        let b = alertmanager_body(&e, &origin);
        let a = &b[0];
        assert_eq!(a["labels"]["alertname"], "AgentMonitorViolationEvent");
        assert_eq!(a["labels"]["host"], "web-3");
        assert_eq!(a["labels"]["site"], "fra1");
        assert_eq!(a["labels"]["cluster"], "ci");
        assert_eq!(a["labels"]["agent"], "forum-analyst");
        assert_eq!(a["labels"]["kind"], "net.http_write");
        assert_eq!(a["labels"]["action"], "killed");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["annotations"]["target"], "forum.internal:443");
        assert_eq!(a["annotations"]["event_id"], "abc-1");
        assert_eq!(a["startsAt"], "2026-11-27T09:24:43Z");
    }
}
