//! Enforcement that outlives the daemon: with a pin path, programs and maps are pinned on bpffs;
//! after SIGKILL the kernel keeps confining agents; a restart adopts the pins (nothing attached
//! twice) and reads the events recorded meanwhile; an interrupted stop or `cleanup` removes all.
use std::{fs, path::Path, process::Command};

use agent_monitor_e2e::*;

/// How many programs with this name the kernel has loaded.
fn loaded(name: &str) -> usize {
    let out = Command::new("bpftool").args(["prog", "show"]).output().expect("bpftool");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&format!(" name {name} "))).count()
}

/// Whatever happens in the test, nothing stays pinned (and attached) after it.
struct PinGuard(String);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Pins of earlier runs of this test whose process is gone (killed before `PinGuard` ran, by a
/// timeout say): their programs would stay attached to every process on the machine and skew
/// everything measured on it afterwards, benchmarks included.
fn remove_stale_pins() {
    for e in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("am-e2e-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale pins of an earlier run: /sys/fs/bpf/{name}");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[test]
fn enforcement_survives_sigkill_and_the_restart_adopts_it() {
    if !can_run_root_tests("enforcement_survives_sigkill_and_the_restart_adopts_it") {
        return;
    }
    if !have("bpftool") {
        panic!("bpftool is needed to count loaded programs (Debian package bpftool; .ci/run installs it)");
    }
    let t = TempDir::new("pins");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    remove_stale_pins();
    let pins = format!("/sys/fs/bpf/am-e2e-{}", std::process::id());
    let _ = fs::remove_dir_all(&pins);
    let _cleanup = PinGuard(pins.clone());
    let policy = format!(
        "[[agent]]\nname = \"pinned\"\naction = \"kill\"\n[agent.match]\ncomm = [\"am-pinned\"]\n[agent.files]\nwritable = [\"{}\"]\n[agent.network]\nallow = [\"127.0.0.53:53\"]\n",
        work.display()
    );
    let before = loaded("sched_process_exec");
    let mut d = Daemon::start_with(&policy, &["--pin-path", &pins]);
    assert_eq!(loaded("sched_process_exec"), before + 1, "sched_process_exec loaded once");
    d.kill9();

    // The daemon is gone; the kernel still enforces.
    let agent = copy_binary(t.path(), "/bin/bash", "am-pinned");
    let st = run(Command::new(&agent).arg("-c").arg(format!("echo x >> {}; echo survived", outside.display())));
    assert!(killed_by_sigkill(&st), "with the daemon dead, a forbidden write was not stopped: {st}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");
    let pydir = t.join("py");
    fs::create_dir(&pydir).unwrap();
    let py = copy_binary(&pydir, &python3(), "am-pinned");
    let out = Command::new(&py)
        .args(["-c", "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\nexcept PermissionError:\n    print('EPERM')\n"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("EPERM"),
        "with the daemon dead, a forbidden connect was not refused"
    );

    // A restart of the same build adopts the pins: nothing attached twice, and the events
    // recorded while it was down are in the new events log.
    let mut d2 = Daemon::start_with(&policy, &["--pin-path", &pins]);
    d2.wait_log("adopted the programs and maps", std::time::Duration::from_secs(5));
    assert_eq!(loaded("sched_process_exec"), before + 1, "the restart attached the programs twice");
    let e = d2.wait_event("the violation from while the daemon was down", |e| {
        f(e, "kind") == "file.write" && f(e, "verdict") == "violation"
    });
    assert_eq!(f(&e, "target"), outside.display().to_string());
    // And it enforces as before.
    let st = run(Command::new(&agent).arg("-c").arg(format!("echo x >> {}", outside.display())));
    assert!(killed_by_sigkill(&st));
    // The adopted programs protect the new daemon, not the pid of the one that died.
    let st = run(Command::new(&agent).arg("-c").arg(format!("kill -CONT {}; echo survived", d2.pid())));
    assert!(killed_by_sigkill(&st), "after adoption, signalling the new daemon was not stopped: {st}");
    d2.wait_event("self.tamper against the new daemon", |e| {
        f(e, "kind") == "self.tamper" && f(e, "target") == format!("agent-monitor pid {}", d2.pid())
    });

    // An interrupted stop (Ctrl-C) removes everything it pinned.
    d2.signal(nix::sys::signal::Signal::SIGINT);
    d2.wait_log("pins removed", std::time::Duration::from_secs(10));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(loaded("sched_process_exec"), before, "programs still loaded after the interrupted stop");
    let out = Command::new(binary().unwrap()).args(["cleanup", "--pin-path", &pins]).output().unwrap();
    assert!(out.status.success());
    assert!(!Path::new(&pins).exists());
}
