//! The known ways around syscall tracing, each a violation unless the policy allows it:
//! io_uring (its operations never pass the syscall tracepoints), raw and packet sockets (they
//! bypass connect/sendmsg hooks), and `bpf()` (an agent must not load programs or touch maps).
use agent_monitor_common::{action, agent_flags, kind, layer, verdict};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::agent::{current_agent, decide, reap_if_killed, PathRef, Rec};

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

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
    decide(&st, &cfg, ok, r, PathRef::NONE, PathRef::NONE);
}

#[tracepoint]
pub fn sys_enter_io_uring_setup(ctx: TracePointContext) -> u32 {
    bypass(kind::SYS_IO_URING, agent_flags::ALLOW_IO_URING, arg(&ctx, 0), 0);
    0
}

#[tracepoint]
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
pub fn sys_enter_bpf(ctx: TracePointContext) -> u32 {
    bypass(kind::SELF_TAMPER, agent_flags::ALLOW_BPF, arg(&ctx, 0), 0);
    0
}
