//! `cargo xtask demo`: the incident of issue 3, reproduced on loopback with real eBPF.
//!
//! "An internal AI agent was asked to analyse a forum question; it posted its advice to the
//! forum by itself." Here: a loopback HTTPS forum (`tests/fixtures/forum_server.py`), the daemon
//! with a read-only policy for the agent, and the agent (`tests/fixtures/forum_agent.py`, run by
//! a copy of python3 named `forum-agent`). Its GET is allowed; its POST kills it before a byte
//! of the request is encrypted. Each step prints one line; the demo fails if the POST reached
//! the forum or the agent was not killed.

use crate::harness::{get, start_daemon};
use crate::packages::Need;
use crate::{cargo, run_cmd, setup, target_dir};
use agent_monitor_e2e::{fixture, poll_until, python3, Daemon, Forum, Launch, TempDir};
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const STEPS: u32 = 6;
const SIGKILL: i32 = 9;

pub fn run(home: &Path) -> Result<()> {
    let start = Instant::now();
    ensure!(fs::metadata("/proc/self")?.uid() == 0, "the demo loads eBPF: run it as root (e.g. `sudo -i`)");
    step(1, "setup, then build the daemon (debug)");
    setup::run(home, true, &[Need::Tests])?;
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
    forum: Option<Forum>,
    daemon: Option<Daemon>,
}

impl Demo {
    fn new() -> Result<Demo> {
        let dir = PathBuf::from(format!("/tmp/agent-monitor-demo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("work")).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(Demo { dir, forum: None, daemon: None })
    }

    /// Steps 2 to 5. Errors are for what stops the demo; what it shows to be wrong is returned.
    fn play(&mut self, bin: &Path) -> Result<Vec<String>> {
        let forum_port = self.start_forum();
        self.start_daemon(bin, forum_port)?;
        let status = self.run_agent(forum_port)?;
        let failures = self.show_result(status)?;
        if let (false, Some(daemon)) = (failures.is_empty(), &self.daemon) {
            println!("  the daemon's log:\n{}", indent(&daemon.log_text(), "    "));
        }
        Ok(failures)
    }

    /// The e2e tests' loopback HTTPS forum (a self-signed certificate from `openssl`).
    fn start_forum(&mut self) -> u16 {
        let port = self.forum.insert(Forum::start(&self.dir, "127.0.0.1", true, None)).port;
        step(2, &format!("forum up at https://127.0.0.1:{port} (self-signed cert; it logs every request)"));
        port
    }

    /// Check the policy, start the daemon with it.
    fn start_daemon(&mut self, bin: &Path, forum_port: u16) -> Result<()> {
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

        // Its policy, events log, log and control socket, in a directory of its own.
        let dir = self.dir.join("daemon");
        let dir = TempDir::at(dir.clone()).with_context(|| format!("could not create {}", dir.display()))?;
        let launch = Launch { timeout: Duration::from_secs(60), ..Launch::new(bin.to_path_buf(), dir, &policy) };
        let (daemon, t) = start_daemon(launch)?;
        let daemon = self.daemon.insert(daemon);
        println!("  agent-monitor (pid {}) is enforcing after {:.1}s", daemon.pid(), t.as_secs_f64());
        Ok(())
    }

    fn run_agent(&mut self, forum_port: u16) -> Result<ExitStatus> {
        let agent = self.dir.join("forum-agent");
        let python = PathBuf::from(python3());
        fs::copy(&python, &agent).with_context(|| format!("could not copy {}", python.display()))?;
        step(4, &format!("the agent: {} (a copy of {}) runs forum_agent.py", agent.display(), python.display()));
        let mut cmd = Command::new(&agent);
        cmd.arg(fixture("forum_agent.py")).arg(forum_port.to_string());
        // The demo is about the POST: a missing stdlib .pyc must not be what gets the agent killed.
        cmd.env("PYTHONDONTWRITEBYTECODE", "1").current_dir(self.dir.join("work")).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("could not start {}", agent.display()))?;
        match poll_until(Duration::from_secs(30), Duration::from_millis(10), || child.try_wait().ok().flatten()) {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not finish within 30 s");
            }
        }
    }

    fn show_result(&mut self, status: ExitStatus) -> Result<Vec<String>> {
        let (Some(forum), Some(daemon)) = (&self.forum, &self.daemon) else {
            bail!("the forum or the daemon is not up")
        };
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
        let events = &daemon.events;
        let violations = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            let v = violation_lines(events);
            v.iter().any(|l| json_str(l, "kind") == Some("net.http_write")).then_some(v)
        });
        std::thread::sleep(Duration::from_millis(300));

        let requests = fs::read_to_string(&forum.log).unwrap_or_default();
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

        let violations = violations.unwrap_or_else(|| violation_lines(events));
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

        let metrics = &daemon.metrics_addr;
        println!("  metrics (http://{metrics}/metrics):");
        match get(metrics, "/metrics") {
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

    /// SIGTERM the daemon, wait for it; stop the forum; clean up.
    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            match daemon.stop() {
                Some(status) => println!("  agent-monitor stopped ({status})"),
                None => println!("  agent-monitor did not stop on SIGTERM within 10 s: killed"),
            }
        }
        if let Some(forum) = self.forum.take() {
            drop(forum);
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

/// Compact JSON, one member per line, in the daemon's field order (serde_json's Value would
/// sort the keys).
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
