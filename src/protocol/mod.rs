//! The Postgres wire format: pure functions and types, no I/O, no tokio.
//!
//! Message layouts follow <https://www.postgresql.org/docs/15/protocol-message-formats.html>.
//! Nothing here allocates per forwarded message; builders write into a caller's `BytesMut`.

pub mod array;
pub mod backend;
pub mod bind;
pub mod copy;
pub mod frame;
pub mod frontend;
pub mod grammar;
pub mod sqlstate;
pub mod startup;

/// Where the first NUL of `bytes` is. Names (statements, portals) are short and usually end
/// within the first bytes, where a plain look is cheaper than memchr's setup; statement texts
/// are long, and memchr finds their end fast.
pub fn nul_at(bytes: &[u8]) -> Option<usize> {
    let head = bytes.len().min(16);
    match bytes[..head].iter().position(|&b| b == 0) {
        Some(i) => Some(i),
        None => memchr::memchr(0, &bytes[head..]).map(|i| head + i),
    }
}

/// Reads a NUL-terminated string from the front of `buf`, returning it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let nul = nul_at(buf)?;
    let s = std::str::from_utf8(&buf[..nul]).ok()?;
    Some((s, &buf[nul + 1..]))
}

/// Reads a big-endian i32 from the front of `buf`.
pub fn read_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some((i32::from_be_bytes(bytes), &buf[4..]))
}
