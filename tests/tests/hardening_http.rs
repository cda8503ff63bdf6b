//! Issue 20, class 4: read-only HTTP is an allowlist of first bytes. On an allowed destination
//! whose `http_methods` are GET, HEAD and OPTIONS, every request must begin with one of those
//! tokens followed by a space; anything else is a write: a method the parser does not know,
//! a lowercase method, bytes before the method, an HTTP/2 preface, a method split across two
//! segments (or two TLS writes), and a second request pipelined after an allowed one, on a
//! keep-alive connection, in clear text and inside TLS.
//!
//! The server is `fixtures/sink_server.py`, which parses nothing and records every byte: a
//! request the forum's HTTP parser would not understand cannot go unnoticed. Each write carries
//! a marker (`answer-<variant>`) that must never reach it.
use std::{process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

/// `SCHEME PORT STEP...`: connect (TCP_NODELAY; TLS without verification for https), then each
/// STEP: `send:HEX` (one send, or one SSL_write), `oob:HEX` (one send of urgent data, clear
/// text only), `sleep:MS`, `recv` (one response). Then wait
/// up to 5 s for anything (a kill from the daemon lands here) and exit 0.
const PY_RAW_HTTP: &str = r#"
import socket, ssl, sys, time
scheme, port, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if scheme == "https":
    s = ssl._create_unverified_context().wrap_socket(s, server_hostname="sink.local")
def response():
    buf = b""
    while not (b"\r\n\r\n" in buf and buf.endswith(b"ok\n")):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    return buf
try:
    for step in steps:
        kind, _, arg = step.partition(":")
        if kind == "send":
            s.sendall(bytes.fromhex(arg))
        elif kind == "oob":
            s.send(bytes.fromhex(arg), socket.MSG_OOB)
        elif kind == "sleep":
            time.sleep(int(arg) / 1000)
        elif kind == "recv":
            print("response", response()[:15], flush=True)
    print("all sent", flush=True)
    s.settimeout(5)
    s.recv(65536)
except PermissionError as e:
    print(e, flush=True); sys.exit(13)
except OSError as e:
    print(e, flush=True)
time.sleep(0.5)
"#;

fn req(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned").into_bytes()
}

fn get() -> Vec<u8> {
    b"GET /question HTTP/1.1\r\nHost: forum\r\n\r\n".to_vec()
}

/// An HTTP/2 clear-text connection: the preface, an empty SETTINGS frame, and a DATA frame on
/// stream 1 carrying `marker`.
fn h2(marker: &str) -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let len = marker.len() as u32;
    b.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0, 1, 0, 0, 0, 1]);
    b.extend_from_slice(marker.as_bytes());
    b
}

/// The preface, then a frame header of an extension type saying 1 MiB of payload follows, and
/// an HTTP/1.1 POST in what would be that payload: a parser that skips frame payloads unread
/// would let through what a server that is no HTTP/2 server reads as a request.
fn h2_big_frame(marker: &str) -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0x10, 0, 0, 0xfa, 0, 0, 0, 0, 0]);
    b.extend(req("POST", &format!("/{marker}")));
    b
}

fn send(b: &[u8]) -> String {
    format!("send:{}", hex(b))
}

/// The variants of one class of first bytes: (name, steps). Each write carries `answer-NAME`.
fn variants(tls: bool) -> Vec<(&'static str, Vec<String>)> {
    let mark = |n: &str| format!("/answer-{n}");
    let mut crlf = b"\r\n".to_vec();
    crlf.extend(req("POST", &mark("crlf")));
    let mut pipelined = get();
    pipelined.extend(req("POST", &mark("pipelined")));
    let split = req("POST", &mark("split"));
    let mut all = vec![
        ("propfind", vec![send(&req("PROPFIND", &mark("propfind")))]),
        ("move", vec![send(&req("MOVE", &mark("move")))]),
        ("lowercase", vec![send(&req("post", &mark("lowercase")))]),
        ("crlf", vec![send(&crlf)]),
        ("h2-preface", vec![send(&h2("answer-h2-preface"))]),
        ("h2-big-frame", vec![send(&h2_big_frame("answer-h2-big-frame"))]),
        ("split", vec![send(&split[..2]), "sleep:300".into(), send(&split[2..])]),
        ("pipelined", vec![send(&pipelined)]),
        // Lines ended by a bare LF or CR: a lenient server ends the GET's header block there and
        // reads the POST as the next request.
        (
            "bare-lf",
            vec![send(
                b"GET /question HTTP/1.1\nHost: forum\n\nPOST /answer-bare-lf HTTP/1.1\nHost: forum\nContent-Length: 5\n\npwned",
            )],
        ),
        (
            "lf-headers",
            vec![send(
                b"GET /question HTTP/1.1\r\nHost: forum\n\nPOST /answer-lf-headers HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned",
            )],
        ),
        (
            "bare-cr",
            vec![send(
                b"GET /question HTTP/1.1\r\nHost: forum\r\rPOST /answer-bare-cr HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned",
            )],
        ),
        ("keepalive", vec![send(&get()), "recv".into(), send(&req("POST", &mark("keepalive")))]),
        (
            "keepalive-split",
            vec![
                send(&get()),
                "recv".into(),
                send(b"PO"),
                "sleep:300".into(),
                send(&req("ST", &mark("keepalive-split"))),
            ],
        ),
    ];
    if !tls {
        // Red team round 3, #3: urgent data. The server's stream leaves out the urgent byte
        // ("Z"): to the parser a header line "Z" and more header lines; to the server the end
        // of the GET's header block, then a POST.
        all.push((
            "urgent",
            vec![
                send(b"GET /question HTTP/1.1\r\nHost: forum\r\n"),
                "sleep:100".into(),
                format!("oob:{}", hex(b"Z")),
                "sleep:100".into(),
                send(b"\r\nPOST /answer-urgent HTTP/1.1\r\nHost: forum\r\nContent-Length: 0\r\n\r\n"),
            ],
        ));
    }
    all
}

fn run_variants(scheme: &str, agent: &str, comm: &str, tls: bool) {
    let t = TempDir::new(&format!("http-{scheme}"));
    let sink = if tls {
        Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None)
    } else {
        Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: true }, None)
    };
    let allow = [q(format!("127.0.0.1:{}", sink.port))];
    let d = Daemon::start(&agent_policy(
        agent,
        &[comm],
        "kill",
        &[t.path()],
        &allow,
        "http_methods = [\"GET\", \"HEAD\", \"OPTIONS\"]",
    ));
    let py = py_agent(t.path(), comm);
    let port = sink.port.to_string();
    // The control: reads work, one after another on one connection.
    let (st, out, err) = output(
        Command::new(&py)
            .args(["-c", PY_RAW_HTTP, scheme, &port])
            .arg(send(&get()))
            .arg("recv")
            .arg(send(&get()))
            .arg("recv"),
    );
    assert!(st.success(), "two GETs on one connection failed: {st}\n{out}{err}");
    assert!(out.matches("200 OK").count() == 2, "{out}");
    let all = variants(tls);
    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
    each_variant(&names, |name| {
        let steps = &all.iter().find(|(n, _)| n == name).unwrap().1;
        let marker = format!("answer-{name}");
        let seen = violations(&d, agent).len();
        let (st, out, err) = output(Command::new(&py).args(["-c", PY_RAW_HTTP, scheme, &port]).args(steps));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(marker.as_bytes()), "{name}: the write reached the server: {:?}", sink.shown());
        assert!(killed_by_sigkill(&st), "{name}: the agent was not killed: {st}\n{out}{err}");
        let e = next_violation(&d, agent, &["net.http_write"], seen);
        assert_enforced(&e, "network.http_methods");
        assert_eq!(f(&e, "layer"), if tls { "uprobe" } else { "cgroup" }, "{e}");
    });
}

#[test]
fn only_allowed_methods_begin_a_clear_text_request() {
    if !can_run_root_tests("only_allowed_methods_begin_a_clear_text_request") {
        return;
    }
    run_variants("http", "http-plain", "am-http", false);
}

#[test]
fn only_allowed_methods_begin_a_request_inside_tls() {
    if !can_run_root_tests("only_allowed_methods_begin_a_request_inside_tls") {
        return;
    }
    run_variants("https", "http-tls", "am-https", true);
}

/// A destination that takes POST under one path prefix (`paths`), in clear text: a POST there
/// reaches the server; a POST elsewhere, and one whose path climbs out of the prefix with `..`
/// or `%2e` anywhere in its path (after its 64th byte too, where the prefix match ends), is
/// killed before a byte of it leaves, and so is a target with a control byte or a fragment.
/// `..` in the query is no path: it passes.
#[test]
fn a_path_prefix_is_the_whole_path_not_its_first_bytes() {
    if !can_run_root_tests("a_path_prefix_is_the_whole_path_not_its_first_bytes") {
        return;
    }
    let t = TempDir::new("http-paths");
    let sink = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: true }, None);
    let allow = [format!("{{ to = \"127.0.0.1:{}\", methods = [\"GET\", \"POST\"], paths = [\"/api/\"] }}", sink.port)];
    let d = Daemon::start(&agent_policy("http-paths", &["am-paths"], "kill", &[t.path()], &allow, ""));
    let py = py_agent(t.path(), "am-paths");
    let port = sink.port.to_string();
    let long = "a".repeat(80);
    // The controls: under the prefix, with a query that holds `..`.
    for (name, path) in [("under", "/api/answer-under".to_string()), ("query", "/api/answer-query?x=../../y".into())] {
        let (st, out, err) = output(
            Command::new(&py).args(["-c", PY_RAW_HTTP, "http", &port]).arg(send(&req("POST", &path))).arg("recv"),
        );
        assert!(st.success(), "{name}: a POST under the prefix failed: {st}\n{out}{err}");
        assert!(
            sink.received(format!("answer-{name}").as_bytes()),
            "{name}: the server got nothing: {:?}",
            sink.shown()
        );
    }
    let variants = [
        ("elsewhere", "/admin/answer-elsewhere".to_string()),
        ("dotdot", "/api/../admin/answer-dotdot".into()),
        ("dotdot-after-64", format!("/api/{long}/../../admin/answer-dotdot-after-64")),
        ("encoded-after-64", format!("/api/{long}/%2e%2e/admin/answer-encoded-after-64")),
        // A tab a lenient server drops (`.\t.` is `..` to a WHATWG URL parser), and a fragment,
        // which is never in a request target, with a climb after it.
        ("tab", "/api/.\t./admin/answer-tab".into()),
        ("fragment", "/api/#/../../admin/answer-fragment".into()),
    ];
    let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
    each_variant(&names, |name| {
        let path = &variants.iter().find(|(n, _)| n == name).unwrap().1;
        let marker = format!("answer-{name}");
        let seen = violations(&d, "http-paths").len();
        let (st, out, err) =
            output(Command::new(&py).args(["-c", PY_RAW_HTTP, "http", &port]).arg(send(&req("POST", path))));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(marker.as_bytes()), "{name}: the write reached the server: {:?}", sink.shown());
        assert!(killed_by_sigkill(&st), "{name}: the agent was not killed: {st}\n{out}{err}");
        let e = next_violation(&d, "http-paths", &["net.http_write"], seen);
        assert_enforced(&e, "network.paths");
    });
    // Two Content-Lengths: a server that takes the first (0) reads the "body" of the second
    // (60) as a POST outside the prefix. The body's end is not known: refused.
    let smuggled = b"POST /api/x HTTP/1.1\r\nHost: forum\r\nContent-Length: 0\r\nContent-Length: 60\r\n\r\nPOST /admin/answer-dup-length HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned";
    let seen = violations(&d, "http-paths").len();
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_RAW_HTTP, "http", &port]).arg(send(smuggled)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sink.received(b"answer-dup-length"),
        "two Content-Lengths: the write reached the server: {:?}",
        sink.shown()
    );
    assert!(killed_by_sigkill(&st), "two Content-Lengths: the agent was not killed: {st}\n{out}{err}");
    let e = next_violation(&d, "http-paths", &["net.http_write"], seen);
    assert_enforced(&e, "network.http_methods");

    // Red team round 3, #13: a header name with 0x1a where `:` belongs. Folded with `| 0x20`
    // it matched `Content-Length:` (a 78-byte body skipped unread); Python's server sees no
    // such header and reads the "body" as a POST outside the prefix. The parser now sees no
    // length either, and judges that POST: killed.
    let smuggled = b"POST /api/x HTTP/1.1\r\nHost: forum\r\nContent-Length\x1a 78\r\n\r\nPOST /admin/answer-sub-colon HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned";
    let seen = violations(&d, "http-paths").len();
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_RAW_HTTP, "http", &port]).arg(send(smuggled)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!sink.received(b"answer-sub-colon"), "0x1a for ':': the write reached the server: {:?}", sink.shown());
    assert!(killed_by_sigkill(&st), "0x1a for ':': the agent was not killed: {st}\n{out}{err}");
    let e = next_violation(&d, "http-paths", &["net.http_write"], seen);
    assert_enforced(&e, "network.paths");
}
