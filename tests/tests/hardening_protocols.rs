//! Issue 20, class 5: protocols are part of a destination. An `allow` entry written as a plain
//! string is TCP: it does not allow datagrams to the same address and port (QUIC, UDP 443, is a
//! datagram). UDP is granted explicitly, by the table form of an entry:
//!
//! ```toml
//! allow = ["127.0.0.1:8080", { to = "127.0.0.1:5353", protocol = "udp" }, { to = "10.0.0.1:443", protocol = "any" }]
//! ```
//! (`protocol` = "tcp", the default, | "udp" | "any").
use std::{fs, process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

/// `HOST PORT MODE PAYLOAD_HEX`: MODE tcp (connect, send), udp (sendto), udp-connected (connect,
/// send), udp-sendmsg (sendmsg with a name). Exit 0 sent, 13 EPERM, 1 another error.
const PY_SEND: &str = r#"
import socket, sys
host, port, mode, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if mode == "tcp":
        c = socket.create_connection((host, port), timeout=3); c.sendall(payload); c.close()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if mode == "udp":
            s.sendto(payload, (host, port))
        elif mode == "udp-connected":
            s.connect((host, port)); s.send(payload)
        elif mode == "udp-sendmsg":
            s.sendmsg([payload], [], 0, (host, port))
    print("sent", flush=True)
except PermissionError:
    print("EPERM", flush=True); sys.exit(13)
except OSError as e:
    print(e, flush=True); sys.exit(1)
"#;

/// Send `payload` as `mode`. Over TCP it is carried in a read-only HTTP request (a header), as
/// an allowed TCP destination takes only requests that start with a read-only method: raw
/// bytes are a write there unless the destination accepts opaque traffic.
fn send(agent: &std::path::Path, ns: Option<&NetNs>, host: &str, port: u16, mode: &str, payload: &[u8]) -> Option<i32> {
    let mut cmd = match ns {
        Some(ns) => ns.cmd(agent),
        None => Command::new(agent),
    };
    let wrapped;
    let payload = if mode == "tcp" {
        wrapped = [b"GET / HTTP/1.1\r\nHost: sink\r\nX-Marker: ".as_slice(), payload, b"\r\n\r\n"].concat();
        &wrapped[..]
    } else {
        payload
    };
    cmd.args(["-c", PY_SEND, host, &port.to_string(), mode, &hex(payload)]);
    let (st, out, err) = output(&mut cmd);
    if st.code() == Some(1) {
        eprintln!("{host}:{port} {mode}: {out}{err}");
    }
    st.code()
}

#[test]
fn a_tcp_allow_does_not_allow_datagrams_to_the_same_address() {
    if !can_run_root_tests("a_tcp_allow_does_not_allow_datagrams_to_the_same_address") {
        return;
    }
    let t = TempDir::new("proto-udp");
    let tcp = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: false }, None);
    let udp = Sink::start(t.path(), SinkKind::Udp { host: "127.0.0.1", port: tcp.port }, None);
    let d = Daemon::start(&agent_policy(
        "udp-less",
        &["am-proto"],
        "deny",
        &[t.path()],
        &[q(format!("127.0.0.1:{}", tcp.port))],
        "",
    ));
    let py = py_agent(t.path(), "am-proto");
    // The control: the listed TCP service takes the connection.
    assert_eq!(send(&py, None, "127.0.0.1", tcp.port, "tcp", b"hello over tcp"), Some(0));
    // (The sink writes down what it received after the sender is gone: wait for it.)
    wait_for("the TCP control at the sink", 10, || tcp.received(b"hello over tcp").then_some(()));
    each_variant(&["udp", "udp-connected", "udp-sendmsg"], |mode| {
        let marker = format!("datagram-{mode}");
        let seen = violations(&d, "udp-less").len();
        let code = send(&py, None, "127.0.0.1", tcp.port, mode, marker.as_bytes());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!udp.received(marker.as_bytes()), "{mode}: the datagram reached the UDP service");
        assert_eq!(code, Some(13), "{mode}: the datagram to a TCP-only destination was not refused with EPERM");
        let e = next_violation(&d, "udp-less", &["net.send"], seen);
        assert_enforced(&e, "network.allow");
        assert_eq!(f(&e, "target"), format!("127.0.0.1:{}", tcp.port));
    });
}

/// The default policy's shape, `0.0.0.0/0:443` and `[::]/0:443`, means HTTPS: QUIC (UDP 443)
/// to any host is a datagram it does not grant. Addresses live in a namespace made for the test.
#[test]
fn quic_to_an_allowed_https_host_is_a_datagram_the_policy_did_not_grant() {
    if !can_run_root_tests("quic_to_an_allowed_https_host_is_a_datagram_the_policy_did_not_grant") {
        return;
    }
    let t = TempDir::new("proto-quic");
    let ns = NetNs::new(&["198.51.100.7/32", "2001:db8::7/128"]);
    let https = Sink::start(t.path(), SinkKind::Tcp { host: "198.51.100.7", port: 443, http: false }, Some(&ns.0));
    let quic4 = Sink::start(t.path(), SinkKind::Udp { host: "198.51.100.7", port: 443 }, Some(&ns.0));
    let quic6 = Sink::start(t.path(), SinkKind::Udp { host: "2001:db8::7", port: 443 }, Some(&ns.0));
    let d = Daemon::start(&agent_policy(
        "https-only",
        &["am-quic"],
        "deny",
        &[t.path()],
        &[q("0.0.0.0/0:443"), q("[::]/0:443")],
        "",
    ));
    let py = py_agent(t.path(), "am-quic");
    assert_eq!(send(&py, Some(&ns), "198.51.100.7", 443, "tcp", b"tls-ish"), Some(0), "TCP 443 is allowed");
    assert!(https.received(b"tls-ish"));
    // A QUIC Initial's first bytes: long header, version 1.
    let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
    initial.extend_from_slice(b"quic-exfil");
    let cases =
        [("198.51.100.7", "udp", &quic4), ("2001:db8::7", "udp", &quic6), ("198.51.100.7", "udp-connected", &quic4)];
    let names: Vec<String> = cases.iter().map(|(h, m, _)| format!("{h} {m}")).collect();
    each_variant(&names, |name| {
        let (host, mode, sink) = cases.iter().find(|(h, m, _)| format!("{h} {m}") == *name).unwrap();
        let seen = violations(&d, "https-only").len();
        let code = send(&py, Some(&ns), host, 443, mode, &initial);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(b"quic-exfil"), "{name}: the QUIC datagram reached the host");
        assert_eq!(code, Some(13), "{name}: UDP 443 was not refused with EPERM");
        let e = next_violation(&d, "https-only", &["net.send"], seen);
        assert_enforced(&e, "network.allow");
    });
}

/// UDP is granted by a table entry with `protocol = "udp"` (and both by `"any"`); the same
/// destination as a plain string stays TCP only, and a UDP grant is no TCP grant.
#[test]
fn a_udp_grant_is_written_as_a_table_and_the_string_form_stays_tcp() {
    if !can_run_root_tests("a_udp_grant_is_written_as_a_table_and_the_string_form_stays_tcp") {
        return;
    }
    let t = TempDir::new("proto-grant");
    let tcp_only = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: false }, None);
    let tcp_only_udp = Sink::start(t.path(), SinkKind::Udp { host: "127.0.0.1", port: tcp_only.port }, None);
    let udp_only_tcp = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: false }, None);
    let udp_only = Sink::start(t.path(), SinkKind::Udp { host: "127.0.0.1", port: udp_only_tcp.port }, None);
    let any_tcp = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: false }, None);
    let any_udp = Sink::start(t.path(), SinkKind::Udp { host: "127.0.0.1", port: any_tcp.port }, None);
    let allow = [
        q(format!("127.0.0.1:{}", tcp_only.port)),
        format!("{{ to = {}, protocol = \"udp\" }}", q(format!("127.0.0.1:{}", udp_only.port))),
        format!("{{ to = {}, protocol = \"any\" }}", q(format!("127.0.0.1:{}", any_tcp.port))),
    ];
    let policy = agent_policy("granted", &["am-grant"], "deny", &[t.path()], &allow, "");
    // `check` takes the table form, and explains a protocol it does not know.
    let file = t.join("policy.toml");
    fs::write(&file, &policy).unwrap();
    let (st, _, err) = output(Command::new(binary().unwrap()).arg("check").arg(&file));
    assert!(st.success(), "check refused the table form of an allow entry:\n{err}");
    let bad = t.join("bad.toml");
    fs::write(&bad, policy.replace("protocol = \"any\"", "protocol = \"sctp\"")).unwrap();
    let (st, _, err) = output(Command::new(binary().unwrap()).arg("check").arg(&bad));
    assert_eq!(st.code(), Some(1), "check took protocol = \"sctp\"");
    assert!(err.contains(&format!("{}:", bad.display())) && err.contains("protocol"), "{err}");

    let d = Daemon::start(&policy);
    let py = py_agent(t.path(), "am-grant");
    // (sink, host port, mode, allowed?)
    let cases: Vec<(&str, &Sink, u16, &str, bool)> = vec![
        ("string form, tcp", &tcp_only, tcp_only.port, "tcp", true),
        ("string form, udp", &tcp_only_udp, tcp_only.port, "udp", false),
        ("udp grant, udp", &udp_only, udp_only.port, "udp", true),
        ("udp grant, connected udp", &udp_only, udp_only.port, "udp-connected", true),
        ("udp grant, tcp", &udp_only_tcp, udp_only.port, "tcp", false),
        ("any grant, tcp", &any_tcp, any_tcp.port, "tcp", true),
        ("any grant, udp", &any_udp, any_tcp.port, "udp", true),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    each_variant(&names, |name| {
        let (_, sink, port, mode, allowed) = cases.iter().find(|c| c.0 == *name).unwrap();
        let marker = format!("marker {name}");
        let seen = violations(&d, "granted").len();
        let code = send(&py, None, "127.0.0.1", *port, mode, marker.as_bytes());
        std::thread::sleep(Duration::from_millis(300));
        if *allowed {
            assert_eq!(code, Some(0), "{name}: refused");
            assert!(sink.received(marker.as_bytes()), "{name}: nothing arrived");
        } else {
            assert_eq!(code, Some(13), "{name}: not refused with EPERM");
            assert!(!sink.received(marker.as_bytes()), "{name}: it arrived");
            let kind = if *mode == "tcp" { "net.connect" } else { "net.send" };
            let e = next_violation(&d, "granted", &[kind], seen);
            assert_enforced(&e, "network.allow");
        }
    });
}

/// `MODE PORT`: one socket operation an agent could use to take what leaves out of what the
/// boundary reads. Prints "done" if the process is still alive after it.
const PY_SOCKOPT: &str = r#"
import socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "lsrr":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 0x83, 7, 4]) + socket.inet_aton("127.0.0.1"))
    s.sendto(b"answer-lsrr", ("127.0.0.1", port))
elif mode == "ktls":
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.setsockopt(socket.IPPROTO_TCP, 31, b"tls")   # TCP_ULP
    except OSError as e:
        print("setsockopt:", e, flush=True)
    s.send(b"answer-ktls")
elif mode == "zerocopy":
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, 60, 1)              # SO_ZEROCOPY
    s.send(b"answer-zerocopy")
elif mode == "nftables":
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 12)   # NETLINK_NETFILTER
elif mode == "control":
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")  # clearing options is no write
print("done", flush=True)
"#;

/// Red team round 3, #6, #9, #11, #4: socket options and sockets that take a packet out of what
/// the boundary reads: a source route (the first hop is not the allowed destination), kernel
/// TLS (the kernel encrypts what no TLS hook reads; `SSL_sendfile` needs it), zero-copy sends
/// (a retransmission from pages the process can still change), netfilter's netlink (a NAT rule
/// moves an allowed connection elsewhere). Each is `net.raw_socket`; nothing reaches the sink.
/// Ordinary options, and clearing IP options, pass.
#[test]
fn socket_options_that_leave_the_boundary_are_refused() {
    if !can_run_root_tests("socket_options_that_leave_the_boundary_are_refused") {
        return;
    }
    let t = TempDir::new("sockopt");
    let tcp = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: false }, None);
    let udp = Sink::start(t.path(), SinkKind::Udp { host: "127.0.0.1", port: 0 }, None);
    let allow =
        [q(format!("127.0.0.1:{}", tcp.port)), format!("{{ to = \"127.0.0.1:{}\", protocol = \"udp\" }}", udp.port)];
    let d = Daemon::start(&agent_policy("sockopt", &["am-sockopt"], "kill", &[t.path()], &allow, ""));
    let py = py_agent(t.path(), "am-sockopt");
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_SOCKOPT, "control", &tcp.port.to_string()]));
    assert!(st.success() && out.contains("done"), "ordinary options were refused: {st}\n{out}{err}");
    let modes = ["lsrr", "ktls", "zerocopy", "nftables"];
    each_variant(&modes, |mode| {
        let port = if *mode == "lsrr" { udp.port } else { tcp.port };
        let seen = violations(&d, "sockopt").len();
        let (st, out, err) = output(Command::new(&py).args(["-c", PY_SOCKOPT, mode, &port.to_string()]));
        std::thread::sleep(Duration::from_millis(200));
        assert!(killed_by_sigkill(&st), "{mode}: the agent was not killed: {st}\n{out}{err}");
        assert!(!out.contains("done"), "{mode}: the agent went on: {out}");
        let marker = format!("answer-{mode}");
        assert!(!tcp.received(marker.as_bytes()) && !udp.received(marker.as_bytes()), "{mode}: bytes left");
        let e = next_violation(&d, "sockopt", &["net.raw_socket"], seen);
        assert_eq!(f(&e, "action"), "killed", "{mode}: {e}");
        if *mode != "nftables" {
            assert!(f(&e, "detail").starts_with("setsockopt("), "{mode}: {e}");
        }
    });
}
