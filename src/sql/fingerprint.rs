//! A hand-written one-pass scanner over SQL text: the statement's *fingerprint* (its shape,
//! with literals replaced by a placeholder, comments dropped, whitespace collapsed and
//! unquoted words lower-cased), the byte ranges of the literals it replaced, the top-level
//! statement boundaries, and a leading `/* pgsidecar: key=value … */` hint.
//!
//! `WHERE aid = 17` and `WHERE aid = 42` share one fingerprint, so a classification cached by
//! fingerprint serves every execution; values are read back from the literal ranges. The
//! scanner works on bytes (the client's encoding need not be UTF-8), never panics, and
//! allocates only its result. It must not try to understand SQL beyond lexing.

use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;

/// Stands for one literal in a fingerprint. NUL cannot occur in a query string (the protocol
/// NUL-terminates it), so no statement text can spell a placeholder.
pub const PLACEHOLDER: u8 = 0;

/// What kind of literal a range holds, so its value can be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    /// `'…'` with `''` for a quote (standard_conforming_strings on).
    String,
    /// `E'…'` with backslash escapes.
    EscapeString,
    /// `U&'…'` with Unicode escapes, optionally followed by `UESCAPE 'c'`.
    UnicodeString,
    /// `$tag$…$tag$`.
    Dollar,
    /// `B'…'` or `X'…'`.
    BitString,
    /// `42`, `3.14`, `1e10`, `0x1F`.
    Number,
}

/// One literal the scanner replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    pub kind: LiteralKind,
    /// Where the whole literal (quotes included) lies in the original text.
    pub span: Range<usize>,
}

impl Literal {
    /// The literal's value as text, decoded as Postgres decodes it (with
    /// `standard_conforming_strings` on): `''`, every `E''` escape (`\\n`, octal, `\\xHH`,
    /// `\\uXXXX`, `\\UXXXXXXXX`…), `U&''` escapes with their `UESCAPE` character, `$tag$`
    /// bodies. Bytes that are not UTF-8 are replaced.
    pub fn value<'a>(&self, sql: &'a [u8]) -> Cow<'a, str> {
        let raw = &sql[self.span.clone()];
        match self.kind {
            LiteralKind::Number => String::from_utf8_lossy(raw),
            LiteralKind::String => {
                let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
                unquote(inner, false)
            }
            LiteralKind::EscapeString => {
                let inner = &raw[2..raw.len().saturating_sub(1).max(2)];
                unquote(inner, true)
            }
            LiteralKind::UnicodeString => unicode_string(raw),
            LiteralKind::BitString => {
                let inner = &raw[2..raw.len().saturating_sub(1).max(2)];
                String::from_utf8_lossy(inner)
            }
            LiteralKind::Dollar => {
                let tag_end = raw[1..]
                    .iter()
                    .position(|&b| b == b'$')
                    .map_or(0, |p| p + 2);
                let end = raw.len().saturating_sub(tag_end).max(tag_end);
                String::from_utf8_lossy(&raw[tag_end..end])
            }
        }
    }
}

fn unquote(inner: &[u8], backslashes: bool) -> Cow<'_, str> {
    let escaped = inner.contains(&b'\'') || (backslashes && inner.contains(&b'\\'));
    if !escaped {
        return String::from_utf8_lossy(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'\'' if inner.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i += 2;
            }
            b'\\' if backslashes && i + 1 < inner.len() => {
                i = backslash_escape(inner, i + 1, &mut out)
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Decodes the `E''` escape whose letter is at `at` into `out`; returns where the text goes on.
fn backslash_escape(inner: &[u8], at: usize, out: &mut Vec<u8>) -> usize {
    let digits = |from: usize, max: usize, radix: u32| {
        let len = inner[from..]
            .iter()
            .take(max)
            .take_while(|b| (**b as char).is_digit(radix))
            .count();
        let text = std::str::from_utf8(&inner[from..from + len]).unwrap_or("");
        (u32::from_str_radix(text, radix).ok(), from + len)
    };
    let push_char = |out: &mut Vec<u8>, code: Option<u32>| {
        let c = code.and_then(char::from_u32).unwrap_or('\u{fffd}');
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    };
    match inner[at] {
        b'b' => out.push(8),
        b'f' => out.push(12),
        b'n' => out.push(b'\n'),
        b'r' => out.push(b'\r'),
        b't' => out.push(b'\t'),
        b'0'..=b'7' => {
            let (code, next) = digits(at, 3, 8);
            out.push(code.unwrap_or(0) as u8);
            return next;
        }
        b'x' if inner.get(at + 1).is_some_and(u8::is_ascii_hexdigit) => {
            let (code, next) = digits(at + 1, 2, 16);
            out.push(code.unwrap_or(0) as u8);
            return next;
        }
        b'u' | b'U' => {
            let width = if inner[at] == b'u' { 4 } else { 8 };
            let (code, next) = digits(at + 1, width, 16);
            if next - (at + 1) == width {
                push_char(out, code);
                return next;
            }
            // Postgres refuses an incomplete Unicode escape; keep the text as it is.
            out.push(inner[at]);
        }
        other => out.push(other),
    }
    at + 1
}

/// `U&'…'` [`UESCAPE 'c'`]: `c` (default `\\`) then 4 hex digits, `c+` then 6, `cc` for `c`.
fn unicode_string(raw: &[u8]) -> Cow<'_, str> {
    // raw = U&'body' [UESCAPE 'c']; the body ends at the quote not doubled.
    let body_start = 3.min(raw.len());
    let mut end = body_start;
    while end < raw.len() {
        if raw[end] == b'\'' {
            if raw.get(end + 1) == Some(&b'\'') {
                end += 2;
                continue;
            }
            break;
        }
        end += 1;
    }
    let tail = &raw[(end + 1).min(raw.len())..];
    let escape = tail
        .iter()
        .position(|&b| b == b'\'')
        .and_then(|q| tail.get(q + 1).copied())
        .unwrap_or(b'\\');
    let body = unquote(&raw[body_start..end], false);
    let body = body.as_bytes();
    let mut out = Vec::with_capacity(body.len());
    let hex = |from: usize, len: usize| {
        body.get(from..from + len)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u32::from_str_radix(d, 16).ok())
    };
    let mut i = 0;
    while i < body.len() {
        if body[i] != escape {
            out.push(body[i]);
            i += 1;
            continue;
        }
        let (code, next) = match body.get(i + 1) {
            Some(b) if *b == escape => {
                out.push(escape);
                i += 2;
                continue;
            }
            Some(b'+') => (hex(i + 2, 6), i + 8),
            _ => (hex(i + 1, 4), i + 5),
        };
        let c = code.and_then(char::from_u32).unwrap_or('\u{fffd}');
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        i = next.min(body.len());
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The length of a ` UESCAPE 'c'` clause at the start of `rest` (0 when there is none).
fn uescape_len(rest: &[u8]) -> usize {
    let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let after = &rest[ws..];
    if after.len() < 7 || !after[..7].eq_ignore_ascii_case(b"uescape") {
        return 0;
    }
    let ws2 = after[7..]
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    let quote = &after[7 + ws2..];
    if quote.len() >= 3 && quote[0] == b'\'' && quote[2] == b'\'' {
        ws + 7 + ws2 + 3
    } else {
        0
    }
}

/// A leading `/* pgsidecar: key=value … */` comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    pub pairs: Vec<(String, String)>,
}

impl Hint {
    /// The value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn parse(body: &[u8]) -> Option<Hint> {
        let text = std::str::from_utf8(body).ok()?.trim();
        let rest = text.strip_prefix("pgsidecar:")?;
        let pairs = rest
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|word| !word.is_empty())
            // A bare word (`nocache`) is a flag: its value is empty.
            .map(|word| word.split_once('=').unwrap_or((word, "")))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(Hint { pairs })
    }
}

/// The literals of a statement, inline up to 8: no allocation for most statements.
pub type Literals = SmallVec<[Literal; 8]>;

/// What the scanner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The statement's shape; equal for executions that differ only in literals,
    /// comments, whitespace or the case of unquoted words.
    pub fingerprint: std::sync::Arc<[u8]>,
    /// The literals replaced, in order.
    pub literals: Literals,
    /// Top-level statements (split at `;` outside quotes, comments and parentheses), as byte
    /// ranges of the original text, empty statements left out (one inline).
    pub statements: SmallVec<[Range<usize>; 1]>,
    /// A leading `/* pgsidecar: … */` hint.
    pub hint: Option<Hint>,
    /// Whether the text has a block comment anywhere (hints elsewhere need one).
    pub block_comments: bool,
}

/// What a token is, for deciding whether the fingerprint keeps a space before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Nothing yet.
    Start,
    /// Words, numbers, placeholders, quoted identifiers, parameters: a space separates two.
    Word,
    /// Operator characters: a space separates two only if the text had one.
    Operator,
    /// `( ) [ ] , ; .` and the like: never spaced.
    Punctuation,
}

impl Class {
    fn of_byte(b: u8) -> Class {
        match b {
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?' | b':' => Class::Operator,
            _ => Class::Punctuation,
        }
    }
}

/// Byte classes for words, as a table (the scanner's inner loop): bit 0 a word may start with
/// the byte, bit 1 a word may contain it.
const WORD_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        let start = byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80;
        let inner = start || byte.is_ascii_digit() || byte == b'$';
        table[b] = (start as u8) | ((inner as u8) << 1);
        b += 1;
    }
    table
};

fn is_ident_start(b: u8) -> bool {
    WORD_BYTES[b as usize] & 1 != 0
}

fn is_ident_char(b: u8) -> bool {
    WORD_BYTES[b as usize] & 2 != 0
}

/// A [`Scan`] while the scanner writes it (the fingerprint grows; shared once done).
struct Building {
    fingerprint: Vec<u8>,
    literals: Literals,
    statements: SmallVec<[Range<usize>; 1]>,
    hint: Option<Hint>,
    block_comments: bool,
}

thread_local! {
    /// Where the thread's scans write their fingerprints, reused: a finished fingerprint is
    /// copied into its shared slice, so a scan allocates once for it rather than twice.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A scratch buffer grown past this (by a long statement) is not kept for the next scan.
const KEEP_SCRATCH: usize = 64 << 10;

/// Scans `sql` once.
pub fn scan(sql: &[u8]) -> Scan {
    let mut fingerprint = SCRATCH.take();
    fingerprint.clear();
    fingerprint.reserve(sql.len());
    let mut out = Building {
        fingerprint,
        literals: SmallVec::new(),
        statements: SmallVec::new(),
        hint: None,
        block_comments: false,
    };
    let n = sql.len();
    let mut i = 0;
    let mut depth = 0usize;
    let mut stmt_start: Option<usize> = None;
    let mut pending_space = false;
    let mut seen_token = false;
    let mut last = Class::Start;
    // Appends a token, with one space before it only where the space is needed to keep two
    // tokens apart (two words, or two operators the text separated): `aid=1` and `aid = 1`
    // share a shape.
    let mut push = |out: &mut Building, bytes: &[u8], class: Class, pending_space: &mut bool| {
        let needs_space = matches!(
            (last, class),
            (Class::Word, Class::Word) | (Class::Operator, Class::Operator)
        );
        if needs_space && (*pending_space || class == Class::Word) {
            out.fingerprint.push(b' ');
        }
        *pending_space = false;
        last = class;
        out.fingerprint.extend_from_slice(bytes);
    };
    while i < n {
        let b = sql[i];
        // Whitespace.
        if b.is_ascii_whitespace() {
            pending_space = true;
            i += 1;
            continue;
        }
        // -- comment to end of line.
        if b == b'-' && sql.get(i + 1) == Some(&b'-') {
            while i < n && sql[i] != b'\n' {
                i += 1;
            }
            pending_space = true;
            continue;
        }
        // /* nested comments */; the first one, before any token, may be a hint.
        if b == b'/' && sql.get(i + 1) == Some(&b'*') {
            let start = i;
            let mut level = 0usize;
            while i < n {
                if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
                    level += 1;
                    i += 2;
                } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.block_comments = true;
            if !seen_token && out.hint.is_none() && i - start >= 4 {
                out.hint = Hint::parse(&sql[start + 2..i.saturating_sub(2).max(start + 2)]);
            }
            pending_space = true;
            continue;
        }
        if stmt_start.is_none() && b != b';' {
            stmt_start = Some(i);
        }
        seen_token = true;
        // Statement separator.
        if b == b';' && depth == 0 {
            if let Some(start) = stmt_start.take() {
                out.statements.push(start..i);
            }
            push(&mut out, b";", Class::Punctuation, &mut pending_space);
            i += 1;
            continue;
        }
        // Words, the most common token, first: lower-cased (unquoted identifiers and keywords
        // are case-insensitive). A letter opens something else only with a quote or `&` after
        // it: a prefixed string (`E'…'`, `B'…'`, `X'…'`, `U&'…'`) or a `U&"…"` identifier.
        let word = is_ident_start(b)
            && match sql.get(i + 1) {
                Some(b'\'' | b'&') => literal_at(sql, i).is_none() && !unicode_prefix(sql, i),
                _ => true,
            };
        if word {
            let start = i;
            i += sql[i..]
                .iter()
                .position(|&c| !is_ident_char(c))
                .unwrap_or(n - i);
            // Spaced as a word, then copied lower-cased in one pass.
            push(&mut out, b"", Class::Word, &mut pending_space);
            let word = sql[start..i].iter().map(u8::to_ascii_lowercase);
            out.fingerprint.extend(word);
            continue;
        }
        // Literals: strings with their prefixes, dollar-quoted strings, numbers.
        if let Some((kind, end)) = literal_at(sql, i) {
            out.literals.push(Literal { kind, span: i..end });
            push(&mut out, &[PLACEHOLDER], Class::Word, &mut pending_space);
            i = end;
            continue;
        }
        // U&"…" identifiers: keep the prefix, scan the rest next turn.
        if unicode_prefix(sql, i) {
            push(&mut out, b"u&", Class::Word, &mut pending_space);
            i += 2;
            continue;
        }
        // `$1` parameters are kept (dollar-quoted strings are literals, above).
        if b == b'$' {
            // A parameter or a lone `$`: copy `$` and its digits.
            let start = i;
            i += 1;
            while i < n && sql[i].is_ascii_digit() {
                i += 1;
            }
            push(&mut out, &sql[start..i], Class::Word, &mut pending_space);
            continue;
        }
        // Quoted identifiers: kept verbatim.
        if b == b'"' {
            let start = i;
            i += 1;
            while i < n {
                if sql[i] == b'"' {
                    if sql.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            push(
                &mut out,
                &sql[start..i.min(n)],
                Class::Word,
                &mut pending_space,
            );
            continue;
        }
        // Everything else: one byte of punctuation or operator.
        match b {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        push(&mut out, &[b], Class::of_byte(b), &mut pending_space);
        i += 1;
    }
    if let Some(start) = stmt_start {
        let end = trim_end(sql, start, n);
        if end > start {
            out.statements.push(start..end);
        }
    }
    let fingerprint = std::sync::Arc::from(&out.fingerprint[..]);
    if out.fingerprint.capacity() <= KEEP_SCRATCH {
        SCRATCH.set(out.fingerprint);
    }
    Scan {
        fingerprint,
        literals: out.literals,
        statements: out.statements,
        hint: out.hint,
        block_comments: out.block_comments,
    }
}

/// The literal starting at `i` (a token's first byte), if one does: its kind and where it
/// ends. Strings with their prefixes (`'…'`, `E'…'`, `B'…'`, `X'…'`, `U&'…'` with its
/// `UESCAPE`), dollar-quoted strings (`$$…$$`, `$tag$…$tag$`, not `$1`) and numbers (not part
/// of a word: `42`, `3.14`, `.5`, `1e-3`, `0x1F`, `1_000`). [`scan`] and `rescan.rs` lex
/// literals only here, so both always agree.
pub(super) fn literal_at(sql: &[u8], i: usize) -> Option<(LiteralKind, usize)> {
    let n = sql.len();
    let b = *sql.get(i)?;
    let prefix = match b {
        b'E' | b'e' if sql.get(i + 1) == Some(&b'\'') => Some((LiteralKind::EscapeString, 2)),
        b'B' | b'b' | b'X' | b'x' if sql.get(i + 1) == Some(&b'\'') => {
            Some((LiteralKind::BitString, 2))
        }
        b'U' | b'u' if sql.get(i + 1) == Some(&b'&') && sql.get(i + 2) == Some(&b'\'') => {
            Some((LiteralKind::UnicodeString, 3))
        }
        b'\'' => Some((LiteralKind::String, 1)),
        _ => None,
    };
    if let Some((kind, prefix_len)) = prefix {
        let mut j = i + prefix_len;
        let backslashes = kind == LiteralKind::EscapeString;
        while j < n {
            match sql[j] {
                b'\\' if backslashes => j += 2,
                b'\'' if sql.get(j + 1) == Some(&b'\'') => j += 2,
                b'\'' => {
                    j += 1;
                    break;
                }
                _ => j += 1,
            }
        }
        j = j.min(n);
        if kind == LiteralKind::UnicodeString {
            j += uescape_len(&sql[j..]);
        }
        return Some((kind, j));
    }
    if b == b'$' {
        let tag_len = sql[i + 1..]
            .iter()
            .position(|&c| !is_ident_char(c) || c == b'$')
            .map(|p| p + 1);
        let is_param = sql.get(i + 1).is_some_and(|c| c.is_ascii_digit());
        let (Some(tag_len), false) = (tag_len, is_param) else {
            return None;
        };
        if sql.get(i + tag_len) != Some(&b'$') {
            return None;
        }
        let tag = &sql[i..=i + tag_len];
        let body = i + tag.len();
        let close = sql[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map_or(n, |p| body + p + tag.len());
        return Some((LiteralKind::Dollar, close));
    }
    let starts_number =
        b.is_ascii_digit() || (b == b'.' && sql.get(i + 1).is_some_and(u8::is_ascii_digit));
    if !starts_number {
        return None;
    }
    let mut j = i + 1;
    while j < n {
        let c = sql[j];
        let exponent_sign = (c == b'+' || c == b'-') && matches!(sql[j - 1], b'e' | b'E');
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            j += 1;
        } else {
            break;
        }
    }
    Some((LiteralKind::Number, j))
}

/// Whether a `U&` prefix starts at `i`.
fn unicode_prefix(sql: &[u8], i: usize) -> bool {
    matches!(sql.get(i), Some(b'U' | b'u')) && sql.get(i + 1) == Some(&b'&')
}

/// The end of the statement starting at `start`, without trailing whitespace and comments.
fn trim_end(sql: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && sql[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests;
