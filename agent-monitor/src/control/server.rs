//! The control socket: `status`, `events --follow` and `reload` for the CLI.
//!
//! One JSON request line per connection (`{"cmd":"status"}`, `{"cmd":"events"}`,
//! `{"cmd":"reload"}`), answered with JSON lines. Callers are authorised by the kernel's
//! credentials of the peer (SO_PEERCRED): root or a member of `admin_group`; a process that is
//! an agent is always refused, whatever its uid.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

use crate::{
    bpf::maps as kmaps,
    daemon::{reload, PolicySource, Shared},
};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/agent-monitor/control.sock";

/// The group id of `name` (a name from /etc/group, or a number).
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    std::fs::read_to_string("/etc/group").ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok()).flatten()
    })
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
    pub events: broadcast::Sender<String>,
}

impl Control {
    pub fn bind(
        path: &Path,
        admin_group: Option<&str>,
        events: broadcast::Sender<String>,
    ) -> anyhow::Result<(UnixListener, Control)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
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
            let _ = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)));
        }
        Ok((listener, Control { path: path.to_path_buf(), admin_gid, events }))
    }

    /// Why the peer may not use the socket, if it may not.
    fn refuse(&self, shared: &Shared, pid: u32, uid: u32, gid: u32) -> Option<String> {
        let is_agent = kmaps::is_tracked(&shared.kernel.lock().unwrap().ebpf, pid);
        if is_agent {
            return Some(format!("refused: pid {pid} is an agent process; agents cannot control agent-monitor"));
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

pub async fn serve(listener: UnixListener, control: Arc<Control>, shared: Arc<Shared>, source: PolicySource) {
    info!(path = %control.path.display(), "control socket listening");
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (control, shared, source) = (control.clone(), shared.clone(), source.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(sock, &control, &shared, &source).await {
                warn!(error = %format!("{e:#}"), "control connection failed");
            }
        });
    }
}

async fn handle(
    sock: UnixStream,
    control: &Control,
    shared: &Arc<Shared>,
    source: &PolicySource,
) -> anyhow::Result<()> {
    let cred = sock.peer_cred()?;
    let (pid, uid, gid) = (cred.pid().unwrap_or(0) as u32, cred.uid(), cred.gid());
    let (rd, mut wr) = sock.into_split();
    let mut lines = BufReader::new(rd).lines();
    // Read the request first: answering before it arrived would reset the connection under
    // the client's write, and it would see EPIPE instead of the reason.
    let Some(line) = lines.next_line().await? else { return Ok(()) };
    if let Some(why) = control.refuse(shared, pid, uid, gid) {
        warn!(pid, uid, "control socket: {why}");
        wr.write_all(format!("{}\n", json!({"error": why})).as_bytes()).await?;
        return Ok(());
    }
    let req: Value = serde_json::from_str(&line).unwrap_or_default();
    match req["cmd"].as_str().unwrap_or_default() {
        "status" => {
            let s = status(shared, source);
            wr.write_all(format!("{s}\n").as_bytes()).await?;
        }
        "approve" | "deny" => {
            let id = req["id"].as_str().unwrap_or_default().to_string();
            let approve = req["cmd"] == "approve";
            let grant = match req["for_secs"].as_u64() {
                Some(secs) if secs > 0 => crate::enforce_holds::Grant::For(std::time::Duration::from_secs(secs)),
                _ => crate::enforce_holds::Grant::Once,
            };
            let who = (uid, crate::enforce_holds::user_name(uid));
            let sh = shared.clone();
            let outcome = if approve { "approved" } else { "denied" };
            let result = tokio::task::spawn_blocking(move || sh.decide_hold(&id, approve, grant, who, outcome))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
            let reply = match result {
                Ok(rec) => rec,
                Err(e) => json!({"error": format!("{e:#}")}),
            };
            wr.write_all(format!("{reply}\n").as_bytes()).await?;
        }
        "register" | "unregister" => {
            let agent = req["agent"].as_str().unwrap_or_default().to_string();
            let cgroup = req["cgroup"].as_str().unwrap_or_default().to_string();
            let register = req["cmd"] == "register";
            let sh = shared.clone();
            let result = tokio::task::spawn_blocking(move || {
                if register {
                    sh.register_exec(&agent, &cgroup, pid)
                } else {
                    sh.unregister_exec(&cgroup, pid);
                    Ok(())
                }
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
            let reply = match result {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"error": format!("{e:#}")}),
            };
            wr.write_all(format!("{reply}\n").as_bytes()).await?;
        }
        "reload" => {
            let sh = shared.clone();
            let src = source.clone();
            let ok = tokio::task::spawn_blocking(move || reload(&src, &sh)).await.unwrap_or(false);
            let reply = if ok {
                json!({"ok": true})
            } else {
                json!({"error": "the policy was rejected; the previous one is still enforcing (see the daemon's log)"})
            };
            wr.write_all(format!("{reply}\n").as_bytes()).await?;
        }
        "events" => {
            let mut rx = control.events.subscribe();
            loop {
                match rx.recv().await {
                    Ok(line) => wr.write_all(format!("{line}\n").as_bytes()).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note =
                            json!({"lagged": n, "note": "the follower fell behind; the events log has every event"});
                        wr.write_all(format!("{note}\n").as_bytes()).await?
                    }
                    Err(_) => break,
                }
            }
        }
        other => {
            wr.write_all(format!("{}\n", json!({"error": format!("unknown command {other:?}")})).as_bytes()).await?;
        }
    }
    Ok(())
}

fn status(shared: &Shared, source: &PolicySource) -> Value {
    let (tracked, layers, tls_libs, visible, pins, tls_hooks) = {
        let k = shared.kernel.lock().unwrap();
        let pins = k.pin_dir.as_ref().map(|d| json!({"dir": d.display().to_string(), "adopted": k.adopted}));
        // Where the TLS functions are hooked: what is in force, not what was asked for.
        let tls_hooks = match &k.agent_tls {
            Some(t) => json!({"scope": "agents", "tracefs_group": t.group(), "hooked_processes": t.armed_processes()}),
            None if k.tls_libs.is_empty() => json!({"scope": "none"}),
            None => json!({"scope": "all processes"}),
        };
        (kmaps::tracked(&k.ebpf), k.layers.clone(), k.tls_libs.clone(), kmaps::tls_visible(&k.ebpf), pins, tls_hooks)
    };
    let compiled = shared.compiled.lock().unwrap().clone();
    let invisible = shared.tls_invisible.lock().unwrap().clone();
    let agents: Vec<Value> = compiled
        .agents
        .iter()
        .map(|a| {
            let procs: Vec<Value> = tracked
                .iter()
                .filter(|(_, st)| st.agent == a.id)
                .map(|(pid, st)| {
                    let tls = if invisible.contains(pid) {
                        "invisible"
                    } else if visible.contains(pid) {
                        "visible"
                    } else {
                        "none seen"
                    };
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    json!({"pid": pid, "run": format!("{:016x}", st.run_id), "comm": comm.trim(), "tls": tls})
                })
                .collect();
            json!({"name": a.name, "action": a.action.as_str(), "processes": procs})
        })
        .collect();
    let m = &shared.metrics;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "policy": {"source": source.describe(), "hash": compiled.hash},
        "layers": {
            "tracepoint": layers.tracepoint, "cgroup": layers.cgroup, "uprobe": layers.uprobe,
            "bpf_lsm": layers.bpf_lsm, "landlock": layers.landlock, "notes": layers.notes,
        },
        "pins": pins,
        "holds": shared.holds.list().iter().map(|h| h.json()).collect::<Vec<_>>(),
        "tls_libraries": tls_libs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "tls_hooks": tls_hooks,
        "agents": agents,
        "counters": {
            "events_lost": m.events_lost.get(),
            "reloads_failed": m.reloads.with_label_values(&["failure"]).get(),
            "reloads_succeeded": m.reloads.with_label_values(&["success"]).get(),
        },
    })
}

/// Client side, blocking: one request, one JSON answer (`exec` uses it before it forks).
pub fn call(path: &Path, req: &Value) -> anyhow::Result<Value> {
    use std::io::{BufRead, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("no control socket at {}", path.display()))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    sock.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(&sock).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

/// Client side: send one request, return the connected reader.
pub async fn request(
    path: &Path,
    req: Value,
) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let sock = UnixStream::connect(path).await.with_context(|| {
        format!("cannot reach agent-monitor at {} (is it running? are you root or in its admin group?)", path.display())
    })?;
    let (rd, mut wr) = sock.into_split();
    // A refusal may close the connection early: what the daemon said matters, not the EPIPE.
    let _ = wr.write_all(format!("{req}\n").as_bytes()).await;
    Ok(BufReader::new(rd).lines())
}
