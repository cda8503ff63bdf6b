//! Every map of the kernel side, in one place. Each static's name is its map name, and
//! `agent_monitor_common::maps::names` lists them all for userspace (a daemon unit test reads
//! the built object and holds the two lists equal).
use agent_monitor_common::{
    daemon_slot, AgentCfg, DestRule, Event, ExeKey, FileGrantKey, GrantKey, HttpParse, NetData, PathAllowData,
    PathData, ProcState, SniKey, SockInfo, UnixKey, COMM_LEN, MAX_PATH_DEPTH, PATH_LEN, SCRATCH_LEN,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// `BPF_F_NO_PREALLOC`: elements are allocated as they are inserted (6.1+ lets tracing programs
/// use such maps). The tables that hold security state are sized so that they cannot fill in
/// practice (the daemon raises `PROCS` to `pid_max` at load), cost memory only for what they
/// hold, and never evict: a failed insert is refused or killed and counted (`stat::TABLE_FULL`,
/// `stat::PROCS_FULL`), never let through.
pub const NO_PREALLOC: u32 = 1;

/// Agent processes, keyed by tgid. Written by the fork/exec hooks and by the daemon when it
/// adopts processes that were running before it started. An entry lives until the last thread
/// of the process exits (not its leader: see `sched_process_exit`).
#[map]
pub static PROCS: HashMap<u32, ProcState> = HashMap::with_max_entries(32768, NO_PREALLOC);

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
/// is killed on sight. The daemon removes an entry once the instance has no process left.
#[map]
pub static KILLED: HashMap<u64, u32> = HashMap::with_max_entries(65536, NO_PREALLOC);

/// Opens of agent threads between sys_enter and sys_exit, keyed by pid_tgid (value: open flags
/// with `PENDING_LIVE`, or `PENDING_UNREAD` and the `open_how` pointer). Removed when the thread
/// exits.
#[map]
pub static PENDING: HashMap<u64, PendingOpen> = HashMap::with_max_entries(1 << 20, NO_PREALLOC);

/// An open between sys_enter and sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    /// Open flags, with `PENDING_LIVE` while the open is in flight.
    pub flags: u64,
    /// `openat2`'s `open_how` pointer when it could not be read at sys_enter (read again at
    /// sys_exit), else 0.
    pub how: u64,
    /// The path argument and its directory fd: read again at sys_exit only when the open of a
    /// Landlocked process was refused, for the record.
    pub dfd: i64,
    pub path: u64,
}

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
    /// A path that could not be read at sys_enter: its (dirfd, user pointer), read again at
    /// sys_exit (the kernel has faulted the page in by then); 0 when read.
    pub unread1: [u64; 2],
    pub unread2: [u64; 2],
}

#[map]
pub static PENDING_OPS: HashMap<u64, PendingOp> = HashMap::with_max_entries(1 << 20, NO_PREALLOC);

/// Allowed destinations per agent (see `agent_monitor_common::NetData`).
#[map]
pub static NET_ALLOW: LpmTrie<NetData, DestRule> = LpmTrie::with_max_entries(16384, 0);

/// Allowed Unix socket paths per agent.
#[map]
pub static UNIX_ALLOW: HashMap<UnixKey, u32> = HashMap::with_max_entries(4096, 0);

/// Allowed TLS server names per agent (from the host names in `allow`).
#[map]
pub static SNI_ALLOW: HashMap<SniKey, u32> = HashMap::with_max_entries(4096, 0);

/// Per-CPU scratch for the TLS server name of the packet being inspected.
#[map]
pub static SNI_SCRATCH: PerCpuArray<SniKey> = PerCpuArray::with_max_entries(1, 0);

/// Agents' allowed outbound TCP sockets by socket cookie, for the packet-level HTTP check.
/// Removed when the socket is released (`sock_release`); a connect whose socket cannot be
/// recorded is refused.
#[map]
pub static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(1 << 20, NO_PREALLOC);

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

/// Is a Unix connect or datagram refused by the cgroup `connect_unix`/`sendmsg_unix` programs?
#[inline(always)]
pub fn unix_cgroup_active() -> bool {
    DAEMON.get(daemon_slot::UNIX_CGROUP).copied().unwrap_or(0) == 1
}

/// Threads (pid_tgid) whose Unix connect or datagram in flight the tracepoint judged a
/// violation: the cgroup `connect_unix`/`sendmsg_unix` program refuses it. Set or cleared at
/// every such `sys_enter` of an agent, so an entry left by a call that failed before the hook
/// never refuses the next one.
#[map]
pub static UNIX_REFUSE: HashMap<u64, u32> = HashMap::with_max_entries(65536, NO_PREALLOC);

/// Symlinks an agent made inside `writable` that lead out of it (keyed like `WRITABLE`, by the
/// agent's id in both generations: the value is the key's prefix length, so that a lookup can
/// tell the link itself from a path through it). On the tracepoint layer a path operation is
/// judged on its string: through such a link, or following it (chmod, truncate, xattrs, times),
/// it acts outside `writable`.
#[map]
pub static LINKS_OUT: LpmTrie<PathData, agent_monitor_common::LinkOut> = LpmTrie::with_max_entries(4096, 1);

/// Per-CPU room to build a `LINKS_OUT` value (260 bytes: too big for the stack).
#[map]
pub static LINK_SCRATCH: PerCpuArray<agent_monitor_common::LinkOut> = PerCpuArray::with_max_entries(1, 0);

/// `cmdline = ["*TEXT*"]` selectors (`DAEMON[CMDLINE_COUNT]` of them in use).
#[map]
pub static SEL_CMDLINE: Array<agent_monitor_common::CmdlineSel> =
    Array::with_max_entries(agent_monitor_common::CMDLINE_MAX, 0);

/// How many `cmdline` selectors are in use.
#[inline(always)]
pub fn cmdline_count() -> u32 {
    DAEMON.get(daemon_slot::CMDLINE_COUNT).copied().unwrap_or(0).min(agent_monitor_common::CMDLINE_MAX)
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

/// Mount ids (`struct mount::mnt_id`) of the host's mount namespace, as the daemon read them
/// from its own mountinfo (at start, and mounts of whole filesystems since). A path that
/// crosses any other mount (a bind mount an agent made, a private mount namespace) is not
/// judged by its name: it is outside `writable` (`event_flags::FOREIGN_MOUNT`).
#[map]
pub static KNOWN_MOUNTS: HashMap<u32, u32> = HashMap::with_max_entries(65536, NO_PREALLOC);

/// The daemon's thread ids: a signal, ptrace or memory write aimed at any of them is aimed at
/// the daemon.
#[map]
pub static DAEMON_TIDS: HashMap<u32, u32> = HashMap::with_max_entries(4096, NO_PREALLOC);

/// Agent instances with a held TLS write (the writer stopped before `SSL_write` ran): until a
/// person decides, no packet of the instance's agent sockets leaves, whoever continues the
/// writer.
#[map]
pub static HELD_RUNS: HashMap<u64, u32> = HashMap::with_max_entries(4096, NO_PREALLOC);

/// The HTTP parser's state per TLS connection of an agent, keyed by (tgid, `SSL *`). An LRU:
/// an evicted connection's next write is judged as the start of a request, which is stricter.
#[map]
pub static TLS_CONNS: LruHashMap<TlsConnKey, HttpParse> = LruHashMap::with_max_entries(65536, 0);

/// Per agent instance (`run_id`): the destinations TLS writes were allowed for by their `Host:`
/// header whose bytes have not left yet (see `TlsPending`).
#[map]
pub static TLS_PENDING: LruHashMap<u64, agent_monitor_common::TlsPending> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TlsConnKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// A TLS write between its entry and its return, per thread (`pid_tgid`): the connection, the
/// buffer, its length, `SSL_write_ex`'s `written` pointer, and the parser state before it
/// (see `tls_write_ret`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsWrite {
    pub key: TlsConnKey,
    pub buf: u64,
    pub len: u64,
    pub written: u64,
    /// The connection's parser state before the call, and after it if all of it is sent.
    pub before: HttpParse,
    pub after: HttpParse,
}

#[map]
pub static TLS_WRITES: LruHashMap<u64, TlsWrite> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU working memory of a TLS write's entry (`tls_write`): its `TlsWrite` is built here,
/// not on the stack. Linux before 6.8 rounds every frame up to 32 bytes and caps a program's
/// deepest call chain at 512 (the entry, the parser's loop step, its path step): with the
/// write on the stack, the TLS write programs came to 544 and 6.1 refused them. (Like
/// `HTTP_SCRATCH`'s TLS slot, it is used within one run of a uprobe program, which another
/// kprobe-type program on the CPU does not interrupt.)
#[map]
pub static TLS_WRITE_SCRATCH: PerCpuArray<TlsWrite> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory of the HTTP parser (`http.rs`): slot 0 for the packet path, slot 1
/// for the TLS path.
#[map]
pub static HTTP_SCRATCH: PerCpuArray<HttpScratch> = PerCpuArray::with_max_entries(2, 0);

/// Bytes of the stream the HTTP parser reads into its window at a time.
pub const HTTP_WIN: usize = 2048;

#[repr(C)]
pub struct HttpScratch {
    /// The window (with slack past `HTTP_WIN` so that a masked index never leaves it).
    pub buf: [u8; HTTP_WIN + 64],
    pub state: HttpParse,
    /// The stream: where it is (a payload offset, or a user pointer with `user`), its length,
    /// the window's offset in it.
    pub base: u64,
    pub user: u32,
    pub len: u32,
    pub p: u32,
    /// Where the current request's header block started (in the stream).
    pub header_start: u32,
    /// Bytes in the window, the position of the next step, whether this is the end of what was
    /// written.
    pub n: u32,
    pub i: u32,
    pub last: u32,
    /// What the steps found (`http_verdict`), where, and the method concerned.
    pub verdict: u32,
    pub at: u32,
    pub method: u32,
    /// What the destination takes (see `http::Takes`).
    pub takes_methods: u32,
    pub takes_writes: u32,
    pub takes_paths: u32,
    pub rule: u32,
    pub h2: u32,
    /// `record_only`, and the first violation recorded.
    pub record_only: u32,
    pub first: u32,
    pub first_at: u32,
    pub first_method: u32,
    /// A `PATH_ALLOW` lookup key: prefix length, then the data (adjacent, as the trie reads it).
    pub path_prefix: u32,
    pub path: PathAllowData,
    /// Inside TLS (`by_host`): a request whose method the agent's `http_methods` do not take
    /// waits (`pending`, from `pending_at`) for its `Host:` header, which names the destination
    /// whose rule judges it; its path bytes (`path_len`) are kept for that rule's paths.
    pub by_host: u32,
    pub pending: u32,
    pub pending_at: u32,
    pub path_len: u32,
    /// The `Host:` value read so far: a `HOST_DEST` key (the agent's slot, the name), its
    /// length (`HOST_LEN + 1`: too long), and the port after a ':' (0: none written).
    pub host: agent_monitor_common::HostKey,
    pub host_len: u32,
    pub host_port: u32,
    pub host_in_port: u32,
    /// The method bits the destination takes once found, for the body.
    pub dest_writes: u32,
    /// The `DestRule::bind` of the destination a `Host:` header allowed a request for in this
    /// call (0: none): one call, one destination.
    pub host_bind: u32,
    /// The request target being scanned (`http::keep_path`): where, the window's end, the
    /// byte before, and whether its path climbs or could not be seen whole.
    pub path_at: u32,
    pub path_n: u32,
    pub path_prev: u32,
    pub path_bad: u32,
}

/// Inside TLS the destination of a request is the one its `Host:` header names: its rule, per
/// agent (slot, in both generations) and name. A request the agent's `http_methods` do not
/// take is judged by it (methods, paths), or refused where no destination of the agent has that
/// name.
#[map]
pub static HOST_DEST: HashMap<agent_monitor_common::HostKey, agent_monitor_common::HostDest> =
    HashMap::with_max_entries(4096, 0);

/// Allowed request path prefixes per destination rule (`DestRule::rule`).
#[map]
pub static PATH_ALLOW: LpmTrie<PathAllowData, u32> = LpmTrie::with_max_entries(4096, 1);

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
    /// The walk's position: the dentry, its `struct mount`, that mount's root dentry, and what
    /// the walk found (`kernel::walk`).
    pub wd: u64,
    pub wm: u64,
    pub wr: u64,
    pub wflags: u32,
    /// Length of the path being normalised.
    pub nlen: u32,
    /// `resolve_user_path`: where the base ends, the string's bytes to skip, `Built`'s bits.
    pub rp_len: u32,
    pub rp_skip: u32,
    pub rp_bits: u32,
    /// `cmdline` matching: the selector being tried (its TEXT), the command line's length in
    /// `tmp`, and whether TEXT was found.
    pub cmd_text: [u8; agent_monitor_common::CMDLINE_TEXT_LEN],
    pub cmd_tlen: u32,
    pub cmd_len: u32,
    pub cmd_hit: u32,
    /// The agent of the selector found.
    pub cmd_agent: u32,
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
