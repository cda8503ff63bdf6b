//! Which TLS libraries are hooked, and how: in agent processes only (`tls_uprobes = "agents"`,
//! through `tls::AgentTls`), in every process (`"all"`, pinned uprobes), or not at all (`"off"`);
//! hooking new agent instances and the libraries agents map.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use agent_monitor_common::ProcState;
use aya::programs::{links::FdLink, UProbe};
use tracing::{debug, info, warn};

use super::{
    maps as kmaps,
    probes::{Attach, PROBES},
    tls::Owner,
    Kernel,
};
use crate::policy::model::TlsUprobes;

/// A TLS stack whose plaintext writes the uprobes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stack {
    /// OpenSSL (and BoringSSL builds that keep OpenSSL's names): the system's libssl, or
    /// linked into any object that defines `SSL_write` (Node.js exports it from its executable).
    OpenSsl,
    GnuTls,
    /// Go's own `crypto/tls`, in a Go executable that keeps its symbol table (a stripped one is
    /// opaque: its functions are not found).
    Go,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::OpenSsl => "openssl",
            Stack::GnuTls => "gnutls",
            Stack::Go => "go crypto/tls",
        }
    }

    /// Its functions that are hooked.
    pub fn symbols(self) -> &'static [&'static str] {
        match self {
            Stack::OpenSsl => {
                &["SSL_write", "SSL_write_ex", "SSL_do_handshake", "SSL_set_connect_state", "SSL_clear", "SSL_free"]
            }
            Stack::GnuTls => &["gnutls_record_send", "gnutls_record_send2", "gnutls_handshake", "gnutls_deinit"],
            Stack::Go => &["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).clientHandshake"],
        }
    }

    /// A library known by its file name.
    fn of_name(name: &str) -> Option<Stack> {
        if name.starts_with("libssl.so") {
            Some(Stack::OpenSsl)
        } else if name.starts_with("libgnutls.so") {
            Some(Stack::GnuTls)
        } else {
            None
        }
    }
}

/// Which TLS stack the object file at `path` carries, if any: a `libssl.so*` or
/// `libgnutls.so*` by its name; any other ELF object (an executable such as `node`, a
/// vendored or static build, a Go program) by a definition of `SSL_write`,
/// `gnutls_record_send` or Go's `crypto/tls.(*Conn).Write` in its symbol tables, whatever its
/// file name. Read through a memory map (an agent's executable may
/// be 400 MB: only the symbol tables are paged in) and cached by file identity (device, inode,
/// size, modification time), so a path is read once however many processes map it (its ELF
/// header too: only native 64-bit objects are stacks).
pub fn stack_of(path: &Path) -> Option<Stack> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Mutex, OnceLock};
    /// (device, inode, size, mtime) and what the file carries.
    type Seen = ((u64, u64, u64, i64), Option<Stack>);
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Seen>>> = OnceLock::new();
    let meta = std::fs::metadata(path).ok()?;
    let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
    let cache = CACHE.get_or_init(Default::default);
    if let Some((k, s)) = cache.lock().unwrap().get(path) {
        if *k == key {
            return *s;
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // The probes read their arguments as this machine's calling convention passes them: a
    // 32-bit x86 library or program (its arguments on the stack) is not hooked, its TLS opaque.
    let found = if !native_elf(path) {
        None
    } else if let Some(s) = Stack::of_name(name) {
        Some(s)
    } else {
        defines_tls_symbols(path)
    };
    cache.lock().unwrap().insert(path.to_path_buf(), (key, found));
    found
}

/// Whether `path` is an ELF object for the machine the daemon runs on (64-bit, its
/// architecture), read off the ELF header.
fn native_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    #[cfg(target_arch = "x86_64")]
    const MACHINE: u16 = 62; // EM_X86_64
    #[cfg(target_arch = "aarch64")]
    const MACHINE: u16 = 183; // EM_AARCH64
    read.is_ok() && head[..4] == *b"\x7fELF" && head[4] == 2 && u16::from_le_bytes([head[18], head[19]]) == MACHINE
}

fn defines_tls_symbols(path: &Path) -> Option<Stack> {
    use object::{Object as _, ObjectSymbol as _};
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a read-only private mapping of a file we only parse; a file changed under it can
    // at worst make the parse fail (the cache key then changes too).
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let obj = object::File::parse(&*map).ok()?;
    let defined =
        |want: &str| obj.dynamic_symbols().chain(obj.symbols()).any(|s| s.is_definition() && s.name() == Ok(want));
    if defined("SSL_write") {
        Some(Stack::OpenSsl)
    } else if defined("gnutls_record_send") {
        Some(Stack::GnuTls)
    } else if go_register_abi(&obj)
        && super::tls::defines_all(&obj, &["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).clientHandshake"])
    {
        Some(Stack::Go)
    } else {
        None
    }
}

/// Whether a Go executable passes arguments in registers as `go_tls_write` reads them: built
/// by Go 1.18 or later, whose `.go.buildinfo` section carries its version inline (flag bit 2
/// after the 14-byte magic and the pointer size; the version string, length-prefixed, at offset
/// 32). Older builds (stack ABI on arm64 before 1.18, on every architecture before 1.17) would
/// have the probe read other registers: they are not hooked, so their TLS is opaque.
fn go_register_abi(obj: &object::File) -> bool {
    use object::{Object as _, ObjectSection as _};
    let Some(data) = obj.section_by_name(".go.buildinfo").and_then(|s| s.data().ok()) else {
        return false;
    };
    go_version_of_buildinfo(data).is_some_and(|(major, minor)| (major, minor) >= (1, 18))
}

/// (major, minor) of the Go release in a `.go.buildinfo` section's bytes (Go 1.18+ layout).
fn go_version_of_buildinfo(data: &[u8]) -> Option<(u32, u32)> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if data.len() < 33 || &data[..14] != MAGIC || data[15] & 2 == 0 {
        return None;
    }
    let len = data[32] as usize; // a version string is far shorter than 128: one varint byte
    let v = std::str::from_utf8(data.get(33..33 + len)?).ok()?.strip_prefix("go")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Kernel {
    /// At load: per-agent hooks where asked (falling back to every process), then the system's
    /// libraries hooked; what the uprobe layer can see said in `layers.notes`.
    pub(super) fn setup_tls(&mut self, tls_uprobes: TlsUprobes) {
        self.layers.uprobe = !self.tls_libs.is_empty();
        if tls_uprobes == TlsUprobes::Agents {
            match self.agent_tls() {
                Ok(t) => self.agent_tls = Some(t),
                Err(e) => {
                    let why = format!("{e:#}");
                    warn!(reason = %why, "TLS libraries cannot be hooked in agent processes only: hooked in every process instead");
                    self.layers.notes.push(format!(
                        "uprobe: hooked in every process ({why}): every SSL_write on the machine pays the uprobe"
                    ));
                }
            }
        }
        if tls_uprobes == TlsUprobes::Off {
            self.layers.notes.push(
                "uprobe: off (tls_uprobes = \"off\"): HTTP methods inside TLS are not visible; agents with require_http_visibility cannot use TLS"
                    .into(),
            );
            warn!("TLS libraries not hooked (tls_uprobes = \"off\"): HTTPS request methods are not visible");
        } else {
            self.hook_tls_libs(&system_tls_libs());
        }
        let refused = self.layers.notes.iter().any(|n| n.starts_with("uprobe: the kernel refused"));
        if tls_uprobes != TlsUprobes::Off && self.tls_libs.is_empty() && !refused {
            self.layers
                .notes
                .push("uprobe: no OpenSSL or GnuTLS library found: HTTP methods inside TLS are not visible".into());
            warn!("no TLS library found to hook: HTTPS request methods are not visible");
        }
    }

    /// The uprobe program of each TLS function, loaded (adopted programs are not loaded in this
    /// process), as (program, symbol). A program the kernel refused once is not tried again.
    fn tls_programs(&mut self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        for probe in PROBES {
            let Attach::UProbe(symbols) = probe.attach else { continue };
            if self.tls_refused.contains_key(probe.program) {
                continue;
            }
            let Some(p) = self.ebpf.program_mut(probe.program).and_then(|p| <&mut UProbe>::try_from(p).ok()) else {
                continue;
            };
            if p.fd().is_err() {
                if let Err(e) = p.load() {
                    let e = anyhow::Error::from(e);
                    warn!(program = probe.program, error = %format!("{e:#}"), "uprobe program not loaded");
                    self.tls_refused.insert(probe.program, super::loader::first_line(&e));
                    continue;
                }
            }
            out.extend(symbols.iter().map(|&symbol| (probe.program, symbol)));
        }
        out
    }

    /// The programs `stack`'s functions run (as this daemon hooks them: in agents only, or in
    /// every process) that the kernel refused, with why.
    fn refused_for(&self, stack: Stack) -> Vec<(&'static str, &str)> {
        let per_agent = self.agent_tls.is_some();
        let mut out: Vec<(&'static str, &str)> = Vec::new();
        for probe in PROBES {
            let Attach::UProbe(symbols) = probe.attach else { continue };
            if !symbols.iter().any(|s| stack.symbols().contains(s)) {
                continue;
            }
            let runs = if per_agent { super::tls::program_of(probe.program) } else { probe.program };
            if let Some(why) = self.tls_refused.get(runs) {
                if out.iter().all(|(p, _)| *p != runs) {
                    out.push((runs, why));
                }
            }
        }
        out
    }

    /// The per-agent TLS hooks, with the uprobe programs' fds.
    fn agent_tls(&mut self) -> anyhow::Result<super::tls::AgentTls> {
        use anyhow::Context as _;
        let mut progs = std::collections::HashMap::new();
        for (program, _) in self.tls_programs() {
            if progs.contains_key(program) {
                continue; // one program, several functions
            }
            let fd = self.ebpf.program(program).and_then(|p| p.fd().ok()).map(super::tls::prog_fd);
            if let Some(fd) = fd {
                progs.insert(program, fd.context("duplicating a program fd")?);
            }
        }
        super::tls::AgentTls::new(progs)
    }

    /// Hook the write functions of TLS library files (idempotent): in agent processes only or
    /// in every process (`tls_uprobes`). Returns how many of them are hooked after the call.
    pub fn hook_tls_libs(&mut self, paths: &[PathBuf]) -> usize {
        let loaded = self.tls_programs();
        let mut todo: Vec<(PathBuf, Vec<(&'static str, &'static str)>)> = Vec::new();
        let mut done = 0;
        for canon in paths.iter().filter_map(|p| std::fs::canonicalize(p).ok()) {
            if self.tls_libs.contains(&canon) {
                done += 1;
                continue;
            }
            let Some(stack) = stack_of(&canon) else { continue };
            // All of a stack's functions or none: its writes unjudged while its handshakes
            // mark the process's TLS visible would let every request through.
            let refused = self.refused_for(stack);
            if !refused.is_empty() {
                let why: Vec<String> = refused.iter().map(|(p, why)| format!("{p}: {why}")).collect();
                let note = format!(
                    "uprobe: the kernel refused the {} programs ({}): {} is not hooked, its TLS writes are not visible",
                    stack.name(),
                    why.join("; "),
                    canon.display()
                );
                if !self.layers.notes.contains(&note) {
                    warn!("{note}");
                    self.layers.notes.push(note);
                }
                continue;
            }
            let symbols = stack.symbols();
            if todo.iter().all(|(l, _)| *l != canon) {
                let functions = loaded.iter().copied().filter(|(_, s)| symbols.contains(s)).collect();
                todo.push((canon, functions));
            }
        }
        let hooked: Vec<usize> = match self.agent_tls.as_mut() {
            Some(t) => t.hook_libs(&todo),
            None => todo.iter().map(|(lib, functions)| self.hook_tls_lib_everywhere(lib, functions)).collect(),
        };
        for ((lib, _), _) in todo.into_iter().zip(hooked).filter(|(_, n)| *n > 0) {
            self.tls_libs.insert(lib);
            self.layers.uprobe = true;
            done += 1;
        }
        done
    }

    /// `tls_uprobes = "all"`: uprobes in every process that maps `lib`, pinned with the rest.
    fn hook_tls_lib_everywhere(&mut self, lib: &Path, functions: &[(&'static str, &'static str)]) -> usize {
        let mut hooked = 0;
        // The same offsets, all or nothing, as in agent processes (`tls::resolve`).
        let (_, found) = super::tls::resolve(lib, functions);
        for super::tls::Resolved { program, symbol, off } in found {
            let Some(p) = self.ebpf.program_mut(program).and_then(|p| <&mut UProbe>::try_from(p).ok()) else {
                continue;
            };
            let location = aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(off);
            let link = p
                .attach(location, lib, aya::programs::uprobe::UProbeScope::AllProcesses)
                .map_err(anyhow::Error::from)
                .and_then(|id| Ok(FdLink::try_from(p.take_link(id)?)?));
            match link {
                Ok(link) => {
                    // bpffs names cannot hold '/' or '.': the library path is hex-encoded.
                    let hex: String = lib.as_os_str().as_encoded_bytes().iter().map(|b| format!("{b:02x}")).collect();
                    let ret = if program == super::tls::RET_PROGRAM { "-ret" } else { "" };
                    let label = format!("uprobe={symbol}{ret}={hex}");
                    match self.keep_link(label, link) {
                        Ok(()) => hooked += 1,
                        Err(e) => warn!(error = %format!("{e:#}"), "uprobe link not kept"),
                    }
                }
                Err(e) => debug!(lib = %lib.display(), symbol, error = %e, "uprobe not attached"),
            }
        }
        if hooked > 0 {
            info!(lib = %lib.display(), functions = hooked, "TLS library hooked in every process");
        }
        hooked
    }
}

/// The system's OpenSSL and GnuTLS libraries, as the dynamic linker would find them.
fn system_tls_libs() -> Vec<PathBuf> {
    let out = std::process::Command::new("ldconfig").arg("-p").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_once("=>").map(|(name, path)| (name.trim().to_string(), PathBuf::from(path.trim()))))
        .filter(|(name, _)| Stack::of_name(name).is_some() && !name.contains(".so ") && name.contains(".so."))
        .map(|(_, p)| p)
        .collect();
    libs.dedup();
    libs
}

/// Object files carrying a TLS stack that the processes of `tracked` map with code (a
/// vendored or private copy of libssl is a different file from the system's, with its own
/// uprobes; Node.js carries OpenSSL in its executable). Reads /proc and the files: call without
/// the kernel's lock.
pub fn mapped_tls_libs(tracked: &[(u32, ProcState)]) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut seen = HashSet::new();
    for (pid, _) in tracked {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        for (perms, path) in maps.lines().filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.nth(1)?, f.nth(3)?))
        }) {
            if !perms.contains('x') || !path.starts_with('/') || !seen.insert(path.to_string()) {
                continue;
            }
            if stack_of(Path::new(path)).is_some() {
                found.insert(PathBuf::from(path));
            }
        }
    }
    found
}

/// The TLS stacks process `pid` maps that are hooked, by name (`status`).
pub fn process_stacks(pid: u32, hooked: &BTreeSet<PathBuf>) -> Vec<String> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return Vec::new() };
    let mut out: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| hooked.contains(Path::new(p)))
        .filter_map(|p| stack_of(Path::new(p)).map(|s| format!("{} ({p})", s.name())))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Kernel {
    /// Hook the libraries in `found` that are not hooked yet.
    pub fn hook_new_tls_libs(&mut self, found: BTreeSet<PathBuf>) {
        let new: Vec<PathBuf> = found.into_iter().filter(|lib| !self.tls_libs.contains(lib)).collect();
        if !new.is_empty() {
            self.hook_tls_libs(&new);
            self.announce_tls_hooks();
        }
    }

    /// Hook the TLS of a new agent instance's first process (its exec event): as soon as the
    /// daemon reads it, before the process gets far. Returns the processes hooked directly now,
    /// or None without per-agent hooks.
    pub fn hook_instance_tls(&mut self, run_id: u64, pid: u32) -> Option<usize> {
        let t = self.agent_tls.as_mut()?;
        let token = t.token;
        let hooked = t.arm(Owner::Instance(run_id), &[pid]);
        let armed = t.armed_processes();
        self.release_tls_handshakes(&hooked, &[pid], token);
        self.announce_tls_hooks();
        Some(armed)
    }

    /// Once any library is hooked, tell the kernel that the per-agent hooks are in force: from
    /// then on a new agent process's TLS handshake waits until it is hooked.
    fn announce_tls_hooks(&mut self) {
        let Some(t) = self.agent_tls.as_mut() else { return };
        if t.in_force || !t.has_hooks() {
            return;
        }
        t.in_force = true;
        let token = t.token;
        if let Err(e) = kmaps::set_tls_token_in_force(&mut self.ebpf, token) {
            warn!(error = %format!("{e:#}"), "per-agent TLS hooks: the kernel was not told; early handshakes do not wait");
        }
    }

    /// Hook every agent process not covered yet (adopted at start or by a reload, forked before
    /// its instance was hooked, an exec event lost), and close the hooks of instances that are
    /// gone. `tracked` was read after `seen`. Returns the processes hooked directly, or None
    /// without per-agent hooks.
    pub fn hook_uncovered_agents(&mut self, tracked: &[(u32, ProcState)], seen: Instant) -> Option<usize> {
        let t = self.agent_tls.as_mut()?;
        let token = t.token;
        let mut uncovered: HashMap<u64, Vec<u32>> = HashMap::new();
        for (pid, st) in tracked.iter().filter(|(_, st)| st.tls_token != token) {
            uncovered.entry(st.run_id).or_default().push(*pid);
        }
        let mut hooked = Vec::new();
        let mut tried = Vec::new();
        for (run_id, pids) in uncovered {
            hooked.extend(t.arm(Owner::Instance(run_id), &pids));
            tried.extend(pids);
        }
        let live: HashSet<u64> = tracked.iter().map(|(_, st)| st.run_id).collect();
        t.retain(seen, |owner| match owner {
            Owner::Instance(run_id) => live.contains(&run_id),
            Owner::Exec(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        });
        let armed = t.armed_processes();
        if !tried.is_empty() {
            debug!(processes = hooked.len(), of = tried.len(), "agent processes hooked for TLS");
            self.release_tls_handshakes(&hooked, &tried, token);
        }
        self.announce_tls_hooks();
        Some(armed)
    }

    /// After hooking (or failing to hook) `tried` agent processes: those that map a hooked TLS
    /// library are marked visible (a handshake begun before the hooks would not have marked
    /// them), then all of them get the token, which lets their waiting TLS handshakes go. One
    /// that could not be hooked is let go too (its handshake counts as invisible): waiting would
    /// hang it.
    fn release_tls_handshakes(&mut self, hooked: &[u32], tried: &[u32], token: u32) {
        let visible: Vec<u32> = hooked
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
                    maps.lines()
                        .filter_map(|l| l.split_whitespace().nth(5))
                        .any(|p| self.tls_libs.contains(Path::new(p)))
                })
            })
            .collect();
        kmaps::mark_tls_visible(&mut self.ebpf, &visible);
        kmaps::set_tls_token(&mut self.ebpf, tried, token);
    }

    /// `agent-monitor exec`'s caller is hooked before it starts the command, so the command and
    /// its descendants inherit the hooks at fork.
    pub fn hook_exec_caller(&mut self, caller: u32) {
        if let Some(t) = self.agent_tls.as_mut().filter(|_| caller != 0) {
            t.arm(Owner::Exec(caller), &[caller]);
        }
    }

    pub fn unhook_exec_caller(&mut self, caller: u32) {
        if let Some(t) = self.agent_tls.as_mut() {
            t.disarm(Owner::Exec(caller));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::go_version_of_buildinfo;

    fn buildinfo(flags: u8, version: &str) -> Vec<u8> {
        let mut d = b"\xff Go buildinf:".to_vec();
        d.extend_from_slice(&[8, flags]);
        d.resize(32, 0);
        d.push(version.len() as u8);
        d.extend_from_slice(version.as_bytes());
        d.extend_from_slice(&[0; 16]);
        d
    }

    #[test]
    fn go_release_read_from_buildinfo() {
        assert_eq!(go_version_of_buildinfo(&buildinfo(2, "go1.19.8")), Some((1, 19)));
        assert_eq!(go_version_of_buildinfo(&buildinfo(3, "go1.22rc1")), Some((1, 22)));
        // Before 1.18 the version is behind pointers (flag bit 2 clear): not read, not hooked.
        assert_eq!(go_version_of_buildinfo(&buildinfo(0, "go1.16.5")), None);
        assert_eq!(go_version_of_buildinfo(b"\xff Go buildinf:"), None);
        let mut bad = buildinfo(2, "go1.19.8");
        bad[1] = b'x';
        assert_eq!(go_version_of_buildinfo(&bad), None);
    }
}
