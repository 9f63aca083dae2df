use super::*;
use crate::sql::fingerprint::scan;
use proptest::prelude::*;

/// `rescan` of `new` from `old`'s scan, checked against scanning `new`.
fn check(old: &[u8], new: &[u8]) -> Option<Scan> {
    let rescanned = rescan(old, &scan(old), new);
    if let Some(r) = &rescanned {
        assert_eq!(
            *r,
            scan(new),
            "rescan differs from scan\n old {:?}\n new {:?}",
            String::from_utf8_lossy(old),
            String::from_utf8_lossy(new)
        );
    }
    rescanned
}

#[test]
fn literal_values_change_the_rest_is_reused() {
    let old = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
    let new = b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;";
    let r = check(old, new).expect("same shape");
    assert_eq!(r.literals[0].value(new), "7");
    assert_eq!(r.statements[0], 0..new.len() - 1);
    assert_eq!(r.statements.len(), 1);
    let old = b"/* pgsidecar: shard=1 */ SELECT 'a''b', E'\\n', $q$x$q$, 1e-3; UPDATE t SET v = 2 RETURNING v";
    let new = b"/* pgsidecar: shard=1 */ SELECT 'xyz', E'\\t\\'', $q$long body$q$, 44.5e+2; UPDATE t SET v = 17 RETURNING v";
    let r = check(old, new).expect("same shape");
    assert_eq!(r.statements.len(), 2);
    assert_eq!(r.hint, scan(old).hint);
}

#[test]
fn anything_else_is_scanned_again() {
    let old: &[u8] = b"SELECT * FROM t WHERE id = 1";
    for new in [
        &b"SELECT * FROM u WHERE id = 1"[..],
        b"SELECT * FROM t WHERE id = 1 OR true",
        b"SELECT * FROM t WHERE id = '1'",
        b"SELECT * FROM t WHERE id = .5",
        b"SELECT * FROM t WHERE id = ",
        b"select * from t where id = 1",
    ] {
        assert!(
            check(old, new).is_none(),
            "{:?}",
            String::from_utf8_lossy(new)
        );
    }
    // No literals: only the same bytes have the same scan (the caller compares those).
    assert!(check(b"SELECT now()", b"SELECT now()").is_none());
    // A literal at the very end may be unterminated, and the statement's end inside it.
    assert!(check(b"SELECT 'a  ", b"SELECT 'bc  ").is_none());
    assert!(check(b"SELECT 'a", b"SELECT 'bc  ").is_none());
    // Otherwise a literal may end the text.
    assert!(check(b"SELECT 1", b"SELECT 22").is_some());
    assert!(check(b"SELECT * FROM t LIMIT 20", b"SELECT * FROM t LIMIT 5").is_some());
    assert!(check(b"SELECT 'a", b"SELECT 'bc'").is_some());
}

/// Pieces that steer the scanner: quotes, prefixes, comments, dollars, digits, operators.
const PIECES: &[&str] = &[
    " ",
    "\n",
    "select",
    "aid",
    "e",
    "E",
    "b",
    "X",
    "U",
    "u&",
    "&",
    "UESCAPE",
    "'",
    "''",
    "'!'",
    "\"",
    "$",
    "$$",
    "$a$",
    "$1",
    "1",
    "42",
    "1e",
    "e-",
    "+",
    "-",
    "--",
    "/*",
    "*/",
    "*",
    "/",
    ".",
    ".5",
    "0x1F",
    "3.14",
    "1_000",
    "\\",
    ";",
    "(",
    ")",
    "=",
    ",",
    "'x'",
    "E'\\''",
    "$t$ ; $t$",
    "U&'d!0061'",
    "B'01'",
];

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(PIECES), 0..24)
        .prop_map(|pieces| pieces.concat().into_bytes())
}

/// A variation of `old`: some literals replaced by pieces, and maybe one piece put anywhere.
fn vary(old: &[u8], choices: &[(usize, &str)], insert: Option<(usize, &str)>) -> Vec<u8> {
    let literals = scan(old).literals;
    let mut new = Vec::new();
    let mut from = 0;
    for (i, literal) in literals.iter().enumerate() {
        new.extend_from_slice(&old[from..literal.span.start]);
        match choices
            .iter()
            .find(|(n, _)| *n % literals.len().max(1) == i)
        {
            Some((_, piece)) => new.extend_from_slice(piece.as_bytes()),
            None => new.extend_from_slice(&old[literal.span.clone()]),
        }
        from = literal.span.end;
    }
    new.extend_from_slice(&old[from..]);
    if let Some((at, piece)) = insert {
        let at = at % (new.len() + 1);
        new.splice(at..at, piece.bytes());
    }
    new
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    /// Whenever rescan answers, it answers what scan does.
    #[test]
    fn rescan_is_scan(
        old in text(),
        choices in prop::collection::vec((0usize..8, prop::sample::select(PIECES)), 0..4),
        insert in prop::option::of((0usize..200, prop::sample::select(PIECES))),
    ) {
        let new = vary(&old, &choices, insert);
        check(&old, &new);
    }

    /// New values of the same kinds are recognised (numbers for numbers, strings for strings).
    #[test]
    fn new_values_are_recognised(
        words in prop::collection::vec(prop::sample::select(&["select", "a", "=", "(", ")", ",", " "][..]), 1..10),
        old_values in prop::collection::vec((0u32..100_000, "[a-z' ]{0,6}"), 1..4),
        new_values in prop::collection::vec((0u32..100_000, "[a-z' ]{0,6}"), 4),
    ) {
        let render = |values: &[(u32, String)]| {
            let mut sql = String::new();
            for (i, (n, s)) in values.iter().enumerate() {
                sql += words[i % words.len()];
                sql += &format!(" {n} , '{}' ", s.replace('\'', "''"));
            }
            sql.into_bytes()
        };
        let old = render(&old_values);
        let new = render(&new_values[..old_values.len()]);
        prop_assert!(check(&old, &new).is_some());
    }
}
