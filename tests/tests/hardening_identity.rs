//! Issue 20, class 1: identity cannot be shed. An agent instance stays an agent in every thread
//! and process of its tree until all of them are gone: when the thread-group leader ends with
//! the raw exit(2) syscall while another thread goes on, and when a thread that is not the
//! leader calls execve (the kernel's de_thread ends the leader and the new image takes over the
//! thread group, with its own comm, selected by nothing).
//!
//! The attacker is `fixtures/shed_identity.c`, compiled in the test and selected by its comm.
//! (A full process table is not tested here: PROCS has as many entries as this host's pid_max,
//! 32768, so the pid space runs out before the table does.)
use std::{fs, path::Path, process::Command};

use agent_monitor_e2e::{attack::*, *};

fn policy(name: &str, action: &str, work: &Path) -> String {
    agent_policy(name, &["am-shed"], action, &[work], &[], "")
}

struct Setup {
    t: TempDir,
    work: std::path::PathBuf,
    outside: std::path::PathBuf,
    shed: std::path::PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    let t = TempDir::new(tag);
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let shed = cc(t.path(), "shed_identity.c", "am-shed")?;
    Some(Setup { t, work, outside, shed })
}

#[test]
fn a_thread_left_after_the_leaders_raw_exit_cannot_write_outside_writable() {
    if !can_run_root_tests("a_thread_left_after_the_leaders_raw_exit_cannot_write_outside_writable") {
        return;
    }
    let Some(s) = setup("shed-write") else { return };
    let d = Daemon::start(&policy("shed", "kill", &s.work));
    let before = FileState::of(&s.outside);
    let (st, out, err) = output(Command::new(&s.shed).args(["exit-write"]).arg(&s.outside));
    assert_stopped("leader exit(2), then a worker appends outside writable", &st, &out, &err);
    assert_eq!(FileState::of(&s.outside), before, "the file outside writable changed: {out}");
    let e = violation(&d, "shed", &["file.write"]);
    assert_enforced(&e, "files.writable");
    assert_eq!(f(&e, "target"), s.outside.display().to_string());
    assert_eq!(f(&e, "comm"), "am-shed");
    drop(s.t);
}

#[test]
fn a_thread_left_after_the_leaders_raw_exit_is_still_reported_by_an_alerting_agent() {
    if !can_run_root_tests("a_thread_left_after_the_leaders_raw_exit_is_still_reported_by_an_alerting_agent") {
        return;
    }
    let Some(s) = setup("shed-alert") else { return };
    let d = Daemon::start(&policy("shed-alert", "alert", &s.work));
    let (st, out, err) = output(Command::new(&s.shed).args(["exit-write"]).arg(&s.outside));
    // alert: nothing is stopped, but the write is on the record, under the agent's name.
    assert!(st.success(), "the alerting agent's attack did not run: {st}\n{out}{err}");
    let e = violation(&d, "shed-alert", &["file.write"]);
    assert_eq!((f(&e, "action"), f(&e, "rule")), ("alerted", "files.writable"), "{e}");
    assert_eq!(f(&e, "target"), s.outside.display().to_string());
}

#[test]
fn a_thread_left_after_the_leaders_raw_exit_cannot_connect_to_an_unlisted_destination() {
    if !can_run_root_tests("a_thread_left_after_the_leaders_raw_exit_cannot_connect_to_an_unlisted_destination") {
        return;
    }
    let Some(s) = setup("shed-net") else { return };
    let sink = Sink::start(s.t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: true }, None);
    let d = Daemon::start(&policy("shed-net", "deny", &s.work));
    let (st, out, err) = output(Command::new(&s.shed).args(["exit-connect", "127.0.0.1", &sink.port.to_string()]));
    assert_stopped("leader exit(2), then a worker connects to an unlisted destination", &st, &out, &err);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(sink.accepts(), 0, "the unlisted server accepted a connection from the agent");
    assert!(sink.bytes().is_empty(), "the unlisted server received: {}", sink.shown());
    let e = violation(&d, "shed-net", &["net.connect"]);
    assert_enforced(&e, "network.allow");
    assert_eq!(f(&e, "target"), format!("127.0.0.1:{}", sink.port));
}

#[test]
fn a_thread_left_after_the_leaders_raw_exit_cannot_delete_outside_writable() {
    if !can_run_root_tests("a_thread_left_after_the_leaders_raw_exit_cannot_delete_outside_writable") {
        return;
    }
    let Some(s) = setup("shed-unlink") else { return };
    let d = Daemon::start(&policy("shed-unlink", "kill", &s.work));
    let (st, out, err) = output(Command::new(&s.shed).args(["exit-unlink"]).arg(&s.outside));
    assert_stopped("leader exit(2), then a worker unlinks outside writable", &st, &out, &err);
    let e = violation(&d, "shed-unlink", &["file.delete"]);
    assert_enforced(&e, "files.writable");
    assert_eq!(f(&e, "target"), s.outside.display().to_string());
    if d.lsm() || !f(&e, "detail").contains("completed before the kill") {
        assert!(s.outside.exists(), "the file was deleted although the event does not say so: {e}");
    }
}

#[test]
fn a_new_image_execd_by_a_non_leader_thread_is_still_the_agent() {
    if !can_run_root_tests("a_new_image_execd_by_a_non_leader_thread_is_still_the_agent") {
        return;
    }
    let Some(s) = setup("shed-exec") else { return };
    let d = Daemon::start(&policy("shed-exec", "kill", &s.work));
    let before = FileState::of(&s.outside);
    // The new image is the real /bin/sh: its comm (`sh`) selects nothing.
    let script = format!("echo pwned >> {}; exit 0", s.outside.display());
    let (st, out, err) = output(Command::new(&s.shed).args(["thread-exec", "/bin/sh", "-c", &script]));
    assert_stopped("a thread execs sh, which appends outside writable", &st, &out, &err);
    assert_eq!(FileState::of(&s.outside), before, "the file outside writable changed");
    let e = violation(&d, "shed-exec", &["file.write"]);
    assert_enforced(&e, "files.writable");
    assert_eq!(f(&e, "comm"), "sh", "{e}");
    assert_eq!(f(&e, "target"), s.outside.display().to_string());
}

#[test]
fn a_python_execd_by_a_non_leader_thread_cannot_connect_out() {
    if !can_run_root_tests("a_python_execd_by_a_non_leader_thread_cannot_connect_out") {
        return;
    }
    let Some(s) = setup("shed-exec-net") else { return };
    let sink = Sink::start(s.t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: true }, None);
    let d = Daemon::start(&policy("shed-exec-net", "deny", &s.work));
    let py = python3();
    let script = format!(
        "import socket, sys\ntry:\n    c = socket.create_connection(('127.0.0.1', {}), timeout=3)\nexcept PermissionError:\n    sys.exit(13)\nc.sendall(b'POST /answer-exec HTTP/1.1\\r\\nHost: f\\r\\nContent-Length: 1\\r\\n\\r\\nx')\nprint('sent')",
        sink.port
    );
    let (st, out, err) = output(Command::new(&s.shed).args(["thread-exec", &py, "-c", &script]));
    assert_stopped("a thread execs python3, which connects to an unlisted destination", &st, &out, &err);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(sink.accepts(), 0, "the unlisted server accepted a connection from the agent");
    assert!(!sink.received(b"answer-exec"), "the unlisted server received: {}", sink.shown());
    let e = violation(&d, "shed-exec-net", &["net.connect"]);
    assert_enforced(&e, "network.allow");
    assert!(f(&e, "comm").starts_with("python3"), "{e}");
}
