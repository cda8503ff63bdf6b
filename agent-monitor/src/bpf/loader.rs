//! Loading the programs and attaching them from one declarative probe table.
use std::path::Path;

use anyhow::{bail, Context as _};
use aya::{
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

use super::btf::Btf;

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// `tracepoint/<category>/<name>`; one program may serve several tracepoints.
    TracePoint(&'static str, &'static [&'static str]),
    RawTracePoint(&'static str),
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub program: &'static str,
    pub attach: Attach,
    /// A missing required probe stops the daemon; a missing optional one (a syscall this
    /// architecture does not have, like `open` on arm64) is logged.
    pub required: bool,
    /// The enforcement layer it serves (`agent_monitor_layer_up{layer}`).
    pub layer: &'static str,
}

const fn tp(program: &'static str, required: bool) -> Probe {
    // The program is named after the syscall tracepoint it attaches to.
    Probe { program, attach: Attach::TracePoint("syscalls", &[]), required, layer: "tracepoint" }
}

/// Every program and where it goes.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "sched_process_fork",
        attach: Attach::RawTracePoint("sched_process_fork"),
        required: true,
        layer: "tracepoint",
    },
    Probe {
        program: "sched_process_exec",
        attach: Attach::TracePoint("sched", &["sched_process_exec"]),
        required: true,
        layer: "tracepoint",
    },
    Probe {
        program: "sched_process_exit",
        attach: Attach::TracePoint("sched", &["sched_process_exit"]),
        required: true,
        layer: "tracepoint",
    },
    Probe {
        program: "sys_exit_reap",
        attach: Attach::TracePoint("syscalls", &["sys_exit_wait4", "sys_exit_waitid"]),
        required: true,
        layer: "tracepoint",
    },
    tp("sys_enter_openat", true),
    tp("sys_enter_openat2", true),
    tp("sys_enter_open", false),
    tp("sys_enter_creat", false),
    Probe {
        program: "sys_exit_open_any",
        attach: Attach::TracePoint(
            "syscalls",
            &["sys_exit_openat", "sys_exit_openat2", "sys_exit_open", "sys_exit_creat"],
        ),
        required: true,
        layer: "tracepoint",
    },
    Probe {
        program: "sys_exit_path_any",
        attach: Attach::TracePoint(
            "syscalls",
            &[
                "sys_exit_truncate",
                "sys_exit_unlinkat",
                "sys_exit_unlink",
                "sys_exit_rmdir",
                "sys_exit_renameat",
                "sys_exit_renameat2",
                "sys_exit_rename",
                "sys_exit_linkat",
                "sys_exit_link",
                "sys_exit_symlinkat",
                "sys_exit_symlink",
                "sys_exit_mkdirat",
                "sys_exit_mkdir",
                "sys_exit_mknodat",
                "sys_exit_mknod",
                "sys_exit_fchmodat",
                "sys_exit_fchmodat2",
                "sys_exit_chmod",
                "sys_exit_fchownat",
                "sys_exit_chown",
                "sys_exit_lchown",
            ],
        ),
        required: true,
        layer: "tracepoint",
    },
    tp("sys_enter_truncate", true),
    tp("sys_enter_unlinkat", true),
    tp("sys_enter_unlink", false),
    tp("sys_enter_rmdir", false),
    tp("sys_enter_renameat", false),
    tp("sys_enter_renameat2", true),
    tp("sys_enter_rename", false),
    tp("sys_enter_linkat", true),
    tp("sys_enter_link", false),
    tp("sys_enter_symlinkat", true),
    tp("sys_enter_symlink", false),
    tp("sys_enter_mkdirat", true),
    tp("sys_enter_mkdir", false),
    tp("sys_enter_mknodat", true),
    tp("sys_enter_mknod", false),
    tp("sys_enter_fchmodat", true),
    tp("sys_enter_fchmodat2", false),
    tp("sys_enter_chmod", false),
    tp("sys_enter_fchmod", true),
    tp("sys_enter_fchownat", true),
    tp("sys_enter_chown", false),
    tp("sys_enter_lchown", false),
    tp("sys_enter_fchown", true),
    tp("sys_enter_io_uring_setup", false),
    tp("sys_enter_socket", true),
    tp("sys_enter_bpf", true),
];

/// What the daemon found out about each layer at start-up.
#[derive(Clone, Debug, Default)]
pub struct LayerStatus {
    pub tracepoint: bool,
    pub bpf_lsm: bool,
    pub cgroup: bool,
    pub landlock: bool,
    /// Why a layer is down, for the log and `status`.
    pub notes: Vec<String>,
}

/// The loaded programs and maps. Dropping it detaches everything.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub layers: LayerStatus,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-monitor"));

fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .context("running mount for tracefs")?;
    if !status.success() || !Path::new("/sys/kernel/tracing/events").exists() {
        bail!("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: run `mount -t tracefs nodev /sys/kernel/tracing` as root");
    }
    Ok(())
}

fn landlock_abi() -> i64 {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) }
}

impl Kernel {
    /// Load every program with offsets from the running kernel's BTF and attach it.
    pub fn load() -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF programs");
        }
        ensure_tracefs()?;
        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        let offsets = Btf::from_file(btf_path)
            .and_then(|b| b.offsets())
            .with_context(|| format!("reading kernel struct offsets from {}", btf_path.display()))?;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .load(OBJECT)
            .context("loading the eBPF object")?;
        let mut attached = Vec::new();
        let mut up = std::collections::BTreeSet::new();
        for probe in PROBES {
            let t = std::time::Instant::now();
            let r = attach(&mut ebpf, probe);
            debug!(program = probe.program, ms = t.elapsed().as_millis() as u64, "loaded");
            match r {
                Ok(n) => {
                    attached.extend(n);
                    up.insert(probe.layer);
                }
                Err(e) if probe.required => {
                    return Err(e.context(format!("attaching required probe {}", probe.program)))
                }
                Err(e) => warn!(program = probe.program, error = %format!("{e:#}"), "optional probe not attached"),
            }
        }
        let mut layers = LayerStatus { tracepoint: up.contains("tracepoint"), ..Default::default() };
        // BPF LSM is not built into this version: file and process kinds use the tracepoint
        // layer, whose `deny` falls back to `kill` after the syscall has run.
        layers.notes.push(
            "bpf_lsm: not active; file writes cannot be refused in-kernel for agents not started by `exec` (deny falls back to kill after the syscall)".into(),
        );
        let abi = landlock_abi();
        layers.landlock = abi > 0;
        if !layers.landlock {
            layers.notes.push("landlock: not available in this kernel".into());
        }
        info!(attached = attached.len(), landlock_abi = abi, "eBPF programs attached");
        debug!(?attached, "attach points");
        for n in &layers.notes {
            warn!("{n}");
        }
        Ok(Kernel { ebpf, layers })
    }
}

fn attach(ebpf: &mut Ebpf, probe: &Probe) -> anyhow::Result<Vec<String>> {
    let prog = ebpf
        .program_mut(probe.program)
        .with_context(|| format!("program {} missing from the object", probe.program))?;
    let mut names = Vec::new();
    match probe.attach {
        Attach::TracePoint(category, names_list) => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().with_context(|| format!("loading {}", probe.program))?;
            let list: Vec<&str> = if names_list.is_empty() { vec![probe.program] } else { names_list.to_vec() };
            // A shared program (several tracepoints) needs at least one; a syscall missing on
            // this architecture is logged, not fatal.
            for name in &list {
                match p.attach(category, name) {
                    Ok(_) => names.push(format!("{category}/{name}")),
                    Err(e) if list.len() > 1 => warn!(tracepoint = name, error = %e, "tracepoint not attached"),
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("attaching {category}/{name}"))),
                }
            }
            if names.is_empty() {
                bail!("none of the tracepoints of {} could be attached", probe.program);
            }
        }
        Attach::RawTracePoint(name) => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load().with_context(|| format!("loading {}", probe.program))?;
            p.attach(name).with_context(|| format!("attaching raw tracepoint {name}"))?;
            names.push(format!("raw/{name}"));
        }
    }
    Ok(names)
}
