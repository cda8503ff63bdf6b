//! The per-event counters, through handles cached by what the kernel said: the event path
//! counts ~1 M events a second and `with_label_values` costs more than the rest of the count.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use agent_monitor_common::{action, Action, Event, Kind, Verdict, AGENT_SLOTS_PER_GEN};
use prometheus::IntCounter;

use super::Metrics;

/// The series each decoded event counts into (`agent_monitor_events_total`, and
/// `agent_monitor_violations_total` and `agent_monitor_kills_total` for violations and kills),
/// kept by what the kernel said: (agent slot, kind, verdict, action). The event path counts
/// through these handles: `with_label_values` hashes its label strings, takes the metric's read
/// lock and clones the handle on every call, which showed in profiles of the event path.
#[derive(Default)]
pub struct EventSeries {
    map: HashMap<u64, Series, BuildHasherDefault<KeyHasher>>,
}

struct Series {
    /// The agent name the handles carry: after a reload a slot may be named differently.
    agent: String,
    events: IntCounter,
    violations: Option<IntCounter>,
    kills: Option<IntCounter>,
}

impl EventSeries {
    /// Count `ev`, an event of the agent named `agent` (the labels are the contract names of
    /// what the kernel said; `ev.kind` is a known kind, the decoder checked).
    pub fn count(&mut self, m: &Metrics, ev: &Event, agent: &str) {
        // At most 256 slots x the kinds x 2 verdicts x 5 actions: the map stays small.
        let action = match ev.action {
            action::ALERTED | action::DENIED | action::KILLED | action::HELD => ev.action,
            _ => action::NONE,
        };
        let key = (ev.agent & (AGENT_SLOTS_PER_GEN - 1)) as u64
            | ((ev.verdict == agent_monitor_common::verdict::VIOLATION) as u64) << 8
            | (action as u64) << 9
            | (ev.kind as u64) << 16;
        let series = || {
            let kind = Kind::try_from(ev.kind).map_or("unknown", Kind::name);
            let verdict = Verdict::try_from(ev.verdict).unwrap_or(Verdict::Allowed);
            let action = Action::try_from(action).unwrap_or(Action::None);
            Series {
                agent: agent.to_string(),
                events: m.events.with_label_values(&[agent, kind, verdict.name()]),
                violations: (verdict == Verdict::Violation)
                    .then(|| m.violations.with_label_values(&[agent, kind, action.name()])),
                kills: (action == Action::Killed).then(|| m.kills.with_label_values(&[agent])),
            }
        };
        let s = self.map.entry(key).or_insert_with(series);
        if s.agent != agent {
            *s = series();
        }
        s.events.inc();
        if let Some(v) = &s.violations {
            v.inc();
        }
        if let Some(k) = &s.kills {
            k.inc();
        }
    }
}

/// For `EventSeries`' small integer keys: one multiply (as FxHash), rotated so that the
/// well-mixed high bits pick the bucket.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_monitor_common::{kind, verdict};

    #[test]
    fn event_series_count_what_with_label_values_counts() {
        let m = Metrics::new();
        let mut series = EventSeries::default();
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.kind = kind::FILE_WRITE;
        ev.agent = 1;
        series.count(&m, &ev, "a");
        series.count(&m, &ev, "a");
        (ev.verdict, ev.action) = (verdict::VIOLATION, action::KILLED);
        series.count(&m, &ev, "a");
        // A reload names slot 1 differently: its series are the new name's.
        series.count(&m, &ev, "b");
        let events = |a: &str, v: &str| m.events.with_label_values(&[a, "file.write", v]).get();
        assert_eq!((events("a", "allowed"), events("a", "violation"), events("b", "violation")), (2, 1, 1));
        assert_eq!(m.violations.with_label_values(&["a", "file.write", "killed"]).get(), 1);
        assert_eq!(m.violations.with_label_values(&["b", "file.write", "killed"]).get(), 1);
        assert_eq!((m.kills.with_label_values(&["a"]).get(), m.kills.with_label_values(&["b"]).get()), (1, 1));
        assert!(!m.render().contains("agent_monitor_violations_total{action=\"none\""));
    }
}
