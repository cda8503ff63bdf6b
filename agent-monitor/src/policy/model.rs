//! The policy as users write it and as the daemon reads it.
//!
//! Two layers live here:
//!
//! * the **public model** ([`Policy`] and friends): plain, validated, normalised values the
//!   daemon uses directly (paths without duplicate or trailing slashes, parsed `allow` entries,
//!   host names in lower case);
//! * the **raw model** ([`raw`]): a mirror of the TOML file, deserialised by serde with
//!   `deny_unknown_fields` everywhere and [`toml::Spanned`] on every value a semantic check may
//!   have to point at. `super::parse` validates the raw model and lowers it into the public one.
//!
//! The value checkers (`parse_allow_entry`, `normalize_abs_path`, ...) are pure functions that
//! return the reason a value is wrong; the caller attaches the position.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
/// The methods of RFC 9110 (and CONNECT/TRACE), the ones a typo is most likely checked against.
pub const KNOWN_HTTP_METHODS: &[&str] =
    &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE"];
/// The bypass-prone syscall families an agent may be granted in `[agent.syscalls] allow`.
pub const SYSCALL_CLASSES: &[&str] = &["io_uring", "raw_socket", "bpf"];

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

    /// Mutable access to the agent profile named `name` (e.g. to add the work directory of an
    /// `agent-monitor exec` instance at run time).
    pub fn agent_mut(&mut self, name: &str) -> Option<&mut AgentPolicy> {
        self.agents.iter_mut().find(|a| a.name == name)
    }
}

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
}

impl Match {
    pub fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.exe.is_empty() && self.cgroup.is_empty() && self.uid.is_empty()
    }
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
    pub allow: Vec<AllowEntry>,
    /// Methods an HTTP request may use on an allowed connection (default GET, HEAD, OPTIONS).
    pub http_methods: Vec<String>,
    /// Treat a connection whose HTTP the daemon cannot see (statically linked TLS) as a
    /// violation, instead of allowing it on the strength of `allow` alone.
    pub require_http_visibility: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            allow: Vec::new(),
            http_methods: DEFAULT_HTTP_METHODS.iter().map(|m| m.to_string()).collect(),
            require_http_visibility: false,
        }
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
    pub fn host(addr: IpAddr) -> Self {
        IpNet { addr, prefix_len: max_prefix(addr) }
    }

    /// Whether `ip` is inside this network. An IPv4 network also contains the IPv4-mapped IPv6
    /// form of its addresses and vice versa, so `10.0.0.0/8` covers a v6 socket connecting to
    /// `::ffff:10.1.2.3`.
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

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

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

impl AllowEntry {
    /// The port this entry allows: `None` for any port, and for Unix sockets.
    pub fn port(&self) -> Option<u16> {
        match self {
            AllowEntry::Unix(_) => None,
            AllowEntry::Host { port, .. } | AllowEntry::Addr { port, .. } => *port,
        }
    }
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
        parse_allow_entry(s)
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
        if let Some(t) = d.tls_uprobes {
            writeln!(f, "tls_uprobes = {}", toml_string(t.as_str()))?;
        }
        for w in &self.alerts.webhook {
            writeln!(f, "\n[[alerts.webhook]]")?;
            writeln!(f, "url = {}", toml_string(&w.url))?;
            writeln!(f, "format = \"{}\"", w.format)?;
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
            writeln!(f, "[agent.files]")?;
            writeln!(f, "writable = {}", strs(&a.files.writable))?;
            writeln!(f, "[agent.network]")?;
            let allow: Vec<String> = a.network.allow.iter().map(|e| e.to_string()).collect();
            writeln!(f, "allow = {}", strs(&allow))?;
            writeln!(f, "http_methods = {}", strs(&a.network.http_methods))?;
            writeln!(f, "require_http_visibility = {}", a.network.require_http_visibility)?;
            writeln!(f, "[agent.syscalls]")?;
            writeln!(f, "allow = {}", strs(&a.syscalls.allow))?;
        }
        Ok(())
    }
}

/// A TOML basic string.
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

// ---------------------------------------------------------------------------------------------
// Value checkers: each returns the normalised value or the reason it is wrong.
// ---------------------------------------------------------------------------------------------

/// Parse one `allow` entry: `unix:/abs/path`, `HOST:PORT`, `IPV4:PORT`, `IPV4/LEN:PORT`,
/// `[IPV6]:PORT`, `[IPV6/LEN]:PORT`, where PORT is 1..=65535 or `*` for any port.
pub fn parse_allow_entry(s: &str) -> Result<AllowEntry, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.starts_with('@') {
            return Err(format!("\"{s}\": abstract Unix sockets are not supported; write unix:/absolute/path"));
        }
        if !path.starts_with('/') {
            return Err(format!("\"{s}\": the Unix socket path must be absolute (unix:/run/x.sock)"));
        }
        let path = normalize_abs_path(path).map_err(|e| format!("\"{s}\": {e}"))?;
        if path.len() > MAX_UNIX_SOCKET_PATH_LEN {
            return Err(format!("\"{s}\": a Unix socket path is at most {MAX_UNIX_SOCKET_PATH_LEN} bytes"));
        }
        return Ok(AllowEntry::Unix(path));
    }
    if s.trim() != s || s.is_empty() {
        return Err(format!("\"{s}\": empty entry or surrounding white space"));
    }

    // Split the host part from the port.
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(format!("\"{s}\": missing `]` after the IPv6 address"));
        };
        let mut inside = rest[..close].to_string();
        let mut after = &rest[close + 1..];
        // `[::]/0:443`: the prefix length may also follow the brackets.
        if let Some(prefixed) = after.strip_prefix('/') {
            let end = prefixed.find(':').unwrap_or(prefixed.len());
            if inside.contains('/') {
                return Err(format!("\"{s}\": two prefix lengths"));
            }
            inside = format!("{inside}/{}", &prefixed[..end]);
            after = &prefixed[end..];
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("\"{s}\": missing port: write [ADDR]:PORT, or [ADDR]:* for any port"));
        };
        let net = parse_net(&inside, true).map_err(|e| format!("\"{s}\": {e}"))?;
        if net.addr.is_ipv4() {
            return Err(format!("\"{s}\": brackets are for IPv6 addresses; write {inside}:{port} for IPv4"));
        }
        (HostPart::Net(net), port)
    } else {
        let Some(colon) = s.rfind(':') else {
            return Err(format!("\"{s}\": missing port: write HOST:PORT, or HOST:* for any port"));
        };
        let (host, port) = (&s[..colon], &s[colon + 1..]);
        if host.contains(':') {
            return Err(format!("\"{s}\": an IPv6 address must be in brackets, e.g. [::1]:53 or [fd00::/8]:443"));
        }
        if host.is_empty() {
            return Err(format!("\"{s}\": empty host"));
        }
        if host == "*" {
            return Err(format!(
                "\"{s}\": `*` is not a host; for any address write 0.0.0.0/0:{port} and [::]/0:{port}"
            ));
        }
        if host.contains('/') || looks_like_ipv4(host) {
            let net = parse_net(host, false).map_err(|e| format!("\"{s}\": {e}"))?;
            (HostPart::Net(net), port)
        } else {
            let host = check_hostname(host).map_err(|e| format!("\"{s}\": {e}"))?;
            (HostPart::Name(host), port)
        }
    };

    let port = parse_port(port).map_err(|e| format!("\"{s}\": {e}"))?;
    Ok(match host {
        HostPart::Net(net) => AllowEntry::Addr { net, port },
        HostPart::Name(host) => AllowEntry::Host { host, port },
    })
}

enum HostPart {
    Net(IpNet),
    Name(String),
}

fn looks_like_ipv4(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn parse_port(p: &str) -> Result<Option<u16>, String> {
    if p == "*" {
        return Ok(None);
    }
    if p.is_empty() {
        return Err("missing port: write a number 1-65535, or * for any port".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port `{p}`: expected a number 1-65535, or * for any port"));
    }
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 is not a destination port: expected 1-65535, or *".into()),
        Ok(n) if n <= 65535 => Ok(Some(n as u16)),
        _ => Err(format!("port {p} is out of range: expected 1-65535, or * for any port")),
    }
}

/// `ADDR` or `ADDR/LEN`; `v6` says whether the text came from inside brackets.
fn parse_net(text: &str, v6: bool) -> Result<IpNet, String> {
    let (addr_s, len_s) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = if v6 {
        addr_s
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .or_else(|_| addr_s.parse::<Ipv4Addr>().map(IpAddr::V4))
            .map_err(|_| format!("bad IPv6 address `{addr_s}`"))?
    } else {
        addr_s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| format!("bad IPv4 address `{addr_s}`"))?
    };
    let max = max_prefix(addr);
    let prefix_len = match len_s {
        None => max,
        Some(l) => {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
                return Err(format!("bad prefix length `/{l}`: expected 0-{max}"));
            }
            let n: u8 = l.parse().map_err(|_| format!("bad prefix length `/{l}`: expected 0-{max}"))?;
            if n > max {
                return Err(format!("prefix length /{n} is too long for {addr}: expected 0-{max}"));
            }
            n
        }
    };
    let net = IpNet { addr: mask_addr(addr, prefix_len), prefix_len };
    if net.addr != addr {
        return Err(format!("{addr}/{prefix_len} has bits set past the prefix length; did you mean {net}?"));
    }
    Ok(net)
}

fn mask_addr(addr: IpAddr, prefix_len: u8) -> IpAddr {
    fn mask<const N: usize>(mut o: [u8; N], prefix_len: u8) -> [u8; N] {
        for (i, byte) in o.iter_mut().enumerate() {
            let start = (i * 8) as u32;
            let keep = u32::from(prefix_len).saturating_sub(start).min(8);
            *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        o
    }
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask(a.octets(), prefix_len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask(a.octets(), prefix_len))),
    }
}

/// A DNS name: labels of letters, digits, `-` and `_`, 1..=63 bytes each, 253 in all; returned in
/// lower case. A trailing dot (the root) is dropped.
fn check_hostname(host: &str) -> Result<String, String> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.starts_with("*.") {
        return Err(format!("wildcard host `{host}` is not supported: list each host"));
    }
    if h.is_empty() || h.len() > 253 {
        return Err(format!("bad host name `{host}`: expected 1 to 253 bytes"));
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err(format!("bad host name `{host}`: empty label"));
        }
        if label.len() > 63 {
            return Err(format!("bad host name `{host}`: label longer than 63 bytes"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("bad host name `{host}`: character {c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("bad host name `{host}`: a label cannot start or end with `-`"));
        }
    }
    Ok(h.to_ascii_lowercase())
}

/// Check an absolute path and normalise it: no NUL, absolute, no `.` or `..` component;
/// duplicate and trailing slashes removed (`/` alone stays `/`).
pub fn normalize_abs_path(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    if s.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if !s.starts_with('/') {
        if s.starts_with('~') {
            return Err("`~` is not expanded: write the absolute path".into());
        }
        return Err("not an absolute path (it must start with `/`)".into());
    }
    let mut out = String::with_capacity(s.len());
    for comp in s.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(format!("the path has a `{comp}` component; write it without `.` or `..`"));
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    if out.len() > MAX_PATH_LEN {
        return Err(format!("the path is longer than {MAX_PATH_LEN} bytes"));
    }
    Ok(out)
}

/// An agent name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn check_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("agent name is empty".into());
    }
    if name.len() > MAX_AGENT_NAME_LEN {
        return Err(format!("agent name is {} bytes long; at most {MAX_AGENT_NAME_LEN} are allowed", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("agent name \"{name}\" contains {c:?}; use only letters, digits, `_`, `.` and `-`"));
    }
    Ok(())
}

/// A `comm` selector: 1..=15 bytes, no NUL.
pub fn check_comm(comm: &str) -> Result<(), String> {
    if comm.is_empty() {
        return Err("empty comm".into());
    }
    if comm.contains('\0') {
        return Err(format!("comm {comm:?} contains a NUL byte"));
    }
    if comm.len() > MAX_COMM_LEN {
        let cut = truncate_bytes(comm, MAX_COMM_LEN);
        return Err(format!(
            "comm \"{comm}\" is {} bytes; the kernel keeps only {MAX_COMM_LEN} (TASK_COMM_LEN - 1), \
             so it would be truncated to \"{cut}\", a name other programs may share: write \
             \"{cut}\" if that is meant, or select the process by exe",
            comm.len()
        ));
    }
    Ok(())
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An HTTP method: an RFC 9110 token in upper case (letters, digits, `-`, `_`; starting with a
/// letter), at most [`MAX_HTTP_METHOD_LEN`] bytes. Methods are case-sensitive on the wire, so
/// `get` is refused rather than silently matching nothing.
pub fn check_http_method(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("empty HTTP method".into());
    }
    let upper = m.to_ascii_uppercase();
    if m != upper && upper.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err(format!("HTTP methods are case-sensitive: write \"{upper}\", not \"{m}\""));
    }
    let valid = m.as_bytes()[0].is_ascii_uppercase()
        && m.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "\"{m}\" is not an HTTP method: expected an upper-case token such as {}",
            KNOWN_HTTP_METHODS.join(", ")
        ));
    }
    if m.len() > MAX_HTTP_METHOD_LEN {
        return Err(format!("HTTP method \"{m}\" is longer than {MAX_HTTP_METHOD_LEN} bytes"));
    }
    Ok(())
}

/// A `[agent.syscalls] allow` entry.
pub fn check_syscall_class(c: &str) -> Result<(), String> {
    if SYSCALL_CLASSES.contains(&c) {
        Ok(())
    } else {
        Err(format!("unknown syscall class \"{c}\": expected one of {}", SYSCALL_CLASSES.join(", ")))
    }
}

/// A `cgroup` selector: a cgroup v2 path relative to the v2 root, written with a leading `/`.
pub fn normalize_cgroup(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "cgroup \"{s}\" must start with `/` (a path relative to the cgroup v2 root, e.g. \
             /system.slice/agent.service)"
        ));
    }
    let p = normalize_abs_path(s)?;
    if p == "/sys/fs/cgroup" || p.starts_with("/sys/fs/cgroup/") {
        return Err(format!(
            "cgroup \"{s}\" includes the mount point: write the path relative to the cgroup v2 \
             root, without /sys/fs/cgroup (its mount point differs between hosts)"
        ));
    }
    Ok(p)
}

/// A webhook URL: `http://` or `https://` and a host.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("webhook url \"{url}\" must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("webhook url \"{url}\" has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("webhook url {url:?} contains white space or control characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw model: what serde reads, with spans.
// ---------------------------------------------------------------------------------------------

/// The TOML file as written. Every table rejects unknown keys; values a semantic check may point
/// at are [`Spanned`](toml::Spanned). Only values and `[[agent]]` tables are spanned: toml 0.8
/// cannot span a table made of dotted keys.
pub(crate) mod raw {
    use super::{Action, WebhookFormat};
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
        #[serde(default)]
        pub allow: Vec<Spanned<String>>,
        /// `None` when absent: the default methods apply; `Some([])` means no request is a read.
        pub http_methods: Option<Vec<Spanned<String>>>,
        #[serde(default)]
        pub require_http_visibility: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawSyscalls {
        #[serde(default)]
        pub allow: Vec<Spanned<String>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(net: &str, prefix_len: u8, port: Option<u16>) -> AllowEntry {
        AllowEntry::Addr { net: IpNet { addr: net.parse().unwrap(), prefix_len }, port }
    }

    #[test]
    fn allow_entry_accepted_forms() {
        let cases: &[(&str, AllowEntry)] = &[
            ("forum.internal:443", AllowEntry::Host { host: "forum.internal".into(), port: Some(443) }),
            ("Forum.Internal.:443", AllowEntry::Host { host: "forum.internal".into(), port: Some(443) }),
            ("localhost:*", AllowEntry::Host { host: "localhost".into(), port: None }),
            ("_dns.example:53", AllowEntry::Host { host: "_dns.example".into(), port: Some(53) }),
            ("1.2.3.4:443", addr("1.2.3.4", 32, Some(443))),
            ("10.0.0.0/8:443", addr("10.0.0.0", 8, Some(443))),
            ("0.0.0.0/0:443", addr("0.0.0.0", 0, Some(443))),
            ("127.0.0.53:53", addr("127.0.0.53", 32, Some(53))),
            ("[::1]:53", addr("::1", 128, Some(53))),
            ("[fd00::/8]:443", addr("fd00::", 8, Some(443))),
            ("[::]/0:443", addr("::", 0, Some(443))),
            ("[::/0]:*", addr("::", 0, None)),
            ("[::ffff:10.1.2.3]:80", addr("::ffff:10.1.2.3", 128, Some(80))),
            ("[::ffff:10.0.0.0/104]:80", addr("::ffff:10.0.0.0", 104, Some(80))),
            ("10.0.0.1:65535", addr("10.0.0.1", 32, Some(65535))),
            ("unix:/run/x.sock", AllowEntry::Unix("/run/x.sock".into())),
            ("unix://run//nscd/socket", AllowEntry::Unix("/run/nscd/socket".into())),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_allow_entry(text).unwrap_or_else(|e| panic!("{text}: {e}")), want, "{text}");
        }
    }

    #[test]
    fn allow_entry_bracketed_prefix_outside_brackets() {
        // `[::]/0:443` (prefix outside the brackets) is the form the default policy uses.
        assert_eq!(parse_allow_entry("[fd00::]/8:443").unwrap(), addr("fd00::", 8, Some(443)));
    }

    #[test]
    fn allow_entry_errors_say_why() {
        let cases: &[(&str, &str)] = &[
            ("host", "missing port"),
            ("host:", "missing port"),
            ("host:0", "port 0"),
            ("host:65536", "out of range"),
            ("host:https", "bad port `https`"),
            (":443", "empty host"),
            ("*:443", "0.0.0.0/0:443 and [::]/0:443"),
            ("1.2.3.256:443", "bad IPv4 address `1.2.3.256`"),
            ("10.0.0.0/33:443", "prefix length /33 is too long"),
            ("10.0.0.0/:443", "bad prefix length"),
            ("10.0.0.0/x:443", "bad prefix length `/x`"),
            ("[::]/0/1:443", "bad prefix length"),
            ("[::/0]/0:443", "two prefix lengths"),
            ("10.0.0.1/8:443", "did you mean 10.0.0.0/8?"),
            ("[fd00::1/8]:443", "did you mean fd00::/8?"),
            ("[::1/129]:443", "prefix length /129"),
            ("[::1]", "missing port"),
            ("[::1:53", "missing `]`"),
            ("[zz::1]:53", "bad IPv6 address `zz::1`"),
            ("[1.2.3.4]:53", "brackets are for IPv6"),
            ("::1:53", "must be in brackets"),
            ("unix:run/x.sock", "must be absolute"),
            ("unix:@dbus", "abstract Unix sockets"),
            ("unix:/run/../x", "`..` component"),
            ("exa mple.com:443", "character ' '"),
            ("-bad.com:443", "start or end with `-`"),
            ("a..b:443", "empty label"),
            ("*.example.com:443", "wildcard"),
            ("", "empty"),
        ];
        for (text, want) in cases {
            let err = parse_allow_entry(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err:?} does not mention {want:?}");
        }
        let long = format!("unix:/{}", "s".repeat(MAX_UNIX_SOCKET_PATH_LEN));
        assert!(parse_allow_entry(&long).unwrap_err().contains("at most 107 bytes"));
    }

    #[test]
    fn allow_entry_display_round_trips() {
        for text in [
            "forum.internal:443",
            "localhost:*",
            "1.2.3.4:443",
            "10.0.0.0/8:*",
            "[::1]:53",
            "[fd00::/8]:443",
            "[::ffff:10.1.2.3]:80",
            "unix:/run/x.sock",
        ] {
            let e = parse_allow_entry(text).unwrap();
            assert_eq!(e.to_string(), text);
            assert_eq!(parse_allow_entry(&e.to_string()).unwrap(), e);
        }
    }

    #[test]
    fn ipnet_contains_including_mapped_addresses() {
        let net = IpNet { addr: "10.0.0.0".parse().unwrap(), prefix_len: 8 };
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let any4 = IpNet { addr: "0.0.0.0".parse().unwrap(), prefix_len: 0 };
        assert!(any4.contains("203.0.113.9".parse().unwrap()));
        let v6 = IpNet { addr: "fd00::".parse().unwrap(), prefix_len: 8 };
        assert!(v6.contains("fdff::1".parse().unwrap()));
        assert!(!v6.contains("fe00::1".parse().unwrap()));
        let mapped = IpNet { addr: "::ffff:192.168.0.0".parse().unwrap(), prefix_len: 112 };
        assert!(mapped.contains("192.168.3.4".parse().unwrap()));
        assert!(!mapped.contains("192.169.0.1".parse().unwrap()));
        let odd = IpNet { addr: "192.168.0.0".parse().unwrap(), prefix_len: 20 };
        assert!(odd.contains("192.168.15.255".parse().unwrap()));
        assert!(!odd.contains("192.168.16.0".parse().unwrap()));
        assert_eq!(IpNet::host("::1".parse().unwrap()).prefix_len, 128);
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_abs_path("/").unwrap(), "/");
        assert_eq!(normalize_abs_path("//").unwrap(), "/");
        assert_eq!(normalize_abs_path("/tmp/").unwrap(), "/tmp");
        assert_eq!(normalize_abs_path("//var//lib///x//").unwrap(), "/var/lib/x");
        assert_eq!(normalize_abs_path("/a/.b/..c").unwrap(), "/a/.b/..c");
        for (bad, why) in [
            ("", "empty"),
            ("tmp", "absolute"),
            ("~/work", "`~` is not expanded"),
            ("/a/../b", "`..` component"),
            ("/a/./b", "`.` component"),
            ("/a\0b", "NUL"),
        ] {
            let err = normalize_abs_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn names_comms_methods_classes() {
        assert!(check_agent_name("forum-analyst_2.v1").is_ok());
        assert!(check_agent_name("").unwrap_err().contains("empty"));
        assert!(check_agent_name("a b").unwrap_err().contains("' '"));
        assert!(check_agent_name(&"a".repeat(64)).is_ok());
        assert!(check_agent_name(&"a".repeat(65)).unwrap_err().contains("65 bytes"));

        assert!(check_comm("claude").is_ok());
        assert!(check_comm("kworker/0:1").is_ok());
        assert!(check_comm(&"c".repeat(15)).is_ok());
        let err = check_comm("forum-agent-worker").unwrap_err();
        assert!(err.contains("truncated to \"forum-agent-wor\""), "{err}");
        assert!(check_comm("").unwrap_err().contains("empty"));
        // Truncation never splits a UTF-8 character.
        assert!(check_comm("ééééééééé").unwrap_err().contains("\"ééééééé\""));

        for m in ["GET", "HEAD", "OPTIONS", "POST", "PROPFIND", "M-SEARCH", "BASELINE-CONTROL"] {
            assert!(check_http_method(m).is_ok(), "{m}");
        }
        assert!(check_http_method("get").unwrap_err().contains("write \"GET\""));
        assert!(check_http_method("GET /").unwrap_err().contains("not an HTTP method"));
        assert!(check_http_method("").unwrap_err().contains("empty"));
        assert!(check_http_method("1GET").unwrap_err().contains("not an HTTP method"));
        assert!(check_http_method("VERYLONGMETHODNAME").unwrap_err().contains("longer than 16"));

        for c in SYSCALL_CLASSES {
            assert!(check_syscall_class(c).is_ok());
        }
        assert!(check_syscall_class("ptrace").unwrap_err().contains("io_uring, raw_socket, bpf"));
    }

    #[test]
    fn cgroups_and_urls() {
        assert_eq!(normalize_cgroup("/agents.slice/x.service/").unwrap(), "/agents.slice/x.service");
        assert_eq!(normalize_cgroup("/").unwrap(), "/");
        assert!(normalize_cgroup("agents.slice").unwrap_err().contains("must start with `/`"));
        assert!(normalize_cgroup("/sys/fs/cgroup/a.slice").unwrap_err().contains("mount point"));

        assert!(check_webhook_url("http://127.0.0.1:9093/api/v2/alerts").is_ok());
        assert!(check_webhook_url("https://hooks.example/x?y=1").is_ok());
        assert!(check_webhook_url("ftp://x").unwrap_err().contains("http:// or https://"));
        assert!(check_webhook_url("http:///path").unwrap_err().contains("no host"));
        assert!(check_webhook_url("http://a b").unwrap_err().contains("white space"));
    }

    #[test]
    fn defaults() {
        assert_eq!(Action::default(), Action::Alert);
        assert_eq!(WebhookFormat::default(), WebhookFormat::Alertmanager);
        assert_eq!(Network::default().http_methods, ["GET", "HEAD", "OPTIONS"]);
        let a = AgentPolicy::new("x");
        assert!(a.selector.is_empty() && !a.audit && a.files.writable.is_empty());
    }
}
