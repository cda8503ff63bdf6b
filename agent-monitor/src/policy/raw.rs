//! The raw model: the TOML file as written, as serde reads it. Every table rejects unknown keys;
//! values a semantic check may point at are [`Spanned`](toml::Spanned). Only values and
//! `[[agent]]` tables are spanned: toml 0.8 cannot span a table made of dotted keys.
use super::model::{Action, WebhookFormat};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub alerts: RawAlerts,
    #[serde(default)]
    pub agent: Vec<Spanned<RawAgent>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub metrics_listen: Option<Spanned<String>>,
    pub events_file: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub admin_group: Option<Spanned<String>>,
    pub pin_path: Option<Spanned<String>>,
    pub hold_timeout_secs: Option<Spanned<u64>>,
    pub bpf_stats: Option<super::BpfStats>,
    pub tls_uprobes: Option<super::TlsUprobes>,
    pub host_name: Option<Spanned<String>>,
    pub labels: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    pub syslog: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    pub ca_file: Option<Spanned<String>>,
    pub bearer_token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub name: Spanned<String>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub audit: bool,
    /// Not `Spanned`: toml 0.8 gives no span to a table made by dotted keys
    /// (`match.comm = [...]`), and `Spanned` then fails to deserialise it.
    #[serde(default, rename = "match")]
    pub selector: Option<RawMatch>,
    #[serde(default)]
    pub files: RawFiles,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub syscalls: RawSyscalls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub comm: Vec<Spanned<String>>,
    #[serde(default)]
    pub exe: Vec<Spanned<String>>,
    #[serde(default)]
    pub cgroup: Vec<Spanned<String>>,
    #[serde(default)]
    pub uid: Vec<Spanned<u32>>,
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    #[serde(default)]
    pub writable: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// Each entry a string (`"host:443"`) or a table (`{ to = "host:443", protocol = "udp",
    /// methods = [...], paths = [...], opaque_tls = true }`), told apart by the validator (serde's
    /// untagged enums lose toml's spans).
    #[serde(default)]
    pub allow: Vec<Spanned<toml::Value>>,
    /// `None` when absent: the default methods apply; `Some([])` means no request is a read.
    pub http_methods: Option<Vec<Spanned<String>>>,
    /// Replaced by per-destination `opaque_tls`: refused with a message saying so.
    pub require_http_visibility: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyscalls {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
}
