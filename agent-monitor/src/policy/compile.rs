//! `Policy -> CompiledPolicy`: a pure function from the validated model to the flat tables the
//! daemon loads into the kernel maps (selector maps keyed by comm, exe, uid and cgroup; writable
//! prefixes per agent; per-agent flags). Applying the tables to maps is a separate, small step in
//! the daemon, so this one is golden-tested without root.
//!
//! Agent ids are positions: the agent at index `i` of `Policy::agents` has id `i + 1`; id 0 is
//! "not an agent". The order of every table is the order of the policy file (agents, then the
//! values within an agent), with repeats dropped, so the same policy always compiles to the same
//! tables.
//!
//! Network `allow` entries are split three ways: addresses and networks go to [`NetRule`]s (all in
//! IPv6 form, for one LPM trie keyed on IPv6), DNS names to [`HostRule`]s (the daemon resolves
//! them and keeps the resulting addresses fresh; `localhost` is a name like any other, nothing is
//! implicit), and Unix socket paths to `unix`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use agent_monitor_common::{dest_flags, net_origin, proto, DestRule};

use super::model::{Action, Allow, AllowEntry, Policy, Protocol, MAX_COMM_LEN};

/// Character devices and pseudo-files every agent may write: writing them changes no state outside the process's terminal.
pub const IMPLICIT_WRITABLE: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts", "/dev/ptmx", "/dev/random", "/dev/urandom"];

/// The tables compiled from a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Index i has id = i as u32 + 1 (id 0 means "not an agent").
    pub agents: Vec<CompiledAgent>,
    /// NUL-padded comm -> agent id.
    pub comm: Vec<([u8; 16], u32)>,
    /// Normalised absolute executable path -> agent id.
    pub exe: Vec<(String, u32)>,
    /// uid -> agent id.
    pub uid: Vec<(u32, u32)>,
    /// TEXT of a `*TEXT*` command-line selector -> agent id.
    pub cmdline: Vec<(String, u32)>,
    /// cgroup path relative to the v2 root, written with a leading `/` (`/` is the root itself),
    /// -> agent id; the daemon resolves it to a cgroup id.
    pub cgroup: Vec<(String, u32)>,
    /// (agent id, normalised absolute prefix), including [`IMPLICIT_WRITABLE`] for every agent.
    /// A prefix covers itself and everything below it, on component boundaries.
    pub writable: Vec<(u32, String)>,
    /// 16 hex digits: FNV-1a 64 of the canonical form of the policy (`Policy`'s `Display`).
    pub hash: String,
    /// Address rules for the kernel's `NET_ALLOW` LPM trie, from the `Addr` entries of `allow`
    /// (and any `Host` entry whose host is an IP address literal).
    pub net: Vec<NetRule>,
    /// Host names the daemon must resolve and keep fresh; their addresses become rules like
    /// those of `net`.
    pub hosts: Vec<HostRule>,
    /// (agent id, normalised absolute socket path): the Unix sockets an agent may connect or
    /// send to.
    pub unix: Vec<(u32, String)>,
    /// (rule id, path prefix): where a destination's `paths` let its writes through
    /// (`DestRule::rule`).
    pub paths: Vec<(u32, String)>,
}

/// One address rule for the kernel's `NET_ALLOW` LPM trie.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetRule {
    pub agent: u32,
    /// IPv6 form: IPv4 networks become IPv4-mapped (`::ffff:a.b.c.d`) with prefix 96 + the v4
    /// prefix. No bits are set past `prefix_len` (the canonical network address).
    pub addr: Ipv6Addr,
    /// 0..=128, in the v6 form.
    pub prefix_len: u8,
    /// `None` is any port.
    pub port: Option<u16>,
    /// `agent_monitor_common::proto`.
    pub proto: u8,
    /// What the destination takes (its `origin` is set when the rule is written).
    pub dest: DestRule,
}

/// A host name the daemon must resolve and keep fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostRule {
    pub agent: u32,
    /// Lower case, without a trailing dot.
    pub host: String,
    /// `None` is any port.
    pub port: Option<u16>,
    pub proto: u8,
    pub dest: DestRule,
}

/// Bit `i` of [`CompiledAgent::http_allow`] is `HTTP_METHOD_BITS[i]`: the kernel's one list
/// (`agent_monitor_common::HTTP_METHOD_NAMES`). The kernel matches exactly these tokens as the
/// start of a request, so they are the only methods it can allow or deny.
pub const HTTP_METHOD_BITS: [&str; 9] = agent_monitor_common::HTTP_METHOD_NAMES;

/// The `http_allow` bitmask of `methods` (see [`HTTP_METHOD_BITS`]).
///
/// A method the kernel does not know (`PROPFIND`, `M-SEARCH`: well-formed tokens the validator
/// accepts) maps to no bit. That is harmless either way: the kernel never matches an unknown
/// method as the start of a request, so a request using it is neither allowed nor denied by the
/// HTTP check; only the destination (`allow`) applies to it.
pub fn http_mask(methods: &[String]) -> u32 {
    methods.iter().filter_map(|m| HTTP_METHOD_BITS.iter().position(|b| b == m)).fold(0, |mask, i| mask | (1 << i))
}

/// The methods of an `http_allow` mask, in bit order.
pub fn http_methods_of(mask: u32) -> impl Iterator<Item = &'static str> {
    HTTP_METHOD_BITS.iter().enumerate().filter(move |(i, _)| mask & (1 << i) != 0).map(|(_, m)| *m)
}

/// The IPv6 form of a network, with the bits past the prefix cleared: an IPv4 network becomes
/// its IPv4-mapped form (`::ffff:a.b.c.d`) with prefix 96 + `prefix_len`; an IPv6 network,
/// including one already written in mapped form, keeps its prefix. A prefix longer than the
/// address (possible only in a programmatic, unvalidated policy) is taken as the full length.
pub fn ipv6_form(addr: IpAddr, prefix_len: u8) -> (Ipv6Addr, u8) {
    let (v6, len) = match addr {
        IpAddr::V4(a) => (a.to_ipv6_mapped(), 96 + prefix_len.min(32)),
        IpAddr::V6(a) => (a, prefix_len.min(128)),
    };
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    (Ipv6Addr::from(u128::from(v6) & mask), len)
}

/// One agent's identity and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAgent {
    pub id: u32,
    pub name: String,
    pub action: Action,
    pub audit: bool,
    pub allow_io_uring: bool,
    pub allow_raw_socket: bool,
    pub allow_bpf: bool,
    pub allow_mount: bool,
    pub allow_namespaces: bool,
    /// The HTTP methods allowed on an allowed connection, as a bitmask (see
    /// [`HTTP_METHOD_BITS`] and [`http_mask`]).
    pub http_allow: u32,
}

impl CompiledPolicy {
    /// The agent with id `id` (1-based), if any.
    #[cfg(test)]
    pub fn agent(&self, id: u32) -> Option<&CompiledAgent> {
        self.agents.iter().find(|a| a.id == id)
    }

    /// Agent names indexed by `id - 1` ("" where no agent has that id).
    pub fn names_by_id(&self) -> Vec<String> {
        let max = self.agents.iter().map(|a| a.id).max().unwrap_or(0) as usize;
        let mut v = vec![String::new(); max];
        for a in &self.agents {
            v[a.id as usize - 1] = a.name.clone();
        }
        v
    }

    /// Keep the ids of agents that `previous` had (by name): running agent processes carry their
    /// agent's id in the kernel, so a reload that reorders or removes profiles must not hand
    /// that id to another agent. New agents get ids no previous agent had, while any are free.
    pub fn with_stable_ids(mut self, previous: &CompiledPolicy) -> CompiledPolicy {
        use std::collections::HashMap;
        let mut map: HashMap<u32, u32> = HashMap::new();
        let mut taken: HashSet<u32> = HashSet::new();
        for a in &self.agents {
            if let Some(old) = previous.agent_id(&a.name) {
                map.insert(a.id, old);
                taken.insert(old);
            }
        }
        let retired: HashSet<u32> = previous.agents.iter().map(|a| a.id).collect();
        for a in &self.agents {
            if map.contains_key(&a.id) {
                continue;
            }
            let fresh = (1..=MAX_AGENT_ID).find(|id| !taken.contains(id) && !retired.contains(id));
            let id = fresh.or_else(|| (1..=MAX_AGENT_ID).find(|id| !taken.contains(id))).unwrap_or(a.id);
            map.insert(a.id, id);
            taken.insert(id);
        }
        let m = |id: &mut u32| *id = map.get(id).copied().unwrap_or(*id);
        for a in &mut self.agents {
            m(&mut a.id);
        }
        self.comm.iter_mut().for_each(|(_, id)| m(id));
        self.exe.iter_mut().for_each(|(_, id)| m(id));
        self.uid.iter_mut().for_each(|(_, id)| m(id));
        self.cmdline.iter_mut().for_each(|(_, id)| m(id));
        self.cgroup.iter_mut().for_each(|(_, id)| m(id));
        self.writable.iter_mut().for_each(|(id, _)| m(id));
        self.unix.iter_mut().for_each(|(id, _)| m(id));
        self.net.iter_mut().for_each(|r| m(&mut r.agent));
        self.hosts.iter_mut().for_each(|r| m(&mut r.agent));
        self
    }

    /// The id of the agent named `name`, if any.
    pub fn agent_id(&self, name: &str) -> Option<u32> {
        self.agents.iter().find(|a| a.name == name).map(|a| a.id)
    }
}

/// The largest agent id (the kernel's AGENTS array has 256 slots; 0 is "not an agent").
pub const MAX_AGENT_ID: u32 = 255;

pub fn compile(p: &Policy) -> CompiledPolicy {
    let mut out = CompiledPolicy { hash: policy_hash(p), ..CompiledPolicy::default() };
    for (i, a) in p.agents.iter().enumerate() {
        let id = i as u32 + 1;
        out.agents.push(CompiledAgent {
            id,
            name: a.name.clone(),
            action: a.action,
            audit: a.audit,
            allow_io_uring: a.syscalls.allows("io_uring"),
            allow_raw_socket: a.syscalls.allows("raw_socket"),
            allow_bpf: a.syscalls.allows("bpf"),
            allow_mount: a.syscalls.allows("mount"),
            allow_namespaces: a.syscalls.allows("namespaces"),
            http_allow: http_mask(&a.network.http_methods),
        });
        out.comm.extend(unique(&a.selector.comm).map(|c| (comm_key(c), id)));
        out.exe.extend(unique(&a.selector.exe).map(|e| (e.clone(), id)));
        out.uid.extend(unique(&a.selector.uid).map(|u| (*u, id)));
        out.cmdline.extend(unique(&a.selector.cmdline).map(|t| (t.clone(), id)));
        out.cgroup.extend(unique(&a.selector.cgroup).map(|c| (c.clone(), id)));
        let implicit: Vec<String> = IMPLICIT_WRITABLE.iter().map(|s| s.to_string()).collect();
        let all: Vec<String> = a.files.writable.iter().cloned().chain(implicit).collect();
        out.writable.extend(unique(&all).map(|w| (id, w.clone())));
        compile_network(id, http_mask(&a.network.http_methods), &a.network.allow, &mut out);
    }
    out
}

/// Split one agent's `allow` entries into `net`, `hosts` and `unix`, each in policy order with
/// repeats dropped (after normalisation: `10.0.0.0/8:443` and `[::ffff:10.0.0.0/104]:443` are
/// the same rule).
fn compile_network(id: u32, agent_methods: u32, allow: &[Allow], out: &mut CompiledPolicy) {
    let mut net = Vec::new();
    let mut hosts = Vec::new();
    let mut unix = Vec::new();
    for entry in allow {
        let dest = dest_rule(entry, agent_methods, out);
        let protos: &[u8] = match entry.protocol {
            Protocol::Tcp => &[proto::TCP],
            Protocol::Udp => &[proto::UDP],
            Protocol::Any => &[proto::TCP, proto::UDP],
        };
        for &proto in protos {
            match &entry.dest {
                AllowEntry::Unix(path) => unix.push((id, path.clone())),
                AllowEntry::Addr { net: n, port } => {
                    let (addr, prefix_len) = ipv6_form(n.addr, n.prefix_len);
                    net.push(NetRule { agent: id, addr, prefix_len, port: *port, proto, dest });
                }
                AllowEntry::Host { host, port } => {
                    // The validator sends address literals to `Addr`; a programmatic policy may not.
                    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                    match literal.parse::<IpAddr>() {
                        Ok(ip) => {
                            let (addr, prefix_len) = ipv6_form(ip, if ip.is_ipv4() { 32 } else { 128 });
                            net.push(NetRule { agent: id, addr, prefix_len, port: *port, proto, dest });
                        }
                        Err(_) => hosts.push(HostRule {
                            agent: id,
                            host: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
                            port: *port,
                            proto,
                            dest,
                        }),
                    }
                }
            }
        }
    }
    out.net.extend(unique(&net).cloned());
    out.hosts.extend(unique(&hosts).cloned());
    out.unix.extend(unique(&unix).cloned());
}

/// What one `allow` entry takes: its methods (0: the agent's), which of them only under its
/// `paths` (a rule id and its `paths` entries), and whether opaque TLS is accepted.
fn dest_rule(entry: &Allow, agent_methods: u32, out: &mut CompiledPolicy) -> DestRule {
    let methods = entry.methods.as_deref().map(http_mask).unwrap_or(0);
    let mut rule = DestRule {
        origin: net_origin::STATIC,
        flags: if entry.opaque_tls { dest_flags::OPAQUE_TLS } else { 0 },
        bind: 0,
        methods,
        path_methods: 0,
        rule: 0,
    };
    if !entry.paths.is_empty() && methods != 0 {
        let id = out.paths.iter().map(|(r, _)| *r).max().unwrap_or(0) + 1;
        rule.rule = id;
        rule.path_methods = methods & !agent_methods;
        out.paths.extend(entry.paths.iter().map(|p| (id, p.clone())));
    }
    rule
}

/// The comm map key: the name's first 15 bytes, NUL-padded to `TASK_COMM_LEN` (16), as the
/// kernel's `task->comm` holds it.
pub fn comm_key(comm: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = comm.as_bytes();
    let n = bytes.len().min(MAX_COMM_LEN);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// The policy's identity: FNV-1a 64 of its canonical form, as 16 hex digits. Comments, layout
/// and spellings that normalise to the same value (`/tmp/` and `/tmp`) do not change it; any
/// change the daemon would act on does, including one made at run time (an `exec` work
/// directory added to `writable`).
pub fn policy_hash(p: &Policy) -> String {
    format!("{:016x}", fnv1a64(p.to_string().as_bytes()))
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The values of `v` in order, each once.
fn unique<T: std::hash::Hash + Eq>(v: &[T]) -> impl Iterator<Item = &T> {
    let mut seen = HashSet::new();
    v.iter().filter(move |x| seen.insert(*x))
}

/// A stable, line-per-entry dump of the tables (for `check --verbose`, logs and golden tests).
impl fmt::Display for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hash {}", self.hash)?;
        for a in &self.agents {
            let methods: Vec<&str> = http_methods_of(a.http_allow).collect();
            let methods = if methods.is_empty() { "none".to_string() } else { methods.join("|") };
            writeln!(
                f,
                "agent {} {:?} action={} audit={} io_uring={} raw_socket={} bpf={} mount={} namespaces={} http={}",
                a.id,
                a.name,
                a.action,
                a.audit,
                a.allow_io_uring,
                a.allow_raw_socket,
                a.allow_bpf,
                a.allow_mount,
                a.allow_namespaces,
                methods,
            )?;
        }
        for (key, id) in &self.comm {
            let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
            writeln!(f, "comm {:?} -> {id}", String::from_utf8_lossy(&key[..end]))?;
        }
        for (exe, id) in &self.exe {
            writeln!(f, "exe {exe:?} -> {id}")?;
        }
        for (uid, id) in &self.uid {
            writeln!(f, "uid {uid} -> {id}")?;
        }
        for (text, id) in &self.cmdline {
            writeln!(f, "cmdline *{text}* -> {id}")?;
        }
        for (cgroup, id) in &self.cgroup {
            writeln!(f, "cgroup {cgroup:?} -> {id}")?;
        }
        for (id, path) in &self.writable {
            writeln!(f, "writable {id} {path:?}")?;
        }
        fn port(p: Option<u16>) -> String {
            p.map_or_else(|| "*".to_string(), |p| p.to_string())
        }
        fn dest(d: &DestRule) -> String {
            let mut out = String::new();
            if d.methods != 0 {
                out.push_str(&format!(" methods {}", http_methods_of(d.methods).collect::<Vec<_>>().join("|")));
            }
            if d.rule != 0 {
                out.push_str(&format!(
                    " paths #{} for {}",
                    d.rule,
                    http_methods_of(d.path_methods).collect::<Vec<_>>().join("|")
                ));
            }
            if d.flags & dest_flags::OPAQUE_TLS != 0 {
                out.push_str(" opaque_tls");
            }
            out
        }
        let pname = |p: u8| if p == proto::UDP { "udp" } else { "tcp" };
        for r in &self.net {
            writeln!(
                f,
                "net {} {} {}/{} port {}{}",
                r.agent,
                pname(r.proto),
                r.addr,
                r.prefix_len,
                port(r.port),
                dest(&r.dest)
            )?;
        }
        for r in &self.hosts {
            writeln!(f, "host {} {} {:?} port {}{}", r.agent, pname(r.proto), r.host, port(r.port), dest(&r.dest))?;
        }
        for (id, path) in &self.unix {
            writeln!(f, "unix {id} {path:?}")?;
        }
        for (rule, path) in &self.paths {
            writeln!(f, "path #{rule} {path:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod stable_id_tests {
    use super::*;

    fn pol(text: &str) -> CompiledPolicy {
        compile(&crate::policy::parse("t", text).unwrap())
    }

    const AB: &str = "[[agent]]\nname = \"a\"\nmatch.comm = [\"a\"]\n[[agent]]\nname = \"b\"\nmatch.comm = [\"b\"]\nfiles.writable = [\"/b\"]\n";
    const BC: &str = "[[agent]]\nname = \"b\"\nmatch.comm = [\"b\"]\nfiles.writable = [\"/b\"]\n[[agent]]\nname = \"c\"\nmatch.comm = [\"c\"]\n";

    #[test]
    fn a_reload_keeps_ids_and_never_reuses_a_removed_agents_id() {
        let old = pol(AB);
        assert_eq!((old.agent_id("a"), old.agent_id("b")), (Some(1), Some(2)));
        let new = pol(BC).with_stable_ids(&old);
        assert_eq!(new.agent_id("b"), Some(2), "b keeps its id although it moved to the front");
        assert_eq!(new.agent_id("c"), Some(3), "c must not get a's old id 1: a's processes still carry it");
        assert!(new.comm.contains(&(comm_key("b"), 2)) && new.comm.contains(&(comm_key("c"), 3)));
        assert!(new.writable.contains(&(2, "/b".to_string())));
        assert_eq!(new.agent(2).unwrap().name, "b");
        assert_eq!(new.names_by_id(), ["", "b", "c"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{default_policy, parse, AgentPolicy, IpNet, DEFAULT_POLICY, KNOWN_HTTP_METHODS};
    use agent_monitor_common::http_method_bit;

    const TWO_AGENTS: &str = r#"
[daemon]
metrics_listen = "127.0.0.1:9750"

[[agent]]
name = "forum-analyst"
action = "kill"
[agent.match]
comm = ["forum-agent", "forum-agent"]
exe = ["/opt/forum-agent/bin/agent"]
cgroup = ["/agents.slice/forum-analyst.service"]
uid = [1500]
[agent.files]
writable = ["/var/lib/forum-analyst/", "/tmp", "/dev/null"]
[agent.network]
allow = ["forum.internal:443", "10.20.0.0/16:443", "127.0.0.53:53", "unix:/run/nscd/socket"]

[[agent]]
name = "builder"
action = "deny"
audit = true
[agent.match]
comm = ["make"]
uid = [1600, 1601]
[agent.network]
allow = ["[fd00::/8]:*", "localhost:*", "Forum.Internal:443", "10.20.0.0/16:443"]
http_methods = ["GET", "POST"]
[agent.syscalls]
allow = ["io_uring", "raw_socket", "bpf"]
"#;

    fn policy(text: &str) -> Policy {
        parse("t.toml", text).unwrap_or_else(|ds| panic!("{ds:?}"))
    }

    fn implicit(id: u32) -> Vec<(u32, String)> {
        IMPLICIT_WRITABLE.iter().map(|p| (id, p.to_string())).collect()
    }

    /// What a plain string entry takes.
    const PLAIN: DestRule =
        DestRule { origin: net_origin::STATIC, flags: 0, bind: 0, methods: 0, path_methods: 0, rule: 0 };

    fn rule(agent: u32, addr: &str, prefix_len: u8, port: Option<u16>) -> NetRule {
        NetRule { agent, addr: addr.parse().unwrap(), prefix_len, port, proto: proto::TCP, dest: PLAIN }
    }

    fn host(agent: u32, host: &str, port: Option<u16>) -> HostRule {
        HostRule { agent, host: host.into(), port, proto: proto::TCP, dest: PLAIN }
    }

    /// A one-agent policy allowing `allow` (parsed and validated like a file).
    fn network_policy(allow: &[&str]) -> Policy {
        let list: Vec<String> = allow.iter().map(|e| format!("{e:?}")).collect();
        policy(&format!(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.network]\nallow = [{}]\n",
            list.join(", ")
        ))
    }

    #[test]
    fn golden_tables() {
        let c = compile(&policy(TWO_AGENTS));
        assert_eq!(
            c.agents,
            [
                CompiledAgent {
                    id: 1,
                    name: "forum-analyst".into(),
                    action: Action::Kill,
                    audit: false,
                    allow_io_uring: false,
                    allow_raw_socket: false,
                    allow_bpf: false,
                    allow_mount: false,
                    allow_namespaces: false,
                    http_allow: 0b111,
                },
                CompiledAgent {
                    id: 2,
                    name: "builder".into(),
                    action: Action::Deny,
                    audit: true,
                    allow_io_uring: true,
                    allow_raw_socket: true,
                    allow_bpf: true,
                    allow_mount: false,
                    allow_namespaces: false,
                    http_allow: 0b1001,
                },
            ]
        );
        assert_eq!(c.comm, [(*b"forum-agent\0\0\0\0\0", 1), (*b"make\0\0\0\0\0\0\0\0\0\0\0\0", 2)]);
        assert_eq!(c.exe, [("/opt/forum-agent/bin/agent".to_string(), 1)]);
        assert_eq!(c.uid, [(1500, 1), (1600, 2), (1601, 2)]);
        assert_eq!(c.cgroup, [("/agents.slice/forum-analyst.service".to_string(), 1)]);
        // The policy's own paths first, then the implicit ones it does not already list.
        let mut writable = vec![(1, "/var/lib/forum-analyst".to_string()), (1, "/tmp".to_string())];
        writable.extend(implicit(1));
        writable.extend(implicit(2));
        assert_eq!(c.writable, writable);
        assert_eq!(
            c.net,
            [
                rule(1, "::ffff:10.20.0.0", 112, Some(443)),
                rule(1, "::ffff:127.0.0.53", 128, Some(53)),
                rule(2, "fd00::", 8, None),
                rule(2, "::ffff:10.20.0.0", 112, Some(443)),
            ]
        );
        assert_eq!(
            c.hosts,
            [host(1, "forum.internal", Some(443)), host(2, "localhost", None), host(2, "forum.internal", Some(443))]
        );
        assert_eq!(c.unix, [(1, "/run/nscd/socket".to_string())]);
        assert_eq!(c.agent(2).unwrap().name, "builder");
        assert_eq!(c.agent(0), None);
        assert_eq!(c.agent(3), None);
        assert_eq!(c.agent_id("forum-analyst"), Some(1));
        assert_eq!(c.agent_id("nobody"), None);
    }

    #[test]
    fn golden_dump() {
        let c = compile(&policy(TWO_AGENTS));
        let expected = format!(
            "hash {}\n\
             agent 1 \"forum-analyst\" action=kill audit=false io_uring=false raw_socket=false bpf=false \
             mount=false namespaces=false http=GET|HEAD|OPTIONS\n\
             agent 2 \"builder\" action=deny audit=true io_uring=true raw_socket=true bpf=true \
             mount=false namespaces=false http=GET|POST\n\
             comm \"forum-agent\" -> 1\n\
             comm \"make\" -> 2\n\
             exe \"/opt/forum-agent/bin/agent\" -> 1\n\
             uid 1500 -> 1\n\
             uid 1600 -> 2\n\
             uid 1601 -> 2\n\
             cgroup \"/agents.slice/forum-analyst.service\" -> 1\n\
             writable 1 \"/var/lib/forum-analyst\"\n\
             writable 1 \"/tmp\"\n\
             writable 1 \"/dev/null\"\n\
             writable 1 \"/dev/zero\"\n\
             writable 1 \"/dev/full\"\n\
             writable 1 \"/dev/tty\"\n\
             writable 1 \"/dev/pts\"\n\
             writable 1 \"/dev/ptmx\"\n\
             writable 1 \"/dev/random\"\n\
             writable 1 \"/dev/urandom\"\n\
             writable 2 \"/dev/null\"\n\
             writable 2 \"/dev/zero\"\n\
             writable 2 \"/dev/full\"\n\
             writable 2 \"/dev/tty\"\n\
             writable 2 \"/dev/pts\"\n\
             writable 2 \"/dev/ptmx\"\n\
             writable 2 \"/dev/random\"\n\
             writable 2 \"/dev/urandom\"\n\
             net 1 tcp ::ffff:10.20.0.0/112 port 443\n\
             net 1 tcp ::ffff:127.0.0.53/128 port 53\n\
             net 2 tcp fd00::/8 port *\n\
             net 2 tcp ::ffff:10.20.0.0/112 port 443\n\
             host 1 tcp \"forum.internal\" port 443\n\
             host 2 tcp \"localhost\" port *\n\
             host 2 tcp \"forum.internal\" port 443\n\
             unix 1 \"/run/nscd/socket\"\n",
            c.hash
        );
        assert_eq!(c.to_string(), expected);
    }

    #[test]
    fn golden_default_policy() {
        let c = compile(&default_policy());
        let names: Vec<&str> = c.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["claude", "codex", "gemini", "agent-cli"]);
        for a in &c.agents {
            assert_eq!(a.action, Action::Alert, "{}", a.name);
            assert!(!a.allow_io_uring && !a.allow_raw_socket && !a.allow_bpf, "{}", a.name);
            assert!(!a.allow_mount && !a.allow_namespaces, "{}", a.name);
            // Read-only methods everywhere; POST only where a destination lists it.
            assert_eq!(a.http_allow, 0b111, "{}", a.name);
        }
        let comms: Vec<([u8; 16], u32)> = c.comm.clone();
        assert_eq!(
            comms,
            [
                (comm_key("claude"), 1),
                (comm_key("claude.exe"), 1),
                (comm_key("codex"), 2),
                (comm_key("gemini"), 3),
                (comm_key("aider"), 4),
                (comm_key("goose"), 4),
                (comm_key("opencode"), 4),
                (comm_key("opencode.exe"), 4),
                (comm_key("copilot"), 4),
                (comm_key("qwen"), 4),
            ]
        );
        let mut writable = Vec::new();
        for id in 1..=4 {
            writable.extend([(id, "/tmp".to_string()), (id, "/var/tmp".to_string())]);
            writable.extend(implicit(id));
        }
        assert_eq!(c.writable, writable);
        assert!(c.exe.is_empty() && c.uid.is_empty() && c.cgroup.is_empty() && c.unix.is_empty());
        // Every agent: DNS to the stub resolver over UDP or TCP, and 443 anywhere (read-only).
        for id in 1..=4 {
            let mine: Vec<&NetRule> = c.net.iter().filter(|r| r.agent == id).collect();
            let dns: Vec<(Ipv6Addr, u8, u8)> =
                mine.iter().filter(|r| r.port == Some(53)).map(|r| (r.addr, r.prefix_len, r.proto)).collect();
            let stub: Ipv6Addr = "::ffff:127.0.0.53".parse().unwrap();
            assert_eq!(dns, [(stub, 128, proto::TCP), (stub, 128, proto::UDP)]);
            assert!(mine.iter().any(|r| r.prefix_len == 96 && r.port == Some(443) && r.dest.rule == 0));
            assert!(mine.iter().any(|r| r.prefix_len == 0 && r.port == Some(443) && r.dest.rule == 0));
        }
        // The model APIs: POST under their paths only; opaque TLS where the agent's own TLS
        // stack cannot be read (Claude Code's Bun, Codex's rustls).
        let api = |agent: u32, host: &str| {
            c.hosts.iter().find(|h| h.agent == agent && h.host == host).unwrap_or_else(|| panic!("{host}"))
        };
        let post = 1 << http_method_bit("POST").unwrap();
        for (agent, host, opaque) in [
            (1, "api.anthropic.com", true),
            (2, "api.openai.com", true),
            (2, "chatgpt.com", true),
            (3, "generativelanguage.googleapis.com", false),
            (4, "api.githubcopilot.com", false),
        ] {
            let h = api(agent, host);
            assert_eq!(h.port, Some(443), "{host}");
            assert_eq!(h.dest.flags & dest_flags::OPAQUE_TLS != 0, opaque, "{host}");
            assert_eq!(h.dest.path_methods, post, "{host}");
            assert!(c.paths.iter().any(|(rule, _)| *rule == h.dest.rule), "{host}");
        }
        assert!(c.paths.contains(&(api(1, "api.anthropic.com").dest.rule, "/v1/messages".to_string())));
        assert_eq!(c.hash.len(), 16);
        assert!(c.hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn empty_policy_compiles_to_empty_tables() {
        let c = compile(&Policy::default());
        assert_eq!(c, CompiledPolicy { hash: c.hash.clone(), ..CompiledPolicy::default() });
    }

    #[test]
    fn comm_keys_are_nul_padded_and_truncated_like_the_kernel() {
        assert_eq!(&comm_key("claude"), b"claude\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&comm_key("123456789012345"), b"123456789012345\0");
        // A programmatic policy is not validated: still the kernel's 15 bytes and a NUL.
        assert_eq!(&comm_key("1234567890123456789"), b"123456789012345\0");
    }

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn hash_is_the_policy_not_the_text() {
        let base = policy(TWO_AGENTS);
        let h = compile(&base).hash;
        // Comments, layout and normalisable spellings do not change it.
        let respelled = TWO_AGENTS
            .replace("[daemon]", "# the daemon\n[daemon]  # settings")
            .replace("\"/tmp\"", "\"//tmp/\"")
            .replace("uid = [1600, 1601]", "uid = [\n  1600,\n  1601,\n]");
        assert_ne!(respelled, TWO_AGENTS);
        assert_eq!(compile(&policy(&respelled)).hash, h);
        // Any change the daemon would act on does.
        let changed = TWO_AGENTS.replace("action = \"kill\"", "action = \"deny\"");
        assert_ne!(compile(&policy(&changed)).hash, h);
        let mut with_workdir = base.clone();
        with_workdir.agents[1].files.writable.push("/srv/work".into());
        assert_ne!(compile(&with_workdir).hash, h);
        // And it is stable: the same policy, the same hash, every time.
        assert_eq!(compile(&base).hash, h);
    }

    #[test]
    fn canonical_form_parses_back_to_the_same_policy() {
        for text in [TWO_AGENTS, DEFAULT_POLICY] {
            let p = policy(text);
            let canonical = p.to_string();
            assert_eq!(policy(&canonical), p, "{canonical}");
        }
        // Strings that need escaping survive too.
        let mut p = Policy::default();
        let mut a = AgentPolicy::new("odd");
        a.selector.exe.push("/opt/a \"quoted\" \\ name\tx".into());
        p.agents.push(a);
        assert_eq!(policy(&p.to_string()), p);
    }

    #[test]
    fn ipv4_networks_become_mapped_with_host_bits_cleared() {
        assert_eq!(ipv6_form("10.0.0.0".parse().unwrap(), 8), ("::ffff:10.0.0.0".parse().unwrap(), 104));
        assert_eq!(ipv6_form("10.1.2.3".parse().unwrap(), 8), ("::ffff:10.0.0.0".parse().unwrap(), 104));
        assert_eq!(ipv6_form("192.168.31.7".parse().unwrap(), 20), ("::ffff:192.168.16.0".parse().unwrap(), 116));
        assert_eq!(ipv6_form("1.2.3.4".parse().unwrap(), 32), ("::ffff:1.2.3.4".parse().unwrap(), 128));
        // /0 is every IPv4 address, and no IPv6 one: the mapped /96.
        assert_eq!(ipv6_form("9.9.9.9".parse().unwrap(), 0), ("::ffff:0.0.0.0".parse().unwrap(), 96));
        // A programmatic, unvalidated network: bits past the prefix are cleared in the rule.
        let mut p = Policy::default();
        let mut a = AgentPolicy::new("a");
        a.network.allow.push(Allow::plain(AllowEntry::Addr {
            net: IpNet { addr: "172.16.99.1".parse().unwrap(), prefix_len: 12 },
            port: Some(443),
        }));
        p.agents.push(a);
        assert_eq!(compile(&p).net, [rule(1, "::ffff:172.16.0.0", 108, Some(443))]);
        // From a file.
        let c = compile(&network_policy(&["10.20.0.0/16:443", "203.0.113.9:8080", "0.0.0.0/0:*"]));
        assert_eq!(
            c.net,
            [
                rule(1, "::ffff:10.20.0.0", 112, Some(443)),
                rule(1, "::ffff:203.0.113.9", 128, Some(8080)),
                rule(1, "::ffff:0.0.0.0", 96, None),
            ]
        );
    }

    #[test]
    fn ipv6_networks_stay_including_mapped_ones() {
        assert_eq!(ipv6_form("fd00::".parse().unwrap(), 8), ("fd00::".parse().unwrap(), 8));
        assert_eq!(ipv6_form("fdab:cd::1".parse().unwrap(), 8), ("fd00::".parse().unwrap(), 8));
        assert_eq!(ipv6_form("2001:db8::1".parse().unwrap(), 33), ("2001:db8::".parse().unwrap(), 33));
        assert_eq!(ipv6_form("::".parse().unwrap(), 0), ("::".parse().unwrap(), 0));
        assert_eq!(ipv6_form("::ffff:1.2.3.4".parse().unwrap(), 128), ("::ffff:1.2.3.4".parse().unwrap(), 128));
        let c = compile(&network_policy(&[
            "[fd00::/8]:443",
            "[::1]:53",
            "[::/0]:*",
            "[::ffff:1.2.3.4]:443",
            "[::ffff:10.0.0.0/104]:80",
        ]));
        assert_eq!(
            c.net,
            [
                rule(1, "fd00::", 8, Some(443)),
                rule(1, "::1", 128, Some(53)),
                rule(1, "::", 0, None),
                rule(1, "::ffff:1.2.3.4", 128, Some(443)),
                rule(1, "::ffff:10.0.0.0", 104, Some(80)),
            ]
        );
        assert!(c.hosts.is_empty() && c.unix.is_empty());
    }

    #[test]
    fn star_is_any_port() {
        let c = compile(&network_policy(&["10.0.0.0/8:*", "[fd00::/8]:*", "example.com:*", "example.com:443"]));
        assert_eq!(c.net, [rule(1, "::ffff:10.0.0.0", 104, None), rule(1, "fd00::", 8, None)]);
        // Any port and one port are two rules.
        assert_eq!(c.hosts, [host(1, "example.com", None), host(1, "example.com", Some(443))]);
    }

    #[test]
    fn unix_sockets_and_hosts() {
        let c = compile(&network_policy(&[
            "unix:/run/nscd/socket",
            "API.Example.COM.:443",
            "unix://run//dbus/system_bus_socket",
            "localhost:8080",
        ]));
        assert_eq!(c.unix, [(1, "/run/nscd/socket".to_string()), (1, "/run/dbus/system_bus_socket".to_string())]);
        // localhost is resolved by the daemon like any other name: no implicit loopback rule.
        assert_eq!(c.hosts, [host(1, "api.example.com", Some(443)), host(1, "localhost", Some(8080))]);
        assert!(c.net.is_empty());
        // A programmatic Host that is an address literal goes to `net`; names are lower-cased.
        let mut p = Policy::default();
        let mut a = AgentPolicy::new("a");
        a.network.allow.extend(
            [
                AllowEntry::Host { host: "192.0.2.1".into(), port: Some(80) },
                AllowEntry::Host { host: "2001:db8::1".into(), port: None },
                AllowEntry::Host { host: "Mixed.Case".into(), port: Some(1) },
            ]
            .map(Allow::plain),
        );
        p.agents.push(a);
        let c = compile(&p);
        assert_eq!(c.net, [rule(1, "::ffff:192.0.2.1", 128, Some(80)), rule(1, "2001:db8::1", 128, None)]);
        assert_eq!(c.hosts, [host(1, "mixed.case", Some(1))]);
    }

    #[test]
    fn http_masks() {
        assert_eq!(HTTP_METHOD_BITS, KNOWN_HTTP_METHODS);
        let strings = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert_eq!(http_mask(&crate::policy::Network::default().http_methods), 0b111);
        assert_eq!(http_mask(&strings(&["GET", "HEAD", "OPTIONS"])), 0b111);
        assert_eq!(http_mask(&strings(&["GET", "POST"])), 0b1001);
        assert_eq!(http_mask(&strings(&["POST", "GET", "GET"])), 0b1001);
        assert_eq!(http_mask(&[]), 0);
        assert_eq!(http_mask(&strings(&HTTP_METHOD_BITS)), 0x1ff);
        // Methods the kernel does not know map to no bit.
        assert_eq!(http_mask(&strings(&["PROPFIND", "M-SEARCH"])), 0);
        assert_eq!(http_mask(&strings(&["PROPFIND", "DELETE"])), 1 << 6);
        assert_eq!(http_methods_of(0b1001).collect::<Vec<_>>(), ["GET", "POST"]);
        // Explicitly empty: no method is allowed.
        let p = policy("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.network]\nhttp_methods = []\n");
        assert_eq!(compile(&p).agents[0].http_allow, 0);
    }

    #[test]
    fn network_rules_are_deduped_per_agent_in_policy_order() {
        let text = r#"
[[agent]]
name = "a"
[agent.match]
comm = ["a"]
[agent.network]
allow = [
    "10.0.0.0/8:443", "example.com:443", "unix:/run/x.sock", "[fd00::/8]:*",
    "10.0.0.0/8:443", "Example.com:443", "unix://run/x.sock", "[fd00::/8]:*",
    "[::ffff:10.0.0.0/104]:443", "10.0.0.0/8:80",
]

[[agent]]
name = "b"
[agent.match]
comm = ["b"]
[agent.network]
allow = ["10.0.0.0/8:443", "example.com:443", "unix:/run/x.sock"]
"#;
        let c = compile(&policy(text));
        assert_eq!(
            c.net,
            [
                rule(1, "::ffff:10.0.0.0", 104, Some(443)),
                rule(1, "fd00::", 8, None),
                rule(1, "::ffff:10.0.0.0", 104, Some(80)),
                rule(2, "::ffff:10.0.0.0", 104, Some(443)),
            ]
        );
        assert_eq!(c.hosts, [host(1, "example.com", Some(443)), host(2, "example.com", Some(443))]);
        assert_eq!(c.unix, [(1, "/run/x.sock".to_string()), (2, "/run/x.sock".to_string())]);
    }
}
