//! Kernel struct field offsets, patched into the programs at load time.

/// Kernel struct field offsets, read from the running kernel's BTF by the daemon and patched
/// into the programs as a global (Rust eBPF has no CO-RE field relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_start_time: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    /// `task_struct.thread_info.status` (x86: `TS_COMPAT` while a 32-bit syscall runs).
    pub task_ti_status: u32,
    pub fs_pwd: u32,
    pub fs_root: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub inode_i_mode: u32,
    pub task_exit_code: u32,
    pub task_group_leader: u32,
    pub vfsmount_mnt_root: u32,
    /// Offset of the `struct vfsmount mnt` embedded in `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub file_private_data: u32,
    pub pid_numbers: u32,
    pub inode_i_private: u32,
    pub socket_type: u32,
    pub msghdr_msg_name: u32,
    pub inode_i_sb: u32,
    pub inode_i_nlink: u32,
    pub sb_s_flags: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub mount_mnt_id: u32,
    /// `struct mount::mnt_ns`: `MNT_NS_INTERNAL` for the kernel's private clones (an overlay's
    /// layers).
    pub mount_mnt_ns: u32,
    pub socket_sk: u32,
    /// `struct sock::__sk_common.skc_family` (`__sk_common` is the first member).
    pub sock_family: u32,
    /// 1 once the daemon has filled the table; programs refuse to walk kernel memory before.
    pub valid: u32,
}
