//! The kernel side as the daemon sees it: BTF offsets (`btf`), the probe table (`probes`),
//! loading and attaching (`loader`), pins (`pins`), typed access to the maps (`maps`), writing a
//! compiled policy into them (`apply`), adopting processes already running (`adopt`), the TLS
//! uprobes (`tls`, `tls_libs`, Go's function table: `gopclntab`), and the kernel's per-program statistics (`stats`).
//!
//! Nothing here depends on the daemon, the events or the metrics: callers pass what they need.
pub mod adopt;
pub mod apply;
pub mod btf;
pub mod gopclntab;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod probes;
pub mod stats;
pub mod tls;
pub mod tls_libs;

pub use loader::Kernel;
