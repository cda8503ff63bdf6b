//! The network boundary.
//!
//! - cgroup `connect4/6` and `sendmsg4/6` (attached to the cgroup v2 root, so every process is
//!   covered, io_uring's connect included): a destination not in the agent's `allow`, for that
//!   protocol (a TCP grant allows no datagram), is refused with EPERM before any packet leaves.
//!   Allowed TCP connections are remembered by socket cookie for the HTTP check, until the
//!   socket is released (`sock_release`).
//! - cgroup `sock_create`: inet sockets other than TCP and UDP (raw, ping, SCTP, ...) refused.
//! - cgroup_skb egress: on an agent's allowed connection, every byte of clear text goes through
//!   the HTTP parser (`http.rs`): a request whose method the destination does not take, or bytes
//!   that are no request, are dropped in the kernel, and so is every later packet of that socket.
//!   The first TLS flight is checked for who can see inside it (a hooked TLS library in this
//!   process image, else the destination must accept opaque TLS) and for its server name.
//! - uprobes on `SSL_write`, `SSL_write_ex` and `gnutls_record_send`: the same parser on the
//!   plaintext before it is encrypted, per TLS connection, killing the agent before the call
//!   runs.
//! - `connect`, `sendto`, `sendmsg` tracepoints: `ipc.connect` to a Unix socket not in `allow`
//!   (a stream connect, or a datagram to a named socket).
use agent_monitor_common::{
    action, agent_flags, dest_flags, event_flags, http_mode, http_verdict, kind, layer, net_origin, policy_action,
    proc_flags, proto, sock_state, stat, verdict, AgentCfg, DestRule, GrantKey, HttpParse, NetData, ProcState, SniKey,
    SockInfo, UnixKey, NET_KEY_FIXED_BITS, PENDING_WRITES, PENDING_WRITE_NS, SNI_LEN, UNIX_PATH_LEN,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_user,
        generated::{
            bpf_get_socket_cookie, bpf_probe_read_kernel as raw_read_kernel, bpf_probe_read_user as raw_read_user,
            bpf_probe_read_user_str, bpf_skb_load_bytes,
        },
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::lpm_trie::Key,
    programs::{
        ProbeContext, RawTracePointContext, RetProbeContext, SkBuffContext, SockAddrContext, SockContext,
        TracePointContext,
    },
    EbpfContext,
};
use core::ffi::c_void;

use crate::{
    agent::{self, count, current_agent, emit, emit_as, reap_if_killed, PathRef, Rec, Who},
    http::{self, Src, Takes, READ_ONLY, SLOT_SKB, SLOT_TLS},
    kernel,
    maps::{
        PendingOp, TlsConnKey, TlsWrite, EVENTS_SCRATCH, GRANTS, HELD_RUNS, HOLD_STOP, KILLED, NET_ALLOW, PENDING_OPS,
        PROCS, SNI_ALLOW, SNI_SCRATCH, SOCKS, TLS_CONNS, TLS_PENDING, TLS_WRITES, TLS_WRITE_SCRATCH, UNIX_ALLOW,
        UNIX_REFUSE,
    },
};

const PASS: i32 = 1;
const SIGSTOP: u32 = 19;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_UNIX: u16 = 1;

#[inline(always)]
pub fn who_current() -> Who {
    let pid_tgid = bpf_get_current_pid_tgid();
    Who {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: 0, // filled in by the daemon from /proc
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// The protocol of a socket type, as a destination is granted for it.
#[inline(always)]
pub fn proto_of(ty: u32) -> u8 {
    if ty == SOCK_STREAM {
        proto::TCP
    } else {
        proto::UDP
    }
}

/// Is (protocol, addr, port) in the agent's `allow`? The exact port first, then "any port".
/// Returns the destination's rule.
#[inline(always)]
fn net_allowed(slot: u32, proto: u8, port: [u8; 2], addr: [u8; 16]) -> Option<DestRule> {
    let bits = NET_KEY_FIXED_BITS + 128;
    let exact = Key::new(bits, NetData { agent: slot, proto, port, _pad: 0, addr });
    if let Some(v) = NET_ALLOW.get(&exact) {
        return Some(*v);
    }
    let any = Key::new(bits, NetData { agent: slot, proto, port: [0, 0], _pad: 0, addr });
    NET_ALLOW.get(&any).copied()
}

/// Is (protocol, addr, port) allowed to the agent in table slot `slot`, or granted to this
/// instance by an approved hold (not expired)? `consume` uses up a one-time grant: only the last
/// layer to decide a connect does (the cgroup hook; the LSM hook runs before it).
#[inline(always)]
pub fn allowed_or_granted(
    st: &ProcState,
    slot: u32,
    proto: u8,
    port: [u8; 2],
    addr: [u8; 16],
    consume: bool,
) -> Option<DestRule> {
    if let Some(r) = net_allowed(slot, proto, port, addr) {
        return Some(r);
    }
    let key = GrantKey { run_id: st.run_id, addr, port, _pad: [0; 6] };
    if let Some(v) = unsafe { GRANTS.get(&key) }.copied() {
        // Expiry in ns since boot; the top bit marks a grant for one connect only.
        if v & !(1u64 << 63) > unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() } {
            if consume && v >> 63 == 1 {
                let _ = GRANTS.remove(&key);
            }
            return Some(DestRule { origin: net_origin::STATIC, ..DestRule::default() });
        }
    }
    None
}

/// What a cgroup-layer violation gets: the return code and the action recorded. `kill`
/// refuses too; the signal comes from userspace (cgroup programs cannot send one), and the
/// instance is marked so that the kernel kills any member it sees next.
#[inline(always)]
fn refuse_or_alert(st: &ProcState, cfg: &AgentCfg) -> (i32, u32, u32) {
    match cfg.action {
        policy_action::KILL => {
            let one: u32 = 1;
            let _ = KILLED.insert(&st.run_id, &one, 0);
            (REFUSE, action::KILLED, event_flags::KILL_FROM_USERSPACE)
        }
        policy_action::DENY => (REFUSE, action::DENIED, 0),
        // A refused request waits for a person; approval grants exactly it (see GRANTS).
        policy_action::HOLD => (REFUSE, action::HELD, 0),
        _ => (PASS, action::ALERTED, 0),
    }
}

/// Write a network event: the address goes in `path` (16 bytes), the port in `aux`.
#[inline(always)]
pub fn emit_net(st: &ProcState, who: &Who, mut r: Rec, addr: &[u8; 16], port: [u8; 2], ty: u32, req: PathRef) {
    let Some(s) = EVENTS_SCRATCH.get_ptr_mut(0) else { return };
    unsafe {
        core::ptr::copy_nonoverlapping(addr.as_ptr(), s as *mut u8, 16);
    }
    r.flags |= event_flags::NET_ADDR;
    r.aux = u16::from_be_bytes(port) as u64;
    if r.aux2 == 0 {
        r.aux2 = ty as u64;
    }
    emit_as(st, who, &r, PathRef(s as *const u8, 16), req);
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, v6: bool, sendmsg: bool) -> i32 {
    let Some((st, cfg)) = current_agent() else {
        return PASS;
    };
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let mut addr = [0u8; 16];
    let (port, ty) = unsafe {
        if v6 {
            for i in 0..4 {
                addr[i * 4..i * 4 + 4].copy_from_slice(&(*sa).user_ip6[i].to_ne_bytes());
            }
        } else {
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
        }
        // user_port holds the __be16 port in its low 16 bits, as stored in memory.
        (((*sa).user_port as u16).to_ne_bytes(), (*sa).type_)
    };
    let kind = if sendmsg || ty != SOCK_STREAM { kind::NET_SEND } else { kind::NET_CONNECT };
    if unsafe { KILLED.get(&st.run_id) }.is_some() {
        return REFUSE;
    }
    let rule = allowed_or_granted(&st, cfg.slot, proto_of(ty), port, addr, true);
    let r =
        Rec { kind, verdict: verdict::ALLOWED, action: action::NONE, layer: layer::CGROUP, flags: 0, aux: 0, aux2: 0 };
    if let Some(rule) = rule {
        if kind == kind::NET_CONNECT {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let info = SockInfo {
                agent: st.agent,
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                run_id: st.run_id,
                start_ns: st.start_ns,
                port,
                addr,
                via_host: (rule.origin == net_origin::HOST) as u8,
                dest: rule,
                ..SockInfo::default()
            };
            if SOCKS.insert(&cookie, &info, 0).is_err() {
                // A connection the HTTP check could not follow is not made.
                count(agent_monitor_common::stat::TABLE_FULL);
                return REFUSE;
            }
        }
        if cfg.flags & agent_flags::AUDIT != 0 {
            emit_net(&st, &who_current(), r, &addr, port, ty, PathRef::NONE);
        }
        return PASS;
    }
    let (ret, act, flags) = refuse_or_alert(&st, &cfg);
    let r = Rec { verdict: verdict::VIOLATION, action: act, flags, ..r };
    emit_net(&st, &who_current(), r, &addr, port, ty, PathRef::NONE);
    ret
}

#[cgroup_sock_addr(connect4)]
#[inline(always)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, false)
}

#[cgroup_sock_addr(connect6)]
#[inline(always)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, false)
}

#[cgroup_sock_addr(sendmsg4)]
#[inline(always)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, true)
}

#[cgroup_sock_addr(sendmsg6)]
#[inline(always)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, true)
}

/// Inet sockets other than TCP and UDP bypass the connect/sendmsg hooks (raw sockets, ping
/// sockets, SCTP, UDP-Lite, ...): refused to agents unless the policy allows `raw_socket`.
/// (`AF_PACKET` never reaches this hook: the `socket` tracepoint covers it.)
#[cgroup_sock(sock_create)]
#[inline(always)]
pub fn sock_create(ctx: SockContext) -> i32 {
    const IPPROTO_TCP: u32 = 6;
    const IPPROTO_UDP: u32 = 17;
    let (ty, proto) = unsafe { ((*ctx.sock).type_, (*ctx.sock).protocol) };
    let plain = (ty == SOCK_STREAM && (proto == 0 || proto == IPPROTO_TCP))
        || (ty == SOCK_DGRAM && (proto == 0 || proto == IPPROTO_UDP));
    if plain {
        return PASS;
    }
    let Some((st, cfg)) = current_agent() else {
        return PASS;
    };
    if cfg.flags & agent_flags::ALLOW_RAW_SOCKET != 0 {
        return PASS;
    }
    let family = unsafe { (*ctx.sock).family };
    let (ret, act, flags) = refuse_or_alert(&st, &cfg);
    let r = Rec {
        kind: kind::NET_RAW_SOCKET,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::CGROUP,
        flags,
        aux: family as u64,
        aux2: ((proto as u64) << 32) | ty as u64,
    };
    emit_as(&st, &who_current(), &r, PathRef::NONE, PathRef::NONE);
    ret
}

/// A socket is released: it no longer needs following (its `SOCKS` entry goes). Unless it was
/// blocked or held: TCP still owns the refused bytes and sends them again from the orphaned
/// socket (a held request denied by killing its writer), so the entry stays, dropping them,
/// until the daemon sweeps it.
#[cgroup_sock(sock_release)]
#[inline(always)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut c_void) };
    if let Some(info) = SOCKS.get_ptr_mut(&cookie) {
        let info = unsafe { &mut *info };
        let held_run = unsafe { HELD_RUNS.get(&info.run_id) }.is_some();
        if info.blocked == sock_state::BLOCKED || info.blocked == sock_state::HELD || held_run {
            info.blocked = sock_state::BLOCKED;
            info.released = 1;
            info.held_seq = (unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32;
            return PASS;
        }
    }
    let _ = SOCKS.remove(&cookie);
    PASS
}

/// Load up to 192 bytes of the packet at `off` into the event scratch; returns how many.
#[inline(always)]
fn load_request(ctx: &SkBuffContext, off: u32) -> u32 {
    let Some(s) = EVENTS_SCRATCH.get_ptr_mut(0) else { return 0 };
    // opaque: keep the arithmetic after the null check (older verifiers refuse it on
    // map_value_or_null, and LLVM would hoist it).
    let dst = unsafe { kernel::opaque(s as *mut u8).add(16) } as *mut c_void;
    let skb = ctx.skb.skb as *mut c_void;
    for n in [192u32, 96, 32, 8, 1] {
        if unsafe { bpf_skb_load_bytes(skb, off, dst, n) } == 0 {
            return n;
        }
    }
    0
}

#[inline(always)]
fn request_ref(n: u32) -> PathRef {
    match EVENTS_SCRATCH.get_ptr(0) {
        Some(s) => PathRef(unsafe { kernel::opaque(s as *const u8).add(16) }, n),
        None => PathRef::NONE,
    }
}

/// What a destination takes, from its rule and the agent's `http_methods`. `record_only`: a
/// violation is recorded and the parser goes on (`alert`, `hold`).
#[inline(always)]
fn takes(cfg: &AgentCfg, rule: &DestRule, h2: bool) -> Takes {
    let methods = if rule.methods != 0 { rule.methods } else { cfg.http_allow };
    let record_only = cfg.action == policy_action::ALERT || cfg.action == policy_action::HOLD;
    Takes {
        methods,
        writes: methods & !READ_ONLY,
        path_methods: rule.path_methods,
        rule: rule.rule,
        h2,
        record_only,
        // Inside TLS (`h2`) the connection's destination is not known: its `Host:` header names it.
        by_host: h2,
        agent: cfg.slot,
    }
}

/// Everything: a request a person approved.
const TAKES_ALL: Takes = Takes {
    methods: 0x1ff,
    writes: 0x1ff,
    path_methods: 0,
    rule: 0,
    h2: true,
    record_only: true,
    by_host: false,
    agent: 0,
};

/// The flags and `aux` of a `net.http_write` event for what the parser found.
#[inline(always)]
fn http_rec(found: &http::Found, layer: u32) -> Rec {
    let mut flags = event_flags::HTTP_REQUEST;
    match found.verdict {
        http_verdict::METHOD => {}
        http_verdict::ELSEWHERE => flags |= event_flags::HOST_ELSEWHERE,
        http_verdict::PATH => flags |= event_flags::HTTP_PATH,
        http_verdict::UNREADABLE => flags |= event_flags::ARG_UNREADABLE,
        _ => flags |= event_flags::HTTP_UNPARSABLE,
    }
    Rec {
        kind: kind::NET_HTTP_WRITE,
        verdict: verdict::VIOLATION,
        action: action::NONE,
        layer,
        flags,
        aux: found.verdict as u64,
        aux2: found.method as u64,
    }
}

/// HTTP on an agent's allowed connection, and the holds of its instance.
#[cgroup_skb(egress)]
#[inline(always)]
pub fn http_egress(ctx: SkBuffContext) -> i32 {
    try_http_egress(&ctx).unwrap_or(REFUSE)
}

#[inline(always)]
fn try_http_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let skb = ctx.skb.skb as *mut c_void;
    let cookie = unsafe { bpf_get_socket_cookie(skb) };
    let Some(info) = SOCKS.get_ptr_mut(&cookie) else {
        return Ok(PASS);
    };
    let info = unsafe { &mut *info };
    if info.blocked == sock_state::BLOCKED || info.blocked == sock_state::HELD {
        return Ok(REFUSE);
    }
    // A TLS write of this instance is held for a person: nothing of its connections leaves,
    // whoever continued the writer (TCP keeps the bytes queued).
    if unsafe { HELD_RUNS.get(&info.run_id) }.is_some() {
        return Ok(REFUSE);
    }
    let v: u8 = ctx.load(0)?;
    // (header length, total length, next protocol, a plain header: IPv4 without options; IPv6
    // is 40 bytes and an extension header shows as a next protocol other than TCP). A length
    // of 0 (a GSO packet larger than 64 KiB: BIG TCP) is the packet's own length.
    let (ip_hl, total, proto, plain) = match v >> 4 {
        4 => {
            let hl = (v as u32 & 0xf) * 4;
            (hl, u16::from_be(ctx.load::<u16>(2)?) as u32, ctx.load::<u8>(9)?, hl == 20)
        }
        6 => {
            let payload = u16::from_be(ctx.load::<u16>(4)?) as u32;
            (40, if payload == 0 { 0 } else { 40 + payload }, ctx.load::<u8>(6)?, true)
        }
        _ => return Ok(REFUSE),
    };
    let total = if total == 0 { ctx.len() } else { total };
    let Some(cfg) = agent::agent_cfg(info.agent) else {
        return Ok(PASS);
    };
    let st = ProcState {
        agent: cfg.slot | agent_monitor_common::AGENT_GEN_KNOWN,
        tls_token: 0,
        run_id: info.run_id,
        start_ns: info.start_ns,
        flags: 0,
        _pad: 0,
    };
    let who = Who { pid: info.tgid, tid: info.tgid, ppid: 0, uid: ctx.get_socket_uid(), comm: [0; 16] };
    if !plain || proto != 6 {
        // IP options (a source route) or IPv6 extension headers (a routing header) on an
        // agent's connection: the destination on the wire may not be the one the connect was
        // allowed for, and the payload is not where the parser looks.
        let found = http::Found { verdict: http_verdict::IP_OPTIONS, method: 0, at: 0, lost: true, host_bind: 0 };
        return Ok(http_violation(ctx, info, &st, &cfg, &who, &found, 0, 0, cookie));
    }
    let seq_wire: u32 = ctx.load(ip_hl as usize + 4)?;
    let seq = u32::from_be(seq_wire);
    let doff = ((ctx.load::<u8>(ip_hl as usize + 12)? >> 4) as u32) * 4;
    let off = ip_hl + doff;
    // Urgent data: a Linux receiver (and most others) takes the last byte of an `MSG_OOB` send
    // out of the stream the server reads, so the server would read a different request than
    // the one parsed here. Nothing read-only needs it.
    if ctx.load::<u8>(ip_hl as usize + 13)? & 0x20 != 0 {
        let found = http::Found { verdict: http_verdict::URGENT, method: 0, at: 0, lost: true, host_bind: 0 };
        return Ok(http_violation(ctx, info, &st, &cfg, &who, &found, off, seq_wire, cookie));
    }
    if off >= total {
        return Ok(PASS); // no payload
    }
    let len = total - off;
    // The approved request (or a retransmission of it) goes out; the parser follows it as a
    // request that was let through.
    let approved = info.blocked == sock_state::APPROVED && seq_wire == info.held_seq;
    // Each byte is parsed once: a retransmission passes as it passed the first time.
    let mut skip = 0;
    if info.seq_known == 0 {
        info.seq_known = 1;
        info.next_seq = seq;
    } else {
        let d = seq.wrapping_sub(info.next_seq) as i32;
        if d < 0 {
            let back = d.wrapping_neg() as u32;
            if back >= len {
                return Ok(PASS);
            }
            skip = back;
        } else if d > 0 {
            // Bytes the parser never saw: it cannot know where requests start.
            let found = http::Found { verdict: http_verdict::SPLIT, method: 0, at: 0, lost: true, host_bind: 0 };
            return Ok(http_violation(ctx, info, &st, &cfg, &who, &found, off, seq_wire, cookie));
        }
    }
    if info.seen == 0 {
        info.seen = 1;
        let b: [u8; 2] = ctx.load((off + skip) as usize)?;
        if b[0] == 0x16 && b[1] == 0x03 {
            // A TLS handshake record: check who can see inside it, and the server name. (Judged
            // on the process that connected: a cgroup_skb program cannot ask who is sending
            // before Linux 6.x's helpers, and 6.1 refuses it: see README "Limits".)
            if crate::maps::tls_hooks_pending(info.tgid) {
                // A new agent process the daemon has not hooked yet: nothing would see its
                // writes. The ClientHello waits (dropped here, TCP sends it again) and is
                // checked again then; the handshake cannot finish, and no request can be
                // written, before it is hooked.
                info.seen = 0;
                agent::count(agent_monitor_common::stat::TLS_HANDSHAKE_HELD);
                return Ok(REFUSE);
            }
            info.tls = 1;
            let ret = tls_first_flight(ctx, info, &st, &cfg, &who, off + skip);
            if ret == PASS {
                info.next_seq = seq.wrapping_add(len);
            }
            return Ok(ret);
        }
    }
    if info.tls == 1 && !pending_writes_may_leave(info, &cfg) {
        // A TLS write its `Host:` header allowed for another destination has not left yet:
        // these bytes may be it (a `Host:` naming the API on a connection to the forum).
        let found = http::Found { verdict: http_verdict::ELSEWHERE, method: 0, at: 0, lost: true, host_bind: 0 };
        let ret = http_violation(ctx, info, &st, &cfg, &who, &found, 0, seq_wire, cookie);
        if ret != PASS {
            return Ok(ret);
        }
    }
    if info.tls != 0 {
        info.next_seq = seq.wrapping_add(len);
        return Ok(PASS);
    }
    let t = if approved { TAKES_ALL } else { takes(&cfg, &info.dest, false) };
    // (for an audited record: do these bytes begin a request, or go on with one?)
    let starts = info.http.mode == http_mode::EXPECT_REQUEST;
    let mut parse = info.http;
    let found = http::parse(SLOT_SKB, Src::Skb(skb, off + skip), len - skip, &mut parse, &t);
    if approved {
        info.http = parse;
        info.next_seq = seq.wrapping_add(len);
        return Ok(PASS);
    }
    if found.verdict == http_verdict::OK {
        info.http = parse;
        info.next_seq = seq.wrapping_add(len);
        if cfg.flags & agent_flags::AUDIT != 0 && skip == 0 {
            let n = load_request(ctx, off);
            let r = Rec {
                kind: kind::NET_HTTP_WRITE,
                verdict: verdict::ALLOWED,
                action: action::NONE,
                layer: layer::CGROUP,
                flags: event_flags::HTTP_REQUEST | if starts { 0 } else { event_flags::HTTP_GOES_ON },
                aux: 0,
                aux2: 0,
            };
            emit_net(&st, &who, r, &info.addr, info.port, SOCK_STREAM, request_ref(n));
        }
        return Ok(PASS);
    }
    let ret = http_violation(ctx, info, &st, &cfg, &who, &found, off + skip, seq_wire, cookie);
    if ret == PASS {
        // Alerted: the request goes out; the parser went on past it.
        if found.lost {
            // Nothing left to follow: the rest of this connection is not parsed (one alert).
            info.tls = 2;
        } else {
            info.http = parse;
        }
        info.next_seq = seq.wrapping_add(len);
    }
    Ok(ret)
}

/// May this TLS packet of an agent instance leave, given the writes its `Host:` headers allowed
/// that have not left yet (`TLS_PENDING`)? Yes if there are none, or if the connection is to
/// one of their destinations (by the rule its address matched at connect or matches now, or by
/// its server name at that address); that destination's write is then on its way. No if it is
/// to another destination: the bytes may carry the write.
#[inline(always)]
fn pending_writes_may_leave(info: &SockInfo, cfg: &AgentCfg) -> bool {
    let Some(p) = TLS_PENDING.get_ptr_mut(&info.run_id) else {
        return true;
    };
    let p = unsafe { &mut *p };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let now_rule = net_allowed(cfg.slot, proto::TCP, info.port, info.addr).map(|r| r.bind as u32).unwrap_or(0);
    let mut pending = false;
    let mut bound = false;
    for i in 0..PENDING_WRITES {
        let b = p.bind[i];
        if b == 0 {
            continue;
        }
        if now.wrapping_sub(p.at[i]) > PENDING_WRITE_NS {
            p.bind[i] = 0;
            continue;
        }
        if b == info.dest.bind as u32 || b == info.sni_bind || b == now_rule {
            p.bind[i] = 0;
            bound = true;
        } else {
            pending = true;
        }
    }
    bound || !pending
}

/// Record that a TLS write of this instance was allowed for destination `bind` by its `Host:`
/// header. False if it cannot be recorded (as many other destinations' writes are pending):
/// the write is then refused.
#[inline(always)]
fn pending_write(run_id: u64, bind: u32) -> bool {
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let mut p = unsafe { TLS_PENDING.get(&run_id) }.copied().unwrap_or_default();
    let mut free = PENDING_WRITES;
    for i in 0..PENDING_WRITES {
        if p.bind[i] == bind {
            free = i;
            break;
        }
        if free == PENDING_WRITES && (p.bind[i] == 0 || now.wrapping_sub(p.at[i]) > PENDING_WRITE_NS) {
            free = i;
        }
    }
    if free >= PENDING_WRITES {
        return false;
    }
    p.bind[free] = bind;
    p.at[free] = now;
    TLS_PENDING.insert(&run_id, &p, 0).is_ok()
}

/// A request the parser refused on an agent's clear-text connection: the event, and what is
/// done to this packet and the socket's later ones.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn http_violation(
    ctx: &SkBuffContext,
    info: &mut SockInfo,
    st: &ProcState,
    cfg: &AgentCfg,
    who: &Who,
    found: &http::Found,
    payload: u32,
    seq_wire: u32,
    cookie: u64,
) -> i32 {
    let n = if payload != 0 { load_request(ctx, payload + found.at) } else { 0 };
    let mut r = http_rec(found, layer::CGROUP);
    let (ret, act, flags) = refuse_or_alert(st, cfg);
    if act == action::HELD && found.verdict == http_verdict::METHOD && found.at == 0 {
        // Held: this packet and the rest wait in TCP's queue (a dropped segment is sent again
        // later); the writer is stopped as its send returns. Approval lets this segment pass.
        info.blocked = sock_state::HELD;
        info.held_seq = seq_wire;
        if let Some(p) = HOLD_STOP.get_ptr_mut(0) {
            unsafe { *p = info.tgid };
        }
        r.aux2 |= cookie << 8;
    } else if ret == REFUSE {
        // Drop this packet and every later one: the server receives nothing of the request.
        info.blocked = sock_state::BLOCKED;
    }
    r.action = if act == action::HELD && info.blocked != sock_state::HELD { action::DENIED } else { act };
    r.flags |= flags;
    emit_net(st, who, r, &info.addr, info.port, SOCK_STREAM, request_ref(n));
    ret
}

/// The first TLS flight of an agent's connection: can a hooked library in this process image
/// see its plaintext (else the destination must accept opaque TLS), and its server name.
#[inline(always)]
fn tls_first_flight(
    ctx: &SkBuffContext,
    info: &mut SockInfo,
    st: &ProcState,
    cfg: &AgentCfg,
    who: &Who,
    off: u32,
) -> i32 {
    let base = Rec {
        kind: kind::NET_CONNECT,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::CGROUP,
        flags: 0,
        aux: 0,
        aux2: 0,
    };
    let visible = unsafe { PROCS.get(&info.tgid) }.is_some_and(|p| p.flags & proc_flags::TLS_VISIBLE != 0);
    if !visible {
        // Nothing we hook wrote this handshake: a statically linked TLS stack, or a library we
        // do not know. Its writes cannot be told from its reads: allowed only where the
        // destination accepts opaque TLS, refused (as the policy's action says) elsewhere.
        let mut r = Rec { flags: event_flags::TLS_INVISIBLE, ..base };
        let mut ret = PASS;
        if info.dest.flags & dest_flags::OPAQUE_TLS == 0 {
            let (rr, act, f) = refuse_or_alert(st, cfg);
            r.verdict = verdict::VIOLATION;
            r.action = if act == action::HELD { action::DENIED } else { act };
            r.flags |= f | event_flags::OPAQUE_TLS;
            ret = if act == action::HELD { REFUSE } else { rr };
            if ret == REFUSE {
                info.blocked = sock_state::BLOCKED;
            }
        }
        emit_net(st, who, r, &info.addr, info.port, SOCK_STREAM, PathRef::NONE);
        if ret == REFUSE {
            return ret;
        }
    }
    // The server name: which allowed host name the connection is at its address (a write a
    // `Host:` header allowed for that name may leave on it). A destination allowed only through
    // host names must be reached by one of them.
    let Some(key) = SNI_SCRATCH.get_ptr_mut(0) else { return REFUSE };
    let key = unsafe { &mut *key };
    let found = match server_name(ctx, off) {
        Ok(Some((name_off, name_len))) => {
            let words = key as *mut SniKey as *mut u64;
            for i in 0..(core::mem::size_of::<SniKey>() / 8) {
                unsafe { *words.add(i) = 0 };
            }
            key.agent = cfg.slot;
            key.port = info.port;
            key.addr = info.addr;
            if name_len == 0 || name_len >= SNI_LEN as u32 {
                false
            } else {
                // ((n - 1) & 127) + 1 is n for 1..=127, and the verifier sees 1..=128 on the
                // very register it is given (older verifiers refuse a size that may be 0).
                let n = ((kernel::opaque(name_len) - 1) & (SNI_LEN as u32 - 1)) + 1;
                unsafe {
                    bpf_skb_load_bytes(ctx.skb.skb as *mut c_void, name_off, key.name.as_mut_ptr() as *mut c_void, n)
                        == 0
                }
            }
        }
        // No server name: nothing to compare; the address check stands.
        Ok(None) => return PASS,
        // A ClientHello not readable whole here (its name could be in the next segment): it
        // cannot be shown to name an allowed host (refused where that is required).
        Err(()) => {
            let words = key as *mut SniKey as *mut u64;
            for i in 0..(core::mem::size_of::<SniKey>() / 8) {
                unsafe { *words.add(i) = 0 };
            }
            false
        }
    };
    if found {
        let mut bind = unsafe { SNI_ALLOW.get(&*key) }.copied();
        if bind.is_none() {
            key.port = [0, 0];
            bind = unsafe { SNI_ALLOW.get(&*key) }.copied();
        }
        if let Some(b) = bind {
            info.sni_bind = b;
            return PASS;
        }
    }
    if info.via_host == 0 {
        return PASS;
    }
    let (ret, act, f) = refuse_or_alert(st, cfg);
    let ret = if act == action::HELD { REFUSE } else { ret };
    if ret == REFUSE {
        info.blocked = sock_state::BLOCKED;
    }
    let act = if act == action::HELD { action::DENIED } else { act };
    let r = Rec { verdict: verdict::VIOLATION, action: act, flags: f | event_flags::SNI_MISMATCH, ..base };
    emit_net(st, who, r, &info.addr, info.port, SOCK_STREAM, PathRef(key.name.as_ptr(), SNI_LEN as u32));
    ret
}

#[inline(always)]
fn be16(ctx: &SkBuffContext, at: u32) -> Option<u32> {
    ctx.load::<[u8; 2]>(at as usize).ok().map(|b| u16::from_be_bytes(b) as u32)
}

/// The server_name extension of the ClientHello starting at `off` (a TLS record): the offset
/// and length of the first host name, `Ok(None)` for a ClientHello read to its end without one,
/// `Err` when it was not found before the packet ended (a ClientHello cut over segments: a
/// retransmission is cut at the MSS, and clients put the name early; more extensions than are
/// walked; not a ClientHello). RFC 8446 4.1.2 and RFC 6066 3.
#[inline(always)]
fn server_name(ctx: &SkBuffContext, off: u32) -> Result<Option<(u32, u32)>, ()> {
    const CLIENT_HELLO: u8 = 1;
    let load8 = |at: u32| ctx.load::<u8>(at as usize).map(|b| b as u32).map_err(|_| ());
    let record_end = off + 5 + be16(ctx, off + 3).ok_or(())?;
    if load8(off + 5)? != CLIENT_HELLO as u32 {
        return Err(());
    }
    // record header (5), handshake header (4), legacy_version (2), random (32)
    let mut p = off + 5 + 4 + 2 + 32;
    p += 1 + load8(p)?; // session id
    p += 2 + be16(ctx, p).ok_or(())?; // cipher suites
    p += 1 + load8(p)?; // compression methods
    if p == record_end {
        return Ok(None); // no extensions
    }
    let end = p + 2 + be16(ctx, p).ok_or(())?;
    if end > record_end {
        return Err(());
    }
    p += 2;
    for _ in 0..32 {
        if p == end {
            return Ok(None);
        }
        if p + 4 > end {
            return Err(());
        }
        let ty = be16(ctx, p).ok_or(())?;
        let len = be16(ctx, p + 2).ok_or(())?;
        if ty == 0 {
            // server_name_list length (2), name_type (1), host_name length (2), host_name; the
            // name itself must be in this packet (read by the caller).
            return Ok(Some((p + 4 + 5, be16(ctx, p + 4 + 3).ok_or(())?)));
        }
        p += 4 + len;
    }
    Err(())
}

/// Record that the current agent process image does TLS through a hooked library.
#[inline(always)]
fn mark_visible() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(p) = PROCS.get_ptr_mut(&tgid) {
        unsafe { (*p).flags |= proc_flags::TLS_VISIBLE };
    }
}

/// `int SSL_do_handshake(SSL *s)` (also reached through `SSL_connect`), `void
/// SSL_set_connect_state(SSL *s)` (where Node.js starts a client connection: its handshake then
/// runs inside `SSL_read`, never entering `SSL_do_handshake`), `int
/// gnutls_handshake(gnutls_session_t session)` and Go's `(*crypto/tls.Conn).clientHandshake`.
/// They mark the process as doing visible TLS, and nothing else: a handshake call on a live
/// connection is a no-op in the library, and dropping the parser's state there would let it
/// fall behind the server (red-team review of session 8, #1).
#[uprobe]
#[inline(always)]
pub fn ssl_do_handshake(_ctx: ProbeContext) -> u32 {
    mark_visible();
    0
}

/// `void SSL_free(SSL *s)`, `int SSL_clear(SSL *s)`, `void gnutls_deinit(gnutls_session_t
/// session)`: the object ends, or starts again for a new connection. The parser state kept for
/// it goes, so a reused pointer (`SSL_clear`, or an `SSL_new` at a freed object's address) does
/// not carry a stale state ("skip 16 KiB of frame payload") into the next connection.
#[uprobe]
#[inline(always)]
pub fn tls_conn_end(ctx: ProbeContext) -> u32 {
    mark_visible();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    let _ = TLS_CONNS.remove(&TlsConnKey { tgid, _pad: 0, ssl });
    0
}

/// Bytes of the request kept in an event.
const REQ_BYTES: u32 = 192;

/// The plaintext handed to a TLS library, before it is encrypted: the HTTP parser, per TLS
/// connection (`ssl`), with the agent's `http_methods`. `at_return`: a return probe
/// (`tls_write_ret`) commits the parser state for what the call sent; otherwise (Go, which
/// writes whole or fails the connection) it is committed here.
#[inline(always)]
fn tls_write(ssl: u64, buf: *const u8, len: u64, written: u64, at_return: bool) {
    let Some((st, cfg)) = current_agent() else {
        return;
    };
    mark_visible();
    let id = bpf_get_current_pid_tgid();
    if reap_if_killed(&st) || len == 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let key = TlsConnKey { tgid, _pad: 0, ssl };
    // A write of this thread still waiting for its return: the same call entered again
    // (`gnutls_record_send` is `gnutls_record_send2`'s wrapper), judged once; or another write
    // made inside it (a callback of the library writing on another connection), whose return
    // would take the outer write's place: the parser could not follow both, refused.
    let mut nested = false;
    if let Some(w) = unsafe { TLS_WRITES.get(&id) } {
        if w.key.ssl == ssl && w.buf == buf as u64 && w.len == len {
            return;
        }
        nested = at_return;
    }
    // The write is built in per-CPU memory, not on the stack (`TLS_WRITE_SCRATCH`). A one-entry
    // per-CPU array always has it; if it ever did not, the write could not be judged: killed,
    // never let through unread.
    let Some(w) = TLS_WRITE_SCRATCH.get_ptr_mut(0) else {
        let kill = AgentCfg { action: policy_action::KILL, ..cfg };
        let _ = agent::enforce_after(&st, &kill);
        count(stat::READ_FAILED);
        return;
    };
    let pending = unsafe { &mut *w };
    pending.key = key;
    pending.buf = buf as u64;
    pending.len = len;
    pending.written = written;
    pending.before = unsafe { TLS_CONNS.get(&key) }.copied().unwrap_or(HttpParse::default());
    pending.after = pending.before;
    // What the call sends is known at its return (`tls_write_ret`): nothing (`WANT_READ`
    // before the handshake, an error), a part, or all of it. The whole is judged now; the
    // state moves there, by what was sent. A return that never comes (the process was hooked
    // in the middle of the call) leaves the state where it was: the next write is then read
    // as the start of a request, so a lost return refuses more, never less.
    let t = takes(&cfg, &DestRule::default(), true);
    let len32 = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
    let mut found = http::parse(SLOT_TLS, Src::User(buf as u64), len32, &mut pending.after, &t);
    if nested {
        found = http::Found { verdict: http_verdict::NESTED, method: 0, at: 0, lost: true, host_bind: 0 };
    }
    // A write its `Host:` header allowed: its bytes must leave on a connection to that
    // destination (checked per packet, `pending_writes_may_leave`).
    if found.host_bind != 0 && !pending_write(st.run_id, found.host_bind) && found.verdict == http_verdict::OK {
        found = http::Found { verdict: http_verdict::ELSEWHERE, method: 0, at: 0, lost: false, host_bind: 0 };
    }
    if found.verdict == http_verdict::OK {
        commit(&key, pending, at_return);
        if cfg.flags & agent_flags::AUDIT != 0 {
            let req = tls_request(buf, len, 0);
            let r = Rec {
                kind: kind::NET_HTTP_WRITE,
                verdict: verdict::ALLOWED,
                action: action::NONE,
                layer: layer::UPROBE,
                flags: event_flags::HTTP_REQUEST
                    | if pending.before.mode == http_mode::EXPECT_REQUEST { 0 } else { event_flags::HTTP_GOES_ON },
                aux: 0,
                aux2: 0,
            };
            emit(&st, &r, PathRef::NONE, req);
        }
        return;
    }
    let req = tls_request(buf, len, found.at);
    let mut r = http_rec(&found, layer::UPROBE);
    // A uprobe cannot make the call fail: deny falls back to kill, before the call encrypts or
    // sends a byte. Hold stops the process here, before the call runs, and holds every packet
    // of its instance's connections until a person decides: continued on approval (the request
    // goes out once), killed on denial, whoever sends it SIGCONT meanwhile.
    // (`alert` and `hold` parsed on past the violation: the state follows the stream as if the
    // request were let through, which it is, or may be once approved.)
    if found.lost {
        let _ = TLS_CONNS.remove(&key);
    } else {
        commit(&key, pending, at_return);
    }
    if cfg.action == policy_action::HOLD && !found.lost {
        let one: u32 = 1;
        let _ = HELD_RUNS.insert(&st.run_id, &one, 0);
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGSTOP) };
        r.action = action::HELD;
        emit(&st, &r, PathRef::NONE, req);
        return;
    }
    let kill =
        AgentCfg { action: if cfg.action == policy_action::HOLD { policy_action::KILL } else { cfg.action }, ..cfg };
    let (a, f) = agent::enforce_after(&st, &kill);
    r.action = a;
    r.flags |= f & !event_flags::AFTER_EFFECT;
    emit(&st, &r, PathRef::NONE, req);
}

/// The state after a write, now (`at_return` false) or by `tls_write_ret` for what was sent.
#[inline(always)]
fn commit(key: &TlsConnKey, w: &TlsWrite, at_return: bool) {
    if at_return {
        let _ = TLS_WRITES.insert(&bpf_get_current_pid_tgid(), w, 0);
    } else {
        let _ = TLS_CONNS.insert(key, &w.after, 0);
    }
}

/// Up to [`REQ_BYTES`] of the plaintext at `buf + at`, for the event (none if unreadable).
#[inline(always)]
fn tls_request(buf: *const u8, len: u64, at: u32) -> PathRef {
    let Some(s) = EVENTS_SCRATCH.get_ptr_mut(0) else { return PathRef::NONE };
    let rest = len.saturating_sub(at as u64);
    let want = if rest > REQ_BYTES as u64 { REQ_BYTES } else { rest as u32 };
    if want == 0 {
        return PathRef::NONE;
    }
    let n = ((kernel::opaque(want) - 1) & 255) + 1;
    let got = unsafe {
        raw_read_user(kernel::opaque(s as *mut u8).add(16) as *mut c_void, n, (buf as u64 + at as u64) as *const c_void)
    };
    PathRef(unsafe { kernel::opaque(s as *const u8).add(16) }, if got == 0 { want } else { 0 })
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`
#[uprobe]
#[inline(always)]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    tls_write(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<*const u8>(1).unwrap_or(core::ptr::null()),
        ctx.arg::<u64>(2).unwrap_or(0) as u32 as u64,
        0,
        true,
    );
    0
}

/// `func (c *crypto/tls.Conn) Write(b []byte) (int, error)`, Go's own TLS (its register ABI,
/// ABIInternal: the receiver, then the slice's pointer and length, in RAX, RBX, RCX on x86-64;
/// X0, X1, X2 on arm64). Go writes whole or fails the connection, and its stacks move: no
/// return probe (the state is committed at entry).
#[uprobe]
#[inline(always)]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let r = ctx.regs;
    #[cfg(bpf_target_arch = "x86_64")]
    let (conn, buf, len) = unsafe { ((*r).rax, (*r).rbx, (*r).rcx) };
    #[cfg(bpf_target_arch = "aarch64")]
    let (conn, buf, len) = unsafe { ((*r).regs[0], (*r).regs[1], (*r).regs[2]) };
    tls_write(conn, buf as *const u8, len, 0, false);
    0
}

/// The return of `SSL_write` (bytes written, or <= 0), `SSL_write_ex` (1, and `*written`; or
/// 0) and `gnutls_record_send` (bytes written, or < 0): what the call sent. Sent whole: the
/// state the entry computed. Nothing: the state stays where it was before the call (a write
/// that never left must not move the parser: an HTTP/2 preface and a 16 MiB SETTINGS frame
/// "written" before the handshake would make it skip the requests after). A part: the state
/// before, advanced by the part sent.
#[uretprobe]
#[inline(always)]
pub fn tls_write_ret(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(w) = (unsafe { TLS_WRITES.get(&id) }).copied() else {
        return 0;
    };
    let _ = TLS_WRITES.remove(&id);
    let r = ctx.ret::<u64>() as u32 as i32;
    let sent: u64 = if r <= 0 {
        0
    } else if r as u64 == w.len {
        w.len
    } else if r == 1 {
        // `SSL_write_ex`'s success, with the count in `*written` (a 1-byte part otherwise).
        match unsafe { bpf_probe_read_user(w.written as *const u64) } {
            Ok(v) if v > 0 && v <= w.len => v,
            _ => 1,
        }
    } else if (r as u64) < w.len {
        r as u64
    } else {
        w.len
    };
    if sent >= w.len {
        let _ = TLS_CONNS.insert(&w.key, &w.after, 0);
        return 0;
    }
    if sent == 0 {
        return 0;
    }
    let Some((_, cfg)) = current_agent() else {
        return 0;
    };
    // The part was judged with the whole at entry: here it only moves the state.
    let mut state = w.before;
    let t = Takes { record_only: true, ..takes(&cfg, &DestRule::default(), true) };
    let found = http::parse(SLOT_TLS, Src::User(w.buf), sent as u32, &mut state, &t);
    if found.lost {
        let _ = TLS_CONNS.remove(&w.key);
        return 0;
    }
    let _ = TLS_CONNS.insert(&w.key, &state, 0);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)` and `ssize_t
/// gnutls_record_send(gnutls_session_t session, const void *data, size_t data_size)` (and
/// `gnutls_record_send2` and `gnutls_record_send_range`: the same data and size, then padding or a
/// range).
#[uprobe]
#[inline(always)]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    tls_write(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<*const u8>(1).unwrap_or(core::ptr::null()),
        ctx.arg::<u64>(2).unwrap_or(0),
        ctx.arg::<u64>(3).unwrap_or(0),
        true,
    );
    0
}

/// A Unix socket address in process memory: its path (`@name` for an abstract socket) into
/// `op.p1` and whether the agent may reach it. `Err` if it cannot be read; `Ok(None)` if it is
/// not a Unix address.
#[inline(always)]
unsafe fn unix_addr(s: *mut crate::maps::Scratch, op: &mut PendingOp, slot: u32, sa: u64) -> Result<Option<bool>, ()> {
    let family: u16 = bpf_probe_read_user(sa as *const u16).map_err(|_| ())?;
    if family != AF_UNIX {
        return Ok(None);
    }
    let key: *mut UnixKey = (*s).buf.as_mut_ptr() as *mut UnixKey;
    let words = key as *mut u64;
    for i in 0..((4 + UNIX_PATH_LEN) / 8 + 1) {
        *words.add(i) = 0;
    }
    (*key).agent = slot;
    let sun_path = (sa + 2) as *const u8;
    let first: u8 = bpf_probe_read_user(sun_path).map_err(|_| ())?;
    let p = (*key).path.as_mut_ptr();
    let r = if first == 0 {
        // Abstract socket: shown and matched as "@name".
        *p = b'@';
        bpf_probe_read_user_str(p.add(1) as *mut c_void, (UNIX_PATH_LEN - 1) as u32, sun_path.add(1) as *const c_void)
    } else {
        bpf_probe_read_user_str(p as *mut c_void, UNIX_PATH_LEN as u32, sun_path as *const c_void)
    };
    if r < 0 {
        return Err(());
    }
    let ok = UNIX_ALLOW.get(&*key).is_some();
    raw_read_kernel(op.p1.as_mut_ptr() as *mut c_void, UNIX_PATH_LEN as u32, p as *const c_void);
    op.p1[UNIX_PATH_LEN] = 0;
    op.len1 = UNIX_PATH_LEN as u32;
    Ok(Some(ok))
}

/// A Unix connect or datagram of the current thread judged at `sys_enter`: where the cgroup
/// `connect_unix`/`sendmsg_unix` programs are attached and the agent's action refuses, it is
/// refused there before it happens (`UNIX_REFUSE`) and the event is written now (layer cgroup;
/// `kill` also kills, `hold` is a plain refusal: no grant exists for a Unix path). Returns false
/// if the caller must decide as before (no such programs, `alert`, or no room to remember it).
/// Every call clears what an earlier call of this thread left (one that failed before the
/// hook).
#[inline(always)]
fn unix_refused(st: &ProcState, cfg: &AgentCfg, ok: bool, flags: u32, aux: u64, path: PathRef) -> bool {
    if !crate::maps::unix_cgroup_active() {
        return false;
    }
    let tid = bpf_get_current_pid_tgid();
    let _ = UNIX_REFUSE.remove(&tid);
    if ok || cfg.action == policy_action::ALERT {
        return false;
    }
    let one: u32 = 1;
    if UNIX_REFUSE.insert(&tid, &one, 0).is_err() {
        count(agent_monitor_common::stat::TABLE_FULL);
        return false;
    }
    let (act, kill) = unix_refusal_action(cfg);
    let flags = flags | kill | event_flags::UNIX_UNCHECKED;
    let r = Rec {
        kind: kind::IPC_CONNECT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::CGROUP,
        flags,
        aux,
        aux2: 0,
    };
    emit(st, &r, path, PathRef::NONE);
    true
}

/// The action recorded for a refused Unix connect or datagram. `kill` is left to the daemon
/// (`KILL_FROM_USERSPACE`): it kills only if the socket exists, which the cgroup hook, running
/// before the kernel's lookup, cannot know (`UNIX_UNCHECKED`).
#[inline(always)]
fn unix_refusal_action(cfg: &AgentCfg) -> (u32, u32) {
    if cfg.action == policy_action::KILL {
        (action::KILLED, event_flags::KILL_FROM_USERSPACE)
    } else {
        (action::DENIED, 0)
    }
}

/// `PendingOp::aux` of a Unix connect or datagram refused at `sys_enter` because its address
/// could not be read: the event is written at `sys_exit`, once the kernel's copy has faulted the
/// page in, so that it names the path.
pub const UNIX_REFUSED_UNREAD: u64 = 1 << 32;

/// A Unix connect (`aux` 0) or datagram (1) whose address cannot be read as the call starts:
/// refused where the cgroup Unix programs can refuse it (fail closed), its event written at
/// `sys_exit` ([`unix_refused_exit`]). Returns false if the caller must decide as before.
#[inline(always)]
fn unix_refuse_unread(st: &ProcState, cfg: &AgentCfg, op: &mut PendingOp, sa: u64, aux: u64) -> bool {
    if !crate::maps::unix_cgroup_active() || cfg.action == policy_action::ALERT {
        return false;
    }
    let tid = bpf_get_current_pid_tgid();
    let one: u32 = 1;
    if UNIX_REFUSE.insert(&tid, &one, 0).is_err() {
        count(agent_monitor_common::stat::TABLE_FULL);
        return false;
    }
    op.kind = kind::IPC_CONNECT;
    op.flags = 0;
    op.ok = 0;
    op.len1 = 0;
    op.len2 = 0;
    op.aux = aux | UNIX_REFUSED_UNREAD;
    op.unread1 = [0, sa];
    op.unread2 = [0, 0];
    if PENDING_OPS.insert(&tid, op, 0).is_err() {
        // Nowhere to finish the record: write it now, without the path.
        count(agent_monitor_common::stat::TABLE_FULL);
        let _ = UNIX_REFUSE.remove(&tid);
        return unix_refused(st, cfg, false, event_flags::ARG_UNREADABLE, aux, PathRef::NONE);
    }
    true
}

/// At `sys_exit`, the record of a Unix connect or datagram refused because its address could
/// not be read at `sys_enter`: the address is read again (the kernel has copied it by now).
#[inline(always)]
pub unsafe fn unix_refused_exit(st: &ProcState, cfg: &AgentCfg, op: &mut PendingOp) {
    let _ = UNIX_REFUSE.remove(&bpf_get_current_pid_tgid());
    let sa = op.unread1[1];
    let Some(s) = agent::scratch() else { return };
    let mut flags = 0;
    let path = match unix_addr(s, op, cfg.slot, sa) {
        Ok(Some(_)) => PathRef(op.p1.as_ptr(), op.len1),
        _ => {
            flags |= event_flags::ARG_UNREADABLE;
            PathRef::NONE
        }
    };
    let (act, kill) = unix_refusal_action(cfg);
    flags |= kill | event_flags::UNIX_UNCHECKED;
    // aux 3: a connect, 4: a datagram, refused with its address unreadable at the call.
    let aux = (op.aux & 1) + 3;
    let r = Rec {
        kind: kind::IPC_CONNECT,
        verdict: verdict::VIOLATION,
        action: act,
        layer: layer::CGROUP,
        flags,
        aux,
        aux2: 0,
    };
    emit(st, &r, path, PathRef::NONE);
}

/// `cgroup/connect_unix` (6.7+): refuses the Unix connect the tracepoint judged a violation.
/// The path itself is not readable here without kfuncs; the tracepoint read it as the call
/// started (the kernel copies the address right after).
#[no_mangle]
#[link_section = "cgroup/connect_unix"]
pub fn connect_unix(_ctx: *mut bpf_sock_addr) -> i32 {
    unix_verdict()
}

/// `cgroup/sendmsg_unix` (6.7+): the same for a datagram sent with an address.
#[no_mangle]
#[link_section = "cgroup/sendmsg_unix"]
pub fn sendmsg_unix(_ctx: *mut bpf_sock_addr) -> i32 {
    unix_verdict()
}

#[inline(always)]
fn unix_verdict() -> i32 {
    let tid = bpf_get_current_pid_tgid();
    if unsafe { UNIX_REFUSE.get(&tid) }.is_some() {
        let _ = UNIX_REFUSE.remove(&tid);
        return REFUSE;
    }
    PASS
}

/// `connect(fd, addr, len)` to a Unix socket: `ipc.connect` unless `unix:PATH` is allowed.
/// Decided here, acted on at `sys_exit_connect` only if the connect succeeded (a resolver
/// probing an nscd socket that does not exist reaches nothing). An address that cannot be read
/// now is read again there; unreadable then, it is a violation. Tracepoint layer: a kill lands
/// after the connect, before any message (the BPF LSM layer refuses it before it connects).
#[tracepoint]
#[inline(always)]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_unix_connect(&ctx);
    0
}

#[inline(always)]
fn try_unix_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    if reap_if_killed(&st) || crate::maps::lsm_active() {
        return Ok(());
    }
    let sa = crate::kernel::tp_arg(ctx, 1);
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let op = &mut (*s).op;
        op.flags = 0;
        op.len2 = 0;
        op.unread1 = [0, 0];
        op.unread2 = [0, 0];
        op.kind = kind::IPC_CONNECT;
        op.aux = 0;
        match unix_addr(s, op, cfg.slot, sa) {
            Ok(None) => return Ok(()),
            Ok(Some(ok)) => {
                if unix_refused(&st, &cfg, ok, 0, 0, PathRef(op.p1.as_ptr(), op.len1)) {
                    return Ok(());
                }
                if ok && cfg.flags & agent_flags::AUDIT == 0 {
                    return Ok(());
                }
                op.ok = ok as u32;
            }
            Err(()) => {
                // Unreadable now: refused where the cgroup program can refuse it (on a Unix
                // socket: the fd says so), else read again at sys_exit.
                let fd = crate::kernel::tp_arg(ctx, 0) as i32 as i64;
                if kernel::socket_family(fd).unwrap_or(AF_UNIX) == AF_UNIX && unix_refuse_unread(&st, &cfg, op, sa, 0) {
                    return Ok(());
                }
                op.ok = 0;
                op.len1 = 0;
                op.unread1 = [0, sa];
            }
        }
        if PENDING_OPS.insert(&bpf_get_current_pid_tgid(), op, 0).is_err() {
            count(agent_monitor_common::stat::TABLE_FULL);
        }
    }
    Ok(())
}

/// At `sys_exit_connect`, a Unix address that could not be read at `sys_enter`: read again.
/// Returns false if it is no Unix address after all (nothing to decide).
#[inline(always)]
pub unsafe fn unix_reread(op: &mut PendingOp, slot: u32) -> bool {
    let sa = op.unread1[1];
    op.unread1 = [0, 0];
    let Some(s) = agent::scratch() else { return true };
    match unix_addr(s, op, slot, sa) {
        Ok(None) => false,
        Ok(Some(ok)) => {
            op.ok = ok as u32;
            true
        }
        Err(()) => {
            op.ok = 0;
            op.flags |= event_flags::ARG_UNREADABLE;
            true
        }
    }
}

/// A datagram to a named Unix socket (`sendto`, `sendmsg` with an address) is a message to a
/// local service, like a connect: `ipc.connect` unless the path is allowed. Judged as the call
/// starts (on the tracepoint layer the datagram is delivered before the kill; the BPF LSM layer
/// refuses it). Only Unix sockets are looked at: the cgroup hooks judge inet datagrams.
#[inline(always)]
fn unix_datagram(fd: i64, sa: u64) -> bool {
    if sa == 0 {
        return false;
    }
    let Some((st, cfg)) = current_agent() else {
        return false;
    };
    if reap_if_killed(&st) || crate::maps::lsm_active() {
        return false;
    }
    let Some(s) = agent::scratch() else { return false };
    unsafe {
        if kernel::socket_family(fd).unwrap_or(AF_UNIX) != AF_UNIX {
            return false;
        }
        let op = &mut (*s).op;
        op.len1 = 0;
        let (ok, flags) = match unix_addr(s, op, cfg.slot, sa) {
            Ok(None) => return false,
            Ok(Some(ok)) => (ok, 0),
            Err(()) => {
                if unix_refuse_unread(&st, &cfg, op, sa, 1) {
                    return true;
                }
                (false, event_flags::ARG_UNREADABLE)
            }
        };
        if unix_refused(&st, &cfg, ok, flags, 1, PathRef(op.p1.as_ptr(), op.len1)) {
            return true;
        }
        let r = Rec {
            kind: kind::IPC_CONNECT,
            verdict: verdict::ALLOWED,
            action: action::NONE,
            layer: layer::TRACEPOINT,
            flags,
            aux: 1,
            aux2: 0,
        };
        agent::decide_with(&st, &cfg, ok, r, PathRef(op.p1.as_ptr(), op.len1), PathRef::NONE, false);
        !ok
    }
}

/// `sendto(fd, buf, len, flags, addr, addrlen)`.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let sa = crate::kernel::tp_arg(&ctx, 4);
    if sa != 0 {
        unix_datagram(crate::kernel::tp_arg(&ctx, 0) as i32 as i64, sa);
    }
    0
}

/// `sendmmsg(fd, msgvec, vlen, flags)`: each message's `msg_name` (`struct mmsghdr` is a
/// `msghdr` and a length: 64 bytes), up to the first violation. More than `SENDMMSG_CHECKED`
/// messages on a Unix socket are a violation (fail closed: the probe does not read that far).
#[tracepoint]
#[inline(always)]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    const SENDMMSG_CHECKED: u64 = 8;
    if current_agent().is_none() {
        return 0;
    }
    let fd = crate::kernel::tp_arg(&ctx, 0) as i32 as i64;
    let vec = crate::kernel::tp_arg(&ctx, 1);
    let vlen = crate::kernel::tp_arg(&ctx, 2) & 0xffff_ffff;
    for i in 0..SENDMMSG_CHECKED {
        if i >= vlen {
            return 0;
        }
        // Unreadable: 1, which `unix_addr` cannot read either (fail closed).
        let name: u64 = unsafe { bpf_probe_read_user((vec + i * 64) as *const u64) }.unwrap_or(1);
        if unix_datagram(fd, name) {
            return 0;
        }
    }
    if vlen > SENDMMSG_CHECKED {
        // Messages past the ones read may carry an address of their own, whatever the first
        // ones did: on a Unix socket, fail closed.
        unix_datagram(fd, 1);
    }
    0
}

/// `sendmsg(fd, msg, flags)`: the address is `msg->msg_name`.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    if current_agent().is_none() {
        return 0;
    }
    let msg = crate::kernel::tp_arg(&ctx, 1);
    let name: u64 = unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(1);
    unix_datagram(crate::kernel::tp_arg(&ctx, 0) as i32 as i64, name);
    0
}

/// `skb:kfree_skb`: a packet freed as dropped. When the HTTP check has just held a request on
/// this CPU and the current task is the writer, stop it here, inside its `send`: it does not
/// run on until a person decides (the daemon stops it too, in case the packet was sent from
/// another context).
///
/// A raw tracepoint: it reads nothing from the event, and a dropped packet of any process pays
/// for this hook (the perf-buffered tracepoint cost ~115 ns per drop here, the raw one a few).
#[raw_tracepoint(tracepoint = "kfree_skb")]
#[inline(always)]
pub fn kfree_skb(_ctx: RawTracePointContext) -> i32 {
    let Some(p) = HOLD_STOP.get_ptr_mut(0) else { return 0 };
    let tgid = unsafe { *p };
    if tgid == 0 {
        return 0;
    }
    unsafe { *p = 0 };
    if (bpf_get_current_pid_tgid() >> 32) as u32 == tgid {
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGSTOP) };
    }
    0
}
