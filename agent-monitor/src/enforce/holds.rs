//! Held actions: `action = "hold"` pauses or refuses an outbound write until a person decides.
//!
//! - Inside TLS, the uprobe stops the process (SIGSTOP) before `SSL_write` runs: approval
//!   continues it (SIGCONT) and the request goes out exactly once; denial or timeout kills the
//!   instance, so the request never leaves.
//! - In clear-text HTTP, the cgroup_skb program drops the request's first segment (TCP keeps
//!   it queued and sends it again later) and holds the socket; the writer is stopped inside its
//!   `send` (SIGSTOP from the `skb:kfree_skb` tracepoint, and from the daemon in case the packet
//!   left from another context). Approval lets exactly that segment through, pushes the queue
//!   and continues the writer: the server receives the request once. Denial kills the instance;
//!   the socket stays held, so nothing of the request reaches the server.
//! - A file operation refused by the BPF LSM layer is held as a request the same way: approval
//!   grants exactly (instance, kind, path) in `FILE_GRANTS`, once or for a while. Where only the
//!   tracepoint layer sees file writes, `hold` kills like `deny` (nothing can refuse there).
//! - A connect (cgroup layer) cannot be paused: it is refused and held as a request; approval
//!   writes a grant for exactly that (instance, destination) into the kernel (`GRANTS`), for a
//!   bounded time or for one connect, so that a retry passes.
//!
//! Each hold has an id, goes out through the alert pipeline like any violation (its detail says
//! how to approve it), and is listed by `status`. Decisions carry the approver's uid and name (from
//! the control socket's credentials; agent processes are refused there) and are written to the
//! events log, inside the audit chain. A hold nobody answers within `hold_timeout_secs` is
//! denied; holds do not survive the daemon: at start, agent processes left stopped are killed.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent_monitor_common::{event_flags, Event, FileGrantKey, GrantKey, Kind};
use anyhow::{anyhow, bail};
use serde_json::{json, Value};

/// Default `hold_timeout_secs`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an `approve` without `--for` lets the held connect through (one use).
pub const ONCE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Hold {
    pub id: String,
    pub agent: String,
    pub pid: u32,
    pub run_id: u64,
    pub kind: String,
    pub target: String,
    pub detail: String,
    pub since: Instant,
    pub ts: String,
    /// Stopped in the kernel (TLS write): continued or killed on decision.
    pub paused: bool,
    /// For a held connect: the grant approval would write.
    pub grant: Option<GrantKey>,
    /// For a clear-text HTTP request held in the kernel: the socket's cookie.
    pub socket: Option<u64>,
    /// For a file operation refused by the BPF LSM layer: the grant approval would write.
    pub file_grant: Option<FileGrantKey>,
}

impl Hold {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "agent": self.agent, "pid": self.pid, "run": format!("{:016x}", self.run_id),
            "kind": self.kind, "target": self.target, "detail": self.detail, "since": self.ts,
            "waiting_secs": self.since.elapsed().as_secs(), "paused": self.paused,
        })
    }
}

/// How an approval is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Once,
    For(Duration),
}

#[derive(Default)]
pub struct Holds {
    pending: Mutex<HashMap<String, Hold>>,
    next: Mutex<u64>,
}

impl Holds {
    /// A held event from the kernel becomes a pending hold.
    pub fn create(&self, ev: &Event, agent: &str, kind: Kind, target: &str, detail: &str, ts: &str) -> Hold {
        let id = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            format!("hold-{}", *n)
        };
        let grant =
            (ev.flags & event_flags::NET_ADDR != 0 && matches!(kind, Kind::NetConnect | Kind::NetSend)).then(|| {
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&ev.path[..16]);
                GrantKey { run_id: ev.run_id, addr, port: (ev.aux as u16).to_be_bytes(), _pad: [0; 6] }
            });
        let file_grant =
            (kind.name().starts_with("file.") && ev.layer == agent_monitor_common::layer::BPF_LSM).then(|| {
                let len = (ev.path_len as usize).min(agent_monitor_common::PATH_LEN);
                let mut k = FileGrantKey {
                    run_id: ev.run_id,
                    kind: ev.kind,
                    len: len as u32,
                    path: [0; agent_monitor_common::PATH_LEN + 4],
                };
                k.path[..len].copy_from_slice(&ev.path[..len]);
                k
            });
        let socket = (kind == Kind::NetHttpWrite && ev.layer == agent_monitor_common::layer::CGROUP)
            .then_some(ev.aux2 >> 8)
            .filter(|&c| c != 0);
        let h = Hold {
            id: id.clone(),
            agent: agent.to_string(),
            pid: ev.pid,
            run_id: ev.run_id,
            kind: kind.name().to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
            since: Instant::now(),
            ts: ts.to_string(),
            paused: grant.is_none() && file_grant.is_none(),
            grant,
            socket,
            file_grant,
        };
        self.pending.lock().unwrap().insert(id, h.clone());
        h
    }

    pub fn list(&self) -> Vec<Hold> {
        let mut v: Vec<Hold> = self.pending.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|h| h.since);
        v
    }

    pub fn take(&self, id: &str) -> anyhow::Result<Hold> {
        self.pending
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| anyhow!("no pending hold {id:?} (already decided, timed out, or never existed)"))
    }

    /// Ids of the holds older than `timeout` (still pending: the timeout decides them through
    /// the same `take` as a person).
    pub fn expired(&self, timeout: Duration) -> Vec<String> {
        self.pending.lock().unwrap().values().filter(|h| h.since.elapsed() >= timeout).map(|h| h.id.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }
}

/// Push the send queue of the socket with cookie `cookie` in process `pid`: take a copy of its
/// descriptor (pidfd_getfd) and set TCP_NODELAY, which sends what is queued at once; the
/// option is put back as it was.
pub fn push_socket(pid: u32, cookie: u64) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; every descriptor returned is owned and closed here.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        bail!("pidfd_open({pid}): {}", std::io::Error::last_os_error());
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_socket =
            std::fs::read_link(entry.path()).map(|l| l.to_string_lossy().starts_with("socket:")).unwrap_or(false);
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            continue;
        }
        let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
        let get = |level, name| -> Option<u64> {
            let mut v: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            let r = unsafe {
                libc::getsockopt(dup.as_raw_fd(), level, name, &mut v as *mut u64 as *mut libc::c_void, &mut len)
            };
            (r == 0).then_some(if len == 4 { v & 0xffff_ffff } else { v })
        };
        if get(libc::SOL_SOCKET, libc::SO_COOKIE) != Some(cookie) {
            continue;
        }
        let set = |v: libc::c_int| unsafe {
            libc::setsockopt(
                dup.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let was = get(libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap_or(0);
        if set(1) != 0 {
            bail!("setsockopt(TCP_NODELAY): {}", std::io::Error::last_os_error());
        }
        if was == 0 {
            set(0);
        }
        return Ok(());
    }
    bail!("no socket with cookie {cookie} in process {pid}")
}

/// `--for 10m` / `90s` / `2h`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| anyhow!("bad duration {s:?}: expected e.g. 90s, 10m, 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad duration {s:?}: expected e.g. 90s, 10m, 2h"),
    };
    if secs == 0 {
        bail!("a grant of zero seconds grants nothing");
    }
    Ok(Duration::from_secs(secs))
}

/// The user name of a uid, from /etc/passwd.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn holds_are_created_listed_taken_and_expire() {
        let holds = Holds::default();
        // SAFETY: Event is plain old data.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.pid = 7;
        ev.run_id = 9;
        let h = holds.create(&ev, "a", Kind::NetHttpWrite, "forum:443", "POST /x", "t");
        assert!(h.paused && h.grant.is_none());
        ev.flags = event_flags::NET_ADDR;
        ev.aux = 443;
        let c = holds.create(&ev, "a", Kind::NetConnect, "10.0.0.1:443", "", "t");
        assert_eq!(c.grant.unwrap().port, 443u16.to_be_bytes());
        assert_ne!(h.id, c.id);
        assert_eq!(holds.len(), 2);
        assert_eq!(holds.take(&h.id).unwrap().pid, 7);
        assert!(holds.take(&h.id).is_err());
        assert_eq!(holds.expired(Duration::ZERO), std::slice::from_ref(&c.id));
        assert!(holds.expired(Duration::from_secs(3600)).is_empty());
        assert_eq!(holds.take(&c.id).unwrap().pid, 7);
        assert_eq!(holds.len(), 0);
    }
}
