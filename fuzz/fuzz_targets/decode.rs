//! One ring-buffer record, as the daemon reads it: padded to a whole `Event`
//! (`events::reader::pad_event`: the kernel cuts records where their unused paths begin),
//! decoded (`Decoder::decode_into`) and written as its events-log line
//! (`EventRecord::write_json`).
//!
//! Properties: no panic; a record shorter than the header is refused and only an unknown kind is
//! dropped; decoding into a record that held another event gives the same record as decoding
//! into a fresh one; the line is one line, byte for byte what serde_json writes for the record,
//! and parses back (serde_json) to the record's values.
#![no_main]

use agent_monitor::events::{reader::pad_event, Decoder, EventRecord};
use agent_monitor_common::{Kind, EVENT_HEAD, EVENT_ONE_PATH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(ev) = pad_event(data) else {
        assert!(data.len() < EVENT_HEAD);
        return;
    };
    assert!(ev.path_len as usize <= data.len() - EVENT_HEAD);
    assert!(ev.path2_len as usize <= data.len().saturating_sub(EVENT_ONE_PATH));

    // Two agents in generation 0, the policy hash of each generation known (a reload under way).
    let mut d = Decoder::new(vec!["forum-analyst".into(), "claude-code".into()]);
    d.expect_policy(0, "00112233aabbccdd", vec!["forum-analyst".into(), "claude-code".into()]);
    d.expect_policy(1, "ffeeddcc44332211", vec!["forum-analyst".into(), "codex".into(), "gemini".into()]);

    let mut rec = EventRecord::default();
    if !d.decode_into(&ev, &mut rec) {
        assert!(Kind::try_from(ev.kind).is_err(), "a known kind ({}) was dropped", ev.kind);
        return;
    }
    let mut reused = EventRecord {
        ts: "stale".into(),
        id: "stale".into(),
        agent: "stale".into(),
        run: "stale".into(),
        pid: 7,
        ppid: 7,
        uid: 7,
        comm: "stale".into(),
        exe: "/stale".into(),
        kind: Kind::SysMount,
        target: "/stale".into(),
        verdict: agent_monitor_common::Verdict::Violation,
        action: agent_monitor_common::Action::Held,
        layer: agent_monitor_common::Layer::Landlock,
        rule: "stale".into(),
        detail: "stale; stale".into(),
        policy_hash: Some("stale".into()),
    };
    assert!(d.decode_into(&ev, &mut reused));
    reused.id.clone_from(&rec.id); // (every record gets the next id)
    assert_eq!(reused, rec);

    let mut line = String::new();
    rec.write_json(&mut line);
    assert!(!line.contains('\n'), "an event line spans lines: {line:?}");
    assert_eq!(line, serde_json::to_string(&rec).unwrap());
    let v: serde_json::Value = serde_json::from_str(&line).expect("the event line is JSON");
    let obj = v.as_object().expect("an object");
    let strs = [
        ("ts", &rec.ts),
        ("id", &rec.id),
        ("agent", &rec.agent),
        ("run", &rec.run),
        ("comm", &rec.comm),
        ("exe", &rec.exe),
        ("target", &rec.target),
        ("rule", &rec.rule),
        ("detail", &rec.detail),
    ];
    for (key, want) in strs {
        assert_eq!(obj[key].as_str(), Some(want.as_str()), "{key}");
    }
    for (key, want) in [("pid", rec.pid), ("ppid", rec.ppid), ("uid", rec.uid)] {
        assert_eq!(obj[key].as_u64(), Some(u64::from(want)), "{key}");
    }
    for (key, want) in [
        ("kind", rec.kind.name()),
        ("verdict", rec.verdict.name()),
        ("action", rec.action.name()),
        ("layer", rec.layer.name()),
    ] {
        assert_eq!(obj[key].as_str(), Some(want), "{key}");
    }
    assert_eq!(obj.get("policy_hash").and_then(|h| h.as_str()), rec.policy_hash.as_deref());
});
