//! From ring-buffer records to the event lines users read.
//!
//! `reader` drains the ring buffer into batches of wire records; `decode` turns a record into an
//! [`EventRecord`] (pure), `enrich` fills in what only /proc knows, `json` writes the line. What
//! the daemon does about an event (kill sweep, holds, TLS hooks, sinks) is `daemon::pipeline`.
pub mod decode;
pub mod enrich;
pub mod json;
pub mod reader;
pub mod record;

pub use decode::Decoder;
pub use enrich::ProcCache;
pub use record::EventRecord;
