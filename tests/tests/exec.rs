//! `agent-monitor exec`, end to end: the real daemon, then real commands started inside an
//! agent's Landlock boundary (writes, TCP connects, signals), the refusal to start without a
//! daemon, and the shipped systemd unit.
use std::{
    fs,
    net::TcpListener,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use agent_monitor_e2e::*;

/// Agent `execd`: writable `work`, TCP to 127.0.0.1:`port` only, action deny. Selected by the
/// comm `am-execd` (a copy of sh under that name is also an agent for the daemon).
fn policy(work: &Path, port: u16, control_socket: Option<&Path>) -> String {
    let daemon =
        control_socket.map(|c| format!("[daemon]\ncontrol_socket = \"{}\"\n\n", c.display())).unwrap_or_default();
    format!(
        r#"{daemon}[[agent]]
name = "execd"
action = "deny"
[agent.match]
comm = ["am-execd"]
[agent.files]
writable = ["{}"]
[agent.network]
allow = ["127.0.0.1:{port}"]
"#,
        work.display()
    )
}

/// A daemon running `policy`, whose policy file also names its control socket, so that `exec
/// --config d.config` registers with it.
fn start_daemon(work: &Path, port: u16) -> Daemon {
    let d = Daemon::start(&policy(work, port, None));
    // `run` was given --control-socket; the file now says the same, for `exec` (the daemon only
    // re-reads it on SIGHUP, and the flag would win then too).
    fs::write(&d.config, policy(work, port, Some(&d.control))).unwrap();
    d
}

fn exec(config: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    exec_env(config, extra, cmd, &[])
}

fn exec_env(config: &Path, extra: &[&str], cmd: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(binary().unwrap());
    c.args(["exec", "--agent", "execd", "--config"]).arg(config).args(extra).arg("--").args(cmd);
    c.env_remove("RUST_LOG").envs(env.iter().copied());
    let out = c.env("NO_COLOR", "1").stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    eprintln!(
        "exec {cmd:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn exec_cgroups() -> Vec<PathBuf> {
    let Some(root) = fs::read_to_string("/proc/mounts").ok().and_then(|m| {
        m.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
    }) else {
        return Vec::new();
    };
    fs::read_dir(root.join("agent-monitor.slice"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.display().to_string().contains("exec-execd-")).collect())
        .unwrap_or_default()
}

#[test]
fn writes_outside_writable_are_refused_by_landlock_not_killed() {
    if !can_run_root_tests("writes_outside_writable_are_refused_by_landlock_not_killed") {
        return;
    }
    let t = TempDir::new("exec-files");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let d = start_daemon(&work, port());
    let outside = t.join("outside.txt");
    let cgroups_before = exec_cgroups();

    // Outside `writable`: refused (EACCES), nothing created, the shell goes on and fails normally.
    let o = exec(&d.config, &[], &["/bin/sh", "-c", &format!("echo x > {}", outside.display())]);
    assert!(stderr(&o).contains("Permission denied"), "the write was not refused: {}", stderr(&o));
    assert!(!outside.exists(), "the file outside writable was created");
    assert!(o.status.signal().is_none(), "the command was killed: {}", o.status);
    assert!(matches!(o.status.code(), Some(1 | 2)), "unexpected status {}", o.status);
    // The launcher prints nothing of its own into the user's terminal by default ...
    assert!(!stderr(&o).contains("INFO"), "exec printed INFO lines by default: {}", stderr(&o));
    // ... and says what it set up when asked (RUST_LOG).
    let o = exec_env(
        &d.config,
        &[],
        &["/bin/sh", "-c", &format!("echo x > {}", outside.display())],
        &[("RUST_LOG", "info")],
    );
    assert!(!outside.exists(), "the file outside writable was created");
    assert!(stderr(&o).contains("Landlock ruleset fully enforced"), "{}", stderr(&o));

    // Inside: works; so do the implicit devices; a subdirectory can be made and removed.
    let inside = work.join("in.txt");
    let script = format!(
        "echo inside > {i} && echo y > /dev/null && mkdir {w}/d && rmdir {w}/d",
        i = inside.display(),
        w = work.display()
    );
    let o = exec(&d.config, &[], &["/bin/sh", "-c", &script]);
    assert!(o.status.success(), "write inside writable failed: {}", stderr(&o));
    assert_eq!(fs::read_to_string(&inside).unwrap(), "inside\n");

    // A command the daemon also sees as the agent (comm `am-execd`, action deny): Landlock
    // refuses the write before it happens, so there is nothing for the daemon to kill.
    let agent = copy_binary(t.path(), "/bin/sh", "am-execd");
    let script = format!("echo x > {}; echo survived > {}/after.txt", outside.display(), work.display());
    let o = exec(&d.config, &[], &[agent.to_str().unwrap(), "-c", &script]);
    assert!(o.status.success(), "the agent did not go on after the refused write: {}", o.status);
    assert!(!outside.exists(), "the file outside writable was created");
    assert_eq!(fs::read_to_string(work.join("after.txt")).unwrap(), "survived\n");
    d.wait_event("the exec'd agent's process.exec", |e| f(e, "agent") == "execd" && f(e, "comm") == "am-execd");
    let kills = d.settle_events(|e| f(e, "agent") == "execd" && f(e, "action") == "killed");
    assert!(kills.is_empty(), "the daemon killed the agent: {kills:?}");
    // Refused by Landlock, not by the daemon, and on the record all the same: the shells'
    // write opens and a mkdir outside writable.
    let o = exec(&d.config, &[], &["/bin/sh", "-c", &format!("mkdir {}/made", t.path().display())]);
    assert!(!o.status.success() && o.status.signal().is_none(), "{}", o.status);
    assert!(!t.join("made").exists());
    for (kind, target) in
        [("file.write", outside.display().to_string()), ("file.mkdir", t.join("made").display().to_string())]
    {
        let e = d.wait_event(&format!("the refused {kind} on the record"), |e| {
            f(e, "agent") == "execd" && f(e, "kind") == kind && f(e, "target") == target
        });
        assert_eq!((f(&e, "verdict"), f(&e, "action"), f(&e, "layer")), ("violation", "denied", "landlock"), "{e}");
        assert_eq!(f(&e, "rule"), "files.writable", "{e}");
        assert!(f(&e, "detail").contains("Landlock"), "{e}");
    }
    assert!(is_alive(d.pid()), "the daemon died");

    // Each command ran in its own cgroup, removed after it exited.
    assert_eq!(exec_cgroups(), cgroups_before, "exec left its cgroup behind");
}

#[test]
fn tcp_connects_only_to_allowed_ports() {
    if !can_run_root_tests("tcp_connects_only_to_allowed_ports") {
        return;
    }
    let t = TempDir::new("exec-tcp");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (allowed_port, other_port) = (allowed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let d = start_daemon(&work, allowed_port);
    let py = python3();
    let connect = |p: u16| {
        format!(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {p}), timeout=5).close()\n    print('connected')\n\
             except PermissionError as e:\n    print('PermissionError', e)\n    raise SystemExit(3)\n"
        )
    };

    let o = exec(&d.config, &[], &[&py, "-c", &connect(other_port)]);
    assert_eq!(o.status.code(), Some(3), "the connect to an unlisted port was not refused with PermissionError");
    assert!(String::from_utf8_lossy(&o.stdout).contains("PermissionError"));

    let o = exec(&d.config, &[], &[&py, "-c", &connect(allowed_port)]);
    assert!(o.status.success(), "the connect to the allowed port failed: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("connected"));

    // The command is an instance of the agent for the daemon too, from its first instruction
    // (registered cgroup): an allowed port on an unlisted address passes Landlock (ports only)
    // and is refused by the cgroup layer, which records it as agent "execd".
    let unlisted = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.2', {allowed_port}), timeout=5).close()\nexcept PermissionError:\n    raise SystemExit(3)\n"
    );
    let o = exec(&d.config, &[], &[&py, "-c", &unlisted]);
    assert_eq!(o.status.code(), Some(3), "the daemon's cgroup layer did not refuse an exec'd agent");
    let e = d.wait_event("exec instance net.connect", |e| {
        f(e, "kind") == "net.connect" && f(e, "target") == format!("127.0.0.2:{allowed_port}")
    });
    assert_eq!((f(&e, "agent"), f(&e, "action"), f(&e, "layer")), ("execd", "denied", d.connect_layer()));
    drop((allowed, other));
}

#[test]
fn signals_to_processes_outside_the_command_are_refused() {
    if !can_run_root_tests("signals_to_processes_outside_the_command_are_refused") {
        return;
    }
    let t = TempDir::new("exec-signal");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let d = start_daemon(&work, port());

    let o = exec(&d.config, &[], &["/bin/sh", "-c", &format!("kill -0 {}", d.pid())]);
    assert!(!o.status.success(), "the command could signal the daemon");
    assert!(o.status.signal().is_none(), "{}", o.status);
    assert!(is_alive(d.pid()), "the daemon died");
    assert!(d.metrics().contains("agent_monitor_build_info"), "the daemon stopped answering");

    let o = exec(&d.config, &[], &["/bin/sh", "-c", "kill -0 $$ && sh -c 'kill -0 $PPID'"]);
    assert!(o.status.success(), "the command could not signal itself or its parent shell: {}", stderr(&o));
}

#[test]
fn refuses_to_start_without_the_daemon_unless_allowed() {
    if !can_run_root_tests("refuses_to_start_without_the_daemon_unless_allowed") {
        return;
    }
    let t = TempDir::new("exec-nodaemon");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    // A control socket nobody listens on.
    let closed = t.join("no-daemon.sock");
    let config = t.join("policy.toml");
    fs::write(&config, policy(&work, port(), Some(&closed))).unwrap();
    let marker = t.join("ran");
    let touch = format!("touch {}", work.join("ran").display());

    let o = exec(&config, &[], &["/bin/sh", "-c", &touch]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("agent-monitor is not running"), "{err}");
    assert!(err.contains(&closed.display().to_string()), "{err}");
    assert!(err.contains("--allow-unmonitored"), "{err}");
    assert!(!work.join("ran").exists() && !marker.exists(), "the command ran");

    let o = exec(&config, &["--allow-unmonitored"], &["/bin/sh", "-c", &touch]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(work.join("ran").exists(), "the command did not run");
    // Still inside the boundary without the daemon.
    let o = exec(&config, &["--allow-unmonitored"], &["/bin/sh", "-c", &format!("touch {}", marker.display())]);
    assert!(!o.status.success() && !marker.exists(), "Landlock did not apply without the daemon");

    // The command's status comes back like a shell's.
    let o = exec(&config, &["--allow-unmonitored"], &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = exec(&config, &["--allow-unmonitored"], &["/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(128 + libc::SIGTERM));
    let o = exec(&config, &["--allow-unmonitored"], &["/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127));

    // A bad agent name lists the agents.
    let mut c = Command::new(binary().unwrap());
    c.args(["exec", "--agent", "nosuch", "--allow-unmonitored", "--config"]).arg(&config).args(["--", "true"]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no agent named \"nosuch\"") && stderr(&o).contains("execd"), "{}", stderr(&o));
}

#[test]
fn the_systemd_unit_verifies() {
    if !have("systemd-analyze") {
        eprintln!("SKIPPED the_systemd_unit_verifies: systemd-analyze is not installed");
        return;
    }
    let Some(bin) = binary() else {
        eprintln!("SKIPPED the_systemd_unit_verifies: AGENT_MONITOR_BIN is not set");
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-monitor.service");
    let text = fs::read_to_string(&unit).unwrap();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/agent-monitor run",
        "ExecReload=/usr/bin/agent-monitor reload",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(text.lines().any(|l| l == want), "the unit lacks {want:?}");
    }
    // Verify a copy whose ExecStart points at the binary under test (/usr/bin/agent-monitor is
    // not installed here, and verify checks that the command exists).
    let t = TempDir::new("unit");
    let copy = t.join("agent-monitor.service");
    fs::write(&copy, text.replace("/usr/bin/agent-monitor", &bin.display().to_string())).unwrap();
    // (--man=no: the unit's Documentation= names the manual page the package installs.)
    let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "systemd-analyze verify: {}\n{err}", o.status);
}

/// `agent-monitor shims install`: the command a user types (here `am-tool`, a script found on
/// PATH after the shim directory) starts under `exec` as its agent: its arguments and status
/// pass through, a write outside `writable` is refused by Landlock and on the record, a write
/// inside works. Inside an instance the shim runs the command as it is (no second instance);
/// a command missing from PATH is exit 127 with the reason; `shims remove` removes only shims.
#[test]
fn a_shim_starts_the_command_a_user_types_under_exec() {
    if !can_run_root_tests("a_shim_starts_the_command_a_user_types_under_exec") {
        return;
    }
    let t = TempDir::new("exec-shims");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let d = start_daemon(&work, port());
    let (shims, real) = (t.join("shims"), t.join("real"));
    fs::create_dir(&real).unwrap();
    let tool = real.join("am-tool");
    fs::write(
        &tool,
        "#!/bin/sh\necho \"agent=${AGENT_MONITOR_AGENT:-none} argc=$# first=$1\"\necho x > \"$1\" || exit 7\n",
    )
    .unwrap();
    fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let am = |args: &[&str]| {
        let o = Command::new(binary().unwrap()).args(args).output().unwrap();
        eprintln!(
            "{args:?}: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let o = am(&[
        "shims",
        "install",
        "--dir",
        shims.to_str().unwrap(),
        "--config",
        d.config.to_str().unwrap(),
        "am-tool=execd",
        "am-missing=execd",
    ]);
    assert!(o.status.success());
    // A file of ours a user keeps there.
    fs::write(shims.join("notes.txt"), "mine\n").unwrap();
    let path = format!("{}:{}:/usr/bin:/bin", shims.display(), real.display());
    let typed = |line: &str| {
        let o = Command::new("/bin/sh")
            .args(["-c", line])
            .env("PATH", &path)
            .env_remove("AGENT_MONITOR_AGENT")
            .output()
            .unwrap();
        eprintln!("{line}: {}\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let outside = t.join("outside.txt");
    let (st, out, err) = typed(&format!("am-tool '{}' 'two words'", outside.display()));
    assert_eq!(st.code(), Some(7), "the tool's own status did not pass through: {st}\n{err}");
    assert!(out.contains(&format!("agent=execd argc=2 first={}", outside.display())), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!outside.exists(), "the write outside writable through the shim happened");
    let e = d.wait_event("the shimmed tool's refused write", |e| {
        f(e, "agent") == "execd" && f(e, "kind") == "file.write" && f(e, "target") == outside.display().to_string()
    });
    assert_eq!((f(&e, "action"), f(&e, "layer")), ("denied", "landlock"), "{e}");
    let inside = work.join("in.txt");
    let (st, _, _) = typed(&format!("am-tool '{}'", inside.display()));
    assert!(st.success() && inside.exists(), "a write inside writable through the shim failed: {st}");
    // Inside an instance, the shim does not start another one.
    let nested = work.join("nested.txt");
    let o = exec(&d.config, &[], &["/bin/sh", "-c", &format!("PATH={path} am-tool '{}'", nested.display())]);
    assert!(o.status.success() && nested.exists(), "{}", stderr(&o));
    assert!(stderr(&o).matches("Landlock ruleset").count() <= 1, "a second exec ran: {}", stderr(&o));
    // Not on PATH: 127 and why.
    let (st, _, err) = typed("am-missing");
    assert_eq!(st.code(), Some(127), "{err}");
    assert!(err.contains("am-missing: not found on PATH"), "{err}");
    let o = am(&["shims", "remove", "--dir", shims.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(!shims.join("am-tool").exists() && !shims.join("am-missing").exists());
    assert_eq!(fs::read_to_string(shims.join("notes.txt")).unwrap(), "mine\n", "remove took a file that is not a shim");
}
