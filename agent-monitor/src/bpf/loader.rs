//! Loading the programs and attaching them from one declarative probe table.
use std::path::Path;

use anyhow::{bail, Context as _};
use std::{collections::BTreeSet, fs::File, path::PathBuf};

use aya::{
    programs::{
        cgroup_skb::CgroupSkbAttachType, CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, RawTracePoint,
        TracePoint, UProbe,
    },
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
    /// A cgroup program attached to the root of the cgroup v2 hierarchy: it sees every process.
    CgroupSockAddr,
    CgroupSock,
    CgroupSkbEgress,
    /// Uprobes on TLS library functions, attached to each library file found (see [`TLS_LIBS`]).
    UProbe(&'static str),
}

/// TLS libraries whose write functions carry plaintext, by the name their file starts with.
pub const TLS_LIBS: &[(&str, &[&str])] = &[
    ("libssl.so", &["ssl_write", "ssl_write_ex", "ssl_do_handshake"]),
    ("libgnutls.so", &["gnutls_record_send", "gnutls_handshake"]),
];

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
                "sys_exit_connect",
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
    tp("sys_enter_connect", true),
    Probe { program: "connect4", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "connect6", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sendmsg4", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sendmsg6", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sock_create", attach: Attach::CgroupSock, required: true, layer: "cgroup" },
    Probe { program: "http_egress", attach: Attach::CgroupSkbEgress, required: true, layer: "cgroup" },
    Probe { program: "ssl_write", attach: Attach::UProbe("SSL_write"), required: false, layer: "uprobe" },
    Probe { program: "ssl_write_ex", attach: Attach::UProbe("SSL_write_ex"), required: false, layer: "uprobe" },
    Probe {
        program: "gnutls_record_send",
        attach: Attach::UProbe("gnutls_record_send"),
        required: false,
        layer: "uprobe",
    },
    Probe { program: "ssl_do_handshake", attach: Attach::UProbe("SSL_do_handshake"), required: false, layer: "uprobe" },
    Probe { program: "gnutls_handshake", attach: Attach::UProbe("gnutls_handshake"), required: false, layer: "uprobe" },
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
    pub uprobe: bool,
    /// Why a layer is down, for the log and `status`.
    pub notes: Vec<String>,
}

/// The loaded programs and maps. Dropping it detaches everything.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub layers: LayerStatus,
    /// TLS library files whose write functions are hooked.
    pub tls_libs: BTreeSet<PathBuf>,
    /// Keeps the kernel's per-program run-time statistics on while the daemon runs.
    pub _stats: Option<std::os::fd::OwnedFd>,
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
        let mut up = BTreeSet::new();
        let cgroup_root = super::maps::cgroup2_root().and_then(|p| File::open(&p).ok());
        for probe in PROBES {
            let t = std::time::Instant::now();
            let r = attach(&mut ebpf, probe, cgroup_root.as_ref());
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
        let mut layers =
            LayerStatus { tracepoint: up.contains("tracepoint"), cgroup: up.contains("cgroup"), ..Default::default() };
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
        // Per-program run count and run time (BPF_ENABLE_STATS): a few ns per program run.
        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(error = %e, "kernel BPF statistics unavailable: agent_monitor_bpf_program_* stay at 0");
                None
            }
        };
        let mut kernel = Kernel { ebpf, layers, tls_libs: BTreeSet::new(), _stats: stats };
        for lib in system_tls_libs() {
            kernel.hook_tls_lib(&lib);
        }
        if kernel.tls_libs.is_empty() {
            kernel
                .layers
                .notes
                .push("uprobe: no OpenSSL or GnuTLS library found: HTTP methods inside TLS are not visible".into());
            warn!("no TLS library found to hook: HTTPS request methods are not visible");
        }
        Ok(kernel)
    }
}

impl Kernel {
    /// (program, run count, run time in seconds) of every loaded program.
    pub fn program_stats(&self) -> Vec<(String, u64, f64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_count(), info.run_time().as_secs_f64()))
            })
            .collect()
    }

    /// Hook the write functions of a TLS library file (idempotent). Returns true if it is
    /// hooked after the call.
    pub fn hook_tls_lib(&mut self, path: &Path) -> bool {
        let Ok(canon) = std::fs::canonicalize(path) else { return false };
        if self.tls_libs.contains(&canon) {
            return true;
        }
        let name = canon.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some((_, programs)) = TLS_LIBS.iter().find(|(prefix, _)| name.starts_with(prefix)) else { return false };
        let mut hooked = 0;
        for program in *programs {
            let Some(probe) = PROBES.iter().find(|p| p.program == *program) else { continue };
            let Attach::UProbe(symbol) = probe.attach else { continue };
            let Some(prog) = self.ebpf.program_mut(program) else { continue };
            let Ok(p) = <&mut UProbe>::try_from(prog) else { continue };
            match p.attach(symbol, &canon, aya::programs::uprobe::UProbeScope::AllProcesses) {
                Ok(_) => hooked += 1,
                Err(e) => debug!(lib = %canon.display(), symbol, error = %e, "uprobe not attached"),
            }
        }
        if hooked > 0 {
            info!(lib = %canon.display(), functions = hooked, "TLS library hooked");
            self.tls_libs.insert(canon);
            self.layers.uprobe = true;
        }
        hooked > 0
    }
}

/// The system's OpenSSL and GnuTLS libraries, as the dynamic linker would find them.
fn system_tls_libs() -> Vec<PathBuf> {
    let out = std::process::Command::new("ldconfig").arg("-p").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_once("=>").map(|(name, path)| (name.trim().to_string(), PathBuf::from(path.trim()))))
        .filter(|(name, _)| {
            TLS_LIBS.iter().any(|(prefix, _)| name.starts_with(prefix))
                && !name.contains(".so ")
                && name.contains(".so.")
        })
        .map(|(_, p)| p)
        .collect();
    libs.dedup();
    libs
}

fn attach(ebpf: &mut Ebpf, probe: &Probe, cgroup: Option<&File>) -> anyhow::Result<Vec<String>> {
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
        Attach::CgroupSockAddr | Attach::CgroupSock | Attach::CgroupSkbEgress => {
            let cg = cgroup.context("no cgroup v2 hierarchy is mounted: the network layer cannot attach")?;
            // Attached as a bpf_link (5.7+), which always coexists with other programs on the
            // root (systemd's, other tools'); the link API takes no attach flags, so `Single`
            // here means "flags 0", not exclusivity.
            let mode = CgroupAttachMode::Single;
            match probe.attach {
                Attach::CgroupSockAddr => {
                    let p: &mut CgroupSockAddr = prog.try_into()?;
                    p.load().with_context(|| format!("loading {}", probe.program))?;
                    p.attach(cg, mode)?;
                }
                Attach::CgroupSock => {
                    let p: &mut CgroupSock = prog.try_into()?;
                    p.load().with_context(|| format!("loading {}", probe.program))?;
                    p.attach(cg, mode)?;
                }
                _ => {
                    let p: &mut CgroupSkb = prog.try_into()?;
                    p.load().with_context(|| format!("loading {}", probe.program))?;
                    p.attach(cg, CgroupSkbAttachType::Egress, mode)?;
                }
            }
            names.push(format!("cgroup/{}", probe.program));
        }
        Attach::UProbe(_) => {
            // Loaded now; attached per library by `Kernel::hook_tls_lib`.
            let p: &mut UProbe = prog.try_into()?;
            p.load().with_context(|| format!("loading {}", probe.program))?;
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
