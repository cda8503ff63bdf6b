//! The BPF LSM layer: where the kernel runs BPF LSM programs (booted with `lsm=...,bpf`), file
//! writes outside `writable` are refused with EPERM *before* they take effect, for every agent,
//! not only those started by `agent-monitor exec`. The daemon loads these programs only when a
//! trial load succeeds; otherwise the tracepoint layer decides (after the fact) and says so.
//!
//! Each hook decides on the dentry the kernel is about to act on (no path string to race).
//! `alert` returns 0 here: the tracepoint layer records the operation once it succeeded, so an
//! operation is reported exactly once. `deny`/`hold` refuse, `kill` refuses and kills; both
//! emit the event from here (the syscall then fails and the tracepoint layer stays silent).
use agent_monitor_common::{
    action, agent_flags, daemon_slot, event_flags, kind, layer, path_class, policy_action, syscalls::tamper_call,
    verdict, PATH_LEN,
};
use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_probe_read_kernel as raw_read_kernel},
    macros::lsm,
    programs::LsmContext,
};
use core::ffi::c_void;

use crate::{
    agent::{self, current_agent, emit, kill_instance, PathRef, Rec},
    kernel::{self, dentry_path, S_IFCHR, S_IFIFO, S_IFSOCK},
    maps::{Scratch, DAEMON, DAEMON_TIDS, FILE_GRANTS, KILLED, PROCS, UNIX_ALLOW},
    probes::net,
};

const EPERM: i32 = -1;
/// `FMODE_WRITE`.
const FMODE_WRITE: u32 = 0x2;

/// Decide an operation on `(dentry, vfsmount)`; returns the LSM verdict.
#[inline(always)]
fn decide_path(kind: u32, dentry: *const u8, mnt: *const u8, aux: u64) -> i32 {
    decide_path_as(kind, dentry, mnt, aux, 0)
}

/// [`decide_path`], for an object that is never writable whatever its path (`force` carries
/// the event flag that says why: a block device).
#[inline(always)]
fn decide_path_as(kind: u32, dentry: *const u8, mnt: *const u8, aux: u64, force: u32) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    if !kernel::offsets_valid() {
        return 0;
    }
    let Some(s) = agent::scratch() else {
        return 0;
    };
    let b = match unsafe { dentry_path(s, dentry, mnt) } {
        Ok(b) => b,
        // A path that cannot be built is not inside `writable`.
        Err(_) => kernel::Built::new(0, false, true, false),
    };
    let class = unsafe { agent::path_class(s, cfg.slot, b) };
    if class == path_class::WRITABLE && force == 0 {
        return 0;
    }
    let protected = class == path_class::PROTECTED;
    // An approved hold for exactly this (instance, kind, path), not expired.
    if cfg.action == policy_action::HOLD && !protected && unsafe { file_granted(s, &st, kind, b.len) } {
        return 0;
    }
    // `alert` is recorded by the tracepoint layer once the operation succeeded; the daemon's
    // own files are refused (and the agent killed) whatever the action.
    if cfg.action == policy_action::ALERT && !protected {
        return 0;
    }
    let act = if protected {
        kill_instance(&st);
        action::KILLED
    } else {
        // (`hold`: refused now, held as a request; approval grants exactly this.)
        lsm_action(&st, &cfg)
    };
    let mut flags = b.flags() | force;
    let (kind, aux2) = if protected {
        flags |= event_flags::PROTECTED_PATH;
        (kind::SELF_TAMPER, kind as u64)
    } else {
        (kind, 0)
    };
    let r = Rec { kind, verdict: verdict::VIOLATION, action: act, layer: layer::BPF_LSM, flags, aux, aux2 };
    emit(&st, &r, PathRef(unsafe { (*s).buf.as_ptr() }, b.len.min(PATH_LEN as u32)), PathRef::NONE);
    EPERM
}

/// Is (this instance, `kind`, `s.buf[..len]`) granted in `FILE_GRANTS`? Uses up a one-time grant.
#[inline(always)]
unsafe fn file_granted(s: *mut Scratch, st: &agent_monitor_common::ProcState, kind: u32, len: u32) -> bool {
    let k = &mut (*s).fgrant;
    let words = k.path.as_mut_ptr() as *mut u64;
    for i in 0..(PATH_LEN + 4) / 8 {
        *words.add(i) = 0;
    }
    k.run_id = st.run_id;
    k.kind = kind;
    let len = if len > PATH_LEN as u32 { PATH_LEN as u32 } else { len };
    k.len = len;
    if len > 0 {
        // ((n - 1) & 255) + 1 is n for 1..=256, on the very register the verifier checks.
        let n = ((kernel::opaque(len) - 1) & 255) + 1;
        raw_read_kernel(k.path.as_mut_ptr() as *mut c_void, n, (*s).buf.as_ptr() as *const c_void);
    }
    let Some(v) = FILE_GRANTS.get(&*k).copied() else { return false };
    if v & !(1u64 << 63) <= bpf_ktime_get_boot_ns() {
        return false;
    }
    if v >> 63 == 1 {
        let _ = FILE_GRANTS.remove(&*k);
    }
    true
}

/// `(dentry, mnt)` of a `const struct path *`.
#[inline(always)]
fn path_arg(p: *const u8) -> Option<(*const u8, *const u8)> {
    unsafe { kernel::path_of(p, 0) }.ok()
}

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    const S_IFBLK: u16 = 0o060000;
    const S_IFREG: u16 = 0o100000;
    let file: *const u8 = ctx.arg(0);
    let Ok(mode) = (unsafe { kernel::file_f_mode(file) }) else { return 0 };
    // The backing file an overlay filesystem opens on its upper layer is on the kernel's private
    // clone of that layer; the user-visible open is checked on its own. (Not `FMODE_BACKING`:
    // its bit moved in Linux 7.x, and the same bit means something else on older kernels.)
    if mode & FMODE_WRITE == 0 || unsafe { kernel::file_on_kernel_mount(file) || kernel::file_on_internal_mount(file) }
    {
        return 0;
    }
    let t = unsafe { kernel::file_mode_type(file) }.unwrap_or(0);
    if t == S_IFSOCK {
        return 0;
    }
    let _ = S_IFCHR;
    let Ok((d, m)) = (unsafe { kernel::file_path(file) }) else { return 0 };
    if t == S_IFIFO {
        return fifo_open(d, m);
    }
    // A block device is every file of a filesystem at once: never writable. A regular file with
    // several names is written under all of them, some perhaps outside `writable`.
    let force = if t == S_IFBLK {
        event_flags::DEVICE
    } else if t == S_IFREG && unsafe { kernel::file_nlink(file) } > 1 {
        event_flags::HARD_LINK
    } else {
        0
    };
    // aux stays 0: events decode `aux` of file.write as open(2) flags, and this is an f_mode.
    decide_path_as(kind::FILE_WRITE, d, m, 0, force)
}

/// A FIFO opened for writing: a message to whoever reads it. Inside `writable`, or listed as
/// `unix:PATH`, it is allowed; elsewhere it is `ipc.connect`, refused before it opens.
#[inline(always)]
fn fifo_open(dentry: *const u8, mnt: *const u8) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    let Some(s) = agent::scratch() else { return 0 };
    let Ok(b) = (unsafe { dentry_path(s, dentry, mnt) }) else { return refuse_ipc(&st, &cfg, s, 0) };
    if unsafe { agent::path_class(s, cfg.slot, b) } == path_class::WRITABLE {
        return 0;
    }
    if !b.untrusted() && unsafe { unix_allowed(s, cfg.slot, b.len) } {
        return 0;
    }
    refuse_ipc(&st, &cfg, s, b.len)
}

/// Is `s.buf[..len]` a Unix path the agent may reach (`UNIX_ALLOW`)?
#[inline(always)]
unsafe fn unix_allowed(s: *mut Scratch, slot: u32, len: u32) -> bool {
    use agent_monitor_common::{UnixKey, UNIX_PATH_LEN};
    let key = (*s).fgrant.path.as_mut_ptr() as *mut UnixKey;
    let words = key as *mut u64;
    for i in 0..((4 + UNIX_PATH_LEN) / 8 + 1) {
        *words.add(i) = 0;
    }
    (*key).agent = slot;
    let n = kernel::opaque(len as usize) & 127;
    if n == 0 || n >= UNIX_PATH_LEN {
        return false;
    }
    raw_read_kernel((*key).path.as_mut_ptr() as *mut c_void, n as u32, (*s).buf.as_ptr() as *const c_void);
    UNIX_ALLOW.get(&*key).is_some()
}

/// Refuse an `ipc.connect` (its path in `s.buf[..len]`) as the agent's action says.
#[inline(always)]
fn refuse_ipc(
    st: &agent_monitor_common::ProcState,
    cfg: &agent_monitor_common::AgentCfg,
    s: *mut Scratch,
    len: u32,
) -> i32 {
    let act = lsm_action(st, cfg);
    ipc_event(st, s, len, act, 0)
}

/// Record a refused `ipc.connect` with `act` and `flags`; EPERM unless only alerted.
#[inline(always)]
fn ipc_event(st: &agent_monitor_common::ProcState, s: *mut Scratch, len: u32, act: u32, flags: u32) -> i32 {
    let r = Rec {
        kind: kind::IPC_CONNECT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::BPF_LSM,
        flags,
        aux: 0,
        aux2: 0,
    };
    emit(st, &r, PathRef(unsafe { (*s).buf.as_ptr() }, len.min(PATH_LEN as u32)), PathRef::NONE);
    if act == action::ALERTED {
        0
    } else {
        EPERM
    }
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

/// The action of an LSM refusal: `kill` also kills the instance, `hold` holds the request,
/// `alert` lets it through.
#[inline(always)]
fn lsm_action(st: &agent_monitor_common::ProcState, cfg: &agent_monitor_common::AgentCfg) -> u32 {
    match cfg.action {
        policy_action::ALERT => action::ALERTED,
        policy_action::KILL => {
            kill_instance(st);
            action::KILLED
        }
        policy_action::HOLD => action::HELD,
        _ => action::DENIED,
    }
}

/// Self-protection: an agent aiming at the daemon's task `target`. Refused (EPERM) before the
/// operation runs; `kill` also kills the agent.
#[inline(always)]
fn tamper(target: *const u8, what: u64, detail: u64) -> i32 {
    let daemon = DAEMON.get(daemon_slot::PID).copied().unwrap_or(0);
    if daemon == 0 {
        return 0;
    }
    match unsafe { kernel::task_tgid(target) } {
        Ok(tgid) if tgid == daemon => {}
        _ => return 0,
    }
    let Some((st, _)) = current_agent() else {
        return 0;
    };
    let _ = DAEMON_TIDS;
    refuse_tamper(&st, what, (detail << 32) | daemon as u64)
}

/// Self-protection refuses and kills whatever the agent's action, and says so.
#[inline(always)]
fn refuse_tamper(st: &agent_monitor_common::ProcState, aux: u64, aux2: u64) -> i32 {
    kill_instance(st);
    let r = Rec {
        kind: kind::SELF_TAMPER,
        verdict: verdict::VIOLATION,
        action: action::KILLED,
        layer: layer::BPF_LSM,
        flags: 0,
        aux,
        aux2,
    };
    emit(st, &r, PathRef::NONE, PathRef::NONE);
    EPERM
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)`:
/// every signal a process sends (kill, tkill, tgkill, rt_sigqueueinfo, pidfd_send_signal).
/// Signal 0 only asks whether the process exists.
#[lsm(hook = "task_kill")]
#[inline(always)]
pub fn lsm_task_kill(ctx: LsmContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    tamper(p, tamper_call::LSM_SIGNAL, sig as u32 as u64)
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`: ptrace attach, and
/// everything that needs the same right (process_vm_readv/writev, /proc/PID/mem,
/// pidfd_getfd). Read-only checks (`ps` reading /proc) pass.
#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
pub fn lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    const PTRACE_MODE_ATTACH: u32 = 0x02;
    let child: *const u8 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let r = tamper(child, tamper_call::LSM_PTRACE_ATTACH, mode as u64);
    if r != 0 {
        return r;
    }
    // Any other process outside the agent's instance: acting through it is `process.inject`.
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    let tgid = unsafe { kernel::task_tgid(child) }.unwrap_or(0);
    if tgid != 0 && unsafe { PROCS.get(&tgid) }.is_some_and(|p| p.run_id == st.run_id) {
        return 0;
    }
    let act = lsm_action(&st, &cfg);
    let r = Rec {
        kind: kind::PROCESS_INJECT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::BPF_LSM,
        flags: 0,
        aux: tamper_call::LSM_PTRACE_ATTACH,
        aux2: ((mode as u64) << 32) | tgid as u64,
    };
    emit(&st, &r, PathRef::NONE, PathRef::NONE);
    if act == action::ALERTED {
        0
    } else {
        EPERM
    }
}

/// `file_ioctl(file, cmd, arg)`: `TIOCSTI`/`TIOCLINUX` push input into a terminal that another
/// process (the shell the agent was started from) reads as typed by its user: refused to agents
/// (`process.inject`) before a byte is pushed. Every other ioctl passes here (`chattr` is the
/// tracepoint layer's).
#[lsm(hook = "file_ioctl")]
#[inline(always)]
pub fn lsm_file_ioctl(ctx: LsmContext) -> i32 {
    const TIOCSTI: u32 = 0x5412;
    const TIOCLINUX: u32 = 0x541c;
    let cmd: u32 = ctx.arg(1);
    if cmd != TIOCSTI && cmd != TIOCLINUX {
        return 0;
    }
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    let act = lsm_action(&st, &cfg);
    let r = Rec {
        kind: kind::PROCESS_INJECT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::BPF_LSM,
        flags: 0,
        aux: tamper_call::TIOCSTI,
        aux2: (cmd as u64) << 32,
    };
    emit(&st, &r, PathRef::NONE, PathRef::NONE);
    if act == action::ALERTED {
        0
    } else {
        EPERM
    }
}

/// Mounts (`sb_mount`, `move_mount`, `sb_umount`, `sb_pivotroot`, `path_chroot`): a mount names a
/// file by what it is not. Refused to agents unless the policy allows `mount`.
#[inline(always)]
fn mount_hook(call: u64) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    if cfg.flags & agent_flags::ALLOW_MOUNT != 0 {
        return 0;
    }
    let act = lsm_action(&st, &cfg);
    let r = Rec {
        kind: kind::SYS_MOUNT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::BPF_LSM,
        flags: 0,
        aux: call,
        aux2: 0,
    };
    emit(&st, &r, PathRef::NONE, PathRef::NONE);
    if act == action::ALERTED {
        0
    } else {
        EPERM
    }
}

#[lsm(hook = "sb_mount")]
#[inline(always)]
pub fn lsm_sb_mount(_ctx: LsmContext) -> i32 {
    mount_hook(165)
}

#[lsm(hook = "sb_umount")]
#[inline(always)]
pub fn lsm_sb_umount(_ctx: LsmContext) -> i32 {
    mount_hook(166)
}

#[lsm(hook = "move_mount")]
#[inline(always)]
pub fn lsm_move_mount(_ctx: LsmContext) -> i32 {
    mount_hook(429)
}

#[lsm(hook = "path_chroot")]
#[inline(always)]
pub fn lsm_path_chroot(_ctx: LsmContext) -> i32 {
    mount_hook(161)
}

#[lsm(hook = "sb_pivotroot")]
#[inline(always)]
pub fn lsm_sb_pivotroot(_ctx: LsmContext) -> i32 {
    mount_hook(155)
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size, ...)`: an agent may not load
/// programs or touch maps (the daemon's among them) unless the policy allows `bpf`.
#[lsm(hook = "bpf")]
#[inline(always)]
pub fn lsm_bpf(ctx: LsmContext) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    if cfg.flags & agent_flags::ALLOW_BPF != 0 {
        return 0;
    }
    let cmd: i32 = ctx.arg(0);
    refuse_tamper(&st, cmd as u32 as u64, 0)
}

/// The network boundary at the LSM layer: the same decision as the cgroup hooks, taken
/// before the protocol sees the call. A refusal here is final (the cgroup hook never runs);
/// an allowed connect goes on to the cgroup hook, which remembers the socket for the HTTP
/// check and uses up a one-time grant. `alert` is left to the cgroup hook (one event).
#[inline(always)]
fn net_decide(sock: *const u8, sa: *const u8, sendmsg: bool) -> i32 {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    const AF_UNIX: u16 = 1;
    const SOCK_STREAM: u16 = 1;
    let Some((st, cfg)) = current_agent() else {
        return 0;
    };
    if sa.is_null() {
        return 0;
    }
    let ty = unsafe { kernel::socket_type(sock) }.unwrap_or(0);
    let Ok(family) = (unsafe { kernel::rd::<u16>(sa, 0) }) else { return 0 };
    if family == AF_UNIX {
        return unix_decide(&st, &cfg, sa);
    }
    // `alert` for inet destinations is the cgroup hook's to report (one event).
    if cfg.action == policy_action::ALERT {
        return 0;
    }
    // A stream socket's destination was decided at connect (TCP ignores msg_name).
    if sendmsg && ty == SOCK_STREAM {
        return 0;
    }
    let Ok(port) = (unsafe { kernel::rd::<[u8; 2]>(sa, 2) }) else { return 0 };
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let Ok(v4) = (unsafe { kernel::rd::<[u8; 4]>(sa, 4) }) else { return 0 };
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&v4);
        }
        AF_INET6 => {
            let Ok(v6) = (unsafe { kernel::rd::<[u8; 16]>(sa, 8) }) else { return 0 };
            addr = v6;
        }
        _ => return 0,
    }
    if unsafe { KILLED.get(&st.run_id) }.is_some() {
        return EPERM;
    }
    if net::allowed_or_granted(&st, cfg.slot, net::proto_of(ty as u32), port, addr, false).is_some() {
        return 0;
    }
    let act = lsm_action(&st, &cfg);
    let kind = if sendmsg || ty != SOCK_STREAM { kind::NET_SEND } else { kind::NET_CONNECT };
    let r = Rec { kind, verdict: verdict::VIOLATION, action: act, layer: layer::BPF_LSM, flags: 0, aux: 0, aux2: 0 };
    net::emit_net(&st, &net::who_current(), r, &addr, port, ty as u32, PathRef::NONE);
    EPERM
}

/// A Unix socket address (kernel memory: the copy the call made): allowed if listed
/// (`unix:PATH`, `@name` for an abstract socket), else refused before it connects or sends.
#[inline(always)]
fn unix_decide(st: &agent_monitor_common::ProcState, cfg: &agent_monitor_common::AgentCfg, sa: *const u8) -> i32 {
    use agent_monitor_common::{UnixKey, UNIX_PATH_LEN};
    let Some(s) = agent::scratch() else { return EPERM };
    unsafe {
        let key = (*s).fgrant.path.as_mut_ptr() as *mut UnixKey;
        let words = key as *mut u64;
        for i in 0..((4 + UNIX_PATH_LEN) / 8 + 1) {
            *words.add(i) = 0;
        }
        (*key).agent = cfg.slot;
        let first = kernel::rd::<u8>(sa, 2).unwrap_or(0);
        let p = (*key).path.as_mut_ptr();
        if first == 0 {
            *p = b'@';
            aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
                p.add(1) as *mut c_void,
                (UNIX_PATH_LEN - 1) as u32,
                sa.add(3) as *const c_void,
            );
        } else {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
                p as *mut c_void,
                UNIX_PATH_LEN as u32,
                sa.add(2) as *const c_void,
            );
        }
        if UNIX_ALLOW.get(&*key).is_some() {
            return 0;
        }
        raw_read_kernel((*s).buf.as_mut_ptr() as *mut c_void, UNIX_PATH_LEN as u32, p as *const c_void);
        (*s).buf[UNIX_PATH_LEN] = 0;
    }
    // Refused before the kernel looks the address up: the socket may not exist (glibc probes
    // nscd's on every name lookup), and a connect to nothing reaches nothing. The daemon
    // records it, and kills, only if it does (`UNIX_UNCHECKED`).
    let (act, flags) = match cfg.action {
        policy_action::KILL => (action::KILLED, event_flags::KILL_FROM_USERSPACE | event_flags::UNIX_UNCHECKED),
        _ => (lsm_action(st, cfg), event_flags::UNIX_UNCHECKED),
    };
    ipc_event(st, s, UNIX_PATH_LEN as u32, act, flags)
}

/// `socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)` (io_uring's
/// connect included).
#[lsm(hook = "socket_connect")]
#[inline(always)]
pub fn lsm_socket_connect(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let sa: *const u8 = ctx.arg(1);
    net_decide(sock, sa, false)
}

/// `socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`: a datagram's
/// destination (`sendto`, `sendmsg` with a name).
#[lsm(hook = "socket_sendmsg")]
#[inline(always)]
pub fn lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    let Ok(name) = (unsafe { kernel::msghdr_name(msg) }) else { return 0 };
    net_decide(sock, name, true)
}
