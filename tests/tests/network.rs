//! The network boundary, end to end: real clients (curl with OpenSSL, python3's ssl, gnutls-cli),
//! a real forum server on loopback or inside a network namespace made for the test, real eBPF.
use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use agent_monitor_e2e::*;

fn policy(name: &str, comms: &[&str], action: &str, allow: &[&str], extra: &str) -> String {
    let comms: Vec<String> = comms.iter().map(|c| format!("\"{c}\"")).collect();
    // A table entry (`{ to = ..., opaque_tls = true }`) is written as it is.
    let allow: Vec<String> =
        allow.iter().map(|a| if a.starts_with('{') { a.to_string() } else { format!("\"{a}\"") }).collect();
    format!(
        "[[agent]]\nname = \"{name}\"\naction = \"{action}\"\n[agent.match]\ncomm = [{}]\n[agent.files]\nwritable = [\"/tmp\"]\n[agent.network]\nallow = [{}]\n{extra}\n",
        comms.join(", "),
        allow.join(", ")
    )
}

const PY_REQUEST: &str = r#"
import http.client, ssl, sys
method, scheme, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if scheme == "https":
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context(), timeout=5)
else:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
c.request(method, "/answer" if method != "GET" else "/question", body=None if method == "GET" else b"answer=rotate it")
print(c.getresponse().status)
"#;

#[test]
fn read_only_http_in_clear_text_and_inside_tls() {
    if !can_run_root_tests("read_only_http_in_clear_text_and_inside_tls") {
        return;
    }
    let t = TempDir::new("http");
    let plain = Forum::start(t.path(), "127.0.0.1", false, None);
    let tls = Forum::start(t.path(), "127.0.0.1", true, None);
    let d = Daemon::start(&policy("forum-analyst", &["am-curl", "am-py", "gnutls-cli"], "kill", &["127.0.0.1:*"], ""));
    let curl = copy_binary(t.path(), "/usr/bin/curl", "am-curl");
    let py = copy_binary(t.path(), &python3(), "am-py");

    // Reads are allowed, in clear text and inside TLS, through both libraries' clients.
    for (forum, scheme) in [(&plain, "http"), (&tls, "https")] {
        let url = format!("{scheme}://127.0.0.1:{}/question", forum.port);
        let st = run(Command::new(&curl).args(["-sk", "--max-time", "5", "-o", "/dev/null", &url]));
        assert!(st.success(), "GET {url} by the agent failed: {st}");
        let st = run(Command::new(&py)
            .args(["-c", PY_REQUEST, "GET", scheme, &forum.port.to_string()])
            .stdout(Stdio::null()));
        assert!(st.success(), "python GET over {scheme} failed: {st}");
    }
    assert_eq!(plain.count("GET"), 2);
    assert_eq!(tls.count("GET"), 2);

    // Writes reach the server zero times: dropped in the kernel (clear text) or killed before
    // SSL_write encrypts a byte (TLS). The agent dies either way.
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        for (forum, scheme) in [(&plain, "http"), (&tls, "https")] {
            let url = format!("{scheme}://127.0.0.1:{}/answer", forum.port);
            let st = run(Command::new(&curl).args(["-sk", "--max-time", "5", "-X", method, "-d", "answer=x", &url]));
            assert!(killed_by_sigkill(&st), "curl {method} {url}: agent not killed: {st}");
            let st = run(Command::new(&py)
                .args(["-c", PY_REQUEST, method, scheme, &forum.port.to_string()])
                .stderr(Stdio::null()));
            assert!(killed_by_sigkill(&st), "python {method} over {scheme}: agent not killed: {st}");
        }
    }
    // GnuTLS (gnutls_record_send).
    if have("gnutls-cli") {
        let mut child = Command::new("gnutls-cli")
            .args(["--insecure", "--port", &tls.port.to_string(), "127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500)); // handshake
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"POST /answer HTTP/1.1\r\nHost: forum.local\r\nContent-Length: 1\r\n\r\nx");
        let st = Bg(child).0.wait().unwrap();
        assert!(killed_by_sigkill(&st), "gnutls-cli POST: agent not killed: {st}");
        d.wait_event("gnutls POST", |e| f(e, "comm") == "gnutls-cli" && f(e, "kind") == "net.http_write");
    } else {
        eprintln!("gnutls-cli missing (Debian package gnutls-bin): GnuTLS path not exercised");
    }
    std::thread::sleep(Duration::from_millis(500));
    for forum in [&plain, &tls] {
        let writes: Vec<String> = forum.requests().into_iter().filter(|l| !l.starts_with("GET ")).collect();
        assert!(writes.is_empty(), "the server received state-changing requests: {writes:?}");
    }

    let events = d.settle_events(|e| f(e, "kind") == "net.http_write" && f(e, "verdict") == "violation");
    for layer in ["cgroup", "uprobe"] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert!(
                events
                    .iter()
                    .any(|e| f(e, "layer") == layer && f(e, "detail").starts_with(&format!("{method} /answer"))),
                "no {layer} event for {method}: {events:#?}"
            );
        }
    }
    let e = events.iter().find(|e| f(e, "layer") == "cgroup").unwrap();
    assert_eq!(f(e, "target"), format!("127.0.0.1:{}", plain.port));
    assert_eq!(f(e, "action"), "killed");
    let m = d.metrics();
    let v = metric_value(
        &m,
        "agent_monitor_violations_total",
        &[("agent", "forum-analyst"), ("kind", "net.http_write"), ("action", "killed")],
    );
    assert!(v.unwrap_or(0.0) >= 16.0, "{m}");
    assert_eq!(metric_value(&m, "agent_monitor_layer_up", &[("layer", "uprobe")]), Some(1.0));
    assert_eq!(metric_value(&m, "agent_monitor_layer_up", &[("layer", "cgroup")]), Some(1.0));

    // A process that is not an agent making the same requests is untouched.
    for (forum, scheme) in [(&plain, "http"), (&tls, "https")] {
        let url = format!("{scheme}://127.0.0.1:{}/answer", forum.port);
        let st = run(Command::new("curl").args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-d",
            "a=1",
            &url,
        ]));
        assert!(st.success(), "non-agent POST {url}: {st}");
        assert_eq!(forum.count("POST"), 1);
    }
}

const PY_CONNECT: &str = r#"
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        socket.create_connection((host, port), timeout=3).close()
    else:
        socket.socket(fam, socket.SOCK_DGRAM).sendto(b"x", (host, port))
    print("ok")
except PermissionError:
    print("EPERM"); sys.exit(13)
except OSError as e:
    print(e); sys.exit(1)
"#;

#[test]
fn unlisted_destinations_are_refused_in_the_kernel() {
    if !can_run_root_tests("unlisted_destinations_are_refused_in_the_kernel") {
        return;
    }
    let t = TempDir::new("egress");
    // Private, documentation-"public" and IPv6 addresses, all on the namespace's loopback: a
    // packet that got through would reach our own server there and nothing else.
    let ns = NetNs::new(&["10.77.0.1/32", "198.51.100.7/32", "2001:db8::7/128", "192.0.2.9/32"]);
    let forum = Forum::start(t.path(), "::", false, Some(&ns.0));
    let p = forum.port;
    let d = Daemon::start(&policy(
        "egress",
        &["am-net"],
        "deny",
        &[&format!("192.0.2.9:{p}"), r#"{ to = "127.0.0.53:53", protocol = "udp" }"#],
        "",
    ));
    let agent = copy_binary(t.path(), &python3(), "am-net");
    let connect = |host: &str, port: u16, proto: &str| {
        let out = ns.cmd(&agent).args(["-c", PY_CONNECT, host, &port.to_string(), proto]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // The listed destination works.
    assert_eq!(connect("192.0.2.9", p, "tcp"), (Some(0), "ok".into()));
    let before = forum.requests().len();
    for host in ["10.77.0.1", "198.51.100.7", "2001:db8::7", "::ffff:10.77.0.1", "::ffff:198.51.100.7"] {
        assert_eq!(connect(host, p, "tcp"), (Some(13), "EPERM".into()), "connect to {host}");
        let target = if host.contains("::ffff:") {
            format!("{}:{p}", &host[7..])
        } else if host.contains(':') {
            format!("[{host}]:{p}")
        } else {
            format!("{host}:{p}")
        };
        let e = d.wait_event(&format!("connect {host}"), |e| f(e, "kind") == "net.connect" && f(e, "target") == target);
        assert_eq!((f(&e, "verdict"), f(&e, "action"), f(&e, "layer")), ("violation", "denied", d.connect_layer()));
    }
    // A datagram to a non-resolver; a datagram to the resolver listed for UDP is fine.
    assert_eq!(connect("10.77.0.1", 53, "udp"), (Some(13), "EPERM".into()));
    d.wait_event("udp", |e| f(e, "kind") == "net.send" && f(e, "target") == "10.77.0.1:53");
    assert_eq!(connect("127.0.0.53", 53, "udp").0, Some(0));
    // Loopback is reachable only when listed.
    assert_eq!(connect("127.0.0.1", p, "tcp"), (Some(13), "EPERM".into()));
    assert_eq!(forum.requests().len(), before, "a refused connection reached the server");

    // The same connections from a process that is not an agent go through.
    let out =
        ns.cmd(Path::new("python3")).args(["-c", PY_CONNECT, "10.77.0.1", &p.to_string(), "tcp"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        d.metric(
            "agent_monitor_violations_total",
            &[("agent", "egress"), ("kind", "net.connect"), ("action", "denied")]
        ),
        Some(6.0)
    );
}

#[test]
fn io_uring_connect_is_covered_by_the_cgroup_hooks() {
    if !can_run_root_tests("io_uring_connect_is_covered_by_the_cgroup_hooks") {
        return;
    }
    let t = TempDir::new("uring");
    let probe = t.join("am-uring-net");
    let st = run(Command::new("cc").arg("-O2").arg("-o").arg(&probe).arg(fixture("uring_connect.c")));
    assert!(st.success(), "cannot build the io_uring probe (gcc and libc6-dev are needed)");
    let forum = Forum::start(t.path(), "127.0.0.1", false, None);
    let allow = format!("127.0.0.1:{}", forum.port);
    let d = Daemon::start(&policy(
        "uring-net",
        &["am-uring-net"],
        "deny",
        &[&allow],
        "[agent.syscalls]\nallow = [\"io_uring\"]",
    ));
    let ok = run(Command::new(&probe).args(["127.0.0.1", &forum.port.to_string()]).stdout(Stdio::null()));
    assert!(ok.success(), "an allowed io_uring connect failed: {ok}");
    // 127.0.0.2 is loopback too, and not listed.
    let out = Command::new(&probe).args(["127.0.0.2", &forum.port.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "io_uring connect to an unlisted address was not refused");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-1", "expected -EPERM from the completion");
    let e = d.wait_event("io_uring connect", |e| {
        f(e, "kind") == "net.connect" && f(e, "target") == format!("127.0.0.2:{}", forum.port)
    });
    assert_eq!(f(&e, "action"), "denied");
}

#[test]
fn unix_socket_connects_need_a_listed_path() {
    if !can_run_root_tests("unix_socket_connects_need_a_listed_path") {
        return;
    }
    let t = TempDir::new("unix");
    let ok_sock = t.join("allowed.sock");
    let door = t.join("docker.sock");
    let server = format!(
        "import socket, os, time\nfor p in ['{}', '{}']:\n    s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(8); globals().setdefault('keep', []).append(s)\nopen('{}', 'w').close()\ntime.sleep(120)\n",
        ok_sock.display(),
        door.display(),
        t.join("ready").display()
    );
    let _srv = Bg(Command::new("python3").args(["-c", &server]).spawn().unwrap());
    let t0 = std::time::Instant::now();
    while !t.join("ready").exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = Daemon::start(&policy("ipc", &["am-ipc"], "kill", &[&format!("unix:{}", ok_sock.display())], ""));
    let agent = copy_binary(t.path(), &python3(), "am-ipc");
    let client = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{}'); print('sent')";
    let st = run(Command::new(&agent).args(["-c", client]).arg(&ok_sock).stdout(Stdio::null()));
    assert!(st.success(), "a listed Unix socket was refused: {st}");
    let out = Command::new(&agent).args(["-c", client]).arg(&door).output().unwrap();
    // Refused before it connects where the kernel has cgroup connect_unix (6.7+; the daemon
    // then kills the instance, which may have exited on EPERM first), else killed after it.
    let refused = String::from_utf8_lossy(&out.stderr).contains("PermissionError");
    assert!(killed_by_sigkill(&out.status) || refused, "connect to an unlisted Unix socket: {}", out.status);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sent"), "the agent sent a message after the violation");
    let e = d.wait_event("ipc.connect", |e| f(e, "kind") == "ipc.connect");
    assert_eq!(f(&e, "target"), format!("unix:{}", door.display()));
    assert_eq!(f(&e, "action"), "killed");
    // A connect that fails (no such socket) changed nothing and is no violation.
    let st = run(Command::new(&agent).args(["-c", client, "/nonexistent/nscd.sock"]).stderr(Stdio::null()));
    assert!(!st.success() && !killed_by_sigkill(&st));
    assert_eq!(d.settle_events(|e| f(e, "kind") == "ipc.connect").len(), 1);
}

/// A test host name in /etc/hosts, pointing where the test says; the file is restored on drop.
struct TestHost {
    original: String,
    name: String,
}

impl TestHost {
    fn new(addr: &str) -> TestHost {
        let original = fs::read_to_string("/etc/hosts").unwrap_or_default();
        let h = TestHost { original, name: format!("forum-{}.am-e2e.test", std::process::id()) };
        h.point(addr);
        h
    }

    fn point(&self, addr: &str) {
        fs::write("/etc/hosts", format!("{}\n{addr} {}\n", self.original, self.name)).unwrap();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = fs::write("/etc/hosts", &self.original);
    }
}

#[test]
fn an_allowed_host_name_follows_its_address() {
    if !can_run_root_tests("an_allowed_host_name_follows_its_address") {
        return;
    }
    let t = TempDir::new("hosts");
    let forum = Forum::start(t.path(), "0.0.0.0", false, None);
    let host = TestHost::new("127.0.0.2");
    let name = host.name.clone();
    let d = Daemon::start(&policy("named", &["am-named"], "deny", &[&format!("{name}:{}", forum.port)], ""));
    let agent = copy_binary(t.path(), &python3(), "am-named");
    let connect = |host: &str| {
        run(Command::new(&agent).args(["-c", PY_CONNECT, host, &forum.port.to_string(), "tcp"]).stdout(Stdio::null()))
            .code()
    };
    assert_eq!(connect(&name), Some(0), "the allowed name did not work");
    assert_eq!(connect("127.0.0.3"), Some(13));
    // The record changes: the agent, resolving the same name, reaches the new address.
    host.point("127.0.0.3");
    let t0 = std::time::Instant::now();
    while connect(&name) != Some(0) {
        assert!(t0.elapsed() < Duration::from_secs(15), "the new address of {name} never became reachable");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(connect("127.0.0.2"), Some(13), "the old address stayed allowed");
    drop(d);
}

#[test]
fn tls_server_name_must_be_an_allowed_host() {
    if !can_run_root_tests("tls_server_name_must_be_an_allowed_host") {
        return;
    }
    let t = TempDir::new("sni");
    let forum = Forum::start(t.path(), "0.0.0.0", true, None);
    let host = TestHost::new("127.0.0.2");
    let name = host.name.clone();
    let d = Daemon::start(&policy("sni", &["am-sni"], "deny", &[&format!("{name}:{}", forum.port)], ""));
    let curl = copy_binary(t.path(), "/usr/bin/curl", "am-sni");
    let p = forum.port;
    let st = run(Command::new(&curl).args([
        "-sk",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        &format!("https://{name}:{p}/question"),
    ]));
    assert!(st.success(), "GET to the allowed name failed: {st}");
    assert_eq!(forum.count("GET"), 1);
    // Same allowed address, another server name (domain fronting): refused in the kernel.
    let st = run(Command::new(&curl).args([
        "-sk",
        "--max-time",
        "4",
        "-o",
        "/dev/null",
        "--connect-to",
        &format!("evil.example:{p}:127.0.0.2:{p}"),
        &format!("https://evil.example:{p}/question"),
    ]));
    assert!(!st.success(), "a TLS connection with a foreign server name went through");
    assert_eq!(forum.count("GET"), 1, "the fronted request reached the server");
    let e = d.wait_event("SNI mismatch", |e| f(e, "kind") == "net.connect" && f(e, "detail").contains("evil.example"));
    assert_eq!((f(&e, "verdict"), f(&e, "action")), ("violation", "denied"));
    assert_eq!(f(&e, "target"), format!("127.0.0.2:{p}"));
}

/// Python: a TLS handshake through memory BIOs with server name `sni`, its ClientHello sent in
/// two writes (the first `cut` bytes alone, TCP_NODELAY; 0: whole), then one GET. Exit 0 once
/// answered.
const PY_SPLIT_HELLO: &str = r#"
import socket, ssl, sys, time
host, port, sni, cut = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ssl._create_unverified_context().wrap_bio(inc, out, server_hostname=sni)
s = socket.create_connection((host, port), timeout=4)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
if cut:
    s.sendall(hello[:cut]); time.sleep(0.2); s.sendall(hello[cut:])
else:
    s.sendall(hello)
try:
    while True:
        try:
            obj.do_handshake(); break
        except ssl.SSLWantReadError:
            if out.pending: s.sendall(out.read())
            d = s.recv(65536)
            if not d: raise OSError("closed")
            inc.write(d)
    if out.pending: s.sendall(out.read())
    obj.write(f"GET /question HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
    s.sendall(out.read())
    for _ in range(20):
        d = s.recv(65536)
        if not d: raise OSError("closed")
        inc.write(d)
        try:
            print("answered", obj.read(15), flush=True); break
        except ssl.SSLWantReadError:
            continue
    else:
        raise OSError("no answer")
except Exception as e:
    print("failed", e, flush=True); sys.exit(3)
"#;

/// Red team F13: the server name must be read for a destination allowed only by name, even when
/// the ClientHello is cut over two segments with the name in the second: the kernel cannot show
/// it names an allowed host, so the handshake is refused. The control: the same client, its
/// ClientHello whole, to the allowed name.
#[test]
fn a_server_name_cut_into_a_later_segment_is_refused() {
    if !can_run_root_tests("a_server_name_cut_into_a_later_segment_is_refused") {
        return;
    }
    let t = TempDir::new("sni-split");
    let forum = Forum::start(t.path(), "0.0.0.0", true, None);
    let host = TestHost::new("127.0.0.2");
    let name = host.name.clone();
    let d = Daemon::start(&policy("snisplit", &["am-snisplit"], "deny", &[&format!("{name}:{}", forum.port)], ""));
    let py = copy_binary(t.path(), &python3(), "am-snisplit");
    let p = forum.port.to_string();
    let send = |sni: &str, cut: &str| {
        run(Command::new(&py).args(["-c", PY_SPLIT_HELLO, "127.0.0.2", &p, sni, cut]).stdout(Stdio::null()))
    };
    let whole = send(&name, "0");
    assert!(whole.success(), "the allowed name, whole hello: {whole}");
    assert_eq!(forum.count("GET"), 1);
    let st = send("evil.example", "10");
    assert!(!st.success(), "a split ClientHello naming another host was answered");
    assert_eq!(forum.count("GET"), 1, "the fronted request reached the server");
    // Refused as unreadable where the cut segment is judged alone; where it was held (a new
    // process whose TLS hooks were not in place yet) TCP sends it again with the rest, and the
    // name, read whole, is refused as not allowed.
    let e = d.wait_event("SNI unreadable or refused", |e| {
        f(e, "kind") == "net.connect"
            && (f(e, "detail").contains("server name unreadable") || f(e, "detail").contains("\"evil.example\""))
    });
    assert_eq!((f(&e, "verdict"), f(&e, "action")), ("violation", "denied"));
    drop(d);
}

/// Node.js as NodeSource ships it carries OpenSSL in its own executable (no libssl.so): the
/// daemon finds `SSL_write` in whatever object an agent maps and reads node's plaintext like the
/// system libssl's. A GET over HTTPS to a read-only destination passes; a POST is killed before
/// it is encrypted (the forum receives nothing), and `status` names the stack. (Opaque TLS,
/// refused unless the destination accepts it, is `hardening_tls.rs`, with a Go client.)
#[test]
fn nodes_own_openssl_is_read_get_passes_and_post_is_killed() {
    if !can_run_root_tests("nodes_own_openssl_is_read_get_passes_and_post_is_killed") {
        return;
    }
    let node = "/usr/bin/node";
    let ldd = Command::new("ldd")
        .arg(node)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !Path::new(node).exists() || ldd.contains("libssl") {
        eprintln!(
            "SKIPPED: needs a Node.js carrying its own OpenSSL at {node} (none here, or it uses the system libssl)"
        );
        return;
    }
    let t = TempDir::new("node-tls");
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let p = forum.port;
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(
        &policy("noded", &["am-node"], "kill", &[&format!("127.0.0.1:{p}")], ""),
        &["--control-socket", &s],
    );
    let request = |method: &str| {
        format!(
            "const r = require('https').request({{host: '127.0.0.1', port: {p}, path: '/answer', method: '{method}', rejectUnauthorized: false}}, r => {{ r.resume(); r.on('end', () => process.exit(r.statusCode === 200 ? 0 : 1)); }}); r.on('error', e => {{ console.error(e.message); process.exit(2); }}); r.end({body}); setTimeout(() => process.exit(3), 4000);",
            body = if method == "GET" { "" } else { "'the answer'" }
        )
    };
    let agent = copy_binary(t.path(), node, "am-node");
    let st = run(Command::new(&agent).args(["-e", &request("GET")]));
    assert!(st.success(), "node's GET to a read-only destination was refused: {st}\n{:#?}", d.events());
    assert_eq!(forum.count("GET"), 1);
    let st = run(Command::new(&agent).args(["-e", &request("POST")]));
    assert!(killed_by_sigkill(&st), "node's POST was not killed: {st}");
    assert_eq!(forum.count("POST"), 0, "node's POST reached the forum");
    let e = d.wait_event("node's POST", |e| f(e, "kind") == "net.http_write");
    assert_eq!((f(&e, "action"), f(&e, "layer")), ("killed", "uprobe"), "{e}");
    assert!(f(&e, "detail").starts_with("POST /answer"), "{e}");
    assert!(f(&e, "detail").contains("seen in the TLS library before encryption"), "{e}");
    // `status` names the stack a running node carries.
    let mut sleeper = Bg(Command::new(&agent).args(["-e", "setTimeout(() => {}, 5000)"]).spawn().unwrap());
    let want = format!("openssl ({})", agent.display());
    let status = wait_for("status to name node's stack", 10, || {
        let out = Command::new(binary().unwrap()).args(["status", "--json", "--control-socket", &s]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&want).then_some(text)
    });
    assert!(status.contains("\"tls_stacks\""), "{status}");
    let _ = sleeper.0.kill();
}

/// `[daemon] tls_uprobes = false` (for hosts that want no uprobe at all): nothing is hooked,
/// the layer says so, every TLS connection is opaque: a POST gets through to a destination that
/// accepts opaque TLS (unseen), and a destination that does not is refused.
#[test]
fn with_tls_uprobes_off_all_tls_is_opaque() {
    if !can_run_root_tests("with_tls_uprobes_off_all_tls_is_opaque") {
        return;
    }
    let t = TempDir::new("tls-off");
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let p = forum.port;
    let opaque = format!("{{ to = \"127.0.0.1:{p}\", opaque_tls = true }}");
    let plain = format!("127.0.0.1:{p}");
    let pol = format!(
        "[daemon]\ntls_uprobes = false\n{}\n{}",
        policy("blind", &["am-blind-curl"], "kill", &[&opaque], ""),
        policy("strict", &["am-strict-curl"], "kill", &[&plain], "")
    );
    let d = Daemon::start(&pol);
    assert_eq!(d.metric("agent_monitor_layer_up", &[("layer", "uprobe")]), Some(0.0));
    assert!(d.log_text().contains("tls_uprobes = \"off\""), "{}", d.log_text());
    let url = format!("https://127.0.0.1:{p}/answer");
    let blind = copy_binary(t.path(), "/usr/bin/curl", "am-blind-curl");
    let before = forum.count("POST");
    let st = run(Command::new(&blind).args(["-sk", "--max-time", "5", "-o", "/dev/null", "-d", "x=1", &url]));
    assert!(st.success(), "the blind agent's TLS connection was refused: {st}");
    assert_eq!(forum.count("POST"), before + 1, "with the uprobes off, a POST inside TLS is not seen");
    let strict = copy_binary(t.path(), "/usr/bin/curl", "am-strict-curl");
    let gets = forum.count("GET");
    let st = run(Command::new(&strict).args(["-sk", "--max-time", "5", "-o", "/dev/null", &url]));
    assert!(!st.success(), "opaque TLS got through to a destination without opaque_tls");
    assert_eq!(forum.count("GET"), gets, "the opaque request reached the server");
    let e = d.wait_event("opaque TLS refused", |e| f(e, "agent") == "strict" && f(e, "verdict") == "violation");
    assert_eq!(f(&e, "rule"), "network.opaque_tls", "{e}");
}

/// Maps libssl, prints the pid of the process that then waits (this one, or with `fork` a
/// child forked without exec) and sleeps.
const PY_SSL_WAIT: &str = r#"
import os, ssl, sys, time
ssl.create_default_context()
pid = os.getpid()
if sys.argv[1] == "fork":
    pid = os.fork()
    if pid == 0:
        time.sleep(60); os._exit(0)
print(pid, flush=True)
time.sleep(60)
"#;

/// An HTTPS POST from a child forked without exec; the parent waits for it.
const PY_FORK_POST: &str = r#"
import os, ssl, sys, urllib.request
ctx = ssl._create_unverified_context()
pid = os.fork()
if pid == 0:
    req = urllib.request.Request(f"https://127.0.0.1:{sys.argv[1]}/answer", data=b"answer=x", method="POST")
    urllib.request.urlopen(req, context=ctx, timeout=5).read()
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(0 if status == 0 else 1)
"#;

/// The first byte of a hooked libssl function (the first the daemon's uprobe events in tracefs
/// name) in process `pid`'s copy of libssl: 0xcc is a uprobe's breakpoint.
fn ssl_write_byte(pid: u32, group: &str) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let events = fs::read_to_string("/sys/kernel/tracing/uprobe_events").ok()?;
    let line = events.lines().find(|l| l.starts_with(&format!("p:{group}/")) && l.contains("/libssl.so"))?;
    let (lib, off) = line.split_whitespace().nth(1)?.rsplit_once(':')?;
    let off = u64::from_str_radix(off.trim_start_matches("0x"), 16).ok()?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    for l in maps.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 6 || cols[5] != lib {
            continue;
        }
        let (start, end) = cols[0].split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let map_off = u64::from_str_radix(cols[2], 16).ok()?;
        if (map_off..map_off + (end - start)).contains(&off) {
            let mut b = [0u8; 1];
            fs::File::open(format!("/proc/{pid}/mem")).ok()?.read_exact_at(&mut b, start + off - map_off).ok()?;
            return Some(b[0]);
        }
    }
    None
}

/// `agent-monitor status --json` of the daemon under test.
fn status_json(d: &Daemon) -> serde_json::Value {
    let out = Command::new(binary().unwrap())
        .args(["status", "--json", "--control-socket"])
        .arg(&d.control)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).expect("status --json")
}

fn first_line_pid(child: &mut std::process::Child) -> u32 {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line.trim().parse().unwrap_or_else(|_| panic!("no pid printed: {line:?}"))
}

#[test]
fn tls_hooks_are_written_into_agent_processes_only() {
    if !can_run_root_tests("tls_hooks_are_written_into_agent_processes_only") {
        return;
    }
    let t = TempDir::new("tls-scope");
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let d = Daemon::start(&policy("scoped", &["am-py"], "kill", &["127.0.0.1:*"], ""));
    let status = status_json(&d);
    assert_eq!(status["tls_hooks"]["scope"], "agents", "{status:#}");
    let group = status["tls_hooks"]["tracefs_group"].as_str().unwrap().to_string();
    let py = copy_binary(t.path(), &python3(), "am-py");

    // The breakpoint is in the agent's copy of libssl, not in another process's.
    let spawn = |prog: &Path, arg: &str| {
        Bg(Command::new(prog).args(["-c", PY_SSL_WAIT, arg]).stdout(Stdio::piped()).spawn().unwrap())
    };
    let mut agent = spawn(&py, "plain");
    let mut other = spawn(Path::new(&python3()), "plain");
    let (agent_pid, other_pid) = (first_line_pid(&mut agent.0), first_line_pid(&mut other.0));
    wait_for("the uprobe's breakpoint in the agent's SSL_write", 10, || {
        (ssl_write_byte(agent_pid, &group) == Some(0xcc)).then_some(())
    });
    let byte = ssl_write_byte(other_pid, &group);
    assert!(byte.is_some() && byte != Some(0xcc), "a process that is not an agent has the breakpoint: {byte:?}");
    assert!(d.metric("agent_monitor_tls_hooked_processes", &[]).unwrap_or(0.0) >= 1.0, "{}", d.metrics());

    drop((agent, other));

    // A child forked without exec inherits the hooks: its POST is seen and refused.
    let mut root = Command::new(&py).args(["-c", PY_FORK_POST, &forum.port.to_string()]).spawn().unwrap();
    let root_pid = root.id();
    let st = root.wait().unwrap();
    assert!(killed_by_sigkill(&st), "the agent whose forked child posted was not killed: {st}");
    let e = d.wait_event("the forked child's POST", |e| {
        f(e, "kind") == "net.http_write" && f(e, "layer") == "uprobe" && e["ppid"] == root_pid
    });
    assert!(f(&e, "detail").starts_with("POST /answer"), "{e:#}");
    assert_eq!(forum.count("POST"), 0, "the forked child's POST reached the server");

    // An agent that starts while the daemon cannot hook it (stopped here; in life, the
    // milliseconds before it reads the exec): its TLS handshake waits in the kernel, and once
    // hooked, its POST is seen and refused like any other.
    // curl under the name the policy selects, in a directory of its own (am-py is python).
    fs::create_dir_all(t.join("early")).unwrap();
    let curl = copy_binary(&t.join("early"), "/usr/bin/curl", "am-py");
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let url = format!("https://127.0.0.1:{}/answer", forum.port);
    let mut early = Bg(Command::new(&curl).args(["-sk", "--max-time", "20", "-d", "x=1", &url]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    let waiting = early.0.try_wait().unwrap().is_none();
    let seen = forum.requests();
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(waiting, "the agent's connection did not wait for its TLS hooks");
    assert!(seen.is_empty(), "the server received a request before the agent was hooked: {seen:?}");
    let st = early.0.wait().unwrap();
    assert!(killed_by_sigkill(&st), "the early agent's POST was not killed once hooked: {st}");
    assert_eq!(forum.count("POST"), 0, "the early agent's POST reached the server");
    wait_for("the held handshake counted", 10, || {
        (d.metric("agent_monitor_tls_handshakes_held_total", &[]).unwrap_or(0.0) >= 1.0).then_some(())
    });

    // The same from a process that is not an agent goes through.
    let st = run(Command::new(python3()).args(["-c", PY_FORK_POST, &forum.port.to_string()]));
    assert!(st.success(), "a non-agent's forked POST failed: {st}");
    assert_eq!(forum.count("POST"), 1);

    // Stopping the daemon removes its uprobe events.
    drop(d);
    let left = fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    assert!(!left.contains(&format!("{group}/")), "uprobe events left behind: {left}");
}

#[test]
fn with_tls_uprobes_all_every_process_is_hooked_and_agents_still_refused() {
    if !can_run_root_tests("with_tls_uprobes_all_every_process_is_hooked_and_agents_still_refused") {
        return;
    }
    let t = TempDir::new("tls-all");
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let d = Daemon::start(&format!(
        "[daemon]\ntls_uprobes = \"all\"\n{}",
        policy("everywhere", &["am-curl"], "kill", &["127.0.0.1:*"], "")
    ));
    let status = status_json(&d);
    assert_eq!(status["tls_hooks"]["scope"], "all processes", "{status:#}");
    assert!(d.log_text().contains("TLS library hooked in every process"), "{}", d.log_text());
    let url = format!("https://127.0.0.1:{}/answer", forum.port);
    let curl = copy_binary(t.path(), "/usr/bin/curl", "am-curl");
    let st = run(Command::new(&curl).args(["-sk", "--max-time", "5", "-d", "x=1", &url]));
    assert!(killed_by_sigkill(&st), "the agent's POST inside TLS was not killed: {st}");
    d.wait_event("the uprobe's POST", |e| f(e, "kind") == "net.http_write" && f(e, "layer") == "uprobe");
    let st = run(Command::new("curl").args(["-sk", "--max-time", "5", "-o", "/dev/null", "-d", "x=1", &url]));
    assert!(st.success(), "a non-agent's POST failed: {st}");
    assert_eq!(forum.count("POST"), 1);
}
