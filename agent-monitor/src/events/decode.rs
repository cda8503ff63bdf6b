//! Decoding kernel records into [`EventRecord`]s: names, targets, rules and honest details.
//!
//! Pure: what the record says comes from the wire record and the policy's names only. What only
//! /proc knows (the executable of a process the daemon did not see exec, a parent pid a socket
//! hook could not read, a comm) is filled in afterwards by `enrich`.
//!
//! This is the daemon's per-event path (at least 1 M events/s on one core), so the reader
//! decodes every event into one reused [`EventRecord`] (`Decoder::decode_into`): in the common
//! case (a path that is valid UTF-8) it does not allocate.
use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use agent_monitor_common::{
    action, event_flags, layer, syscalls::tamper_call, Action, Event, Kind, Layer, Verdict, AGENT_GEN_KNOWN,
    AGENT_SLOTS_PER_GEN, PATH_LEN,
};

use super::EventRecord;

fn cstr(b: &[u8]) -> String {
    let mut s = String::new();
    push_cstr(&mut s, b);
    s
}

/// Append `b` up to its first NUL, invalid UTF-8 replaced as `String::from_utf8_lossy` does.
fn push_cstr(out: &mut String, b: &[u8]) {
    let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
    match std::str::from_utf8(b) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(b)),
    }
}

fn push_path(out: &mut String, b: &[u8], len: u32) {
    let len = (len as usize).min(PATH_LEN).min(b.len());
    push_cstr(out, &b[..len]);
}

fn path(b: &[u8], len: u32) -> String {
    let mut s = String::new();
    push_path(&mut s, b, len);
    s
}

/// Replace `s` with `with`, keeping `s`'s buffer.
fn assign(s: &mut String, with: &str) {
    s.clear();
    s.push_str(with);
}

/// Human-readable `open(2)` flags for details.
fn push_open_flags(out: &mut String, f: u64) {
    out.push_str(match f & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    });
    for (bit, name) in [(0o100, "O_CREAT"), (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o200, "O_EXCL")] {
        if f & bit != 0 {
            out.push('|');
            out.push_str(name);
        }
    }
}

/// `host:port` for a 16-byte IPv6 (or v4-mapped) address.
fn push_net_target(out: &mut String, addr: &[u8], port: u16) {
    let mut b = [0u8; 16];
    b.copy_from_slice(&addr[..16]);
    let v6 = std::net::Ipv6Addr::from(b);
    let _ = match v6.to_ipv4_mapped() {
        Some(v4) => write!(out, "{v4}:{port}"),
        None => write!(out, "[{v6}]:{port}"),
    };
}

/// The request line and the Host header of the start of an HTTP/1.x request.
pub fn http_request(raw: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default().trim_end_matches('\0').to_string();
    let host = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("host").then(|| v.trim().trim_end_matches('\0').to_string())
    });
    (line, host.filter(|h| !h.is_empty()))
}

/// The `detail` being built: parts joined by "; ".
struct Detail<'a>(&'a mut String);

impl Detail<'_> {
    /// The string to write the next part into (every part is non-empty).
    fn next(&mut self) -> &mut String {
        if !self.0.is_empty() {
            self.0.push_str("; ");
        }
        self.0
    }

    fn push(&mut self, part: &str) {
        self.next().push_str(part);
    }
}

/// Details of file decisions that the object decided, not its name: no `writable` entry
/// allows these (`policy test` keeps them refused whatever the candidate says).
pub const PATH_TRUNCATED_TEXT: &str = "path truncated";
pub const ARG_UNREADABLE_TEXT: &str =
    "an argument in the process's memory could not be read, at the call nor after it: a violation (fail closed)";
pub const FOREIGN_MOUNT_TEXT: &str = "the path crosses a mount the daemon did not see in the host's namespace (a bind mount, a private mount namespace): not judged by its name";
pub const HARD_LINK_TEXT: &str = "a file with more than one name (hard links): writing it writes the file under its other names, which may be outside writable";
pub const DEVICE_TEXT: &str = "a device node: never writable (it reaches a disk or memory, not a file)";
/// The detail of an HTTP write read in a TLS library (its target is the `Host:` header).
pub const TLS_PLAINTEXT_TEXT: &str = "seen in the TLS library before encryption";
/// The detail of a connection whose TLS the daemon cannot read.
pub const TLS_INVISIBLE_TEXT: &str =
    "TLS handshake from a process whose TLS library is not hooked (statically linked?): its HTTP methods are not visible";
/// The detail of a `file.link` that makes a symbolic link (`LINK -> WHERE IT LEADS`).
pub const SYMLINK_TEXT: &str = "a symbolic link (the link is written; where it leads is judged when it is used)";
/// The detail of an audited HTTP write that is not a request start.
pub const CONTINUATION_TEXT: &str = "the rest of a request already judged (its body or headers)";
/// The file details above.
pub const OBJECT_REFUSALS: [&str; 5] =
    [PATH_TRUNCATED_TEXT, ARG_UNREADABLE_TEXT, FOREIGN_MOUNT_TEXT, HARD_LINK_TEXT, DEVICE_TEXT];

/// Turns wire records into event records.
pub struct Decoder {
    pub agent_names: Vec<String>,
    /// The policy hash in force in each kernel generation (see `agent_monitor_common::agent_slot`).
    pub policy_by_gen: [Option<String>; 2],
    /// Seconds+nanos to add to CLOCK_BOOTTIME to get wall-clock time.
    boot_to_wall_ns: i128,
    prefix: String,
    seq: AtomicU64,
    /// The whole second last formatted for `ts`, and its text up to the seconds (see `push_ts`).
    ts_second: Option<(i128, String)>,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn rfc3339(wall_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(wall_ns).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Decoder {
    pub fn new(agent_names: Vec<String>) -> Self {
        let wall = clock_ns(libc::CLOCK_REALTIME);
        Decoder {
            agent_names,
            policy_by_gen: [None, None],
            boot_to_wall_ns: wall - clock_ns(libc::CLOCK_BOOTTIME),
            prefix: format!("{:x}", (wall / 1_000_000) as u64),
            seq: AtomicU64::new(0),
            ts_second: None,
        }
    }

    /// A policy about to decide in generation `gen` (a reload): events name it by its hash, and
    /// agents by the names of both policies while both may be deciding (ids are stable by name).
    pub fn expect_policy(&mut self, gen: u32, hash: &str, names: Vec<String>) {
        self.policy_by_gen[(gen & 1) as usize] = Some(hash.to_string());
        let n = names.len().max(self.agent_names.len());
        self.agent_names = (0..n)
            .map(|i| names.get(i).filter(|s| !s.is_empty()).or(self.agent_names.get(i)).cloned().unwrap_or_default())
            .collect();
    }

    pub fn next_id(&self) -> String {
        let mut s = String::new();
        self.push_next_id(&mut s);
        s
    }

    fn push_next_id(&self, out: &mut String) {
        out.push_str(&self.prefix);
        out.push('-');
        out.push_str(itoa::Buffer::new().format(self.seq.fetch_add(1, Ordering::Relaxed) + 1));
    }

    /// `rfc3339(wall_ns)` appended to `out`. The date and time of day are formatted (by the
    /// `time` crate, as `rfc3339` does) once per second of events, not once per event; the
    /// fraction is written here as `time` writes it: nine digits without their trailing zeros,
    /// none at all for a whole second.
    fn push_ts(&mut self, wall_ns: i128, out: &mut String) {
        const NS: i128 = 1_000_000_000;
        // (i64 division where it fits: i128's is a library call)
        let (second, nanos) = match i64::try_from(wall_ns) {
            Ok(w) => (w.div_euclid(NS as i64) as i128, w.rem_euclid(NS as i64) as u32),
            Err(_) => (wall_ns.div_euclid(NS), wall_ns.rem_euclid(NS) as u32),
        };
        if self.ts_second.as_ref().is_none_or(|(s, _)| *s != second) {
            let whole = second.checked_mul(NS).unwrap_or(i128::MIN); // (overflow: out of range too)
            if time::OffsetDateTime::from_unix_timestamp_nanos(whole).is_err() {
                // Out of `time`'s range: `rfc3339` says what it says (the epoch).
                out.push_str(&rfc3339(wall_ns));
                return;
            }
            // "YYYY-MM-DDTHH:MM:SSZ", or "" where `time` cannot format the year: then every
            // instant of this second is "" too.
            let mut text = rfc3339(whole);
            text.pop();
            self.ts_second = Some((second, text));
        }
        let text = &self.ts_second.as_ref().expect("set above").1;
        if text.is_empty() {
            return;
        }
        out.push_str(text);
        if nanos != 0 {
            let mut digits = [b'0'; 9];
            let mut n = nanos;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.push('.');
            out.push_str(std::str::from_utf8(&digits[..len]).expect("ASCII digits"));
        }
        out.push('Z');
    }

    #[cfg(test)]
    fn agent_name(&self, id: u32) -> String {
        let mut s = String::new();
        self.push_agent_name(id, &mut s);
        s
    }

    fn push_agent_name(&self, id: u32, out: &mut String) {
        match self.agent_names.get((id as usize).wrapping_sub(1)) {
            Some(name) => out.push_str(name),
            None => {
                let _ = write!(out, "agent#{id}");
            }
        }
    }

    #[cfg(test)]
    pub fn decode(&mut self, ev: &Event) -> Option<EventRecord> {
        let mut rec = EventRecord::default();
        self.decode_into(ev, &mut rec).then_some(rec)
    }

    /// The record of `ev`, written over every field of `rec` but reusing its strings' buffers
    /// (the event reader decodes every event into the same record). False, with `rec`
    /// untouched, for a record of an unknown kind.
    pub fn decode_into(&mut self, ev: &Event, rec: &mut EventRecord) -> bool {
        let Ok(kind) = Kind::try_from(ev.kind) else { return false };
        let EventRecord {
            ts,
            id,
            agent,
            run,
            pid,
            ppid,
            uid,
            comm,
            exe,
            kind: kind_out,
            target,
            verdict,
            action,
            layer,
            rule,
            detail,
            policy_hash,
        } = rec;
        // The first path; the kinds whose target is something else replace it below.
        target.clear();
        push_path(target, &ev.path, ev.path_len);
        // The executable: an exec event names it; for every other kind `enrich` knows it.
        exe.clear();
        if kind == Kind::ProcessExec {
            exe.push_str(target);
        }
        detail.clear();
        let mut detail = Detail(detail);
        let rule_name = match kind {
            Kind::ProcessExec => {
                if ev.flags & event_flags::INSTANCE_START != 0 {
                    detail.push("new agent instance: a selector matched");
                }
                ""
            }
            Kind::ProcessExit => {
                let code = ev.aux as u32;
                let sig = code & 0x7f;
                let _ = if sig != 0 {
                    write!(detail.next(), "killed by signal {sig}")
                } else {
                    write!(detail.next(), "exit status {}", (code >> 8) & 0xff)
                };
                // (the target is the executable: `enrich` knows it)
                target.clear();
                ""
            }
            Kind::FileWrite => {
                if ev.aux != 0 {
                    let d = detail.next();
                    d.push_str("open ");
                    push_open_flags(d, ev.aux);
                }
                "files.writable"
            }
            Kind::FileRename | Kind::FileLink => {
                let other = path(&ev.path2, ev.path2_len);
                let (from, to) =
                    if ev.flags & event_flags::SECOND_PATH != 0 { (&other, &*target) } else { (&*target, &other) };
                if !to.is_empty() {
                    let _ = write!(detail.next(), "{from} -> {to}");
                }
                if ev.flags & event_flags::SYMLINK != 0 {
                    detail.push(SYMLINK_TEXT);
                }
                "files.writable"
            }
            Kind::FileDelete | Kind::FileMkdir | Kind::FileChmod => "files.writable",
            Kind::SysIoUring => {
                let _ = write!(
                    detail.next(),
                    "io_uring_setup(entries={}): io_uring operations bypass syscall tracing",
                    ev.aux
                );
                assign(target, "io_uring");
                "syscalls.allow"
            }
            Kind::NetRawSocket if ev.aux2 >> 63 == 1 => {
                let (level, opt) = ((ev.aux2 >> 32) & 0x7fff_ffff, ev.aux2 & 0xffff_ffff);
                let why = match (level, opt) {
                    (6, 31) => "TCP_ULP: kernel TLS encrypts what no TLS hook reads",
                    (0, 4) | (41, 57) | (41, 5) | (41, 6) => {
                        "a source route: the first hop is not the allowed destination"
                    }
                    (1, 60) => "SO_ZEROCOPY: a retransmission could carry other bytes than the ones judged",
                    _ => "a socket option the boundary does not follow",
                };
                let _ = write!(detail.next(), "setsockopt(fd={}, level={level}, optname={opt}): {why}", ev.aux);
                assign(target, "raw_socket");
                "syscalls.allow"
            }
            Kind::NetRawSocket => {
                let _ = write!(detail.next(), "socket(family={}, type={})", ev.aux, ev.aux2 & 0xffff_ffff);
                assign(target, "raw_socket");
                "syscalls.allow"
            }
            Kind::SelfTamper if ev.flags & event_flags::PROTECTED_PATH != 0 => {
                let what = Kind::try_from(ev.aux2 as u32).map(|k| k.name()).unwrap_or("file operation");
                let _ = write!(detail.next(), "{what} on one of the daemon's own files");
                if ev.aux2 as u32 == agent_monitor_common::kind::FILE_WRITE && ev.aux != 0 && ev.layer != layer::BPF_LSM
                {
                    let d = detail.next();
                    d.push_str("open ");
                    push_open_flags(d, ev.aux);
                }
                // (the kernel puts the protected path first)
                "self_protection"
            }
            Kind::SelfTamper => match tamper_call::name(ev.aux) {
                Some(call)
                    if ev.aux2 != 0
                        || ev.aux == tamper_call::PROCESS_VM_WRITEV
                        || ev.aux == tamper_call::PIDFD_GETFD =>
                {
                    let daemon_pid = (ev.aux2 & 0xffff_ffff) as u32;
                    let arg = ev.aux2 >> 32;
                    let d = detail.next();
                    let _ = match call {
                            "ptrace" => write!(d, "ptrace(request={arg}) on the daemon"),
                            "process_vm_writev" => write!(d, "process_vm_writev into the daemon"),
                            "pidfd_getfd" => write!(d, "pidfd_getfd(fd {arg}) of the daemon"),
                            "signal" => write!(d, "signal {arg} to the daemon: refused (EPERM)"),
                            "ptrace attach" => write!(
                                d,
                                "ptrace-level access to the daemon (ptrace, process_vm_*, /proc/PID/mem, pidfd_getfd): refused (EPERM)"
                            ),
                            "fcntl" => write!(d, "the daemon made the owner of a descriptor (F_SETOWN: SIGIO to it)"),
                            "prlimit64" => write!(d, "prlimit64(resource {arg}) on the daemon"),
                            "setpriority" | "sched_setscheduler" | "sched_setaffinity" | "ioprio_set"
                            | "sched_setattr" => write!(d, "{call} on the daemon"),
                            _ => write!(d, "{call}(signal {arg}) to the daemon"),
                        };
                    target.clear();
                    let _ = write!(target, "agent-monitor pid {daemon_pid}");
                    "self_protection"
                }
                _ => {
                    let _ = write!(detail.next(), "bpf(cmd={})", ev.aux);
                    assign(target, "bpf");
                    "syscalls.allow"
                }
            },
            Kind::IpcConnect => {
                if target.is_empty() {
                    assign(target, "unix");
                } else {
                    target.insert_str(0, "unix:");
                }
                match ev.aux {
                    0 => {}
                    1 => detail.push("a datagram to a named Unix socket"),
                    3 | 4 => {
                        if ev.aux == 4 {
                            detail.push("a datagram to a named Unix socket");
                        }
                        detail.push("its address could not be read as the call started: refused before it happened (fail closed)");
                    }
                    _ => detail.push("a FIFO opened for writing: a message to whoever reads it"),
                }
                "network.allow"
            }
            Kind::ProcessInject => {
                let pid = (ev.aux2 & 0xffff_ffff) as u32;
                let arg = ev.aux2 >> 32;
                let d = detail.next();
                let _ = match ev.aux {
                    tamper_call::PTRACE => write!(d, "ptrace(request={arg}) of a process outside the agent's instance"),
                    tamper_call::PROCESS_VM_WRITEV => {
                        write!(d, "process_vm_writev into a process outside the agent's instance")
                    }
                    tamper_call::PIDFD_GETFD => {
                        write!(d, "pidfd_getfd(fd {arg}) of a process outside the agent's instance")
                    }
                    tamper_call::IOCTL => write!(d, "ioctl({arg:#x}): typing into a terminal another process reads"),
                    tamper_call::PROC_FD_OPEN if pid == 0 => write!(
                        d,
                        "a pipe or memfd opened for writing by a name that is not one of the process's own descriptors"
                    ),
                    tamper_call::PROC_FD_OPEN => write!(
                        d,
                        "a pipe or memfd of a process outside the agent's instance opened for writing through /proc/{pid}/fd"
                    ),
                    _ => write!(d, "ptrace-level access to a process outside the agent's instance: refused"),
                };
                target.clear();
                if ev.aux == tamper_call::IOCTL {
                    target.push_str("terminal");
                } else {
                    let _ = write!(target, "pid {pid}");
                }
                "process.inject"
            }
            Kind::SysMount => {
                let call = match ev.aux {
                    155 => "pivot_root",
                    161 => "chroot",
                    165 => "mount",
                    166 => "umount2",
                    428 => "open_tree",
                    429 => "move_mount",
                    430 => "fsopen",
                    432 => "fsmount",
                    442 => "mount_setattr",
                    _ => "",
                };
                let _ = write!(
                    detail.next(),
                    "a change to the mount topology ({call}, syscall {}): a mount names a file by what it is not",
                    ev.aux
                );
                assign(target, if call.is_empty() { "mount" } else { call });
                "syscalls.allow"
            }
            Kind::SysCompat => {
                let _ = write!(
                    detail.next(),
                    "a 32-bit system call (number {}, int $0x80 or a 32-bit program): the syscall tracepoints do not see those",
                    ev.aux
                );
                assign(target, "compat syscall");
                "syscalls.allow"
            }
            Kind::SysNamespace if ev.aux2 & 0x1_0400 == 0x400 && ev.aux2 & 0x7e02_0080 == 0 => {
                let _ = write!(
                    detail.next(),
                    "a process sharing its parent's descriptor table (syscall {}, flags {:#x}, CLONE_FILES without \
                     CLONE_THREAD): it would write through a descriptor before a kill of the opener reached it",
                    ev.aux,
                    ev.aux2
                );
                assign(target, "shared descriptor table");
                "syscalls.allow"
            }
            Kind::SysNamespace => {
                let _ = write!(
                    detail.next(),
                    "a new namespace (syscall {}, flags {:#x}): inside its own, a process can mount over anything",
                    ev.aux,
                    ev.aux2
                );
                assign(target, "namespace");
                "syscalls.allow"
            }
            Kind::NetConnect | Kind::NetSend | Kind::NetHttpWrite => {
                // The first "path" is the address: the target is `host:port`, or nothing.
                target.clear();
                if ev.flags & event_flags::NET_ADDR != 0 {
                    push_net_target(target, &ev.path, ev.aux as u16);
                }
                if ev.flags & event_flags::HTTP_REQUEST != 0 {
                    let raw = &ev.path2[..(ev.path2_len as usize).min(ev.path2.len())];
                    let (line, host) = if ev.flags & event_flags::HTTP_GOES_ON != 0 {
                        // An audited write that goes on with a request (its body, the rest of
                        // its headers): its bytes are no request line, whatever they say.
                        (CONTINUATION_TEXT.to_string(), None)
                    } else {
                        http_request(raw)
                    };
                    if !line.is_empty() {
                        detail.push(&line);
                    }
                    if ev.layer == layer::UPROBE {
                        detail.push(TLS_PLAINTEXT_TEXT);
                    }
                    if target.is_empty() {
                        assign(target, host.as_deref().unwrap_or("tls"));
                    } else if let Some(h) = host {
                        let _ = write!(detail.next(), "Host: {h}");
                    }
                } else {
                    if kind == Kind::NetSend {
                        detail.push("datagram");
                    }
                    if ev.flags & event_flags::TLS_INVISIBLE != 0 {
                        detail.push(TLS_INVISIBLE_TEXT);
                    }
                    if ev.flags & event_flags::SNI_MISMATCH != 0 {
                        let sni = cstr(&ev.path2[..(ev.path2_len as usize).min(ev.path2.len())]);
                        if sni.is_empty() {
                            detail.push("TLS server name unreadable or too long: not an allowed host name");
                        } else {
                            let _ = write!(
                                detail.next(),
                                "TLS server name {sni:?} is not an allowed host name for this address"
                            );
                        }
                    }
                }
                if ev.flags & event_flags::OPAQUE_TLS != 0 {
                    detail.push("the destination does not accept TLS the daemon cannot read (no opaque_tls)");
                    "network.opaque_tls"
                } else if ev.flags & event_flags::HTTP_PATH != 0 {
                    detail.push("the request's path is not under the destination's paths");
                    "network.paths"
                } else if kind == Kind::NetHttpWrite {
                    if ev.flags & event_flags::HOST_ELSEWHERE != 0 {
                        detail.push(http_verdict_text(agent_monitor_common::http_verdict::ELSEWHERE));
                    } else if ev.flags & event_flags::HTTP_UNPARSABLE != 0 {
                        detail.push(http_verdict_text(ev.aux as u32));
                    }
                    "network.http_methods"
                } else {
                    "network.allow"
                }
            }
        };
        if ev.layer == layer::LANDLOCK {
            detail.push("refused by the Landlock ruleset of agent-monitor exec (EACCES): nothing was written");
        }
        if ev.flags & event_flags::DENY_FELL_BACK != 0 {
            detail.push("deny requested but no active layer can refuse this operation here: killed instead");
        }
        if ev.flags & event_flags::AFTER_EFFECT != 0 && ev.action == action::KILLED {
            detail.push("the syscall completed before the kill (tracepoint layer)");
        }
        if ev.flags & event_flags::PATH_TRUNCATED != 0 {
            detail.push(PATH_TRUNCATED_TEXT);
        }
        if ev.flags & event_flags::KILL_FROM_USERSPACE != 0 {
            detail.push("refused in the kernel; the instance is killed by the daemon");
        }
        if ev.flags & event_flags::ARG_UNREADABLE != 0 {
            detail.push(ARG_UNREADABLE_TEXT);
        }
        if ev.flags & event_flags::FOREIGN_MOUNT != 0 {
            detail.push(FOREIGN_MOUNT_TEXT);
        }
        if ev.flags & event_flags::HARD_LINK != 0 {
            detail.push(HARD_LINK_TEXT);
        }
        if ev.flags & event_flags::DEVICE != 0 {
            detail.push(DEVICE_TEXT);
        }
        // 0 where the hook could not read them (socket and packet hooks): `enrich` asks /proc.
        *ppid = ev.ppid;
        comm.clear();
        push_cstr(comm, &ev.comm);
        ts.clear();
        self.push_ts(self.boot_to_wall_ns + ev.ts_ns as i128, ts);
        id.clear();
        self.push_next_id(id);
        agent.clear();
        self.push_agent_name(ev.agent & (AGENT_SLOTS_PER_GEN - 1), agent);
        run.clear();
        push_hex16(run, ev.run_id);
        *pid = ev.pid;
        *uid = ev.uid;
        *kind_out = kind;
        // (a value the kernel never writes reads as the least claim: allowed, nothing done)
        *verdict = Verdict::try_from(ev.verdict).unwrap_or(Verdict::Allowed);
        *action = Action::try_from(ev.action).unwrap_or(Action::None);
        *layer = Layer::try_from(ev.layer).unwrap_or(Layer::Userspace);
        assign(rule, rule_name);
        if ev.agent & AGENT_GEN_KNOWN != 0 {
            // (Option's clone_from reuses the string already there)
            policy_hash.clone_from(&self.policy_by_gen[((ev.agent / AGENT_SLOTS_PER_GEN) & 1) as usize]);
        } else {
            *policy_hash = None;
        }
        true
    }
}

/// The HTTP verdicts that are the request's own grammar (no `http_methods` or `paths` allows
/// them), as their detail text.
pub fn http_grammar_texts() -> impl Iterator<Item = &'static str> {
    use agent_monitor_common::http_verdict as h;
    [
        h::NOT_A_REQUEST,
        h::SPLIT,
        h::BODY,
        h::H2,
        h::UNREADABLE,
        h::TOO_LONG,
        h::IP_OPTIONS,
        h::FRAMING,
        h::NESTED,
        h::URGENT,
        h::ELSEWHERE,
    ]
    .into_iter()
    .map(http_verdict_text)
}

/// What the HTTP parser found wrong (`agent_monitor_common::http_verdict`).
pub fn http_verdict_text(v: u32) -> &'static str {
    use agent_monitor_common::http_verdict as h;
    match v {
        h::NOT_A_REQUEST => "the bytes where a request must start are not an allowed method followed by a space",
        h::SPLIT => "a request start cut before its method could be read",
        h::BODY => "a body on a request that does not write, or a body not framed by Content-Length",
        h::H2 => "an HTTP/2 request that is not a GET, or a frame that writes",
        h::UNREADABLE => "the request bytes could not be read",
        h::TOO_LONG => "more header bytes than the parser follows in one write",
        h::IP_OPTIONS => "IP options or IPv6 extension headers on the connection",
        h::FRAMING => "a line not ended by CR LF, or a second Content-Length: a lenient server could read another request there",
        h::NESTED => "a TLS write made inside another one of the same thread: the parser follows one at a time",
        h::URGENT => "TCP urgent data (MSG_OOB): the server's stream leaves out a byte the parser read",
        h::ELSEWHERE => {
            "a TLS write its Host: header allowed for one destination, on a connection to another (the Host: is not this connection's server)"
        }
        _ => "not read-only HTTP",
    }
}

/// `format!("{v:016x}")`, appended.
fn push_hex16(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::{kind, verdict};

    #[test]
    fn ts_is_rfc3339() {
        let mut d = Decoder::new(vec![]);
        let now = clock_ns(libc::CLOCK_REALTIME);
        const S: i128 = 1_000_000_000;
        let max = 253_402_300_799 * S; // 9999-12-31T23:59:59Z
        let year0 = -62_167_219_200 * S; // 0000-01-01T00:00:00Z
        let mut cases =
            vec![now, now + 1, now + S, now, 0, 1, -1, -S - 1, 999_999_999, S, 100_000_000, 120_000_000_000];
        cases.extend([max, max + S - 1, max + S, max + S + 5, year0, year0 - 1, i128::MAX, i128::MIN, -S * S * S]);
        cases.extend((0..2000).map(|i| now + i * 123_456_789 - 1_000_000 * (i % 7)));
        for ns in cases {
            let mut ts = String::from("stale");
            ts.clear();
            d.push_ts(ns, &mut ts);
            assert_eq!(ts, rfc3339(ns), "{ns}");
        }
    }

    #[test]
    fn decode_into_overwrites_every_field() {
        let mut d = Decoder::new(vec!["forum-analyst".into(), "b".into()]);
        d.policy_by_gen[0] = Some("hash0".into());
        let mut exec = raw(kind::PROCESS_EXEC);
        exec.agent = 1 | agent_monitor_common::AGENT_GEN_KNOWN;
        exec.flags = event_flags::INSTANCE_START;
        exec.path_len = set(&mut exec.path, "/usr/bin/python3.11");
        let mut conn = raw(kind::NET_CONNECT);
        conn.agent = 2;
        conn.pid = 43;
        conn.flags = event_flags::NET_ADDR;
        conn.path[..16].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        conn.aux = 443;
        conn.comm = [0; agent_monitor_common::COMM_LEN];
        // (decoding has effects on the id sequence and the timestamp cache: a second decoder
        // sees the same events)
        let mut d2 = Decoder::new(d.agent_names.clone());
        d2.policy_by_gen = d.policy_by_gen.clone();
        d2.boot_to_wall_ns = d.boot_to_wall_ns;
        let mut rec = EventRecord::default();
        for ev in [exec, conn, exec, raw(kind::PROCESS_EXIT), conn, raw(kind::PROCESS_EXIT)] {
            assert!(d.decode_into(&ev, &mut rec));
            let mut fresh = d2.decode(&ev).unwrap();
            fresh.id = rec.id.clone();
            assert_eq!(rec, fresh);
        }
    }

    fn raw(kind: u32) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind;
        e.agent = 1;
        e.pid = 42;
        e.ppid = 1;
        e.run_id = 0xabc;
        e.comm[..5].copy_from_slice(b"agent");
        e
    }

    fn set(buf: &mut [u8], s: &str) -> u32 {
        buf[..s.len()].copy_from_slice(s.as_bytes());
        s.len() as u32
    }

    #[test]
    fn decodes_a_killed_append() {
        let mut d = Decoder::new(vec!["forum-analyst".into()]);
        let mut e = raw(kind::FILE_WRITE);
        e.verdict = verdict::VIOLATION;
        e.action = action::KILLED;
        e.layer = layer::TRACEPOINT;
        e.flags = event_flags::AFTER_EFFECT;
        e.aux = 0o2001;
        e.path_len = set(&mut e.path, "/etc/motd");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.agent, "forum-analyst");
        assert_eq!(r.kind, Kind::FileWrite);
        assert_eq!(r.target, "/etc/motd");
        assert_eq!(r.verdict, Verdict::Violation);
        assert_eq!(r.action, Action::Killed);
        assert_eq!(r.layer, Layer::Tracepoint);
        assert_eq!(r.rule, "files.writable");
        assert_eq!(r.run, "0000000000000abc");
        assert_eq!(r.comm, "agent");
        assert!(r.detail.contains("O_WRONLY|O_APPEND"), "{}", r.detail);
        assert!(r.detail.contains("completed before the kill"), "{}", r.detail);
        let json = serde_json::to_value(&r).unwrap();
        for f in [
            "ts", "id", "agent", "pid", "ppid", "uid", "comm", "exe", "kind", "target", "verdict", "action", "layer",
            "rule", "detail",
        ] {
            assert!(json.get(f).is_some(), "missing {f}");
        }
    }

    #[test]
    fn rename_names_the_outside_path() {
        let mut d = Decoder::new(vec!["a".into()]);
        let mut e = raw(kind::FILE_RENAME);
        e.flags = event_flags::SECOND_PATH;
        e.path_len = set(&mut e.path, "/etc/x");
        e.path2_len = set(&mut e.path2, "/tmp/x");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.target, "/etc/x");
        assert_eq!(r.detail, "/tmp/x -> /etc/x");
    }

    #[test]
    fn exec_names_the_exe_and_exit_says_how() {
        let mut d = Decoder::new(vec!["a".into()]);
        let mut e = raw(kind::PROCESS_EXEC);
        e.flags = event_flags::INSTANCE_START;
        e.path_len = set(&mut e.path, "/usr/bin/python3.11");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.exe, "/usr/bin/python3.11");
        assert!(r.detail.contains("new agent instance"));
        let mut x = raw(kind::PROCESS_EXIT);
        x.aux = 9;
        let r = d.decode(&x).unwrap();
        assert_eq!(r.detail, "killed by signal 9");
    }

    #[test]
    fn network_targets_and_http_requests() {
        let mut d = Decoder::new(vec!["forum".into()]);
        let mut e = raw(kind::NET_HTTP_WRITE);
        e.flags = event_flags::NET_ADDR | event_flags::HTTP_REQUEST;
        e.verdict = verdict::VIOLATION;
        e.action = action::DENIED;
        e.layer = layer::CGROUP;
        e.path[10] = 0xff;
        e.path[11] = 0xff;
        e.path[12..16].copy_from_slice(&[127, 0, 0, 1]);
        e.path_len = 16;
        e.aux = 8080;
        e.path2_len = set(&mut e.path2, "POST /answer HTTP/1.1\r\nHost: forum.local:8080\r\n");
        let r = d.decode(&e).unwrap();
        assert_eq!(r.target, "127.0.0.1:8080");
        assert_eq!(r.detail, "POST /answer HTTP/1.1; Host: forum.local:8080");
        assert_eq!(r.rule, "network.http_methods");

        let mut t = raw(kind::NET_HTTP_WRITE);
        t.flags = event_flags::HTTP_REQUEST;
        t.layer = layer::UPROBE;
        t.path2_len = set(&mut t.path2, "PUT /x HTTP/1.1\r\nhost: forum.local\r\n\r\n");
        let r = d.decode(&t).unwrap();
        assert_eq!(r.target, "forum.local");
        assert!(r.detail.starts_with("PUT /x HTTP/1.1; seen in the TLS library"), "{}", r.detail);
        // A body that reads like a request is no request line.
        t.flags |= event_flags::HTTP_GOES_ON;
        let r = d.decode(&t).unwrap();
        assert!(r.detail.starts_with(CONTINUATION_TEXT), "{}", r.detail);
        assert_eq!(r.target, "tls");

        let mut c = raw(kind::NET_CONNECT);
        c.flags = event_flags::NET_ADDR;
        c.path[..16].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        c.aux = 443;
        assert_eq!(d.decode(&c).unwrap().target, "[::1]:443");

        let mut u = raw(kind::IPC_CONNECT);
        u.path_len = set(&mut u.path, "/run/docker.sock");
        assert_eq!(d.decode(&u).unwrap().target, "unix:/run/docker.sock");
    }

    #[test]
    fn unknown_kind_is_dropped_and_ids_are_unique() {
        let mut d = Decoder::new(vec![]);
        assert!(d.decode(&raw(999)).is_none());
        let a = d.next_id();
        assert_ne!(a, d.next_id());
        assert_eq!(d.agent_name(7), "agent#7");
    }
}
