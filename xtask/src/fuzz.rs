//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (the event decoder, the control
//! protocol, the policy parser; fuzz/README.md says what each checks), each run for a while on
//! its corpus in `fuzz/corpus/TARGET`, then the corpus minimised so that the repository keeps a
//! small one. Not part of `test` or CI: it takes minutes per target.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{root, run_cmd, show};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["decode", "control", "policy"];

/// What one target's run found.
struct Outcome {
    target: String,
    /// libFuzzer's last status line (`#RUNS DONE cov: ... exec/s: ...`), if it printed one.
    last: Option<String>,
    /// Seconds fuzzed (libFuzzer's `Done N runs in S second(s)`), else the run's, build included.
    secs: u64,
    /// Inputs in the corpus before the run, after it, and after `cmin`.
    corpus: [usize; 3],
    ok: bool,
}

pub fn run(secs: u64, targets: &[String]) -> Result<()> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target `{t}`: the targets are {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<String> =
        if targets.is_empty() { TARGETS.iter().map(|t| t.to_string()).collect() } else { targets.to_vec() };
    crate::setup::nightly_toolchain()?;
    cargo_fuzz()?;
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(fuzz_one(target, secs)?);
    }
    println!(
        "\nfuzz: {:<8} {:>6} {:>11} {:>8} {:>6} {:>6} {:>22}  result",
        "target", "secs", "runs", "exec/s", "cov", "ft", "corpus (run, cmin)"
    );
    for o in &outcomes {
        let field = |name: &str| o.last.as_deref().and_then(|l| stat(l, name)).unwrap_or("-").to_string();
        let runs = o.last.as_deref().and_then(|l| l.split_whitespace().next()).unwrap_or("-").trim_start_matches('#');
        println!(
            "fuzz: {:<8} {:>6} {:>11} {:>8} {:>6} {:>6} {:>22}  {}",
            o.target,
            o.secs,
            runs,
            field("exec/s:"),
            field("cov:"),
            field("ft:"),
            format!("{} -> {} -> {}", o.corpus[0], o.corpus[1], o.corpus[2]),
            if o.ok { "ok" } else { "FAILED (fuzz/artifacts/)" }
        );
    }
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.ok).map(|o| o.target.as_str()).collect();
    if !failed.is_empty() {
        bail!("{} found a failure: the input is in fuzz/artifacts/TARGET/ (`cargo +nightly fuzz run -a TARGET FILE` replays it)", failed.join(", "));
    }
    Ok(())
}

/// `cargo +nightly fuzz` in the workspace root, without the eBPF build (the targets load nothing).
fn cargo_fuzz_cmd() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).env("AYA_BUILD_SKIP", "1").args(["+nightly", "fuzz"]);
    cmd
}

/// Install cargo-fuzz unless `cargo fuzz --version` works.
fn cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo").args(["fuzz", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if works.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    println!("fuzz: cargo-fuzz: not installed, installing it (about two minutes)");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("could not install cargo-fuzz from crates.io")
}

fn fuzz_one(target: &str, secs: u64) -> Result<Outcome> {
    let corpus = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let corpus_before = count(&corpus)?;
    let corpus_arg = format!("fuzz/corpus/{target}");
    // -a: debug assertions and overflow checks, so that an arithmetic overflow is a finding.
    // One job, one process: libFuzzer's default.
    let mut cmd = cargo_fuzz_cmd();
    cmd.args(["run", "-a", target, &corpus_arg, "--", &format!("-max_total_time={secs}"), "-print_final_stats=1"]);
    println!("fuzz: {target}: {} s on {corpus_before} inputs: {}", secs, show(&cmd));
    let start = Instant::now();
    let mut child = cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("could not start `{}`", show(&cmd)))?;
    // libFuzzer reports on stderr: pass it through and keep its last status line.
    let (mut last, mut fuzzed) = (None, None);
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.context("reading the fuzzer's output")?;
        eprintln!("{line}");
        if line.starts_with('#') && line.contains(" cov: ") {
            last = Some(line);
        } else if let Some(s) = done_secs(&line) {
            fuzzed = Some(s);
        }
    }
    let ok = child.wait().context("waiting for the fuzzer")?.success();
    let secs = fuzzed.unwrap_or_else(|| start.elapsed().as_secs());
    let corpus_run = count(&corpus)?;
    // Minimise the corpus: the inputs that add no coverage go.
    let mut cmin = cargo_fuzz_cmd();
    cmin.args(["cmin", "-a", target, &corpus_arg]);
    println!("fuzz: {target}: minimising the corpus ({corpus_run} inputs): {}", show(&cmin));
    let out = cmin.output().with_context(|| format!("could not start `{}`", show(&cmin)))?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{}` failed ({})", show(&cmin), out.status);
    }
    let corpus_cmin = count(&corpus)?;
    println!("fuzz: {target}: corpus {corpus_run} -> {corpus_cmin} inputs after cmin");
    Ok(Outcome { target: target.to_string(), last, secs, corpus: [corpus_before, corpus_run, corpus_cmin], ok })
}

/// The value after `name` (`cov:`) in a libFuzzer status line.
fn stat<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()
}

/// S in libFuzzer's closing `Done N runs in S second(s)`.
fn done_secs(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?.split_once(" runs in ")?.1.split_whitespace().next()?.parse().ok()
}

fn count(dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_lines() {
        let l = "#2712345\tDONE   cov: 1301 ft: 2854 corp: 420/119Kb lim: 616 exec/s: 4520 rss: 470Mb";
        assert_eq!(stat(l, "cov:"), Some("1301"));
        assert_eq!(stat(l, "ft:"), Some("2854"));
        assert_eq!(stat(l, "exec/s:"), Some("4520"));
        assert_eq!(stat(l, "nope:"), None);
        assert_eq!(done_secs("Done 2712345 runs in 601 second(s)"), Some(601));
        assert_eq!(done_secs("INFO: Done"), None);
    }
}
