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
    pub const KNOWN_MOUNTS: &str = "KNOWN_MOUNTS";
    pub const DAEMON_TIDS: &str = "DAEMON_TIDS";
    pub const HELD_RUNS: &str = "HELD_RUNS";
    pub const TLS_CONNS: &str = "TLS_CONNS";
    pub const HTTP_SCRATCH: &str = "HTTP_SCRATCH";
    pub const PATH_ALLOW: &str = "PATH_ALLOW";
    pub const UNIX_REFUSE: &str = "UNIX_REFUSE";
    pub const SEL_CMDLINE: &str = "SEL_CMDLINE";
    pub const LINKS_OUT: &str = "LINKS_OUT";
    pub const LINK_SCRATCH: &str = "LINK_SCRATCH";
    pub const HOST_DEST: &str = "HOST_DEST";
    pub const TLS_PENDING: &str = "TLS_PENDING";
    pub const TLS_WRITES: &str = "TLS_WRITES";
    pub const TLS_WRITE_SCRATCH: &str = "TLS_WRITE_SCRATCH";

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
        KNOWN_MOUNTS,
        DAEMON_TIDS,
        HELD_RUNS,
        TLS_CONNS,
        HTTP_SCRATCH,
        PATH_ALLOW,
        UNIX_REFUSE,
        SEL_CMDLINE,
        LINKS_OUT,
        LINK_SCRATCH,
        HOST_DEST,
        TLS_PENDING,
        TLS_WRITES,
        TLS_WRITE_SCRATCH,
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
        SEL_CMDLINE,
        LINKS_OUT,
        HOST_DEST,
        WRITABLE,
        KILLED,
        PENDING,
        PENDING_OPS,
        NET_ALLOW,
        UNIX_ALLOW,
        SNI_ALLOW,
        SOCKS,
        EVENTS,
        STATS,
        KNOWN_MOUNTS,
        DAEMON_TIDS,
        HELD_RUNS,
        TLS_CONNS,
        TLS_PENDING,
        TLS_WRITES,
        PATH_ALLOW,
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
    /// 1 when the cgroup `connect_unix` and `sendmsg_unix` programs are attached (6.7+): a Unix
    /// connect or datagram the tracepoint judged a violation is then refused by them before it
    /// happens (`UNIX_REFUSE`), not killed after.
    pub const UNIX_CGROUP: u32 = 3;
    /// How many `SEL_CMDLINE` entries are in use (0: an exec reads no command line).
    pub const CMDLINE_COUNT: u32 = 4;
    pub const COUNT: u32 = 5;
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
    /// `[agent.syscalls] allow = ["mount"]`.
    pub const ALLOW_MOUNT: u32 = 1 << 5;
    /// `[agent.syscalls] allow = ["namespaces"]`.
    pub const ALLOW_NAMESPACES: u32 = 1 << 6;
}

/// Bits of [`ProcState::flags`].
pub mod proc_flags {
    /// This process image did TLS through a hooked library (a handshake or write hook ran):
    /// its TLS plaintext is visible. Cleared at exec: visibility belongs to one image.
    pub const TLS_VISIBLE: u32 = 1 << 0;
    /// Started by `agent-monitor exec` (its cgroup was registered as such): the process and its
    /// descendants run under that command's Landlock ruleset, so a write the kernel refuses
    /// with `EACCES` outside `writable` is recorded as denied by Landlock.
    pub const LANDLOCKED: u32 = 1 << 1;
}

/// A `LINKS_OUT` value: the key's prefix length (bits: the lookup tells the link itself from a
/// path through it) and where the link leads (its absolute target; empty for a relative one).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LinkOut {
    pub bits: u32,
    pub len: u32,
    pub target: [u8; PATH_LEN + 4],
}

/// Longest TEXT of a `cmdline = ["*TEXT*"]` selector.
pub const CMDLINE_TEXT_LEN: usize = 48;
/// Bytes of a new image's command line the `cmdline` selectors are matched against.
pub const CMDLINE_READ: usize = 256;
/// Most `cmdline` selectors, over all agents.
pub const CMDLINE_MAX: u32 = 16;

/// A `SEL_CMDLINE` entry: TEXT of `*TEXT*`, for agent `agent`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineSel {
    pub agent: u32,
    pub len: u32,
    pub text: [u8; CMDLINE_TEXT_LEN],
}

impl Default for CmdlineSel {
    fn default() -> Self {
        CmdlineSel { agent: 0, len: 0, text: [0; CMDLINE_TEXT_LEN] }
    }
}

/// `SEL_CGROUP` values: the agent id, with this bit when `agent-monitor exec` registered the
/// cgroup (its processes are Landlocked: [`proc_flags::LANDLOCKED`]).
pub const SEL_CGROUP_EXEC: u32 = 1 << 31;

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
    /// [`proc_flags`].
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ProcState>() == 32);

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

/// Data of a `NET_ALLOW` LPM trie key: the agent, the protocol ([`proto`]), the destination
/// port (network byte order, `[0, 0]` = any port), then the IPv6 address (IPv4 as
/// `::ffff:a.b.c.d`). Prefix lengths count 32 + 8 + 16 + 8 bits for agent, protocol, port and
/// padding, then address bits: a protocol is part of a destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetData {
    pub agent: u32,
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: u8,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetData>() == 24);
/// Prefix bits of agent, protocol, port and padding in a `NET_ALLOW` key.
pub const NET_KEY_FIXED_BITS: u32 = 64;

/// [`NetData::proto`]: IP protocol numbers.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// The value of a `NET_ALLOW` entry: how the destination came to be allowed and what it takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestRule {
    /// [`net_origin`].
    pub origin: u8,
    /// [`dest_flags`].
    pub flags: u8,
    /// Which destination rule this is in the kernel's tables (unique, never 0 there; the
    /// generation in the top bit, as for `rule`; the daemon numbers them as it writes the
    /// tables): inside TLS, a write its `Host:` header allowed for this destination may leave
    /// only on a connection to it (`TLS_PENDING`).
    pub bind: u16,
    /// HTTP methods allowed on this destination (bits as [`crate::HTTP_METHODS`]); 0: the
    /// agent's `http_methods`.
    pub methods: u32,
    /// Methods among `methods` that are allowed only under the rule's path prefixes
    /// (`PATH_ALLOW` entries of rule `rule`).
    pub path_methods: u32,
    /// The rule's id (its `PATH_ALLOW` entries); 0: none.
    pub rule: u32,
}
const _: () = assert!(size_of::<DestRule>() == 16);

/// [`DestRule::flags`].
pub mod dest_flags {
    /// `opaque_tls = true`: TLS the daemon cannot read is accepted to this destination.
    pub const OPAQUE_TLS: u8 = 1 << 0;
}

/// Path prefix bytes in a `PATH_ALLOW` key.
pub const HTTP_PATH_LEN: usize = 124;
/// Request path bytes the kernel compares with the prefixes: a policy prefix is at most this.
pub const HTTP_PATH_SCAN: usize = 64;

/// Data of a `PATH_ALLOW` LPM trie key: a destination rule's id, then a path prefix (no
/// trailing `/` added: `/v1/messages` also matches `/v1/messages?beta=true`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathAllowData {
    pub rule: u32,
    pub path: [u8; HTTP_PATH_LEN],
}
const _: () = assert!(size_of::<PathAllowData>() == 128);

/// The HTTP parser's state for one connection (clear text: in [`SockInfo`]; inside TLS: per
/// `SSL *`). Read-only HTTP is a grammar: every request starts with an allowed method token and
/// a space, its header block ends with CRLF CRLF, and only a method the destination takes as a
/// write may carry a body (framed by `Content-Length`); nothing else may be written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpParse {
    /// [`http_mode`].
    pub mode: u8,
    /// Bytes of CRLF CRLF matched so far (in `IN_HEADERS`).
    pub crlf: u8,
    /// Position in the current header line (capped), to match header names.
    pub line: u8,
    /// [`http_match`]: which header names the current line may still be.
    pub matching: u8,
    /// The method (bit index) of the request being parsed.
    pub method: u8,
    pub _pad: [u8; 3],
    /// `BODY`: body bytes still to come; `H2`: payload bytes of the current frame.
    pub skip: u32,
    /// The `Content-Length` of the request being parsed.
    pub length: u32,
}
const _: () = assert!(size_of::<HttpParse>() == 16);

/// [`HttpParse::matching`].
pub mod http_match {
    pub const CONTENT_LENGTH: u8 = 1 << 0;
    pub const TRANSFER_ENCODING: u8 = 1 << 1;
    /// Reading the digits of `Content-Length`.
    pub const LENGTH_DIGITS: u8 = 1 << 2;
    /// A `Transfer-Encoding` header was seen in this request (a body of unknown framing).
    pub const HAS_TRANSFER_ENCODING: u8 = 1 << 3;
    /// A `Content-Length` header was seen in this request (a second one is refused).
    pub const HAS_LENGTH: u8 = 1 << 6;
    /// The line may be `Host:`.
    pub const HOST: u8 = 1 << 4;
    /// Reading the value of `Host:`.
    pub const HOST_VALUE: u8 = 1 << 5;
}

/// Bytes of a host name in a `HOST_DEST` key (a `Host:` header's name part, lower case).
pub const HOST_LEN: usize = 64;

/// A `HOST_DEST` key: the agent's slot, the port (0: a rule for any port) and a destination's
/// name as a request's `Host:` header writes it (a host name, `a.b.c.d`, or `[v6]`; lower case,
/// NUL-padded, without the port). Two destinations on one address and different ports are
/// two keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub agent: u32,
    pub port: u32,
    pub name: [u8; HOST_LEN],
}

/// A `HOST_DEST` value: the destination's rule and its port (0: any).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDest {
    pub dest: DestRule,
    pub port: u32,
    pub _pad: u32,
}

/// [`HttpParse::mode`].
pub mod http_mode {
    /// The next byte starts a request.
    pub const EXPECT_REQUEST: u8 = 0;
    /// Inside a request's header block.
    pub const IN_HEADERS: u8 = 1;
    /// HTTP/2 frames (inside TLS, after the connection preface).
    pub const H2: u8 = 2;
    /// Inside a request's body (`skip` bytes to come).
    pub const BODY: u8 = 3;
}

/// What the HTTP parser found wrong (`Event::aux` of a `net.http_write` with
/// `HTTP_UNPARSABLE`), or nothing.
pub mod http_verdict {
    pub const OK: u32 = 0;
    /// A method this destination does not take.
    pub const METHOD: u32 = 1;
    /// Bytes where a request must start are no method token followed by a space.
    pub const NOT_A_REQUEST: u32 = 2;
    /// A request start cut before its method could be read (split across writes or segments).
    pub const SPLIT: u32 = 3;
    /// A body on a request whose method does not write, or a body framed other than by
    /// `Content-Length`.
    pub const BODY: u32 = 4;
    /// A path outside the destination's `paths` (or one that climbs: `..`, `%2e`).
    pub const PATH: u32 = 5;
    /// HTTP/2: a request that is not a GET the destination takes, or a frame that writes.
    pub const H2: u32 = 6;
    /// The stream could not be read.
    pub const UNREADABLE: u32 = 7;
    /// More header bytes than the parser follows in one write.
    pub const TOO_LONG: u32 = 8;
    /// IP options or IPv6 extension headers on an agent's HTTP connection.
    pub const IP_OPTIONS: u32 = 9;
    /// Inside TLS: a write its `Host:` header allowed for one destination left on a connection
    /// to another (or one write named two destinations).
    pub const ELSEWHERE: u32 = 10;
    /// A line not ended by CR LF (a bare LF, or a CR without one), or a second
    /// `Content-Length`: where a lenient server ends a line or a body, this parser would not,
    /// and a request could hide in what it takes for header or body bytes.
    pub const FRAMING: u32 = 11;
    /// TCP urgent data (`MSG_OOB`): the receiver takes the urgent byte out of the stream the
    /// server reads, so the bytes the parser read are not the bytes the server reads.
    pub const URGENT: u32 = 12;
    /// A TLS write made inside another one of the same thread (a library callback writing on
    /// another connection): the parser follows one write per thread at a time.
    pub const NESTED: u32 = 13;
}

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

/// Key of the `SNI_ALLOW` hash map: agent, port (network byte order; `[0, 0]`: any), one
/// resolved address of an allowed host name, and the name, NUL padded. A TLS server name is the
/// name of the connection only at one of its addresses (value: the entry's `DestRule::bind`).
pub const SNI_LEN: usize = 128;
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SniKey {
    pub agent: u32,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
    pub name: [u8; SNI_LEN],
}

/// `NET_ALLOW` values: how a destination came to be allowed.
pub mod net_origin {
    /// A literal address or network in the policy.
    pub const STATIC: u8 = 1;
    /// Only a resolved host name: a TLS server name must match an allowed name.
    pub const HOST: u8 = 2;
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
    /// 1 once the connection is known to carry TLS (its payload is not parsed as HTTP).
    pub tls: u8,
    /// 1 once `next_seq` is set.
    pub seq_known: u8,
    /// 1 once the socket was released while blocked: its owner is gone but TCP may still
    /// send the refused bytes again from the orphaned socket, so the entry stays (dropping
    /// them) until the daemon sweeps it ([`SOCK_RELEASED_KEEP_SECS`] later).
    pub released: u8,
    /// The TCP sequence number (as on the wire) of the held request's first segment; once
    /// `released`, the boot time in seconds of the release.
    pub held_seq: u32,
    /// The sequence number (host order) up to which the payload has been parsed: a
    /// retransmission is not parsed twice.
    pub next_seq: u32,
    /// The `DestRule::bind` of the allowed host name the TLS server name gave the connection at
    /// its address (`SNI_ALLOW`); 0: none.
    pub sni_bind: u32,
    pub _pad: u32,
    /// The destination's rule, as the connect matched it.
    pub dest: DestRule,
    /// The HTTP parser's state.
    pub http: HttpParse,
}
const _: () = assert!(size_of::<SockInfo>() == 96);

/// A `TLS_PENDING` value, per agent instance: the `DestRule::bind` of up to [`PENDING_WRITES`]
/// destinations that TLS writes were allowed for by their `Host:` header and that have not yet
/// sent a byte, with when (boot ns). Until they have, a TLS packet of the instance to any other
/// destination is refused: the write's ciphertext may be in it.
pub const PENDING_WRITES: usize = 4;
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPending {
    pub bind: [u32; PENDING_WRITES],
    pub at: [u64; PENDING_WRITES],
}

/// How long a pending TLS write binds its instance's other connections (ns): its bytes leave
/// within the call that wrote them, or soon after on the same thread.
pub const PENDING_WRITE_NS: u64 = 5_000_000_000;

/// How long a released blocked socket's entry is kept: longer than TCP retransmits an
/// unacknowledged segment (`tcp_retries2` = 15, about 924 s).
pub const SOCK_RELEASED_KEEP_SECS: u32 = 1800;

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
