//! The guest's initramfs, written here as a newc cpio: busybox (from `busybox-static`), the
//! modules 9p and overlayfs need in modules.dep order, `xtask/vm/init` and `xtask/vm/guest.sh`.

use super::apt::{debs_in, Apt};
use super::kernels::Kernel;
use crate::run_cmd;
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules the initramfs loads (with their dependencies) if they are not built in.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A static busybox for the initramfs, from the host release's `busybox-static`, unpacked once.
pub fn busybox(apt: &Apt, dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("root/bin/busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = apt.cmd("apt-get", &apt.host_list);
    cmd.args(["download", "-q", "busybox-static"]).current_dir(dir);
    run_cmd(&mut cmd).context("could not download busybox-static")?;
    for deb in debs_in(dir)? {
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
        fs::remove_file(&deb)?;
    }
    ensure!(bin.is_file(), "busybox-static has no /bin/busybox");
    Ok(bin)
}

/// Module file names (relative to the modules dir) to load, dependencies first, for `wanted`
/// modules that are not built in. `dep` is modules.dep, `builtin` modules.builtin.
fn module_load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((path, rest)) = line.split_once(':') {
            let d = rest.split_whitespace().map(name_of).collect();
            deps.insert(name_of(path), (path.to_string(), d));
        }
    }
    let builtin: BTreeSet<String> = builtin.lines().map(name_of).collect();
    fn visit(
        m: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        if let Some((path, d)) = deps.get(m) {
            for x in d {
                visit(x, deps, seen, order);
            }
            order.push(path.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for w in wanted {
        let w = w.replace('-', "_");
        if deps.contains_key(&w) {
            visit(&w, &deps, &mut seen, &mut order);
        } else if !builtin.contains(&w) {
            bail!("the kernel has no module {w}, built in or loadable");
        }
    }
    Ok(order)
}

/// The initramfs: busybox, /init, /guest.sh, the modules and their load order.
pub fn initramfs(k: &Kernel, busybox: &Path) -> Result<Vec<u8>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let dep = String::from_utf8_lossy(&read(&k.modules.join("modules.dep"))?).into_owned();
    let builtin = fs::read_to_string(k.modules.join("modules.builtin")).unwrap_or_default();
    let order = module_load_order(&dep, &builtin, INITRAMFS_MODULES)?;
    let vm = crate::root().join("xtask/vm");

    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    c.node("dev/console", 0o020600, &[], (5, 1));
    c.file("bin/busybox", 0o755, &read(busybox)?);
    c.file("init", 0o755, &read(&vm.join("init"))?);
    c.file("guest.sh", 0o755, &read(&vm.join("guest.sh"))?);
    let mut names = String::new();
    for path in &order {
        let file = path.rsplit('/').next().unwrap_or(path);
        let name = file.split(".ko").next().unwrap_or(file).to_string() + ".ko";
        // busybox insmod wants the plain ELF: Debian compresses modules with xz (or zstd).
        let data = decompress(&k.modules.join(path))?;
        c.file(&format!("modules/{name}"), 0o644, &data);
        writeln!(names, "{name}").unwrap();
    }
    c.file("modules/order", 0o644, names.as_bytes());
    Ok(c.finish())
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("cannot read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {}", path.display()))?;
    ensure!(out.status.success(), "{tool} -dc {} failed", path.display());
    Ok(out.stdout)
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }
    fn node(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.entry(name, mode, data, rdev);
    }
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields =
            [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_dependencies_first_and_skip_builtins() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\nkernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\nkernel/fs/overlayfs/overlay.ko.xz:\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let order = module_load_order(dep, builtin, INITRAMFS_MODULES).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz"
            ]
        );
        assert!(module_load_order(dep, "", INITRAMFS_MODULES).is_err(), "virtio_pci is neither");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let buf = c.finish();
        assert!(buf.starts_with(b"070701"));
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
