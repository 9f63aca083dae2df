//! The untagged first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest. Pure parsing with the size limit Postgres itself applies.

use thiserror::Error;

use super::{read_cstr, read_i32};

/// Postgres refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;
/// Protocol 3.0 (`PG_PROTOCOL(3, 0)`).
pub const PROTOCOL_3_0: i32 = 196_608;
/// `NEGOTIATE_SSL_CODE` = 1234 << 16 | 5679.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// `NEGOTIATE_GSS_CODE` = 1234 << 16 | 5680.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// `CANCEL_REQUEST_CODE` = 1234 << 16 | 5678.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Why a first packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

impl StartupMessage {
    /// Whether the client asked for more than protocol 3.0 and must be told what it gets.
    pub fn needs_negotiation(&self) -> bool {
        self.minor_version > 0 || !self.protocol_options.is_empty()
    }
}

impl StartupError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StartupError::BadLength => "startup_length",
            StartupError::UnsupportedProtocol { .. } => "startup_protocol",
            StartupError::Malformed => "startup_malformed",
            StartupError::NoUser => "startup_no_user",
        }
    }
}

/// The first packet's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Startup(StartupMessage),
    SslRequest,
    GssEncRequest,
    Cancel { process_id: i32, secret_key: i32 },
}

/// The parameters of a StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub user: String,
    pub database: String,
    /// The protocol minor version the client asked for (the sidecar speaks 3.0).
    pub minor_version: i32,
    /// `_pq_.` protocol options the client asked for (the sidecar knows none).
    pub protocol_options: Vec<String>,
    /// Everything else, in the order sent, with `options` expanded from `-c name=value`.
    pub params: Vec<(String, String)>,
}

/// Reads the length word of a first packet and checks it; returns the whole packet length.
pub fn packet_len(header: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(header);
    if len < 8 || len as usize > MAX_STARTUP_PACKET_LENGTH {
        return Err(StartupError::BadLength);
    }
    Ok(len as usize)
}

/// Parses a first packet's contents after the length word.
pub fn parse_first_packet(body: &[u8]) -> Result<FirstPacket, StartupError> {
    let (code, rest) = read_i32(body).ok_or(StartupError::BadLength)?;
    match code {
        SSL_REQUEST_CODE => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let (process_id, rest) = read_i32(rest).ok_or(StartupError::BadLength)?;
            let (secret_key, _) = read_i32(rest).ok_or(StartupError::BadLength)?;
            Ok(FirstPacket::Cancel {
                process_id,
                secret_key,
            })
        }
        _ if code >> 16 == 3 => parse_startup(code & 0xffff, rest).map(FirstPacket::Startup),
        _ => Err(StartupError::UnsupportedProtocol {
            major: code >> 16,
            minor: code & 0xffff,
        }),
    }
}

fn parse_startup(minor_version: i32, mut rest: &[u8]) -> Result<StartupMessage, StartupError> {
    let mut protocol_options = Vec::new();
    let mut user = None;
    let mut database = None;
    let mut params = Vec::new();
    loop {
        let (name, after) = read_cstr(rest).ok_or(StartupError::Malformed)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed);
            }
            break;
        }
        let (value, after) = read_cstr(after).ok_or(StartupError::Malformed)?;
        match name {
            "user" => user = Some(value.to_owned()),
            "database" => database = Some(value.to_owned()),
            "options" => params.extend(parse_options(value)),
            _ if name.starts_with("_pq_.") => protocol_options.push(name.to_owned()),
            _ => params.push((name.to_owned(), value.to_owned())),
        }
        rest = after;
    }
    let user = user.filter(|u| !u.is_empty()).ok_or(StartupError::NoUser)?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(StartupMessage {
        user,
        database,
        minor_version,
        protocol_options,
        params,
    })
}

/// Expands libpq's `options` (`-c name=value --name=value`, backslash escapes spaces) into
/// settings. Words that are not settings are ignored, as a pooler cannot honour them.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let setting = if w == "-c" {
            iter.next()
        } else if let Some(s) = w.strip_prefix("-c") {
            Some(s.to_owned())
        } else {
            w.strip_prefix("--").map(str::to_owned)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_body(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in pairs {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn parses_startup_with_unknown_params() {
        let body = startup_body(&[
            ("user", "app"),
            ("database", "db"),
            ("extra_float_digits", "3"),
            ("options", "-c search_path=a,b --statement-timeout=5s"),
        ]);
        let FirstPacket::Startup(s) = parse_first_packet(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.user, "app");
        assert_eq!(s.database, "db");
        assert_eq!(
            s.params,
            vec![
                ("extra_float_digits".to_owned(), "3".to_owned()),
                ("search_path".to_owned(), "a,b".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
            ]
        );
    }

    #[test]
    fn newer_minor_versions_and_protocol_options_are_noted() {
        let mut body = (PROTOCOL_3_0 + 2).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0_pq_.compression\0on\0\0");
        let FirstPacket::Startup(s) = parse_first_packet(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.minor_version, 2);
        assert_eq!(s.protocol_options, vec!["_pq_.compression".to_owned()]);
        assert!(s.params.is_empty());
        assert!(s.needs_negotiation());
    }

    #[test]
    fn database_defaults_to_user() {
        let body = startup_body(&[("user", "app")]);
        let FirstPacket::Startup(s) = parse_first_packet(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.database, "app");
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            parse_first_packet(&startup_body(&[("database", "x")])),
            Err(StartupError::NoUser)
        );
        let mut body = startup_body(&[("user", "app")]);
        body.pop();
        assert_eq!(parse_first_packet(&body), Err(StartupError::Malformed));
        assert!(matches!(
            parse_first_packet(&[0, 2, 0, 0]),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert_eq!(packet_len([0, 0, 0, 4]), Err(StartupError::BadLength));
        assert_eq!(packet_len([0, 1, 0, 0]), Err(StartupError::BadLength));
    }

    #[test]
    fn recognises_special_requests() {
        assert_eq!(
            parse_first_packet(&SSL_REQUEST_CODE.to_be_bytes()),
            Ok(FirstPacket::SslRequest)
        );
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse_first_packet(&cancel),
            Ok(FirstPacket::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
    }

    #[test]
    fn options_with_escapes() {
        assert_eq!(
            parse_options(r"-c application_name=my\ app -cwork_mem=4MB"),
            vec![
                ("application_name".to_owned(), "my app".to_owned()),
                ("work_mem".to_owned(), "4MB".to_owned())
            ]
        );
    }
}
