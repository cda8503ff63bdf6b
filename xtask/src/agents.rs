//! The real-agent tier (docs/real-agents.md): the agent CLIs people run, from the npm registry,
//! driven headless beside the daemon by `tests/tests/real_agents.rs`.
//!
//! `cargo xtask setup --agents` installs the versions pinned in `tests/fixtures/agents/pins.txt`
//! with the machine's node and npm, each into `~/.cache/agent-monitor/agents/<pkg>@<version>`
//! (`AGENT_MONITOR_AGENTS_DIR` elsewhere), and says what it took in time and disk. An install
//! is complete once the agent answers `--version`; it then carries [`MARKER`] and is never
//! installed again. `cargo xtask test` does the same, then runs the tier after the other
//! end-to-end tests. Without node or npm, or with the registry out of reach, the tier is
//! skipped and the summary says why: never a silent pass.
use crate::{cargo, show, target_dir};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Written into an install directory once the install is complete (the tests look for it).
const MARKER: &str = ".agent-monitor-installed";

/// The oldest node the pinned agents run on: Gemini CLI 0.61 declares `node >= 20` (Claude
/// Code's `>= 22` is only for its postinstall, which works on 20; Codex's launcher wants 16).
const NODE_MAJOR: u32 = 20;

/// What `cargo xtask test` does with the tier.
pub enum Tier {
    /// Run this command (the tier's test binary, `--ignored`, filtered).
    Run(Command),
    /// Skipped, and why.
    Skip(&'static str),
    /// The install failed for another reason than an unreachable npm (already reported).
    Failed,
}

struct Pin {
    name: String,
    /// An npm package, or `pypi:NAME` for a Python package.
    package: String,
    version: String,
}

impl Pin {
    fn spec(&self) -> String {
        format!("{}@{}", self.package, self.version)
    }
}

/// `tests/fixtures/agents/pins.txt`: `NAME PACKAGE VERSION` a line (`tests/src/agents.rs`
/// reads the same file).
fn pins() -> Result<Vec<Pin>> {
    let path = crate::root().join("tests/fixtures/agents/pins.txt");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pins = Vec::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()) {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, package, version] => {
                pins.push(Pin { name: name.into(), package: package.into(), version: version.into() })
            }
            _ => bail!("{}: expected `NAME PACKAGE VERSION`, got {line:?}", path.display()),
        }
    }
    Ok(pins)
}

fn agents_dir(home: &Path) -> PathBuf {
    match std::env::var_os("AGENT_MONITOR_AGENTS_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => home.join(".cache/agent-monitor/agents"),
    }
}

/// Why the tier cannot be installed here, or an error that is a failure (not a skip).
enum Unavailable {
    Skip(String),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Unavailable {
    fn from(e: anyhow::Error) -> Self {
        Unavailable::Error(e)
    }
}

/// `cargo xtask setup --agents`: install, or fail with the reason.
pub fn setup(home: &Path) -> Result<()> {
    match install(home) {
        Ok(_) => Ok(()),
        Err(Unavailable::Skip(why)) => bail!("real agents: cannot install: {why}"),
        Err(Unavailable::Error(e)) => Err(e),
    }
}

/// `cargo xtask test`'s step: install (cached), then the tier's command, or why it is skipped.
pub fn tier(home: &Path, no_root: bool, built: bool, filter: &[String]) -> Tier {
    if no_root {
        return Tier::Skip("--no-root");
    }
    if !built {
        return Tier::Skip("the build failed");
    }
    println!("\n==> real agents: install (cached)");
    let dir = match install(home) {
        Ok(dir) => dir,
        Err(Unavailable::Skip(why)) => {
            println!("setup: real agents: SKIPPED: {why}");
            return Tier::Skip(why.leak());
        }
        Err(Unavailable::Error(e)) => {
            eprintln!("xtask: real agents: {e:#}");
            return Tier::Failed;
        }
    };
    Tier::Run(command(&dir, filter))
}

/// Serial like the other e2e tests; `--ignored` because the tier's tests are ignored in the
/// plain e2e run. A filter `real_agents` (the binary's name) means the whole tier.
fn command(dir: &Path, filter: &[String]) -> Command {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "agent-monitor-e2e", "--test", "real_agents", "--", "--test-threads=1", "--ignored"]);
    cmd.args(filter.iter().filter(|f| *f != "real_agents"));
    cmd.env("AGENT_MONITOR_BIN", target_dir().join("debug/agent-monitor"));
    cmd.env("AGENT_MONITOR_AGENTS_DIR", dir);
    cmd
}

/// Installs every pinned agent not installed yet; returns the agents directory.
fn install(home: &Path) -> Result<PathBuf, Unavailable> {
    let start = Instant::now();
    let pins = pins()?;
    let dir = agents_dir(home);
    let node = tool_version("node").ok_or_else(|| {
        Unavailable::Skip(format!(
            "node is not installed; the tier needs node >= {NODE_MAJOR} and npm (Debian bookworm's nodejs is 18: too old for Gemini CLI)"
        ))
    })?;
    let major: u32 = node.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < NODE_MAJOR {
        return Err(Unavailable::Skip(format!("node {node} is too old: the pinned agents need node >= {NODE_MAJOR}")));
    }
    let npm = tool_version("npm").ok_or_else(|| Unavailable::Skip(format!("npm is not installed (node {node} is)")))?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let npm_cache = ["npm_config_cache", "NPM_CONFIG_CACHE"]
        .iter()
        .find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
        .map_or_else(|| home.join(".npm"), PathBuf::from);
    let cache_before = disk_usage(&npm_cache);
    let mut installed_any = false;
    for pin in &pins {
        let target = dir.join(pin.spec().replace('/', "+"));
        if target.join(MARKER).exists() {
            println!("setup: real agents: {}: already installed ({})", pin.spec(), mb(disk_usage(&target)));
            continue;
        }
        // A directory without the marker: an install by hand, or one that was interrupted.
        if target.exists() && check(pin, &target).is_ok() {
            mark(&target, "found complete (installed by other means)")?;
            println!("setup: real agents: {}: found complete, kept ({})", pin.spec(), mb(disk_usage(&target)));
            continue;
        }
        let t = Instant::now();
        install_one(pin, &target)?;
        let took = format!("installed in {:.1} s ({})", t.elapsed().as_secs_f64(), mb(disk_usage(&target)));
        mark(&target, &format!("{took} with node {node} and npm {npm}"))?;
        println!("setup: real agents: {}: {took}", pin.spec());
        installed_any = true;
    }
    let mut total = format!(
        "setup: real agents: {} agents, {} in {} (node {node}, npm {npm}); took {:.1} s",
        pins.len(),
        mb(disk_usage(&dir)),
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    if installed_any {
        total += &format!(
            "; npm's cache {} grew by {}",
            npm_cache.display(),
            mb(disk_usage(&npm_cache).saturating_sub(cache_before))
        );
    }
    println!("{total}");
    Ok(dir)
}

/// `npm install` into a fresh `<target>.partial`, checked, then renamed into place.
fn install_one(pin: &Pin, target: &Path) -> Result<(), Unavailable> {
    let partial = PathBuf::from(format!("{}.partial", target.display()));
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(target);
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    if let Some(package) = pin.package.strip_prefix("pypi:") {
        install_pypi(pin, package, &partial)?;
        check(pin, &partial)?;
        fs::rename(&partial, target)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), target.display()))?;
        return Ok(());
    }
    // Not --ignore-scripts: Claude Code's postinstall links the native binary over its
    // placeholder `bin/claude.exe`.
    let mut cmd = Command::new("npm");
    cmd.args(["install", "--prefix"]).arg(&partial);
    // A registry that does not answer ends the install in about two minutes, not the default ten.
    cmd.args(["--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=error", "--fetch-retries=1"]);
    cmd.args(["--fetch-timeout=60000", &pin.spec()]);
    println!("setup: real agents: {}: {}", pin.spec(), show(&cmd));
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", show(&cmd)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = fs::remove_dir_all(&partial);
        if unreachable(&err) {
            let line = err.lines().find(|l| l.contains("code") || l.contains("network")).unwrap_or("").trim();
            return Err(Unavailable::Skip(format!("the npm registry is unreachable ({line})")));
        }
        return Err(anyhow::anyhow!("`{}` failed ({}):\n{err}", show(&cmd), out.status).into());
    }
    claude_postinstall(pin, &partial)?;
    check(pin, &partial)?;
    fs::rename(&partial, target)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), target.display()))?;
    Ok(())
}

/// A Python agent CLI (aider) from PyPI, as pip installs it: its package and the console script
/// pip writes (`<dir>/pypi/bin/NAME`), without its dependencies. The tier checks which agent
/// the default policy selects when the CLI starts (its comm is the script's name), which needs
/// the script and not the hundreds of megabytes it imports.
fn install_pypi(pin: &Pin, package: &str, dir: &Path) -> Result<(), Unavailable> {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--no-input", "--quiet"]);
    cmd.args(["--timeout", "60", "--retries", "1", "--target"]).arg(dir.join("pypi"));
    cmd.arg(format!("{package}=={}", pin.version));
    println!("setup: real agents: {}: {}", pin.spec(), show(&cmd));
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", show(&cmd)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = fs::remove_dir_all(dir);
        let offline =
            ["NewConnectionError", "Temporary failure in name resolution", "ConnectTimeout", "Network is unreachable"];
        if offline.iter().any(|m| err.contains(m)) {
            return Err(Unavailable::Skip("PyPI is unreachable".into()));
        }
        return Err(anyhow::anyhow!("`{}` failed ({}):\n{err}", show(&cmd), out.status).into());
    }
    Ok(())
}

/// npm's messages for a registry it cannot reach.
fn unreachable(stderr: &str) -> bool {
    ["ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH", "network"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// npm 11 warns that install scripts are "not yet covered by allowScripts" and still runs
/// them; should a later npm not, run Claude Code's postinstall by hand.
fn claude_postinstall(pin: &Pin, dir: &Path) -> Result<()> {
    let pkg = dir.join("node_modules").join(&pin.package);
    let exe = pkg.join("bin/claude.exe");
    if pin.package != "@anthropic-ai/claude-code" || is_elf(&exe) {
        return Ok(());
    }
    println!("setup: real agents: {}: bin/claude.exe is not the native binary; running its install.cjs", pin.spec());
    crate::run_cmd(Command::new("node").arg("install.cjs").current_dir(&pkg))?;
    if !is_elf(&exe) {
        bail!("{} is still not an ELF binary after install.cjs", exe.display());
    }
    Ok(())
}

fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && &magic == b"\x7fELF"
}

/// Complete: the pinned version is the one in node_modules, and its CLI answers `--version`
/// (run with an empty HOME: nothing of this machine's configuration is read or written).
fn check(pin: &Pin, dir: &Path) -> Result<()> {
    if pin.package.starts_with("pypi:") {
        // (without its dependencies it cannot answer --version: the script pip wrote is the check)
        let script = dir.join("pypi/bin").join(&pin.name);
        let text = fs::read_to_string(&script).with_context(|| format!("{} is missing", script.display()))?;
        if !text.starts_with("#!") {
            bail!("{} is not the console script pip writes", script.display());
        }
        return Ok(());
    }
    let pj = dir.join("node_modules").join(&pin.package).join("package.json");
    let text = fs::read_to_string(&pj).with_context(|| format!("{} is missing", pj.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", pj.display()))?;
    if v["version"] != pin.version.as_str() {
        bail!("{} says version {}, not {}", pj.display(), v["version"], pin.version);
    }
    let bin = v["bin"].as_object().and_then(|b| b.keys().next().cloned()).context("the package has no bin")?;
    let program = dir.join("node_modules/.bin").join(&bin);
    let home = dir.join(".version-check-home");
    fs::create_dir_all(&home)?;
    let out = Command::new(&program).arg("--version").env("HOME", &home).stdin(Stdio::null()).output();
    let _ = fs::remove_dir_all(&home);
    let out = out.with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!("`{} --version` failed ({}): {}", program.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn mark(dir: &Path, what: &str) -> Result<()> {
    let when = crate::output(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ")).unwrap_or_default();
    fs::write(dir.join(MARKER), format!("{} {what}\n", when.trim())).context("cannot write the install marker")
}

fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Bytes on disk under `p` (hard links once, like du), 0 if it does not exist.
fn disk_usage(p: &Path) -> u64 {
    if !p.exists() {
        return 0;
    }
    let out = Command::new("du").arg("-sk").arg(p).stderr(Stdio::null()).output();
    let kib = out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next()?.parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

fn mb(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

#[cfg(test)]
mod tests {
    #[test]
    fn npm_network_errors_are_unreachable() {
        assert!(super::unreachable("npm error code ENOTFOUND\nnpm error network request to https://registry..."));
        assert!(super::unreachable("npm error code EAI_AGAIN"));
        assert!(!super::unreachable("npm error code ETARGET\nnpm error notarget No matching version"));
    }

    #[test]
    fn the_pins_parse() {
        let pins = super::pins().unwrap();
        assert_eq!(pins.len(), 5);
        assert!(pins.iter().any(|p| p.package == "pypi:aider-chat" && p.name == "aider"));
        assert!(pins.iter().any(|p| p.spec().starts_with("@anthropic-ai/claude-code@")));
    }
}
