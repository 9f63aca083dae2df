//! The Bind message, decoded and encoded: portal, statement, parameter format codes and
//! values, result format codes. Decoding is strict (counts consistent, nothing left over) and
//! never panics on any input.

use bytes::{BufMut, BytesMut};

use super::frontend::BIND_TAG;

/// A decoded Bind body; values borrow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Zero codes (all text), one (for every parameter) or one per parameter.
    pub param_formats: Vec<i16>,
    /// `None` is SQL NULL.
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
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
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = self.take(end)?;
        self.take(1)?;
        Some(s)
    }

    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.i16()?).ok()
    }
}

impl<'a> Bind<'a> {
    /// Decodes a Bind body; `None` if it is malformed.
    pub fn parse(body: &'a [u8]) -> Option<Bind<'a>> {
        let mut r = Reader(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let nformats = r.count()?;
        let param_formats = (0..nformats).map(|_| r.i16()).collect::<Option<Vec<_>>>()?;
        let nparams = r.count()?;
        if nformats > 1 && nformats != nparams {
            return None;
        }
        let mut params = Vec::with_capacity(nparams.min(r.0.len() / 4));
        for _ in 0..nparams {
            let len = r.i32()?;
            params.push(match len {
                -1 => None,
                n => Some(r.take(usize::try_from(n).ok()?)?),
            });
        }
        let nresults = r.count()?;
        let result_formats = (0..nresults).map(|_| r.i16()).collect::<Option<Vec<_>>>()?;
        r.0.is_empty().then_some(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format code of parameter `i` (0-based): 0 text, 1 binary.
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }

    /// Parameter `i` (0-based) as an integer, in text or binary (int2/int4/int8) format.
    pub fn param_int(&self, i: usize) -> Option<i64> {
        let value = (*self.params.get(i)?)?;
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

    /// The integer `value` in the format and width parameter `i` came in.
    pub fn int_like(&self, i: usize, value: i32) -> Vec<u8> {
        let width = self.params.get(i).copied().flatten().map_or(4, <[u8]>::len);
        match (self.param_format(i), width) {
            (1, 8) => i64::from(value).to_be_bytes().to_vec(),
            (1, _) => value.to_be_bytes().to_vec(),
            _ => value.to_string().into_bytes(),
        }
    }

    /// The whole Bind message (tag and length included).
    pub fn encode(&self) -> BytesMut {
        let mut body = BytesMut::new();
        for s in [self.portal, self.statement] {
            body.put_slice(s);
            body.put_u8(0);
        }
        body.put_i16(self.param_formats.len() as i16);
        for f in &self.param_formats {
            body.put_i16(*f);
        }
        body.put_i16(self.params.len() as i16);
        for p in &self.params {
            match p {
                None => body.put_i32(-1),
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v);
                }
            }
        }
        body.put_i16(self.result_formats.len() as i16);
        for f in &self.result_formats {
            body.put_i16(*f);
        }
        let mut out = BytesMut::with_capacity(body.len() + 5);
        out.put_u8(BIND_TAG);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }
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
