//! `Policy -> CompiledPolicy`: a pure function from the validated model to the flat tables the
//! daemon loads into the kernel maps (selector maps keyed by comm, exe, uid and cgroup; writable
//! prefixes per agent; per-agent flags). Applying the tables to maps is a separate, small step in
//! the daemon, so this one is golden-tested without root.
//!
//! Agent ids are positions: the agent at index `i` of `Policy::agents` has id `i + 1`; id 0 is
//! "not an agent". The order of every table is the order of the policy file (agents, then the
//! values within an agent), with repeats dropped, so the same policy always compiles to the same
//! tables.

use std::collections::HashSet;
use std::fmt;

use super::model::{Action, Policy, MAX_COMM_LEN};

/// Character devices and pseudo-files every agent may write: writing them changes no state outside the process's terminal.
pub const IMPLICIT_WRITABLE: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts", "/dev/ptmx", "/dev/random", "/dev/urandom"];

/// The tables compiled from a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Index i has id = i as u32 + 1 (id 0 means "not an agent").
    pub agents: Vec<CompiledAgent>,
    /// NUL-padded comm -> agent id.
    pub comm: Vec<([u8; 16], u32)>,
    /// Normalised absolute executable path -> agent id.
    pub exe: Vec<(String, u32)>,
    /// uid -> agent id.
    pub uid: Vec<(u32, u32)>,
    /// cgroup path relative to the v2 root, written with a leading `/` (`/` is the root itself),
    /// -> agent id; the daemon resolves it to a cgroup id.
    pub cgroup: Vec<(String, u32)>,
    /// (agent id, normalised absolute prefix), including [`IMPLICIT_WRITABLE`] for every agent.
    /// A prefix covers itself and everything below it, on component boundaries.
    pub writable: Vec<(u32, String)>,
    /// 16 hex digits: FNV-1a 64 of the canonical form of the policy (`Policy`'s `Display`).
    pub hash: String,
}

/// One agent's identity and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAgent {
    pub id: u32,
    pub name: String,
    pub action: Action,
    pub audit: bool,
    pub allow_io_uring: bool,
    pub allow_raw_socket: bool,
    pub allow_bpf: bool,
}

impl CompiledPolicy {
    /// The agent with id `id` (1-based), if any.
    pub fn agent(&self, id: u32) -> Option<&CompiledAgent> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.agents.get(index)
    }

    /// The id of the agent named `name`, if any.
    pub fn agent_id(&self, name: &str) -> Option<u32> {
        self.agents.iter().find(|a| a.name == name).map(|a| a.id)
    }
}

pub fn compile(p: &Policy) -> CompiledPolicy {
    let mut out = CompiledPolicy { hash: policy_hash(p), ..CompiledPolicy::default() };
    for (i, a) in p.agents.iter().enumerate() {
        let id = i as u32 + 1;
        out.agents.push(CompiledAgent {
            id,
            name: a.name.clone(),
            action: a.action,
            audit: a.audit,
            allow_io_uring: a.syscalls.allows("io_uring"),
            allow_raw_socket: a.syscalls.allows("raw_socket"),
            allow_bpf: a.syscalls.allows("bpf"),
        });
        out.comm.extend(unique(&a.selector.comm).map(|c| (comm_key(c), id)));
        out.exe.extend(unique(&a.selector.exe).map(|e| (e.clone(), id)));
        out.uid.extend(unique(&a.selector.uid).map(|u| (*u, id)));
        out.cgroup.extend(unique(&a.selector.cgroup).map(|c| (c.clone(), id)));
        let implicit: Vec<String> = IMPLICIT_WRITABLE.iter().map(|s| s.to_string()).collect();
        let all: Vec<String> = a.files.writable.iter().cloned().chain(implicit).collect();
        out.writable.extend(unique(&all).map(|w| (id, w.clone())));
    }
    out
}

/// The comm map key: the name's first 15 bytes, NUL-padded to `TASK_COMM_LEN` (16), as the
/// kernel's `task->comm` holds it.
pub fn comm_key(comm: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = comm.as_bytes();
    let n = bytes.len().min(MAX_COMM_LEN);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// The policy's identity: FNV-1a 64 of its canonical form, as 16 hex digits. Comments, layout
/// and spellings that normalise to the same value (`/tmp/` and `/tmp`) do not change it; any
/// change the daemon would act on does, including one made at run time (an `exec` work
/// directory added to `writable`).
pub fn policy_hash(p: &Policy) -> String {
    format!("{:016x}", fnv1a64(p.to_string().as_bytes()))
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The values of `v` in order, each once.
fn unique<T: std::hash::Hash + Eq>(v: &[T]) -> impl Iterator<Item = &T> {
    let mut seen = HashSet::new();
    v.iter().filter(move |x| seen.insert(*x))
}

/// A stable, line-per-entry dump of the tables (for `check --verbose`, logs and golden tests).
impl fmt::Display for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hash {}", self.hash)?;
        for a in &self.agents {
            writeln!(
                f,
                "agent {} {:?} action={} audit={} io_uring={} raw_socket={} bpf={}",
                a.id, a.name, a.action, a.audit, a.allow_io_uring, a.allow_raw_socket, a.allow_bpf
            )?;
        }
        for (key, id) in &self.comm {
            let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
            writeln!(f, "comm {:?} -> {id}", String::from_utf8_lossy(&key[..end]))?;
        }
        for (exe, id) in &self.exe {
            writeln!(f, "exe {exe:?} -> {id}")?;
        }
        for (uid, id) in &self.uid {
            writeln!(f, "uid {uid} -> {id}")?;
        }
        for (cgroup, id) in &self.cgroup {
            writeln!(f, "cgroup {cgroup:?} -> {id}")?;
        }
        for (id, path) in &self.writable {
            writeln!(f, "writable {id} {path:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{default_policy, parse, AgentPolicy, DEFAULT_POLICY};

    const TWO_AGENTS: &str = r#"
[daemon]
metrics_listen = "127.0.0.1:9750"

[[agent]]
name = "forum-analyst"
action = "kill"
[agent.match]
comm = ["forum-agent", "forum-agent"]
exe = ["/opt/forum-agent/bin/agent"]
cgroup = ["/agents.slice/forum-analyst.service"]
uid = [1500]
[agent.files]
writable = ["/var/lib/forum-analyst/", "/tmp", "/dev/null"]
[agent.network]
allow = ["forum.internal:443"]

[[agent]]
name = "builder"
action = "deny"
audit = true
[agent.match]
comm = ["make"]
uid = [1600, 1601]
[agent.syscalls]
allow = ["io_uring", "raw_socket", "bpf"]
"#;

    fn policy(text: &str) -> Policy {
        parse("t.toml", text).unwrap_or_else(|ds| panic!("{ds:?}"))
    }

    fn implicit(id: u32) -> Vec<(u32, String)> {
        IMPLICIT_WRITABLE.iter().map(|p| (id, p.to_string())).collect()
    }

    #[test]
    fn golden_tables() {
        let c = compile(&policy(TWO_AGENTS));
        assert_eq!(
            c.agents,
            [
                CompiledAgent {
                    id: 1,
                    name: "forum-analyst".into(),
                    action: Action::Kill,
                    audit: false,
                    allow_io_uring: false,
                    allow_raw_socket: false,
                    allow_bpf: false,
                },
                CompiledAgent {
                    id: 2,
                    name: "builder".into(),
                    action: Action::Deny,
                    audit: true,
                    allow_io_uring: true,
                    allow_raw_socket: true,
                    allow_bpf: true,
                },
            ]
        );
        assert_eq!(c.comm, [(*b"forum-agent\0\0\0\0\0", 1), (*b"make\0\0\0\0\0\0\0\0\0\0\0\0", 2)]);
        assert_eq!(c.exe, [("/opt/forum-agent/bin/agent".to_string(), 1)]);
        assert_eq!(c.uid, [(1500, 1), (1600, 2), (1601, 2)]);
        assert_eq!(c.cgroup, [("/agents.slice/forum-analyst.service".to_string(), 1)]);
        // The policy's own paths first, then the implicit ones it does not already list.
        let mut writable = vec![(1, "/var/lib/forum-analyst".to_string()), (1, "/tmp".to_string())];
        writable.extend(implicit(1));
        writable.extend(implicit(2));
        assert_eq!(c.writable, writable);
        assert_eq!(c.agent(2).unwrap().name, "builder");
        assert_eq!(c.agent(0), None);
        assert_eq!(c.agent(3), None);
        assert_eq!(c.agent_id("forum-analyst"), Some(1));
        assert_eq!(c.agent_id("nobody"), None);
    }

    #[test]
    fn golden_dump() {
        let c = compile(&policy(TWO_AGENTS));
        let expected = format!(
            "hash {}\n\
             agent 1 \"forum-analyst\" action=kill audit=false io_uring=false raw_socket=false bpf=false\n\
             agent 2 \"builder\" action=deny audit=true io_uring=true raw_socket=true bpf=true\n\
             comm \"forum-agent\" -> 1\n\
             comm \"make\" -> 2\n\
             exe \"/opt/forum-agent/bin/agent\" -> 1\n\
             uid 1500 -> 1\n\
             uid 1600 -> 2\n\
             uid 1601 -> 2\n\
             cgroup \"/agents.slice/forum-analyst.service\" -> 1\n\
             writable 1 \"/var/lib/forum-analyst\"\n\
             writable 1 \"/tmp\"\n\
             writable 1 \"/dev/null\"\n\
             writable 1 \"/dev/zero\"\n\
             writable 1 \"/dev/full\"\n\
             writable 1 \"/dev/tty\"\n\
             writable 1 \"/dev/pts\"\n\
             writable 1 \"/dev/ptmx\"\n\
             writable 1 \"/dev/random\"\n\
             writable 1 \"/dev/urandom\"\n\
             writable 2 \"/dev/null\"\n\
             writable 2 \"/dev/zero\"\n\
             writable 2 \"/dev/full\"\n\
             writable 2 \"/dev/tty\"\n\
             writable 2 \"/dev/pts\"\n\
             writable 2 \"/dev/ptmx\"\n\
             writable 2 \"/dev/random\"\n\
             writable 2 \"/dev/urandom\"\n",
            c.hash
        );
        assert_eq!(c.to_string(), expected);
    }

    #[test]
    fn golden_default_policy() {
        let c = compile(&default_policy());
        assert_eq!(c.agents.len(), 1);
        assert_eq!(c.agents[0].name, "agent-cli");
        assert_eq!(c.agents[0].action, Action::Alert);
        assert!(!c.agents[0].allow_io_uring && !c.agents[0].allow_raw_socket && !c.agents[0].allow_bpf);
        let comms: Vec<[u8; 16]> = c
            .comm
            .iter()
            .map(|(k, id)| {
                assert_eq!(*id, 1);
                *k
            })
            .collect();
        assert_eq!(comms, ["claude", "codex", "gemini", "aider", "goose", "opencode"].map(comm_key));
        let mut writable = vec![(1, "/tmp".to_string()), (1, "/var/tmp".to_string())];
        writable.extend(implicit(1));
        assert_eq!(c.writable, writable);
        assert!(c.exe.is_empty() && c.uid.is_empty() && c.cgroup.is_empty());
        assert_eq!(c.hash.len(), 16);
        assert!(c.hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn empty_policy_compiles_to_empty_tables() {
        let c = compile(&Policy::default());
        assert_eq!(c, CompiledPolicy { hash: c.hash.clone(), ..CompiledPolicy::default() });
    }

    #[test]
    fn comm_keys_are_nul_padded_and_truncated_like_the_kernel() {
        assert_eq!(&comm_key("claude"), b"claude\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&comm_key("123456789012345"), b"123456789012345\0");
        // A programmatic policy is not validated: still the kernel's 15 bytes and a NUL.
        assert_eq!(&comm_key("1234567890123456789"), b"123456789012345\0");
    }

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn hash_is_the_policy_not_the_text() {
        let base = policy(TWO_AGENTS);
        let h = compile(&base).hash;
        // Comments, layout and normalisable spellings do not change it.
        let respelled = TWO_AGENTS
            .replace("[daemon]", "# the daemon\n[daemon]  # settings")
            .replace("\"/tmp\"", "\"//tmp/\"")
            .replace("uid = [1600, 1601]", "uid = [\n  1600,\n  1601,\n]");
        assert_ne!(respelled, TWO_AGENTS);
        assert_eq!(compile(&policy(&respelled)).hash, h);
        // Any change the daemon would act on does.
        let changed = TWO_AGENTS.replace("action = \"kill\"", "action = \"deny\"");
        assert_ne!(compile(&policy(&changed)).hash, h);
        let mut with_workdir = base.clone();
        with_workdir.agents[1].files.writable.push("/srv/work".into());
        assert_ne!(compile(&with_workdir).hash, h);
        // And it is stable: the same policy, the same hash, every time.
        assert_eq!(compile(&base).hash, h);
    }

    #[test]
    fn canonical_form_parses_back_to_the_same_policy() {
        for text in [TWO_AGENTS, DEFAULT_POLICY] {
            let p = policy(text);
            let canonical = p.to_string();
            assert_eq!(policy(&canonical), p, "{canonical}");
        }
        // Strings that need escaping survive too.
        let mut p = Policy::default();
        let mut a = AgentPolicy::new("odd");
        a.selector.exe.push("/opt/a \"quoted\" \\ name\tx".into());
        p.agents.push(a);
        assert_eq!(policy(&p.to_string()), p);
    }
}
