//! Unit and property tests of the fingerprinting scanner.

use super::*;
use proptest::prelude::*;

fn fp(sql: &str) -> Vec<u8> {
    scan(sql.as_bytes()).fingerprint.to_vec()
}

fn shown(sql: &str) -> String {
    String::from_utf8(fp(sql)).unwrap().replace('\0', "?")
}

#[test]
fn literals_whitespace_comments_and_case_do_not_change_the_shape() {
    let same = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 17",
        "select abalance from pgbench_accounts where aid = 42",
        "SELECT  abalance\n FROM pgbench_accounts -- comment\n WHERE aid=  99999",
        "/* leading */ SELECT abalance FROM /* a /* nested */ one */ pgbench_accounts WHERE aid = 1",
    ];
    let first = fp(same[0]);
    for sql in same {
        assert_eq!(fp(sql), first, "{sql}");
    }
    assert_eq!(
        shown(same[0]),
        "select abalance from pgbench_accounts where aid=?"
    );
    assert_eq!(
        fp("SELECT a FROM t WHERE b=1"),
        fp("select a from t where b = 2")
    );
    assert_eq!(shown("SELECT f( a , b ) , c.d"), "select f(a,b),c.d");
    // Two operators the text kept apart stay apart.
    assert_ne!(fp("SELECT a <- b"), fp("SELECT a < - b"));
}

#[test]
fn every_kind_of_literal_is_replaced_and_decoded() {
    let sql = r#"SELECT 'it''s', E'a\'b\\c\n', $$dollar ' " $$, $tag$with $$ inside$tag$, B'1010', X'1F', 3.14, .5, 1e-3, 0x1F, "Quoted""Id", $1"#;
    let s = scan(sql.as_bytes());
    let values: Vec<String> = s
        .literals
        .iter()
        .map(|l| l.value(sql.as_bytes()).into_owned())
        .collect();
    assert_eq!(
        values,
        vec![
            "it's",
            "a'b\\c\n",
            "dollar ' \" ",
            "with $$ inside",
            "1010",
            "1F",
            "3.14",
            ".5",
            "1e-3",
            "0x1F"
        ]
    );
    assert_eq!(
        String::from_utf8(s.fingerprint.to_vec())
            .unwrap()
            .replace('\0', "?"),
        r#"select ?,?,?,?,?,?,?,?,?,?,"Quoted""Id",$1"#
    );
    let kinds: Vec<LiteralKind> = s.literals.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds[..5],
        [
            LiteralKind::String,
            LiteralKind::EscapeString,
            LiteralKind::Dollar,
            LiteralKind::Dollar,
            LiteralKind::BitString
        ]
    );
}

#[test]
fn identifiers_with_digits_and_parameters_are_not_literals() {
    let s = scan(b"UPDATE t1 SET c2 = $2 WHERE id = $1 AND x::int4 = 5");
    assert_eq!(s.literals.len(), 1);
    assert_eq!(
        String::from_utf8(s.fingerprint.to_vec())
            .unwrap()
            .replace('\0', "?"),
        "update t1 set c2=$2 where id=$1 and x::int4=?"
    );
}

#[test]
fn statements_split_at_top_level_semicolons_only() {
    let sql = "BEGIN; INSERT INTO t VALUES ('a;b'); SELECT $$;$$; /* ; */ COMMIT;  ";
    let s = scan(sql.as_bytes());
    let parts: Vec<&str> = s.statements.iter().map(|r| &sql[r.clone()]).collect();
    assert_eq!(
        parts,
        vec![
            "BEGIN",
            "INSERT INTO t VALUES ('a;b')",
            "SELECT $$;$$",
            "COMMIT"
        ]
    );
    let s = scan(b"SELECT 1");
    assert_eq!(s.statements.len(), 1);
    assert_eq!(s.statements[0], 0..8);
    let s = scan(b"CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql");
    assert_eq!(s.statements.len(), 1);
}

#[test]
fn leading_hint_is_parsed() {
    let s = scan(b"/* pgsidecar: route=primary, shard=3 */ SELECT 1");
    let hint = s.hint.expect("hint");
    assert_eq!(hint.get("route"), Some("primary"));
    assert_eq!(hint.get("shard"), Some("3"));
    assert_eq!(
        fp("/* pgsidecar: route=primary */ SELECT 1"),
        fp("SELECT 2")
    );
    // Only a leading comment is a hint, and only with the prefix.
    assert!(scan(b"SELECT 1 /* pgsidecar: route=primary */")
        .hint
        .is_none());
    assert!(scan(b"/* route=primary */ SELECT 1").hint.is_none());
}

#[test]
fn unterminated_things_end_at_the_end() {
    for sql in [
        "SELECT 'abc",
        "SELECT $$abc",
        "SELECT \"abc",
        "SELECT /* abc",
        "SELECT E'\\",
        "$",
        "'",
        "-",
    ] {
        let s = scan(sql.as_bytes());
        for l in &s.literals {
            assert!(l.span.end <= sql.len());
            let _ = l.value(sql.as_bytes());
        }
    }
}

fn template() -> impl Strategy<Value = (usize, i64, String)> {
    (0usize..4, any::<i64>(), "[a-zA-Z0-9 ';$\\\\]{0,20}")
}

fn render(t: usize, n: i64, s: &str) -> String {
    let quoted = s.replace('\'', "''");
    match t {
        0 => format!(
            "SELECT * FROM accounts WHERE id = {} AND name = '{quoted}'",
            n.unsigned_abs()
        ),
        1 => format!(
            "UPDATE t SET v = '{quoted}', n = {} WHERE k = $1",
            n.unsigned_abs()
        ),
        2 => format!(
            "INSERT INTO t (a, b) VALUES ({}, $x${s}$x$)",
            n.unsigned_abs()
        ),
        _ => format!(
            "select e'{}' , {}.5",
            s.replace('\\', "\\\\").replace('\'', "\\'"),
            n.unsigned_abs()
        ),
    }
}

proptest! {
    #[test]
    fn same_shape_same_fingerprint(t in 0usize..4, (a, sa) in (any::<i64>(), "[a-zA-Z0-9 ';]{0,20}"), (b, sb) in (any::<i64>(), "[a-zA-Z0-9 ';]{0,20}")) {
        let x = render(t, a, &sa);
        let y = render(t, b, &sb);
        prop_assert_eq!(fp(&x), fp(&y), "{} / {}", x, y);
        prop_assert_eq!(scan(x.as_bytes()).literals.len(), scan(y.as_bytes()).literals.len());
    }

    #[test]
    fn string_values_round_trip((t, n, s) in template()) {
        prop_assume!(t == 0 || t == 1);
        let sql = render(t, n, &s);
        let scanned = scan(sql.as_bytes());
        let strings: Vec<String> = scanned
            .literals
            .iter()
            .filter(|l| l.kind == LiteralKind::String)
            .map(|l| l.value(sql.as_bytes()).into_owned())
            .collect();
        prop_assert_eq!(strings, vec![s]);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let s = scan(&bytes);
        for l in &s.literals {
            prop_assert!(l.span.start <= l.span.end && l.span.end <= bytes.len());
            let _ = l.value(&bytes);
        }
        for r in &s.statements {
            prop_assert!(r.start <= r.end && r.end <= bytes.len());
        }
    }
}

#[test]
fn literals_decode_as_postgres_decodes_them() {
    for (sql, value) in [
        (r"SELECT E'app\x2etenant_id'", "app.tenant_id"),
        (r"SELECT E'app\056tenant_id'", "app.tenant_id"),
        (r"SELECT E'\u0061pp'", "app"),
        (r"SELECT E'\U00000061pp'", "app"),
        (r"SELECT E'a\'b\\c\qd'", "a'b\\cqd"),
        (r"SELECT U&'\0061pp'", "app"),
        (r"SELECT U&'\+000061pp\\'", "app\\"),
        (r"SELECT U&'!0061pp!!' UESCAPE '!'", "app!"),
        ("SELECT $t$a'b$t$", "a'b"),
    ] {
        let s = scan(sql.as_bytes());
        assert_eq!(s.literals.len(), 1, "{sql}");
        assert_eq!(s.literals[0].value(sql.as_bytes()), value, "{sql}");
    }
}
