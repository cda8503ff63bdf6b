//! The control protocol: one JSON request line per connection, answered with JSON lines.
//!
//! ```text
//! {"cmd":"status"}                                   -> one Status object
//! {"cmd":"events"}                                   -> event lines as they are written, until closed
//! {"cmd":"reload"}                                   -> {"ok":true} or {"error":"...","diagnostics":[...]}
//! {"cmd":"approve","id":"hold-1","for_secs":0}       -> the hold.decision record
//! {"cmd":"deny","id":"hold-1"}                       -> the hold.decision record
//! {"cmd":"register","agent":"NAME","cgroup":"/..."}  -> {"ok":true}   (agent-monitor exec)
//! {"cmd":"unregister","cgroup":"/..."}               -> {"ok":true}
//! ```
//! Any request may be answered `{"error": "..."}` instead.
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/agent-monitor/control.sock";

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Events,
    Reload,
    Approve {
        id: String,
        /// 0: once.
        #[serde(default)]
        for_secs: u64,
    },
    Deny {
        id: String,
    },
    Register {
        agent: String,
        cgroup: String,
    },
    Unregister {
        cgroup: String,
    },
}

/// A reply line other than an event line or a status. A line reads as the variant its keys
/// name (`Deserialize` below), as the CLI reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Error {
        error: String,
        /// For a rejected reload: each error as `FILE:LINE:COL: message`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diagnostics: Vec<String>,
    },
    Ok {
        ok: bool,
    },
    /// `events --follow` fell behind.
    Lagged {
        lagged: u64,
        note: String,
    },
    /// A hold decision record, or a status: any other object.
    Record(serde_json::Value),
}

/// A reply line is read as the variant whose key it has (`error`, `ok`, `lagged`; the first that
/// reads, in this order) and only as one of those: an object with such a key that is not a
/// well-formed reply is an error, not a `Record`. Any other value is a `Record`. Duplicate keys
/// read as the CLI reads them (`serde_json::Value`: the last one counts), so a reply written
/// back reads as the same reply. (Untagged, an object that failed to read as its variant,
/// `{"ok":true,"ok":false}`, became a `Record`, written back as `{"ok":false}`: an `Ok`.)
impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Known {
            Error {
                error: String,
                #[serde(default)]
                diagnostics: Vec<String>,
            },
            Ok {
                ok: bool,
            },
            Lagged {
                lagged: u64,
                note: String,
            },
        }
        let v = serde_json::Value::deserialize(d)?;
        if !["error", "ok", "lagged"].iter().any(|k| v.get(k).is_some()) {
            return Ok(Reply::Record(v));
        }
        Ok(match Known::deserialize(v).map_err(serde::de::Error::custom)? {
            Known::Error { error, diagnostics } => Reply::Error { error, diagnostics },
            Known::Ok { ok } => Reply::Ok { ok },
            Known::Lagged { lagged, note } => Reply::Lagged { lagged, note },
        })
    }
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Self {
        Reply::Error { error: e.into(), diagnostics: Vec::new() }
    }

    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("replies serialise");
        s.push('\n');
        s
    }
}

/// `status`: the layers, agents and their processes, holds, TLS hooks and counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub policy: PolicyStatus,
    pub layers: Layers,
    pub pins: Option<Pins>,
    pub holds: Vec<serde_json::Value>,
    pub tls_libraries: Vec<String>,
    pub tls_hooks: TlsHooks,
    pub agents: Vec<AgentStatus>,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub source: String,
    pub hash: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Layers {
    pub tracepoint: bool,
    pub cgroup: bool,
    pub uprobe: bool,
    pub bpf_lsm: bool,
    pub landlock: bool,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    pub dir: String,
    pub adopted: bool,
}

/// Where the TLS functions are hooked: what is in force, not what was asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsHooks {
    /// "agents", "all processes" or "none".
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracefs_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooked_processes: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub action: String,
    pub processes: Vec<ProcessStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub pid: u32,
    pub run: String,
    pub comm: String,
    /// "visible", "invisible" or "none seen".
    pub tls: String,
    /// The hooked TLS stacks it maps, as "stack (file)": what the uprobes can read of it.
    /// Empty: whatever TLS it does is opaque.
    #[serde(default)]
    pub tls_stacks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events_lost: u64,
    pub reloads_failed: u64,
    pub reloads_succeeded: u64,
}

/// Client side, blocking: one request, one reply line (`exec` uses it before it forks). A reply
/// `{"error": ...}` is an error.
pub fn call(path: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("no control socket at {}", path.display()))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    sock.write_all(request_line(req).as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(&sock).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if let Some(e) = v.get("error").and_then(serde_json::Value::as_str) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

/// Client side: send one request, return the connected reader of the reply lines.
pub async fn request(
    path: &Path,
    req: &Request,
) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let sock = UnixStream::connect(path).await.with_context(|| {
        format!("cannot reach agent-monitor at {} (is it running? are you root or in its admin group?)", path.display())
    })?;
    let (rd, mut wr) = sock.into_split();
    // A refusal may close the connection early: what the daemon said matters, not the EPIPE.
    let _ = wr.write_all(request_line(req).as_bytes()).await;
    Ok(BufReader::new(rd).lines())
}

fn request_line(req: &Request) -> String {
    let mut s = serde_json::to_string(req).expect("requests serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_form() {
        let cases = [
            (Request::Status, r#"{"cmd":"status"}"#),
            (
                Request::Approve { id: "hold-1".into(), for_secs: 90 },
                r#"{"cmd":"approve","id":"hold-1","for_secs":90}"#,
            ),
            (
                Request::Register { agent: "a".into(), cgroup: "/x".into() },
                r#"{"cmd":"register","agent":"a","cgroup":"/x"}"#,
            ),
        ];
        for (req, wire) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), req);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"approve","id":"h"}"#).unwrap(),
            Request::Approve { id: "h".into(), for_secs: 0 }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }

    #[test]
    fn replies_read_back_as_what_they_are() {
        let e: Reply = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(e, Reply::error("no"));
        assert_eq!(serde_json::from_str::<Reply>(r#"{"ok":true}"#).unwrap(), Reply::Ok { ok: true });
        assert_eq!(Reply::error("x").line(), "{\"error\":\"x\"}\n");
    }

    #[test]
    fn a_reply_reads_as_the_variant_its_keys_name() {
        // (found by the control fuzz target: untagged, an object that failed to read as its
        // variant, here for a duplicate key, was a Record, and read back as the variant)
        let cases = [
            (r#"{"lagged":12,"note":12,"note":""}"#, Reply::Lagged { lagged: 12, note: String::new() }),
            (r#"{"ok":true,"ok":false}"#, Reply::Ok { ok: false }),
            (r#"{"error":"a","error":"b"}"#, Reply::error("b")),
            (r#"{"error":5,"ok":true}"#, Reply::Ok { ok: true }),
        ];
        for (line, want) in cases {
            let r: Reply = serde_json::from_str(line).unwrap();
            assert_eq!(r, want, "{line}");
            assert_eq!(serde_json::from_str::<Reply>(&r.line()).unwrap(), r, "{line}");
        }
        for line in [r#"{"error":5}"#, r#"{"lagged":"x","note":""}"#, r#"{"ok":1}"#] {
            assert!(serde_json::from_str::<Reply>(line).is_err(), "{line}");
        }
        let record = serde_json::json!({"hold": "hold-1", "decision": "approved"});
        assert_eq!(serde_json::from_value::<Reply>(record.clone()).unwrap(), Reply::Record(record));
        assert_eq!(serde_json::from_str::<Reply>("[1]").unwrap(), Reply::Record(serde_json::json!([1])));
    }

    #[test]
    fn numbers_read_back_as_the_same_numbers() {
        // (found by the control fuzz target: serde_json's default float parser can be one ulp
        // off, so this number, written back, read back as another one)
        for n in ["7777777777777777777777777777777777777777777777777777777", "2.2250738585072011e-308", "0.1"] {
            let r: Reply = serde_json::from_str(n).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&r.line()).unwrap(), r, "{n}");
        }
    }
}
