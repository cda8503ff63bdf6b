//! Issue 20, class 8: held means held. A process stopped for a `hold` continues only on a
//! decision: a SIGCONT from another process of the same instance, or from a process that is not
//! an agent, must not let the held request out. The server receives nothing until
//! `agent-monitor approve` (then exactly one request), and nothing at all after
//! `agent-monitor deny`.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use agent_monitor_e2e::{attack::*, *};

const HTTPS_POST: &str = r#"
import http.client, ssl, sys
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ssl._create_unverified_context(), timeout=60)
c.request("POST", "/answer", body=b"rotate the key")
print(c.getresponse().status, flush=True)
"#;

const PLAIN_POST: &str = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/answer", body=b"rotate the key")
print(c.getresponse().status, flush=True)
"#;

fn policy(ctl: &Path, port: u16) -> String {
    format!(
        "[daemon]\nhold_timeout_secs = 300\n\n{}",
        agent_policy(
            "held",
            &["am-hold"],
            "hold",
            &[Path::new("/tmp")],
            &[q(format!("127.0.0.1:{port}")), q(format!("unix:{}", ctl.display()))],
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

fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary().unwrap()).args(args).arg("--control-socket").arg(sock).output().unwrap()
}

/// Who sends the SIGCONT, and what the person decides afterwards.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// The agent's own shell, another process of the instance, then `deny`.
    SiblingThenDeny,
    /// A process that is not an agent (this test), then `approve`.
    OutsiderThenApprove,
}

/// An agent shell (a copy of bash named am-hold) that starts the POST in the background, waits
/// for `go`, then (for `SiblingThenDeny`) sends it SIGCONT itself.
fn held_post(t: &TempDir, d: &Daemon, forum: &Forum, script: &str, release: Release, layer: &str) {
    let sock = d.control.clone();
    let shell = agent_copy(t.path(), "/bin/bash", "am-hold");
    let (pidfile, go) = (t.join("post.pid"), t.join("go"));
    let _ = fs::remove_file(&pidfile);
    let _ = fs::remove_file(&go);
    let sibling = matches!(release, Release::SiblingThenDeny);
    let code = format!(
        r#"{py} -c "$1" {port} & echo $! > {pid}; while [ ! -e {go} ]; do sleep 0.05; done; {cont} wait $!; echo "post-status $?""#,
        py = python3(),
        port = forum.port,
        pid = pidfile.display(),
        go = go.display(),
        cont = if sibling {
            "kill -CONT $(cat ".to_string() + &pidfile.display().to_string() + ");"
        } else {
            String::new()
        },
    );
    let mut agent =
        Bg(Command::new(&shell).args(["-c", &code, "post", script]).stdout(Stdio::piped()).spawn().unwrap());
    let e = d.wait_event("held POST", |e| {
        f(e, "action") == "held" && f(e, "kind") == "net.http_write" && f(e, "layer") == layer
    });
    let id = hold_id(&e);
    let pid: u32 = wait_file(&pidfile, 5).trim().parse().unwrap();
    wait_for("the writer to be stopped", 5, || (proc_state(pid) == 'T').then_some(()));
    // The release attempt.
    fs::write(&go, "").unwrap();
    if !sibling {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(forum.count("POST"), 0, "{release:?}: the held POST reached the server before any decision");
    match release {
        Release::SiblingThenDeny => {
            let _ = ctl(&sock, &["deny", &id]);
            let st = wait_bounded(&mut agent.0, 20);
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(forum.count("POST"), 0, "{release:?}: the denied POST reached the server");
            assert!(!st.success() || killed_by_sigkill(&st), "{release:?}: {st}");
        }
        Release::OutsiderThenApprove => {
            let out = ctl(&sock, &["approve", &id]);
            let st = wait_bounded(&mut agent.0, 20);
            std::thread::sleep(Duration::from_millis(500));
            if out.status.success() {
                assert!(st.success(), "{release:?}: the approved agent did not finish: {st}");
                assert_eq!(forum.count("POST"), 1, "{release:?}: the approved POST was not sent exactly once");
            } else {
                // The release attempt ended the hold (the instance was killed): nothing went out.
                assert_eq!(forum.count("POST"), 0, "{release:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

#[test]
fn a_held_https_post_is_not_released_by_a_sigcont() {
    if !can_run_root_tests("a_held_https_post_is_not_released_by_a_sigcont") {
        return;
    }
    each_variant(&[Release::SiblingThenDeny, Release::OutsiderThenApprove], |release| {
        let t = TempDir::new("hold-cont");
        let forum = Forum::start(t.path(), "127.0.0.1", true, None);
        let sock = t.join("control.sock");
        let s = sock.display().to_string();
        let d = Daemon::start_with(&policy(&sock, forum.port), &["--control-socket", &s]);
        held_post(&t, &d, &forum, HTTPS_POST, *release, "uprobe");
    });
}

#[test]
fn a_held_clear_text_post_is_not_released_by_a_sigcont() {
    if !can_run_root_tests("a_held_clear_text_post_is_not_released_by_a_sigcont") {
        return;
    }
    each_variant(&[Release::SiblingThenDeny, Release::OutsiderThenApprove], |release| {
        let t = TempDir::new("hold-cont-plain");
        let forum = Forum::start(t.path(), "127.0.0.1", false, None);
        let sock = t.join("control.sock");
        let s = sock.display().to_string();
        let d = Daemon::start_with(&policy(&sock, forum.port), &["--control-socket", &s]);
        held_post(&t, &d, &forum, PLAIN_POST, *release, "cgroup");
    });
}
