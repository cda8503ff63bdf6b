//! Issue 20, class 9: the control socket checks who is asking before it reads the request. A
//! request whose sender is an agent, descends from one, or holds a socket an agent connected
//! (handed on, or left behind by a short-lived child that exited before the daemon looked) is
//! refused; an agent cannot approve its own instance's hold (red team R16). A request line from
//! an authorised caller is bounded: 100 MB without a newline does not grow the daemon's memory.
use std::{
    fs,
    io::Write,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_monitor_e2e::{attack::*, *};

const HTTPS_POST: &str = r#"
import http.client, ssl, sys
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ssl._create_unverified_context(), timeout=120)
c.request("POST", "/answer", body=b"rotate the key")
print(c.getresponse().status, flush=True)
"#;

/// `CONTROL_SOCKET HOLD_ID ATTEMPTS [HELPER_SOCKET]`: each attempt, a child connects to the
/// control socket and exits at once (or, with a helper, hands the connected socket to that
/// process that is not an agent, which writes the request); without a helper, the agent writes
/// `approve HOLD_ID` on the socket its dead child connected. Exit 0 if an approval came back.
const PY_APPROVE_THROUGH_A_DEAD_CHILD: &str = r#"
import json, os, socket, sys, time
ctl, hold, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
helper = sys.argv[4] if len(sys.argv) > 4 else None
request = json.dumps({"cmd": "approve", "id": hold}).encode() + b"\n"
for i in range(attempts):
    s = socket.socket(socket.AF_UNIX)
    pid = os.fork()
    if pid == 0:
        try:
            if helper:
                h = socket.socket(socket.AF_UNIX)
                h.connect(helper)
            s.connect(ctl)
            if helper:
                socket.send_fds(h, [b"x"], [s.fileno()])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    if helper:
        s.close()
        time.sleep(0.05)
        continue
    try:
        s.sendall(request)
        s.settimeout(5)
        reply = s.recv(65536)
    except OSError as e:
        # The daemon closed the socket without reading it (refused): no approval.
        reply = json.dumps({"error": str(e)}).encode()
    s.close()
    if reply and b'"error"' not in reply:
        print("approved on attempt", i, reply[:300], flush=True)
        sys.exit(0)
print("refused on every attempt", flush=True)
sys.exit(13)
"#;

/// A process that is not an agent: takes descriptors passed on `sys.argv[1]`, writes the
/// approve request for `sys.argv[2]` on each once its sender is gone, logs each reply.
const PY_HELPER: &str = r#"
import json, os, socket, sys, time
path, hold, log = sys.argv[1], sys.argv[2], sys.argv[3]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(64)
print(os.getpid(), flush=True)
request = json.dumps({"cmd": "approve", "id": hold}).encode() + b"\n"
while True:
    c, _ = srv.accept()
    try:
        _, fds, _, _ = socket.recv_fds(c, 16, 4)
    except OSError:
        continue
    time.sleep(0.05)
    for fd in fds:
        s = socket.socket(fileno=fd)
        try:
            s.sendall(request); s.settimeout(5); reply = s.recv(65536)
        except OSError as e:
            reply = str(e).encode()
        with open(log, "ab") as f: f.write(reply.strip() + b"\n")
        s.close()
"#;

fn policy(ctl: &Path, port: u16, helper: &Path) -> String {
    format!(
        "[daemon]\nhold_timeout_secs = 300\n\n{}",
        agent_policy(
            "held",
            &["am-hold"],
            "hold",
            &[Path::new("/tmp")],
            &[
                q(format!("127.0.0.1:{port}")),
                q(format!("unix:{}", ctl.display())),
                q(format!("unix:{}", helper.display()))
            ],
            ""
        )
    )
}

fn hold_id(e: &Value) -> String {
    let d = f(e, "detail");
    let i =
        d.find("agent-monitor approve ").expect("the held event says how to approve") + "agent-monitor approve ".len();
    d[i..].split(['`', ' ']).next().unwrap().to_string()
}

struct Held {
    t: TempDir,
    forum: Forum,
    d: Daemon,
    sock: std::path::PathBuf,
    helper: std::path::PathBuf,
    post: Bg,
    id: String,
}

/// A daemon with the agent `held` (action hold) whose HTTPS POST is held now.
fn held(tag: &str) -> Held {
    let t = TempDir::new(tag);
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let sock = t.join("control.sock");
    let helper = t.join("helper.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, forum.port, &helper), &["--control-socket", &s]);
    let py = py_agent(t.path(), "am-hold");
    let post =
        Bg(Command::new(&py).args(["-c", HTTPS_POST, &forum.port.to_string()]).stdout(Stdio::null()).spawn().unwrap());
    let e = d.wait_event("held POST", |e| f(e, "action") == "held" && f(e, "kind") == "net.http_write");
    let id = hold_id(&e);
    Held { t, forum, d, sock, helper, post, id }
}

impl Held {
    /// The hold is still pending: nothing went out, the writer is stopped, root can deny it.
    fn assert_still_held_then_deny(mut self, what: &str) {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(self.forum.count("POST"), 0, "{what}: the held POST reached the server");
        assert_eq!(proc_state(self.post.0.id()), 'T', "{what}: the held writer is not stopped");
        let out = Command::new(binary().unwrap())
            .args(["deny", &self.id, "--control-socket"])
            .arg(&self.sock)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: root could not deny {}: {}",
            self.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = wait_bounded(&mut self.post.0, 20);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.forum.count("POST"), 0, "{what}: the denied POST reached the server");
        let _ = &self.d;
        let _ = &self.t;
    }
}

#[test]
fn an_agent_and_its_children_are_refused_before_their_request_is_read() {
    if !can_run_root_tests("an_agent_and_its_children_are_refused_before_their_request_is_read") {
        return;
    }
    let h = held("ctl-direct");
    let am = agent_copy(h.t.path(), &binary().unwrap().display().to_string(), "am-hold");
    let shell = agent_copy(h.t.path(), "/bin/bash", "am-hold");
    // The agent itself, and a child of an agent under the real binary's name.
    let direct = output(Command::new(&am).args(["approve", &h.id, "--control-socket"]).arg(&h.sock));
    let child = output(Command::new(&shell).arg("-c").arg(format!(
        "{} approve {} --control-socket {}",
        binary().unwrap().display(),
        h.id,
        h.sock.display()
    )));
    for (who, (st, out, err)) in [("the agent", direct), ("a child of the agent", child)] {
        assert!(!st.success(), "{who} approved its own hold: {out}");
        assert!(err.contains("is an agent process"), "{who}: {err}");
    }
    h.assert_still_held_then_deny("an agent or its child asking");
}

#[test]
fn an_agent_cannot_approve_its_hold_through_a_child_that_exited() {
    if !can_run_root_tests("an_agent_cannot_approve_its_hold_through_a_child_that_exited") {
        return;
    }
    let h = held("ctl-dead-child");
    let py = py_agent(h.t.path(), "am-hold");
    let (st, out, err) =
        output(Command::new(&py).args(["-c", PY_APPROVE_THROUGH_A_DEAD_CHILD]).arg(&h.sock).arg(&h.id).arg("100"));
    assert!(!st.success(), "the agent approved its own hold through a child that exited:\n{out}{err}");
    h.assert_still_held_then_deny("a socket connected by an exited child");
}

#[test]
fn a_control_socket_handed_to_a_non_agent_is_refused() {
    if !can_run_root_tests("a_control_socket_handed_to_a_non_agent_is_refused") {
        return;
    }
    let h = held("ctl-handoff");
    let log = h.t.join("helper-replies.log");
    let (_helper, _) = victim(PY_HELPER, &[&h.helper.display().to_string(), &h.id, &log.display().to_string()]);
    let py = py_agent(h.t.path(), "am-hold");
    let (st, out, err) = output(
        Command::new(&py)
            .args(["-c", PY_APPROVE_THROUGH_A_DEAD_CHILD])
            .arg(&h.sock)
            .arg(&h.id)
            .arg("50")
            .arg(&h.helper),
    );
    assert!(!killed_by_sigkill(&st), "the agent was killed handing on sockets: {st}\n{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    let replies = fs::read_to_string(&log).unwrap_or_default();
    assert!(replies.lines().count() > 0, "the helper received no socket: {out}{err}");
    // A refusal is an error reply, or a connection the daemon closed (EPIPE) after refusing.
    let accepted: Vec<&str> = replies.lines().filter(|l| l.starts_with('{') && !l.contains("\"error\"")).collect();
    assert!(accepted.is_empty(), "a request on a socket an agent connected was answered: {accepted:?}");
    h.assert_still_held_then_deny("a socket handed on to a process that is not an agent");
}

#[test]
fn a_100_mb_request_line_does_not_grow_the_daemon_without_bound() {
    if !can_run_root_tests("a_100_mb_request_line_does_not_grow_the_daemon_without_bound") {
        return;
    }
    let t = TempDir::new("ctl-flood");
    let d = Daemon::start(&agent_policy("idle", &["am-idle"], "kill", &[t.path()], &[], ""));
    let kb = |k: &str| -> u64 { proc_status(d.pid(), k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let before = kb("VmHWM");
    // Root, not an agent: authorised. The line never ends.
    let mut s = UnixStream::connect(&d.control).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < 100 << 20 && start.elapsed() < Duration::from_secs(60) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the daemon closed the connection: a cap
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = kb("VmHWM");
    eprintln!("sent {} MB; daemon peak RSS {} -> {} MB", sent >> 20, before >> 10, after >> 10);
    assert!(
        after < before + 32 * 1024,
        "the daemon's peak RSS grew by {} MB for one request line",
        (after - before) >> 10
    );
    drop(s);
    // Still serving.
    let out = Command::new(binary().unwrap())
        .args(["status", "--json", "--control-socket"])
        .arg(&d.control)
        .output()
        .unwrap();
    assert!(out.status.success(), "the daemon no longer answers: {}", String::from_utf8_lossy(&out.stderr));
}
