//! Agent processes that were running before the daemon (or before a reload added their
//! selector): found in /proc and put in the process table with all their descendants.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    path::Path,
};

use agent_monitor_common::{maps::names, ProcState};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use tracing::{debug, info};

use super::maps::{boot_clock_ns, map_mut};
use crate::policy::{comm_key, CompiledPolicy};

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
        let run_id = boot_clock_ns() ^ ((root.pid as u64) << 40);
        let mut stack = vec![root.pid];
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(info) = by_pid.get(&pid) {
                let st =
                    ProcState { agent, tls_token: 0, run_id, start_ns: info.start_ticks * tick_ns, flags: 0, _pad: 0 };
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
