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

/// The resource limits another process could lower with `prlimit64` to silence the daemon (a
/// zero file size limit, and the events log can no longer grow; a tiny open-files limit): the
/// tracepoint layer kills such an agent after the call, so the daemon takes them back.
const GUARDED_LIMITS: [(libc::__rlimit_resource_t, &str); 4] = [
    (libc::RLIMIT_FSIZE, "file size"),
    (libc::RLIMIT_NOFILE, "open files"),
    (libc::RLIMIT_AS, "address space"),
    (libc::RLIMIT_CPU, "CPU time"),
];

/// The daemon's limits as it started (taken after it raised its open-files limit).
#[derive(Clone, Debug)]
pub struct Limits(Vec<(libc::__rlimit_resource_t, libc::rlimit)>);

impl Limits {
    pub fn now() -> Limits {
        // A write past a lowered file size limit fails with EFBIG instead of killing the daemon.
        // SAFETY: signal(2) with SIG_IGN.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let mut out = Vec::new();
        for (res, _) in GUARDED_LIMITS {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit(2) on a local.
            if unsafe { libc::getrlimit(res, &mut lim) } == 0 {
                out.push((res, lim));
            }
        }
        Limits(out)
    }

    /// Put back any limit lowered since (as root the daemon may raise a hard limit again).
    /// Returns the names of those it restored.
    pub fn restore(&self) -> Vec<&'static str> {
        let mut restored = Vec::new();
        for &(res, want) in &self.0 {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit/setrlimit(2) on locals.
            unsafe {
                if libc::getrlimit(res, &mut lim) == 0
                    && (lim.rlim_cur < want.rlim_cur || lim.rlim_max < want.rlim_max)
                    && libc::setrlimit(res, &want) == 0
                {
                    restored.extend(GUARDED_LIMITS.iter().find(|(r, _)| *r == res).map(|(_, n)| *n));
                }
            }
        }
        restored
    }
}

#[cfg(test)]
mod limit_tests {
    use super::Limits;

    #[test]
    fn a_lowered_limit_is_put_back() {
        let start = Limits::now();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit(2) on locals, in this test process.
        unsafe {
            libc::getrlimit(libc::RLIMIT_CPU, &mut lim);
            if lim.rlim_cur == libc::RLIM_INFINITY {
                let lower = libc::rlimit { rlim_cur: 1_000_000, rlim_max: lim.rlim_max };
                assert_eq!(libc::setrlimit(libc::RLIMIT_CPU, &lower), 0);
                assert_eq!(start.restore(), ["CPU time"]);
                libc::getrlimit(libc::RLIMIT_CPU, &mut lim);
                assert_eq!(lim.rlim_cur, libc::RLIM_INFINITY);
            }
        }
        assert!(start.restore().is_empty());
    }
}
