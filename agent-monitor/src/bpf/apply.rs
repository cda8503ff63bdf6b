//! Writing a compiled policy into the kernel's rule tables, atomically as the kernel sees it
//! (two generations and one flip), and keeping resolved host names current.
use std::{collections::HashSet, fs, os::unix::fs::MetadataExt};

use agent_monitor_common::{
    agent_flags, agent_slot, maps::names, net_origin, path_class, policy_action, writable_key, AgentCfg, DestRule,
    ExeKey, HostDest, HostKey, NetData, PathAllowData, PathData, SniKey, UnixKey, AGENT_SLOTS_PER_GEN, HOST_LEN,
    HTTP_PATH_LEN, NET_KEY_FIXED_BITS, PATH_LEN, SNI_LEN, UNIX_PATH_LEN,
};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    Ebpf,
};
use tracing::{info, warn};

use super::maps::{cgroup2_root, generation, map_mut, set_generation};
use crate::policy::{ipv6_form, Action, CompiledPolicy, HostRule, NetRule};

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
    // Whether any agent is active in the old generation. If none is (the first policy of a fresh
    // start), a decision that read the old generation found no agent and looks nothing else up
    // through it, so there is nothing to wait for before removing it (step 3).
    let old_in_use = {
        let m = ebpf.map(names::AGENTS).ok_or_else(|| anyhow!("map {} missing", names::AGENTS))?;
        let agents: Array<&MapData, AgentCfg> = Array::try_from(m)?;
        (1..AGENT_SLOTS_PER_GEN)
            .any(|id| agents.get(&agent_slot(id, old), 0).is_ok_and(|c| c.flags & agent_flags::ACTIVE != 0))
    };
    let t = Tables::new(p, resolved, exec_cgroups, protected, gen)?;
    // 1. The new generation, complete; the old one still decides.
    write_agents(ebpf, p, gen)?;
    t.insert(ebpf)?;
    write_cmdline(ebpf, p)?;
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
    t.remove_stale(ebpf)?;
    info!(generation = gen, "policy generation active");
    Ok(gen)
}

/// The `cmdline` selectors (`SEL_CMDLINE`, then how many are in use). Written in place: like
/// every selector, during a reload a process may match the old or the new ones.
fn write_cmdline(ebpf: &mut Ebpf, p: &CompiledPolicy) -> anyhow::Result<()> {
    use agent_monitor_common::{daemon_slot, CmdlineSel, CMDLINE_MAX};
    let mut sel: Array<&mut MapData, CmdlineSel> = Array::try_from(map_mut(ebpf, names::SEL_CMDLINE)?)?;
    let n = p.cmdline.len().min(CMDLINE_MAX as usize);
    for (i, (text, id)) in p.cmdline.iter().take(n).enumerate() {
        let mut e = CmdlineSel { agent: *id, len: text.len() as u32, ..CmdlineSel::default() };
        e.text[..text.len()].copy_from_slice(text.as_bytes());
        sel.set(i as u32, e, 0)?;
    }
    let mut d: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, names::DAEMON)?)?;
    d.set(daemon_slot::CMDLINE_COUNT, n as u32, 0)?;
    Ok(())
}

/// Each agent's configuration in generation `gen`; every other slot of it is "not an agent"
/// (ids are stable across reloads, not contiguous).
fn write_agents(ebpf: &mut Ebpf, p: &CompiledPolicy, gen: u32) -> anyhow::Result<()> {
    let mut agents: Array<&mut MapData, AgentCfg> = Array::try_from(map_mut(ebpf, names::AGENTS)?)?;
    for a in &p.agents {
        if a.id == 0 || a.id >= AGENT_SLOTS_PER_GEN {
            return Err(anyhow!("agent id {} outside 1..{AGENT_SLOTS_PER_GEN}", a.id));
        }
        let slot = agent_slot(a.id, gen);
        agents.set(
            slot,
            AgentCfg { action: policy_action(a.action), flags: agent_bits(a), http_allow: a.http_allow, slot },
            0,
        )?;
    }
    for id in (1..AGENT_SLOTS_PER_GEN).filter(|id| !p.agents.iter().any(|a| a.id == *id)) {
        agents.set(agent_slot(id, gen), AgentCfg::default(), 0)?;
    }
    Ok(())
}

fn policy_action(a: Action) -> u32 {
    match a {
        Action::Alert => policy_action::ALERT,
        Action::Deny => policy_action::DENY,
        Action::Kill => policy_action::KILL,
        Action::Hold => policy_action::HOLD,
    }
}

fn agent_bits(a: &crate::policy::CompiledAgent) -> u32 {
    let mut flags = agent_flags::ACTIVE;
    for (on, bit) in [
        (a.audit, agent_flags::AUDIT),
        (a.allow_io_uring, agent_flags::ALLOW_IO_URING),
        (a.allow_raw_socket, agent_flags::ALLOW_RAW_SOCKET),
        (a.allow_bpf, agent_flags::ALLOW_BPF),
        (a.allow_mount, agent_flags::ALLOW_MOUNT),
        (a.allow_namespaces, agent_flags::ALLOW_NAMESPACES),
    ] {
        if on {
            flags |= bit;
        }
    }
    flags
}

/// Every rule table entry of one generation (and the selectors, which are not per generation).
struct Tables {
    unix: Vec<(UnixKey, u32)>,
    sni: Vec<(SniKey, u32)>,
    host_dest: Vec<(HostKey, HostDest)>,
    net: Vec<(Key<NetData>, DestRule)>,
    paths_allow: Vec<(Key<PathAllowData>, u32)>,
    paths: Vec<(Key<PathData>, u32)>,
    comm: Vec<([u8; agent_monitor_common::COMM_LEN], u32)>,
    uid: Vec<(u32, u32)>,
    exe: Vec<(ExeKey, u32)>,
    cgroup: Vec<(u64, u32)>,
}

impl Tables {
    fn new(
        p: &CompiledPolicy,
        resolved: &[NetRule],
        exec_cgroups: &[(u64, u32)],
        protected: &[Protected],
        gen: u32,
    ) -> anyhow::Result<Self> {
        let slot = |id: u32| agent_slot(id, gen);
        let unix = p
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
        let sni = sni_entries(&p.hosts, resolved, gen);
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
        let exe = p
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
        let host_dest = host_dest_entries(p, gen);
        let mut cgroup = cgroup_selectors(p);
        // `exec` instances' cgroups are not in the policy; they stay selected through the swap.
        cgroup.extend_from_slice(exec_cgroups);
        Ok(Tables {
            unix,
            sni,
            host_dest,
            net: net_entries(&p.net, resolved, gen),
            paths_allow: path_entries(p, gen),
            paths,
            comm: p.comm.iter().map(|(c, id)| (*c, *id)).collect(),
            uid: p.uid.clone(),
            exe,
            cgroup,
        })
    }

    fn insert(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        insert_hash(ebpf, names::UNIX_ALLOW, &self.unix)?;
        insert_hash(ebpf, names::SNI_ALLOW, &self.sni)?;
        insert_hash(ebpf, names::HOST_DEST, &self.host_dest)?;
        insert_lpm(ebpf, names::NET_ALLOW, &self.net)?;
        insert_lpm(ebpf, names::PATH_ALLOW, &self.paths_allow)?;
        insert_lpm(ebpf, names::WRITABLE, &self.paths)?;
        insert_hash(ebpf, names::SEL_COMM, &self.comm)?;
        insert_hash(ebpf, names::SEL_UID, &self.uid)?;
        insert_hash(ebpf, names::SEL_EXE, &self.exe)?;
        insert_hash(ebpf, names::SEL_CGROUP, &self.cgroup)
    }

    /// Remove every entry that is not one of these (the old generation's, old selectors).
    fn remove_stale(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        remove_stale_hash(ebpf, names::UNIX_ALLOW, &self.unix)?;
        remove_stale_hash(ebpf, names::SNI_ALLOW, &self.sni)?;
        remove_stale_hash(ebpf, names::HOST_DEST, &self.host_dest)?;
        remove_stale_hash(ebpf, names::SEL_COMM, &self.comm)?;
        remove_stale_hash(ebpf, names::SEL_UID, &self.uid)?;
        remove_stale_hash(ebpf, names::SEL_EXE, &self.exe)?;
        remove_stale_hash(ebpf, names::SEL_CGROUP, &self.cgroup)?;
        remove_stale_lpm(ebpf, names::NET_ALLOW, &self.net)?;
        remove_stale_lpm(ebpf, names::PATH_ALLOW, &self.paths_allow)?;
        remove_stale_lpm(ebpf, names::WRITABLE, &self.paths)
    }
}

/// The policy's cgroup selectors as (cgroup inode, agent id), for the cgroups that exist now.
fn cgroup_selectors(p: &CompiledPolicy) -> Vec<(u64, u32)> {
    let root = cgroup2_root();
    let mut cg = Vec::new();
    for (path, id) in &p.cgroup {
        let Some(root) = &root else {
            warn!(cgroup = path, "no cgroup v2 hierarchy mounted; cgroup selector ignored");
            continue;
        };
        let dir = root.join(path.trim_start_matches('/'));
        match fs::metadata(&dir) {
            Ok(m) => cg.push((m.ino(), *id)),
            // The unit may not be started yet: its processes are matched by comm, exe or uid
            // meanwhile, and a reload picks the cgroup up.
            Err(e) => warn!(cgroup = %dir.display(), error = %e, "cgroup selector not found; ignored until reload"),
        }
    }
    cg
}

/// The `SNI_ALLOW` entries of generation `gen`: each TCP host name at each address it resolves
/// to (and its port), with its entry's `bind` (a resolved rule carries its host rule's `dest`).
fn sni_entries(hosts: &[HostRule], resolved: &[NetRule], gen: u32) -> Vec<(SniKey, u32)> {
    let mut out: Vec<(SniKey, u32)> = Vec::new();
    for r in resolved.iter().filter(|r| r.proto == agent_monitor_common::proto::TCP) {
        let Some(h) = r.dest.bind.checked_sub(HOST_BIND).and_then(|i| hosts.get(i as usize)) else {
            continue;
        };
        if h.host.len() >= SNI_LEN {
            continue;
        }
        let mut k = SniKey {
            agent: agent_slot(r.agent, gen),
            port: r.port.unwrap_or(0).to_be_bytes(),
            _pad: [0; 2],
            addr: r.addr.octets(),
            name: [0; SNI_LEN],
        };
        k.name[..h.host.len()].copy_from_slice(h.host.as_bytes());
        if !out.iter().any(|(k2, _)| *k2 == k) {
            out.push((k, gen_bind(r.dest.bind, gen)));
        }
    }
    out
}

/// `DestRule::bind` numbers the kernel's destination rules: the policy's address rules are
/// 1, 2, ... in order (`net_bind`), its host rules `HOST_BIND` + 0, 1, ... (`resolve_hosts`
/// writes it into each resolved address). 14 bits each; the generation takes the top one.
const HOST_BIND: u16 = 0x4000;

fn net_bind(i: usize) -> u16 {
    (i + 1).min(HOST_BIND as usize - 1) as u16
}

fn host_bind(i: usize) -> u16 {
    HOST_BIND + i.min(HOST_BIND as usize - 1) as u16
}

/// An `allow` entry's `bind` in generation `gen` (the top bit: the generation).
fn gen_bind(bind: u16, gen: u32) -> u32 {
    u32::from(bind & 0x7fff) | (gen & 1) << 15
}

/// A destination rule's id in generation `gen`: the two generations' `PATH_ALLOW` entries never
/// share an id (a connection made under the old policy finds none of the new one's paths).
fn gen_rule(rule: u32, gen: u32) -> u32 {
    if rule == 0 {
        0
    } else {
        rule | (gen & 1) << 31
    }
}

/// The `HOST_DEST` entries of generation `gen`: each TCP destination by the name a request's
/// `Host:` header gives it (a host name; an address rule for one address, as `a.b.c.d` or
/// `[v6]`), with its rule and port, for the TLS plaintext check.
pub fn host_dest_entries(p: &CompiledPolicy, gen: u32) -> Vec<(HostKey, HostDest)> {
    let mut out: Vec<(HostKey, HostDest)> = Vec::new();
    let mut add = |agent: u32, name: &str, port: Option<u16>, dest: &DestRule| {
        let b = name.to_ascii_lowercase().into_bytes();
        if b.is_empty() || b.len() >= HOST_LEN {
            warn!(
                host = name,
                "host name too long for the kernel's Host: table; requests to it are judged by http_methods"
            );
            return;
        }
        let mut k = HostKey { agent: agent_slot(agent, gen), port: port.unwrap_or(0) as u32, name: [0; HOST_LEN] };
        k.name[..b.len()].copy_from_slice(&b);
        let v = HostDest {
            dest: DestRule { rule: gen_rule(dest.rule, gen), bind: gen_bind(dest.bind, gen) as u16, ..*dest },
            port: port.unwrap_or(0) as u32,
            _pad: 0,
        };
        if !out.iter().any(|(k2, _)| *k2 == k) {
            out.push((k, v));
        }
    };
    for (i, h) in p.hosts.iter().enumerate().filter(|(_, h)| h.proto == agent_monitor_common::proto::TCP) {
        add(h.agent, &h.host, h.port, &DestRule { bind: host_bind(i), ..h.dest });
    }
    for (i, r) in p.net.iter().enumerate() {
        if r.proto != agent_monitor_common::proto::TCP || r.prefix_len != 128 {
            continue;
        }
        let name = match r.addr.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{}]", r.addr),
        };
        add(r.agent, &name, r.port, &DestRule { bind: net_bind(i), ..r.dest });
    }
    out
}

/// The `PATH_ALLOW` entries of generation `gen`.
fn path_entries(p: &CompiledPolicy, gen: u32) -> Vec<(Key<PathAllowData>, u32)> {
    p.paths
        .iter()
        .filter(|(_, path)| path.len() <= HTTP_PATH_LEN)
        .map(|(rule, path)| {
            let mut data = PathAllowData { rule: gen_rule(*rule, gen), path: [0; HTTP_PATH_LEN] };
            data.path[..path.len()].copy_from_slice(path.as_bytes());
            (Key::new(32 + 8 * path.len() as u32, data), 1)
        })
        .collect()
}

/// The `NET_ALLOW` key of a rule in generation `gen`.
pub fn net_key(r: &NetRule, gen: u32) -> Key<NetData> {
    let port = r.port.unwrap_or(0).to_be_bytes();
    Key::new(
        NET_KEY_FIXED_BITS + r.prefix_len as u32,
        NetData { agent: agent_slot(r.agent, gen), proto: r.proto, port, _pad: 0, addr: r.addr.octets() },
    )
}

/// Does the static rule `s` allow every connection the resolved rule `r` allows?
pub fn covers(s: &NetRule, r: &NetRule) -> bool {
    if s.agent != r.agent || s.proto != r.proto || (s.port.is_some() && s.port != r.port) || s.prefix_len > r.prefix_len
    {
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

/// Resolve the policy's host names (blocking: call off the async runtime). Each name is looked
/// up once per call however many rules name it; a name that stops resolving is said once (and
/// again once it resolves), not at every refresh.
pub fn resolve_hosts(hosts: &[HostRule]) -> Vec<NetRule> {
    use std::collections::HashMap;
    use std::net::{IpAddr, ToSocketAddrs};
    use std::sync::{Mutex, OnceLock};
    static FAILING: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let failing = FAILING.get_or_init(Default::default);
    let mut looked_up: HashMap<&str, Vec<IpAddr>> = HashMap::new();
    let mut out = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ips = looked_up.entry(h.host.as_str()).or_insert_with(|| match (h.host.as_str(), 0u16).to_socket_addrs() {
            Ok(addrs) => {
                if failing.lock().unwrap().remove(&h.host) {
                    info!(host = h.host, "an allowed host resolves again");
                }
                addrs.map(|a| a.ip()).collect()
            }
            Err(e) => {
                if failing.lock().unwrap().insert(h.host.clone()) {
                    warn!(host = h.host, error = %e, "cannot resolve an allowed host; it stays unreachable until it resolves");
                }
                Vec::new()
            }
        });
        for ip in ips.iter() {
            let (addr, prefix_len) = ipv6_form(*ip, if ip.is_ipv4() { 32 } else { 128 });
            let dest = DestRule { bind: host_bind(i), ..h.dest };
            let rule = NetRule { agent: h.agent, addr, prefix_len, port: h.port, proto: h.proto, dest };
            if !out.contains(&rule) {
                out.push(rule);
            }
        }
    }
    out
}

/// The `NET_ALLOW` entries of generation `gen`: static rules, plus resolved host names.
fn net_entries(rules: &[NetRule], resolved: &[NetRule], gen: u32) -> Vec<(Key<NetData>, DestRule)> {
    let value = |r: &NetRule, origin: u8| DestRule {
        origin,
        rule: gen_rule(r.dest.rule, gen),
        bind: gen_bind(r.dest.bind, gen) as u16,
        ..r.dest
    };
    let mut out: Vec<(Key<NetData>, DestRule)> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                net_key(r, gen),
                value(&NetRule { dest: DestRule { bind: net_bind(i), ..r.dest }, ..r.clone() }, net_origin::STATIC),
            )
        })
        .collect();
    // A resolved address already covered by a literal rule keeps that rule's meaning (no
    // server-name check); otherwise it is allowed only as that host name.
    for r in resolved {
        if !rules.iter().any(|s| covers(s, r)) {
            out.push((net_key(r, gen), value(r, net_origin::HOST)));
        }
    }
    out
}

/// Refresh the address rules and server names of the active generation (host names
/// re-resolved): new entries first, then the stale ones removed.
pub fn apply_net(ebpf: &mut Ebpf, hosts: &[HostRule], rules: &[NetRule], resolved: &[NetRule]) -> anyhow::Result<()> {
    let gen = generation(ebpf);
    let entries = net_entries(rules, resolved, gen);
    let sni = sni_entries(hosts, resolved, gen);
    insert_lpm(ebpf, names::NET_ALLOW, &entries)?;
    insert_hash(ebpf, names::SNI_ALLOW, &sni)?;
    remove_stale_lpm(ebpf, names::NET_ALLOW, &entries)?;
    remove_stale_hash(ebpf, names::SNI_ALLOW, &sni)
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

fn insert_lpm<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str, entries: &[(Key<K>, V)]) -> anyhow::Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    for (k, v) in entries {
        trie.insert(k, v, 0).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

/// Remove every entry of the trie `name` that is not in `entries` (compared as prefix length and
/// the key's bytes).
fn remove_stale_lpm<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &[(Key<K>, V)],
) -> anyhow::Result<()> {
    let bytes = |k: &Key<K>| -> (u32, Vec<u8>) {
        let data = k.data();
        // SAFETY: `K` is plain old data (`aya::Pod`): every byte is initialised.
        let b = unsafe { std::slice::from_raw_parts(&data as *const K as *const u8, std::mem::size_of::<K>()) };
        (k.prefix_len(), b.to_vec())
    };
    let wanted: HashSet<(u32, Vec<u8>)> = entries.iter().map(|(k, _)| bytes(k)).collect();
    let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    let stale: Vec<Key<K>> = trie.keys().filter_map(Result::ok).filter(|k| !wanted.contains(&bytes(k))).collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
    Ok(())
}
