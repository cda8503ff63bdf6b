//! Red team R9: self-protection is keyed on the daemon's process, not on one of its ids. A
//! signal to one of the daemon's threads (tkill, a thread pidfd), ptrace or process_vm_writev
//! aimed at a thread that is not the main one, and a signal to the daemon's process group are
//! all aimed at the daemon: `self.tamper`, rule `self_protection`, the agent killed (and the call
//! refused where BPF LSM is up), whatever the agent's action.
//!
//! The probes are harmless if they get through: SIGCONT to a running daemon, a PTRACE_SEIZE
//! that does not stop it (released when the agent exits), one byte written to an address the
//! daemon does not map.
use std::{process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

const PY_TAMPER: &str = r#"
import ctypes, os, platform, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
op, target = sys.argv[1], int(sys.argv[2])
def fail(what):
    e = ctypes.get_errno()
    print(what, os.strerror(e), flush=True)
    sys.exit(13 if e in (1, 13) else 2)
nr = {"x86_64": {"tkill": 200, "tgkill": 234, "vm_writev": 311}, "aarch64": {"tkill": 130, "tgkill": 131, "vm_writev": 271}}[platform.machine()]
try:
    if op == "tkill":
        if libc.syscall(nr["tkill"], target, signal.SIGCONT) != 0: fail("tkill")
    elif op == "tgkill":
        if libc.syscall(nr["tgkill"], int(sys.argv[3]), target, signal.SIGCONT) != 0: fail("tgkill")
    elif op == "killpg":
        os.killpg(target, signal.SIGCONT)
    elif op == "pidfd-thread":
        fd = os.pidfd_open(target, 0o200)                         # PIDFD_THREAD (6.9+)
        signal.pidfd_send_signal(fd, signal.SIGCONT)
    elif op == "ptrace":
        if libc.ptrace(0x4206, target, None, None) != 0: fail("PTRACE_SEIZE")
        time.sleep(0.3)
    elif op == "vm-writev":
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        b = ctypes.create_string_buffer(1)
        local, remote = iovec(ctypes.addressof(b), 1), iovec(0x10, 1)    # an address nothing maps
        r = libc.syscall(nr["vm_writev"], target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if r < 0 and ctypes.get_errno() in (1, 13): fail("process_vm_writev")
    print("done", flush=True)
    time.sleep(0.3)
except PermissionError as e:
    print(e, flush=True); sys.exit(13)
"#;

#[test]
fn the_daemons_threads_and_process_group_are_the_daemon() {
    if !can_run_root_tests("the_daemons_threads_and_process_group_are_the_daemon") {
        return;
    }
    let t = TempDir::new("self-threads");
    // alert: self-protection kills whatever the agent's action.
    let d = Daemon::start(&agent_policy("tamperer", &["am-tamper"], "alert", &[t.path()], &[], ""));
    let threads = other_threads(d.pid());
    assert!(!threads.is_empty(), "the daemon has no thread besides its main one");
    let tid = threads[0].to_string();
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(d.pid() as i32))).unwrap().as_raw().to_string();
    let py = py_agent(t.path(), "am-tamper");
    let daemon = d.pid().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("tgkill", vec![tid.clone(), daemon.clone()]), // the control: the daemon's tgid is named
        ("tkill", vec![tid.clone()]),
        ("pidfd-thread", vec![tid.clone()]),
        ("ptrace", vec![tid.clone()]),
        ("vm-writev", vec![tid.clone()]),
        ("killpg", vec![pgid.clone()]),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    each_variant(&names, |op| {
        let args = &cases.iter().find(|c| c.0 == *op).unwrap().1;
        if *op == "pidfd-thread" && !kernel_at_least(6, 9) {
            eprintln!("SKIPPED variant pidfd-thread: PIDFD_THREAD needs Linux 6.9");
            return;
        }
        let seen = violations(&d, "tamperer").len();
        let (st, out, err) = output(Command::new(&py).args(["-c", PY_TAMPER, op]).args(args));
        std::thread::sleep(Duration::from_millis(200));
        assert!(is_alive(d.pid()), "{op}: the daemon is gone");
        assert_eq!(proc_status(d.pid(), "TracerPid").as_deref(), Some("0"), "{op}: the daemon is traced");
        assert_ne!(proc_state(d.pid()), 'T', "{op}: the daemon is stopped");
        assert!(killed_by_sigkill(&st), "{op} aimed at the daemon: the agent was not killed: {st}\n{out}{err}");
        let e = next_violation(&d, "tamperer", &["self.tamper"], seen);
        assert_eq!((f(&e, "action"), f(&e, "rule")), ("killed", "self_protection"), "{e}");
    });
}
