//! Every map of the kernel side, in one place. Each static's name is its map name, and
//! `agent_monitor_common::maps::names` lists them all for userspace (a daemon unit test reads
//! the built object and holds the two lists equal).
use agent_monitor_common::{
    daemon_slot, AgentCfg, Event, ExeKey, FileGrantKey, GrantKey, NetData, PathData, ProcState, SniKey, SockInfo,
    UnixKey, COMM_LEN, MAX_PATH_DEPTH, PATH_LEN, SCRATCH_LEN,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Agent processes, keyed by tgid. Written by the fork/exec hooks and by the daemon when it
/// adopts processes that were running before it started.
#[map]
pub static PROCS: HashMap<u32, ProcState> = HashMap::with_max_entries(32768, 0);

/// Per-agent configuration, indexed by `agent_slot(id, generation)` (id 0 unused).
#[map]
pub static AGENTS: Array<AgentCfg> = Array::with_max_entries(2 * agent_monitor_common::AGENT_SLOTS_PER_GEN, 0);

/// The active policy generation (index 0: 0 or 1), flipped by the daemon after it has written
/// the other generation's rules in full (see `agent_monitor_common::agent_slot`).
#[map]
pub static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Selectors: which new processes become agent instances (value: agent id).
#[map]
pub static SEL_COMM: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(1024, 0);
#[map]
pub static SEL_EXE: HashMap<ExeKey, u32> = HashMap::with_max_entries(1024, 0);
#[map]
pub static SEL_UID: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
#[map]
pub static SEL_CGROUP: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// Writable path prefixes per agent (see `agent_monitor_common::PathData`).
#[map]
pub static WRITABLE: LpmTrie<PathData, u32> = LpmTrie::with_max_entries(8192, 0);

/// Agent instances (run ids) that have been killed: any of their processes that shows up again
/// is killed on sight, until userspace has swept the whole tree.
#[map]
pub static KILLED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Write-intent opens between sys_enter and sys_exit, keyed by pid_tgid (value: open flags).
#[map]
pub static PENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

/// A path operation decided at sys_enter (while its paths still name what they name), acted on
/// at sys_exit only if the syscall succeeded: a failed `mkdir -p` probe or an `unlink` of a
/// missing file changed nothing and is no violation.
#[repr(C)]
pub struct PendingOp {
    pub kind: u32,
    /// 1 if every path was writable.
    pub ok: u32,
    pub flags: u32,
    pub len1: u32,
    pub len2: u32,
    pub _pad: u32,
    pub aux: u64,
    pub p1: [u8; PATH_LEN + 4],
    pub p2: [u8; PATH_LEN + 4],
}

#[map]
pub static PENDING_OPS: LruHashMap<u64, PendingOp> = LruHashMap::with_max_entries(4096, 0);

/// Allowed destinations per agent (see `agent_monitor_common::NetData`).
#[map]
pub static NET_ALLOW: LpmTrie<NetData, u32> = LpmTrie::with_max_entries(16384, 0);

/// Allowed Unix socket paths per agent.
#[map]
pub static UNIX_ALLOW: HashMap<UnixKey, u32> = HashMap::with_max_entries(4096, 0);

/// Allowed TLS server names per agent (from the host names in `allow`).
#[map]
pub static SNI_ALLOW: HashMap<SniKey, u32> = HashMap::with_max_entries(4096, 0);

/// Agent processes seen entering a hooked TLS library (handshake or write): their TLS
/// plaintext is visible. Keyed by tgid.
#[map]
pub static VISIBLE: LruHashMap<u32, u32> = LruHashMap::with_max_entries(32768, 0);

/// Per-CPU scratch for the TLS server name of the packet being inspected.
#[map]
pub static SNI_SCRATCH: PerCpuArray<SniKey> = PerCpuArray::with_max_entries(1, 0);

/// Agents' allowed outbound TCP sockets by socket cookie, for the packet-level HTTP check.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU scratch of the network programs (separate from `SCRATCH`: a cgroup_skb program
/// may run in softirq context on top of a tracing program on the same CPU). Bytes 0..16: an
/// address; 16..: the start of an HTTP request.
#[map]
pub static EVENTS_SCRATCH: PerCpuArray<[u8; 16 + PATH_LEN + 16]> = PerCpuArray::with_max_entries(1, 0);

/// Written by the daemon, indexed by `agent_monitor_common::daemon_slot`: the daemon's tgid
/// (self-protection), whether the BPF LSM layer is attached, and the token of the daemon run whose
/// per-agent TLS hooks are in force (see [`tls_hooks_pending`]).
#[map]
pub static DAEMON: Array<u32> = Array::with_max_entries(daemon_slot::COUNT, 0);

/// Has the daemon not yet hooked this agent process's TLS library calls (`tls_uprobes =
/// "agents"`: it does so within milliseconds of the exec)? Its TLS handshake waits meanwhile.
#[inline(always)]
pub fn tls_hooks_pending(tgid: u32) -> bool {
    let token = DAEMON.get(daemon_slot::TLS_TOKEN).copied().unwrap_or(0);
    token != 0 && unsafe { PROCS.get(&tgid) }.is_some_and(|st| st.tls_token != token)
}

/// Is the BPF LSM layer deciding?
#[inline(always)]
pub fn lsm_active() -> bool {
    DAEMON.get(daemon_slot::LSM_ACTIVE).copied().unwrap_or(0) == 1
}

/// Per-CPU: the tgid whose clear-text request the HTTP check has just held (0: none). The
/// `skb:kfree_skb` tracepoint that fires for the dropped packet, on the same CPU and usually
/// still in the writer's `send`, stops the writer there (SIGSTOP) before the call returns.
#[map]
pub static HOLD_STOP: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Approved held file operations (see `agent_monitor_common::FileGrantKey`), written by the
/// daemon, checked by the BPF LSM layer.
#[map]
pub static FILE_GRANTS: HashMap<FileGrantKey, u64> = HashMap::with_max_entries(1024, 0);

/// Approved held connects (see `agent_monitor_common::GrantKey`), written by the daemon.
#[map]
pub static GRANTS: HashMap<GrantKey, u64> = HashMap::with_max_entries(4096, 0);

/// The event stream to userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Kernel-side counters (`agent_monitor_common::stat`), summed over CPUs by the daemon.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(agent_monitor_common::stat::COUNT, 0);

/// Per-CPU working memory for paths: too large for the 512-byte BPF stack. Programs of one
/// kind do not nest on a CPU (tracepoints run with preemption disabled and a syscall
/// tracepoint cannot fire inside another), so one slot per CPU is enough.
#[repr(C)]
pub struct Scratch {
    /// The path being built; the result is at `buf[0..len]`.
    pub buf: [u8; SCRATCH_LEN],
    /// The user's string, read from user memory.
    pub tmp: [u8; SCRATCH_LEN],
    /// Component names and lengths collected while walking up the dentry tree.
    pub names: [u64; MAX_PATH_DEPTH],
    pub lens: [u32; MAX_PATH_DEPTH],
    /// Positions of component starts during `..` normalisation.
    pub stack: [u32; 64],
    /// Normalisation state; kept in memory (volatile) so that the verifier sees unknown
    /// bounded scalars and prunes the loop's states instead of exploring every path.
    pub w: u32,
    pub depth: u32,
    pub skip: u32,
    /// Dentry walk state (components found, bytes written), kept in memory for the same reason.
    pub n: u32,
    pub off: u32,
    /// Length of the path being normalised.
    pub nlen: u32,
    /// LPM trie lookup key: prefix length then [`PathData`].
    pub key_prefix: u32,
    pub key: PathData,
    pub exe: ExeKey,
    /// A path operation being prepared for `PENDING_OPS`.
    pub op: PendingOp,
    /// A `FILE_GRANTS` lookup key.
    pub fgrant: FileGrantKey,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Keep the event type referenced so that its layout guard is compiled in.
#[allow(dead_code)]
pub type EventT = Event;
