//! `agent-monitor run`: load, enforce, record, reload, until told to stop.
//!
//! Start-up, in order ([`run`]): the policy (a bad one stops here, nothing loaded), the kernel
//! programs, the policy in the maps and the agents already running adopted, the shared
//! [`state::State`], then the supervised tasks (`tasks`): the event pipeline, the metrics server,
//! the control socket, the periodic refresh, host name resolution, hold expiry and the systemd
//! watchdog. Then READY, and signals: SIGHUP reloads, SIGTERM stops (pins stay), SIGINT stops and
//! removes the pins.
//!
//! The rooms: `state` (what the tasks share, and its lock order), `pipeline` (what happens to
//! each event), `handler` (the control socket's answers), `reload` (policy changes while
//! running), `periodic` (the two-second refresh), `protect` (the daemon's own paths), `tasks`
//! (supervision).
mod handler;
mod periodic;
mod pipeline;
mod protect;
mod reload;
pub mod state;
mod tasks;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_monitor_common::maps::names;
use anyhow::{anyhow, bail, Context as _};
use aya::maps::RingBuf;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use self::{pipeline::Pipeline, state::State, tasks::Tasks};
use crate::{
    bpf::{adopt, apply, maps as kmaps, stats::StatsSampler, Kernel},
    cli::RunArgs,
    control::{self, server::Control},
    enforce::holds,
    events::{reader, Decoder},
    metrics::{self, refresh::Refresh, Health, Metrics},
    policy::{self, Policy, PolicySource, DEFAULT_EVENTS_FILE, DEFAULT_METRICS_LISTEN},
    sinks::{audit::Chain, log::EventLog, webhook::WebhookSink},
};

/// How often allowed host names are resolved again.
pub const HOST_REFRESH: Duration = Duration::from_secs(2);
/// How often gauges, kernel counters and TLS hooks are refreshed.
const REFRESH: Duration = Duration::from_secs(2);

/// Where things go, from the command line over the policy's `[daemon]` over the defaults.
struct Settings {
    metrics_addr: SocketAddr,
    events_path: String,
    pins: Option<PathBuf>,
    control_path: PathBuf,
}

impl Settings {
    fn new(args: &RunArgs, policy: &Policy) -> anyhow::Result<Self> {
        let d = &policy.daemon;
        Ok(Settings {
            metrics_addr: args
                .metrics_listen
                .clone()
                .or_else(|| d.metrics_listen.clone())
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string())
                .parse()
                .context("metrics listen address")?,
            events_path: args
                .events
                .clone()
                .or_else(|| d.events_file.clone())
                .unwrap_or_else(|| DEFAULT_EVENTS_FILE.into()),
            pins: args.pin_path.clone().or_else(|| d.pin_path.clone().map(PathBuf::from)),
            control_path: args
                .control_socket
                .clone()
                .or_else(|| d.control_socket.clone().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(control::DEFAULT_CONTROL_SOCKET)),
        })
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = PolicySource::resolve(args.config.clone());
    let policy = source.load().map_err(|d| {
        for d in &d {
            eprintln!("{d}");
        }
        anyhow!("the policy {} is invalid ({} error(s)); nothing was loaded", source.describe(), d.len())
    })?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "agent-monitor run needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_KILL) to load its eBPF programs"
        );
    }
    let settings = Settings::new(&args, &policy)?;
    // The daemon leads its own process group: `kill(-pgid)` aimed at it is aimed at the daemon
    // (self-protection), and a signal to the group that started it does not reach it.
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    let (state, ring) = start(source, &policy, &settings)?;
    let mut tasks = Tasks::new(state.health.clone());
    spawn_tasks(&mut tasks, &state, ring, &settings, policy.daemon.admin_group.as_deref()).await?;
    // The tasks' threads are the daemon too.
    kmaps::sync_daemon_tids(&mut state.kernel.lock().unwrap().ebpf);
    state.record_policy(&state.compiled.lock().unwrap().clone());
    holds::deny_stale(&state.kernel, &state.metrics);
    info!(events = settings.events_path, metrics = %settings.metrics_addr, control = %settings.control_path.display(), "enforcing");
    sd_notify("READY=1\nSTATUS=enforcing");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let interactive = loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                // SIGHUP also reopens the events log, for logrotate.
                state.reopen_sink();
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || st.reload()).await;
                sd_notify("READY=1");
            }
            // SIGUSR1 only reopens the events log (logrotate's postrotate: the policy is not
            // read again).
            _ = usr1.recv() => state.reopen_sink(),
            _ = term.recv() => break false,
            _ = int.recv() => break true,
            Some(ended) = tasks.next_ended() => {
                sd_notify(&format!("STATUS=degraded: {ended}"));
            }
        }
    };
    tasks.shutdown().await;
    stop(&state, &settings, interactive);
    Ok(())
}

/// Load the kernel side, write the policy into it, adopt running agents: the state the tasks
/// share, and the ring buffer the pipeline reads.
fn start(
    source: PolicySource,
    policy: &Policy,
    s: &Settings,
) -> anyhow::Result<(Arc<State>, RingBuf<aya::maps::MapData>)> {
    let compiled = policy::compile(policy);
    info!(policy = source.describe(), hash = compiled.hash, agents = compiled.agents.len(), "policy loaded");
    let sink = crate::sinks::log::open_sink(&s.events_path)?;
    let metrics = Arc::new(Metrics::new());
    let tls_uprobes = policy.daemon.tls_uprobes.unwrap_or_default();
    raise_fd_limit();
    let mut kernel = Kernel::load(s.pins.as_deref(), tls_uprobes)?;
    release_startup_memory();
    let resolved = apply::resolve_hosts(&compiled.hosts);
    let protected = protect::protected_paths(source.path(), &s.events_path, s.pins.as_deref(), &s.control_path);
    info!(paths = ?protected.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), "the daemon's own paths are protected from agents");
    let gen = apply::apply_policy(&mut kernel.ebpf, &compiled, &resolved, &[], &protected)
        .context("writing the policy into the kernel maps")?;
    // The host's mounts: a path crossing any other is not judged by its name.
    let learned = kmaps::learn_mounts(&mut kernel.ebpf, &kmaps::mount_ids("1"), true);
    info!(mounts = learned, "the host's mounts are known");
    adopt::adopt_running(&mut kernel.ebpf, &compiled)?;
    for (pid, _) in kmaps::tracked(&kernel.ebpf) {
        pipeline::learn_agent_mounts(&mut kernel.ebpf, pid);
    }
    kmaps::set_daemon(&mut kernel.ebpf, std::process::id(), kernel.layers.bpf_lsm, kernel.layers.unix_refusal)?;
    kmaps::sync_daemon_tids(&mut kernel.ebpf);
    let ring = RingBuf::try_from(kernel.ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("EVENTS map missing"))?)?;
    for layer in agent_monitor_common::Layer::ALL.iter().filter(|l| **l != agent_monitor_common::Layer::Userspace) {
        metrics.layer_up.with_label_values(&[layer.name()]).set(kernel.layers.is_up(*layer) as i64);
    }
    metrics.set_policy(&compiled.hash, compiled.agents.len());
    metrics.init_agents(&compiled.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>());
    let (live, _) = tokio::sync::broadcast::channel(4096);
    let chain = if s.events_path == "-" { Chain::new() } else { Chain::resume(std::path::Path::new(&s.events_path)) };
    let mut decoder = Decoder::new(compiled.names_by_id());
    decoder.policy_by_gen[gen as usize] = Some(compiled.hash.clone());
    let origin = crate::sinks::Origin::new(&policy.daemon);
    let health = Arc::new(Health::default());
    for (layer, why) in crate::metrics::health::needed_layers_down(&kernel.layers, tls_uprobes) {
        health.fail(&format!("layer {layer}"), why);
    }
    let state = Arc::new(State {
        source,
        kernel: Mutex::new(kernel),
        protected,
        decoder: Mutex::new(decoder),
        metrics: metrics.clone(),
        health,
        events_path: s.events_path.clone(),
        log: Mutex::new(EventLog::new(sink, chain, live.clone()).with_origin(&origin)),
        live,
        compiled: Mutex::new(compiled),
        resolved: Mutex::new(resolved),
        tls_invisible: Mutex::new(Default::default()),
        webhooks: policy
            .alerts
            .webhook
            .iter()
            .map(|w| WebhookSink::start(w, metrics.clone(), origin.clone()))
            .collect(),
        syslog: policy.daemon.syslog.as_deref().and_then(|t| {
            crate::sinks::syslog::SyslogSink::start(t, origin.clone(), metrics.clone())
                .inspect_err(|e| tracing::error!(error = %format!("{e:#}"), "events are not sent to syslog"))
                .ok()
        }),
        registered: Mutex::new(Vec::new()),
        holds: Default::default(),
        hold_timeout: policy.daemon.hold_timeout_secs.map(Duration::from_secs).unwrap_or(holds::DEFAULT_TIMEOUT),
        bpf_stats: StatsSampler::start(policy.daemon.bpf_stats.unwrap_or_default()),
        journal: Default::default(),
        tls_uprobes,
    });
    {
        // Agents running before the daemon (or left by an earlier run): hooked before READY.
        let seen = Instant::now();
        let mut k = state.kernel.lock().unwrap();
        let tracked = kmaps::tracked(&k.ebpf);
        k.hook_uncovered_agents(&tracked, seen);
    }
    Ok((state, ring))
}

/// Every task of the running daemon, supervised.
async fn spawn_tasks(
    tasks: &mut Tasks,
    state: &Arc<State>,
    ring: RingBuf<aya::maps::MapData>,
    s: &Settings,
    admin_group: Option<&str>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics listener on {}", s.metrics_addr))?;
    tasks.spawn("metrics server", metrics::server::serve(listener, state.metrics.clone(), state.health.clone()));
    {
        let st = state.clone();
        tasks.spawn("event reader", async move {
            let mut pipeline = Pipeline::new(st.clone());
            // Only returns on an error: decisions stay in the kernel, but nothing is recorded.
            if let Err(e) = reader::run(ring, &st.metrics, &mut pipeline).await {
                tracing::error!(error = %e, "the event reader stopped: enforcement continues in the kernel, but no event is recorded");
            }
        });
    }
    {
        let st = state.clone();
        tasks.every("refresh", REFRESH, move || {
            let mut r = Refresh::default();
            let st = st.clone();
            move || st.refresh(&mut r)
        });
    }
    {
        // Keep allowed host names fresh: an agent resolving the same name must reach an allowed
        // address after the records change.
        let st = state.clone();
        tasks.every("host resolution", HOST_REFRESH, move || move || st.refresh_hosts());
    }
    {
        // An agent that lowered the daemon's limits (prlimit64) was killed after the call: the
        // limits come back here (as they are once start-up raised the open-files limit).
        let limits = protect::Limits::now();
        tasks.every("limits", Duration::from_secs(1), move || {
            let limits = limits.clone();
            move || {
                for name in limits.restore() {
                    warn!(limit = name, "the daemon's resource limit was lowered by another process: restored");
                }
            }
        });
    }
    {
        // Released blocked sockets are kept while TCP may still retransmit their refused bytes.
        let st = state.clone();
        tasks.every("socket sweep", Duration::from_secs(300), move || {
            move || {
                kmaps::sweep_released_socks(&mut st.kernel.lock().unwrap().ebpf);
            }
        });
    }
    {
        let st = state.clone();
        tasks.every("hold expiry", Duration::from_secs(1), move || move || st.expire_holds());
    }
    let (listener, control) = Control::bind(&s.control_path, admin_group)?;
    tasks.spawn("control socket", control::server::serve(listener, Arc::new(control), state.clone()));
    // systemd's watchdog: ping at half the period, only while the runtime runs and the lock on
    // the kernel maps can be taken (a deadlocked daemon stops pinging and is restarted).
    if let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()).filter(|u| *u > 0) {
        let st = state.clone();
        tasks.spawn("watchdog", watchdog(st, Duration::from_micros(usec / 2)));
    }
    Ok(())
}

async fn watchdog(st: Arc<State>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let sh = st.clone();
        let alive = tokio::time::timeout(period, tokio::task::spawn_blocking(move || drop(sh.kernel.lock().unwrap())));
        if matches!(alive.await, Ok(Ok(()))) {
            sd_notify("WATCHDOG=1");
        } else {
            warn!("watchdog: the kernel maps' lock was not available in time; not pinging");
        }
    }
}

/// After the tasks: remove the control socket, close the per-agent TLS hooks, and either leave
/// the pinned programs enforcing (SIGTERM) or remove them (SIGINT).
fn stop(state: &State, s: &Settings, interactive: bool) {
    sd_notify("STOPPING=1");
    let _ = std::fs::remove_file(&s.control_path);
    let mut k = state.kernel.lock().unwrap();
    if let Some(t) = k.agent_tls.take() {
        // Agents' TLS handshakes no longer wait for hooks that no one will add.
        let _ = kmaps::set_tls_token_in_force(&mut k.ebpf, 0);
        if k.pin_dir.is_some() && !interactive {
            warn!(
                processes = t.armed_processes(),
                "the per-agent TLS hooks end with this process (tls_uprobes = \"agents\"): HTTP methods inside agents' TLS are not seen until the next start hooks them again"
            );
        }
        // Close the events, then remove them from tracefs.
        drop(t);
    }
    match (&k.pin_dir, interactive) {
        (Some(dir), false) => info!(
            pins = %dir.display(),
            "stopping: the programs stay attached and enforcing from their pins (the next start adopts them); `agent-monitor cleanup` removes them"
        ),
        (Some(dir), true) => {
            k.unpin_all();
            info!(pins = %dir.display(), "stopping (interrupted): pins removed, programs detached; agents are no longer confined")
        }
        (None, _) => info!("stopping: programs are detached and agents are no longer confined by this daemon"),
    }
}

/// The per-agent TLS hooks hold a few perf event fds per agent instance: the soft limit on open
/// files (1024 under systemd) goes up to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit(2) on a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                warn!(soft = lim.rlim_cur, "could not raise the open-files limit");
            }
        }
    }
}

/// Allocator settings for the daemon, before its threads start.
///
/// glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB) and
/// its trim threshold to twice that. After a few full drains of the ring buffer (a batch `Vec`
/// of ~6800 events is ~4 MiB) blocks that size came from, and stayed in, the arena of each
/// worker thread that freed them: RSS went from 30 MiB idle to 46-56 MiB after bursts the
/// daemon could not keep up with (48 MiB in the bench). Fixed thresholds stop that: blocks of
/// 1 MiB or more get their own mapping, returned on free, and an arena keeps at most 2 MiB
/// free at its top. Only batches of more than ~1700 events pay an mmap; no cost was measurable
/// in daemon CPU per event, unpaced or with the daemon starved.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 20);
    }
}

/// Give the heap that start-up used and freed back to the kernel.
///
/// Loading parses the kernel's BTF (~20 MiB in memory) and the eBPF object, then frees them;
/// glibc keeps free memory that lies below live allocations, so without this the daemon idled
/// with ~10 MiB of resident heap it no longer used. `malloc_trim` releases the free pages of
/// every arena (MADV_DONTNEED), once, before the ring buffer is mapped (the start-up peak).
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tell systemd about our state (Type=notify), if it is listening.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let _ = sock.send_to(state.as_bytes(), PathBuf::from(path));
}
