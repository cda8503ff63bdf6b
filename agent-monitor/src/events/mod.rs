//! From ring-buffer records to the JSON events users read.
pub mod decode;
pub mod log;
pub mod reader;

pub use decode::{Decoder, EventRecord};
