//! The event pipeline: each record from the ring buffer is decoded (`events::decode`), enriched
//! (`events::enrich`), acted on (a kill to finish across the instance, a hold to open, a new
//! instance's TLS to hook) and recorded (events log with its chain, metrics, journal, webhooks).
use std::sync::Arc;

use agent_monitor_common::{event_flags, kind, Action, Event, Kind};
use tracing::warn;

use super::state::State;
use crate::events::{reader::BatchHandler, EventRecord, ProcCache};

pub struct Pipeline {
    state: Arc<State>,
    /// Every event is decoded into this record, reusing its buffers.
    rec: EventRecord,
    procs: ProcCache,
}

impl Pipeline {
    pub fn new(state: Arc<State>) -> Self {
        Pipeline { state, rec: EventRecord::default(), procs: ProcCache::default() }
    }

    fn event(&mut self, ev: &Event) {
        let s = &self.state;
        if !s.decoder.lock().unwrap().decode_into(ev, &mut self.rec) {
            s.metrics.decode_errors.inc();
            warn!(kind = ev.kind, "event with an unknown kind dropped");
            return;
        }
        self.procs.fill(ev, &mut self.rec);
        let rec = &mut self.rec;
        if ev.flags & event_flags::UNIX_UNCHECKED != 0 && !unix_target_exists(ev.pid, &rec.target) {
            // Refused before the kernel's lookup, to a socket that does not exist: the connect
            // would have failed and reached nothing. No violation, no kill.
            return;
        }
        if ev.kind == kind::PROCESS_EXEC {
            // The TLS stacks the new image carries in its own files (Node.js's OpenSSL in its
            // executable), found before its handshakes are let go. Parsed once per file.
            let found = if s.tls_uprobes != crate::policy::TlsUprobes::Off {
                crate::bpf::tls_libs::mapped_tls_libs(&[(ev.pid, Default::default())])
            } else {
                Default::default()
            };
            let mut k = s.kernel.lock().unwrap();
            if !found.is_empty() {
                k.hook_new_tls_libs(found);
            }
            if ev.flags & event_flags::INSTANCE_START != 0 {
                // Hook the TLS of a new agent instance's first process as soon as it is read,
                // and know the mounts of the namespace it was started in.
                learn_agent_mounts(&mut k.ebpf, ev.pid);
                if let Some(armed) = k.hook_instance_tls(ev.run_id, ev.pid) {
                    s.metrics.tls_hooked.set(armed as i64);
                }
            }
        }
        if ev.flags & event_flags::TLS_INVISIBLE != 0 {
            s.tls_invisible.lock().unwrap().insert(ev.pid);
        }
        if rec.action == Action::Held {
            open_hold(s, ev, rec);
        }
        if rec.action == Action::Killed {
            // The kernel killed the offending process; finish the rest of its instance.
            let (run_id, st) = (ev.run_id, s.clone());
            tokio::task::spawn_blocking(move || st.kill_instance(run_id));
        }
        s.record(ev, rec);
    }
}

impl BatchHandler for Pipeline {
    fn batch(&mut self, events: &[Event]) {
        for ev in events {
            self.event(ev);
        }
        // One write(2) per batch, not per event.
        self.state.flush();
    }
}

/// Does the Unix socket of an `ipc.connect` target (`unix:PATH`, `unix:@NAME`) exist, as process
/// `pid` sees it (its mount and network namespaces)? An unknown target (the address could not
/// be read) counts as existing: fail closed.
fn unix_target_exists(pid: u32, target: &str) -> bool {
    use std::io::ErrorKind::NotFound;
    use std::os::unix::fs::FileTypeExt;
    let Some(addr) = target.strip_prefix("unix:") else { return true };
    if let Some(name) = addr.strip_prefix('@') {
        // Abstract: listed in the process's network namespace, as `@NAME`.
        let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else { return true };
        let want = format!("@{name}");
        return list.lines().any(|l| l.split_whitespace().nth(7) == Some(want.as_str()));
    }
    // Dropped only where nothing is there for certain: a relative path is taken from the
    // process's working directory, a symlink is followed (a link to a socket is a socket), and
    // anything that cannot be looked at is taken to exist (a red team's review: a relative
    // path or a symlink to a listening socket was dropped, unrecorded and not killed).
    //
    // The process may have exited by now. A zombie still has its /proc/PID directory but no
    // root or working directory (they read as "not found"): a lookup through them says nothing
    // about the socket (CI saw a refused datagram go unrecorded that way), so the process's root
    // is checked to resolve before and after a "not found" is believed.
    let root = format!("/proc/{pid}/root");
    let sees = || std::fs::read_link(&root).is_ok();
    let from_host = || match std::fs::metadata(addr) {
        Ok(m) => m.file_type().is_socket(),
        Err(e) => e.kind() != NotFound,
    };
    if !sees() {
        // Gone (or a zombie): look from the host; its own root went with it.
        return !addr.starts_with('/') || from_host();
    }
    let seen = if addr.starts_with('/') {
        std::fs::metadata(format!("{root}{addr}"))
    } else {
        std::fs::metadata(format!("/proc/{pid}/cwd/{addr}"))
    };
    match seen {
        Ok(m) => m.file_type().is_socket(),
        Err(e) if e.kind() == NotFound && sees() => false,
        Err(_) if !sees() => !addr.starts_with('/') || from_host(),
        Err(_) => true,
    }
}

/// An agent started in a mount namespace other than the host's (a service with a private
/// `/tmp`, a container): the mounts its launcher set up are known too. Mounts made after that
/// (by the agent: a violation of their own) never are.
pub fn learn_agent_mounts(ebpf: &mut aya::Ebpf, pid: u32) {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let own = ns(&pid.to_string());
    if own.is_some() && own != ns("1") {
        crate::bpf::maps::learn_mounts(ebpf, &crate::bpf::maps::mount_ids(&pid.to_string()), true);
    }
}

/// A held event becomes a pending hold; its detail says how to decide it.
fn open_hold(s: &State, ev: &Event, rec: &mut EventRecord) {
    let Ok(kind) = Kind::try_from(ev.kind) else { return };
    let h = s.holds.create(ev, &rec.agent, kind, &rec.target, &rec.detail, &rec.ts);
    s.metrics.holds_pending.set(s.holds.len() as i64);
    if h.socket.is_some() {
        // The kernel stops the writer as its send returns when it can; this covers the case
        // where the packet left from another context.
        // SAFETY: plain kill(2).
        unsafe { libc::kill(h.pid as i32, libc::SIGSTOP) };
    }
    let what = if h.socket.is_some() {
        "held in the kernel before it reached the network, the writer stopped"
    } else if h.paused {
        "paused before the call"
    } else {
        "refused and held as a request"
    };
    rec.detail = format!(
        "{}{}{what}: `agent-monitor approve {id}` or `agent-monitor deny {id}`",
        rec.detail,
        if rec.detail.is_empty() { "" } else { "; " },
        id = h.id
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use agent_monitor_common::{action, layer, verdict};

    use crate::{
        events::{Decoder, EventRecord, ProcCache},
        metrics::{EventSeries, Metrics},
        sinks::{audit::Chain, log::EventLog},
    };

    use super::*;

    /// A Unix refusal is dropped only where nothing is there: a symlink to a listening socket,
    /// a relative path and an address that cannot be looked at are kept.
    #[test]
    fn a_unix_refusal_is_dropped_only_where_no_socket_is() {
        let dir = std::env::temp_dir().join(format!("am-unix-exists-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::os::unix::fs::symlink(&sock, dir.join("link")).unwrap();
        std::fs::write(dir.join("file"), "").unwrap();
        let me = std::process::id();
        let t = |p: &std::path::Path| format!("unix:{}", p.display());
        assert!(unix_target_exists(me, &t(&sock)));
        assert!(unix_target_exists(me, &t(&dir.join("link"))), "a symlink to a socket");
        assert!(!unix_target_exists(me, &t(&dir.join("missing"))));
        assert!(!unix_target_exists(me, &t(&dir.join("file"))), "not a socket: a connect fails");
        assert!(!unix_target_exists(me, "unix:no-such-relative-socket-here"));
        assert!(unix_target_exists(u32::MAX - 1, "unix:relative-of-a-gone-process"));
        // A process that exited and was not yet reaped (a zombie: /proc/PID is there, its root
        // is not) still sees the socket, as the host does.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        let stat = || std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default();
        for _ in 0..500 {
            if stat().rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(stat().contains(") Z"), "the child did not become a zombie: {}", stat());
        assert!(unix_target_exists(zombie, &t(&sock)), "a zombie's socket target");
        assert!(!unix_target_exists(zombie, &t(&dir.join("missing"))));
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The daemon's userspace event path without the ring buffer, for `cargo xtask bench`; run
    /// with `cargo test --release -p agent-monitor decode_throughput -- --ignored --nocapture`.
    /// Prints one `decode_throughput STAGE EVENTS_PER_SEC` line per stage:
    /// - `decode`: the pipeline's decode and enrichment, into the reused record, under the
    ///   decoder's lock;
    /// - `decode+metrics+json`: and the counting and the JSON of `EventLog::record`;
    /// - `decode+metrics+json+chain+write`: and the rest of `EventLog::record` (audit chain,
    ///   write) under its lock, into the daemon's own sink (`open_sink`) on a file in the temp
    ///   directory, flushed once per ring-buffer batch as the pipeline does.
    ///
    /// That is `State::record` but for the `warn!` each violation also logs (no subscriber here)
    /// and webhooks (none configured); holds and `kill_instance` are not per-event work.
    #[test]
    #[ignore]
    fn decode_throughput() {
        let n = 400_000u32;
        // Events in a 64 KiB wakeup of the ring buffer: the pipeline flushes once per batch.
        let batch = (64 << 10) / std::mem::size_of::<Event>() as u32;
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.kind = kind::FILE_WRITE;
        ev.pid = std::process::id();
        ev.ppid = 1;
        ev.run_id = 0xabc;
        ev.comm[..5].copy_from_slice(b"agent");
        ev.agent = 1 | agent_monitor_common::AGENT_GEN_KNOWN;
        ev.verdict = verdict::VIOLATION;
        ev.action = action::KILLED;
        ev.layer = layer::TRACEPOINT;
        ev.aux = 0o1101;
        ev.flags = event_flags::AFTER_EFFECT;
        let p = b"/home/agent/work/../notes/answer.md";
        ev.path[..p.len()].copy_from_slice(p);
        ev.path_len = p.len() as u32;
        let metrics = Metrics::new();
        let decoder = Mutex::new({
            let mut d = Decoder::new(vec!["forum-analyst".into()]);
            d.policy_by_gen[0] = Some("0b69082506b9d9ed".into());
            d
        });
        let mut procs = ProcCache::default();
        let file = std::env::temp_dir().join(format!("am-decode-throughput-{}.jsonl", std::process::id()));
        let (live, _) = tokio::sync::broadcast::channel(16);
        let sink = if std::env::var_os("AM_NULL").is_some() { "/dev/null" } else { file.to_str().unwrap() };
        let log = Mutex::new(EventLog::new(crate::sinks::log::open_sink(sink).unwrap(), Chain::new(), live));
        let mut series = EventSeries::default();
        let mut rec = EventRecord::default();
        let mut line = String::new();
        for stage in ["decode", "decode+metrics+json", "decode+metrics+json+chain+write"] {
            let t = std::time::Instant::now();
            for i in 0..n {
                ev.ts_ns = i as u64;
                assert!(decoder.lock().unwrap().decode_into(&ev, &mut rec));
                procs.fill(&ev, &mut rec);
                match stage {
                    "decode" => {
                        std::hint::black_box(&rec);
                    }
                    "decode+metrics+json" => {
                        series.count(&metrics, &ev, &rec.agent);
                        line.clear();
                        rec.write_json(&mut line);
                        std::hint::black_box(&line);
                    }
                    _ => {
                        let mut log = log.lock().unwrap();
                        log.record(&metrics, &ev, &rec).unwrap();
                        if (i + 1) % batch == 0 {
                            log.flush().unwrap();
                        }
                    }
                }
            }
            log.lock().unwrap().flush().unwrap();
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!("decode_throughput {stage} {rate:.0}");
        }
        let written = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(u64::MAX);
        let _ = std::fs::remove_file(&file);
        assert!(written > n as u64 * 400, "{written} bytes for {n} events");
    }
}
