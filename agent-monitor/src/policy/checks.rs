//! Value checkers: pure functions, each returns the normalised value or the reason it is wrong;
//! the caller (`super::validate`) attaches the position.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::model::*;

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
/// Longest TEXT of a `cmdline = ["*TEXT*"]` selector (`agent_monitor_common::CMDLINE_TEXT_LEN`).
pub const MAX_CMDLINE_TEXT: usize = agent_monitor_common::CMDLINE_TEXT_LEN;

/// A `cmdline` selector: `*TEXT*`, matched in the kernel inside the program or its first
/// argument (`node SCRIPT`), within the first `CMDLINE_READ` bytes. Returns TEXT.
pub fn check_cmdline(pattern: &str) -> Result<String, String> {
    let Some(text) = pattern.strip_prefix('*').and_then(|p| p.strip_suffix('*')) else {
        return Err("write it *TEXT*: the command line contains TEXT (e.g. \"*/@google/gemini-cli/*\")".into());
    };
    if text.len() < 4 {
        return Err("TEXT must be at least 4 bytes: a shorter one selects too much".into());
    }
    if text.len() > MAX_CMDLINE_TEXT {
        return Err(format!("TEXT is {} bytes long; at most {MAX_CMDLINE_TEXT} are allowed", text.len()));
    }
    if text.contains(['*', '?', '[']) {
        return Err("only the leading and trailing * are wildcards: TEXT is matched as written".into());
    }
    if text.contains([' ', '\0']) {
        return Err("TEXT is matched inside one argument: it may not contain a space".into());
    }
    Ok(text.to_string())
}

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
    if !KNOWN_HTTP_METHODS.contains(&m) {
        return Err(format!(
            "the kernel recognises only {} at the start of a request: a request with \"{m}\" is refused as \
             a write whatever the policy says",
            KNOWN_HTTP_METHODS.join(", ")
        ));
    }
    Ok(())
}

/// An `allow` entry's `paths` element: an absolute request path prefix that fits the kernel's
/// table and does not climb.
pub fn check_http_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path \"{p}\" must start with '/'"));
    }
    if p.len() > agent_monitor_common::HTTP_PATH_SCAN {
        return Err(format!("path \"{p}\" is longer than {} bytes", agent_monitor_common::HTTP_PATH_SCAN));
    }
    if p.contains("..") || p.contains('%') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("path \"{p}\" may not contain \"..\", '%', spaces or control characters"));
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

        for m in ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE"] {
            assert!(check_http_method(m).is_ok(), "{m}");
        }
        // A well-formed method the kernel parser does not know is refused at load, not
        // silently never matched.
        for m in ["PROPFIND", "M-SEARCH"] {
            assert!(check_http_method(m).is_err(), "{m}");
        }
        assert!(check_http_method("get").unwrap_err().contains("write \"GET\""));
        assert!(check_http_method("GET /").unwrap_err().contains("not an HTTP method"));
        assert!(check_http_method("").unwrap_err().contains("empty"));
        assert!(check_http_method("1GET").unwrap_err().contains("not an HTTP method"));
        assert!(check_http_method("VERYLONGMETHODNAME").unwrap_err().contains("longer than 16"));

        assert_eq!(check_cmdline("*/@google/gemini-cli/*").unwrap(), "/@google/gemini-cli/");
        assert!(check_cmdline("/@google/gemini-cli/*").unwrap_err().contains("*TEXT*"));
        assert!(check_cmdline("*ab*").unwrap_err().contains("at least 4"));
        assert!(check_cmdline("*abc*def*").unwrap_err().contains("wildcards"));
        assert!(check_cmdline("*two words*").unwrap_err().contains("space"));
        assert!(check_cmdline(&format!("*{}*", "x".repeat(49))).unwrap_err().contains("at most 48"));

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
        assert!(a.selector == Match::default() && !a.audit && a.files.writable.is_empty());
    }
}
