//! The event record on the `EVENTS` ring buffer and the tags it carries: kinds, verdicts,
//! actions, layers, flags, and the kernel's drop counters.
use core::mem::size_of;

use crate::{COMM_LEN, PATH_LEN};

/// Event kinds. The numbering is the wire format; names are the contract (docs/DESIGN.md).
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
    /// Acting through a process outside the agent's instance: ptrace, `process_vm_writev`,
    /// `pidfd_getfd`, `TIOCSTI`/`TIOCLINUX` into a terminal.
    pub const PROCESS_INJECT: u32 = 16;
    /// Changing the mount topology (`mount`, `umount2`, `open_tree`, `move_mount`, `fsmount`,
    /// `mount_setattr`, `pivot_root`): a mount makes one file visible under another name.
    pub const SYS_MOUNT: u32 = 17;
    /// Creating or entering namespaces (`unshare`, `setns`, `clone` with namespace flags).
    pub const SYS_NAMESPACE: u32 = 18;
    pub const SYS_COMPAT: u32 = 19;
    pub const MAX: u32 = 19;
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
    ProcessInject,
    SysMount,
    SysNamespace,
    SysCompat,
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
        Kind::ProcessInject,
        Kind::SysMount,
        Kind::SysNamespace,
        Kind::SysCompat,
    ];

    /// The contract name (docs/DESIGN.md).
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
            Kind::ProcessInject => "process.inject",
            Kind::SysMount => "sys.mount",
            Kind::SysNamespace => "sys.namespace",
            Kind::SysCompat => "sys.compat",
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
            Kind::ProcessInject => kind::PROCESS_INJECT,
            Kind::SysMount => kind::SYS_MOUNT,
            Kind::SysNamespace => kind::SYS_NAMESPACE,
            Kind::SysCompat => kind::SYS_COMPAT,
        }
    }
}

impl core::fmt::Display for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
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

/// A `u32` wire tag as a type for userspace: one list of (variant, constant, contract name),
/// `TryFrom<u32>`, `name()`, and `ALL`. Exhaustive like [`Kind`]: a variant without a name or
/// constant does not compile.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $module:ident { $($variant:ident = $konst:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The contract name, as events carry it.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub const fn wire(self) -> u32 {
                match self {
                    $($name::$variant => $module::$konst),+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl TryFrom<u32> for $name {
            type Error = u32;
            fn try_from(v: u32) -> Result<Self, u32> {
                match v {
                    $($module::$konst => Ok($name::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}

wire_enum!(
    /// [`verdict`] as a type.
    Verdict, verdict { Allowed = ALLOWED => "allowed", Violation = VIOLATION => "violation" }
);
wire_enum!(
    /// [`action`] as a type.
    Action, action {
        None = NONE => "none",
        Alerted = ALERTED => "alerted",
        Denied = DENIED => "denied",
        Killed = KILLED => "killed",
        Held = HELD => "held",
    }
);
wire_enum!(
    /// [`layer`] as a type.
    Layer, layer {
        Tracepoint = TRACEPOINT => "tracepoint",
        Cgroup = CGROUP => "cgroup",
        BpfLsm = BPF_LSM => "bpf_lsm",
        Landlock = LANDLOCK => "landlock",
        Uprobe = UPROBE => "uprobe",
        Userspace = USERSPACE => "userspace",
    }
);

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
    /// An argument the program had to read from the process's memory (a path, `open_how`, a
    /// socket address, a TLS buffer) could not be read, at the call nor after it: decided as a
    /// violation, never as "no decision".
    pub const ARG_UNREADABLE: u32 = 1 << 12;
    /// The file's path crosses a mount the daemon did not see in the host's mount namespace (a
    /// bind mount made since, a private mount namespace): its name is not what it is.
    pub const FOREIGN_MOUNT: u32 = 1 << 13;
    /// A device node: a block device, or creating a device node.
    pub const DEVICE: u32 = 1 << 14;
    /// On an HTTP connection, bytes where a request must start are not an allowed method token
    /// followed by a space (an unknown method, bytes before it, an HTTP/2 preface, a body).
    pub const HTTP_UNPARSABLE: u32 = 1 << 15;
    /// TLS from a stack the daemon cannot read, to a destination that does not accept opaque
    /// TLS (`opaque_tls`).
    pub const OPAQUE_TLS: u32 = 1 << 16;
    /// A request's path is not under the destination's allowed `paths`.
    pub const HTTP_PATH: u32 = 1 << 17;
    /// A Unix connect or datagram refused by the cgroup hook, which runs before the kernel looks
    /// the socket up: the daemon records it (and kills, for `kill`) only if the socket exists
    /// (a resolver probing an nscd that is not running reached nothing).
    pub const UNIX_UNCHECKED: u32 = 1 << 18;
    /// `net.http_write` inside TLS: a write its `Host:` header allowed for one destination, on
    /// a connection to another (`http_verdict::ELSEWHERE`).
    pub const HOST_ELSEWHERE: u32 = 1 << 19;
    /// A regular file with more than one name (hard links) opened for writing: its other
    /// names may be outside `writable`, and the inode is what is written.
    pub const HARD_LINK: u32 = 1 << 20;
    /// An audited `net.http_write` whose bytes go on with a request already judged (its body,
    /// the rest of its headers): they are no request line, whatever they say.
    pub const HTTP_GOES_ON: u32 = 1 << 21;
    /// `file.link` of a symbolic link (`symlink`, `symlinkat`): the first path is the link it
    /// makes, the second where it leads (which may be outside `writable`).
    pub const SYMLINK: u32 = 1 << 22;
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
    /// A table that holds security state was full (`PENDING`, `PENDING_OPS`, `SOCKS`, `KILLED`):
    /// the operation was refused or the process killed, never let through unchecked.
    pub const TABLE_FULL: u32 = 5;
    pub const COUNT: u32 = 6;
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

/// Events carry the contract names.
#[cfg(feature = "user")]
mod serde_names {
    use super::{Action, Kind, Layer, Verdict};
    macro_rules! by_name {
        ($($t:ty),+) => {$(
            impl serde::Serialize for $t {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(self.name())
                }
            }
        )+};
    }
    by_name!(Kind, Verdict, Action, Layer);
}
