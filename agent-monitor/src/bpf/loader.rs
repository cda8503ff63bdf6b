//! Loading the eBPF object with the running kernel's offsets and attaching every row of the
//! probe table (`probes`), or adopting what this build left pinned (`pins`); what each layer
//! could do is [`LayerStatus`].
use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
};

use agent_monitor_common::Layer;
use anyhow::{bail, Context as _};
use aya::{programs::links::FdLink, Ebpf, EbpfLoader};
use tracing::{info, warn};

use super::{
    btf::Btf,
    pins,
    probes::{attach, load_programs, Attach, PROBES},
};
use crate::policy::model::TlsUprobes;

/// What the daemon found out about each layer at start-up.
#[derive(Clone, Debug, Default)]
pub struct LayerStatus {
    pub tracepoint: bool,
    pub bpf_lsm: bool,
    pub cgroup: bool,
    pub landlock: bool,
    pub uprobe: bool,
    /// The cgroup `connect_unix` and `sendmsg_unix` programs are attached (6.7+): Unix connects
    /// and datagrams are refused before they happen, not killed after.
    pub unix_refusal: bool,
    /// Why a layer is down, for the log and `status`.
    pub notes: Vec<String>,
}

/// The loaded programs and maps. Dropping it detaches everything.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub layers: LayerStatus,
    /// Links held by this process (dropped with it) when not pinning.
    pub(super) links: Vec<FdLink>,
    /// Where this build's maps and links are pinned, if pinning.
    pub pin_dir: Option<PathBuf>,
    pub(super) pinned: usize,
    /// True if the programs were adopted from pins left by an earlier run of this build.
    pub adopted: bool,
    /// TLS library files whose write functions are hooked.
    pub tls_libs: BTreeSet<PathBuf>,
    /// The TLS hooks when they are written into agent processes only (`tls_uprobes =
    /// "agents"`); None when they are attached for every process or not at all.
    pub agent_tls: Option<super::tls::AgentTls>,
}

pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-monitor"));

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
        let pin_dir = pins.map(|base| base.join(pins::build_id()));
        let (mut ebpf, adopted, kernel_btf) = load_object(pin_dir.as_deref())?;
        let (up, tls_libs, links, lsm_note) = if adopted {
            let (up, tls_libs) = pins::adopt(pin_dir.as_deref().expect("adopted from a pin dir"), tls_uprobes)?;
            (up, tls_libs, Vec::new(), None)
        } else {
            let lsm_btf = kernel_btf
                .as_ref()
                .map_or(Err("the kernel's BTF was not read"), |b| b.as_ref().map_err(String::as_str));
            let (up, links, lsm_note) = attach_all(&mut ebpf, lsm_btf)?;
            (up, BTreeSet::new(), links, lsm_note)
        };
        let mut layers = LayerStatus::new(&up, lsm_note);
        // Both Unix programs, attached now or adopted from this build's pins.
        let names: Vec<String> = if adopted {
            let dir = pin_dir.as_deref().expect("adopted from a pin dir").join("links");
            std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        } else {
            links.iter().map(|(label, _)| label.clone()).collect()
        };
        let has = |p: &str| names.iter().any(|n| n.starts_with(&format!("cgroup:{p}")));
        layers.unix_refusal = has("connect_unix") && has("sendmsg_unix");
        if !layers.unix_refusal {
            layers.notes.push(
                "cgroup: no connect_unix/sendmsg_unix hooks (Linux 6.7+): a Unix connect to an unlisted path is killed after it connects, a datagram after it is delivered".into(),
            );
        }
        info!(links = links.len(), adopted, landlock = layers.landlock, "eBPF programs attached");
        for n in &layers.notes {
            warn!("{n}");
        }
        let mut kernel =
            Kernel { ebpf, layers, tls_libs, links: Vec::new(), pin_dir, pinned: 0, adopted, agent_tls: None };
        for (label, link) in links {
            kernel.keep_link(label, link)?;
        }
        kernel.setup_tls(tls_uprobes);
        if let (Some(dir), Some(base)) = (&kernel.pin_dir, pins) {
            pins::remove_other_builds(base, dir)?;
        }
        Ok(kernel)
    }

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
}

/// The eBPF object loaded (maps created or reused from their pins, programs not yet verified),
/// whether this build's programs are pinned already (then nothing is loaded or attached), and
/// the kernel's BTF for LSM hooks when programs will be loaded.
#[allow(clippy::type_complexity)]
fn load_object(pin_dir: Option<&Path>) -> anyhow::Result<(Ebpf, bool, Option<Result<aya::Btf, String>>)> {
    let btf_path = Path::new("/sys/kernel/btf/vmlinux");
    let offsets = Btf::from_file(btf_path)
        .and_then(|b| b.offsets())
        .with_context(|| format!("reading kernel struct offsets from {}", btf_path.display()))?;
    let mut loader = EbpfLoader::new();
    loader.override_global("OFFSETS", &offsets, true);
    // The process table can hold every process the kernel can have: it never fills (its
    // elements are allocated as they are inserted).
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4_194_304);
    loader.map_max_entries(agent_monitor_common::maps::names::PROCS, pid_max.max(32768));
    let (map_paths, adopted) = match pin_dir {
        Some(dir) => pins::prepare(dir)?,
        None => (Vec::new(), false),
    };
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // `EbpfLoader::new` parsed the kernel's BTF for itself (~20 MiB in memory), and each LSM
    // program's load parsed it again. Unless the programs are adopted (nothing is loaded then),
    // free the loader's copy first (one copy at a time keeps the start-up peak down), parse it
    // once, and share that copy with the loader and every LSM hook.
    let kernel_btf = (!adopted).then(|| {
        loader.btf(None);
        aya::Btf::from_sys_fs()
            .map_err(|e| format!("{:#}", anyhow::Error::new(e).context("reading the kernel's BTF for LSM hooks")))
    });
    if let Some(btf) = &kernel_btf {
        loader.btf(btf.as_ref().ok());
    }
    let ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
    Ok((ebpf, adopted, kernel_btf))
}

/// Verify every program first, in parallel (most of the start-up), then attach them one by one
/// in table order, exactly as loading them one by one would have. Returns the layers up, the
/// links, and why the LSM layer is down if the kernel refused it.
#[allow(clippy::type_complexity)]
fn attach_all(
    ebpf: &mut Ebpf,
    lsm_btf: Result<&aya::Btf, &str>,
) -> anyhow::Result<(BTreeSet<Layer>, Vec<(String, FdLink)>, Option<String>)> {
    let cgroup_root = super::maps::cgroup2_root().and_then(|p| File::open(&p).ok());
    let loaded = load_programs(ebpf, lsm_btf);
    let mut links = Vec::new();
    let mut up = BTreeSet::new();
    let mut lsm_refused: Option<String> = None;
    for (probe, loaded) in PROBES.iter().zip(loaded) {
        if matches!(probe.attach, Attach::Lsm(_)) && lsm_refused.is_some() {
            // The layer is all or nothing: an LSM program verified in parallel before the
            // refusal was known is unloaded, as if it had never been tried.
            if let (Some(Ok(())), Some(prog)) = (&loaded, ebpf.program_mut(probe.program)) {
                if let Ok(p) = <&mut aya::programs::Lsm>::try_from(prog) {
                    let _ = p.unload();
                }
            }
            continue;
        }
        let r = loaded
            .unwrap_or_else(|| Err(anyhow::anyhow!("not loaded: an earlier probe failed")))
            .and_then(|()| attach(ebpf, probe, cgroup_root.as_ref()));
        match r {
            Ok(l) => {
                links.extend(l);
                up.insert(probe.layer);
            }
            Err(e) if probe.required => return Err(e.context(format!("attaching required probe {}", probe.program))),
            Err(e) if matches!(probe.attach, Attach::Lsm(_)) => lsm_refused = Some(format!("{e:#}")),
            Err(e) => warn!(program = probe.program, error = %format!("{e:#}"), "optional probe not attached"),
        }
    }
    let lsm_note = lsm_refused.map(|why| {
        format!(
            "bpf_lsm: the kernel refused the LSM programs ({}); file writes are decided by the tracepoint layer after the syscall (deny falls back to kill): start agents with `agent-monitor exec`, whose Landlock ruleset refuses them before they happen",
            why.lines().next().unwrap_or_default()
        )
    });
    Ok((up, links, lsm_note))
}

impl LayerStatus {
    /// From the layers whose probes attached, and why the LSM layer is down if it was refused.
    fn new(up: &BTreeSet<Layer>, lsm_note: Option<String>) -> Self {
        let mut layers = LayerStatus {
            tracepoint: up.contains(&Layer::Tracepoint),
            cgroup: up.contains(&Layer::Cgroup),
            // Every LSM hook or none: the tracepoint layer stands down for what the LSM layer
            // refuses only when all of it is there.
            bpf_lsm: up.contains(&Layer::BpfLsm) && lsm_note.is_none(),
            ..Default::default()
        };
        if !layers.bpf_lsm {
            layers.notes.push(lsm_note.unwrap_or_else(|| {
                "bpf_lsm: not active; file writes cannot be refused in-kernel for agents not started by `exec` (deny falls back to kill after the syscall): start agents with `agent-monitor exec`, whose Landlock ruleset refuses them before they happen".into()
            }));
        }
        layers.landlock = landlock_abi() > 0;
        if !layers.landlock {
            layers.notes.push("landlock: not available in this kernel".into());
        }
        layers
    }

    /// Whether `layer` is up.
    pub fn is_up(&self, layer: Layer) -> bool {
        match layer {
            Layer::Tracepoint => self.tracepoint,
            Layer::Cgroup => self.cgroup,
            Layer::BpfLsm => self.bpf_lsm,
            Layer::Landlock => self.landlock,
            Layer::Uprobe => self.uprobe,
            Layer::Userspace => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    /// The map names userspace uses (`agent_monitor_common::maps::names`) are exactly the maps
    /// the built eBPF object declares, and every pinned map is one of them.
    #[test]
    fn the_object_declares_exactly_the_maps_common_names() {
        let obj = object::File::parse(super::OBJECT).expect("the eBPF object parses");
        let sections: Vec<_> = obj.sections().filter(|s| s.name() == Ok("maps")).map(|s| s.index()).collect();
        assert!(!sections.is_empty(), "no maps section in the eBPF object");
        let mut declared: Vec<&str> = obj
            .symbols()
            .filter(|s| s.section_index().is_some_and(|i| sections.contains(&i)))
            .filter_map(|s| s.name().ok())
            .collect();
        declared.sort_unstable();
        let mut named = agent_monitor_common::maps::names::ALL.to_vec();
        named.sort_unstable();
        assert_eq!(declared, named);
        for p in agent_monitor_common::maps::names::PINNED {
            assert!(named.contains(p), "{p} is pinned but not a map");
        }
    }
}
