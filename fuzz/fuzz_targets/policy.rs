//! A policy file's text, as `agent-monitor check` and a reload read it (`policy::parse`: toml,
//! then every semantic check), and, when it is valid, compiled (`policy::compile`).
//!
//! Properties: no panic; a rejected policy has at least one diagnostic, each on one line, in
//! file order, at a LINE:COL inside the text (1-based, the column counted in characters, at most
//! one past the end of its line); a valid policy compiles, and its canonical form (`Policy`'s
//! Display) parses back to an equal policy with the same hash, and is its own canonical form.
#![no_main]

use agent_monitor::policy;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    // (`policy::load` reads the file as UTF-8: other bytes are one whole-file diagnostic)
    let Ok(text) = std::str::from_utf8(data) else { return };
    match policy::parse(FILE, text) {
        Err(diags) => {
            assert!(!diags.is_empty());
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &diags {
                assert_eq!(d.file, FILE);
                assert!(d.line >= 1 && d.line <= lines.len(), "{d} (the text has {} lines)", lines.len());
                let width = lines[d.line - 1].chars().count();
                assert!(d.col >= 1 && d.col <= width + 1, "{d} (line {} has {width} characters)", d.line);
                assert!(!d.message.trim().is_empty(), "{d:?}");
                let shown = d.to_string();
                assert!(!shown.contains('\n'), "a diagnostic spans lines: {shown:?}");
                assert!(shown.starts_with(&format!("{FILE}:{}:{}: ", d.line, d.col)), "{shown:?}");
            }
            assert!(diags.windows(2).all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
        }
        Ok(p) => {
            let compiled = policy::compile(&p);
            let _ = compiled.to_string();
            let canonical = p.to_string();
            let again = policy::parse(FILE, &canonical).unwrap_or_else(|ds| {
                let ds: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
                panic!("the canonical form is refused:\n{}\n--- canonical:\n{canonical}", ds.join("\n"))
            });
            assert_eq!(again, p, "the canonical form reads back as another policy:\n{canonical}");
            assert_eq!(again.to_string(), canonical);
            assert_eq!(policy::compile(&again).hash, compiled.hash);
        }
    }
});
