//! The decision skeleton shared by every hook: find the agent, decide, enforce, record.
use agent_monitor_common::{
    action, agent_flags, event_flags, layer, policy_action, stat, verdict, AgentCfg, Event, ProcState, EVENT_HEAD,
    EVENT_ONE_PATH, EVENT_SHORT, PATH_LEN, SHORT_PATH,
};
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    generated::{bpf_probe_read_kernel as raw_read_kernel, bpf_send_signal},
};
use core::ffi::c_void;

use crate::{
    kernel::{self, Built},
    maps::{Scratch, AGENTS, EVENTS, GENERATION, KILLED, PROCS, SCRATCH, STATS, WRITABLE},
};

pub const SIGKILL: u32 = 9;

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// The current process's agent state and its agent's configuration, if it is an agent.
#[inline(always)]
pub fn current_agent() -> Option<(ProcState, AgentCfg)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut st = unsafe { PROCS.get(&tgid) }.copied()?;
    let cfg = agent_cfg(st.agent)?;
    if cfg.flags & agent_flags::ACTIVE == 0 {
        return None;
    }
    // Events of this decision name the generation (the policy) that made it.
    st.agent = cfg.slot | agent_monitor_common::AGENT_GEN_KNOWN;
    Some((st, cfg))
}

/// The configuration of agent `id` in the active generation. Read once per decision: every
/// later lookup of the decision goes through `cfg.slot`, so it sees one policy whole.
#[inline(always)]
pub fn agent_cfg(id: u32) -> Option<AgentCfg> {
    let gen = GENERATION.get(0).copied().unwrap_or(0);
    AGENTS.get(agent_monitor_common::agent_slot(id, gen)).copied()
}

/// Kill the current process if its instance has already been killed; true if it was.
#[inline(always)]
pub fn reap_if_killed(st: &ProcState) -> bool {
    if unsafe { KILLED.get(&st.run_id) }.is_some() {
        unsafe { bpf_send_signal(SIGKILL) };
        return true;
    }
    false
}

/// What the longest `WRITABLE` prefix of `s.buf[0..b.len]` says (`path_class`). A path whose
/// name is not known to be the object's (`Built::untrusted`) is never `WRITABLE`; it can still
/// be one of the daemon's own (`PROTECTED`).
#[inline(always)]
pub unsafe fn path_class(s: *mut Scratch, slot: u32, b: Built) -> u32 {
    let class = path_class_of_name(s, slot, b);
    if b.untrusted() && class == agent_monitor_common::path_class::WRITABLE {
        return agent_monitor_common::path_class::OUTSIDE;
    }
    class
}

#[inline(always)]
pub unsafe fn path_class_of_name(s: *mut Scratch, slot: u32, b: Built) -> u32 {
    let mut len = b.len as usize;
    if len > PATH_LEN - 1 {
        len = PATH_LEN - 1;
    }
    (*s).key.agent = slot;
    raw_read_kernel((*s).key.path.as_mut_ptr() as *mut c_void, PATH_LEN as u32, (*s).buf.as_ptr() as *const c_void);
    // The trailing '/' makes the match component-wise. A truncated path keeps only the bytes
    // it has: a prefix can still match them, and nothing past them is claimed.
    let bits = if b.truncated() {
        (4 + len) * 8
    } else {
        *(*s).key.path.as_mut_ptr().add(kernel::opaque(len) & 255) = b'/';
        (4 + len + 1) * 8
    };
    (*s).key_prefix = bits as u32;
    let key = &(*s).key_prefix as *const u32 as *const aya_ebpf::maps::lpm_trie::Key<agent_monitor_common::PathData>;
    WRITABLE.get(&*key).copied().unwrap_or(agent_monitor_common::path_class::OUTSIDE)
}

/// After [`path_class`] built the key of a path in `s.key`: is it a symlink the agent made that
/// leads out of `writable` (`Some(true)`: the link itself) or under one (`Some(false)`)? Under
/// one, the path in `s.buf` (`len` bytes) is rewritten to name the real object where the link's
/// target is known; returns the new length with it.
#[inline(always)]
pub unsafe fn linked_out(s: *mut Scratch, len: &mut u32) -> Option<bool> {
    let slot = (*s).key.agent;
    (*s).key.agent = slot & (agent_monitor_common::AGENT_SLOTS_PER_GEN - 1);
    let key = &(*s).key_prefix as *const u32 as *const aya_ebpf::maps::lpm_trie::Key<agent_monitor_common::PathData>;
    let found = crate::maps::LINKS_OUT.get(&*key).map(|v| v as *const agent_monitor_common::LinkOut);
    (*s).key.agent = slot;
    let v = found?;
    let bits = core::ptr::read_volatile(&(*v).bits);
    let exact = bits == (*s).key_prefix;
    // The link's own path length: the prefix is the agent (4 bytes), the path and a '/'.
    let link_len = ((bits / 8) as usize).saturating_sub(5) & 255;
    let tlen = core::ptr::read_volatile(&(*v).len) as usize & 255;
    let total = *len as usize & 511;
    if !exact && tlen > 0 && total > link_len && tlen + (total - link_len) < PATH_LEN {
        // target + what follows the link, through `tmp`.
        let rest = kernel::opaque(total - link_len) & 255;
        let tmp = (*s).tmp.as_mut_ptr();
        raw_read_kernel(tmp as *mut c_void, tlen as u32, (*v).target.as_ptr() as *const c_void);
        raw_read_kernel(tmp.add(tlen) as *mut c_void, rest as u32, (*s).buf.as_ptr().add(link_len) as *const c_void);
        let n = (tlen + rest) & 255;
        raw_read_kernel((*s).buf.as_mut_ptr() as *mut c_void, n as u32, tmp as *const c_void);
        *(*s).buf.as_mut_ptr().add(n) = 0;
        *len = n as u32;
    }
    Some(exact)
}

/// Remember (with where it leads: `target`, `tlen` bytes, or nothing) or forget the symlink
/// whose path key is in `s.key`. Returns false if the table is full.
#[inline(always)]
pub unsafe fn set_linked_out(s: *mut Scratch, on: bool, target: *const u8, tlen: u32) -> bool {
    (*s).key.agent &= agent_monitor_common::AGENT_SLOTS_PER_GEN - 1;
    let key = &(*s).key_prefix as *const u32 as *const aya_ebpf::maps::lpm_trie::Key<agent_monitor_common::PathData>;
    if !on {
        let _ = crate::maps::LINKS_OUT.remove(&*key);
        return true;
    }
    // The value is built in the scratch's `exe` key (PATH_LEN bytes plus room: not used here).
    let Some(v) = crate::maps::LINK_SCRATCH.get_ptr_mut(0) else { return false };
    (*v).bits = (*s).key_prefix;
    (*v).len = if tlen as usize >= PATH_LEN { 0 } else { tlen };
    raw_read_kernel((*v).target.as_mut_ptr() as *mut c_void, (PATH_LEN + 4) as u32, target as *const c_void);
    crate::maps::LINKS_OUT.insert(&*key, &*v, 0).is_ok()
}

/// Apply the agent's action to a violation by the current process at the tracepoint layer,
/// which cannot refuse: `deny` falls back to `kill`. Returns (action, extra event flags).
#[inline(always)]
pub fn enforce_after(st: &ProcState, cfg: &AgentCfg) -> (u32, u32) {
    match cfg.action {
        // Hold cannot pause a call the tracepoint layer sees after the fact: it is a denial,
        // which here means kill.
        policy_action::KILL | policy_action::DENY | policy_action::HOLD => {
            kill_instance(st);
            let mut f = event_flags::AFTER_EFFECT;
            if cfg.action != policy_action::KILL {
                f |= event_flags::DENY_FELL_BACK;
            }
            (action::KILLED, f)
        }
        _ => (action::ALERTED, 0),
    }
}

/// SIGKILL the current process from the kernel and mark its instance killed so that every
/// other process of the instance dies the next time it is seen; userspace sweeps the rest.
#[inline(always)]
pub fn kill_instance(st: &ProcState) {
    unsafe { bpf_send_signal(SIGKILL) };
    let one: u32 = 1;
    let _ = KILLED.insert(&st.run_id, &one, 0);
}

/// What an event carries besides the process.
pub struct Rec {
    pub kind: u32,
    pub verdict: u32,
    pub action: u32,
    pub layer: u32,
    pub flags: u32,
    pub aux: u64,
    pub aux2: u64,
}

/// A path for an event: a pointer into map memory (scratch or a pending op) and its length.
#[derive(Clone, Copy)]
pub struct PathRef(pub *const u8, pub u32);

impl PathRef {
    pub const NONE: PathRef = PathRef(core::ptr::null(), 0);
}

/// Copy `cap` bytes of `src` (fixed, for the verifier) to `dst`; returns the path's length,
/// at most `cap`.
#[inline(always)]
unsafe fn copy_path(src: PathRef, dst: *mut u8, cap: usize) -> u32 {
    if src.0.is_null() {
        return 0;
    }
    raw_read_kernel(dst as *mut c_void, cap as u32, src.0 as *const c_void);
    if src.1 as usize > cap {
        cap as u32
    } else {
        src.1
    }
}

/// Who an event is about, for programs that cannot ask for the current task.
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
}

/// Emit one event for the current process (tracing programs: task helpers available).
#[inline(always)]
pub fn emit(st: &ProcState, r: &Rec, p1: PathRef, p2: PathRef) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = kernel::current_task();
    let who = Who {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: unsafe { kernel::task_ppid(task) }.unwrap_or(0),
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    emit_as(st, &who, r, p1, p2);
}

/// Emit one event. A full ring buffer is counted, never waited on: the enforcement decision
/// has already been made. The record is cut where its unused paths begin (`EVENT_SHORT`,
/// `EVENT_ONE_PATH`; see agent-monitor-common).
#[inline(always)]
pub fn emit_as(st: &ProcState, who: &Who, r: &Rec, p1: PathRef, p2: PathRef) {
    if !p2.0.is_null() {
        emit_n::<{ core::mem::size_of::<Event>() }>(st, who, r, p1, p2);
    } else if p1.1 as usize <= SHORT_PATH {
        emit_n::<EVENT_SHORT>(st, who, r, p1, PathRef::NONE);
    } else {
        emit_n::<EVENT_ONE_PATH>(st, who, r, p1, PathRef::NONE);
    }
}

#[inline(always)]
fn emit_n<const N: usize>(st: &ProcState, who: &Who, r: &Rec, p1: PathRef, p2: PathRef) {
    let Some(mut entry) = EVENTS.reserve::<[u8; N]>(0) else {
        count(stat::RINGBUF_FULL);
        return;
    };
    // Only the first N bytes of the `Event` exist: every field written below lies in them.
    let ev = entry.as_mut_ptr() as *mut Event;
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_boot_ns();
        (*ev).run_id = st.run_id;
        (*ev).start_ns = st.start_ns;
        (*ev).kind = r.kind;
        (*ev).verdict = r.verdict;
        (*ev).action = r.action;
        (*ev).layer = r.layer;
        (*ev).agent = st.agent;
        (*ev).pid = who.pid;
        (*ev).tid = who.tid;
        (*ev).ppid = who.ppid;
        (*ev).uid = who.uid;
        (*ev).flags = r.flags;
        (*ev).aux = r.aux;
        (*ev).aux2 = r.aux2;
        (*ev).comm = who.comm;
        let cap1 = if N - EVENT_HEAD < PATH_LEN + 4 { N - EVENT_HEAD } else { PATH_LEN + 4 };
        (*ev).path_len = copy_path(p1, (*ev).path.as_mut_ptr(), cap1);
        (*ev).path2_len = if N > EVENT_ONE_PATH { copy_path(p2, (*ev).path2.as_mut_ptr(), PATH_LEN + 4) } else { 0 };
    }
    // Wake the daemon when a batch has built up, or when it must act now (finish a kill,
    // announce a hold, hook a new instance's TLS); otherwise it drains on its own tick (50 ms).
    // A wakeup per event costs the agent more than the event itself (in a VM each is a
    // self-IPI, a VM exit): a batch wakes it as the backlog crosses each 64 KiB boundary,
    // not on every event while the daemon is behind (measured: 12 µs an audited open with a
    // wakeup per event past 64 KiB of backlog, against 1.9 µs unaudited).
    let urgent = r.action == action::KILLED || r.action == action::HELD || r.flags & event_flags::INSTANCE_START != 0;
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    // (within the last WAKEUP_WINDOW bytes: producers on other CPUs may have reserved between
    // this record and the query, and a crossing none of them saw would wait for the tick)
    let crossed = avail >> WAKEUP_SHIFT != avail.saturating_sub(WAKEUP_WINDOW) >> WAKEUP_SHIFT;
    // (and on every event once half the ring is pending: the daemon is far behind)
    let flags =
        if urgent || crossed || avail >= WAKEUP_ALWAYS { BPF_RB_FORCE_WAKEUP as u64 } else { BPF_RB_NO_WAKEUP as u64 };
    entry.submit(flags);
}

/// Each 64 KiB of pending events (~180 file events) wakes the daemon: the records that land in
/// the first `WAKEUP_WINDOW` bytes past each boundary do (a few, not one per event).
const WAKEUP_SHIFT: u32 = 16;
const WAKEUP_WINDOW: u64 = 2048;
/// Half of `EVENTS` (4 MiB).
const WAKEUP_ALWAYS: u64 = 2 << 20;

/// The common tail of a file decision: `ok` is whether every path was writable.
#[inline(always)]
pub fn decide(st: &ProcState, cfg: &AgentCfg, ok: bool, r: Rec, p1: PathRef, p2: PathRef) {
    decide_with(st, cfg, ok, r, p1, p2, true)
}

/// [`decide`], for an operation the BPF LSM layer may not see (`lsm_covers` false: extended
/// attributes, times, FIFOs, device nodes): then the tracepoint layer acts even where the LSM
/// layer is up.
#[inline(always)]
pub fn decide_with(st: &ProcState, cfg: &AgentCfg, ok: bool, mut r: Rec, p1: PathRef, p2: PathRef, lsm_covers: bool) {
    if ok {
        if cfg.flags & agent_flags::AUDIT == 0 {
            return;
        }
        r.verdict = verdict::ALLOWED;
        r.action = action::NONE;
    } else if lsm_covers
        && (agent_monitor_common::kind::FILE_WRITE..=agent_monitor_common::kind::FILE_CHMOD).contains(&r.kind)
        && crate::maps::lsm_active()
        && (cfg.action != policy_action::ALERT || r.flags & event_flags::PROTECTED_PATH != 0)
    {
        // The BPF LSM layer refuses file operations before they run: one that succeeded was
        // granted there (an approved hold). It has been decided; nothing to add after the fact.
        return;
    } else if r.flags & event_flags::PROTECTED_PATH != 0 {
        // The daemon's own files: self-protection kills, whatever the agent's action.
        let kill = AgentCfg { action: policy_action::KILL, ..*cfg };
        let (a, f) = enforce_after(st, &kill);
        r.verdict = verdict::VIOLATION;
        r.action = a;
        r.flags |= f;
        r.aux2 = r.kind as u64;
        r.kind = agent_monitor_common::kind::SELF_TAMPER;
    } else {
        let (a, f) = enforce_after(st, cfg);
        r.verdict = verdict::VIOLATION;
        r.action = a;
        r.flags |= f;
    }
    r.layer = layer::TRACEPOINT;
    emit(st, &r, p1, p2);
}
