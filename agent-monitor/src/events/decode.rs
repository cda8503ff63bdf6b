//! Decoding kernel records into [`EventRecord`]s: names, targets, rules and honest details.
use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use agent_monitor_common::{action, event_flags, layer, verdict, Event, Kind, PATH_LEN};
use serde::Serialize;

/// One event line (DESIGN.md, "Events").
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRecord {
    pub ts: String,
    pub id: String,
    pub agent: String,
    /// The agent instance (run id): the same for a process and all its descendants.
    pub run: String,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub kind: String,
    pub target: String,
    pub verdict: String,
    pub action: String,
    pub layer: String,
    pub rule: String,
    pub detail: String,
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        verdict::VIOLATION => "violation",
        _ => "allowed",
    }
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        action::ALERTED => "alerted",
        action::DENIED => "denied",
        action::KILLED => "killed",
        _ => "none",
    }
}

pub fn layer_name(l: u32) -> &'static str {
    match l {
        layer::TRACEPOINT => "tracepoint",
        layer::CGROUP => "cgroup",
        layer::BPF_LSM => "bpf_lsm",
        layer::LANDLOCK => "landlock",
        layer::UPROBE => "uprobe",
        _ => "userspace",
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn path(b: &[u8], len: u32) -> String {
    let len = (len as usize).min(PATH_LEN).min(b.len());
    cstr(&b[..len])
}

/// Human-readable `open(2)` flags for details.
pub fn open_flags(f: u64) -> String {
    let mut v = vec![match f & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    }];
    for (bit, name) in [(0o100, "O_CREAT"), (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o200, "O_EXCL")] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    v.join("|")
}

/// Turns wire records into event records; keeps the per-process executable cache.
pub struct Decoder {
    pub agent_names: Vec<String>,
    /// Seconds+nanos to add to CLOCK_BOOTTIME to get wall-clock time.
    boot_to_wall_ns: i128,
    exe: HashMap<u32, String>,
    prefix: String,
    seq: AtomicU64,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn rfc3339(wall_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(wall_ns).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Decoder {
    pub fn new(agent_names: Vec<String>) -> Self {
        let wall = clock_ns(libc::CLOCK_REALTIME);
        Decoder {
            agent_names,
            boot_to_wall_ns: wall - clock_ns(libc::CLOCK_BOOTTIME),
            exe: HashMap::new(),
            prefix: format!("{:x}", (wall / 1_000_000) as u64),
            seq: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn agent_name(&self, id: u32) -> String {
        self.agent_names.get((id as usize).wrapping_sub(1)).cloned().unwrap_or_else(|| format!("agent#{id}"))
    }

    fn exe_of(&mut self, pid: u32) -> String {
        if let Some(e) = self.exe.get(&pid) {
            return e.clone();
        }
        std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default()
    }

    pub fn decode(&mut self, ev: &Event) -> Option<EventRecord> {
        let kind = Kind::try_from(ev.kind).ok()?;
        let target = path(&ev.path, ev.path_len);
        let other = path(&ev.path2, ev.path2_len);
        let exe = match kind {
            Kind::ProcessExec => {
                self.exe.insert(ev.pid, target.clone());
                target.clone()
            }
            Kind::ProcessExit => self.exe.remove(&ev.pid).unwrap_or_default(),
            _ => self.exe_of(ev.pid),
        };
        let mut detail = Vec::new();
        let rule;
        let target = match kind {
            Kind::ProcessExec => {
                rule = String::new();
                if ev.flags & event_flags::INSTANCE_START != 0 {
                    detail.push("new agent instance: a selector matched".to_string());
                }
                target
            }
            Kind::ProcessExit => {
                rule = String::new();
                let code = ev.aux as u32;
                let sig = code & 0x7f;
                if sig != 0 {
                    detail.push(format!("killed by signal {sig}"));
                } else {
                    detail.push(format!("exit status {}", (code >> 8) & 0xff));
                }
                exe.clone()
            }
            Kind::FileWrite => {
                rule = "files.writable".into();
                if ev.aux != 0 {
                    detail.push(format!("open {}", open_flags(ev.aux)));
                }
                target
            }
            Kind::FileRename | Kind::FileLink => {
                rule = "files.writable".into();
                let (from, to) = if ev.flags & event_flags::SECOND_PATH != 0 {
                    (other, target.clone())
                } else {
                    (target.clone(), other)
                };
                if !to.is_empty() {
                    detail.push(format!("{from} -> {to}"));
                }
                target
            }
            Kind::FileDelete | Kind::FileMkdir | Kind::FileChmod => {
                rule = "files.writable".into();
                target
            }
            Kind::SysIoUring => {
                rule = "syscalls.allow".into();
                detail.push(format!("io_uring_setup(entries={}): io_uring operations bypass syscall tracing", ev.aux));
                "io_uring".into()
            }
            Kind::NetRawSocket => {
                rule = "syscalls.allow".into();
                detail.push(format!("socket(family={}, type={})", ev.aux, ev.aux2));
                "raw_socket".into()
            }
            Kind::SelfTamper => {
                rule = "syscalls.allow".into();
                detail.push(format!("bpf(cmd={})", ev.aux));
                "bpf".into()
            }
            Kind::NetConnect | Kind::NetSend | Kind::NetHttpWrite | Kind::IpcConnect => {
                rule = "network.allow".into();
                target
            }
        };
        if ev.flags & event_flags::DENY_FELL_BACK != 0 {
            detail.push("deny requested but no active layer can refuse this operation here: killed instead".into());
        }
        if ev.flags & event_flags::AFTER_EFFECT != 0 && ev.action == action::KILLED {
            detail.push("the syscall completed before the kill (tracepoint layer)".into());
        }
        if ev.flags & event_flags::PATH_TRUNCATED != 0 {
            detail.push("path truncated".into());
        }
        Some(EventRecord {
            ts: rfc3339(self.boot_to_wall_ns + ev.ts_ns as i128),
            id: self.next_id(),
            agent: self.agent_name(ev.agent),
            run: format!("{:016x}", ev.run_id),
            pid: ev.pid,
            ppid: ev.ppid,
            uid: ev.uid,
            comm: cstr(&ev.comm),
            exe,
            kind: kind.name().into(),
            target,
            verdict: verdict_name(ev.verdict).into(),
            action: action_name(ev.action).into(),
            layer: layer_name(ev.layer).into(),
            rule,
            detail: detail.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::kind;

    fn raw(kind: u32) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind;
        e.agent = 1;
        e.pid = 42;
        e.ppid = 1;
        e.run_id = 0xabc;
        e.comm[..5].copy_from_slice(b"agent");
        e
    }

    fn set(buf: &mut [u8], s: &str) -> u32 {
        buf[..s.len()].copy_from_slice(s.as_bytes());
        s.len() as u32
    }

    #[test]
    fn decodes_a_killed_append() {
        let mut d = Decoder::new(vec!["forum-analyst".into()]);
        let mut e = raw(kind::FILE_WRITE);
        e.verdict = verdict::VIOLATION;
        e.action = action::KILLED;
        e.layer = layer::TRACEPOINT;
        e.flags = event_flags::AFTER_EFFECT;
        e.aux = 0o2001;
        e.path_len = set(&mut e.path, "/etc/motd");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.agent, "forum-analyst");
        assert_eq!(r.kind, "file.write");
        assert_eq!(r.target, "/etc/motd");
        assert_eq!(r.verdict, "violation");
        assert_eq!(r.action, "killed");
        assert_eq!(r.layer, "tracepoint");
        assert_eq!(r.rule, "files.writable");
        assert_eq!(r.run, "0000000000000abc");
        assert_eq!(r.comm, "agent");
        assert!(r.detail.contains("O_WRONLY|O_APPEND"), "{}", r.detail);
        assert!(r.detail.contains("completed before the kill"), "{}", r.detail);
        let json = serde_json::to_value(&r).unwrap();
        for f in [
            "ts", "id", "agent", "pid", "ppid", "uid", "comm", "exe", "kind", "target", "verdict", "action", "layer",
            "rule", "detail",
        ] {
            assert!(json.get(f).is_some(), "missing {f}");
        }
    }

    #[test]
    fn rename_names_the_outside_path() {
        let mut d = Decoder::new(vec!["a".into()]);
        let mut e = raw(kind::FILE_RENAME);
        e.flags = event_flags::SECOND_PATH;
        e.path_len = set(&mut e.path, "/etc/x");
        e.path2_len = set(&mut e.path2, "/tmp/x");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.target, "/etc/x");
        assert_eq!(r.detail, "/tmp/x -> /etc/x");
    }

    #[test]
    fn exec_then_exit_carries_the_exe() {
        let mut d = Decoder::new(vec!["a".into()]);
        let mut e = raw(kind::PROCESS_EXEC);
        e.flags = event_flags::INSTANCE_START;
        e.path_len = set(&mut e.path, "/usr/bin/python3.11");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.exe, "/usr/bin/python3.11");
        assert!(r.detail.contains("new agent instance"));
        let mut x = raw(kind::PROCESS_EXIT);
        x.aux = 9;
        let r = d.decode(&x).unwrap();
        assert_eq!(r.exe, "/usr/bin/python3.11");
        assert_eq!(r.detail, "killed by signal 9");
    }

    #[test]
    fn unknown_kind_is_dropped_and_ids_are_unique() {
        let mut d = Decoder::new(vec![]);
        assert!(d.decode(&raw(999)).is_none());
        let a = d.next_id();
        assert_ne!(a, d.next_id());
        assert_eq!(d.agent_name(7), "agent#7");
    }
}
