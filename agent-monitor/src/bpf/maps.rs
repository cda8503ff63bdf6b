//! Typed access to the kernel maps: applying a compiled policy, adopting processes that were
//! running before the daemon, reading the process table and the kernel's counters.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_monitor_common::{
    agent_flags, agent_slot, net_origin, path_class, policy_action, stat, writable_key, AgentCfg, ExeKey, NetData,
    PathData, ProcState, SniKey, UnixKey, AGENT_SLOTS_PER_GEN, NET_KEY_FIXED_BITS, PATH_LEN, SNI_LEN, UNIX_PATH_LEN,
};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    Ebpf,
};
use tracing::{debug, info, warn};

use crate::policy::{comm_key, ipv6_form, Action, CompiledPolicy, HostRule, NetRule};

/// Map names, shared with `agent-monitor-ebpf/src/maps.rs`.
pub mod names {
    pub const PROCS: &str = "PROCS";
    pub const AGENTS: &str = "AGENTS";
    pub const SEL_COMM: &str = "SEL_COMM";
    pub const SEL_EXE: &str = "SEL_EXE";
    pub const SEL_UID: &str = "SEL_UID";
    pub const SEL_CGROUP: &str = "SEL_CGROUP";
    pub const WRITABLE: &str = "WRITABLE";
    pub const STATS: &str = "STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const NET_ALLOW: &str = "NET_ALLOW";
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";
    pub const SNI_ALLOW: &str = "SNI_ALLOW";
    pub const VISIBLE: &str = "VISIBLE";
    pub const GENERATION: &str = "GENERATION";
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones): read from /proc/mounts, never assumed.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

pub fn exe_key(path: &str) -> Option<ExeKey> {
    let b = path.as_bytes();
    if b.len() >= PATH_LEN {
        return None;
    }
    let mut k = ExeKey { path: [0; PATH_LEN] };
    k.path[..b.len()].copy_from_slice(b);
    Some(k)
}

/// One of the daemon's own paths, which no agent may write whatever its `writable` says
/// (`path_class::PROTECTED` entries in `WRITABLE`, for every agent: the longest prefix wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    pub path: String,
    /// Match every path that starts with these bytes (the events log and its rotated
    /// siblings), not only the path itself and what is under it.
    pub raw_prefix: bool,
}

fn protected_key(slot: u32, p: &Protected) -> Option<Key<PathData>> {
    if !p.raw_prefix {
        let (bits, data) = writable_key(slot, p.path.as_bytes())?;
        return Some(Key::new(bits, data));
    }
    let b = p.path.as_bytes();
    if b.len() > PATH_LEN {
        return None;
    }
    let mut data = PathData { agent: slot, path: [0; PATH_LEN] };
    data.path[..b.len()].copy_from_slice(b);
    Some(Key::new(((4 + b.len()) * 8) as u32, data))
}

/// The active policy generation (see `agent_monitor_common::agent_slot`).
pub fn generation(ebpf: &Ebpf) -> u32 {
    ebpf.map(names::GENERATION)
        .and_then(|m| Array::<&MapData, u32>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .unwrap_or(0)
        & 1
}

fn set_generation(ebpf: &mut Ebpf, gen: u32) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, names::GENERATION)?)?;
    a.set(0, gen, 0).context("writing GENERATION")?;
    Ok(())
}

/// Write a compiled policy into the maps, atomically as the kernel sees it: every rule of the
/// new policy goes into the inactive generation's slots, then one store flips `GENERATION`,
/// and only then is the old generation removed. A decision reads the generation once (with
/// the agent's configuration) and does all its lookups through that slot, so it sees the old
/// policy whole or the new one whole. Selectors are the exception: they name agents by their
/// stable ids, and during the swap a process matching either the old or the new selectors
/// becomes an agent (never less confined than either policy).
pub fn apply_policy(
    ebpf: &mut Ebpf,
    p: &CompiledPolicy,
    resolved: &[NetRule],
    exec_cgroups: &[(u64, u32)],
    protected: &[Protected],
) -> anyhow::Result<u32> {
    let old = generation(ebpf);
    let gen = 1 - old;
    let slot = |id: u32| agent_slot(id, gen);
    // Whether any agent is active in the old generation. If none is (the first policy of a fresh
    // start), a decision that read the old generation found no agent and looks nothing else up
    // through it, so there is nothing to wait for before removing it (step 3).
    let old_in_use = {
        let m = ebpf.map(names::AGENTS).ok_or_else(|| anyhow!("map {} missing", names::AGENTS))?;
        let agents: Array<&MapData, AgentCfg> = Array::try_from(m)?;
        (1..AGENT_SLOTS_PER_GEN)
            .any(|id| agents.get(&agent_slot(id, old), 0).is_ok_and(|c| c.flags & agent_flags::ACTIVE != 0))
    };
    {
        let mut agents: Array<&mut MapData, AgentCfg> = Array::try_from(map_mut(ebpf, names::AGENTS)?)?;
        for a in &p.agents {
            let mut flags = agent_flags::ACTIVE;
            if a.audit {
                flags |= agent_flags::AUDIT;
            }
            if a.allow_io_uring {
                flags |= agent_flags::ALLOW_IO_URING;
            }
            if a.allow_raw_socket {
                flags |= agent_flags::ALLOW_RAW_SOCKET;
            }
            if a.allow_bpf {
                flags |= agent_flags::ALLOW_BPF;
            }
            if a.require_http_visibility {
                flags |= agent_flags::REQUIRE_HTTP_VISIBILITY;
            }
            let action = match a.action {
                Action::Alert => policy_action::ALERT,
                Action::Deny => policy_action::DENY,
                Action::Kill => policy_action::KILL,
                Action::Hold => policy_action::HOLD,
            };
            if a.id == 0 || a.id >= AGENT_SLOTS_PER_GEN {
                return Err(anyhow!("agent id {} outside 1..{AGENT_SLOTS_PER_GEN}", a.id));
            }
            agents.set(slot(a.id), AgentCfg { action, flags, http_allow: a.http_allow, slot: slot(a.id) }, 0)?;
        }
        // Ids are stable across reloads (not contiguous): every other slot of the new
        // generation is "not an agent".
        for id in (1..AGENT_SLOTS_PER_GEN).filter(|id| !p.agents.iter().any(|a| a.id == *id)) {
            agents.set(slot(id), AgentCfg::default(), 0)?;
        }
    }
    let unix: Vec<(UnixKey, u32)> = p
        .unix
        .iter()
        .filter_map(|(id, path)| {
            let b = path.as_bytes();
            if b.len() >= UNIX_PATH_LEN {
                warn!(path, "unix socket path too long for the kernel map; ignored");
                return None;
            }
            let mut k = UnixKey { agent: slot(*id), path: [0; UNIX_PATH_LEN] };
            k.path[..b.len()].copy_from_slice(b);
            Some((k, 1))
        })
        .collect();
    let sni: Vec<(SniKey, u32)> = p
        .hosts
        .iter()
        .filter(|h| h.host.len() < SNI_LEN)
        .map(|h| {
            let mut k = SniKey { agent: slot(h.agent), name: [0; SNI_LEN] };
            k.name[..h.host.len()].copy_from_slice(h.host.as_bytes());
            (k, 1)
        })
        .collect();
    let net = net_entries(&p.net, resolved, gen);
    let mut paths = Vec::new();
    for (id, path) in &p.writable {
        let (bits, data) =
            writable_key(slot(*id), path.as_bytes()).ok_or_else(|| anyhow!("writable path too long: {path}"))?;
        paths.push((Key::new(bits, data), path_class::WRITABLE));
    }
    for a in &p.agents {
        for pr in protected {
            match protected_key(slot(a.id), pr) {
                Some(k) => paths.push((k, path_class::PROTECTED)),
                None => warn!(path = pr.path, "protected path too long for the kernel map; not protected"),
            }
        }
    }

    // 1. The new generation, complete; the old one still decides.
    insert_hash(ebpf, names::UNIX_ALLOW, &unix)?;
    insert_hash(ebpf, names::SNI_ALLOW, &sni)?;
    {
        let mut trie: LpmTrie<&mut MapData, NetData, u32> = LpmTrie::try_from(map_mut(ebpf, names::NET_ALLOW)?)?;
        for (k, origin) in &net {
            trie.insert(k, origin, 0).context("writing NET_ALLOW")?;
        }
        let mut trie: LpmTrie<&mut MapData, PathData, u32> = LpmTrie::try_from(map_mut(ebpf, names::WRITABLE)?)?;
        for (k, class) in &paths {
            trie.insert(k, class, 0).context("writing WRITABLE")?;
        }
    }
    let comm: Vec<_> = p.comm.iter().map(|(c, id)| (*c, *id)).collect();
    insert_hash(ebpf, names::SEL_COMM, &comm)?;
    insert_hash(ebpf, names::SEL_UID, &p.uid)?;
    let exe: Vec<(ExeKey, u32)> = p
        .exe
        .iter()
        .filter_map(|(path, id)| match exe_key(path) {
            Some(k) => Some((k, *id)),
            None => {
                warn!(path, "exe selector too long for the kernel map; ignored");
                None
            }
        })
        .collect();
    insert_hash(ebpf, names::SEL_EXE, &exe)?;
    let root = cgroup2_root();
    let mut cg = Vec::new();
    for (path, id) in &p.cgroup {
        match &root {
            Some(root) => {
                let dir = root.join(path.trim_start_matches('/'));
                match fs::metadata(&dir) {
                    Ok(m) => cg.push((m.ino(), *id)),
                    // The unit may not be started yet: its processes are matched by comm,
                    // exe or uid meanwhile, and a reload picks the cgroup up.
                    Err(e) => {
                        warn!(cgroup = %dir.display(), error = %e, "cgroup selector not found; ignored until reload")
                    }
                }
            }
            None => warn!(cgroup = path, "no cgroup v2 hierarchy mounted; cgroup selector ignored"),
        }
    }
    // `exec` instances' cgroups are not in the policy; they stay selected through the swap.
    cg.extend_from_slice(exec_cgroups);
    insert_hash(ebpf, names::SEL_CGROUP, &cg)?;

    // 2. One store: the new policy decides from the next lookup on.
    set_generation(ebpf, gen)?;
    // 3. Let decisions that read the old generation before the flip finish (they run for
    // microseconds), then remove it.
    if old_in_use {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    {
        let mut agents: Array<&mut MapData, AgentCfg> = Array::try_from(map_mut(ebpf, names::AGENTS)?)?;
        for id in 1..AGENT_SLOTS_PER_GEN {
            agents.set(agent_slot(id, old), AgentCfg::default(), 0)?;
        }
    }
    remove_stale_hash(ebpf, names::UNIX_ALLOW, &unix)?;
    remove_stale_hash(ebpf, names::SNI_ALLOW, &sni)?;
    remove_stale_hash(ebpf, names::SEL_COMM, &comm)?;
    remove_stale_hash(ebpf, names::SEL_UID, &p.uid)?;
    remove_stale_hash(ebpf, names::SEL_EXE, &exe)?;
    remove_stale_hash(ebpf, names::SEL_CGROUP, &cg)?;
    {
        let wanted: HashSet<(u32, NetData)> = net.iter().map(|(k, _)| (k.prefix_len(), k.data())).collect();
        let mut trie: LpmTrie<&mut MapData, NetData, u32> = LpmTrie::try_from(map_mut(ebpf, names::NET_ALLOW)?)?;
        let stale: Vec<Key<NetData>> =
            trie.keys().filter_map(Result::ok).filter(|k| !wanted.contains(&(k.prefix_len(), k.data()))).collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
    }
    {
        let wanted: HashSet<(u32, u32, Vec<u8>)> =
            paths.iter().map(|(k, _)| (k.prefix_len(), k.data().agent, k.data().path.to_vec())).collect();
        let mut trie: LpmTrie<&mut MapData, PathData, u32> = LpmTrie::try_from(map_mut(ebpf, names::WRITABLE)?)?;
        let stale: Vec<Key<PathData>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let d = k.data();
                !wanted.contains(&(k.prefix_len(), d.agent, d.path.to_vec()))
            })
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
    }
    info!(generation = gen, "policy generation active");
    Ok(gen)
}

/// Tell the kernel side which process is the daemon (self-protection).
/// `lsm`: the BPF LSM layer is attached in full (the tracepoint layer then leaves signals,
/// ptrace and bpf() to it).
pub fn set_daemon(ebpf: &mut Ebpf, tgid: u32, lsm: bool) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, "DAEMON")?)?;
    a.set(0, tgid, 0)?;
    a.set(1, lsm as u32, 0)?;
    Ok(())
}

/// Let one held connect through: `value` is the expiry (ns since boot), top bit = once.
pub fn add_grant(ebpf: &mut Ebpf, key: agent_monitor_common::GrantKey, value: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, agent_monitor_common::GrantKey, u64> =
        HashMap::try_from(map_mut(ebpf, "GRANTS")?)?;
    m.insert(key, value, 0).context("writing GRANTS")?;
    Ok(())
}

/// Let one held file operation through (BPF LSM layer): `value` is the expiry, top bit = once.
pub fn add_file_grant(ebpf: &mut Ebpf, key: agent_monitor_common::FileGrantKey, value: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, agent_monitor_common::FileGrantKey, u64> =
        HashMap::try_from(map_mut(ebpf, "FILE_GRANTS")?)?;
    m.insert(key, value, 0).context("writing FILE_GRANTS")?;
    Ok(())
}

/// Let the held request of socket `cookie` through (see `agent_monitor_common::sock_state`).
pub fn approve_socket(ebpf: &mut Ebpf, cookie: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, u64, agent_monitor_common::SockInfo> = HashMap::try_from(map_mut(ebpf, "SOCKS")?)?;
    let mut info = m.get(&cookie, 0).context("the held socket is gone (closed, or evicted from SOCKS)")?;
    info.blocked = agent_monitor_common::sock_state::APPROVED;
    m.insert(cookie, info, 0).context("writing SOCKS")?;
    Ok(())
}

/// Nanoseconds since boot (the clock of `bpf_ktime_get_boot_ns`).
pub fn boot_clock_ns() -> u64 {
    boot_ns()
}

/// Add a dynamic cgroup selector (an `exec` instance's cgroup).
pub fn add_cgroup_selector(ebpf: &mut Ebpf, cgroup_id: u64, agent: u32) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, u64, u32> = HashMap::try_from(map_mut(ebpf, names::SEL_CGROUP)?)?;
    m.insert(cgroup_id, agent, 0).context("writing SEL_CGROUP")?;
    Ok(())
}

pub fn remove_cgroup_selector(ebpf: &mut Ebpf, cgroup_id: u64) {
    if let Ok(map) = map_mut(ebpf, names::SEL_CGROUP) {
        if let Ok(mut m) = HashMap::<&mut MapData, u64, u32>::try_from(map) {
            let _ = m.remove(&cgroup_id);
        }
    }
}

/// The `NET_ALLOW` key of a rule in generation `gen`.
pub fn net_key(r: &NetRule, gen: u32) -> Key<NetData> {
    let port = r.port.unwrap_or(0).to_be_bytes();
    Key::new(
        NET_KEY_FIXED_BITS + r.prefix_len as u32,
        NetData { agent: agent_slot(r.agent, gen), port, addr: r.addr.octets(), _pad: [0; 2] },
    )
}

/// Does the static rule `s` allow every connection the resolved rule `r` allows?
fn covers(s: &NetRule, r: &NetRule) -> bool {
    if s.agent != r.agent || (s.port.is_some() && s.port != r.port) || s.prefix_len > r.prefix_len {
        return false;
    }
    let mask = |a: std::net::Ipv6Addr, len: u8| -> u128 {
        let bits = u128::from(a);
        if len == 0 {
            0
        } else {
            bits & (u128::MAX << (128 - len as u32))
        }
    };
    mask(s.addr, s.prefix_len) == mask(r.addr, s.prefix_len)
}

/// Resolve the policy's host names (blocking: call off the async runtime).
pub fn resolve_hosts(hosts: &[HostRule]) -> Vec<NetRule> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for h in hosts {
        match (h.host.as_str(), 0u16).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let (addr, prefix_len) = ipv6_form(a.ip(), if a.is_ipv4() { 32 } else { 128 });
                    let rule = NetRule { agent: h.agent, addr, prefix_len, port: h.port };
                    if !out.contains(&rule) {
                        out.push(rule);
                    }
                }
            }
            Err(e) => {
                warn!(host = h.host, error = %e, "cannot resolve an allowed host; it stays unreachable until it resolves")
            }
        }
    }
    out
}

/// The `NET_ALLOW` entries of generation `gen`: static rules, plus resolved host names.
fn net_entries(rules: &[NetRule], resolved: &[NetRule], gen: u32) -> Vec<(Key<NetData>, u32)> {
    let mut out: Vec<(Key<NetData>, u32)> = rules.iter().map(|r| (net_key(r, gen), net_origin::STATIC)).collect();
    // A resolved address already covered by a literal rule keeps that rule's meaning (no
    // server-name check); otherwise it is allowed only as that host name.
    for r in resolved {
        if !rules.iter().any(|s| covers(s, r)) {
            out.push((net_key(r, gen), net_origin::HOST));
        }
    }
    out
}

/// Refresh the address rules of the active generation (host names re-resolved): new entries
/// first, then the stale ones removed.
pub fn apply_net(ebpf: &mut Ebpf, rules: &[NetRule], resolved: &[NetRule]) -> anyhow::Result<()> {
    let gen = generation(ebpf);
    let entries = net_entries(rules, resolved, gen);
    let mut trie: LpmTrie<&mut MapData, NetData, u32> = LpmTrie::try_from(map_mut(ebpf, names::NET_ALLOW)?)?;
    let mut wanted = HashSet::new();
    for (k, origin) in &entries {
        trie.insert(k, origin, 0).context("writing NET_ALLOW")?;
        wanted.insert((k.prefix_len(), k.data()));
    }
    let stale: Vec<Key<NetData>> =
        trie.keys().filter_map(Result::ok).filter(|k| !wanted.contains(&(k.prefix_len(), k.data()))).collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
    Ok(())
}

fn insert_hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &[(K, V)],
) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
    for (k, v) in entries {
        m.insert(k, v, 0).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

fn remove_stale_hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &[(K, V)],
) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
    let wanted: HashSet<K> = entries.iter().map(|(k, _)| *k).collect();
    let stale: Vec<K> = m.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// A process as /proc shows it.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
    pub start_ticks: u64,
}

pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let base = Path::new("/proc").join(pid.to_string());
    let stat = fs::read_to_string(base.join("stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let close = stat.rfind(')')?;
    let comm = stat[stat.find('(')? + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start_ticks = rest.get(19)?.parse().ok()?;
    let status = fs::read_to_string(base.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())?;
    let exe = fs::read_link(base.join("exe")).ok().map(|p| p.display().to_string());
    let cgroup = fs::read_to_string(base.join("cgroup"))
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
    Some(ProcInfo { pid, ppid, uid, comm, exe, cgroup, start_ticks })
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Which agent selects this process, in the kernel's order (comm, uid, cgroup, exe).
pub fn select(p: &CompiledPolicy, info: &ProcInfo) -> Option<u32> {
    let comm = comm_key(&info.comm);
    p.comm
        .iter()
        .find(|(c, _)| *c == comm)
        .map(|(_, id)| *id)
        .or_else(|| p.uid.iter().find(|(u, _)| *u == info.uid).map(|(_, id)| *id))
        .or_else(|| {
            let cg = info.cgroup.as_deref()?;
            p.cgroup.iter().find(|(c, _)| c == cg).map(|(_, id)| *id)
        })
        .or_else(|| {
            let exe = info.exe.as_deref()?;
            p.exe.iter().find(|(e, _)| e == exe).map(|(_, id)| *id)
        })
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Find agent processes that were running before the daemon (or before a reload added their
/// selector) and put them and all their descendants in the process table.
pub fn adopt_running(ebpf: &mut Ebpf, p: &CompiledPolicy) -> anyhow::Result<usize> {
    let own = std::process::id();
    let procs: Vec<ProcInfo> = all_pids().into_iter().filter(|&pid| pid != own).filter_map(read_proc).collect();
    let mut children: StdHashMap<u32, Vec<u32>> = StdHashMap::new();
    for pr in &procs {
        children.entry(pr.ppid).or_default().push(pr.pid);
    }
    let by_pid: StdHashMap<u32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut table: HashMap<&mut MapData, u32, ProcState> = HashMap::try_from(map_mut(ebpf, names::PROCS)?)?;
    let tick_ns = 1_000_000_000 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64);
    let mut adopted = 0;
    let mut seen = HashSet::new();
    for root in &procs {
        if seen.contains(&root.pid) || table.get(&root.pid, 0).is_ok() {
            continue;
        }
        let Some(agent) = select(p, root) else { continue };
        let run_id = boot_ns() ^ ((root.pid as u64) << 40);
        let mut stack = vec![root.pid];
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(info) = by_pid.get(&pid) {
                let st = ProcState { agent, tls_token: 0, run_id, start_ns: info.start_ticks * tick_ns };
                if table.get(&pid, 0).is_err() {
                    table.insert(pid, st, 0)?;
                    adopted += 1;
                    debug!(pid, comm = info.comm, agent, "adopted running agent process");
                }
            }
            stack.extend(children.get(&pid).into_iter().flatten());
        }
    }
    if adopted > 0 {
        info!(adopted, "adopted agent processes that were already running");
    }
    Ok(adopted)
}

/// The daemon run whose per-agent TLS hooks are in force (0: none): until an agent process
/// carries this token, its TLS handshakes wait (see `tls_hooks_pending` in the eBPF crate).
pub fn set_tls_token_in_force(ebpf: &mut Ebpf, token: u32) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, "DAEMON")?)?;
    a.set(2, token, 0)?;
    Ok(())
}

/// Mark processes as doing their TLS through a hooked library (what the handshake hook does).
pub fn mark_tls_visible(ebpf: &mut Ebpf, pids: &[u32]) {
    let Ok(mut m) = map_mut(ebpf, names::VISIBLE).and_then(|m| Ok(HashMap::<&mut MapData, u32, u32>::try_from(m)?))
    else {
        return;
    };
    for &pid in pids {
        let _ = m.insert(pid, 1, 0);
    }
}

/// Record that these agent processes are covered by the TLS hooks of the daemon run `token`
/// (processes that exited meanwhile are skipped).
pub fn set_tls_token(ebpf: &mut Ebpf, pids: &[u32], token: u32) {
    let Ok(mut table) =
        map_mut(ebpf, names::PROCS).and_then(|m| Ok(HashMap::<&mut MapData, u32, ProcState>::try_from(m)?))
    else {
        return;
    };
    for &pid in pids {
        if let Ok(st) = table.get(&pid, 0) {
            // BPF_EXIST: never bring back the entry of a process that exits meanwhile.
            let _ = table.insert(pid, ProcState { tls_token: token, ..st }, 2);
        }
    }
}

/// Is this tgid an agent process? One lookup, not a scan of the table.
pub fn is_tracked(ebpf: &Ebpf, tgid: u32) -> bool {
    let Some(m) = ebpf.map(names::PROCS) else { return false };
    HashMap::<&MapData, u32, ProcState>::try_from(m).map(|m| m.get(&tgid, 0).is_ok()).unwrap_or(false)
}

/// Every tracked process: (tgid, state).
pub fn tracked(ebpf: &Ebpf) -> Vec<(u32, ProcState)> {
    let Some(m) = ebpf.map(names::PROCS) else { return vec![] };
    let Ok(m) = HashMap::<&MapData, u32, ProcState>::try_from(m) else { return vec![] };
    m.iter().filter_map(Result::ok).collect()
}

/// Agent processes whose TLS goes through a hooked library (tgids).
pub fn tls_visible(ebpf: &Ebpf) -> HashSet<u32> {
    let Some(m) = ebpf.map(names::VISIBLE) else { return HashSet::new() };
    let Ok(m) = HashMap::<&MapData, u32, u32>::try_from(m) else { return HashSet::new() };
    m.keys().filter_map(Result::ok).collect()
}

/// Kernel-side counters summed over CPUs, indexed by `agent_monitor_common::stat`.
pub fn stats(ebpf: &Ebpf) -> [u64; stat::COUNT as usize] {
    let mut out = [0; stat::COUNT as usize];
    if let Some(m) = ebpf.map(names::STATS) {
        if let Ok(a) = PerCpuArray::<&MapData, u64>::try_from(m) {
            for (i, o) in out.iter_mut().enumerate() {
                if let Ok(v) = a.get(&(i as u32), 0) {
                    *o = v.iter().sum();
                }
            }
        }
    }
    out
}
