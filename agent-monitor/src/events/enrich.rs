//! What only /proc knows, added to a decoded record: the executable of a process the daemon did
//! not see exec (adopted, or forked and not exec'd yet), the parent of a process whose event came
//! from a hook that cannot read the task (socket and packet hooks), and its comm.
//!
//! Cached per process identity, `(pid, start_ns)` (a pid reused by a new process is a new
//! entry): a refused UDP flood is one process, read once, not once per datagram. An exec event
//! replaces the executable, an exit event drops the entry.
use std::collections::HashMap;

use agent_monitor_common::{Event, Kind};

use super::EventRecord;

#[derive(Default)]
struct Entry {
    exe: Option<String>,
    ppid: Option<u32>,
}

#[derive(Default)]
pub struct ProcCache {
    procs: HashMap<(u32, u64), Entry>,
}

impl ProcCache {
    /// Fill in `rec` (decoded from `ev`) where the wire record left a gap.
    pub fn fill(&mut self, ev: &Event, rec: &mut EventRecord) {
        let key = (ev.pid, ev.start_ns);
        match rec.kind {
            Kind::ProcessExec => {
                self.procs.entry(key).or_default().exe = Some(rec.exe.clone());
            }
            Kind::ProcessExit => {
                if let Some(exe) = self.procs.remove(&key).and_then(|e| e.exe) {
                    rec.exe = exe;
                }
                // The exit's target is what exited.
                rec.target.clone_from(&rec.exe);
            }
            _ => {
                let e = self.procs.entry(key).or_default();
                // A process the daemon did not see exec: ask /proc once.
                let exe = e.exe.get_or_insert_with(|| {
                    std::fs::read_link(format!("/proc/{}/exe", ev.pid))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                });
                rec.exe.clone_from(exe);
            }
        }
        if rec.ppid == 0 && rec.kind != Kind::ProcessExit {
            let e = self.procs.entry(key).or_default();
            rec.ppid = *e.ppid.get_or_insert_with(|| proc_ppid(ev.pid).unwrap_or(0));
        }
        if rec.comm.is_empty() {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{}/comm", ev.pid)) {
                rec.comm.push_str(c.trim());
            }
        }
    }

    /// Processes cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::kind;

    fn raw(kind: u32, pid: u32, start_ns: u64) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind;
        e.pid = pid;
        e.start_ns = start_ns;
        e
    }

    #[test]
    fn exec_then_exit_carries_the_exe_and_a_reused_pid_is_a_new_process() {
        let mut c = ProcCache::default();
        let exec = raw(kind::PROCESS_EXEC, 42, 1000);
        let mut r = EventRecord { kind: Kind::ProcessExec, exe: "/usr/bin/python3.11".into(), ..Default::default() };
        c.fill(&exec, &mut r);
        let mut w = EventRecord { kind: Kind::FileWrite, ppid: 1, comm: "x".into(), ..Default::default() };
        c.fill(&raw(kind::FILE_WRITE, 42, 1000), &mut w);
        assert_eq!(w.exe, "/usr/bin/python3.11");
        let mut x = EventRecord { kind: Kind::ProcessExit, ppid: 1, comm: "x".into(), ..Default::default() };
        c.fill(&raw(kind::PROCESS_EXIT, 42, 1000), &mut x);
        assert_eq!((x.exe.as_str(), x.target.as_str()), ("/usr/bin/python3.11", "/usr/bin/python3.11"));
        assert_eq!(c.len(), 0);
        // The same pid, another process: not the old executable (here /proc has no pid 42's
        // start time to match, so whatever /proc says now, never the cached one).
        c.fill(&exec, &mut r);
        let mut other = EventRecord { kind: Kind::FileWrite, ppid: 1, comm: "x".into(), ..Default::default() };
        c.fill(&raw(kind::FILE_WRITE, 42, 2000), &mut other);
        assert_ne!(other.exe, "/usr/bin/python3.11");
    }

    #[test]
    fn parent_and_comm_come_from_proc_when_the_hook_could_not_read_them() {
        let mut c = ProcCache::default();
        let me = std::process::id();
        let mut r = EventRecord { kind: Kind::NetSend, ..Default::default() };
        c.fill(&raw(kind::NET_SEND, me, 5), &mut r);
        assert_eq!(r.ppid, std::os::unix::process::parent_id());
        assert!(!r.comm.is_empty());
        assert!(r.exe.ends_with(std::env::current_exe().unwrap().file_name().unwrap().to_str().unwrap()));
    }
}
