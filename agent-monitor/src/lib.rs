//! agent-monitor: a kernel-enforced read-only boundary around AI agent processes.
//!
//! `main.rs` is only the command line's entry point: the rooms are this library, so that the
//! fuzz targets (`fuzz/`) reach the decoders and parsers an attacker can feed.
//!
//! The rooms, as the data flows (README, "Layout"): `policy` (file → validated model → compiled
//! tables), `bpf` (the kernel side: probe table, loader, pins, maps, TLS uprobes), `events` (ring
//! buffer → decoded and enriched records), `daemon` (start-up, the event pipeline, reloads,
//! supervised tasks), `enforce` (kills, holds, `exec`), `sinks` (events log and its chain,
//! journal, webhooks), `metrics`, `control` (the socket's protocol and server), `client` and
//! `cli` (the command line), `learning` (`profile` and `policy test`, offline over events logs).
pub mod bpf;
pub mod cli;
pub mod client;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod events;
pub mod learning;
pub mod metrics;
pub mod policy;
pub mod sinks;
