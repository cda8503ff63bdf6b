//! What a guest reports: each test binary's libtest output read back (passed, failed, and
//! skipped: a test that printed `SKIPPED name: reason`), per kernel.

use std::path::Path;
use std::time::Duration;

#[derive(Default, Debug)]
pub struct BinaryResult {
    pub name: String,
    /// The harness's exit code; None if it never finished.
    pub rc: Option<i32>,
    /// libtest's counts, from its `test result:` line (passed includes skipped tests).
    pub counts: Option<(u32, u32, u32)>,
    /// Tests that printed `SKIPPED name: reason`.
    pub skipped: Vec<(String, String)>,
    pub failures: Vec<String>,
}

impl BinaryResult {
    pub fn parse(name: &str, out: &str, rc: Option<i32>) -> BinaryResult {
        let mut r = BinaryResult { name: name.into(), rc, ..Default::default() };
        let mut in_failure_list = false;
        let mut section = String::new(); // the test whose captured output we are in
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("test result: ") {
                r.counts = parse_counts(rest);
            }
            if let Some(t) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
                section = t.to_string();
            }
            // `SKIPPED name: reason`, or `SKIPPED: reason` inside the test's captured output.
            if let Some(pos) = line.find("SKIPPED") {
                let rest = &line[pos + "SKIPPED".len()..];
                let (test, why) = match (rest.strip_prefix(": "), rest.strip_prefix(' ')) {
                    (Some(why), _) => (section.as_str(), why),
                    (None, Some(rest)) => rest.split_once(": ").unwrap_or((rest, "")),
                    _ => ("", ""),
                };
                if !test.is_empty() && !r.skipped.iter().any(|(t, _)| t == test) {
                    r.skipped.push((test.into(), why.into()));
                }
            }
            // libtest ends with "failures:" and the failed tests' names, indented.
            if line == "failures:" {
                in_failure_list = true;
                r.failures.clear();
            } else if in_failure_list {
                match line.strip_prefix("    ") {
                    Some(t) if !t.starts_with(' ') => r.failures.push(t.trim().into()),
                    _ if line.trim().is_empty() && !r.failures.is_empty() => in_failure_list = false,
                    _ => {}
                }
            }
        }
        r
    }
    pub fn passed(&self) -> u32 {
        self.counts.map_or(0, |c| c.0.saturating_sub(self.skipped.len() as u32))
    }
    pub fn ignored(&self) -> u32 {
        self.counts.map_or(0, |c| c.2)
    }
    /// Failed tests; a harness that crashed, hung or failed without a failing test counts as one.
    pub fn failed(&self) -> u32 {
        let failed = self.counts.map_or(0, |c| c.1);
        if failed == 0 && self.rc != Some(0) {
            1
        } else {
            failed
        }
    }
}

/// `ok. 3 passed; 1 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.00s`
fn parse_counts(s: &str) -> Option<(u32, u32, u32)> {
    let num = |word: &str| {
        s.split(';').find_map(|part| {
            let mut w = part.split_whitespace().rev();
            let (kind, n) = (w.next()?, w.next()?);
            (kind == word).then(|| n.parse().ok()).flatten()
        })
    };
    Some((num("passed")?, num("failed")?, num("ignored")?))
}

pub struct Report {
    pub kver: String,
    pub lsm: String,
    pub time: Duration,
    /// The guest did not finish: killed at the deadline, or stopped early.
    pub problem: Option<String>,
    pub bins: Vec<BinaryResult>,
}

impl Report {
    pub fn passed(&self) -> u32 {
        self.bins.iter().map(BinaryResult::passed).sum()
    }
    pub fn failed(&self) -> u32 {
        self.bins.iter().map(BinaryResult::failed).sum::<u32>() + u32::from(self.problem.is_some())
    }
    pub fn skipped(&self) -> u32 {
        self.bins.iter().map(|b| b.skipped.len() as u32 + b.ignored()).sum()
    }
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }
    pub fn line(&self) -> String {
        format!(
            "kernel {}: {} passed, {} failed, {} skipped ({:.0} s)",
            self.kver,
            self.passed(),
            self.failed(),
            self.skipped(),
            self.time.as_secs_f64()
        )
    }
    pub fn print(&self, dir: &Path) {
        println!("<== kernel {}: lsm={}", self.kver, if self.lsm.is_empty() { "(unknown)" } else { &self.lsm });
        if !self.lsm.split(',').any(|l| l == "bpf") {
            println!("  warning: bpf is not among the active LSMs: the BPF LSM path was not tested");
        }
        for b in &self.bins {
            if b.rc == Some(0) && b.counts.is_some_and(|(p, f, i)| p + f + i == 0) {
                continue; // the filter matched none of its tests
            }
            let rc = b.rc.map_or("did not finish".to_string(), |rc| format!("exit {rc}"));
            println!(
                "  {}: {} passed, {} failed, {} skipped ({rc}; output in {})",
                b.name,
                b.passed(),
                b.failed(),
                b.skipped.len() as u32 + b.ignored(),
                dir.join("share").join(format!("{}.out", b.name)).display()
            );
            for (t, why) in &b.skipped {
                println!("    SKIPPED {t}: {why}");
            }
            for t in &b.failures {
                println!("    FAILED {t}");
            }
        }
        if let Some(p) = &self.problem {
            println!("  FAILED: {p}");
        }
        println!("{}", self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_output_gives_counts_skips_and_failures() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ok\n\nsuccesses:\n\n---- c stdout ----\n\
                   SKIPPED c: needs prometheus\n\nsuccesses:\n    a\n    c\n\nfailures:\n\n---- b stdout ----\nboom\n\n\
                   failures:\n    b\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.0s\n";
        let r = BinaryResult::parse("files", out, Some(101));
        assert_eq!(r.counts, Some((2, 1, 0)));
        assert_eq!((r.passed(), r.failed()), (1, 1));
        assert_eq!(r.skipped, [("c".to_string(), "needs prometheus".to_string())]);
        assert_eq!(r.failures, ["b"]);
        let out = "running 1 test\ntest p ... ok\n\nsuccesses:\n\n---- p stdout ----\nSKIPPED: no .deb\n\n\
                   test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.04s\n";
        let r = BinaryResult::parse("package", out, Some(0));
        assert_eq!((r.passed(), r.failed(), r.skipped.len()), (0, 0, 1));
        assert_eq!(r.skipped[0], ("p".to_string(), "no .deb".to_string()));
        let crashed = BinaryResult::parse("files", "running 3 tests\ntest a ... ", None);
        assert_eq!((crashed.passed(), crashed.failed()), (0, 1));
    }
}
