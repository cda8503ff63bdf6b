//! The command line as a user runs it: `check` and `run` with bad input.
use std::{fs, process::Command};

use agent_monitor_e2e::*;

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let Some(bin) = binary() else {
        eprintln!("SKIPPED: AGENT_MONITOR_BIN is not set (run through `cargo xtask test`)");
        return;
    };
    let t = TempDir::new("check");
    let good = t.join("good.toml");
    fs::write(&good, "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"x\"]\n").unwrap();
    let out = Command::new(&bin).arg("check").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = t.join("bad.toml");
    fs::write(
        &bad,
        r#"[daemon]
metrics_listen = "nowhere"

[[agent]]
name = "a"
[agent.match]
comm = ["x"]
[agent.files]
writable = ["relative/path"]
[agent.network]
allow = ["10.0.0.0/33:443"]

[[agent]]
name = "a"
[agent.match]
comm = ["y"]
"#,
    )
    .unwrap();
    let out = Command::new(&bin).arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let b = bad.display();
    for expected in [
        format!("{b}:2:18: metrics_listen"),
        format!("{b}:9:13: writable \"relative/path\""),
        format!("{b}:11:10: bad allow entry"),
        format!("{b}:14:8: duplicate agent name \"a\""),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    let unknown = t.join("unknown.toml");
    fs::write(&unknown, "[[agent]]\nname = \"a\"\nmode = \"kill\"\n").unwrap();
    let out = Command::new(&bin).arg("check").arg(&unknown).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:3:1: unknown field `mode`", unknown.display())));
}

/// Issue 16: `policy.d/*.toml` beside the main file (one file per team, dropped there by
/// configuration management) is part of the policy; `check` validates the set.
#[test]
fn check_validates_the_policy_d_fragments_beside_the_file() {
    let Some(bin) = binary() else {
        eprintln!("SKIPPED: AGENT_MONITOR_BIN is not set (run through `cargo xtask test`)");
        return;
    };
    let t = TempDir::new("check-d");
    let main = t.join("agent-monitor.toml");
    fs::write(&main, "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"x\"]\n").unwrap();
    fs::create_dir(t.join("policy.d")).unwrap();
    let team = t.join("policy.d/team-b.toml");
    fs::write(&team, "[[agent]]\nname = \"b\"\n[agent.match]\ncomm = [\"y\"]\n").unwrap();
    let out = Command::new(&bin).arg("check").arg(&main).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 agent(s), with 1 file(s) of policy.d/"), "{said}");

    // A team's file that claims another's process is refused where it says so.
    fs::write(&team, "[[agent]]\nname = \"b\"\n[agent.match]\ncomm = [\"x\"]\n").unwrap();
    let out = Command::new(&bin).arg("check").arg(&main).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:4:9: comm \"x\" is already selected by agent \"a\" ({}:4)", team.display(), main.display());
    assert!(err.contains(&want), "missing {want:?} in:\n{err}");
}

#[test]
fn run_refuses_a_bad_policy_and_loads_nothing() {
    let Some(bin) = binary() else {
        eprintln!("SKIPPED: AGENT_MONITOR_BIN is not set");
        return;
    };
    let t = TempDir::new("runbad");
    let bad = t.join("bad.toml");
    fs::write(&bad, "[[agent]]\nname = \"a\"\n").unwrap();
    let out = Command::new(&bin).arg("run").arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:1:1: agent \"a\" has no selector", bad.display())), "{err}");
    assert!(err.contains("nothing was loaded"), "{err}");
}
