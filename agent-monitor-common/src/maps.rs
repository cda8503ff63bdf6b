//! The maps the kernel programs and the daemon share: their names, the slots of the `DAEMON`
//! array, and every key and value type.
//!
//! The kernel declares each map in `agent-monitor-ebpf/src/maps.rs` under the name given here
//! (the `#[map]` attribute takes only a literal, so the name is written there too); a unit test
//! of the daemon reads the built eBPF object and checks that its maps are exactly [`names::ALL`].
use core::mem::size_of;

use crate::PATH_LEN;

/// Map names, as the eBPF object declares them.
pub mod names {
    pub const PROCS: &str = "PROCS";
    pub const AGENTS: &str = "AGENTS";
    pub const GENERATION: &str = "GENERATION";
    pub const SEL_COMM: &str = "SEL_COMM";
    pub const SEL_EXE: &str = "SEL_EXE";
    pub const SEL_UID: &str = "SEL_UID";
    pub const SEL_CGROUP: &str = "SEL_CGROUP";
    pub const WRITABLE: &str = "WRITABLE";
    pub const KILLED: &str = "KILLED";
    pub const PENDING: &str = "PENDING";
    pub const PENDING_OPS: &str = "PENDING_OPS";
    pub const NET_ALLOW: &str = "NET_ALLOW";
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";
    pub const SNI_ALLOW: &str = "SNI_ALLOW";
    pub const VISIBLE: &str = "VISIBLE";
    pub const SNI_SCRATCH: &str = "SNI_SCRATCH";
    pub const SOCKS: &str = "SOCKS";
    pub const EVENTS_SCRATCH: &str = "EVENTS_SCRATCH";
    pub const DAEMON: &str = "DAEMON";
    pub const HOLD_STOP: &str = "HOLD_STOP";
    pub const FILE_GRANTS: &str = "FILE_GRANTS";
    pub const GRANTS: &str = "GRANTS";
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const SCRATCH: &str = "SCRATCH";

    /// Every map of the eBPF object.
    pub const ALL: &[&str] = &[
        PROCS,
        AGENTS,
        GENERATION,
        SEL_COMM,
        SEL_EXE,
        SEL_UID,
        SEL_CGROUP,
        WRITABLE,
        KILLED,
        PENDING,
        PENDING_OPS,
        NET_ALLOW,
        UNIX_ALLOW,
        SNI_ALLOW,
        VISIBLE,
        SNI_SCRATCH,
        SOCKS,
        EVENTS_SCRATCH,
        DAEMON,
        HOLD_STOP,
        FILE_GRANTS,
        GRANTS,
        EVENTS,
        STATS,
        SCRATCH,
    ];

    /// The maps pinned with the programs: every one that holds state a restart must keep (the
    /// per-CPU scratch maps hold none).
    pub const PINNED: &[&str] = &[
        PROCS,
        AGENTS,
        GENERATION,
        DAEMON,
        GRANTS,
        FILE_GRANTS,
        SEL_COMM,
        SEL_EXE,
        SEL_UID,
        SEL_CGROUP,
        WRITABLE,
        KILLED,
        PENDING,
        PENDING_OPS,
        NET_ALLOW,
        UNIX_ALLOW,
        SNI_ALLOW,
        VISIBLE,
        SOCKS,
        EVENTS,
        STATS,
    ];
}

/// Slots of the `DAEMON` array, written by the daemon, read by every program.
pub mod daemon_slot {
    /// The daemon's own tgid: signals, ptrace and pidfd calls aimed at it are `self.tamper`.
    pub const PID: u32 = 0;
    /// 1 when the BPF LSM layer is attached in full: the tracepoint layer then leaves to it
    /// what it refuses before the call runs (one event, not two).
    pub const LSM_ACTIVE: u32 = 1;
    /// The token of the daemon run whose per-agent TLS hooks are in force (0: hooks in every
    /// process, or none): until an agent process carries it, its TLS handshake waits.
    pub const TLS_TOKEN: u32 = 2;
    pub const COUNT: u32 = 3;
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
