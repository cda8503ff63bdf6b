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
    fs_pwd: 0,
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
    sb_s_flags: 0,
    valid: 0,
};

/// Read one offset. Volatile so that the value patched into .rodata at load time is used,
/// not the zero the compiler saw.
macro_rules! off {
    ($f:ident) => {
        unsafe { core::ptr::read_volatile(&OFFSETS.$f) as usize }
    };
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

/// `msghdr->msg_name`: the destination of a `sendmsg`/`sendto`, or null.
#[inline(always)]
pub unsafe fn msghdr_name(msg: *const u8) -> Result<*const u8, i64> {
    rd_ptr(msg, off!(msghdr_msg_name))
}

/// Is the pidfd `fd` of the current task one that names process `target` (global pid)? Its
/// `struct pid` is `file->private_data` on anon-inode pidfds (before pidfs, 6.9) and the
/// inode's `i_private` on pidfs; both are read, and `numbers[0].nr` is the global pid.
#[inline(always)]
pub unsafe fn pidfd_names(fd: i64, target: u32) -> bool {
    let Ok(file) = fd_file(current_task(), fd) else { return false };
    let nr = |pid: *const u8| -> u32 {
        if pid.is_null() {
            return 0;
        }
        rd::<u32>(pid, off!(pid_numbers)).unwrap_or(0)
    };
    if nr(rd_ptr(file, off!(file_private_data)).unwrap_or(core::ptr::null())) == target {
        return true;
    }
    let inode = rd_ptr(file, off!(file_f_inode)).unwrap_or(core::ptr::null());
    !inode.is_null() && nr(rd_ptr(inode, off!(inode_i_private)).unwrap_or(core::ptr::null())) == target
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

#[inline(always)]
pub unsafe fn cwd_path(task: *const u8) -> Result<(*const u8, *const u8), i64> {
    let fs = rd_ptr(task, off!(task_fs))?;
    path_of(fs, off!(fs_pwd))
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

/// A built path: its length in `Scratch::buf` and whether it was cut short.
#[derive(Clone, Copy)]
pub struct Built {
    pub len: u32,
    pub truncated: bool,
}

/// Rebuild the absolute path of `(dentry, vfsmnt)` into `s.buf`, crossing mount points up to
/// the root of the mount namespace tree (not the process's chroot: policy paths are the host's).
#[inline(always)]
pub unsafe fn dentry_path(s: *mut Scratch, dentry: *const u8, vfsmnt: *const u8) -> Result<Built, i64> {
    use core::ptr::{read_volatile as rv, write_volatile as wv};
    let mut d = dentry;
    let mut mount = vfsmnt.wrapping_sub(off!(mount_mnt));
    // The root of the mount being walked: read once per mount, not once per component.
    let mut root = rd_ptr(vfsmnt, off!(vfsmount_mnt_root))?;
    // Counters live in the scratch map (volatile): the verifier then sees bounded unknowns
    // and prunes equivalent paths instead of tracking every combination of exact values.
    wv(&mut (*s).n, 0);
    let mut complete = false;
    for _ in 0..MAX_PATH_DEPTH {
        // `d_parent` and `d_name` in one read (the daemon checks they are adjacent): each
        // probe read costs a helper call, and this walk runs on every write-open of an agent.
        let h: DentryHead = rd(d, off!(dentry_d_parent))?;
        let parent = h.parent as *const u8;
        if d == root || d == parent {
            let mparent = rd_ptr(mount, off!(mount_mnt_parent))?;
            if mparent == mount || mparent.is_null() {
                complete = true;
                break;
            }
            d = rd_ptr(mount, off!(mount_mnt_mountpoint))?;
            mount = mparent;
            root = rd_ptr(mount.wrapping_add(off!(mount_mnt)), off!(vfsmount_mnt_root))?;
            continue;
        }
        let n = rv(&(*s).n) as usize & (MAX_PATH_DEPTH - 1);
        (*s).names[n] = h.name;
        (*s).lens[n] = (h.hash_len >> 32) as u32;
        wv(&mut (*s).n, n as u32 + 1);
        d = parent;
    }
    let n = rv(&(*s).n) as usize;
    let mut truncated = !complete || n >= MAX_PATH_DEPTH;
    let buf = (*s).buf.as_mut_ptr();
    wv(&mut (*s).off, 0);
    for j in 0..MAX_PATH_DEPTH {
        let n = rv(&(*s).n) as usize;
        if j >= n {
            break;
        }
        let i = (n - 1 - j) & (MAX_PATH_DEPTH - 1);
        let len = rv(&(*s).lens[i]) as usize & 255;
        let off = rv(&(*s).off) as usize & 255;
        if off + 1 + len > PATH_LEN - 1 {
            truncated = true;
            break;
        }
        *buf.add(off) = b'/';
        raw_read_kernel(buf.add(off + 1) as *mut c_void, len as u32, (*s).names[i] as *const c_void);
        wv(&mut (*s).off, (off + 1 + len) as u32);
    }
    let mut off = rv(&(*s).off) as usize & 255;
    if off == 0 {
        *buf = b'/';
        off = 1;
    }
    *buf.add(off) = 0;
    Ok(Built { len: off as u32, truncated })
}

/// Resolve the string a process passed to a path syscall to an absolute, normalised path in
/// `s.buf`: relative paths start at `dirfd` (or the cwd for `AT_FDCWD`), taken from the kernel's
/// own file and fs structures; `.`, `..` and repeated slashes are folded.
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
    let mut truncated = ulen >= PATH_LEN - 1;
    let mut len: usize = 0;
    if ulen == 0 || *tmp.as_ptr() != b'/' {
        let task = current_task();
        let (d, m) = if dirfd == AT_FDCWD { cwd_path(task)? } else { file_path(fd_file(task, dirfd)?)? };
        let base = dentry_path(s, d, m)?;
        truncated |= base.truncated;
        len = opaque(base.len as usize) & 255;
        if len > 1 {
            *buf.add(len) = b'/';
            len += 1;
        }
    }
    if len + ulen > PATH_LEN - 1 {
        truncated = true;
    }
    let at = opaque(len) & 255;
    raw_read_kernel(buf.add(at) as *mut c_void, ulen as u32, tmp.as_ptr() as *const c_void);
    len = at + ulen;
    if len > PATH_LEN - 1 {
        len = PATH_LEN - 1;
    }
    *buf.add(opaque(len) & 511) = 0;
    let len = normalize(s, len as u32);
    Ok(Built { len, truncated })
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
