//! The network boundary.
//!
//! - cgroup `connect4/6` and `sendmsg4/6` (attached to the cgroup v2 root, so every process is
//!   covered, io_uring's connect included): a destination not in the agent's `allow` is refused
//!   with EPERM before any packet leaves. Allowed TCP connections are remembered by socket
//!   cookie for the HTTP check.
//! - cgroup `sock_create`: raw inet sockets refused.
//! - cgroup_skb egress: on an agent's allowed connection, a clear-text HTTP/1.x request whose
//!   method is not granted is dropped in the kernel, and so is every later packet of that socket.
//! - uprobes on `SSL_write`, `SSL_write_ex` and `gnutls_record_send`: the same check on the
//!   plaintext before it is encrypted, killing the agent before the call runs.
//! - `sys_enter_connect` tracepoint: `ipc.connect` to a Unix socket not in `allow`.
use agent_monitor_common::{
    action, agent_flags, event_flags, http_method, kind, layer, net_origin, policy_action, sock_state, verdict,
    AgentCfg, GrantKey, NetData, ProcState, SniKey, SockInfo, UnixKey, NET_KEY_FIXED_BITS, SNI_LEN, UNIX_PATH_LEN,
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
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, raw_tracepoint, tracepoint, uprobe},
    maps::lpm_trie::Key,
    programs::{ProbeContext, RawTracePointContext, SkBuffContext, SockAddrContext, SockContext, TracePointContext},
    EbpfContext,
};
use core::ffi::c_void;

use crate::{
    agent::{self, current_agent, emit, emit_as, reap_if_killed, PathRef, Rec, Who},
    kernel,
    maps::{
        EVENTS_SCRATCH, GRANTS, HOLD_STOP, KILLED, NET_ALLOW, PENDING_OPS, PROCS, SNI_ALLOW, SNI_SCRATCH, SOCKS,
        UNIX_ALLOW, VISIBLE,
    },
};

const PASS: i32 = 1;
const SIGSTOP: u32 = 19;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_RAW: u32 = 3;

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

/// Is (addr, port) in the agent's `allow`? The exact port first, then "any port". Returns
/// how it is allowed (`net_origin`), or 0.
#[inline(always)]
fn net_allowed(slot: u32, port: [u8; 2], addr: [u8; 16]) -> u32 {
    let bits = NET_KEY_FIXED_BITS + 128;
    let exact = Key::new(bits, NetData { agent: slot, port, addr, _pad: [0; 2] });
    if let Some(v) = NET_ALLOW.get(&exact) {
        return *v;
    }
    let any = Key::new(bits, NetData { agent: slot, port: [0, 0], addr, _pad: [0; 2] });
    NET_ALLOW.get(&any).copied().unwrap_or(0)
}

/// Is (addr, port) allowed to the agent in table slot `slot`, or granted to this instance by
/// an approved hold (not expired)? `consume` uses up a one-time grant: only the last layer to
/// decide a connect does (the cgroup hook; the LSM hook runs before it).
#[inline(always)]
pub fn allowed_or_granted(st: &ProcState, slot: u32, port: [u8; 2], addr: [u8; 16], consume: bool) -> u32 {
    let origin = net_allowed(slot, port, addr);
    if origin != 0 {
        return origin;
    }
    let key = GrantKey { run_id: st.run_id, addr, port, _pad: [0; 6] };
    if let Some(v) = unsafe { GRANTS.get(&key) }.copied() {
        // Expiry in ns since boot; the top bit marks a grant for one connect only.
        if v & !(1u64 << 63) > unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() } {
            if consume && v >> 63 == 1 {
                let _ = GRANTS.remove(&key);
            }
            return net_origin::STATIC;
        }
    }
    0
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
    let origin = allowed_or_granted(&st, cfg.slot, port, addr, true);
    let ok = origin != 0;
    let r =
        Rec { kind, verdict: verdict::ALLOWED, action: action::NONE, layer: layer::CGROUP, flags: 0, aux: 0, aux2: 0 };
    if ok {
        if kind == kind::NET_CONNECT {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let info = SockInfo {
                agent: st.agent,
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                run_id: st.run_id,
                start_ns: st.start_ns,
                port,
                addr,
                blocked: sock_state::OPEN,
                seen: 0,
                via_host: (origin == net_origin::HOST) as u8,
                _pad: [0; 3],
                held_seq: 0,
                _pad2: 0,
            };
            let _ = SOCKS.insert(&cookie, &info, 0);
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

/// Raw inet sockets bypass connect/sendmsg: refused to agents unless the policy allows them.
/// (`AF_PACKET` never reaches this hook: the `socket` tracepoint covers it.)
#[cgroup_sock(sock_create)]
#[inline(always)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let ty = unsafe { (*ctx.sock).type_ };
    if ty != SOCK_RAW {
        return PASS;
    }
    let Some((st, cfg)) = current_agent() else {
        return PASS;
    };
    if cfg.flags & agent_flags::ALLOW_RAW_SOCKET != 0 {
        return PASS;
    }
    let (family, proto) = unsafe { ((*ctx.sock).family, (*ctx.sock).protocol) };
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

/// Load up to `N` bytes of the packet at `off` into the event scratch; returns how many.
#[inline(always)]
fn load_request(ctx: &SkBuffContext, off: u32) -> u32 {
    let Some(s) = EVENTS_SCRATCH.get_ptr_mut(0) else { return 0 };
    // opaque: keep the arithmetic after the null check (older verifiers refuse it on
    // map_value_or_null, and LLVM would hoist it).
    let dst = unsafe { kernel::opaque(s as *mut u8).add(16) } as *mut c_void;
    let skb = ctx.skb.skb as *mut c_void;
    for n in [192u32, 96, 32, 8] {
        if unsafe { bpf_skb_load_bytes(skb, off, dst, n) } == 0 {
            return n;
        }
    }
    0
}

/// Clear-text HTTP on an agent's allowed connection.
#[cgroup_skb(egress)]
#[inline(always)]
pub fn http_egress(ctx: SkBuffContext) -> i32 {
    try_http_egress(&ctx).unwrap_or(PASS)
}

#[inline(always)]
fn try_http_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    let Some(info) = SOCKS.get_ptr_mut(&cookie) else {
        return Ok(PASS);
    };
    let info = unsafe { &mut *info };
    if info.blocked == sock_state::BLOCKED || info.blocked == sock_state::HELD {
        return Ok(REFUSE);
    }
    let v: u8 = ctx.load(0)?;
    let (ip_hl, total, proto) = match v >> 4 {
        4 => ((v as u32 & 0xf) * 4, u16::from_be(ctx.load::<u16>(2)?) as u32, ctx.load::<u8>(9)?),
        6 => (40, 40 + u16::from_be(ctx.load::<u16>(4)?) as u32, ctx.load::<u8>(6)?),
        _ => return Ok(PASS),
    };
    if proto != 6 {
        return Ok(PASS);
    }
    let seq: u32 = ctx.load(ip_hl as usize + 4)?;
    if info.blocked == sock_state::APPROVED && seq == info.held_seq {
        // The approved request (or a retransmission of it) goes out.
        return Ok(PASS);
    }
    let doff = ((ctx.load::<u8>(ip_hl as usize + 12)? >> 4) as u32) * 4;
    let off = ip_hl + doff;
    if off + 4 > total {
        return Ok(PASS);
    }
    // A request line is longer than 8 bytes; a shorter segment is no request start.
    let Ok(start) = ctx.load::<[u8; 8]>(off as usize) else {
        return Ok(PASS);
    };
    let Some(cfg) = agent::agent_cfg(info.agent) else {
        return Ok(PASS);
    };
    let st = ProcState {
        agent: cfg.slot | agent_monitor_common::AGENT_GEN_KNOWN,
        tls_token: 0,
        run_id: info.run_id,
        start_ns: info.start_ns,
    };
    let who = Who { pid: info.tgid, tid: info.tgid, ppid: 0, uid: ctx.get_socket_uid(), comm: [0; 16] };
    if info.seen == 0 {
        // A TLS handshake record: check who can see inside it, and the server name.
        if start[0] == 0x16 && start[1] == 0x03 {
            if crate::maps::tls_hooks_pending(info.tgid) {
                // A new agent process the daemon has not hooked yet: nothing would see its
                // writes. The ClientHello waits (dropped here, TCP sends it again) and is
                // checked again then; the handshake cannot finish, and no request can be
                // written, before it is hooked.
                agent::count(agent_monitor_common::stat::TLS_HANDSHAKE_HELD);
                return Ok(REFUSE);
            }
            info.seen = 1;
            return Ok(tls_first_flight(ctx, info, &st, &cfg, &who, off));
        }
        info.seen = 1;
    }
    let Some(m) = http_method(&start) else {
        return Ok(PASS);
    };
    let n = load_request(ctx, off);
    let req = match EVENTS_SCRATCH.get_ptr(0) {
        Some(s) => PathRef(unsafe { kernel::opaque(s as *const u8).add(16) }, n),
        None => PathRef::NONE,
    };
    let mut r = Rec {
        kind: kind::NET_HTTP_WRITE,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::CGROUP,
        flags: event_flags::HTTP_REQUEST,
        aux: 0,
        aux2: m as u64,
    };
    if cfg.http_allow & (1 << m) != 0 {
        if cfg.flags & agent_flags::AUDIT != 0 {
            emit_net(&st, &who, r, &info.addr, info.port, SOCK_STREAM, req);
        }
        return Ok(PASS);
    }
    let (ret, act, flags) = refuse_or_alert(&st, &cfg);
    if act == action::HELD {
        // Held: this packet and the rest wait in TCP's queue (a dropped segment is sent again
        // later); the writer is stopped as its send returns. Approval lets this segment pass.
        info.blocked = sock_state::HELD;
        info.held_seq = seq;
        if let Some(p) = HOLD_STOP.get_ptr_mut(0) {
            unsafe { *p = info.tgid };
        }
        r.aux2 |= cookie << 8;
    } else if ret == REFUSE {
        // Drop this packet and every later one: the server receives nothing of the request.
        info.blocked = sock_state::BLOCKED;
    }
    r.verdict = verdict::VIOLATION;
    r.action = act;
    r.flags |= flags;
    emit_net(&st, &who, r, &info.addr, info.port, SOCK_STREAM, req);
    Ok(ret)
}

/// The first TLS flight of an agent's connection: visibility of its plaintext, and its SNI.
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
    if unsafe { VISIBLE.get(&info.tgid) }.is_none() {
        // Nothing we hook wrote this handshake: a statically linked TLS stack, or a library we
        // do not know. Reported always; refused where the policy asks for visibility.
        let mut r = Rec { flags: event_flags::TLS_INVISIBLE, ..base };
        let mut ret = PASS;
        if cfg.flags & agent_flags::REQUIRE_HTTP_VISIBILITY != 0 {
            let (rr, act, f) = refuse_or_alert(st, cfg);
            r.verdict = verdict::VIOLATION;
            r.action = act;
            r.flags |= f;
            ret = rr;
            if ret == REFUSE {
                info.blocked = sock_state::BLOCKED;
            }
        }
        emit_net(st, who, r, &info.addr, info.port, SOCK_STREAM, PathRef::NONE);
        if ret == REFUSE {
            return ret;
        }
    }
    if info.via_host == 0 {
        return PASS;
    }
    let Some(key) = SNI_SCRATCH.get_ptr_mut(0) else { return PASS };
    let key = unsafe { &mut *key };
    let found = match server_name(ctx, off) {
        Some((name_off, name_len)) => {
            let words = key as *mut SniKey as *mut u64;
            for i in 0..(core::mem::size_of::<SniKey>() / 8) {
                unsafe { *words.add(i) = 0 };
            }
            key.agent = cfg.slot;
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
        None => return PASS,
    };
    if found && unsafe { SNI_ALLOW.get(&*key) }.is_some() {
        return PASS;
    }
    let (ret, act, f) = refuse_or_alert(st, cfg);
    if ret == REFUSE {
        info.blocked = sock_state::BLOCKED;
    }
    let r = Rec { verdict: verdict::VIOLATION, action: act, flags: f | event_flags::SNI_MISMATCH, ..base };
    emit_net(st, who, r, &info.addr, info.port, SOCK_STREAM, PathRef(key.name.as_ptr(), SNI_LEN as u32));
    ret
}

#[inline(always)]
fn be16(ctx: &SkBuffContext, at: u32) -> Option<u32> {
    ctx.load::<[u8; 2]>(at as usize).ok().map(|b| u16::from_be_bytes(b) as u32)
}

/// The server_name extension of the ClientHello starting at `off` (a TLS record): the offset
/// and length of the first host name. RFC 8446 4.1.2 and RFC 6066 3.
#[inline(always)]
fn server_name(ctx: &SkBuffContext, off: u32) -> Option<(u32, u32)> {
    const CLIENT_HELLO: u8 = 1;
    if ctx.load::<u8>(off as usize + 5).ok()? != CLIENT_HELLO {
        return None;
    }
    // record header (5), handshake header (4), legacy_version (2), random (32)
    let mut p = off + 5 + 4 + 2 + 32;
    p += 1 + ctx.load::<u8>(p as usize).ok()? as u32; // session id
    p += 2 + be16(ctx, p)?; // cipher suites
    p += 1 + ctx.load::<u8>(p as usize).ok()? as u32; // compression methods
    let end = p + 2 + be16(ctx, p)?;
    p += 2;
    for _ in 0..32 {
        if p + 4 > end {
            return None;
        }
        let ty = be16(ctx, p)?;
        let len = be16(ctx, p + 2)?;
        if ty == 0 {
            // server_name_list length (2), name_type (1), host_name length (2), host_name
            return Some((p + 4 + 5, be16(ctx, p + 4 + 3)?));
        }
        p += 4 + len;
    }
    None
}

/// Record that the current agent process does TLS through a hooked library.
#[inline(always)]
fn mark_visible() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PROCS.get(&tgid) }.is_some() {
        let one: u32 = 1;
        let _ = VISIBLE.insert(&tgid, &one, 0);
    }
}

/// `int SSL_do_handshake(SSL *s)` (also reached through `SSL_connect`).
#[uprobe]
#[inline(always)]
pub fn ssl_do_handshake(_ctx: ProbeContext) -> u32 {
    mark_visible();
    0
}

/// `int gnutls_handshake(gnutls_session_t session)`
#[uprobe]
#[inline(always)]
pub fn gnutls_handshake(_ctx: ProbeContext) -> u32 {
    mark_visible();
    0
}

/// The plaintext handed to a TLS library, before it is encrypted.
#[inline(always)]
fn tls_write(buf: *const u8, len: u64) {
    let Some((st, cfg)) = current_agent() else {
        return;
    };
    mark_visible();
    if reap_if_killed(&st) || len < 4 {
        return;
    }
    let mut start = [0u8; 8];
    let n = if len < 8 { len as u32 } else { 8 };
    unsafe { raw_read_user(start.as_mut_ptr() as *mut c_void, n & 7 | n & 8, buf as *const c_void) };
    let Some(m) = http_method(&start) else {
        return;
    };
    let Some(s) = EVENTS_SCRATCH.get_ptr_mut(0) else { return };
    let want = if len > 192 { 192 } else { len as u32 };
    let got = unsafe {
        raw_read_user(
            kernel::opaque(s as *mut u8).add(16) as *mut c_void,
            kernel::opaque(want) & 255,
            buf as *const c_void,
        )
    };
    let req = PathRef(unsafe { kernel::opaque(s as *const u8).add(16) }, if got == 0 { want } else { 0 });
    let mut r = Rec {
        kind: kind::NET_HTTP_WRITE,
        verdict: verdict::ALLOWED,
        action: action::NONE,
        layer: layer::UPROBE,
        flags: event_flags::HTTP_REQUEST,
        aux: 0,
        aux2: m as u64,
    };
    if cfg.http_allow & (1 << m) != 0 {
        if cfg.flags & agent_flags::AUDIT != 0 {
            emit(&st, &r, PathRef::NONE, req);
        }
        return;
    }
    // A uprobe cannot make the call fail: deny falls back to kill, before the call encrypts
    // or sends a byte. Hold stops the process here, before the call runs: continued on
    // approval (the request goes out once), killed on denial.
    if cfg.action == policy_action::HOLD {
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGSTOP) };
        r.verdict = verdict::VIOLATION;
        r.action = action::HELD;
        emit(&st, &r, PathRef::NONE, req);
        return;
    }
    let (a, f) = agent::enforce_after(&st, &cfg);
    r.verdict = verdict::VIOLATION;
    r.action = a;
    r.flags |= f & !event_flags::AFTER_EFFECT;
    emit(&st, &r, PathRef::NONE, req);
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`
#[uprobe]
#[inline(always)]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    tls_write(ctx.arg::<*const u8>(1).unwrap_or(core::ptr::null()), ctx.arg::<u64>(2).unwrap_or(0) as u32 as u64);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`
#[uprobe]
#[inline(always)]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    tls_write(ctx.arg::<*const u8>(1).unwrap_or(core::ptr::null()), ctx.arg::<u64>(2).unwrap_or(0));
    0
}

/// `ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t data_size)`
#[uprobe]
#[inline(always)]
pub fn gnutls_record_send(ctx: ProbeContext) -> u32 {
    tls_write(ctx.arg::<*const u8>(1).unwrap_or(core::ptr::null()), ctx.arg::<u64>(2).unwrap_or(0));
    0
}

/// `connect(fd, addr, len)` to a Unix socket: `ipc.connect` unless `unix:PATH` is allowed.
/// Decided here, acted on at `sys_exit_connect` only if the connect succeeded (a resolver
/// probing an nscd socket that does not exist reaches nothing). Tracepoint layer: a kill lands
/// after the connect, before any message.
#[tracepoint]
#[inline(always)]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_unix_connect(&ctx);
    0
}

#[inline(always)]
fn try_unix_connect(ctx: &TracePointContext) -> Result<(), i64> {
    const AF_UNIX: u16 = 1;
    let Some((st, cfg)) = current_agent() else {
        return Ok(());
    };
    if reap_if_killed(&st) {
        return Ok(());
    }
    let sa = crate::kernel::tp_arg(ctx, 1);
    let family: u16 = unsafe { bpf_probe_read_user(sa as *const u16) }.map_err(|e| e as i64)?;
    if family != AF_UNIX {
        return Ok(());
    }
    let s = agent::scratch().ok_or(-1i64)?;
    unsafe {
        let key: *mut UnixKey = (*s).buf.as_mut_ptr() as *mut UnixKey;
        let words = key as *mut u64;
        for i in 0..((4 + UNIX_PATH_LEN) / 8 + 1) {
            *words.add(i) = 0;
        }
        (*key).agent = cfg.slot;
        let sun_path = (sa + 2) as *const u8;
        let first: u8 = bpf_probe_read_user(sun_path).unwrap_or(0);
        let p = (*key).path.as_mut_ptr();
        if first == 0 {
            // Abstract socket: shown and matched as "@name".
            *p = b'@';
            bpf_probe_read_user_str(
                p.add(1) as *mut c_void,
                (UNIX_PATH_LEN - 1) as u32,
                sun_path.add(1) as *const c_void,
            );
        } else {
            bpf_probe_read_user_str(p as *mut c_void, UNIX_PATH_LEN as u32, sun_path as *const c_void);
        }
        let ok = UNIX_ALLOW.get(&*key).is_some();
        if ok && cfg.flags & agent_flags::AUDIT == 0 {
            return Ok(());
        }
        let op = &mut (*s).op;
        raw_read_kernel(op.p1.as_mut_ptr() as *mut c_void, UNIX_PATH_LEN as u32, p as *const c_void);
        op.p1[UNIX_PATH_LEN] = 0;
        op.len1 = UNIX_PATH_LEN as u32;
        op.len2 = 0;
        op.flags = 0;
        op.kind = kind::IPC_CONNECT;
        op.ok = ok as u32;
        op.aux = 0;
        let _ = PENDING_OPS.insert(&bpf_get_current_pid_tgid(), op, 0);
    }
    Ok(())
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
