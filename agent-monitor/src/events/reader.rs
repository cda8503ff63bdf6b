//! Draining the ring buffer: decode, record, count, and finish kills from userspace.
use std::sync::Arc;

use agent_monitor_common::{action, Event};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{error, warn};

use crate::daemon::Shared;

/// Read events until the ring buffer is closed.
#[allow(deprecated)] // AsyncFd::new: the ring buffer owns its fd for as long as the AsyncFd lives
pub async fn run(ring: RingBuf<MapData>, shared: Arc<Shared>) {
    let mut fd = match AsyncFd::new(ring) /* aya's RingBuf owns its fd */ {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the event ring buffer: no events will be recorded");
            return;
        }
    };
    loop {
        // The kernel wakes us for a batch or an urgent event (a kill to finish, a hold to
        // announce); anything else is picked up on this tick.
        let mut batch = Vec::new();
        match tokio::time::timeout(TICK, fd.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                drain(guard.get_inner_mut(), &shared, &mut batch);
                guard.clear_ready();
            }
            Ok(Err(e)) => {
                error!(error = %e, "event ring buffer poll failed");
                return;
            }
            Err(_) => drain(fd.get_mut(), &shared, &mut batch),
        }
        if batch.is_empty() {
            continue;
        }
        for ev in batch {
            handle(&shared, &ev).await;
        }
        // One write(2) per batch, not per event.
        shared.flush();
    }
}

/// How long an event may wait in the ring buffer when the kernel did not wake us.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

fn drain(ring: &mut RingBuf<MapData>, shared: &Arc<Shared>, batch: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            shared.metrics.decode_errors.inc();
            continue;
        }
        // SAFETY: the record is an `Event` written by the kernel side; read unaligned.
        batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
    }
}

async fn handle(shared: &Arc<Shared>, ev: &Event) {
    let rec = {
        let mut d = shared.decoder.lock().unwrap();
        d.decode(ev)
    };
    let Some(mut rec) = rec else {
        shared.metrics.decode_errors.inc();
        warn!(kind = ev.kind, "event with an unknown kind dropped");
        return;
    };
    if ev.flags & agent_monitor_common::event_flags::TLS_INVISIBLE != 0 {
        shared.tls_invisible.lock().unwrap().insert(ev.pid);
    }
    if ev.action == action::HELD {
        if let Ok(kind) = agent_monitor_common::Kind::try_from(ev.kind) {
            let h = shared.holds.create(ev, &rec.agent, kind, &rec.target, &rec.detail, &rec.ts);
            shared.metrics.holds_pending.set(shared.holds.len() as i64);
            if h.socket.is_some() {
                // The kernel stops the writer as its send returns when it can; this covers the
                // case where the packet left from another context.
                // SAFETY: plain kill(2).
                unsafe { libc::kill(h.pid as i32, libc::SIGSTOP) };
            }
            let what = if h.socket.is_some() {
                "held in the kernel before it reached the network, the writer stopped"
            } else if h.paused {
                "paused before the call"
            } else {
                "refused and held as a request"
            };
            rec.detail = format!(
                "{}{}{what}: `agent-monitor approve {id}` or `agent-monitor deny {id}`",
                rec.detail,
                if rec.detail.is_empty() { "" } else { "; " },
                id = h.id
            );
        }
    }
    if ev.action == action::KILLED {
        // The kernel killed the offending process; finish the rest of its instance.
        let run_id = ev.run_id;
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || sh.kill_instance(run_id));
    }
    shared.record(&rec);
}
