//! `cargo xtask test`: setup, debug build, unit tests, root end-to-end tests; timed, summarised.

use crate::packages::Need;
use crate::{cargo, run_cmd, setup, show, target_dir};
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

enum Outcome {
    Ok,
    Failed,
    Skipped(&'static str),
}

struct Step {
    name: &'static str,
    outcome: Outcome,
    time: Duration,
}

pub fn run(home: &Path, no_root: bool, filter: &[String]) -> Result<()> {
    let start = Instant::now();
    setup::run(home, !no_root, &[Need::Tests])?;
    let mut steps = vec![Step { name: "setup", outcome: Outcome::Ok, time: start.elapsed() }];

    steps.push(step("build", cargo().args(["build", "-p", "agent-monitor"])));
    let built = matches!(steps[1].outcome, Outcome::Ok);
    // The eBPF crate is built for the bpf target by agent-monitor's build.rs, never for the host.
    let unit = ["test", "--workspace", "--exclude", "agent-monitor-e2e", "--exclude", "agent-monitor-ebpf"];
    steps.push(step("unit tests", cargo().args(unit)));
    match crate::promtool::ensure_installed() {
        Ok(()) => {
            steps.push(step("alert rules: check", &mut crate::promtool::check_rules()));
            steps.push(step("alert rules: tests", &mut crate::promtool::test_rules()));
        }
        Err(e) => {
            eprintln!("xtask: alert rules: {e:#}");
            steps.push(Step { name: "alert rules", outcome: Outcome::Failed, time: Duration::ZERO });
        }
    }
    // The .deb the package test installs (release build).
    let t = Instant::now();
    let deb = match crate::dist::run() {
        Ok(deb) => {
            steps.push(Step { name: "dist (.deb)", outcome: Outcome::Ok, time: t.elapsed() });
            Some(deb)
        }
        Err(e) => {
            eprintln!("xtask: dist: {e:#}");
            steps.push(Step { name: "dist (.deb)", outcome: Outcome::Failed, time: t.elapsed() });
            None
        }
    };
    steps.push(match (no_root, built) {
        (true, _) => skipped("e2e tests (root)", "--no-root"),
        (false, false) => skipped("e2e tests (root)", "the build failed"),
        (false, true) => {
            let mut cmd = e2e(filter);
            if let Some(deb) = &deb {
                cmd.env("AGENT_MONITOR_DEB", deb);
            }
            step("e2e tests (root)", &mut cmd)
        }
    });

    // The real-agent tier (xtask/src/agents.rs), after the other end-to-end tests.
    steps.push(match crate::agents::tier(home, no_root, built, filter) {
        crate::agents::Tier::Run(mut cmd) => step("real agents (root)", &mut cmd),
        crate::agents::Tier::Skip(why) => skipped("real agents (root)", why),
        crate::agents::Tier::Failed => {
            Step { name: "real agents (root)", outcome: Outcome::Failed, time: Duration::ZERO }
        }
    });

    summary(&steps, start.elapsed());
    let failed: Vec<_> = steps.iter().filter(|s| matches!(s.outcome, Outcome::Failed)).map(|s| s.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Serial (they load eBPF and share the kernel), with the debug binary the build step made.
fn e2e(filter: &[String]) -> Command {
    let mut cmd = cargo();
    // Every test binary runs (a failure in one does not hide the others).
    cmd.args(["test", "--no-fail-fast", "-p", "agent-monitor-e2e", "--", "--test-threads=1"]).args(filter);
    cmd.env("AGENT_MONITOR_BIN", target_dir().join("debug/agent-monitor"));
    cmd
}

fn step(name: &'static str, cmd: &mut Command) -> Step {
    println!("\n==> {name}: {}", show(cmd));
    let start = Instant::now();
    let outcome = match run_cmd(cmd) {
        Ok(()) => Outcome::Ok,
        Err(e) => {
            eprintln!("xtask: {name}: {e:#}");
            Outcome::Failed
        }
    };
    let time = start.elapsed();
    let word = if matches!(outcome, Outcome::Ok) { "ok" } else { "FAILED" };
    println!("<== {name}: {word} in {:.1}s", time.as_secs_f64());
    Step { name, outcome, time }
}

fn skipped(name: &'static str, why: &'static str) -> Step {
    println!("\n==> {name}: skipped ({why})");
    Step { name, outcome: Outcome::Skipped(why), time: Duration::ZERO }
}

fn summary(steps: &[Step], total: Duration) {
    println!("\nsummary:");
    for s in steps {
        let (word, why) = match s.outcome {
            Outcome::Ok => ("ok", String::new()),
            Outcome::Failed => ("FAILED", String::new()),
            Outcome::Skipped(why) => ("skipped", format!(" ({why})")),
        };
        println!("  {word:<8} {:>7.1}s  {}{why}", s.time.as_secs_f64(), s.name);
    }
    println!("  total    {:>7.1}s", total.as_secs_f64());
}
