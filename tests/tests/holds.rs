//! `action = "hold"`: a state-changing request waits for a person. An HTTPS POST is paused in
//! the kernel before it is encrypted; approval sends it exactly once, denial or timeout means it
//! never leaves. A held connect is refused, and approval grants exactly that destination to that
//! instance for a while. The approver is on the record; an agent cannot approve.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use agent_monitor_e2e::*;

const POST: &str = r#"
import http.client, ssl, sys
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ssl._create_unverified_context(), timeout=60)
c.request("POST", "/answer", body=b"rotate the key")
print(c.getresponse().status)
"#;

fn policy(ctl: &std::path::Path, port: u16, timeout: u64) -> String {
    format!(
        "[daemon]\nhold_timeout_secs = {timeout}\n\n[[agent]]\nname = \"held\"\naction = \"hold\"\n[agent.match]\ncomm = [\"am-hold\"]\n[agent.files]\nwritable = [\"/tmp\"]\n[agent.network]\nallow = [\"127.0.0.1:{port}\", \"unix:{}\"]\n",
        ctl.display()
    )
}

fn hold_id(e: &Value) -> String {
    let d = f(e, "detail");
    let i =
        d.find("agent-monitor approve ").expect("the held event says how to approve") + "agent-monitor approve ".len();
    d[i..].split(['`', ' ']).next().unwrap().to_string()
}

fn state(pid: u32) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .unwrap_or('?')
}

fn ctl(sock: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary().unwrap()).args(args).args(["--control-socket", sock]).output().unwrap()
}

#[test]
fn a_held_https_post_goes_out_once_on_approval_and_never_on_denial() {
    if !can_run_root_tests("a_held_https_post_goes_out_once_on_approval_and_never_on_denial") {
        return;
    }
    let t = TempDir::new("hold");
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, forum.port, 300), &["--control-socket", &s]);
    let agent = copy_binary(t.path(), &python3(), "am-hold");
    let port = forum.port.to_string();

    // Approved: paused before SSL_write, then sent exactly once.
    let mut child = Bg(Command::new(&agent).args(["-c", POST, &port]).stdout(Stdio::piped()).spawn().unwrap());
    let e = d.wait_event("held POST", |e| f(e, "action") == "held" && f(e, "kind") == "net.http_write");
    let id = hold_id(&e);
    wait_for("the agent to be stopped", 5, || (state(child.0.id()) == 'T').then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(forum.count("POST"), 0, "the held POST reached the server before approval");
    let status = ctl(&s, &["status", "--json"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&id), "status does not list {id}");
    // Whoever is on call reads the human status: the hold is there, with what to type.
    let human = String::from_utf8_lossy(&ctl(&s, &["status"]).stdout).into_owned();
    assert!(human.contains("holds: 1 pending") && human.contains("agent-monitor approve"), "{human}");
    assert!(human.lines().any(|l| l.contains(&id) && l.contains("net.http_write")), "{human}");
    let out = ctl(&s, &["approve", &id]);
    assert!(out.status.success(), "approve failed: {}", String::from_utf8_lossy(&out.stderr));
    let st = child.0.wait().unwrap();
    assert!(st.success(), "the approved agent did not finish: {st}");
    assert_eq!(forum.count("POST"), 1, "the approved POST was not sent exactly once");
    let decision = d.wait_event("decision", |e| f(e, "kind") == "hold.decision" && f(e, "hold") == id);
    assert_eq!((f(&decision, "decision"), f(&decision, "approver")), ("approved", "root"));
    assert_eq!(decision["approver_uid"], 0);

    // Denied: the agent dies, nothing is sent.
    let mut child = Bg(Command::new(&agent).args(["-c", POST, &port]).stdout(Stdio::null()).spawn().unwrap());
    let e = d.wait_event("second held POST", |e| f(e, "action") == "held" && hold_id(e) != id);
    let id2 = hold_id(&e);
    let out = ctl(&s, &["deny", &id2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = child.0.wait().unwrap();
    assert!(killed_by_sigkill(&st), "the denied agent was not killed: {st}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(forum.count("POST"), 1, "the denied POST reached the server");
    // Deciding twice is an error, and says so.
    let out = ctl(&s, &["approve", &id2]);
    assert!(!out.status.success());
    assert_eq!(d.metric("agent_monitor_hold_decisions_total", &[("outcome", "approved")]), Some(1.0));
    assert_eq!(d.metric("agent_monitor_hold_decisions_total", &[("outcome", "denied")]), Some(1.0));

    // An agent cannot approve (the control socket refuses agent processes).
    let mut child = Bg(Command::new(&agent).args(["-c", POST, &port]).stdout(Stdio::null()).spawn().unwrap());
    let e = d.wait_event("third held POST", |e| f(e, "action") == "held" && hold_id(e) != id && hold_id(e) != id2);
    let id3 = hold_id(&e);
    let dir = t.join("bin");
    fs::create_dir(&dir).unwrap();
    let am = copy_binary(&dir, &binary().unwrap().display().to_string(), "am-hold");
    let out = Command::new(&am).args(["approve", &id3, "--control-socket", &s]).output().unwrap();
    assert!(!out.status.success(), "an agent approved a hold");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is an agent process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(child.0.id()), 'T', "the hold did not stay paused");
    let _ = ctl(&s, &["deny", &id3]);
    let _ = child.0.wait();
    assert_eq!(forum.count("POST"), 1);
}

#[test]
fn unanswered_holds_time_out_and_held_connects_are_granted_then_expire() {
    if !can_run_root_tests("unanswered_holds_time_out_and_held_connects_are_granted_then_expire") {
        return;
    }
    let t = TempDir::new("holdtimeout");
    let forum = Forum::start(t.path(), "0.0.0.0", true, None);
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, forum.port, 2), &["--control-socket", &s]);
    let agent = copy_binary(t.path(), &python3(), "am-hold");
    let port = forum.port.to_string();

    let mut child = Bg(Command::new(&agent).args(["-c", POST, &port]).stdout(Stdio::null()).spawn().unwrap());
    d.wait_event("held POST", |e| f(e, "action") == "held");
    let st = child.0.wait().unwrap();
    assert!(killed_by_sigkill(&st), "an unanswered hold did not end in a kill: {st}");
    assert_eq!(forum.count("POST"), 0);
    let e = d.wait_event("timeout decision", |e| f(e, "kind") == "hold.decision");
    assert_eq!((f(&e, "decision"), f(&e, "outcome")), ("denied", "timeout"));

    // A held connect: refused now; approved for 3 s, the same instance's retry passes; once
    // the grant has expired, refused again.
    let attempt = format!(r#"socket.create_connection(("127.0.0.2", {}), timeout=3).close()"#, forum.port);
    let mut inst = retrying_agent(&agent, &attempt, t.path());
    let e = d.wait_event("held connect", |e| f(e, "action") == "held" && f(e, "kind") == "net.connect");
    assert_eq!(f(&e, "target"), format!("127.0.0.2:{port}"));
    let out = approve_for_3s_then_retry(&s, &hold_id(&e), t.path(), &mut inst);
    assert_eq!(out, ["EPERM", "ok", "EPERM"], "refused, granted, expired");
}

/// An agent (python3 copied as `agent`) that runs the statement `attempt` three times and
/// prints `ok` or `EPERM` for each: at once, once `dir/go` exists, once `dir/later` exists.
fn retrying_agent(agent: &Path, attempt: &str, dir: &Path) -> Bg {
    let script = format!(
        r#"
import os, socket, time
def attempt():
    try:
        {attempt}
        return "ok"
    except PermissionError:
        return "EPERM"
def wait(name):
    while not os.path.exists(os.path.join("{dir}", name)):
        time.sleep(0.05)
print(attempt(), flush=True)
wait("go")
print(attempt(), flush=True)
wait("later")
print(attempt(), flush=True)
"#,
        dir = dir.display()
    );
    Bg(Command::new(agent).args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap())
}

/// Approve hold `id` for 3 s, let the `retrying_agent` retry inside the grant and again once it
/// has expired; its three results.
fn approve_for_3s_then_retry(sock: &str, id: &str, dir: &Path, inst: &mut Bg) -> Vec<String> {
    let out = ctl(sock, &["approve", id, "--for", "3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(dir.join("go"), "").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    fs::write(dir.join("later"), "").unwrap();
    inst.0.wait_with_output_bounded()
}

trait WaitBounded {
    fn wait_with_output_bounded(&mut self) -> Vec<String>;
}

impl WaitBounded for std::process::Child {
    fn wait_with_output_bounded(&mut self) -> Vec<String> {
        use std::io::Read;
        let t = std::time::Instant::now();
        while self.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "the agent did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        self.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        out.lines().map(str::to_string).collect()
    }
}

const PLAIN_POST: &str = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/answer", body=b"rotate the key")
print(c.getresponse().status, flush=True)
"#;

/// Clear-text HTTP: the request is held in the kernel before it reaches the network and the
/// writer is stopped; approval sends it exactly once (TCP delivers the held segment), denial
/// kills the agent and the server never sees a byte of it.
#[test]
fn a_held_clear_text_post_is_held_in_the_kernel_then_sent_once_or_never() {
    if !can_run_root_tests("a_held_clear_text_post_is_held_in_the_kernel_then_sent_once_or_never") {
        return;
    }
    let t = TempDir::new("holdplain");
    let forum = Forum::start(t.path(), "127.0.0.1", false, None);
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, forum.port, 300), &["--control-socket", &s]);
    let agent = copy_binary(t.path(), &python3(), "am-hold");
    let port = forum.port.to_string();

    let mut child = Bg(Command::new(&agent).args(["-c", PLAIN_POST, &port]).stdout(Stdio::piped()).spawn().unwrap());
    let e = d.wait_event("held clear-text POST", |e| {
        f(e, "action") == "held" && f(e, "kind") == "net.http_write" && f(e, "layer") == "cgroup"
    });
    assert!(f(&e, "detail").starts_with("POST /answer HTTP/1.1"), "{e}");
    assert!(f(&e, "detail").contains("held in the kernel before it reached the network"), "{e}");
    let id = hold_id(&e);
    wait_for("the writer to be stopped", 5, || (state(child.0.id()) == 'T').then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(forum.count("POST"), 0, "the held POST reached the server before approval");
    let approved = std::time::Instant::now();
    let out = ctl(&s, &["approve", &id]);
    assert!(out.status.success(), "approve failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = child.0.wait_with_output_bounded();
    println!("approval to response: {:?}", approved.elapsed());
    assert_eq!(out, ["200"], "the approved agent did not get its answer");
    assert_eq!(forum.count("POST"), 1, "the approved POST was not received exactly once");

    // Denied: the agent dies, the server never sees the request.
    let mut child = Bg(Command::new(&agent).args(["-c", PLAIN_POST, &port]).stdout(Stdio::null()).spawn().unwrap());
    let e = d.wait_event("second held clear-text POST", |e| {
        f(e, "action") == "held" && f(e, "layer") == "cgroup" && hold_id(e) != id
    });
    let id2 = hold_id(&e);
    wait_for("the writer to be stopped", 5, || (state(child.0.id()) == 'T').then_some(()));
    let out = ctl(&s, &["deny", &id2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = child.0.wait().unwrap();
    assert!(killed_by_sigkill(&st), "the denied agent was not killed: {st}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(forum.count("POST"), 1, "the denied POST reached the server");
}

/// With BPF LSM, a file write under `hold` is refused (EPERM) and held as a request; approval
/// grants exactly that (instance, kind, path) for a while, so the retry passes, and it is
/// refused again once the grant has expired. (Where only the tracepoint layer sees file
/// writes nothing can refuse them: `hold` kills like `deny`; this test needs the VM tier.)
#[test]
fn a_held_file_write_is_refused_then_granted_then_expires() {
    if !can_run_root_tests("a_held_file_write_is_refused_then_granted_then_expires") {
        return;
    }
    let t = TempDir::new("holdfile");
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let policy = format!(
        "[[agent]]\nname = \"held\"\naction = \"hold\"\n[agent.match]\ncomm = [\"am-hold\"]\n[agent.files]\nwritable = [\"{}\"]\n",
        work.display()
    );
    let d = Daemon::start_with(&policy, &["--control-socket", &s]);
    if !d.lsm() {
        eprintln!("SKIPPED: BPF LSM is not active on this kernel: a file write cannot be refused and held here (`cargo xtask test --vm` runs this test)");
        return;
    }
    let outside = t.join("notes.txt");
    let agent = copy_binary(t.path(), &python3(), "am-hold");
    let attempt = format!(r#"with open("{}", "a") as f: f.write("x")"#, outside.display());
    let mut inst = retrying_agent(&agent, &attempt, &work);
    let e = d.wait_event("held file write", |e| f(e, "action") == "held" && f(e, "kind") == "file.write");
    assert_eq!((f(&e, "target"), f(&e, "layer")), (outside.display().to_string().as_str(), "bpf_lsm"));
    assert!(f(&e, "detail").contains("refused and held as a request"), "{e}");
    let id = hold_id(&e);
    let out = approve_for_3s_then_retry(&s, &id, &work, &mut inst);
    assert_eq!(out, ["EPERM", "ok", "EPERM"], "refused, granted, expired");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "x", "exactly the granted write happened");
    let decision = d.wait_event("decision", |e| f(e, "kind") == "hold.decision" && f(e, "hold") == id);
    assert_eq!((f(&decision, "decision"), f(&decision, "approver")), ("approved", "root"));
}

/// Issue 16: a person on call who is not root approves a hold. The daemon runs with exactly the
/// capabilities the shipped unit grants (its CapabilityBoundingSet, NoNewPrivileges), gives the
/// control socket to `admin_group` (a group of the system's name service, found by name), and a
/// member of that group (uid 65534 with the group as a supplementary one) approves: the request
/// goes out once and the record names that uid.
#[test]
fn a_member_of_admin_group_approves_under_the_units_capabilities() {
    if !can_run_root_tests("a_member_of_admin_group_approves_under_the_units_capabilities") {
        return;
    }
    if !have("setpriv") || !have("groupadd") {
        panic!("setpriv (util-linux) and groupadd (passwd) are needed");
    }
    // The unit's bounding set, as setpriv takes it.
    let unit =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-monitor.service")).unwrap();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    struct Group(String);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("groupdel").arg(&self.0).status();
        }
    }
    let group = Group(format!("am-approvers-{}", std::process::id()));
    assert!(Command::new("groupadd").arg(&group.0).status().unwrap().success(), "groupadd failed");
    let gid = String::from_utf8(Command::new("getent").args(["group", &group.0]).output().unwrap().stdout)
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .to_string();

    let t = TempDir::new("hold-group");
    fs::set_permissions(t.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let forum = Forum::start(t.path(), "127.0.0.1", true, None);
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let wrapper = t.join("agent-monitor-as-unit");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{caps} --no-new-privs {} \"$@\"\n",
            binary().unwrap().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pol =
        policy(&sock, forum.port, 300).replacen("[daemon]\n", &format!("[daemon]\nadmin_group = \"{}\"\n", group.0), 1);
    let launch =
        Launch { extra: &["--control-socket", &s], ..Launch::new(wrapper, TempDir::new("hold-group-d"), &pol) };
    let (d, _) =
        Daemon::launch(launch).unwrap_or_else(|e| panic!("{}", e.waiting_for("enforcing", Duration::from_secs(120))));
    let bnd = fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(
        bnd.lines().any(|l| l.starts_with("CapBnd:") && !l.ends_with("ffffffffff")),
        "not under the unit's set: {bnd}"
    );
    assert!(!d.log_text().contains("could not give the control socket"), "{}", d.log_text());

    let agent = copy_binary(t.path(), &python3(), "am-hold");
    let mut child =
        Bg(Command::new(&agent).args(["-c", POST, &forum.port.to_string()]).stdout(Stdio::null()).spawn().unwrap());
    let e = d.wait_event("held POST", |e| f(e, "action") == "held" && f(e, "kind") == "net.http_write");
    let id = hold_id(&e);
    let as_member = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", &format!("--groups={gid}")])
            .arg(binary().unwrap())
            .args(args)
            .args(["--control-socket", &s])
            .output()
            .unwrap()
    };
    let out = as_member(&["approve", &id]);
    assert!(out.status.success(), "the group member could not approve: {}", String::from_utf8_lossy(&out.stderr));
    let st = child.0.wait().unwrap();
    assert!(st.success(), "the approved agent did not finish: {st}");
    assert_eq!(forum.count("POST"), 1, "the approved POST was not sent exactly once");
    let decision = d.wait_event("decision", |e| f(e, "kind") == "hold.decision" && f(e, "hold") == id);
    assert_eq!(decision["approver_uid"], 65534, "{decision}");
    // Without the group, the same uid is refused.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary().unwrap())
        .args(["status", "--control-socket", &s])
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid 65534 without the group got a status");
}
