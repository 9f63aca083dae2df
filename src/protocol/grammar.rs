//! Whether a frontend message body follows its message type's grammar (the checks Postgres's
//! `pq_getmsg*` functions make while reading it). The relay forwards nothing that fails them:
//! a server never reads a malformed message from the sidecar. No allocation.

use super::frontend::{
    BIND_TAG, CLOSE_TAG, COPY_DATA_TAG, COPY_DONE_TAG, COPY_FAIL_TAG, DESCRIBE_TAG, EXECUTE_TAG,
    FLUSH_TAG, FUNCTION_CALL_TAG, PARSE_TAG, QUERY_TAG, SYNC_TAG, TERMINATE_TAG,
};

/// A cursor over a body; every read fails instead of running past the end.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }

    fn i16(&mut self) -> Option<i16> {
        let v = i16::from_be_bytes([*self.0.first()?, *self.0.get(1)?]);
        self.skip(2)?;
        Some(v)
    }

    fn i32(&mut self) -> Option<i32> {
        let b = self.0.get(..4)?;
        let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.skip(4)?;
        Some(v)
    }

    /// A name (short: see [`crate::protocol::nul_at`]).
    fn cstr(&mut self) -> Option<()> {
        let end = crate::protocol::nul_at(self.0)?;
        self.skip(end + 1)
    }

    /// A statement text or message (long: memchr finds its end fast).
    fn text(&mut self) -> Option<()> {
        let end = memchr::memchr(0, self.0)?;
        self.skip(end + 1)
    }

    /// A count (non-negative i16) followed by that many items read by `item`.
    fn counted(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<usize> {
        let n = usize::try_from(self.i16()?).ok()?;
        for _ in 0..n {
            item(self)?;
        }
        Some(n)
    }

    /// A length-prefixed value: -1 (NULL) or that many bytes.
    fn value(&mut self) -> Option<()> {
        match self.i32()? {
            -1 => Some(()),
            n => self.skip(usize::try_from(n).ok()?),
        }
    }

    fn done(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// Whether `body` is a well-formed body for a client message of type `tag` (after startup).
/// Unknown types are not judged here (the relay refuses them by type).
pub fn well_formed(tag: u8, body: &[u8]) -> bool {
    let mut c = Cursor(body);
    let ok = match tag {
        SYNC_TAG | FLUSH_TAG | COPY_DONE_TAG | TERMINATE_TAG => c.done(),
        QUERY_TAG | COPY_FAIL_TAG => c.text().and_then(|_| c.done()),
        PARSE_TAG => (|| {
            c.cstr()?;
            c.text()?;
            c.counted(|c| c.i32().map(drop))?;
            c.done()
        })(),
        BIND_TAG => (|| {
            c.cstr()?;
            c.cstr()?;
            let formats = c.counted(|c| c.i16().map(drop))?;
            let params = c.counted(Cursor::value)?;
            if formats > 1 && formats != params {
                return None;
            }
            c.counted(|c| c.i16().map(drop))?;
            c.done()
        })(),
        DESCRIBE_TAG | CLOSE_TAG => (|| {
            matches!(body.first(), Some(b'S' | b'P')).then_some(())?;
            c.skip(1)?;
            c.cstr()?;
            c.done()
        })(),
        EXECUTE_TAG => (|| {
            c.cstr()?;
            c.i32()?;
            c.done()
        })(),
        FUNCTION_CALL_TAG => (|| {
            c.i32()?;
            let formats = c.counted(|c| c.i16().map(drop))?;
            let args = c.counted(Cursor::value)?;
            if formats > 1 && formats != args {
                return None;
            }
            c.i16()?;
            c.done()
        })(),
        COPY_DATA_TAG => Some(()),
        _ => Some(()),
    };
    ok.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_each_message_type() {
        let good: &[(u8, &[u8])] = &[
            (b'Q', b"SELECT 1\0"),
            (b'S', b""),
            (b'P', b"s\0SELECT $1\0\x00\x01\x00\x00\x00\x17"),
            (b'B', b"\0s\0\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00"),
            (
                b'B',
                b"\0s\0\x00\x01\x00\x01\x00\x02\xff\xff\xff\xff\x00\x00\x00\x01x\x00\x00",
            ),
            (b'D', b"Ss\0"),
            (b'E', b"\0\x00\x00\x00\x00"),
            (b'C', b"P\0"),
            (
                b'F',
                b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01x\x00\x00",
            ),
            (b'f', b"why\0"),
            (b'd', b"anything"),
        ];
        for (tag, body) in good {
            assert!(well_formed(*tag, body), "{} {body:?}", *tag as char);
        }
        let bad: &[(u8, &[u8])] = &[
            (b'Q', b"SELECT 1"),
            (b'Q', b"SELECT 1\0extra"),
            (b'S', b"x"),
            (b'P', b"s\0SELECT $1\0\x00\x02\x00\x00\x00\x17"),
            (b'P', b"s\0SELECT\0\xff\xff"),
            (
                b'B',
                b"\0s\0\x00\x02\x00\x00\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00",
            ),
            (b'B', b"\0s\0\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"),
            (b'D', b"Xs\0"),
            (b'D', b"S"),
            (b'E', b"\0\x00\x00"),
            (b'F', b"\x00\x00\x00\x01"),
            (b'f', b""),
        ];
        for (tag, body) in bad {
            assert!(!well_formed(*tag, body), "{} {body:?}", *tag as char);
        }
    }
}
