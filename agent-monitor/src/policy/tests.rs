//! Parsing and validation, through `parse`: what `agent-monitor check` tells users.
use super::*;

const FILE: &str = "p.toml";

/// Parse `text`, expect failure, return `(line, col, message)` of every diagnostic.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    match parse(FILE, text) {
        Ok(p) => panic!("expected errors, parsed {p:#?}"),
        Err(ds) => ds
            .into_iter()
            .map(|d| {
                assert_eq!(d.file, FILE);
                (d.line, d.col, d.message)
            })
            .collect(),
    }
}

/// Expect exactly these `(line, col, substring of the message)` diagnostics.
#[track_caller]
fn expect(text: &str, want: &[(usize, usize, &str)]) {
    let got = errors(text);
    assert_eq!(got.len(), want.len(), "wrong number of diagnostics for\n{text}\ngot: {got:#?}\nwant: {want:#?}");
    for ((line, col, msg), (wl, wc, wm)) in got.iter().zip(want) {
        assert_eq!((*line, *col), (*wl, *wc), "position of {msg:?} (wanted {wm:?})\n{text}");
        assert!(msg.contains(wm), "message {msg:?} does not contain {wm:?}");
        assert!(!msg.contains('\n'), "multi-line message {msg:?}");
    }
}

fn ok(text: &str) -> Policy {
    parse(FILE, text).unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
}

const MINIMAL: &str = "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n";

#[test]
fn default_policy_parses_and_says_what_the_contract_says() {
    let p = parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
        .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
    assert_eq!(p, default_policy());
    assert_eq!(p.daemon.metrics_listen.as_deref(), Some("127.0.0.1:9750"));
    assert_eq!(p.daemon.metrics_addr(), Some("127.0.0.1:9750".parse().unwrap()));
    assert_eq!(p.daemon.events_file.as_deref(), Some("/var/log/agent-monitor/events.jsonl"));
    assert_eq!(p.daemon.control_socket.as_deref(), Some("/run/agent-monitor/control.sock"));
    assert!(p.alerts.webhook.is_empty());
    assert_eq!(p.agents.len(), 4);
    let a = &p.agents[3];
    assert_eq!(a.name, "agent-cli");
    assert_eq!(a.action, Action::Alert);
    assert!(!a.audit);
    assert_eq!(a.selector.comm, ["aider", "goose", "opencode", "opencode.exe", "copilot", "qwen"]);
    assert!(a.selector.exe.is_empty() && a.selector.cgroup.is_empty() && a.selector.uid.is_empty());
    assert_eq!(a.files.writable, ["/tmp", "/var/tmp"]);
    let allow: Vec<String> = a.network.allow.iter().map(|e| e.to_string()).collect();
    assert_eq!(allow[4..], ["{ to = \"127.0.0.53:53\", protocol = \"any\" }", "\"0.0.0.0/0:443\"", "\"[::/0]:443\""]);
    assert_eq!(a.network.http_methods, ["GET", "HEAD", "OPTIONS"]);
    // Each known agent's model API takes its POSTs, under its paths; nothing else writes.
    let claude = &p.agents[0];
    assert_eq!(claude.selector.comm, ["claude", "claude.exe"]);
    let api = &claude.network.allow[0];
    assert!(api.opaque_tls && api.methods.as_ref().is_some_and(|m| m.contains(&"POST".to_string())));
    assert_eq!(api.dest.to_string(), "api.anthropic.com:443");
    assert!(a.syscalls.allow.is_empty());
}

#[test]
fn design_doc_example_parses() {
    // The example of docs/DESIGN.md, "The contract users see".
    let p = ok(r#"
[daemon]
metrics_listen = "127.0.0.1:9750"
events_file = "/var/log/agent-monitor/events.jsonl"   # JSON lines; "-" is stdout
control_socket = "/run/agent-monitor/control.sock"

[[alerts.webhook]]
url = "http://127.0.0.1:9093/api/v2/alerts"
format = "alertmanager"          # or "json": one event per POST

[[agent]]
name = "forum-analyst"
action = "kill"                  # alert | deny | kill
[agent.match]                    # any selector matches; descendants inherit
comm = ["forum-agent"]
exe = ["/opt/forum-agent/bin/agent"]
cgroup = ["/agents.slice/forum-analyst.service"]   # relative to the cgroup v2 root
uid = [1500]
[agent.files]
writable = ["/var/lib/forum-analyst", "/tmp"]
[agent.network]
allow = ["forum.internal:443", "10.20.0.0/16:443", "127.0.0.53:53", "unix:/run/nscd/socket"]
http_methods = ["GET", "HEAD", "OPTIONS"]
"#);
    assert_eq!(
        p.alerts.webhook,
        [Webhook {
            url: "http://127.0.0.1:9093/api/v2/alerts".into(),
            format: WebhookFormat::Alertmanager,
            ca_file: None,
            bearer_token_file: None
        }]
    );
    let a = p.agent("forum-analyst").unwrap();
    assert_eq!(a.action, Action::Kill);
    assert_eq!(
        a.selector,
        Match {
            comm: vec!["forum-agent".into()],
            exe: vec!["/opt/forum-agent/bin/agent".into()],
            cgroup: vec!["/agents.slice/forum-analyst.service".into()],
            uid: vec![1500],
            cmdline: vec![],
        }
    );
    assert_eq!(
        a.network.allow,
        [
            AllowEntry::Host { host: "forum.internal".into(), port: Some(443) },
            AllowEntry::Addr { net: IpNet { addr: "10.20.0.0".parse().unwrap(), prefix_len: 16 }, port: Some(443) },
            AllowEntry::Addr { net: IpNet::host("127.0.0.53".parse().unwrap()), port: Some(53) },
            AllowEntry::Unix("/run/nscd/socket".into()),
        ]
        .map(Allow::plain)
    );
}

#[test]
fn everything_else_defaults() {
    let p = ok(MINIMAL);
    assert_eq!(p.daemon, DaemonConfig::default());
    let a = &p.agents[0];
    assert_eq!(a.action, Action::Alert);
    assert!(!a.audit);
    assert_eq!(a.network, Network::default());
    assert_eq!(a.network.http_methods, ["GET", "HEAD", "OPTIONS"]);
    assert_eq!(a.syscalls, Syscalls::default());
    // An empty file is a valid policy with no agents.
    assert_eq!(ok(""), Policy::default());
}

#[test]
fn all_settings_are_read_and_normalised() {
    let p = ok(r#"
[daemon]
metrics_listen = "[::1]:9750"
events_file = "-"
control_socket = "/run//agent-monitor/control.sock"
admin_group = "agent-admins"
pin_path = "/sys/fs/bpf/agent-monitor/"
hold_timeout_secs = 300
bpf_stats = "on"
tls_uprobes = false
host_name = "web-3"
labels = { site = "fra1", cluster = "ci" }
syslog = "udp:127.0.0.1:514"

[[alerts.webhook]]
url = "https://hooks.example/agent"
format = "json"

[[agent]]
name = "x"
action = "deny"
audit = true
[agent.match]
exe = ["/usr//bin/python3/"]
cgroup = ["/agents.slice//x.service/"]
uid = [0, 1500]
[agent.files]
writable = ["/", "/srv/work//", "/srv/work"]
[agent.network]
allow = ["API.Example.com:*"]
http_methods = []
[agent.syscalls]
allow = ["io_uring", "bpf"]
"#);
    assert_eq!(
        p.daemon,
        DaemonConfig {
            metrics_listen: Some("[::1]:9750".into()),
            events_file: Some("-".into()),
            control_socket: Some("/run/agent-monitor/control.sock".into()),
            admin_group: Some("agent-admins".into()),
            pin_path: Some("/sys/fs/bpf/agent-monitor".into()),
            hold_timeout_secs: Some(300),
            bpf_stats: Some(crate::policy::model::BpfStats::On),
            tls_uprobes: Some(crate::policy::model::TlsUprobes::Off),
            host_name: Some("web-3".into()),
            labels: [("site".to_string(), "fra1".to_string()), ("cluster".to_string(), "ci".to_string())].into(),
            syslog: Some("udp:127.0.0.1:514".into()),
        }
    );
    assert_eq!(p.alerts.webhook[0].format, WebhookFormat::Json);
    let a = &p.agents[0];
    assert_eq!((a.action, a.audit), (Action::Deny, true));
    assert_eq!(a.selector.exe, ["/usr/bin/python3"]);
    assert_eq!(a.selector.cgroup, ["/agents.slice/x.service"]);
    assert_eq!(a.selector.uid, [0, 1500]);
    assert_eq!(a.files.writable, ["/", "/srv/work", "/srv/work"]);
    assert_eq!(a.network.allow, [Allow::plain(AllowEntry::Host { host: "api.example.com".into(), port: None })]);
    assert!(a.network.http_methods.is_empty());
    assert!(a.syscalls.allows("io_uring") && a.syscalls.allows("bpf"));
    assert!(!a.syscalls.allows("raw_socket"));
}

#[test]
fn tls_uprobes_takes_a_scope_or_a_boolean() {
    use crate::policy::model::TlsUprobes;
    for (text, want) in [
        ("\"agents\"", TlsUprobes::Agents),
        ("true", TlsUprobes::Agents),
        ("\"all\"", TlsUprobes::All),
        ("\"off\"", TlsUprobes::Off),
        ("false", TlsUprobes::Off),
    ] {
        let p = ok(&format!("[daemon]\ntls_uprobes = {text}\n"));
        assert_eq!(p.daemon.tls_uprobes, Some(want), "{text}");
        // What the policy prints reads back the same.
        assert_eq!(ok(&p.to_string()).daemon.tls_uprobes, Some(want));
    }
    assert_eq!(ok("").daemon.tls_uprobes.unwrap_or_default(), TlsUprobes::Agents);
}

// --- errors toml reports -------------------------------------------------------------

#[test]
fn syntax_error_position() {
    expect("[[agent]]\nname = \"a\"\n[agent.match\n", &[(3, 13, "invalid table header")]);
    // toml reads `127.0` as a float and stops at the next dot.
    expect("[daemon]\nmetrics_listen = 127.0.0.1\n", &[(2, 23, "expected newline")]);
    expect("[[agent]]\nname = \"a\"\nname = \"b\"\n", &[(3, 1, "duplicate key `name`")]);
}

#[test]
fn a_value_quoted_in_a_message_keeps_it_on_one_line() {
    // (found by the policy fuzz target)
    let text = format!("{MINIMAL}[agent.network]\nallow = [\"\\nix:/run/x.sock\"]\n");
    expect(&text, &[(6, 10, r#"bad allow entry "\nix:/run/x.sock": empty entry or surrounding white space"#)]);
}

#[test]
fn syntax_errors_toml_gives_no_words_for_still_say_something() {
    // (found by the `policy` fuzz target: toml's message is empty for these)
    expect("\r", &[(1, 1, "U+000D is not allowed here")]);
    expect("[daemon]\n# a comment\ris cut\n", &[(2, 12, "U+000D is not allowed here")]);
    expect("# \u{1}\n", &[(1, 3, "U+0001 is not allowed here")]);
    expect("[daemon]\nhold_timeout_secs = [\r1]\n", &[(2, 23, "invalid TOML syntax")]);
}

#[test]
fn unknown_keys_everywhere() {
    expect("[deamon]\n", &[(1, 2, "unknown field `deamon`")]);
    expect("[daemon]\nmetrics = \"x\"\n", &[(2, 1, "unknown field `metrics`")]);
    expect("[alerts]\nslack = []\n", &[(2, 1, "unknown field `slack`")]);
    expect("[[alerts.webhook]]\nurl = \"http://x\"\nheaders = {}\n", &[(3, 1, "unknown field `headers`")]);
    expect("[[agent]]\nname = \"a\"\nmode = \"kill\"\n", &[(3, 1, "unknown field `mode`")]);
    expect(&format!("{MINIMAL}pid = [1]\n"), &[(5, 1, "unknown field `pid`")]);
    expect(&format!("{MINIMAL}[agent.files]\nreadable = []\n"), &[(6, 1, "unknown field `readable`")]);
    expect(&format!("{MINIMAL}[agent.network]\ndeny = []\n"), &[(6, 1, "unknown field `deny`")]);
    expect(&format!("{MINIMAL}[agent.syscalls]\ndeny = []\n"), &[(6, 1, "unknown field `deny`")]);
    expect(&format!("{MINIMAL}[agent.process]\n"), &[(5, 8, "unknown field `process`")]);
}

#[test]
fn wrong_types() {
    expect("[[agent]]\nname = 5\n", &[(2, 8, "invalid type: integer `5`, expected a string")]);
    expect("[[agent]]\nname = \"a\"\naudit = \"yes\"\n", &[(3, 9, "expected a boolean")]);
    expect("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = \"a\"\n", &[(4, 8, "expected a sequence")]);
    expect("[[agent]]\nname = \"a\"\n[agent.match]\nuid = [\"1500\"]\n", &[(4, 8, "expected u32")]);
    expect("[[agent]]\nname = \"a\"\n[agent.match]\nuid = [-1]\n", &[(4, 8, "expected u32")]);
    expect("[daemon]\nhold_timeout_secs = -5\n", &[(2, 21, "expected u64")]);
    expect("[daemon]\nbpf_stats = \"always\"\n", &[(2, 13, "unknown variant `always`")]);
    expect("[daemon]\ntls_uprobes = \"some\"\n", &[(2, 15, "unknown tls_uprobes `some`")]);
    expect("[daemon]\ntls_uprobes = 1\n", &[(2, 15, "did not match any variant")]);
    expect(
        "[daemon]\nmetrics_listen.port = 9750\n",
        &[(2, 16, "invalid type: a table, where a single value is expected")],
    );
    expect("[[agent]]\naction = \"kill\"\n", &[(1, 1, "missing field `name`")]);
    expect("[[alerts.webhook]]\nformat = \"json\"\n", &[(1, 1, "missing field `url`")]);
}

#[test]
fn bad_enum_values_point_at_the_value() {
    expect(
        "[[agent]]\nname = \"a\"\naction = \"block\"\n",
        &[(3, 10, "unknown variant `block`, expected one of `alert`, `deny`, `kill`, `hold`")],
    );
    expect("[[agent]]\nname = \"a\"\naction = \"Kill\"\n", &[(3, 10, "unknown variant `Kill`")]);
    expect(
        "[[alerts.webhook]]\nurl = \"http://x\"\nformat = \"slack\"\n",
        &[(3, 10, "unknown variant `slack`, expected `alertmanager` or `json`")],
    );
}

// --- semantic errors: all of them, each at its value --------------------------------

#[test]
fn agent_names() {
    expect("[[agent]]\nname = \"\"\n[agent.match]\ncomm = [\"a\"]\n", &[(2, 8, "agent name is empty")]);
    expect("[[agent]]\nname = \"forum analyst\"\n[agent.match]\ncomm = [\"a\"]\n", &[(2, 8, "contains ' '")]);
    let long = "n".repeat(65);
    expect(
        &format!("[[agent]]\nname = \"{long}\"\n[agent.match]\ncomm = [\"a\"]\n"),
        &[(2, 8, "65 bytes long; at most 64")],
    );
    expect(
        "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n\n\
         [[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"b\"]\n",
        &[(7, 8, "duplicate agent name \"a\": first defined at line 2")],
    );
}

#[test]
fn agents_need_a_selector() {
    expect("[[agent]]\nname = \"a\"\n", &[(1, 1, "agent \"a\" has no selector")]);
    // An empty table: reported at its agent's [[agent]] header.
    expect(
        "[[agent]]\nname = \"a\"\n\n[agent.match]\n[agent.files]\nwritable = [\"/tmp\"]\n",
        &[(1, 1, "[agent.match] of agent \"a\" selects nothing")],
    );
    expect(
        "[[agent]]\nname = \"a\"\nmatch = { comm = [] }\n",
        &[(1, 1, "[agent.match] of agent \"a\" selects nothing")],
    );
    expect(
        "agent = [\n  { name = \"a\", match.comm = [\"x\"] },\n  { name = \"b\", match = {} },\n]\n",
        &[(3, 3, "[agent.match] of agent \"b\" selects nothing")],
    );
}

#[test]
fn too_many_agents() {
    let mut text = String::new();
    for i in 0..=MAX_AGENTS {
        text.push_str(&format!("[[agent]]\nname = \"a{i}\"\nmatch.uid = [{}]\n", 1000 + i));
    }
    // Agent number 256 starts at line 3 * 255 + 1; its name is on the next line.
    expect(&text, &[(3 * 255 + 2, 8, "too many agents: at most 255")]);
    text.truncate(text.rfind("[[agent]]").unwrap());
    assert_eq!(ok(&text).agents.len(), MAX_AGENTS);
}

#[test]
fn comm_length_and_duplicates() {
    expect(
        "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"ok\", \"forum-agent-worker\", \"\"]\n",
        &[
            (4, 15, "kernel keeps only 15 (TASK_COMM_LEN - 1), so it would be truncated to \"forum-agent-wor\""),
            (4, 37, "empty comm"),
        ],
    );
    expect(
        "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"claude\"]\n\n\
         [[agent]]\nname = \"b\"\n[agent.match]\ncomm = [\"codex\", \"claude\"]\n",
        &[(9, 18, "comm \"claude\" is already selected by agent \"a\" (line 4)")],
    );
    // Repeating a value within one agent is harmless.
    let p = ok("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"x\", \"x\"]\n");
    assert_eq!(p.agents[0].selector.comm, ["x"]);
}

#[test]
fn exe_cgroup_uid_rules_and_duplicates() {
    expect(
        r#"[[agent]]
name = "a"
[agent.match]
exe = ["bin/agent", "/opt/../agent", "/"]
cgroup = ["agents.slice", "/sys/fs/cgroup/agents.slice"]
uid = [4294967295]
"#,
        &[
            (4, 8, "exe \"bin/agent\": not an absolute path"),
            (4, 21, "exe \"/opt/../agent\": the path has a `..` component"),
            (4, 38, "is a directory"),
            (5, 11, "must start with `/`"),
            (5, 27, "includes the mount point"),
            (6, 8, "(uid_t)-1"),
        ],
    );
    let long = format!("/{}", "e".repeat(MAX_EXE_LEN));
    expect(
        &format!("[[agent]]\nname = \"a\"\n[agent.match]\nexe = [\"{long}\"]\n"),
        &[(4, 8, "252 bytes long; at most 251")],
    );
    let p = ok(&format!("[[agent]]\nname = \"a\"\n[agent.match]\nexe = [\"{}\"]\n", &long[..MAX_EXE_LEN]));
    assert_eq!(p.agents[0].selector.exe[0].len(), MAX_EXE_LEN);
    expect(
        r#"[[agent]]
name = "a"
[agent.match]
exe = ["/opt/agent"]
cgroup = ["/a.slice"]
uid = [1500]

[[agent]]
name = "b"
[agent.match]
exe = ["/opt//agent/"]
cgroup = ["/a.slice/"]
uid = [1501, 1500]
"#,
        &[
            (11, 8, "exe \"/opt/agent\" is already selected by agent \"a\" (line 4)"),
            (12, 11, "cgroup \"/a.slice\" is already selected by agent \"a\" (line 5)"),
            (13, 14, "uid 1500 is already selected by agent \"a\" (line 6)"),
        ],
    );
}

#[test]
fn writable_paths() {
    let long = format!("/{}", "w".repeat(MAX_WRITABLE_LEN));
    expect(
        &format!(
            "{MINIMAL}[agent.files]\nwritable = [\"tmp\", \"/a/./b\", \"/a/../b\", \"/a\\u0000b\", \"~/x\",\n  \"{long}\"]\n"
        ),
        &[
            (6, 13, "writable \"tmp\": not an absolute path"),
            (6, 20, "`.` component"),
            (6, 30, "`..` component"),
            (6, 41, "NUL"),
            (6, 54, "`~` is not expanded"),
            (7, 3, "201 bytes long; at most 200"),
        ],
    );
    // Exactly 200 bytes after normalisation is fine, however it was written.
    let at_limit = format!("/{}//", "w".repeat(MAX_WRITABLE_LEN - 1));
    let p = ok(&format!("{MINIMAL}[agent.files]\nwritable = [\"{at_limit}\"]\n"));
    assert_eq!(p.agents[0].files.writable[0].len(), MAX_WRITABLE_LEN);
}

#[test]
fn allow_entries() {
    expect(
        &format!(
            "{MINIMAL}[agent.network]\nallow = [\n  \"host:0\",\n  \"1.2.3.999:443\",\n  \"10.0.0.0/40:443\",\n  \":443\",\n  \"unix:run/x.sock\",\n  \"*:443\",\n  \"[::1]:99999\",\n  \"::1:53\",\n]\n"
        ),
        &[
            (7, 3, "bad allow entry \"host:0\": port 0"),
            (8, 3, "bad IPv4 address `1.2.3.999`"),
            (9, 3, "prefix length /40 is too long"),
            (10, 3, "empty host"),
            (11, 3, "must be absolute"),
            (12, 3, "0.0.0.0/0:443 and [::]/0:443"),
            (13, 3, "port 99999 is out of range"),
            (14, 3, "must be in brackets"),
        ],
    );
}

#[test]
fn http_methods_and_syscalls() {
    expect(
        &format!(
            "{MINIMAL}[agent.network]\nhttp_methods = [\"GET\", \"post\", \"GE T\"]\n[agent.syscalls]\nallow = [\"io_uring\", \"ptrace\"]\n"
        ),
        &[
            (6, 24, "write \"POST\""),
            (6, 32, "not an HTTP method"),
            (8, 22, "unknown syscall class \"ptrace\": expected one of io_uring, raw_socket, bpf"),
        ],
    );
}

#[test]
fn daemon_settings() {
    let dir = "d".repeat(MAX_UNIX_SOCKET_PATH_LEN);
    expect(
        &format!(
            r#"[daemon]
metrics_listen = "localhost:9750"
events_file = "events.jsonl"
control_socket = "/run/agent-monitor/{}/control.sock"
admin_group = "ops team"
pin_path = "sys/fs/bpf"
hold_timeout_secs = 0
host_name = "two words"
labels = {{ alertname = "x", "9lives" = "y", ok = "" }}
syslog = "tcp:127.0.0.1:514"
"#,
            dir
        ),
        &[
            (2, 18, "metrics_listen \"localhost:9750\" is not an IP:PORT socket address"),
            (3, 15, "events_file \"events.jsonl\": not an absolute path"),
            (4, 18, "a Unix socket path is at most 107"),
            (5, 15, "admin_group \"ops team\""),
            (6, 12, "pin_path \"sys/fs/bpf\": not an absolute path"),
            (7, 21, "hold_timeout_secs must be at least 1"),
            (8, 13, "host_name \"two words\" is not a host name"),
            (9, 24, "labels: \"alertname\" is not a label name"),
            (9, 40, "labels: \"9lives\" is not a label name"),
            (9, 50, "labels.ok: \"\" must be 1-128 characters"),
            (10, 10, "syslog \"tcp:127.0.0.1:514\": expected udp:HOST:PORT or unix:/path"),
        ],
    );
    expect(
        "[[alerts.webhook]]\nurl = \"ftp://x\"\n\n[[alerts.webhook]]\nurl = \"https://\"\n",
        &[(2, 7, "must start with http:// or https://"), (5, 7, "has no host")],
    );
}

#[test]
fn semantic_errors_are_all_reported_in_file_order() {
    let errs = errors(
        r#"[daemon]
metrics_listen = "nope"

[[agent]]
name = "a b"
[agent.match]
comm = ["a-comm-that-is-too-long"]
[agent.network]
allow = ["x"]

[[agent]]
name = "c"
"#,
    );
    let pos: Vec<(usize, usize)> = errs.iter().map(|(l, c, _)| (*l, *c)).collect();
    // The over-long comm is reported, not also the [agent.match] it leaves without a value.
    assert_eq!(pos, [(2, 18), (5, 8), (7, 9), (9, 10), (11, 1)], "{errs:#?}");
}

#[test]
fn diagnostics_display_as_file_line_col() {
    let ds = parse("/etc/agent-monitor/agent-monitor.toml", "[[agent]]\nname = \"a\"\naction = \"x\"\n").unwrap_err();
    assert_eq!(ds.len(), 1);
    assert!(
        ds[0].to_string().starts_with("/etc/agent-monitor/agent-monitor.toml:3:10: unknown variant `x`"),
        "{}",
        ds[0]
    );
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = std::env::temp_dir().join(format!("agent-monitor-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, MINIMAL).unwrap();
    assert_eq!(load(&good).unwrap().agents[0].name, "a");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[agent]]\nname = \"\"\nmatch.comm = [\"a\"]\n").unwrap();
    let ds = load(&bad).unwrap_err();
    assert_eq!(ds[0].to_string(), format!("{}:2:8: agent name is empty", bad.display()));

    let missing = dir.join("missing.toml");
    let ds = load(&missing).unwrap_err();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].line, 0);
    assert!(ds[0].to_string().starts_with(&format!("{}: cannot read the policy: ", missing.display())), "{}", ds[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn allow_tables_say_what_a_destination_takes() {
    let p = parse(
        FILE,
        r#"
[[agent]]
name = "a"
[agent.match]
comm = ["a"]
[agent.network]
allow = [
  { to = "127.0.0.53:53", protocol = "udp" },
  { to = "api.example.com:443", methods = ["GET", "POST"], paths = ["/v1/messages"], opaque_tls = true },
  "forum.internal:443",
]
"#,
    )
    .unwrap();
    let allow = &p.agents[0].network.allow;
    assert_eq!(allow[0].protocol, Protocol::Udp);
    assert_eq!(allow[1].paths, ["/v1/messages"]);
    assert!(allow[1].opaque_tls && !allow[2].opaque_tls);
    assert_eq!(allow[2], Allow::plain(AllowEntry::Host { host: "forum.internal".into(), port: Some(443) }));
    // The canonical form reads back as the same policy.
    assert_eq!(parse(FILE, &p.to_string()).unwrap(), p);
}

#[test]
fn allow_table_errors_and_the_replaced_key_say_why() {
    let agent = "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.network]\n";
    let errs = |net: &str| errors(&format!("{agent}{net}"));
    let one = |net: &str, want: &str| {
        let e = errs(net);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].2.contains(want), "{:?} does not say {want:?}", e[0].2);
        assert_eq!(e[0].0, 6, "{e:?}");
    };
    one("allow = [{ to = \"h:1\", protocol = \"sctp\" }]", "protocol");
    one("allow = [{ to = \"h:1\", colour = \"red\" }]", "unknown key");
    one("allow = [{ protocol = \"udp\" }]", "needs `to`");
    one("allow = [{ to = \"h:1\", paths = [\"/x\"] }]", "methods");
    one("allow = [{ to = \"h:1\", methods = [\"POST\"], paths = [\"/a/../b\"] }]", "..");
    one("allow = [{ to = \"unix:/run/x\", protocol = \"udp\" }]", "Unix socket");
    one("allow = [{ to = \"h:1\", methods = [\"PROPFIND\"] }]", "recognises only");
    one("require_http_visibility = true", "opaque_tls");
}

#[test]
fn cmdline_selectors_are_text_inside_stars_and_claimed_once() {
    let p = ok("[[agent]]\nname = \"g\"\n[agent.match]\ncmdline = [\"*/@google/gemini-cli/*\"]\n");
    assert_eq!(p.agent("g").unwrap().selector.cmdline, ["/@google/gemini-cli/"]);
    // The canonical form writes it back as it was written.
    assert!(p.to_string().contains("cmdline = [\"*/@google/gemini-cli/*\"]"), "{p}");
    let errs = errors(
        "[[agent]]\nname = \"a\"\n[agent.match]\ncmdline = [\"gemini\", \"*/x/y/*\"]\n\
         [[agent]]\nname = \"b\"\n[agent.match]\ncmdline = [\"*/x/y/*\"]\n",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!((errs[0].0, errs[0].1), (4, 12), "{errs:?}");
    assert!(errs[0].2.contains("cmdline \"gemini\": write it *TEXT*"), "{errs:?}");
    assert_eq!(errs[1].0, 8, "{errs:?}");
    assert!(errs[1].2.contains("\"*/x/y/*\"") && errs[1].2.contains("\"a\""), "{errs:?}");
}

/// `policy.d/`: one file per team beside the main file, read in name order; the set is one
/// policy, checked as one (names and selectors unique across files, errors at FILE:LINE:COL).
#[test]
fn a_policy_set_takes_fragments_from_policy_d() {
    let dir = std::env::temp_dir().join(format!("am-policy-d-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policy.d")).unwrap();
    let main = dir.join("agent-monitor.toml");
    let agent = |name: &str, comm: &str| format!("[[agent]]\nname = \"{name}\"\n[agent.match]\ncomm = [\"{comm}\"]\n");
    std::fs::write(&main, format!("[daemon]\nhold_timeout_secs = 60\n\n{}", agent("main", "main-agent"))).unwrap();
    std::fs::write(dir.join("policy.d/20-team-b.toml"), agent("b", "b-agent")).unwrap();
    std::fs::write(dir.join("policy.d/10-team-a.toml"), agent("a", "a-agent")).unwrap();
    std::fs::write(dir.join("policy.d/README"), "not a policy").unwrap();
    std::fs::write(dir.join("policy.d/.hidden.toml"), "not = [a policy").unwrap();
    let (p, files) = load_set(&main).unwrap_or_else(|d| panic!("{d:?}"));
    let names: Vec<&str> = p.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["main", "a", "b"], "main first, then the fragments in name order");
    assert_eq!(files.len(), 3);
    assert_eq!(p.daemon.hold_timeout_secs, Some(60));
    // The hash is the whole set's: a fragment changes it.
    let before = compile(&p).hash;
    std::fs::write(dir.join("policy.d/20-team-b.toml"), agent("b", "b-agent2")).unwrap();
    assert_ne!(compile(&load(&main).unwrap()).hash, before);

    // Errors in several files, each at its own FILE:LINE:COL; across files a duplicate says
    // where the first one is.
    std::fs::write(dir.join("policy.d/20-team-b.toml"), agent("main", "a-agent")).unwrap();
    std::fs::write(dir.join("policy.d/30-bad.toml"), "[[agent]]\nname = \"c\"\nbogus = 1\n").unwrap();
    std::fs::write(dir.join("policy.d/40-daemon.toml"), "[daemon]\nmetrics_listen = \"127.0.0.1:1\"\n").unwrap();
    let errs = load(&main).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    let m = main.display().to_string();
    let f = |n: &str| dir.join("policy.d").join(n).display().to_string();
    assert_eq!(errs.len(), 4, "{shown:#?}");
    assert!(
        shown[0].starts_with(&format!(
            "{}:2:8: duplicate agent name \"main\": first defined at {m}:5",
            f("20-team-b.toml")
        )),
        "{shown:#?}"
    );
    assert!(
        shown[1].starts_with(&format!(
            "{}:4:9: comm \"a-agent\" is already selected by agent \"a\" ({}:4)",
            f("20-team-b.toml"),
            f("10-team-a.toml")
        )),
        "{shown:#?}"
    );
    assert!(shown[2].starts_with(&format!("{}:3:1: unknown field `bogus`", f("30-bad.toml"))), "{shown:#?}");
    assert!(
        shown[3]
            .starts_with(&format!("{}:2:18: [daemon] settings belong in the main policy file", f("40-daemon.toml"))),
        "{shown:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
