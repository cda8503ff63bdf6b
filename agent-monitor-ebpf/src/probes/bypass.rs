//! The known ways around syscall tracing, each a violation unless the policy allows it:
//! io_uring (its operations never pass the syscall tracepoints), raw and packet sockets (they
//! bypass connect/sendmsg hooks), and `bpf()` (an agent must not load programs or touch maps).
use agent_monitor_common::{
    action, agent_flags, daemon_slot, kind, layer, policy_action, syscalls::tamper_call, verdict, AgentCfg,
};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    agent::{current_agent, decide, reap_if_killed, PathRef, Rec},
    maps::{lsm_active, DAEMON},
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
    let family = arg(&ctx, 0);
    let ty = arg(&ctx, 1);
    // Raw inet sockets are refused in-kernel by the cgroup `sock_create` program; packet
    // sockets and other raw families never reach it, so they are caught here.
    let inet = family == AF_INET || family == AF_INET6;
    if family == AF_PACKET || (ty & SOCK_TYPE_MASK == SOCK_RAW && !inet) {
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
    let daemon = DAEMON.get(daemon_slot::PID).copied().unwrap_or(0);
    if daemon == 0 || target as u32 != daemon || target >> 32 != 0 {
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

#[inline(always)]
fn pidfd_tamper(pidfd: u64, what: u64, detail: u64) {
    let daemon = DAEMON.get(daemon_slot::PID).copied().unwrap_or(0);
    // Only agents pay for the descriptor walk.
    if daemon == 0 || current_agent().is_none() {
        return;
    }
    if unsafe { crate::kernel::pidfd_names(pidfd as i64, daemon) } {
        tamper(daemon as u64, what, detail);
    }
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
    tamper(arg(&ctx, 1), tamper_call::PTRACE, arg(&ctx, 0));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    tamper(arg(&ctx, 0), tamper_call::PROCESS_VM_WRITEV, 0);
    0
}
