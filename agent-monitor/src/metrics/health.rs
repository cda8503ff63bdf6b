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

/// The layers this daemon needs and does not have, with why: the tracepoint and cgroup layers
/// always (files and network), the uprobe layer unless `tls_uprobes = "off"` (without it every
/// agent's TLS is opaque). BPF LSM and Landlock add refusal before the act; the others hold
/// without them.
pub fn needed_layers_down(
    l: &crate::bpf::loader::LayerStatus,
    tls: crate::policy::TlsUprobes,
) -> Vec<(&'static str, String)> {
    let note = |layer: &str| {
        l.notes.iter().find(|n| n.contains(layer)).cloned().unwrap_or_else(|| format!("the {layer} layer is down"))
    };
    let mut out = Vec::new();
    if !l.tracepoint {
        out.push(("tracepoint", note("tracepoint")));
    }
    if !l.cgroup {
        out.push(("cgroup", note("cgroup")));
    }
    if !l.uprobe && tls != crate::policy::TlsUprobes::Off {
        out.push(("uprobe", note("uprobe")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_layer_the_daemon_needs_is_a_health_problem() {
        use crate::{bpf::loader::LayerStatus, policy::TlsUprobes};
        let up = LayerStatus { tracepoint: true, cgroup: true, uprobe: true, ..Default::default() };
        assert!(super::needed_layers_down(&up, TlsUprobes::Agents).is_empty(), "BPF LSM and Landlock are not needed");
        let down = LayerStatus { uprobe: false, notes: vec!["uprobe: tracefs is not mounted".into()], ..up.clone() };
        assert_eq!(
            super::needed_layers_down(&down, TlsUprobes::Agents),
            [("uprobe", "uprobe: tracefs is not mounted".to_string())]
        );
        assert!(super::needed_layers_down(&down, TlsUprobes::Off).is_empty(), "off on purpose is no problem");
        let no_cgroup = LayerStatus { cgroup: false, ..up };
        assert_eq!(super::needed_layers_down(&no_cgroup, TlsUprobes::Agents)[0].0, "cgroup");
    }

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
