//! Draining the ring buffer: decode, record, count, and finish kills from userspace.
use std::sync::Arc;

use agent_monitor_common::{action, Event};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{error, warn};

use crate::{daemon::Shared, events::EventRecord};

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
    // Every event is decoded into this record, reusing its buffers (see `Decoder::decode_into`).
    let mut rec = EventRecord::default();
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
            handle(&shared, &ev, &mut rec).await;
        }
        // One write(2) per batch, not per event.
        shared.flush();
    }
}

/// How long an event may wait in the ring buffer when the kernel did not wake us.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

fn drain(ring: &mut RingBuf<MapData>, shared: &Arc<Shared>, batch: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        match pad_event(&item) {
            Some(ev) => batch.push(ev),
            None => shared.metrics.decode_errors.inc(),
        }
    }
}

async fn handle(shared: &Arc<Shared>, ev: &Event, rec: &mut EventRecord) {
    let decoded = shared.decoder.lock().unwrap().decode_into(ev, rec);
    if !decoded {
        shared.metrics.decode_errors.inc();
        warn!(kind = ev.kind, "event with an unknown kind dropped");
        return;
    }
    if ev.kind == agent_monitor_common::kind::PROCESS_EXEC
        && ev.flags & agent_monitor_common::event_flags::INSTANCE_START != 0
    {
        shared.hook_instance_tls(ev.run_id, ev.pid);
    }
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
    shared.record(ev, rec);
}

/// A ring-buffer record as a whole `Event`: the kernel cuts records where their unused paths
/// begin (`agent_monitor_common::EVENT_SHORT`, `EVENT_ONE_PATH`); the missing tail is zeros and
/// the path lengths are bounded by the bytes the record has. None if it is not even a header.
pub fn pad_event(item: &[u8]) -> Option<Event> {
    use agent_monitor_common::{EVENT_HEAD, EVENT_ONE_PATH};
    const FULL: usize = std::mem::size_of::<Event>();
    if item.len() < EVENT_HEAD {
        return None;
    }
    let mut buf = [0u8; FULL];
    let n = item.len().min(FULL);
    buf[..n].copy_from_slice(&item[..n]);
    // SAFETY: `Event` is plain old data (integers and byte arrays); any bytes are a value.
    let mut ev: Event = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const Event) };
    ev.path_len = ev.path_len.min(n.saturating_sub(EVENT_HEAD) as u32);
    ev.path2_len = ev.path2_len.min(n.saturating_sub(EVENT_ONE_PATH) as u32);
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::{EVENT_ONE_PATH, EVENT_SHORT};

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: plain old data.
        unsafe { std::slice::from_raw_parts(ev as *const Event as *const u8, std::mem::size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn short_records_are_padded_and_their_lengths_bounded() {
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.pid = 42;
        ev.path[..4].copy_from_slice(b"/tmp");
        ev.path_len = 4;
        let full = bytes(&ev);
        let short = pad_event(&full[..EVENT_SHORT]).unwrap();
        assert_eq!((short.pid, short.path_len, &short.path[..4]), (42, 4, &b"/tmp"[..]));
        // A length that claims more than the record holds is cut to what it holds.
        ev.path_len = 200;
        ev.path2_len = 9;
        let full = bytes(&ev);
        let one = pad_event(&full[..EVENT_ONE_PATH]).unwrap();
        assert_eq!((one.path_len, one.path2_len), (200, 0));
        let short = pad_event(&full[..EVENT_SHORT]).unwrap();
        assert_eq!(short.path_len, 16);
        assert_eq!(pad_event(&full).unwrap().path2_len, 9);
        assert!(pad_event(&full[..50]).is_none());
    }
}
