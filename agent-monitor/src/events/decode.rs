//! Decoding kernel records into [`EventRecord`]s: names, targets, rules and honest details.
use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use agent_monitor_common::{action, event_flags, layer, verdict, Event, Kind, PATH_LEN};
use serde::Serialize;

/// One event line (DESIGN.md, "Events").
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRecord {
    pub ts: String,
    pub id: String,
    pub agent: String,
    /// The agent instance (run id): the same for a process and all its descendants.
    pub run: String,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub kind: String,
    pub target: String,
    pub verdict: String,
    pub action: String,
    pub layer: String,
    pub rule: String,
    pub detail: String,
    /// The hash of the policy that made the decision (absent for process lifecycle events,
    /// and for decisions made under a policy this daemon did not load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        verdict::VIOLATION => "violation",
        _ => "allowed",
    }
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        action::ALERTED => "alerted",
        action::DENIED => "denied",
        action::KILLED => "killed",
        action::HELD => "held",
        _ => "none",
    }
}

pub fn layer_name(l: u32) -> &'static str {
    match l {
        layer::TRACEPOINT => "tracepoint",
        layer::CGROUP => "cgroup",
        layer::BPF_LSM => "bpf_lsm",
        layer::LANDLOCK => "landlock",
        layer::UPROBE => "uprobe",
        _ => "userspace",
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn path(b: &[u8], len: u32) -> String {
    let len = (len as usize).min(PATH_LEN).min(b.len());
    cstr(&b[..len])
}

/// Human-readable `open(2)` flags for details.
pub fn open_flags(f: u64) -> String {
    let mut v = vec![match f & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    }];
    for (bit, name) in [(0o100, "O_CREAT"), (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o200, "O_EXCL")] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    v.join("|")
}

/// `host:port` for a 16-byte IPv6 (or v4-mapped) address.
pub fn net_target(addr: &[u8], port: u16) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&addr[..16]);
    let v6 = std::net::Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => format!("{v4}:{port}"),
        None => format!("[{v6}]:{port}"),
    }
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

fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Turns wire records into event records; keeps the per-process executable cache.
pub struct Decoder {
    pub agent_names: Vec<String>,
    /// The policy hash in force in each kernel generation (see `agent_monitor_common::agent_slot`).
    pub policy_by_gen: [Option<String>; 2],
    /// Seconds+nanos to add to CLOCK_BOOTTIME to get wall-clock time.
    boot_to_wall_ns: i128,
    exe: HashMap<u32, String>,
    prefix: String,
    seq: AtomicU64,
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
            exe: HashMap::new(),
            prefix: format!("{:x}", (wall / 1_000_000) as u64),
            seq: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn agent_name(&self, id: u32) -> String {
        self.agent_names.get((id as usize).wrapping_sub(1)).cloned().unwrap_or_else(|| format!("agent#{id}"))
    }

    fn exe_of(&mut self, pid: u32) -> String {
        if let Some(e) = self.exe.get(&pid) {
            return e.clone();
        }
        // A process the daemon did not see exec (adopted, or a fork that has not exec'd): ask
        // /proc once; its exec or exit event replaces or drops the entry.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        if !exe.is_empty() {
            self.exe.insert(pid, exe.clone());
        }
        exe
    }

    pub fn decode(&mut self, ev: &Event) -> Option<EventRecord> {
        let kind = Kind::try_from(ev.kind).ok()?;
        let target = path(&ev.path, ev.path_len);
        let other = path(&ev.path2, ev.path2_len);
        let exe = match kind {
            Kind::ProcessExec => {
                self.exe.insert(ev.pid, target.clone());
                target.clone()
            }
            Kind::ProcessExit => self.exe.remove(&ev.pid).unwrap_or_default(),
            _ => self.exe_of(ev.pid),
        };
        let mut detail = Vec::new();
        let rule;
        let target = match kind {
            Kind::ProcessExec => {
                rule = String::new();
                if ev.flags & event_flags::INSTANCE_START != 0 {
                    detail.push("new agent instance: a selector matched".to_string());
                }
                target
            }
            Kind::ProcessExit => {
                rule = String::new();
                let code = ev.aux as u32;
                let sig = code & 0x7f;
                if sig != 0 {
                    detail.push(format!("killed by signal {sig}"));
                } else {
                    detail.push(format!("exit status {}", (code >> 8) & 0xff));
                }
                exe.clone()
            }
            Kind::FileWrite => {
                rule = "files.writable".into();
                if ev.aux != 0 {
                    detail.push(format!("open {}", open_flags(ev.aux)));
                }
                target
            }
            Kind::FileRename | Kind::FileLink => {
                rule = "files.writable".into();
                let (from, to) = if ev.flags & event_flags::SECOND_PATH != 0 {
                    (other, target.clone())
                } else {
                    (target.clone(), other)
                };
                if !to.is_empty() {
                    detail.push(format!("{from} -> {to}"));
                }
                target
            }
            Kind::FileDelete | Kind::FileMkdir | Kind::FileChmod => {
                rule = "files.writable".into();
                target
            }
            Kind::SysIoUring => {
                rule = "syscalls.allow".into();
                detail.push(format!("io_uring_setup(entries={}): io_uring operations bypass syscall tracing", ev.aux));
                "io_uring".into()
            }
            Kind::NetRawSocket => {
                rule = "syscalls.allow".into();
                detail.push(format!("socket(family={}, type={})", ev.aux, ev.aux2 & 0xffff_ffff));
                "raw_socket".into()
            }
            Kind::SelfTamper if ev.flags & event_flags::PROTECTED_PATH != 0 => {
                rule = "self_protection".into();
                let what = Kind::try_from(ev.aux2 as u32).map(|k| k.name()).unwrap_or("file operation");
                detail.push(format!("{what} on one of the daemon's own files"));
                if ev.aux2 as u32 == agent_monitor_common::kind::FILE_WRITE && ev.aux != 0 && ev.layer != layer::BPF_LSM
                {
                    detail.push(format!("open {}", open_flags(ev.aux)));
                }
                // (the kernel puts the protected path first)
                target
            }
            Kind::SelfTamper => {
                let call = match ev.aux {
                    62 => Some("kill"),
                    200 => Some("tkill"),
                    234 => Some("tgkill"),
                    101 => Some("ptrace"),
                    311 => Some("process_vm_writev"),
                    129 => Some("rt_sigqueueinfo"),
                    297 => Some("rt_tgsigqueueinfo"),
                    424 => Some("pidfd_send_signal"),
                    438 => Some("pidfd_getfd"),
                    1000 => Some("signal"),
                    1001 => Some("ptrace attach"),
                    _ => None,
                };
                match call {
                    Some(call) if ev.aux2 != 0 || ev.aux == 311 || ev.aux == 438 => {
                        rule = "self_protection".into();
                        let target = (ev.aux2 & 0xffff_ffff) as u32;
                        let arg = ev.aux2 >> 32;
                        detail.push(match call {
                            "ptrace" => format!("ptrace(request={arg}) on the daemon"),
                            "process_vm_writev" => "process_vm_writev into the daemon".to_string(),
                            "pidfd_getfd" => format!("pidfd_getfd(fd {arg}) of the daemon"),
                            "signal" => format!("signal {arg} to the daemon: refused (EPERM)"),
                            "ptrace attach" => {
                                "ptrace-level access to the daemon (ptrace, process_vm_*, /proc/PID/mem, pidfd_getfd): refused (EPERM)".to_string()
                            }
                            _ => format!("{call}(signal {arg}) to the daemon"),
                        });
                        format!("agent-monitor pid {target}")
                    }
                    _ => {
                        rule = "syscalls.allow".into();
                        detail.push(format!("bpf(cmd={})", ev.aux));
                        "bpf".into()
                    }
                }
            }
            Kind::IpcConnect => {
                rule = "network.allow".into();
                format!("unix:{target}")
            }
            Kind::NetConnect | Kind::NetSend | Kind::NetHttpWrite => {
                rule = if kind == Kind::NetHttpWrite { "network.http_methods".into() } else { "network.allow".into() };
                let addr = if ev.flags & event_flags::NET_ADDR != 0 {
                    net_target(&ev.path, ev.aux as u16)
                } else {
                    String::new()
                };
                if ev.flags & event_flags::HTTP_REQUEST != 0 {
                    let raw = &ev.path2[..(ev.path2_len as usize).min(ev.path2.len())];
                    let (line, host) = http_request(raw);
                    if !line.is_empty() {
                        detail.push(line);
                    }
                    if ev.layer == layer::UPROBE {
                        detail.push("seen in the TLS library before encryption".into());
                    }
                    if addr.is_empty() {
                        host.unwrap_or_else(|| "tls".into())
                    } else {
                        if let Some(h) = host {
                            detail.push(format!("Host: {h}"));
                        }
                        addr
                    }
                } else {
                    if kind == Kind::NetSend {
                        detail.push("datagram".into());
                    }
                    if ev.flags & event_flags::TLS_INVISIBLE != 0 {
                        detail.push(
                            "TLS handshake from a process whose TLS library is not hooked (statically linked?): its HTTP methods are not visible".into(),
                        );
                    }
                    if ev.flags & event_flags::SNI_MISMATCH != 0 {
                        let sni = cstr(&ev.path2[..(ev.path2_len as usize).min(ev.path2.len())]);
                        detail.push(if sni.is_empty() {
                            "TLS server name unreadable or too long: not an allowed host name".to_string()
                        } else {
                            format!("TLS server name {sni:?} is not an allowed host name for this address")
                        });
                    }
                    addr
                }
            }
        };
        if ev.flags & event_flags::DENY_FELL_BACK != 0 {
            detail.push("deny requested but no active layer can refuse this operation here: killed instead".into());
        }
        if ev.flags & event_flags::AFTER_EFFECT != 0 && ev.action == action::KILLED {
            detail.push("the syscall completed before the kill (tracepoint layer)".into());
        }
        if ev.flags & event_flags::PATH_TRUNCATED != 0 {
            detail.push("path truncated".into());
        }
        if ev.flags & event_flags::KILL_FROM_USERSPACE != 0 {
            detail.push("refused in the kernel; the instance is killed by the daemon".into());
        }
        let ppid = if ev.ppid == 0 { proc_ppid(ev.pid).unwrap_or(0) } else { ev.ppid };
        let comm = if ev.comm[0] == 0 {
            std::fs::read_to_string(format!("/proc/{}/comm", ev.pid)).map(|c| c.trim().to_string()).unwrap_or_default()
        } else {
            cstr(&ev.comm)
        };
        Some(EventRecord {
            ts: rfc3339(self.boot_to_wall_ns + ev.ts_ns as i128),
            id: self.next_id(),
            agent: self.agent_name(ev.agent & (agent_monitor_common::AGENT_SLOTS_PER_GEN - 1)),
            run: format!("{:016x}", ev.run_id),
            pid: ev.pid,
            ppid,
            uid: ev.uid,
            comm,
            exe,
            kind: kind.name().into(),
            target,
            verdict: verdict_name(ev.verdict).into(),
            action: action_name(ev.action).into(),
            layer: layer_name(ev.layer).into(),
            rule,
            detail: detail.join("; "),
            policy_hash: if ev.agent & agent_monitor_common::AGENT_GEN_KNOWN != 0 {
                self.policy_by_gen[((ev.agent / agent_monitor_common::AGENT_SLOTS_PER_GEN) & 1) as usize].clone()
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::kind;

    /// The userspace event path without the ring buffer, for `cargo xtask bench`: decode, then
    /// the decision's bookkeeping (metrics, JSON), then the audit chain and the write into a
    /// buffer. Run with `cargo test --release -p agent-monitor decode_throughput -- --ignored
    /// --nocapture`; prints one `decode_throughput STAGE EVENTS_PER_SEC` line per stage.
    #[test]
    #[ignore]
    fn decode_throughput() {
        let n = 400_000u32;
        let mut ev = raw(kind::FILE_WRITE);
        ev.pid = std::process::id();
        ev.agent = 1 | agent_monitor_common::AGENT_GEN_KNOWN;
        ev.verdict = verdict::VIOLATION;
        ev.action = action::KILLED;
        ev.layer = layer::TRACEPOINT;
        ev.aux = 0o1101;
        ev.flags = event_flags::AFTER_EFFECT;
        let p = b"/home/agent/work/../notes/answer.md";
        ev.path[..p.len()].copy_from_slice(p);
        ev.path_len = p.len() as u32;
        let metrics = crate::metrics::Metrics::new();
        let mut chain = crate::audit::Chain::new();
        let mut d = Decoder::new(vec!["forum-analyst".into()]);
        d.policy_by_gen[0] = Some("0b69082506b9d9ed".into());
        let mut out: Vec<u8> = Vec::with_capacity(256 << 20);
        for stage in ["decode", "decode+metrics+json", "decode+metrics+json+chain+write"] {
            out.clear();
            let t = std::time::Instant::now();
            for i in 0..n {
                ev.ts_ns = i as u64;
                let rec = d.decode(&ev).unwrap();
                if stage == "decode" {
                    std::hint::black_box(&rec);
                    continue;
                }
                metrics.events.with_label_values(&[&rec.agent, &rec.kind, &rec.verdict]).inc();
                metrics.violations.with_label_values(&[&rec.agent, &rec.kind, &rec.action]).inc();
                let json = serde_json::to_string(&rec).unwrap();
                if stage == "decode+metrics+json" {
                    std::hint::black_box(&json);
                    continue;
                }
                out.extend_from_slice(chain.seal(&json).as_bytes());
                out.push(b'\n');
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!("decode_throughput {stage} {rate:.0}");
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
        assert_eq!(r.kind, "file.write");
        assert_eq!(r.target, "/etc/motd");
        assert_eq!(r.verdict, "violation");
        assert_eq!(r.action, "killed");
        assert_eq!(r.layer, "tracepoint");
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
    fn exec_then_exit_carries_the_exe() {
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
        assert_eq!(r.exe, "/usr/bin/python3.11");
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
