//! apt with a private configuration (sources, lists and caches under
//! `~/.cache/agent-monitor/vm/apt`; the mirror taken from the system's own sources, which are
//! left alone), and the parsing of what it and the system's sources say.

use crate::{output, run_cmd};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// apt-get/apt-cache with their own sources, lists and caches under `dir`; the system's dpkg
/// status (for installing QEMU) and keyrings are the system's.
pub struct Apt {
    dir: PathBuf,
    /// The host's own suites (release, -updates, -security, -backports): for installing QEMU.
    pub host_list: PathBuf,
    /// Those plus the kernel suites: for updating and looking kernels up.
    all_list: PathBuf,
    pub codename: String,
}

impl Apt {
    /// `kernel_suites`: the suites the kernels come from, beside the host's own.
    pub fn new(dir: &Path, kernel_suites: &[&str]) -> Result<Apt> {
        for d in ["lists/partial", "cache/archives/partial", "sources.list.d", "debs"] {
            fs::create_dir_all(dir.join(d)).with_context(|| format!("cannot create {}", dir.join(d).display()))?;
        }
        let os = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
        let codename = os_codename(&os).context("/etc/os-release has no VERSION_CODENAME: is this Debian?")?;
        let entries = system_sources()?;
        let mirror = entries.iter().find(|e| e.suite == codename).map(|e| e.uri.clone()).with_context(|| {
            format!("no apt source for suite {codename} in /etc/apt/sources.list or /etc/apt/sources.list.d/")
        })?;
        let mut host = vec![
            (mirror.clone(), codename.clone()),
            (mirror.clone(), format!("{codename}-updates")),
            (mirror.clone(), format!("{codename}-backports")),
        ];
        let security = format!("{codename}-security");
        if let Some(e) = entries.iter().find(|e| e.suite == security) {
            host.push((e.uri.clone(), security));
        }
        let mut all = host.clone();
        for &s in kernel_suites {
            if !all.iter().any(|(_, suite)| suite == s) {
                all.push((mirror.clone(), s.to_string()));
            }
        }
        let write = |name: &str, list: &[(String, String)]| -> Result<PathBuf> {
            let path = dir.join(name);
            let text: String = list.iter().map(|(uri, suite)| format!("deb {uri} {suite} main\n")).collect();
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        let host_list = write("host.list", &host)?;
        let all_list = write("all.list", &all)?;
        Ok(Apt { dir: dir.to_path_buf(), host_list, all_list, codename })
    }

    pub fn cmd(&self, tool: &str, list: &Path) -> Command {
        let mut cmd = Command::new(tool);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::Etc::sourcelist", list),
            opt("Dir::Etc::sourceparts", &self.dir.join("sources.list.d")),
            opt("Dir::State::Lists", &self.dir.join("lists")),
            opt("Dir::Cache", &self.dir.join("cache")),
            opt("Dir::Cache::archives", &self.dir.join("cache/archives")),
            // Downloads land in directories _apt cannot write.
            "APT::Sandbox::User=root".into(),
            "DPkg::Lock::Timeout=300".into(),
            // Only the Packages indexes: no AppStream metadata, no Contents.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Refreshes the lists; a failure is only a warning when older lists are there (offline,
    /// the cached kernels still boot).
    pub fn update(&self) -> Result<()> {
        println!("vm: apt-get update (private lists in {})", self.dir.join("lists").display());
        let mut cmd = self.cmd("apt-get", &self.all_list);
        cmd.args(["update", "-qq"]);
        let Err(e) = run_cmd(&mut cmd) else { return Ok(()) };
        let lists = fs::read_dir(self.dir.join("lists"))?.filter_map(|e| e.ok());
        if lists.filter(|e| e.file_name().to_string_lossy().contains("_Packages")).count() == 0 {
            return Err(e).context("apt-get update failed; check network access to the Debian archive");
        }
        println!("vm: warning: {e:#}; going on with the lists from an earlier run");
        Ok(())
    }

    /// Package names matching an apt-cache regex.
    pub fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = output(self.cmd("apt-cache", &self.all_list).args(["search", "--names-only", pattern]))?;
        Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    /// `(package, version)` of every version of `names` in `suite`.
    pub fn versions_in(&self, names: &[String], suite: &str) -> Result<Vec<(String, String)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = output(self.cmd("apt-cache", &self.all_list).arg("madison").args(names))?;
        Ok(madison_in_suite(&out, suite))
    }

    /// `apt-get download PKG=VERSION...` into `dir`.
    pub fn download(&self, pkgs: &[String], dir: &Path) -> Result<()> {
        let mut cmd = self.cmd("apt-get", &self.all_list);
        cmd.args(["download", "-q"]).args(pkgs).current_dir(dir);
        run_cmd(&mut cmd).context("apt-get download failed")
    }
}

/// One `deb` line of the system's sources.
#[derive(Debug, PartialEq)]
struct SourceEntry {
    uri: String,
    suite: String,
}

/// The `deb` entries of /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}.
fn system_sources() -> Result<Vec<SourceEntry>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut entries = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822_sources(&text)),
            Some("list") => entries.extend(parse_one_line_sources(&text)),
            _ if f == Path::new("/etc/apt/sources.list") => entries.extend(parse_one_line_sources(&text)),
            _ => {}
        }
    }
    Ok(entries)
}

/// `deb [options] URI SUITE COMPONENTS...` lines.
fn parse_one_line_sources(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']').map(|(_, r)| r.trim_start()).unwrap_or("");
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push(SourceEntry { uri: uri.trim_end_matches('/').into(), suite: suite.into() });
        }
    }
    entries
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), one entry per URI and suite.
fn parse_deb822_sources(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut last = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    let v: &mut String = fields.entry(String::clone(k)).or_default();
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace() {
                entries.push(SourceEntry { uri: uri.trim_end_matches('/').into(), suite: suite.into() });
            }
        }
    }
    entries
}

fn os_codename(os_release: &str) -> Option<String> {
    let v = os_release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME="))?;
    let v = v.trim().trim_matches('"');
    (!v.is_empty()).then(|| v.to_string())
}

/// `pkg | version | URI SUITE/COMPONENT ARCH Packages` lines of apt-cache madison, in `suite`.
fn madison_in_suite(out: &str, suite: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in out.lines() {
        let cols: Vec<_> = line.split('|').map(str::trim).collect();
        if let [pkg, version, source] = cols[..] {
            let in_suite = source.split_whitespace().any(|w| w.split('/').next() == Some(suite));
            if in_suite && !found.iter().any(|(p, v)| p == pkg && v == version) {
                found.push((pkg.to_string(), version.to_string()));
            }
        }
    }
    found
}

pub fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "deb")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_both_formats() {
        let deb822 =
            "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb-src\nURIs: http://x/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://y/\nSuites: sid\nEnabled: no\n";
        let e = parse_deb822_sources(deb822);
        assert_eq!(
            e,
            [
                SourceEntry { uri: "http://deb.debian.org/debian".into(), suite: "bookworm".into() },
                SourceEntry { uri: "http://deb.debian.org/debian".into(), suite: "bookworm-updates".into() },
            ]
        );
        let list = "# x\ndeb [signed-by=/k.gpg arch=amd64] http://m/debian bookworm main\ndeb-src http://m/debian bookworm main\n";
        assert_eq!(
            parse_one_line_sources(list),
            [SourceEntry { uri: "http://m/debian".into(), suite: "bookworm".into() }]
        );
        assert_eq!(os_codename("ID=debian\nVERSION_CODENAME=bookworm\n").as_deref(), Some("bookworm"));
    }

    #[test]
    fn madison_lines_are_filtered_by_suite() {
        let out = "linux-image-6.1.0-50-amd64-unsigned |  6.1.176-1 | http://m/debian bookworm/main amd64 Packages\n\
                   linux-image-6.12.95+deb12-amd64-unsigned | 6.12.95-1~bpo12+1 | http://m/debian bookworm-backports/main amd64 Packages\n";
        assert_eq!(
            madison_in_suite(out, "bookworm"),
            [("linux-image-6.1.0-50-amd64-unsigned".into(), "6.1.176-1".into())]
        );
        assert_eq!(madison_in_suite(out, "bookworm-backports").len(), 1);
    }
}
