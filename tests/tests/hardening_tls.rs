//! Issue 20, class 6: TLS visibility belongs to one process image. A process that did HTTPS
//! through the hooked system libssl (visible) and then execs a client whose TLS is not hooked
//! must not stay "visible": the new image's TLS is opaque, and opaque TLS is refused except to
//! an `allow` entry that accepts it:
//!
//! ```toml
//! allow = ["forum.internal:443", { to = "api.model.internal:443", opaque_tls = true }]
//! ```
//! Refusals are `net.connect` events with the rule `network.opaque_tls`.
//!
//! The unhooked client is `fixtures/opaque_tls_client.c`, built in the test with OpenSSL linked
//! statically and stripped (no symbol to hook: Bun's BoringSSL in Claude Code is the same).
use std::{process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

const PY_VISIBLE_THEN_EXEC: &str = r#"
import http.client, os, ssl, sys
port, client, method = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context(), timeout=5)
c.request("GET", "/question")
print("visible GET:", c.getresponse().status, flush=True)
c.close()
os.execv(client, [client, f"https://127.0.0.1:{port}/answer", method])
"#;

#[test]
fn tls_visibility_does_not_survive_an_exec_into_an_unhooked_client() {
    if !can_run_root_tests("tls_visibility_does_not_survive_an_exec_into_an_unhooked_client") {
        return;
    }
    let t = TempDir::new("tls-exec");
    let Some(client) = opaque_tls_client(t.path(), "opaque-client") else { return };
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let d = Daemon::start(&agent_policy(
        "vis-exec",
        &["am-vis"],
        "kill",
        &[t.path()],
        &[q(format!("127.0.0.1:{}", forum.port))],
        "",
    ));
    let py = py_agent(t.path(), "am-vis");
    each_variant(&["POST", "GET"], |method| {
        let before = forum.requests().len();
        let seen = violations(&d, "vis-exec").len();
        let (st, out, err) = output(
            Command::new(&py).args(["-c", PY_VISIBLE_THEN_EXEC, &forum.port.to_string()]).arg(&client).arg(method),
        );
        assert!(out.contains("visible GET: 200"), "the hooked GET before the exec failed: {st}\n{out}{err}");
        std::thread::sleep(Duration::from_millis(300));
        let after: Vec<String> = forum.requests().into_iter().skip(before).collect();
        assert_eq!(after.len(), 1, "the unhooked client's {method} reached the server: {after:?}");
        assert_stopped(&format!("exec into an unhooked TLS client, {method}"), &st, &out, &err);
        let e = next_violation(&d, "vis-exec", &["net.connect"], seen);
        assert_enforced(&e, "network.opaque_tls");
        assert_eq!(f(&e, "comm"), "opaque-client", "{e}");
    });
}

/// Opaque TLS to a plain `allow` entry is refused, reads included (they cannot be told from
/// writes).
#[test]
fn opaque_tls_to_a_plain_allow_entry_is_refused() {
    if !can_run_root_tests("opaque_tls_to_a_plain_allow_entry_is_refused") {
        return;
    }
    let t = TempDir::new("tls-opaque");
    let Some(client) = opaque_tls_client(t.path(), "am-opaque") else { return };
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let to = q(format!("127.0.0.1:{}", forum.port));
    let d = Daemon::start(&agent_policy("opaque", &["am-opaque"], "kill", &[t.path()], &[to], ""));
    let url = format!("https://127.0.0.1:{}/answer", forum.port);
    each_variant(&["GET", "POST"], |method| {
        let before = forum.requests().len();
        let seen = violations(&d, "opaque").len();
        let (st, out, err) = output(Command::new(&client).arg(&url).arg(method));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(forum.requests().len(), before, "opaque {method} reached the server: {:?}", forum.requests());
        assert_stopped(&format!("opaque TLS {method} to a plain allow entry"), &st, &out, &err);
        let e = next_violation(&d, "opaque", &["net.connect"], seen);
        assert_enforced(&e, "network.opaque_tls");
        assert_eq!(f(&e, "target"), format!("127.0.0.1:{}", forum.port));
    });
}

/// The same client to an entry marked `opaque_tls = true` goes through, and the plain entry of
/// another agent in the same policy still refuses it.
#[test]
fn an_allow_entry_marked_opaque_tls_accepts_an_unhooked_client() {
    if !can_run_root_tests("an_allow_entry_marked_opaque_tls_accepts_an_unhooked_client") {
        return;
    }
    let t = TempDir::new("tls-opaque-ok");
    let Some(trusted) = opaque_tls_client(t.path(), "am-opaque-ok") else { return };
    let Some(strict) = opaque_tls_client(t.path(), "am-opaque-no") else { return };
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let to = q(format!("127.0.0.1:{}", forum.port));
    let policy = format!(
        "{}{}",
        agent_policy(
            "opaque-ok",
            &["am-opaque-ok"],
            "kill",
            &[t.path()],
            &[format!("{{ to = {to}, opaque_tls = true }}")],
            ""
        ),
        agent_policy("opaque-no", &["am-opaque-no"], "kill", &[t.path()], std::slice::from_ref(&to), ""),
    );
    let d = Daemon::start(&policy);
    let url = format!("https://127.0.0.1:{}/answer", forum.port);
    let (st, out, err) = output(Command::new(&trusted).arg(&url).arg("POST"));
    assert!(
        st.success(),
        "opaque_tls = true did not let the client through: {st}\n{out}{err}\n{:?}",
        violations(&d, "opaque-ok")
    );
    assert_eq!(forum.count("POST"), 1, "{:?}", forum.requests());
    assert!(violations(&d, "opaque-ok").is_empty(), "{:?}", violations(&d, "opaque-ok"));
    let (st, out, err) = output(Command::new(&strict).arg(&url).arg("POST"));
    assert_stopped("opaque TLS to the other agent's plain entry", &st, &out, &err);
    assert_eq!(forum.count("POST"), 1, "{:?}", forum.requests());
    assert_enforced(&violation(&d, "opaque-no", &["net.connect"]), "network.opaque_tls");
}

/// Python: one HTTPS request, written raw, to 127.0.0.1:PORT with the given `Host:` and path.
const PY_HOST_REQUEST: &str = r#"
import socket, ssl, sys
port, host, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s = ssl._create_unverified_context().wrap_socket(s)
s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\npwned".encode())
try:
    print("response", s.recv(65536)[:15], flush=True)
except OSError as e:
    print(e, flush=True)
"#;

/// Issue 18/20: inside TLS a write the agent's `http_methods` do not take is judged by the
/// destination its `Host:` header names. That header is the attacker's to write: a POST on a
/// connection to the read-only forum, naming the API that takes POST, must not reach the forum.
/// The write may leave only on a connection to the destination it was allowed for (its address
/// rule, or its server name at that address): the packet carrying it is refused, the agent
/// killed, the event says why. The control: the same POST to the API itself goes through.
#[test]
fn a_host_header_naming_another_destination_does_not_carry_a_write_inside_tls() {
    if !can_run_root_tests("a_host_header_naming_another_destination_does_not_carry_a_write_inside_tls") {
        return;
    }
    let t = TempDir::new("tls-host");
    let forum = Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None);
    let api = Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None);
    let allow = [
        q(format!("127.0.0.1:{}", forum.port)),
        format!("{{ to = \"127.0.0.1:{}\", methods = [\"GET\", \"POST\"] }}", api.port),
    ];
    let d = Daemon::start(&agent_policy("tls-host", &["am-tls-host"], "kill", &[t.path()], &allow, ""));
    let py = py_agent(t.path(), "am-tls-host");
    let curl = agent_copy(t.path(), "/usr/bin/curl", "am-tls-host");
    // Node.js (the runtime of Claude Code and Gemini CLI), where installed.
    let mut clients = vec!["python", "curl"];
    let node = if std::path::Path::new("/usr/bin/node").exists() {
        clients.push("node");
        agent_copy(t.path(), "/usr/bin/node", "am-tls-host")
    } else {
        eprintln!("note: no /usr/bin/node: the Node.js variant is not run");
        std::path::PathBuf::new()
    };
    let api_host = format!("127.0.0.1:{}", api.port);
    let request = |client: &str, port: u16, path: &str| -> (std::process::ExitStatus, String, String) {
        if client == "node" {
            let js = format!(
                "const r = require('https').request({{host: '127.0.0.1', port: {port}, path: '{path}', method: 'POST', headers: {{Host: '{api_host}'}}, rejectUnauthorized: false}}, r => {{ r.resume(); r.on('end', () => process.exit(0)); }}); r.on('error', e => {{ console.error(e.message); process.exit(2); }}); r.end('pwned'); setTimeout(() => process.exit(3), 4000);"
            );
            output(Command::new(&node).args(["-e", &js]))
        } else if client == "curl" {
            output(
                Command::new(&curl)
                    .args(["-sk", "--max-time", "5", "-X", "POST", "-d", "pwned", "-H"])
                    .arg(format!("Host: {api_host}"))
                    .arg(format!("https://127.0.0.1:{port}{path}")),
            )
        } else {
            output(Command::new(&py).args(["-c", PY_HOST_REQUEST, &port.to_string(), &api_host, path]))
        }
    };
    // The controls: the API takes the POST, from both clients.
    for client in clients.iter().copied() {
        let (st, out, err) = request(client, api.port, &format!("/answer-control-{client}"));
        assert!(st.success(), "{client}: the POST to the API failed: {st}\n{out}{err}");
        assert!(api.received(format!("answer-control-{client}").as_bytes()), "{client}: {:?}", api.shown());
    }
    assert!(violations(&d, "tls-host").is_empty(), "{:?}", violations(&d, "tls-host"));
    each_variant(&clients, |client| {
        let marker = format!("answer-fronted-{client}");
        let seen = violations(&d, "tls-host").len();
        let (st, out, err) = request(client, forum.port, &format!("/{marker}"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!forum.received(marker.as_bytes()), "{client}: the write reached the forum: {:?}", forum.shown());
        assert!(!api.received(marker.as_bytes()), "{client}: {:?}", api.shown());
        assert_stopped(&format!("{client}: a POST naming the API on the forum's connection"), &st, &out, &err);
        let e = next_violation(&d, "tls-host", &["net.http_write"], seen);
        assert_eq!(f(&e, "action"), "killed", "{e}");
        assert_eq!(f(&e, "target"), format!("127.0.0.1:{}", forum.port), "{e}");
        assert!(f(&e, "detail").contains("Host: header allowed for one destination"), "{e}");
    });
    // Red team round 3, #10: an absolute-form target overrides the Host: header at the server
    // (RFC 9112 3.2.2), and a shared front end routes by it. On the API's own connection, a
    // POST whose target names the forum is not judged by the API's rule: killed, nothing sent.
    let seen = violations(&d, "tls-host").len();
    let target = format!("https://127.0.0.1:{}/answer-absolute", forum.port);
    let (st, out, err) =
        output(Command::new(&py).args(["-c", PY_HOST_REQUEST, &api.port.to_string(), &api_host, &target]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!api.received(b"answer-absolute"), "an absolute-form target was judged by Host: {:?}", api.shown());
    assert_stopped("an absolute-form target naming the forum", &st, &out, &err);
    let e = next_violation(&d, "tls-host", &["net.http_write"], seen);
    assert_eq!(f(&e, "action"), "killed", "{e}");
}

/// Python: a "phantom" write before the handshake (non-blocking: `SSL_write_ex` returns
/// WANT_READ and sends nothing) of an HTTP/2 preface and a SETTINGS frame header of length
/// 16 KiB (the largest frame the parser takes), then the handshake and a real POST on the same
/// `SSL *`.
const PY_PHANTOM: &str = r#"
import socket, ssl, sys
port, marker = int(sys.argv[1]), sys.argv[2]
raw = socket.create_connection(("127.0.0.1", port), timeout=5)
raw.setblocking(False)
s = ssl._create_unverified_context().wrap_socket(raw, do_handshake_on_connect=False)
try:
    s.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x40\x00\x04\x00\x00\x00\x00\x00")
    print("phantom: sent", flush=True)
except ssl.SSLWantReadError:
    print("phantom: WANT_READ, nothing sent", flush=True)
s.setblocking(True)
s.settimeout(5)
s.do_handshake()
s.sendall(f"POST /{marker} HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned".encode())
print("response", s.recv(200)[:15], flush=True)
"#;

/// Red team F2: the parser follows what the library sent, not what the program asked it to
/// write. A write that sends nothing (before the handshake) leaves the parser where it was, so
/// the POST after it is judged as the start of a request: killed, the forum receives nothing.
/// (Without it, the parser skipped "16 KiB of SETTINGS payload" and the POST reached the forum.)
#[test]
fn a_tls_write_that_sends_nothing_does_not_move_the_parser() {
    if !can_run_root_tests("a_tls_write_that_sends_nothing_does_not_move_the_parser") {
        return;
    }
    let t = TempDir::new("tls-phantom");
    let forum = Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None);
    let d = Daemon::start(&agent_policy(
        "tls-phantom",
        &["am-phantom"],
        "kill",
        &[t.path()],
        &[q(format!("127.0.0.1:{}", forum.port))],
        "",
    ));
    let py = py_agent(t.path(), "am-phantom");
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_PHANTOM, &forum.port.to_string(), "answer-phantom"]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(out.contains("WANT_READ"), "the phantom write was sent: the test does not test anything: {out}{err}");
    assert!(
        !forum.received(b"answer-phantom"),
        "the POST after a phantom write reached the forum: {:?}",
        forum.shown()
    );
    assert!(!forum.received(b"PRI * HTTP/2.0"), "{:?}", forum.shown());
    assert!(killed_by_sigkill(&st), "the agent was not killed: {st}\n{out}{err}");
    let e = violation(&d, "tls-phantom", &["net.http_write"]);
    assert_enforced(&e, "network.http_methods");
    assert_eq!(f(&e, "layer"), "uprobe", "{e}");
}

/// Python with ctypes on the system libssl: one `SSL *` for two connections. On the first, an
/// HTTP/2 preface and the header of a 16 KiB frame of an extension type (a parser that kept that
/// state would skip the next 16 KiB unread); then `SSL_clear`, a new connection on the same
/// object, and a POST.
const PY_SSL_REUSE: &str = r#"
import ctypes, socket, sys
port, marker = int(sys.argv[1]), sys.argv[2]
L = ctypes.CDLL("libssl.so.3"); V = ctypes.c_void_p; I = ctypes.c_int
def fn(n, r, a):
    f = getattr(L, n); f.restype = r; f.argtypes = a; return f
ctx = fn("SSL_CTX_new", V, [V])(fn("TLS_client_method", V, [])())
s = fn("SSL_new", V, [V])(ctx)
set_fd, connect = fn("SSL_set_fd", I, [V, I]), fn("SSL_connect", I, [V])
write = fn("SSL_write", I, [V, ctypes.c_char_p, I])
def conn():
    c = socket.create_connection(("127.0.0.1", port)); set_fd(s, c.fileno())
    assert connect(s) == 1, "handshake failed"
    return c
a = conn()
pre = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0x00, 0x40, 0x00, 0xfa, 0, 0, 0, 0, 0])
print("preface", write(s, pre, len(pre)), flush=True)
fn("SSL_shutdown", I, [V])(s); a.close()
print("clear", fn("SSL_clear", I, [V])(s), flush=True)
b = conn()
req = f"POST /{marker} HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned".encode()
print("post", write(s, req, len(req)), flush=True)
"#;

/// Red team round 3, #1: the parser state of a TLS connection is keyed by its `SSL *`, and a
/// pointer is reused (`SSL_clear`, or `SSL_free` and an `SSL_new` at the same address). The end
/// of the object starts a new stream: the POST on the reused object is read as a request,
/// killed, and the forum receives nothing of it.
#[test]
fn a_reused_ssl_object_starts_a_new_stream() {
    if !can_run_root_tests("a_reused_ssl_object_starts_a_new_stream") {
        return;
    }
    let t = TempDir::new("tls-reuse");
    let forum = Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None);
    let d = Daemon::start(&agent_policy(
        "tls-reuse",
        &["am-reuse"],
        "kill",
        &[t.path()],
        &[q(format!("127.0.0.1:{}", forum.port))],
        "",
    ));
    let py = py_agent(t.path(), "am-reuse");
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_SSL_REUSE, &forum.port.to_string(), "answer-reuse"]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(out.contains("clear 1"), "the script did not reach the second connection: {out}{err}");
    assert!(!forum.received(b"answer-reuse"), "the POST on a reused SSL * reached the forum: {:?}", forum.shown());
    assert!(killed_by_sigkill(&st), "the agent was not killed: {st}\n{out}{err}");
    let e = violation(&d, "tls-reuse", &["net.http_write"]);
    assert_enforced(&e, "network.http_methods");
    assert_eq!(f(&e, "layer"), "uprobe", "{e}");
}

/// Issue 19: Go's own crypto/tls is read in the Go program itself (register ABI), found through
/// its symbol table as `go build` leaves it, or through Go's function table (`.gopclntab`)
/// when it is stripped (`-s -w`). A GET to a read-only destination passes; a POST is killed
/// before it is encrypted, the forum receives nothing, and the event is the uprobe layer's.
#[test]
fn go_crypto_tls_stripped_or_not_is_read_get_passes_and_post_is_killed() {
    if !can_run_root_tests("go_crypto_tls_stripped_or_not_is_read_get_passes_and_post_is_killed") {
        return;
    }
    let t = TempDir::new("tls-go");
    let Some(full) = go_tls_client_with_symbols(t.path(), "am-go-tls") else { return };
    let Some(stripped) = go_tls_client_stripped(t.path(), "am-go-tls") else { return };
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let to = q(format!("127.0.0.1:{}", forum.port));
    let d = Daemon::start(&agent_policy("go-tls", &["am-go-tls"], "kill", &[t.path()], &[to], ""));
    let url = format!("https://127.0.0.1:{}/answer", forum.port);
    for (client, what) in [(&full, "with symbols"), (&stripped, "stripped")] {
        let gets = forum.count("GET");
        let seen = violations(&d, "go-tls").len();
        let (st, out, err) = output(Command::new(client).arg(&url).arg("GET"));
        assert!(st.success(), "the Go client's GET ({what}) failed: {st}\n{out}{err}");
        assert_eq!(forum.count("GET"), gets + 1, "{what}: {:?}", forum.requests());
        assert_eq!(violations(&d, "go-tls").len(), seen, "{what}: {:?}", violations(&d, "go-tls"));
        let (st, out, err) = output(Command::new(client).arg(&url).arg("POST"));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(forum.count("POST"), 0, "the Go client's POST ({what}) reached the forum: {:?}", forum.requests());
        assert!(killed_by_sigkill(&st), "the Go client ({what}) was not killed: {st}\n{out}{err}");
        let e = next_violation(&d, "go-tls", &["net.http_write"], seen);
        assert_enforced(&e, "network.http_methods");
        assert_eq!(f(&e, "layer"), "uprobe", "{what}: {e}");
    }
}
