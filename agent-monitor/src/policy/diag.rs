//! Diagnostics in the `FILE:LINE:COL: message` form editors and CI logs understand.

use std::fmt;
use std::ops::Range;

/// One problem in a policy file. `line` and `col` are 1-based (`col` counts characters, not
/// bytes); a problem with no position in the file (it could not be read) has `line == 0` and
/// displays as `FILE: message`. The message is one line: a control character in it (from a value
/// quoted from the file) is escaped as Rust escapes it (`\n`, `\u{1}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, line: usize, col: usize, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.contains(char::is_control) {
            message =
                message.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.into() }).collect();
        }
        Diagnostic { file: file.into(), line, col, message }
    }

    /// A diagnostic at byte `offset` of `text`.
    pub fn at_offset(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(text, offset);
        Diagnostic::new(file, line, col, message)
    }

    /// A diagnostic at the start of byte range `span` of `text`.
    pub fn at_span(file: &str, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic::at_offset(file, text, span.start, message)
    }

    /// A diagnostic about the file as a whole (e.g. it cannot be read).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Diagnostic::new(file, 0, 0, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
        }
    }
}

impl std::error::Error for Diagnostic {}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the end
/// is clamped to the end; one inside a UTF-8 character counts as that character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let text = "ab\ncdé=x\n\nz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 2), (1, 3)); // the newline itself
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (2, 4)); // `=` after the two-byte `é`
        assert_eq!(line_col(text, 6), (2, 3)); // inside `é`: the character's column
        assert_eq!(line_col(text, 10), (3, 1));
        assert_eq!(line_col(text, 11), (4, 1));
        assert_eq!(line_col(text, 999), (4, 2)); // clamped to the end
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn a_message_is_one_line() {
        // (found by the policy fuzz target: a value quoted into a message, `allow = ["\nix:/x"]`,
        // broke the FILE:LINE:COL line in two)
        let d = Diagnostic::new("p.toml", 2, 3, "bad allow entry \"\nix:/x\r\u{1}\t\u{7f}\": é");
        assert_eq!(d.message, r#"bad allow entry "\nix:/x\r\u{1}\t\u{7f}": é"#);
        assert_eq!(d.to_string().lines().count(), 1);
    }

    #[test]
    fn display_format() {
        let d = Diagnostic::at_offset("p.toml", "a\nbc", 3, "bad value");
        assert_eq!(d.to_string(), "p.toml:2:2: bad value");
        let d = Diagnostic::whole_file("/nope.toml", "cannot read: No such file or directory");
        assert_eq!(d.to_string(), "/nope.toml: cannot read: No such file or directory");
    }
}
