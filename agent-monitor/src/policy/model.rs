//! The policy as users write it and as the daemon reads it.
//!
//! The public model ([`Policy`] and friends): plain, validated, normalised values the daemon
//! uses directly (paths without duplicate or trailing slashes, parsed `allow` entries, host names
//! in lower case). `super::raw` mirrors the file as written; `super::validate` lowers it into
//! this model with the value checkers of `super::checks`.

use std::fmt;
use std::net::IpAddr;
#[cfg(test)]
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;

/// At most this many `[[agent]]` profiles: the kernel's agent table (`AGENTS`) has 256 slots,
/// and id 0 means "not an agent".
pub const MAX_AGENTS: usize = 255;
/// Longest agent name, in bytes.
pub const MAX_AGENT_NAME_LEN: usize = 64;
/// Longest `comm` the kernel keeps: `TASK_COMM_LEN` (16) minus the terminating NUL.
pub const MAX_COMM_LEN: usize = 15;
/// Longest `writable` prefix, in bytes (after normalisation): the kernel maps key on a fixed-size
/// path buffer.
pub const MAX_WRITABLE_LEN: usize = 200;
/// Longest path the kernel accepts anywhere (`PATH_MAX` minus the NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest `exe` selector, in bytes: the kernel's exe map keys on a NUL-terminated
/// `PATH_LEN`-byte buffer.
pub const MAX_EXE_LEN: usize = agent_monitor_common::PATH_LEN - 1;
// A writable prefix is stored with a trailing `/` in the same buffer size.
const _: () = assert!(MAX_WRITABLE_LEN < agent_monitor_common::PATH_LEN);
/// Longest path a Unix socket address can hold (`sizeof(sun_path)` minus the NUL).
pub const MAX_UNIX_SOCKET_PATH_LEN: usize = 107;
/// Longest HTTP method accepted in `http_methods`.
pub const MAX_HTTP_METHOD_LEN: usize = 16;
/// `http_methods` when the policy does not say: the methods that do not change state.
pub const DEFAULT_HTTP_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];
/// The methods the kernel recognises (RFC 9110's, CONNECT and TRACE): one list, in the kernel's
/// bit order, shared with the kernel programs.
pub const KNOWN_HTTP_METHODS: &[&str] = &agent_monitor_common::HTTP_METHOD_NAMES;
/// The bypass-prone syscall families an agent may be granted in `[agent.syscalls] allow`.
pub const SYSCALL_CLASSES: &[&str] = &["io_uring", "raw_socket", "bpf", "mount", "namespaces"];

// ---------------------------------------------------------------------------------------------
// Public model
// ---------------------------------------------------------------------------------------------

/// A validated policy file: `[daemon]`, `[[alerts.webhook]]` and `[[agent]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub daemon: DaemonConfig,
    pub alerts: AlertsConfig,
    pub agents: Vec<AgentPolicy>,
}

impl Policy {
    /// The agent profile named `name`, if any.
    pub fn agent(&self, name: &str) -> Option<&AgentPolicy> {
        self.agents.iter().find(|a| a.name == name)
    }
}

/// `metrics_listen` when neither the command line nor the policy says.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9750";
/// `events_file` when neither the command line nor the policy says.
pub const DEFAULT_EVENTS_FILE: &str = "/var/log/agent-monitor/events.jsonl";

/// `[daemon]`: every setting is optional; the CLI flags of `run` override them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonConfig {
    /// `IP:PORT` of the `/metrics` and `/healthz` server (validated as a `SocketAddr`).
    pub metrics_listen: Option<String>,
    /// JSON-lines event log: an absolute path, or `"-"` for stdout.
    pub events_file: Option<String>,
    /// Absolute path of the control socket (`status`, `events`, `approve`, `deny`).
    pub control_socket: Option<String>,
    /// Group whose members may use the control socket's privileged commands.
    pub admin_group: Option<String>,
    /// Absolute path under bpffs where programs and maps are pinned.
    pub pin_path: Option<String>,
    /// How long a held action waits for `approve`/`deny`, in seconds (at least 1).
    pub hold_timeout_secs: Option<u64>,
    /// The kernel's per-program statistics behind `agent_monitor_bpf_program_*` (default
    /// `sampled`). Read at start.
    pub bpf_stats: Option<BpfStats>,
    /// Hook OpenSSL/GnuTLS with uprobes to see HTTP methods inside TLS. Read at start.
    pub tls_uprobes: Option<TlsUprobes>,
    /// The host's name on every event and webhook alert (default: the kernel's host name).
    /// Read at start.
    pub host_name: Option<String>,
    /// Labels on every event and webhook alert (`site`, `cluster`, ...): Prometheus label names.
    /// Read at start.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Every event also to syslog, as RFC 5424: `udp:HOST:PORT` or `unix:PATH`. Read at start.
    pub syslog: Option<String>,
}

/// `[daemon] tls_uprobes`: where the TLS libraries' write functions are hooked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TlsUprobes {
    /// In agent processes only (`"agents"`, or `true`): other processes' `SSL_write` runs
    /// untouched. The hooks live as long as the daemon (not kept by pins).
    #[default]
    Agents,
    /// In every process that maps the library (`"all"`): each `SSL_write` on the machine traps
    /// into the kernel; the hooks are pinned with the other programs.
    All,
    /// Nowhere (`"off"`, or `false`): HTTP methods inside TLS are not visible.
    Off,
}

impl TlsUprobes {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsUprobes::Agents => "agents",
            TlsUprobes::All => "all",
            TlsUprobes::Off => "off",
        }
    }
}

impl<'de> Deserialize<'de> for TlsUprobes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(TlsUprobes::Agents),
            Raw::Bool(false) => Ok(TlsUprobes::Off),
            Raw::Name(n) => match n.as_str() {
                "agents" => Ok(TlsUprobes::Agents),
                "all" => Ok(TlsUprobes::All),
                "off" => Ok(TlsUprobes::Off),
                other => Err(serde::de::Error::custom(format!(
                    "unknown tls_uprobes `{other}`: expected \"agents\", \"all\" or \"off\""
                ))),
            },
        }
    }
}

/// `[daemon] bpf_stats`: when the kernel times every BPF program run (BPF_ENABLE_STATS, a
/// system-wide switch that costs two clock reads per run of every program, an agent's or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfStats {
    /// Always on: exact counters, the full cost.
    On,
    /// On one second in ten; the counters grow by ten times what the kernel counted in that
    /// second (an estimate of the runs and run time) for a tenth of the cost.
    #[default]
    Sampled,
    /// Off: the two metrics stay at 0.
    Off,
}

impl BpfStats {
    pub fn as_str(self) -> &'static str {
        match self {
            BpfStats::On => "on",
            BpfStats::Sampled => "sampled",
            BpfStats::Off => "off",
        }
    }
}

impl DaemonConfig {
    /// `metrics_listen` as a socket address (it was validated when the policy was parsed).
    #[cfg(test)]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.as_deref().and_then(|s| s.parse().ok())
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertsConfig {
    pub webhook: Vec<Webhook>,
}

/// `[[alerts.webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    pub format: WebhookFormat,
    /// PEM certificates trusted for an `https://` URL besides the system's CA store.
    pub ca_file: Option<String>,
    /// A file holding a token sent as `Authorization: Bearer TOKEN` (read at each delivery, so
    /// a rotated token is used at once; kept out of the policy and its hash).
    pub bearer_token_file: Option<String>,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Alertmanager's `POST /api/v2/alerts` body (a list of alerts).
    #[default]
    Alertmanager,
    /// One event object per POST.
    Json,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Alertmanager => "alertmanager",
            WebhookFormat::Json => "json",
        }
    }
}

impl fmt::Display for WebhookFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a violation gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An event, a metric, a webhook; the process goes on.
    #[default]
    Alert,
    /// The operation fails with `EPERM` where a kernel layer can refuse it, else `Kill`.
    Deny,
    /// SIGKILL to the agent's whole process tree.
    Kill,
    /// Paused (TLS writes: the process is stopped before the call) or refused and held as a
    /// request (connects), until a person runs `agent-monitor approve ID` or `deny ID`; nobody
    /// answering within `hold_timeout_secs` is a denial.
    Hold,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Deny => "deny",
            Action::Kill => "kill",
            Action::Hold => "hold",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[agent]]` profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPolicy {
    pub name: String,
    pub action: Action,
    /// Also emit the events the policy allows.
    pub audit: bool,
    /// `[agent.match]`: which processes are this agent (any selector matches; descendants
    /// inherit).
    pub selector: Match,
    pub files: Files,
    pub network: Network,
    pub syscalls: Syscalls,
}

impl AgentPolicy {
    /// A profile with the defaults of an empty `[[agent]]` table (no selector, nothing writable,
    /// no destination allowed, the default HTTP methods).
    #[cfg(test)]
    pub fn new(name: impl Into<String>) -> Self {
        AgentPolicy {
            name: name.into(),
            action: Action::default(),
            audit: false,
            selector: Match::default(),
            files: Files::default(),
            network: Network::default(),
            syscalls: Syscalls::default(),
        }
    }
}

/// `[agent.match]` selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Task names (1..=15 bytes).
    pub comm: Vec<String>,
    /// Absolute executable paths (normalised).
    pub exe: Vec<String>,
    /// cgroup v2 paths relative to the v2 root, written with a leading `/` (normalised; `/` is
    /// the root cgroup itself).
    pub cgroup: Vec<String>,
    pub uid: Vec<u32>,
    /// `*TEXT*` patterns, stored as TEXT: the program or its first argument (`node SCRIPT`), as
    /// the process was started, contains TEXT.
    pub cmdline: Vec<String>,
}

/// `[agent.files]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// Normalised absolute path prefixes the agent may write under (a prefix matches itself and
    /// everything below it, on component boundaries).
    pub writable: Vec<String>,
}

/// `[agent.network]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub allow: Vec<Allow>,
    /// Methods an HTTP request may use on an allowed connection (default GET, HEAD, OPTIONS),
    /// where its `allow` entry does not say.
    pub http_methods: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network { allow: Vec::new(), http_methods: DEFAULT_HTTP_METHODS.iter().map(|m| m.to_string()).collect() }
    }
}

/// The transport a destination is granted for: a TCP grant allows no datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    /// TCP and UDP (a resolver on port 53).
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Any => "any",
        }
    }
}

/// One `allow` entry: a destination, and what it takes. The string form is a TCP destination
/// that takes the agent's `http_methods`; the table form can say more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Allow {
    pub dest: AllowEntry,
    pub protocol: Protocol,
    /// The HTTP methods this destination takes (None: the agent's `http_methods`).
    pub methods: Option<Vec<String>>,
    /// Path prefixes: the methods this destination takes beyond the agent's `http_methods`
    /// (its writes) are allowed only under them. Empty: anywhere.
    pub paths: Vec<String>,
    /// TLS the daemon cannot read (a TLS stack it does not hook) is accepted here. Elsewhere
    /// it is refused: its writes cannot be told from its reads.
    pub opaque_tls: bool,
}

impl Allow {
    /// The string form's meaning: TCP, the agent's methods, no opaque TLS.
    pub fn plain(dest: AllowEntry) -> Self {
        Allow { dest, protocol: Protocol::Tcp, methods: None, paths: Vec::new(), opaque_tls: false }
    }

    fn is_plain(&self) -> bool {
        self.protocol == Protocol::Tcp && self.methods.is_none() && self.paths.is_empty() && !self.opaque_tls
    }
}

impl fmt::Display for Allow {
    /// The string form where it says everything, else an inline table (valid TOML).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_plain() {
            return write!(f, "{}", toml_string(&self.dest.to_string()));
        }
        let list = |v: &[String]| v.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", ");
        write!(f, "{{ to = {}", toml_string(&self.dest.to_string()))?;
        if self.protocol != Protocol::Tcp {
            write!(f, ", protocol = \"{}\"", self.protocol.as_str())?;
        }
        if let Some(m) = &self.methods {
            write!(f, ", methods = [{}]", list(m))?;
        }
        if !self.paths.is_empty() {
            write!(f, ", paths = [{}]", list(&self.paths))?;
        }
        if self.opaque_tls {
            write!(f, ", opaque_tls = true")?;
        }
        write!(f, " }}")
    }
}

/// `[agent.syscalls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Syscalls {
    /// Granted families, a subset of [`SYSCALL_CLASSES`].
    pub allow: Vec<String>,
}

impl Syscalls {
    pub fn allows(&self, class: &str) -> bool {
        self.allow.iter().any(|c| c == class)
    }
}

/// An IP network: an address and a prefix length; the address has no bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// The network of one address (`/32` or `/128`).
    #[cfg(test)]
    pub fn host(addr: IpAddr) -> Self {
        IpNet { addr, prefix_len: max_prefix(addr) }
    }

    /// Whether `ip` is inside this network. An IPv4 network also contains the IPv4-mapped IPv6
    /// form of its addresses and vice versa, so `10.0.0.0/8` covers a v6 socket connecting to
    /// `::ffff:10.1.2.3`.
    #[cfg(test)]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix_len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix_len),
            (IpAddr::V4(_), IpAddr::V6(ip6)) => match ip6.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
            (IpAddr::V6(net), IpAddr::V4(ip4)) => {
                // A v6 network written as `::ffff:a.b.c.d/p` (p >= 96) covers those v4 addresses.
                prefix_eq(&net.octets(), &ip4.to_ipv6_mapped().octets(), self.prefix_len)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

pub(super) fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

#[cfg(test)]
fn prefix_eq(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// One `[agent.network] allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowEntry {
    /// `unix:/abs/path`: a Unix socket the agent may connect or send to (the path, normalised).
    Unix(String),
    /// `host:port` or `host:*`: a DNS name (lower case); `port: None` is any port.
    Host { host: String, port: Option<u16> },
    /// `1.2.3.4:443`, `10.0.0.0/8:443`, `[::1]:53`, `[fd00::/8]:*`: an address or network.
    Addr { net: IpNet, port: Option<u16> },
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn port(p: &Option<u16>) -> String {
            p.map_or_else(|| "*".to_string(), |p| p.to_string())
        }
        match self {
            AllowEntry::Unix(path) => write!(f, "unix:{path}"),
            AllowEntry::Host { host, port: p } => write!(f, "{host}:{}", port(p)),
            AllowEntry::Addr { net, port: p } => {
                let full = net.prefix_len == max_prefix(net.addr);
                match (net.addr, full) {
                    (IpAddr::V4(a), true) => write!(f, "{a}:{}", port(p)),
                    (IpAddr::V4(_), false) => write!(f, "{net}:{}", port(p)),
                    (IpAddr::V6(a), true) => write!(f, "[{a}]:{}", port(p)),
                    (IpAddr::V6(_), false) => write!(f, "[{net}]:{}", port(p)),
                }
            }
        }
    }
}

impl FromStr for AllowEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        super::checks::parse_allow_entry(s)
    }
}

/// The canonical TOML form of a policy: every setting spelled out, values normalised, no
/// comments. Parsing it gives back an equal [`Policy`]; `compile` hashes it, so a change of
/// comments or layout is not a change of policy.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn strs<S: AsRef<str>>(v: &[S]) -> String {
            let items: Vec<String> = v.iter().map(|s| toml_string(s.as_ref())).collect();
            format!("[{}]", items.join(", "))
        }
        let d = &self.daemon;
        writeln!(f, "[daemon]")?;
        let settings = [
            ("metrics_listen", &d.metrics_listen),
            ("events_file", &d.events_file),
            ("control_socket", &d.control_socket),
            ("admin_group", &d.admin_group),
            ("pin_path", &d.pin_path),
            ("host_name", &d.host_name),
            ("syslog", &d.syslog),
        ];
        for (key, value) in settings {
            if let Some(v) = value {
                writeln!(f, "{key} = {}", toml_string(v))?;
            }
        }
        if let Some(t) = d.hold_timeout_secs {
            writeln!(f, "hold_timeout_secs = {t}")?;
        }
        if let Some(b) = d.bpf_stats {
            writeln!(f, "bpf_stats = {}", toml_string(b.as_str()))?;
        }
        if !d.labels.is_empty() {
            let items: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k} = {}", toml_string(v))).collect();
            writeln!(f, "labels = {{ {} }}", items.join(", "))?;
        }
        if let Some(t) = d.tls_uprobes {
            writeln!(f, "tls_uprobes = {}", toml_string(t.as_str()))?;
        }
        for w in &self.alerts.webhook {
            writeln!(f, "\n[[alerts.webhook]]")?;
            writeln!(f, "url = {}", toml_string(&w.url))?;
            writeln!(f, "format = \"{}\"", w.format)?;
            if let Some(c) = &w.ca_file {
                writeln!(f, "ca_file = {}", toml_string(c))?;
            }
            if let Some(t) = &w.bearer_token_file {
                writeln!(f, "bearer_token_file = {}", toml_string(t))?;
            }
        }
        for a in &self.agents {
            writeln!(f, "\n[[agent]]")?;
            writeln!(f, "name = {}", toml_string(&a.name))?;
            writeln!(f, "action = \"{}\"", a.action)?;
            writeln!(f, "audit = {}", a.audit)?;
            writeln!(f, "[agent.match]")?;
            writeln!(f, "comm = {}", strs(&a.selector.comm))?;
            writeln!(f, "exe = {}", strs(&a.selector.exe))?;
            writeln!(f, "cgroup = {}", strs(&a.selector.cgroup))?;
            let uids: Vec<String> = a.selector.uid.iter().map(|u| u.to_string()).collect();
            writeln!(f, "uid = [{}]", uids.join(", "))?;
            let cmdline: Vec<String> = a.selector.cmdline.iter().map(|t| format!("*{t}*")).collect();
            writeln!(f, "cmdline = {}", strs(&cmdline))?;
            writeln!(f, "[agent.files]")?;
            writeln!(f, "writable = {}", strs(&a.files.writable))?;
            writeln!(f, "[agent.network]")?;
            let allow: Vec<String> = a.network.allow.iter().map(|e| e.to_string()).collect();
            writeln!(f, "allow = [{}]", allow.join(", "))?;
            writeln!(f, "http_methods = {}", strs(&a.network.http_methods))?;
            writeln!(f, "[agent.syscalls]")?;
            writeln!(f, "allow = {}", strs(&a.syscalls.allow))?;
        }
        Ok(())
    }
}

/// A TOML basic string.
/// `s` as a TOML basic string (for generated policy text).
pub fn toml_quote(s: &str) -> String {
    toml_string(s)
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
