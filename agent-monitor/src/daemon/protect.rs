//! The daemon's own paths, which no agent may write whatever its `writable` says.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::bpf::apply::Protected;

/// The configuration file, the events log (and its rotated siblings), the pins, the control
/// socket, the daemon's binary, and the directories holding them when they are the daemon's own
/// (named `agent-monitor...`, as `/etc/agent-monitor`, `/var/log/agent-monitor`,
/// `/run/agent-monitor` and `/sys/fs/bpf/agent-monitor` are).
pub fn protected_paths(config: Option<&Path>, events: &str, pins: Option<&Path>, control: &Path) -> Vec<Protected> {
    // The kernel compares resolved paths: resolve the directory (the file may not exist yet).
    let resolve = |p: &Path| -> PathBuf {
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
                .map(|d| d.join(name))
                .unwrap_or_else(|_| p.to_path_buf()),
            _ => p.to_path_buf(),
        }
    };
    let own_dir = |p: &Path| -> Option<String> {
        let dir = p.parent()?;
        dir.file_name()?.to_str()?.starts_with("agent-monitor").then(|| dir.display().to_string())
    };
    let mut out: Vec<Protected> = Vec::new();
    let mut add = |path: String, raw_prefix: bool| {
        let p = Protected { path, raw_prefix };
        if p.path.starts_with('/') && p.path != "/" && !out.contains(&p) {
            out.push(p);
        }
    };
    let mut files: Vec<(PathBuf, bool)> = vec![(resolve(control), false)];
    if let Some(c) = config {
        files.push((resolve(c), false));
    }
    if events != "-" {
        files.push((resolve(Path::new(events)), true));
    }
    if let Ok(exe) = fs::canonicalize("/proc/self/exe") {
        files.push((exe, false));
    }
    for (f, raw) in &files {
        add(f.display().to_string(), *raw);
        if let Some(d) = own_dir(f) {
            add(d, false);
        }
    }
    if let Some(p) = pins {
        add(resolve(p).display().to_string(), false);
    }
    out
}
