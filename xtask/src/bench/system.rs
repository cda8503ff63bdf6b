//! The machine the numbers belong to: what it is, what else runs on it.

use crate::root;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The machine and the checkout the numbers belong to.
#[derive(Default)]
pub struct Info {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub commit: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Info {
    pub fn collect() -> Info {
        let cmd_out = |prog: &str, args: &[&str]| {
            let out = Command::new(prog).args(args).current_dir(root()).stderr(Stdio::null()).output();
            out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':'));
        let commit = cmd_out("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = cmd_out("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        Info {
            date: cmd_out("date", &["-u", "+%F"]).unwrap_or_else(|| "unknown-date".into()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            cpu: cpu.map(|(_, m)| m.trim().to_string()).unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            commit: if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

pub fn loadavg() -> String {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Names of the BPF programs loaded in the kernel (`bpftool prog show`, Debian's `bpftool`;
/// without it nothing is checked and the bench says so on stderr).
pub fn loaded_bpf_programs() -> Vec<String> {
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        eprintln!("bench: bpftool not found: BPF programs already loaded are not checked for");
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|id| id.trim().parse::<u32>().is_ok()))
        .map(|l| l.split_whitespace().skip_while(|w| *w != "name").nth(1).unwrap_or("?").to_string())
        .collect()
}

/// Processes named agent-monitor other than `ours`: another engineer's daemons add load.
pub fn foreign_daemons(ours: Option<u32>) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours)
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "agent-monitor"))
        .count()
}

/// The path of a shared library a binary links (`ldd`), by the start of its file name.
pub fn linked_lib(bin: &Path, prefix: &str) -> Option<PathBuf> {
    let out = Command::new("ldd").arg(bin).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = text.lines().filter_map(|l| l.split_once("=>")).find(|(name, _)| name.trim().starts_with(prefix))?.1;
    let path = PathBuf::from(path.split_whitespace().next()?);
    Some(fs::canonicalize(&path).unwrap_or(path))
}
