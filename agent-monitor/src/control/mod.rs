//! The control socket: a typed request/reply protocol (`protocol`, shared by the CLI and the
//! daemon) and the server (`server`), which authenticates the peer before it reads a byte of the
//! request and hands authorised requests to a [`server::Handler`] (the daemon).
pub mod protocol;
pub mod server;

pub use protocol::{Request, DEFAULT_CONTROL_SOCKET};
