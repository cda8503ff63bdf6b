//! TLS library hooks that only agent processes pay for (`[daemon] tls_uprobes = "agents"`).
//!
//! A uprobe is a breakpoint written into the library's code in every process that maps it.
//! Attached for all processes, as tracing tools do, every `SSL_write` on the machine traps
//! (~10 us each here, 25 times the call itself), agent or not. Here the breakpoints are written
//! only into agent processes:
//!
//! - the hooked functions are uprobe events of our own in tracefs (`uprobe_events`, group
//!   `agent_monitor_<daemon pid>`), one event per kind (writes, their returns, handshakes) holding a probe per
//!   function; its eBPF program is attached once, to an "anchor" perf event that targets the
//!   daemon itself;
//! - for each agent process the daemon opens one more perf event per uprobe event, targeting
//!   that process, with `inherit`: the kernel's uprobe filter (`trace_uprobe_filter`) writes the
//!   breakpoints into the address spaces of the events' targets only, and `inherit` makes the
//!   kernel copy the events into every child at fork (`copy_process`), before the child runs,
//!   so an agent's descendants are hooked with no window. An event follows its task through
//!   exec, and a library mapped later (Python's `import ssl`) gets its breakpoints at mmap.
//!
//! An agent's first process is hooked when the daemon reads its exec event (woken at once); a
//! process of an `agent-monitor exec` instance before it starts. Until a process is hooked, the
//! kernel holds its TLS ClientHello (`tls_hooks_pending` in the eBPF crate; TCP sends it again),
//! so nothing it writes inside TLS goes unseen.
use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::Write as _,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use tracing::{debug, info, warn};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Who a set of per-process events was opened for; they are closed when it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// An agent instance (its run id): open while any of its processes is tracked.
    Instance(u64),
    /// An `agent-monitor exec` caller (its pid), hooked before it starts the command; open
    /// until it unregisters.
    Exec(u32),
}

/// The program the write functions run: `ssl_write_ex`'s reads the length as 64 bits, which
/// suits `size_t` (`SSL_write_ex`, `gnutls_record_send`); for `SSL_write`'s `int`, undefined
/// upper bits can only make a short write look long (its first 8 bytes are read either way).
const WRITE_PROGRAM: &str = "ssl_write_ex";
/// The program the handshake functions run (marks the process as doing visible TLS).
const HANDSHAKE_PROGRAM: &str = "ssl_do_handshake";
/// The program the write functions' returns run (a uretprobe: what the call sent).
pub const RET_PROGRAM: &str = "tls_write_ret";
/// The program Go's `(*crypto/tls.Conn).Write` runs (Go's register ABI).
const GO_WRITE_PROGRAM: &str = "go_tls_write";
/// The program `SSL_clear`, `SSL_free` and `gnutls_deinit` run (the object's parser state goes).
const END_PROGRAM: &str = "tls_conn_end";

/// The program a function of `program`'s row runs when hooked in agent processes only.
pub(super) fn program_of(program: &str) -> &'static str {
    match program {
        HANDSHAKE_PROGRAM => HANDSHAKE_PROGRAM,
        RET_PROGRAM => RET_PROGRAM,
        GO_WRITE_PROGRAM => GO_WRITE_PROGRAM,
        END_PROGRAM => END_PROGRAM,
        _ => WRITE_PROGRAM,
    }
}

/// One uprobe event of ours: the TLS functions of one kind in the libraries hooked together.
struct Hook {
    /// `<group>/<event>` in tracefs.
    event: String,
    id: u64,
    /// The perf event that carries the eBPF program (targets the daemon).
    _anchor: OwnedFd,
}

/// The per-agent TLS hooks.
pub struct AgentTls {
    group: String,
    /// eBPF program fds by program name (see `tls_libs::Stack::programs`).
    progs: HashMap<&'static str, OwnedFd>,
    hooks: Vec<Hook>,
    /// Per-process events by owner.
    armed: HashMap<Owner, Armed>,
    /// This daemon run's token (nonzero), written into the process table for every process it
    /// hooked (`ProcState::tls_token`).
    pub token: u32,
    /// The token is in force in the kernel (agents' TLS handshakes wait for their hooks).
    pub in_force: bool,
}

#[derive(Default)]
struct Armed {
    /// Processes hooked directly (their descendants inherit the events).
    pids: Vec<u32>,
    events: Vec<OwnedFd>,
    since: Option<std::time::Instant>,
}

impl AgentTls {
    /// A hook set with nothing hooked yet. `progs`: the loaded uprobe programs' fds.
    pub fn new(progs: HashMap<&'static str, OwnedFd>) -> anyhow::Result<Self> {
        if !Path::new(TRACEFS).join("uprobe_events").exists() {
            bail!("{TRACEFS}/uprobe_events is missing (a kernel without CONFIG_UPROBE_EVENTS)");
        }
        remove_stale_groups();
        Ok(AgentTls {
            group: format!("agent_monitor_{}", std::process::id()),
            progs,
            hooks: Vec::new(),
            armed: HashMap::new(),
            token: run_token(),
            in_force: false,
        })
    }

    /// The tracefs group of this daemon's uprobe events.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Create the uprobe events of these libraries' TLS functions and hook the processes
    /// already armed. `libs`: (library, [(eBPF program, symbol)]), none of them hooked yet.
    /// Returns, per library, how many of its functions are hooked.
    ///
    /// Every function of a kind goes into one event (a tracefs event takes several probes):
    /// the write functions (`SSL_write`, `SSL_write_ex`, `gnutls_record_send`: buffer in the
    /// second argument, length in the third) run one program, their returns another (return
    /// probes), the handshakes a third. Each event is one more perf event per agent process,
    /// and each of those costs every fork of an agent a walk of the kernel's list of trace
    /// events (~7 us here, three events instead of nine per library).
    pub fn hook_libs(&mut self, libs: &[(PathBuf, Vec<(&'static str, &str)>)]) -> Vec<usize> {
        let batch = self.hooks.len();
        let mut hooked = vec![0; libs.len()];
        let mut added = Vec::new();
        // Each library read and parsed once: (path as tracefs takes it, [(program, offset)]).
        let resolved: Vec<(&str, Vec<Resolved>)> =
            libs.iter().map(|(lib, functions)| resolve(lib, functions)).collect();
        // Return probes first: a process is given its events in this order, and a write whose
        // entry is seen must see its return (the parser state moves there).
        for kind in [RET_PROGRAM, WRITE_PROGRAM, HANDSHAKE_PROGRAM, GO_WRITE_PROGRAM, END_PROGRAM] {
            let name = format!("{kind}_{batch}");
            let event = format!("{}/{name}", self.group);
            let mut probes = Vec::new();
            // A return probe for the return program, an entry probe for the others.
            let pr = if kind == RET_PROGRAM { 'r' } else { 'p' };
            for (i, (path, functions)) in resolved.iter().enumerate() {
                for Resolved { program, off, .. } in functions.iter().filter(|f| program_of(f.program) == kind) {
                    match tracefs_write("uprobe_events", &format!("{pr}:{event} {path}:{off:#x}")) {
                        Ok(()) => probes.push(i),
                        Err(e) => debug!(path, program, error = %format!("{e:#}"), "TLS function not hooked"),
                    }
                }
            }
            if probes.is_empty() {
                continue;
            }
            match self.anchor(kind, &name) {
                Ok((id, anchor)) => {
                    probes.iter().for_each(|&i| hooked[i] += 1);
                    added.push(Hook { event, id, _anchor: anchor });
                }
                Err(e) => {
                    warn!(event, error = %format!("{e:#}"), "TLS functions not hooked");
                    let _ = tracefs_write("uprobe_events", &format!("-:{event}"));
                }
            }
        }
        if !added.is_empty() {
            // Processes armed before these libraries were known get their events too.
            for armed in self.armed.values_mut() {
                for pid in &armed.pids {
                    for h in &added {
                        match open_event(h.id, *pid as i32, true) {
                            Ok(fd) => armed.events.push(fd),
                            Err(e) => debug!(pid, event = h.event, error = %e, "process not hooked"),
                        }
                    }
                }
            }
            self.hooks.extend(added);
        }
        for ((lib, _), n) in libs.iter().zip(&hooked).filter(|(_, n)| **n > 0) {
            info!(lib = %lib.display(), functions = n, "TLS library hooked for agent processes only");
        }
        hooked
    }

    /// The id of our tracefs event `name`, and the perf event that carries its program.
    fn anchor(&self, program: &str, name: &str) -> anyhow::Result<(u64, OwnedFd)> {
        let prog = self.progs.get(program).ok_or_else(|| anyhow!("program {program} not loaded"))?;
        let id_path = Path::new(TRACEFS).join("events").join(&self.group).join(name).join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .with_context(|| format!("reading {}", id_path.display()))?
            .trim()
            .parse()
            .context("parsing the event id")?;
        // The anchor targets the daemon (never an SSL_write of its own): a per-process event,
        // so the filter stays per process.
        let anchor = open_event(id, std::process::id() as i32, false).context("opening the anchor event")?;
        // SAFETY: ioctls on a perf event fd we own, with a program fd we own.
        unsafe {
            if libc::ioctl(anchor.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0 {
                bail!("attaching the program: {}", std::io::Error::last_os_error());
            }
            if libc::ioctl(anchor.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
                bail!("enabling the anchor: {}", std::io::Error::last_os_error());
            }
        }
        Ok((id, anchor))
    }

    /// Hook `pids` (and every process they fork from now on) for `owner`. Returns the ones
    /// hooked now (not those hooked before, nor those gone).
    pub fn arm(&mut self, owner: Owner, pids: &[u32]) -> Vec<u32> {
        let mut hooked = Vec::new();
        let entry = self.armed.entry(owner).or_default();
        entry.since.get_or_insert_with(std::time::Instant::now);
        for &pid in pids {
            if entry.pids.contains(&pid) {
                continue;
            }
            let mut ok = false;
            for h in &self.hooks {
                match open_event(h.id, pid as i32, true) {
                    Ok(fd) => {
                        entry.events.push(fd);
                        ok = true;
                    }
                    // The process is gone already: nothing to hook.
                    Err(e) => debug!(pid, event = h.event, error = %e, "process not hooked"),
                }
            }
            if ok {
                entry.pids.push(pid);
                hooked.push(pid);
            } else if !self.hooks.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
                warn!(pid, "an agent process could not be hooked: its TLS requests are not visible");
            }
        }
        hooked
    }

    /// Close the events of owners that are gone (their inherited copies go with them). Owners
    /// armed after `seen` (when the caller looked at what is live) are kept.
    pub fn retain(&mut self, seen: std::time::Instant, mut live: impl FnMut(Owner) -> bool) {
        self.armed.retain(|o, a| a.since.is_some_and(|t| t > seen) || live(*o));
    }

    /// Forget an owner now (an `exec` caller that unregistered).
    pub fn disarm(&mut self, owner: Owner) {
        self.armed.remove(&owner);
    }

    /// Has any function been hooked?
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Processes hooked directly (their descendants are hooked by inheritance).
    pub fn armed_processes(&self) -> usize {
        self.armed.values().map(|a| a.pids.len()).sum()
    }
}

impl Drop for AgentTls {
    fn drop(&mut self) {
        self.armed.clear();
        for h in std::mem::take(&mut self.hooks) {
            let event = h.event.clone();
            drop(h);
            let _ = tracefs_write("uprobe_events", &format!("-:{event}"));
        }
    }
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1); the kernel zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0 `disabled`, bit 1 `inherit`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// A perf event on tracefs event `id` for process `pid`. An inherited one is opened disabled:
/// it only widens the uprobe's filter (the program runs from the anchor), and a disabled
/// event costs the process nothing at context switches.
fn open_event(id: u64, pid: i32, inherit: bool) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        flags: if inherit { 0b11 } else { 0 },
        ..Default::default()
    };
    // SAFETY: perf_event_open(2) with an attr of the size we state.
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttr, pid, -1, -1, PERF_FLAG_FD_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn tracefs_write(file: &str, line: &str) -> anyhow::Result<()> {
    let path = Path::new(TRACEFS).join(file);
    let mut f = OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{line}\n").as_bytes()).with_context(|| format!("writing {line:?} to {}", path.display()))
}

/// Remove the uprobe events of daemons that are gone (a daemon killed before it could).
fn remove_stale_groups() {
    let Ok(list) = std::fs::read_to_string(Path::new(TRACEFS).join("uprobe_events")) else { return };
    for line in list.lines() {
        let Some(event) = line.split_whitespace().next().and_then(|e| e.split_once(':')).map(|(_, e)| e) else {
            continue;
        };
        let Some(pid) = event.strip_prefix("agent_monitor_").and_then(|r| r.split('/').next()) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            match tracefs_write("uprobe_events", &format!("-:{event}")) {
                Ok(()) => debug!(event, "removed a stale uprobe event"),
                Err(e) => warn!(event, error = %format!("{e:#}"), "a stale uprobe event could not be removed"),
            }
        }
    }
}

/// A TLS function found in a library file: the eBPF program it runs, its symbol, and where a
/// uprobe goes (file offset).
#[derive(Debug)]
pub(super) struct Resolved<'s> {
    pub program: &'static str,
    pub symbol: &'s str,
    pub off: u64,
}

/// A library's path as tracefs takes it and where each of `functions` ((eBPF program, symbol))
/// is found in it. All or nothing: a function the library defines but that
/// cannot be hooked (a Go `Write` whose stack check is not one this daemon knows, an address
/// in no section) leaves the whole library unhooked, said in the log, so that its handshake
/// never marks a process's TLS as seen while its writes go unread. A function it does not
/// define (`SSL_write_ex` in OpenSSL 1.0) is only skipped.
pub(super) fn resolve<'a, 's>(lib: &'a Path, functions: &[(&'static str, &'s str)]) -> (&'a str, Vec<Resolved<'s>>) {
    let found = (|| {
        let path = lib.to_str().filter(|p| !p.contains(char::is_whitespace)).ok_or_else(|| {
            anyhow!("{}: tracefs cannot take this path (not UTF-8, or with white space)", lib.display())
        })?;
        let data = std::fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
        let obj = object::File::parse(&*data).with_context(|| format!("parsing {}", lib.display()))?;
        use object::Object as _;
        let mut out = Vec::new();
        for &(program, symbol) in functions {
            let off = match symbol_offset(&obj, symbol) {
                Ok(off) => off,
                Err(_) if !defines_all(&obj, &[symbol]) => {
                    debug!(lib = %lib.display(), symbol, "TLS function not defined there");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if program == GO_WRITE_PROGRAM {
                // Go's Write is probed after its stack check (`go_after_stack_check`).
                let n = go_after_stack_check(&data, off, obj.architecture()).ok_or_else(|| {
                    anyhow!("{symbol}: its stack check is not one this daemon knows (its TLS stays opaque)")
                })?;
                out.push(Resolved { program, symbol, off: off + n });
            } else {
                out.push(Resolved { program, symbol, off });
            }
        }
        anyhow::Ok((path, out))
    })();
    found.unwrap_or_else(|e| {
        warn!(lib = %lib.display(), error = %format!("{e:#}"), "TLS library not hooked: its TLS is opaque");
        ("", Vec::new())
    })
}

/// The length of the stack check a Go function starts with, at file offset `off` of `data`, if
/// it is one of the forms the Go compiler (1.17+, register ABI) emits. A goroutine whose stack
/// must grow leaves through it to `morestack` and enters the function again from its first
/// instruction: a probe on the first instruction would see one `Write` twice (and parse its
/// bytes twice); a probe after the check sees it once. Unknown bytes: None (not hooked).
pub fn go_after_stack_check(data: &[u8], off: u64, arch: object::Architecture) -> Option<u64> {
    let code = data.get(off as usize..(off as usize).checked_add(24)?)?;
    match arch {
        object::Architecture::X86_64 => {
            // Optionally `lea r12, [rsp - N]` (large frames), then `cmp rsp|r12, [r14+0x10]`,
            // then `jbe` (rel8 or rel32).
            let mut i = 0;
            if code.starts_with(&[0x4c, 0x8d, 0x64, 0x24]) {
                i = 5;
            } else if code.starts_with(&[0x4c, 0x8d, 0xa4, 0x24]) {
                i = 8;
            }
            let cmp: &[u8] = if i == 0 { &[0x49, 0x3b, 0x66, 0x10] } else { &[0x4d, 0x3b, 0x66, 0x10] };
            if !code[i..].starts_with(cmp) {
                return None;
            }
            i += 4;
            match code[i] {
                0x76 => Some((i + 2) as u64),
                0x0f if code[i + 1] == 0x86 => Some((i + 6) as u64),
                _ => None,
            }
        }
        object::Architecture::Aarch64 => {
            // `ldr x16, [x28, #16]`; `cmp sp, x16`; `b.ls morestack`.
            let w = |k: usize| u32::from_le_bytes(code[k * 4..k * 4 + 4].try_into().unwrap());
            (w(0) == 0xf940_0b90 && w(1) == 0xeb30_63ff && w(2) & 0xff00_001f == 0x5400_0009).then_some(12)
        }
        _ => None,
    }
}

/// The file offset of `symbol` in a parsed ELF file, as uprobes take it: from its symbol
/// tables, or, for a Go function (`crypto/tls.`...) in a stripped Go program, from Go's own
/// function table (`gopclntab`), where the address must lie in an executable section.
pub fn symbol_offset(obj: &object::File, symbol: &str) -> anyhow::Result<u64> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| s.name() == Ok(symbol) && s.is_definition());
    let (address, section) = match found {
        Some(sym) => {
            if !matches!(obj.kind(), object::ObjectKind::Dynamic | object::ObjectKind::Executable) {
                return Ok(sym.address());
            }
            let section = sym.section_index().and_then(|i| obj.section_by_index(i).ok());
            (sym.address(), section.ok_or_else(|| anyhow!("{symbol} is in no section"))?)
        }
        None if symbol.starts_with("crypto/tls.") => {
            let address = super::gopclntab::func_entries(obj, &[symbol])[0]
                .ok_or_else(|| anyhow!("{symbol} is not defined there (symbol tables, .gopclntab)"))?;
            let section = obj
                .sections()
                .find(|s| {
                    s.kind() == object::SectionKind::Text && (s.address()..s.address() + s.size()).contains(&address)
                })
                .ok_or_else(|| anyhow!("{symbol}'s entry {address:#x} (.gopclntab) is in no executable section"))?;
            (address, section)
        }
        None => bail!("{symbol} is not defined there"),
    };
    let (file_offset, _) = section.file_range().ok_or_else(|| anyhow!("{symbol}'s section has no file range"))?;
    Ok(address - section.address() + file_offset)
}

/// Whether `obj` defines every one of `symbols`: in its symbol tables or, for Go functions
/// (`crypto/tls.`...), in Go's function table (read once for all of them).
pub fn defines_all(obj: &object::File, symbols: &[&str]) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let in_tables =
        |want: &str| obj.dynamic_symbols().chain(obj.symbols()).any(|s| s.name() == Ok(want) && s.is_definition());
    let rest: Vec<&str> = symbols.iter().copied().filter(|s| !in_tables(s)).collect();
    rest.is_empty()
        || (rest.iter().all(|s| s.starts_with("crypto/tls."))
            && super::gopclntab::func_entries(obj, &rest).iter().all(Option::is_some))
}

/// A nonzero token for this daemon run: a restarted daemon (whose predecessor's hooks closed
/// with it) must not take the process table's tokens for its own.
fn run_token() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let mixed = (ts.tv_nsec as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(std::process::id()) << 17);
    ((mixed >> 32) as u32) | 1
}

/// Dup a program's fd for [`AgentTls::new`].
pub fn prog_fd(fd: impl AsFd) -> std::io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_offsets_match_the_dynamic_symbol_table() {
        // libc is on every machine that runs these tests; `write` is in its text section.
        let libc_path = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
        let Some(lib) = libc_path else { return };
        let (path, found) = resolve(lib, &[("w", "write"), ("x", "no_such_symbol_anywhere")]);
        assert_eq!(path, lib.to_str().unwrap());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].program, found[0].symbol), ("w", "write"));
        assert!(found[0].off > 0 && found[0].off < std::fs::metadata(lib).unwrap().len());
    }

    /// The stack checks Go 1.17+ emits (bytes of `crypto/tls.(*Conn).Write` from a go1.19
    /// build, and the small-frame form), and anything else refused.
    #[test]
    fn go_functions_are_probed_after_their_stack_check() {
        use object::Architecture::{Aarch64, X86_64};
        let pad = |b: &[u8]| [b, &[0x90u8; 24][..]].concat();
        // lea r12, [rsp-0x68]; cmp r12, [r14+0x10]; jbe rel32
        let large = pad(&[0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x64, 0x07, 0, 0]);
        assert_eq!(super::go_after_stack_check(&large, 0, X86_64), Some(15));
        // cmp rsp, [r14+0x10]; jbe rel8
        let small = pad(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x40]);
        assert_eq!(super::go_after_stack_check(&small, 0, X86_64), Some(6));
        assert_eq!(super::go_after_stack_check(&pad(&[0x55, 0x48, 0x89, 0xe5]), 0, X86_64), None);
        // ldr x16, [x28, #16]; cmp sp, x16; b.ls
        let arm: Vec<u8> = [0xf940_0b90u32, 0xeb30_63ff, 0x5400_0a09].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(super::go_after_stack_check(&pad(&arm), 0, Aarch64), Some(12));
        assert_eq!(super::go_after_stack_check(&small, 4, X86_64), None, "not at a function's start");
    }
}
