//! The known ways around syscall tracing, each a violation unless the policy allows it:
//! io_uring (its operations never pass the syscall tracepoints), raw and packet sockets (they
//! bypass connect/sendmsg hooks), `bpf()` (an agent must not load programs or touch maps),
//! mounts (a mount names a file by what it is not) and namespaces; and acting through another
//! process: ptrace, `process_vm_writev`, `pidfd_getfd` and terminal injection aimed at a process
//! outside the agent's instance, or at the daemon.
use agent_monitor_common::{
    action, agent_flags, daemon_slot, kind, layer, policy_action, syscalls::tamper_call, verdict, AgentCfg,
};
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};

use crate::{
    agent::{current_agent, decide, emit, enforce_after, reap_if_killed, PathRef, Rec},
    maps::{lsm_active, DAEMON, DAEMON_TIDS, PROCS},
};

use crate::kernel::tp_arg as arg;

#[inline(always)]
fn bypass(kind: u32, allow_flag: u32, aux: u64, aux2: u64) {
    let Some((st, cfg)) = current_agent() else {
        return;
    };
    if reap_if_killed(&st) {
        return;
    }
    let ok = cfg.flags & allow_flag != 0;
    let r =
        Rec { kind, verdict: verdict::ALLOWED, action: action::NONE, layer: layer::TRACEPOINT, flags: 0, aux, aux2 };
    // bpf() is self-protection: an agent that may not use it is killed whatever its action.
    let cfg = if kind == kind::SELF_TAMPER { AgentCfg { action: policy_action::KILL, ..cfg } } else { cfg };
    decide(&st, &cfg, ok, r, PathRef::NONE, PathRef::NONE);
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_io_uring_setup(ctx: TracePointContext) -> u32 {
    bypass(kind::SYS_IO_URING, agent_flags::ALLOW_IO_URING, arg(&ctx, 0), 0);
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    const AF_PACKET: u64 = 17;
    const SOCK_RAW: u64 = 3;
    const SOCK_TYPE_MASK: u64 = 0xf;
    const AF_INET: u64 = 2;
    const AF_INET6: u64 = 10;
    const AF_NETLINK: u64 = 16;
    const NETLINK_NETFILTER: u64 = 12;
    let family = arg(&ctx, 0);
    let ty = arg(&ctx, 1);
    // Raw inet sockets are refused in-kernel by the cgroup `sock_create` program; packet
    // sockets and other raw families never reach it, so they are caught here. Netfilter's
    // netlink (nftables, iptables-nft, conntrack), whatever its socket type: a NAT rule
    // rewrites where an allowed connection goes after the connect was judged.
    let inet = family == AF_INET || family == AF_INET6;
    let netfilter = family == AF_NETLINK && arg(&ctx, 2) == NETLINK_NETFILTER;
    if family == AF_PACKET || (ty & SOCK_TYPE_MASK == SOCK_RAW && !inet) || netfilter {
        bypass(kind::NET_RAW_SOCKET, agent_flags::ALLOW_RAW_SOCKET, family, ty);
    }
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_bpf(ctx: TracePointContext) -> u32 {
    // The LSM `bpf` hook refuses it before it runs.
    if lsm_active() {
        return 0;
    }
    bypass(kind::SELF_TAMPER, agent_flags::ALLOW_BPF, arg(&ctx, 0), 0);
    0
}

/// An agent aiming a signal, ptrace or a memory write at the daemon: `self.tamper`. The
/// tracepoint layer cannot stop the call (with pinned programs, enforcement survives even a
/// SIGKILL of the daemon); the agent is killed and the attempt is on the record.
#[inline(always)]
fn tamper(target: u64, what: u64, detail: u64) {
    // The LSM `task_kill` and `ptrace_access_check` hooks refuse these before they run
    // (process_vm_writev and pidfd_getfd pass the ptrace access check).
    if lsm_active() {
        return;
    }
    tamper_any(target, what, detail);
}

/// [`tamper`], on every layer: for calls no LSM hook of ours refuses.
#[inline(always)]
fn tamper_any(target: u64, what: u64, detail: u64) {
    if !aimed_at_daemon(target) {
        return;
    }
    let Some((st, cfg)) = current_agent() else {
        return;
    };
    if reap_if_killed(&st) {
        return;
    }
    let r = Rec {
        kind: kind::SELF_TAMPER,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::TRACEPOINT,
        flags: 0,
        aux: what,
        aux2: (detail << 32) | target,
    };
    // Self-protection kills whatever the agent's action (`alert` included).
    decide(&st, &AgentCfg { action: policy_action::KILL, ..cfg }, false, r, PathRef::NONE, PathRef::NONE);
}

/// Is the pid (a process or a thread id, as a syscall takes it) the daemon, one of its threads,
/// or a group of processes the daemon is in (`kill(-1)`, `kill(-pgid)`: the daemon leads its
/// own process group)?
#[inline(always)]
fn aimed_at_daemon(target: u64) -> bool {
    let daemon = DAEMON.get(daemon_slot::PID).copied().unwrap_or(0);
    if daemon == 0 {
        return false;
    }
    let pid = target as i32;
    if pid == -1 || (pid < -1 && pid.wrapping_neg() as u32 == daemon) {
        return true;
    }
    pid > 0 && (pid as u32 == daemon || unsafe { DAEMON_TIDS.get(&(pid as u32)) }.is_some())
}

#[inline(always)]
fn pidfd_tamper(pidfd: u64, what: u64, detail: u64) {
    let daemon = DAEMON.get(daemon_slot::PID).copied().unwrap_or(0);
    // Only agents pay for the descriptor walk.
    let Some((st, _)) = current_agent() else {
        return;
    };
    let nr = unsafe { crate::kernel::pidfd_pid(pidfd as i64) };
    // A PIDFD_THREAD pidfd names one of the daemon's threads.
    if daemon != 0 && nr != 0 && (nr == daemon || unsafe { DAEMON_TIDS.get(&nr) }.is_some()) {
        tamper(daemon as u64, what, detail);
    } else if what == tamper_call::PIDFD_GETFD && !lsm_active() {
        inject(&st, nr as u64, what, detail);
    }
}

/// An agent acting on process `target` (a pid or tid) through `what`: a violation
/// (`process.inject`) unless the target belongs to the same agent instance. A thread id of an
/// instance member other than its leader is not in the table: judged outside (fail closed).
#[inline(always)]
pub fn inject(st: &agent_monitor_common::ProcState, target: u64, what: u64, detail: u64) {
    let Some((st2, cfg)) = current_agent() else {
        return;
    };
    let _ = st;
    if reap_if_killed(&st2) {
        return;
    }
    let tgid = target as u32;
    let same = tgid != 0 && unsafe { PROCS.get(&tgid) }.is_some_and(|p| p.run_id == st2.run_id);
    if same {
        return;
    }
    let (a, f) = enforce_after(&st2, &cfg);
    let r = Rec {
        kind: kind::PROCESS_INJECT,
        verdict: verdict::VIOLATION,
        action: a,
        layer: layer::TRACEPOINT,
        flags: f,
        aux: what,
        aux2: (detail << 32) | (target & 0xffff_ffff),
    };
    emit(&st2, &r, PathRef::NONE, PathRef::NONE);
}

/// `pidfd_send_signal(pidfd, sig, info, flags)`: the target is the process the pidfd names.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_pidfd_send_signal(ctx: TracePointContext) -> u32 {
    pidfd_tamper(arg(&ctx, 0), tamper_call::PIDFD_SEND_SIGNAL, arg(&ctx, 1));
    0
}

/// `pidfd_getfd(pidfd, targetfd, flags)`: a copy of one of the daemon's file descriptors
/// (its BPF maps and programs among them).
#[tracepoint]
#[inline(always)]
pub fn sys_enter_pidfd_getfd(ctx: TracePointContext) -> u32 {
    pidfd_tamper(arg(&ctx, 0), tamper_call::PIDFD_GETFD, arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_kill(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::KILL, arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_tkill(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::TKILL, arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_tgkill(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::TGKILL, arg(&ctx, 2));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_rt_sigqueueinfo(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::RT_SIGQUEUEINFO, arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_rt_tgsigqueueinfo(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::RT_TGSIGQUEUEINFO, arg(&ctx, 2));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    const PTRACE_TRACEME: u64 = 0;
    let (req, pid) = (arg(&ctx, 0), arg(&ctx, 1));
    tamper(pid, tamper_call::PTRACE, req);
    if req != PTRACE_TRACEME && !lsm_active() && !aimed_at_daemon(pid) {
        if let Some((st, _)) = current_agent() {
            inject(&st, pid, tamper_call::PTRACE, req);
        }
    }
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    let pid = arg(&ctx, 0);
    tamper(pid, tamper_call::PROCESS_VM_WRITEV, 0);
    if !aimed_at_daemon(pid) {
        if let Some((st, _)) = current_agent() {
            inject(&st, pid, tamper_call::PROCESS_VM_WRITEV, 0);
        }
    }
    0
}

/// `ioctl(fd, cmd, arg)`, for the few commands that write: `TIOCSTI`/`TIOCLINUX` (typing into a
/// terminal: another process reads it as its own input) and `FS_IOC_SETFLAGS`/
/// `FS_IOC_FSSETXATTR` (`chattr`, allowed on a file opened read-only). The command is compared
/// before anything else: every ioctl of every process passes here.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    const TIOCSTI: u64 = 0x5412;
    const TIOCLINUX: u64 = 0x541c;
    const FS_IOC_SETFLAGS: u64 = 0x4008_6602;
    const FS_IOC32_SETFLAGS: u64 = 0x4004_6602;
    const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;
    let cmd = arg(&ctx, 1) & 0xffff_ffff;
    match cmd {
        // With BPF LSM, `file_ioctl` refuses it before a byte is pushed.
        TIOCSTI | TIOCLINUX if !lsm_active() => {
            if let Some((st, _)) = current_agent() {
                // A terminal is shared with whoever reads it: never the agent's own instance.
                inject(&st, 0, tamper_call::TIOCSTI, cmd);
            }
        }
        FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS | FS_IOC_FSSETXATTR => super::file::file_flags_ioctl(&ctx),
        // FIOSETOWN, SIOCSPGRP: `fcntl(F_SETOWN)` by another name (the owner is read from
        // the process's memory).
        0x8901 | 0x8902 => {
            if current_agent().is_some() {
                let owner = unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&ctx, 2) as *const i32) };
                tamper_any(owner.unwrap_or(0) as i64 as u64, tamper_call::FCNTL, cmd);
            }
        }
        _ => {}
    }
    0
}

/// The mount topology: a mount makes a file appear under another name (a bind of an outside
/// directory into `writable`), so an agent may not change it unless the policy allows
/// `mount`. The LSM layer refuses these before they run; here the kill lands after.
#[inline(always)]
fn mount_op(call: u64) {
    if lsm_active() {
        return;
    }
    bypass(kind::SYS_MOUNT, agent_flags::ALLOW_MOUNT, call, 0);
}

macro_rules! mount_probe {
    ($name:ident, $nr:expr) => {
        #[tracepoint]
        #[inline(always)]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            mount_op($nr);
            0
        }
    };
}

// (x86_64 syscall numbers, recorded as the call's tag)
mount_probe!(sys_enter_mount, 165);
mount_probe!(sys_enter_umount, 166);
mount_probe!(sys_enter_pivot_root, 155);
// chroot: an absolute path then names a file under the new root (paths are resolved against
// it, but a sibling thread sharing the fs struct races the kill).
mount_probe!(sys_enter_chroot, 161);
mount_probe!(sys_enter_open_tree, 428);
mount_probe!(sys_enter_move_mount, 429);
mount_probe!(sys_enter_fsopen, 430);
mount_probe!(sys_enter_fsmount, 432);
mount_probe!(sys_enter_mount_setattr, 442);

/// Socket options that take what leaves out of what the boundary reads, refused for agents
/// (`net.raw_socket`, granted with the raw-socket class):
/// - `TCP_ULP` (kernel TLS): the kernel encrypts writes no TLS hook sees, and `SSL_sendfile`
///   and `gnutls_record_send_file` need it;
/// - `IP_OPTIONS`, `IPV6_RTHDR` (and the RFC 2292 forms): a source route sends a datagram to
///   a first hop that is not the destination the policy allowed;
/// - `SO_ZEROCOPY`: a retransmission is built from pages the process can still change, so
///   it could carry other bytes than the ones judged.
///
/// An option being cleared (a zero length) is no write.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_setsockopt(ctx: TracePointContext) -> u32 {
    let (level, opt) = (arg(&ctx, 1), arg(&ctx, 2));
    let refused = matches!(
        (level, opt),
        (1, 60) /* SOL_SOCKET, SO_ZEROCOPY */
            | (6, 31) /* IPPROTO_TCP, TCP_ULP */
            | (0, 4) /* IPPROTO_IP, IP_OPTIONS */
            | (41, 57) /* IPPROTO_IPV6, IPV6_RTHDR */
            | (41, 5) /* IPV6_2292RTHDR */
            | (41, 6) /* IPV6_2292PKTOPTIONS */
    );
    if refused && arg(&ctx, 4) & 0xffff_ffff != 0 {
        bypass(kind::NET_RAW_SOCKET, agent_flags::ALLOW_RAW_SOCKET, arg(&ctx, 0), 1 << 63 | level << 32 | opt);
    }
    0
}

/// Namespace flags of `clone`, `clone3` and `unshare`.
const CLONE_NEW_ANY: u64 = 0x0002_0000 /* NEWNS */
    | 0x0200_0000 /* NEWCGROUP */
    | 0x0400_0000 /* NEWUTS */
    | 0x0800_0000 /* NEWIPC */
    | 0x1000_0000 /* NEWUSER */
    | 0x2000_0000 /* NEWPID */
    | 0x4000_0000 /* NEWNET */
    | 0x80 /* NEWTIME */;

/// A new namespace: in one of its own, a process can mount over anything (a user namespace
/// makes any uid root there), so namespaces go with mounts.
#[inline(always)]
fn namespace_op(call: u64, flags: u64) {
    bypass(kind::SYS_NAMESPACE, agent_flags::ALLOW_NAMESPACES, call, flags);
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 0);
    if flags & CLONE_NEW_ANY != 0 {
        namespace_op(272, flags);
    }
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_setns(ctx: TracePointContext) -> u32 {
    namespace_op(308, arg(&ctx, 1));
    0
}

/// `CLONE_FILES` without `CLONE_THREAD`: another process sharing this one's descriptor table.
/// A kill lands on one thread group; a process that shares the table writes through a
/// descriptor the moment an open installs it, before the kill of the opener reaches it (or
/// closes and replaces it before the open's exit is judged). Threads share the table, and
/// die with the group.
const CLONE_FILES: u64 = 0x400;
const CLONE_THREAD: u64 = 0x1_0000;

/// Does `flags` make a namespace, or a process that shares the caller's descriptors?
#[inline(always)]
fn isolates_or_shares_files(flags: u64) -> bool {
    flags & CLONE_NEW_ANY != 0 || flags & (CLONE_FILES | CLONE_THREAD) == CLONE_FILES
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 0);
    if isolates_or_shares_files(flags) {
        namespace_op(56, flags);
    }
    0
}

/// `clone3(struct clone_args *args, size_t size)`: the flags are the first field, in the
/// process's memory; unreadable is a violation (fail closed) for agents.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let args = arg(&ctx, 0);
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(args as *const u64) } {
        Ok(flags) if !isolates_or_shares_files(flags) => {}
        Ok(flags) => namespace_op(435, flags),
        Err(_) => {
            if current_agent().is_some() {
                namespace_op(435, u64::MAX);
            }
        }
    }
    0
}

/// `fcntl(fd, F_SETOWN, pid)` or `F_SETOWN_EX` naming the daemon (or its group): the kernel
/// then signals it (SIGIO, SIGURG, or any signal chosen with F_SETSIG) when the descriptor is
/// ready, a `kill` by another route. The command is compared before anything else: every fcntl
/// of every process passes here.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    const F_SETOWN: u64 = 8;
    const F_SETOWN_EX: u64 = 15;
    const F_OWNER_PGRP: i32 = 2;
    let cmd = arg(&ctx, 1) & 0xffff_ffff;
    if cmd != F_SETOWN && cmd != F_SETOWN_EX {
        return 0;
    }
    if current_agent().is_none() {
        return 0;
    }
    let target = if cmd == F_SETOWN {
        arg(&ctx, 2) as i32 as i64
    } else {
        // struct f_owner_ex { int type; pid_t pid; }; unreadable: aimed at nobody we know.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&ctx, 2) as *const [i32; 2]) } {
            Ok([ty, pid]) if ty == F_OWNER_PGRP => -(pid as i64),
            Ok([_, pid]) => pid as i64,
            Err(_) => 0,
        }
    };
    tamper_any(target as u64, tamper_call::FCNTL, cmd);
    0
}

/// Resource limits and scheduling of the daemon (`prlimit64` with a new limit: a zero file
/// size limit kills it at its next write; its priority, CPUs, I/O class): `self.tamper`.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_prlimit64(ctx: TracePointContext) -> u32 {
    // prlimit64(pid, resource, new_limit, old_limit): reading a limit changes nothing.
    if arg(&ctx, 2) != 0 && arg(&ctx, 0) != 0 {
        tamper_any(arg(&ctx, 0), tamper_call::PRLIMIT64, arg(&ctx, 1));
    }
    0
}

/// `setpriority(which, who, prio)`: `which` 0 is a process (1 a group, 2 a user).
#[tracepoint]
#[inline(always)]
pub fn sys_enter_setpriority(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 0) == 0 && arg(&ctx, 1) != 0 {
        tamper_any(arg(&ctx, 1), tamper_call::SETPRIORITY, 0);
    }
    0
}

macro_rules! sched_probe {
    ($name:ident, $tag:expr) => {
        #[tracepoint]
        #[inline(always)]
        pub fn $name(ctx: TracePointContext) -> u32 {
            // The pid is the first argument of each; 0 is the caller itself.
            if arg(&ctx, 0) != 0 {
                tamper_any(arg(&ctx, 0), $tag, 0);
            }
            0
        }
    };
}

sched_probe!(sys_enter_sched_setscheduler, tamper_call::SCHED_SETSCHEDULER);
sched_probe!(sys_enter_sched_setaffinity, tamper_call::SCHED_SETAFFINITY);
sched_probe!(sys_enter_sched_setattr, tamper_call::SCHED_SETATTR);

/// `ioprio_set(which, who, ioprio)`: `which` 1 is a process.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_ioprio_set(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 0) == 1 && arg(&ctx, 1) != 0 {
        tamper_any(arg(&ctx, 1), tamper_call::IOPRIO_SET, 0);
    }
    0
}

/// Every system call of every process (`raw_syscalls:sys_enter`), for one thing: a 32-bit call
/// (`int $0x80` from a 64-bit program, or a 32-bit program). The kernel runs no
/// `syscalls:sys_enter_*` program for those, so an agent making them would open, connect and
/// signal unseen: `sys.compat`, killed like the other bypasses. The test is one read of the
/// thread's status (`TS_COMPAT`) before anything else.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn sys_enter_compat(ctx: RawTracePointContext) -> i32 {
    const TS_COMPAT: u32 = 0x0002;
    let task = crate::kernel::current_task();
    let status = unsafe { crate::kernel::task_ti_status(task) };
    if status & TS_COMPAT == 0 {
        return 0;
    }
    // raw_syscalls:sys_enter(struct pt_regs *regs, long id)
    let nr = unsafe { *(ctx.as_ptr() as *const u64).add(1) };
    bypass(kind::SYS_COMPAT, 0, nr, 0);
    0
}
