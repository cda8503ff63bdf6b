//! The tamper-evident audit trail: every line of the events log carries `prev`, the SHA-256 of
//! the line before it (as written, without its newline), so that an edited or deleted line breaks
//! the chain where it was. The chain continues across daemon restarts (the last line of the
//! existing log is read at start) and across rotation (the first line of a new file carries the
//! hash of the last line of the old one). A `policy.load` record with the policy's hash opens
//! the log and follows every policy change.
//!
//! What it does not prove: that the *last* lines were not removed (nothing comes after them);
//! ship the log off the host (webhooks, a collector) for that.
use std::{
    fs,
    io::{BufRead, BufReader, Read as _},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// The `prev` of the first line ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn sha256_hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    push_sha256_hex(&mut out, b);
    out
}

/// `sha256_hex(b)` appended to `out`.
fn push_sha256_hex(out: &mut String, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // (sha2 picks the SHA-NI instructions at run time where the CPU has them.)
    let mut hex = [0u8; 64];
    for (pair, x) in hex.chunks_exact_mut(2).zip(Sha256::digest(b)) {
        pair[0] = HEX[(x >> 4) as usize];
        pair[1] = HEX[(x & 15) as usize];
    }
    out.push_str(std::str::from_utf8(&hex).expect("hex digits"));
}

/// The running end of the chain.
#[derive(Debug)]
pub struct Chain {
    prev: String,
}

impl Chain {
    pub fn new() -> Self {
        Chain { prev: GENESIS.to_string() }
    }

    /// Continue the chain of an existing log: the hash of its last line. A log that is empty
    /// or gone (logrotate moved it away before a restart) continues the newest rotated file,
    /// `PATH.1` or `PATH.1.gz`.
    pub fn resume(path: &Path) -> Self {
        let last_line = |p: &Path| {
            open_log(p).ok().and_then(|r| r.lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).last())
        };
        let rotated = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        let last = last_line(path).or_else(|| last_line(&rotated(".1"))).or_else(|| last_line(&rotated(".1.gz")));
        Chain { prev: last.map(|l| sha256_hex(l.as_bytes())).unwrap_or_else(|| GENESIS.to_string()) }
    }

    /// Append `prev` to a serialised JSON object and advance the chain; returns the line.
    /// (The daemon seals in place, `seal_in_place`.)
    #[cfg(test)]
    pub fn seal(&mut self, json_object: &str) -> String {
        let mut line = String::with_capacity(json_object.len() + 80);
        line.push_str(json_object);
        self.seal_in_place(&mut line);
        line
    }

    /// `seal`, in place: `line` holds a serialised JSON object and becomes the sealed line
    /// (the same text `seal` returns). The event path seals every event in one reused buffer.
    pub fn seal_in_place(&mut self, line: &mut String) {
        line.truncate(line.trim_end().len());
        if line.ends_with('}') {
            line.pop();
        }
        if !line.trim_end().ends_with('{') {
            line.push(',');
        }
        line.push_str("\"prev\":\"");
        line.push_str(&self.prev);
        line.push_str("\"}");
        self.prev.clear();
        push_sha256_hex(&mut self.prev, line.as_bytes());
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A log file for reading, gzip-compressed (logrotate's `compress`: a name ending in `.gz`) or
/// not.
fn open_log(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let f = fs::File::open(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

/// Check one log, or several in order (rotated files, oldest first; `.gz` ones decompressed).
/// Returns the number of lines checked, or the first break.
pub fn verify(files: &[PathBuf]) -> Result<usize, Break> {
    let mut prev: Option<(String, PathBuf, usize)> = None;
    let mut n = 0;
    for file in files {
        let text = open_log(file)
            .and_then(|mut r| {
                let mut t = String::new();
                r.read_to_string(&mut t).map(|_| t)
            })
            .map_err(|e| Break { file: file.clone(), line: 0, message: format!("cannot read: {e}") })?;
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Break {
                file: file.clone(),
                line: lineno,
                message: format!("not a JSON object: {e}"),
            })?;
            let Some(p) = v.get("prev").and_then(|p| p.as_str()) else {
                return Err(Break {
                    file: file.clone(),
                    line: lineno,
                    message: "no `prev` field: not an agent-monitor audit line".into(),
                });
            };
            if let Some((h, pf, pl)) = &prev {
                if p != h {
                    let (bf, bl) = (pf.clone(), *pl);
                    return Err(Break {
                        file: bf,
                        line: bl,
                        message: format!(
                            "chain broken: this line does not hash to the `prev` of the next line ({}:{lineno}): it was changed, or lines were removed after it",
                            file.display()
                        ),
                    });
                }
            }
            prev = Some((sha256_hex(line.as_bytes()), file.clone(), lineno));
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        let mut c = Chain::new();
        lines.iter().map(|l| c.seal(l)).collect()
    }

    fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        p
    }

    #[test]
    fn an_untouched_log_verifies_and_edits_or_deletions_are_located() {
        let dir = std::env::temp_dir().join(format!("am-audit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lines = log(&[r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#, r#"{"a":4}"#]);
        assert!(lines[0].ends_with(&format!("\"prev\":\"{GENESIS}\"}}")));
        let ok = write(&dir, "ok.jsonl", &lines);
        assert_eq!(verify(&[ok]), Ok(4));

        let mut edited = lines.clone();
        edited[1] = edited[1].replace("\"a\":2", "\"a\":20");
        let f = write(&dir, "edited.jsonl", &edited);
        let b = verify(std::slice::from_ref(&f)).unwrap_err();
        assert_eq!(b.line, 2, "{b}");

        let mut removed = lines.clone();
        removed.remove(2);
        let f = write(&dir, "removed.jsonl", &removed);
        assert_eq!(verify(&[f]).unwrap_err().line, 2);

        // Rotation: the chain goes on in the next file.
        let a = write(&dir, "a.jsonl", &lines[..2]);
        let b = write(&dir, "b.jsonl", &lines[2..]);
        assert_eq!(verify(&[a.clone(), b.clone()]), Ok(4));
        assert!(verify(&[b, a]).is_err(), "files in the wrong order do not chain");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_line_format_is_fixed() {
        // Logs written by earlier versions must keep verifying: the hash of a line is the
        // SHA-256, in lower-case hex, of the line exactly as written (`sha256sum` of it).
        let mut c = Chain::new();
        assert_eq!(c.seal(r#"{"a":1}"#), format!(r#"{{"a":1,"prev":"{GENESIS}"}}"#));
        assert_eq!(
            c.seal("{\"a\":2} \n"),
            r#"{"a":2,"prev":"377e001479caf256112dd83b12144e8c782371b3b8fd00555725ed20c0550048"}"#
        );
        assert_eq!(c.seal("{ }").split_once(",").map(|(a, _)| a), None, "no comma after an empty object");
        let mut line = String::from("{\"b\":[]}");
        let mut d = Chain::new();
        d.seal_in_place(&mut line);
        assert_eq!(line, Chain::new().seal("{\"b\":[]}"));
    }

    #[test]
    fn resume_continues_from_the_last_line() {
        let dir = std::env::temp_dir().join(format!("am-audit-resume-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lines = log(&[r#"{"a":1}"#, r#"{"a":2}"#]);
        let f = write(&dir, "log.jsonl", &lines);
        let mut c = Chain::resume(&f);
        let next = c.seal(r#"{"a":3}"#);
        fs::write(&f, format!("{}\n{}\n{next}\n", lines[0], lines[1])).unwrap();
        assert_eq!(verify(std::slice::from_ref(&f)), Ok(3));
        assert_eq!(Chain::resume(&dir.join("missing")).seal("{}"), format!("{{\"prev\":\"{GENESIS}\"}}"));
        // Rotated away and compressed before a restart: the chain goes on from PATH.1.gz.
        let rotated = dir.join("log.jsonl.1.gz");
        let mut gz = flate2::write::GzEncoder::new(fs::File::create(&rotated).unwrap(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, fs::read(&f).unwrap().as_slice()).unwrap();
        gz.finish().unwrap();
        fs::write(&f, "").unwrap();
        let mut c = Chain::resume(&f);
        fs::write(&f, format!("{}\n", c.seal(r#"{"a":4}"#))).unwrap();
        assert_eq!(verify(&[rotated, f]), Ok(4));
        fs::remove_dir_all(&dir).unwrap();
    }
}
