//! The scan of a statement text that differs from one already scanned only in the values of
//! its literals (`… WHERE aid = 17` after `… WHERE aid = 42`): the bytes between the literals
//! are compared, only the literals are lexed again, and the earlier scan's fingerprint, hint and
//! statement boundaries (moved by the literals' new lengths) are reused. The result is always
//! exactly what [`scan`](super::fingerprint::scan) would return for the new text (a test
//! compares them on generated texts); any other difference gives `None`, and the caller scans.
//!
//! Why it is exact: the scanner reads left to right, so where the two texts agree byte for
//! byte up to a literal, it is in the same state there; a literal of the same kind with the
//! same first byte (or, for numbers, a digit where there was a digit) looks the same to every
//! decision taken before it (they look at most at that first byte); the literal is lexed by the
//! scanner's own function; and after it the texts agree again.

use smallvec::SmallVec;
use std::ops::Range;

use super::fingerprint::{literal_at, Literal, LiteralKind, Literals, Scan};

/// The scan of `sql`, from `earlier`, the scan of `text`, when the two texts differ only in
/// their literals' values; `None` otherwise, when `earlier` found no literals (then only the
/// same bytes have the same scan), and when a literal runs to the end of a text that ends in
/// whitespace.
pub fn rescan(text: &[u8], earlier: &Scan, sql: &[u8]) -> Option<Scan> {
    if earlier.literals.is_empty() {
        return None;
    }
    let mut literals = Literals::new();
    // Where each earlier literal ended, and how far the text after it has moved (in all).
    let mut moved: SmallVec<[(usize, isize); 8]> = SmallVec::new();
    let (mut from, mut at) = (0usize, 0usize);
    for literal in &earlier.literals {
        let between = &text[from..literal.span.start];
        if sql.get(at..at + between.len())? != between {
            return None;
        }
        at += between.len();
        if !same_opening(text[literal.span.start], *sql.get(at)?, literal.kind) {
            return None;
        }
        let (kind, end) = literal_at(sql, at)?;
        if kind != literal.kind {
            return None;
        }
        literals.push(Literal {
            kind,
            span: at..end,
        });
        moved.push((literal.span.end, end as isize - literal.span.end as isize));
        (from, at) = (literal.span.end, end);
    }
    if sql.get(at..)? != &text[from..] {
        return None;
    }
    // A literal that runs to the end of the text may be unterminated, and then the statement's
    // end (trimmed of trailing whitespace) can lie inside it: only when neither text ends in
    // whitespace is that end the literal's end in both.
    let ends_in_space = |t: &[u8]| t.last().is_some_and(u8::is_ascii_whitespace);
    if from == text.len() && (ends_in_space(text) || ends_in_space(sql)) {
        return None;
    }
    let statements = earlier
        .statements
        .iter()
        .map(|range| shifted(range, &moved))
        .collect();
    Some(Scan {
        fingerprint: earlier.fingerprint.clone(),
        literals,
        statements,
        hint: earlier.hint.clone(),
        block_comments: earlier.block_comments,
    })
}

/// Whether a literal starting with `now` where one of `kind` started with `was` looks the same
/// to the scanner before it: the same byte, or for numbers a digit for a digit.
fn same_opening(was: u8, now: u8, kind: LiteralKind) -> bool {
    match kind {
        LiteralKind::Number => was == now || (was.is_ascii_digit() && now.is_ascii_digit()),
        _ => was == now,
    }
}

/// A statement's range in the earlier text, moved as far as the text after the last literal
/// that ended before (or at) each of its ends moved. Statement ends never lie inside a literal.
fn shifted(range: &Range<usize>, moved: &[(usize, isize)]) -> Range<usize> {
    let at = |position: usize| {
        let delta = moved
            .iter()
            .take_while(|(end, _)| *end <= position)
            .last()
            .map_or(0, |(_, d)| *d);
        position.saturating_add_signed(delta)
    };
    at(range.start)..at(range.end)
}

#[cfg(test)]
mod tests;
