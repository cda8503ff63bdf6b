//! Issue 20, class 2: fail closed where a probe cannot decide. An argument the kernel programs
//! cannot read (a path, an `open_how`, a `sockaddr_un` on a page the process never touched), a
//! path longer than their buffer, and a security state evicted from an LRU map must each be a
//! violation, never "no decision".
//!
//! The cold-page attacker is `fixtures/cold_args.c` (red team R3); the others are python.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use agent_monitor_e2e::{attack::*, *};

struct Setup {
    t: TempDir,
    work: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let t = TempDir::new(tag);
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    Setup { t, work }
}

/// Path operations outside `writable` whose every path argument sits on an untouched page.
#[test]
fn path_operations_with_arguments_on_untouched_pages_are_still_judged() {
    if !can_run_root_tests("path_operations_with_arguments_on_untouched_pages_are_still_judged") {
        return;
    }
    let s = setup("cold-paths");
    let Some(cold) = cc(s.t.path(), "cold_args.c", "am-cold") else { return };
    let d = Daemon::start(&agent_policy("cold", &["am-cold"], "kill", &[&s.work], &[], ""));
    let o = |n: &str| s.t.join(n);
    for n in ["victim-unlink", "victim-rename", "victim-chmod", "victim-truncate"] {
        fs::write(o(n), "original\n").unwrap();
    }
    let w = s.work.display().to_string();
    // (operation, arguments, the object outside writable, event kinds)
    let cases: Vec<(&str, Vec<String>, PathBuf, Vec<&str>)> = vec![
        ("unlink", vec![o("victim-unlink").display().to_string()], o("victim-unlink"), vec!["file.delete"]),
        (
            "rename",
            vec![o("victim-rename").display().to_string(), format!("{w}/moved")],
            o("victim-rename"),
            vec!["file.rename"],
        ),
        ("chmod", vec![o("victim-chmod").display().to_string(), "666".into()], o("victim-chmod"), vec!["file.chmod"]),
        ("mkdir", vec![o("newdir").display().to_string()], o("newdir"), vec!["file.mkdir"]),
        ("truncate", vec![o("victim-truncate").display().to_string()], o("victim-truncate"), vec!["file.write"]),
    ];
    each_variant(&cases, |(op, args, target, kinds)| {
        let before = fs::symlink_metadata(target).is_ok().then(|| FileState::of(target));
        let res = output(Command::new(&cold).arg(&s.work).arg(op).args(args));
        assert_path_op_stopped(&d, "cold", kinds, target, before.as_ref(), &res);
    });
}

/// `openat2` with its `open_how` (the flags) and its path on untouched pages: the open for
/// writing is judged on what the kernel opened, and the file is unchanged on every tier.
#[test]
fn openat2_with_open_how_on_an_untouched_page_is_judged_as_a_write() {
    if !can_run_root_tests("openat2_with_open_how_on_an_untouched_page_is_judged_as_a_write") {
        return;
    }
    let s = setup("cold-openat2");
    let Some(cold) = cc(s.t.path(), "cold_args.c", "am-cold") else { return };
    let d = Daemon::start(&agent_policy("cold-open", &["am-cold"], "kill", &[&s.work], &[], ""));
    let victim = s.t.join("victim.txt");
    fs::write(&victim, "original\n").unwrap();
    let before = FileState::of(&victim);
    let (st, out, err) = output(Command::new(&cold).arg(&s.work).arg("openat2-append").arg(&victim));
    assert_stopped("openat2 O_WRONLY|O_APPEND with a cold open_how", &st, &out, &err);
    assert_eq!(FileState::of(&victim), before, "the file outside writable changed");
    let e = violation(&d, "cold-open", &["file.write"]);
    assert_enforced(&e, "files.writable");
    assert_eq!(f(&e, "target"), victim.display().to_string());
}

/// A Unix connect, and a Unix datagram, whose `sockaddr_un` is on an untouched page, to a path
/// the policy does not list: no message reaches the service.
#[test]
fn unix_addresses_on_untouched_pages_are_still_judged() {
    if !can_run_root_tests("unix_addresses_on_untouched_pages_are_still_judged") {
        return;
    }
    let s = setup("cold-unix");
    let Some(cold) = cc(s.t.path(), "cold_args.c", "am-cold") else { return };
    let stream_path = s.t.join("door.sock");
    let dgram_path = s.t.join("log.sock");
    let stream = Sink::start(s.t.path(), SinkKind::UnixStream(&stream_path), None);
    let dgram = Sink::start(s.t.path(), SinkKind::UnixDgram(&dgram_path), None);
    let d = Daemon::start(&agent_policy("cold-unix", &["am-cold"], "kill", &[&s.work], &[], ""));
    let cases = [("unix-connect", &stream, &stream_path), ("unix-sendto", &dgram, &dgram_path)];
    each_variant(&cases.iter().map(|(op, _, p)| (*op, (*p).clone())).collect::<Vec<_>>(), |(op, path)| {
        let sink = if *op == "unix-connect" { &stream } else { &dgram };
        let (st, out, err) = output(Command::new(&cold).arg(&s.work).arg(op).arg(path).arg("pwned-cold"));
        assert_stopped(&format!("{op} with a cold sockaddr_un"), &st, &out, &err);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(b"pwned-cold"), "the unlisted service received: {}", sink.shown());
        let target = format!("unix:{}", path.display());
        let e = d.wait_event(&format!("ipc.connect {target}"), |e| {
            f(e, "agent") == "cold-unix" && f(e, "kind") == "ipc.connect" && f(e, "target") == target
        });
        assert_enforced(&e, "network.allow");
        if d.lsm() {
            assert_eq!(sink.accepts(), 0, "BPF LSM is up: the connect must be refused before it connects");
        }
    });
}

/// `writable/AAAA…/../../outside`: longer than the kernel programs' path buffer, so its
/// beginning (inside `writable`) must not decide.
#[test]
fn a_path_longer_than_the_probe_buffer_is_not_matched_on_its_prefix() {
    if !can_run_root_tests("a_path_longer_than_the_probe_buffer_is_not_matched_on_its_prefix") {
        return;
    }
    let s = setup("longpath");
    let long_a = s.work.join("A".repeat(240));
    let long_b = s.work.join("B".repeat(120)).join("C".repeat(120));
    fs::create_dir_all(&long_a).unwrap();
    fs::create_dir_all(&long_b).unwrap();
    let d = Daemon::start(&agent_policy("longpath", &["am-long"], "kill", &[&s.work], &[], ""));
    let py = py_agent(s.t.path(), "am-long");
    let o = |n: &str| s.t.join(n);
    let via_a = |n: &str| format!("{}/../../{n}", long_a.display());
    let via_b = |n: &str| format!("{}/../../../{n}", long_b.display());
    for n in ["v-unlink", "v-chmod", "v-append", "v-unlink-b", "v-truncate"] {
        fs::write(o(n), "original\n").unwrap();
    }
    fs::write(s.work.join("inside.txt"), "mine\n").unwrap();
    // (operation, arguments, the object outside writable, event kinds)
    let cases: Vec<(&str, Vec<String>, PathBuf, Vec<&str>)> = vec![
        ("unlink", vec![via_a("v-unlink")], o("v-unlink"), vec!["file.delete"]),
        ("unlink", vec![via_b("v-unlink-b")], o("v-unlink-b"), vec!["file.delete"]),
        ("chmod", vec![via_a("v-chmod")], o("v-chmod"), vec!["file.chmod"]),
        ("mkdir", vec![via_a("v-newdir")], o("v-newdir"), vec!["file.mkdir"]),
        ("truncate", vec![via_a("v-truncate")], o("v-truncate"), vec!["file.write"]),
        (
            "rename",
            vec![s.work.join("inside.txt").display().to_string(), via_a("v-moved")],
            o("v-moved"),
            vec!["file.rename"],
        ),
        // An open is judged on the opened file: this one is closed already (a control).
        ("append", vec![via_a("v-append")], o("v-append"), vec!["file.write"]),
    ];
    each_variant(&cases, |(op, args, target, kinds)| {
        assert!(args[0].len() > 252 || args.last().unwrap().len() > 252, "the path is not long enough: {args:?}");
        let before = fs::symlink_metadata(target).is_ok().then(|| FileState::of(target));
        let seen = violations(&d, "longpath").len();
        let (st, out, err) = output(Command::new(&py).args(["-c", PY_PATH_OP, op]).args(args));
        assert_stopped(&format!("{op} {args:?}"), &st, &out, &err);
        // The event: this kind, by this agent (its target may be the long name as given).
        let e = next_violation(&d, "longpath", kinds, seen);
        assert_enforced(&e, "files.writable");
        let after_effect = f(&e, "detail").contains("completed before the kill");
        if d.lsm() || !after_effect {
            let now = fs::symlink_metadata(target).is_ok().then(|| FileState::of(target));
            assert_eq!(now, before, "{} changed although the event does not say so: {e}", target.display());
        }
    });
}

const PY_KEEPALIVE_AFTER_CHURN: &str = r#"
import socket, sys
forum, churn, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def request(s, method, path, body=b""):
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: forum\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
keep = socket.create_connection(("127.0.0.1", forum), timeout=5)
keep.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request(keep, "GET", "/question")
keep.recv(65536)
print("read the question", flush=True)
# Allowed connects to a port where nothing listens: each is an allowed socket the kernel
# programs record (the connect hook runs before the SYN), refused by the peer at once.
for i in range(n):
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", churn))
    except ConnectionRefusedError:
        pass
    c.close()
print(f"{n} connections made", flush=True)
request(keep, "POST", "/answer", b"answer=after-churn")
keep.settimeout(5)
try:
    print(keep.recv(65536)[:12], flush=True)
except OSError as e:
    print(e, flush=True)
"#;

/// Tens of thousands of allowed connects overflow the socket table (an LRU map of 16,384
/// entries today): the keep-alive connection opened first must still be checked, and a POST
/// on it refused. (20,000 connects did not always evict the first entry here: LRU eviction is
/// approximate; 60,000 did, in every run.)
#[test]
fn an_allowed_keep_alive_connection_is_still_checked_after_60000_connects() {
    if !can_run_root_tests("an_allowed_keep_alive_connection_is_still_checked_after_60000_connects") {
        return;
    }
    let s = setup("lru");
    let forum = Forum::start(s.t.path(), "127.0.0.1", false, None);
    let closed = port();
    let allow = [q(format!("127.0.0.1:{}", forum.port)), q(format!("127.0.0.1:{closed}"))];
    let d = Daemon::start(&agent_policy("churn", &["am-churn"], "kill", &[&s.work], &allow, ""));
    let py = py_agent(s.t.path(), "am-churn");
    let mut child = Bg(Command::new(&py)
        .args(["-c", PY_KEEPALIVE_AFTER_CHURN, &forum.port.to_string(), &closed.to_string(), "60000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let st = wait_bounded(&mut child.0, 240);
    let mut out = String::new();
    use std::io::Read;
    let _ = child.0.stdout.take().unwrap().read_to_string(&mut out);
    assert!(out.contains("60000 connections made"), "the churn did not complete: {st}\n{out}");
    assert!(killed_by_sigkill(&st), "the POST on the old keep-alive connection was not stopped: {st}\n{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(forum.count("GET"), 1, "{:?}", forum.requests());
    assert_eq!(forum.count("POST"), 0, "the POST reached the server: {:?}", forum.requests());
    let e = violation(&d, "churn", &["net.http_write"]);
    assert_enforced(&e, "network.http_methods");
    assert!(f(&e, "detail").starts_with("POST /answer"), "{e}");
}
