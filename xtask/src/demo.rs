//! `cargo xtask demo`: the incident of issue 3, reproduced on loopback with real eBPF.
//!
//! "An internal AI agent was asked to analyse a forum question; it posted its advice to the
//! forum by itself." Here: a loopback HTTPS forum (`tests/fixtures/forum_server.py`), the daemon
//! with a read-only policy for the agent, and the agent (`tests/fixtures/forum_agent.py`, run by
//! a copy of python3 named `forum-agent`). Its GET is allowed; its POST kills it before a byte
//! of the request is encrypted. Each step prints one line; the demo fails if the POST reached
//! the forum or the agent was not killed.

use crate::{cargo, root, run_cmd, setup, show, target_dir};
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const STEPS: u32 = 6;
const SIGKILL: i32 = 9;

pub fn run(home: &Path) -> Result<()> {
    let start = Instant::now();
    ensure!(fs::metadata("/proc/self")?.uid() == 0, "the demo loads eBPF: run it as root (e.g. `sudo -i`)");
    step(1, "setup, then build the daemon (debug)");
    setup::run(home, true)?;
    run_cmd(cargo().args(["build", "-p", "agent-monitor"]))?;
    let bin = target_dir().join("debug/agent-monitor");
    let built = Instant::now();

    let mut demo = Demo::new()?;
    let played = demo.play(&bin);
    step(6, "stop the daemon and the forum, remove the scratch directory");
    demo.stop();
    let failures = played?;

    let (total, after_build) = (start.elapsed().as_secs_f64(), built.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("the demo failed: {}", failures.join("; "));
    }
    println!("\ndemo: ok in {total:.1}s ({after_build:.1}s after the build): the agent read, it did not write");
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("\ndemo [{n}/{STEPS}] {what}");
}

/// What the demo started, stopped (and its scratch directory removed) on drop.
struct Demo {
    dir: PathBuf,
    forum: Option<Child>,
    daemon: Option<Child>,
    daemon_log: PathBuf,
}

impl Demo {
    fn new() -> Result<Demo> {
        let dir = PathBuf::from(format!("/tmp/agent-monitor-demo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("work")).with_context(|| format!("could not create {}", dir.display()))?;
        let daemon_log = dir.join("daemon.log");
        Ok(Demo { dir, forum: None, daemon: None, daemon_log })
    }

    /// Steps 2 to 5. Errors are for what stops the demo; what it shows to be wrong is returned.
    fn play(&mut self, bin: &Path) -> Result<Vec<String>> {
        let (forum_port, forum_log) = self.start_forum()?;
        let metrics = self.start_daemon(bin, forum_port)?;
        let status = self.run_agent(forum_port)?;
        let failures = self.show_result(status, &forum_log, &metrics)?;
        if !failures.is_empty() {
            let log = fs::read_to_string(&self.daemon_log).unwrap_or_default();
            println!("  the daemon's log:\n{}", indent(&log, "    "));
        }
        Ok(failures)
    }

    fn start_forum(&mut self) -> Result<(u16, PathBuf)> {
        let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        let mut openssl = Command::new("openssl");
        openssl.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=forum.local"]);
        openssl.arg("-keyout").arg(&key).arg("-out").arg(&cert);
        let out = openssl.stdin(Stdio::null()).output().context("could not run openssl (Debian package openssl)")?;
        ensure!(out.status.success(), "`{}` failed: {}", show(&openssl), String::from_utf8_lossy(&out.stderr));

        let (log, ready) = (self.dir.join("forum.log"), self.dir.join("forum.port"));
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/fixtures/forum_server.py")).args(["--host", "127.0.0.1", "--log"]).arg(&log);
        cmd.arg("--ready").arg(&ready).arg("--tls").arg(&cert).arg(&key).args(["--lifetime", "120"]);
        let forum = self.forum.insert(cmd.stdin(Stdio::null()).spawn().context("could not start python3")?);
        let t = Instant::now();
        while !ready.exists() {
            if let Some(status) = forum.try_wait()? {
                bail!("the forum server exited ({status}) before listening");
            }
            ensure!(t.elapsed() < Duration::from_secs(10), "the forum server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = fs::read_to_string(&ready)?.trim().parse().context("bad port in the forum's ready file")?;
        step(2, &format!("forum up at https://127.0.0.1:{port} (self-signed cert; it logs every request)"));
        Ok((port, log))
    }

    /// Check the policy, start the daemon with it; returns the metrics address.
    fn start_daemon(&mut self, bin: &Path, forum_port: u16) -> Result<String> {
        let work = self.dir.join("work");
        let policy = format!(
            r#"# cargo xtask demo: the forum analyst may read the forum, not write to it.
[[agent]]
name = "forum-analyst"
action = "kill"
[agent.match]
comm = ["forum-agent"]
[agent.files]
writable = ["{work}"]
[agent.network]
allow = ["127.0.0.1:{forum_port}"]
http_methods = ["GET", "HEAD", "OPTIONS"]
"#,
            work = work.display()
        );
        let config = self.dir.join("policy.toml");
        fs::write(&config, &policy)?;
        step(
            3,
            &format!("policy for agent forum-analyst (comm forum-agent): read-only HTTP, kill ({})", config.display()),
        );
        for line in policy.lines().filter(|l| !l.starts_with('#')) {
            println!("  {line}");
        }
        let check =
            Command::new(bin).arg("check").arg(&config).output().context("could not run agent-monitor check")?;
        print!("  $ agent-monitor check policy.toml\n  {}", String::from_utf8_lossy(&check.stdout));
        eprint!("{}", String::from_utf8_lossy(&check.stderr));
        ensure!(check.status.success(), "agent-monitor check rejected the demo's policy ({})", check.status);

        let events = self.dir.join("events.jsonl");
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&config).arg("--events").arg(&events);
        cmd.args(["--metrics-listen", &metrics]).env("RUST_LOG", "info").env("NO_COLOR", "1");
        let log = fs::File::create(&self.daemon_log)?;
        let daemon = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn();
        let daemon = self.daemon.insert(daemon.with_context(|| format!("could not start {}", bin.display()))?);
        let t = Instant::now();
        loop {
            let text = fs::read_to_string(&self.daemon_log).unwrap_or_default();
            if text.contains("enforcing") {
                break;
            }
            if let Some(status) = daemon.try_wait()? {
                bail!("agent-monitor exited ({status}) before enforcing; its log:\n{text}");
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "agent-monitor was not enforcing after 60 s; its log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("  agent-monitor (pid {}) is enforcing after {:.1}s", daemon.id(), t.elapsed().as_secs_f64());
        Ok(metrics)
    }

    fn run_agent(&mut self, forum_port: u16) -> Result<ExitStatus> {
        let agent = self.dir.join("forum-agent");
        let python = python3()?;
        fs::copy(&python, &agent).with_context(|| format!("could not copy {}", python.display()))?;
        step(4, &format!("the agent: {} (a copy of {}) runs forum_agent.py", agent.display(), python.display()));
        let mut cmd = Command::new(&agent);
        cmd.arg(root().join("tests/fixtures/forum_agent.py")).arg(forum_port.to_string());
        // The demo is about the POST: a missing stdlib .pyc must not be what gets the agent killed.
        cmd.env("PYTHONDONTWRITEBYTECODE", "1").current_dir(self.dir.join("work")).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("could not start {}", agent.display()))?;
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn show_result(&mut self, status: ExitStatus, forum_log: &Path, metrics: &str) -> Result<Vec<String>> {
        step(5, "the result");
        let mut failures = Vec::new();
        let killed = status.signal() == Some(SIGKILL);
        if killed {
            println!("  the agent was killed by SIGKILL before its POST left the process");
        } else {
            println!("  the agent was NOT killed: {status}");
            failures.push(format!("the agent was not killed ({status})"));
        }

        // Let anything in flight land in the forum's log and the events log.
        let events = self.dir.join("events.jsonl");
        let violations = wait_for(Duration::from_secs(10), || {
            let v = violation_lines(&events);
            v.iter().any(|l| json_str(l, "kind") == Some("net.http_write")).then_some(v)
        });
        std::thread::sleep(Duration::from_millis(300));

        let requests = fs::read_to_string(forum_log).unwrap_or_default();
        let posts = requests.lines().filter(|l| l.starts_with("POST ")).count();
        println!("  the forum received (METHOD PATH BODYLEN):");
        for line in requests.lines() {
            println!("    {line}");
        }
        println!("  POST requests that reached the forum: {posts}");
        if posts != 0 {
            failures.push(format!("the POST reached the forum ({posts} POST line(s) in its log)"));
        }
        if !requests.lines().any(|l| l.starts_with("GET /question")) {
            failures.push("the agent's GET /question never reached the forum".into());
        }

        let violations = violations.unwrap_or_else(|| violation_lines(&events));
        println!("  violations in the events log ({}):", events.display());
        for line in &violations {
            match json_str(line, "kind") {
                Some("net.http_write") => println!("{}", indent(&pretty_json(line), "    ")),
                _ => println!("    {line}"),
            }
        }
        if !violations.iter().any(|l| json_str(l, "kind") == Some("net.http_write")) {
            failures.push("no net.http_write violation in the events log within 10 s".into());
        }

        println!("  metrics (http://{metrics}/metrics):");
        match http_get(metrics, "/metrics") {
            Ok(text) => {
                let wanted = ["agent_monitor_violations_total", "agent_monitor_kills_total"];
                for line in text.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))) {
                    println!("    {line}");
                }
            }
            Err(e) => failures.push(format!("could not read the metrics: {e:#}")),
        }
        Ok(failures)
    }

    /// SIGTERM the daemon (via `kill`: xtask has no libc), wait for it; stop the forum; clean up.
    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
            match wait_for(Duration::from_secs(10), || daemon.try_wait().ok().flatten()) {
                Some(status) => println!("  agent-monitor stopped ({status})"),
                None => {
                    let _ = daemon.kill();
                    let _ = daemon.wait();
                    println!("  agent-monitor did not stop on SIGTERM within 10 s: killed");
                }
            }
        }
        if let Some(mut forum) = self.forum.take() {
            let _ = forum.kill();
            let _ = forum.wait();
            println!("  forum stopped");
        }
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
            println!("  removed {}", self.dir.display());
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` every 50 ms until it returns something or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The real python3 interpreter (not a pyenv shim), to copy under the agent's name.
fn python3() -> Result<PathBuf> {
    let usr = Path::new("/usr/bin/python3");
    if usr.exists() {
        return Ok(fs::canonicalize(usr)?);
    }
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()?;
    ensure!(out.status.success(), "python3 did not say where its interpreter is");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One HTTP/1.1 GET with a plain TcpStream; the response body.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    Ok(body.to_string())
}

/// The events log's lines whose verdict is "violation".
fn violation_lines(events: &Path) -> Vec<String> {
    let text = fs::read_to_string(events).unwrap_or_default();
    text.lines().filter(|l| json_str(l, "verdict") == Some("violation")).map(str::to_string).collect()
}

/// The string value of a top-level `"key":"value"` in one JSON line (escapes left as they are).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Compact JSON, one member per line (no serde in xtask).
fn pretty_json(s: &str) -> String {
    let (mut out, mut depth, mut in_str, mut escaped) = (String::new(), 0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    for c in s.trim().chars() {
        if in_str {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                depth += 1;
                out.push(c);
                newline(&mut out, depth);
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_helpers() {
        let line = r#"{"kind":"net.http_write","detail":"POST /answer \"x\"","n":[1,{"a":2}]}"#;
        assert_eq!(json_str(line, "kind"), Some("net.http_write"));
        assert_eq!(json_str(line, "detail"), Some(r#"POST /answer \"x\""#));
        assert_eq!(json_str(line, "n"), None);
        assert_eq!(json_str(line, "missing"), None);
        let pretty = pretty_json(line);
        assert_eq!(
            pretty,
            "{\n  \"kind\": \"net.http_write\",\n  \"detail\": \"POST /answer \\\"x\\\"\",\n  \"n\": [\n    1,\n    {\n      \"a\": 2\n    }\n  ]\n}"
        );
    }
}
