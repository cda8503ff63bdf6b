//! Helpers for the hardening tests (`tests/tests/hardening_*.rs`): each of those tests runs an
//! attacker's proof of concept as an agent process against the real daemon, and asserts what a
//! user would check (the file is unchanged, the server received no byte, the agent died of
//! SIGKILL or got EPERM, the event names the rule).
//!
//! Conventions of the proofs of concept written for these tests: exit status 0 means the attack
//! went through to its end (it wrote), 13 means an operation failed with EPERM/EACCES (a layer
//! refused), anything else is a setup failure. A SIGKILL is the daemon's kill.
use std::{
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{fixture, killed_by_sigkill, python3, run, Bg, Daemon, Value};

static N: AtomicU32 = AtomicU32::new(0);

/// A TOML string literal (basic string, escaped).
pub fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// One `[[agent]]` profile. `allow` items are TOML values as written (a quoted string, or an
/// inline table such as `{ to = "127.0.0.1:53", protocol = "udp" }`); `extra` goes under
/// `[agent.network]` (e.g. `http_methods = [...]`).
pub fn agent_policy(
    name: &str,
    comms: &[&str],
    action: &str,
    writable: &[&Path],
    allow: &[String],
    network_extra: &str,
) -> String {
    let comms: Vec<String> = comms.iter().map(q).collect();
    let writable: Vec<String> = writable.iter().map(|p| q(p.display().to_string())).collect();
    format!(
        "[[agent]]\nname = {}\naction = {}\n[agent.match]\ncomm = [{}]\n[agent.files]\nwritable = [{}]\n[agent.network]\nallow = [{}]\n{network_extra}\n",
        q(name),
        q(action),
        comms.join(", "),
        writable.join(", "),
        allow.join(", ")
    )
}

/// A copy of python3 under the name (comm) `comm`, in a directory of its own under `dir`.
pub fn py_agent(dir: &Path, comm: &str) -> PathBuf {
    agent_copy(dir, &python3(), comm)
}

/// A copy of `src` named `comm`, in a directory of its own (two copies of different programs
/// may share a name).
pub fn agent_copy(dir: &Path, src: &str, comm: &str) -> PathBuf {
    let sub = dir.join(format!("bin-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&sub).unwrap();
    crate::copy_binary(&sub, src, comm)
}

/// Compile `tests/fixtures/<source>` with the C compiler into `dir/<name>` (the program's comm
/// is then `name`). None, with the reason printed, when there is no compiler.
pub fn cc(dir: &Path, source: &str, name: &str) -> Option<PathBuf> {
    cc_with(dir, source, name, &["-O2", "-Wall", "-pthread"], &[])
}

/// `cc`, with these compiler flags before the source and these libraries after it.
fn cc_with(dir: &Path, source: &str, name: &str, flags: &[&str], libs: &[&str]) -> Option<PathBuf> {
    if !crate::have("cc") {
        eprintln!("SKIPPED: no C compiler (`cc`): install gcc and libc6-dev to build {source}");
        return None;
    }
    let sub = dir.join(format!("cc-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&sub).unwrap();
    let out = sub.join(name);
    let res =
        Command::new("cc").args(flags).arg("-o").arg(&out).arg(fixture(source)).args(libs).output().expect("run cc");
    assert!(res.status.success(), "cc {source} failed:\n{}", String::from_utf8_lossy(&res.stderr));
    Some(out)
}

/// Run `cmd` to completion (at most 30 s) with its output captured: (status, stdout, stderr).
pub fn output(cmd: &mut Command) -> (ExitStatus, String, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let t = std::thread::spawn(move || child.wait_with_output());
    let start = Instant::now();
    while !t.is_finished() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = t.join().unwrap().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Did a layer stop the attacker: killed by SIGKILL, or the operation refused (exit 13)?
pub fn stopped(st: &ExitStatus) -> bool {
    killed_by_sigkill(st) || st.code() == Some(13)
}

/// Assert that the attacker was stopped; `what` names the attack.
pub fn assert_stopped(what: &str, st: &ExitStatus, stdout: &str, stderr: &str) {
    assert!(
        stopped(st),
        "{what}: the agent was neither killed by SIGKILL nor refused with EPERM: {st}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
}

/// The first violation event of agent `agent` whose kind is one of `kinds` (waits up to 10 s).
pub fn violation(d: &Daemon, agent: &str, kinds: &[&str]) -> Value {
    d.wait_event(&format!("a violation of kind {kinds:?} by agent {agent}"), |e| {
        crate::f(e, "agent") == agent && crate::f(e, "verdict") == "violation" && kinds.contains(&crate::f(e, "kind"))
    })
}

/// Assert the event refused or killed (not only alerted) and names `rule`.
pub fn assert_enforced(e: &Value, rule: &str) {
    let action = crate::f(e, "action");
    assert!(action == "killed" || action == "denied", "the event says {action:?}, not killed or denied: {e}");
    assert_eq!(crate::f(e, "rule"), rule, "the event names another rule: {e}");
}

/// What a user checks of a file: its content, mode, owner, times, extended attributes and
/// inode flags (`lsattr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u32,
    pub mtime: (i64, i64),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub flags: Option<u32>,
}

impl FileState {
    pub fn of(p: &Path) -> FileState {
        let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let content = if m.is_file() { Some(fs::read(p).unwrap()) } else { None };
        FileState {
            content,
            mode: m.mode(),
            uid: m.uid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            xattrs: xattrs(p),
            flags: inode_flags(p),
        }
    }
}

/// Every extended attribute of `p` (not following a symlink), sorted.
pub fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out: Vec<(String, Vec<u8>)> = names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let cn = std::ffi::CString::new(name).unwrap();
            let mut v = vec![0u8; 65536];
            let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr() as *mut libc::c_void, v.len()) };
            v.truncate(len.max(0) as usize);
            (String::from_utf8_lossy(name).into_owned(), v)
        })
        .collect();
    out.sort();
    out
}

/// The inode flags (`FS_IOC_GETFLAGS`, what `lsattr` shows) of a regular file or directory.
pub fn inode_flags(p: &Path) -> Option<u32> {
    let m = fs::symlink_metadata(p).ok()?;
    if !(m.is_file() || m.is_dir()) {
        return None;
    }
    let f = fs::File::open(p).ok()?;
    let mut flags: libc::c_long = 0;
    // FS_IOC_GETFLAGS = _IOR('f', 1, long)
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), FS_IOC_GETFLAGS, &mut flags) };
    (r == 0).then_some(flags as u32)
}

/// A self-signed certificate and key in `dir` (made once).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("sink-cert.pem"), dir.join("sink-key.pem"));
    if !cert.exists() {
        let st = run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sink.local"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()));
        assert!(st.success(), "openssl req failed");
    }
    (cert, key)
}

/// A server (`fixtures/sink_server.py`) that records every connection and every byte it
/// receives: what a refused write must never reach.
pub struct Sink {
    pub port: u16,
    /// The socket path, for the Unix kinds.
    pub path: Option<PathBuf>,
    log: PathBuf,
    _child: Bg,
}

/// Where and how a [`Sink`] listens.
pub enum SinkKind<'a> {
    /// TCP on HOST (a free port, or the given one); `http`: answer each header block.
    Tcp {
        host: &'a str,
        port: u16,
        http: bool,
    },
    /// TLS on HOST, answering each header block.
    Tls {
        host: &'a str,
        port: u16,
    },
    /// UDP on HOST:PORT (0: a free port).
    Udp {
        host: &'a str,
        port: u16,
    },
    UnixStream(&'a Path),
    UnixDgram(&'a Path),
}

impl Sink {
    pub fn start(dir: &Path, kind: SinkKind, netns: Option<&str>) -> Sink {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("sink-{n}.jsonl"));
        let ready = dir.join(format!("sink-{n}.port"));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        cmd.arg(fixture("sink_server.py")).arg("--log").arg(&log).arg("--ready").arg(&ready);
        let mut path = None;
        match kind {
            SinkKind::Tcp { host, port, http } => {
                cmd.args(["--proto", "tcp", "--bind", host, "--port", &port.to_string()]);
                if http {
                    cmd.arg("--http");
                }
            }
            SinkKind::Tls { host, port } => {
                let (cert, key) = self_signed(dir);
                cmd.args(["--proto", "tls", "--http", "--bind", host, "--port", &port.to_string(), "--tls"]);
                cmd.arg(cert).arg(key);
            }
            SinkKind::Udp { host, port } => {
                cmd.args(["--proto", "udp", "--bind", host, "--port", &port.to_string()]);
            }
            SinkKind::UnixStream(p) => {
                cmd.args(["--proto", "unix-stream", "--bind"]).arg(p);
                path = Some(p.to_path_buf());
            }
            SinkKind::UnixDgram(p) => {
                cmd.args(["--proto", "unix-dgram", "--bind"]).arg(p);
                path = Some(p.to_path_buf());
            }
        }
        let child = Bg(cmd.stdout(Stdio::null()).spawn().expect("start sink_server.py"));
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "the sink server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
        Sink { port, path, log, _child: child }
    }

    fn lines(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Connections accepted (stream kinds).
    pub fn accepts(&self) -> usize {
        self.lines().iter().filter(|e| e["ev"] == "accept").count()
    }

    /// Chunks received (a datagram each, for the datagram kinds).
    pub fn messages(&self) -> usize {
        self.lines().iter().filter(|e| e["ev"] == "data").count()
    }

    /// Every byte received, all connections in order of arrival.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in self.lines().iter().filter(|e| e["ev"] == "data") {
            let h = e["hex"].as_str().unwrap_or("");
            out.extend((0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()));
        }
        out
    }

    /// Did `needle` arrive (in the bytes of any connection)?
    pub fn received(&self, needle: &[u8]) -> bool {
        self.bytes().windows(needle.len()).any(|w| w == needle)
    }

    /// The bytes received, for failure messages.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// The state letter of a process (`R`, `S`, `T` stopped, `Z`...), or `?` when it is gone.
pub fn proc_state(pid: u32) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .unwrap_or('?')
}

/// A field of /proc/PID/status (e.g. "TracerPid", "VmRSS"), its first word.
pub fn proc_status(pid: u32, key: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.split_whitespace().next().unwrap_or("").to_string()))
}

/// The thread ids of process `pid` other than its main thread.
pub fn other_threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&t| t != pid).collect())
        .unwrap_or_default()
}

/// Wait (bounded) for a child to end.
pub fn wait_bounded(child: &mut std::process::Child, secs: u64) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("process {} did not end within {secs} s", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded) until `path` exists; its content.
pub fn wait_file(path: &Path, secs: u64) -> String {
    crate::wait_for(&format!("{} to appear", path.display()), secs, || {
        let s = fs::read_to_string(path).ok()?;
        (!s.is_empty()).then_some(s)
    })
}

/// A mount made by a test (or by an attack that got through), lazily unmounted on drop so that
/// no test leaves a mount in the host namespace behind.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !is_mount_point(&self.0) {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Is `p` a mount point in this (the test's) mount namespace?
pub fn is_mount_point(p: &Path) -> bool {
    let p = p.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// A loop device over a file, detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// None (with the reason printed) when no loop device can be set up here.
    pub fn attach(file: &Path) -> Option<LoopDev> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED: losetup failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(LoopDev { dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()) })
    }

    /// (major, minor) of the device.
    pub fn numbers(&self) -> (u64, u64) {
        let rdev = fs::metadata(&self.dev).unwrap().rdev();
        (libc::major(rdev) as u64, libc::minor(rdev) as u64)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Where the kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The hex of `b`, to pass bytes on a command line.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run `check` for every variant of an attack, each under `catch_unwind`, and fail once at the
/// end naming every variant that failed: one hole does not hide the others.
pub fn each_variant<T: std::fmt::Debug>(variants: &[T], check: impl Fn(&T)) {
    let mut failed = Vec::new();
    for v in variants {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(v)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{v:?}: {}", msg.lines().next().unwrap_or("")));
        }
    }
    assert!(failed.is_empty(), "{} of {} variants failed:\n  {}", failed.len(), variants.len(), failed.join("\n  "));
}

/// Assert a path operation outside `writable` was stopped and reported: the event `kind` names
/// `target` and the rule `files.writable`; the object is unchanged unless the event says the
/// tracepoint layer could only kill after the syscall had taken effect (its documented limit).
/// `before`: the object's state before the attack, None if it did not exist.
pub fn assert_path_op_stopped(
    d: &Daemon,
    agent: &str,
    kinds: &[&str],
    target: &Path,
    before: Option<&FileState>,
    (st, out, err): &(ExitStatus, String, String),
) {
    assert_stopped(&format!("{kinds:?} on {}", target.display()), st, out, err);
    let t = target.display().to_string();
    let e = d.wait_event(&format!("{kinds:?} violation on {t}"), |e| {
        crate::f(e, "agent") == agent
            && crate::f(e, "verdict") == "violation"
            && kinds.contains(&crate::f(e, "kind"))
            && crate::f(e, "target") == t
    });
    assert_enforced(&e, "files.writable");
    let after_effect = crate::f(&e, "detail").contains("completed before the kill");
    if !after_effect {
        let now = fs::symlink_metadata(target).is_ok().then(|| FileState::of(target));
        assert_eq!(now.as_ref(), before, "{t} changed although the event does not say so: {e}");
    }
}

/// A path operation, as an agent's python runs it: `OP PATH [PATH2]` with OP one of unlink,
/// rename, link, symlink, chmod, chown, mkdir, rmdir, mknod-fifo, append, truncate, utime,
/// setxattr, removexattr (`user.keep`), setacl (a POSIX ACL granting uid 65534 rw), chattr
/// (`FS_IOC_SETFLAGS` +d on an O_RDONLY descriptor). Exit 13 on EPERM/EACCES.
pub const PY_PATH_OP: &str = r#"
import os, sys
op, a = sys.argv[1], sys.argv[2]
b = sys.argv[3] if len(sys.argv) > 3 else None
try:
    if op == "unlink": os.unlink(a)
    elif op == "rename": os.rename(a, b)
    elif op == "link": os.link(a, b)
    elif op == "symlink": os.symlink(a, b)
    elif op == "chmod": os.chmod(a, 0o666)
    elif op == "chown": os.chown(a, 65534, 65534)
    elif op == "mkdir": os.mkdir(a)
    elif op == "rmdir": os.rmdir(a)
    elif op == "mknod-fifo": os.mkfifo(a)
    elif op == "append":
        with open(a, "a") as f: f.write("pwned\n")
    elif op == "truncate": os.truncate(a, 0)
    elif op == "utime": os.utime(a, (0, 0))
    elif op == "setxattr": os.setxattr(a, "user.pwned", b"1")
    elif op == "removexattr": os.removexattr(a, "user.keep")
    elif op == "setacl":
        # system.posix_acl_access, version 2: user::rw- user:65534:rw- group::r-- mask::rw- other::r--
        import struct
        entries = [(1, 6, 0xFFFFFFFF), (2, 6, 65534), (4, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
        os.setxattr(a, "system.posix_acl_access", struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
    elif op == "chattr":
        import fcntl, struct
        fd = os.open(a, os.O_RDONLY)
        flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, struct.pack("l", 0)))[0]   # FS_IOC_GETFLAGS
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags | 0x40))                         # FS_IOC_SETFLAGS: +d
    else: sys.exit(2)
except PermissionError as e:
    print(e, flush=True); sys.exit(13)
print("done", flush=True)
"#;

/// The violation events of agent `agent` so far.
pub fn violations(d: &Daemon, agent: &str) -> Vec<Value> {
    d.events().into_iter().filter(|e| crate::f(e, "agent") == agent && crate::f(e, "verdict") == "violation").collect()
}

/// Wait for a violation of agent `agent` of one of `kinds`, after the first `seen` violations of
/// that agent (for a test that runs several attacks under one daemon).
pub fn next_violation(d: &Daemon, agent: &str, kinds: &[&str], seen: usize) -> Value {
    crate::wait_for(&format!("a new violation of kind {kinds:?} by {agent}"), 10, || {
        violations(d, agent).into_iter().skip(seen).find(|e| kinds.contains(&crate::f(e, "kind")))
    })
}

/// Python that enters a private mount namespace and pivots its root to `sys.argv[1]` (which it
/// removes from argv), as an attacker would to rename the world; what follows runs there.
/// Everything it needs later must be imported before.
pub const PY_PIVOT_ROOT: &str = r#"
import ctypes, os, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
def ok(r, what):
    if r != 0:
        e = ctypes.get_errno()
        print(what, os.strerror(e), flush=True)
        sys.exit(13 if e in (1, 13) else 2)
new_root = sys.argv.pop(1).encode()
ok(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
ok(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "mount --make-rprivate /")   # MS_REC|MS_PRIVATE
ok(libc.mount(new_root, new_root, None, 0x1000 | 0x4000, None), "mount --rbind")          # MS_BIND|MS_REC
os.chdir(new_root)
SYS_pivot_root = {"x86_64": 155, "aarch64": 41}[platform.machine()]
ok(libc.syscall(SYS_pivot_root, b".", b"."), "pivot_root")
ok(libc.umount2(b".", 2), "umount2(MNT_DETACH)")
os.chdir("/")
"#;

/// `fixtures/opaque_tls_client.c` built with OpenSSL linked statically and stripped into
/// `dir/<name>`: no symbol names `SSL_write`, so its TLS is opaque (as Bun's BoringSSL is in
/// Claude Code). Needs OpenSSL's static libraries (`libssl-dev`, in `cargo xtask setup`'s list).
pub fn opaque_tls_client(dir: &Path, name: &str) -> Option<PathBuf> {
    cc_with(dir, "opaque_tls_client.c", name, &["-static", "-O1", "-s"], &["-lssl", "-lcrypto", "-lpthread"])
}

/// `fixtures/go_tls_client.go` as `go build` leaves it, with its symbol table: the daemon hooks
/// its `crypto/tls.(*Conn).Write` found there. None, with the reason printed, when Go is not
/// installed. The build cache is kept between runs (`$TMPDIR/am-e2e-gocache`).
pub fn go_tls_client_with_symbols(dir: &Path, name: &str) -> Option<PathBuf> {
    go_build(dir, name, GoBuild { strip: false })
}

/// The same client stripped (`-s -w`: no symbol table, no DWARF): the daemon finds its
/// functions through Go's own function table (`.gopclntab`), which the runtime needs.
pub fn go_tls_client_stripped(dir: &Path, name: &str) -> Option<PathBuf> {
    go_build(dir, name, GoBuild { strip: true })
}

struct GoBuild {
    strip: bool,
}

fn go_build(dir: &Path, name: &str, how: GoBuild) -> Option<PathBuf> {
    if !crate::have("go") {
        eprintln!("SKIPPED: no Go toolchain (Debian: apt-get install golang-go) to build a Go TLS client");
        return None;
    }
    let sub = dir.join(format!("go-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&sub).unwrap();
    let out = sub.join(name);
    let tmp = std::env::temp_dir();
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .args(if how.strip { &["-ldflags=-s -w"][..] } else { &[][..] })
        .arg("-o")
        .arg(&out)
        .arg(fixture("go_tls_client.go"))
        .current_dir(&sub)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", tmp.join("am-e2e-gocache"))
        .env("GOPATH", tmp.join("am-e2e-gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "auto");
    let res = cmd.output().expect("run go build");
    assert!(res.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&res.stderr));
    Some(out)
}

/// A process that is not an agent (the real python3), running `code` with `args`; the words of
/// the first line it prints (its pid, an address, a descriptor...). Killed on drop.
pub fn victim(code: &str, args: &[&str]) -> (Bg, Vec<String>) {
    use std::io::BufRead;
    let mut child =
        Bg(Command::new(python3()).args(["-c", code]).args(args).stdout(Stdio::piped()).spawn().expect("spawn victim"));
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the victim printed nothing");
    (child, line.split_whitespace().map(str::to_string).collect())
}
