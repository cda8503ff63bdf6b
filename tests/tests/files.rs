//! The file-write boundary and agent identity, end to end: the real daemon, real eBPF, real
//! agent processes (copies of bash and python3 selected by comm), real files.
use std::{fs, path::PathBuf, process::Command, time::Duration};

use agent_monitor_e2e::*;

fn policy(name: &str, comm: &str, action: &str, writable: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[[agent]]
name = "{name}"
action = "{action}"
[agent.match]
comm = ["{comm}"]
[agent.files]
writable = ["{}"]
{extra}
"#,
        writable.display()
    )
}

fn sh(agent: &std::path::Path, script: &str, cwd: &std::path::Path) -> std::process::ExitStatus {
    run(Command::new(agent).arg("-c").arg(script).current_dir(cwd))
}

#[test]
fn kill_on_append_outside_writable_and_not_for_others() {
    if !can_run_root_tests("kill_on_append_outside_writable_and_not_for_others") {
        return;
    }
    let t = TempDir::new("append");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let d = Daemon::start(&policy("appender", "am-append", "kill", &work, ""));
    let agent = copy_binary(t.path(), "/bin/bash", "am-append");

    // Inside `writable`: works.
    let st = sh(&agent, &format!("echo inside > {}/in.txt", work.display()), t.path());
    assert!(st.success(), "write inside writable failed: {st}");
    assert_eq!(fs::read_to_string(work.join("in.txt")).unwrap(), "inside\n");

    // Outside: SIGKILL before the write, file unchanged, nothing after it runs.
    let st = sh(
        &agent,
        &format!("echo appended >> {}; echo survived > {}/after.txt", outside.display(), work.display()),
        t.path(),
    );
    assert!(killed_by_sigkill(&st), "agent was not killed by SIGKILL: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n", "the file outside writable changed");
    assert!(!work.join("after.txt").exists(), "the agent ran on after the violation");

    let e = d.wait_event("file.write violation", |e| f(e, "kind") == "file.write" && f(e, "verdict") == "violation");
    assert_eq!(f(&e, "agent"), "appender");
    assert_eq!(f(&e, "target"), outside.display().to_string());
    assert_eq!(f(&e, "action"), "killed");
    assert_eq!(f(&e, "comm"), "am-append");
    assert_eq!(f(&e, "rule"), "files.writable");
    if d.metric("agent_monitor_layer_up", &[("layer", "bpf_lsm")]) == Some(1.0) {
        // Refused by the LSM layer before the open (VM tier).
        assert_eq!(f(&e, "layer"), "bpf_lsm");
    } else {
        assert_eq!(f(&e, "layer"), "tracepoint");
        assert!(f(&e, "detail").contains("O_APPEND"), "{e}");
    }
    assert!(!f(&e, "run").is_empty() && !f(&e, "id").is_empty() && !f(&e, "ts").is_empty());
    for k in ["pid", "ppid", "uid"] {
        assert!(e.get(k).and_then(Value::as_u64).is_some(), "missing {k}: {e}");
    }
    // The write inside `writable` was no violation.
    assert!(d.settle_events(|e| f(e, "verdict") == "violation" && f(e, "target").contains("in.txt")).is_empty());

    // A process that is not an agent doing the same write is untouched.
    let st = run(Command::new("/bin/bash").arg("-c").arg(format!("echo appended >> {}", outside.display())));
    assert!(st.success(), "a non-agent was affected: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\nappended\n");

    let m = d.metrics();
    assert_eq!(metric_value(&m, "agent_monitor_kills_total", &[("agent", "appender")]), Some(1.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "agent_monitor_violations_total",
            &[("agent", "appender"), ("kind", "file.write"), ("action", "killed")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric_value(&m, "agent_monitor_layer_up", &[("layer", "tracepoint")]), Some(1.0));
    assert_eq!(metric_value(&m, "agent_monitor_events_lost_total", &[]), Some(0.0));
}

#[test]
fn descendants_and_copied_binaries_stay_in_scope_and_the_tree_dies() {
    if !can_run_root_tests("descendants_and_copied_binaries_stay_in_scope_and_the_tree_dies") {
        return;
    }
    let t = TempDir::new("tree");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let d = Daemon::start(&policy("tree", "am-tree", "kill", &work, ""));
    let agent = copy_binary(t.path(), "/bin/bash", "am-tree");

    // A grandchild through `sh -c`: killed, recorded as the same agent.
    let st = sh(&agent, &format!("sh -c 'sh -c \"echo x >> {}\"'; true", outside.display()), t.path());
    assert!(killed_by_sigkill(&st), "the agent survived its grandchild's violation: {st}");
    let e = d.wait_event("grandchild violation", |e| f(e, "kind") == "file.write" && f(e, "comm") == "sh");
    assert_eq!(f(&e, "agent"), "tree");
    assert_eq!(f(&e, "action"), "killed");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");

    // A copy of a binary under another name, exec'd by the agent: still the agent.
    let st = sh(
        &agent,
        &format!(
            "cp /bin/bash {w}/innocent && exec {w}/innocent -c 'echo x >> {o}'",
            w = work.display(),
            o = outside.display()
        ),
        t.path(),
    );
    assert!(killed_by_sigkill(&st), "a renamed binary escaped: {st}");
    let e = d.wait_event("renamed binary violation", |e| f(e, "comm") == "innocent" && f(e, "verdict") == "violation");
    assert_eq!(f(&e, "agent"), "tree");

    // python3 -c, exec'd through the dynamic loader directly: still the agent.
    let py = python3();
    let ld = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let launcher = match ld {
        Some(ld) => format!("{ld} {py}"),
        None => py.clone(),
    };
    let st = sh(&agent, &format!("{launcher} -c \"open('{}', 'a').write('x')\"", outside.display()), t.path());
    assert!(killed_by_sigkill(&st), "python3 through ld.so escaped: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");

    // The whole instance dies: a background child that makes no further syscall we hook.
    let pidfile = work.join("bg.pid");
    let st = sh(
        &agent,
        &format!("sleep 60 & echo $! > {}; sleep 0.2; echo x >> {}", pidfile.display(), outside.display()),
        t.path(),
    );
    assert!(killed_by_sigkill(&st));
    let bg: u32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let t0 = std::time::Instant::now();
    while is_alive(bg) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_alive(bg), "the agent's background child {bg} outlived the kill");
}

#[test]
fn namespace_and_metadata_changes_are_each_reported() {
    if !can_run_root_tests("namespace_and_metadata_changes_are_each_reported") {
        return;
    }
    let t = TempDir::new("ns");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let o = t.path().display().to_string();
    for f in ["del.txt", "ren.txt", "link-src.txt", "mode.txt"] {
        fs::write(t.join(f), "x").unwrap();
    }
    let d = Daemon::start(&policy("ns-alert", "am-ns", "alert", &work, ""));
    let agent = copy_binary(t.path(), "/bin/bash", "am-ns");
    let w = work.display().to_string();
    let cases = [
        ("file.delete", format!("rm {o}/del.txt"), format!("{o}/del.txt")),
        ("file.rename", format!("mv {o}/ren.txt {w}/ren.txt"), format!("{o}/ren.txt")),
        ("file.link", format!("ln {o}/link-src.txt {w}/hard"), format!("{o}/link-src.txt")),
        ("file.mkdir", format!("mkdir {o}/newdir"), format!("{o}/newdir")),
        ("file.chmod", format!("chmod 600 {o}/mode.txt"), format!("{o}/mode.txt")),
        // Relative to the cwd, through `..`: resolved and normalised before matching.
        ("file.write", "echo x > ../rel.txt".to_string(), format!("{o}/rel.txt")),
    ];
    for (kind, script, target) in &cases {
        let st = sh(&agent, script, &work);
        assert!(st.success(), "alert mode must not stop `{script}`: {st}");
        let e = d.wait_event(kind, |e| f(e, "kind") == *kind && f(e, "verdict") == "violation");
        assert_eq!(f(&e, "target"), target, "{e}");
        assert_eq!(f(&e, "action"), "alerted", "{e}");
    }
    // With alert nothing was prevented: the operations happened.
    assert!(!t.join("del.txt").exists() && work.join("ren.txt").exists() && t.join("newdir").is_dir());
    assert_eq!(d.metric("agent_monitor_kills_total", &[("agent", "ns-alert")]), Some(0.0));
    assert_eq!(
        d.metric(
            "agent_monitor_violations_total",
            &[("agent", "ns-alert"), ("kind", "file.chmod"), ("action", "alerted")]
        ),
        Some(1.0)
    );
    // Inside `writable`, and a failed attempt (nothing changed), are no violations.
    let st = sh(&agent, &format!("mkdir -p {w}/a/b; mv {w}/ren.txt {w}/a/b/; rm -f {o}/does-not-exist"), &work);
    assert!(st.success());
    let extra = d.settle_events(|e| f(e, "verdict") == "violation").len();
    assert_eq!(extra, cases.len(), "unexpected violations: {:#?}", d.events());
}

#[test]
fn kill_and_deny_for_namespace_changes_say_what_happened() {
    if !can_run_root_tests("kill_and_deny_for_namespace_changes_say_what_happened") {
        return;
    }
    let t = TempDir::new("nskill");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    fs::write(t.join("victim.txt"), "x").unwrap();
    let p = format!(
        "{}\n{}",
        policy("ns-kill", "am-nskill", "kill", &work, ""),
        policy("ns-deny", "am-nsdeny", "deny", &work, "")
    );
    let d = Daemon::start(&p);
    // Where the kernel runs BPF LSM (the VM tier), the LSM layer refuses before the operation;
    // elsewhere the tracepoint layer acts after it, and says so.
    let lsm = d.metric("agent_monitor_layer_up", &[("layer", "bpf_lsm")]) == Some(1.0);
    let killer = copy_binary(t.path(), "/bin/bash", "am-nskill");
    let denier = copy_binary(t.path(), "/bin/bash", "am-nsdeny");
    let st = sh(&killer, &format!("mkdir {}/k; echo survived > {}/s", t.path().display(), work.display()), &work);
    assert!(killed_by_sigkill(&st));
    assert!(!work.join("s").exists());
    let e = d.wait_event("mkdir kill", |e| f(e, "agent") == "ns-kill" && f(e, "kind") == "file.mkdir");
    assert_eq!(f(&e, "action"), "killed");
    if lsm {
        assert_eq!(f(&e, "layer"), "bpf_lsm");
        assert!(!t.join("k").exists(), "the LSM layer let the mkdir happen before the kill");
    } else {
        // Honest: the tracepoint layer kills after the syscall ran.
        assert!(f(&e, "detail").contains("completed before the kill"), "{e}");
    }

    let st = sh(&denier, &format!("chmod 600 {}/victim.txt", t.path().display()), &work);
    let e = d.wait_event("chmod deny", |e| f(e, "agent") == "ns-deny" && f(e, "kind") == "file.chmod");
    if lsm {
        // deny is EPERM, nothing killed.
        assert!(!killed_by_sigkill(&st) && !st.success(), "{st}");
        assert_eq!((f(&e, "action"), f(&e, "layer")), ("denied", "bpf_lsm"));
    } else {
        // deny has no refusing layer for file kinds on this host: falls back to kill, and says so.
        assert!(killed_by_sigkill(&st));
        assert_eq!(f(&e, "action"), "killed");
        assert!(f(&e, "detail").contains("deny requested"), "{e}");
    }
}

#[test]
fn symlink_inside_writable_does_not_lead_out() {
    if !can_run_root_tests("symlink_inside_writable_does_not_lead_out") {
        return;
    }
    let t = TempDir::new("symlink");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let secret = t.join("secret.txt");
    fs::write(&secret, "original\n").unwrap();
    std::os::unix::fs::symlink(&secret, work.join("innocent-link")).unwrap();
    let d = Daemon::start(&policy("linker", "am-link", "kill", &work, ""));
    let agent = copy_binary(t.path(), "/bin/bash", "am-link");
    let st = sh(&agent, "echo pwned >> innocent-link", &work);
    assert!(killed_by_sigkill(&st), "a write through a symlink escaped: {st}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "original\n");
    let e = d.wait_event("write through symlink", |e| f(e, "kind") == "file.write");
    // Decided on the file the kernel opened, not the string the agent passed.
    assert_eq!(f(&e, "target"), secret.display().to_string());
}

#[test]
fn bypasses_of_syscall_tracing_are_violations_unless_allowed() {
    if !can_run_root_tests("bypasses_of_syscall_tracing_are_violations_unless_allowed") {
        return;
    }
    let t = TempDir::new("bypass");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let p = format!(
        "{}\n{}",
        policy("uring", "am-uring", "kill", &work, ""),
        policy("uring-ok", "am-uring-ok", "kill", &work, "[agent.syscalls]\nallow = [\"io_uring\"]")
    );
    let d = Daemon::start(&p);
    let py = python3();
    // io_uring_setup(4, &params): syscall 425 on x86_64 and arm64.
    let script = "import ctypes, sys; p = ctypes.create_string_buffer(120); fd = ctypes.CDLL(None).syscall(425, 4, p); print(fd); sys.exit(0 if fd >= 0 else 3)";
    let denied = copy_binary(t.path(), &py, "am-uring");
    let st = run(Command::new(&denied).args(["-c", script]));
    assert!(killed_by_sigkill(&st), "io_uring_setup by an agent was not stopped: {st}");
    let e = d.wait_event("io_uring", |e| f(e, "kind") == "sys.io_uring");
    assert_eq!((f(&e, "agent"), f(&e, "verdict"), f(&e, "action")), ("uring", "violation", "killed"));

    let allowed = copy_binary(t.path(), &py, "am-uring-ok");
    let st = run(Command::new(&allowed).args(["-c", script]));
    assert!(st.success(), "io_uring allowed by policy was stopped: {st}");

    // A raw socket and bpf() are the other two ways around. A raw inet socket is refused by the
    // cgroup layer (EPERM) before it exists; the daemon then kills the instance (asynchronously:
    // the process may exit on the EPERM first).
    let out = Command::new(&denied)
        .args([
            "-c",
            "import socket, time; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('created'); time.sleep(5)",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "raw socket: {}", out.status);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("created"), "a raw socket was created");
    let e = d.wait_event("raw socket", |e| f(e, "kind") == "net.raw_socket" && f(e, "agent") == "uring");
    assert_eq!((f(&e, "layer"), f(&e, "action")), ("cgroup", "killed"));
    // A packet socket never reaches the cgroup hook: the tracepoint layer kills.
    let st =
        run(Command::new(&denied).args(["-c", "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)"]));
    assert!(killed_by_sigkill(&st), "packet socket: {st}");
    let st = run(Command::new(&denied).args(["-c", "import ctypes; ctypes.CDLL(None).syscall(321, 0, 0, 0)"]));
    assert!(killed_by_sigkill(&st), "bpf(): {st}");
    d.wait_event("bpf", |e| f(e, "kind") == "self.tamper" && f(e, "agent") == "uring");
}

#[test]
fn agents_running_before_the_daemon_are_adopted() {
    if !can_run_root_tests("agents_running_before_the_daemon_are_adopted") {
        return;
    }
    let t = TempDir::new("adopt");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let go = t.join("go");
    let agent = copy_binary(t.path(), "/bin/bash", "am-early");
    // Started before the daemon; waits for a signal file, then writes outside.
    let mut child = Command::new(&agent)
        .arg("-c")
        .arg(format!("while [ ! -e {} ]; do sleep 0.05; done; echo x >> {}", go.display(), outside.display()))
        .spawn()
        .unwrap();
    let _d = Daemon::start(&policy("early", "am-early", "kill", &work, ""));
    fs::write(&go, "").unwrap();
    let st = child.wait().unwrap();
    assert!(killed_by_sigkill(&st), "a pre-existing agent was not adopted: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");
}

#[test]
fn reload_with_a_bad_policy_keeps_the_old_one() {
    if !can_run_root_tests("reload_with_a_bad_policy_keeps_the_old_one") {
        return;
    }
    let t = TempDir::new("reload");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let mut d = Daemon::start(&policy("reloaded", "am-reload", "kill", &work, ""));
    // The hash of the policy in force, as a fleet queries it: one series, value 1.
    let policy_info = |d: &Daemon| {
        let m = d.metrics();
        let hashes: Vec<String> = m
            .lines()
            .filter(|l| l.starts_with("agent_monitor_policy_info{") && l.ends_with(" 1"))
            .map(|l| l.split('"').nth(1).unwrap_or_default().to_string())
            .collect();
        assert_eq!(hashes.len(), 1, "{m}");
        hashes[0].clone()
    };
    let first = policy_info(&d);
    fs::write(&d.config, "[[agent]]\nname = \"reloaded\"\naction = \"explode\"\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("policy reload rejected", Duration::from_secs(10));
    assert!(d.log_text().contains("3:10: unknown variant `explode`"), "{}", d.log_text());
    assert_eq!(d.metric("agent_monitor_policy_reloads_total", &[("result", "failure")]), Some(1.0));
    assert_eq!(policy_info(&d), first, "a rejected policy changed the hash in force");
    let agent = copy_binary(t.path(), "/bin/bash", "am-reload");
    let st = sh(&agent, &format!("echo x >> {}", outside.display()), t.path());
    assert!(killed_by_sigkill(&st), "the old policy stopped enforcing after a bad reload: {st}");

    // A good reload that makes the same path writable changes behaviour for new agents.
    fs::write(&d.config, policy("reloaded", "am-reload", "kill", t.path(), "")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("policy reloaded", Duration::from_secs(10));
    let st = sh(&agent, &format!("echo x >> {}", outside.display()), t.path());
    assert!(st.success(), "the reloaded policy did not take effect: {st}");
    assert_eq!(d.metric("agent_monitor_policy_reloads_total", &[("result", "success")]), Some(1.0));
    assert_ne!(policy_info(&d), first, "the new policy's hash is not the one in force");
}

/// A reload is one switch in the kernel: the new policy goes into the inactive generation in
/// full, then one store makes it the one that decides. Every event names the policy that
/// decided it; under reloads flipping between two policies as fast as the daemon takes them,
/// every verdict must be the one its own policy gives (a half-written or mixed swap would
/// allow a path its policy refuses, or the reverse).
#[test]
fn a_reload_swaps_the_whole_policy_at_once() {
    if !can_run_root_tests("a_reload_swaps_the_whole_policy_at_once") {
        return;
    }
    let t = TempDir::new("swap");
    let (a, b) = (t.join("a"), t.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    // 400 other writable paths are written before the one that differs, so that a swap that
    // were not atomic would leave a window of a few milliseconds to fall into.
    let pol = |w: &std::path::Path| {
        let others: Vec<String> = (0..400).map(|i| format!("\"/nonexistent/swap/{i}\"")).collect();
        format!(
            "[[agent]]\nname = \"swapper\"\naction = \"alert\"\naudit = true\n[agent.match]\ncomm = [\"am-swap\"]\n\
             [agent.files]\nwritable = [{}, \"{}\"]\n",
            others.join(", "),
            w.display()
        )
    };
    let mut d = Daemon::start(&pol(&a));
    let agent = copy_binary(t.path(), "/bin/bash", "am-swap");
    let go = t.join("stop");
    // Writes as fast as bash goes, until the reloads are over (bounded: 300 000 rounds).
    let script = format!(
        "for ((i = 0; i < 300000; i++)); do [ -e {stop} ] && break; echo $i >> {a}/x; echo $i >> {b}/x; done",
        stop = go.display(),
        a = a.display(),
        b = b.display()
    );
    let mut child = Command::new(&agent).arg("-c").arg(&script).current_dir(t.path()).spawn().unwrap();
    let reloads = 16;
    for i in 1..=reloads {
        fs::write(&d.config, pol(if i % 2 == 1 { &b } else { &a })).unwrap();
        d.signal(nix::sys::signal::Signal::SIGHUP);
        wait_for("reload", 20, || {
            (d.metric("agent_monitor_policy_reloads_total", &[("result", "success")]) == Some(i as f64)).then_some(())
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::write(&go, "").unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "the alerting agent did not run to the end: {st}");
    d.wait_log("policy reloaded", Duration::from_secs(5));
    let events = d.settle_events(|_| true);
    // Which directory each policy hash makes writable: the first load is `a`, then b, a, ...
    let loads: Vec<String> =
        events.iter().filter(|e| f(e, "kind") == "policy.load").map(|e| f(e, "policy_hash").to_string()).collect();
    assert_eq!(loads.len(), reloads + 1, "policy.load records: {loads:?}");
    let (hash_a, hash_b) = (loads[0].clone(), loads[1].clone());
    assert_ne!(hash_a, hash_b);
    let (mut under_a, mut under_b) = (0, 0);
    for e in events.iter().filter(|e| f(e, "kind") == "file.write" && f(e, "agent") == "swapper") {
        let target = f(e, "target");
        let in_a = target.starts_with(&format!("{}/", a.display()));
        let allowed = f(e, "verdict") == "allowed";
        let h = f(e, "policy_hash");
        if h == hash_a {
            under_a += 1;
            assert_eq!(allowed, in_a, "policy a decided {target} as {}: {e}", f(e, "verdict"));
        } else if h == hash_b {
            under_b += 1;
            assert_eq!(allowed, !in_a, "policy b decided {target} as {}: {e}", f(e, "verdict"));
        } else {
            panic!("a decision names no policy this daemon loaded: {e}");
        }
    }
    assert!(
        under_a > 0 && under_b > 0,
        "the agent's writes did not straddle the reloads: {under_a} under a, {under_b} under b"
    );
}

/// The daemon's configuration, events log (and rotated siblings) and its other own files are
/// off limits to every agent, whatever its `writable` and its action: `self.tamper`, refused
/// where a layer can refuse (BPF LSM), the agent killed.
#[test]
fn the_daemons_own_files_are_off_limits_whatever_writable_says() {
    if !can_run_root_tests("the_daemons_own_files_are_off_limits_whatever_writable_says") {
        return;
    }
    let t = TempDir::new("own");
    let d = Daemon::start(&policy("greedy", "am-greedy", "alert", std::path::Path::new("/"), ""));
    let lsm = d.lsm();
    let agent = copy_binary(t.path(), "/bin/bash", "am-greedy");
    let st = sh(&agent, &format!("echo ok > {}/anywhere", t.path().display()), t.path());
    assert!(st.success(), "writable = [\"/\"] did not allow an ordinary write: {st}");
    let config = fs::canonicalize(&d.config).unwrap();
    let events = fs::canonicalize(&d.events).unwrap();
    let before = fs::read_to_string(&config).unwrap();
    for (target, script) in [
        (config.clone(), format!("echo '[[agent]]' >> {}", config.display())),
        (events.clone(), format!("echo forged >> {}", events.display())),
        (PathBuf::from(format!("{}.1", events.display())), format!("echo forged >> {}.1", events.display())),
    ] {
        let st = sh(&agent, &format!("{script}; echo survived > {}/after", t.path().display()), t.path());
        assert!(
            killed_by_sigkill(&st),
            "`{script}`: an alert-only agent writing the daemon's file was not killed: {st}"
        );
        assert!(!t.join("after").exists(), "the agent ran on after `{script}`");
        let e = d.wait_event("self.tamper on a protected file", |e| {
            f(e, "kind") == "self.tamper" && f(e, "target") == target.display().to_string()
        });
        assert_eq!((f(&e, "verdict"), f(&e, "action"), f(&e, "rule")), ("violation", "killed", "self_protection"));
        assert!(f(&e, "detail").contains("file.write on one of the daemon's own files"), "{e}");
        assert_eq!(f(&e, "layer"), if lsm { "bpf_lsm" } else { "tracepoint" });
    }
    assert_eq!(fs::read_to_string(&config).unwrap(), before, "the configuration changed");
    assert!(!fs::read_to_string(&events).unwrap().contains("forged"), "the events log took a forged line");
    // Signalling the daemon is self-protection too: killed although the agent only alerts.
    let st = sh(&agent, &format!("kill -CONT {}; echo survived > {}/after", d.pid(), t.path().display()), t.path());
    assert!(killed_by_sigkill(&st), "an alert-only agent signalling the daemon was not killed: {st}");
    assert!(!t.join("after").exists());
    // The daemon is still enforcing, on the same policy.
    assert!(is_alive(d.pid()));
}

#[test]
fn signalling_or_tracing_the_daemon_is_self_tamper() {
    if !can_run_root_tests("signalling_or_tracing_the_daemon_is_self_tamper") {
        return;
    }
    let t = TempDir::new("tamper");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let d = Daemon::start(&policy("tamperer", "am-tamper", "kill", &work, ""));
    // With BPF LSM the call is refused (EPERM) before it runs and the agent killed; without
    // it, the tracepoint layer kills the agent as the call starts.
    let lsm = d.lsm();
    let detail = |tracepoint: &str, lsm_detail: &str| if lsm { lsm_detail.to_string() } else { tracepoint.to_string() };
    let agent = copy_binary(t.path(), "/bin/bash", "am-tamper");
    // SIGCONT is harmless to a running daemon: the point is the attempt.
    let st = sh(&agent, &format!("kill -CONT {}; echo survived > {}/after", d.pid(), work.display()), t.path());
    assert!(killed_by_sigkill(&st), "an agent signalling the daemon was not killed: {st}");
    assert!(!work.join("after").exists());
    let e = d.wait_event("self.tamper", |e| f(e, "kind") == "self.tamper");
    assert_eq!(f(&e, "target"), format!("agent-monitor pid {}", d.pid()));
    assert_eq!((f(&e, "verdict"), f(&e, "action"), f(&e, "rule")), ("violation", "killed", "self_protection"));
    assert_eq!(f(&e, "layer"), if lsm { "bpf_lsm" } else { "tracepoint" });
    let want = detail("kill(signal 18)", "signal 18 to the daemon: refused");
    assert!(f(&e, "detail").contains(&want), "{e}");
    if lsm {
        // Refused, not only punished: a SIGHUP that would make the daemon reload never arrives.
        let st = sh(&agent, &format!("kill -HUP {}", d.pid()), t.path());
        assert!(killed_by_sigkill(&st), "{st}");
        std::thread::sleep(Duration::from_secs(1));
        assert!(!d.log_text().contains("reload"), "the daemon received the agent's SIGHUP:\n{}", d.log_text());
    }
    // ptrace (PTRACE_SEIZE, which does not stop the tracee) through python's libc.
    let pydir = t.join("py");
    fs::create_dir(&pydir).unwrap();
    let py = copy_binary(&pydir, &python3(), "am-tamper");
    let seize = format!("import ctypes; ctypes.CDLL(None).ptrace(0x4206, {}, 0, 0); print('traced')", d.pid());
    let out = Command::new(&py).args(["-c", &seize]).output().unwrap();
    assert!(killed_by_sigkill(&out.status), "an agent tracing the daemon was not killed: {}", out.status);
    let want = detail("ptrace(request=16902)", "ptrace-level access to the daemon");
    d.wait_event("ptrace tamper", |e| f(e, "kind") == "self.tamper" && f(e, "detail").contains(&want));
    // Through a pidfd: pidfd_send_signal, and pidfd_getfd (a copy of one of the daemon's
    // descriptors: its BPF maps among them).
    let via_pidfd = format!(
        "import os, signal; fd = os.pidfd_open({}); signal.pidfd_send_signal(fd, signal.SIGCONT); print('sent')",
        d.pid()
    );
    let out = Command::new(&py).args(["-c", &via_pidfd]).output().unwrap();
    assert!(
        killed_by_sigkill(&out.status),
        "an agent signalling the daemon through a pidfd was not killed: {}",
        out.status
    );
    assert!(out.stdout.is_empty(), "the agent ran on: {}", String::from_utf8_lossy(&out.stdout));
    let want = detail("pidfd_send_signal(signal 18)", "signal 18 to the daemon: refused");
    // (With LSM the detail is the one of the first signal: one more such event.)
    let tampers = |d: &Daemon| -> Vec<String> {
        d.events().iter().filter(|e| f(e, "kind") == "self.tamper").map(|e| e.to_string()).collect()
    };
    let t0 = std::time::Instant::now();
    while d.events().iter().filter(|e| f(e, "detail").contains(&want)).count() < if lsm { 2 } else { 1 } {
        assert!(t0.elapsed() < Duration::from_secs(10), "no pidfd_send_signal tamper event: {:#?}", tampers(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let getfd = format!(
        "import ctypes, os; fd = os.pidfd_open({}); ctypes.CDLL(None).syscall(438, fd, 3, 0); print('got')",
        d.pid()
    );
    let out = Command::new(&py).args(["-c", &getfd]).output().unwrap();
    assert!(killed_by_sigkill(&out.status), "an agent copying the daemon's descriptors was not killed: {}", out.status);
    let want = detail("pidfd_getfd(fd 3) of the daemon", "ptrace-level access to the daemon");
    let need = if lsm { 2 } else { 1 };
    let t0 = std::time::Instant::now();
    while d.events().iter().filter(|e| f(e, "kind") == "self.tamper" && f(e, "detail").contains(&want)).count() < need {
        assert!(t0.elapsed() < Duration::from_secs(10), "no pidfd_getfd tamper event: {:#?}", tampers(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon is untouched and still enforcing.
    let st = sh(&agent, &format!("echo x > {}/ok", work.display()), t.path());
    assert!(st.success());
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), None).is_ok(), "the daemon is gone");
}

#[test]
fn the_events_log_is_a_hash_chain_that_names_the_first_broken_line() {
    if !can_run_root_tests("the_events_log_is_a_hash_chain_that_names_the_first_broken_line") {
        return;
    }
    let t = TempDir::new("audit");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let events = {
        let d = Daemon::start(&policy("audited", "am-audited", "alert", &work, ""));
        let agent = copy_binary(t.path(), "/bin/bash", "am-audited");
        for i in 0..3 {
            assert!(sh(&agent, &format!("echo {i} > {}/out{i}", t.path().display()), t.path()).success());
        }
        d.wait_event("three violations", |e| f(e, "target").ends_with("out2"));
        // A reload records the policy again, in the chain.
        d.signal(nix::sys::signal::Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(500));
        let kept = t.join("events.jsonl");
        fs::copy(&d.events, &kept).unwrap();
        kept
    };
    let text = fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    assert!(lines[0].contains("\"kind\":\"policy.load\"") && lines[0].contains("policy_hash"), "{}", lines[0]);
    assert_eq!(lines.iter().filter(|l| l.contains("policy.load")).count(), 2, "the reload is not on the record");
    let verify =
        |p: &std::path::Path| Command::new(binary().unwrap()).args(["audit", "verify"]).arg(p).output().unwrap();
    let out = verify(&events);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Edit one line (hide a violation's target): the report names that line.
    let k = lines.iter().position(|l| l.contains("out1")).unwrap();
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edited[k] = edited[k].replace("out1", "elsewhere");
    let e = t.join("edited.jsonl");
    fs::write(&e, edited.join("\n") + "\n").unwrap();
    let out = verify(&e);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{}:{}: chain broken", e.display(), k + 1)), "{err}");

    // Remove it instead: the line before the gap is named.
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(k);
    let r = t.join("removed.jsonl");
    fs::write(&r, removed.join("\n") + "\n").unwrap();
    let err = String::from_utf8_lossy(&verify(&r).stderr).to_string();
    assert!(err.starts_with(&format!("{}:{}: chain broken", r.display(), k)), "{err}");
}

/// Issue 16: the events log rotated by logrotate, with the shipped configuration's options
/// (compress, delaycompress, nocreate, SIGUSR1 in postrotate): the daemon reopens the log (0600)
/// without reading its policy again, a restart after a rotation continues the chain from the
/// rotated file, and `audit verify` checks the whole trail, gzip-compressed files included.
#[test]
fn the_audit_chain_goes_on_across_logrotate_and_a_restart() {
    if !can_run_root_tests("the_audit_chain_goes_on_across_logrotate_and_a_restart") {
        return;
    }
    if !have("logrotate") {
        panic!("logrotate is not installed (`cargo xtask setup` installs it)");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let t = TempDir::new("logrotate");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let agent = copy_binary(t.path(), "/bin/bash", "am-rotated");
    let pol = policy("rotated", "am-rotated", "alert", &work, "");
    let violate = |d: &Daemon, n: &str| {
        assert!(sh(&agent, &format!("echo x > {}/{n}", t.path().display()), t.path()).success());
        d.wait_event(n, |e| f(e, "target").ends_with(&format!("/{n}")));
    };
    let mut d = Daemon::start(&pol);
    let log = d.events.clone();
    let dir = log.parent().unwrap().to_path_buf();
    let conf = t.join("logrotate.conf");
    let rotate = |pid: u32| {
        fs::write(
            &conf,
            format!(
                "{} {{\n rotate 5\n missingok\n notifempty\n compress\n delaycompress\n nocreate\n \
                 postrotate\n  kill -USR1 {pid}\n endscript\n}}\n",
                log.display()
            ),
        )
        .unwrap();
        let st = Command::new("logrotate").arg("-f").arg("-s").arg(t.join("state")).arg(&conf).status().unwrap();
        assert!(st.success(), "logrotate failed");
    };
    violate(&d, "one");
    rotate(d.pid());
    violate(&d, "two");
    assert!(log.exists(), "the daemon did not reopen its log after the rotation");
    assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!d.log_text().contains("policy reloaded"), "SIGUSR1 read the policy again");
    rotate(d.pid());
    assert!(dir.join("events.jsonl.2.gz").exists(), "logrotate did not compress the older file");
    // A restart with the reopened log still empty: the chain continues from events.jsonl.1.
    // (The reopen follows the signal: wait for it.)
    wait_for("the daemon to reopen its log", 20, || log.exists().then_some(()));
    assert_eq!(fs::read_to_string(&log).unwrap(), "", "nothing was written since the rotation");
    d.restart();
    violate(&d, "three");
    let _ = d.stop();
    let files = [dir.join("events.jsonl.2.gz"), dir.join("events.jsonl.1"), log.clone()];
    let out = Command::new(binary().unwrap()).args(["audit", "verify"]).args(&files).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("ok: "), "{said}");
    // A file missing from the middle is a break.
    let out = Command::new(binary().unwrap()).args(["audit", "verify"]).arg(&files[0]).arg(&files[2]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a missing rotation went unnoticed");
}

#[test]
fn a_reload_that_reorders_agents_keeps_running_processes_in_their_agent() {
    if !can_run_root_tests("a_reload_that_reorders_agents_keeps_running_processes_in_their_agent") {
        return;
    }
    let t = TempDir::new("reorder");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let strict = policy("strict", "am-strict", "kill", &work, "");
    let lax = policy("lax", "am-lax", "alert", &work, "");
    let mut d = Daemon::start(&format!("{strict}\n{lax}"));
    let agent = copy_binary(t.path(), "/bin/bash", "am-strict");
    let go = t.join("go");
    let mut child = Bg(Command::new(&agent)
        .arg("-c")
        .arg(format!("while [ ! -e {} ]; do sleep 0.05; done; echo x >> {}", go.display(), outside.display()))
        .spawn()
        .unwrap());
    std::thread::sleep(Duration::from_millis(300));
    // The same agents, the other way round: "strict" must stay strict for its running process.
    fs::write(&d.config, format!("{lax}\n{strict}")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("policy reloaded", Duration::from_secs(10));
    fs::write(&go, "").unwrap();
    let st = child.0.wait().unwrap();
    assert!(killed_by_sigkill(&st), "after the reorder the running agent fell under another profile: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");
    let e = d.wait_event("violation", |e| f(e, "kind") == "file.write" && f(e, "verdict") == "violation");
    assert_eq!(f(&e, "agent"), "strict");
}
