//! The file-write boundary on syscall tracepoints.
//!
//! Opens are decided at `sys_exit`, on the `struct file` the kernel actually opened (symlinks
//! and hard links resolved, dirfd and cwd applied by the kernel itself); namespace and metadata
//! changes are decided at `sys_enter` on the string resolved against dirfd/cwd and normalised.
//! Either way the tracepoint layer cannot refuse: a kill lands after the syscall has run, and
//! the event says so (`AFTER_EFFECT`). Refusal belongs to BPF LSM and Landlock.
use agent_monitor_common::{action, agent_flags, event_flags, kind, layer, open_is_write, path_class, stat, verdict};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_probe_read_kernel as raw_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use core::ffi::c_void;

use crate::{
    agent::{self, count, current_agent, decide, path_class, reap_if_killed, PathRef, Rec},
    kernel::{self, dentry_path, resolve_user_path, AT_FDCWD, S_IFCHR, S_IFIFO, S_IFSOCK},
    maps::{PENDING, PENDING_OPS},
};

use crate::kernel::tp_arg as arg;

#[inline(always)]
fn dirfd(ctx: &TracePointContext, i: Option<usize>) -> i64 {
    match i {
        Some(i) => arg(ctx, i) as i32 as i64,
        None => AT_FDCWD,
    }
}

#[inline(always)]
fn rec(kind: u32, flags: u32, aux: u64) -> Rec {
    Rec { kind, verdict: verdict::ALLOWED, action: action::NONE, layer: layer::TRACEPOINT, flags, aux, aux2: 0 }
}

/// A path operation with one or two paths (`dfd` argument index or `AT_FDCWD`, path index).
/// Resolved and decided now, while the paths still name what they name; acted on in
/// [`sys_exit_path_any`] once the syscall has succeeded.
#[inline(always)]
fn path_op(
    ctx: &TracePointContext,
    kind: u32,
    p1: (Option<usize>, usize),
    p2: Option<(Option<usize>, usize)>,
    aux: Option<usize>,
) -> Result<(), i64> {
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    if reap_if_killed(&st) || !kernel::offsets_valid() {
        return Ok(());
    }
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let op = &mut (*s).op;
        let b1 = resolve_user_path(s, dirfd(ctx, p1.0), arg(ctx, p1.1) as *const u8)?;
        let c1 = path_class(s, cfg.slot, b1);
        let ok1 = c1 == path_class::WRITABLE;
        raw_read_kernel(op.p1.as_mut_ptr() as *mut c_void, op.p1.len() as u32, (*s).buf.as_ptr() as *const c_void);
        op.len1 = b1.len;
        op.len2 = 0;
        op.flags = if b1.truncated { event_flags::PATH_TRUNCATED } else { 0 };
        if c1 == path_class::PROTECTED {
            op.flags |= event_flags::PROTECTED_PATH;
        }
        let mut ok = ok1;
        if let Some(p2) = p2 {
            let b2 = resolve_user_path(s, dirfd(ctx, p2.0), arg(ctx, p2.1) as *const u8)?;
            let c2 = path_class(s, cfg.slot, b2);
            let ok2 = c2 == path_class::WRITABLE;
            if c2 == path_class::PROTECTED && c1 != path_class::PROTECTED {
                op.flags |= event_flags::PROTECTED_PATH | event_flags::SECOND_PATH;
            }
            raw_read_kernel(op.p2.as_mut_ptr() as *mut c_void, op.p2.len() as u32, (*s).buf.as_ptr() as *const c_void);
            op.len2 = b2.len;
            if b2.truncated {
                op.flags |= event_flags::PATH_TRUNCATED;
            }
            if ok1 && !ok2 {
                // The event's target is the path outside `writable`.
                op.flags |= event_flags::SECOND_PATH;
            }
            if op.flags & event_flags::PROTECTED_PATH != 0 && c1 == path_class::PROTECTED {
                op.flags &= !event_flags::SECOND_PATH;
            }
            ok = ok1 && ok2;
        }
        if ok && cfg.flags & agent_flags::AUDIT == 0 {
            return Ok(());
        }
        op.kind = kind;
        op.ok = ok as u32;
        op.aux = aux.map(|i| arg(ctx, i)).unwrap_or(0);
        let _ = PENDING_OPS.insert(&bpf_get_current_pid_tgid(), op, 0);
    }
    Ok(())
}

/// Attached to the `sys_exit` of every syscall [`path_op`] watches.
#[tracepoint]
#[inline(always)]
pub fn sys_exit_path_any(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let Some(op) = PENDING_OPS.get_ptr(&key) else {
        return 0;
    };
    let ret = kernel::tp_ret(&ctx);
    if ret >= 0 {
        if let Some((st, cfg)) = current_agent() {
            unsafe {
                let op = &*op;
                let (t, o) = if op.flags & event_flags::SECOND_PATH != 0 {
                    (PathRef(op.p2.as_ptr(), op.len2), PathRef(op.p1.as_ptr(), op.len1))
                } else {
                    (PathRef(op.p1.as_ptr(), op.len1), PathRef(op.p2.as_ptr(), op.len2))
                };
                let o = if op.len2 == 0 { PathRef::NONE } else { o };
                decide(&st, &cfg, op.ok != 0, rec(op.kind, op.flags, op.aux), t, o);
            }
        }
    }
    let _ = PENDING_OPS.remove(&key);
    0
}

/// An operation on an open file descriptor (`fchmod`, `fchown`).
#[inline(always)]
fn fd_op(ctx: &TracePointContext, kind: u32, fd_arg: usize, aux: Option<usize>) -> Result<(), i64> {
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    if reap_if_killed(&st) || !kernel::offsets_valid() {
        return Ok(());
    }
    let s = agent::scratch().ok_or(-1i64)?;
    let aux = aux.map(|i| arg(ctx, i)).unwrap_or(0);
    unsafe {
        let file = kernel::fd_file(kernel::current_task(), arg(ctx, fd_arg) as i32 as i64)?;
        let (d, m) = kernel::file_path(file)?;
        let b = dentry_path(s, d, m)?;
        let c = path_class(s, cfg.slot, b);
        let ok = c == path_class::WRITABLE;
        let mut flags = if b.truncated { event_flags::PATH_TRUNCATED } else { 0 };
        if c == path_class::PROTECTED {
            flags |= event_flags::PROTECTED_PATH;
        }
        decide(&st, &cfg, ok, rec(kind, flags, aux), PathRef((*s).buf.as_ptr(), b.len), PathRef::NONE);
    }
    Ok(())
}

/// Remember a write-intent open until its `sys_exit`.
#[inline(always)]
fn open_enter(flags: u64) {
    if !open_is_write(flags) {
        return;
    }
    let Some((st, _)) = current_agent() else {
        return;
    };
    if reap_if_killed(&st) {
        return;
    }
    // Rewritten in place once the thread has an entry: an LRU insert and delete per open
    // (pop and push on the LRU lists) cost more than the rest of the non-agent path.
    let key = bpf_get_current_pid_tgid();
    match PENDING.get_ptr_mut(&key) {
        Some(p) => unsafe { *p = flags | PENDING_LIVE },
        None => {
            let _ = PENDING.insert(&key, &(flags | PENDING_LIVE), 0);
        }
    }
}

/// Marks a `PENDING` entry as an open in flight (open flags never use bit 63); `sys_exit`
/// clears the value instead of deleting the entry.
const PENDING_LIVE: u64 = 1 << 63;

macro_rules! path_probe {
    ($name:ident, $kind:expr, $p1:expr, $p2:expr, $aux:expr) => {
        #[tracepoint]
        #[inline(always)]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = path_op(&ctx, $kind, $p1, $p2, $aux);
            0
        }
    };
}

// Arguments are (dirfd index or None for AT_FDCWD, path index), from each syscall's prototype.
path_probe!(sys_enter_truncate, kind::FILE_WRITE, (None, 0), None, Some(1));
path_probe!(sys_enter_unlink, kind::FILE_DELETE, (None, 0), None, None);
path_probe!(sys_enter_unlinkat, kind::FILE_DELETE, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_rmdir, kind::FILE_DELETE, (None, 0), None, None);
path_probe!(sys_enter_rename, kind::FILE_RENAME, (None, 0), Some((None, 1)), None);
path_probe!(sys_enter_renameat, kind::FILE_RENAME, (Some(0), 1), Some((Some(2), 3)), None);
path_probe!(sys_enter_renameat2, kind::FILE_RENAME, (Some(0), 1), Some((Some(2), 3)), Some(4));
path_probe!(sys_enter_link, kind::FILE_LINK, (None, 0), Some((None, 1)), None);
path_probe!(sys_enter_linkat, kind::FILE_LINK, (Some(0), 1), Some((Some(2), 3)), Some(4));
// A symlink's target is only text; the link it creates is what must be inside `writable`.
path_probe!(sys_enter_symlink, kind::FILE_LINK, (None, 1), None, None);
path_probe!(sys_enter_symlinkat, kind::FILE_LINK, (Some(1), 2), None, None);
path_probe!(sys_enter_mkdir, kind::FILE_MKDIR, (None, 0), None, Some(1));
path_probe!(sys_enter_mkdirat, kind::FILE_MKDIR, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_mknod, kind::FILE_MKDIR, (None, 0), None, Some(1));
path_probe!(sys_enter_mknodat, kind::FILE_MKDIR, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_chmod, kind::FILE_CHMOD, (None, 0), None, Some(1));
path_probe!(sys_enter_fchmodat, kind::FILE_CHMOD, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_fchmodat2, kind::FILE_CHMOD, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_chown, kind::FILE_CHMOD, (None, 0), None, Some(1));
path_probe!(sys_enter_lchown, kind::FILE_CHMOD, (None, 0), None, Some(1));
path_probe!(sys_enter_fchownat, kind::FILE_CHMOD, (Some(0), 1), None, Some(2));

#[tracepoint]
#[inline(always)]
pub fn sys_enter_fchmod(ctx: TracePointContext) -> u32 {
    let _ = fd_op(&ctx, kind::FILE_CHMOD, 0, Some(1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_fchown(ctx: TracePointContext) -> u32 {
    let _ = fd_op(&ctx, kind::FILE_CHMOD, 0, Some(1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 2));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_creat(_ctx: TracePointContext) -> u32 {
    const O_WRONLY_CREAT_TRUNC: u64 = 0o1101;
    open_enter(O_WRONLY_CREAT_TRUNC);
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how = arg(&ctx, 2) as *const u64;
    let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
    open_enter(flags);
    0
}

/// Attached to `sys_exit_{open,openat,openat2,creat}`.
#[tracepoint]
#[inline(always)]
pub fn sys_exit_open_any(ctx: TracePointContext) -> u32 {
    let _ = try_open_exit(&ctx);
    0
}

#[inline(always)]
fn try_open_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let key = bpf_get_current_pid_tgid();
    let Some(p) = PENDING.get_ptr_mut(&key) else {
        return Ok(());
    };
    let flags = unsafe { *p };
    if flags & PENDING_LIVE == 0 {
        return Ok(());
    }
    unsafe { *p = 0 };
    let flags = flags & !PENDING_LIVE;
    let ret = kernel::tp_ret(ctx);
    if ret < 0 {
        return Ok(()); // the open failed: nothing was written
    }
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let file = match kernel::fd_file(kernel::current_task(), ret) {
            Ok(f) => f,
            Err(e) => {
                count(stat::READ_FAILED);
                return Err(e);
            }
        };
        let t = kernel::file_mode_type(file)?;
        if t == S_IFIFO || t == S_IFSOCK {
            return Ok(()); // pipes and sockets are IPC, not files
        }
        let _ = S_IFCHR; // character devices are matched like files (IMPLICIT_WRITABLE has the benign ones)
        let (d, m) = kernel::file_path(file)?;
        let b = dentry_path(s, d, m)?;
        let c = path_class(s, cfg.slot, b);
        let ok = c == path_class::WRITABLE;
        let mut f = if b.truncated { event_flags::PATH_TRUNCATED } else { 0 };
        if c == path_class::PROTECTED {
            f |= event_flags::PROTECTED_PATH;
        }
        decide(&st, &cfg, ok, rec(kind::FILE_WRITE, f, flags), PathRef((*s).buf.as_ptr(), b.len), PathRef::NONE);
    }
    Ok(())
}
