//! The Bind message as a view over its body: portal, statement, parameter format codes and
//! values, result format codes. Decoding is strict (counts consistent, nothing left over), never
//! panics on any input and allocates nothing: parameters are read when asked for (a shard key,
//! a signal's PID), in text or binary format.

use bytes::{BufMut, BytesMut};

use super::frontend::BIND_TAG;

/// A checked Bind body; everything borrows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// The parameter format codes: zero (all text), one (for every parameter) or one per
    /// parameter, two bytes each.
    formats: &'a [u8],
    /// How many parameters.
    count: usize,
    /// The parameters as sent: a length (-1 for NULL) and the value, for each.
    values: &'a [u8],
    /// The result format codes, two bytes each.
    results: &'a [u8],
}

/// A reader over a message body that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = crate::protocol::nul_at(self.0)?;
        let s = self.take(end)?;
        self.take(1)?;
        Some(s)
    }

    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.i16()?).ok()
    }

    /// One parameter: `Some(None)` for NULL.
    fn param(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            n => Some(Some(self.take(usize::try_from(n).ok()?)?)),
        }
    }
}

impl<'a> Bind<'a> {
    /// Checks a Bind body; `None` if it is malformed.
    pub fn parse(body: &'a [u8]) -> Option<Bind<'a>> {
        let mut r = Reader(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let nformats = r.count()?;
        let formats = r.take(nformats * 2)?;
        let count = r.count()?;
        if nformats > 1 && nformats != count {
            return None;
        }
        let before = r.0;
        for _ in 0..count {
            r.param()?;
        }
        let values = &before[..before.len() - r.0.len()];
        let nresults = r.count()?;
        let results = r.take(nresults * 2)?;
        r.0.is_empty().then_some(Bind {
            portal,
            statement,
            formats,
            count,
            values,
            results,
        })
    }

    /// How many parameters.
    pub fn param_count(&self) -> usize {
        self.count
    }

    /// The parameters in order (`None` is SQL NULL).
    pub fn params(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader(self.values);
        // Checked by `parse`: every parameter is there.
        (0..self.count).map_while(move |_| r.param())
    }

    /// Parameter `i` (0-based): `None` when there is no such parameter, `Some(None)` for NULL.
    pub fn param(&self, i: usize) -> Option<Option<&'a [u8]>> {
        self.params().nth(i)
    }

    /// The format code of parameter `i` (0-based): 0 text, 1 binary.
    pub fn param_format(&self, i: usize) -> i16 {
        let code = |k: usize| {
            self.formats
                .get(k * 2..k * 2 + 2)
                .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]))
        };
        match self.formats.len() / 2 {
            0 => 0,
            1 => code(0),
            _ => code(i),
        }
    }

    /// The result format codes.
    pub fn result_formats(&self) -> impl Iterator<Item = i16> + 'a {
        self.results
            .chunks_exact(2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    /// Parameter `i` (0-based) as an integer, in text or binary (int2/int4/int8) format.
    pub fn param_int(&self, i: usize) -> Option<i64> {
        let value = self.param(i)??;
        match self.param_format(i) {
            0 => std::str::from_utf8(value).ok()?.trim().parse().ok(),
            1 => match value.len() {
                2 => Some(i16::from_be_bytes([value[0], value[1]]).into()),
                4 => Some(i32::from_be_bytes(value.try_into().ok()?).into()),
                8 => Some(i64::from_be_bytes(value.try_into().ok()?)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Parameter `i` (0-based) as a string: text and varchar are the same bytes in both
    /// formats (in the client encoding; `None` unless it is UTF-8).
    pub fn param_str(&self, i: usize) -> Option<&'a str> {
        std::str::from_utf8(self.param(i)??).ok()
    }

    /// Parameter `i` (0-based) as a UUID's 16 bytes, from its binary format or its text form
    /// (hyphens optional, any case, optionally braced, as Postgres's `uuid_in` accepts).
    pub fn param_uuid(&self, i: usize) -> Option<[u8; 16]> {
        let value = self.param(i)??;
        match self.param_format(i) {
            1 => value.try_into().ok(),
            0 => parse_uuid(std::str::from_utf8(value).ok()?),
            _ => None,
        }
    }

    /// The integer `value` in the format and width parameter `i` came in.
    pub fn int_like(&self, i: usize, value: i32) -> Vec<u8> {
        let width = self.param(i).flatten().map_or(4, <[u8]>::len);
        match (self.param_format(i), width) {
            (1, 8) => i64::from(value).to_be_bytes().to_vec(),
            (1, _) => value.to_be_bytes().to_vec(),
            _ => value.to_string().into_bytes(),
        }
    }

    /// The whole Bind message (tag and length included).
    pub fn encode(&self) -> BytesMut {
        self.encode_with(None)
    }

    /// The whole Bind message with parameter `i` (0-based) replaced by `value`.
    pub fn encode_replacing(&self, i: usize, value: &[u8]) -> BytesMut {
        self.encode_with(Some((i, value)))
    }

    /// A Bind of the same parameters to the unnamed portal and statement, asking for the
    /// results in `results` (format codes).
    pub fn encode_unnamed(&self, results: &[i16]) -> BytesMut {
        let all: Vec<usize> = (0..self.count).collect();
        self.encode_subset(&all, results)
    }

    /// A Bind to the unnamed portal and statement of only the parameters `params` (0-based,
    /// in this order), asking for the results in `results`.
    pub fn encode_subset(&self, params: &[usize], results: &[i16]) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.values.len() + 32);
        out.put_u8(BIND_TAG);
        out.put_i32(0);
        out.put_slice(&[0, 0]);
        match self.formats.len() / 2 {
            0 | 1 => {
                out.put_i16((self.formats.len() / 2) as i16);
                out.put_slice(self.formats);
            }
            _ => {
                out.put_i16(params.len() as i16);
                for &i in params {
                    out.put_i16(self.param_format(i));
                }
            }
        }
        out.put_i16(params.len() as i16);
        let values: Vec<Option<&[u8]>> = self.params().collect();
        for &i in params {
            match values.get(i).copied().flatten() {
                None => out.put_i32(-1),
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
            }
        }
        out.put_i16(results.len() as i16);
        for code in results {
            out.put_i16(*code);
        }
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }

    fn encode_with(&self, replace: Option<(usize, &[u8])>) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.values.len() + 64);
        out.put_u8(BIND_TAG);
        out.put_i32(0);
        for s in [self.portal, self.statement] {
            out.put_slice(s);
            out.put_u8(0);
        }
        out.put_i16((self.formats.len() / 2) as i16);
        out.put_slice(self.formats);
        out.put_i16(self.count as i16);
        for (k, param) in self.params().enumerate() {
            let param = match replace {
                Some((i, value)) if i == k => Some(value),
                _ => param,
            };
            match param {
                None => out.put_i32(-1),
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
            }
        }
        out.put_i16((self.results.len() / 2) as i16);
        out.put_slice(self.results);
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// The 16 bytes of a UUID's text form, as `uuid_in` reads it: 32 hex digits, a hyphen allowed
/// after any group of four, optionally in braces.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text
        .strip_prefix('{')
        .map_or(Some(text), |t| t.strip_suffix('}'))?;
    let mut out = [0u8; 16];
    let mut digits = 0usize;
    let mut previous_hyphen = true;
    for (k, c) in text.bytes().enumerate() {
        if c == b'-' {
            // Only after a group of four digits, never first, last or twice.
            if previous_hyphen || digits % 4 != 0 || k + 1 == text.len() {
                return None;
            }
            previous_hyphen = true;
            continue;
        }
        previous_hyphen = false;
        let v = (c as char).to_digit(16)? as u8;
        if digits >= 32 {
            return None;
        }
        out[digits / 2] |= if digits % 2 == 0 { v << 4 } else { v };
        digits += 1;
    }
    (digits == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_integers() {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::bind(
            "p",
            "s",
            [0i16, 1],
            [Some("42"), Some("x")],
            |v, buf| {
                match v {
                    Some("x") => buf.put_i32(7),
                    Some(t) => buf.put_slice(t.as_bytes()),
                    None => return Ok(postgres_protocol::IsNull::Yes),
                }
                Ok(postgres_protocol::IsNull::No)
            },
            [1i16],
            &mut out,
        )
        .map_err(|_| ())
        .unwrap();
        let bind = Bind::parse(&out[5..]).unwrap();
        assert_eq!(bind.portal, b"p");
        assert_eq!(bind.param_int(0), Some(42));
        assert_eq!(bind.param_int(1), Some(7));
        assert_eq!(bind.int_like(1, 9), 9i32.to_be_bytes().to_vec());
        assert_eq!(bind.int_like(0, 9), b"9".to_vec());
        assert_eq!(&bind.encode()[..], &out[..]);
        assert_eq!(bind.param_count(), 2);
        assert_eq!(bind.result_formats().collect::<Vec<_>>(), [1]);
        let replaced = bind.encode_replacing(0, b"99");
        let again = Bind::parse(&replaced[5..]).unwrap();
        assert_eq!(again.param_int(0), Some(99));
        assert_eq!(again.param_int(1), Some(7));
    }

    #[test]
    fn strings_uuids_and_nulls() {
        let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let bytes: [u8; 16] = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::bind(
            "",
            "s",
            [0i16, 1, 0, 0],
            [Some(uuid), Some("binary"), Some("grüße"), None],
            |v, buf| {
                match v {
                    Some("binary") => buf.put_slice(&bytes),
                    Some(t) => buf.put_slice(t.as_bytes()),
                    None => return Ok(postgres_protocol::IsNull::Yes),
                }
                Ok(postgres_protocol::IsNull::No)
            },
            [] as [i16; 0],
            &mut out,
        )
        .map_err(|_| ())
        .unwrap();
        let bind = Bind::parse(&out[5..]).unwrap();
        assert_eq!(bind.param_uuid(0), Some(bytes));
        assert_eq!(bind.param_uuid(1), Some(bytes));
        assert_eq!(bind.param_str(2), Some("grüße"));
        assert_eq!(bind.param(3), Some(None));
        assert_eq!(bind.param(4), None);
        assert_eq!(bind.param_int(3), None);
        for (text, ok) in [
            ("A0EEBC999C0B4EF8BB6D6BB9BD380A11", true),
            ("{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}", true),
            ("a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", true),
            ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", false),
            ("-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false),
            ("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", false),
            ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", false),
            ("a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11", false),
            ("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false),
        ] {
            assert_eq!(parse_uuid(text) == Some(bytes), ok, "{text}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused_without_panicking() {
        for body in [
            &b""[..],
            b"p\0",
            b"p\0s\0\x00\x02\x00\x00",
            b"p\0s\0\x00\x00\x00\x01\x00\x00\x00\x09ab",
            b"p\0s\0\x00\x00\x00\x00\x00\x00extra",
            b"p\0s\0\xff\xff",
        ] {
            assert_eq!(Bind::parse(body), None, "{body:?}");
        }
        assert!(Bind::parse(b"p\0s\0\x00\x00\x00\x00\x00\x00").is_some());
    }
}
