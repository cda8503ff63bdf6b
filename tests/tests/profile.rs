//! Issue 17, from alert to kill with evidence, end to end: a real daemon records an agent's run
//! with `audit = true`; `agent-monitor profile` learns a policy from that record and `agent-monitor
//! policy test` replays the record through a candidate's decisions.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use agent_monitor_e2e::{attack::*, *};

/// The task the agent is trusted with: files under `work/out` (a per-run temporary directory
/// in it, a symlink there that leads out of `writable`, a rename, a delete), a read and a POST to the forum's API, a message to a local
/// service. Prints nothing; exits 0 when every step worked.
fn task(work: &Path, port: u16, sock: &Path) -> String {
    format!(
        r#"
import os, socket, tempfile, urllib.request
w = {work:?}
os.makedirs(w + "/out", exist_ok=True)
t = tempfile.mkdtemp(prefix="tmp.", dir=w + "/out")
open(t + "/scratch", "w").write("x")
os.symlink("/etc/hostname", t + "/link")
open(w + "/out/report.md", "w").write("r")
os.rename(w + "/out/report.md", w + "/out/final.md")
os.unlink(t + "/scratch")
urllib.request.urlopen("http://127.0.0.1:{port}/v1/models").read()
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:{port}/v1/messages", data=b"hello", method="POST")).read()
c = socket.socket(socket.AF_UNIX); c.connect({sock:?}); c.send(b"status"); c.close()
"#,
        work = work.display().to_string(),
        sock = sock.display().to_string()
    )
}

fn am(args: &[&str]) -> Output {
    let o = Command::new(binary().unwrap()).args(args).output().expect("run agent-monitor");
    eprintln!(
        "agent-monitor {}: {}\n{}{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `policy test --json` of `candidate` against `events`: (exit code, the (kind, target) pairs it
/// would refuse).
fn replay(candidate: &Path, events: &Path) -> (i32, BTreeSet<(String, String)>, Value) {
    let o =
        am(&["policy", "test", &candidate.display().to_string(), "--events", &events.display().to_string(), "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("policy test --json prints JSON");
    let refused = v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (f(g, "kind").to_string(), f(g, "target").to_string()))
        .collect();
    (o.status.code().unwrap_or(-1), refused, v)
}

#[test]
fn a_learned_profile_lets_the_task_run_under_kill_and_policy_test_names_what_a_narrowing_cuts() {
    if !can_run_root_tests("a_learned_profile_lets_the_task_run_under_kill_and_policy_test_names_what_a_narrowing_cuts")
    {
        return;
    }
    let t = TempDir::new("learn");
    // The work directory at a name that is not per-run (the test's own directory is: a profile
    // would rightly collapse it).
    let stable = TempDir::at(PathBuf::from("/tmp/am-e2e-profile-work")).unwrap();
    let work = stable.join("work");
    // (out/ is there before the task: creating it would be a write to work/ itself)
    fs::create_dir_all(work.join("out")).unwrap();
    let forum = Forum::start(t.path(), "127.0.0.1", false, None);
    let sock = t.join("svc.sock");
    let svc = Sink::start(t.path(), SinkKind::UnixStream(&sock), None);
    let py = py_agent(t.path(), "am-learn");
    let script = task(&work, forum.port, &sock);

    // 1. The learning run: alert-only, auditing, with a first guess of a policy (the forum for
    // reads, no local service). The task completes; its writes are recorded as violations.
    let guess =
        agent_policy("learner", &["am-learn"], "alert", &[&work], &[q(format!("127.0.0.1:{}", forum.port))], "")
            .replace("action = \"alert\"", "action = \"alert\"\naudit = true");
    let mut d = Daemon::start(&guess);
    let st = run(Command::new(&py).arg("-c").arg(&script));
    assert!(st.success(), "the task failed under the alert-only learning run: {st}");
    assert_eq!(forum.count("POST"), 1);
    d.wait_event("the unix connect", |e| f(e, "kind") == "ipc.connect");
    d.stop();
    let recorded: Vec<Value> = d.events();
    let log = t.join("learning.jsonl");
    fs::copy(&d.events, &log).unwrap();
    let violations: BTreeSet<(String, String)> = recorded
        .iter()
        .filter(|e| f(e, "verdict") == "violation")
        .map(|e| (f(e, "kind").to_string(), f(e, "target").to_string()))
        .collect();
    assert!(violations.contains(&("ipc.connect".into(), format!("unix:{}", sock.display()))), "{violations:?}");
    assert!(violations.iter().any(|(k, _)| k == "net.http_write"), "{violations:?}");

    // 2. The replay agrees with the kernel: the policy the run was recorded under refuses, on
    // replay, exactly what the kernel called a violation.
    let guess_file = t.join("guess.toml");
    fs::write(&guess_file, &guess).unwrap();
    let (code, refused, _) = replay(&guess_file, &log);
    assert_eq!(code, 1, "policy test must fail when the candidate refuses something");
    assert_eq!(refused, violations, "replay and kernel disagree");

    // 3. The learned profile: `check` accepts it, and its replay refuses nothing.
    let o = am(&["profile", "--agent", "learner", "--events", &log.display().to_string(), "--action", "kill"]);
    assert!(o.status.success());
    let learned = String::from_utf8(o.stdout).unwrap();
    let learned_file = t.join("learned.toml");
    fs::write(&learned_file, &learned).unwrap();
    assert!(am(&["check", &learned_file.display().to_string()]).status.success(), "{learned}");
    assert!(
        learned.contains(&format!("\"{}\"", work.join("out").display())),
        "the temporary directory collapses into out/: {learned}"
    );
    assert!(!learned.contains("tmp."), "a per-run name in the profile: {learned}");
    assert!(learned.contains("paths = [\"/v1/messages\"]") && learned.contains("writes (POST)"), "{learned}");
    assert!(learned.contains("events, first 20"), "evidence on each line: {learned}");
    let (code, refused, v) = replay(&learned_file, &log);
    assert_eq!((code, refused.len()), (0, 0), "the learned profile refuses what it was learned from: {v}");

    // 4. A narrowing (no local service, and POST taken away) is named exactly.
    let narrowed: String = learned
        .lines()
        .filter(|l| !l.contains("unix:"))
        .map(|l| if l.contains("methods = [") { format!("  \"127.0.0.1:{}\",", forum.port) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let narrowed_file = t.join("narrowed.toml");
    fs::write(&narrowed_file, &narrowed).unwrap();
    let (code, refused, v) = replay(&narrowed_file, &log);
    assert_eq!(code, 1);
    let posts = recorded.iter().filter(|e| f(e, "kind") == "net.http_write" && f(e, "detail").starts_with("POST "));
    let mut want: BTreeSet<(String, String)> =
        posts.map(|e| ("net.http_write".to_string(), f(e, "target").to_string())).collect();
    want.insert(("ipc.connect".into(), format!("unix:{}", sock.display())));
    assert_eq!(refused, want, "{v}");
    assert!(v["unused"].as_array().unwrap().is_empty(), "{v}");

    // 5. Under kill with the learned profile, the same task completes, and a write outside it is
    // still stopped.
    let d = Daemon::start(&learned);
    let before = (forum.count("POST"), svc.received(b"status"));
    let st = run(Command::new(&py).arg("-c").arg(&script));
    assert!(st.success(), "the task failed under its learned profile: {st}");
    assert_eq!(forum.count("POST"), before.0 + 1);
    assert!(svc.received(b"status"));
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let st =
        run(Command::new(&py).arg("-c").arg(format!("open({:?}, 'a').write('pwned')", outside.display().to_string())));
    assert!(killed_by_sigkill(&st), "a write outside the learned profile was not killed: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");
    let e = d.wait_event("the refused write", |e| f(e, "kind") == "file.write" && f(e, "verdict") == "violation");
    assert_eq!(f(&e, "rule"), "files.writable");
    let _: PathBuf = outside;
}

/// The CLI's errors: a candidate with an error is named at FILE:LINE:COL (exit 2), and a
/// profile asked of an agent the log never saw says which agents it has.
#[test]
fn policy_test_and_profile_refuse_bad_input_clearly() {
    let Some(_) = binary() else { return };
    let t = TempDir::new("learn-cli");
    let log = t.join("events.jsonl");
    fs::write(&log, "{\"ts\":\"2026-12-05T00:00:00Z\",\"agent\":\"a\",\"kind\":\"file.write\",\"target\":\"/etc/x\",\"verdict\":\"violation\",\"rule\":\"files.writable\",\"detail\":\"\",\"comm\":\"a\"}\n").unwrap();
    let bad = t.join("bad.toml");
    fs::write(&bad, "[[agent]]\nname = \"a\"\naction = \"explode\"\n").unwrap();
    let o = am(&["policy", "test", &bad.display().to_string(), "--events", &log.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{}:3:", bad.display())));
    let o = am(&["profile", "--agent", "nobody", "--events", &log.display().to_string()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("agents seen: a"));
    let o = am(&["policy", "test", &bad.display().to_string(), "--events", "/nonexistent/events.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
}
