//! The CLI's own commands: `check`, `events`, `cleanup`, and the control-socket clients
//! (`status`, `reload`, `approve`, `deny`, `events --follow`).
use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use crate::{
    control::{
        protocol::{self, Status},
        Request, DEFAULT_CONTROL_SOCKET,
    },
    policy::{self, PolicySource, DEFAULT_EVENTS_FILE},
};

pub fn check(file: &Path) -> ExitCode {
    match policy::load_set(file) {
        Ok((p, files)) => {
            let c = policy::compile(&p);
            let fragments = match files.len() - 1 {
                0 => String::new(),
                n => format!(", with {n} file(s) of policy.d/"),
            };
            println!("{}: ok ({} agent(s){fragments}, policy hash {})", file.display(), c.agents.len(), c.hash);
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::from(1)
        }
    }
}

/// Print the events log; with `follow`, keep printing what is appended.
pub fn events(follow: bool, file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file {
        Some(f) => f,
        None => {
            let p = PolicySource::resolve(config)
                .load()
                .map_err(|d| anyhow::anyhow!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
            PathBuf::from(p.daemon.events_file.unwrap_or_else(|| DEFAULT_EVENTS_FILE.into()))
        }
    };
    let mut f = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the events log {}: {e}", path.display()))?;
    let mut pos = 0u64;
    loop {
        f.seek(SeekFrom::Start(pos))?;
        let mut r = BufReader::new(&f);
        let mut line = String::new();
        while r.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break; // a line still being written
            }
            print!("{line}");
            pos += line.len() as u64;
            line.clear();
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn cleanup(pin_path: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match pin_path {
        Some(p) => p,
        None => PolicySource::resolve(config)
            .load()
            .ok()
            .and_then(|p| p.daemon.pin_path)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("no pin path: pass --pin-path or set pin_path in [daemon]"))?,
    };
    if !path.exists() {
        println!("nothing pinned at {}", path.display());
        return Ok(());
    }
    std::fs::remove_dir_all(&path).map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
    println!("removed {}: agent-monitor's programs are detached", path.display());
    Ok(())
}

/// The control socket: `--control-socket`, else the policy's, else the default.
pub fn socket_path(socket: Option<PathBuf>, config: Option<PathBuf>) -> PathBuf {
    socket.unwrap_or_else(|| {
        let p = PolicySource::resolve(config).load().ok().and_then(|p| p.daemon.control_socket);
        PathBuf::from(p.unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()))
    })
}

/// How the answer is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The raw JSON lines.
    Raw,
    /// `status` for people.
    Status,
}

/// Send `req` to the daemon and print what it says. An `{"error": ...}` answer is an error (with
/// a rejected policy's diagnostics printed first, one per line).
pub fn request(path: &Path, req: Request, show: Show) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut lines = protocol::request(path, &req).await?;
        let mut any = false;
        while let Some(line) = lines.next_line().await? {
            any = true;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line.clone()));
            if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                for d in v.get("diagnostics").and_then(|d| d.as_array()).into_iter().flatten() {
                    eprintln!("{}", d.as_str().unwrap_or_default());
                }
                anyhow::bail!("{err}");
            }
            match show {
                Show::Status if req == Request::Status => match serde_json::from_value::<Status>(v) {
                    Ok(s) => print_status(&s),
                    Err(_) => println!("{line}"),
                },
                _ => println!("{line}"),
            }
        }
        if !any {
            anyhow::bail!("the daemon closed the connection without an answer");
        }
        Ok(())
    })
}

fn print_status(s: &Status) {
    println!("agent-monitor {}  policy {} ({})", s.version, s.policy.hash, s.policy.source);
    println!("layers:");
    let l = &s.layers;
    for (layer, up) in [
        ("tracepoint", l.tracepoint),
        ("cgroup", l.cgroup),
        ("uprobe", l.uprobe),
        ("bpf_lsm", l.bpf_lsm),
        ("landlock", l.landlock),
    ] {
        println!("  {layer:<11} {}", if up { "up" } else { "DOWN" });
    }
    for n in &l.notes {
        println!("  note: {n}");
    }
    for lib in &s.tls_libraries {
        println!("  TLS hooked: {lib}");
    }
    // Holds first among the lists: each is a person's decision someone waits for.
    if s.holds.is_empty() {
        println!("holds: none pending");
    } else {
        println!("holds: {} pending (agent-monitor approve ID | agent-monitor deny ID)", s.holds.len());
        let field = |h: &serde_json::Value, k: &str| match h.get(k) {
            Some(serde_json::Value::String(v)) => v.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        for h in &s.holds {
            println!(
                "  {:<10} agent {} pid {} {} {} waiting {}s{}",
                field(h, "id"),
                field(h, "agent"),
                field(h, "pid"),
                field(h, "kind"),
                field(h, "target"),
                field(h, "waiting_secs"),
                if h.get("paused").and_then(|p| p.as_bool()) == Some(true) { " (process stopped)" } else { "" }
            );
        }
    }
    println!("agents:");
    for a in &s.agents {
        println!("  {} (action {}): {} process(es)", a.name, a.action, a.processes.len());
        for p in &a.processes {
            let stacks =
                if p.tls_stacks.is_empty() { "no hooked TLS stack".to_string() } else { p.tls_stacks.join(", ") };
            println!("    pid {:<7} {:<16} run {} tls {} ({stacks})", p.pid, p.comm, p.run, p.tls);
        }
    }
    println!(
        "counters: events_lost {} reloads_failed {} reloads_succeeded {}",
        s.counters.events_lost, s.counters.reloads_failed, s.counters.reloads_succeeded
    );
}
