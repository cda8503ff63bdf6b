//! `agent-monitor shims`: the commands users type (`claude`, `codex`, `gemini`, ...) started
//! through `agent-monitor exec` whenever they type them.
//!
//! A shim is a small POSIX shell script named like the command, in a directory put first on
//! `PATH` (`/etc/profile.d/agent-monitor-shims.sh` with `--profile`). It finds the real command
//! on `PATH` without its own directory and runs it under `agent-monitor exec --agent NAME`:
//! Landlock from the first instruction, registered with the daemon as an instance. Inside an
//! instance (`AGENT_MONITOR_AGENT` set by `exec`: a sub-agent the agent starts) it runs the real
//! command directly; it is confined already. Shims are a convenience, not a boundary: the daemon
//! still selects the agents by their `[agent.match]`, shim or not.
//!
//! Which commands: every `comm` selector of every agent of the policy that is a plain command
//! name (the embedded default: claude, codex, gemini, aider, goose, opencode, copilot, qwen), or
//! the `COMMAND=AGENT` pairs given.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};

/// Where shims go by default.
pub const DEFAULT_DIR: &str = "/usr/local/lib/agent-monitor/shims";
/// The profile script `--profile` writes: puts the shim directory first on login shells' `PATH`.
pub const PROFILE: &str = "/etc/profile.d/agent-monitor-shims.sh";
/// The line that marks a file as ours (a shim, or the profile script): only such files are
/// replaced or removed.
const MARK: &str = "# agent-monitor shim";

/// The shim for `command`, run as agent `agent`.
pub fn script(dir: &Path, command: &str, agent: &str, binary: &Path, config: Option<&Path>) -> String {
    let config = config.map(|c| format!(" --config {}", sh_quote(&c.display().to_string()))).unwrap_or_default();
    format!(
        r#"#!/bin/sh
{MARK}: `{command}` runs as agent "{agent}" inside its boundary (agent-monitor exec).
# Written by `agent-monitor shims install`; `agent-monitor shims remove` removes it.
shims={dir}
# The real command: the first `{command}` on PATH outside this directory.
real=$(
    IFS=:; p=
    for d in $PATH; do [ "$d" = "$shims" ] || [ -z "$d" ] || p="${{p:+$p:}}$d"; done
    PATH=$p; export PATH
    command -v {cmd}
) || {{ echo "agent-monitor shim: {command}: not found on PATH (outside $shims)" >&2; exit 127; }}
# Inside an instance already (a sub-agent): confined; run it as it is.
if [ -n "${{AGENT_MONITOR_AGENT:-}}" ]; then exec "$real" "$@"; fi
exec {bin} exec --agent {agent_q}{config} -- "$real" "$@"
"#,
        dir = sh_quote(&dir.display().to_string()),
        cmd = sh_quote(command),
        bin = sh_quote(&binary.display().to_string()),
        agent_q = sh_quote(agent),
    )
}

/// The profile script: the shim directory first on `PATH`, once.
pub fn profile(dir: &Path) -> String {
    let d = sh_quote(&dir.display().to_string());
    format!(
        "{MARK}s: AI agent commands typed by users start under agent-monitor exec.\n\
         case \":$PATH:\" in *:{d}:*) ;; *) PATH={d}:$PATH; export PATH ;; esac\n"
    )
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@%,=".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command name a shim can have: a file name, no '.' (`claude.exe` is Windows' name).
fn plain_command(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-+".contains(&b))
}

/// The (command, agent) pairs: `pairs` (`COMMAND=AGENT`) if given, else every plain `comm` of
/// every agent. Each agent named must be in the policy.
pub fn commands(policy: &crate::policy::Policy, pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    if pairs.is_empty() {
        for a in &policy.agents {
            for c in a.selector.comm.iter().filter(|c| plain_command(c)) {
                if !out.iter().any(|(o, _)| o == c) {
                    out.push((c.clone(), a.name.clone()));
                }
            }
        }
    }
    for p in pairs {
        let (c, a) = p.split_once('=').ok_or_else(|| anyhow!("{p:?}: expected COMMAND=AGENT"))?;
        if !plain_command(c) {
            bail!("{c:?} is not a command name a shim can have (letters, digits, '_', '-', '+')");
        }
        if policy.agent(a).is_none() {
            let names: Vec<&str> = policy.agents.iter().map(|a| a.name.as_str()).collect();
            bail!("the policy has no agent named {a:?}; its agents are: {}", names.join(", "));
        }
        out.retain(|(o, _)| o != c);
        out.push((c.to_string(), a.to_string()));
    }
    if out.is_empty() {
        bail!("no command to shim: the policy's agents have no plain `comm` selectors; name them as COMMAND=AGENT");
    }
    Ok(out)
}

fn ours(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|s| s.lines().take(3).any(|l| l.starts_with(MARK)))
}

/// Write the shims (and, with `profile`, the profile script). A file of the same name that is
/// not a shim of ours is left alone (an error).
pub fn install(
    dir: &Path,
    config: Option<PathBuf>,
    pairs: &[String],
    profile_script: Option<&Path>,
) -> anyhow::Result<()> {
    let source = crate::policy::PolicySource::resolve(config.clone());
    let policy = source.load().map_err(|diags| {
        for d in &diags {
            eprintln!("{d}");
        }
        anyhow!("the policy {} is invalid ({} error(s))", source.describe(), diags.len())
    })?;
    let list = commands(&policy, pairs)?;
    let binary = std::env::current_exe().context("finding this program's path")?;
    let config = config.map(|c| fs::canonicalize(&c).unwrap_or(c));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (command, agent) in &list {
        let path = dir.join(command);
        if path.exists() && !ours(&path) {
            bail!("{} exists and is not an agent-monitor shim: not replaced", path.display());
        }
        let tmp = dir.join(format!(".{command}.tmp"));
        fs::write(&tmp, script(&dir, command, agent, &binary, config.as_deref()))
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
            .and_then(|()| fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{} -> agent-monitor exec --agent {agent}", path.display());
    }
    match profile_script {
        Some(p) => {
            if p.exists() && !ours(p) {
                bail!("{} exists and is not ours: not replaced", p.display());
            }
            fs::write(p, profile(&dir)).with_context(|| format!("writing {}", p.display()))?;
            println!("{}: login shells put {} first on PATH", p.display(), dir.display());
        }
        None => println!("put {} first on PATH (or run again with --profile)", dir.display()),
    }
    Ok(())
}

/// Remove our shims from `dir` (and our profile script). Returns how many files went.
pub fn remove(dir: &Path, profile_script: Option<&Path>) -> anyhow::Result<usize> {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() && ours(&p) {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                println!("removed {}", p.display());
                n += 1;
            }
        }
    }
    if let Some(p) = profile_script.filter(|p| ours(p)) {
        fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        println!("removed {}", p.display());
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_shims_the_agents_people_type() {
        let policy = crate::policy::default_policy();
        let list = commands(&policy, &[]).unwrap();
        let names: Vec<&str> = list.iter().map(|(c, _)| c.as_str()).collect();
        for c in ["claude", "codex", "gemini", "aider", "goose", "opencode"] {
            assert!(names.contains(&c), "{c} not shimmed: {names:?}");
        }
        assert!(!names.contains(&"claude.exe"));
        assert!(list.contains(&("claude".to_string(), "claude".to_string())));
        let pairs = commands(&policy, &["my-claude=claude".to_string()]).unwrap();
        assert!(pairs.contains(&("my-claude".to_string(), "claude".to_string())));
        assert!(commands(&policy, &["x=nobody".to_string()]).is_err());
        assert!(commands(&policy, &["../x=claude".to_string()]).is_err());
    }

    #[test]
    fn a_shim_is_valid_sh_and_quotes_what_it_embeds() {
        let s = script(
            Path::new("/opt/it's shims"),
            "claude",
            "claude",
            Path::new("/usr/bin/agent-monitor"),
            Some(Path::new("/etc/a m.toml")),
        );
        assert!(s.contains("shims='/opt/it'\\''s shims'"), "{s}");
        assert!(s.contains("--config '/etc/a m.toml'"), "{s}");
        let out = std::process::Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
        assert!(out.status.success(), "sh -n: {}", String::from_utf8_lossy(&out.stderr));
        let out = std::process::Command::new("sh").args(["-n", "-c", &profile(Path::new("/x y"))]).output().unwrap();
        assert!(out.status.success());
    }
}
