//! The BPF LSM layer: where the kernel runs BPF LSM programs (booted with `lsm=...,bpf`), file
//! writes outside `writable` are refused with EPERM *before* they take effect, for every agent,
//! not only those started by `agent-monitor exec`. The daemon loads these programs only when a
//! trial load succeeds; otherwise the tracepoint layer decides (after the fact) and says so.
//!
//! Each hook decides on the dentry the kernel is about to act on (no path string to race).
//! `alert` returns 0 here: the tracepoint layer records the operation once it succeeded, so an
//! operation is reported exactly once. `deny`/`hold` refuse, `kill` refuses and kills; both
//! emit the event from here (the syscall then fails and the tracepoint layer stays silent).
use agent_monitor_common::{action, event_flags, kind, layer, policy_action, verdict, PATH_LEN};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    agent::{self, current_agent, emit, kill_instance, PathRef, Rec},
    kernel::{self, dentry_path, S_IFCHR, S_IFIFO, S_IFSOCK},
};

const EPERM: i32 = -1;
/// `FMODE_WRITE`.
const FMODE_WRITE: u32 = 0x2;
/// `FMODE_BACKING` (6.5+): the backing file an overlay filesystem opens on its upper layer, with
/// a path inside the hidden upper mount; the user-visible open is checked on its own.
const FMODE_BACKING: u32 = 1 << 25;

/// Decide an operation on `(dentry, vfsmount)`; returns the LSM verdict.
#[inline(always)]
fn decide_path(kind: u32, dentry: *const u8, mnt: *const u8, aux: u64) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    if cfg.action == policy_action::ALERT || !kernel::offsets_valid() {
        return 0;
    }
    let Some(s) = agent::scratch() else {
        return 0;
    };
    let Ok(b) = (unsafe { dentry_path(s, dentry, mnt) }) else {
        return 0;
    };
    if unsafe { agent::is_writable(s, st.agent, b) } {
        return 0;
    }
    let act = if cfg.action == policy_action::KILL {
        kill_instance(&st);
        action::KILLED
    } else {
        action::DENIED
    };
    let r = Rec {
        kind,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::BPF_LSM,
        flags: if b.truncated { event_flags::PATH_TRUNCATED } else { 0 },
        aux,
        aux2: 0,
    };
    emit(&st, &r, PathRef(unsafe { (*s).buf.as_ptr() }, b.len.min(PATH_LEN as u32)), PathRef::NONE);
    EPERM
}

/// `(dentry, mnt)` of a `const struct path *`.
#[inline(always)]
fn path_arg(p: *const u8) -> Option<(*const u8, *const u8)> {
    unsafe { kernel::path_of(p, 0) }.ok()
}

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let Ok(mode) = (unsafe { kernel::file_f_mode(file) }) else { return 0 };
    if mode & FMODE_WRITE == 0 || mode & FMODE_BACKING != 0 {
        return 0;
    }
    if let Ok(t) = unsafe { kernel::file_mode_type(file) } {
        if t == S_IFIFO || t == S_IFSOCK {
            return 0;
        }
        let _ = S_IFCHR;
    }
    let Ok((d, m)) = (unsafe { kernel::file_path(file) }) else { return 0 };
    // aux stays 0: events decode `aux` of file.write as open(2) flags, and this is an f_mode.
    decide_path(kind::FILE_WRITE, d, m, 0)
}

/// Hooks of the form `(const struct path *dir, struct dentry *dentry, ...)`.
macro_rules! dir_dentry_hook {
    ($name:ident, $hook:literal, $kind:expr) => {
        #[lsm(hook = $hook)]
        #[inline(always)]
        pub fn $name(ctx: LsmContext) -> i32 {
            let dir: *const u8 = ctx.arg(0);
            let dentry: *const u8 = ctx.arg(1);
            let Some((_, mnt)) = path_arg(dir) else { return 0 };
            decide_path($kind, dentry, mnt, 0)
        }
    };
}

dir_dentry_hook!(lsm_path_unlink, "path_unlink", kind::FILE_DELETE);
dir_dentry_hook!(lsm_path_rmdir, "path_rmdir", kind::FILE_DELETE);
dir_dentry_hook!(lsm_path_mkdir, "path_mkdir", kind::FILE_MKDIR);
// `open(O_CREAT)` of a new file reaches `path_mknod` too (lookup_open): it is a file write.
dir_dentry_hook!(lsm_path_mknod, "path_mknod", kind::FILE_WRITE);
dir_dentry_hook!(lsm_path_symlink, "path_symlink", kind::FILE_LINK);

/// `path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`: both ends must be writable.
#[lsm(hook = "path_rename")]
#[inline(always)]
pub fn lsm_path_rename(ctx: LsmContext) -> i32 {
    let (od, odent, nd, ndent): (*const u8, *const u8, *const u8, *const u8) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    let Some((_, om)) = path_arg(od) else { return 0 };
    let r = decide_path(kind::FILE_RENAME, odent, om, 0);
    if r != 0 {
        return r;
    }
    let Some((_, nm)) = path_arg(nd) else { return 0 };
    decide_path(kind::FILE_RENAME, ndent, nm, 0)
}

/// `path_link(old_dentry, new_dir, new_dentry)`: a hard link to a file outside `writable` is a
/// way to write it.
#[lsm(hook = "path_link")]
#[inline(always)]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    let (odent, nd, ndent): (*const u8, *const u8, *const u8) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let Some((_, nm)) = path_arg(nd) else { return 0 };
    let r = decide_path(kind::FILE_LINK, odent, nm, 0);
    if r != 0 {
        return r;
    }
    decide_path(kind::FILE_LINK, ndent, nm, 0)
}

/// Hooks of the form `(const struct path *path, ...)`.
macro_rules! path_hook {
    ($name:ident, $hook:literal, $kind:expr) => {
        #[lsm(hook = $hook)]
        #[inline(always)]
        pub fn $name(ctx: LsmContext) -> i32 {
            let p: *const u8 = ctx.arg(0);
            let Some((d, m)) = path_arg(p) else { return 0 };
            decide_path($kind, d, m, 0)
        }
    };
}

path_hook!(lsm_path_chmod, "path_chmod", kind::FILE_CHMOD);
path_hook!(lsm_path_chown, "path_chown", kind::FILE_CHMOD);
path_hook!(lsm_path_truncate, "path_truncate", kind::FILE_WRITE);
