//! Draining the ring buffer into batches of wire records.
use agent_monitor_common::Event;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::metrics::Metrics;

/// What the reader hands each batch of records to (the daemon's event pipeline).
pub trait BatchHandler {
    /// Every record of one wakeup or tick, in ring-buffer order.
    fn batch(&mut self, events: &[Event]);
}

/// Why the reader stopped: it only returns on an error, and enforcement does not depend on it
/// (decisions are made in the kernel), but nothing is recorded any more.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot poll the event ring buffer: {0}")]
    Poll(#[source] std::io::Error),
}

/// Read events until an error; each batch goes to `handler`.
#[allow(deprecated)] // AsyncFd::new: the ring buffer owns its fd for as long as the AsyncFd lives
pub async fn run(
    ring: RingBuf<MapData>,
    metrics: &Metrics,
    handler: &mut impl BatchHandler,
) -> Result<(), ReaderError> {
    let mut fd = AsyncFd::new(ring).map_err(ReaderError::Poll)?;
    let mut batch = Vec::new();
    loop {
        // The kernel wakes us for a batch or an urgent event (a kill to finish, a hold to
        // announce); anything else is picked up on this tick.
        batch.clear();
        match tokio::time::timeout(TICK, fd.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                drain(guard.get_inner_mut(), metrics, &mut batch);
                guard.clear_ready();
            }
            Ok(Err(e)) => return Err(ReaderError::Poll(e)),
            Err(_) => drain(fd.get_mut(), metrics, &mut batch),
        }
        if !batch.is_empty() {
            handler.batch(&batch);
        }
    }
}

/// How long an event may wait in the ring buffer when the kernel did not wake us.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

fn drain(ring: &mut RingBuf<MapData>, metrics: &Metrics, batch: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        match pad_event(&item) {
            Some(ev) => batch.push(ev),
            None => metrics.decode_errors.inc(),
        }
    }
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
