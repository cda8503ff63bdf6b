//! What the daemon does beyond the kernel's own decisions: finish kills across an instance
//! (`kill`), hold actions for a person (`holds`), and start commands inside the boundary with
//! Landlock (`exec`, the `agent-monitor exec` launcher; `shims`, which start the commands users
//! type through it).
pub mod exec;
pub mod holds;
pub mod kill;
pub mod shims;
