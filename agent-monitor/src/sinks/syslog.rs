//! Events to the host's syslog daemon as RFC 5424 messages (`[daemon] syslog`): the way into the
//! log pipelines fleets already run (rsyslog, syslog-ng, and from there Elasticsearch, Splunk,
//! Loki...). Each event is one message: MSGID the event kind, the decision fields as structured
//! data (`[agentmonitor@32473 ...]`, the SD-ID of RFC 5612's documentation enterprise number, so
//! no registration is claimed), the whole event JSON as the message.
//!
//! Written by hand: the message is one formatted line (RFC 5424 section 6), and the crates that
//! exist for it bring a logger facade this daemon does not route events through.
//!
//! Sent from a thread of its own through a bounded queue: the event path never waits on the
//! socket; what does not fit is dropped and counted (`agent_monitor_sink_errors_total{sink="syslog"}`),
//! and stays in the events log.
use std::{
    net::UdpSocket,
    os::unix::net::UnixDatagram,
    sync::{
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
};

use anyhow::{anyhow, bail, Context as _};
use tracing::warn;

use super::Origin;
use crate::{events::EventRecord, metrics::Metrics};

const QUEUE: usize = 8192;
/// `authpriv`: security and authorization messages (Debian's rsyslog writes them to
/// /var/log/auth.log).
const FACILITY: u8 = 10;

/// Where messages go: `udp:HOST:PORT` or `unix:PATH` (a datagram socket such as /dev/log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Udp(String),
    Unix(String),
}

impl Target {
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        if let Some(a) = s.strip_prefix("udp:") {
            if a.rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then_some(p))
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
            {
                bail!("syslog \"{s}\": expected udp:HOST:PORT");
            }
            return Ok(Target::Udp(a.to_string()));
        }
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                bail!("syslog \"{s}\": expected unix:/absolute/path");
            }
            return Ok(Target::Unix(p.to_string()));
        }
        Err(anyhow!("syslog \"{s}\": expected udp:HOST:PORT or unix:/path (a datagram socket)"))
    }
}

pub struct SyslogSink {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
    origin: Origin,
    pid: u32,
}

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram, String),
}

impl SyslogSink {
    pub fn start(target: &str, origin: Origin, metrics: Arc<Metrics>) -> anyhow::Result<SyslogSink> {
        let socket = match Target::parse(target)? {
            Target::Udp(addr) => {
                let s = UdpSocket::bind(if addr.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })?;
                s.connect(&addr).with_context(|| format!("syslog: connecting to {addr}"))?;
                Socket::Udp(s)
            }
            Target::Unix(path) => Socket::Unix(UnixDatagram::unbound()?, path),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new().name("syslog".into()).spawn(move || {
            let mut said = false;
            while let Ok(msg) = rx.recv() {
                let sent = match &socket {
                    Socket::Udp(s) => s.send(msg.as_bytes()).map(|_| ()),
                    Socket::Unix(s, path) => s.send_to(msg.as_bytes(), path).map(|_| ()),
                };
                if let Err(e) = sent {
                    m.sink_errors.with_label_values(&["syslog"]).inc();
                    if !std::mem::replace(&mut said, true) {
                        warn!(error = %e, "sending events to syslog failed (said once; counted in agent_monitor_sink_errors_total{{sink=\"syslog\"}})");
                    }
                }
            }
        })?;
        metrics.sink_errors.with_label_values(&["syslog"]);
        Ok(SyslogSink { tx, metrics, origin, pid: std::process::id() })
    }

    /// Queue one event; never blocks.
    pub fn send(&self, rec: &EventRecord) {
        let mut json = String::with_capacity(512);
        rec.write_json(&mut json);
        let severity = if rec.is_violation() { 4 } else { 6 };
        let sd = [
            ("id", rec.id.as_str()),
            ("agent", &rec.agent),
            ("kind", rec.kind.name()),
            ("verdict", rec.verdict.name()),
            ("action", rec.action.name()),
            ("layer", rec.layer.name()),
            ("rule", &rec.rule),
            ("target", &rec.target),
            ("comm", &rec.comm),
        ];
        let pid = rec.pid.to_string();
        let msg = message(&self.origin, self.pid, severity, &rec.ts, rec.kind.name(), &sd, &[("pid", &pid)], &json);
        self.queue(msg);
    }

    /// Queue a record that is not a decoded event (`policy.load`, `hold.decision`).
    pub fn send_record(&self, kind: &str, ts: &str, json: &str) {
        let msg = message(&self.origin, self.pid, 5, ts, kind, &[("kind", kind)], &[], json);
        self.queue(msg);
    }

    fn queue(&self, msg: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            self.metrics.sink_errors.with_label_values(&["syslog"]).inc();
        }
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
#[allow(clippy::too_many_arguments)]
fn message(
    origin: &Origin,
    pid: u32,
    severity: u8,
    ts: &str,
    msgid: &str,
    sd: &[(&str, &str)],
    more: &[(&str, &str)],
    msg: &str,
) -> String {
    let mut out = format!(
        "<{}>1 {} {} agent-monitor {pid} {} [agentmonitor@32473",
        FACILITY * 8 + severity,
        header_field(ts),
        header_field(&origin.host),
        header_field(msgid)
    );
    let labels = origin.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (k, v) in sd.iter().chain(more).copied().chain(labels) {
        if v.is_empty() {
            continue;
        }
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            // RFC 5424 6.3.3: '"', '\' and ']' are escaped in a parameter value.
            if matches!(c, '"' | '\\' | ']') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push_str("] ");
    out.push_str(msg);
    out
}

/// A header field: printable US-ASCII without spaces, at most 255 characters; "-" if empty.
fn header_field(s: &str) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rfc5424_message_with_escaped_structured_data() {
        let o = Origin { host: "web 3".into(), labels: [("site".to_string(), "fra1".to_string())].into() };
        let m = message(
            &o,
            7,
            4,
            "2026-12-04T10:00:00.000000000Z",
            "file.write",
            &[("target", "/a\"b]c\\d"), ("rule", "")],
            &[],
            "{}",
        );
        assert_eq!(
            m,
            r#"<84>1 2026-12-04T10:00:00.000000000Z web3 agent-monitor 7 file.write [agentmonitor@32473 target="/a\"b\]c\\d" site="fra1"] {}"#
        );
        assert_eq!(Target::parse("udp:127.0.0.1:514").unwrap(), Target::Udp("127.0.0.1:514".into()));
        assert_eq!(Target::parse("unix:/dev/log").unwrap(), Target::Unix("/dev/log".into()));
        assert!(
            Target::parse("udp:514").is_err()
                && Target::parse("tcp:x:1").is_err()
                && Target::parse("unix:dev").is_err()
        );
    }
}
