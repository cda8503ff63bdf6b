//! Pins: maps and links kept on bpffs under `<pin_path>/<build id>/`, so that enforcement
//! survives the daemon, and the next start of the same build adopts them without a gap.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use agent_monitor_common::{maps::names, Layer};
use anyhow::Context as _;
use aya::programs::links::FdLink;
use tracing::info;

use super::{loader::OBJECT, Kernel};
use crate::policy::model::TlsUprobes;

/// Run `f` on every item, from up to 16 threads (for work that mostly waits in the kernel).
pub(super) fn in_parallel<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
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

/// This build's identity for pins: the version and a hash of the eBPF object.
pub fn build_id() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // bpffs refuses names with a '.', so the version's dots become '_'.
    format!("{}-{h:016x}", env!("CARGO_PKG_VERSION").replace('.', "_"))
}

/// The pin directory of this build: `maps/` and `links/` created. Returns the paths of the maps
/// to pin (name, path) and whether links are already there (the programs are adopted).
pub fn prepare(dir: &Path) -> anyhow::Result<(Vec<(&'static str, PathBuf)>, bool)> {
    std::fs::create_dir_all(dir.join("maps"))
        .and_then(|_| std::fs::create_dir_all(dir.join("links")))
        .with_context(|| format!("creating {} (is bpffs mounted there?)", dir.display()))?;
    let adopted = std::fs::read_dir(dir.join("links"))?.next().is_some();
    Ok((names::PINNED.iter().map(|m| (*m, dir.join("maps").join(m))).collect(), adopted))
}

/// The layers and TLS libraries that the pinned links of `dir` carry (the same build left its
/// programs attached: they are kept and nothing is attached). Hooks for every process left by a
/// run with `tls_uprobes = "all"` are removed unless this run wants them too.
pub fn adopt(dir: &Path, tls_uprobes: TlsUprobes) -> anyhow::Result<(BTreeSet<Layer>, BTreeSet<PathBuf>)> {
    let mut up = BTreeSet::new();
    let mut tls_libs = BTreeSet::new();
    let dir = dir.join("links");
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name
            .strip_prefix("uprobe=")
            .and_then(|r| r.split_once('='))
            .map(|(_, l)| l.split('=').next().unwrap_or(l).to_string())
        {
            if tls_uprobes != TlsUprobes::All {
                let _ = std::fs::remove_file(dir.join(&name));
                continue;
            }
            let bytes: Vec<u8> =
                (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            tls_libs.insert(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()));
            up.insert(Layer::Uprobe);
        } else if name.starts_with("cgroup:") {
            up.insert(Layer::Cgroup);
        } else if name.starts_with("lsm:") {
            up.insert(Layer::BpfLsm);
        } else {
            up.insert(Layer::Tracepoint);
        }
    }
    info!(pins = %dir.display(), "adopted the programs and maps this build left pinned: no gap, nothing attached twice");
    Ok((up, tls_libs))
}

/// Remove other builds' pins under `base` (this build's programs are attached now).
pub fn remove_other_builds(base: &Path, ours: &Path) -> anyhow::Result<()> {
    for old in std::fs::read_dir(base)?.flatten().map(|e| e.path()).filter(|p| p != ours) {
        info!(pins = %old.display(), "removing another build's pinned programs");
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

impl Kernel {
    /// Keep a link attached for the life of this process, and beyond it when pinning.
    pub(super) fn keep_link(&mut self, label: String, link: FdLink) -> anyhow::Result<()> {
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
