//! Reading kernel structures and rebuilding paths.
//!
//! Offsets come from the running kernel's BTF (`OFFSETS`, patched in by the daemon at load
//! time): Rust eBPF has no CO-RE field relocations, and layouts differ between kernels
//! (`struct file::f_mode` is at 68 on 6.1, 12 on 6.12 and 4 on 6.18).
use agent_monitor_common::{Offsets, MAX_PATH_DEPTH, PATH_LEN};
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel,
    generated::{bpf_loop, bpf_probe_read_kernel as raw_read_kernel, bpf_probe_read_user_str as raw_read_user_str},
};
use core::ffi::c_void;

use crate::maps::Scratch;

#[no_mangle]
static OFFSETS: Offsets = Offsets {
    task_tgid: 0,
    task_start_time: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_fs: 0,
    task_files: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    task_ti_status: 0,
    fs_pwd: 0,
    fs_root: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_path: 0,
    file_f_inode: 0,
    file_f_mode: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    inode_i_mode: 0,
    task_exit_code: 0,
    task_group_leader: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    file_private_data: 0,
    pid_numbers: 0,
    inode_i_private: 0,
    socket_type: 0,
    msghdr_msg_name: 0,
    inode_i_sb: 0,
    inode_i_nlink: 0,
    sb_s_flags: 0,
    task_signal: 0,
    signal_live: 0,
    mount_mnt_id: 0,
    mount_mnt_ns: 0,
    socket_sk: 0,
    sock_family: 0,
    valid: 0,
};

/// Read one offset. Volatile so that the value patched into .rodata at load time is used,
/// not the zero the compiler saw.
macro_rules! off {
    ($f:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&OFFSETS.$f) as usize };
        v
    }};
}

pub const AT_FDCWD: i64 = -100;
pub const S_IFMT: u16 = 0o170000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;
pub const S_IFSOCK: u16 = 0o140000;

/// Hide a value from the optimiser so that a mask applied after it survives: the verifier
/// needs to see `var & MASK` on the very register used as a size or offset, even where the
/// compiler has already proved the bound some other way.
#[inline(always)]
pub fn opaque<T: Copy>(v: T) -> T {
    unsafe { core::ptr::read_volatile(&v) }
}

/// Argument `i` of a `sys_enter_*` tracepoint (`struct trace_event_raw_sys_enter`: 8 bytes of
/// common fields, `long id`, then `unsigned long args[6]`). A direct load from the context,
/// which the verifier allows for tracepoints, instead of a probe-read helper call: these run
/// on every matching syscall of every process.
#[inline(always)]
pub fn tp_arg(ctx: &aya_ebpf::programs::TracePointContext, i: usize) -> u64 {
    use aya_ebpf::EbpfContext;
    if i > 5 {
        return 0;
    }
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(2 + i)) }
}

/// The return value of a `sys_exit_*` tracepoint (`struct trace_event_raw_sys_exit`: common
/// fields, `long id`, `long ret`), read directly like [`tp_arg`].
#[inline(always)]
pub fn tp_ret(ctx: &aya_ebpf::programs::TracePointContext) -> i64 {
    use aya_ebpf::EbpfContext;
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const i64).add(2)) }
}

#[inline(always)]
pub fn offsets_valid() -> bool {
    off!(valid) != 0
}

#[inline(always)]
pub unsafe fn rd<T: Copy>(base: *const u8, off: usize) -> Result<T, i64> {
    bpf_probe_read_kernel(base.wrapping_add(off) as *const T).map_err(|e| e as i64)
}

#[inline(always)]
pub unsafe fn rd_ptr(base: *const u8, off: usize) -> Result<*const u8, i64> {
    let p: u64 = rd(base, off)?;
    Ok(p as *const u8)
}

#[inline(always)]
pub fn current_task() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

#[inline(always)]
pub unsafe fn task_tgid(task: *const u8) -> Result<u32, i64> {
    rd::<u32>(task, off!(task_tgid))
}

#[inline(always)]
pub unsafe fn task_start_ns(task: *const u8) -> Result<u64, i64> {
    rd::<u64>(task, off!(task_start_time))
}

/// Start time of the thread group leader: the identity of the process.
#[inline(always)]
pub unsafe fn process_start_ns(task: *const u8) -> Result<u64, i64> {
    let leader = rd_ptr(task, off!(task_group_leader))?;
    task_start_ns(leader)
}

#[inline(always)]
pub unsafe fn task_ppid(task: *const u8) -> Result<u32, i64> {
    let parent = rd_ptr(task, off!(task_real_parent))?;
    task_tgid(parent)
}

/// Is the thread group of `task` dead, at `sched_process_exit` (its last thread exiting)?
/// `signal->live` counts the group's live threads; `do_exit` decrements it before the
/// tracepoint (kernel/exit.c: `group_dead = atomic_dec_and_test(&tsk->signal->live)`).
#[inline(always)]
pub unsafe fn task_group_dead(task: *const u8) -> Result<bool, i64> {
    let signal = rd_ptr(task, off!(task_signal))?;
    Ok(rd::<i32>(signal, off!(signal_live))? <= 0)
}

#[inline(always)]
pub unsafe fn task_exit_code(task: *const u8) -> Result<u32, i64> {
    rd::<u32>(task, off!(task_exit_code))
}

/// The `struct file *` behind `fd` in the current task, or null.
#[inline(always)]
pub unsafe fn fd_file(task: *const u8, fd: i64) -> Result<*const u8, i64> {
    if fd < 0 {
        return Err(-9);
    }
    let files = rd_ptr(task, off!(task_files))?;
    let fdt = rd_ptr(files, off!(files_fdt))?;
    // `struct fdtable { unsigned int max_fds; struct file **fd; ... }` in one read (checked by
    // the daemon like `DentryHead`).
    let [max, arr]: [u64; 2] = rd(fdt, off!(fdt_max_fds))?;
    if fd as u64 >= max & 0xffff_ffff {
        return Err(-9);
    }
    let arr = arr as *const u8;
    let file = rd_ptr(arr, (fd as usize) * 8)?;
    if file.is_null() {
        return Err(-9);
    }
    Ok(file)
}

/// `socket->type` (SOCK_STREAM, SOCK_DGRAM, ...).
#[inline(always)]
pub unsafe fn socket_type(sock: *const u8) -> Result<u16, i64> {
    rd::<u16>(sock, off!(socket_type))
}

/// The address family of the socket behind `fd` in the current task.
#[inline(always)]
pub unsafe fn socket_family(fd: i64) -> Result<u16, i64> {
    let file = fd_file(current_task(), fd)?;
    let sock = rd_ptr(file, off!(file_private_data))?;
    let sk = rd_ptr(sock, off!(socket_sk))?;
    rd::<u16>(sk, off!(sock_family))
}

/// `msghdr->msg_name`: the destination of a `sendmsg`/`sendto`, or null.
#[inline(always)]
pub unsafe fn msghdr_name(msg: *const u8) -> Result<*const u8, i64> {
    rd_ptr(msg, off!(msghdr_msg_name))
}

/// The global pid the pidfd `fd` of the current task names (0 if it cannot be read). Its
/// `struct pid` is `file->private_data` on anon-inode pidfds (before pidfs, 6.9) and the
/// inode's `i_private` on pidfs; `numbers[0].nr` is the global pid.
#[inline(always)]
pub unsafe fn pidfd_pid(fd: i64) -> u32 {
    let Ok(file) = fd_file(current_task(), fd) else { return 0 };
    let nr = |pid: *const u8| -> u32 {
        if pid.is_null() {
            return 0;
        }
        rd::<u32>(pid, off!(pid_numbers)).unwrap_or(0)
    };
    let n = nr(rd_ptr(file, off!(file_private_data)).unwrap_or(core::ptr::null()));
    if n != 0 {
        return n;
    }
    let inode = rd_ptr(file, off!(file_f_inode)).unwrap_or(core::ptr::null());
    if inode.is_null() {
        0
    } else {
        nr(rd_ptr(inode, off!(inode_i_private)).unwrap_or(core::ptr::null()))
    }
}

/// `(dentry, vfsmount)` of a `struct path` at `base + off`.
#[inline(always)]
pub unsafe fn path_of(base: *const u8, off: usize) -> Result<(*const u8, *const u8), i64> {
    // `struct path { struct vfsmount *mnt; struct dentry *dentry; }` in one read (checked by
    // the daemon like `DentryHead`).
    let [mnt, dentry]: [u64; 2] = rd(base, off + off!(path_mnt))?;
    Ok((dentry as *const u8, mnt as *const u8))
}

#[inline(always)]
pub unsafe fn file_path(file: *const u8) -> Result<(*const u8, *const u8), i64> {
    path_of(file, off!(file_f_path))
}

#[inline(always)]
pub unsafe fn file_f_mode(file: *const u8) -> Result<u32, i64> {
    rd::<u32>(file, off!(file_f_mode))
}

#[inline(always)]
pub unsafe fn file_mode_type(file: *const u8) -> Result<u16, i64> {
    let inode = rd_ptr(file, off!(file_f_inode))?;
    let mode: u16 = rd(inode, off!(inode_i_mode))?;
    Ok(mode & S_IFMT)
}

/// How many names (hard links) the file's inode has; 1 if it cannot be read.
#[inline(always)]
pub unsafe fn file_nlink(file: *const u8) -> u32 {
    let Ok(inode) = rd_ptr(file, off!(file_f_inode)) else { return 1 };
    rd::<u32>(inode, off!(inode_i_nlink)).unwrap_or(1)
}

/// Is the file on a filesystem the kernel mounted for itself (`SB_KERNMOUNT`: pidfs,
/// anon_inodefs, pipefs, sockfs, the shmem behind memfd)? No path names such a file: opening
/// one for writing (a pidfd, say) writes nothing anyone else can read as a file.
#[inline(always)]
pub unsafe fn file_on_kernel_mount(file: *const u8) -> bool {
    const SB_KERNMOUNT: u64 = 1 << 22;
    let Ok(inode) = rd_ptr(file, off!(file_f_inode)) else { return false };
    let Ok(sb) = rd_ptr(inode, off!(inode_i_sb)) else { return false };
    rd::<u64>(sb, off!(sb_s_flags)).map(|f| f & SB_KERNMOUNT != 0).unwrap_or(false)
}

/// Is `file` on one of the kernel's private mounts (`mnt_ns == MNT_NS_INTERNAL`): a backing file
/// an overlay filesystem opens on its upper layer? The file the process opened (the overlay's)
/// is judged; this one is the kernel's own. Linux 7.x moved `FMODE_BACKING` (1 << 25 from 6.5
/// to 6.12), which only the kernel's headers say; the mount says it on every version (measured
/// in the 7.3 guest: the backing file's mount has `mnt_ns` = -EINVAL). A process cannot open a
/// file on such a mount (`open_tree` clones get a namespace of their own).
#[inline(always)]
pub unsafe fn file_on_internal_mount(file: *const u8) -> bool {
    const MNT_NS_INTERNAL: u64 = (-22i64) as u64;
    let Ok((_, mnt)) = file_path(file) else { return false };
    let mount = mnt.wrapping_sub(off!(mount_mnt));
    rd::<u64>(mount, off!(mount_mnt_ns)).map(|ns| ns == MNT_NS_INTERNAL).unwrap_or(false)
}

#[inline(always)]
pub unsafe fn cwd_path(task: *const u8) -> Result<(*const u8, *const u8), i64> {
    let fs = rd_ptr(task, off!(task_fs))?;
    path_of(fs, off!(fs_pwd))
}

/// `task->thread_info.status` (x86's `TS_COMPAT` is set while the task runs a 32-bit syscall).
#[inline(always)]
pub unsafe fn task_ti_status(task: *const u8) -> u32 {
    rd::<u32>(task, off!(task_ti_status)).unwrap_or(0)
}

/// `mm->arg_start`, `mm->arg_end`: where the process's command line is in its memory.
#[inline(always)]
pub unsafe fn task_args(task: *const u8) -> Result<(u64, u64), i64> {
    let mm = rd_ptr(task, off!(task_mm))?;
    let [start, end]: [u64; 2] = rd(mm, off!(mm_arg_start))?;
    Ok((start, end))
}

#[inline(always)]
pub unsafe fn exe_path(task: *const u8) -> Result<(*const u8, *const u8), i64> {
    let mm = rd_ptr(task, off!(task_mm))?;
    let exe = rd_ptr(mm, off!(mm_exe_file))?;
    file_path(exe)
}

/// `struct dentry`'s `d_parent` followed by its `d_name` (`struct qstr`: `hash_len`, whose high
/// half is `len` on little-endian, then `name`), the layout of every kernel since 3.x; the
/// daemon refuses a kernel whose BTF says otherwise (`Btf::offsets`).
#[repr(C)]
#[derive(Clone, Copy)]
struct DentryHead {
    parent: u64,
    hash_len: u64,
    name: u64,
}

/// A built path: its length in `Scratch::buf`, and how far its name can be trusted.
///
/// The three conditions are bits of one scalar the verifier does not know (`opaque`), not three
/// booleans: booleans become constants in registers, and every combination of them was a state
/// of its own through the rest of the program (a third of what the path programs verified).
#[derive(Clone, Copy)]
pub struct Built {
    pub len: u32,
    bits: u32,
}

impl Built {
    /// Cut at the end: what is there is the real start of the path (a prefix of it can match).
    const TRUNCATED: u32 = 1;
    /// The name is not known to be what the object is: the walk did not reach the root (too
    /// deep, or a dentry disconnected from its mount), the string was cut before `..` could be
    /// folded, or it crosses a mount the daemon does not know. Never inside `writable`.
    const UNTRUSTED: u32 = 2;
    /// It crosses a mount the daemon did not see in the host's namespace.
    const FOREIGN: u32 = 4;

    #[inline(always)]
    pub fn new(len: u32, truncated: bool, untrusted: bool, foreign: bool) -> Built {
        let bits = ((truncated as u32) * Self::TRUNCATED)
            | ((untrusted as u32) * Self::UNTRUSTED)
            | ((foreign as u32) * Self::FOREIGN);
        Built { len, bits: opaque(bits) }
    }

    #[inline(always)]
    fn from_bits(len: u32, bits: u32) -> Built {
        Built { len, bits: opaque(bits) }
    }

    #[inline(always)]
    pub fn truncated(&self) -> bool {
        self.bits & Self::TRUNCATED != 0
    }

    #[inline(always)]
    pub fn untrusted(&self) -> bool {
        self.bits & Self::UNTRUSTED != 0
    }

    #[inline(always)]
    pub fn foreign(&self) -> bool {
        self.bits & Self::FOREIGN != 0
    }

    /// The event flags that say why this path is not trusted.
    #[inline(always)]
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.truncated() || (self.untrusted() && !self.foreign()) {
            f |= agent_monitor_common::event_flags::PATH_TRUNCATED;
        }
        if self.foreign() {
            f |= agent_monitor_common::event_flags::FOREIGN_MOUNT;
        }
        f
    }
}

/// Is the mount `mount` (a `struct mount *`) one of the host's known mounts?
#[inline(always)]
unsafe fn mount_known(mount: *const u8) -> bool {
    match rd::<i32>(mount, off!(mount_mnt_id)) {
        Ok(id) => crate::maps::KNOWN_MOUNTS.get(&(id as u32)).is_some(),
        Err(_) => false,
    }
}

/// Is `mount` the top of the boot mount tree: id 1 (the first mount made, never freed) and its
/// own parent?
#[inline(always)]
unsafe fn mount_is_boot_top(mount: *const u8) -> bool {
    rd::<i32>(mount, off!(mount_mnt_id)).ok() == Some(1) && rd_ptr(mount, off!(mount_mnt_parent)).ok() == Some(mount)
}

/// What a dentry walk found (`Scratch::wflags`).
pub mod walk {
    /// It reached the root of the mount tree.
    pub const COMPLETE: u32 = 1;
    /// A root dentry that is not its mount's root: disconnected from the tree (a file opened by
    /// handle). No path names it.
    pub const DISCONNECTED: u32 = 2;
    /// It crossed a mount the daemon does not know.
    pub const FOREIGN: u32 = 4;
    /// Kernel memory could not be read.
    pub const FAILED: u32 = 8;
    /// The path was cut at the end (`PATH_LEN`).
    pub const CUT: u32 = 16;
}

/// Rebuild the absolute path of `(dentry, vfsmnt)` into `s.buf`, crossing mount points up to
/// the root of the mount namespace tree (not the process's chroot: policy paths are the host's).
///
/// Two passes, each a `bpf_loop` (the verifier checks one step instead of every iteration of
/// an unrolled walk): up the tree collecting component names, then down writing them.
#[inline(always)]
pub unsafe fn dentry_path(s: *mut Scratch, dentry: *const u8, vfsmnt: *const u8) -> Result<Built, i64> {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let mount = vfsmnt.wrapping_sub(off!(mount_mnt));
    // The root of the mount being walked: read once per mount, not once per component.
    let root = rd_ptr(vfsmnt, off!(vfsmount_mnt_root))?;
    wv(&mut (*s).n, 0);
    wv(&mut (*s).wd, dentry as u64);
    wv(&mut (*s).wm, mount as u64);
    wv(&mut (*s).wr, root as u64);
    // Every mount the path crosses must be one of the host's: a bind mount made since (in the
    // host's namespace or a private one) names a file by something it is not.
    wv(&mut (*s).wflags, if mount_known(mount) { 0 } else { walk::FOREIGN });
    // Components, plus a few mount crossings.
    bpf_loop(MAX_PATH_DEPTH as u32 + 16, walk_up as *mut c_void, core::ptr::null_mut(), 0);
    wv(&mut (*s).off, 0);
    bpf_loop(MAX_PATH_DEPTH as u32, write_down as *mut c_void, core::ptr::null_mut(), 0);
    let f = rv(&(*s).wflags);
    if f & walk::FAILED != 0 {
        return Err(-14);
    }
    let buf = (*s).buf.as_mut_ptr();
    let mut off = rv(&(*s).off) as usize & 255;
    if off == 0 {
        *buf = b'/';
        off = 1;
    }
    *buf.add(off) = 0;
    // Not complete: the walk stopped before the root (deeper than MAX_PATH_DEPTH, or
    // disconnected): the components kept are the leaf end, not a prefix.
    let mut bits = 0;
    if f & walk::COMPLETE == 0 || f & (walk::DISCONNECTED | walk::FOREIGN) != 0 {
        bits |= Built::UNTRUSTED;
    }
    if f & walk::CUT != 0 {
        bits |= Built::TRUNCATED;
    }
    if f & walk::FOREIGN != 0 {
        bits |= Built::FOREIGN;
    }
    Ok(Built::from_bits(off as u32, bits))
}

/// One step up: a component, or a mount crossing. Returns 1 to stop.
extern "C" fn walk_up(_i: u64, _ctx: *mut c_void) -> i64 {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    unsafe {
        let d = rv(&(*s).wd) as *const u8;
        let mount = rv(&(*s).wm) as *const u8;
        let root = rv(&(*s).wr) as *const u8;
        let fail = |s: *mut Scratch| {
            wv(&mut (*s).wflags, rv(&(*s).wflags) | walk::FAILED);
            1
        };
        // `d_parent` and `d_name` in one read (the daemon checks they are adjacent): each probe
        // read costs a helper call, and this walk runs on every write-open of an agent.
        let Ok(h) = rd::<DentryHead>(d, off!(dentry_d_parent)) else { return fail(s) };
        let parent = h.parent as *const u8;
        if d == root || d == parent {
            if d != root {
                wv(&mut (*s).wflags, rv(&(*s).wflags) | walk::DISCONNECTED);
                return 1;
            }
            let Ok(mparent) = rd_ptr(mount, off!(mount_mnt_parent)) else { return fail(s) };
            if mparent == mount || mparent.is_null() {
                wv(&mut (*s).wflags, rv(&(*s).wflags) | walk::COMPLETE);
                return 1;
            }
            let Ok(mp) = rd_ptr(mount, off!(mount_mnt_mountpoint)) else { return fail(s) };
            let Ok(r) = rd_ptr(mparent.wrapping_add(off!(mount_mnt)), off!(vfsmount_mnt_root)) else {
                return fail(s);
            };
            // The top of the mount tree is above every namespace's root and in no mountinfo:
            // Linux 7.x mounts the initial rootfs on a nullfs, one level above what the host's
            // mountinfo shows as the root's parent. Only that one is let through: mount id 1,
            // its own parent, made at boot and never freed. (The root of any other tree is its
            // own parent too: a detached `open_tree` clone, another namespace's root.)
            if !mount_known(mparent) && !mount_is_boot_top(mparent) {
                wv(&mut (*s).wflags, rv(&(*s).wflags) | walk::FOREIGN);
            }
            wv(&mut (*s).wd, mp as u64);
            wv(&mut (*s).wm, mparent as u64);
            wv(&mut (*s).wr, r as u64);
            return 0;
        }
        let n = rv(&(*s).n) as usize;
        if n >= MAX_PATH_DEPTH {
            return 1; // deeper than the walk follows: not complete
        }
        let n = n & (MAX_PATH_DEPTH - 1);
        (*s).names[n] = h.name;
        (*s).lens[n] = (h.hash_len >> 32) as u32;
        wv(&mut (*s).n, n as u32 + 1);
        wv(&mut (*s).wd, parent as u64);
    }
    0
}

/// One component down, written at `s.off`. Returns 1 to stop.
extern "C" fn write_down(j: u64, _ctx: *mut c_void) -> i64 {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    unsafe {
        let n = rv(&(*s).n) as usize;
        let j = j as usize;
        if j >= n {
            return 1;
        }
        let i = (n - 1 - j) & (MAX_PATH_DEPTH - 1);
        let len = rv(&(*s).lens[i]) as usize & 255;
        let off = rv(&(*s).off) as usize & 255;
        if off + 1 + len > PATH_LEN - 1 {
            wv(&mut (*s).wflags, rv(&(*s).wflags) | walk::CUT);
            return 1;
        }
        let buf = (*s).buf.as_mut_ptr();
        *buf.add(off) = b'/';
        raw_read_kernel(buf.add(off + 1) as *mut c_void, len as u32, (*s).names[i] as *const c_void);
        wv(&mut (*s).off, (off + 1 + len) as u32);
    }
    0
}

/// The process's root (`fs->root`) when it is not the top of its mount tree: after `chroot`,
/// an absolute string names a file under that root, not under the host's `/`.
#[inline(always)]
unsafe fn moved_root(task: *const u8) -> Result<Option<(*const u8, *const u8)>, i64> {
    let fs = rd_ptr(task, off!(task_fs))?;
    let (d, m) = path_of(fs, off!(fs_root))?;
    let mnt_root = rd_ptr(m, off!(vfsmount_mnt_root))?;
    if d != mnt_root {
        return Ok(Some((d, m)));
    }
    // The root of a mount: the top of the tree, or a mount on the host's `/` (the initial
    // rootfs under it is the top): one level up must be the top.
    let mount = m.wrapping_sub(off!(mount_mnt));
    let parent = rd_ptr(mount, off!(mount_mnt_parent))?;
    if parent == mount || parent.is_null() {
        return Ok(None);
    }
    let grand = rd_ptr(parent, off!(mount_mnt_parent))?;
    if grand == parent || grand.is_null() {
        // `/` mounted on the rootfs: its mountpoint must be the rootfs's root.
        let mp = rd_ptr(mount, off!(mount_mnt_mountpoint))?;
        let proot = rd_ptr(parent.wrapping_add(off!(mount_mnt)), off!(vfsmount_mnt_root))?;
        if mp == proot {
            return Ok(None);
        }
    }
    Ok(Some((d, m)))
}

/// `/proc/self/fd/N/`, `/proc/thread-self/fd/N/` or `/dev/fd/N/` at the start of the string
/// in `s.tmp`: the rest names a file under descriptor `N` (Claude Code makes its directories
/// this way). Returns `(N, bytes of the prefix)`.
#[inline(always)]
unsafe fn fd_prefix(s: *const Scratch, ulen: usize) -> Option<(i64, usize)> {
    let t = (*s).tmp.as_ptr();
    let starts = |p: &[u8]| -> bool {
        let mut i = 0;
        while i < p.len() {
            if *t.add(i) != *p.get_unchecked(i) {
                return false;
            }
            i += 1;
        }
        true
    };
    let mut at = if starts(b"/proc/self/fd/") {
        14
    } else if starts(b"/dev/fd/") {
        8
    } else if starts(b"/proc/thread-self/fd/") {
        21
    } else {
        return None;
    };
    let mut fd: i64 = 0;
    let mut digits = 0;
    while digits < 7 {
        let c = *t.add(at & 255);
        if !c.is_ascii_digit() {
            break;
        }
        fd = fd * 10 + (c - b'0') as i64;
        at += 1;
        digits += 1;
    }
    if digits == 0 || *t.add(at & 255) != b'/' || at + 1 > ulen {
        return None;
    }
    Some((fd, at + 1))
}

/// Resolve the string a process passed to a path syscall to an absolute, normalised path in
/// `s.buf`: relative paths start at `dirfd` (or the cwd for `AT_FDCWD`), absolute ones at the
/// process's root (the host's `/` unless it chrooted), `/proc/self/fd/N/...` at descriptor `N`,
/// all taken from the kernel's own file and fs structures; `.`, `..` and repeated slashes are
/// folded.
///
/// Symlinks in the directories of the string are not followed here (only the LSM layer sees
/// the resolved dentry); opens are decided on the file the kernel actually opened instead.
#[inline(always)]
pub unsafe fn resolve_user_path(s: *mut Scratch, dirfd: i64, upath: *const u8) -> Result<Built, i64> {
    let tmp = &mut (*s).tmp;
    // Returns the length including the NUL, or a negative error.
    let ret = raw_read_user_str(tmp.as_mut_ptr() as *mut c_void, PATH_LEN as u32, upath as *const c_void);
    if ret <= 0 {
        return Err(ret);
    }
    let ulen = opaque((ret - 1) as usize) & 255;
    let buf = (*s).buf.as_mut_ptr();
    // Where the base ends, the string's bytes to skip, and the bits of the result: kept in
    // memory across the four ways to the base, so that the verifier meets one state after
    // them, not one per way and outcome.
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    // A string cut short may hold `..` past the cut: its start says nothing about where it
    // leads (`writable/AAAA…/../../outside`). Such a path is never inside `writable`.
    wv(&mut (*s).rp_bits, if ulen >= PATH_LEN - 1 { Built::TRUNCATED | Built::UNTRUSTED } else { 0 });
    wv(&mut (*s).rp_len, 0);
    wv(&mut (*s).rp_skip, 0);
    let task = current_task();
    let relative = ulen == 0 || *tmp.as_ptr() != b'/';
    let base = if relative {
        Some(if dirfd == AT_FDCWD { cwd_path(task)? } else { file_path(fd_file(task, dirfd)?)? })
    } else if let Some((fd, skip)) = fd_prefix(s, ulen) {
        wv(&mut (*s).rp_skip, skip as u32);
        Some(file_path(fd_file(task, fd)?)?)
    } else {
        moved_root(task)?
    };
    if let Some((d, m)) = base {
        let base = dentry_path(s, d, m)?;
        let mut bits = rv(&(*s).rp_bits);
        if base.truncated() || base.untrusted() {
            bits |= Built::TRUNCATED | Built::UNTRUSTED;
        }
        if base.foreign() {
            bits |= Built::UNTRUSTED | Built::FOREIGN;
        }
        wv(&mut (*s).rp_bits, bits);
        let mut len = opaque(base.len as usize) & 255;
        if len > 1 {
            *buf.add(len) = b'/';
            len += 1;
        }
        wv(&mut (*s).rp_len, len as u32);
    }
    let len = rv(&(*s).rp_len) as usize & 255;
    let skip = rv(&(*s).rp_skip) as usize & 31;
    // Bounded after an opaque load: Linux 6.1's verifier loses the bounds of a saturating
    // subtraction (a conditional move), and the compiler drops a mask it can prove redundant.
    let rest = opaque(if ulen > skip { ulen - skip } else { 0 }) & 255;
    if len + rest > PATH_LEN - 1 {
        wv(&mut (*s).rp_bits, rv(&(*s).rp_bits) | Built::TRUNCATED | Built::UNTRUSTED);
    }
    let at = opaque(len) & 255;
    raw_read_kernel(buf.add(at) as *mut c_void, rest as u32, tmp.as_ptr().add(skip) as *const c_void);
    let mut len = at + rest;
    if len > PATH_LEN - 1 {
        len = PATH_LEN - 1;
    }
    *buf.add(opaque(len) & 511) = 0;
    let len = normalize(s, len as u32);
    Ok(Built::from_bits(len, rv(&(*s).rp_bits)))
}

/// Does the user string at `upath` (a relative symlink target) climb out of the directory it
/// is resolved in, through a `..` component? A string too long to read whole is taken to.
#[inline(always)]
pub unsafe fn climbs(s: *mut Scratch, upath: *const u8) -> Result<bool, i64> {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let tmp = &mut (*s).tmp;
    let ret = raw_read_user_str(tmp.as_mut_ptr() as *mut c_void, PATH_LEN as u32, upath as *const c_void);
    if ret <= 0 {
        return Err(ret);
    }
    let n = (ret - 1) as u32;
    if n as usize >= PATH_LEN - 1 {
        return Ok(true);
    }
    wv(&mut (*s).nlen, n);
    wv(&mut (*s).skip, 0);
    bpf_loop(n.min(PATH_LEN as u32 - 1), climb_step as *mut c_void, core::ptr::null_mut(), 0);
    Ok(rv(&(*s).skip) != 0)
}

/// One byte of [`climbs`]: is there a `..` component starting at byte `i`?
extern "C" fn climb_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let i = i as usize & 255;
    unsafe {
        let t = (*s).tmp.as_ptr();
        let starts = i == 0 || *t.add(opaque(i.wrapping_sub(1)) & 511) == b'/';
        let next = *t.add(i + 2);
        if starts && *t.add(i) == b'.' && *t.add(i + 1) == b'.' && (next == b'/' || next == 0) {
            core::ptr::write_volatile(&mut (*s).skip, 1);
            return 1;
        }
    }
    0
}

/// Fold `//`, `/./` and `/../` in `s.buf[0..len]` in place; returns the new length.
///
/// One pass, one byte per step, run by `bpf_loop` (5.17+) so that the verifier checks the step
/// once instead of once per byte; the write position and the component stack live in the
/// scratch map.
#[inline(always)]
unsafe fn normalize(s: *mut Scratch, len: u32) -> u32 {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    wv(&mut (*s).w, 0);
    wv(&mut (*s).depth, 0);
    wv(&mut (*s).skip, 0);
    wv(&mut (*s).nlen, len);
    bpf_loop(len.min(PATH_LEN as u32 - 1), normalize_step as *mut c_void, core::ptr::null_mut(), 0);
    let buf = (*s).buf.as_mut_ptr();
    let mut w = rv(&(*s).w) & 255;
    if w == 0 {
        *buf = b'/';
        w = 1;
    }
    *buf.add(w as usize) = 0;
    w
}

/// One byte of [`normalize`]. Returns 1 to stop the loop.
extern "C" fn normalize_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    unsafe { normalize_byte(s, i as usize & 255) }
}

#[inline(always)]
unsafe fn normalize_byte(s: *mut Scratch, i: usize) -> i64 {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let buf = (*s).buf.as_mut_ptr();
    if i as u32 >= rv(&(*s).nlen) {
        return 1;
    }
    let skip = rv(&(*s).skip);
    if skip > 0 {
        wv(&mut (*s).skip, skip - 1);
        return 0;
    }
    let c = *buf.add(i);
    let w = rv(&(*s).w) & 255;
    if c != b'/' {
        *buf.add(w as usize) = c;
        wv(&mut (*s).w, w + 1);
        return 0;
    }
    let n1 = *buf.add(i + 1);
    if n1 == b'/' {
        return 0;
    }
    if n1 == 0 {
        if w == 0 {
            *buf = b'/';
            wv(&mut (*s).w, 1);
        }
        return 0;
    }
    let n2 = *buf.add(i + 2);
    if n1 == b'.' && (n2 == b'/' || n2 == 0) {
        wv(&mut (*s).skip, 1);
        return 0;
    }
    let n3 = *buf.add(i + 3);
    if n1 == b'.' && n2 == b'.' && (n3 == b'/' || n3 == 0) {
        let depth = rv(&(*s).depth) & 63;
        if depth > 0 {
            let d = depth - 1;
            wv(&mut (*s).depth, d);
            wv(&mut (*s).w, rv(&(*s).stack[opaque(d as usize) & 63]));
        } else {
            wv(&mut (*s).w, 0);
        }
        wv(&mut (*s).skip, 2);
        return 0;
    }
    let depth = rv(&(*s).depth) & 63;
    (*s).stack[depth as usize] = w;
    if depth < 63 {
        wv(&mut (*s).depth, depth + 1);
    }
    *buf.add(w as usize) = b'/';
    wv(&mut (*s).w, w + 1);
    0
}
