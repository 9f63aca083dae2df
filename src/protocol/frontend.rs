//! Frontend (client → server) messages: tag constants and typed views of those the sidecar
//! inspects. Views borrow from the frame; nothing here copies a body it does not need.

use bytes::{BufMut, Bytes, BytesMut};

use super::{read_cstr, read_i32};

pub const BIND_TAG: u8 = b'B';
pub const CLOSE_TAG: u8 = b'C';
pub const COPY_DATA_TAG: u8 = b'd';
pub const COPY_DONE_TAG: u8 = b'c';
pub const COPY_FAIL_TAG: u8 = b'f';
pub const DESCRIBE_TAG: u8 = b'D';
pub const EXECUTE_TAG: u8 = b'E';
pub const FLUSH_TAG: u8 = b'H';
pub const FUNCTION_CALL_TAG: u8 = b'F';
pub const PARSE_TAG: u8 = b'P';
/// PasswordMessage, SASLInitialResponse and SASLResponse all use `p`.
pub const PASSWORD_TAG: u8 = b'p';
pub const QUERY_TAG: u8 = b'Q';
pub const SYNC_TAG: u8 = b'S';
pub const TERMINATE_TAG: u8 = b'X';
/// Describe and Close of a prepared statement (`P` is a portal).
pub const TARGET_STATEMENT: u8 = b'S';

/// What a frontend message means for the request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRole {
    /// Simple Query or FunctionCall: a whole request; one ReadyForQuery answers it.
    Request,
    /// Parse, Bind, Describe, Execute, Close: part of an extended-protocol batch.
    Extended,
    /// Sync: ends an extended batch; one ReadyForQuery answers it.
    Sync,
    /// Flush: asks the server to send what it has; no ReadyForQuery.
    Flush,
    /// CopyData, CopyDone, CopyFail: only meaningful during COPY FROM STDIN.
    Copy,
    /// Terminate.
    Terminate,
    /// Any other tag: not a message a client may send after startup.
    Unknown,
}

/// Classifies a frontend message by its tag.
pub fn role(tag: u8) -> MessageRole {
    match tag {
        QUERY_TAG | FUNCTION_CALL_TAG => MessageRole::Request,
        PARSE_TAG | BIND_TAG | DESCRIBE_TAG | EXECUTE_TAG | CLOSE_TAG => MessageRole::Extended,
        SYNC_TAG => MessageRole::Sync,
        FLUSH_TAG => MessageRole::Flush,
        COPY_DATA_TAG | COPY_DONE_TAG | COPY_FAIL_TAG => MessageRole::Copy,
        TERMINATE_TAG => MessageRole::Terminate,
        _ => MessageRole::Unknown,
    }
}

/// The SQL text of a `Query` body.
pub fn query_text(body: &[u8]) -> Option<&[u8]> {
    let end = memchr::memchr(0, body)?;
    Some(&body[..end])
}

/// The statement name and SQL text of a `Parse` body.
pub fn parse_text(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let name_end = crate::protocol::nul_at(body)?;
    let rest = &body[name_end + 1..];
    let query_end = memchr::memchr(0, rest)?;
    Some((&body[..name_end], &rest[..query_end]))
}

/// The SQL text a `Query` or `Parse` carries (`None` for other messages).
pub fn statement_text(tag: u8, body: &[u8]) -> Option<&[u8]> {
    match tag {
        QUERY_TAG => query_text(body),
        PARSE_TAG => parse_text(body).map(|(_, sql)| sql),
        _ => None,
    }
}

/// Appends a simple `Query` message.
pub fn append_query(buf: &mut bytes::BytesMut, sql: &str) {
    use bytes::BufMut;
    buf.put_u8(QUERY_TAG);
    buf.put_i32((4 + sql.len() + 1) as i32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// Appends a `Sync` message.
pub fn append_sync(buf: &mut bytes::BytesMut) {
    buf.extend_from_slice(&[SYNC_TAG, 0, 0, 0, 4]);
}

/// `SASLInitialResponse` body: mechanism name and the client-first message.
#[derive(Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    pub data: &'a [u8],
}

impl<'a> SaslInitialResponse<'a> {
    /// Parses the body; `None` when it is malformed.
    pub fn parse(body: &'a [u8]) -> Option<SaslInitialResponse<'a>> {
        let (mechanism, rest) = read_cstr(body)?;
        let (len, rest) = read_i32(rest)?;
        let data = if len < 0 {
            &[][..]
        } else {
            rest.get(..len as usize)?
        };
        Some(SaslInitialResponse { mechanism, data })
    }
}

/// `PasswordMessage` body: the password (or md5 hash) as a C string.
pub fn parse_password(body: &[u8]) -> Option<&str> {
    read_cstr(body).map(|(s, _)| s)
}

/// A frontend message from its tag and body parts.
pub fn message(tag: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(len + 5);
    append_message(&mut buf, tag, parts);
    buf.freeze()
}

/// Appends a message of type `tag` whose body is `parts` concatenated (no allocation of its
/// own: the hot path's rewritten Binds and Describes go straight into the server's buffer).
pub fn append_message(buf: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(len + 5);
    buf.put_u8(tag);
    buf.put_i32((len + 4) as i32);
    for p in parts {
        buf.put_slice(p);
    }
}

/// Splits a NUL-terminated field off the front of a body: (field, rest after the NUL).
pub fn split_cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = crate::protocol::nul_at(body)?;
    Some((&body[..end], &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_response_parses() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,ab");
        let parsed = SaslInitialResponse::parse(&body).unwrap();
        assert_eq!(parsed.mechanism, "SCRAM-SHA-256");
        assert_eq!(parsed.data, b"n,,ab");
    }

    #[test]
    fn sasl_initial_response_rejects_short_data() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&50i32.to_be_bytes());
        body.extend_from_slice(b"n,,ab");
        assert_eq!(SaslInitialResponse::parse(&body), None);
        assert_eq!(SaslInitialResponse::parse(b"no-nul"), None);
    }

    #[test]
    fn roles() {
        assert_eq!(role(b'Q'), MessageRole::Request);
        assert_eq!(role(b'P'), MessageRole::Extended);
        assert_eq!(role(b'S'), MessageRole::Sync);
        assert_eq!(role(b'?'), MessageRole::Unknown);
    }
}
