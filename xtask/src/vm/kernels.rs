//! The kernels tested: the newest Debian kernel of each series, downloaded once with the private
//! apt and unpacked (with `depmod` run) into `~/.cache/agent-monitor/vm/kernels/SUITE/`.

use super::apt::{debs_in, Apt};
use super::debver::deb_version_cmp;
use crate::run_cmd;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel series tested: the newest package matching `pattern` (an apt-cache regex) in `suite`.
/// The generic flavour: the cloud flavour has no 9p.
pub const SERIES: &[Series] = &[
    // The oldest kernel we support: Debian 12's own (6.1 LTS).
    Series { suite: "bookworm", pattern: r"^linux-image-[0-9.]+-[0-9]+-amd64-unsigned$" },
    // Debian 12's backported kernel (6.12 LTS, also Debian 13's kernel).
    Series { suite: "bookworm-backports", pattern: r"^linux-image-[0-9.]+\+deb12-amd64-unsigned$" },
    // The newest stable kernel Debian builds (7.x), split into binary, modules and base packages.
    Series { suite: "trixie-backports", pattern: r"^linux-binary-unsigned-[0-9.]+\+deb13-amd64$" },
];

pub struct Series {
    pub suite: &'static str,
    pub pattern: &'static str,
}

pub struct Kernel {
    pub suite: &'static str,
    pub package: String,
    pub version: String,
    /// `uname -r` of the kernel.
    pub kver: String,
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/KVER` with modules.dep.
    pub modules: PathBuf,
}

/// The newest kernel of each selected series, downloaded and unpacked (cached).
pub fn kernels(apt: &Apt, cache: &Path, select: &[String]) -> Result<Vec<Kernel>> {
    let mut kernels = Vec::new();
    for s in SERIES {
        let names = apt.search(s.pattern)?;
        let mut found = apt.versions_in(&names, s.suite)?;
        found.sort_by(|a, b| deb_version_cmp(&a.1, &b.1));
        let Some((package, version)) = found.pop() else {
            bail!("no kernel package matching {} in {}", s.pattern, s.suite);
        };
        let kver = kernel_release(&package).with_context(|| format!("cannot tell the kernel release of {package}"))?;
        if !select.is_empty() && !select.iter().any(|want| selects(want, s.suite, &kver)) {
            continue;
        }
        println!("vm: kernel {kver}: {package} {version} ({})", s.suite);
        kernels.push(unpack(apt, &cache.join(s.suite), s.suite, package, version, kver)?);
    }
    ensure!(!kernels.is_empty(), "no kernel matches --kernel {}", select.join(" "));
    Ok(kernels)
}

/// `--kernel` matches a suite, or a version prefix ending at a part boundary (`6.1` is not `6.12`).
fn selects(want: &str, suite: &str, kver: &str) -> bool {
    let at_boundary = |rest: &str| rest.is_empty() || rest.starts_with(['.', '-', '+']);
    want == suite || kver.strip_prefix(want).is_some_and(at_boundary)
}

/// `linux-image-6.1.0-50-amd64-unsigned` -> `6.1.0-50-amd64`; `linux-binary-unsigned-7.3.4+deb13-amd64` -> `7.3.4+deb13-amd64`.
fn kernel_release(package: &str) -> Option<String> {
    if let Some(k) = package.strip_prefix("linux-binary-unsigned-") {
        return Some(k.to_string());
    }
    package.strip_prefix("linux-image-")?.strip_suffix("-unsigned").map(str::to_owned)
}

/// Downloads and unpacks a kernel into `series_dir/KVER_VERSION` unless it is there already;
/// removes other versions of the series.
fn unpack(
    apt: &Apt,
    series_dir: &Path,
    suite: &'static str,
    package: String,
    version: String,
    kver: String,
) -> Result<Kernel> {
    let dir = series_dir.join(format!("{kver}_{version}"));
    let root = dir.join("root");
    let ready = dir.join(".ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut pkgs = vec![format!("{package}={version}")];
        if package.starts_with("linux-binary-unsigned-") {
            pkgs.push(format!("linux-modules-{kver}={version}"));
            pkgs.push(format!("linux-base-{kver}={version}"));
        }
        println!("vm: downloading {}", pkgs.join(" "));
        apt.download(&pkgs, &dir)?;
        for deb in debs_in(&dir)? {
            run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            fs::remove_file(&deb)?;
        }
        // depmod -b looks in BASE/lib/modules; newer packages ship usr/lib/modules only.
        if !root.join("lib").exists() && root.join("usr/lib").is_dir() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&kver))
            .with_context(|| format!("depmod failed for {kver}"))?;
        fs::write(&ready, "")?;
    }
    // Prune older versions of this series: Debian has dropped them anyway.
    for entry in fs::read_dir(series_dir)?.filter_map(|e| e.ok()) {
        if entry.path() != dir {
            println!("vm: removing the cached {}", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let modules = root.join("lib/modules").join(&kver);
    let vmlinuz =
        [root.join("boot").join(format!("vmlinuz-{kver}")), modules.join("vmlinuz.unsigned"), modules.join("vmlinuz")]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no vmlinuz in {}", root.display()))?;
    ensure!(modules.join("modules.dep").is_file(), "no modules.dep in {}", modules.display());
    Ok(Kernel { suite, package, version, kver, vmlinuz, modules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_and_selectors() {
        assert_eq!(kernel_release("linux-image-6.1.0-50-amd64-unsigned").as_deref(), Some("6.1.0-50-amd64"));
        assert_eq!(kernel_release("linux-binary-unsigned-7.3.4+deb13-amd64").as_deref(), Some("7.3.4+deb13-amd64"));
        assert!(
            selects("6.1", "bookworm", "6.1.0-50-amd64")
                && !selects("6.1", "bookworm-backports", "6.12.95+deb12-amd64")
        );
        assert!(
            selects("7", "trixie-backports", "7.3.4+deb13-amd64") && selects("bookworm", "bookworm", "6.1.0-50-amd64")
        );
    }
}
