//! The alert pipeline and the metrics against the real servers from Debian's packages:
//! Alertmanager receives the webhook alert; with the webhook down, enforcement and the events
//! log are unaffected and the failures are counted; Prometheus scrapes the daemon during a
//! scenario and every dashboard query and alert expression is run against it.
use std::{fs, process::Command, time::Duration};

use agent_monitor_e2e::{attack::*, *};

fn file_policy(extra: &str, work: &std::path::Path, comm: &str) -> String {
    format!(
        "{extra}\n[[agent]]\nname = \"observed\"\naction = \"kill\"\n[agent.match]\ncomm = [\"{comm}\"]\n[agent.files]\nwritable = [\"{}\"]\n",
        work.display()
    )
}

fn violate(t: &TempDir, comm: &str) -> std::process::ExitStatus {
    let agent = copy_binary(t.path(), "/bin/bash", comm);
    let outside = t.join("outside.txt");
    fs::write(&outside, "original\n").unwrap();
    let st = run(Command::new(&agent).arg("-c").arg(format!("echo x >> {}", outside.display())));
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original\n");
    st
}

#[test]
fn alertmanager_receives_the_violation() {
    if !can_run_root_tests("alertmanager_receives_the_violation") {
        return;
    }
    if !have("prometheus-alertmanager") {
        panic!(
            "prometheus-alertmanager is not installed (Debian package prometheus-alertmanager; .ci/run installs it)"
        );
    }
    let t = TempDir::new("am");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let cfg = t.join("alertmanager.yml");
    // A fleet's route: one group per alert name, host and agent.
    fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_by: [alertname, host, agent]\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let am_port = port();
    let _am = Bg(Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", t.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let am = format!("127.0.0.1:{am_port}");
    wait_for("alertmanager to start", 30, || std::net::TcpStream::connect(&am).ok());
    let hook = format!(
        "[daemon]\nhost_name = \"web-3\"\nlabels = {{ site = \"fra1\", cluster = \"ci\" }}\n\
         [[alerts.webhook]]\nurl = \"http://{am}/api/v2/alerts\"\nformat = \"alertmanager\"\n"
    );
    let d = Daemon::start(&file_policy(&hook, &work, "am-observed"));
    assert!(killed_by_sigkill(&violate(&t, "am-observed")));
    let ev = d.wait_event("violation", |e| f(e, "verdict") == "violation");
    let alert = wait_for("the alert in Alertmanager", 20, || {
        let body = http_get(&am, "/api/v2/alerts");
        let alerts: Value = serde_json::from_str(&body).ok()?;
        alerts.as_array()?.iter().find(|a| a["labels"]["alertname"] == "AgentMonitorViolationEvent").cloned()
    });
    let labels = &alert["labels"];
    assert_eq!(labels["agent"], "observed");
    assert_eq!(labels["kind"], "file.write");
    assert_eq!(labels["action"], "killed");
    assert_eq!(labels["severity"], "critical");
    // Where it comes from, on the alert and on the event.
    assert_eq!(
        (labels["host"].as_str(), labels["site"].as_str(), labels["cluster"].as_str()),
        (Some("web-3"), Some("fra1"), Some("ci"))
    );
    assert_eq!(f(&ev, "host"), "web-3", "{ev}");
    assert_eq!(ev["labels"]["site"], "fra1", "{ev}");
    // Alertmanager grouped it by host.
    let groups: Value = serde_json::from_str(&http_get(&am, "/api/v2/alerts/groups")).unwrap();
    assert!(
        groups.as_array().unwrap().iter().any(|g| g["labels"]["host"] == "web-3" && g["labels"]["agent"] == "observed"),
        "{groups}"
    );
    assert_eq!(alert["annotations"]["event_id"].as_str(), Some(f(&ev, "id")));
    assert_eq!(alert["annotations"]["target"], f(&ev, "target"));
    let sent = wait_for("webhook_sent metric", 10, || {
        d.metric("agent_monitor_webhook_sent_total", &[("receiver", &format!("http://{am}/api/v2/alerts"))])
            .filter(|v| *v >= 1.0)
    });
    assert_eq!(sent, 1.0);
}

#[test]
fn a_dead_webhook_changes_nothing_but_its_counters() {
    if !can_run_root_tests("a_dead_webhook_changes_nothing_but_its_counters") {
        return;
    }
    let t = TempDir::new("deadhook");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let dead = format!("127.0.0.1:{}", port()); // nothing listens there
    let hook = format!("[[alerts.webhook]]\nurl = \"http://{dead}/api/v2/alerts\"\n");
    let d = Daemon::start(&file_policy(&hook, &work, "am-deadhook"));
    let t0 = std::time::Instant::now();
    assert!(killed_by_sigkill(&violate(&t, "am-deadhook")), "enforcement changed with the webhook down");
    d.wait_event("violation in the events log", |e| f(e, "verdict") == "violation" && f(e, "action") == "killed");
    assert!(t0.elapsed() < Duration::from_secs(5), "the events log waited for the webhook");
    let receiver = format!("http://{dead}/api/v2/alerts");
    wait_for("webhook failures to be counted", 15, || {
        d.metric("agent_monitor_webhook_failures_total", &[("receiver", &receiver)]).filter(|v| *v >= 2.0)
    });
    wait_for("the undelivered alert to be counted as dropped", 15, || {
        d.metric("agent_monitor_webhook_dropped_total", &[("receiver", &receiver)]).filter(|v| *v >= 1.0)
    });
    assert_eq!(d.metric("agent_monitor_webhook_sent_total", &[("receiver", &receiver)]), Some(0.0));
}

#[test]
fn prometheus_scrapes_a_scenario_and_every_dashboard_query_answers() {
    if !can_run_root_tests("prometheus_scrapes_a_scenario_and_every_dashboard_query_answers") {
        return;
    }
    if !have("prometheus") {
        panic!("prometheus is not installed (Debian package prometheus; .ci/run installs it)");
    }
    let t = TempDir::new("prom");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let d = Daemon::start(&file_policy("", &work, "am-prom"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = root.join("dashboards/alerts.yml");
    let prom_port = port();
    let cfg = t.join("prometheus.yml");
    fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: agent-monitor\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            d.metrics_addr
        ),
    )
    .unwrap();
    let _prom = Bg(Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", t.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let prom = format!("127.0.0.1:{prom_port}");
    wait_for("prometheus to listen", 30, || std::net::TcpStream::connect(&prom).ok());
    wait_for("prometheus to scrape the daemon", 30, || {
        let body = http_get(&prom, "/api/v1/query?query=up%7Bjob%3D%22agent-monitor%22%7D");
        body.contains("\"value\":[").then_some(())
    });
    // The scenario: allowed work, a violation and a kill.
    let agent = copy_binary(t.path(), "/bin/bash", "am-prom");
    assert!(run(Command::new(&agent).arg("-c").arg(format!("echo ok > {}/in.txt", work.display()))).success());
    assert!(killed_by_sigkill(&violate(&t, "am-prom")));
    d.wait_event("violation", |e| f(e, "verdict") == "violation");
    // Let Prometheus see the new values (several scrapes) and evaluate the rules.
    std::thread::sleep(Duration::from_secs(5));
    let out = Command::new("python3")
        .arg(root.join("dashboards/check_dashboard.py"))
        .args(["--url", &format!("http://{prom}"), "--require-data"])
        // Panels this scenario cannot fill: no webhook is configured, no agent did TLS, and
        // nothing failed to decode or to write.
        .args(["--allow-empty", "(?i)webhook|alert delivery|tls|decode|sink"])
        .arg(root.join("dashboards/agent-monitor.json"))
        .output()
        .expect("check_dashboard.py");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "dashboard queries failed:\n{report}");
    assert!(report.contains(" 0 errors"), "{report}");
    // The violation and kill alerts fire in Prometheus from the scraped metrics.
    let alerts = wait_for("AgentMonitorAgentKilled to fire", 30, || {
        let body = http_get(&prom, "/api/v1/alerts");
        (body.contains("AgentMonitorAgentKilled") && body.contains("AgentMonitorViolation")).then_some(body)
    });
    assert!(alerts.contains("\"agent\":\"observed\""), "{alerts}");
}

/// `[daemon] bpf_stats`: `on` counts every run, `sampled` (the default) counts one second in ten
/// and scales by ten, `off` counts nothing; `agent_monitor_bpf_stats_sample_ratio` says which.
#[test]
fn bpf_program_statistics_follow_the_bpf_stats_setting() {
    if !can_run_root_tests("bpf_program_statistics_follow_the_bpf_stats_setting") {
        return;
    }
    let t = TempDir::new("stats");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let agent = copy_binary(t.path(), "/bin/bash", "am-stats");
    // 200 write-opens inside the work directory: allowed, each one run of sys_exit_open_any.
    let opens = format!("for i in $(seq 200); do echo $i > {}/f; done", work.display());
    let runs = |d: &Daemon| d.metric("agent_monitor_bpf_program_runs_total", &[("program", "sys_exit_open_any")]);
    for (mode, ratio) in [("on", 1.0), ("sampled", 0.1), ("off", 0.0)] {
        let setting = if mode == "sampled" { String::new() } else { format!("[daemon]\nbpf_stats = \"{mode}\"\n") };
        let d = Daemon::start(&file_policy(&setting, &work, "am-stats"));
        assert!(run(Command::new(&agent).arg("-c").arg(&opens)).success());
        let what = format!("agent_monitor_bpf_stats_sample_ratio {ratio} (bpf_stats = {mode})");
        std::thread::sleep(Duration::from_millis(2500)); // one refresh of the kernel counters
        wait_for(&what, 10, || d.metric("agent_monitor_bpf_stats_sample_ratio", &[]).filter(|r| *r == ratio));
        match mode {
            // The counters are read every 2 s; the agent's 200 opens ran while statistics were on
            // (sampled: the first second after start is a sampling window).
            "on" => {
                wait_for("exact run counts", 10, || runs(&d).filter(|n| *n >= 200.0));
            }
            "sampled" => {
                // After the first reading, every increase is ten per run the kernel counted in a
                // window (one second in ten): keep the agent busy until one lands.
                let n1 = wait_for("a first reading", 10, || runs(&d));
                let n2 = wait_for("scaled run counts", 40, || {
                    assert!(run(Command::new(&agent).arg("-c").arg(&opens)).success());
                    std::thread::sleep(Duration::from_millis(500));
                    runs(&d).filter(|n| *n > n1)
                });
                assert_eq!((n2 - n1) % 10.0, 0.0, "sampled counts are scaled by ten: {n1} -> {n2}");
            }
            _ => {
                std::thread::sleep(Duration::from_secs(3));
                assert!(runs(&d).unwrap_or(0.0) < 200.0, "statistics off, yet counted: {:?}", runs(&d));
            }
        }
    }
}

/// Start the daemon in `dir` (its files prepared by the caller) with `extra` and `env`.
fn launch_in(dir: TempDir, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let policy = "[daemon]\n";
    let launch = Launch { extra, env, ..Launch::new(binary().expect("AGENT_MONITOR_BIN"), dir, policy) };
    match Daemon::launch(launch) {
        Ok((d, _)) => d,
        Err(e) => panic!("{}", e.waiting_for("enforcing", Duration::from_secs(120))),
    }
}

/// Issue 16: what an SRE finds on disk and in the journal. The events log records what agents
/// did and is made for its owner alone (0600 whatever the umask); one an older version left
/// 0644 loses its bits for other users. With stderr the journal (systemd's `JOURNAL_STREAM`
/// names it), log lines carry no colour codes and no timestamp of their own; `--log-format
/// json` writes one JSON object per line.
#[test]
fn the_events_log_is_private_and_log_lines_fit_the_journal() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !can_run_root_tests("the_events_log_is_private_and_log_lines_fit_the_journal") {
        return;
    }
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // A new log, under a permissive umask, and the daemon's stderr is "the journal".
    let dir = TempDir::new("obs-files");
    let log = dir.join("daemon.log");
    fs::write(&log, "").unwrap();
    let m = fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    // SAFETY: a single-threaded moment of this test process (umask is process-wide; restored).
    let old = unsafe { libc::umask(0o000) };
    let d = launch_in(dir, &[], &[("JOURNAL_STREAM", &stream)]);
    unsafe { libc::umask(old) };
    assert_eq!(mode(&d.events), 0o600, "a new events log must be 0600");
    let text = d.log_text();
    assert!(!text.contains('\u{1b}'), "colour codes in the journal: {text}");
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(!l.trim_start().starts_with("20"), "a timestamp of its own in the journal: {l}");
        assert!(l.trim_start().starts_with(char::is_alphabetic), "not a level first: {l}");
    }
    drop(d);

    // An old log left 0644; JSON log lines.
    let dir = TempDir::new("obs-json");
    let events = dir.join("events.jsonl");
    fs::write(&events, "").unwrap();
    fs::set_permissions(&events, fs::Permissions::from_mode(0o644)).unwrap();
    let d = launch_in(dir, &["--log-format", "json"], &[]);
    assert_eq!(mode(&d.events), 0o640, "the old log must lose its bits for other users");
    let text = d.log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line: {l:?}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("enforcing")) && l["level"] == "INFO"),
        "{text}"
    );
    assert!(text.contains("no longer"), "the narrowing is not said: {text}");
}

/// Issue 16: an HTTPS webhook verified against the system's CA store plus the hook's own
/// `ca_file`, with a bearer token read from a file. A receiver whose certificate chains to that
/// CA gets the alert with the token (and the host); the same receiver named by a hook without
/// the CA is refused by TLS: nothing of the alert reaches it, and the failures are counted.
#[test]
fn an_https_webhook_trusts_its_ca_file_and_sends_its_bearer_token() {
    if !can_run_root_tests("an_https_webhook_trusts_its_ca_file_and_sends_its_bearer_token") {
        return;
    }
    let t = TempDir::new("hook-tls");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    // A private CA, and a receiver certificate for 127.0.0.1 signed by it (where the sink
    // server looks for its certificate).
    let p = |n: &str| t.join(n).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=am-test-ca",
        "-keyout",
        &p("ca-key.pem"),
        "-out",
        &p("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("sink-key.pem"),
        "-out",
        &p("sink.csr"),
    ]);
    fs::write(t.join("san.ext"), "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("sink.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("sink-cert.pem"),
    ]);
    let sink = Sink::start(t.path(), SinkKind::Tls { host: "127.0.0.1", port: 0 }, None);
    fs::write(t.join("token"), "s3cret-token\n").unwrap();
    let hooks = format!(
        "[daemon]\nhost_name = \"web-3\"\n\
         [[alerts.webhook]]\nurl = \"https://127.0.0.1:{port}/trusted\"\nformat = \"json\"\nca_file = \"{ca}\"\nbearer_token_file = \"{token}\"\n\
         [[alerts.webhook]]\nurl = \"https://127.0.0.1:{port}/untrusted\"\nformat = \"json\"\n",
        port = sink.port,
        ca = p("ca.pem"),
        token = p("token"),
    );
    let d = Daemon::start(&file_policy(&hooks, &work, "am-hooked"));
    assert!(killed_by_sigkill(&violate(&t, "am-hooked")));
    d.wait_event("violation", |e| f(e, "verdict") == "violation");
    let trusted = format!("https://127.0.0.1:{}/trusted", sink.port);
    let untrusted = format!("https://127.0.0.1:{}/untrusted", sink.port);
    wait_for("the trusted delivery", 20, || {
        d.metric("agent_monitor_webhook_sent_total", &[("receiver", &trusted)]).filter(|v| *v >= 1.0)
    });
    assert!(sink.received(b"POST /trusted HTTP/1.1"), "{}", sink.shown());
    assert!(sink.received(b"uthorization: Bearer s3cret-token"), "no bearer token: {}", sink.shown());
    assert!(sink.received(b"\"host\":\"web-3\""), "{}", sink.shown());
    wait_for("the untrusted delivery to fail", 30, || {
        d.metric("agent_monitor_webhook_failures_total", &[("receiver", &untrusted)]).filter(|v| *v >= 1.0)
    });
    assert!(!sink.received(b"/untrusted"), "an alert went to a receiver whose certificate is not trusted");
}

/// Issue 16: events into the log pipeline a fleet already runs. With `[daemon] syslog` every
/// event is also an RFC 5424 message; a real rsyslog receives it and parses it: the host name,
/// the app name, the event kind as MSGID and the decision as structured data (fields a pipeline
/// filters on without parsing the JSON message).
#[test]
fn rsyslog_receives_each_event_as_rfc5424_with_structured_data() {
    if !can_run_root_tests("rsyslog_receives_each_event_as_rfc5424_with_structured_data") {
        return;
    }
    if !have("rsyslogd") {
        panic!("rsyslog is not installed (`cargo xtask setup` installs it)");
    }
    let t = TempDir::new("syslog");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let rport = port();
    let out = t.join("received.log");
    let conf = t.join("rsyslog.conf");
    fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\nmodule(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{rport}\")\n\
             template(name=\"fields\" type=\"string\" string=\"%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"fields\")\n",
            dir = t.path().display(),
            out = out.display()
        ),
    )
    .unwrap();
    let pidfile = t.join("rsyslogd.pid");
    let _rsyslog = Bg(Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(&pidfile)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    wait_for("rsyslogd to start", 20, || pidfile.exists().then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let extra = format!(
        "[daemon]\nhost_name = \"web-3\"\nlabels = {{ site = \"fra1\" }}\nsyslog = \"udp:127.0.0.1:{rport}\"\n"
    );
    let d = Daemon::start(&file_policy(&extra, &work, "am-syslogged"));
    assert!(killed_by_sigkill(&violate(&t, "am-syslogged")));
    let ev = d.wait_event("violation", |e| f(e, "verdict") == "violation");
    let line = wait_for("the violation in rsyslog's file", 20, || {
        fs::read_to_string(&out).ok()?.lines().find(|l| l.contains(f(&ev, "id"))).map(str::to_string)
    });
    let fields: Vec<&str> = line.splitn(5, '|').collect();
    assert_eq!(&fields[..3], ["web-3", "agent-monitor", "file.write"], "{line}");
    let sd = fields[3];
    assert!(sd.starts_with("[agentmonitor@32473 "), "rsyslog did not parse the structured data: {line}");
    for want in [
        format!("id=\"{}\"", f(&ev, "id")),
        "agent=\"observed\"".to_string(),
        "verdict=\"violation\"".to_string(),
        "action=\"killed\"".to_string(),
        format!("target=\"{}\"", f(&ev, "target")),
        "site=\"fra1\"".to_string(),
    ] {
        assert!(sd.contains(&want), "no {want} in {sd}");
    }
    let msg: Value = serde_json::from_str(fields[4].trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(msg["id"], ev["id"]);
}
