//! Policy changes while running: a reload (SIGHUP or the control socket), `exec` instances
//! registering their cgroups, and allowed host names resolved again.
use std::{fs, os::unix::fs::MetadataExt};

use anyhow::anyhow;
use tracing::{error, info, warn};

use super::state::State;
use crate::{
    bpf::{apply, maps as kmaps},
    policy::{self, CompiledPolicy},
};

impl State {
    /// Re-read the policy; a bad one is rejected with its errors and the old one keeps
    /// enforcing. `Err` carries the diagnostics (`FILE:LINE:COL: message`).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let policy = match self.source.load() {
            Ok(p) => p,
            Err(diags) => {
                for d in &diags {
                    error!("{d}");
                }
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                error!(errors = diags.len(), "policy reload rejected; the previous policy is still enforcing");
                return Err(diags.iter().map(|d| d.to_string()).collect());
            }
        };
        // Running agent processes carry their agent's id: keep ids stable by name.
        let compiled = policy::compile(&policy).with_stable_ids(&self.compiled.lock().unwrap());
        let resolved = apply::resolve_hosts(&compiled.hosts);
        let exec_cgroups = self.exec_selectors(&compiled);
        let mut k = self.kernel.lock().unwrap();
        // Events decided by the new generation may be read before apply_policy returns.
        let next = 1 - kmaps::generation(&k.ebpf);
        self.decoder.lock().unwrap().expect_policy(next, &compiled.hash, compiled.names_by_id());
        let result = apply::apply_policy(&mut k.ebpf, &compiled, &resolved, &exec_cgroups, &self.protected)
            .and_then(|_| crate::bpf::adopt::adopt_running(&mut k.ebpf, &compiled).map(|_| ()));
        drop(k);
        *self.resolved.lock().unwrap() = resolved;
        match result {
            Ok(()) => {
                self.decoder.lock().unwrap().agent_names = compiled.names_by_id();
                self.metrics.set_policy(&compiled.hash, compiled.agents.len());
                self.metrics.init_agents(&compiled.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>());
                info!(hash = compiled.hash, agents = compiled.agents.len(), "policy reloaded");
                self.record_policy(&compiled);
                *self.compiled.lock().unwrap() = compiled;
                self.metrics.reloads.with_label_values(&["success"]).inc();
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                error!(error = %format!("{e:#}"), "applying the reloaded policy failed");
                Err(vec![format!("applying the policy to the kernel failed: {e:#}")])
            }
        }
    }

    /// `agent-monitor exec` asks for its command's cgroup to select `agent`: the command is
    /// that agent from its first instruction (the exec hook matches the cgroup). `caller` (the
    /// `exec` process) has the TLS hooks before it starts the command, so the command and its
    /// descendants inherit them at fork.
    pub fn register_exec(&self, agent: &str, cgroup: &str, caller: u32) -> anyhow::Result<()> {
        let id = self.compiled.lock().unwrap().agent_id(agent).ok_or_else(|| anyhow!("no agent named {agent:?}"))?;
        let ino = cgroup_ino(cgroup)?;
        {
            let mut k = self.kernel.lock().unwrap();
            kmaps::add_cgroup_selector(&mut k.ebpf, ino, id, true)?;
            k.hook_exec_caller(caller);
        }
        self.registered.lock().unwrap().push((cgroup.to_string(), agent.to_string()));
        info!(agent, cgroup, "exec instance registered");
        Ok(())
    }

    pub fn unregister_exec(&self, cgroup: &str, caller: u32) {
        self.registered.lock().unwrap().retain(|(c, _)| c != cgroup);
        let ino = cgroup_ino(cgroup).ok();
        let mut k = self.kernel.lock().unwrap();
        k.unhook_exec_caller(caller);
        if let Some(ino) = ino {
            kmaps::remove_cgroup_selector(&mut k.ebpf, ino);
        }
    }

    /// The registered `exec` cgroups as selectors of `compiled` (cgroup inode, agent id with
    /// `SEL_CGROUP_EXEC`). An
    /// instance whose agent the new policy no longer has loses its registration (its running
    /// processes keep the agent they are); said in the log.
    fn exec_selectors(&self, compiled: &CompiledPolicy) -> Vec<(u64, u32)> {
        let mut regs = self.registered.lock().unwrap();
        let mut out = Vec::new();
        regs.retain(|(cgroup, agent)| {
            let Some(id) = compiled.agent_id(agent) else {
                warn!(agent, cgroup, "the reloaded policy has no such agent: exec instance no longer selected");
                return false;
            };
            match cgroup_ino(cgroup) {
                Ok(ino) => {
                    out.push((ino, id | agent_monitor_common::SEL_CGROUP_EXEC));
                    true
                }
                Err(_) => false,
            }
        });
        out
    }

    /// Resolve the policy's host names again and update the kernel when an address changed.
    pub fn refresh_hosts(&self) {
        let (hosts, net) = {
            let c = self.compiled.lock().unwrap();
            (c.hosts.clone(), c.net.clone())
        };
        if hosts.is_empty() {
            return;
        }
        let resolved = apply::resolve_hosts(&hosts);
        let mut current = self.resolved.lock().unwrap();
        if *current == resolved {
            return;
        }
        let mut k = self.kernel.lock().unwrap();
        match apply::apply_net(&mut k.ebpf, &hosts, &net, &resolved) {
            Ok(()) => {
                info!(addresses = resolved.len(), "allowed host names re-resolved");
                *current = resolved;
            }
            Err(e) => error!(error = %format!("{e:#}"), "updating resolved host addresses failed"),
        }
    }
}

/// The inode (cgroup id) of a cgroup given by its path under the cgroup v2 root.
fn cgroup_ino(cgroup: &str) -> anyhow::Result<u64> {
    let root = kmaps::cgroup2_root().ok_or_else(|| anyhow!("no cgroup v2 hierarchy"))?;
    let dir = root.join(cgroup.trim_start_matches('/'));
    Ok(fs::metadata(&dir).map_err(|e| anyhow!("cgroup {}: {e}", dir.display()))?.ino())
}
