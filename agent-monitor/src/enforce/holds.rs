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
    fs,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent_monitor_common::{event_flags, Event, FileGrantKey, GrantKey, Kind, Layer};
use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::kill::kill_instance;
use crate::{
    bpf::{maps as kmaps, Kernel},
    metrics::Metrics,
};

/// Why a decision on a hold could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("no pending hold {0:?} (already decided, timed out, or never existed)")]
    NotFound(String),
    #[error("writing the approval into the kernel failed: {0:#}")]
    Kernel(anyhow::Error),
}

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

/// A decision on a hold: who made it (uid, name), and how.
pub struct Decision {
    pub approve: bool,
    /// How an approval is bounded (ignored for a denial).
    pub grant: Grant,
    pub approver: (u32, String),
    /// `agent_monitor_hold_decisions_total{outcome}`: approved, denied, timeout.
    pub outcome: &'static str,
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
        let file_grant = (kind.name().starts_with("file.") && ev.layer == Layer::BpfLsm.wire()).then(|| {
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
        let socket = (kind == Kind::NetHttpWrite && ev.layer == Layer::Cgroup.wire())
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

    pub fn take(&self, id: &str) -> Result<Hold, HoldError> {
        self.pending.lock().unwrap().remove(id).ok_or_else(|| HoldError::NotFound(id.to_string()))
    }

    /// Ids of the holds older than `timeout` (still pending: the timeout decides them through
    /// the same `take` as a person).
    pub fn expired(&self, timeout: Duration) -> Vec<String> {
        self.pending.lock().unwrap().values().filter(|h| h.since.elapsed() >= timeout).map(|h| h.id.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A person's (or the timeout's) decision on hold `id`, carried out: a grant written, a
    /// socket let go, a paused call continued, or the instance killed. Returns the
    /// `hold.decision` record for the events log (without `ts`/`id`).
    pub fn decide(
        &self,
        id: &str,
        d: Decision,
        kernel: &Mutex<Kernel>,
        metrics: &Metrics,
    ) -> Result<serde_json::Map<String, Value>, HoldError> {
        let Decision { approve, grant, approver, outcome } = d;
        let h = self.take(id)?;
        metrics.holds_pending.set(self.len() as i64);
        metrics.hold_wait.observe(h.since.elapsed().as_secs_f64());
        let granted = if approve { approve_hold(&h, grant, kernel)? } else { Value::Null };
        if !approve && h.paused {
            // The paused call must never run: the instance dies (its connections held until
            // then carry nothing).
            kill_instance(kernel, h.run_id);
            kmaps::release_held_run(&mut kernel.lock().unwrap().ebpf, h.run_id);
        }
        metrics.hold_decisions.with_label_values(&[outcome]).inc();
        info!(hold = h.id, approve, approver = approver.1, "hold decided");
        let rec = json!({
            "kind": "hold.decision",
            "hold": h.id,
            "agent": h.agent,
            "pid": h.pid,
            "target": h.target,
            "detail": h.detail,
            "decision": if approve { "approved" } else { "denied" },
            "outcome": outcome,
            "granted": granted,
            "approver_uid": approver.0,
            "approver": approver.1,
            "waited_secs": h.since.elapsed().as_secs(),
        });
        let Value::Object(map) = rec else { unreachable!("json! of an object") };
        Ok(map)
    }

    /// Deny the holds nobody answered within `timeout`; returns their decision records.
    pub fn expire(
        &self,
        timeout: Duration,
        kernel: &Mutex<Kernel>,
        metrics: &Metrics,
    ) -> Vec<serde_json::Map<String, Value>> {
        let mut out = Vec::new();
        for id in self.expired(timeout) {
            let d = Decision {
                approve: false,
                grant: Grant::Once,
                approver: (u32::MAX, "timeout".into()),
                outcome: "timeout",
            };
            match self.decide(&id, d, kernel, metrics) {
                Ok(rec) => out.push(rec),
                Err(e) => warn!(hold = id, error = %e, "expiring a hold failed"),
            }
        }
        out
    }
}

/// Carry out an approval; returns what was granted (for the record).
fn approve_hold(h: &Hold, grant: Grant, kernel: &Mutex<Kernel>) -> Result<Value, HoldError> {
    let mut granted = Value::Null;
    if let Some(cookie) = h.socket {
        // Let exactly the held segment through, then push TCP's queue so it leaves now rather
        // than at the next retransmission timer, then continue the writer.
        kmaps::approve_socket(&mut kernel.lock().unwrap().ebpf, cookie).map_err(HoldError::Kernel)?;
        if let Err(e) = push_socket(h.pid, cookie) {
            warn!(hold = h.id, error = %format!("{e:#}"), "could not push the approved request; TCP sends it at its next retransmission");
        }
    }
    if h.paused {
        // The call was stopped at its entry: continuing it sends the request, once. The
        // instance's connections carry bytes again.
        kmaps::release_held_run(&mut kernel.lock().unwrap().ebpf, h.run_id);
        // SAFETY: plain kill(2).
        unsafe { libc::kill(h.pid as i32, libc::SIGCONT) };
        granted = json!("the paused call continues, once");
    }
    // A held request approved as a grant: expiry in ns since boot, top bit = once.
    let (window, once) = match grant {
        Grant::Once => (ONCE_WINDOW, 1u64 << 63),
        Grant::For(d) => (d, 0),
    };
    let value = (kmaps::boot_clock_ns() + window.as_nanos() as u64) | once;
    let granted_text = |prep: &str| match grant {
        Grant::Once => json!(format!("one {} {prep} {} within {}s", h.kind, h.target, window.as_secs())),
        Grant::For(d) => json!(format!("{} {prep} {} for {}s", h.kind, h.target, d.as_secs())),
    };
    if let Some(key) = h.file_grant {
        kmaps::add_file_grant(&mut kernel.lock().unwrap().ebpf, key, value).map_err(HoldError::Kernel)?;
        granted = granted_text("of");
    }
    if let Some(key) = h.grant {
        kmaps::add_grant(&mut kernel.lock().unwrap().ebpf, key, value).map_err(HoldError::Kernel)?;
        granted = granted_text("to");
    }
    Ok(granted)
}

/// Agent processes a previous daemon left stopped on a hold: nobody can approve them now, so
/// they are denied (killed). Returns how many instances were.
pub fn deny_stale(kernel: &Mutex<Kernel>, metrics: &Metrics) -> usize {
    let tracked = kmaps::tracked(&kernel.lock().unwrap().ebpf);
    let mut denied = 0;
    for (pid, st) in tracked {
        let stopped = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('T')))
            .unwrap_or(false);
        if stopped {
            warn!(pid, "an agent process was left paused on a hold by a previous daemon: denied (killed)");
            metrics.hold_decisions.with_label_values(&["restart"]).inc();
            kill_instance(kernel, st.run_id);
            denied += 1;
        }
    }
    denied
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
