//! Wire types shared by the kernel programs (`agent-monitor-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]`, holds only fixed-width integers and byte arrays, and has a
//! compile-time size guard: the kernel and userspace must agree on every byte. Kind, verdict,
//! action and layer tags travel as `u32` and are decoded with `TryFrom` in userspace, never
//! transmuted. The crate is `std` on the host so that its logic is unit-tested with `cargo test`.
#![cfg_attr(target_arch = "bpf", no_std)]

/// Bytes of path kept in events and used for matching. `struct bpf_lpm_trie_key` data is at most
/// 256 bytes (`LPM_DATA_SIZE_MAX`, kernel/bpf/lpm_trie.c); 4 of them carry the agent id.
pub const PATH_LEN: usize = 252;
/// Size of the per-CPU path scratch buffer: twice the path length so that a masked offset plus a
/// masked length never leaves it (the verifier checks `off + len <= size`).
pub const SCRATCH_LEN: usize = 512;
pub const COMM_LEN: usize = 16;
/// Deepest directory nesting followed when a path is rebuilt from dentries.
pub const MAX_PATH_DEPTH: usize = 64;

pub mod event;
pub mod http;
pub mod maps;
pub mod offsets;
pub mod syscalls;

pub use event::*;
pub use http::*;
pub use maps::*;
pub use offsets::*;

/// Is `flags` (from `open(2)`) an open that can change the file?
pub const fn open_is_write(flags: u64) -> bool {
    const O_ACCMODE: u64 = 0o3;
    const O_CREAT: u64 = 0o100;
    const O_TRUNC: u64 = 0o1000;
    (flags & O_ACCMODE) != 0 || (flags & (O_CREAT | O_TRUNC)) != 0
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no padding holes that carry pointers.
    unsafe impl aya::Pod for ProcState {}
    unsafe impl aya::Pod for AgentCfg {}
    unsafe impl aya::Pod for PathData {}
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for CmdlineSel {}
    unsafe impl aya::Pod for LinkOut {}
    unsafe impl aya::Pod for HostKey {}
    unsafe impl aya::Pod for HostDest {}
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for NetData {}
    unsafe impl aya::Pod for UnixKey {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for SniKey {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for FileGrantKey {}
    unsafe impl aya::Pod for DestRule {}
    unsafe impl aya::Pod for PathAllowData {}
    unsafe impl aya::Pod for HttpParse {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_key_is_component_wise() {
        let (bits, k) = writable_key(3, b"/tmp").unwrap();
        assert_eq!(&k.path[..5], b"/tmp/");
        assert_eq!(bits, (4 + 5) * 8);
        let (bits, root) = writable_key(1, b"/").unwrap();
        assert_eq!(&root.path[..1], b"/");
        assert_eq!(bits, (4 + 1) * 8);
        let (_, trailing) = writable_key(1, b"/var/lib/x/").unwrap();
        assert_eq!(&trailing.path[..11], b"/var/lib/x/");
        assert!(writable_key(1, &[b'a'; PATH_LEN]).is_none());
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::try_from(k.wire()), Ok(k));
        }
        assert_eq!(Kind::try_from(0), Err(0));
        assert_eq!(Kind::try_from(kind::MAX + 1), Err(kind::MAX + 1));
        assert_eq!(Kind::FileWrite.name(), "file.write");
    }

    #[test]
    fn http_methods_match_request_starts_only() {
        let m = |s: &[u8]| {
            let mut b = [0u8; 8];
            b[..s.len().min(8)].copy_from_slice(&s[..s.len().min(8)]);
            http_method(&b)
        };
        for (i, tok) in HTTP_METHODS.iter().enumerate() {
            let mut req = tok.to_vec();
            req.extend_from_slice(b"/x HTTP/1.1");
            assert_eq!(m(&req), Some(i as u32), "{}", String::from_utf8_lossy(tok));
        }
        assert_eq!(m(b"POSTX / HTTP/1.1"), None);
        assert_eq!(m(b"post / HTTP/1.1"), None);
        assert_eq!(m(b"\x16\x03\x01\x02\x00\x01\x00\x01"), None); // a TLS ClientHello
        assert_eq!(m(b"HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn write_intent() {
        assert!(!open_is_write(0)); // O_RDONLY
        assert!(open_is_write(1)); // O_WRONLY
        assert!(open_is_write(2)); // O_RDWR
        assert!(open_is_write(0o100)); // O_CREAT
        assert!(open_is_write(0o1000)); // O_TRUNC
        assert!(!open_is_write(0o2000000)); // O_CLOEXEC
    }
}
