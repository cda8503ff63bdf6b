//! What `/healthz` answers: healthy unless a part of the daemon said it is not (a layer the
//! policy needs is down, the event reader stopped, a task died), with the reasons.
use std::{collections::BTreeMap, sync::Mutex};

#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, String>>,
}

impl Health {
    /// `component` is unhealthy for `why` (replaces what it said before).
    pub fn fail(&self, component: &str, why: impl Into<String>) {
        self.problems.lock().unwrap().insert(component.to_string(), why.into());
    }

    /// `component` is healthy again.
    #[cfg(test)]
    pub fn clear(&self, component: &str) {
        self.problems.lock().unwrap().remove(component);
    }

    /// Every problem, as "component: why", sorted by component.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().iter().map(|(c, why)| format!("{c}: {why}")).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn problems_come_and_go_by_component() {
        let h = super::Health::default();
        assert!(h.problems().is_empty());
        h.fail("reader", "stopped");
        h.fail("layer", "bpf_lsm down");
        h.fail("reader", "poll failed");
        assert_eq!(h.problems(), ["layer: bpf_lsm down", "reader: poll failed"]);
        h.clear("reader");
        assert_eq!(h.problems(), ["layer: bpf_lsm down"]);
    }
}
