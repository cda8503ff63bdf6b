//! Violations in the daemon's own log (the journal), rate-limited.
use std::time::{Duration, Instant};

/// At most `JOURNAL_LINES_PER_SEC` violations a second become a log line; the events log has
/// every one. A line costs more than the rest of an event's path (formatting plus a write to
/// stderr: ~1.3 us against ~0.75 us), and journald would drop a flood at its own rate limit,
/// arbitrarily and silently; here the first lines of each second are kept and the rest counted.
pub struct JournalLimiter {
    second: Instant,
    lines: u32,
    suppressed: u64,
}

pub const JOURNAL_LINES_PER_SEC: u32 = 20;

pub enum Admit {
    Line,
    /// A line, after saying how many were left out in the seconds before.
    LineAfter(u64),
    Quiet,
}

impl Default for JournalLimiter {
    fn default() -> Self {
        JournalLimiter { second: Instant::now(), lines: 0, suppressed: 0 }
    }
}

impl JournalLimiter {
    pub fn admit(&mut self) -> Admit {
        let now = Instant::now();
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.lines = 0;
        }
        if self.lines >= JOURNAL_LINES_PER_SEC {
            self.suppressed += 1;
            return Admit::Quiet;
        }
        self.lines += 1;
        match std::mem::take(&mut self.suppressed) {
            0 => Admit::Line,
            n => Admit::LineAfter(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_gets_the_first_violations_of_each_second_and_a_count_of_the_rest() {
        let mut j = JournalLimiter::default();
        let lines = (0..JOURNAL_LINES_PER_SEC + 5).filter(|_| matches!(j.admit(), Admit::Line)).count();
        assert_eq!(lines, JOURNAL_LINES_PER_SEC as usize);
        // The next second: the first line says how many were left out.
        j.second -= Duration::from_millis(1100);
        assert!(matches!(j.admit(), Admit::LineAfter(5)));
        assert!(matches!(j.admit(), Admit::Line));
    }
}
