//! Wire types shared by the kernel programs (`agent-monitor-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]`, holds only fixed-width integers and byte arrays, and has a
//! compile-time size guard: the kernel and userspace must agree on every byte. Kind, verdict,
//! action and layer tags travel as `u32` and are decoded with `TryFrom` in userspace, never
//! transmuted. The crate is `std` on the host so that its logic is unit-tested with `cargo test`.
#![cfg_attr(target_arch = "bpf", no_std)]

use core::mem::size_of;

/// Bytes of path kept in events and used for matching. `struct bpf_lpm_trie_key` data is at most
/// 256 bytes (`LPM_DATA_SIZE_MAX`, kernel/bpf/lpm_trie.c); 4 of them carry the agent id.
pub const PATH_LEN: usize = 252;
/// Size of the per-CPU path scratch buffer: twice the path length so that a masked offset plus a
/// masked length never leaves it (the verifier checks `off + len <= size`).
pub const SCRATCH_LEN: usize = 512;
pub const COMM_LEN: usize = 16;
/// Deepest directory nesting followed when a path is rebuilt from dentries.
pub const MAX_PATH_DEPTH: usize = 64;

/// Event kinds. The numbering is the wire format; names are the contract (DESIGN.md).
pub mod kind {
    pub const PROCESS_EXEC: u32 = 1;
    pub const PROCESS_EXIT: u32 = 2;
    pub const FILE_WRITE: u32 = 3;
    pub const FILE_DELETE: u32 = 4;
    pub const FILE_RENAME: u32 = 5;
    pub const FILE_LINK: u32 = 6;
    pub const FILE_MKDIR: u32 = 7;
    pub const FILE_CHMOD: u32 = 8;
    pub const NET_CONNECT: u32 = 9;
    pub const NET_SEND: u32 = 10;
    pub const NET_HTTP_WRITE: u32 = 11;
    pub const IPC_CONNECT: u32 = 12;
    pub const SELF_TAMPER: u32 = 13;
    /// `io_uring_setup`: io_uring operations bypass syscall tracepoints.
    pub const SYS_IO_URING: u32 = 14;
    /// A raw (`SOCK_RAW`) or packet (`AF_PACKET`) socket: bypasses the connect/sendmsg hooks.
    pub const NET_RAW_SOCKET: u32 = 15;
    pub const MAX: u32 = 15;
}

/// The event kinds as a type, for userspace decoding. Exhaustive on purpose: adding a kind
/// constant without a name here fails to compile (`name` has no `_` arm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ProcessExec,
    ProcessExit,
    FileWrite,
    FileDelete,
    FileRename,
    FileLink,
    FileMkdir,
    FileChmod,
    NetConnect,
    NetSend,
    NetHttpWrite,
    IpcConnect,
    SelfTamper,
    SysIoUring,
    NetRawSocket,
}

impl Kind {
    pub const ALL: [Kind; kind::MAX as usize] = [
        Kind::ProcessExec,
        Kind::ProcessExit,
        Kind::FileWrite,
        Kind::FileDelete,
        Kind::FileRename,
        Kind::FileLink,
        Kind::FileMkdir,
        Kind::FileChmod,
        Kind::NetConnect,
        Kind::NetSend,
        Kind::NetHttpWrite,
        Kind::IpcConnect,
        Kind::SelfTamper,
        Kind::SysIoUring,
        Kind::NetRawSocket,
    ];

    /// The contract name (DESIGN.md).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::ProcessExec => "process.exec",
            Kind::ProcessExit => "process.exit",
            Kind::FileWrite => "file.write",
            Kind::FileDelete => "file.delete",
            Kind::FileRename => "file.rename",
            Kind::FileLink => "file.link",
            Kind::FileMkdir => "file.mkdir",
            Kind::FileChmod => "file.chmod",
            Kind::NetConnect => "net.connect",
            Kind::NetSend => "net.send",
            Kind::NetHttpWrite => "net.http_write",
            Kind::IpcConnect => "ipc.connect",
            Kind::SelfTamper => "self.tamper",
            Kind::SysIoUring => "sys.io_uring",
            Kind::NetRawSocket => "net.raw_socket",
        }
    }

    pub const fn wire(self) -> u32 {
        match self {
            Kind::ProcessExec => kind::PROCESS_EXEC,
            Kind::ProcessExit => kind::PROCESS_EXIT,
            Kind::FileWrite => kind::FILE_WRITE,
            Kind::FileDelete => kind::FILE_DELETE,
            Kind::FileRename => kind::FILE_RENAME,
            Kind::FileLink => kind::FILE_LINK,
            Kind::FileMkdir => kind::FILE_MKDIR,
            Kind::FileChmod => kind::FILE_CHMOD,
            Kind::NetConnect => kind::NET_CONNECT,
            Kind::NetSend => kind::NET_SEND,
            Kind::NetHttpWrite => kind::NET_HTTP_WRITE,
            Kind::IpcConnect => kind::IPC_CONNECT,
            Kind::SelfTamper => kind::SELF_TAMPER,
            Kind::SysIoUring => kind::SYS_IO_URING,
            Kind::NetRawSocket => kind::NET_RAW_SOCKET,
        }
    }
}

impl TryFrom<u32> for Kind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        let mut i = 0;
        while i < Kind::ALL.len() {
            if Kind::ALL[i].wire() == v {
                return Ok(Kind::ALL[i]);
            }
            i += 1;
        }
        Err(v)
    }
}

pub mod verdict {
    pub const ALLOWED: u32 = 0;
    pub const VIOLATION: u32 = 1;
}

/// What was done. `DENIED` only where a layer refused the operation before it took effect.
pub mod action {
    pub const NONE: u32 = 0;
    pub const ALERTED: u32 = 1;
    pub const DENIED: u32 = 2;
    pub const KILLED: u32 = 3;
    /// Paused or refused, waiting for `agent-monitor approve` / `deny`.
    pub const HELD: u32 = 4;
}

pub mod layer {
    pub const TRACEPOINT: u32 = 1;
    pub const CGROUP: u32 = 2;
    pub const BPF_LSM: u32 = 3;
    pub const LANDLOCK: u32 = 4;
    pub const UPROBE: u32 = 5;
    pub const USERSPACE: u32 = 6;
}

/// The policy's `action` for an agent, as stored in [`AgentCfg::action`].
pub mod policy_action {
    pub const ALERT: u32 = 0;
    pub const DENY: u32 = 1;
    pub const KILL: u32 = 2;
    /// Pause (SIGSTOP, where the call can still be held) or refuse, and wait for a person.
    pub const HOLD: u32 = 3;
}

/// Bits of [`AgentCfg::flags`].
pub mod agent_flags {
    pub const ACTIVE: u32 = 1 << 0;
    /// Emit `allowed` events too (audit mode).
    pub const AUDIT: u32 = 1 << 1;
    pub const ALLOW_IO_URING: u32 = 1 << 2;
    pub const ALLOW_RAW_SOCKET: u32 = 1 << 3;
    pub const ALLOW_BPF: u32 = 1 << 4;
    /// `require_http_visibility`: a TLS connection from a process whose TLS library is not
    /// hooked (methods invisible) fails closed.
    pub const REQUIRE_HTTP_VISIBILITY: u32 = 1 << 5;
}

/// Bits of [`Event::flags`].
pub mod event_flags {
    /// The path did not fit in [`super::PATH_LEN`] bytes or was deeper than
    /// [`super::MAX_PATH_DEPTH`]; the decision treated it as outside every writable prefix
    /// unless a prefix matched its first bytes.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    /// The kill was sent after the syscall had already taken effect (tracepoint layer).
    pub const AFTER_EFFECT: u32 = 1 << 1;
    /// `deny` was asked for but no layer could refuse this operation: killed instead.
    pub const DENY_FELL_BACK: u32 = 1 << 2;
    /// First exec of a new agent instance (a selector matched).
    pub const INSTANCE_START: u32 = 1 << 3;
    /// The second path is the one outside `writable` (rename/link source).
    pub const SECOND_PATH: u32 = 1 << 4;
    /// The process is part of an instance already marked killed.
    pub const INSTANCE_KILLED: u32 = 1 << 5;
    /// `path` holds a 16-byte IPv6 (or v4-mapped) address, `aux` the port, `aux2` the socket
    /// type: userspace formats the target as `host:port`.
    pub const NET_ADDR: u32 = 1 << 6;
    /// `path2` holds the start of an HTTP request (request line), `aux2` its method bit.
    pub const HTTP_REQUEST: u32 = 1 << 7;
    /// The kill is left to userspace (a cgroup or socket program cannot signal).
    pub const KILL_FROM_USERSPACE: u32 = 1 << 8;
    /// A TLS handshake from a process whose TLS library is not hooked: its HTTP methods are
    /// not visible.
    pub const TLS_INVISIBLE: u32 = 1 << 9;
    /// A TLS ClientHello whose server name (in `path2`) is not an allowed host name.
    pub const SNI_MISMATCH: u32 = 1 << 10;
    /// A file operation on one of the daemon's own files (configuration, events log, pins,
    /// control socket, binary): reported as `self.tamper` (`aux2` = the file kind), refused
    /// where a layer can refuse, and the agent killed whatever its action.
    pub const PROTECTED_PATH: u32 = 1 << 11;
}

/// Index of each kernel-side counter in the `STATS` per-CPU array.
pub mod stat {
    /// Event dropped: ring buffer full.
    pub const RINGBUF_FULL: u32 = 0;
    /// A path was truncated.
    pub const PATH_TRUNCATED: u32 = 1;
    /// The process table (`PROCS`) was full: a process could not be tracked.
    pub const PROCS_FULL: u32 = 2;
    /// Kernel memory could not be read where a decision needed it.
    pub const READ_FAILED: u32 = 3;
    /// Not a drop: a new agent process's TLS ClientHello held until the daemon hooked its TLS
    /// library (`tls_uprobes = "agents"`; TCP sends it again).
    pub const TLS_HANDSHAKE_HELD: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Per-process state, keyed by tgid in `PROCS`. Identity is (tgid, `start_ns`): a pid reused by
/// a new process is not confused with an agent that exited (the exit hook removes the entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcState {
    /// Agent id (1-based index in the policy); 0 is never stored.
    pub agent: u32,
    /// Which daemon run's per-agent TLS hooks cover this process (`tls_uprobes = "agents"`):
    /// the daemon writes its token when it hooks a process, and a child copies its parent's at
    /// fork as it inherits the hooks. 0: not hooked yet.
    pub tls_token: u32,
    /// The agent instance this process belongs to; shared by all its descendants.
    pub run_id: u64,
    /// `task_struct::start_time` of the process (ns since boot, CLOCK_MONOTONIC).
    pub start_ns: u64,
}
const _: () = assert!(size_of::<ProcState>() == 24);

/// Per-agent configuration, indexed by agent id in the `AGENTS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCfg {
    pub action: u32,
    pub flags: u32,
    /// Allowed HTTP methods: bit i is [`HTTP_METHODS`]`[i]`.
    pub http_allow: u32,
    /// Where this agent's rules live in the kernel tables: `agent_slot(id, generation)`.
    pub slot: u32,
}
const _: () = assert!(size_of::<AgentCfg>() == 16);

/// Agent ids per policy generation. The kernel keeps two generations of rules (`AGENTS`,
/// `WRITABLE`, `NET_ALLOW`, `UNIX_ALLOW`, `SNI_ALLOW` are keyed by slot, not by id); a reload
/// writes the inactive one completely, then flips `GENERATION[0]` — one 4-byte store — so that
/// every decision sees either the whole old policy or the whole new one, never a mix.
pub const AGENT_SLOTS_PER_GEN: u32 = 256;

/// Set in an event's `agent` field (with the slot: id in bits 0..8, generation in bit 8) when
/// the event comes from a decision, which names the policy generation that made it.
pub const AGENT_GEN_KNOWN: u32 = 0x200;

/// The table slot of agent `id` in generation `gen` (0 or 1).
#[inline(always)]
pub const fn agent_slot(id: u32, gen: u32) -> u32 {
    (id & (AGENT_SLOTS_PER_GEN - 1)) + (gen & 1) * AGENT_SLOTS_PER_GEN
}

/// The request-line tokens the kernel recognises at the start of an HTTP/1.x request, in bit
/// order. A request starting with anything else is not HTTP as far as the check goes.
pub const HTTP_METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"OPTIONS ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"CONNECT ", b"TRACE "];

/// Which method (bit index into [`HTTP_METHODS`]) the first bytes of a payload start with.
/// Written without slices or loops over slices so that it compiles to straight-line BPF.
#[inline(always)]
pub fn http_method(b: &[u8; 8]) -> Option<u32> {
    match b {
        [b'G', b'E', b'T', b' ', ..] => Some(0),
        [b'H', b'E', b'A', b'D', b' ', ..] => Some(1),
        [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' '] => Some(2),
        [b'P', b'O', b'S', b'T', b' ', ..] => Some(3),
        [b'P', b'U', b'T', b' ', ..] => Some(4),
        [b'P', b'A', b'T', b'C', b'H', b' ', ..] => Some(5),
        [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..] => Some(6),
        [b'C', b'O', b'N', b'N', b'E', b'C', b'T', b' '] => Some(7),
        [b'T', b'R', b'A', b'C', b'E', b' ', ..] => Some(8),
        _ => None,
    }
}

/// Data of a `NET_ALLOW` LPM trie key: the agent, the destination port (network byte order,
/// `[0, 0]` = any port), then the IPv6 address (IPv4 as `::ffff:a.b.c.d`). Prefix lengths
/// count 32 + 16 bits for agent and port, then address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetData {
    pub agent: u32,
    pub port: [u8; 2],
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<NetData>() == 24);
/// Prefix bits of agent and port in a `NET_ALLOW` key.
pub const NET_KEY_FIXED_BITS: u32 = 48;

/// Key of the `UNIX_ALLOW` hash map: agent and socket path, NUL padded.
pub const UNIX_PATH_LEN: usize = 108;
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnixKey {
    pub agent: u32,
    pub path: [u8; UNIX_PATH_LEN],
}

/// Key of the `GRANTS` hash map: an approved held connect, for one agent instance and one
/// destination (value: expiry, `bpf_ktime_get_boot_ns` ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub run_id: u64,
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<GrantKey>() == 32);

/// An approved held file operation (BPF LSM layer): this instance may do `kind` on exactly
/// `path[..len]` (the rest zero) until the expiry in the value (ns since boot; the top bit
/// marks a grant for one operation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileGrantKey {
    pub run_id: u64,
    pub kind: u32,
    pub len: u32,
    pub path: [u8; PATH_LEN + 4],
}
const _: () = assert!(size_of::<FileGrantKey>() == 272);

/// Key of the `SNI_ALLOW` hash map: agent and an allowed TLS server name, NUL padded.
pub const SNI_LEN: usize = 128;
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SniKey {
    pub agent: u32,
    pub name: [u8; SNI_LEN],
}

/// `NET_ALLOW` values: how a destination came to be allowed.
pub mod net_origin {
    /// A literal address or network in the policy.
    pub const STATIC: u32 = 1;
    /// Only a resolved host name: a TLS server name must match an allowed name.
    pub const HOST: u32 = 2;
}

/// An outbound socket of an agent, keyed by socket cookie in `SOCKS`: what the packet-level
/// HTTP check needs, since it does not run in the process's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub agent: u32,
    pub tgid: u32,
    pub run_id: u64,
    pub start_ns: u64,
    pub port: [u8; 2],
    pub addr: [u8; 16],
    /// [`sock_state`]: what the HTTP check does with the socket's next packets.
    pub blocked: u8,
    /// 1 once the first payload was inspected (TLS visibility and SNI are checked once).
    pub seen: u8,
    /// 1 if the destination is allowed only through a host name: a TLS server name must then
    /// be one of the agent's allowed names.
    pub via_host: u8,
    pub _pad: [u8; 3],
    /// The TCP sequence number (as on the wire) of the held request's first segment.
    pub held_seq: u32,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<SockInfo>() == 56);

/// `SockInfo::blocked`.
pub mod sock_state {
    /// Checked as usual.
    pub const OPEN: u8 = 0;
    /// A forbidden request was seen: every later packet is dropped.
    pub const BLOCKED: u8 = 1;
    /// A request is held: every packet is dropped (TCP keeps them queued) until a decision.
    pub const HELD: u8 = 2;
    /// The held request was approved: its segment (`held_seq`) passes, retransmissions
    /// included; later requests are checked as usual.
    pub const APPROVED: u8 = 3;
}

/// Data of a `WRITABLE` LPM trie key (the trie adds the `u32` prefix length in front): the agent
/// id, then the path prefix with a trailing `/`. The prefix length counts bits of `agent` plus
/// path bytes, so that `/tmp/` matches `/tmp/x/` and never `/tmpx/`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathData {
    pub agent: u32,
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(size_of::<PathData>() == 256);

/// Key of the `SEL_EXE` hash map: an absolute executable path, NUL padded.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeKey {
    pub path: [u8; PATH_LEN],
}

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
    pub fs_pwd: u32,
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
    pub sb_s_flags: u32,
    /// 1 once the daemon has filled the table; programs refuse to walk kernel memory before.
    pub valid: u32,
}

/// One record on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub ts_ns: u64,
    pub run_id: u64,
    pub start_ns: u64,
    pub kind: u32,
    pub verdict: u32,
    pub action: u32,
    pub layer: u32,
    pub agent: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub flags: u32,
    /// Kind-specific: open flags, mode, socket family/type, syscall number, exit code.
    pub aux: u64,
    pub aux2: u64,
    pub comm: [u8; COMM_LEN],
    pub path_len: u32,
    pub path2_len: u32,
    pub path: [u8; PATH_LEN + 4],
    pub path2: [u8; PATH_LEN + 4],
}
const _: () = assert!(size_of::<Event>() == 616);

/// Records on `EVENTS` are an `Event` cut short where the rest is unused: without `path2`
/// ([`EVENT_ONE_PATH`] bytes) or with only the first [`SHORT_PATH`] bytes of `path` (a network
/// address, or no path: [`EVENT_SHORT`]). A refused UDP send is 120 bytes instead of 616: the
/// ring buffer holds five times as many and the daemon copies a fifth of the bytes.
/// The reader pads a short record back to a whole `Event` with zeros.
pub const EVENT_HEAD: usize = core::mem::offset_of!(Event, path);
pub const SHORT_PATH: usize = 16;
pub const EVENT_SHORT: usize = EVENT_HEAD + SHORT_PATH;
pub const EVENT_ONE_PATH: usize = core::mem::offset_of!(Event, path2);
const _: () = assert!(EVENT_HEAD == 104 && EVENT_SHORT == 120 && EVENT_ONE_PATH == 360);

/// Is `flags` (from `open(2)`) an open that can change the file?
pub const fn open_is_write(flags: u64) -> bool {
    const O_ACCMODE: u64 = 0o3;
    const O_CREAT: u64 = 0o100;
    const O_TRUNC: u64 = 0o1000;
    (flags & O_ACCMODE) != 0 || (flags & (O_CREAT | O_TRUNC)) != 0
}

/// Values of `WRITABLE` entries: the longest matching prefix decides.
pub mod path_class {
    /// No entry matches: outside `writable`.
    pub const OUTSIDE: u32 = 0;
    pub const WRITABLE: u32 = 1;
    /// One of the daemon's own files or directories: never writable by an agent.
    pub const PROTECTED: u32 = 2;
}

/// Build a `WRITABLE` key for `path` (an absolute, normalised path). The trailing `/` makes the
/// match component-wise. Returns `None` when the path does not fit.
/// Returns `(prefix_len_bits, data)`.
pub fn writable_key(agent: u32, path: &[u8]) -> Option<(u32, PathData)> {
    let mut key = PathData { agent, path: [0; PATH_LEN] };
    let trimmed = if path.len() > 1 && path.ends_with(b"/") { &path[..path.len() - 1] } else { path };
    let len = if trimmed == b"/" { 1 } else { trimmed.len() + 1 };
    if len > PATH_LEN {
        return None;
    }
    key.path[..trimmed.len()].copy_from_slice(trimmed);
    key.path[len - 1] = b'/';
    Some((((4 + len) * 8) as u32, key))
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no padding holes that carry pointers.
    unsafe impl aya::Pod for ProcState {}
    unsafe impl aya::Pod for AgentCfg {}
    unsafe impl aya::Pod for PathData {}
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for NetData {}
    unsafe impl aya::Pod for UnixKey {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for SniKey {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for FileGrantKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_key_is_component_wise() {
        let (bits, k) = writable_key(3, b"/tmp").unwrap();
        assert_eq!(&k.path[..5], b"/tmp/");
        assert_eq!(bits, (4 + 5) * 8);
        let (bits, root) = writable_key(1, b"/").unwrap();
        assert_eq!(&root.path[..1], b"/");
        assert_eq!(bits, (4 + 1) * 8);
        let (_, trailing) = writable_key(1, b"/var/lib/x/").unwrap();
        assert_eq!(&trailing.path[..11], b"/var/lib/x/");
        assert!(writable_key(1, &[b'a'; PATH_LEN]).is_none());
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::try_from(k.wire()), Ok(k));
        }
        assert_eq!(Kind::try_from(0), Err(0));
        assert_eq!(Kind::try_from(kind::MAX + 1), Err(kind::MAX + 1));
        assert_eq!(Kind::FileWrite.name(), "file.write");
    }

    #[test]
    fn http_methods_match_request_starts_only() {
        let m = |s: &[u8]| {
            let mut b = [0u8; 8];
            b[..s.len().min(8)].copy_from_slice(&s[..s.len().min(8)]);
            http_method(&b)
        };
        for (i, tok) in HTTP_METHODS.iter().enumerate() {
            let mut req = tok.to_vec();
            req.extend_from_slice(b"/x HTTP/1.1");
            assert_eq!(m(&req), Some(i as u32), "{}", String::from_utf8_lossy(tok));
        }
        assert_eq!(m(b"POSTX / HTTP/1.1"), None);
        assert_eq!(m(b"post / HTTP/1.1"), None);
        assert_eq!(m(b"\x16\x03\x01\x02\x00\x01\x00\x01"), None); // a TLS ClientHello
        assert_eq!(m(b"HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn write_intent() {
        assert!(!open_is_write(0)); // O_RDONLY
        assert!(open_is_write(1)); // O_WRONLY
        assert!(open_is_write(2)); // O_RDWR
        assert!(open_is_write(0o100)); // O_CREAT
        assert!(open_is_write(0o1000)); // O_TRUNC
        assert!(!open_is_write(0o2000000)); // O_CLOEXEC
    }
}
