//! Read-only HTTP, by construction: the parser every agent HTTP stream goes through (the
//! payload of an allowed clear-text connection, and the plaintext handed to a hooked TLS
//! library).
//!
//! The stream must parse as a sequence of requests, each starting with a method token the
//! destination takes followed by a space (nothing before it: no CRLF, no unknown or lowercase
//! token, no HTTP/2 preface in clear text), its header block ending with CRLF CRLF, and a body
//! only where the method writes and the destination takes it, framed by `Content-Length`
//! (`Transfer-Encoding` is refused: its framing is not followed). Inside TLS an HTTP/2
//! connection is followed frame by frame: a request is read-only only if its `:method` is the
//! static-table GET (`0x82`); a DATA frame, or a header block the parser cannot read without the
//! connection's dynamic table, is a write. Whatever does not parse is a write, never a pass.
//!
//! The parser keeps its state per connection ([`HttpParse`]), so a method split over two
//! segments or writes, and every request of a keep-alive or pipelined connection, is judged.
//! It reads the stream through a per-CPU window and walks it one step per `bpf_loop` iteration
//! (a step is a request start, one header byte, or a run of body or frame bytes).
use agent_monitor_common::{
    http_match, http_method, http_mode, http_verdict, HttpParse, PathAllowData, HOST_LEN, HTTP_METHODS,
};
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user as raw_read_user, bpf_skb_load_bytes},
    maps::lpm_trie::Key,
};
use core::ffi::c_void;

use crate::{
    kernel::opaque,
    maps::{HttpScratch, HOST_DEST, HTTP_SCRATCH, HTTP_WIN, PATH_ALLOW},
};

/// Where the stream is.
#[derive(Clone, Copy)]
pub enum Src {
    /// A packet (`__sk_buff *`) and the payload's offset in it.
    Skb(*mut c_void, u32),
    /// Process memory (a TLS library's plaintext buffer).
    User(u64),
}

/// What a destination takes.
#[derive(Clone, Copy)]
pub struct Takes {
    /// Methods allowed (bits of [`HTTP_METHODS`]).
    pub methods: u32,
    /// Methods that write: allowed a body, and (with `rule`) only under the rule's paths.
    pub writes: u32,
    /// Methods allowed only under the `PATH_ALLOW` prefixes of `rule`.
    pub path_methods: u32,
    pub rule: u32,
    /// Inside TLS: an HTTP/2 connection may be followed.
    pub h2: bool,
    /// Record the first violation and go on parsing as if it had been let through (`alert`,
    /// `hold`: the request goes out, or may, and the parser must stay in step with the stream).
    pub record_only: bool,
    /// Inside TLS, where the connection's destination is not known: a request the agent's
    /// methods do not take is judged by the destination its `Host:` header names (`HOST_DEST`,
    /// for the agent's slot `agent`), or refused.
    pub by_host: bool,
    pub agent: u32,
}

/// What the parser found: an [`http_verdict`], the method (bit) it concerns, and the offset in
/// the stream of the request it concerns; `lost`: the parser could not stay in step (a violation
/// it cannot parse past, in `record_only`): the connection cannot be followed further.
#[derive(Clone, Copy)]
pub struct Found {
    pub verdict: u32,
    pub method: u32,
    pub at: u32,
    pub lost: bool,
    /// The `DestRule::bind` of the destination a `Host:` header allowed a write for (0: none).
    pub host_bind: u32,
}

/// The methods that never write: GET, HEAD, OPTIONS (bits 0..3 of [`HTTP_METHODS`]).
pub const READ_ONLY: u32 = 0b111;

/// Steps a call may take: enough for the header bytes a request may have (`MAX_HEADER`) and
/// then some; a write that needs more is refused (`TOO_LONG`).
const MAX_STEPS: u32 = 20_000;
/// Header block bytes of one request the parser follows.
const MAX_HEADER: u32 = 16 * 1024;

/// Scratch slot: the packet path and the TLS path never share one (a cgroup_skb program may run
/// in softirq on top of a uprobe program on the same CPU).
pub const SLOT_SKB: u32 = 0;
pub const SLOT_TLS: u32 = 1;

/// What the loop's steps need that is not in the scratch map: the packet (a context pointer
/// the verifier follows through this stack slot).
#[repr(C)]
struct LoopCtx {
    skb: *mut c_void,
    /// The scratch, handed to the loop: the steps write it, so the compiler must not keep any
    /// of it in registers across the loop, nor move a store past it (without this it takes
    /// the caller's `&mut` for the only way to that memory).
    sc: *mut HttpScratch,
}

/// Parse `len` bytes of the stream at `src` from state `st` (updated). One `bpf_loop`: each
/// step is a request start, one header byte, a run of body or frame bytes skipped unread, or
/// the next window of the stream read in.
#[inline(always)]
pub fn parse(slot: u32, src: Src, len: u32, st: &mut HttpParse, takes: &Takes) -> Found {
    let Some(sc) = HTTP_SCRATCH.get_ptr_mut(slot) else {
        return Found { verdict: http_verdict::UNREADABLE, method: 0, at: 0, lost: true, host_bind: 0 };
    };
    let sc = unsafe { &mut *sc };
    sc.host_bind = 0;
    sc.state = *st;
    sc.takes_methods = takes.methods;
    sc.takes_writes = takes.writes;
    sc.takes_paths = takes.path_methods;
    sc.rule = takes.rule;
    sc.h2 = takes.h2 as u32;
    sc.record_only = takes.record_only as u32;
    sc.by_host = takes.by_host as u32;
    sc.host.agent = takes.agent;
    sc.pending = 0;
    sc.dest_writes = 0;
    sc.first = http_verdict::OK;
    sc.verdict = http_verdict::OK;
    sc.at = 0;
    sc.p = 0;
    sc.i = 0;
    sc.n = 0;
    sc.len = len;
    let mut lc = LoopCtx { skb: core::ptr::null_mut(), sc: sc as *mut HttpScratch };
    match src {
        Src::Skb(skb, off) => {
            lc.skb = skb;
            sc.base = off as u64;
            sc.user = 0;
        }
        Src::User(ptr) => {
            sc.base = ptr;
            sc.user = 1;
        }
    }
    let f = if slot == SLOT_SKB { step_skb as *mut c_void } else { step_tls as *mut c_void };
    unsafe { bpf_loop(MAX_STEPS, f, core::hint::black_box(&mut lc as *mut LoopCtx) as *mut c_void, 0) };
    let sc = unsafe { &mut *core::ptr::read_volatile(&lc.sc) };
    let mut hard = sc.verdict;
    let mut hard_at = sc.at;
    if hard == http_verdict::OK && sc.p + sc.i < len {
        hard = http_verdict::TOO_LONG;
        hard_at = sc.p + sc.i;
    }
    if hard == http_verdict::OK && sc.pending != 0 {
        // A request waiting for its `Host:` header when the write ended: its destination is
        // not known (the header block was split over writes). Refused.
        let at = sc.pending_at;
        sc.pending = 0;
        if sc.record_only != 0 {
            if sc.first == http_verdict::OK {
                sc.first = http_verdict::METHOD;
                sc.first_at = at;
                sc.first_method = sc.state.method as u32;
            }
        } else {
            hard = http_verdict::METHOD;
            hard_at = at;
            sc.method = sc.state.method as u32;
        }
    }
    *st = sc.state;
    if sc.first != http_verdict::OK {
        // The first violation, recorded while the parser went on.
        return Found {
            verdict: sc.first,
            method: sc.first_method,
            at: sc.first_at,
            lost: hard != http_verdict::OK,
            host_bind: sc.host_bind,
        };
    }
    Found { verdict: hard, method: sc.method, at: hard_at, lost: hard != http_verdict::OK, host_bind: sc.host_bind }
}

/// A violation at `at`: stop, or (`record_only`) record it and go on as if it had been let
/// through. Returns whether to go on.
#[inline(always)]
fn violate(sc: &mut HttpScratch, verdict: u32, at: u32) -> bool {
    if sc.record_only != 0 {
        if sc.first == http_verdict::OK {
            sc.first = verdict;
            sc.first_at = at;
            sc.first_method = sc.method;
        }
        return true;
    }
    sc.verdict = verdict;
    sc.at = at;
    false
}

extern "C" fn step_skb(_index: u64, ctx: *mut c_void) -> i64 {
    step::<false>(SLOT_SKB, ctx)
}

extern "C" fn step_tls(_index: u64, ctx: *mut c_void) -> i64 {
    step::<true>(SLOT_TLS, ctx)
}

/// One step of the parser. Returns 1 to stop (a verdict, or the end of the stream). `USER`: the
/// stream is process memory (a uprobe, which may not read packets), else a packet.
#[inline(always)]
fn step<const USER: bool>(slot: u32, ctx: *mut c_void) -> i64 {
    let Some(sc) = HTTP_SCRATCH.get_ptr_mut(slot) else {
        return 1;
    };
    let sc = unsafe { &mut *sc };
    if sc.i >= sc.n {
        return next_window::<USER>(sc, ctx);
    }
    let i = opaque(sc.i) & (HTTP_WIN as u32 - 1);
    let n = sc.n;
    match sc.state.mode {
        http_mode::EXPECT_REQUEST => request_start::<USER>(sc, i, n),
        http_mode::IN_HEADERS => {
            header_byte(sc, i);
            if sc.state.line == 0 && sc.p + i > sc.header_start + MAX_HEADER {
                return stop(sc, http_verdict::TOO_LONG, i);
            }
            (sc.verdict != http_verdict::OK) as i64
        }
        http_mode::BODY | http_mode::H2 if sc.state.skip > 0 => {
            // Body or frame payload inside the window: skip it.
            let k = if sc.state.skip > n - i { n - i } else { sc.state.skip };
            sc.state.skip -= k;
            sc.i = i + k;
            if sc.state.skip == 0 && sc.state.mode == http_mode::BODY {
                sc.state.mode = http_mode::EXPECT_REQUEST;
            }
            0
        }
        http_mode::H2 => h2_step(sc, i, n),
        _ => stop(sc, http_verdict::NOT_A_REQUEST, i),
    }
}

/// The window is used up: move past it; skip a body or frame payload without reading it; or
/// read the next window. Returns 1 at the end of the stream or when it cannot be read.
#[inline(always)]
fn next_window<const USER: bool>(sc: &mut HttpScratch, ctx: *mut c_void) -> i64 {
    sc.p += sc.i;
    sc.i = 0;
    sc.n = 0;
    if sc.p >= sc.len {
        return 1;
    }
    let rest = sc.len - sc.p;
    let mode = sc.state.mode;
    if (mode == http_mode::BODY || mode == http_mode::H2) && sc.state.skip > 0 {
        let k = if sc.state.skip > rest { rest } else { sc.state.skip };
        sc.state.skip -= k;
        sc.p += k;
        if sc.state.skip == 0 && mode == http_mode::BODY {
            sc.state.mode = http_mode::EXPECT_REQUEST;
        }
        return 0;
    }
    let want = if rest > HTTP_WIN as u32 { HTTP_WIN as u32 } else { rest };
    // ((n - 1) & (WIN - 1)) + 1 is n for 1..=WIN, on the register the verifier checks.
    let n = ((opaque(want) - 1) & (HTTP_WIN as u32 - 1)) + 1;
    let dst = sc.buf.as_mut_ptr() as *mut c_void;
    let loaded = unsafe {
        if USER {
            raw_read_user(dst, n, (sc.base + sc.p as u64) as *const c_void)
        } else {
            let skb = (*(ctx as *const LoopCtx)).skb;
            bpf_skb_load_bytes(skb, sc.base as u32 + sc.p, dst, n)
        }
    };
    if loaded != 0 {
        return stop(sc, http_verdict::UNREADABLE, 0);
    }
    sc.n = n;
    sc.last = (sc.p + n >= sc.len) as u32;
    0
}

/// More bytes are needed than the window holds from `i`: read the window again from `i`, or, at
/// the end of what was written, the request start is cut (`PO` then `ST`).
#[inline(always)]
fn need_more(sc: &mut HttpScratch, i: u32) -> i64 {
    if sc.last != 0 || i == 0 {
        return stop(sc, http_verdict::SPLIT, i);
    }
    // The window starts again at `i`.
    sc.p += i;
    sc.i = 0;
    sc.n = 0;
    0
}

#[inline(always)]
fn stop(sc: &mut HttpScratch, verdict: u32, at: u32) -> i64 {
    sc.verdict = verdict;
    sc.at = at;
    1
}

#[inline(always)]
fn byte(sc: &HttpScratch, i: u32) -> u8 {
    // Bounded by a comparison, not a mask: HTTP_WIN + 63 (0x83f) as a mask would clear bits
    // 6..10 and read byte 91 as byte 27 (every byte of a window past the 64th was misread
    // until this was found, by a Host: header parsed at the wrong place).
    let k = opaque(i) as usize;
    let k = if k < HTTP_WIN + 64 { k } else { HTTP_WIN + 63 };
    sc.buf[k]
}

/// The length, with its space, of each method token of [`HTTP_METHODS`] (a table of lengths:
/// BPF has no relocations for pointers inside read-only data).
const TOKEN_LEN: [u8; 9] = [4, 5, 8, 5, 4, 6, 7, 8, 6];
const _: () = {
    let mut k = 0;
    while k < 9 {
        assert!(HTTP_METHODS[k].len() == TOKEN_LEN[k] as usize);
        k += 1;
    }
};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[inline(always)]
fn request_start<const USER: bool>(sc: &mut HttpScratch, i: u32, n: u32) -> i64 {
    if n - i < 8 {
        // Not enough bytes in this window to see the method: read again from here, or, at the
        // end of what was written, a request cut before its method (`PO` then `ST`).
        return need_more(sc, i);
    }
    let mut tok = [0u8; 8];
    for (k, t) in tok.iter_mut().enumerate() {
        *t = byte(sc, i + k as u32);
    }
    let Some(m) = http_method(&tok) else {
        if sc.h2 != 0 && tok == *b"PRI * HT" {
            if n - i < 24 {
                return need_more(sc, i);
            }
            for (k, b) in H2_PREFACE.iter().enumerate() {
                if byte(sc, i + k as u32) != *b {
                    return stop(sc, http_verdict::NOT_A_REQUEST, i);
                }
            }
            sc.state.mode = http_mode::H2;
            sc.state.skip = 0;
            sc.i = i + 24;
            return 0;
        }
        return stop(sc, http_verdict::NOT_A_REQUEST, i);
    };
    sc.method = m;
    let bit = 1u32 << (m & 15);
    let toklen = TOKEN_LEN[(m as usize) % TOKEN_LEN.len()] as u32;
    sc.dest_writes = 0;
    // Inside TLS, a method the agent does not take: the destination its `Host:` header names
    // decides, with that destination's paths.
    let by_host = sc.takes_methods & bit == 0 && sc.by_host != 0;
    if sc.takes_methods & bit == 0 && !by_host && !violate(sc, http_verdict::METHOD, i) {
        return 1;
    }
    if by_host || sc.takes_paths & bit != 0 {
        // The path must be seen whole enough to judge (up to HTTP_PATH_LEN bytes). One scan
        // for both uses: each copy of it is verified on every path through the step.
        if n - i < toklen + PATH_SCAN as u32 && sc.last == 0 {
            return need_more(sc, i);
        }
        let (len, bad) = keep_path::<USER>(sc, i + toklen, n);
        if bad == PATH_PAST_WINDOW {
            // Read the window again from the request's start; at the end of what was written,
            // or with the window full of it, the path cannot be seen whole: refused.
            return need_more(sc, i);
        }
        if by_host {
            sc.pending = 1;
            sc.pending_at = i;
            sc.path_len = len;
            sc.host.name = [0; HOST_LEN];
            sc.host_len = 0;
            sc.host_port = 0;
            sc.host_in_port = 0;
        } else if !path_allowed(sc, sc.rule, len) && !violate(sc, http_verdict::PATH, i) {
            return 1;
        }
    }
    sc.state.mode = http_mode::IN_HEADERS;
    sc.header_start = sc.p + i;
    sc.state.crlf = 0;
    sc.state.line = 0;
    sc.state.matching = 0;
    sc.state.method = m as u8;
    sc.state.length = 0;
    sc.i = i + toklen;
    0
}

/// The request target at `at` (up to a space) into the `PATH_ALLOW` key's path bytes: its
/// length (0 if its path climbs (`..`, `%2e`), is empty, or runs past what can be seen), and
/// why it is 0 (`path_bad`).
///
/// One byte per iteration of a second `bpf_loop` ([`path_step`]): a scan unrolled in the step
/// was most of what the verifier walked (100k of 169k instructions; on Linux 6.1 and 7.x the
/// TLS programs did not load in a 1 GiB guest).
#[inline(always)]
fn keep_path<const USER: bool>(sc: &mut HttpScratch, at: u32, n: u32) -> (u32, u32) {
    // Stored through volatile writes, for the same reason as the loads below: the steps read
    // them through their own lookup of the scratch.
    unsafe {
        use core::ptr::write_volatile as wv;
        wv(&mut sc.path_at, at);
        wv(&mut sc.path_n, n);
        wv(&mut sc.path_prev, 0);
        wv(&mut sc.path_bad, 0);
        wv(&mut sc.path_len, 0);
    }
    let f = if USER { path_step_tls as *mut c_void } else { path_step_skb as *mut c_void };
    unsafe { bpf_loop(PATH_CLIMB_SCAN, f, core::ptr::null_mut(), 0) };
    // Read back through volatile loads: the compiler takes `sc` for the only way to that memory
    // and would keep what it stored before the loop.
    let (len, bad) = unsafe { (core::ptr::read_volatile(&sc.path_len), core::ptr::read_volatile(&sc.path_bad)) };
    if bad != 0 {
        (0, bad)
    } else {
        (len, 0)
    }
}

/// `path_bad`: the path ran past the window (read it again from the request, if it can be).
const PATH_PAST_WINDOW: u32 = 2;

/// Bytes of a request target searched for a climbing path: its path (before `?` or `#`) must
/// end within them, and within what the window holds.
const PATH_CLIMB_SCAN: u32 = 1024;

extern "C" fn path_step_skb(k: u64, _ctx: *mut c_void) -> i64 {
    path_step(SLOT_SKB, k as u32)
}

extern "C" fn path_step_tls(k: u64, _ctx: *mut c_void) -> i64 {
    path_step(SLOT_TLS, k as u32)
}

/// Byte `k` of the request target: kept (the first `PATH_SCAN`), and checked for `..` and
/// percent-encoded bytes of the 0x2X range ('.', '/') in the path. Returns 1 to stop.
#[inline(always)]
fn path_step(slot: u32, k: u32) -> i64 {
    let Some(sc) = HTTP_SCRATCH.get_ptr_mut(slot) else {
        return 1;
    };
    let sc = unsafe { &mut *sc };
    let pos = sc.path_at + k;
    if pos >= sc.path_n || k + 1 >= PATH_CLIMB_SCAN {
        // The path runs on past what can be seen (the window: 2; the scan: 1): it may climb
        // there.
        if sc.path_prev != b'?' as u32 {
            sc.path_bad = if pos >= sc.path_n { PATH_PAST_WINDOW } else { 1 };
        }
        return 1;
    }
    let b = byte(sc, pos);
    if b == b' ' || b == b'\r' || b == b'\n' {
        return 1;
    }
    if b < 0x21 || b == 0x7f || b == b'\\' || b == b'#' {
        // Never in a request target (RFC 9112): a tab or another control byte that a lenient
        // server drops (Node's llhttp takes `\t`; WHATWG URL parsing removes it, so `.\t.` is
        // `..`), a backslash some servers read as `/`, a fragment. Refused, in the query too.
        sc.path_bad = 1;
        return 1;
    }
    if sc.path_prev == b'?' as u32 {
        // In the query: no path to climb; only kept.
        if k < PATH_SCAN as u32 {
            sc.path.path[k as usize & (PATH_SCAN - 1)] = b;
            sc.path_len = k + 1;
        }
        return 0;
    }
    let prev = sc.path_prev as u8;
    if (b == b'.' && prev == b'.') || (prev == b'%' && b == b'2') {
        // `..` anywhere in the path, or a percent-encoded byte of the 0x2X range: a path that
        // could lead out of the prefix once the server decodes and folds it.
        sc.path_bad = 1;
        return 1;
    }
    sc.path_prev = if b == b'?' { b'?' as u32 } else { b as u32 };
    if k < PATH_SCAN as u32 {
        sc.path.path[k as usize & (PATH_SCAN - 1)] = b;
        sc.path_len = k + 1;
    }
    0
}

/// The destination a pending request's `Host:` header names, for the agent: its rule checks
/// the method and the path. Returns the verdict (`OK`, `METHOD`, `PATH`); on `OK`, the methods
/// that write there are in `dest_writes`.
#[inline(always)]
fn judge_by_host(sc: &mut HttpScratch) -> u32 {
    let bit = 1u32 << (sc.state.method & 15);
    if sc.host_len == 0 || sc.host_len > HOST_LEN as u32 {
        return http_verdict::METHOD;
    }
    // The rule for the port written in the header (or HTTPS's), else the name's any-port rule.
    sc.host.port = if sc.host_in_port != 0 { sc.host_port } else { 443 };
    let d = match unsafe { HOST_DEST.get(&sc.host) } {
        Some(d) => *d,
        None => {
            sc.host.port = 0;
            match unsafe { HOST_DEST.get(&sc.host) } {
                Some(d) => *d,
                None => return http_verdict::METHOD,
            }
        }
    };
    let methods = if d.dest.methods != 0 { d.dest.methods } else { sc.takes_methods };
    if methods & bit == 0 {
        return http_verdict::METHOD;
    }
    // The `Host:` header names the destination only for a target in origin form (`/path`): an
    // absolute-form target (`https://other/path`) overrides it at the server (RFC 9112 3.2.2),
    // and a shared front end routes by it.
    if sc.path_len == 0 || sc.path.path[0] != b'/' {
        return http_verdict::PATH;
    }
    if d.dest.path_methods & bit != 0 && !path_allowed(sc, d.dest.rule, sc.path_len) {
        return http_verdict::PATH;
    }
    // The write may leave only on a connection to this destination (`TLS_PENDING`): one call
    // writes to one connection, so to one destination.
    let bind = d.dest.bind as u32;
    if sc.host_bind != 0 && sc.host_bind != bind {
        return http_verdict::ELSEWHERE;
    }
    sc.host_bind = bind;
    sc.dest_writes = methods & !READ_ONLY;
    http_verdict::OK
}

/// One byte of a `Host:` value: the name (lower case) and, after a ':' outside `[...]`, the
/// port. Too long, or a port that is not digits, leaves it unusable (`HOST_LEN + 1`).
#[inline(always)]
fn host_byte(sc: &mut HttpScratch, b: u8) {
    let len = sc.host_len;
    if len > HOST_LEN as u32 {
        return;
    }
    if (b == b' ' || b == b'\t') && len == 0 && sc.host_in_port == 0 {
        return;
    }
    if sc.host_in_port != 0 {
        if b.is_ascii_digit() && sc.host_port < 100_000 {
            sc.host_port = sc.host_port * 10 + (b - b'0') as u32;
        } else if b != b' ' && b != b'\t' {
            sc.host_len = HOST_LEN as u32 + 1;
        }
        return;
    }
    let bracket = sc.host.name[0] == b'[';
    let last = if len > 0 { sc.host.name[((len - 1) as usize) & (HOST_LEN - 1)] } else { 0 };
    if b == b':' && (!bracket || last == b']') {
        sc.host_in_port = 1;
        return;
    }
    if b == b' ' || b == b'\t' {
        return;
    }
    if len >= HOST_LEN as u32 - 1 {
        sc.host_len = HOST_LEN as u32 + 1;
        return;
    }
    sc.host.name[(len as usize) & (HOST_LEN - 1)] = if b.is_ascii_uppercase() { b + 32 } else { b };
    sc.host_len = len + 1;
}

/// Request path bytes compared with the rule's prefixes (a longer prefix never matches).
pub const PATH_SCAN: usize = agent_monitor_common::HTTP_PATH_SCAN;

/// Is the request target kept by [`keep_path`] (`len` bytes, 0 if it climbs) under one of
/// `rule`'s path prefixes?
#[inline(always)]
fn path_allowed(sc: &mut HttpScratch, rule: u32, len: u32) -> bool {
    if len == 0 || len > PATH_SCAN as u32 {
        return false;
    }
    sc.path.rule = rule;
    // The trie key is `{ prefix_len, data }`: the scratch keeps them adjacent.
    sc.path_prefix = 32 + len * 8;
    let key = (&sc.path_prefix as *const u32) as *const Key<PathAllowData>;
    unsafe { PATH_ALLOW.get(&*key) }.is_some()
}

/// CR LF CR LF.
const END: [u8; 4] = *b"\r\n\r\n";
const CONTENT_LENGTH: &[u8; 15] = b"content-length:";
const HOST: &[u8; 5] = b"host:";
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";

/// One byte of a header block: the end of the block, and the two header names that frame a
/// body.
#[inline(always)]
fn header_byte(sc: &mut HttpScratch, i: u32) {
    let b = byte(sc, i);
    sc.i = i + 1;
    let c = (sc.state.crlf & 3) as usize;
    // Every line ends with CR LF: a bare LF, or a CR not followed by LF, ends a line for a
    // lenient server and not here (a request could hide in what this parser takes for header
    // bytes). Refused.
    if (b == b'\n') != (c == 1 || c == 3) {
        sc.verdict = http_verdict::FRAMING;
        sc.at = i;
        return;
    }
    sc.state.crlf = if b == END[c] {
        sc.state.crlf + 1
    } else if b == b'\r' {
        1
    } else {
        0
    };
    if sc.state.crlf >= 4 {
        end_of_headers(sc, i);
        return;
    }
    if sc.state.matching & http_match::HOST_VALUE != 0 && b != b'\r' && b != b'\n' {
        host_byte(sc, b);
        return;
    }
    let host = if sc.pending != 0 { http_match::HOST } else { 0 };
    let st = &mut sc.state;
    if b == b'\n' {
        st.line = 0;
        st.matching = (st.matching & (http_match::HAS_TRANSFER_ENCODING | http_match::HAS_LENGTH))
            | http_match::CONTENT_LENGTH
            | http_match::TRANSFER_ENCODING
            | host;
        return;
    }
    if b == b'\r' {
        st.matching &= !http_match::HOST_VALUE;
    }
    if st.matching & http_match::LENGTH_DIGITS != 0 {
        if b.is_ascii_digit() {
            st.length = st.length.saturating_mul(10).saturating_add((b - b'0') as u32).min(1 << 30);
        } else if b != b' ' && b != b'\t' && b != b'\r' {
            // Not a length: the body's framing is unknown.
            st.matching |= http_match::HAS_TRANSFER_ENCODING;
            st.matching &= !http_match::LENGTH_DIGITS;
        }
        if b == b'\r' {
            st.matching &= !http_match::LENGTH_DIGITS;
        }
        return;
    }
    let line = st.line as usize;
    if line < TRANSFER_ENCODING.len() {
        // Case folds for letters only (bit 0x40 set), without a branch in the parser's step:
        // `0x1a | 0x20` is `:` and `0x0d | 0x20` is `-`, and a name the parser matched must be
        // the name a server matches. (The names are lower-case letters, `-` and `:`.)
        let lb = b | ((b >> 1) & 0x20);
        if st.matching & http_match::CONTENT_LENGTH != 0 {
            if line >= CONTENT_LENGTH.len() || lb != CONTENT_LENGTH[line % CONTENT_LENGTH.len()] {
                st.matching &= !http_match::CONTENT_LENGTH;
            } else if line == CONTENT_LENGTH.len() - 1 {
                st.matching &= !http_match::CONTENT_LENGTH;
                if st.matching & http_match::HAS_LENGTH != 0 {
                    // A second `Content-Length`: a server may take either; the body's end
                    // is not known.
                    st.matching |= http_match::HAS_TRANSFER_ENCODING;
                }
                st.matching |= http_match::LENGTH_DIGITS | http_match::HAS_LENGTH;
                st.length = 0;
            }
        }
        if st.matching & http_match::HOST != 0 {
            if line >= HOST.len() || lb != HOST[line % HOST.len()] {
                st.matching &= !http_match::HOST;
            } else if line == HOST.len() - 1 {
                st.matching &= !http_match::HOST;
                st.matching |= http_match::HOST_VALUE;
            }
        }
        if st.matching & http_match::TRANSFER_ENCODING != 0 {
            if lb != TRANSFER_ENCODING[line % TRANSFER_ENCODING.len()] {
                st.matching &= !http_match::TRANSFER_ENCODING;
            } else if line == TRANSFER_ENCODING.len() - 1 {
                st.matching &= !http_match::TRANSFER_ENCODING;
                st.matching |= http_match::HAS_TRANSFER_ENCODING;
            }
        }
        st.line += 1;
    }
}

#[inline(always)]
fn end_of_headers(sc: &mut HttpScratch, i: u32) {
    let bit = 1u32 << (sc.state.method & 15);
    sc.method = sc.state.method as u32;
    if sc.pending != 0 {
        sc.pending = 0;
        let v = judge_by_host(sc);
        let at = sc.pending_at;
        if v != http_verdict::OK && !violate(sc, v, at) {
            return;
        }
    }
    // (record_only: a request let through may write)
    let writes = (sc.takes_writes | sc.dest_writes) & bit != 0 || sc.record_only != 0 && sc.first != http_verdict::OK;
    if sc.state.matching & http_match::HAS_TRANSFER_ENCODING != 0 {
        // A body whose end the parser cannot find: it cannot follow the stream past it.
        sc.verdict = http_verdict::BODY;
        sc.at = i;
        return;
    }
    if sc.state.length > 0 && !writes && !violate(sc, http_verdict::BODY, i) {
        // A body on a request that does not write.
        return;
    }
    let st = &mut sc.state;
    st.crlf = 0;
    st.matching = 0;
    if st.length > 0 {
        st.mode = http_mode::BODY;
        st.skip = st.length;
    } else {
        st.mode = http_mode::EXPECT_REQUEST;
    }
}

/// HTTP/2 frames (RFC 9113 4.1): a 9-byte header (length 24 bits, type, flags, stream id),
/// then the payload.
#[inline(always)]
fn h2_step(sc: &mut HttpScratch, i: u32, n: u32) -> i64 {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const CONTINUATION: u8 = 9;
    if sc.state.skip > 0 {
        let k = if sc.state.skip > n - i { n - i } else { sc.state.skip };
        sc.state.skip -= k;
        sc.i = i + k;
        return 0;
    }
    // A frame header, and for HEADERS the start of its block, must be in the window.
    if n - i < 9 + H2_BLOCK && sc.last == 0 {
        return need_more(sc, i);
    }
    if n - i < 9 {
        return stop(sc, http_verdict::SPLIT, i);
    }
    let flen = (byte(sc, i) as u32) << 16 | (byte(sc, i + 1) as u32) << 8 | byte(sc, i + 2) as u32;
    let ty = byte(sc, i + 3);
    let flags = byte(sc, i + 4);
    // A frame longer than the protocol's initial SETTINGS_MAX_FRAME_SIZE: a server takes it
    // only if it raised that limit, which the parser cannot see, and a payload skipped unread
    // is where a request could hide (an HTTP/1.1 server reading on past a preface it ignored).
    if flen > H2_MAX_FRAME && !violate(sc, http_verdict::H2, i) {
        return 1;
    }
    match ty {
        DATA | CONTINUATION => {
            if !violate(sc, http_verdict::H2, i) {
                return 1;
            }
        }
        HEADERS => {
            if !h2_read_only(sc, i + 9, n, flen, flags) && !violate(sc, http_verdict::H2, i) {
                return 1;
            }
        }
        _ => {}
    }
    sc.state.skip = flen;
    sc.i = i + 9;
    0
}

/// RFC 9113 6.5.2: the initial `SETTINGS_MAX_FRAME_SIZE`, the largest frame a client may send
/// until the server says otherwise.
const H2_MAX_FRAME: u32 = 16_384;

/// Bytes of a HEADERS block the decoder reads: the pseudo-header fields come first, and
/// `:method` among them.
const H2_BLOCK: u32 = 48;

/// Does the header block at `at` (of a frame of `flen` bytes with `flags`) ask for a GET the
/// destination takes? Decodes the first fields with the static table only (RFC 7541): an indexed
/// `:method: GET` (`0x82`) is read-only; any other method, a field named from the dynamic table
/// or a new name before `:method`, or a block cut short, is a write.
#[inline(always)]
fn h2_read_only(sc: &HttpScratch, at: u32, n: u32, flen: u32, flags: u8) -> bool {
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    if sc.takes_methods & 1 == 0 {
        return false; // GET not taken here
    }
    let mut q = at;
    if flags & PADDED != 0 {
        q += 1;
    }
    if flags & PRIORITY != 0 {
        q += 5;
    }
    let end = {
        let e = at + flen;
        if e > n {
            n
        } else {
            e
        }
    };
    for _ in 0..6 {
        if q >= end {
            return false;
        }
        let b = byte(sc, q);
        if b & 0x80 != 0 {
            // Indexed field: 2 is `:method: GET`, 3 `:method: POST`; 1 and 4..=7 are the other
            // pseudo-headers (:authority, :path, :scheme) of the static table.
            match b & 0x7f {
                2 => return true,
                1 | 4..=7 => {
                    q += 1;
                    continue;
                }
                _ => return false,
            }
        }
        let name = if b & 0xc0 == 0x40 {
            b & 0x3f
        } else if b & 0xe0 == 0x20 {
            // A dynamic table size update: no field.
            q += 1;
            continue;
        } else {
            b & 0x0f
        };
        // A literal: its name from the static table's pseudo-headers, or the method itself.
        if name == 0 || name > 7 || name == 2 || name == 3 {
            return false;
        }
        let v = byte(sc, q + 1);
        let vlen = (v & 0x7f) as u32;
        if vlen == 0x7f {
            return false;
        }
        q += 2 + vlen;
    }
    false
}
