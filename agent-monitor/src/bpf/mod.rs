//! The kernel side as the daemon sees it: BTF offsets, the probe table and loader, and typed
//! access to the maps.
pub mod btf;
pub mod loader;
pub mod maps;
pub mod stats;
pub mod tls;

pub use loader::Kernel;
