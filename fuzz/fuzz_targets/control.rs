//! Bytes on the control socket, both ways.
//!
//! Server side: the bytes up to the first newline, as UTF-8 with invalid bytes replaced, parsed
//! as a `Request` (what `control::server` does with what a client sends). Client side: each line
//! of the bytes read as the CLI reads a reply line (a JSON value; an `error` with its
//! `diagnostics`; a `Status`), and as a `Reply`.
//!
//! Properties: no panic; a request, a reply and a status that parse re-serialise to one line
//! that parses back to the same value.
#![no_main]

use agent_monitor::control::protocol::{Reply, Request, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = String::from_utf8_lossy(&data[..end]);
    if let Ok(req) = serde_json::from_str::<Request>(&line) {
        let wire = serde_json::to_string(&req).expect("requests serialise");
        assert!(!wire.contains('\n'), "{wire:?}");
        assert_eq!(serde_json::from_str::<Request>(&wire).ok(), Some(req), "{line:?} -> {wire:?}");
    }

    for line in String::from_utf8_lossy(data).lines() {
        // As `client::request` reads it.
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or(serde_json::Value::String(line.to_string()));
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            let diags = v.get("diagnostics").and_then(|d| d.as_array()).into_iter().flatten();
            let _ = (err, diags.map(|d| d.as_str().unwrap_or_default()).count());
        }
        if let Ok(status) = serde_json::from_value::<Status>(v) {
            let wire = serde_json::to_string(&status).expect("a status serialises");
            assert_eq!(serde_json::from_str::<Status>(&wire).ok(), Some(status), "{line:?} -> {wire:?}");
        }
        if let Ok(reply) = serde_json::from_str::<Reply>(line) {
            let wire = reply.line();
            assert!(wire.ends_with('\n') && !wire[..wire.len() - 1].contains('\n'), "{wire:?}");
            assert_eq!(serde_json::from_str::<Reply>(&wire).ok(), Some(reply), "{line:?} -> {wire:?}");
        }
    }
});
