//! What a `self.tamper` event's `aux` says was attempted: a tag per call, numbered as x86_64's
//! syscalls (the tracepoint layer knows which program fired, not the number the process used), and
//! two tags of the LSM layer, which sees the operation rather than the call.
pub mod tamper_call {
    pub const KILL: u64 = 62;
    pub const TKILL: u64 = 200;
    pub const TGKILL: u64 = 234;
    pub const PTRACE: u64 = 101;
    pub const PROCESS_VM_WRITEV: u64 = 311;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const PIDFD_SEND_SIGNAL: u64 = 424;
    pub const PIDFD_GETFD: u64 = 438;
    pub const IOCTL: u64 = 16;
    /// `ioctl(TIOCSTI | TIOCLINUX)` into a terminal (recorded as `ioctl`).
    pub const TIOCSTI: u64 = IOCTL;
    /// Aimed at the daemon without a signal call: `fcntl(F_SETOWN)`/`ioctl(FIOSETOWN)` (SIGIO
    /// and SIGURG, or any signal with F_SETSIG, to the owner), resource limits, scheduling.
    pub const FCNTL: u64 = 72;
    pub const PRLIMIT64: u64 = 302;
    pub const SETPRIORITY: u64 = 141;
    pub const SCHED_SETSCHEDULER: u64 = 144;
    pub const SCHED_SETAFFINITY: u64 = 203;
    pub const IOPRIO_SET: u64 = 251;
    pub const SCHED_SETATTR: u64 = 314;
    /// `open` of another process's pipe or memfd through `/proc/PID/fd/N`.
    pub const PROC_FD_OPEN: u64 = 257;
    /// Not syscalls: what the LSM layer refused.
    pub const LSM_SIGNAL: u64 = 1000;
    pub const LSM_PTRACE_ATTACH: u64 = 1001;

    /// The call's name, for events.
    pub const fn name(tag: u64) -> Option<&'static str> {
        Some(match tag {
            KILL => "kill",
            TKILL => "tkill",
            TGKILL => "tgkill",
            PTRACE => "ptrace",
            PROCESS_VM_WRITEV => "process_vm_writev",
            RT_SIGQUEUEINFO => "rt_sigqueueinfo",
            RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
            PIDFD_SEND_SIGNAL => "pidfd_send_signal",
            PIDFD_GETFD => "pidfd_getfd",
            IOCTL => "ioctl",
            PROC_FD_OPEN => "openat",
            FCNTL => "fcntl",
            PRLIMIT64 => "prlimit64",
            SETPRIORITY => "setpriority",
            SCHED_SETSCHEDULER => "sched_setscheduler",
            SCHED_SETAFFINITY => "sched_setaffinity",
            IOPRIO_SET => "ioprio_set",
            SCHED_SETATTR => "sched_setattr",
            LSM_SIGNAL => "signal",
            LSM_PTRACE_ATTACH => "ptrace attach",
            _ => return None,
        })
    }
}
