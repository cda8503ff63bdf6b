//! Finishing a kill: the kernel kills the offending process and any member of its instance that
//! makes a hooked call; this reaches the members that make none.
use std::{path::Path, sync::Mutex, time::Duration};

use tracing::warn;

use crate::bpf::{maps as kmaps, Kernel};

/// SIGKILL every process of agent instance `run_id` (the daemon itself excepted), until none is
/// left or 20 rounds have passed (a process forking as fast as it is killed).
pub fn kill_instance(kernel: &Mutex<Kernel>, run_id: u64) {
    let own = std::process::id();
    for _ in 0..20 {
        let members: Vec<u32> = {
            let k = kernel.lock().unwrap();
            kmaps::tracked(&k.ebpf).into_iter().filter(|(_, st)| st.run_id == run_id).map(|(pid, _)| pid).collect()
        };
        let alive: Vec<u32> =
            members.into_iter().filter(|&p| p != own && Path::new(&format!("/proc/{p}")).exists()).collect();
        if alive.is_empty() {
            return;
        }
        for pid in alive {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!(run = format!("{run_id:016x}"), "agent instance still has live processes after repeated SIGKILL");
}
