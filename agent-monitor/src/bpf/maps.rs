//! Typed access to the kernel maps: the generation, the daemon's slots, grants, selectors added
//! by `exec`, the process table, TLS visibility and the kernel's counters.
use std::{collections::HashSet, fs, path::PathBuf};

use agent_monitor_common::{daemon_slot, maps::names, proc_flags, stat, ProcState, SockInfo};
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};

pub(super) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
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

/// The active policy generation (see `agent_monitor_common::agent_slot`).
pub fn generation(ebpf: &Ebpf) -> u32 {
    ebpf.map(names::GENERATION)
        .and_then(|m| Array::<&MapData, u32>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .unwrap_or(0)
        & 1
}

pub(super) fn set_generation(ebpf: &mut Ebpf, gen: u32) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, names::GENERATION)?)?;
    a.set(0, gen, 0).context("writing GENERATION")?;
    Ok(())
}

/// Tell the kernel side which process is the daemon (self-protection).
/// `lsm`: the BPF LSM layer is attached in full (the tracepoint layer then leaves signals,
/// ptrace and bpf() to it).
pub fn set_daemon(ebpf: &mut Ebpf, tgid: u32, lsm: bool, unix_refusal: bool) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, names::DAEMON)?)?;
    a.set(daemon_slot::PID, tgid, 0)?;
    a.set(daemon_slot::LSM_ACTIVE, lsm as u32, 0)?;
    a.set(daemon_slot::UNIX_CGROUP, unix_refusal as u32, 0)?;
    Ok(())
}

/// Let one held connect through: `value` is the expiry (ns since boot), top bit = once.
pub fn add_grant(ebpf: &mut Ebpf, key: agent_monitor_common::GrantKey, value: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, agent_monitor_common::GrantKey, u64> =
        HashMap::try_from(map_mut(ebpf, names::GRANTS)?)?;
    m.insert(key, value, 0).context("writing GRANTS")?;
    Ok(())
}

/// Let one held file operation through (BPF LSM layer): `value` is the expiry, top bit = once.
pub fn add_file_grant(ebpf: &mut Ebpf, key: agent_monitor_common::FileGrantKey, value: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, agent_monitor_common::FileGrantKey, u64> =
        HashMap::try_from(map_mut(ebpf, names::FILE_GRANTS)?)?;
    m.insert(key, value, 0).context("writing FILE_GRANTS")?;
    Ok(())
}

/// Let the held request of socket `cookie` through (see `agent_monitor_common::sock_state`).
pub fn approve_socket(ebpf: &mut Ebpf, cookie: u64) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, u64, SockInfo> = HashMap::try_from(map_mut(ebpf, names::SOCKS)?)?;
    let mut info = m.get(&cookie, 0).context("the held socket is gone (closed, or evicted from SOCKS)")?;
    info.blocked = agent_monitor_common::sock_state::APPROVED;
    m.insert(cookie, info, 0).context("writing SOCKS")?;
    Ok(())
}

/// Nanoseconds since boot (the clock of `bpf_ktime_get_boot_ns`).
pub fn boot_clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Add a dynamic cgroup selector (an `exec` instance's cgroup).
/// `exec`: the cgroup of an `agent-monitor exec` command (its processes are Landlocked).
pub fn add_cgroup_selector(ebpf: &mut Ebpf, cgroup_id: u64, agent: u32, exec: bool) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, u64, u32> = HashMap::try_from(map_mut(ebpf, names::SEL_CGROUP)?)?;
    let v = if exec { agent | agent_monitor_common::SEL_CGROUP_EXEC } else { agent };
    m.insert(cgroup_id, v, 0).context("writing SEL_CGROUP")?;
    Ok(())
}

pub fn remove_cgroup_selector(ebpf: &mut Ebpf, cgroup_id: u64) {
    if let Ok(map) = map_mut(ebpf, names::SEL_CGROUP) {
        if let Ok(mut m) = HashMap::<&mut MapData, u64, u32>::try_from(map) {
            let _ = m.remove(&cgroup_id);
        }
    }
}

/// The daemon run whose per-agent TLS hooks are in force (0: none): until an agent process
/// carries this token, its TLS handshakes wait (see `tls_hooks_pending` in the eBPF crate).
pub fn set_tls_token_in_force(ebpf: &mut Ebpf, token: u32) -> anyhow::Result<()> {
    let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, names::DAEMON)?)?;
    a.set(daemon_slot::TLS_TOKEN, token, 0)?;
    Ok(())
}

/// Mark processes as doing their TLS through a hooked library (what the handshake hook does).
pub fn mark_tls_visible(ebpf: &mut Ebpf, pids: &[u32]) {
    let Ok(mut table) =
        map_mut(ebpf, names::PROCS).and_then(|m| Ok(HashMap::<&mut MapData, u32, ProcState>::try_from(m)?))
    else {
        return;
    };
    for &pid in pids {
        if let Ok(st) = table.get(&pid, 0) {
            // BPF_EXIST: never bring back the entry of a process that exits meanwhile.
            let _ = table.insert(pid, ProcState { flags: st.flags | proc_flags::TLS_VISIBLE, ..st }, 2);
        }
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

/// Agent processes whose current image does TLS through a hooked library (tgids).
pub fn tls_visible(ebpf: &Ebpf) -> HashSet<u32> {
    tracked(ebpf).into_iter().filter(|(_, st)| st.flags & proc_flags::TLS_VISIBLE != 0).map(|(pid, _)| pid).collect()
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

/// One line of a `mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    pub id: u32,
    /// `major:minor` of the filesystem (two mounts of one device show the same files).
    pub dev: String,
    /// It mounts a whole filesystem (its root column is `/`).
    pub whole: bool,
}

/// The mounts of the mount namespace of process `pid`.
pub fn mount_ids(pid: &str) -> Vec<MountLine> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    parse_mount_ids(&text)
}

/// Each line of a mountinfo text, then the parents that are not listed: the mounts above the
/// namespace's root (the initial rootfs under a pivot_root), which every path walk crosses on
/// its way to the top of the tree.
fn parse_mount_ids(text: &str) -> Vec<MountLine> {
    let mut ids = Vec::new();
    let mut parents = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().take(4).collect();
        let [id, parent, dev, root] = f[..] else { continue };
        let (Ok(id), Ok(parent)) = (id.parse::<u32>(), parent.parse::<u32>()) else { continue };
        ids.push(MountLine { id, dev: dev.to_string(), whole: root == "/" });
        parents.push(parent);
    }
    for p in parents {
        if !ids.iter().any(|m| m.id == p) {
            ids.push(MountLine { id: p, dev: String::new(), whole: true });
        }
    }
    ids
}

/// Learn mounts as the host's (`KNOWN_MOUNTS`): a path crossing any other mount is not judged by
/// its name. `all`: every mount of `mounts`. Else only a whole filesystem seen nowhere else (a
/// new tmpfs, a disk): a bind mount made after the daemon started, or a second mount of a
/// device already mounted (`mount /dev/vda /tmp/work/r` aliases every file of `/`), is never
/// learned, whoever made it.
pub fn learn_mounts(ebpf: &mut Ebpf, mounts: &[MountLine], all: bool) -> usize {
    let Ok(mut m) =
        map_mut(ebpf, names::KNOWN_MOUNTS).and_then(|m| Ok(HashMap::<&mut MapData, u32, u32>::try_from(m)?))
    else {
        return 0;
    };
    let mut n = 0;
    for line in mounts {
        if m.get(&line.id, 0).is_ok() {
            continue;
        }
        let alias = mounts.iter().any(|o| o.id != line.id && o.dev == line.dev);
        if (all || (line.whole && !alias)) && m.insert(line.id, 1, 0).is_ok() {
            n += 1;
        }
    }
    n
}

/// Forget the released blocked sockets (`SockInfo::released`) whose refused bytes TCP has
/// given up sending: released more than `SOCK_RELEASED_KEEP_SECS` ago. Returns how many.
pub fn sweep_released_socks(ebpf: &mut Ebpf) -> usize {
    let Ok(mut m) = map_mut(ebpf, names::SOCKS).and_then(|m| Ok(HashMap::<&mut MapData, u64, SockInfo>::try_from(m)?))
    else {
        return 0;
    };
    let now = (boot_clock_ns() / 1_000_000_000) as u32;
    let old: Vec<u64> = m
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, i)| {
            i.released != 0 && now.wrapping_sub(i.held_seq) > agent_monitor_common::SOCK_RELEASED_KEEP_SECS
        })
        .map(|(k, _)| k)
        .collect();
    old.iter().filter(|k| m.remove(k).is_ok()).count()
}

/// The daemon's threads (`DAEMON_TIDS`): every thread id in /proc/self/task, and no other.
pub fn sync_daemon_tids(ebpf: &mut Ebpf) {
    let Ok(mut m) = map_mut(ebpf, names::DAEMON_TIDS).and_then(|m| Ok(HashMap::<&mut MapData, u32, u32>::try_from(m)?))
    else {
        return;
    };
    let live: HashSet<u32> = fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for tid in &live {
        let _ = m.insert(tid, 1, 0);
    }
    let stale: Vec<u32> = m.keys().filter_map(Result::ok).filter(|t| !live.contains(t)).collect();
    for tid in stale {
        let _ = m.remove(&tid);
    }
}

/// A held TLS write of instance `run_id` is decided: its connections may carry bytes again.
pub fn release_held_run(ebpf: &mut Ebpf, run_id: u64) {
    if let Ok(mut m) = map_mut(ebpf, names::HELD_RUNS).and_then(|m| Ok(HashMap::<&mut MapData, u64, u32>::try_from(m)?))
    {
        let _ = m.remove(&run_id);
    }
}

/// Instances marked killed that have no process left: their marks go (`KILLED` never evicts).
pub fn forget_dead_kills(ebpf: &mut Ebpf, tracked: &[(u32, ProcState)]) {
    let Ok(mut m) = map_mut(ebpf, names::KILLED).and_then(|m| Ok(HashMap::<&mut MapData, u64, u32>::try_from(m)?))
    else {
        return;
    };
    let live: HashSet<u64> = tracked.iter().map(|(_, st)| st.run_id).collect();
    let dead: Vec<u64> = m.keys().filter_map(Result::ok).filter(|r| !live.contains(r)).collect();
    for r in dead {
        let _ = m.remove(&r);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mount_ids;

    #[test]
    fn mount_ids_include_the_unlisted_parent_of_the_root() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    60 27 254:0 /srv/data /mnt rw,relatime - ext4 /dev/vda rw\n\
                    garbage\n";
        let line = |id, dev: &str, whole| super::MountLine { id, dev: dev.into(), whole };
        let got = parse_mount_ids(text);
        assert_eq!(got, [line(27, "254:0", true), line(22, "0:21", true), line(60, "254:0", false), line(1, "", true)]);
    }
}
