//! The real-agent tier's harness (`tests/tests/real_agents.rs`): the agent CLIs people run
//! (Claude Code, Codex, Gemini CLI, pinned in `fixtures/agents/pins.txt` and installed by
//! `cargo xtask setup --agents`), driven headless by a scripted model API, beside the real daemon.
//!
//! One [`Setup`] is one test: a directory outside `/tmp` (the policy makes `/tmp` writable) with
//! the agent's work directory, its HOME and an `outside` directory; a CA made for the test; a
//! network namespace with only loopback and 11.0.0.1 (Gemini CLI's web fetch refuses loopback and
//! private addresses) holding every server: the scripted model API, its web page and MCP
//! listeners (`fixtures/agents/model_api.py`) and two forums (`fixtures/forum_server.py`, clear
//! text and HTTPS). Nothing the agents do can leave that namespace. Then the daemon with the
//! agent's policy, and [`Setup::run`] starts the agent in the namespace, directly (selected by
//! the policy) or through `agent-monitor exec`, for one scenario of the model API.
//!
//! `AGENT_MONITOR_REAL_AGENTS` chooses what the tests hold the agents to:
//! - unset or `enforce`: the daemon, with the policy syntax of per-destination rules
//!   ([`Tier::Enforce`]);
//! - `legacy`: the daemon, with the same policy written in the syntax the daemon had before
//!   (plain `allow` strings, `comm` selectors), to see what it holds without the new rules;
//! - `baseline`: no daemon and no `exec`; every check flips (the file is written, the POST
//!   arrives). It proves the harness drives the agents, so the enforcing run would catch a
//!   regression.
use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{binary, f, fixture, Bg, Daemon, Forum, NetNs};

/// The address of the page server inside the test's namespace: globally routable (Gemini CLI's
/// web fetch refuses loopback, private and reserved addresses), and only ever on that
/// namespace's loopback.
pub const PUBLIC_IP: &str = "11.0.0.1";

/// How long one agent run may take before its process group is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The prompt every run gets: the scripted model decides what happens.
const PROMPT: &str = "Carry out the task you were configured for, then reply with the final text.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    Claude,
    Codex,
    Gemini,
}

/// What the tests hold the agents to (`AGENT_MONITOR_REAL_AGENTS`, see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Enforce,
    Legacy,
    Baseline,
}

impl Tier {
    pub fn get() -> Tier {
        match std::env::var("AGENT_MONITOR_REAL_AGENTS").as_deref() {
            Err(_) | Ok("") | Ok("enforce") => Tier::Enforce,
            Ok("legacy") => Tier::Legacy,
            Ok("baseline") => Tier::Baseline,
            Ok(other) => panic!("AGENT_MONITOR_REAL_AGENTS={other:?}: expected enforce, legacy or baseline"),
        }
    }
    pub fn daemon(self) -> bool {
        self != Tier::Baseline
    }
}

/// How the agent is started: directly, selected by the policy's `[agent.match]`, or through
/// `agent-monitor exec --agent NAME --`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Kill,
    Exec,
}

/// One line of `fixtures/agents/pins.txt`.
#[derive(Clone, Debug)]
pub struct Pin {
    pub agent: String,
    pub package: String,
    pub version: String,
}

impl Pin {
    /// `@scope/name@version`, as npm takes it.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.package, self.version)
    }
}

/// The pinned agents, from `fixtures/agents/pins.txt`.
pub fn pins() -> Vec<Pin> {
    let text = fs::read_to_string(fixture("agents/pins.txt")).expect("tests/fixtures/agents/pins.txt");
    parse_pins(&text)
}

pub fn parse_pins(text: &str) -> Vec<Pin> {
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 3, "pins.txt: expected `NAME PACKAGE VERSION`, got {l:?}");
            Pin { agent: w[0].into(), package: w[1].into(), version: w[2].into() }
        })
        .collect()
}

/// Where the pinned agents are installed: `AGENT_MONITOR_AGENTS_DIR`, else
/// `~/.cache/agent-monitor/agents` (what `cargo xtask setup --agents` uses).
pub fn agents_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AGENT_MONITOR_AGENTS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/agent-monitor/agents")
}

/// The install directory of one pinned package: `<agents_dir>/@scope+name@version`.
pub fn install_dir(pin: &Pin) -> PathBuf {
    agents_dir().join(pin.spec().replace('/', "+"))
}

/// The file `cargo xtask setup --agents` writes into an install directory once the install
/// is complete and the agent answers `--version`.
pub const INSTALLED_MARKER: &str = ".agent-monitor-installed";

impl Agent {
    pub fn name(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
            Agent::Gemini => "gemini",
        }
    }

    pub fn pin(self) -> Pin {
        let all = pins();
        all.iter()
            .find(|p| p.agent == self.name())
            .cloned()
            .unwrap_or_else(|| panic!("{} is not in pins.txt", self.name()))
    }

    /// The installed package, or a panic that says how to install it (never a silent pass).
    pub fn install(self) -> PathBuf {
        let pin = self.pin();
        let dir = install_dir(&pin);
        if !dir.join(INSTALLED_MARKER).exists() {
            panic!(
                "{} is not installed in {}: run `cargo xtask setup --agents` (or `cargo xtask test`, which does)",
                pin.spec(),
                dir.display()
            );
        }
        dir
    }

    /// The program to start, as a path inside the install directory.
    ///
    /// Claude Code through `node_modules/.bin/claude`, as npm links it: its comm is then
    /// `claude` (`claude.exe` when started by its real name). Codex and Gemini CLI by their
    /// script's path inside the package, so that the script path (`.../@openai/codex/...`) is
    /// in the command line the `cmdline` selector reads: through `.bin/` it would not be.
    pub fn program(self, install: &Path) -> PathBuf {
        let m = install.join("node_modules");
        match self {
            Agent::Claude => m.join(".bin/claude"),
            Agent::Codex => m.join("@openai/codex/bin/codex.js"),
            Agent::Gemini => m.join("@google/gemini-cli/bundle/gemini.js"),
        }
    }

    /// The path prefix of its model calls (all POSTs).
    pub fn model_paths(self) -> &'static [&'static str] {
        match self {
            Agent::Claude => &["/v1/messages"],
            Agent::Codex => &["/v1/responses"],
            Agent::Gemini => &["/v1beta/models/"],
        }
    }

    /// Its own web-fetch tool that runs on this machine (Codex has none: `web_search` runs at
    /// OpenAI).
    pub fn has_web_fetch(self) -> bool {
        self != Agent::Codex
    }

    /// The `[agent.match]` body: the selectors of the new syntax, or of the old one (`comm`
    /// only: for Gemini CLI that is every `node`, which is why `cmdline` exists).
    fn selector(self, tier: Tier) -> &'static str {
        match (self, tier) {
            (Agent::Claude, _) => r#"comm = ["claude", "claude.exe"]"#,
            (Agent::Codex, Tier::Legacy) => r#"comm = ["codex", "node"]"#,
            (Agent::Codex, _) => "comm = [\"codex\"]\ncmdline = [\"*/@openai/codex/*\"]",
            (Agent::Gemini, Tier::Legacy) => r#"comm = ["node"]"#,
            (Agent::Gemini, _) => r#"cmdline = ["*/@google/gemini-cli/*"]"#,
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory removed on drop, under `/var/tmp`: outside the policy's writable `/tmp`.
pub struct Root(pub PathBuf);

impl Root {
    fn new(tag: &str) -> Root {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("/var/tmp/am-agents-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Root(p)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if std::env::var_os("AGENT_MONITOR_REAL_AGENTS_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The test's own CA and one server certificate for every server of the test (127.0.0.1,
/// localhost, ::1 and [`PUBLIC_IP`]); EC keys, so it takes milliseconds.
pub struct Ca {
    pub cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        fs::create_dir_all(dir).unwrap();
        let openssl = |args: &str| {
            let out = Command::new("openssl").args(args.split_whitespace()).current_dir(dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=agent-monitor-real-agent-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        openssl(&format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost"));
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1,IP:{PUBLIC_IP}\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        );
        fs::write(dir.join("server.ext"), ext).unwrap();
        openssl(
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
             -extfile server.ext",
        );
        Ca { cert: dir.join("ca.crt"), server_cert: dir.join("server.crt"), server_key: dir.join("server.key") }
    }
}

/// `fixtures/agents/model_api.py`, in the test's namespace: the model API on 127.0.0.1, the
/// web page on [`PUBLIC_IP`], the MCP server on 127.0.0.1, each on its own port.
pub struct ModelApi {
    pub model: u16,
    pub web: u16,
    pub mcp: u16,
    pub log: PathBuf,
    pub scenario: PathBuf,
    _child: Bg,
}

impl ModelApi {
    fn start(dir: &Path, ns: &NetNs, ca: &Ca) -> ModelApi {
        let (log, ready, scenario) = (dir.join("requests.jsonl"), dir.join("servers.json"), dir.join("scenario.json"));
        fs::write(&scenario, "{\"steps\": []}").unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, "python3"]).arg(fixture("agents/model_api.py"));
        cmd.arg("--cert").arg(&ca.server_cert).arg("--key").arg(&ca.server_key);
        cmd.args(["--model", "127.0.0.1:0", "--web", &format!("{PUBLIC_IP}:0"), "--mcp", "127.0.0.1:0"]);
        cmd.arg("--scenario").arg(&scenario).arg("--log").arg(&log).arg("--ready").arg(&ready);
        let err = fs::File::create(dir.join("model_api.err")).unwrap();
        let child = Bg(cmd.stdout(Stdio::null()).stderr(err).spawn().expect("start model_api.py"));
        let t = Instant::now();
        while !ready.exists() {
            let why = fs::read_to_string(dir.join("model_api.err")).unwrap_or_default();
            assert!(t.elapsed() < Duration::from_secs(10), "model_api.py did not start: {why}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ports: Value = serde_json::from_str(&fs::read_to_string(&ready).unwrap()).unwrap();
        let port = |k: &str| ports[k].as_u64().unwrap() as u16;
        ModelApi { model: port("model"), web: port("web"), mcp: port("mcp"), log, scenario, _child: child }
    }

    /// Every request logged so far (complete lines), from byte `from` of the log.
    fn requests_from(&self, from: u64) -> Vec<Value> {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_string(&mut text);
        }
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }
}

/// What the test sets up before the daemon starts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Configure the MCP server `forum` (the model API's `mcp` listener) in the agent.
    pub mcp: bool,
    /// A learning run: the policy alerts instead of killing, and records what it allows
    /// (`audit = true`).
    pub learn: bool,
}

/// One test: directories, CA, namespace, servers, the agent's configuration and the daemon.
pub struct Setup {
    pub agent: Agent,
    pub mode: Mode,
    pub tier: Tier,
    pub opts: Options,
    pub install: PathBuf,
    pub work: PathBuf,
    pub home: PathBuf,
    pub outside: PathBuf,
    pub ca: Ca,
    pub api: ModelApi,
    pub forum_http: Forum,
    pub forum_https: Forum,
    pub policy: String,
    /// Dropped after the servers, before the namespace and the directory.
    pub daemon: Option<Daemon>,
    pub ns: NetNs,
    pub root: Root,
}

impl Setup {
    pub fn new(agent: Agent, mode: Mode, opts: Options) -> Setup {
        let tier = Tier::get();
        let install = agent.install();
        let root = Root::new(agent.name());
        let (work, home, outside) = (root.0.join("work"), root.0.join("home"), root.0.join("outside"));
        for d in [&work, &home, &outside] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(work.join("README.txt"), "real-agent work dir: READ-ME-MARKER\n").unwrap();
        let ca = Ca::new(&root.0.join("ca"));
        let ns = NetNs::new(&[&format!("{PUBLIC_IP}/32")]);
        let api = ModelApi::start(&root.0, &ns, &ca);
        // Forum::start makes a self-signed certificate unless DIR/cert.pem exists: ours instead,
        // so that curl, python and node trust it through the test's CA.
        let forum_dir = root.0.join("forum");
        fs::create_dir_all(&forum_dir).unwrap();
        fs::copy(&ca.server_cert, forum_dir.join("cert.pem")).unwrap();
        fs::copy(&ca.server_key, forum_dir.join("key.pem")).unwrap();
        let forum_http = Forum::start(&forum_dir, "127.0.0.1", false, Some(&ns.0));
        let forum_https = Forum::start(&forum_dir, "127.0.0.1", true, Some(&ns.0));
        let mut s = Setup {
            agent,
            mode,
            tier,
            opts,
            install,
            work,
            home,
            outside,
            ca,
            api,
            forum_http,
            forum_https,
            policy: String::new(),
            daemon: None,
            ns,
            root,
        };
        s.configure_agent();
        s.policy = s.render_policy(tier);
        if tier.daemon() {
            let d = Daemon::start(&s.policy);
            // `exec --config` finds the daemon through the file's control_socket.
            let with_socket = format!("[daemon]\ncontrol_socket = \"{}\"\n\n{}", d.control.display(), s.policy);
            fs::write(&d.config, with_socket).unwrap();
            s.daemon = Some(d);
        }
        s
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("no daemon in the baseline tier")
    }

    pub fn model_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api.model)
    }
    pub fn page_url(&self, path: &str) -> String {
        format!("https://{PUBLIC_IP}:{}/page/{path}", self.api.web)
    }
    pub fn mcp_url(&self) -> String {
        format!("https://127.0.0.1:{}/mcp", self.api.mcp)
    }
    pub fn forum_url(&self, tls: bool, path: &str) -> String {
        match tls {
            false => format!("http://127.0.0.1:{}/{path}", self.forum_http.port),
            true => format!("https://127.0.0.1:{}/{path}", self.forum_https.port),
        }
    }

    /// The agent's settings under its HOME (`fixtures/agents/<agent>/`), pointed at the model
    /// API, with the MCP server when the test asked for it.
    fn configure_agent(&self) {
        let src = |f: &str| fs::read_to_string(fixture(&format!("agents/{}/{f}", self.agent.name()))).unwrap();
        match self.agent {
            Agent::Claude => {
                let dir = self.home.join(".claude");
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("settings.json"), src("settings.json")).unwrap();
            }
            Agent::Codex => {
                let dir = self.home.join(".codex");
                fs::create_dir_all(&dir).unwrap();
                let mut config = src("config.toml").replace("@MODEL_URL@", &self.model_url());
                if self.opts.mcp {
                    config += &format!("\n[mcp_servers.forum]\nurl = \"{}\"\n", self.mcp_url());
                }
                fs::write(dir.join("config.toml"), config).unwrap();
            }
            Agent::Gemini => {
                let dir = self.home.join(".gemini");
                fs::create_dir_all(&dir).unwrap();
                let mut settings: Value = serde_json::from_str(&src("settings.json")).unwrap();
                if self.opts.mcp {
                    settings["mcpServers"] = json!({"forum": {"httpUrl": self.mcp_url(), "trust": true}});
                }
                fs::write(dir.join("settings.json"), serde_json::to_string_pretty(&settings).unwrap()).unwrap();
            }
        }
    }

    /// The policy: agent NAME, action kill, writable work + HOME + /tmp, read-only HTTP
    /// everywhere but the model API (POST under the agent's model paths, opaque TLS accepted);
    /// the web page also takes opaque TLS, or Claude's WebFetch (BoringSSL) could not read it;
    /// the MCP server and the forums are plain entries: reads only, visible TLS only.
    pub fn render_policy(&self, tier: Tier) -> String {
        let a = self.agent;
        let writable = format!("\"{}\", \"{}\", \"/tmp\"", self.work.display(), self.home.display());
        let model = format!("127.0.0.1:{}", self.api.model);
        let page = format!("{PUBLIC_IP}:{}", self.api.web);
        let mcp = format!("127.0.0.1:{}", self.api.mcp);
        let (f1, f2) = (format!("127.0.0.1:{}", self.forum_http.port), format!("127.0.0.1:{}", self.forum_https.port));
        let allow = if tier == Tier::Legacy {
            format!("[\"{model}\", \"{page}\", \"{mcp}\", \"{f1}\", \"{f2}\", \"127.0.0.53:53\"]")
        } else {
            let paths = a.model_paths().iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
            format!(
                "[\n  {{ to = \"{model}\", methods = [\"GET\", \"HEAD\", \"OPTIONS\", \"POST\"], paths = [{paths}], opaque_tls = true }},\n  \
                 {{ to = \"{page}\", opaque_tls = true }},\n  \"{mcp}\",\n  \"{f1}\",\n  \"{f2}\",\n  \
                 {{ to = \"127.0.0.53:53\", protocol = \"udp\" }},\n]"
            )
        };
        let action = if self.opts.learn { "alert\"\naudit = true" } else { "kill\"" };
        format!(
            "[[agent]]\nname = \"{name}\"\naction = \"{action}\n[agent.match]\n{sel}\n[agent.files]\nwritable = [{writable}]\n\
             [agent.network]\nhttp_methods = [\"GET\", \"HEAD\", \"OPTIONS\"]\nallow = {allow}\n",
            name = a.name(),
            sel = a.selector(tier),
        )
    }

    /// The agent's command line and environment (REPORT.md of the session that first drove
    /// them: what each needs to run headless, offline, as root, against a local model API).
    fn command(&self) -> Command {
        let program = self.agent.program(&self.install);
        // nsenter, not `ip netns exec`: that one also remounts /sys in a mount namespace of its
        // own, without the cgroup2 hierarchy `exec` makes the agent's cgroup in.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.0)).arg("--");
        if self.mode == Mode::Exec && self.tier.daemon() {
            let config = &self.daemon().config;
            cmd.arg(binary().unwrap()).args(["exec", "--agent", self.agent.name(), "--config"]).arg(config).arg("--");
        }
        cmd.arg(&program);
        cmd.env_clear().envs([
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("TERM", "dumb"),
            ("LANG", "C.UTF-8"),
            ("USER", "root"),
            ("SHELL", "/bin/bash"),
            ("TMPDIR", "/tmp"),
        ]);
        cmd.env("HOME", &self.home);
        match self.agent {
            Agent::Claude => {
                cmd.env("ANTHROPIC_BASE_URL", self.model_url()).env("ANTHROPIC_API_KEY", "sk-ant-realagent-test");
                cmd.env("NODE_EXTRA_CA_CERTS", &self.ca.cert); // Bun's BoringSSL honours it
                cmd.env("IS_SANDBOX", "1"); // --dangerously-skip-permissions as root
                for k in [
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
                    "DISABLE_AUTOUPDATER",
                    "DISABLE_TELEMETRY",
                    "DISABLE_ERROR_REPORTING",
                ] {
                    cmd.env(k, "1");
                }
                cmd.args(["-p", PROMPT, "--dangerously-skip-permissions"]);
                if self.opts.mcp {
                    let mcp = json!({"mcpServers": {"forum": {"type": "http", "url": self.mcp_url()}}});
                    cmd.arg("--mcp-config").arg(mcp.to_string());
                }
            }
            Agent::Codex => {
                cmd.env("CODEX_HOME", self.home.join(".codex")).env("REALAGENT_API_KEY", "sk-realagent-test");
                cmd.env("CODEX_CA_CERTIFICATE", &self.ca.cert);
                cmd.args(["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]);
                cmd.args(["--color", "never", "-m", "gpt-5.5", PROMPT]);
            }
            Agent::Gemini => {
                cmd.env("GEMINI_API_KEY", "realagent-test-key").env("GOOGLE_GEMINI_BASE_URL", self.model_url());
                cmd.env("NODE_EXTRA_CA_CERTS", &self.ca.cert);
                // write_file refuses paths outside the workspace: the outside directory is
                // included, so that a refusal comes from the daemon, not from Gemini CLI.
                cmd.args(["--yolo", "-m", "gemini-2.5-flash", "--include-directories"]).arg(&self.outside);
                cmd.args(["-p", PROMPT]);
            }
        }
        cmd.current_dir(&self.work).stdin(Stdio::null());
        cmd
    }

    /// Run the agent once for `scenario` (the model API's script), bounded by [`RUN_TIMEOUT`].
    pub fn run(&self, name: &str, scenario: Value) -> Outcome {
        fs::write(&self.api.scenario, serde_json::to_string_pretty(&scenario).unwrap()).unwrap();
        let from = self.api.log_len();
        let (out, err) = (self.root.0.join(format!("{name}.stdout")), self.root.0.join(format!("{name}.stderr")));
        let mut cmd = self.command();
        cmd.stdout(fs::File::create(&out).unwrap()).stderr(fs::File::create(&err).unwrap()).process_group(0);
        let t = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pgid = child.id() as i32;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t.elapsed() > RUN_TIMEOUT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let secs = t.elapsed().as_secs_f64();
        // What is left of the run (a timeout; a background child): its process group.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        if status.is_none() {
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_millis(100)); // the servers' last log lines
        let o = Outcome {
            name: name.to_string(),
            agent: self.agent,
            status,
            secs,
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
            requests: self.api.requests_from(from),
        };
        eprintln!("{}", o.describe());
        o
    }

    /// The events of this agent (every kind), as lines for a failure message.
    pub fn events_text(&self) -> String {
        let Some(d) = &self.daemon else { return "(no daemon)".into() };
        d.events().iter().filter(|e| f(e, "agent") == self.agent.name()).map(|e| format!("  {e}\n")).collect()
    }

    /// The agent's violations, after in-flight events had time to arrive.
    pub fn violations(&self) -> Vec<Value> {
        self.daemon().settle_events(|e| f(e, "agent") == self.agent.name() && f(e, "verdict") == "violation")
    }

    /// Wait (up to 10 s) for the agent's violation event matching `pred`. A failure shows the
    /// run, then the agent's violations first (one that killed the agent before the scenario's
    /// own action is the usual story), then every event of the agent.
    pub fn expect_violation(&self, o: &Outcome, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let name = self.agent.name();
        let d = self.daemon();
        let t = Instant::now();
        loop {
            let events = d.events();
            let mine: Vec<&Value> = events.iter().filter(|e| f(e, "agent") == name).collect();
            if let Some(e) = mine.iter().find(|e| f(e, "verdict") == "violation" && pred(e)) {
                return (*e).clone();
            }
            if t.elapsed() > Duration::from_secs(10) {
                let v: String =
                    mine.iter().filter(|e| f(e, "verdict") == "violation").map(|e| format!("  {e}\n")).collect();
                panic!(
                    "no violation event {what} within 10 s\n-- violations of agent {name}\n{v}\n{}\n-- every event of agent {name}\n{}",
                    o.describe(),
                    self.events_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon saw this agent start: a `process.exec` of the agent's name (the selector, or
    /// the `exec` cgroup, found it). Without it, a read-only run would pass for nothing.
    pub fn assert_selected(&self) {
        let name = self.agent.name();
        self.daemon().wait_event(&format!("process.exec of agent {name}"), |e| {
            f(e, "agent") == name && f(e, "kind") == "process.exec"
        });
    }
}

/// One agent run.
pub struct Outcome {
    pub name: String,
    pub agent: Agent,
    /// `None`: killed by the harness after [`RUN_TIMEOUT`].
    pub status: Option<ExitStatus>,
    pub secs: f64,
    pub stdout: String,
    pub stderr: String,
    /// What the model API's listeners logged during the run (not the TLS records).
    pub requests: Vec<Value>,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Killed by SIGKILL: directly, or through `agent-monitor exec` (which exits 128+9).
    pub fn killed(&self) -> bool {
        self.status.is_some_and(|s| s.signal() == Some(libc::SIGKILL) || s.code() == Some(128 + libc::SIGKILL))
    }

    pub fn status_text(&self) -> String {
        match self.status {
            None => format!("timeout after {:.0} s", RUN_TIMEOUT.as_secs_f64()),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(sig)) => format!("signal {sig}"),
                _ => format!("{s}"),
            },
        }
    }

    /// Requests the model API logged, by listener and method (TLS records left out).
    pub fn requests(&self, listener: &str, method: &str) -> Vec<&Value> {
        self.requests
            .iter()
            .filter(|r| f(r, "api") != "tls" && f(r, "listener") == listener && f(r, "method") == method)
            .collect()
    }

    /// The agent's own model calls: POSTs to the model listener answered as a model API.
    pub fn model_posts(&self) -> Vec<&Value> {
        self.requests("model", "POST")
            .into_iter()
            .filter(|r| ["anthropic", "openai", "gemini"].contains(&f(r, "api")))
            .collect()
    }

    /// A one-paragraph account of the run, for logs and failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "== {} {}: {} in {:.1} s\n-- stdout (tail)\n{}\n-- stderr (tail)\n{}\n-- requests\n",
            self.agent.name(),
            self.name,
            self.status_text(),
            self.secs,
            tail(&self.stdout, 600),
            tail(&self.stderr, 1500)
        );
        for r in self.requests.iter().filter(|r| f(r, "api") != "tls") {
            // The fields that tell the runs apart; the whole record is in the log file.
            let sm = &r["summary"];
            let brief: Vec<String> = ["model", "tool_results", "method", "arguments", "last_tool_result"]
                .iter()
                .filter(|k| !sm[**k].is_null())
                .map(|k| format!("{k}={}", sm[*k].to_string().chars().take(80).collect::<String>()))
                .collect();
            let reply = if r["reply"].is_null() { String::new() } else { format!(" -> {}", r["reply"]) };
            s += &format!(
                "  {:<5} {:<6} {:<50} {:>3} {:<9} {}{}\n",
                f(r, "listener"),
                f(r, "method"),
                f(r, "path"),
                r["code"].as_u64().unwrap_or(0),
                f(r, "api"),
                brief.join(" "),
                reply.chars().take(160).collect::<String>()
            );
        }
        s
    }
}

fn tail(s: &str, n: usize) -> &str {
    let s = s.trim_end();
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Can this test run here? Root (network namespaces, eBPF) and, with a daemon, the binary
/// under test; otherwise it says why and is skipped, like every root test.
pub fn can_run(test: &str) -> bool {
    if Tier::get().daemon() {
        return crate::can_run_root_tests(test);
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED {test}: needs root for network namespaces");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn pins_parse() {
        let p =
            super::parse_pins("# c\nclaude  @anthropic-ai/claude-code  2.1.332  # x\n\ncodex @openai/codex 0.171.0\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].spec(), "@anthropic-ai/claude-code@2.1.332");
        assert_eq!(p[1].agent, "codex");
    }
}
