//! One file per hook family; each program is a thin entry over a `try_` function.
pub mod bypass;
pub mod file;
pub mod lsm;
pub mod net;
pub mod process;
