//! The policy: one TOML file, `[daemon]` settings plus any number of `[[agent]]` profiles.
//!
//! Three steps, each pure and unit-tested without a kernel:
//!
//! 1. **parse** ([`parse`], [`load`]): serde reads the file into a raw mirror that rejects
//!    unknown keys and keeps the byte span of every value (`raw`); toml reports syntax,
//!    unknown-key and type errors (the first one only: it stops there).
//! 2. **validate and lower** (`validate`, with the value checkers of `checks`): every semantic
//!    rule is checked and *all* violations are reported, each as a [`Diagnostic`] (`diag`) at the
//!    offending value's `LINE:COL`; the result is the plain, normalised [`Policy`] (`model`).
//! 3. **compile** ([`compile()`]): `Policy -> CompiledPolicy`, the flat tables the daemon loads
//!    into the kernel maps. Applying them to maps is `bpf::apply`.
//!
//! `source` says where the policy comes from (a file, or the embedded default).
//!
//! A new policy key goes into `raw` (as written), `model` (as the daemon reads it), `validate`
//! (its checks and lowering), `compile` if the kernel needs it, and the commented default
//! `deploy/agent-monitor.toml`.
//!
//! The rules checked in step 2 are the user contract of `agent-monitor check`:
//! agent names (`[A-Za-z0-9_.-]`, at most 64 bytes, unique), at most 255 agents, at least one
//! selector per agent, no selector value (comm, exe, cgroup, uid) claimed by two agents, comm at
//! most 15 bytes (the kernel would truncate it), absolute normalised paths, well-formed `allow`
//! entries and HTTP methods, known syscall classes, and well-formed daemon and webhook settings.

pub mod checks;
pub mod compile;
pub mod diag;
pub mod learn;
pub mod model;
pub mod raw;
pub mod replay;
pub mod source;
#[cfg(test)]
mod tests;
mod validate;

pub use compile::*;
pub use diag::Diagnostic;
pub use model::*;
pub use source::PolicySource;

use std::path::{Path, PathBuf};

use raw::RawPolicy;
use validate::Validator;

/// The embedded default policy (alert-only read-only profile for well-known agent CLIs).
pub const DEFAULT_POLICY: &str = include_str!("../../../deploy/agent-monitor.toml");
/// Where `run` looks for the policy when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/agent-monitor/agent-monitor.toml";
/// The name diagnostics give the embedded default policy.
pub const DEFAULT_POLICY_NAME: &str = "<embedded default policy>";

/// Parse and validate. `file` is only used in diagnostics. Returns every error found
/// (toml syntax / unknown key / type errors: the first one toml reports; semantic errors: all of
/// them, in file order).
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| vec![toml_diagnostic(file, text, &e)])?;
    let mut v = Validator { file, text, diags: Vec::new(), seen: Default::default() };
    let policy = v.policy(raw);
    if v.diags.is_empty() {
        Ok(policy)
    } else {
        // Stable: two problems at one position keep the order they were found in.
        v.diags.sort_by_key(|d| (d.line, d.col));
        Err(v.diags)
    }
}

/// Read a policy file and the fragments beside it ([`load_set`]), and parse them.
pub fn load(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    load_set(path).map(|(p, _)| p)
}

/// The policy set of a main file: the file, then every `*.toml` in the `policy.d/` directory
/// beside it, in name order (configuration management drops one file per team there). A
/// fragment holds `[[agent]]` profiles (and `[[alerts.webhook]]`s); the `[daemon]` settings are
/// the main file's. Agent names and selector values are unique across the set. Returns the
/// policy and the files it was read from; or every error of every file, each at its
/// FILE:LINE:COL (an I/O error: one [`Diagnostic`] with `line == 0`).
pub fn load_set(path: &Path) -> Result<(Policy, Vec<PathBuf>), Vec<Diagnostic>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Diagnostic::whole_file(&p.display().to_string(), format!("cannot read the policy: {e}")))
    };
    let mut diags = Vec::new();
    let mut seen = validate::Seen::default();
    let mut policy = Policy::default();
    let mut files = vec![path.to_path_buf()];
    let fragments = match fragment_files(path) {
        Ok(f) => f,
        Err(d) => {
            diags.push(d);
            Vec::new()
        }
    };
    for (n, p) in std::iter::once(path.to_path_buf()).chain(fragments).enumerate() {
        let file = p.display().to_string();
        let text = match read(&p) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let raw: RawPolicy = match toml::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                diags.push(toml_diagnostic(&file, &text, &e));
                continue;
            }
        };
        let mut v = Validator { file: &file, text: &text, diags: Vec::new(), seen };
        if n == 0 {
            policy = v.policy(raw);
        } else {
            let (webhooks, agents) = v.fragment(raw);
            policy.alerts.webhook.extend(webhooks);
            policy.agents.extend(agents);
            files.push(p.clone());
        }
        v.diags.sort_by_key(|d| (d.line, d.col));
        diags.append(&mut v.diags);
        seen = v.seen;
    }
    if diags.is_empty() {
        Ok((policy, files))
    } else {
        Err(diags)
    }
}

/// `policy.d/*.toml` beside `main`, in name order (hidden files and other names left out);
/// none if the directory does not exist.
fn fragment_files(main: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("policy.d");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Diagnostic::whole_file(&dir.display().to_string(), format!("cannot read the directory: {e}")))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// The embedded default policy, parsed. It is tested to parse, so this cannot fail.
#[cfg(test)]
pub fn default_policy() -> Policy {
    parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY).expect("the embedded default policy is valid")
}

fn toml_diagnostic(file: &str, text: &str, e: &toml::de::Error) -> Diagnostic {
    // toml's messages may span lines ("invalid table header\nexpected `.`, `]`"): keep one line.
    let mut message = e.message().trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    // A table where a single value belongs (`metrics_listen.port = 1`) reaches toml::Spanned's
    // visitor, whose own wording would be meaningless to a user.
    if message.ends_with("expected a borrowed string") {
        message = "invalid type: a table, where a single value is expected".to_string();
    }
    // toml says nothing at all about some characters it refuses (a carriage return that does not
    // end a line, a control character in a comment): a diagnostic must say something.
    if message.is_empty() {
        message = match e.span().and_then(|s| text.get(s.start..)).and_then(|t| t.chars().next()) {
            Some(c) if c.is_control() => format!(
                "character U+{:04X} is not allowed here (TOML takes a carriage return only before a newline, \
                 and no control character but tab in a comment)",
                c as u32
            ),
            _ => "invalid TOML syntax".to_string(),
        };
    }
    match e.span() {
        Some(span) => Diagnostic::at_span(file, text, span, message),
        None => Diagnostic::new(file, 1, 1, message),
    }
}
