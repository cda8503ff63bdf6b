//! The control socket as an operator uses it: `status`, `events --follow`, `reload`, and who
//! may use it (root yes; another uid no; an agent process never).
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use agent_monitor_e2e::*;

fn policy(ctl: &std::path::Path, work: &std::path::Path) -> String {
    format!(
        "[daemon]\ncontrol_socket = \"{c}\"\n\n[[agent]]\nname = \"ctl-agent\"\naction = \"deny\"\n[agent.match]\ncomm = [\"am-ctl\"]\n[agent.files]\nwritable = [\"{w}\"]\n[agent.network]\nallow = [\"unix:{c}\"]\n",
        c = ctl.display(),
        w = work.display()
    )
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(binary().unwrap()).args(args).output().unwrap()
}

#[test]
fn status_events_and_reload_over_the_control_socket() {
    if !can_run_root_tests("status_events_and_reload_over_the_control_socket") {
        return;
    }
    let t = TempDir::new("ctl");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, &work), &["--control-socket", &s]);
    let agent = copy_binary(t.path(), &python3(), "am-ctl");
    let _sleeper = Bg(Command::new(&agent).args(["-c", "import time; time.sleep(60)"]).spawn().unwrap());
    let sleeper_pid = _sleeper.0.id();

    let status = wait_for("the agent in status", 10, || {
        let out = cli(&["status", "--json", "--control-socket", &s]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let pids: Vec<u64> = v["agents"][0]["processes"].as_array()?.iter().filter_map(|p| p["pid"].as_u64()).collect();
        pids.contains(&(sleeper_pid as u64)).then_some(v)
    });
    assert_eq!(status["layers"]["tracepoint"], true);
    assert_eq!(status["layers"]["cgroup"], true);
    assert_eq!(status["layers"]["bpf_lsm"], false);
    assert_eq!(status["agents"][0]["name"], "ctl-agent");
    assert!(status["layers"]["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("bpf_lsm")));
    let human = cli(&["status", "--control-socket", &s]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("ctl-agent (action deny): 1 process(es)"));

    // events --follow streams a violation as it happens.
    let mut follow = Bg(Command::new(binary().unwrap())
        .args(["events", "--follow", "--control-socket", &s])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let st = run(Command::new(&agent).args(["-c", &format!("open('{}/x', 'w')", t.path().display())]));
    assert!(!st.success());
    let mut out = follow.0.stdout.take().unwrap();
    let line = {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(&mut out);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "the event stream ended");
            if line.contains("\"verdict\":\"violation\"") {
                break line;
            }
        }
    };
    assert!(line.contains("file.write"), "{line}");

    // reload: a bad policy is refused and reported; the good one is taken.
    fs::write(&d.config, "[[agent]]\nname = \"x\"\n").unwrap();
    let out = cli(&["reload", "--control-socket", &s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still enforcing"), "{err}");
    // What `systemctl reload` (ExecReload runs this command) prints: FILE:LINE:COL: message.
    let at = format!("{}:1:", d.config.display());
    assert!(err.lines().any(|l| l.starts_with(&at)), "no {at}COL: line: {err}");
    fs::write(&d.config, policy(&sock, &work)).unwrap();
    let out = cli(&["reload", "--control-socket", &s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn only_root_and_never_an_agent_may_control_the_daemon() {
    if !can_run_root_tests("only_root_and_never_an_agent_may_control_the_daemon") {
        return;
    }
    let t = TempDir::new("ctlauth");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let sock = t.join("control.sock");
    let s = sock.display().to_string();
    let d = Daemon::start_with(&policy(&sock, &work), &["--control-socket", &s]);
    // Another uid: the socket is 0600 root; even with the file opened up, the credential check refuses.
    fs::set_permissions(t.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary().unwrap())
        .args(["status", "--control-socket", &s])
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid 65534 got a status");
    // An agent process, even as root: refused by the daemon, whose log says why.
    let ctl = copy_binary(t.path(), &binary().unwrap().display().to_string(), "am-ctl");
    let out = Command::new(&ctl).args(["status", "--control-socket", &s]).output().unwrap();
    assert!(!out.status.success(), "an agent process got a status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is an agent process"), "status {}: {err}\n{}", out.status, d.log_text());
    let mut d = d;
    d.wait_log("agents cannot control agent-monitor", Duration::from_secs(5));
}

#[test]
fn systemd_hears_ready_only_once_enforcing_and_then_watchdog_pings() {
    if !can_run_root_tests("systemd_hears_ready_only_once_enforcing_and_then_watchdog_pings") {
        return;
    }
    let t = TempDir::new("notify");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    // Play systemd: a datagram socket for sd_notify, a 1 s watchdog.
    let notify = t.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ctl = t.join("control.sock");
    let c = ctl.display().to_string();
    let n = notify.display().to_string();
    let d = Daemon::start_env(
        &policy(&ctl, &work),
        &["--control-socket", &c],
        &[("NOTIFY_SOCKET", &n), ("WATCHDOG_USEC", "1000000")],
    );
    let mut buf = [0u8; 256];
    let len = sock.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..len]).to_string();
    assert!(first.starts_with("READY=1"), "first notification: {first:?}");
    // READY comes after the programs are attached: the log already says so.
    assert!(d.log_text().contains("eBPF programs attached"));
    let mut pings = 0;
    let t0 = std::time::Instant::now();
    while pings < 2 && t0.elapsed() < Duration::from_secs(5) {
        let len = sock.recv(&mut buf).unwrap();
        if &buf[..len] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
    assert_eq!(pings, 2, "no watchdog pings at half the period");
}
