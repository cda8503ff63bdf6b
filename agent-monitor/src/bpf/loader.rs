//! Loading the programs and attaching them from one declarative probe table.
use std::path::Path;

use anyhow::{bail, Context as _};
use std::{collections::BTreeSet, fs::File, path::PathBuf};

use aya::{
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr,
        Program, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

use super::btf::Btf;
use crate::policy::model::TlsUprobes;

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
    /// A BPF LSM hook; loaded only where the kernel runs BPF LSM programs.
    Lsm(&'static str),
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
        attach: Attach::RawTracePoint("sched_process_exec"),
        required: true,
        layer: "tracepoint",
    },
    Probe {
        program: "sched_process_exit",
        attach: Attach::RawTracePoint("sched_process_exit"),
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
    Probe { program: "lsm_file_open", attach: Attach::Lsm("file_open"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_unlink", attach: Attach::Lsm("path_unlink"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_rmdir", attach: Attach::Lsm("path_rmdir"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_mkdir", attach: Attach::Lsm("path_mkdir"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_mknod", attach: Attach::Lsm("path_mknod"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_symlink", attach: Attach::Lsm("path_symlink"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_rename", attach: Attach::Lsm("path_rename"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_link", attach: Attach::Lsm("path_link"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_chmod", attach: Attach::Lsm("path_chmod"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_chown", attach: Attach::Lsm("path_chown"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_path_truncate", attach: Attach::Lsm("path_truncate"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_socket_connect", attach: Attach::Lsm("socket_connect"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_socket_sendmsg", attach: Attach::Lsm("socket_sendmsg"), required: false, layer: "bpf_lsm" },
    Probe { program: "lsm_task_kill", attach: Attach::Lsm("task_kill"), required: false, layer: "bpf_lsm" },
    Probe {
        program: "lsm_ptrace_access_check",
        attach: Attach::Lsm("ptrace_access_check"),
        required: false,
        layer: "bpf_lsm",
    },
    Probe { program: "lsm_bpf", attach: Attach::Lsm("bpf"), required: false, layer: "bpf_lsm" },
    Probe { program: "connect4", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "connect6", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sendmsg4", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sendmsg6", attach: Attach::CgroupSockAddr, required: true, layer: "cgroup" },
    Probe { program: "sock_create", attach: Attach::CgroupSock, required: true, layer: "cgroup" },
    Probe { program: "http_egress", attach: Attach::CgroupSkbEgress, required: true, layer: "cgroup" },
    Probe { program: "kfree_skb", attach: Attach::RawTracePoint("kfree_skb"), required: false, layer: "cgroup" },
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
    tp("sys_enter_kill", true),
    tp("sys_enter_tkill", false),
    tp("sys_enter_tgkill", true),
    tp("sys_enter_rt_sigqueueinfo", false),
    tp("sys_enter_rt_tgsigqueueinfo", false),
    tp("sys_enter_ptrace", true),
    tp("sys_enter_process_vm_writev", false),
    tp("sys_enter_pidfd_send_signal", false),
    tp("sys_enter_pidfd_getfd", false),
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
    /// Links held by this process (dropped with it) when not pinning.
    links: Vec<FdLink>,
    /// Where this build's maps and links are pinned, if pinning.
    pub pin_dir: Option<PathBuf>,
    pinned: usize,
    /// True if the programs were adopted from pins left by an earlier run of this build.
    pub adopted: bool,
    /// TLS library files whose write functions are hooked.
    pub tls_libs: BTreeSet<PathBuf>,
    /// The TLS hooks when they are written into agent processes only (`tls_uprobes =
    /// "agents"`); None when they are attached for every process or not at all.
    pub agent_tls: Option<super::tls::AgentTls>,
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
    ///
    /// With `pins` (a directory on bpffs), maps and links are pinned under
    /// `pins/<build id>/`: they keep enforcing if this process dies, and the next start of the
    /// same build adopts them without attaching twice (a new build attaches its own programs,
    /// then removes the old build's pins).
    pub fn load(pins: Option<&Path>, tls_uprobes: TlsUprobes) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF programs");
        }
        ensure_tracefs()?;
        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        let offsets = Btf::from_file(btf_path)
            .and_then(|b| b.offsets())
            .with_context(|| format!("reading kernel struct offsets from {}", btf_path.display()))?;
        let pin_dir = pins.map(|base| base.join(build_id()));
        let mut adopted = false;
        let mut lsm_note: Option<String> = None;
        let mut loader = EbpfLoader::new();
        loader.override_global("OFFSETS", &offsets, true);
        let map_paths: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir.join("maps"))
                    .and_then(|_| std::fs::create_dir_all(dir.join("links")))
                    .with_context(|| format!("creating {} (is bpffs mounted there?)", dir.display()))?;
                adopted = std::fs::read_dir(dir.join("links"))?.next().is_some();
                PINNED_MAPS.iter().map(|m| (*m, dir.join("maps").join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        // `EbpfLoader::new` parsed the kernel's BTF for itself (~20 MiB in memory), and each LSM
        // program's load parsed it again. Unless the programs are adopted (nothing is loaded
        // then), free the loader's copy first (one copy at a time keeps the start-up peak
        // down), parse it once, and share that copy with the loader and every LSM hook.
        let kernel_btf = (!adopted).then(|| {
            loader.btf(None);
            aya::Btf::from_sys_fs()
                .map_err(|e| format!("{:#}", anyhow::Error::new(e).context("reading the kernel's BTF for LSM hooks")))
        });
        if let Some(btf) = &kernel_btf {
            loader.btf(btf.as_ref().ok());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        // Done with the loader (and with its own copy of the BTF when adopting).
        drop(loader);
        let mut links: Vec<(String, FdLink)> = Vec::new();
        let mut up = BTreeSet::new();
        let mut tls_libs = BTreeSet::new();
        if adopted {
            // The same build left its programs attached: keep them, attach nothing.
            let dir = pin_dir.as_ref().unwrap().join("links");
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name
                    .strip_prefix("uprobe=")
                    .and_then(|r| r.split_once('='))
                    .map(|(_, l)| l.split('=').next().unwrap_or(l).to_string())
                {
                    if tls_uprobes != TlsUprobes::All {
                        // Hooks for every process, left by a run with `tls_uprobes = "all"`.
                        let _ = std::fs::remove_file(dir.join(&name));
                        continue;
                    }
                    let bytes: Vec<u8> = (0..hex.len() / 2)
                        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect();
                    tls_libs.insert(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()));
                    up.insert("uprobe");
                } else if name.starts_with("cgroup:") {
                    up.insert("cgroup");
                } else if name.starts_with("lsm:") {
                    up.insert("bpf_lsm");
                } else {
                    up.insert("tracepoint");
                }
            }
            info!(pins = %dir.display(), "adopted the programs and maps this build left pinned: no gap, nothing attached twice");
        } else {
            let cgroup_root = super::maps::cgroup2_root().and_then(|p| File::open(&p).ok());
            // Verify every program first, in parallel (most of the start-up), then attach them
            // one by one in table order, exactly as loading them one by one would have.
            let lsm_btf = kernel_btf
                .as_ref()
                .map_or(Err("the kernel's BTF was not read"), |b| b.as_ref().map_err(String::as_str));
            let loaded = load_programs(&mut ebpf, lsm_btf);
            let mut lsm_refused: Option<String> = None;
            for (probe, loaded) in PROBES.iter().zip(loaded) {
                if matches!(probe.attach, Attach::Lsm(_)) && lsm_refused.is_some() {
                    // The layer is all or nothing: an LSM program verified in parallel before
                    // the refusal was known is unloaded, as if it had never been tried.
                    if let (Some(Ok(())), Some(prog)) = (&loaded, ebpf.program_mut(probe.program)) {
                        if let Ok(p) = <&mut aya::programs::Lsm>::try_from(prog) {
                            let _ = p.unload();
                        }
                    }
                    continue;
                }
                let r = loaded
                    .unwrap_or_else(|| Err(anyhow::anyhow!("not loaded: an earlier probe failed")))
                    .and_then(|()| attach(&mut ebpf, probe, cgroup_root.as_ref()));
                match r {
                    Ok(l) => {
                        links.extend(l);
                        up.insert(probe.layer);
                    }
                    Err(e) if probe.required => {
                        return Err(e.context(format!("attaching required probe {}", probe.program)))
                    }
                    Err(e) if matches!(probe.attach, Attach::Lsm(_)) => {
                        lsm_refused = Some(format!("{e:#}"));
                    }
                    Err(e) => warn!(program = probe.program, error = %format!("{e:#}"), "optional probe not attached"),
                }
            }
            if let Some(why) = &lsm_refused {
                lsm_note = Some(format!(
                    "bpf_lsm: the kernel refused the LSM programs ({}); file writes are decided by the tracepoint layer after the syscall (deny falls back to kill)",
                    why.lines().next().unwrap_or_default()
                ));
            }
        }
        let mut layers = LayerStatus {
            tracepoint: up.contains("tracepoint"),
            cgroup: up.contains("cgroup"),
            // Every LSM hook or none: the tracepoint layer stands down for what the LSM layer
            // refuses only when all of it is there.
            bpf_lsm: up.contains("bpf_lsm") && lsm_note.is_none(),
            ..Default::default()
        };
        if !layers.bpf_lsm {
            layers.notes.push(lsm_note.unwrap_or_else(|| {
                "bpf_lsm: not active; file writes cannot be refused in-kernel for agents not started by `exec` (deny falls back to kill after the syscall)".into()
            }));
        }
        let abi = landlock_abi();
        layers.landlock = abi > 0;
        if !layers.landlock {
            layers.notes.push("landlock: not available in this kernel".into());
        }
        info!(links = links.len(), adopted, landlock_abi = abi, "eBPF programs attached");
        for n in &layers.notes {
            warn!("{n}");
        }
        let mut kernel =
            Kernel { ebpf, layers, tls_libs, links: Vec::new(), pin_dir, pinned: 0, adopted, agent_tls: None };
        for (label, link) in links {
            kernel.keep_link(label, link)?;
        }
        kernel.layers.uprobe = !kernel.tls_libs.is_empty();
        if tls_uprobes == TlsUprobes::Agents {
            match kernel.agent_tls() {
                Ok(t) => kernel.agent_tls = Some(t),
                Err(e) => {
                    let why = format!("{e:#}");
                    warn!(reason = %why, "TLS libraries cannot be hooked in agent processes only: hooked in every process instead");
                    kernel.layers.notes.push(format!(
                        "uprobe: hooked in every process ({why}): every SSL_write on the machine pays the uprobe"
                    ));
                }
            }
        }
        if tls_uprobes == TlsUprobes::Off {
            kernel.layers.notes.push(
                "uprobe: off (tls_uprobes = \"off\"): HTTP methods inside TLS are not visible; agents with require_http_visibility cannot use TLS"
                    .into(),
            );
            warn!("TLS libraries not hooked (tls_uprobes = \"off\"): HTTPS request methods are not visible");
        } else {
            kernel.hook_tls_libs(&system_tls_libs());
        }
        if tls_uprobes != TlsUprobes::Off && kernel.tls_libs.is_empty() {
            kernel
                .layers
                .notes
                .push("uprobe: no OpenSSL or GnuTLS library found: HTTP methods inside TLS are not visible".into());
            warn!("no TLS library found to hook: HTTPS request methods are not visible");
        }
        if let (Some(dir), Some(base)) = (&kernel.pin_dir, pins) {
            // Other builds' pins: this build's programs are attached now, so theirs can go.
            for old in std::fs::read_dir(base)?.flatten().map(|e| e.path()).filter(|p| p != dir) {
                info!(pins = %old.display(), "removing another build's pinned programs");
                let _ = std::fs::remove_dir_all(&old);
            }
        }
        Ok(kernel)
    }

    /// Keep a link attached for the life of this process, and beyond it when pinning.
    fn keep_link(&mut self, label: String, link: FdLink) -> anyhow::Result<()> {
        let Some(dir) = &self.pin_dir else {
            self.links.push(link);
            return Ok(());
        };
        let n = self.links.len() + self.pinned;
        let path = dir.join("links").join(format!("{label}={n}"));
        let pinned = link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        // The pin holds the link; dropping our handle does not detach it.
        drop(pinned);
        self.pinned += 1;
        Ok(())
    }

    /// Remove every pin of this daemon (programs detach once nothing holds their links).
    pub fn unpin_all(&self) {
        if let Some(dir) = &self.pin_dir {
            // The last reference to a link goes with its pin: the unlink detaches it and waits
            // like a close (see `Drop`), so the link pins go in parallel first.
            let pins: Vec<PathBuf> = std::fs::read_dir(dir.join("links"))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            in_parallel(pins, |p| {
                let _ = std::fs::remove_file(p);
            });
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Kernel {
    /// Detaching a tracepoint link waits for an RCU grace period in the kernel (~70 ms each
    /// here): the ~80 links closed one after another made every stop take 5-8 s. Closed from
    /// several threads, the waits overlap.
    fn drop(&mut self) {
        in_parallel(std::mem::take(&mut self.links), drop);
    }
}

/// Run `f` on every item, from up to 16 threads (for work that mostly waits in the kernel).
fn in_parallel<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    if items.len() < 2 {
        items.into_iter().for_each(&f);
        return;
    }
    let threads = items.len().min(16);
    let mut groups: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % threads].push(item);
    }
    let f = &f;
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || g.into_iter().for_each(f));
        }
    });
}

/// Maps pinned with the programs (all of them: state survives a restart).
pub const PINNED_MAPS: &[&str] = &[
    "PROCS",
    "AGENTS",
    "GENERATION",
    "DAEMON",
    "GRANTS",
    "FILE_GRANTS",
    "SEL_COMM",
    "SEL_EXE",
    "SEL_UID",
    "SEL_CGROUP",
    "WRITABLE",
    "KILLED",
    "PENDING",
    "PENDING_OPS",
    "NET_ALLOW",
    "UNIX_ALLOW",
    "SNI_ALLOW",
    "VISIBLE",
    "SOCKS",
    "EVENTS",
    "STATS",
];

/// This build's identity for pins: the version and a hash of the eBPF object.
pub fn build_id() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // bpffs refuses names with a '.', so the version's dots become '_'.
    format!("{}-{h:016x}", env!("CARGO_PKG_VERSION").replace('.', "_"))
}

impl Kernel {
    /// (program, run count, run time in seconds) of every loaded program.
    /// Read from the kernel's list of loaded programs, so that adopted (pinned) programs are
    /// counted too; kernel names are cut at 15 bytes and mapped back to the probe table's.
    pub fn program_stats(&self) -> Vec<(String, u64, f64)> {
        let mut out: Vec<(String, u64, f64)> = Vec::new();
        for info in aya::programs::loaded_programs().flatten() {
            let Some(kname) = info.name_as_str() else { continue };
            let Some(probe) =
                PROBES.iter().find(|p| p.program.starts_with(kname) && kname.len() >= p.program.len().min(15))
            else {
                continue;
            };
            // Several instances of one program (a uprobe loaded again for a new library) add up.
            match out.iter_mut().find(|(n, _, _)| n == probe.program) {
                Some(e) => {
                    e.1 += info.run_count();
                    e.2 += info.run_time().as_secs_f64();
                }
                None => out.push((probe.program.to_string(), info.run_count(), info.run_time().as_secs_f64())),
            }
        }
        out
    }

    /// The uprobe program of each TLS function, loaded (adopted programs are not loaded in this
    /// process), as (program, symbol).
    fn tls_programs(&mut self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        for probe in PROBES {
            let Attach::UProbe(symbol) = probe.attach else { continue };
            let Some(p) = self.ebpf.program_mut(probe.program).and_then(|p| <&mut UProbe>::try_from(p).ok()) else {
                continue;
            };
            if p.fd().is_err() {
                if let Err(e) = p.load() {
                    debug!(program = probe.program, error = %e, "uprobe program not loaded");
                    continue;
                }
            }
            out.push((probe.program, symbol));
        }
        out
    }

    /// The per-agent TLS hooks, with the uprobe programs' fds.
    fn agent_tls(&mut self) -> anyhow::Result<super::tls::AgentTls> {
        let mut progs = std::collections::HashMap::new();
        for (program, _) in self.tls_programs() {
            let fd = self.ebpf.program(program).and_then(|p| p.fd().ok()).map(super::tls::prog_fd);
            if let Some(fd) = fd {
                progs.insert(program, fd.context("duplicating a program fd")?);
            }
        }
        super::tls::AgentTls::new(progs)
    }

    /// Hook the write functions of TLS library files (idempotent): in agent processes only or
    /// in every process (`tls_uprobes`). Returns how many of them are hooked after the call.
    pub fn hook_tls_libs(&mut self, paths: &[PathBuf]) -> usize {
        let loaded = self.tls_programs();
        let mut todo: Vec<(PathBuf, Vec<(&'static str, &'static str)>)> = Vec::new();
        let mut done = 0;
        for canon in paths.iter().filter_map(|p| std::fs::canonicalize(p).ok()) {
            if self.tls_libs.contains(&canon) {
                done += 1;
                continue;
            }
            let name = canon.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some((_, programs)) = TLS_LIBS.iter().find(|(prefix, _)| name.starts_with(prefix)) else { continue };
            if todo.iter().all(|(l, _)| *l != canon) {
                let functions = loaded.iter().copied().filter(|(p, _)| programs.contains(p)).collect();
                todo.push((canon, functions));
            }
        }
        let hooked: Vec<usize> = match self.agent_tls.as_mut() {
            Some(t) => t.hook_libs(&todo),
            None => todo.iter().map(|(lib, functions)| self.hook_tls_lib_everywhere(lib, functions)).collect(),
        };
        for ((lib, _), _) in todo.into_iter().zip(hooked).filter(|(_, n)| *n > 0) {
            self.tls_libs.insert(lib);
            self.layers.uprobe = true;
            done += 1;
        }
        done
    }

    /// `tls_uprobes = "all"`: uprobes in every process that maps `lib`, pinned with the rest.
    fn hook_tls_lib_everywhere(&mut self, lib: &Path, functions: &[(&'static str, &'static str)]) -> usize {
        let mut hooked = 0;
        for &(program, symbol) in functions {
            let Some(p) = self.ebpf.program_mut(program).and_then(|p| <&mut UProbe>::try_from(p).ok()) else {
                continue;
            };
            let link = p
                .attach(symbol, lib, aya::programs::uprobe::UProbeScope::AllProcesses)
                .map_err(anyhow::Error::from)
                .and_then(|id| Ok(FdLink::try_from(p.take_link(id)?)?));
            match link {
                Ok(link) => {
                    // bpffs names cannot hold '/' or '.': the library path is hex-encoded.
                    let hex: String = lib.as_os_str().as_encoded_bytes().iter().map(|b| format!("{b:02x}")).collect();
                    let label = format!("uprobe={program}={hex}");
                    match self.keep_link(label, link) {
                        Ok(()) => hooked += 1,
                        Err(e) => warn!(error = %format!("{e:#}"), "uprobe link not kept"),
                    }
                }
                Err(e) => debug!(lib = %lib.display(), symbol, error = %e, "uprobe not attached"),
            }
        }
        if hooked > 0 {
            info!(lib = %lib.display(), functions = hooked, "TLS library hooked in every process");
        }
        hooked
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

/// Load (verify) the program of every probe, on up to one thread per core; one entry per row of
/// [`PROBES`], `None` where loading was skipped (see [`in_table_order`]).
///
/// The verifier runs in the thread that calls `bpf(BPF_PROG_LOAD)`, and it is most of the
/// start-up (tens of milliseconds for each path program, ~1.5 s for all of them in one thread on
/// a 2-core VM); the programs are independent of each other, so they are verified side by side.
/// Attaching stays with the caller.
fn load_programs(ebpf: &mut Ebpf, lsm_btf: Result<&aya::Btf, &str>) -> Vec<Option<anyhow::Result<()>>> {
    // Disjoint `&mut` to each program (aya's `load` takes `&mut self`), one slot per row.
    let mut by_name: std::collections::HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let slots: Vec<std::sync::Mutex<Option<&mut Program>>> =
        PROBES.iter().map(|p| std::sync::Mutex::new(by_name.remove(p.program))).collect();
    // One verifier per core: more threads than cores only contend. At most 8: past that the
    // longest program (~0.1 s) bounds the time anyway, and each verification holds kernel memory.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    in_table_order(PROBES, threads, |i| {
        let probe = &PROBES[i];
        let t = std::time::Instant::now();
        let r = match slots[i].lock().unwrap().as_deref_mut() {
            Some(prog) => load_program(prog, probe, lsm_btf),
            None => Err(anyhow::anyhow!("program {} missing from the object", probe.program)),
        };
        debug!(program = probe.program, ms = t.elapsed().as_millis() as u64, ok = r.is_ok(), "loaded");
        r
    })
}

/// Run `job` for every row of `rows` on `threads` threads (this one included); one result per
/// row, `None` where the job was not run.
///
/// Rows are taken in table order, and a row is skipped only when a row before it has already
/// failed in a way that makes running it pointless: a required probe (the start fails there) or,
/// for an LSM probe, another LSM probe (the layer is all or nothing). So every row up to the
/// first failure that matters has run, and a caller walking the results in table order sees
/// what running them one by one would have given.
fn in_table_order(
    rows: &[Probe],
    threads: usize,
    job: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> Vec<Option<anyhow::Result<()>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    // The first row (in table order) of a failed required probe, of a failed LSM probe.
    let (required_failed, lsm_failed) = (AtomicUsize::new(usize::MAX), AtomicUsize::new(usize::MAX));
    let worker = || {
        let mut done: Vec<(usize, anyhow::Result<()>)> = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(row) = rows.get(i) else { break };
            let lsm = matches!(row.attach, Attach::Lsm(_));
            if i > required_failed.load(Ordering::SeqCst) || (lsm && i > lsm_failed.load(Ordering::SeqCst)) {
                continue;
            }
            let r = job(i);
            if r.is_err() && row.required {
                required_failed.fetch_min(i, Ordering::SeqCst);
            }
            if r.is_err() && lsm {
                lsm_failed.fetch_min(i, Ordering::SeqCst);
            }
            done.push((i, r));
        }
        done
    };
    let mut out: Vec<Option<anyhow::Result<()>>> = rows.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|n| std::thread::Builder::new().name(format!("bpf-load-{n}")).spawn_scoped(s, worker).ok())
            .collect();
        let mut results = worker();
        for h in helpers {
            // A panic in a helper is a panic here (it would have been one loading in this thread).
            results.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        for (i, r) in results {
            out[i] = Some(r);
        }
    });
    out
}

/// Load (verify) one probe's program; it is attached later by [`attach`].
fn load_program(prog: &mut Program, probe: &Probe, lsm_btf: Result<&aya::Btf, &str>) -> anyhow::Result<()> {
    let what = || format!("loading {}", probe.program);
    match probe.attach {
        Attach::TracePoint(..) => <&mut TracePoint>::try_from(prog)?.load().with_context(what)?,
        Attach::RawTracePoint(_) => <&mut RawTracePoint>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSockAddr => <&mut CgroupSockAddr>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSock => <&mut CgroupSock>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSkbEgress => <&mut CgroupSkb>::try_from(prog)?.load().with_context(what)?,
        // Attached per library by `Kernel::hook_tls_libs`.
        Attach::UProbe(_) => <&mut UProbe>::try_from(prog)?.load().with_context(what)?,
        Attach::Lsm(hook) => {
            let btf = lsm_btf.map_err(|e| anyhow::anyhow!("{e}"))?;
            let p: &mut aya::programs::Lsm = prog.try_into()?;
            p.load(hook, btf).with_context(|| format!("loading LSM hook {hook}"))?;
        }
    }
    Ok(())
}

/// Attach one loaded probe; returns its links (label, link), taken from aya so that they can be
/// pinned and outlive this process.
fn attach(ebpf: &mut Ebpf, probe: &Probe, cgroup: Option<&File>) -> anyhow::Result<Vec<(String, FdLink)>> {
    let prog = ebpf
        .program_mut(probe.program)
        .with_context(|| format!("program {} missing from the object", probe.program))?;
    let mut links = Vec::new();
    match probe.attach {
        Attach::TracePoint(category, names_list) => {
            let p: &mut TracePoint = prog.try_into()?;
            let list: Vec<&str> = if names_list.is_empty() { vec![probe.program] } else { names_list.to_vec() };
            // A shared program (several tracepoints) needs at least one; a syscall missing on
            // this architecture is logged, not fatal.
            for name in &list {
                match p.attach(category, name) {
                    Ok(id) => links.push((format!("{category}:{name}"), FdLink::try_from(p.take_link(id)?)?)),
                    Err(e) if list.len() > 1 => warn!(tracepoint = name, error = %e, "tracepoint not attached"),
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("attaching {category}/{name}"))),
                }
            }
            if links.is_empty() {
                bail!("none of the tracepoints of {} could be attached", probe.program);
            }
        }
        Attach::CgroupSockAddr | Attach::CgroupSock | Attach::CgroupSkbEgress => {
            let cg = cgroup.context("no cgroup v2 hierarchy is mounted: the network layer cannot attach")?;
            // Attached as a bpf_link (5.7+), which always coexists with other programs on the
            // root (systemd's, other tools'); the link API takes no attach flags, so `Single`
            // here means "flags 0", not exclusivity.
            let mode = CgroupAttachMode::Single;
            let link = match probe.attach {
                Attach::CgroupSockAddr => {
                    let p: &mut CgroupSockAddr = prog.try_into()?;
                    let id = p.attach(cg, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
                Attach::CgroupSock => {
                    let p: &mut CgroupSock = prog.try_into()?;
                    let id = p.attach(cg, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
                _ => {
                    let p: &mut CgroupSkb = prog.try_into()?;
                    let id = p.attach(cg, CgroupSkbAttachType::Egress, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
            };
            links.push((format!("cgroup:{}", probe.program), link));
        }
        // Attached per library by `Kernel::hook_tls_libs`.
        Attach::UProbe(_) => {}
        Attach::Lsm(hook) => {
            let p: &mut aya::programs::Lsm = prog.try_into()?;
            let id = p.attach().with_context(|| format!("attaching LSM hook {hook}"))?;
            links.push((format!("lsm:{hook}"), FdLink::from(p.take_link(id)?)));
        }
        Attach::RawTracePoint(name) => {
            let p: &mut RawTracePoint = prog.try_into()?;
            let id = p.attach(name).with_context(|| format!("attaching raw tracepoint {name}"))?;
            links.push((format!("raw:{name}"), FdLink::from(p.take_link(id)?)));
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading in parallel gives the caller what loading one by one would: every row up to the
    /// first failed required row has run, and every LSM row up to the first failed LSM row,
    /// whatever the interleaving.
    #[test]
    fn parallel_loading_runs_what_one_by_one_would() {
        let lsm = |program| Probe { program, attach: Attach::Lsm("x"), required: false, layer: "bpf_lsm" };
        let rows =
            [tp("a", true), tp("b", false), lsm("c"), lsm("d"), tp("e", true), lsm("f"), tp("g", false), tp("h", true)];
        for threads in 1..=3 {
            for failing in 0u32..(1 << rows.len()) {
                let fails = |i: usize| failing & (1 << i) != 0;
                let out = in_table_order(&rows, threads, |i| {
                    // Vary the interleaving.
                    std::thread::sleep(std::time::Duration::from_micros(((i as u64 * 37 + failing as u64) % 5) * 20));
                    if fails(i) {
                        bail!("row {i} failed")
                    }
                    Ok(())
                });
                let first = |f: &dyn Fn(&Probe) -> bool| (0..rows.len()).find(|&i| fails(i) && f(&rows[i]));
                let first_required = first(&|p| p.required);
                let first_lsm = first(&|p| matches!(p.attach, Attach::Lsm(_)));
                for (i, row) in rows.iter().enumerate() {
                    let is_lsm = matches!(row.attach, Attach::Lsm(_));
                    let needed = first_required.is_none_or(|r| i <= r) && (!is_lsm || first_lsm.is_none_or(|l| i <= l));
                    assert!(
                        !needed || out[i].is_some(),
                        "threads {threads}, failing {failing:#b}: row {i} was skipped"
                    );
                    if let Some(r) = &out[i] {
                        assert_eq!(r.is_err(), fails(i), "threads {threads}, failing {failing:#b}: row {i}");
                    }
                }
            }
        }
    }
}
