//! HTTP request starts as the kernel recognises them: one list of method tokens, shared by the
//! kernel programs (straight-line matching), the policy (method names and bits) and the decoder.

/// The request-line tokens the kernel recognises at the start of an HTTP/1.x request, in bit
/// order. A request starting with anything else is not HTTP as far as the check goes.
pub const HTTP_METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"OPTIONS ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"CONNECT ", b"TRACE "];

/// Which method (bit index into [`HTTP_METHODS`]) the first bytes of a payload start with.
/// Written without slices or loops over slices so that it compiles to straight-line BPF.
#[inline(always)]
pub fn http_method(b: &[u8; 8]) -> Option<u32> {
    match b {
        [b'G', b'E', b'T', b' ', ..] => Some(0),
        [b'H', b'E', b'A', b'D', b' ', ..] => Some(1),
        [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' '] => Some(2),
        [b'P', b'O', b'S', b'T', b' ', ..] => Some(3),
        [b'P', b'U', b'T', b' ', ..] => Some(4),
        [b'P', b'A', b'T', b'C', b'H', b' ', ..] => Some(5),
        [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..] => Some(6),
        [b'C', b'O', b'N', b'N', b'E', b'C', b'T', b' '] => Some(7),
        [b'T', b'R', b'A', b'C', b'E', b' ', ..] => Some(8),
        _ => None,
    }
}

/// The method names (without the space), in bit order: `HTTP_METHOD_NAMES[i]` is bit `i`.
pub const HTTP_METHOD_NAMES: [&str; 9] =
    ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE"];

/// The bit of a method name, if the kernel knows it.
pub fn http_method_bit(name: &str) -> Option<u32> {
    HTTP_METHOD_NAMES.iter().position(|m| *m == name).map(|i| i as u32)
}
