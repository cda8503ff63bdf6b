//! A least-privilege profile from recorded events (`agent-monitor profile`).
//!
//! The events of a learning run (`audit = true`, usually under `alert`) say what an agent wrote,
//! where it connected, which HTTP methods and paths it used per destination, which Unix sockets
//! it reached and which syscall families it needed. The profile grants exactly that, a little
//! generalised:
//! - a file grants its directory; a directory whose name is per-run (`tmp.XXXXXX`, a long
//!   number, a random-looking token) grants its parent instead; entries under another entry go;
//!   `/`, `/etc`, `/root`, `/home` or a home directory as a whole is never granted for a file
//!   directly in it (only that file's own name is, and the line says so);
//! - a destination is its address and port, or the host name its HTTP `Host:` header gave;
//! - a destination that took writes (POST, PUT, ...) gets them in its own `methods`, with
//!   `paths` cut before the first per-run segment;
//! - every line carries its evidence (events, first and last seen) and anything broad or risky
//!   says so: writes to a destination, a private network, the cloud metadata address, a
//!   syscall family, a whole-directory grant at the top of the tree.
//!
//! The output is one `[[agent]]` table that `agent-monitor check` accepts.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use super::{model::toml_quote, replay::Recorded, IMPLICIT_WRITABLE};
use crate::events::decode::{TLS_INVISIBLE_TEXT, TLS_PLAINTEXT_TEXT};

/// What was seen of one grant.
#[derive(Debug, Default, Clone)]
struct Seen {
    events: usize,
    first: String,
    last: String,
}

impl Seen {
    fn add(&mut self, ts: &str) {
        self.events += 1;
        if self.first.is_empty() || ts < self.first.as_str() {
            self.first = ts.to_string();
        }
        if ts > self.last.as_str() {
            self.last = ts.to_string();
        }
    }

    fn merge(&mut self, o: &Seen) {
        self.events += o.events;
        for ts in [&o.first, &o.last] {
            if !ts.is_empty() {
                if self.first.is_empty() || ts < &self.first {
                    self.first = ts.clone();
                }
                if ts > &self.last {
                    self.last = ts.clone();
                }
            }
        }
    }

    fn comment(&self, noun: &str) -> String {
        let s = if self.events == 1 { "" } else { "s" };
        format!("{} {noun}{s}, first {}, last {}", self.events, self.first, self.last)
    }
}

/// One destination's traffic.
#[derive(Debug, Default)]
struct Dest {
    seen: Seen,
    tcp: bool,
    udp: bool,
    /// Methods used, with the paths they were used on.
    methods: BTreeMap<String, BTreeSet<String>>,
    /// Host names its requests named.
    hosts: BTreeSet<String>,
    /// TLS the daemon could not read went there.
    opaque: bool,
}

/// The profile of agent `agent` learned from `events`, as a TOML `[[agent]]` table with the
/// given action.
pub fn profile(agent: &str, action: &str, events: &[Recorded]) -> String {
    let mine: Vec<&Recorded> = events.iter().filter(|e| e.agent == agent).collect();
    let mut comms: BTreeMap<String, Seen> = BTreeMap::new();
    let mut dirs: BTreeMap<String, (Seen, Option<&'static str>)> = BTreeMap::new();
    let mut dests: BTreeMap<String, Dest> = BTreeMap::new();
    let mut tls_hosts: BTreeMap<String, Dest> = BTreeMap::new();
    let mut unix: BTreeMap<String, Seen> = BTreeMap::new();
    let mut syscalls: BTreeMap<&'static str, Seen> = BTreeMap::new();
    for e in &mine {
        match e.kind.as_str() {
            "process.exec" if e.detail.starts_with("new agent instance") => {
                comms.entry(e.comm.clone()).or_default().add(&e.ts)
            }
            k if k.starts_with("file.") => {
                let paths = match e.both_paths() {
                    Some((link, _)) if e.detail.contains(crate::events::decode::SYMLINK_TEXT) => vec![link],
                    Some((a, b)) => vec![a, b],
                    None => vec![e.target.clone()],
                };
                for path in paths {
                    let path = path.as_str();
                    if !path.starts_with('/') || implicit(path) {
                        continue;
                    }
                    let (dir, note) = grant_for(path);
                    let d = dirs.entry(dir).or_insert_with(|| (Seen::default(), note));
                    d.0.add(&e.ts);
                }
            }
            "net.connect" | "net.send" if super::replay::parse_addr(&e.target).is_some() => {
                let d = dests.entry(e.target.clone()).or_default();
                d.seen.add(&e.ts);
                d.udp |= e.kind == "net.send";
                d.tcp |= e.kind == "net.connect";
                d.opaque |= e.detail.contains(TLS_INVISIBLE_TEXT) || e.rule == "network.opaque_tls";
            }
            "net.http_write" => {
                let Some((m, p)) = e.request_line() else { continue };
                if !super::HTTP_METHOD_BITS.contains(&m) {
                    continue; // the kernel never takes it as a request start
                }
                let path = path_prefix(p);
                let host = e.http_host().map(str::to_string);
                // Read in a TLS library: the target is the request's `Host:` (an address and
                // port, or a name); in clear text, the connection's address.
                let tls = e.detail.contains(TLS_PLAINTEXT_TEXT);
                let d = if !tls && super::replay::parse_addr(&e.target).is_some() {
                    dests.entry(e.target.clone()).or_default()
                } else if tls && super::replay::parse_addr(&e.target).is_some() {
                    let d = dests.entry(e.target.clone()).or_default();
                    d.tcp = true;
                    d
                } else if tls && host_name(&e.target).is_some() {
                    let d = tls_hosts.entry(e.target.clone()).or_default();
                    d.seen.add(&e.ts);
                    d
                } else {
                    continue;
                };
                d.methods.entry(m.to_string()).or_default().insert(path);
                if let Some(h) = host.filter(|h| host_name(h).is_some()) {
                    d.hosts.insert(h);
                }
            }
            "ipc.connect" if e.target.starts_with("unix:/") => unix.entry(e.target.clone()).or_default().add(&e.ts),
            "sys.io_uring" => syscalls.entry("io_uring").or_default().add(&e.ts),
            "net.raw_socket" => syscalls.entry("raw_socket").or_default().add(&e.ts),
            "sys.mount" => syscalls.entry("mount").or_default().add(&e.ts),
            "sys.namespace" => syscalls.entry("namespaces").or_default().add(&e.ts),
            "self.tamper" if e.target == "bpf" => syscalls.entry("bpf").or_default().add(&e.ts),
            _ => {}
        }
    }
    // Entries under another entry go (their evidence joins it; a grant of one file's name is no
    // directory to join).
    let keys: Vec<String> = dirs.keys().cloned().collect();
    for k in &keys {
        let parent =
            keys.iter().find(|p| *p != k && dirs.get(*p).is_some_and(|d| d.1 != Some(FILE_ONLY)) && under(k, p));
        if let Some(parent) = parent {
            if let Some((seen, _)) = dirs.remove(k) {
                dirs.get_mut(parent).expect("checked").0.merge(&seen);
            }
        }
    }

    let mut out = String::new();
    let n = mine.len();
    let (first, last) = (
        mine.iter().map(|e| e.ts.as_str()).min().unwrap_or(""),
        mine.iter().map(|e| e.ts.as_str()).max().unwrap_or(""),
    );
    let _ = writeln!(out, "# The profile of agent {agent:?}, learned from {n} events recorded from {first} to {last}.");
    let _ = writeln!(out, "# Review every line, then check it (`agent-monitor policy test FILE --events LOG`) before");
    let _ = writeln!(out, "# switching to deny or kill.");
    let _ = writeln!(out, "[[agent]]");
    let _ = writeln!(out, "name = {}", toml_quote(agent));
    let _ = writeln!(out, "action = {}", toml_quote(action));
    let _ = writeln!(out, "[agent.match]");
    if comms.is_empty() {
        // No instance started in the window: the comm its events carry most.
        let mut count: BTreeMap<&str, Seen> = BTreeMap::new();
        for e in &mine {
            count.entry(e.comm.as_str()).or_default().add(&e.ts);
        }
        if let Some((c, s)) = count.into_iter().filter(|(c, _)| !c.is_empty()).max_by_key(|(_, s)| s.events) {
            comms.insert(c.to_string(), s);
        }
    }
    let _ = writeln!(out, "comm = [");
    for (c, s) in &comms {
        let common = ["node", "python", "python3", "bash", "sh", "dash", "zsh", "deno", "bun", "ruby", "perl", "java"];
        let risk = if common.contains(&c.as_str()) || c.starts_with("python3.") {
            "; risky: every process of this name is this agent (prefer exe, cmdline or cgroup)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {},  # {}{risk}", toml_quote(c), s.comment("instance start"));
    }
    let _ = writeln!(out, "]");
    let _ = writeln!(out, "[agent.files]");
    let _ = writeln!(out, "writable = [");
    for (d, (s, note)) in &dirs {
        let risk = note.map(|n| format!("; {n}")).unwrap_or_default();
        let _ = writeln!(out, "  {},  # {}{risk}", toml_quote(d), s.comment("event"));
    }
    let _ = writeln!(out, "]");
    let _ = writeln!(out, "[agent.network]");
    let _ = writeln!(out, "allow = [");
    for (target, d) in &dests {
        let sa: SocketAddr = target.parse().expect("checked above");
        // The address: a clear-text request's `Host:` is whatever the agent wrote, so it names
        // the destination only in the comment.
        let to = target.clone();
        let mut risks = Vec::new();
        if !d.hosts.is_empty() {
            risks.push(format!("its requests said Host: {}", d.hosts.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        if let Some(r) = address_risk(sa.ip()) {
            risks.insert(0, r.to_string());
        }
        let line = allow_line(&to, d, &mut risks);
        let _ = writeln!(out, "  {line},  # {}{}", d.seen.comment("event"), risk_text(&risks));
    }
    for (host, d) in &tls_hosts {
        let Some(name) = host_name(host) else { continue };
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(443);
        let mut risks = Vec::new();
        let line = allow_line(&format!("{name}:{port}"), d, &mut risks);
        let _ = writeln!(out, "  {line},  # inside TLS: {}{}", d.seen.comment("request"), risk_text(&risks));
    }
    for (u, s) in &unix {
        let _ = writeln!(out, "  {},  # {}; risky: a message to a local service", toml_quote(u), s.comment("connect"));
    }
    let _ = writeln!(out, "]");
    if !syscalls.is_empty() {
        let _ = writeln!(out, "[agent.syscalls]");
        let _ = writeln!(out, "allow = [");
        for (c, s) in &syscalls {
            let _ = writeln!(
                out,
                "  {},  # {}; risky: a family the boundary refuses by default",
                toml_quote(c),
                s.comment("event")
            );
        }
        let _ = writeln!(out, "]");
    }
    out
}

/// The `allow` line of a destination: the plain string where it only read, else a table with
/// its methods and paths.
fn allow_line(to: &str, d: &Dest, risks: &mut Vec<String>) -> String {
    let reads: BTreeSet<&str> = super::DEFAULT_HTTP_METHODS.iter().copied().collect();
    let writes: Vec<&String> = d.methods.keys().filter(|m| !reads.contains(m.as_str())).collect();
    let proto = match (d.tcp, d.udp) {
        (true, true) => ", protocol = \"any\"",
        (false, true) => ", protocol = \"udp\"",
        _ => "",
    };
    let opaque = if d.opaque { ", opaque_tls = true" } else { "" };
    if d.opaque {
        risks.push("TLS the daemon cannot read (opaque_tls): its writes are not seen".into());
    }
    if writes.is_empty() {
        return if d.udp || d.opaque {
            format!("{{ to = {}{proto}{opaque} }}", toml_quote(to))
        } else {
            toml_quote(to)
        };
    }
    let methods: BTreeSet<&str> = reads.iter().copied().chain(writes.iter().map(|m| m.as_str())).collect();
    let mut paths: BTreeSet<String> = BTreeSet::new();
    for m in &writes {
        paths.extend(d.methods[*m].iter().cloned());
    }
    // A path under another goes.
    let all: Vec<String> = paths.iter().cloned().collect();
    paths.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q.as_str())));
    let w: Vec<&str> = writes.iter().map(|m| m.as_str()).collect();
    risks.push(format!("writes ({}) to this destination", w.join(", ")));
    if paths.contains("/") {
        risks.push("broad: writes anywhere on it (path /)".into());
    }
    let list = |v: &mut dyn Iterator<Item = &str>| v.map(toml_quote).collect::<Vec<_>>().join(", ");
    format!(
        "{{ to = {}{proto}, methods = [{}], paths = [{}]{opaque} }}",
        toml_quote(to),
        list(&mut methods.iter().copied()),
        list(&mut paths.iter().map(String::as_str))
    )
}

fn risk_text(risks: &[String]) -> String {
    if risks.is_empty() {
        String::new()
    } else {
        format!("; risky: {}", risks.join("; "))
    }
}

/// Why an address is risky to allow.
fn address_risk(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) if a.octets() == [169, 254, 169, 254] => Some("the cloud metadata address"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address"),
        IpAddr::V4(a) if a.is_private() || a.is_loopback() => Some("a private network"),
        IpAddr::V6(a) if a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00 => Some("a private network"),
        _ => None,
    }
}

/// A host name (not an address literal), without its port.
fn host_name(h: &str) -> Option<&str> {
    let name = match h.rsplit_once(':') {
        Some((n, p)) if p.parse::<u16>().is_ok() && !n.contains(':') => n,
        _ => h,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    (bare.parse::<IpAddr>().is_err() && name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

/// Is `path` one of the names every agent may write?
fn implicit(path: &str) -> bool {
    IMPLICIT_WRITABLE.iter().any(|w| under(path, w))
}

/// `path` is `dir` or below it.
fn under(path: &str, dir: &str) -> bool {
    let d = dir.trim_end_matches('/');
    path == d || path.starts_with(&format!("{d}/")) || d.is_empty()
}

/// The directories never granted whole for a file directly in them.
fn top_level(dir: &str) -> bool {
    matches!(dir, "/" | "/etc" | "/root" | "/home" | "/usr" | "/var" | "/boot" | "/opt" | "/srv")
        || dir.strip_prefix("/home/").is_some_and(|rest| !rest.contains('/'))
}

/// The note of a grant of one file's own name (not a directory: nothing merges into it).
const FILE_ONLY: &str = "risky: a file at the top of the tree: only this name is granted";

/// The `writable` entry a written path asks for, and a note when it is risky.
fn grant_for(path: &str) -> (String, Option<&'static str>) {
    let parent = match path.rsplit_once('/') {
        Some(("", _)) => "/".to_string(),
        Some((p, _)) => p.to_string(),
        None => "/".to_string(),
    };
    // Cut before the first per-run component.
    let mut dir = String::new();
    for c in parent.split('/').filter(|c| !c.is_empty()) {
        if per_run(c) {
            break;
        }
        dir.push('/');
        dir.push_str(c);
    }
    if dir.is_empty() {
        dir.push('/');
    }
    if top_level(&dir) {
        if dir == parent {
            // A file directly in /etc, a home directory, ...: only its own name.
            return (path.to_string(), Some(FILE_ONLY));
        }
        return (parent, Some("risky: a per-run name near the top of the tree: granted as it was seen"));
    }
    if ["/etc", "/dev", "/run", "/proc", "/sys", "/boot", "/root", "/usr", "/var/spool", "/var/lib"]
        .iter()
        .any(|s| under(&dir, s))
        || dir.split('/').any(|c| c == ".ssh" || c == ".gnupg" || c == ".aws" || c == ".config")
    {
        return (dir, Some("risky: a system or credentials directory"));
    }
    if matches!(dir.as_str(), "/tmp" | "/var/tmp" | "/dev/shm") {
        return (dir, Some("broad: a directory every process shares (what is written there is not contained)"));
    }
    if dir != parent && dir.matches('/').count() <= 2 {
        return (dir, Some("broad: per-run names below it collapsed into it"));
    }
    (dir, None)
}

/// Does a name look made for one run (`tmp.Ab12Cd`, `1733390000`, `f3a9c2e1-...`,
/// `th_8f3KsA92x`)? One of its pieces (split at `_`, `-`, `.`) is a number of 4 or more digits,
/// a hex token of 8 or more with digits in it, or a mixed-case token with digits.
fn per_run(c: &str) -> bool {
    if c.starts_with("tmp.") || c.starts_with("tmp-") || (c.starts_with("tmp") && c.len() >= 9) {
        return true;
    }
    c.split(['_', '-', '.']).any(|p| {
        let digits = p.bytes().filter(u8::is_ascii_digit).count();
        let hex = p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let (lower, upper) = (p.bytes().any(|b| b.is_ascii_lowercase()), p.bytes().any(|b| b.is_ascii_uppercase()));
        (digits >= 4 && digits == p.len())
            || (hex && p.len() >= 8 && digits >= 2)
            || (lower && upper && digits > 0 && p.len() >= 6 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

/// An HTTP path as a `paths` prefix: no query, cut before the first per-run segment.
fn path_prefix(p: &str) -> String {
    let p = p.split(['?', '#']).next().unwrap_or("/");
    let mut out = String::new();
    for seg in p.split('/').filter(|s| !s.is_empty()) {
        // (`check` takes prefixes of plain segments only, 64 bytes at most: the kernel refuses
        // `..` and percent-encoding anyway)
        let plain = seg != "." && seg != ".." && seg.bytes().all(|b| b.is_ascii_graphic() && !b"%\\#".contains(&b));
        if per_run(seg) || !plain || out.len() + 1 + seg.len() > 64 {
            break;
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, target: &str, detail: &str, ts: &str) -> Recorded {
        Recorded {
            ts: ts.into(),
            agent: "a".into(),
            kind: kind.into(),
            target: target.into(),
            detail: detail.into(),
            verdict: "allowed".into(),
            comm: "agent".into(),
            ..Default::default()
        }
    }

    #[test]
    fn per_run_names_collapse_and_the_top_of_the_tree_is_never_granted_whole() {
        assert!(per_run("tmp.Ab12Cd") && per_run("1733390000") && per_run("f3a9c2e1b7d4"));
        for keep in ["out", "src", "node_modules", "v1", "python3.11", "x86_64-linux-gnu", "cafebabe", "README"] {
            assert!(!per_run(keep), "{keep}");
        }
        assert_eq!(grant_for("/srv/work/out/tmp.Ab12Cd/x").0, "/srv/work/out");
        assert_eq!(grant_for("/srv/work/report.md"), ("/srv/work".into(), None));
        let (g, note) = grant_for("/etc/motd");
        assert_eq!(g, "/etc/motd");
        assert!(note.is_some());
        assert_eq!(grant_for("/home/ann/.bashrc").0, "/home/ann/.bashrc");
        assert!(grant_for("/etc/cron.d/x").1.is_some() && grant_for("/home/ann/.ssh/k").1.is_some());
        assert_eq!(grant_for("/tmp/tmp.Xy12ab/x").0, "/tmp");
        assert!(grant_for("/tmp/tmp.Xy12ab/x").1.is_some(), "a collapse into /tmp says so");
        assert_eq!(path_prefix("/v1/threads/th_8f3KsA92x/messages?x=1"), "/v1/threads");
        assert_eq!(path_prefix("/v1/messages?beta=true"), "/v1/messages");
        assert_eq!(path_prefix("/v1/a%2fb/c"), "/v1");
        assert_eq!(path_prefix("/v1/../etc"), "/v1");
    }

    /// A directory under a learned one, then one elsewhere: the merge once indexed an entry it had
    /// just removed (a panic, found in review). TCP and UDP to one address is `any`.
    #[test]
    fn nested_directories_merge_and_both_protocols_are_any() {
        let events = vec![
            ev("file.write", "/srv/work/a", "", "t1"),
            ev("file.write", "/srv/work/sub/b", "", "t2"),
            ev("file.write", "/var/tmp/w/c", "", "t3"),
            ev("net.connect", "127.0.0.53:53", "", "t4"),
            ev("net.send", "127.0.0.53:53", "datagram", "t5"),
        ];
        let text = profile("a", "alert", &events);
        let p = super::super::parse("profile.toml", &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(p.agents[0].files.writable, ["/srv/work", "/var/tmp/w"], "{text}");
        assert!(text.contains("protocol = \"any\""), "{text}");
    }

    #[test]
    fn the_profile_passes_check_and_says_its_evidence_and_risks() {
        let events = vec![
            ev("process.exec", "/usr/bin/agent", "new agent instance: a selector matched", "t0"),
            ev("file.write", "/srv/work/out/tmp.Ab12Cd/x", "", "t1"),
            ev("file.write", "/srv/work/out/y", "", "t2"),
            ev("file.rename", "/srv/work/out/y", "/srv/work/out/y -> /srv/work/final/z", "t3"),
            ev("file.write", "/dev/null", "", "t3"),
            ev("file.write", "/etc/motd", "", "t4"),
            ev("net.connect", "10.1.2.3:443", "", "t5"),
            ev("net.http_write", "10.1.2.3:443", "POST /v1/messages?beta=1 HTTP/1.1; Host: api.example", "t6"),
            ev("net.http_write", "10.1.2.3:443", "GET /v1/models HTTP/1.1; Host: api.example", "t6"),
            ev("net.connect", "169.254.169.254:80", "", "t7"),
            ev("net.send", "127.0.0.53:53", "datagram", "t8"),
            ev("ipc.connect", "unix:/run/x.sock", "", "t9"),
            ev("sys.io_uring", "io_uring", "", "t9"),
        ];
        let text = profile("a", "alert", &events);
        let p = super::super::parse("profile.toml", &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let a = &p.agents[0];
        assert_eq!(a.selector.comm, ["agent"]);
        assert_eq!(a.files.writable, ["/etc/motd", "/srv/work/final", "/srv/work/out"], "{text}");
        let allow: Vec<String> = a.network.allow.iter().map(|x| x.to_string()).collect();
        assert!(allow.contains(&"{ to = \"10.1.2.3:443\", methods = [\"GET\", \"HEAD\", \"OPTIONS\", \"POST\"], paths = [\"/v1/messages\"] }".to_string()), "{allow:?}");
        assert!(text.contains("its requests said Host: api.example"), "{text}");
        assert!(allow.contains(&"\"169.254.169.254:80\"".to_string()), "{allow:?}");
        assert!(allow.contains(&"{ to = \"127.0.0.53:53\", protocol = \"udp\" }".to_string()), "{allow:?}");
        assert!(allow.contains(&"\"unix:/run/x.sock\"".to_string()), "{allow:?}");
        assert_eq!(a.syscalls.allow, ["io_uring"]);
        assert!(text.contains("the cloud metadata address"), "{text}");
        assert!(text.contains("writes (POST) to this destination"), "{text}");
        assert!(text.contains("3 events, first t1, last t3"), "the per-run file joined its directory: {text}");
        // The learned profile refuses nothing of what it was learned from.
        let j = super::super::replay::Judge::new(&p, &|_| vec!["10.1.2.3".parse().unwrap()]);
        for e in &events {
            assert!(!j.decide(e).refuses(), "{e:?}: {:?}\n{text}", j.decide(e));
        }
    }
}
