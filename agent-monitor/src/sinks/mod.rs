//! Where events go after the decoder: the events log with its hash chain (`log`, `audit`), the
//! daemon's own log (the journal, rate-limited: `journal`) and webhooks (`webhook`).
//!
//! A new sink is a module here, fed by `daemon::pipeline` (decoded events) and depending on
//! nothing above `events` and `metrics`.
pub mod audit;
pub mod journal;
pub mod log;
pub mod webhook;
