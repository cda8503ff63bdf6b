//! What-if: the decisions a candidate policy would have made on recorded events
//! (`agent-monitor policy test`).
//!
//! The candidate is parsed, validated and compiled by the same code as the daemon's policy, and
//! each recorded operation is looked up in the compiled tables the way the kernel programs look
//! it up in the maps those tables fill:
//! - a file: the longest `writable` prefix on component boundaries (`WRITABLE`, an LPM trie keyed
//!   by the path and a trailing `/`);
//! - an address: the longest network of the exact port, then of "any port" (`NET_ALLOW`), with
//!   the addresses the daemon resolves for host names at /128;
//! - an HTTP request: the methods of that destination's rule, else the agent's; a method the rule
//!   takes only under `paths` needs a path under one of them (`PATH_ALLOW`, a plain prefix);
//! - a Unix socket: its exact path (`UNIX_ALLOW`);
//! - the syscall families: the agent's flags.
//!
//! What the kernel refuses whatever the policy says (a device node, a hard link, an argument it
//! could not read, HTTP that is not read-only by its grammar, tampering with the daemon or
//! another process) stays refused here, recognised by the detail the decoder wrote
//! (`events::decode::OBJECT_REFUSALS`, `http_grammar_texts`). That the replay and the kernel
//! agree is an end-to-end test (`tests/tests/profile.rs`): a run recorded under a policy is
//! replayed against that same policy, and every recorded verdict must come out the same.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use serde_json::Value;

use super::{compile, ipv6_form, AgentPolicy, CompiledPolicy, Policy};
use crate::events::decode::{
    http_grammar_texts, OBJECT_REFUSALS, SYMLINK_TEXT, TLS_INVISIBLE_TEXT, TLS_PLAINTEXT_TEXT,
};
use agent_monitor_common::{proto, DestRule};

/// One recorded event, as far as a decision needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    pub ts: String,
    pub agent: String,
    pub kind: String,
    pub target: String,
    pub detail: String,
    pub verdict: String,
    pub rule: String,
    pub comm: String,
    pub exe: String,
}

impl Recorded {
    /// From an event line; `None` for lines that are not an agent's event (`policy.load`).
    pub fn from_json(v: &Value) -> Option<Recorded> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Recorded {
            ts: s("ts").unwrap_or_default(),
            agent: s("agent")?,
            kind: s("kind")?,
            target: s("target").unwrap_or_default(),
            detail: s("detail").unwrap_or_default(),
            verdict: s("verdict").unwrap_or_default(),
            rule: s("rule").unwrap_or_default(),
            comm: s("comm").unwrap_or_default(),
            exe: s("exe").unwrap_or_default(),
        })
    }

    pub fn was_violation(&self) -> bool {
        self.verdict == "violation"
    }

    /// The method and target of the HTTP request line at the start of `detail` (`METHOD TARGET
    /// HTTP/x`, possibly cut short where the kernel's 192 bytes ended), if the event's bytes
    /// started a request.
    pub fn request_line(&self) -> Option<(&str, &str)> {
        let mut w = self.detail.splitn(3, ' ');
        let (m, t) = (w.next()?, w.next()?);
        // (a target cut by the end of the kept bytes is followed by the decoder's "; ")
        let t = match w.next() {
            Some(_) => t,
            None => t.split("; ").next().unwrap_or(t),
        };
        (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && !t.is_empty()).then_some((m, t))
    }

    /// The `Host:` header of an HTTP request event: the last "; Host: " part the decoder wrote
    /// (a request line cannot hide one after it).
    pub fn http_host(&self) -> Option<&str> {
        let (_, h) = self.detail.rsplit_once("; Host: ")?;
        Some(h.split("; ").next().unwrap_or(h))
    }

    /// The two paths of a rename or link (`FROM -> TO` in the detail; the target is the one the
    /// kernel named, either of them). Names may contain ` -> ` or `; `: the split is made at the
    /// target, and the detail's own suffixes are cut off.
    pub fn both_paths(&self) -> Option<(String, String)> {
        let t = &self.target;
        let cut = |rest: &str| -> String {
            let mut end = rest.len();
            for (i, _) in rest.match_indices("; ") {
                if DETAIL_SUFFIXES.iter().chain(OBJECT_REFUSALS.iter()).any(|s| rest[i + 2..].starts_with(s)) {
                    end = i;
                    break;
                }
            }
            rest[..end].to_string()
        };
        if let Some(rest) = self.detail.strip_prefix(&format!("{t} -> ")) {
            return Some((t.clone(), cut(rest)));
        }
        let body = cut(&self.detail);
        let from = body.strip_suffix(&format!(" -> {t}"))?;
        Some((from.to_string(), t.clone()))
    }
}

/// Texts the decoder appends to a file event's detail after its paths (`events::decode`).
const DETAIL_SUFFIXES: [&str; 4] = [
    "deny requested but no active layer",
    "the syscall completed before the kill",
    "refused in the kernel; the instance is killed",
    "refused by the Landlock ruleset",
];

/// What allowed an operation (for least-privilege slack).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grant {
    /// (agent, `writable` entry)
    Writable(String, String),
    /// (agent, index of the `allow` entry)
    Allow(String, usize),
    /// (agent, syscall family)
    Syscalls(String, String),
    /// Something every agent has (`IMPLICIT_WRITABLE`, the agent's `http_methods`).
    Implicit,
}

/// A decision on one recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not an operation the policy judges (process lifecycle, the body of a request already
    /// judged).
    NotJudged,
    Allowed(Vec<Grant>),
    /// Refused by this rule (`files.writable`, `network.allow`, ...), with the reason.
    Refused {
        rule: String,
        why: String,
    },
    /// Refused whatever a policy says.
    Always {
        rule: String,
        why: String,
    },
    /// The candidate has no agent of this name.
    NoAgent,
}

impl Decision {
    pub fn refuses(&self) -> bool {
        matches!(self, Decision::Refused { .. } | Decision::Always { .. })
    }
}

/// One agent of the candidate, compiled on its own and entry by entry (so that a decision can
/// name the `allow` entry that made it).
struct AgentTables {
    name: String,
    policy: AgentPolicy,
    whole: CompiledPolicy,
    /// Per `allow` entry: its compiled tables (agent id 1).
    entries: Vec<CompiledPolicy>,
}

/// The candidate policy, ready to judge recorded events.
pub struct Judge {
    agents: HashMap<String, AgentTables>,
    /// Host name -> addresses, resolved once (as the daemon resolves `allow` host names).
    resolved: HashMap<String, Vec<IpAddr>>,
}

impl Judge {
    /// `resolve` turns a host name into addresses (the system resolver in the CLI; a table in
    /// unit tests).
    pub fn new(p: &Policy, resolve: &dyn Fn(&str) -> Vec<IpAddr>) -> Judge {
        let mut agents = HashMap::new();
        let mut resolved = HashMap::new();
        for a in &p.agents {
            let one = |allow: Vec<super::Allow>| {
                let mut a1 = a.clone();
                a1.network.allow = allow;
                compile(&Policy { agents: vec![a1], ..Policy::default() })
            };
            let whole = one(a.network.allow.clone());
            let entries: Vec<CompiledPolicy> = a.network.allow.iter().map(|e| one(vec![e.clone()])).collect();
            for h in &whole.hosts {
                resolved.entry(h.host.clone()).or_insert_with(|| resolve(&h.host));
            }
            agents.insert(a.name.clone(), AgentTables { name: a.name.clone(), policy: a.clone(), whole, entries });
        }
        Judge { agents, resolved }
    }

    /// The candidate's decision on one recorded operation.
    pub fn decide(&self, r: &Recorded) -> Decision {
        let Some(a) = self.agents.get(&r.agent) else {
            return if judged_kind(&r.kind) { Decision::NoAgent } else { Decision::NotJudged };
        };
        let always = |rule: &str, why: &str| Decision::Always { rule: rule.into(), why: why.into() };
        match r.kind.as_str() {
            "file.write" | "file.delete" | "file.rename" | "file.link" | "file.mkdir" | "file.chmod" => {
                if r.was_violation() {
                    if let Some(t) = OBJECT_REFUSALS.iter().find(|t| r.detail.contains(**t)) {
                        return always("files.writable", t);
                    }
                }
                let mut grants = Vec::new();
                let paths = match r.both_paths() {
                    // A symbolic link: the link is what is written (where it leads may be
                    // outside `writable`: the kernel judges what later goes through it).
                    Some((link, _)) if r.kind == "file.link" && r.detail.contains(SYMLINK_TEXT) => vec![link],
                    Some((from, to)) if r.kind == "file.rename" || r.kind == "file.link" => vec![from, to],
                    _ => vec![r.target.clone()],
                };
                for path in &paths {
                    match a.writable(path) {
                        Some(g) => grants.push(g),
                        None => {
                            return Decision::Refused {
                                rule: "files.writable".into(),
                                why: format!("{path} is under no writable entry"),
                            }
                        }
                    }
                }
                Decision::Allowed(grants)
            }
            "net.connect" | "net.send" => {
                let Some(sa) = parse_addr(&r.target) else { return always("network.allow", "no address recorded") };
                let p = if r.kind == "net.send" { proto::UDP } else { proto::TCP };
                match self.dest(a, p, sa) {
                    None => Decision::Refused {
                        rule: "network.allow".into(),
                        why: format!(
                            "{} {} is in no allow entry",
                            if p == proto::UDP { "UDP" } else { "TCP" },
                            r.target
                        ),
                    },
                    Some((i, d)) => {
                        if r.detail.contains("is not an allowed host name")
                            || r.detail.contains("TLS server name unreadable")
                        {
                            return Decision::Refused {
                                rule: "network.allow".into(),
                                why: "its TLS server name is not an allowed host name for this address".into(),
                            };
                        }
                        let opaque = r.rule == "network.opaque_tls" || r.detail.contains(TLS_INVISIBLE_TEXT);
                        if opaque && d.flags & agent_monitor_common::dest_flags::OPAQUE_TLS == 0 {
                            return Decision::Refused {
                                rule: "network.opaque_tls".into(),
                                why: "TLS the daemon cannot read, to a destination without opaque_tls".into(),
                            };
                        }
                        Decision::Allowed(vec![Grant::Allow(a.name.clone(), i)])
                    }
                }
            }
            "net.http_write" => {
                if r.was_violation() {
                    if let Some(t) = http_grammar_texts().find(|t| r.detail.contains(*t)) {
                        return always("network.http_methods", t);
                    }
                }
                let Some((method, target)) = r.request_line() else { return Decision::NotJudged };
                let bit = super::http_mask(&[method.to_string()]);
                if bit == 0 {
                    return always("network.http_methods", "a method the kernel does not know as a request start");
                }
                let agent_methods = a.whole.agents[0].http_allow;
                let refused = |rule: &str, why: String| Decision::Refused { rule: rule.into(), why };
                let clear = parse_addr(&r.target).filter(|_| !r.detail.contains(TLS_PLAINTEXT_TEXT));
                match clear {
                    // Clear text: the connection's destination rule (`takes`): its methods, else
                    // the agent's; a method it takes only under `paths` needs one.
                    Some(sa) => {
                        let Some((i, d)) = self.dest(a, proto::TCP, sa) else {
                            return refused("network.allow", format!("{} is in no allow entry", r.target));
                        };
                        let methods = if d.methods != 0 { d.methods } else { agent_methods };
                        if methods & bit == 0 {
                            return refused(
                                "network.http_methods",
                                format!("{method} is not a method this destination takes"),
                            );
                        }
                        if d.path_methods & bit != 0 && !path_under(&a.entries[i], target) {
                            return refused(
                                "network.paths",
                                format!("{method} {target} is under none of the destination's paths"),
                            );
                        }
                        Decision::Allowed(vec![Grant::Allow(a.name.clone(), i)])
                    }
                    // Inside TLS: the agent's methods; a method it does not take is judged by
                    // the destination its `Host:` names (`judge_by_host`, on the loader's own
                    // `HOST_DEST` entries).
                    None => {
                        if agent_methods & bit != 0 {
                            return Decision::Allowed(vec![Grant::Implicit]);
                        }
                        let host = r.http_host().unwrap_or(&r.target);
                        let Some((i, d)) = self.dest_by_host(a, host) else {
                            return refused(
                                "network.http_methods",
                                format!("{method} is not in http_methods and Host: {host} names no destination that takes it"),
                            );
                        };
                        let methods = if d.methods != 0 { d.methods } else { agent_methods };
                        if methods & bit == 0 {
                            return refused("network.http_methods", format!("{method} is not a method {host} takes"));
                        }
                        if !target.starts_with('/') {
                            return refused(
                                "network.paths",
                                "an absolute-form target overrides Host: at the server".into(),
                            );
                        }
                        if d.path_methods & bit != 0 && !path_under(&a.entries[i], target) {
                            return refused(
                                "network.paths",
                                format!("{method} {target} is under none of {host}'s paths"),
                            );
                        }
                        Decision::Allowed(vec![Grant::Allow(a.name.clone(), i)])
                    }
                }
            }
            "ipc.connect" => {
                let path = r.target.strip_prefix("unix:").unwrap_or(&r.target);
                if r.detail.contains("could not be read") {
                    return always("network.allow", "its address could not be read");
                }
                // A FIFO under `writable` is the agent's own (the kernel's FIFO check takes it);
                // any other is a message to whoever reads it, allowed only as a `unix:` entry.
                if r.detail.contains("a FIFO opened for writing") {
                    if let Some(g) = a.writable(path) {
                        return Decision::Allowed(vec![g]);
                    }
                }
                match a.entries.iter().position(|e| e.unix.iter().any(|(_, u)| u == path)) {
                    Some(i) => Decision::Allowed(vec![Grant::Allow(a.name.clone(), i)]),
                    None => Decision::Refused {
                        rule: "network.allow".into(),
                        why: format!("unix:{path} is in no allow entry"),
                    },
                }
            }
            "sys.io_uring" | "net.raw_socket" | "sys.mount" | "sys.namespace" | "self.tamper" => {
                let class = match r.kind.as_str() {
                    "sys.io_uring" => "io_uring",
                    "net.raw_socket" => "raw_socket",
                    "sys.mount" => "mount",
                    "sys.namespace" => "namespaces",
                    _ if r.target == "bpf" => "bpf",
                    _ => return always(&r.rule, "tampering with the daemon"),
                };
                if a.policy.syscalls.allows(class) {
                    Decision::Allowed(vec![Grant::Syscalls(a.name.clone(), class.into())])
                } else {
                    Decision::Refused {
                        rule: "syscalls.allow".into(),
                        why: format!("the {class} family is not allowed"),
                    }
                }
            }
            "process.inject" | "sys.compat" => always(&r.rule, "refused to every agent"),
            _ => Decision::NotJudged,
        }
    }

    /// The `allow` entry whose rule decides (proto, address, port), as `NET_ALLOW` would: the
    /// longest network with the exact port, then with any port; host names at their resolved
    /// addresses (/128).
    fn dest(&self, a: &AgentTables, p: u8, sa: SocketAddr) -> Option<(usize, DestRule)> {
        let (ip, _) = ipv6_form(sa.ip(), if sa.is_ipv4() { 32 } else { 128 });
        for want_port in [Some(sa.port()), None] {
            let mut best: Option<(u8, usize, DestRule)> = None;
            for (i, e) in a.entries.iter().enumerate() {
                let mut consider = |prefix_len: u8, dest: DestRule| {
                    if best.is_none_or(|(l, _, _)| prefix_len >= l) {
                        best = Some((prefix_len, i, dest));
                    }
                };
                for n in &e.net {
                    if n.proto == p && n.port == want_port && in_net(ip, n.addr, n.prefix_len) {
                        consider(n.prefix_len, n.dest);
                    }
                }
                for h in &e.hosts {
                    // (the daemon loads no resolved address a literal rule already covers: that
                    // rule decides)
                    let resolved = super::NetRule {
                        agent: h.agent,
                        addr: ip,
                        prefix_len: 128,
                        port: h.port,
                        proto: h.proto,
                        dest: h.dest,
                    };
                    let covered = a.whole.net.iter().any(|n| crate::bpf::apply::covers(n, &resolved));
                    if h.proto == p && h.port == want_port && !covered {
                        let addrs = self.resolved.get(&h.host).map(Vec::as_slice).unwrap_or_default();
                        if addrs.iter().any(|x| ipv6_form(*x, if x.is_ipv4() { 32 } else { 128 }).0 == ip) {
                            consider(128, h.dest);
                        }
                    }
                }
            }
            if let Some((_, i, d)) = best {
                return Some((i, d));
            }
        }
        None
    }

    /// The `allow` entry a TLS write's `Host:` (`NAME[:PORT]`) names, as `judge_by_host` finds it
    /// in `HOST_DEST`: the name lower case without spaces; the header's port, or 443, then the
    /// name's any-port rule. The entries are the loader's own (`bpf::apply::host_dest_entries`);
    /// the first `allow` entry to claim a key has it, as there.
    fn dest_by_host(&self, a: &AgentTables, host: &str) -> Option<(usize, DestRule)> {
        let h: String = host.chars().filter(|c| *c != ' ' && *c != '\t').collect::<String>().to_ascii_lowercase();
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) if !n.starts_with('[') || n.ends_with(']') => match p.parse::<u32>() {
                Ok(p) => (n.to_string(), Some(p)),
                Err(_) => return None,
            },
            _ => (h.clone(), None),
        };
        let tables: Vec<Vec<(agent_monitor_common::HostKey, agent_monitor_common::HostDest)>> =
            a.entries.iter().map(|e| crate::bpf::apply::host_dest_entries(e, 0)).collect();
        for want in [port.unwrap_or(443), 0] {
            for (i, t) in tables.iter().enumerate() {
                let hit = t.iter().find(|(k, _)| {
                    let n = k.name.iter().position(|b| *b == 0).unwrap_or(k.name.len());
                    k.port == want && k.name[..n] == *name.as_bytes()
                });
                if let Some((_, d)) = hit {
                    return Some((i, d.dest));
                }
            }
        }
        None
    }

    /// The agents of the candidate, in no order.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// Every grant the candidate makes (to list those never used).
    pub fn grants(&self) -> Vec<(Grant, String)> {
        let mut out = Vec::new();
        for a in self.agents.values() {
            for w in &a.policy.files.writable {
                out.push((Grant::Writable(a.name.clone(), w.clone()), format!("writable {w:?}")));
            }
            for (i, e) in a.policy.network.allow.iter().enumerate() {
                out.push((Grant::Allow(a.name.clone(), i), format!("allow {e}")));
            }
            for c in &a.policy.syscalls.allow {
                out.push((Grant::Syscalls(a.name.clone(), c.clone()), format!("syscalls {c:?}")));
            }
        }
        out.sort();
        out
    }
}

impl AgentTables {
    /// The `writable` entry covering `path` (the longest), or `Implicit` for the devices every
    /// agent may write.
    fn writable(&self, path: &str) -> Option<Grant> {
        let under = |pre: &str| {
            let p = pre.trim_end_matches('/');
            path == p || path.starts_with(&format!("{p}/")) || p.is_empty()
        };
        let best = self.whole.writable.iter().map(|(_, w)| w).filter(|w| under(w)).max_by_key(|w| w.len())?;
        if self.policy.files.writable.contains(best) {
            Some(Grant::Writable(self.name.clone(), best.clone()))
        } else {
            Some(Grant::Implicit)
        }
    }
}

/// Is a request target under one of the entry's `paths` (`PATH_ALLOW`: a plain byte prefix of
/// its first 64 bytes), and free of what `path_step` refuses (`..` or `%2` before the query; a
/// control byte, `\` or `#` anywhere)?
fn path_under(entry: &CompiledPolicy, target: &str) -> bool {
    let b = target.as_bytes();
    let query = b.iter().position(|c| *c == b'?').unwrap_or(b.len());
    if b.iter().any(|c| *c < 0x21 || *c == 0x7f || *c == b'\\' || *c == b'#')
        || b[..query].windows(2).any(|w| w == b".." || w == b"%2")
    {
        return false;
    }
    let scan = agent_monitor_common::HTTP_PATH_SCAN;
    let kept = &b[..b.len().min(scan)];
    entry.paths.iter().any(|(_, pre)| !pre.is_empty() && pre.len() <= scan && kept.starts_with(pre.as_bytes()))
}

/// Kinds a policy decides.
fn judged_kind(kind: &str) -> bool {
    kind.starts_with("file.")
        || kind.starts_with("net.")
        || kind.starts_with("sys.")
        || matches!(kind, "ipc.connect" | "self.tamper" | "process.inject")
}

/// `a.b.c.d:PORT` or `[v6]:PORT`.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn in_net(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
    u128::from(ip) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(toml: &str) -> Judge {
        let p = super::super::parse("cand.toml", toml).unwrap();
        Judge::new(&p, &|h| if h == "api.example" { vec!["10.9.8.7".parse().unwrap()] } else { vec![] })
    }

    fn rec(kind: &str, target: &str, detail: &str) -> Recorded {
        Recorded {
            agent: "a".into(),
            kind: kind.into(),
            target: target.into(),
            detail: detail.into(),
            ..Default::default()
        }
    }

    const POLICY: &str = r#"
[[agent]]
name = "a"
[agent.match]
comm = ["a"]
[agent.files]
writable = ["/srv/work", "/tmp/a"]
[agent.network]
allow = ["127.0.0.1:8080", "10.0.0.0/8:443", { to = "10.1.0.0/16:443", methods = ["GET", "POST"], paths = ["/v1/messages"] }, { to = "api.example:443", methods = ["GET", "POST"] }, "unix:/run/x.sock", { to = "127.0.0.53:53", protocol = "udp" }]
"#;

    #[test]
    fn files_by_the_longest_writable_prefix_on_component_boundaries() {
        let j = judge(POLICY);
        let ok = |d: Decision| matches!(d, Decision::Allowed(_));
        assert!(ok(j.decide(&rec("file.write", "/srv/work/a/b", ""))));
        assert!(ok(j.decide(&rec("file.mkdir", "/srv/work", ""))));
        assert!(!ok(j.decide(&rec("file.write", "/srv/workshop/x", ""))), "not on a component boundary");
        assert_eq!(j.decide(&rec("file.write", "/dev/null", "")), Decision::Allowed(vec![Grant::Implicit]));
        assert!(j.decide(&rec("file.rename", "/srv/work/a", "/srv/work/a -> /etc/passwd")).refuses());
        // The source outside, the kernel naming the destination; names holding " -> " and "; ".
        assert!(j.decide(&rec("file.rename", "/srv/work/b", "/etc/x -> /srv/work/b")).refuses());
        let odd = rec(
            "file.rename",
            "/srv/work/q -> /etc/x/y",
            "/srv/work/q -> /etc/x/y -> /srv/work/r; the syscall completed before the kill (tracepoint layer)",
        );
        assert_eq!(odd.both_paths().unwrap(), ("/srv/work/q -> /etc/x/y".into(), "/srv/work/r".into()));
        let semi = rec("file.rename", "/srv/work/a", "/srv/work/a -> /srv/workx; y");
        assert_eq!(semi.both_paths().unwrap().1, "/srv/workx; y");
        assert!(j.decide(&semi).refuses());
        // A symbolic link in writable that leads out of it: the link is the write.
        let sym = rec("file.link", "/srv/work/l", &format!("/srv/work/l -> /etc/shadow; {SYMLINK_TEXT}"));
        assert!(!j.decide(&sym).refuses());
        let hard = rec("file.link", "/srv/work/l", "/etc/shadow -> /srv/work/l");
        assert!(j.decide(&hard).refuses());
        let hard = Recorded { verdict: "violation".into(), ..rec("file.write", "/srv/work/h", OBJECT_REFUSALS[3]) };
        assert!(matches!(j.decide(&hard), Decision::Always { .. }));
    }

    #[test]
    fn addresses_by_the_longest_network_exact_port_first() {
        let j = judge(POLICY);
        let grant = |d: Decision| match d {
            Decision::Allowed(g) => g,
            d => panic!("{d:?}"),
        };
        assert_eq!(grant(j.decide(&rec("net.connect", "10.2.3.4:443", ""))), [Grant::Allow("a".into(), 1)]);
        assert_eq!(grant(j.decide(&rec("net.connect", "10.1.3.4:443", ""))), [Grant::Allow("a".into(), 2)]);
        // (10.9.8.7 is api.example's address, covered by 10.0.0.0/8:443: the daemon loads no
        // host address a literal rule covers, so that rule decides)
        assert_eq!(grant(j.decide(&rec("net.connect", "10.9.8.7:443", ""))), [Grant::Allow("a".into(), 1)]);
        assert!(j.decide(&rec("net.connect", "10.2.3.4:80", "")).refuses());
        assert!(j.decide(&rec("net.send", "127.0.0.1:8080", "datagram")).refuses(), "a TCP grant is no UDP grant");
        assert!(!j.decide(&rec("net.send", "127.0.0.53:53", "datagram")).refuses());
        assert!(!j.decide(&rec("ipc.connect", "unix:/run/x.sock", "")).refuses());
        assert!(j.decide(&rec("ipc.connect", "unix:/run/y.sock", "")).refuses());
    }

    #[test]
    fn http_by_the_destination_rule_then_its_paths() {
        let j = judge(POLICY);
        let http = |t: &str, line: &str| j.decide(&rec("net.http_write", t, line));
        assert!(!http("127.0.0.1:8080", "GET / HTTP/1.1; Host: x").refuses());
        assert!(http("127.0.0.1:8080", "POST / HTTP/1.1; Host: x").refuses());
        assert!(!http("10.1.0.9:443", "POST /v1/messages?beta=1 HTTP/1.1").refuses());
        assert!(
            matches!(http("10.1.0.9:443", "POST /v2/x HTTP/1.1"), Decision::Refused { rule, .. } if rule == "network.paths")
        );
        // Inside TLS: the Host: names the destination.
        assert!(!http("api.example", "POST /anything HTTP/1.1; Host: api.example").refuses());
        assert!(http("tls", "POST /anything HTTP/1.1; Host: forum.example").refuses());
        assert_eq!(http("127.0.0.1:8080", "abc"), Decision::NotJudged, "a body is not a request start");
        // Paths as the kernel scans them: `..` or `%2` before the query, a control byte, `\`.
        assert!(http("10.1.0.9:443", "POST /v1/messages/../admin HTTP/1.1").refuses());
        assert!(http("10.1.0.9:443", "POST /v1/messages%2f..%2fadmin HTTP/1.1").refuses());
        assert!(!http("10.1.0.9:443", "POST /v1/messages?next=../x HTTP/1.1").refuses());
        // Inside TLS the agent's methods come first; Host: is consulted only beyond them, and
        // an absolute-form target is refused there.
        assert!(!http("forum.example", "GET /x HTTP/1.1").refuses());
        // A TLS write whose Host: is an address is still a TLS write (the agent's methods first,
        // then HOST_DEST's address names).
        let tls = |t: &str, line: &str| j.decide(&rec("net.http_write", t, &format!("{line}; {TLS_PLAINTEXT_TEXT}")));
        assert!(!tls("127.0.0.1:8080", "GET /x HTTP/1.1").refuses());
        assert!(tls("127.0.0.1:8080", "POST /x HTTP/1.1").refuses());
        assert!(http("api.example", "POST https://api.example/x HTTP/1.1").refuses());
        assert!(!http("API.example:443", "POST /x HTTP/1.1").refuses(), "the kernel folds the name's case");
        assert!(http("api.example:8443", "POST /x HTTP/1.1").refuses(), "another port");
        // A path ending in ';' is still a request line; a forged Host: in the line is not the header.
        let r = rec("net.http_write", "127.0.0.1:8080", "POST /x; HTTP/1.1; Host: 127.0.0.1:8080");
        assert_eq!(r.request_line(), Some(("POST", "/x;")));
        let forged = rec("net.http_write", "1.2.3.4:80", "GET /x HTTP/1.1; Host: evil; Host: real");
        assert_eq!(forged.http_host(), Some("real"));
        assert!(j.decide(&rec("file.write", "/x", "")).refuses());
        assert_eq!(j.decide(&Recorded { agent: "other".into(), ..rec("file.write", "/x", "") }), Decision::NoAgent);
    }
}
