//! `agent-monitor exec --agent NAME [--config FILE] [--allow-unmonitored] -- CMD [ARGS...]`:
//! start a command inside an agent's boundary from its first instruction.
//!
//! What `exec` does, in order:
//!
//! 1. loads the policy the way `run` does and finds the agent profile (a bad policy or an unknown
//!    agent name is an error, exit 1);
//! 2. builds, in this process, a Landlock ruleset compiled from the profile (see [`Sandbox`]);
//! 3. creates a cgroup v2 for the command, `<cgroup2 root>/agent-monitor.slice/exec-NAME-PID`
//!    (PID: this process's), and registers it with the daemon over its control socket: the
//!    daemon adds it as a cgroup selector of agent NAME, so the command's exec starts an
//!    instance of that agent and every hook sees it from its first instruction. A daemon that
//!    does not answer (or a cgroup that cannot be made) is an error unless `--allow-unmonitored`;
//! 5. forks; the child joins the cgroup, sets `no_new_privs` and restricts itself with the ruleset,
//!    then execs the command: nothing of the command runs outside the boundary;
//! 6. waits for the command, removes the (empty) cgroup, and exits with the command's status
//!    (128+N when it was killed by signal N, like a shell).
//!
//! **Two layers, and what each covers.** Landlock is enforced by the kernel on the command and
//! everything it starts, whether the daemon runs or not, and *refuses* (EACCES/EPERM): a write
//! outside `writable` (and [`IMPLICIT_WRITABLE`]), a TCP connect to a port no `allow` entry
//! names, a signal or an abstract Unix socket connect to a process outside the command's tree.
//! It is coarser than the daemon: TCP is checked by port only (the host is the daemon's job),
//! UDP and named Unix sockets are not covered, and a `writable` path that does not exist when the
//! command starts cannot be granted (it stays read-only for this run).
//!
//! With `--allow-unmonitored` and no daemon, only the Landlock boundary holds.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use anyhow::{anyhow, Context};
use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use tracing::{info, warn};

use crate::policy::{AgentPolicy, AllowEntry, IMPLICIT_WRITABLE};

/// The Landlock ABI whose rights `exec` asks for; the crate degrades the request to what the
/// running kernel supports (best effort). ABI 8 adds nothing to ABI 5-7's write rights; ABI 9's
/// `ResolveUnix` (connecting to named Unix sockets) is not a file write and is left to the daemon.
const LANDLOCK_ABI: ABI = ABI::V8;

/// The parent of every `exec` cgroup, under the cgroup v2 root.
pub const EXEC_SLICE: &str = "agent-monitor.slice";

/// `agent-monitor exec`. Returns the command's status, or 1 when the command was not started
/// (126/127 when the program could not be executed / was not found, like a shell).
pub fn main(agent: &str, config: Option<PathBuf>, allow_unmonitored: bool, cmd: &[String]) -> ExitCode {
    match exec(agent, config, allow_unmonitored, cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent-monitor exec: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn exec(name: &str, config: Option<PathBuf>, allow_unmonitored: bool, cmd: &[String]) -> anyhow::Result<ExitCode> {
    let (program, args) = cmd.split_first().ok_or_else(|| anyhow!("no command given after `--`"))?;
    let source = crate::policy::PolicySource::resolve(config);
    let policy = source.load().map_err(|diags| {
        for d in &diags {
            eprintln!("{d}");
        }
        anyhow!("the policy {} is invalid ({} error(s))", source.describe(), diags.len())
    })?;
    let agent = policy.agent(name).ok_or_else(|| {
        let names: Vec<&str> = policy.agents.iter().map(|a| a.name.as_str()).collect();
        if names.is_empty() {
            anyhow!("the policy {} has no agent named {name:?}: it has no agents at all", source.describe())
        } else {
            anyhow!(
                "the policy {} has no agent named {name:?}; its agents are: {}",
                source.describe(),
                names.join(", ")
            )
        }
    })?;

    let sandbox = Sandbox::build(agent).context("building the Landlock ruleset")?;
    let cgroup = ExecCgroup::create(name);
    let control = PathBuf::from(
        policy.daemon.control_socket.clone().unwrap_or_else(|| crate::control::DEFAULT_CONTROL_SOCKET.into()),
    );
    let registered = match &cgroup {
        Some(c) => crate::control::protocol::call(
            &control,
            &crate::control::Request::Register { agent: name.to_string(), cgroup: c.rel.clone() },
        )
        .map(|_| c.rel.clone()),
        None => Err(anyhow!("the command has no cgroup of its own to register")),
    };
    if let Err(why) = &registered {
        if !allow_unmonitored {
            if let Some(c) = cgroup {
                c.remove();
            }
            return Err(anyhow!(
                "agent-monitor is not running or refused the instance ({why:#}); start it or pass --allow-unmonitored"
            ));
        }
        warn!(reason = %format!("{why:#}"), "agent-monitor does not watch this command: it runs unmonitored (Landlock still applies)");
    }

    let mut command = Command::new(program);
    // The instance's agent, for what runs in it (a shim started inside runs its command as it
    // is: it is confined already).
    command.args(args).env("AGENT_MONITOR_AGENT", name);
    let (mut report_rx, report_tx) = io::pipe().context("creating a pipe")?;
    {
        let mut ruleset = Some(sandbox.ruleset);
        let procs_fd: Option<RawFd> = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
        let tx: RawFd = report_tx.as_raw_fd();
        // SAFETY: this runs in the forked child before exec. This process is single-threaded
        // (no runtime, no helper threads), and the closure only makes system calls: write(2),
        // prctl(2), landlock_restrict_self(2) through the crate, which allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let mut report = [0u8; 4];
                report[0] = match procs_fd {
                    None => 0,
                    Some(fd) if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 => 1,
                    Some(_) => 2,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let Some(ruleset) = ruleset.take() else {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                };
                let status = ruleset.restrict_self().map_err(|_| io::Error::last_os_error())?;
                encode_status(&status, &mut report[1..]);
                libc::write(tx, report.as_ptr().cast(), report.len());
                Ok(())
            });
        }
    }
    let spawned = command.spawn();
    // Close the parent's write end (held by the closure) so that reading sees EOF.
    drop(command);
    drop(report_tx);
    let mut report = Vec::new();
    let _ = report_rx.read_to_end(&mut report);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = cgroup {
                c.remove();
            }
            if report.len() < 4 {
                return Err(anyhow!("cannot confine {program:?} (no_new_privs, Landlock): {e}"));
            }
            eprintln!("agent-monitor exec: cannot run {program:?}: {e}");
            return Ok(ExitCode::from(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 }));
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    forward_signals();

    if let [joined, ruleset, nnp, abi] = report[..] {
        if let Some(c) = &cgroup {
            match joined {
                1 => info!(cgroup = %c.dir.display(), "the command runs in its own cgroup"),
                _ => warn!(cgroup = %c.dir.display(), "the command could not join its cgroup"),
            }
        }
        let enforced = match ruleset {
            0 => "fully enforced",
            1 => "partially enforced",
            _ => "not enforced",
        };
        info!(
            agent = name,
            pid = child.id(),
            landlock_abi = abi,
            no_new_privs = nnp == 1,
            writable = %sandbox.writable.join(" "),
            tcp_connect = %sandbox.tcp_desc,
            scoped = "signals, abstract unix sockets",
            "Landlock ruleset {enforced}"
        );
        if ruleset != 0 {
            warn!(agent = name, "Landlock is {enforced} on this kernel: the daemon's layers are what holds");
        }
    }

    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!("waiting for {program:?}: {e}")),
        }
    };
    if let Ok(rel) = &registered {
        let _ =
            crate::control::protocol::call(&control, &crate::control::Request::Unregister { cgroup: rel.to_string() });
    }
    if let Some(c) = cgroup {
        c.remove();
    }
    Ok(ExitCode::from(exit_code(status)))
}

/// The shell's convention: the exit code, or 128+N for a process killed by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).min(255) as u8,
        _ => 1,
    }
}

/// Three bytes for the parent: ruleset status, no_new_privs, the effective ABI.
fn encode_status(status: &RestrictionStatus, out: &mut [u8]) {
    out[0] = match status.ruleset {
        RulesetStatus::FullyEnforced => 0,
        RulesetStatus::PartiallyEnforced => 1,
        RulesetStatus::NotEnforced => 2,
    };
    out[1] = status.no_new_privs as u8;
    out[2] = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u8,
        _ => 0,
    };
}

/// The Landlock ruleset of one agent, created (it holds a ruleset fd) but not yet enforced.
struct Sandbox {
    ruleset: RulesetCreated,
    /// The paths writes are allowed beneath.
    writable: Vec<String>,
    /// "all ports", or the allowed ports.
    tcp_desc: String,
}

/// The TCP ports an agent may connect to, from its `allow` entries: `None` when an entry allows
/// any port (Landlock then does not handle TCP connects at all).
fn tcp_ports(agent: &AgentPolicy) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for e in agent.network.allow.iter().filter(|e| e.protocol != crate::policy::Protocol::Udp) {
        match &e.dest {
            AllowEntry::Unix(_) => {}
            AllowEntry::Host { port, .. } | AllowEntry::Addr { port, .. } => match port {
                None => return None,
                Some(p) if !ports.contains(p) => ports.push(*p),
                Some(_) => {}
            },
        }
    }
    Some(ports)
}

/// The paths the ruleset grants writes beneath: the agent's `writable`, then
/// [`IMPLICIT_WRITABLE`], those that exist, without repeats.
fn writable_paths(agent: &AgentPolicy) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &agent.files.writable {
        if !Path::new(p).exists() {
            warn!(
                agent = %agent.name,
                path = %p,
                "writable path does not exist: Landlock cannot grant it (it stays read-only for this run)"
            );
        } else if !out.contains(p) {
            out.push(p.clone());
        }
    }
    for p in IMPLICIT_WRITABLE {
        if Path::new(p).exists() && !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

impl Sandbox {
    /// Writes (every write-ish right of [`LANDLOCK_ABI`]) only beneath [`writable_paths`]; reads
    /// and exec are not handled, so they stay allowed everywhere. TCP connects only to
    /// [`tcp_ports`] (ABI 4+). Signals and abstract Unix sockets scoped to the command's own
    /// domain (ABI 6+). Best effort: what the kernel lacks is dropped, and the status says so.
    fn build(agent: &AgentPolicy) -> anyhow::Result<Sandbox> {
        let write = AccessFs::from_write(LANDLOCK_ABI);
        let ports = tcp_ports(agent);
        let mut rs = Ruleset::default().set_compatibility(CompatLevel::BestEffort).handle_access(write)?;
        if ports.is_some() {
            rs = rs.handle_access(AccessNet::ConnectTcp)?;
        }
        rs = rs.scope(Scope::from_all(LANDLOCK_ABI))?;
        let mut created = rs.create()?;

        let writable = writable_paths(agent);
        for p in &writable {
            let fd = PathFd::new(p).with_context(|| format!("opening {p}"))?;
            // Directory-only rights (make_*, remove_*, refer) on a file would make the crate
            // report "partially enforced"; a file gets the file rights only.
            let is_dir = fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false);
            let access = if is_dir { write } else { write & AccessFs::from_file(LANDLOCK_ABI) };
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
        let tcp_desc = match &ports {
            None => "all ports (an allow entry has port *)".to_string(),
            Some(ports) if ports.is_empty() => "none".to_string(),
            Some(ports) => {
                for p in ports {
                    created = created.add_rule(NetPort::new(*p, AccessNet::ConnectTcp))?;
                }
                ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
            }
        };
        Ok(Sandbox { ruleset: created, writable, tcp_desc })
    }
}

/// The command's cgroup: `<cgroup2 root>/agent-monitor.slice/exec-NAME-PID`, removed when the
/// command has exited (if it is empty by then).
struct ExecCgroup {
    dir: PathBuf,
    /// The path relative to the cgroup v2 root, as the daemon names cgroups (`/a/b`).
    rel: String,
    /// `cgroup.procs`, opened here so the child only has to write "0" to it.
    procs: File,
}

impl ExecCgroup {
    fn create(agent: &str) -> Option<ExecCgroup> {
        let Some(root) = crate::bpf::maps::cgroup2_root() else {
            warn!("no cgroup v2 hierarchy is mounted: the command runs in this process's cgroup");
            return None;
        };
        let dir = root.join(EXEC_SLICE).join(format!("exec-{agent}-{}", std::process::id()));
        let r = fs::create_dir_all(&dir).and_then(|()| {
            OpenOptions::new().write(true).open(dir.join("cgroup.procs")).map(|procs| ExecCgroup {
                dir: dir.clone(),
                rel: format!("/{EXEC_SLICE}/exec-{agent}-{}", std::process::id()),
                procs,
            })
        });
        match r {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(cgroup = %dir.display(), error = %e, "cannot create the command's cgroup: it runs in this process's cgroup");
                let _ = fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Remove the cgroup. The kernel may report it busy for a moment after the last process was
    /// reaped; a cgroup still holding processes (the command left some running) is left alone.
    fn remove(self) {
        drop(self.procs);
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    warn!(cgroup = %self.dir.display(), error = %e, "cannot remove the command's cgroup");
                    return;
                }
            }
        }
        warn!(cgroup = %self.dir.display(), "the command's cgroup still holds processes: left in place");
    }
}

/// The command's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// While the command runs, `exec` stays to wait for it: a SIGTERM or SIGHUP sent to `exec` is
/// passed on to the command; SIGINT and SIGQUIT (which a terminal sends to the whole foreground
/// process group, the command included) are ignored here, as `system(3)` does.
fn forward_signals() {
    // SAFETY: installing handlers; `forward` only calls kill(2).
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
        for sig in [libc::SIGINT, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn agent(toml: &str) -> AgentPolicy {
        let p = parse("t.toml", toml).unwrap_or_else(|d| panic!("{d:?}"));
        p.agents[0].clone()
    }

    #[test]
    fn tcp_ports_from_allow() {
        let a = agent(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.network]\nallow = [\"127.0.0.1:80\", \
             \"x.example:443\", \"10.0.0.0/8:80\", \"unix:/run/x.sock\"]\n",
        );
        assert_eq!(tcp_ports(&a), Some(vec![80, 443]));
        let any = agent(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.network]\nallow = [\"127.0.0.1:80\", \
             \"localhost:*\"]\n",
        );
        assert_eq!(tcp_ports(&any), None);
        let none = agent("[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n");
        assert_eq!(tcp_ports(&none), Some(vec![]));
    }

    #[test]
    fn writable_paths_keep_existing_ones_and_the_implicit_devices() {
        let a = agent(
            "[[agent]]\nname = \"a\"\n[agent.match]\ncomm = [\"a\"]\n[agent.files]\nwritable = [\"/tmp\", \
             \"/nonexistent/agent-monitor-test\", \"/dev/null\"]\n",
        );
        let w = writable_paths(&a);
        assert_eq!(w[0], "/tmp");
        assert!(!w.iter().any(|p| p.starts_with("/nonexistent")));
        assert_eq!(w.iter().filter(|p| *p == "/dev/null").count(), 1);
        assert!(w.iter().any(|p| p == "/dev/null"));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
