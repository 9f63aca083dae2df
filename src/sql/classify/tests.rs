//! The classifier against a table of statements: pgbench, ORM-style output, every kind, and
//! tricky quoting.

use super::*;
use crate::sql::fingerprint::scan;

fn classes(sql: &str) -> Vec<StatementClass> {
    match classify(sql.as_bytes(), &scan(sql.as_bytes())) {
        Classification::Parsed(c) => c,
        Classification::Unparsed { error } => panic!("{sql}: {error}"),
    }
}

fn one(sql: &str) -> StatementClass {
    let mut c = classes(sql);
    assert_eq!(c.len(), 1, "{sql}");
    c.remove(0)
}

/// (sql, kind, tables read, tables written)
type Case = (
    &'static str,
    Kind,
    &'static [&'static str],
    &'static [&'static str],
);

fn cases() -> Vec<Case> {
    use Kind::*;
    vec![
        // pgbench's scripts.
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 17", Read, &["pgbench_accounts"], &[]),
        ("UPDATE pgbench_accounts SET abalance = abalance + -2442 WHERE aid = 30977", Write, &[], &["pgbench_accounts"]),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", Write, &[], &["pgbench_tellers"]),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (8, 1, 30977, -2442, CURRENT_TIMESTAMP)", Write, &[], &["pgbench_history"]),
        ("BEGIN", Begin { isolation: None, read_only: None }, &[], &[]),
        ("END", Commit, &[], &[]),
        // Rails / Django / Hibernate / Prisma style.
        (r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2"#, Read, &["users"], &[]),
        (r#"SELECT "accounts"."id", "accounts"."name" FROM "accounts" INNER JOIN "memberships" ON "memberships"."account_id" = "accounts"."id" WHERE "memberships"."user_id" = $1"#, Read, &["accounts", "memberships"], &[]),
        (r#"INSERT INTO "posts" ("title", "body", "created_at") VALUES ($1, $2, $3) RETURNING "id""#, Write, &[], &["posts"]),
        (r#"UPDATE "posts" SET "title" = $1, "updated_at" = $2 WHERE "posts"."id" = $3"#, Write, &[], &["posts"]),
        (r#"DELETE FROM "sessions" WHERE "sessions"."expires_at" < $1"#, Write, &[], &["sessions"]),
        (r#"SELECT "blog_entry"."id", "blog_entry"."headline" FROM "blog_entry" WHERE ("blog_entry"."pub_date" >= '2024-01-01' AND "blog_entry"."rating" > 4) ORDER BY "blog_entry"."pub_date" DESC LIMIT 21"#, Read, &["blog_entry"], &[]),
        (r#"SELECT COUNT(*) AS "__count" FROM "auth_user" WHERE "auth_user"."is_active""#, Read, &["auth_user"], &[]),
        ("select user0_.id as id1_0_, user0_.email as email2_0_ from users user0_ where user0_.email=$1", Read, &["users"], &[]),
        ("insert into orders (customer_id, total, id) values ($1, $2, $3)", Write, &[], &["orders"]),
        ("select nextval ('hibernate_sequence')", Read, &[], &[]),
        (r#"SELECT "public"."User"."id", "public"."User"."email" FROM "public"."User" WHERE "public"."User"."email" = $1 LIMIT $2 OFFSET $3"#, Read, &["public.User"], &[]),
        (r#"INSERT INTO "public"."Post" ("title","authorId") VALUES ($1,$2) RETURNING "public"."Post"."id""#, Write, &[], &["public.Post"]),
        // CTEs, subqueries, data-modifying CTEs, INSERT … SELECT, UPDATE … FROM, DELETE … USING.
        ("WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT * FROM recent JOIN customers c ON c.id = recent.customer_id", Read, &["orders", "customers"], &[]),
        ("WITH moved AS (DELETE FROM inbox WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM moved", Write, &[], &["archive", "inbox"]),
        ("SELECT * FROM a WHERE id IN (SELECT a_id FROM b WHERE b.x = 1)", Read, &["a", "b"], &[]),
        ("INSERT INTO summary (day, n) SELECT date_trunc('day', at), count(*) FROM events GROUP BY 1", Write, &["events"], &["summary"]),
        ("UPDATE items i SET price = p.price FROM prices p WHERE p.item_id = i.id", Write, &["prices"], &["items"]),
        ("DELETE FROM carts c USING users u WHERE c.user_id = u.id AND u.deleted", Write, &["users"], &["carts"]),
        ("UPDATE t SET n = n + 1 FROM t AS t2 WHERE t2.id = t.parent", Write, &["t"], &["t"]),
        ("SELECT * FROM app.orders o JOIN app.lines l ON l.order_id = o.id", Read, &["app.orders", "app.lines"], &[]),
        ("MERGE INTO stock s USING deliveries d ON s.item = d.item WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty", Write, &["deliveries"], &["stock"]),
        ("TRUNCATE logs", Write, &[], &["logs"]),
        ("SELECT 1", Read, &[], &[]),
        ("VALUES (1, 'a'), (2, 'b')", Read, &[], &[]),
        ("SHOW search_path", Read, &[], &[]),
        ("EXPLAIN SELECT * FROM t", Read, &["t"], &[]),
        // Transaction control.
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Begin { isolation: Some(Isolation::Serializable), read_only: Some(true) }, &[], &[]),
        ("START TRANSACTION READ WRITE", Begin { isolation: None, read_only: Some(false) }, &[], &[]),
        ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ", Begin { isolation: Some(Isolation::RepeatableRead), read_only: None }, &[], &[]),
        ("COMMIT", Commit, &[], &[]),
        ("ROLLBACK", Rollback, &[], &[]),
        ("ABORT", Rollback, &[], &[]),
        ("SAVEPOINT sp1", Savepoint, &[], &[]),
        ("RELEASE SAVEPOINT sp1", Release, &[], &[]),
        ("ROLLBACK TO SAVEPOINT sp1", RollbackTo, &[], &[]),
        // Session commands.
        ("SET search_path TO app, public", Set, &[], &[]),
        ("SET LOCAL statement_timeout = '5s'", SetLocal, &[], &[]),
        ("SET TIME ZONE 'UTC'", Set, &[], &[]),
        ("RESET work_mem", Reset, &[], &[]),
        ("RESET ALL", ResetAll, &[], &[]),
        ("DISCARD ALL", Discard, &[], &[]),
        ("SET ROLE admin", SetRole, &[], &[]),
        ("SET SESSION AUTHORIZATION alice", SetSessionAuthorization, &[], &[]),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SetTransaction, &[], &[]),
        // Prepared statements, LISTEN/NOTIFY, COPY.
        ("PREPARE q1 (int) AS SELECT * FROM t WHERE id = $1", Prepare { name: "q1".into() }, &["t"], &[]),
        ("EXECUTE q1 (5)", Execute { name: "q1".into() }, &[], &[]),
        ("DEALLOCATE q1", Deallocate { name: Some("q1".into()) }, &[], &[]),
        ("DEALLOCATE ALL", Deallocate { name: None }, &[], &[]),
        ("LISTEN orders", Listen { channel: "orders".into() }, &[], &[]),
        ("UNLISTEN *", Unlisten { channel: None }, &[], &[]),
        ("NOTIFY orders, 'new'", Notify { channel: "orders".into() }, &[], &[]),
        ("COPY items FROM STDIN WITH (FORMAT csv)", CopyFrom, &[], &["items"]),
        ("COPY items TO STDOUT", CopyTo, &["items"], &[]),
        ("COPY (SELECT * FROM items WHERE x = 1) TO STDOUT", CopyTo, &["items"], &[]),
        // DDL, functions, DO, utility.
        ("CREATE TABLE t (id int PRIMARY KEY, note text)", Ddl, &[], &["t"]),
        ("ALTER TABLE t ADD COLUMN c int", Ddl, &[], &["t"]),
        ("DROP TABLE IF EXISTS t", Ddl, &[], &["t"]),
        ("CREATE INDEX ON t (c)", Ddl, &[], &["t"]),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", CreateFunction, &[], &[]),
        ("DO $$ BEGIN PERFORM set_config('app.tenant_id', 'x', false); END $$", Do, &[], &[]),
        ("LOCK TABLE t IN SHARE MODE", Utility, &["t"], &[]),
        // Tricky quoting.
        (r#"SELECT 'it''s; fine', E'back\\slash\'', $q$ ; $$ $q$ FROM "we""ird" WHERE "we""ird"."Col" = 1"#, Read, &["we\"ird"], &[]),
        ("SELECT /* a /* nested */ comment */ x FROM t -- trailing\n", Read, &["t"], &[]),
    ]
}

#[test]
fn the_statement_table() {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut failures = Vec::new();
    for (sql, kind, read, written) in cases() {
        let c = match classify(sql.as_bytes(), &scan(sql.as_bytes())) {
            Classification::Parsed(mut c) if c.len() == 1 => c.remove(0),
            other => {
                failures.push(format!("{sql}: {other:?}"));
                continue;
            }
        };
        let want_read: Vec<String> = read.iter().map(|s| s.to_string()).collect();
        let want_written: Vec<String> = written.iter().map(|s| s.to_string()).collect();
        if c.kind != kind
            || sorted(&c.tables_read) != sorted(&want_read)
            || sorted(&c.tables_written) != sorted(&want_written)
        {
            failures.push(format!(
                "{sql}\n   got  {:?} read {:?} written {:?}\n   want {:?} read {:?} written {:?}",
                c.kind, c.tables_read, c.tables_written, kind, want_read, want_written
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} wrong:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

fn literal(sql: &str, v: &ValueRef) -> String {
    match v {
        ValueRef::Literal(i) => scan(sql.as_bytes()).literals[*i]
            .value(sql.as_bytes())
            .into_owned(),
        other => panic!("not a literal: {other:?}"),
    }
}

#[test]
fn settings_from_set_reset_and_set_config_anywhere() {
    let sql = "SET statement_timeout = '5s'";
    let c = one(sql);
    assert_eq!(c.settings.len(), 1);
    assert_eq!(
        c.settings[0].name,
        SettingName::Fixed("statement_timeout".into())
    );
    assert_eq!(literal(sql, c.settings[0].value.as_ref().unwrap()), "5s");
    assert!(!c.settings[0].local);

    let c = one("SET LOCAL app.tenant_id TO DEFAULT");
    assert!(c.settings[0].local);
    assert_eq!(
        c.settings[0].name,
        SettingName::Fixed("app.tenant_id".into())
    );

    let c = one("RESET search_path");
    assert_eq!(c.settings[0].value, None);

    // set_config nested in an expression, in a CTE, with literal and computed names.
    let sql =
        "WITH x AS (SELECT lower(set_config('app.tenant_id', 'evil', false)) AS v) SELECT * FROM x";
    let c = one(sql);
    assert_eq!(c.settings.len(), 1);
    let SettingName::Literal(i) = c.settings[0].name else {
        panic!("{:?}", c.settings)
    };
    assert_eq!(
        scan(sql.as_bytes()).literals[i].value(sql.as_bytes()),
        "app.tenant_id"
    );
    assert_eq!(literal(sql, c.settings[0].value.as_ref().unwrap()), "evil");
    assert!(!c.settings[0].local);
    let c = one("SELECT pg_catalog.set_config('a.b', $1, true)");
    assert!(c.settings[0].local);
    assert_eq!(c.settings[0].value, Some(ValueRef::Param(1)));
    let c = one("SELECT set_config('app.' || 'tenant_id', 'x', false)");
    assert_eq!(c.settings[0].name, SettingName::Computed);
    assert!(c.has_unsafe_functions());
}

#[test]
fn functions_are_judged() {
    let c = one("SELECT lower(name), count(*), nextval('s'), my_func(1), pg_advisory_lock(7) FROM t GROUP BY 1");
    let effects: Vec<(&str, Effect)> = c
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.effect))
        .collect();
    assert!(effects.contains(&("lower", Effect::ReadOnly)));
    assert!(effects.contains(&("count", Effect::ReadOnly)));
    assert!(effects.contains(&("nextval", Effect::SideEffecting)));
    assert!(effects.contains(&("my_func", Effect::Unknown)));
    assert!(effects.contains(&("pg_advisory_lock", Effect::SideEffecting)));
    assert_eq!(
        function_effect("app.my_func", &["app.my_func".to_owned()]),
        Effect::ReadOnly
    );
    assert!(!one("SELECT now(), coalesce(a, 1) FROM t").has_unsafe_functions());
}

#[test]
fn locking_and_temporary_objects() {
    assert!(one("SELECT * FROM jobs WHERE state = 'ready' FOR UPDATE SKIP LOCKED").locking);
    assert!(one("SELECT * FROM a WHERE id IN (SELECT id FROM b FOR SHARE)").locking);
    assert!(!one("SELECT * FROM a").locking);
    assert!(one("CREATE TEMP TABLE scratch (id int)").temporary);
    assert!(one("SELECT * FROM pg_temp.scratch").temporary);
    assert!(!one("CREATE TABLE durable (id int)").temporary);
}

#[test]
fn equalities_resolve_aliases_and_keep_literal_positions() {
    let sql = "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.tenant_id = 'acme' AND o.id = $1 AND (c.region = 'eu') AND o.total > 5";
    let c = one(sql);
    let got: Vec<(Option<&str>, &str)> = c
        .equalities
        .iter()
        .map(|e| (e.table.as_deref(), e.column.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("orders"), "tenant_id"),
            (Some("orders"), "id"),
            (Some("customers"), "region")
        ]
    );
    assert_eq!(literal(sql, &c.equalities[0].value), "acme");
    assert_eq!(c.equalities[1].value, ValueRef::Param(1));
    // Literal positions, not values, are cached: another execution reads its own value.
    let other = sql.replace("'acme'", "'globex'");
    assert_eq!(literal(&other, &c.equalities[0].value), "globex");
    let c = one("UPDATE accounts SET balance = 0 WHERE id = 42");
    assert_eq!(c.equalities[0].table.as_deref(), Some("accounts"));
    assert_eq!(c.equalities[0].column, "id");
    // OR does not give an equality that holds for the whole statement.
    assert!(one("SELECT * FROM t WHERE a = 1 OR b = 2")
        .equalities
        .is_empty());
}

#[test]
fn insert_rows_pair_columns_with_values() {
    let sql = "INSERT INTO events (tenant_id, id, body) VALUES ('acme', 1, $1), ('globex', 2, $2)";
    let c = one(sql);
    assert_eq!(c.insert_rows.len(), 2);
    assert_eq!(c.insert_rows[0][0].column, "tenant_id");
    assert_eq!(c.insert_rows[0][0].table.as_deref(), Some("events"));
    assert_eq!(literal(sql, &c.insert_rows[1][0].value), "globex");
    assert_eq!(c.insert_rows[1][2].value, ValueRef::Param(2));
}

#[test]
fn multi_statement_strings_and_unparsable_text() {
    let c = classes("BEGIN; UPDATE t SET x = 1 WHERE id = 2; SELECT set_config('app.tenant_id', 'x', false); COMMIT");
    let kinds: Vec<&Kind> = c.iter().map(|s| &s.kind).collect();
    assert_eq!(
        kinds,
        vec![
            &Kind::Begin {
                isolation: None,
                read_only: None
            },
            &Kind::Write,
            &Kind::Read,
            &Kind::Commit
        ]
    );
    assert_eq!(c[2].settings.len(), 1);
    for bad in ["VACUUM ANALYZE t", "SELEC 1", "SELECT * FROM"] {
        assert!(
            matches!(
                classify(bad.as_bytes(), &scan(bad.as_bytes())),
                Classification::Unparsed { .. }
            ),
            "{bad}"
        );
    }
    let latin1 = b"SELECT 'caf\xe9'";
    assert!(matches!(
        classify(latin1, &scan(latin1)),
        Classification::Unparsed { .. }
    ));
}
