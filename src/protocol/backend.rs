//! Backend (server → client) messages: tag constants, typed views of the few we inspect,
//! and builders for the ones pgsidecar itself sends.
//!
//! Builders append to a caller's `BytesMut`; views borrow. Rows and other forwarded
//! messages are never decoded here.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::sqlstate::SqlState;

pub const AUTHENTICATION_TAG: u8 = b'R';
pub const BACKEND_KEY_DATA_TAG: u8 = b'K';
pub const COMMAND_COMPLETE_TAG: u8 = b'C';
pub const COPY_IN_RESPONSE_TAG: u8 = b'G';
pub const DATA_ROW_TAG: u8 = b'D';
pub const COPY_OUT_RESPONSE_TAG: u8 = b'H';
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
pub const ERROR_RESPONSE_TAG: u8 = b'E';
pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
pub const NOTICE_RESPONSE_TAG: u8 = b'N';
pub const NOTIFICATION_RESPONSE_TAG: u8 = b'A';
pub const PARAMETER_STATUS_TAG: u8 = b'S';
pub const PARSE_COMPLETE_TAG: u8 = b'1';
pub const PARAMETER_DESCRIPTION_TAG: u8 = b't';
pub const EMPTY_QUERY_RESPONSE_TAG: u8 = b'I';
pub const PORTAL_SUSPENDED_TAG: u8 = b's';
pub const READY_FOR_QUERY_TAG: u8 = b'Z';
pub const ROW_DESCRIPTION_TAG: u8 = b'T';
pub const BIND_COMPLETE_TAG: u8 = b'2';
pub const CLOSE_COMPLETE_TAG: u8 = b'3';
pub const NO_DATA_TAG: u8 = b'n';

/// `ParseComplete`, whole.
pub const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
/// `CloseComplete`, whole.
pub const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];
/// `BindComplete`, whole.
pub const BIND_COMPLETE: &[u8] = &[b'2', 0, 0, 0, 4];
/// `NoData`, whole.
pub const NO_DATA: &[u8] = &[b'n', 0, 0, 0, 4];

/// Authentication request codes (`AuthenticationXxx` messages).
pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
pub const AUTH_MD5_PASSWORD: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

/// The transaction status byte of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// Decodes the status byte; `None` for anything else.
    pub fn from_byte(b: u8) -> Option<TransactionStatus> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }

    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Starts a message: writes the tag and a placeholder length; returns the length's offset.
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Fills in the length written by `begin`.
fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // Interior NULs would split the field; Postgres strings cannot hold them anyway.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// `AuthenticationOk`, `AuthenticationCleartextPassword` and friends without payload.
pub fn authentication(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(buf, AUTHENTICATION_TAG);
    buf.put_i32(code);
    buf.put_slice(payload);
    finish(buf, at);
}

/// `AuthenticationSASL` listing the mechanisms offered.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, AUTHENTICATION_TAG);
    buf.put_i32(AUTH_SASL);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// `ParameterStatus`.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, PARAMETER_STATUS_TAG);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

/// `BackendKeyData`.
pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    let at = begin(buf, BACKEND_KEY_DATA_TAG);
    buf.put_i32(process_id);
    buf.put_i32(secret_key);
    finish(buf, at);
}

/// `NegotiateProtocolVersion`: the newest minor version supported and the protocol options
/// not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: i32, unrecognized: &[String]) {
    let at = begin(buf, NEGOTIATE_PROTOCOL_VERSION_TAG);
    buf.put_i32(newest_minor);
    buf.put_i32(unrecognized.len() as i32);
    for option in unrecognized {
        put_cstr(buf, option);
    }
    finish(buf, at);
}

/// `ReadyForQuery`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    buf.put_u8(COMMAND_COMPLETE_TAG);
    buf.put_i32(4 + tag.len() as i32 + 1);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(0);
}

pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    let at = begin(buf, READY_FOR_QUERY_TAG);
    buf.put_u8(status.as_byte());
    finish(buf, at);
}

/// Severity of an ErrorResponse the sidecar sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error the sidecar reports to a client in its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    pub severity: Severity,
    /// The SQLSTATE: one of ours, or one the upstream sent that the sidecar passes on.
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
}

impl ErrorReport {
    /// An `ERROR`: the client stays connected.
    pub fn error(code: SqlState, message: impl Into<String>) -> ErrorReport {
        ErrorReport::new(Severity::Error, code, message)
    }

    /// An error of the given severity.
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> ErrorReport {
        ErrorReport {
            severity,
            code: Cow::Borrowed(code.code()),
            message: message.into(),
            detail: None,
        }
    }

    /// A `FATAL`: the connection is closed after it.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> ErrorReport {
        ErrorReport::new(Severity::Fatal, code, message)
    }

    /// Replaces the SQLSTATE with one received from the upstream, if it is well formed.
    pub fn with_code_text(mut self, code: &str) -> ErrorReport {
        if code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            self.code = Cow::Owned(code.to_owned());
        }
        self
    }

    /// Adds a DETAIL field.
    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorReport {
        self.detail = Some(detail.into());
        self
    }

    /// Appends the `ErrorResponse` message.
    pub fn write(&self, buf: &mut BytesMut) {
        let at = begin(buf, ERROR_RESPONSE_TAG);
        buf.put_u8(b'S');
        put_cstr(buf, self.severity.as_str());
        buf.put_u8(b'V');
        put_cstr(buf, self.severity.as_str());
        buf.put_u8(b'C');
        put_cstr(buf, &self.code);
        buf.put_u8(b'M');
        put_cstr(buf, &self.message);
        if let Some(detail) = &self.detail {
            buf.put_u8(b'D');
            put_cstr(buf, detail);
        }
        buf.put_u8(0);
        finish(buf, at);
    }
}

/// Appends a NoticeResponse of severity WARNING (SQLSTATE 01000) in the sidecar's name.
pub fn warning(buf: &mut BytesMut, message: &str) {
    let at = begin(buf, NOTICE_RESPONSE_TAG);
    for (field, value) in [
        (b'S', "WARNING"),
        (b'V', "WARNING"),
        (b'C', "01000"),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// The fields of an ErrorResponse or NoticeResponse body that the sidecar reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: String,
}

impl ErrorFields {
    /// Parses an ErrorResponse/NoticeResponse body; missing fields stay empty.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, after)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, next)) = super::read_cstr(after) else {
                break;
            };
            match kind {
                b'V' => fields.severity = value.to_owned(),
                b'S' if fields.severity.is_empty() => fields.severity = value.to_owned(),
                b'C' => fields.code = value.to_owned(),
                b'M' => fields.message = value.to_owned(),
                b'D' => fields.detail = value.to_owned(),
                _ => {}
            }
            rest = next;
        }
        fields
    }
}

/// Reads a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = super::read_cstr(body)?;
    let (value, _) = super::read_cstr(rest)?;
    Some((name, value))
}

/// The column values of a DataRow body (`None` for NULL), as text; `None` when malformed.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len as usize..];
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::try_frame;

    #[test]
    fn data_rows_parse_and_truncated_ones_do_not() {
        let row = [0, 2, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&row), Some(vec![Some("a".to_owned()), None]));
        assert_eq!(parse_data_row(&row[..6]), None);
        assert_eq!(parse_data_row(&[0]), None);
    }

    #[test]
    fn error_report_round_trips() {
        let mut buf = BytesMut::new();
        ErrorReport::error(SqlState::TOO_MANY_CONNECTIONS, "pool exhausted").write(&mut buf);
        let frame = try_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag(), ERROR_RESPONSE_TAG);
        let fields = ErrorFields::parse(frame.body());
        assert_eq!(fields.code, "53300");
        assert_eq!(fields.severity, "ERROR");
        assert_eq!(fields.message, "pool exhausted");
    }

    #[test]
    fn ready_for_query_layout() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TransactionStatus::InTransaction);
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'T']);
    }

    #[test]
    fn parameter_status_round_trips() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "TimeZone", "UTC");
        let frame = try_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_parameter_status(frame.body()),
            Some(("TimeZone", "UTC"))
        );
    }
}
