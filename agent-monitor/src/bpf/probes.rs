//! The probe table: every program, where it attaches, whether the daemon can start without it,
//! and the layer it serves; and loading (verifying) and attaching one row.
//!
//! A new hook is a program in `agent-monitor-ebpf/src/probes/` and one row in [`PROBES`].
use std::fs::File;

use agent_monitor_common::Layer;
use anyhow::{bail, Context as _};
use aya::{
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr,
        Program, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf,
};
use tracing::{debug, warn};

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// `tracepoint/<category>/<name>`; one program may serve several tracepoints.
    TracePoint(&'static str, &'static [&'static str]),
    RawTracePoint(&'static str),
    /// A cgroup program attached to the root of the cgroup v2 hierarchy: it sees every process.
    CgroupSockAddr,
    CgroupSock,
    CgroupSkbEgress,
    /// Uprobes (or uretprobes, as the program is declared) on these TLS library functions (one
    /// program for all of them), attached to each library file found (see `tls_libs::Stack`).
    UProbe(&'static [&'static str]),
    /// A BPF LSM hook; loaded only where the kernel runs BPF LSM programs.
    Lsm(&'static str),
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub program: &'static str,
    pub attach: Attach,
    /// A missing required probe stops the daemon; a missing optional one (a syscall this
    /// architecture does not have, like `open` on arm64) is logged.
    pub required: bool,
    /// The enforcement layer it serves (`agent_monitor_layer_up{layer}`).
    pub layer: Layer,
}

const fn tp(program: &'static str, required: bool) -> Probe {
    // The program is named after the syscall tracepoint it attaches to.
    Probe { program, attach: Attach::TracePoint("syscalls", &[]), required, layer: Layer::Tracepoint }
}

/// Every program and where it goes.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "sys_enter_compat",
        attach: Attach::RawTracePoint("sys_enter"),
        required: true,
        layer: Layer::Tracepoint,
    },
    Probe {
        program: "sched_process_fork",
        attach: Attach::RawTracePoint("sched_process_fork"),
        required: true,
        layer: Layer::Tracepoint,
    },
    Probe {
        program: "sched_process_exec",
        attach: Attach::RawTracePoint("sched_process_exec"),
        required: true,
        layer: Layer::Tracepoint,
    },
    Probe {
        program: "sched_process_exit",
        attach: Attach::RawTracePoint("sched_process_exit"),
        required: true,
        layer: Layer::Tracepoint,
    },
    Probe {
        program: "sys_exit_reap",
        attach: Attach::TracePoint("syscalls", &["sys_exit_wait4", "sys_exit_waitid"]),
        required: true,
        layer: Layer::Tracepoint,
    },
    tp("sys_enter_openat", true),
    tp("sys_enter_openat2", true),
    tp("sys_enter_open", false),
    tp("sys_enter_creat", false),
    Probe {
        program: "sys_exit_open_any",
        attach: Attach::TracePoint(
            "syscalls",
            &["sys_exit_openat", "sys_exit_openat2", "sys_exit_open", "sys_exit_creat", "sys_exit_open_by_handle_at"],
        ),
        required: true,
        layer: Layer::Tracepoint,
    },
    Probe {
        program: "sys_exit_path_any",
        attach: Attach::TracePoint(
            "syscalls",
            &[
                "sys_exit_truncate",
                "sys_exit_unlinkat",
                "sys_exit_unlink",
                "sys_exit_rmdir",
                "sys_exit_renameat",
                "sys_exit_renameat2",
                "sys_exit_rename",
                "sys_exit_linkat",
                "sys_exit_link",
                "sys_exit_symlinkat",
                "sys_exit_symlink",
                "sys_exit_mkdirat",
                "sys_exit_mkdir",
                "sys_exit_mknodat",
                "sys_exit_mknod",
                "sys_exit_fchmodat",
                "sys_exit_fchmodat2",
                "sys_exit_chmod",
                "sys_exit_fchownat",
                "sys_exit_chown",
                "sys_exit_lchown",
                "sys_exit_connect",
                // A Unix datagram refused with its address unreadable: recorded at exit.
                "sys_exit_sendto",
                "sys_exit_sendmsg",
                "sys_exit_sendmmsg",
                "sys_exit_setxattr",
                "sys_exit_lsetxattr",
                "sys_exit_removexattr",
                "sys_exit_lremovexattr",
                "sys_exit_setxattrat",
                "sys_exit_removexattrat",
                "sys_exit_utime",
                "sys_exit_utimes",
                "sys_exit_utimensat",
                "sys_exit_futimesat",
            ],
        ),
        required: true,
        layer: Layer::Tracepoint,
    },
    tp("sys_enter_truncate", true),
    tp("sys_enter_unlinkat", true),
    tp("sys_enter_unlink", false),
    tp("sys_enter_rmdir", false),
    tp("sys_enter_renameat", false),
    tp("sys_enter_renameat2", true),
    tp("sys_enter_rename", false),
    tp("sys_enter_linkat", true),
    tp("sys_enter_link", false),
    tp("sys_enter_symlinkat", true),
    tp("sys_enter_symlink", false),
    tp("sys_enter_mkdirat", true),
    tp("sys_enter_mkdir", false),
    tp("sys_enter_mknodat", true),
    tp("sys_enter_mknod", false),
    tp("sys_enter_fchmodat", true),
    tp("sys_enter_fchmodat2", false),
    tp("sys_enter_chmod", false),
    tp("sys_enter_fchmod", true),
    tp("sys_enter_fchownat", true),
    tp("sys_enter_chown", false),
    tp("sys_enter_lchown", false),
    tp("sys_enter_fchown", true),
    tp("sys_enter_setxattr", true),
    tp("sys_enter_lsetxattr", true),
    tp("sys_enter_fsetxattr", true),
    tp("sys_enter_removexattr", true),
    tp("sys_enter_lremovexattr", true),
    tp("sys_enter_fremovexattr", true),
    tp("sys_enter_setxattrat", false),
    tp("sys_enter_removexattrat", false),
    tp("sys_enter_utime", false),
    tp("sys_enter_utimes", false),
    tp("sys_enter_utimensat", true),
    tp("sys_enter_futimesat", false),
    tp("sys_enter_open_by_handle_at", true),
    tp("sys_enter_ioctl", true),
    tp("sys_enter_mount", true),
    tp("sys_enter_umount", false),
    tp("sys_enter_pivot_root", true),
    tp("sys_enter_chroot", true),
    Probe {
        program: "sys_enter_open_tree",
        attach: Attach::TracePoint("syscalls", &["sys_enter_open_tree", "sys_enter_open_tree_attr"]),
        required: false,
        layer: Layer::Tracepoint,
    },
    tp("sys_enter_move_mount", false),
    tp("sys_enter_fsopen", false),
    tp("sys_enter_fsmount", false),
    tp("sys_enter_mount_setattr", false),
    tp("sys_enter_unshare", true),
    tp("sys_enter_setns", true),
    tp("sys_enter_clone", true),
    tp("sys_enter_clone3", false),
    tp("sys_enter_sendto", true),
    tp("sys_enter_sendmmsg", true),
    tp("sys_enter_fcntl", true),
    tp("sys_enter_prlimit64", true),
    tp("sys_enter_setpriority", true),
    tp("sys_enter_sched_setscheduler", true),
    tp("sys_enter_sched_setaffinity", true),
    tp("sys_enter_sched_setattr", true),
    tp("sys_enter_ioprio_set", true),
    tp("sys_enter_sendmsg", true),
    tp("sys_enter_io_uring_setup", false),
    tp("sys_enter_connect", true),
    Probe { program: "lsm_file_open", attach: Attach::Lsm("file_open"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_unlink", attach: Attach::Lsm("path_unlink"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_rmdir", attach: Attach::Lsm("path_rmdir"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_mkdir", attach: Attach::Lsm("path_mkdir"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_mknod", attach: Attach::Lsm("path_mknod"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_symlink", attach: Attach::Lsm("path_symlink"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_rename", attach: Attach::Lsm("path_rename"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_link", attach: Attach::Lsm("path_link"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_chmod", attach: Attach::Lsm("path_chmod"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_chown", attach: Attach::Lsm("path_chown"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_truncate", attach: Attach::Lsm("path_truncate"), required: false, layer: Layer::BpfLsm },
    Probe {
        program: "lsm_socket_connect",
        attach: Attach::Lsm("socket_connect"),
        required: false,
        layer: Layer::BpfLsm,
    },
    Probe {
        program: "lsm_socket_sendmsg",
        attach: Attach::Lsm("socket_sendmsg"),
        required: false,
        layer: Layer::BpfLsm,
    },
    Probe { program: "lsm_task_kill", attach: Attach::Lsm("task_kill"), required: false, layer: Layer::BpfLsm },
    Probe {
        program: "lsm_ptrace_access_check",
        attach: Attach::Lsm("ptrace_access_check"),
        required: false,
        layer: Layer::BpfLsm,
    },
    Probe { program: "lsm_bpf", attach: Attach::Lsm("bpf"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_sb_mount", attach: Attach::Lsm("sb_mount"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_sb_umount", attach: Attach::Lsm("sb_umount"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_move_mount", attach: Attach::Lsm("move_mount"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_sb_pivotroot", attach: Attach::Lsm("sb_pivotroot"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_path_chroot", attach: Attach::Lsm("path_chroot"), required: false, layer: Layer::BpfLsm },
    Probe { program: "lsm_file_ioctl", attach: Attach::Lsm("file_ioctl"), required: false, layer: Layer::BpfLsm },
    Probe { program: "connect4", attach: Attach::CgroupSockAddr, required: true, layer: Layer::Cgroup },
    Probe { program: "connect6", attach: Attach::CgroupSockAddr, required: true, layer: Layer::Cgroup },
    Probe { program: "sendmsg4", attach: Attach::CgroupSockAddr, required: true, layer: Layer::Cgroup },
    Probe { program: "sendmsg6", attach: Attach::CgroupSockAddr, required: true, layer: Layer::Cgroup },
    // 6.7+: refuse a Unix connect or datagram the tracepoint judged a violation (else it is
    // killed after the connect, or after the datagram was delivered).
    Probe { program: "connect_unix", attach: Attach::CgroupSockAddr, required: false, layer: Layer::Cgroup },
    Probe { program: "sendmsg_unix", attach: Attach::CgroupSockAddr, required: false, layer: Layer::Cgroup },
    Probe { program: "sock_create", attach: Attach::CgroupSock, required: true, layer: Layer::Cgroup },
    Probe { program: "sock_release", attach: Attach::CgroupSock, required: true, layer: Layer::Cgroup },
    Probe { program: "http_egress", attach: Attach::CgroupSkbEgress, required: true, layer: Layer::Cgroup },
    Probe { program: "kfree_skb", attach: Attach::RawTracePoint("kfree_skb"), required: false, layer: Layer::Cgroup },
    // One program serves the functions that take the same arguments: each program is one more
    // verification at start-up (the HTTP parser's are the longest).
    Probe { program: "ssl_write", attach: Attach::UProbe(&["SSL_write"]), required: false, layer: Layer::Uprobe },
    Probe {
        program: "ssl_write_ex",
        attach: Attach::UProbe(&["SSL_write_ex", "gnutls_record_send", "gnutls_record_send2"]),
        required: false,
        layer: Layer::Uprobe,
    },
    // Go's crypto/tls, in Go executables that keep their symbol table (register ABI; no return
    // probe on Go: its stacks move).
    Probe {
        program: "go_tls_write",
        attach: Attach::UProbe(&["crypto/tls.(*Conn).Write"]),
        required: false,
        layer: Layer::Uprobe,
    },
    // At the write functions' return (a uretprobe: `tls::RET_PROGRAM`): what the call sent.
    Probe {
        program: "tls_write_ret",
        attach: Attach::UProbe(&["SSL_write", "SSL_write_ex", "gnutls_record_send", "gnutls_record_send2"]),
        required: false,
        layer: Layer::Uprobe,
    },
    Probe {
        program: "ssl_do_handshake",
        attach: Attach::UProbe(&[
            "SSL_do_handshake",
            "SSL_set_connect_state",
            "gnutls_handshake",
            "crypto/tls.(*Conn).clientHandshake",
        ]),
        required: false,
        layer: Layer::Uprobe,
    },
    // Where a TLS object ends or starts over (`tls::END_PROGRAM`): its parser state goes.
    Probe {
        program: "tls_conn_end",
        attach: Attach::UProbe(&["SSL_clear", "SSL_free", "gnutls_deinit"]),
        required: false,
        layer: Layer::Uprobe,
    },
    tp("sys_enter_socket", true),
    tp("sys_enter_setsockopt", true),
    tp("sys_enter_bpf", true),
    tp("sys_enter_kill", true),
    tp("sys_enter_tkill", false),
    tp("sys_enter_tgkill", true),
    tp("sys_enter_rt_sigqueueinfo", false),
    tp("sys_enter_rt_tgsigqueueinfo", false),
    tp("sys_enter_ptrace", true),
    tp("sys_enter_process_vm_writev", false),
    tp("sys_enter_pidfd_send_signal", false),
    tp("sys_enter_pidfd_getfd", false),
];

/// Load (verify) the program of every probe, on up to one thread per core; one entry per row of
/// [`PROBES`], `None` where loading was skipped (see [`in_table_order`]).
///
/// The verifier runs in the thread that calls `bpf(BPF_PROG_LOAD)`, and it is most of the
/// start-up (tens of milliseconds for each path program, ~1.5 s for all of them in one thread on
/// a 2-core VM); the programs are independent of each other, so they are verified side by side.
/// Attaching stays with the caller.
pub fn load_programs(ebpf: &mut Ebpf, lsm_btf: Result<&aya::Btf, &str>) -> Vec<Option<anyhow::Result<()>>> {
    // Disjoint `&mut` to each program (aya's `load` takes `&mut self`), one slot per row.
    let mut by_name: std::collections::HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let slots: Vec<std::sync::Mutex<Option<&mut Program>>> =
        PROBES.iter().map(|p| std::sync::Mutex::new(by_name.remove(p.program))).collect();
    // One verifier per core: more threads than cores only contend. At most 8: past that the
    // longest program (~0.1 s) bounds the time anyway, and each verification holds kernel memory.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    in_table_order(PROBES, threads, |i| {
        let probe = &PROBES[i];
        let t = std::time::Instant::now();
        let mut slot = slots[i].lock().unwrap();
        let r = match slot.as_deref_mut() {
            Some(prog) => load_program(prog, probe, lsm_btf),
            None => Err(anyhow::anyhow!("program {} missing from the object", probe.program)),
        };
        // What the verifier walked (Linux 5.16+): what start-up costs, program by program.
        let insns = slot.as_deref().and_then(|p| p.info().ok()).and_then(|i| i.verified_instruction_count());
        debug!(program = probe.program, ms = t.elapsed().as_millis() as u64, insns, ok = r.is_ok(), "loaded");
        r
    })
}

/// Run `job` for every row of `rows` on `threads` threads (this one included); one result per
/// row, `None` where the job was not run.
///
/// Rows are taken in table order, and a row is skipped only when a row before it has already
/// failed in a way that makes running it pointless: a required probe (the start fails there) or,
/// for an LSM probe, another LSM probe (the layer is all or nothing). So every row up to the
/// first failure that matters has run, and a caller walking the results in table order sees
/// what running them one by one would have given.
fn in_table_order(
    rows: &[Probe],
    threads: usize,
    job: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> Vec<Option<anyhow::Result<()>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    // The first row (in table order) of a failed required probe, of a failed LSM probe.
    let (required_failed, lsm_failed) = (AtomicUsize::new(usize::MAX), AtomicUsize::new(usize::MAX));
    let worker = || {
        let mut done: Vec<(usize, anyhow::Result<()>)> = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(row) = rows.get(i) else { break };
            let lsm = matches!(row.attach, Attach::Lsm(_));
            if i > required_failed.load(Ordering::SeqCst) || (lsm && i > lsm_failed.load(Ordering::SeqCst)) {
                continue;
            }
            let r = job(i);
            if r.is_err() && row.required {
                required_failed.fetch_min(i, Ordering::SeqCst);
            }
            if r.is_err() && lsm {
                lsm_failed.fetch_min(i, Ordering::SeqCst);
            }
            done.push((i, r));
        }
        done
    };
    let mut out: Vec<Option<anyhow::Result<()>>> = rows.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|n| std::thread::Builder::new().name(format!("bpf-load-{n}")).spawn_scoped(s, worker).ok())
            .collect();
        let mut results = worker();
        for h in helpers {
            // A panic in a helper is a panic here (it would have been one loading in this thread).
            results.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        for (i, r) in results {
            out[i] = Some(r);
        }
    });
    out
}

/// Load (verify) one probe's program; it is attached later by [`attach`].
fn load_program(prog: &mut Program, probe: &Probe, lsm_btf: Result<&aya::Btf, &str>) -> anyhow::Result<()> {
    let what = || format!("loading {}", probe.program);
    match probe.attach {
        Attach::TracePoint(..) => <&mut TracePoint>::try_from(prog)?.load().with_context(what)?,
        Attach::RawTracePoint(_) => <&mut RawTracePoint>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSockAddr => <&mut CgroupSockAddr>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSock => <&mut CgroupSock>::try_from(prog)?.load().with_context(what)?,
        Attach::CgroupSkbEgress => <&mut CgroupSkb>::try_from(prog)?.load().with_context(what)?,
        // Attached per library by `Kernel::hook_tls_libs`.
        Attach::UProbe(_) => <&mut UProbe>::try_from(prog)?.load().with_context(what)?,
        Attach::Lsm(hook) => {
            let btf = lsm_btf.map_err(|e| anyhow::anyhow!("{e}"))?;
            let p: &mut aya::programs::Lsm = prog.try_into()?;
            p.load(hook, btf).with_context(|| format!("loading LSM hook {hook}"))?;
        }
    }
    Ok(())
}

/// Attach one loaded probe; returns its links (label, link), taken from aya so that they can be
/// pinned and outlive this process.
pub fn attach(ebpf: &mut Ebpf, probe: &Probe, cgroup: Option<&File>) -> anyhow::Result<Vec<(String, FdLink)>> {
    let prog = ebpf
        .program_mut(probe.program)
        .with_context(|| format!("program {} missing from the object", probe.program))?;
    let mut links = Vec::new();
    match probe.attach {
        Attach::TracePoint(category, names_list) => {
            let p: &mut TracePoint = prog.try_into()?;
            let list: Vec<&str> = if names_list.is_empty() { vec![probe.program] } else { names_list.to_vec() };
            // A shared program (several tracepoints) needs at least one; a syscall missing on
            // this architecture is logged, not fatal.
            for name in &list {
                match p.attach(category, name) {
                    Ok(id) => links.push((format!("{category}:{name}"), FdLink::try_from(p.take_link(id)?)?)),
                    Err(e) if list.len() > 1 => warn!(tracepoint = name, error = %e, "tracepoint not attached"),
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("attaching {category}/{name}"))),
                }
            }
            if links.is_empty() {
                bail!("none of the tracepoints of {} could be attached", probe.program);
            }
        }
        Attach::CgroupSockAddr | Attach::CgroupSock | Attach::CgroupSkbEgress => {
            let cg = cgroup.context("no cgroup v2 hierarchy is mounted: the network layer cannot attach")?;
            // Attached as a bpf_link (5.7+), which always coexists with other programs on the
            // root (systemd's, other tools'); the link API takes no attach flags, so `Single`
            // here means "flags 0", not exclusivity.
            let mode = CgroupAttachMode::Single;
            let link = match probe.attach {
                Attach::CgroupSockAddr => {
                    let p: &mut CgroupSockAddr = prog.try_into()?;
                    let id = p.attach(cg, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
                Attach::CgroupSock => {
                    let p: &mut CgroupSock = prog.try_into()?;
                    let id = p.attach(cg, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
                _ => {
                    let p: &mut CgroupSkb = prog.try_into()?;
                    let id = p.attach(cg, CgroupSkbAttachType::Egress, mode)?;
                    FdLink::try_from(p.take_link(id)?)?
                }
            };
            links.push((format!("cgroup:{}", probe.program), link));
        }
        // Attached per library by `Kernel::hook_tls_libs`.
        Attach::UProbe(_) => {}
        Attach::Lsm(hook) => {
            let p: &mut aya::programs::Lsm = prog.try_into()?;
            let id = p.attach().with_context(|| format!("attaching LSM hook {hook}"))?;
            links.push((format!("lsm:{hook}"), FdLink::from(p.take_link(id)?)));
        }
        Attach::RawTracePoint(name) => {
            let p: &mut RawTracePoint = prog.try_into()?;
            let id = p.attach(name).with_context(|| format!("attaching raw tracepoint {name}"))?;
            links.push((format!("raw:{name}"), FdLink::from(p.take_link(id)?)));
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading in parallel gives the caller what loading one by one would: every row up to the
    /// first failed required row has run, and every LSM row up to the first failed LSM row,
    /// whatever the interleaving.
    #[test]
    fn parallel_loading_runs_what_one_by_one_would() {
        let lsm = |program| Probe { program, attach: Attach::Lsm("x"), required: false, layer: Layer::BpfLsm };
        let rows =
            [tp("a", true), tp("b", false), lsm("c"), lsm("d"), tp("e", true), lsm("f"), tp("g", false), tp("h", true)];
        for threads in 1..=3 {
            for failing in 0u32..(1 << rows.len()) {
                let fails = |i: usize| failing & (1 << i) != 0;
                let out = in_table_order(&rows, threads, |i| {
                    // Vary the interleaving.
                    std::thread::sleep(std::time::Duration::from_micros(((i as u64 * 37 + failing as u64) % 5) * 20));
                    if fails(i) {
                        bail!("row {i} failed")
                    }
                    Ok(())
                });
                let first = |f: &dyn Fn(&Probe) -> bool| (0..rows.len()).find(|&i| fails(i) && f(&rows[i]));
                let first_required = first(&|p| p.required);
                let first_lsm = first(&|p| matches!(p.attach, Attach::Lsm(_)));
                for (i, row) in rows.iter().enumerate() {
                    let is_lsm = matches!(row.attach, Attach::Lsm(_));
                    let needed = first_required.is_none_or(|r| i <= r) && (!is_lsm || first_lsm.is_none_or(|l| i <= l));
                    assert!(
                        !needed || out[i].is_some(),
                        "threads {threads}, failing {failing:#b}: row {i} was skipped"
                    );
                    if let Some(r) = &out[i] {
                        assert_eq!(r.is_err(), fails(i), "threads {threads}, failing {failing:#b}: row {i}");
                    }
                }
            }
        }
    }
}
