//! agent-monitor: a kernel-enforced read-only boundary around AI agent processes.
mod audit;
mod bpf;
mod cli;
mod control;
mod daemon;
mod enforce_holds;
mod events;
mod exec;
mod metrics;
mod policy;
mod sinks;

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use cli::{Cli, Command};

fn init_tracing() {
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn check(file: &std::path::Path) -> ExitCode {
    match policy::load(file) {
        Ok(p) => {
            let c = policy::compile(&p);
            println!("{}: ok ({} agent(s), policy hash {})", file.display(), c.agents.len(), c.hash);
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

fn events(follow: bool, file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file {
        Some(f) => f,
        None => {
            let source = daemon::PolicySource::resolve(config);
            let p = source
                .load()
                .map_err(|d| anyhow::anyhow!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
            PathBuf::from(p.daemon.events_file.unwrap_or_else(|| daemon::DEFAULT_EVENTS_FILE.into()))
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

fn cleanup(pin_path: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match pin_path {
        Some(p) => p,
        None => daemon::PolicySource::resolve(config)
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

/// Talk to the daemon over its control socket and print what it says.
fn client(socket: Option<PathBuf>, config: Option<PathBuf>, cmd: &str, raw: bool) -> anyhow::Result<()> {
    client_req(socket, config, serde_json::json!({"cmd": cmd}), raw)
}

fn client_req(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    req: serde_json::Value,
    raw: bool,
) -> anyhow::Result<()> {
    let cmd = req["cmd"].as_str().unwrap_or_default().to_string();
    let cmd = cmd.as_str();
    let path = match socket {
        Some(p) => p,
        None => {
            let p = daemon::PolicySource::resolve(config).load().ok().and_then(|p| p.daemon.control_socket);
            PathBuf::from(p.unwrap_or_else(|| control::DEFAULT_CONTROL_SOCKET.into()))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut lines = control::request(&path, req.clone()).await?;
        let mut any = false;
        while let Some(line) = lines.next_line().await? {
            any = true;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line.clone()));
            if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                anyhow::bail!("{err}");
            }
            if raw || cmd == "events" {
                println!("{line}");
            } else {
                print_status(&v);
            }
        }
        if !any {
            anyhow::bail!("the daemon closed the connection without an answer");
        }
        Ok(())
    })
}

fn print_status(v: &serde_json::Value) {
    println!(
        "agent-monitor {}  policy {} ({})",
        v["version"].as_str().unwrap_or("?"),
        v["policy"]["hash"].as_str().unwrap_or("?"),
        v["policy"]["source"].as_str().unwrap_or("?")
    );
    println!("layers:");
    for layer in ["tracepoint", "cgroup", "uprobe", "bpf_lsm", "landlock"] {
        let up = v["layers"][layer].as_bool().unwrap_or(false);
        println!("  {layer:<11} {}", if up { "up" } else { "DOWN" });
    }
    for n in v["layers"]["notes"].as_array().into_iter().flatten() {
        println!("  note: {}", n.as_str().unwrap_or_default());
    }
    for lib in v["tls_libraries"].as_array().into_iter().flatten() {
        println!("  TLS hooked: {}", lib.as_str().unwrap_or_default());
    }
    println!("agents:");
    for a in v["agents"].as_array().into_iter().flatten() {
        let procs = a["processes"].as_array().cloned().unwrap_or_default();
        println!(
            "  {} (action {}): {} process(es)",
            a["name"].as_str().unwrap_or("?"),
            a["action"].as_str().unwrap_or("?"),
            procs.len()
        );
        for p in procs {
            println!(
                "    pid {:<7} {:<16} run {} tls {}",
                p["pid"],
                p["comm"].as_str().unwrap_or(""),
                p["run"].as_str().unwrap_or(""),
                p["tls"].as_str().unwrap_or("")
            );
        }
    }
    println!("counters: {}", v["counters"]);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Check { file } => return check(&file),
        Command::Run(args) => {
            daemon::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(daemon::run(args))
        }
        Command::Events { follow: true, control_socket, file: None, config } => {
            client(control_socket, config, "events", false)
        }
        Command::Events { follow, file, config, .. } => events(follow, file, config),
        Command::Cleanup { pin_path, config } => cleanup(pin_path, config),
        Command::Audit { cmd: cli::AuditCmd::Verify { files } } => match audit::verify(&files) {
            Ok(n) => {
                println!("ok: {n} lines, the chain is intact");
                Ok(())
            }
            Err(b) => {
                eprintln!("{b}");
                return ExitCode::from(1);
            }
        },
        Command::Status { control_socket, config, json } => client(control_socket, config, "status", json),
        Command::Reload { control_socket, config } => client(control_socket, config, "reload", true),
        Command::Exec { agent, config, allow_unmonitored, cmd } => {
            return exec::main(&agent, config, allow_unmonitored, &cmd)
        }
        Command::Approve { id, once: _, r#for, control_socket, config } => {
            let secs = match r#for.as_deref().map(enforce_holds::parse_duration).transpose() {
                Ok(d) => d.map(|d| d.as_secs()).unwrap_or(0),
                Err(e) => {
                    eprintln!("agent-monitor: {e:#}");
                    return ExitCode::from(2);
                }
            };
            client_req(control_socket, config, serde_json::json!({"cmd": "approve", "id": id, "for_secs": secs}), true)
        }
        Command::Deny { id, control_socket, config } => {
            client_req(control_socket, config, serde_json::json!({"cmd": "deny", "id": id}), true)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-monitor: {e:#}");
            ExitCode::from(1)
        }
    }
}
