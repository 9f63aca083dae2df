//! Header-peek framing over `BytesMut`.
//!
//! Every regular message is `tag: u8, len: i32 (including itself), body`. The framer only
//! looks at the five header bytes; whole frames are cut with `split_to(len).freeze()` so the
//! body is never copied. Lengths are checked against the configured maximum before anything
//! is buffered for them. This module must not decode message bodies.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Size of the tag plus the length word.
pub const HEADER_LEN: usize = 5;

/// A framing failure: always a protocol violation by the peer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length word is smaller than the length word itself.
    #[error("invalid message length {len} for message type '{}'", char::from(*tag))]
    BadLength { tag: u8, len: i32 },
    /// The message is larger than `max_message_size`.
    #[error("message of type '{}' is {len} bytes, over the limit of {max} bytes", char::from(*tag))]
    TooLarge { tag: u8, len: usize, max: usize },
}

impl FrameError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::BadLength { .. } => "bad_length",
            FrameError::TooLarge { .. } => "too_large",
        }
    }
}

/// One message header: its tag and the total frame size (tag + length word + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes of the whole frame, including the tag byte.
    pub frame_len: usize,
}

impl Header {
    /// Body length (frame minus header).
    pub fn body_len(&self) -> usize {
        self.frame_len - HEADER_LEN
    }
}

/// Peeks the header at the front of `buf` without consuming anything.
/// `Ok(None)` means fewer than five bytes are buffered.
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength { tag, len });
    }
    Ok(Some(Header {
        tag,
        frame_len: len as usize + 1,
    }))
}

/// One whole message: `bytes` holds the tag, the length word and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    /// `bytes[0]`, read once (every step of the relay asks for it).
    tag: u8,
}

impl Frame {
    /// Wraps already-framed bytes (used by builders and tests). Bytes too short for a header
    /// make a frame of tag 0 and an empty body.
    pub fn from_bytes(bytes: Bytes) -> Frame {
        let tag = bytes.first().copied().unwrap_or(0);
        Frame { bytes, tag }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The body after the length word.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The whole frame as it arrived.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Frames always hold a header, so this is never true; present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Cuts one complete frame off the front of `buf`, if one is there.
///
/// Fails as soon as the header shows a length over `max`, before the body arrives.
pub fn try_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = peek_header(buf)? else {
        return Ok(None);
    };
    if header.frame_len > max {
        return Err(FrameError::TooLarge {
            tag: header.tag,
            len: header.frame_len,
            max,
        });
    }
    if buf.len() < header.frame_len {
        buf.reserve(header.frame_len - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(header.frame_len).freeze(),
        tag: header.tag,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_split_across_reads() {
        let whole = [msg(b'Q', b"select 1\0"), msg(b'S', b"")].concat();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in whole.chunks(3) {
            buf.extend_from_slice(chunk);
            while let Some(f) = try_frame(&mut buf, 1024).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag(), b'Q');
        assert_eq!(frames[0].body(), b"select 1\0");
        assert_eq!(frames[1].tag(), b'S');
        assert!(frames[1].body().is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_lengths_below_four() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(
            try_frame(&mut buf, 1024),
            Err(FrameError::BadLength { tag: b'Q', len: 3 })
        );
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            try_frame(&mut buf, 1024),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn rejects_oversize_before_body_arrives() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0x10, 0][..]);
        assert_eq!(
            try_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                tag: b'Q',
                len: 4097,
                max: 1024
            })
        );
    }

    #[test]
    fn waits_for_partial_header() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0][..]);
        assert_eq!(try_frame(&mut buf, 1024), Ok(None));
        assert_eq!(buf.len(), 3);
    }
}
