//! Kernel programs of agent-monitor.
//!
//! Layout (see `maps.rs` for every map):
//! - `kernel.rs`: reading kernel structures (task, file, dentry) with offsets from BTF, and
//!   rebuilding absolute paths in the kernel.
//! - `agent.rs`: the shared decision skeleton: is the current task an agent, is a path writable,
//!   enforce the policy's action, emit the event.
//! - `probes/process.rs`: fork/exec/exit: agent identity and inheritance.
//! - `probes/file.rs`: the file-write boundary (syscall tracepoints).
//! - `probes/bypass.rs`: io_uring, raw/packet sockets and `bpf()`: the known ways around tracing.
#![no_std]
#![no_main]

mod agent;
mod http;
mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic; the verifier rejects any path that would reach here.
    unsafe { core::hint::unreachable_unchecked() }
}
