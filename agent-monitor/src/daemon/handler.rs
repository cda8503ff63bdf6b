//! The daemon's answers to the control socket (`control::server::Handler`).
use std::{path::Path, time::Duration};

use tokio::sync::broadcast;

use super::state::State;
use crate::{
    bpf::maps as kmaps,
    control::{
        protocol::{AgentStatus, Counters, Layers, Pins, PolicyStatus, ProcessStatus, Status, TlsHooks},
        server::Handler,
    },
    enforce::holds::{Decision, Grant},
};

impl Handler for State {
    /// An agent process, or one whose ancestors include an agent process: a process that left
    /// the table (an exit of its leader, a full table) still descends from its instance's root.
    fn is_agent(&self, pid: u32) -> bool {
        let k = self.kernel.lock().unwrap();
        let mut p = pid;
        for _ in 0..64 {
            if kmaps::is_tracked(&k.ebpf, p) {
                return true;
            }
            match parent_of(p) {
                Some(pp) if pp > 1 && pp != p => p = pp,
                _ => return false,
            }
        }
        // Deeper than any real tree: refuse rather than guess.
        true
    }

    fn status(&self) -> Status {
        status(self)
    }

    fn reload(&self) -> Result<(), Vec<String>> {
        State::reload(self)
    }

    fn decide_hold(
        &self,
        id: &str,
        approve: bool,
        for_secs: u64,
        approver: (u32, String),
    ) -> anyhow::Result<serde_json::Value> {
        let grant = if for_secs > 0 { Grant::For(Duration::from_secs(for_secs)) } else { Grant::Once };
        let outcome = if approve { "approved" } else { "denied" };
        State::decide_hold(self, id, Decision { approve, grant, approver, outcome })
    }

    fn register(&self, agent: &str, cgroup: &str, caller: u32) -> anyhow::Result<()> {
        self.register_exec(agent, cgroup, caller)
    }

    fn unregister(&self, cgroup: &str, caller: u32) {
        self.unregister_exec(cgroup, caller)
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.live.subscribe()
    }
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn status(s: &State) -> Status {
    let (tracked, layers, tls_libs, visible, pins, tls_hooks) = {
        let k = s.kernel.lock().unwrap();
        let pins = k.pin_dir.as_ref().map(|d| Pins { dir: d.display().to_string(), adopted: k.adopted });
        let tls_hooks = match &k.agent_tls {
            Some(t) => TlsHooks {
                scope: "agents".into(),
                tracefs_group: Some(t.group().to_string()),
                hooked_processes: Some(t.armed_processes()),
            },
            None if k.tls_libs.is_empty() => TlsHooks { scope: "none".into(), ..Default::default() },
            None => TlsHooks { scope: "all processes".into(), ..Default::default() },
        };
        (kmaps::tracked(&k.ebpf), k.layers.clone(), k.tls_libs.clone(), kmaps::tls_visible(&k.ebpf), pins, tls_hooks)
    };
    let compiled = s.compiled.lock().unwrap().clone();
    let invisible = s.tls_invisible.lock().unwrap().clone();
    let agents = compiled
        .agents
        .iter()
        .map(|a| AgentStatus {
            name: a.name.clone(),
            action: a.action.as_str().into(),
            processes: tracked
                .iter()
                .filter(|(_, st)| st.agent == a.id)
                .map(|(pid, st)| {
                    let tls = if invisible.contains(pid) {
                        "invisible"
                    } else if visible.contains(pid) {
                        "visible"
                    } else {
                        "none seen"
                    };
                    let comm = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                        .unwrap_or_default();
                    ProcessStatus {
                        pid: *pid,
                        run: format!("{:016x}", st.run_id),
                        comm: comm.trim().into(),
                        tls: tls.into(),
                        tls_stacks: crate::bpf::tls_libs::process_stacks(*pid, &tls_libs),
                    }
                })
                .collect(),
        })
        .collect();
    let m = &s.metrics;
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        policy: PolicyStatus { source: s.source.describe(), hash: compiled.hash.clone() },
        layers: Layers {
            tracepoint: layers.tracepoint,
            cgroup: layers.cgroup,
            uprobe: layers.uprobe,
            bpf_lsm: layers.bpf_lsm,
            landlock: layers.landlock,
            notes: layers.notes,
        },
        pins,
        holds: s.holds.list().iter().map(|h| h.json()).collect(),
        tls_libraries: tls_libs.iter().map(|p| p.display().to_string()).collect(),
        tls_hooks,
        agents,
        counters: Counters {
            events_lost: m.events_lost.get(),
            reloads_failed: m.reloads.with_label_values(&["failure"]).get(),
            reloads_succeeded: m.reloads.with_label_values(&["success"]).get(),
        },
    }
}
