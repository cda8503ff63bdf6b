//! The event line users read (README, "Events"), as a type.
use agent_monitor_common::{Action, Kind, Layer, Verdict};
use serde::Serialize;

/// One event line. The hand-written JSON (`json.rs`) writes exactly what serde writes for it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRecord {
    pub ts: String,
    pub id: String,
    pub agent: String,
    /// The agent instance (run id): the same for a process and all its descendants.
    pub run: String,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub kind: Kind,
    pub target: String,
    pub verdict: Verdict,
    pub action: Action,
    pub layer: Layer,
    pub rule: String,
    pub detail: String,
    /// The hash of the policy that made the decision (absent for process lifecycle events,
    /// and for decisions made under a policy this daemon did not load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
}

impl Default for EventRecord {
    fn default() -> Self {
        EventRecord {
            ts: String::new(),
            id: String::new(),
            agent: String::new(),
            run: String::new(),
            pid: 0,
            ppid: 0,
            uid: 0,
            comm: String::new(),
            exe: String::new(),
            kind: Kind::ProcessExec,
            target: String::new(),
            verdict: Verdict::Allowed,
            action: Action::None,
            layer: Layer::Userspace,
            rule: String::new(),
            detail: String::new(),
            policy_hash: None,
        }
    }
}

impl EventRecord {
    pub fn is_violation(&self) -> bool {
        self.verdict == Verdict::Violation
    }
}
