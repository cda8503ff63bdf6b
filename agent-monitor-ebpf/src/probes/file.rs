//! The file-write boundary on syscall tracepoints.
//!
//! Opens are decided at `sys_exit`, on the `struct file` the kernel actually opened (symlinks
//! and hard links resolved, dirfd and cwd applied by the kernel itself); namespace and metadata
//! changes are decided at `sys_enter` on the string resolved against dirfd/cwd and normalised.
//! Either way the tracepoint layer cannot refuse: a kill lands after the syscall has run, and
//! the event says so (`AFTER_EFFECT`). Refusal belongs to BPF LSM and Landlock.
//!
//! Fail closed: an argument that cannot be read at `sys_enter` (a path on a page the process
//! never touched) is read again at `sys_exit`, once the kernel has faulted it in; if it still
//! cannot be read, the operation is a violation (`ARG_UNREADABLE`). A path whose name is not
//! known to be the object's (cut short, through a mount the daemon does not know) is never
//! inside `writable`.
use agent_monitor_common::{
    action, agent_flags, event_flags, kind, layer, open_is_write, path_class, proc_flags, stat, syscalls::tamper_call,
    verdict, UNIX_PATH_LEN,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_probe_read_kernel as raw_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use core::ffi::c_void;

use crate::{
    agent::{self, count, current_agent, decide, decide_with, emit, path_class, reap_if_killed, PathRef, Rec},
    kernel::{self, dentry_path, resolve_user_path, Built, AT_FDCWD, S_IFIFO, S_IFMT, S_IFSOCK},
    maps::{PendingOpen, Scratch, PENDING, PENDING_OPS, UNIX_ALLOW},
};

use crate::kernel::tp_arg as arg;

const S_IFBLK: u16 = 0o060000;
const S_IFREG: u16 = 0o100000;
const S_IFCHR_: u16 = 0o020000;
/// `FMODE_WRITE`: the file is open for writing, whatever the flags the caller passed said.
const FMODE_WRITE: u32 = 0x2;
/// A class that says "the argument could not be read" (not a `path_class` value).
const UNREAD: u32 = 0xffff;

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

/// How a path argument is judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// Must be inside `writable`.
    Writable,
    /// A symlink's target: it is only text, but a link inside `writable` that leads outside
    /// would make every later path operation through it act outside. An absolute target must
    /// be inside `writable`; a relative one may not climb (`..`).
    LinkTarget,
}

/// `PendingOp::_pad` bits: what the operation does to the symlinks an agent made that lead out
/// of `writable` (`LINKS_OUT`), once it has succeeded.
mod link_op {
    /// A symlink leading out of `writable` is made at the first path: remember it.
    pub const MAKE: u32 = 1;
    /// The first path is such a symlink and is removed: forget it.
    pub const DROP: u32 = 2;
    /// The first path is such a symlink and is renamed to the second: move it.
    pub const MOVE: u32 = 4;
}

/// Resolve one path argument into `s.buf` and classify it; `UNREAD` when the string cannot be
/// read. Returns (class, built path, whether it names a tracked symlink itself). On the
/// tracepoint layer a path through a symlink the agent made out of `writable`, or naming one
/// for an operation that follows it (`follows`: chmod, chown, truncate, xattrs, times), is
/// outside `writable` (the BPF LSM hooks see the real object).
#[inline(always)]
unsafe fn classify(
    s: *mut Scratch,
    slot: u32,
    dfd: i64,
    upath: u64,
    judge: Judge,
    follows: bool,
) -> (u32, Option<Built>, bool) {
    let (class, b) = classify_name(s, slot, dfd, upath, judge);
    let Some(mut b) = b else { return (class, None, false) };
    if class != path_class::WRITABLE || judge != Judge::Writable || crate::maps::lsm_active() {
        return (class, Some(b), false);
    }
    match agent::linked_out(s, &mut b.len) {
        None => (class, Some(b), false),
        Some(true) if !follows => (class, Some(b), true),
        // Judged outside, under the real object's name where the link's target is known.
        Some(_) => (path_class::OUTSIDE, Some(b), false),
    }
}

#[inline(always)]
unsafe fn classify_name(s: *mut Scratch, slot: u32, dfd: i64, upath: u64, judge: Judge) -> (u32, Option<Built>) {
    if judge == Judge::LinkTarget {
        let first: u8 = match bpf_probe_read_user(upath as *const u8) {
            Ok(b) => b,
            Err(_) => return (UNREAD, None),
        };
        if first != b'/' {
            return match kernel::climbs(s, upath as *const u8) {
                Ok(false) => (path_class::WRITABLE, None),
                Ok(true) => (path_class::OUTSIDE, None),
                Err(_) => (UNREAD, None),
            };
        }
    }
    match resolve_user_path(s, dfd, upath as *const u8) {
        Ok(b) => (path_class(s, slot, b), Some(b)),
        Err(_) => (UNREAD, None),
    }
}

/// Record one classified path in the pending operation (its text, its class and flags).
#[inline(always)]
unsafe fn keep(s: *mut Scratch, second: bool, class: u32, b: Option<Built>, dfd: i64, upath: u64) {
    let op = &mut (*s).op;
    let (dst, len, unread) = if second {
        (op.p2.as_mut_ptr(), &mut op.len2, &mut op.unread2)
    } else {
        (op.p1.as_mut_ptr(), &mut op.len1, &mut op.unread1)
    };
    match b {
        Some(b) => {
            raw_read_kernel(
                dst as *mut c_void,
                (agent_monitor_common::PATH_LEN + 4) as u32,
                (*s).buf.as_ptr() as *const c_void,
            );
            *len = b.len;
            op.flags |= b.flags();
            *unread = [0, 0];
        }
        None => {
            *dst = 0;
            *len = 0;
            *unread = if class == UNREAD { [dfd as u64, upath] } else { [0, 0] };
        }
    }
    if class == path_class::PROTECTED && op.flags & event_flags::PROTECTED_PATH == 0 {
        op.flags |= event_flags::PROTECTED_PATH;
        if second {
            op.flags |= event_flags::SECOND_PATH;
        }
    }
}

/// A path operation with one or two paths (`dfd` argument index or `AT_FDCWD`, path index).
/// Resolved and decided now, while the paths still name what they name; acted on in
/// [`sys_exit_path_any`] once the syscall has succeeded. `device`: the mode argument of an
/// `mknod` (a device node is refused wherever it is made).
#[inline(always)]
fn path_op(
    ctx: &TracePointContext,
    kind: u32,
    p1: (Option<usize>, usize),
    p2: Option<(Option<usize>, usize, Judge)>,
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
        op.flags = 0;
        op.aux = aux.map(|i| arg(ctx, i)).unwrap_or(0);
        op._pad = 0;
        let (d1, u1) = (dirfd(ctx, p1.0), arg(ctx, p1.1));
        let follows = kind == kind::FILE_CHMOD || kind == kind::FILE_WRITE || kind == META;
        let (c1, b1, link1) = classify(s, cfg.slot, d1, u1, Judge::Writable, follows);
        keep(s, false, c1, b1, d1, u1);
        let mut c2 = path_class::WRITABLE;
        if let Some((dfd2, i2, judge)) = p2 {
            let (d2, u2) = (dirfd(ctx, dfd2), arg(ctx, i2));
            let (c, b2, _) = classify(s, cfg.slot, d2, u2, judge, false);
            c2 = c;
            keep(s, true, c2, b2, d2, u2);
            // A symlink made inside `writable` that leads out of it is allowed and remembered:
            // what later goes through it is judged outside (the LSM hooks see through it).
            if judge == Judge::LinkTarget && c1 == path_class::WRITABLE && (c2 == path_class::OUTSIDE) {
                c2 = path_class::WRITABLE;
                if !crate::maps::lsm_active() {
                    (*s).op._pad = link_op::MAKE;
                }
            }
        } else {
            (*s).op.len2 = 0;
            (*s).op.unread2 = [0, 0];
        }
        let op = &mut (*s).op;
        if link1 {
            op._pad |= if kind == kind::FILE_RENAME {
                link_op::MOVE
            } else if kind == kind::FILE_DELETE {
                link_op::DROP
            } else {
                0
            };
        }
        // A device node is no file: made anywhere, it opens raw disks and memory.
        let mode = (op.aux & S_IFMT as u64) as u16;
        let device = kind == kind::FILE_MKDIR && aux.is_some() && (mode == S_IFBLK || mode == S_IFCHR_);
        if device {
            op.flags |= event_flags::DEVICE;
        }
        let ok = c1 == path_class::WRITABLE && c2 == path_class::WRITABLE && !device;
        if ok && cfg.flags & agent_flags::AUDIT == 0 && op._pad == 0 {
            return Ok(());
        }
        // The event's target is the path that is not writable (the second when only it is),
        // except for a symlink: its target is the link it makes (`link -> where it leads`).
        let symlink = matches!(p2, Some((_, _, Judge::LinkTarget)));
        if symlink {
            op.flags |= event_flags::SYMLINK;
        }
        if c1 == path_class::WRITABLE
            && c2 != path_class::WRITABLE
            && op.flags & event_flags::PROTECTED_PATH == 0
            && !symlink
        {
            op.flags |= event_flags::SECOND_PATH;
        }
        op.kind = kind;
        op.ok = ok as u32;
        if PENDING_OPS.insert(&bpf_get_current_pid_tgid(), &*op, 0).is_err() {
            // Nowhere to remember it until sys_exit: decided now, as a violation.
            count(stat::TABLE_FULL);
            let r = rec(kind, op.flags, op.aux);
            decide(&st, &cfg, false, r, PathRef(op.p1.as_ptr(), op.len1), PathRef::NONE);
        }
    }
    Ok(())
}

/// Attached to the `sys_exit` of every syscall [`path_op`] watches.
#[tracepoint]
#[inline(always)]
pub fn sys_exit_path_any(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let Some(op) = PENDING_OPS.get_ptr_mut(&key) else {
        return 0;
    };
    let ret = kernel::tp_ret(&ctx);
    if unsafe { (*op).aux } & super::net::UNIX_REFUSED_UNREAD != 0 {
        if let Some((st, cfg)) = current_agent() {
            unsafe { super::net::unix_refused_exit(&st, &cfg, &mut *op) };
        }
    } else if ret >= 0 {
        if let Some((st, cfg)) = current_agent() {
            unsafe { exit_path_op(&st, &cfg, &mut *op) };
        }
    } else if ret == EACCES || ret == EXDEV {
        // Refused by the kernel. By the Landlock ruleset of an `exec` command (EXDEV: a rename
        // or link across its rules), for a path this layer also judges outside: on the record.
        if let Some((st, _)) = current_agent() {
            unsafe {
                let op = &*op;
                if st.flags & proc_flags::LANDLOCKED != 0 && op.ok == 0 && op.kind != kind::IPC_CONNECT {
                    let (t, o) = if op.flags & event_flags::SECOND_PATH != 0 {
                        (PathRef(op.p2.as_ptr(), op.len2), PathRef(op.p1.as_ptr(), op.len1))
                    } else {
                        (PathRef(op.p1.as_ptr(), op.len1), PathRef(op.p2.as_ptr(), op.len2))
                    };
                    let o = if op.len2 == 0 { PathRef::NONE } else { o };
                    let kind = if op.kind == META { kind::FILE_CHMOD } else { op.kind };
                    landlock_refused(&st, kind, op.flags, op.aux, t, o);
                }
            }
        }
    }
    let _ = PENDING_OPS.remove(&key);
    0
}

#[inline(always)]
unsafe fn exit_path_op(
    st: &agent_monitor_common::ProcState,
    cfg: &agent_monitor_common::AgentCfg,
    op: &mut crate::maps::PendingOp,
) {
    if op.kind == kind::IPC_CONNECT {
        if op.unread1[1] != 0 && !super::net::unix_reread(op, cfg.slot) {
            return; // not a Unix socket after all: the cgroup hooks judged it
        }
        let r = rec(kind::IPC_CONNECT, op.flags, op.aux);
        let p = if op.len1 == 0 { PathRef::NONE } else { PathRef(op.p1.as_ptr(), op.len1) };
        decide_with(st, cfg, op.ok != 0, r, p, PathRef::NONE, false);
        return;
    }
    if op._pad != 0 && !track_links(cfg, op) {
        // No room to remember a symlink leading out: what goes through it could not be
        // judged, so making it is the violation (fail closed).
        count(stat::TABLE_FULL);
        let r = rec(op.kind, op.flags, op.aux);
        decide_with(st, cfg, false, r, PathRef(op.p1.as_ptr(), op.len1), PathRef(op.p2.as_ptr(), op.len2), false);
        return;
    }
    // What could not be read at sys_enter is read now; what still cannot be is a violation.
    // (The first path is read again; a second path unread too is a violation outright: one
    // path walk per program keeps it within the verifier's budget.)
    let mut ok = op.ok != 0;
    if op.unread2[1] != 0 {
        op.flags |= event_flags::ARG_UNREADABLE;
        ok = false;
    }
    let unread = op.unread1;
    if unread[1] != 0 {
        let Some(s) = agent::scratch() else { return };
        let follows = op.kind == kind::FILE_CHMOD || op.kind == kind::FILE_WRITE || op.kind == META;
        let (c, b, _) = classify(s, cfg.slot, unread[0] as i64, unread[1], Judge::Writable, follows);
        if c == UNREAD {
            op.flags |= event_flags::ARG_UNREADABLE;
            ok = false;
        } else {
            if let Some(b) = b {
                raw_read_kernel(
                    op.p1.as_mut_ptr() as *mut c_void,
                    (agent_monitor_common::PATH_LEN + 4) as u32,
                    (*s).buf.as_ptr() as *const c_void,
                );
                op.len1 = b.len;
                op.flags |= b.flags();
            }
            if c == path_class::PROTECTED {
                op.flags |= event_flags::PROTECTED_PATH;
            }
            if c != path_class::WRITABLE {
                ok = false;
            }
        }
    }
    let (t, o) = if op.flags & event_flags::SECOND_PATH != 0 {
        (PathRef(op.p2.as_ptr(), op.len2), PathRef(op.p1.as_ptr(), op.len1))
    } else {
        (PathRef(op.p1.as_ptr(), op.len1), PathRef(op.p2.as_ptr(), op.len2))
    };
    let o = if op.len2 == 0 { PathRef::NONE } else { o };
    // Device nodes and unreadable arguments are the tracepoint layer's to act on even where
    // the LSM layer is up (it judges the path, not these).
    let lsm_covers = op.flags & (event_flags::DEVICE | event_flags::ARG_UNREADABLE) == 0 && op.kind != META;
    let kind = if op.kind == META { kind::FILE_CHMOD } else { op.kind };
    decide_with(st, cfg, ok, rec(kind, op.flags, op.aux), t, o, lsm_covers);
}

/// After a successful operation on a symlink leading out of `writable`: remember it (made),
/// forget it (removed), or move it (renamed). Returns false if it could not be remembered.
#[inline(always)]
unsafe fn track_links(cfg: &agent_monitor_common::AgentCfg, op: &crate::maps::PendingOp) -> bool {
    let Some(s) = agent::scratch() else { return false };
    let key_of = |p: *const u8, len: u32| {
        raw_read_kernel(
            (*s).buf.as_mut_ptr() as *mut c_void,
            (agent_monitor_common::PATH_LEN + 4) as u32,
            p as *const c_void,
        );
        let b = Built::new(len, false, false, false);
        agent::path_class_of_name(s, cfg.slot, b);
    };
    if op._pad & link_op::MAKE != 0 {
        // The link is the first path; where it leads, the second (resolved when absolute).
        key_of(op.p1.as_ptr(), op.len1);
        return agent::set_linked_out(s, true, op.p2.as_ptr(), op.len2);
    }
    // Removed or renamed: the entry goes (a renamed link is remembered again under its new
    // name, where it leads no longer known: what goes through it is still outside).
    key_of(op.p1.as_ptr(), op.len1);
    agent::set_linked_out(s, false, core::ptr::null(), 0);
    if op._pad & link_op::MOVE != 0 {
        key_of(op.p2.as_ptr(), op.len2);
        return agent::set_linked_out(s, true, op.p2.as_ptr(), 0);
    }
    true
}

/// A metadata change the LSM layer's path hooks do not see (extended attributes, times): a
/// `file.chmod` decided by the tracepoint layer on every kernel. Internal kind, never emitted.
const META: u32 = 0x1000;

/// An operation on an open file descriptor (`fchmod`, `fchown`, `fsetxattr`, `futimens`).
#[inline(always)]
fn fd_op(ctx: &TracePointContext, kind: u32, fd: i64, aux: Option<usize>) -> Result<(), i64> {
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    if reap_if_killed(&st) || !kernel::offsets_valid() {
        return Ok(());
    }
    let s = agent::scratch().ok_or(-1i64)?;
    let aux = aux.map(|i| arg(ctx, i)).unwrap_or(0);
    unsafe {
        let file = kernel::fd_file(kernel::current_task(), fd)?;
        if kernel::file_on_kernel_mount(file) {
            return Ok(()); // pipes, sockets, memfds: no file anyone names
        }
        let (d, m) = kernel::file_path(file)?;
        let b = dentry_path(s, d, m)?;
        let c = path_class(s, cfg.slot, b);
        let ok = c == path_class::WRITABLE;
        let mut flags = b.flags();
        if c == path_class::PROTECTED {
            flags |= event_flags::PROTECTED_PATH;
        }
        let (kind, lsm_covers) = if kind == META { (kind::FILE_CHMOD, false) } else { (kind, true) };
        decide_with(&st, &cfg, ok, rec(kind, flags, aux), PathRef((*s).buf.as_ptr(), b.len), PathRef::NONE, lsm_covers);
    }
    Ok(())
}

/// Remember an open until its `sys_exit`. `how`: `openat2`'s `open_how`, read here and again at
/// exit (a racing thread may change it between the two; the file's mode at exit decides too).
#[inline(always)]
fn open_enter(flags: u64, how: u64, dfd: i64, path: u64) {
    if how == 0 && !open_is_write(flags) {
        return;
    }
    let Some((st, cfg)) = current_agent() else {
        return;
    };
    if reap_if_killed(&st) {
        return;
    }
    let v = PendingOpen { flags: flags | PENDING_LIVE, how, dfd, path };
    // Rewritten in place once the thread has an entry: an insert and delete per open cost more
    // than the rest of the non-agent path.
    let key = bpf_get_current_pid_tgid();
    match PENDING.get_ptr_mut(&key) {
        Some(p) => unsafe { *p = v },
        None => {
            if PENDING.insert(&key, &v, 0).is_err() {
                // Nowhere to remember it: the open cannot be judged at exit. Fail closed.
                count(stat::TABLE_FULL);
                let r = rec(kind::FILE_WRITE, event_flags::ARG_UNREADABLE, flags);
                decide(&st, &cfg, false, r, PathRef::NONE, PathRef::NONE);
            }
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

const W: Judge = Judge::Writable;
const T: Judge = Judge::LinkTarget;

// Arguments are (dirfd index or None for AT_FDCWD, path index), from each syscall's prototype.
path_probe!(sys_enter_truncate, kind::FILE_WRITE, (None, 0), None, Some(1));
path_probe!(sys_enter_unlink, kind::FILE_DELETE, (None, 0), None, None);
path_probe!(sys_enter_unlinkat, kind::FILE_DELETE, (Some(0), 1), None, Some(2));
path_probe!(sys_enter_rmdir, kind::FILE_DELETE, (None, 0), None, None);
path_probe!(sys_enter_rename, kind::FILE_RENAME, (None, 0), Some((None, 1, W)), None);
path_probe!(sys_enter_renameat, kind::FILE_RENAME, (Some(0), 1), Some((Some(2), 3, W)), None);
path_probe!(sys_enter_renameat2, kind::FILE_RENAME, (Some(0), 1), Some((Some(2), 3, W)), Some(4));
path_probe!(sys_enter_link, kind::FILE_LINK, (None, 0), Some((None, 1, W)), None);
path_probe!(sys_enter_linkat, kind::FILE_LINK, (Some(0), 1), Some((Some(2), 3, W)), Some(4));
// The link a symlink creates must be inside `writable`, and its target may not lead out of it.
path_probe!(sys_enter_symlink, kind::FILE_LINK, (None, 1), Some((None, 0, T)), None);
path_probe!(sys_enter_symlinkat, kind::FILE_LINK, (Some(1), 2), Some((None, 0, T)), None);
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
// Extended attributes (ACLs, file capabilities, security labels) and times: metadata writes
// no LSM path hook sees.
path_probe!(sys_enter_setxattr, META, (None, 0), None, None);
path_probe!(sys_enter_lsetxattr, META, (None, 0), None, None);
path_probe!(sys_enter_removexattr, META, (None, 0), None, None);
path_probe!(sys_enter_lremovexattr, META, (None, 0), None, None);
path_probe!(sys_enter_setxattrat, META, (Some(0), 1), None, None);
path_probe!(sys_enter_removexattrat, META, (Some(0), 1), None, None);
path_probe!(sys_enter_utime, META, (None, 0), None, None);
path_probe!(sys_enter_utimes, META, (None, 0), None, None);

/// `utimensat(dfd, path, times, flags)` and `futimesat(dfd, path, times)`: a null path names
/// the file of `dfd` itself (`futimens`).
#[inline(always)]
fn times_at(ctx: &TracePointContext) {
    if arg(ctx, 1) == 0 {
        let _ = fd_op(ctx, META, arg(ctx, 0) as i32 as i64, None);
    } else {
        let _ = path_op(ctx, META, (Some(0), 1), None, None);
    }
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_utimensat(ctx: TracePointContext) -> u32 {
    times_at(&ctx);
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_futimesat(ctx: TracePointContext) -> u32 {
    times_at(&ctx);
    0
}

macro_rules! fd_probe {
    ($name:ident, $kind:expr, $aux:expr) => {
        #[tracepoint]
        #[inline(always)]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = fd_op(&ctx, $kind, arg(&ctx, 0) as i32 as i64, $aux);
            0
        }
    };
}

fd_probe!(sys_enter_fchmod, kind::FILE_CHMOD, Some(1));
fd_probe!(sys_enter_fchown, kind::FILE_CHMOD, Some(1));
fd_probe!(sys_enter_fsetxattr, META, None);
fd_probe!(sys_enter_fremovexattr, META, None);

/// `ioctl(fd, FS_IOC_SETFLAGS | FS_IOC_FSSETXATTR, ...)`: `chattr` (immutable, append-only)
/// works on a file opened read-only. Called by the ioctl probe (`bypass.rs`).
#[inline(always)]
pub fn file_flags_ioctl(ctx: &TracePointContext) {
    let _ = fd_op(ctx, META, arg(ctx, 0) as i32 as i64, Some(1));
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 1), 0, AT_FDCWD, arg(&ctx, 0));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 2), 0, arg(&ctx, 0) as i32 as i64, arg(&ctx, 1));
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    const O_WRONLY_CREAT_TRUNC: u64 = 0o1101;
    open_enter(O_WRONLY_CREAT_TRUNC, 0, AT_FDCWD, arg(&ctx, 0));
    0
}

/// `open_by_handle_at(mount_fd, handle, flags)`: the file is judged like any open, on what the
/// kernel opened (a handle names no path; a file disconnected from its mount is outside).
#[tracepoint]
#[inline(always)]
pub fn sys_enter_open_by_handle_at(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 2), 0, AT_FDCWD, 0);
    0
}

#[tracepoint]
#[inline(always)]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // struct open_how { u64 flags; u64 mode; u64 resolve; }, in the process's memory: read
    // here and again at exit.
    let how = arg(&ctx, 2);
    let flags = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    open_enter(flags, how.max(1), arg(&ctx, 0) as i32 as i64, arg(&ctx, 1));
    0
}

/// Attached to `sys_exit_{open,openat,openat2,creat,open_by_handle_at}`.
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
    let pend = unsafe { *p };
    if pend.flags & PENDING_LIVE == 0 {
        return Ok(());
    }
    unsafe { (*p).flags = 0 };
    let mut flags = pend.flags & !PENDING_LIVE;
    let ret = kernel::tp_ret(ctx);
    if ret < 0 {
        // The open failed: nothing was written. Refused by the Landlock ruleset of an `exec`
        // command, it is on the record all the same.
        if ret == EACCES && pend.path != 0 && open_is_write(flags) {
            if let Some((st, cfg)) = current_agent() {
                if st.flags & proc_flags::LANDLOCKED != 0 {
                    let _ = landlock_refused_open(&st, &cfg, &pend, flags);
                }
            }
        }
        return Ok(());
    }
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    let mut f = 0;
    if pend.how > 1 {
        // openat2: the kernel has read `open_how` by now (the page is in); read it again.
        match unsafe { bpf_probe_read_user(pend.how as *const u64) } {
            Ok(v) => flags |= v,
            Err(_) => {
                flags |= 0o1101;
                f |= event_flags::ARG_UNREADABLE;
            }
        }
    } else if pend.how == 1 {
        // openat2 with a null `open_how`: the call failed or read nothing of ours.
        f |= event_flags::ARG_UNREADABLE;
        flags |= 0o1101;
    }
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let file = match kernel::fd_file(kernel::current_task(), ret) {
            Ok(f) => f,
            Err(e) => {
                count(stat::READ_FAILED);
                return Err(e);
            }
        };
        // The object decides too: a file the kernel opened for writing is a write.
        let fmode = kernel::file_f_mode(file).unwrap_or(FMODE_WRITE);
        if !open_is_write(flags) && fmode & FMODE_WRITE == 0 {
            return Ok(());
        }
        if kernel::file_on_kernel_mount(file) {
            // Anonymous pipes, memfds: no file anyone names. Reopened through another
            // process's /proc/PID/fd, a write into that process.
            if pend.path != 0 {
                reopened_kernel_file(s, &st, pend.dfd, pend.path);
            }
            return Ok(());
        }
        let t = kernel::file_mode_type(file)?;
        if t == S_IFSOCK {
            return Ok(());
        }
        let (d, m) = kernel::file_path(file)?;
        let b = dentry_path(s, d, m)?;
        f |= b.flags();
        if t == S_IFIFO {
            return fifo_write(s, &st, &cfg, b, f, flags);
        }
        let c = path_class(s, cfg.slot, b);
        let mut ok = c == path_class::WRITABLE && f & event_flags::ARG_UNREADABLE == 0;
        if c == path_class::PROTECTED {
            f |= event_flags::PROTECTED_PATH;
        }
        if t == S_IFBLK {
            // A block device is every file of a filesystem at once.
            ok = false;
            f |= event_flags::DEVICE;
        }
        if t == S_IFREG && kernel::file_nlink(file) > 1 {
            // A file with several names is written under all of them: one outside `writable`
            // (a link made to it there, by this agent's earlier run or a package manager's
            // store) is written too.
            ok = false;
            f |= event_flags::HARD_LINK;
        }
        let lsm_covers = f & (event_flags::DEVICE | event_flags::ARG_UNREADABLE) == 0;
        decide_with(
            &st,
            &cfg,
            ok,
            rec(kind::FILE_WRITE, f, flags),
            PathRef((*s).buf.as_ptr(), b.len),
            PathRef::NONE,
            lsm_covers,
        );
    }
    Ok(())
}

/// A pipe or memfd opened for writing by path: through the process's own descriptors
/// (`/proc/self/fd/N`, `/proc/thread-self/fd/N`, `/dev/fd/N`, `/dev/stdout`, `/proc/<own or an
/// instance member's pid>/fd/N`, `.../task/TID/fd/N`) it is the agent's; through another
/// process's it is `process.inject` (a command into a service's pipe); by any other name
/// (`/proc/self/root/proc/PID/fd/N`, a symlink to such a path) a violation too (fail closed).
#[inline(always)]
unsafe fn reopened_kernel_file(s: *mut Scratch, st: &agent_monitor_common::ProcState, dfd: i64, path: u64) {
    let Ok(_) = kernel::resolve_user_path(s, dfd, path as *const u8) else {
        super::bypass::inject(st, 0, tamper_call::PROC_FD_OPEN, 0);
        return;
    };
    let b = (*s).buf.as_ptr();
    // Does `p` appear at byte `at`?
    let at = |at: usize, p: &[u8]| -> bool {
        let mut i = 0;
        while i < p.len() {
            if *b.add((at + i) & 63) != *p.get_unchecked(i) {
                return false;
            }
            i += 1;
        }
        true
    };
    // Digits at byte `from`: (value, the byte after them).
    let digits = |from: usize| -> (u64, usize) {
        let mut v: u64 = 0;
        let mut i = from;
        while i < from + 10 {
            let c = *b.add(i & 63);
            if !c.is_ascii_digit() {
                break;
            }
            v = v * 10 + (c - b'0') as u64;
            i += 1;
        }
        (v, i)
    };
    if at(0, b"/dev/fd/")
        || at(0, b"/dev/stdin\0")
        || at(0, b"/dev/stdout\0")
        || at(0, b"/dev/stderr\0")
        || at(0, b"/proc/thread-self/fd/")
    {
        return;
    }
    if !at(0, b"/proc/") {
        super::bypass::inject(st, 0, tamper_call::PROC_FD_OPEN, 0);
        return;
    }
    // /proc/{self|PID}/ then fd/ or task/TID/fd/.
    let (pid, mut i) = if at(6, b"self/") { (0, 11) } else { digits(6) };
    if i == 6 || (pid != 0 && *b.add(i & 63) != b'/') {
        super::bypass::inject(st, 0, tamper_call::PROC_FD_OPEN, 0);
        return;
    }
    if pid != 0 {
        i += 1;
    }
    if at(i, b"task/") {
        let (_, j) = digits(i + 5);
        if j == i + 5 || *b.add(j & 63) != b'/' {
            super::bypass::inject(st, 0, tamper_call::PROC_FD_OPEN, 0);
            return;
        }
        i = j + 1;
    }
    if !at(i, b"fd/") {
        super::bypass::inject(st, 0, tamper_call::PROC_FD_OPEN, 0);
        return;
    }
    if pid != 0 {
        // `inject` lets the instance's own processes through.
        super::bypass::inject(st, pid, tamper_call::PROC_FD_OPEN, 0);
    }
}

/// `EACCES` from the kernel.
const EACCES: i64 = -13;
const EXDEV: i64 = -18;

/// The event of a write that the Landlock ruleset of an `agent-monitor exec` command refused:
/// verdict violation, action denied, layer landlock. Nothing to enforce: the kernel did.
#[inline(always)]
fn landlock_refused(
    st: &agent_monitor_common::ProcState,
    kind: u32,
    flags: u32,
    aux: u64,
    target: PathRef,
    other: PathRef,
) {
    let r =
        Rec { kind, verdict: verdict::VIOLATION, action: action::DENIED, layer: layer::LANDLOCK, flags, aux, aux2: 0 };
    emit(st, &r, target, other);
}

/// A write open of a Landlocked process refused with `EACCES`: recorded when its path is
/// outside `writable` (inside, something else refused it: the file's own permissions).
#[inline(always)]
fn landlock_refused_open(
    st: &agent_monitor_common::ProcState,
    cfg: &agent_monitor_common::AgentCfg,
    pend: &PendingOpen,
    flags: u64,
) -> Result<(), i64> {
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let b = kernel::resolve_user_path(s, pend.dfd, pend.path as *const u8)?;
        if path_class(s, cfg.slot, b) == path_class::WRITABLE {
            return Ok(());
        }
        landlock_refused(st, kind::FILE_WRITE, b.flags(), flags, PathRef((*s).buf.as_ptr(), b.len), PathRef::NONE);
    }
    Ok(())
}

/// A FIFO opened for writing is a message to whoever reads it: allowed inside `writable` or
/// where the policy lists it (`unix:PATH`), else `ipc.connect`. Killed before a byte is written.
#[inline(always)]
unsafe fn fifo_write(
    s: *mut Scratch,
    st: &agent_monitor_common::ProcState,
    cfg: &agent_monitor_common::AgentCfg,
    b: Built,
    flags: u32,
    open_flags: u64,
) -> Result<(), i64> {
    if crate::maps::lsm_active() {
        return Ok(()); // decided by the LSM layer's file_open, before it opened
    }
    let mut ok = path_class(s, cfg.slot, b) == path_class::WRITABLE;
    if !ok && !b.untrusted() && (b.len as usize) < UNIX_PATH_LEN {
        let key = (*s).fgrant.path.as_mut_ptr() as *mut agent_monitor_common::UnixKey;
        let words = key as *mut u64;
        for i in 0..((4 + UNIX_PATH_LEN) / 8 + 1) {
            *words.add(i) = 0;
        }
        (*key).agent = cfg.slot;
        let n = kernel::opaque(b.len as usize) & 127;
        if n > 0 && n < UNIX_PATH_LEN {
            raw_read_kernel((*key).path.as_mut_ptr() as *mut c_void, n as u32, (*s).buf.as_ptr() as *const c_void);
            ok = UNIX_ALLOW.get(&*key).is_some();
        }
    }
    let r = rec(kind::IPC_CONNECT, flags, open_flags);
    decide_with(st, cfg, ok, r, PathRef((*s).buf.as_ptr(), b.len), PathRef::NONE, false);
    Ok(())
}
