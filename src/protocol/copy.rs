//! `COPY … FROM STDIN` data cut into rows, pure: CopyData chunks in (rows may span chunks),
//! whole rows out with the value of one column (the shard key) — text format (delimiter,
//! backslash escapes, NULL string, the `\.` end marker), CSV (quotes, escapes, NULL string,
//! header line) and binary (signature header, tuples, trailer). The row bytes are passed on
//! untouched.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// How the rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
    },
    Binary,
}

impl CopyFormat {
    pub fn text() -> CopyFormat {
        CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        }
    }

    pub fn csv() -> CopyFormat {
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: false,
        }
    }
}

/// Why the data could not be cut into rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("COPY data: {0}")]
    Malformed(&'static str),
    #[error("COPY data: a row has no column {0} (the shard key)")]
    MissingColumn(usize),
}

/// One piece of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Sent to every shard (a binary header, a CSV header line).
    Everyone(Bytes),
    /// A row and its key column's value (`None`: NULL).
    Row { bytes: Bytes, key: Option<Vec<u8>> },
    /// The end of the data (a binary trailer or `\.`): nothing after it counts.
    End,
}

/// Cuts CopyData into rows.
pub struct Splitter {
    format: CopyFormat,
    key: usize,
    buf: BytesMut,
    /// The binary header or CSV header line is still to come.
    header_due: bool,
    ended: bool,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl Splitter {
    pub fn new(format: CopyFormat, key: usize) -> Splitter {
        let header_due = matches!(
            format,
            CopyFormat::Binary | CopyFormat::Csv { header: true, .. }
        );
        Splitter {
            format,
            key,
            buf: BytesMut::new(),
            header_due,
            ended: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if !self.ended {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next whole piece, if the data holds one.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.ended {
            return Ok(None);
        }
        match self.format.clone() {
            CopyFormat::Binary => self.next_binary(),
            CopyFormat::Text { delimiter, null } => {
                let Some(end) = line_end(&self.buf, None) else {
                    return Ok(None);
                };
                self.text_row(end, delimiter, &null)
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                let Some(end) = line_end(&self.buf, Some((quote, escape))) else {
                    return Ok(None);
                };
                self.csv_row(end, delimiter, quote, escape, &null)
            }
        }
    }

    /// The data ended (CopyDone): the last row may lack its newline.
    pub fn finish(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.ended || self.buf.is_empty() {
            return Ok(None);
        }
        match self.format.clone() {
            CopyFormat::Binary => Err(CopyError::Malformed("the binary data ends inside a row")),
            CopyFormat::Text { delimiter, null } => self.text_row(self.buf.len(), delimiter, &null),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => self.csv_row(self.buf.len(), delimiter, quote, escape, &null),
        }
    }

    fn take(&mut self, end: usize) -> Bytes {
        let take = (end + 1).min(self.buf.len());
        self.buf.split_to(take).freeze()
    }

    fn text_row(
        &mut self,
        end: usize,
        delimiter: u8,
        null: &[u8],
    ) -> Result<Option<Piece>, CopyError> {
        let line = trim_eol(&self.buf[..end]);
        if line == b"\\." {
            self.ended = true;
            self.buf.clear();
            return Ok(Some(Piece::End));
        }
        let field =
            text_field(line, delimiter, self.key).ok_or(CopyError::MissingColumn(self.key))?;
        let key = (field != null).then(|| unescape(field).into_owned());
        Ok(Some(Piece::Row {
            bytes: self.take(end),
            key,
        }))
    }

    fn csv_row(
        &mut self,
        end: usize,
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: &[u8],
    ) -> Result<Option<Piece>, CopyError> {
        if std::mem::take(&mut self.header_due) {
            return Ok(Some(Piece::Everyone(self.take(end))));
        }
        let line = trim_eol(&self.buf[..end]);
        if line == b"\\." {
            self.ended = true;
            self.buf.clear();
            return Ok(Some(Piece::End));
        }
        let key = csv_field(line, delimiter, quote, escape, null, self.key)?;
        Ok(Some(Piece::Row {
            bytes: self.take(end),
            key,
        }))
    }

    fn next_binary(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.header_due {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError::Malformed("the binary signature is missing"));
            }
            let at = SIGNATURE.len() + 4;
            let ext =
                u32::from_be_bytes(self.buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let total = at + 4 + ext;
            if self.buf.len() < total {
                return Ok(None);
            }
            self.header_due = false;
            return Ok(Some(Piece::Everyone(self.buf.split_to(total).freeze())));
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if fields == -1 {
            self.ended = true;
            self.buf.clear();
            return Ok(Some(Piece::End));
        }
        let mut at = 2;
        let mut key = None;
        for i in 0..fields.max(0) as usize {
            let Some(len) = self.buf.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes(len.try_into().unwrap_or_default());
            at += 4;
            let value = match len {
                -1 => None,
                n if n < 0 => {
                    return Err(CopyError::Malformed("a binary field has a negative length"))
                }
                n => {
                    let n = n as usize;
                    if self.buf.len() < at + n {
                        return Ok(None);
                    }
                    at += n;
                    Some(self.buf[at - n..at].to_vec())
                }
            };
            if i == self.key {
                key = Some(value);
            }
        }
        let Some(key) = key else {
            return Err(CopyError::MissingColumn(self.key));
        };
        let bytes = self.buf.split_to(at).freeze();
        Ok(Some(Piece::Row { bytes, key }))
    }

    /// Whether the data is in binary format (keys in binary form).
    pub fn is_binary(&self) -> bool {
        self.format == CopyFormat::Binary
    }
}

/// Where the first row of `buf` ends (its newline), quotes considered for CSV.
fn line_end(buf: &[u8], csv: Option<(u8, u8)>) -> Option<usize> {
    let Some((quote, escape)) = csv else {
        // Text: an escaped newline is written `\n`, so a raw newline always ends the row.
        return buf.iter().position(|b| *b == b'\n');
    };
    let mut quoted = false;
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        if quoted && b == escape && buf.get(i + 1) == Some(&quote) && escape != quote {
            i += 2;
            continue;
        }
        if b == quote {
            quoted = !quoted;
        } else if b == b'\n' && !quoted {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Field `n` of a text-format line (escaped delimiters skipped).
fn text_field(line: &[u8], delimiter: u8, n: usize) -> Option<&[u8]> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 1,
            b if b == delimiter => {
                if field == n {
                    return Some(&line[start..i]);
                }
                field += 1;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    (field == n).then(|| &line[start..])
}

/// A text-format field's value (`\t`, `\n`, `\\`, octal and `\x` escapes resolved).
fn unescape(field: &[u8]) -> Cow<'_, [u8]> {
    if !field.contains(&b'\\') {
        return Cow::Borrowed(field);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' || i + 1 == field.len() {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let mut v = 0;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|b| hex(*b)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// Field `n` of a CSV line, unquoted (`None`: NULL — unquoted and equal to the NULL string).
fn csv_field(
    line: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
    n: usize,
) -> Result<Option<Vec<u8>>, CopyError> {
    let mut field = 0;
    let mut value = Vec::new();
    let mut raw_start = 0;
    let mut quoted_any = false;
    let mut quoted = false;
    let mut i = 0;
    loop {
        let at_end = i >= line.len();
        if at_end || (!quoted && line[i] == delimiter) {
            if field == n {
                let raw = &line[raw_start..i.min(line.len())];
                return Ok((quoted_any || raw != null).then_some(value));
            }
            if at_end {
                return Err(CopyError::MissingColumn(n));
            }
            field += 1;
            value.clear();
            quoted_any = false;
            raw_start = i + 1;
            i += 1;
            continue;
        }
        let b = line[i];
        if quoted && b == escape && line.get(i + 1) == Some(&quote) {
            value.push(quote);
            i += 2;
            continue;
        }
        if b == quote {
            quoted = !quoted;
            quoted_any = true;
        } else {
            value.push(b);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(format: CopyFormat, key: usize, chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = Splitter::new(format, key);
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk);
            while let Some(p) = s.next_piece().unwrap() {
                out.push(p);
            }
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn keys(pieces: &[Piece]) -> Vec<Option<String>> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Row { key, .. } => Some(
                    key.as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                ),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn text_rows_across_chunks_with_escapes_and_nulls() {
        let pieces = rows(
            CopyFormat::text(),
            1,
            &[b"a\t1\tx\nb\\\tc\t2", b"\ty\nz\t\\N\tw\nq\ta\\tb\tv"],
        );
        assert_eq!(
            keys(&pieces),
            vec![
                Some("1".into()),
                Some("2".into()),
                None,
                Some("a\tb".into())
            ]
        );
        let Piece::Row { bytes, .. } = &pieces[1] else {
            panic!()
        };
        assert_eq!(&bytes[..], b"b\\\tc\t2\ty\n");
        let ended = rows(CopyFormat::text(), 0, &[b"1\n\\.\n2\n"]);
        assert_eq!(keys(&ended), vec![Some("1".into())]);
        assert_eq!(ended.last(), Some(&Piece::End));
    }

    #[test]
    fn csv_rows_with_quotes_headers_and_nulls() {
        let format = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: true,
        };
        let pieces = rows(
            format,
            1,
            &[b"id,key\n1,\"a,\"\"b\"\n2,\n3,\"\"\n4,\"multi\nline\"\n"],
        );
        assert!(matches!(&pieces[0], Piece::Everyone(h) if &h[..] == b"id,key\n"));
        assert_eq!(
            keys(&pieces),
            vec![
                Some("a,\"b".into()),
                None,
                Some(String::new()),
                Some("multi\nline".into())
            ]
        );
    }

    #[test]
    fn binary_rows_header_and_trailer() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for k in [7i64, 9] {
            data.extend_from_slice(&2i16.to_be_bytes());
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&k.to_be_bytes());
            data.extend_from_slice(&(-1i32).to_be_bytes());
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        let (a, b) = data.split_at(25);
        let pieces = rows(CopyFormat::Binary, 0, &[a, b]);
        assert!(matches!(&pieces[0], Piece::Everyone(h) if h.len() == 19));
        assert_eq!(pieces.len(), 4);
        assert!(matches!(&pieces[1], Piece::Row { key: Some(k), .. } if k == &7i64.to_be_bytes()));
        assert_eq!(pieces[3], Piece::End);
    }
}
