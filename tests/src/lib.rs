//! Helpers for the root end-to-end tests: start the real daemon with a policy, run real agent
//! processes, read the events log and the metrics endpoint.
//!
//! Tests panic with a message rather than return errors, and skip (with the reason) when they
//! cannot run here: not root, or the binary under test was not given.
//!
//! `xtask` (the bench and the demo) starts the daemon, its helpers and its HTTP reads through
//! this harness too: [`Daemon::launch`], [`try_http_get`] and [`stop_child`] return what went
//! wrong instead of panicking, and the panicking helpers the tests use are built on them.
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

pub use nix::sys::signal::Signal;
pub use serde_json::Value;

pub mod agents;
pub mod attack;

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
        Self::at(p).unwrap()
    }

    /// A scratch directory at `path`, emptied first (the bench keeps its daemons' files under
    /// its own scratch directory).
    pub fn at(path: PathBuf) -> std::io::Result<Self> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
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
    /// How it was started (for `restart`): the binary, its arguments and environment.
    spawn: (PathBuf, Vec<std::ffi::OsString>, Vec<(String, String)>),
    pub dir: TempDir,
    pub events: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub metrics_addr: String,
    pub control: PathBuf,
}

/// How to start the daemon: [`Daemon::start_env`] fills it from the tests' defaults; xtask's
/// bench and demo choose their own binary and directory, and the bench polls the log more often
/// (it times the start-up).
pub struct Launch<'a> {
    pub bin: PathBuf,
    /// Holds the policy, the events log, the daemon's log and its control socket; removed when
    /// the daemon is dropped.
    pub dir: TempDir,
    pub policy: &'a str,
    /// More arguments for `run`; a `--control-socket PATH` here replaces the one in `dir`.
    pub extra: &'a [&'a str],
    /// Environment variables (e.g. systemd's NOTIFY_SOCKET).
    pub env: &'a [(&'a str, &'a str)],
    /// How often the log is read for "enforcing", and for how long.
    pub poll: Duration,
    pub timeout: Duration,
}

impl<'a> Launch<'a> {
    /// `bin` with `policy` in `dir`, no more arguments, the log read every 50 ms for up to 120 s.
    pub fn new(bin: PathBuf, dir: TempDir, policy: &'a str) -> Self {
        // The VM tier's guests (TCG, several on two cores) may take longer to verify the
        // programs: AGENT_MONITOR_START_TIMEOUT_SECS.
        let secs = std::env::var("AGENT_MONITOR_START_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        let (poll, timeout) = (Duration::from_millis(50), Duration::from_secs(secs));
        Launch { bin, dir, policy, extra: &[], env: &[], poll, timeout }
    }
}

/// Why the daemon did not come up, or did not log what was awaited.
#[derive(Debug)]
pub enum StartError {
    /// Writing its files or spawning it failed: what, and the error.
    Io(String, std::io::Error),
    /// It exited first; its log.
    Exited(ExitStatus, String),
    /// The wait timed out; its log.
    TimedOut(String),
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
        let launch = Launch { extra, env, ..Launch::new(binary().expect("AGENT_MONITOR_BIN"), dir, policy) };
        let timeout = launch.timeout;
        let d = match Self::launch(launch) {
            Ok((d, _)) => d,
            Err(e) => panic!("{}", e.waiting_for("enforcing", timeout)),
        };
        // The VM tier boots kernels that run BPF LSM: there, a layer that did not come up is a
        // failure of every test, not a reason to take the fallback path (or to skip).
        if std::env::var_os("AGENT_MONITOR_EXPECT_LSM").is_some() && !d.lsm() {
            let why = d.log_text().lines().filter(|l| l.contains("bpf_lsm")).collect::<Vec<_>>().join("\n");
            panic!("AGENT_MONITOR_EXPECT_LSM is set but the BPF LSM layer is not up:\n{why}");
        }
        d
    }

    /// Start `agent-monitor run` as `launch` says and wait until it logs "enforcing"; returns
    /// it and the time from spawning it to that line.
    pub fn launch(launch: Launch) -> Result<(Daemon, Duration), StartError> {
        let Launch { bin, dir, policy, extra, env, poll, timeout } = launch;
        let io = |what: &str| {
            let what = what.to_string();
            move |e| StartError::Io(what, e)
        };
        let config = dir.join("policy.toml");
        fs::write(&config, policy).map_err(io(&format!("cannot write {}", config.display())))?;
        let events = dir.join("events.jsonl");
        let log = dir.join("daemon.log");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let control = match extra.iter().position(|a| *a == "--control-socket") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => dir.join("control.sock"),
        };
        let stderr = fs::File::create(&log).map_err(io(&format!("cannot create {}", log.display())))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--config"]).arg(&config).arg("--events").arg(&events);
        cmd.args(["--metrics-listen", &metrics_addr]);
        if !extra.contains(&"--control-socket") {
            cmd.arg("--control-socket").arg(&control);
        }
        // RUST_LOG=info unless the caller says otherwise.
        cmd.args(extra).env("RUST_LOG", "info").env("NO_COLOR", "1").envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let t = Instant::now();
        let child = cmd.spawn().map_err(io(&format!("could not start {}", bin.display())))?;
        let spawn = (
            bin.clone(),
            cmd.get_args().map(|a| a.to_owned()).collect(),
            cmd.get_envs().filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string()))).collect(),
        );
        let mut d = Daemon { child: Some(child), spawn, dir, events, log, config, metrics_addr, control };
        d.poll_log("enforcing", timeout, poll)?;
        Ok((d, t.elapsed()))
    }

    /// Stop the daemon (SIGTERM) and start it again as it was started, in the same directory
    /// (its log appended to); wait until it says it is enforcing again.
    pub fn restart(&mut self) {
        let _ = self.stop();
        let before = self.log_text().matches("enforcing").count();
        let stderr = fs::OpenOptions::new().append(true).open(&self.log).expect("the daemon's log");
        let (bin, args, envs) = &self.spawn;
        let child = Command::new(bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("restarting the daemon");
        self.child = Some(child);
        let t = Instant::now();
        while self.log_text().matches("enforcing").count() <= before {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the restarted daemon is not enforcing:\n{}",
                self.log_text()
            );
            let child = self.child.as_mut().unwrap();
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the restarted daemon exited ({st}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `needle` in the daemon's log; panic with the log if the daemon dies or times out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        if let Err(e) = self.poll_log(needle, timeout, Duration::from_millis(50)) {
            panic!("{}", e.waiting_for(needle, timeout));
        }
    }

    /// Read the log every `every` until it has `needle`, the daemon exits, or `timeout` passes.
    fn poll_log(&mut self, needle: &str, timeout: Duration, every: Duration) -> Result<(), StartError> {
        let t = Instant::now();
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("the daemon was stopped");
            match child.try_wait() {
                Ok(Some(status)) => return Err(StartError::Exited(status, self.log_text())),
                Ok(None) => {}
                Err(e) => return Err(StartError::Io("cannot wait for agent-monitor".into(), e)),
            }
            if t.elapsed() > timeout {
                return Err(StartError::TimedOut(self.log_text()));
            }
            std::thread::sleep(every);
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

    /// SIGTERM the daemon and wait up to 10 s for it (SIGKILL after): its exit status if it
    /// stopped by itself, None if it had to be killed or was stopped already.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        stop_child(&mut c, Signal::SIGTERM, Duration::from_secs(10))
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
        self.stop();
    }
}

impl StartError {
    /// The message for a wait for `needle` that failed.
    pub fn waiting_for(&self, needle: &str, timeout: Duration) -> String {
        match self {
            StartError::Io(what, e) => format!("{what}: {e}"),
            StartError::Exited(status, log) => {
                format!("agent-monitor exited ({status}) before logging {needle:?}:\n{log}")
            }
            StartError::TimedOut(log) => format!("agent-monitor did not log {needle:?} within {timeout:?}:\n{log}"),
        }
    }
}

/// Send `signal` to a child, wait up to `grace` for it to exit (SIGKILL after) and reap it: its
/// exit status if it exited by itself.
pub fn stop_child(child: &mut Child, signal: Signal, grace: Duration) -> Option<ExitStatus> {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
    let t = Instant::now();
    while t.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The body of a GET (empty if the response has none); panics if the connection fails.
pub fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("{e}")).body
}

/// An HTTP response: its head (status line and headers) and its body.
pub struct Response {
    pub head: String,
    pub body: String,
}

impl Response {
    /// The status line is `HTTP/1.1 200 ...`.
    pub fn ok(&self) -> bool {
        self.head.starts_with("HTTP/1.1 200")
    }
}

/// One HTTP/1.1 GET on a plain TcpStream (5 s read timeout); an error says which step failed.
pub fn try_http_get(addr: &str, path: &str) -> Result<Response, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| s.write_all(request.as_bytes()))
        .and_then(|()| s.read_to_string(&mut out))
        .map_err(|e| format!("GET {path} from {addr}: {e}"))?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok(Response { head: head.to_string(), body: body.to_string() })
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
            assert!(t.elapsed() < Duration::from_secs(60), "forum server did not start within 60 s");
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
pub fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    let v = poll_until(Duration::from_secs(secs), Duration::from_millis(200), f);
    v.unwrap_or_else(|| panic!("timed out after {secs} s waiting for {what}"))
}

/// Call `f` every `every` until it returns Some, for up to `timeout` (it is called once more
/// after the deadline).
pub fn poll_until<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
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
