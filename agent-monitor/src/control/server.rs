//! The control socket's server. Callers are authorised by the kernel's credentials: of the peer
//! that connected (SO_PEERCRED), before a byte of the request is read, and of the process that
//! sent each chunk of the request (SCM_CREDENTIALS, which the kernel attaches to every message
//! because the listening socket has SO_PASSCRED): a socket connected by one process and handed
//! to, or written by, another is judged by who wrote. Authorised: root or a member of
//! `admin_group`; a process that is an agent, or descends from one, is always refused, whatever
//! its uid, and so is a process that is gone before it could be judged (its ancestry cannot be
//! read). A request is one line of at most [`MAX_REQUEST`] bytes.
//! Authorised requests go to a [`Handler`] (the daemon implements it; this module knows nothing
//! of the daemon).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use std::os::fd::AsRawFd;

use anyhow::Context as _;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

use super::protocol::{Reply, Request, Status};

/// What the daemon answers requests with. The blocking ones are called off the async runtime.
pub trait Handler: Send + Sync + 'static {
    /// Is this process an agent, or a descendant of one?
    fn is_agent(&self, pid: u32) -> bool;
    fn status(&self) -> Status;
    /// Blocking. `Err`: the diagnostics of a rejected policy (the old one still enforces).
    fn reload(&self) -> Result<(), Vec<String>>;
    /// Blocking. `for_secs` 0: once. Returns the decision record.
    fn decide_hold(
        &self,
        id: &str,
        approve: bool,
        for_secs: u64,
        approver: (u32, String),
    ) -> anyhow::Result<serde_json::Value>;
    /// Blocking. `caller`: the `exec` process.
    fn register(&self, agent: &str, cgroup: &str, caller: u32) -> anyhow::Result<()>;
    fn unregister(&self, cgroup: &str, caller: u32);
    /// The live event lines.
    fn events(&self) -> broadcast::Receiver<String>;
}

/// The group id of `name` (a group name, through the system's name service: files, SSSD, LDAP;
/// or a number).
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}

/// The user name of a uid, through the system's name service.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// Supplementary groups of a process (from /proc).
fn groups_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            })
        })
        .unwrap_or_default()
}

pub struct Control {
    pub path: PathBuf,
    pub admin_gid: Option<u32>,
}

impl Control {
    pub fn bind(path: &Path, admin_group: Option<&str>) -> anyhow::Result<(UnixListener, Control)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
        // Every message sent to an accepted socket carries its sender's credentials (accepted
        // sockets inherit the flag, so none is sent before it is set).
        setsockopt(&listener, sockopt::PassCred, &true).context("SO_PASSCRED on the control socket")?;
        let admin_gid = admin_group.and_then(|g| {
            let gid = group_id(g);
            if gid.is_none() {
                warn!(group = g, "admin_group not found; only root may use the control socket");
            }
            gid
        });
        // rw for root and the admin group; the kernel credential check below is the real gate.
        let mode = if admin_gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = admin_gid {
            if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
                warn!(group = gid, error = %e, "could not give the control socket to admin_group (CAP_CHOWN?): only root may use it");
            }
        }
        Ok((listener, Control { path: path.to_path_buf(), admin_gid }))
    }

    /// Why the peer may not use the socket, if it may not.
    fn refuse(&self, handler: &dyn Handler, pid: u32, uid: u32, gid: u32) -> Option<String> {
        if pid == 0 || handler.is_agent(pid) {
            return Some(format!("refused: pid {pid} is an agent process; agents cannot control agent-monitor"));
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Some(format!(
                "refused: pid {pid} exited before it could be checked; whether it was an agent cannot be told"
            ));
        }
        if uid == 0 {
            return None;
        }
        if let Some(admin) = self.admin_gid {
            if gid == admin || groups_of(pid).contains(&admin) {
                return None;
            }
        }
        Some(format!("refused: uid {uid} is neither root nor in the admin group"))
    }
}

pub async fn serve(listener: UnixListener, control: Arc<Control>, handler: Arc<dyn Handler>) {
    info!(path = %control.path.display(), "control socket listening");
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (control, handler) = (control.clone(), handler.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(sock, &control, handler).await {
                warn!(error = %format!("{e:#}"), "control connection failed");
            }
        });
    }
}

/// The longest request line read (a request is a few hundred bytes; this bounds what an
/// unauthorised or broken client can make the daemon hold).
pub const MAX_REQUEST: usize = 64 * 1024;

/// What reading a request found.
enum Read {
    Line(String),
    /// Closed before a full line.
    Eof,
    /// Refused: the reason, for the reply.
    Refused(String),
}

/// Read one request line, judging the sender of every chunk by the credentials the kernel
/// attached to it.
async fn read_request(sock: &UnixStream, control: &Control, handler: &dyn Handler) -> anyhow::Result<Read> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        sock.readable().await?;
        let got = sock.try_io(Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
            let mut cmsg = nix::cmsg_space!(UnixCredentials);
            let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)?;
            let creds = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(c) => Some(c),
                    _ => None,
                })
            });
            Ok((msg.bytes, creds))
        });
        let (n, creds) = match got {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(Read::Eof);
        }
        let Some(c) = creds else {
            return Ok(Read::Refused("refused: the request carries no sender credentials".into()));
        };
        if let Some(why) = control.refuse(handler, c.pid() as u32, c.uid(), c.gid()) {
            return Ok(Read::Refused(why));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            return Ok(Read::Line(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Read::Refused(format!("refused: a request line is at most {MAX_REQUEST} bytes")));
        }
    }
}

async fn handle(mut sock: UnixStream, control: &Control, handler: Arc<dyn Handler>) -> anyhow::Result<()> {
    let cred = sock.peer_cred()?;
    let (pid, uid, gid) = (cred.pid().unwrap_or(0) as u32, cred.uid(), cred.gid());
    // Who is asking is decided before the request is read: an agent's bytes are never parsed.
    // (The reply stays readable: a Unix stream delivers what was written before the close.)
    if let Some(why) = control.refuse(handler.as_ref(), pid, uid, gid) {
        warn!(pid, uid, "control socket: {why}");
        sock.write_all(Reply::error(why).line().as_bytes()).await?;
        return Ok(());
    }
    let line = match read_request(&sock, control, handler.as_ref()).await? {
        Read::Line(l) => l,
        Read::Eof => return Ok(()),
        Read::Refused(why) => {
            warn!(pid, uid, "control socket: {why}");
            sock.write_all(Reply::error(why).line().as_bytes()).await?;
            return Ok(());
        }
    };
    let wr = &mut sock;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            wr.write_all(Reply::error(format!("bad request: {e}")).line().as_bytes()).await?;
            return Ok(());
        }
    };
    let reply = match req {
        Request::Status => Reply::Record(serde_json::to_value(handler.status())?),
        Request::Events => return stream_events(handler.events(), wr).await,
        Request::Reload => match blocking(handler, |h| h.reload()).await {
            Ok(Ok(())) => Reply::Ok { ok: true },
            Ok(Err(diagnostics)) => Reply::Error {
                error: "the policy was rejected; the previous one is still enforcing".into(),
                diagnostics,
            },
            Err(e) => Reply::error(e),
        },
        Request::Approve { id, for_secs } => decision(handler, id, true, for_secs, uid).await,
        Request::Deny { id } => decision(handler, id, false, 0, uid).await,
        Request::Register { agent, cgroup } => {
            ok_or_error(blocking(handler, move |h| h.register(&agent, &cgroup, pid)).await)
        }
        Request::Unregister { cgroup } => ok_or_error(
            blocking(handler, move |h| {
                h.unregister(&cgroup, pid);
                Ok(())
            })
            .await,
        ),
    };
    wr.write_all(reply.line().as_bytes()).await?;
    Ok(())
}

async fn decision(handler: Arc<dyn Handler>, id: String, approve: bool, for_secs: u64, uid: u32) -> Reply {
    let who = (uid, user_name(uid));
    match blocking(handler, move |h| h.decide_hold(&id, approve, for_secs, who)).await {
        Ok(Ok(rec)) => Reply::Record(rec),
        Ok(Err(e)) => Reply::error(format!("{e:#}")),
        Err(e) => Reply::error(e),
    }
}

fn ok_or_error(r: Result<anyhow::Result<()>, String>) -> Reply {
    match r {
        Ok(Ok(())) => Reply::Ok { ok: true },
        Ok(Err(e)) => Reply::error(format!("{e:#}")),
        Err(e) => Reply::error(e),
    }
}

/// Run `f` on the blocking pool; `Err` if it panicked.
async fn blocking<T: Send + 'static>(
    handler: Arc<dyn Handler>,
    f: impl FnOnce(&dyn Handler) -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || f(handler.as_ref())).await.map_err(|e| format!("the request failed: {e}"))
}

async fn stream_events(mut rx: broadcast::Receiver<String>, wr: &mut (impl AsyncWrite + Unpin)) -> anyhow::Result<()> {
    loop {
        match rx.recv().await {
            Ok(line) => wr.write_all(format!("{line}\n").as_bytes()).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let note = Reply::Lagged {
                    lagged: n,
                    note: "the follower fell behind; the events log has every event".into(),
                };
                wr.write_all(note.line().as_bytes()).await?
            }
            Err(_) => return Ok(()),
        }
    }
}
