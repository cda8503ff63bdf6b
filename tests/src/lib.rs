//! Helpers for the root end-to-end tests: start the real daemon with a policy, run real agent
//! processes, read the events log and the metrics endpoint.
//!
//! Tests panic with a message rather than return errors, and skip (with the reason) when they
//! cannot run here: not root, or the binary under test was not given.
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod agents;

/// The binary under test (`cargo xtask test` sets it).
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("AGENT_MONITOR_BIN").map(PathBuf::from).filter(|p| p.exists())
}

/// True if the test can load eBPF here; otherwise prints why it is skipped.
pub fn can_run_root_tests(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED {test}: needs root to load eBPF (run `cargo xtask test` as root)");
        return false;
    }
    if binary().is_none() {
        eprintln!("SKIPPED {test}: AGENT_MONITOR_BIN is not set (run through `cargo xtask test`)");
        return false;
    }
    true
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("am-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The daemon under test, stopped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub dir: TempDir,
    pub events: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub metrics_addr: String,
    pub control: PathBuf,
}

impl Daemon {
    /// Start `agent-monitor run` with this policy and wait until it says it is enforcing.
    pub fn start(policy: &str) -> Daemon {
        Self::start_with(policy, &[])
    }

    /// `start`, with more arguments for `run`.
    pub fn start_with(policy: &str, extra: &[&str]) -> Daemon {
        Self::start_env(policy, extra, &[])
    }

    /// `start_with`, with environment variables (e.g. systemd's NOTIFY_SOCKET).
    pub fn start_env(policy: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new("daemon");
        let config = dir.join("policy.toml");
        fs::write(&config, policy).unwrap();
        let events = dir.join("events.jsonl");
        let log = dir.join("daemon.log");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        // A test that names its own control socket passes `--control-socket PATH` in `extra`.
        let control = match extra.iter().position(|a| *a == "--control-socket") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => dir.join("control.sock"),
        };
        let child = Command::new(binary().expect("AGENT_MONITOR_BIN"))
            .args(["run", "--config"])
            .arg(&config)
            .arg("--events")
            .arg(&events)
            .args(["--metrics-listen", &metrics_addr])
            .args(if extra.contains(&"--control-socket") {
                vec![]
            } else {
                vec!["--control-socket".into(), control.clone()]
            })
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn agent-monitor");
        let mut d = Daemon { child: Some(child), dir, events, log, config, metrics_addr, control };
        d.wait_log("enforcing", Duration::from_secs(120));
        // The VM tier boots kernels that run BPF LSM: there, a layer that did not come up is a
        // failure of every test, not a reason to take the fallback path (or to skip).
        if std::env::var_os("AGENT_MONITOR_EXPECT_LSM").is_some() && !d.lsm() {
            let why = d.log_text().lines().filter(|l| l.contains("bpf_lsm")).collect::<Vec<_>>().join("\n");
            panic!("AGENT_MONITOR_EXPECT_LSM is set but the BPF LSM layer is not up:\n{why}");
        }
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `needle` in the daemon's log; panic with the log if the daemon dies or times out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent-monitor exited ({status}) before logging {needle:?}:\n{}", self.log_text());
            }
            if t.elapsed() > timeout {
                panic!("agent-monitor did not log {needle:?} within {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The events logged so far: every complete line (the daemon writes a batch of lines at a
    /// time, and a read can land between two writes: an unterminated last line is not an event
    /// yet). A complete line that is not JSON fails the test.
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.events).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
            .collect()
    }

    /// Wait (up to 10 s) for an event matching `pred`.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if t.elapsed() > Duration::from_secs(10) {
                panic!(
                    "no event {what} within 10 s; events:\n{}",
                    fs::read_to_string(&self.events).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Give in-flight events time to arrive, then return those matching `pred`.
    pub fn settle_events(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(500));
        self.events().into_iter().filter(|e| pred(e)).collect()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
    }

    /// The value of one sample, matched by name and a subset of labels.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// SIGKILL the daemon and reap it: nothing of it runs any more, only what it left in the
    /// kernel.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Is the BPF LSM layer deciding (in the VM tier), or the tracepoint and cgroup layers?
    pub fn lsm(&self) -> bool {
        self.metric("agent_monitor_layer_up", &[("layer", "bpf_lsm")]) == Some(1.0)
    }

    /// The layer that refuses a connect: the LSM `socket_connect` hook runs before the cgroup one.
    pub fn connect_layer(&self) -> &'static str {
        if self.lsm() {
            "bpf_lsm"
        } else {
            "cgroup"
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Find `name{labels...} value` in Prometheus text format.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// A copy of `src` named `name` in `dir`: its comm is `name`, whatever `src` was.
pub fn copy_binary(dir: &Path, src: &str, name: &str) -> PathBuf {
    let dst = dir.join(name);
    fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {src}: {e}"));
    dst
}

/// The real python3 interpreter (not a shim), for copying.
pub fn python3() -> String {
    for p in ["/usr/bin/python3"] {
        if Path::new(p).exists() {
            return fs::canonicalize(p).unwrap().display().to_string();
        }
    }
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Run a command to completion (at most 30 s) and return its status.
pub fn run(cmd: &mut Command) -> ExitStatus {
    let mut child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn killed_by_sigkill(s: &ExitStatus) -> bool {
    s.signal() == Some(libc::SIGKILL)
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Event field as a string ("" if absent).
pub fn f<'a>(e: &'a Value, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The fixtures directory (`tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A child process killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The loopback forum server (`fixtures/forum_server.py`): every request that reaches it is a
/// line in its log.
pub struct Forum {
    pub port: u16,
    pub log: PathBuf,
    _child: Bg,
}

impl Forum {
    /// Start it, optionally with TLS (a self-signed certificate made with openssl) and
    /// optionally inside a network namespace.
    pub fn start(dir: &Path, host: &str, tls: bool, netns: Option<&str>) -> Forum {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("forum-{n}.log"));
        let ready = dir.join(format!("forum-{n}.port"));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        cmd.arg(fixture("forum_server.py")).args(["--host", host, "--log"]).arg(&log).arg("--ready").arg(&ready);
        cmd.args(["--lifetime", "300"]);
        if tls {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() {
                let st = run(Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=forum.local"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(Stdio::null()));
                assert!(st.success(), "openssl req failed");
            }
            cmd.arg("--tls").arg(&cert).arg(&key);
        }
        let child = Bg(cmd.stdout(Stdio::null()).spawn().expect("start forum_server.py"));
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "forum server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
        Forum { port, log, _child: child }
    }

    /// The requests that reached the server, as "METHOD PATH BODYLEN" lines.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn count(&self, method: &str) -> usize {
        self.requests().iter().filter(|l| l.split(' ').next() == Some(method)).count()
    }
}

/// A network namespace with only loopback, holding the given addresses: traffic to them
/// cannot leave the machine. Deleted on drop.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new(addrs: &[&str]) -> NetNs {
        let name = format!("am-e2e-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        assert!(run(Command::new("ip").args(["netns", "add", &name])).success(), "ip netns add");
        assert!(run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"])).success());
        for a in addrs {
            assert!(run(Command::new("ip").args(["-n", &name, "addr", "add", a, "dev", "lo"])).success(), "addr {a}");
        }
        NetNs(name)
    }

    /// `ip netns exec NS PROGRAM`: the program keeps its own name (comm), so an agent stays one.
    pub fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A free loopback port.
pub fn port() -> u16 {
    free_port()
}

/// Wait until `f` returns Some, up to `secs`; panic with `what` otherwise.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            panic!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Is `prog` on PATH?
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
