//! The event's JSON, written by hand: the per-event path writes ~1 M lines a second, and this
//! writes byte for byte what `serde_json::to_string` writes (held equal by `json_is_serde_json`)
//! without serde's per-field machinery and with no allocation.
use super::EventRecord;

impl EventRecord {
    /// Append the record's JSON object to `out`: byte for byte what `serde_json::to_string`
    /// writes for it (same fields, order and escaping; `json_is_serde_json` holds the two
    /// equal), without serde's per-field machinery and with no allocation. Keep the two in step
    /// when a field is added.
    pub fn write_json(&self, out: &mut String) {
        let mut num = itoa::Buffer::new();
        out.push('{');
        let str_fields = |out: &mut String, fields: &[(&str, &str)]| {
            for (key, value) in fields {
                out.push_str(key);
                json_str(out, value);
            }
        };
        str_fields(
            out,
            &[("\"ts\":", &self.ts), (",\"id\":", &self.id), (",\"agent\":", &self.agent), (",\"run\":", &self.run)],
        );
        for (key, n) in [(",\"pid\":", self.pid), (",\"ppid\":", self.ppid), (",\"uid\":", self.uid)] {
            out.push_str(key);
            out.push_str(num.format(n));
        }
        str_fields(
            out,
            &[
                (",\"comm\":", &self.comm),
                (",\"exe\":", &self.exe),
                (",\"kind\":", self.kind.name()),
                (",\"target\":", &self.target),
                (",\"verdict\":", self.verdict.name()),
                (",\"action\":", self.action.name()),
                (",\"layer\":", self.layer.name()),
                (",\"rule\":", &self.rule),
                (",\"detail\":", &self.detail),
            ],
        );
        if let Some(h) = &self.policy_hash {
            out.push_str(",\"policy_hash\":");
            json_str(out, h);
        }
        out.push('}');
    }
}

/// A JSON string as serde_json escapes it: `"` and `\`, and the control characters below
/// 0x20 (`\b \t \n \f \r` by name, the rest as `\u00xx`); everything else, DEL and non-ASCII
/// included, as it is.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
    } else {
        let mut run = 0;
        for (i, &c) in s.as_bytes().iter().enumerate() {
            if c >= 0x20 && c != b'"' && c != b'\\' {
                continue;
            }
            // `c` is ASCII, so both slices end on character boundaries.
            out.push_str(&s[run..i]);
            run = i + 1;
            match c {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                0x08 => out.push_str("\\b"),
                b'\t' => out.push_str("\\t"),
                b'\n' => out.push_str("\\n"),
                0x0c => out.push_str("\\f"),
                b'\r' => out.push_str("\\r"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(HEX[(c >> 4) as usize] as char);
                    out.push(HEX[(c & 15) as usize] as char);
                }
            }
        }
        out.push_str(&s[run..]);
    }
    out.push('"');
}

/// Whether a byte of `b` needs escaping in a JSON string (below 0x20, `"` or `\`), eight bytes
/// at a time (nearly no string has one). Short tails are read as overlapping words, not copied:
/// a copy into a word on the stack stalls its load.
fn needs_escape(b: &[u8]) -> bool {
    let n = b.len();
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes")) as u64;
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    match n {
        0..=3 => b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\'),
        4..=7 => word_needs_escape(u32_at(0) | u32_at(n - 4) << 32),
        _ => (0..n - 7).step_by(8).any(|i| word_needs_escape(u64_at(i))) || word_needs_escape(u64_at(n - 8)),
    }
}

/// `needs_escape` for the eight bytes of `w`: the "has less" and "has zero byte" word tests of
/// Bit Twiddling Hacks (exact for the word as a whole).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | has_zero(w ^ (ONES * b'"' as u64)) | has_zero(w ^ (ONES * b'\\' as u64))) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_serde_json() {
        // Escapes at every position of the words `needs_escape` reads (whole, overlapping, short).
        let mut tricky: Vec<String> =
            ["", "a", "\"", "\\", "caf\u{e9} \u{2028} \u{65e5}\u{672c}", "\u{7f}/\u{0}/\u{1f}"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        for c in (0u8..0x20).chain([b'"', b'\\', b'a', 0x7f]) {
            for len in [1, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24] {
                for at in 0..len {
                    let mut s = vec![b'x'; len];
                    s[at] = c;
                    tricky.push(String::from_utf8(s).unwrap());
                }
            }
        }
        let mut r = EventRecord { agent: "forum-analyst".into(), target: "/etc/motd".into(), ..Default::default() };
        for (i, t) in tricky.iter().enumerate() {
            r.target = t.clone();
            r.detail = format!("{t}{t}; {i}");
            r.comm = t.chars().rev().collect();
            r.pid = i as u32 * 7919;
            r.ppid = u32::MAX - i as u32;
            r.policy_hash = (i % 2 == 0).then(|| t.clone());
            r.kind = agent_monitor_common::Kind::ALL[i % agent_monitor_common::Kind::ALL.len()];
            let mut out = String::new();
            r.write_json(&mut out);
            assert_eq!(out, serde_json::to_string(&r).unwrap());
        }
    }
}
