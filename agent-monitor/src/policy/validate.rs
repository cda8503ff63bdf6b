//! Validating the raw model and lowering it into the public one: every semantic rule checked,
//! *all* violations reported, each at the offending value's `LINE:COL`.
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::{
    checks::*,
    diag::{self, Diagnostic},
    model::*,
    raw::{RawAgent, RawDaemon, RawMatch, RawPolicy},
};

/// Who first claimed a selector value (or an agent name): the agent's index and name, and
/// where (file, line).
type Owner = (usize, String, Place);

/// A place in a file of the policy set: shown as "line N" in the same file, "FILE:N" in another.
#[derive(Clone, Debug)]
pub(super) struct Place {
    file: String,
    line: usize,
}

/// What the files of a policy set claimed so far: agent names and selector values are unique
/// across the main file and every `policy.d/` fragment, and agents are counted across them.
#[derive(Default)]
pub(super) struct Seen {
    agents: usize,
    names: HashMap<String, Place>,
    comms: HashMap<String, Owner>,
    exes: HashMap<String, Owner>,
    cgroups: HashMap<String, Owner>,
    uids: HashMap<u32, Owner>,
    cmdlines: HashMap<String, Owner>,
}

pub(super) struct Validator<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub diags: Vec<Diagnostic>,
    pub seen: Seen,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::at_span(self.file, self.text, span, message));
    }

    fn place(&self, offset: usize) -> Place {
        Place { file: self.file.to_string(), line: diag::line_col(self.text, offset).0 }
    }

    /// "line N" in this file, "FILE:N" in another one of the set.
    fn shown(&self, p: &Place) -> String {
        if p.file == self.file {
            format!("line {}", p.line)
        } else {
            format!("{}:{}", p.file, p.line)
        }
    }

    pub fn policy(&mut self, raw: RawPolicy) -> Policy {
        let daemon = self.daemon(raw.daemon);
        let (webhook, agents) = self.alerts_and_agents(raw.alerts, raw.agent);
        Policy { daemon, alerts: AlertsConfig { webhook }, agents }
    }

    /// A `policy.d/` fragment: agents (and webhooks) only; the daemon's settings are the main
    /// file's.
    pub fn fragment(&mut self, raw: RawPolicy) -> (Vec<Webhook>, Vec<AgentPolicy>) {
        let d = &raw.daemon;
        let set = [
            d.metrics_listen.as_ref().map(|v| v.span()),
            d.events_file.as_ref().map(|v| v.span()),
            d.control_socket.as_ref().map(|v| v.span()),
            d.admin_group.as_ref().map(|v| v.span()),
            d.pin_path.as_ref().map(|v| v.span()),
            d.hold_timeout_secs.as_ref().map(|v| v.span()),
            d.host_name.as_ref().map(|v| v.span()),
            d.labels.as_ref().and_then(|l| l.values().next()).map(|v| v.span()),
            d.syslog.as_ref().map(|v| v.span()),
        ];
        if let Some(span) = set.into_iter().flatten().next() {
            self.error(span, "[daemon] settings belong in the main policy file, not in a policy.d fragment");
        } else if d.bpf_stats.is_some() || d.tls_uprobes.is_some() {
            self.error(0..0, "[daemon] settings belong in the main policy file, not in a policy.d fragment");
        }
        self.alerts_and_agents(raw.alerts, raw.agent)
    }

    fn alerts_and_agents(
        &mut self,
        alerts: super::raw::RawAlerts,
        raw_agents: Vec<Spanned<RawAgent>>,
    ) -> (Vec<Webhook>, Vec<AgentPolicy>) {
        let mut webhook = Vec::new();
        for w in alerts.webhook {
            if let Err(e) = check_webhook_url(w.url.get_ref()) {
                self.error(w.url.span(), e);
            }
            let ca_file = w.ca_file.map(|c| self.path("ca_file", &c, "an absolute path to PEM certificates"));
            let bearer_token_file =
                w.bearer_token_file.map(|t| self.path("bearer_token_file", &t, "an absolute path to a token file"));
            webhook.push(Webhook { url: w.url.into_inner(), format: w.format, ca_file, bearer_token_file });
        }

        let mut seen = std::mem::take(&mut self.seen);
        let mut agents = Vec::with_capacity(raw_agents.len());
        for agent in raw_agents {
            let i = seen.agents;
            seen.agents += 1;
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
                    if let Some(first) = seen.names.get(&name) {
                        let at = self.shown(first);
                        self.error(
                            agent.name.span(),
                            format!("duplicate agent name \"{name}\": first defined at {at}"),
                        );
                    } else {
                        seen.names.insert(name.clone(), self.place(agent.name.span().start));
                    }
                }
            }
            let mut claims = Claims {
                index: i,
                agent: &name,
                comms: &mut seen.comms,
                exes: &mut seen.exes,
                cgroups: &mut seen.cgroups,
                uids: &mut seen.uids,
                cmdlines: &mut seen.cmdlines,
            };
            agents.push(self.agent(agent, agent_span, &mut claims));
        }
        self.seen = seen;
        (webhook, agents)
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
        if let Some(h) = d.host_name {
            let v = h.get_ref();
            if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(h.span(), format!("host_name {v:?} is not a host name (1-253 characters, no spaces)"));
            }
            out.host_name = Some(h.into_inner());
        }
        if let Some(t) = d.syslog {
            if let Err(e) = crate::sinks::syslog::Target::parse(t.get_ref()) {
                self.error(t.span(), e.to_string());
            }
            out.syslog = Some(t.into_inner());
        }
        for (k, v) in d.labels.unwrap_or_default() {
            // Alertmanager groups and inhibits on labels: a label name must be a Prometheus one
            // and must not take the place of one the alert itself carries.
            const RESERVED: [&str; 9] =
                ["alertname", "severity", "agent", "kind", "action", "source", "host", "instance", "job"];
            let name_ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with("__");
            if !name_ok || RESERVED.contains(&k.as_str()) {
                self.error(
                    v.span(),
                    format!(
                        "labels: {k:?} is not a label name this can take ([a-zA-Z_][a-zA-Z0-9_]*, not \
                         starting with __, none of {})",
                        RESERVED.join(", ")
                    ),
                );
            }
            let val = v.get_ref();
            if val.is_empty() || val.len() > 128 || val.chars().any(|c| c.is_control()) {
                self.error(v.span(), format!("labels.{k}: {val:?} must be 1-128 characters, no control characters"));
            }
            out.labels.insert(k, v.into_inner());
        }
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
                         one of comm, exe, cgroup, uid, cmdline"
                    ),
                );
                Match::default()
            }
            Some(m) => {
                let written = m.comm.len() + m.exe.len() + m.cgroup.len() + m.uid.len() + m.cmdline.len();
                let m = self.selector(m, claims);
                // Only a table with no entries at all: invalid entries were reported already.
                // The position is the agent's: toml 0.8 cannot span every form of the table.
                if written == 0 {
                    self.error(
                        span,
                        format!(
                            "[agent.match] of agent \"{name}\" selects nothing: give at least one \
                             of comm, exe, cgroup, uid, cmdline"
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
            let span = e.span();
            match self.allow_entry(e.into_inner()) {
                Ok(entry) => allow.push(entry),
                Err(why) => self.error(span, format!("bad allow entry {why}")),
            }
        }
        if let Some(r) = a.network.require_http_visibility {
            self.error(
                r.span(),
                "require_http_visibility was replaced by per-destination rules: TLS the daemon cannot read is \
                 refused everywhere except to allow entries with opaque_tls = true (e.g. { to = \"api.example.com:443\", \
                 opaque_tls = true }); remove this key",
            );
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
            network: Network { allow, http_methods },
            syscalls: Syscalls { allow: syscalls },
        }
    }

    /// One `allow` entry: a destination string, or a table saying what the destination takes.
    fn allow_entry(&mut self, v: toml::Value) -> Result<Allow, String> {
        let table = match v {
            toml::Value::String(s) => return parse_allow_entry(&s).map(Allow::plain),
            toml::Value::Table(t) => t,
            other => return Err(format!("{other}: expected \"host:port\" or a table {{ to = \"host:port\", ... }}")),
        };
        const KEYS: &str = "to, protocol, methods, paths, opaque_tls";
        let mut allow = None;
        let (mut protocol, mut methods, mut paths, mut opaque_tls) = (Protocol::Tcp, None, Vec::new(), false);
        let strings = |key: &str, v: &toml::Value| -> Result<Vec<String>, String> {
            let arr = v.as_array().ok_or_else(|| format!("{key} must be an array of strings"))?;
            arr.iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be an array of strings")))
                .collect()
        };
        for (k, v) in &table {
            match k.as_str() {
                "to" => {
                    let s = v.as_str().ok_or("to must be a string such as \"host:443\"")?;
                    allow = Some(parse_allow_entry(s)?);
                }
                "protocol" => {
                    protocol = match v.as_str() {
                        Some("tcp") => Protocol::Tcp,
                        Some("udp") => Protocol::Udp,
                        Some("any") => Protocol::Any,
                        _ => return Err(format!("protocol {v}: expected \"tcp\", \"udp\" or \"any\"")),
                    }
                }
                "methods" => {
                    let ms = strings("methods", v)?;
                    for m in &ms {
                        check_http_method(m)?;
                    }
                    methods = Some(ms);
                }
                "paths" => {
                    paths = strings("paths", v)?;
                    for p in &paths {
                        check_http_path(p)?;
                    }
                }
                "opaque_tls" => opaque_tls = v.as_bool().ok_or("opaque_tls must be true or false")?,
                other => return Err(format!("unknown key {other:?} in an allow table (expected {KEYS})")),
            }
        }
        let dest = allow.ok_or(format!("an allow table needs `to` (keys: {KEYS})"))?;
        if matches!(dest, AllowEntry::Unix(_))
            && (protocol != Protocol::Tcp || methods.is_some() || !paths.is_empty() || opaque_tls)
        {
            return Err(format!("{dest}: a Unix socket takes no protocol, methods, paths or opaque_tls"));
        }
        if !paths.is_empty() && methods.is_none() {
            return Err(format!("{dest}: paths limit the methods the entry adds: give them with `methods`"));
        }
        Ok(Allow { dest, protocol, methods, paths, opaque_tls })
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
        for c in m.cmdline {
            match check_cmdline(c.get_ref()) {
                Err(why) => self.error(c.span(), format!("cmdline \"{}\": {why}", c.get_ref())),
                Ok(_) if claims.cmdlines.len() >= agent_monitor_common::CMDLINE_MAX as usize => self.error(
                    c.span(),
                    format!("at most {} cmdline selectors, over all agents", agent_monitor_common::CMDLINE_MAX),
                ),
                Ok(text) => {
                    let shown = format!("\"{}\"", c.get_ref());
                    if self.claim("cmdline", &text, &shown, c.span(), (claims.index, claims.agent), claims.cmdlines) {
                        out.cmdline.push(text);
                    }
                }
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
                owners.insert(value.clone(), (index, agent.to_string(), self.place(span.start)));
                true
            }
            Some((i, _, _)) if *i == index => false,
            Some((_, owner, first)) => {
                let at = self.shown(first);
                let owner = owner.clone();
                self.error(
                    span,
                    format!(
                        "{kind} {shown} is already selected by agent \"{owner}\" ({at}); \
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
    cmdlines: &'a mut HashMap<String, Owner>,
}
