//! Agent identity: an exec that matches a selector starts an agent instance; fork passes the
//! instance to every child; no later exec takes a process out of scope; the exit of its last
//! thread forgets it (not the exit of its leader: a leader that exits while threads work on,
//! and an exec from another thread, which makes the kernel kill the leader in `de_thread`,
//! leave the process the agent it was).
use agent_monitor_common::{
    action, event_flags, kind, layer, proc_flags, stat, verdict, ExeKey, ProcState, CMDLINE_MAX, CMDLINE_READ,
    CMDLINE_TEXT_LEN, COMM_LEN, PATH_LEN, SEL_CGROUP_EXEC,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
        generated::{bpf_loop, bpf_probe_read_kernel as raw_read_kernel},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use core::ffi::c_void;

use crate::{
    agent::{self, count, emit, PathRef, Rec},
    kernel::{self, dentry_path},
    maps::{Scratch, PENDING, PENDING_OPS, PROCS, SEL_CGROUP, SEL_COMM, SEL_EXE, SEL_UID},
};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
#[inline(always)]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_fork(&ctx);
    0
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let ptgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(parent) = (unsafe { PROCS.get(&ptgid) }).copied() else {
        return Ok(());
    };
    if !kernel::offsets_valid() {
        return Ok(());
    }
    let child: u64 = ctx.arg(1);
    let child = child as *const u8;
    let ctgid = unsafe { kernel::task_tgid(child)? };
    if ctgid == ptgid {
        return Ok(()); // a thread: it shares the process's entry
    }
    let start_ns = unsafe { kernel::task_start_ns(child)? };
    let st = ProcState { start_ns, ..parent };
    if PROCS.insert(&ctgid, &st, 0).is_err() {
        // The child could not be tracked: it must not run untracked. This hook runs in the
        // parent before the child does; the parent's instance dies (the kernel kills any member
        // it sees next, the child at its first exec or hooked call via the daemon's sweep, which
        // finds it as the parent's child).
        count(stat::PROCS_FULL);
        agent::kill_instance(&parent);
        return Ok(());
    }
    agent::reap_if_killed(&parent);
    Ok(())
}

// Raw tracepoints (here and for exit): the programs read nothing from the event record, and a
// raw tracepoint skips building it (perf's per-event buffer and copy) on every exec and exit of
// every process on the host.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[inline(always)]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let _ = try_exec();
    0
}

/// Which agent, if any, does the current (just exec'd) process select? The cgroup of an
/// `agent-monitor exec` command also marks the process Landlocked, whatever selects it.
#[inline(always)]
unsafe fn select(s: *mut Scratch, task: *const u8) -> Option<(u32, u32)> {
    let cg = SEL_CGROUP.get(&bpf_get_current_cgroup_id()).copied();
    let flags = match cg {
        Some(v) if v & SEL_CGROUP_EXEC != 0 => proc_flags::LANDLOCKED,
        _ => 0,
    };
    select_agent(s, task, cg.map(|v| v & !SEL_CGROUP_EXEC)).map(|a| (a, flags))
}

#[inline(always)]
unsafe fn select_agent(s: *mut Scratch, task: *const u8, cgroup: Option<u32>) -> Option<u32> {
    if let Ok(comm) = bpf_get_current_comm() {
        let comm: [u8; COMM_LEN] = comm;
        if let Some(a) = SEL_COMM.get(&comm) {
            return Some(*a);
        }
    }
    let uid = bpf_get_current_uid_gid() as u32;
    if let Some(a) = SEL_UID.get(&uid) {
        return Some(*a);
    }
    if let Some(a) = cgroup {
        return Some(a);
    }
    // The executable the kernel actually mapped (not the string given to execve), so that a
    // relative path or a symlink does not hide it.
    let (d, m) = kernel::exe_path(task).ok()?;
    let b = dentry_path(s, d, m).ok()?;
    if b.truncated() || b.untrusted() {
        return None;
    }
    let key: *mut ExeKey = &mut (*s).exe;
    let words = (*key).path.as_mut_ptr() as *mut u64;
    for i in 0..(PATH_LEN / 8) {
        *words.add(i) = 0;
    }
    let n = kernel::opaque(b.len as usize) & 255;
    if n >= PATH_LEN {
        return None;
    }
    raw_read_kernel((*key).path.as_mut_ptr() as *mut c_void, n as u32, (*s).buf.as_ptr() as *const c_void);
    if let Some(a) = SEL_EXE.get(&*key) {
        return Some(*a);
    }
    select_cmdline(s, task)
}

/// `cmdline = ["*TEXT*"]`: the new image's program or first argument (as the kernel set them up
/// at exec; within the first `CMDLINE_READ` bytes) contains TEXT. Only read when such selectors
/// exist; each is searched with one `bpf_loop`.
#[inline(always)]
unsafe fn select_cmdline(s: *mut Scratch, task: *const u8) -> Option<u32> {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let count = crate::maps::cmdline_count();
    if count == 0 {
        return None;
    }
    let (start, end) = kernel::task_args(task).ok()?;
    let len = (end.saturating_sub(start) as usize).min(CMDLINE_READ);
    if len == 0 {
        return None;
    }
    let tmp = (*s).tmp.as_mut_ptr();
    if aya_ebpf::helpers::generated::bpf_probe_read_user(
        tmp as *mut c_void,
        (len & (CMDLINE_READ * 2 - 1)) as u32,
        start as *const c_void,
    ) != 0
    {
        return None;
    }
    // The program and its first argument only (`node SCRIPT`, a launcher's own path): a
    // wrapper that names the agent further on (`nsenter ... -- node SCRIPT`, `sudo`) is not it.
    wv(&mut (*s).cmd_len, len as u32);
    wv(&mut (*s).cmd_hit, 0);
    bpf_loop(len as u32, args_end_step as *mut c_void, core::ptr::null_mut(), 0);
    // One selector per iteration of a second loop: unrolled, each selector's copy and search
    // was verified again (16 times; most of what this program cost the verifier).
    wv(&mut (*s).cmd_hit, 0);
    bpf_loop(count.min(CMDLINE_MAX), cmdline_sel_step as *mut c_void, core::ptr::null_mut(), 0);
    if rv(&(*s).cmd_hit) != 0 {
        return Some(rv(&(*s).cmd_agent));
    }
    None
}

/// Selector `i` of `SEL_CMDLINE`, searched for in the command line. Returns 1 to stop (found,
/// with the agent in `cmd_agent`).
extern "C" fn cmdline_sel_step(i: u64, _ctx: *mut c_void) -> i64 {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let Some(sel) = crate::maps::SEL_CMDLINE.get(i as u32) else {
        return 1;
    };
    unsafe {
        let len = (rv(&(*s).cmd_len) as usize).min(CMDLINE_READ);
        let tlen = sel.len as usize;
        if tlen == 0 || tlen > CMDLINE_TEXT_LEN || tlen > len {
            return 0;
        }
        (*s).cmd_text = sel.text;
        wv(&mut (*s).cmd_tlen, tlen as u32);
        wv(&mut (*s).cmd_hit, 0);
        bpf_loop((len - tlen + 1) as u32, cmdline_step as *mut c_void, core::ptr::null_mut(), 0);
        if rv(&(*s).cmd_hit) != 0 {
            wv(&mut (*s).cmd_agent, sel.agent);
            return 1;
        }
    }
    0
}

/// The end of the second argument: `cmd_len` is cut at its NUL (`cmd_hit` counts NULs).
extern "C" fn args_end_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    unsafe {
        let i = i as usize & (2 * CMDLINE_READ - 1);
        if (*s).tmp[i] != 0 {
            return 0;
        }
        let n = core::ptr::read_volatile(&(*s).cmd_hit) + 1;
        core::ptr::write_volatile(&mut (*s).cmd_hit, n);
        if n == 2 {
            core::ptr::write_volatile(&mut (*s).cmd_len, i as u32);
            return 1;
        }
    }
    0
}

/// One position of the `cmdline` search: does TEXT start at byte `i`? Returns 1 to stop.
extern "C" fn cmdline_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    unsafe {
        let tlen = core::ptr::read_volatile(&(*s).cmd_tlen) as usize;
        let t = (*s).tmp.as_ptr();
        let i = i as usize & (CMDLINE_READ - 1);
        let mut j = 0;
        while j < CMDLINE_TEXT_LEN {
            if j >= tlen {
                core::ptr::write_volatile(&mut (*s).cmd_hit, 1);
                return 1;
            }
            if *t.add((i + j) & (2 * CMDLINE_READ - 1)) != (*s).cmd_text[j] {
                return 0;
            }
            j += 1;
        }
        core::ptr::write_volatile(&mut (*s).cmd_hit, 1);
        1
    }
}

#[inline(always)]
fn try_exec() -> Result<(), i64> {
    if !kernel::offsets_valid() {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let s = agent::scratch().ok_or(-1i64)?;
    let task = kernel::current_task();
    let mut flags = 0;
    let st = match PROCS.get_ptr_mut(&tgid) {
        Some(p) => {
            // A new image: whatever TLS the old one did says nothing about this one.
            unsafe { (*p).flags &= !proc_flags::TLS_VISIBLE };
            let st = unsafe { *p };
            if agent::reap_if_killed(&st) {
                return Ok(());
            }
            st
        }
        None => {
            let Some((agent_id, pflags)) = (unsafe { select(s, task) }) else {
                return Ok(());
            };
            let start_ns = unsafe { kernel::process_start_ns(task)? };
            // A run id unique on this boot: the instance's start, salted with its tgid.
            let run_id = unsafe { bpf_ktime_get_boot_ns() } ^ ((tgid as u64) << 40);
            let st = ProcState { agent: agent_id, tls_token: 0, run_id, start_ns, flags: pflags, _pad: 0 };
            if PROCS.insert(&tgid, &st, 0).is_err() {
                // A selected process that cannot be tracked is not let run untracked.
                count(stat::PROCS_FULL);
                unsafe { aya_ebpf::helpers::generated::bpf_send_signal(agent::SIGKILL) };
                return Ok(());
            }
            flags |= event_flags::INSTANCE_START;
            st
        }
    };
    // Record what was exec'd: the mapped executable's path.
    let (d, m) = unsafe { kernel::exe_path(task)? };
    let b = unsafe { dentry_path(s, d, m)? };
    if b.truncated() {
        flags |= event_flags::PATH_TRUNCATED;
    }
    let r = Rec {
        kind: kind::PROCESS_EXEC,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::TRACEPOINT,
        flags,
        aux: 0,
        aux2: 0,
    };
    emit(&st, &r, PathRef(unsafe { (*s).buf.as_ptr() }, b.len), PathRef::NONE);
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
#[inline(always)]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(st) = (unsafe { PROCS.get(&tgid) }).copied() else {
        return 0;
    };
    // This thread's calls in flight are over (a thread killed inside a syscall never reaches
    // its sys_exit).
    let _ = PENDING.remove(&pid_tgid);
    let _ = PENDING_OPS.remove(&pid_tgid);
    let task = kernel::current_task();
    // The process stays an agent until its last thread is gone, whichever thread that is. If
    // the group's state cannot be read, the entry stays (a stale entry costs a lookup; a
    // missing one frees the process).
    if !unsafe { kernel::task_group_dead(task) }.unwrap_or(false) {
        return 0;
    }
    let _ = PROCS.remove(&tgid);
    let code = unsafe { kernel::task_exit_code(task) }.unwrap_or(0);
    let r = Rec {
        kind: kind::PROCESS_EXIT,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::TRACEPOINT,
        flags: 0,
        aux: code as u64,
        aux2: 0,
    };
    emit(&st, &r, PathRef::NONE, PathRef::NONE);
    0
}

/// Attached to `sys_exit_wait4` and `sys_exit_waitid`: a parent that wakes up because the
/// member of its instance that broke the policy was killed dies before it runs another
/// instruction, instead of carrying on until userspace sweeps the tree.
#[tracepoint]
#[inline(always)]
pub fn sys_exit_reap(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(st) = unsafe { PROCS.get(&tgid) } {
        agent::reap_if_killed(st);
    }
    0
}
