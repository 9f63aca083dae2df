//! One-dimensional Postgres arrays as lists of elements: the text form (`{1,2,"a b",NULL}`, as
//! `array_in` reads it) and the binary form (postgres-protocol's decoder). Used to read shard
//! keys out of `= ANY($1)` and `= ANY('{…}')`.

use std::borrow::Cow;

use fallible_iterator::FallibleIterator;

/// Why an array value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    #[error("malformed array literal: \"{0}\"")]
    Malformed(String),
    #[error("only one-dimensional arrays are supported here")]
    Dimensions,
    #[error("malformed binary array: {0}")]
    Binary(String),
}

/// The elements of an array in text form (`None`: an unquoted `NULL`).
pub fn text_elements(text: &str) -> Result<Vec<Option<Cow<'_, str>>>, ArrayError> {
    let malformed = || ArrayError::Malformed(text.to_owned());
    let body = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if body.starts_with('[') {
        // Explicit bounds (`[1:3]={…}`) do not change the elements, but are rare: refuse.
        return Err(ArrayError::Dimensions);
    }
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(malformed)?;
    let mut out = Vec::new();
    if inner
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .is_empty()
    {
        return Ok(out);
    }
    let mut rest = inner;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.starts_with('{') {
            return Err(ArrayError::Dimensions);
        }
        let (element, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let (value, after) = quoted_element(quoted).ok_or_else(malformed)?;
            (Some(value), after)
        } else {
            let end = unquoted_end(rest);
            let (raw, after) = rest.split_at(end);
            let raw = raw.trim_end_matches(|c: char| c.is_ascii_whitespace());
            if raw.is_empty() || raw.contains(['"', '{', '}']) {
                return Err(malformed());
            }
            let value = if raw.eq_ignore_ascii_case("null") {
                None
            } else if raw.contains('\\') {
                Some(Cow::Owned(unescape(raw)))
            } else {
                Some(Cow::Borrowed(raw))
            };
            (value, after)
        };
        out.push(element);
        let after = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(out),
            None => return Err(malformed()),
        }
    }
}

/// A quoted element's value and the text after its closing quote.
fn quoted_element(quoted: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut escaped = false;
    let mut has_escapes = false;
    for (i, c) in quoted.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => {
                escaped = true;
                has_escapes = true;
            }
            (false, '"') => {
                let raw = &quoted[..i];
                let value = if has_escapes {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                };
                return Some((value, &quoted[i + 1..]));
            }
            (false, _) => {}
        }
    }
    None
}

/// Where an unquoted element ends (a comma or the end; backslash escapes skipped).
fn unquoted_end(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, ',') => return i,
            (false, _) => {}
        }
    }
    text.len()
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The elements of an array in binary form (`None`: NULL).
pub fn binary_elements(bytes: &[u8]) -> Result<Vec<Option<&[u8]>>, ArrayError> {
    let array = postgres_protocol::types::array_from_sql(bytes)
        .map_err(|e| ArrayError::Binary(e.to_string()))?;
    let dimensions = array
        .dimensions()
        .count()
        .map_err(|e| ArrayError::Binary(e.to_string()))?;
    if dimensions > 1 {
        return Err(ArrayError::Dimensions);
    }
    array
        .values()
        .collect()
        .map_err(|e| ArrayError::Binary(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<Option<String>> {
        text_elements(s)
            .unwrap()
            .into_iter()
            .map(|e| e.map(Cow::into_owned))
            .collect()
    }

    #[test]
    fn text_form() {
        assert_eq!(
            text("{1,2, 3}"),
            vec![Some("1".into()), Some("2".into()), Some("3".into())]
        );
        assert_eq!(text(" { } "), Vec::<Option<String>>::new());
        assert_eq!(
            text(r#"{"a,b", NULL, "NULL", x\,y, "q\"t"}"#),
            vec![
                Some("a,b".into()),
                None,
                Some("NULL".into()),
                Some("x,y".into()),
                Some("q\"t".into())
            ]
        );
        for bad in [
            "1,2",
            "{1,,2}",
            "{1,2",
            "{\"a}",
            "{{1},{2}}",
            "[1:2]={1,2}",
            "{a\"b}",
        ] {
            assert!(text_elements(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn binary_form() {
        // int8[] {7, NULL}: ndim 1, has nulls, oid 20, size 2, lower bound 1.
        let mut bytes = Vec::new();
        for v in [1i32, 1, 20, 2, 1] {
            bytes.extend(v.to_be_bytes());
        }
        bytes.extend(8i32.to_be_bytes());
        bytes.extend(7i64.to_be_bytes());
        bytes.extend((-1i32).to_be_bytes());
        let elements = binary_elements(&bytes).unwrap();
        assert_eq!(elements, vec![Some(&7i64.to_be_bytes()[..]), None]);
        assert!(binary_elements(&bytes[..10]).is_err());
    }
}
