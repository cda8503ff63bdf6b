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
    /// The TLS uprobe programs the kernel refused, and why (the first line of its answer): not
    /// tried again (each try is a whole verification, tens of seconds under emulation), and
    /// no library whose functions need one of them is hooked (`hook_tls_libs`).
    pub(super) tls_refused: std::collections::BTreeMap<&'static str, String>,
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
        let (up, tls_libs, links, lsm_note, tls_refused) = if adopted {
            let (up, tls_libs) = pins::adopt(pin_dir.as_deref().expect("adopted from a pin dir"), tls_uprobes)?;
            (up, tls_libs, Vec::new(), None, Default::default())
        } else {
            let lsm_btf = kernel_btf
                .as_ref()
                .map_or(Err("the kernel's BTF was not read"), |b| b.as_ref().map_err(String::as_str));
            let Attached { up, links, lsm_note, uprobes_refused } = attach_all(&mut ebpf, lsm_btf)?;
            (up, BTreeSet::new(), links, lsm_note, uprobes_refused)
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
        let mut kernel = Kernel {
            ebpf,
            layers,
            tls_libs,
            links: Vec::new(),
            pin_dir,
            pinned: 0,
            adopted,
            agent_tls: None,
            tls_refused,
        };
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

/// What [`attach_all`] did.
struct Attached {
    /// The layers with a probe attached.
    up: BTreeSet<Layer>,
    links: Vec<(String, FdLink)>,
    /// Why the LSM layer is down, if the kernel refused it.
    lsm_note: Option<String>,
    /// The TLS uprobe programs the kernel refused, and why (first line).
    uprobes_refused: std::collections::BTreeMap<&'static str, String>,
}

/// Verify every program first, in parallel (most of the start-up), then attach them one by one
/// in table order, exactly as loading them one by one would have.
fn attach_all(ebpf: &mut Ebpf, lsm_btf: Result<&aya::Btf, &str>) -> anyhow::Result<Attached> {
    let cgroup_root = super::maps::cgroup2_root().and_then(|p| File::open(&p).ok());
    let loaded = load_programs(ebpf, lsm_btf);
    let mut links = Vec::new();
    let mut up = BTreeSet::new();
    let mut lsm_refused: Option<String> = None;
    let mut uprobes_refused = std::collections::BTreeMap::new();
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
            Err(e) => {
                warn!(program = probe.program, error = %format!("{e:#}"), "optional probe not attached");
                if matches!(probe.attach, Attach::UProbe(_)) {
                    uprobes_refused.insert(probe.program, first_line(&e));
                }
            }
        }
    }
    let lsm_note = lsm_refused.map(|why| {
        format!(
            "bpf_lsm: the kernel refused the LSM programs ({}); file writes are decided by the tracepoint layer after the syscall (deny falls back to kill): start agents with `agent-monitor exec`, whose Landlock ruleset refuses them before they happen",
            why.lines().next().unwrap_or_default()
        )
    });
    Ok(Attached { up, links, lsm_note, uprobes_refused })
}

/// The first line of an error's chain (aya's names the verifier's first complaint), at most
/// 300 bytes: for a note, not the verifier's whole log.
pub(super) fn first_line(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let mut line = full.lines().next().unwrap_or_default().to_string();
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
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

    /// Every program's deepest call chain (the program, the bpf_loop steps it runs, the
    /// functions they call) fits the stack of the oldest kernels we support: before Linux 6.8
    /// the verifier rounds each frame up to 32 bytes (at least 32) and refuses a chain over
    /// 512 ("combined stack size of 3 calls is 544"); newer kernels round to 16 with the JIT,
    /// so a host test run would not notice. Frames are read off the instructions (the lowest
    /// `r10` offset a function stores to, loads from or points at), calls and callbacks off the
    /// relocations, as the verifier's `check_max_stack_depth` walks them.
    #[test]
    fn every_call_chain_fits_the_stack_of_linux_before_6_8() {
        use object::{ObjectSymbol as _, RelocationTarget, SymbolKind};
        use std::collections::HashMap;
        let obj = object::File::parse(super::OBJECT).expect("the eBPF object parses");
        // (section, start, end) -> name, for every function.
        let funcs: Vec<(object::SectionIndex, u64, u64, String)> = obj
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.section_index()?, s.address(), s.address() + s.size(), s.name().ok()?.to_string())))
            .collect();
        let func_at = |sec: object::SectionIndex, off: u64| {
            funcs.iter().position(|(s, a, e, _)| *s == sec && (*a..*e).contains(&off))
        };
        let mut frame = vec![0u32; funcs.len()];
        let mut callees: Vec<Vec<usize>> = vec![Vec::new(); funcs.len()];
        for (i, (sec, start, end, _)) in funcs.iter().enumerate() {
            let section = obj.section_by_index(*sec).unwrap();
            let data = section.data().unwrap();
            let relocs: HashMap<u64, object::Relocation> = section.relocations().collect();
            let mut fp = [false; 11]; // registers holding r10 (the frame pointer)
            let mut off = *start;
            while off < *end {
                let insn = &data[off as usize..off as usize + 8];
                let (op, dst, src) = (insn[0], (insn[1] & 0xf) as usize, (insn[1] >> 4) as usize);
                let disp = i16::from_le_bytes([insn[2], insn[3]]) as i64;
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) as i64;
                let mut deeper = |d: i64| frame[i] = frame[i].max(d.max(0) as u32);
                match op & 7 {
                    1 if src == 10 => deeper(-disp),     // LDX from the stack
                    2 | 3 if dst == 10 => deeper(-disp), // ST, STX to the stack
                    _ => {}
                }
                // A call (to a function) or a 64-bit load (of a callback's address).
                if op == 0x85 || op == 0x18 {
                    let target = match relocs.get(&off) {
                        Some(r) => match r.target() {
                            RelocationTarget::Symbol(sym) => {
                                let sym = obj.symbol_by_index(sym).unwrap();
                                match (sym.kind(), sym.section_index()) {
                                    (SymbolKind::Text, Some(s)) => func_at(s, sym.address()),
                                    (SymbolKind::Section, Some(s)) => func_at(s, imm as u64),
                                    _ => None,
                                }
                            }
                            _ => None,
                        },
                        // A call inside the section: relative, in instructions.
                        None if op == 0x85 && src == 1 => func_at(*sec, (off as i64 + (imm + 1) * 8) as u64),
                        None => None,
                    };
                    callees[i].extend(target);
                }
                match (op, op & 7) {
                    (0xbf, _) => fp[dst] = src == 10, // mov dst, src
                    (0x07, _) if fp[dst] => {
                        deeper(-imm); // dst = r10 - N
                        fp[dst] = false;
                    }
                    (0x85, _) => fp[1..=5].iter_mut().for_each(|r| *r = false),
                    (_, 1 | 4 | 7) | (0x18, _) => fp[dst] = false,
                    _ => {}
                }
                off += if op == 0x18 { 16 } else { 8 };
            }
        }
        fn depth(f: usize, frame: &[u32], callees: &[Vec<usize>], seen: &mut Vec<usize>) -> u32 {
            let own = frame[f].max(1).div_ceil(32) * 32;
            if seen.contains(&f) {
                return own; // recursion: the verifier refuses it elsewhere
            }
            seen.push(f);
            let deepest = callees[f].iter().map(|&c| depth(c, frame, callees, seen)).max().unwrap_or(0);
            seen.pop();
            own + deepest
        }
        let text = obj.section_by_name(".text").map(|s| s.index());
        let mut programs = 0;
        let mut over = Vec::new();
        for (i, (_, _, _, name)) in funcs.iter().enumerate().filter(|(_, f)| Some(f.0) != text) {
            programs += 1;
            let d = depth(i, &frame, &callees, &mut Vec::new());
            if d > 512 {
                over.push(format!("{name}: {d} bytes (its own frame {})", frame[i]));
            }
        }
        assert!(programs > 100, "only {programs} programs found in the object");
        // The reading itself: the TLS write programs call the parser's loop step, which calls
        // its path step.
        let tls = funcs.iter().position(|f| f.3 == "ssl_write").expect("ssl_write");
        assert!(depth(tls, &frame, &callees, &mut Vec::new()) >= frame[tls] + 3 * 32, "ssl_write's chain was not read");
        assert!(over.is_empty(), "call chains over 512 bytes on Linux before 6.8:\n{}", over.join("\n"));
    }
}
