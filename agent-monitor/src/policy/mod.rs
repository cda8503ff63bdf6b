//! The policy: one TOML file, `[daemon]` settings plus any number of `[[agent]]` profiles.
//!
//! Three steps, each pure and unit-tested without a kernel:
//!
//! 1. **parse** ([`parse`], [`load`]): serde reads the file into a raw mirror that rejects
//!    unknown keys and keeps the byte span of every value (`model::raw`); toml reports syntax,
//!    unknown-key and type errors (the first one only: it stops there).
//! 2. **validate and lower** (here): every semantic rule is checked and *all* violations are
//!    reported, each as a [`Diagnostic`] at the offending value's `LINE:COL`; the result is the
//!    plain, normalised [`Policy`] the daemon reads.
//! 3. **compile** ([`compile()`]): `Policy -> CompiledPolicy`, the flat tables the daemon loads
//!    into the kernel maps. Applying them to maps is the daemon's separate, small step.
//!
//! The rules checked in step 2 are the user contract of `agent-monitor check`:
//! agent names (`[A-Za-z0-9_.-]`, at most 64 bytes, unique), at most 255 agents, at least one
//! selector per agent, no selector value (comm, exe, cgroup, uid) claimed by two agents, comm at
//! most 15 bytes (the kernel would truncate it), absolute normalised paths, well-formed `allow`
//! entries and HTTP methods, known syscall classes, and well-formed daemon and webhook settings.

// This module's API is a contract other modules build on (the daemon, `check`, `exec`, the
// tests); the binary does not call all of it yet.
#![allow(dead_code)]

pub mod compile;
pub mod diag;
pub mod model;

pub use compile::*;
pub use diag::Diagnostic;
pub use model::*;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use model::raw::{RawAgent, RawDaemon, RawMatch, RawPolicy};
use toml::Spanned;

/// The embedded default policy (alert-only read-only profile for well-known agent CLIs).
pub const DEFAULT_POLICY: &str = include_str!("../../../deploy/agent-monitor.toml");
/// Where `run` looks for the policy when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/agent-monitor/agent-monitor.toml";
/// The name diagnostics give the embedded default policy.
pub const DEFAULT_POLICY_NAME: &str = "<embedded default policy>";

/// Parse and validate. `file` is only used in diagnostics. Returns every error found
/// (toml syntax / unknown key / type errors: the first one toml reports; semantic errors: all of
/// them, in file order).
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| vec![toml_diagnostic(file, text, &e)])?;
    let mut v = Validator { file, text, diags: Vec::new() };
    let policy = v.policy(raw);
    if v.diags.is_empty() {
        Ok(policy)
    } else {
        // Stable: two problems at one position keep the order they were found in.
        v.diags.sort_by_key(|d| (d.line, d.col));
        Err(v.diags)
    }
}

/// Read a file and parse it. An I/O error is one [`Diagnostic`] with `line == 0`.
pub fn load(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::whole_file(&file, format!("cannot read the policy: {e}"))])?;
    parse(&file, &text)
}

/// The embedded default policy, parsed. It is tested to parse, so this cannot fail.
pub fn default_policy() -> Policy {
    parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY).expect("the embedded default policy is valid")
}

fn toml_diagnostic(file: &str, text: &str, e: &toml::de::Error) -> Diagnostic {
    // toml's messages may span lines ("invalid table header\nexpected `.`, `]`"): keep one line.
    let mut message = e.message().trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    // A table where a single value belongs (`metrics_listen.port = 1`) reaches toml::Spanned's
    // visitor, whose own wording would be meaningless to a user.
    if message.ends_with("expected a borrowed string") {
        message = "invalid type: a table, where a single value is expected".to_string();
    }
    match e.span() {
        Some(span) => Diagnostic::at_span(file, text, span, message),
        None => Diagnostic::new(file, 1, 1, message),
    }
}

/// Who first claimed a selector value: the agent's index and name, and the value's offset.
type Owner = (usize, String, usize);

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::at_span(self.file, self.text, span, message));
    }

    fn line_of(&self, offset: usize) -> usize {
        diag::line_col(self.text, offset).0
    }

    fn policy(&mut self, raw: RawPolicy) -> Policy {
        let daemon = self.daemon(raw.daemon);
        let mut webhook = Vec::new();
        for w in raw.alerts.webhook {
            if let Err(e) = check_webhook_url(w.url.get_ref()) {
                self.error(w.url.span(), e);
            }
            webhook.push(Webhook { url: w.url.into_inner(), format: w.format });
        }

        let mut names: HashMap<String, usize> = HashMap::new();
        let mut comms: HashMap<String, Owner> = HashMap::new();
        let mut exes: HashMap<String, Owner> = HashMap::new();
        let mut cgroups: HashMap<String, Owner> = HashMap::new();
        let mut uids: HashMap<u32, Owner> = HashMap::new();
        let mut agents = Vec::with_capacity(raw.agent.len());
        for (i, agent) in raw.agent.into_iter().enumerate() {
            let agent_span = agent.span();
            let agent = agent.into_inner();
            if i == MAX_AGENTS {
                self.error(
                    agent.name.span(),
                    format!(
                        "too many agents: at most {MAX_AGENTS} [[agent]] profiles are allowed \
                         (the kernel's agent table has 256 slots and id 0 means \"not an agent\")"
                    ),
                );
            }
            let name = agent.name.get_ref().clone();
            match check_agent_name(&name) {
                Err(e) => self.error(agent.name.span(), e),
                Ok(()) => {
                    if let Some(&first) = names.get(&name) {
                        let line = self.line_of(first);
                        self.error(
                            agent.name.span(),
                            format!("duplicate agent name \"{name}\": first defined at line {line}"),
                        );
                    } else {
                        names.insert(name.clone(), agent.name.span().start);
                    }
                }
            }
            let mut claims = Claims {
                index: i,
                agent: &name,
                comms: &mut comms,
                exes: &mut exes,
                cgroups: &mut cgroups,
                uids: &mut uids,
            };
            agents.push(self.agent(agent, agent_span, &mut claims));
        }
        Policy { daemon, alerts: AlertsConfig { webhook }, agents }
    }

    fn daemon(&mut self, d: RawDaemon) -> DaemonConfig {
        let mut out = DaemonConfig::default();
        if let Some(m) = d.metrics_listen {
            if m.get_ref().parse::<SocketAddr>().is_err() {
                self.error(
                    m.span(),
                    format!(
                        "metrics_listen \"{}\" is not an IP:PORT socket address \
                         (e.g. 127.0.0.1:9750 or [::1]:9750)",
                        m.get_ref()
                    ),
                );
            }
            out.metrics_listen = Some(m.into_inner());
        }
        if let Some(f) = d.events_file {
            out.events_file = Some(if f.get_ref() == "-" {
                "-".to_string()
            } else {
                self.path("events_file", &f, "an absolute path, or \"-\" for stdout")
            });
        }
        if let Some(s) = d.control_socket {
            let p = self.path("control_socket", &s, "an absolute path");
            if p.len() > MAX_UNIX_SOCKET_PATH_LEN {
                self.error(
                    s.span(),
                    format!(
                        "control_socket is {} bytes long; a Unix socket path is at most \
                         {MAX_UNIX_SOCKET_PATH_LEN}",
                        p.len()
                    ),
                );
            }
            out.control_socket = Some(p);
        }
        if let Some(g) = d.admin_group {
            let ok = !g.get_ref().is_empty()
                && g.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                self.error(
                    g.span(),
                    format!(
                        "admin_group \"{}\" is not a group name or id (letters, digits, `_`, `.`, `-`)",
                        g.get_ref()
                    ),
                );
            }
            out.admin_group = Some(g.into_inner());
        }
        if let Some(p) = d.pin_path {
            out.pin_path = Some(self.path("pin_path", &p, "an absolute path under bpffs"));
        }
        if let Some(t) = d.hold_timeout_secs {
            if *t.get_ref() == 0 {
                self.error(t.span(), "hold_timeout_secs must be at least 1");
            }
            out.hold_timeout_secs = Some(t.into_inner());
        }
        out.bpf_stats = d.bpf_stats;
        out.tls_uprobes = d.tls_uprobes;
        out
    }

    /// Normalise an absolute path setting, reporting `key "value": reason (expected ...)`.
    fn path(&mut self, key: &str, v: &Spanned<String>, expected: &str) -> String {
        match normalize_abs_path(v.get_ref()) {
            Ok(p) => p,
            Err(e) => {
                self.error(v.span(), format!("{key} \"{}\": {e}; expected {expected}", v.get_ref()));
                v.get_ref().clone()
            }
        }
    }

    fn agent(&mut self, a: RawAgent, span: Range<usize>, claims: &mut Claims<'_>) -> AgentPolicy {
        let name = claims.agent.to_string();
        let selector = match a.selector {
            None => {
                self.error(
                    span,
                    format!(
                        "agent \"{name}\" has no selector: add an [agent.match] table with at least \
                         one of comm, exe, cgroup, uid"
                    ),
                );
                Match::default()
            }
            Some(m) => {
                let written = m.comm.len() + m.exe.len() + m.cgroup.len() + m.uid.len();
                let m = self.selector(m, claims);
                // Only a table with no entries at all: invalid entries were reported already.
                // The position is the agent's: toml 0.8 cannot span every form of the table.
                if written == 0 {
                    self.error(
                        span,
                        format!(
                            "[agent.match] of agent \"{name}\" selects nothing: give at least one \
                             of comm, exe, cgroup, uid"
                        ),
                    );
                }
                m
            }
        };

        let mut writable = Vec::new();
        for w in a.files.writable {
            match normalize_abs_path(w.get_ref()) {
                Err(e) => self.error(w.span(), format!("writable \"{}\": {e}", w.get_ref())),
                Ok(p) if p.len() > MAX_WRITABLE_LEN => self.error(
                    w.span(),
                    format!(
                        "writable \"{}\" is {} bytes long; at most {MAX_WRITABLE_LEN} are allowed",
                        w.get_ref(),
                        p.len()
                    ),
                ),
                Ok(p) => writable.push(p),
            }
        }

        let mut allow = Vec::new();
        for e in a.network.allow {
            match parse_allow_entry(e.get_ref()) {
                Ok(entry) => allow.push(entry),
                Err(why) => self.error(e.span(), format!("bad allow entry {why}")),
            }
        }
        let http_methods = match a.network.http_methods {
            None => Network::default().http_methods,
            Some(ms) => {
                let mut out = Vec::new();
                for m in ms {
                    match check_http_method(m.get_ref()) {
                        Ok(()) => out.push(m.into_inner()),
                        Err(e) => self.error(m.span(), e),
                    }
                }
                out
            }
        };

        let mut syscalls = Vec::new();
        for c in a.syscalls.allow {
            match check_syscall_class(c.get_ref()) {
                Ok(()) => syscalls.push(c.into_inner()),
                Err(e) => self.error(c.span(), e),
            }
        }

        AgentPolicy {
            name,
            action: a.action,
            audit: a.audit,
            selector,
            files: Files { writable },
            network: Network { allow, http_methods, require_http_visibility: a.network.require_http_visibility },
            syscalls: Syscalls { allow: syscalls },
        }
    }

    fn selector(&mut self, m: RawMatch, claims: &mut Claims<'_>) -> Match {
        let mut out = Match::default();
        for c in m.comm {
            match check_comm(c.get_ref()) {
                Err(e) => self.error(c.span(), e),
                Ok(()) => {
                    let v = c.get_ref().clone();
                    if self.claim("comm", &v, &format!("\"{v}\""), c.span(), (claims.index, claims.agent), claims.comms)
                    {
                        out.comm.push(v);
                    }
                }
            }
        }
        for e in m.exe {
            match normalize_abs_path(e.get_ref()) {
                Err(why) => self.error(e.span(), format!("exe \"{}\": {why}", e.get_ref())),
                Ok(p) if p == "/" => self.error(e.span(), "exe \"/\" is a directory, not a program"),
                Ok(p) if p.len() > MAX_EXE_LEN => self.error(
                    e.span(),
                    format!("exe \"{p}\" is {} bytes long; at most {MAX_EXE_LEN} are allowed", p.len()),
                ),
                Ok(p) => {
                    if self.claim("exe", &p, &format!("\"{p}\""), e.span(), (claims.index, claims.agent), claims.exes) {
                        out.exe.push(p);
                    }
                }
            }
        }
        for g in m.cgroup {
            match normalize_cgroup(g.get_ref()) {
                Err(why) => self.error(g.span(), why),
                Ok(p) => {
                    if self.claim(
                        "cgroup",
                        &p,
                        &format!("\"{p}\""),
                        g.span(),
                        (claims.index, claims.agent),
                        claims.cgroups,
                    ) {
                        out.cgroup.push(p);
                    }
                }
            }
        }
        for u in m.uid {
            let uid = *u.get_ref();
            if uid == u32::MAX {
                self.error(u.span(), "uid 4294967295 is (uid_t)-1, which no process can have");
            } else if self.claim("uid", &uid, &uid.to_string(), u.span(), (claims.index, claims.agent), claims.uids) {
                out.uid.push(uid);
            }
        }
        out
    }

    /// Record that `agent` selects `value`; report it if another agent already does. Returns
    /// whether to keep the value (a repeat within one agent is harmless and dropped).
    fn claim<K: Hash + Eq + Clone>(
        &mut self,
        kind: &str,
        value: &K,
        shown: &str,
        span: Range<usize>,
        (index, agent): (usize, &str),
        owners: &mut HashMap<K, Owner>,
    ) -> bool {
        match owners.get(value) {
            None => {
                owners.insert(value.clone(), (index, agent.to_string(), span.start));
                true
            }
            Some((i, _, _)) if *i == index => false,
            Some((_, owner, first)) => {
                let line = self.line_of(*first);
                let owner = owner.clone();
                self.error(
                    span,
                    format!(
                        "{kind} {shown} is already selected by agent \"{owner}\" (line {line}); \
                         a process can belong to only one agent"
                    ),
                );
                false
            }
        }
    }
}

/// The selector values claimed so far, across agents, for the duplicate checks.
struct Claims<'a> {
    index: usize,
    agent: &'a str,
    comms: &'a mut HashMap<String, Owner>,
    exes: &'a mut HashMap<String, Owner>,
    cgroups: &'a mut HashMap<String, Owner>,
    uids: &'a mut HashMap<u32, Owner>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "p.toml";

    /// Parse `text`, expect failure, return `(line, col, message)` of every diagnostic.
    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        match parse(FILE, text) {
            Ok(p) => panic!("expected errors, parsed {p:#?}"),
            Err(ds) => ds
                .into_iter()
                .map(|d| {
                    assert_eq!(d.file, FILE);
                    (d.line, d.col, d.message)
                })
                .collect(),
        }
    }

    /// Expect exactly these `(line, col, substring of the message)` diagnostics.
    #[track_caller]
    fn expect(text: &str, want: &[(usize, usize, &str)]) {
        let got = errors(text);
        assert_eq!(got.len(), want.len(), "wrong number of diagnostics for\n{text}\ngot: {got:#?}\nwant: {want:#?}");
        for ((line, col, msg), (wl, wc, wm)) in got.iter().zip(want) {
            assert_eq!((*line, *col), (*wl, *wc), "position of {msg:?} (wanted {wm:?})\n{text}");
            assert!(msg.contains(wm), "message {msg:?} does not contain {wm:?}");
            assert!(!msg.contains('\n'), "multi-line message {msg:?}");
        }
    }

    fn ok(text: &str) -> Policy {
        parse(FILE, text)
            .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
    }

    const MINIMAL: &str = "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n";

    #[test]
    fn default_policy_parses_and_says_what_the_contract_says() {
        let p = parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
            .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
        assert_eq!(p, default_policy());
        assert_eq!(p.daemon.metrics_listen.as_deref(), Some("127.0.0.1:9750"));
        assert_eq!(p.daemon.metrics_addr(), Some("127.0.0.1:9750".parse().unwrap()));
        assert_eq!(p.daemon.events_file.as_deref(), Some("/var/log/agent-monitor/events.jsonl"));
        assert_eq!(p.daemon.control_socket.as_deref(), Some("/run/agent-monitor/control.sock"));
        assert!(p.alerts.webhook.is_empty());
        assert_eq!(p.agents.len(), 1);
        let a = &p.agents[0];
        assert_eq!(a.name, "agent-cli");
        assert_eq!(a.action, Action::Alert);
        assert!(!a.audit);
        assert_eq!(a.selector.comm, ["claude", "codex", "gemini", "aider", "goose", "opencode"]);
        assert!(a.selector.exe.is_empty() && a.selector.cgroup.is_empty() && a.selector.uid.is_empty());
        assert_eq!(a.files.writable, ["/tmp", "/var/tmp"]);
        let allow: Vec<String> = a.network.allow.iter().map(|e| e.to_string()).collect();
        assert_eq!(allow, ["127.0.0.53:53", "0.0.0.0/0:443", "[::/0]:443"]);
        assert_eq!(a.network.http_methods, ["GET", "HEAD", "OPTIONS"]);
        assert!(!a.network.require_http_visibility);
        assert!(a.syscalls.allow.is_empty());
    }

    #[test]
    fn design_doc_example_parses() {
        // The example of DESIGN.md, "The contract users see".
        let p = ok(r#"
[daemon]
metrics_listen = "127.0.0.1:9750"
events_file = "/var/log/agent-monitor/events.jsonl"   # JSON lines; "-" is stdout
control_socket = "/run/agent-monitor/control.sock"

[[alerts.webhook]]
url = "http://127.0.0.1:9093/api/v2/alerts"
format = "alertmanager"          # or "json": one event per POST

[[agent]]
name = "forum-analyst"
action = "kill"                  # alert | deny | kill
[agent.match]                    # any selector matches; descendants inherit
comm = ["forum-agent"]
exe = ["/opt/forum-agent/bin/agent"]
cgroup = ["/agents.slice/forum-analyst.service"]   # relative to the cgroup v2 root
uid = [1500]
[agent.files]
writable = ["/var/lib/forum-analyst", "/tmp"]
[agent.network]
allow = ["forum.internal:443", "10.20.0.0/16:443", "127.0.0.53:53", "unix:/run/nscd/socket"]
http_methods = ["GET", "HEAD", "OPTIONS"]
"#);
        assert_eq!(
            p.alerts.webhook,
            [Webhook { url: "http://127.0.0.1:9093/api/v2/alerts".into(), format: WebhookFormat::Alertmanager }]
        );
        let a = p.agent("forum-analyst").unwrap();
        assert_eq!(a.action, Action::Kill);
        assert_eq!(
            a.selector,
            Match {
                comm: vec!["forum-agent".into()],
                exe: vec!["/opt/forum-agent/bin/agent".into()],
                cgroup: vec!["/agents.slice/forum-analyst.service".into()],
                uid: vec![1500],
            }
        );
        assert_eq!(
            a.network.allow,
            [
                AllowEntry::Host { host: "forum.internal".into(), port: Some(443) },
                AllowEntry::Addr { net: IpNet { addr: "10.20.0.0".parse().unwrap(), prefix_len: 16 }, port: Some(443) },
                AllowEntry::Addr { net: IpNet::host("127.0.0.53".parse().unwrap()), port: Some(53) },
                AllowEntry::Unix("/run/nscd/socket".into()),
            ]
        );
    }

    #[test]
    fn everything_else_defaults() {
        let p = ok(MINIMAL);
        assert_eq!(p.daemon, DaemonConfig::default());
        let a = &p.agents[0];
        assert_eq!(a.action, Action::Alert);
        assert!(!a.audit);
        assert_eq!(a.network, Network::default());
        assert_eq!(a.network.http_methods, ["GET", "HEAD", "OPTIONS"]);
        assert_eq!(a.syscalls, Syscalls::default());
        // An empty file is a valid policy with no agents.
        assert_eq!(ok(""), Policy::default());
    }

    #[test]
    fn all_settings_are_read_and_normalised() {
        let p = ok(r#"
[daemon]
metrics_listen = "[::1]:9750"
events_file = "-"
control_socket = "/run//agent-monitor/control.sock"
admin_group = "agent-admins"
pin_path = "/sys/fs/bpf/agent-monitor/"
hold_timeout_secs = 300
bpf_stats = "on"
tls_uprobes = false

[[alerts.webhook]]
url = "https://hooks.example/agent"
format = "json"

[[agent]]
name = "x"
action = "deny"
audit = true
[agent.match]
exe = ["/usr//bin/python3/"]
cgroup = ["/agents.slice//x.service/"]
uid = [0, 1500]
[agent.files]
writable = ["/", "/srv/work//", "/srv/work"]
[agent.network]
allow = ["API.Example.com:*"]
http_methods = []
require_http_visibility = true
[agent.syscalls]
allow = ["io_uring", "bpf"]
"#);
        assert_eq!(
            p.daemon,
            DaemonConfig {
                metrics_listen: Some("[::1]:9750".into()),
                events_file: Some("-".into()),
                control_socket: Some("/run/agent-monitor/control.sock".into()),
                admin_group: Some("agent-admins".into()),
                pin_path: Some("/sys/fs/bpf/agent-monitor".into()),
                hold_timeout_secs: Some(300),
                bpf_stats: Some(crate::policy::model::BpfStats::On),
                tls_uprobes: Some(crate::policy::model::TlsUprobes::Off),
            }
        );
        assert_eq!(p.alerts.webhook[0].format, WebhookFormat::Json);
        let a = &p.agents[0];
        assert_eq!((a.action, a.audit), (Action::Deny, true));
        assert_eq!(a.selector.exe, ["/usr/bin/python3"]);
        assert_eq!(a.selector.cgroup, ["/agents.slice/x.service"]);
        assert_eq!(a.selector.uid, [0, 1500]);
        assert_eq!(a.files.writable, ["/", "/srv/work", "/srv/work"]);
        assert_eq!(a.network.allow, [AllowEntry::Host { host: "api.example.com".into(), port: None }]);
        assert!(a.network.http_methods.is_empty());
        assert!(a.network.require_http_visibility);
        assert!(a.syscalls.allows("io_uring") && a.syscalls.allows("bpf"));
        assert!(!a.syscalls.allows("raw_socket"));
    }

    #[test]
    fn tls_uprobes_takes_a_scope_or_a_boolean() {
        use crate::policy::model::TlsUprobes;
        for (text, want) in [
            ("\"agents\"", TlsUprobes::Agents),
            ("true", TlsUprobes::Agents),
            ("\"all\"", TlsUprobes::All),
            ("\"off\"", TlsUprobes::Off),
            ("false", TlsUprobes::Off),
        ] {
            let p = ok(&format!("[daemon]\ntls_uprobes = {text}\n"));
            assert_eq!(p.daemon.tls_uprobes, Some(want), "{text}");
            // What the policy prints reads back the same.
            assert_eq!(ok(&p.to_string()).daemon.tls_uprobes, Some(want));
        }
        assert_eq!(ok("").daemon.tls_uprobes.unwrap_or_default(), TlsUprobes::Agents);
    }

    // --- errors toml reports -------------------------------------------------------------

    #[test]
    fn syntax_error_position() {
        expect("[[agent]]\nname = \"a\"\n[agent.match\n", &[(3, 13, "invalid table header")]);
        // toml reads `127.0` as a float and stops at the next dot.
        expect("[daemon]\nmetrics_listen = 127.0.0.1\n", &[(2, 23, "expected newline")]);
        expect("[[agent]]\nname = \"a\"\nname = \"b\"\n", &[(3, 1, "duplicate key `name`")]);
    }

    #[test]
    fn unknown_keys_everywhere() {
        expect("[deamon]\n", &[(1, 2, "unknown field `deamon`")]);
        expect("[daemon]\nmetrics = \"x\"\n", &[(2, 1, "unknown field `metrics`")]);
        expect("[alerts]\nslack = []\n", &[(2, 1, "unknown field `slack`")]);
        expect("[[alerts.webhook]]\nurl = \"http://x\"\nheaders = {}\n", &[(3, 1, "unknown field `headers`")]);
        expect("[[agent]]\nname = \"a\"\nmode = \"kill\"\n", &[(3, 1, "unknown field `mode`")]);
        expect(&format!("{MINIMAL}pid = [1]\n"), &[(5, 1, "unknown field `pid`")]);
        expect(&format!("{MINIMAL}[agent.files]\nreadable = []\n"), &[(6, 1, "unknown field `readable`")]);
        expect(&format!("{MINIMAL}[agent.network]\ndeny = []\n"), &[(6, 1, "unknown field `deny`")]);
        expect(&format!("{MINIMAL}[agent.syscalls]\ndeny = []\n"), &[(6, 1, "unknown field `deny`")]);
        expect(&format!("{MINIMAL}[agent.process]\n"), &[(5, 8, "unknown field `process`")]);
    }

    #[test]
    fn wrong_types() {
        expect("[[agent]]\nname = 5\n", &[(2, 8, "invalid type: integer `5`, expected a string")]);
        expect("[[agent]]\nname = \"a\"\naudit = \"yes\"\n", &[(3, 9, "expected a boolean")]);
        expect("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = \"a\"\n", &[(4, 8, "expected a sequence")]);
        expect("[[agent]]\nname = \"a\"\n[agent.match]\nuid = [\"1500\"]\n", &[(4, 8, "expected u32")]);
        expect("[[agent]]\nname = \"a\"\n[agent.match]\nuid = [-1]\n", &[(4, 8, "expected u32")]);
        expect("[daemon]\nhold_timeout_secs = -5\n", &[(2, 21, "expected u64")]);
        expect("[daemon]\nbpf_stats = \"always\"\n", &[(2, 13, "unknown variant `always`")]);
        expect("[daemon]\ntls_uprobes = \"some\"\n", &[(2, 15, "unknown tls_uprobes `some`")]);
        expect("[daemon]\ntls_uprobes = 1\n", &[(2, 15, "did not match any variant")]);
        expect(
            "[daemon]\nmetrics_listen.port = 9750\n",
            &[(2, 16, "invalid type: a table, where a single value is expected")],
        );
        expect("[[agent]]\naction = \"kill\"\n", &[(1, 1, "missing field `name`")]);
        expect("[[alerts.webhook]]\nformat = \"json\"\n", &[(1, 1, "missing field `url`")]);
    }

    #[test]
    fn bad_enum_values_point_at_the_value() {
        expect(
            "[[agent]]\nname = \"a\"\naction = \"block\"\n",
            &[(3, 10, "unknown variant `block`, expected one of `alert`, `deny`, `kill`, `hold`")],
        );
        expect("[[agent]]\nname = \"a\"\naction = \"Kill\"\n", &[(3, 10, "unknown variant `Kill`")]);
        expect(
            "[[alerts.webhook]]\nurl = \"http://x\"\nformat = \"slack\"\n",
            &[(3, 10, "unknown variant `slack`, expected `alertmanager` or `json`")],
        );
    }

    // --- semantic errors: all of them, each at its value --------------------------------

    #[test]
    fn agent_names() {
        expect("[[agent]]\nname = \"\"\n[agent.match]\ncomm = [\"a\"]\n", &[(2, 8, "agent name is empty")]);
        expect("[[agent]]\nname = \"forum analyst\"\n[agent.match]\ncomm = [\"a\"]\n", &[(2, 8, "contains ' '")]);
        let long = "n".repeat(65);
        expect(
            &format!("[[agent]]\nname = \"{long}\"\n[agent.match]\ncomm = [\"a\"]\n"),
            &[(2, 8, "65 bytes long; at most 64")],
        );
        expect(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n\n\
             [[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"b\"]\n",
            &[(7, 8, "duplicate agent name \"a\": first defined at line 2")],
        );
    }

    #[test]
    fn agents_need_a_selector() {
        expect("[[agent]]\nname = \"a\"\n", &[(1, 1, "agent \"a\" has no selector")]);
        // An empty table: reported at its agent's [[agent]] header.
        expect(
            "[[agent]]\nname = \"a\"\n\n[agent.match]\n[agent.files]\nwritable = [\"/tmp\"]\n",
            &[(1, 1, "[agent.match] of agent \"a\" selects nothing")],
        );
        expect(
            "[[agent]]\nname = \"a\"\nmatch = { comm = [] }\n",
            &[(1, 1, "[agent.match] of agent \"a\" selects nothing")],
        );
        expect(
            "agent = [\n  { name = \"a\", match.comm = [\"x\"] },\n  { name = \"b\", match = {} },\n]\n",
            &[(3, 3, "[agent.match] of agent \"b\" selects nothing")],
        );
    }

    #[test]
    fn too_many_agents() {
        let mut text = String::new();
        for i in 0..=MAX_AGENTS {
            text.push_str(&format!("[[agent]]\nname = \"a{i}\"\nmatch.uid = [{}]\n", 1000 + i));
        }
        // Agent number 256 starts at line 3 * 255 + 1; its name is on the next line.
        expect(&text, &[(3 * 255 + 2, 8, "too many agents: at most 255")]);
        text.truncate(text.rfind("[[agent]]").unwrap());
        assert_eq!(ok(&text).agents.len(), MAX_AGENTS);
    }

    #[test]
    fn comm_length_and_duplicates() {
        expect(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"ok\", \"forum-agent-worker\", \"\"]\n",
            &[
                (4, 15, "kernel keeps only 15 (TASK_COMM_LEN - 1), so it would be truncated to \"forum-agent-wor\""),
                (4, 37, "empty comm"),
            ],
        );
        expect(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"claude\"]\n\n\
             [[agent]]\nname = \"b\"\n[agent.match]\ncomm = [\"codex\", \"claude\"]\n",
            &[(9, 18, "comm \"claude\" is already selected by agent \"a\" (line 4)")],
        );
        // Repeating a value within one agent is harmless.
        let p = ok("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"x\", \"x\"]\n");
        assert_eq!(p.agents[0].selector.comm, ["x"]);
    }

    #[test]
    fn exe_cgroup_uid_rules_and_duplicates() {
        expect(
            r#"[[agent]]
name = "a"
[agent.match]
exe = ["bin/agent", "/opt/../agent", "/"]
cgroup = ["agents.slice", "/sys/fs/cgroup/agents.slice"]
uid = [4294967295]
"#,
            &[
                (4, 8, "exe \"bin/agent\": not an absolute path"),
                (4, 21, "exe \"/opt/../agent\": the path has a `..` component"),
                (4, 38, "is a directory"),
                (5, 11, "must start with `/`"),
                (5, 27, "includes the mount point"),
                (6, 8, "(uid_t)-1"),
            ],
        );
        let long = format!("/{}", "e".repeat(MAX_EXE_LEN));
        expect(
            &format!("[[agent]]\nname = \"a\"\n[agent.match]\nexe = [\"{long}\"]\n"),
            &[(4, 8, "252 bytes long; at most 251")],
        );
        let p = ok(&format!("[[agent]]\nname = \"a\"\n[agent.match]\nexe = [\"{}\"]\n", &long[..MAX_EXE_LEN]));
        assert_eq!(p.agents[0].selector.exe[0].len(), MAX_EXE_LEN);
        expect(
            r#"[[agent]]
name = "a"
[agent.match]
exe = ["/opt/agent"]
cgroup = ["/a.slice"]
uid = [1500]

[[agent]]
name = "b"
[agent.match]
exe = ["/opt//agent/"]
cgroup = ["/a.slice/"]
uid = [1501, 1500]
"#,
            &[
                (11, 8, "exe \"/opt/agent\" is already selected by agent \"a\" (line 4)"),
                (12, 11, "cgroup \"/a.slice\" is already selected by agent \"a\" (line 5)"),
                (13, 14, "uid 1500 is already selected by agent \"a\" (line 6)"),
            ],
        );
    }

    #[test]
    fn writable_paths() {
        let long = format!("/{}", "w".repeat(MAX_WRITABLE_LEN));
        expect(
            &format!(
                "{MINIMAL}[agent.files]\nwritable = [\"tmp\", \"/a/./b\", \"/a/../b\", \"/a\\u0000b\", \"~/x\",\n  \"{long}\"]\n"
            ),
            &[
                (6, 13, "writable \"tmp\": not an absolute path"),
                (6, 20, "`.` component"),
                (6, 30, "`..` component"),
                (6, 41, "NUL"),
                (6, 54, "`~` is not expanded"),
                (7, 3, "201 bytes long; at most 200"),
            ],
        );
        // Exactly 200 bytes after normalisation is fine, however it was written.
        let at_limit = format!("/{}//", "w".repeat(MAX_WRITABLE_LEN - 1));
        let p = ok(&format!("{MINIMAL}[agent.files]\nwritable = [\"{at_limit}\"]\n"));
        assert_eq!(p.agents[0].files.writable[0].len(), MAX_WRITABLE_LEN);
    }

    #[test]
    fn allow_entries() {
        expect(
            &format!(
                "{MINIMAL}[agent.network]\nallow = [\n  \"host:0\",\n  \"1.2.3.999:443\",\n  \"10.0.0.0/40:443\",\n  \":443\",\n  \"unix:run/x.sock\",\n  \"*:443\",\n  \"[::1]:99999\",\n  \"::1:53\",\n]\n"
            ),
            &[
                (7, 3, "bad allow entry \"host:0\": port 0"),
                (8, 3, "bad IPv4 address `1.2.3.999`"),
                (9, 3, "prefix length /40 is too long"),
                (10, 3, "empty host"),
                (11, 3, "must be absolute"),
                (12, 3, "0.0.0.0/0:443 and [::]/0:443"),
                (13, 3, "port 99999 is out of range"),
                (14, 3, "must be in brackets"),
            ],
        );
    }

    #[test]
    fn http_methods_and_syscalls() {
        expect(
            &format!(
                "{MINIMAL}[agent.network]\nhttp_methods = [\"GET\", \"post\", \"GE T\"]\n[agent.syscalls]\nallow = [\"io_uring\", \"ptrace\"]\n"
            ),
            &[
                (6, 24, "write \"POST\""),
                (6, 32, "not an HTTP method"),
                (8, 22, "unknown syscall class \"ptrace\": expected one of io_uring, raw_socket, bpf"),
            ],
        );
    }

    #[test]
    fn daemon_settings() {
        let dir = "d".repeat(MAX_UNIX_SOCKET_PATH_LEN);
        expect(
            &format!(
                r#"[daemon]
metrics_listen = "localhost:9750"
events_file = "events.jsonl"
control_socket = "/run/agent-monitor/{}/control.sock"
admin_group = "ops team"
pin_path = "sys/fs/bpf"
hold_timeout_secs = 0
"#,
                dir
            ),
            &[
                (2, 18, "metrics_listen \"localhost:9750\" is not an IP:PORT socket address"),
                (3, 15, "events_file \"events.jsonl\": not an absolute path"),
                (4, 18, "a Unix socket path is at most 107"),
                (5, 15, "admin_group \"ops team\""),
                (6, 12, "pin_path \"sys/fs/bpf\": not an absolute path"),
                (7, 21, "hold_timeout_secs must be at least 1"),
            ],
        );
        expect(
            "[[alerts.webhook]]\nurl = \"ftp://x\"\n\n[[alerts.webhook]]\nurl = \"https://\"\n",
            &[(2, 7, "must start with http:// or https://"), (5, 7, "has no host")],
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_in_file_order() {
        let errs = errors(
            r#"[daemon]
metrics_listen = "nope"

[[agent]]
name = "a b"
[agent.match]
comm = ["a-comm-that-is-too-long"]
[agent.network]
allow = ["x"]

[[agent]]
name = "c"
"#,
        );
        let pos: Vec<(usize, usize)> = errs.iter().map(|(l, c, _)| (*l, *c)).collect();
        // The over-long comm is reported, not also the [agent.match] it leaves without a value.
        assert_eq!(pos, [(2, 18), (5, 8), (7, 9), (9, 10), (11, 1)], "{errs:#?}");
    }

    #[test]
    fn diagnostics_display_as_file_line_col() {
        let ds =
            parse("/etc/agent-monitor/agent-monitor.toml", "[[agent]]\nname = \"a\"\naction = \"x\"\n").unwrap_err();
        assert_eq!(ds.len(), 1);
        assert!(
            ds[0].to_string().starts_with("/etc/agent-monitor/agent-monitor.toml:3:10: unknown variant `x`"),
            "{}",
            ds[0]
        );
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("agent-monitor-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, MINIMAL).unwrap();
        assert_eq!(load(&good).unwrap().agents[0].name, "a");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[agent]]\nname = \"\"\nmatch.comm = [\"a\"]\n").unwrap();
        let ds = load(&bad).unwrap_err();
        assert_eq!(ds[0].to_string(), format!("{}:2:8: agent name is empty", bad.display()));

        let missing = dir.join("missing.toml");
        let ds = load(&missing).unwrap_err();
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].line, 0);
        assert!(
            ds[0].to_string().starts_with(&format!("{}: cannot read the policy: ", missing.display())),
            "{}",
            ds[0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
