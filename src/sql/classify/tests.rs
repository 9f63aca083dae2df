//! The classifier against a table of statements: pgbench, ORM-style output, every kind, and
//! tricky quoting.

use super::*;
use crate::sql::fingerprint::scan;

fn classes(sql: &str) -> Vec<StatementClass> {
    match classify(sql.as_bytes(), &scan(sql.as_bytes()), &Options::default()) {
        Classification::Parsed(c) => c,
        Classification::Unparsed { error } => panic!("{sql}: {error}"),
    }
}

fn one(sql: &str) -> StatementClass {
    let mut c = classes(sql);
    assert_eq!(c.len(), 1, "{sql}");
    c.remove(0)
}

/// (sql, kind, tables read, tables written, flags) — flags: `L` locking, `T` temporary
/// objects, `F` a function not known to be read-only, `S` settings changed, `E` equality
/// predicates or INSERT rows found.
type Case = (
    &'static str,
    Kind,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);

fn flags(c: &StatementClass) -> String {
    let mut f = String::new();
    for (set, letter) in [
        (c.locking, 'L'),
        (c.temporary, 'T'),
        (c.has_unsafe_functions(), 'F'),
        (!c.settings.is_empty(), 'S'),
        (!c.equalities.is_empty() || !c.insert_rows.is_empty(), 'E'),
    ] {
        if set {
            f.push(letter);
        }
    }
    f
}

fn cases() -> Vec<Case> {
    use Kind::*;
    vec![
        // pgbench's scripts.
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 17", Read, &["pgbench_accounts"], &[], "E"),
        ("UPDATE pgbench_accounts SET abalance = abalance + -2442 WHERE aid = 30977", Write, &[], &["pgbench_accounts"], "E"),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", Write, &[], &["pgbench_tellers"], "E"),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (8, 1, 30977, -2442, CURRENT_TIMESTAMP)", Write, &[], &["pgbench_history"], "E"),
        ("BEGIN", Begin { isolation: None, read_only: None }, &[], &[], ""),
        ("END", Commit, &[], &[], ""),
        // Rails / Django / Hibernate / Prisma style.
        (r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2"#, Read, &["users"], &[], "E"),
        (r#"SELECT "accounts"."id", "accounts"."name" FROM "accounts" INNER JOIN "memberships" ON "memberships"."account_id" = "accounts"."id" WHERE "memberships"."user_id" = $1"#, Read, &["accounts", "memberships"], &[], "E"),
        (r#"INSERT INTO "posts" ("title", "body", "created_at") VALUES ($1, $2, $3) RETURNING "id""#, Write, &[], &["posts"], "E"),
        (r#"UPDATE "posts" SET "title" = $1, "updated_at" = $2 WHERE "posts"."id" = $3"#, Write, &[], &["posts"], "E"),
        (r#"DELETE FROM "sessions" WHERE "sessions"."expires_at" < $1"#, Write, &[], &["sessions"], ""),
        (r#"SELECT "blog_entry"."id", "blog_entry"."headline" FROM "blog_entry" WHERE ("blog_entry"."pub_date" >= '2024-01-01' AND "blog_entry"."rating" > 4) ORDER BY "blog_entry"."pub_date" DESC LIMIT 21"#, Read, &["blog_entry"], &[], ""),
        (r#"SELECT COUNT(*) AS "__count" FROM "auth_user" WHERE "auth_user"."is_active""#, Read, &["auth_user"], &[], ""),
        ("select user0_.id as id1_0_, user0_.email as email2_0_ from users user0_ where user0_.email=$1", Read, &["users"], &[], "E"),
        ("insert into orders (customer_id, total, id) values ($1, $2, $3)", Write, &[], &["orders"], "E"),
        ("select nextval ('hibernate_sequence')", Read, &[], &[], "F"),
        (r#"SELECT "public"."User"."id", "public"."User"."email" FROM "public"."User" WHERE "public"."User"."email" = $1 LIMIT $2 OFFSET $3"#, Read, &["public.User"], &[], "E"),
        (r#"INSERT INTO "public"."Post" ("title","authorId") VALUES ($1,$2) RETURNING "public"."Post"."id""#, Write, &[], &["public.Post"], "E"),
        // CTEs, subqueries, data-modifying CTEs, INSERT … SELECT, UPDATE … FROM, DELETE … USING.
        ("WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT * FROM recent JOIN customers c ON c.id = recent.customer_id", Read, &["orders", "customers"], &[], ""),
        ("WITH moved AS (DELETE FROM inbox WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM moved", Write, &[], &["archive", "inbox"], ""),
        ("SELECT * FROM a WHERE id IN (SELECT a_id FROM b WHERE b.x = 1)", Read, &["a", "b"], &[], ""),
        ("INSERT INTO summary (day, n) SELECT date_trunc('day', at), count(*) FROM events GROUP BY 1", Write, &["events"], &["summary"], ""),
        ("UPDATE items i SET price = p.price FROM prices p WHERE p.item_id = i.id", Write, &["prices"], &["items"], ""),
        ("DELETE FROM carts c USING users u WHERE c.user_id = u.id AND u.deleted", Write, &["users"], &["carts"], ""),
        ("UPDATE t SET n = n + 1 FROM t AS t2 WHERE t2.id = t.parent", Write, &["t"], &["t"], ""),
        ("SELECT * FROM app.orders o JOIN app.lines l ON l.order_id = o.id", Read, &["app.orders", "app.lines"], &[], ""),
        ("MERGE INTO stock s USING deliveries d ON s.item = d.item WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty", Write, &["deliveries"], &["stock"], ""),
        ("TRUNCATE logs", Write, &[], &["logs"], ""),
        ("SELECT 1", Read, &[], &[], ""),
        ("VALUES (1, 'a'), (2, 'b')", Read, &[], &[], ""),
        ("SHOW search_path", Read, &[], &[], ""),
        ("EXPLAIN SELECT * FROM t", Read, &["t"], &[], ""),
        // Transaction control.
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Begin { isolation: Some(Isolation::Serializable), read_only: Some(true) }, &[], &[], ""),
        ("START TRANSACTION READ WRITE", Begin { isolation: None, read_only: Some(false) }, &[], &[], ""),
        ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ", Begin { isolation: Some(Isolation::RepeatableRead), read_only: None }, &[], &[], ""),
        ("COMMIT", Commit, &[], &[], ""),
        ("ROLLBACK", Rollback, &[], &[], ""),
        ("ABORT", Rollback, &[], &[], ""),
        ("SAVEPOINT sp1", Savepoint, &[], &[], ""),
        ("RELEASE SAVEPOINT sp1", Release, &[], &[], ""),
        ("ROLLBACK TO SAVEPOINT sp1", RollbackTo, &[], &[], ""),
        // Session commands.
        ("SET search_path TO app, public", Set, &[], &[], "S"),
        ("SET LOCAL statement_timeout = '5s'", SetLocal, &[], &[], "S"),
        ("SET TIME ZONE 'UTC'", Set, &[], &[], "S"),
        ("RESET work_mem", Reset, &[], &[], "S"),
        ("RESET ALL", ResetAll, &[], &[], ""),
        ("DISCARD ALL", Discard { all: true }, &[], &[], ""),
        ("SET ROLE admin", SetRole, &[], &[], "S"),
        ("SET SESSION AUTHORIZATION alice", SetSessionAuthorization, &[], &[], "S"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SetTransaction { isolation: Some(Isolation::Serializable), read_only: None }, &[], &[], ""),
        ("SET TRANSACTION READ ONLY", SetTransaction { isolation: None, read_only: Some(true) }, &[], &[], ""),
        // Prepared statements, LISTEN/NOTIFY, COPY.
        ("PREPARE q1 (int) AS SELECT * FROM t WHERE id = $1", Prepare { name: "q1".into() }, &["t"], &[], ""),
        ("EXECUTE q1 (5)", Execute { name: "q1".into() }, &[], &[], ""),
        ("DEALLOCATE q1", Deallocate { name: Some("q1".into()) }, &[], &[], ""),
        ("DEALLOCATE ALL", Deallocate { name: None }, &[], &[], ""),
        ("LISTEN orders", Listen { channel: "orders".into() }, &[], &[], ""),
        ("UNLISTEN *", Unlisten { channel: None }, &[], &[], ""),
        ("NOTIFY orders, 'new'", Notify { channel: "orders".into() }, &[], &[], ""),
        ("COPY items FROM STDIN WITH (FORMAT csv)", CopyFrom, &[], &["items"], ""),
        ("COPY items TO STDOUT", CopyTo, &["items"], &[], ""),
        ("COPY (SELECT * FROM items WHERE x = 1) TO STDOUT", CopyTo, &["items"], &[], ""),
        // DDL, functions, DO, utility.
        ("CREATE TABLE t (id int PRIMARY KEY, note text)", Ddl, &[], &["t"], ""),
        ("ALTER TABLE t ADD COLUMN c int", Ddl, &[], &["t"], ""),
        ("DROP TABLE IF EXISTS t", Ddl, &[], &["t"], ""),
        ("CREATE INDEX ON t (c)", Ddl, &[], &["t"], ""),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", CreateFunction, &[], &[], ""),
        ("DO $$ BEGIN PERFORM set_config('app.tenant_id', 'x', false); END $$", Do, &[], &[], ""),
        ("LOCK TABLE t IN SHARE MODE", Utility, &["t"], &[], ""),
        // Tricky quoting.
        (r#"SELECT 'it''s; fine', E'back\\slash\'', $q$ ; $$ $q$ FROM "we""ird" WHERE "we""ird"."Col" = 1"#, Read, &["we\"ird"], &[], "E"),
        ("SELECT /* a /* nested */ comment */ x FROM t -- trailing\n", Read, &["t"], &[], ""),
    ]
}

/// More of the table: ORM output, every kind, quoting, nesting.
fn more_cases() -> Vec<Case> {
    use Kind::*;
    vec![
        // pgbench -M prepared / extended spellings and the rest of tpcb.
        ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2", Write, &[], &["pgbench_branches"], "E"),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", Read, &["pgbench_accounts"], &[], "E"),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", Write, &[], &["pgbench_history"], "E"),
        ("select count(*) from pgbench_branches", Read, &["pgbench_branches"], &[], ""),
        ("vacuum pgbench_branches", Utility, &[], &[], ""),
        // Rails / ActiveRecord.
        (r#"SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2"#, Read, &["users"], &[], "E"),
        (r#"SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC"#, Read, &["schema_migrations"], &[], ""),
        (r#"INSERT INTO "schema_migrations" ("version") VALUES ($1) RETURNING "version""#, Write, &[], &["schema_migrations"], "E"),
        (r#"SELECT "orders".* FROM "orders" WHERE "orders"."user_id" IN ($1, $2, $3)"#, Read, &["orders"], &[], ""),
        (r#"SELECT COUNT(*) FROM "comments" WHERE "comments"."post_id" = $1 AND "comments"."deleted_at" IS NULL"#, Read, &["comments"], &[], "E"),
        (r#"UPDATE "users" SET "sign_in_count" = COALESCE("sign_in_count", 0) + 1 WHERE "users"."id" = $1"#, Write, &[], &["users"], "E"),
        (r#"SELECT pg_try_advisory_lock(1234567)"#, Read, &[], &[], "F"),
        (r#"SELECT pg_advisory_unlock(1234567)"#, Read, &[], &[], "F"),
        // Django.
        (r#"SELECT "django_session"."session_key", "django_session"."session_data" FROM "django_session" WHERE ("django_session"."expire_date" > '2024-05-01T10:00:00'::timestamptz AND "django_session"."session_key" = 'abc') LIMIT 21"#, Read, &["django_session"], &[], "E"),
        (r#"INSERT INTO "auth_user" ("password", "last_login", "is_superuser", "username") VALUES ('x', NULL, false, 'bob') RETURNING "auth_user"."id""#, Write, &[], &["auth_user"], "E"),
        (r#"UPDATE "auth_user" SET "last_login" = '2024-05-01T10:00:00'::timestamptz WHERE "auth_user"."id" = 1"#, Write, &[], &["auth_user"], "E"),
        (r#"DELETE FROM "django_admin_log" WHERE "django_admin_log"."id" IN (1, 2, 3)"#, Write, &[], &["django_admin_log"], ""),
        (r#"SELECT DISTINCT "app_tag"."name" FROM "app_tag" INNER JOIN "app_post_tags" ON ("app_tag"."id" = "app_post_tags"."tag_id") WHERE "app_post_tags"."post_id" = 7"#, Read, &["app_tag", "app_post_tags"], &[], "E"),
        (r#"SELECT "app_item"."id" FROM "app_item" WHERE UPPER("app_item"."name"::text) LIKE UPPER('%foo%')"#, Read, &["app_item"], &[], ""),
        // Hibernate / JPA.
        ("select p1_0.id,p1_0.name,p1_0.price from product p1_0 where p1_0.id=$1", Read, &["product"], &[], "E"),
        ("update product set name=$1,price=$2,version=$3 where id=$4 and version=$5", Write, &[], &["product"], "E"),
        ("delete from product where id=$1", Write, &[], &["product"], "E"),
        ("select nextval('product_seq')", Read, &[], &[], "F"),
        ("select o1_0.id from orders o1_0 join order_lines l1_0 on o1_0.id=l1_0.order_id where l1_0.sku=$1 for update", Read, &["orders", "order_lines"], &[], "LE"),
        // Prisma.
        (r#"SELECT "public"."Post"."id", "public"."Post"."title" FROM "public"."Post" WHERE ("public"."Post"."published" = $1 AND "public"."Post"."authorId" = $2) ORDER BY "public"."Post"."id" ASC LIMIT $3 OFFSET $4"#, Read, &["public.Post"], &[], "E"),
        (r#"UPDATE "public"."User" SET "name" = $1 WHERE ("public"."User"."id" = $2 AND 1=1) RETURNING "public"."User"."id""#, Write, &[], &["public.User"], "E"),
        (r#"DELETE FROM "public"."Session" WHERE "public"."Session"."expires" < $1"#, Write, &[], &["public.Session"], ""),
        (r#"SELECT COUNT(*) AS "_count._all" FROM (SELECT "public"."User"."id" FROM "public"."User" WHERE 1=1 OFFSET $1) AS "sub""#, Read, &["public.User"], &[], ""),
        // Reads of many shapes.
        ("SELECT * FROM t1 UNION ALL SELECT * FROM t2", Read, &["t1", "t2"], &[], ""),
        ("SELECT * FROM a LEFT JOIN b USING (id) RIGHT JOIN c ON c.id = b.id", Read, &["a", "b", "c"], &[], ""),
        ("SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a_id = a.id LIMIT 1) x", Read, &["a", "b"], &[], ""),
        ("SELECT EXISTS (SELECT 1 FROM flags WHERE name = 'beta')", Read, &["flags"], &[], ""),
        ("SELECT id, row_number() OVER (PARTITION BY grp ORDER BY at) FROM events", Read, &["events"], &[], ""),
        ("SELECT jsonb_build_object('id', id) FROM docs WHERE body @> '{\"a\": 1}'", Read, &["docs"], &[], ""),
        ("SELECT * FROM generate_series(1, 10) g", Read, &[], &[], ""),
        ("SELECT now() - interval '5 minutes'", Read, &[], &[], ""),
        ("SELECT current_setting('app.tenant_id')", Read, &[], &[], ""),
        ("SELECT * FROM accounts WHERE tenant_id = current_setting('app.tenant_id')::uuid", Read, &["accounts"], &[], ""),
        ("WITH RECURSIVE tree AS (SELECT id, parent FROM nodes WHERE id = 1 UNION ALL SELECT n.id, n.parent FROM nodes n JOIN tree ON n.parent = tree.id) SELECT * FROM tree", Read, &["nodes"], &[], ""),
        ("SELECT * FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED", Read, &["jobs"], &[], "LE"),
        ("SELECT * FROM accounts WHERE id = 1 FOR SHARE", Read, &["accounts"], &[], "LE"),
        ("SELECT * FROM accounts a WHERE a.id = 1 FOR UPDATE OF a NOWAIT", Read, &["accounts"], &[], "LE"),
        ("SELECT currval('orders_id_seq')", Read, &[], &[], "F"),
        ("SELECT lastval()", Read, &[], &[], "F"),
        ("SELECT txid_current()", Read, &[], &[], "F"),
        ("SELECT pg_notify('chan', 'payload')", Read, &[], &[], "F"),
        ("SELECT my_schema.compute_score(42)", Read, &[], &[], "F"),
        ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", Read, &[], &[], "F"),
        ("SELECT * FROM unnest($1::int[]) AS u(id) JOIN t ON t.id = u.id", Read, &["t"], &[], ""),
        ("SELECT lo_import('/etc/passwd')", Read, &[], &[], "F"),
        ("SELECT DISTINCT ON (customer) * FROM orders ORDER BY customer, at DESC", Read, &["orders"], &[], ""),
        ("SELECT $1::int + $2::int", Read, &[], &[], ""),
        ("EXPLAIN ANALYZE UPDATE t SET x = 1", Write, &[], &["t"], ""),
        // Writes of many shapes.
        ("INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v", Write, &[], &["t"], ""),
        ("INSERT INTO t (id, v) VALUES (1, 'a') ON CONFLICT DO NOTHING", Write, &[], &["t"], "E"),
        ("INSERT INTO t (id) SELECT id FROM s WHERE s.flag", Write, &["s"], &["t"], ""),
        ("INSERT INTO t DEFAULT VALUES", Write, &[], &["t"], ""),
        ("UPDATE t SET v = (SELECT max(v) FROM s) WHERE id = 3", Write, &["s"], &["t"], "E"),
        ("DELETE FROM t WHERE id IN (SELECT id FROM s)", Write, &["s"], &["t"], ""),
        ("DELETE FROM t RETURNING *", Write, &[], &["t"], ""),
        ("WITH upd AS (UPDATE stock SET qty = qty - 1 WHERE item = 5 RETURNING *) SELECT * FROM upd", Write, &[], &["stock"], ""),
        ("WITH ins AS (INSERT INTO log (msg) VALUES ('x') RETURNING id) SELECT id FROM ins", Write, &[], &["log"], ""),
        ("UPDATE app.accounts SET balance = balance - 10 WHERE id = $1 RETURNING balance", Write, &[], &["app.accounts"], "E"),
        ("TRUNCATE TABLE a, b RESTART IDENTITY", Write, &[], &["a", "b"], ""),
        ("INSERT INTO pg_temp.scratch VALUES (1)", Write, &[], &["pg_temp.scratch"], "T"),
        ("UPDATE t SET v = nextval('s') WHERE id = 1", Write, &[], &["t"], "FE"),
        ("INSERT INTO events (id, tenant_id) VALUES (gen_random_uuid(), 'acme')", Write, &[], &["events"], "E"),
        // Transaction control, more spellings.
        ("BEGIN WORK", Begin { isolation: None, read_only: None }, &[], &[], ""),
        ("BEGIN READ ONLY", Begin { isolation: None, read_only: Some(true) }, &[], &[], ""),
        ("BEGIN ISOLATION LEVEL READ COMMITTED", Begin { isolation: Some(Isolation::ReadCommitted), read_only: None }, &[], &[], ""),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", Begin { isolation: Some(Isolation::Serializable), read_only: Some(true) }, &[], &[], ""),
        ("COMMIT WORK", Commit, &[], &[], ""),
        ("ROLLBACK WORK", Rollback, &[], &[], ""),
        ("ROLLBACK TO sp2", RollbackTo, &[], &[], ""),
        ("RELEASE sp2", Release, &[], &[], ""),
        // Session commands, more spellings.
        ("SET app.tenant_id = 'acme'", Set, &[], &[], "S"),
        ("SET SESSION work_mem TO '64MB'", Set, &[], &[], "S"),
        ("SET datestyle TO ISO, DMY", Set, &[], &[], "S"),
        ("SET search_path = DEFAULT", Set, &[], &[], "S"),
        ("SET LOCAL app.tenant_id = 'acme'", SetLocal, &[], &[], "S"),
        ("RESET app.tenant_id", Reset, &[], &[], "S"),
        ("RESET ROLE", Reset, &[], &[], "S"),
        ("RESET SESSION AUTHORIZATION", SetSessionAuthorization, &[], &[], ""),
        ("SET ROLE NONE", SetRole, &[], &[], "S"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ", SetSessionCharacteristics, &[], &[], ""),
        ("DISCARD PLANS", Discard { all: false }, &[], &[], ""),
        ("DISCARD TEMP", Discard { all: false }, &[], &[], ""),
        ("SELECT set_config('search_path', 'app', false)", Read, &[], &[], "FS"),
        // Prepared statements, LISTEN/NOTIFY, COPY, more spellings.
        ("PREPARE ins AS INSERT INTO t VALUES ($1)", Prepare { name: "ins".into() }, &[], &["t"], ""),
        ("EXECUTE ins(1)", Execute { name: "ins".into() }, &[], &[], ""),
        ("DEALLOCATE PREPARE ins", Deallocate { name: Some("ins".into()) }, &[], &[], ""),
        ("LISTEN \"Mixed Case\"", Listen { channel: "Mixed Case".into() }, &[], &[], ""),
        ("UNLISTEN orders", Unlisten { channel: Some("orders".into()) }, &[], &[], ""),
        ("NOTIFY jobs", Notify { channel: "jobs".into() }, &[], &[], ""),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT binary)", CopyFrom, &[], &["t"], ""),
        ("COPY t TO STDOUT WITH (FORMAT csv, HEADER true)", CopyTo, &["t"], &[], ""),
        // DDL and utility, more spellings.
        ("CREATE TEMP TABLE scratch AS SELECT * FROM t", Ddl, &["t"], &["scratch"], "T"),
        ("CREATE TEMPORARY TABLE s2 (id int) ON COMMIT DROP", Ddl, &[], &["s2"], "T"),
        ("CREATE VIEW v AS SELECT * FROM t", Ddl, &["t"], &["v"], ""),
        ("CREATE SCHEMA IF NOT EXISTS app", Ddl, &[], &[], ""),
        ("CREATE SEQUENCE s START 1", Ddl, &[], &[], ""),
        ("CREATE POLICY p ON t USING (tenant_id = current_setting('app.tenant_id'))", Ddl, &[], &["t"], ""),
        ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", Ddl, &[], &["t"], ""),
        ("DROP VIEW v", Ddl, &[], &["v"], ""),
        ("CREATE OR REPLACE FUNCTION app.f(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1'", CreateFunction, &[], &[], ""),
        ("CREATE PROCEDURE p() LANGUAGE sql AS $$ INSERT INTO t VALUES (1) $$", CreateFunction, &[], &[], ""),
        ("do 'begin perform 1; end'", Do, &[], &[], ""),
        ("GRANT SELECT ON t TO app", Utility, &[], &[], ""),
        ("ANALYZE t", Utility, &["t"], &[], ""),
        // Quoting and comments.
        ("SELECT $fn$ it's $$ not; the end $fn$, 'a''b', E'\\n'", Read, &[], &[], ""),
        ("SELECT \"select\" FROM \"from\" WHERE \"where\" = 1", Read, &["from"], &[], "E"),
        ("SELECT 1 -- ; DROP TABLE users\n", Read, &[], &[], ""),
        ("/* pgsidecar: route=primary */ SELECT * FROM t WHERE id = 5", Read, &["t"], &[], "E"),
        ("SELECT U&'d\\0061t\\+000061' AS x", Read, &[], &[], ""),
        ("SELECT B'1010' | B'0101', X'FF'", Read, &[], &[], ""),
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
    let all: Vec<Case> = cases().into_iter().chain(more_cases()).collect();
    let total = all.len();
    for (sql, kind, read, written, want_flags) in all {
        let c = match classify(sql.as_bytes(), &scan(sql.as_bytes()), &Options::default()) {
            Classification::Parsed(mut c) if c.len() == 1 => c.remove(0),
            other => {
                failures.push(format!("{sql}: {other:?}"));
                continue;
            }
        };
        let want_read: Vec<String> = read.iter().map(|s| s.to_string()).collect();
        let want_written: Vec<String> = written.iter().map(|s| s.to_string()).collect();
        let got_flags = flags(&c);
        if c.kind != kind
            || sorted(&c.tables_read) != sorted(&want_read)
            || sorted(&c.tables_written) != sorted(&want_written)
            || got_flags != want_flags
        {
            failures.push(format!(
                "{sql}\n   got  {:?} read {:?} written {:?} flags {got_flags:?}\n   want {kind:?} read {want_read:?} written {want_written:?} flags {want_flags:?}",
                c.kind, c.tables_read, c.tables_written
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 150, "the table has {total} statements");
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
    let options = Options {
        read_only_functions: vec!["my_func".into()],
    };
    let sql = "SELECT my_func(1) FROM t";
    let Classification::Parsed(c) = classify(sql.as_bytes(), &scan(sql.as_bytes()), &options)
    else {
        panic!("parsed")
    };
    assert!(!c[0].has_unsafe_functions(), "configured read-only");
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
                classify(bad.as_bytes(), &scan(bad.as_bytes()), &Options::default()),
                Classification::Unparsed { .. }
            ),
            "{bad}"
        );
    }
    let latin1 = b"SELECT 'caf\xe9'";
    assert!(matches!(
        classify(latin1, &scan(latin1), &Options::default()),
        Classification::Unparsed { .. }
    ));
}

#[test]
fn statements_sqlparser_splits_otherwise_than_postgres_are_unparsed() {
    // Found by fuzzing: `i_b$0$enx` is one identifier in Postgres (a dollar-quote tag cannot
    // start with a digit), so the `;` after it separates two statements; sqlparser saw one.
    let hidden = "SELECT i_b$0$x; SET ROLE admin; SELECT $0$";
    let fuzzed = "unlisten*end\0i_b$0$enx'x'k'ken\"\"\u{10}(_backend|;x'k-\u{7}\n|/;||\u{7}=|||";
    for sql in [hidden, fuzzed] {
        let scanned = crate::sql::fingerprint::scan(sql.as_bytes());
        let classified = classify(sql.as_bytes(), &scanned, &Options::default());
        if let Classification::Parsed(statements) = &classified {
            assert_eq!(statements.len(), scanned.statements.len(), "{sql:?}");
        }
    }
}
