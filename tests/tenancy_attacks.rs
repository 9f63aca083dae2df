//! Tenant isolation against arbitrary SQL, with the policies on the signed tenant
//! (`pgsidecar.tenant()`): the security review's reproductions, each on a pool of one server
//! connection so that every tenant's client lands on the connection the attacker used. No
//! attempt may show the attacker a foreign row, nor leave anything for the next tenant (temp
//! objects, settings, prepared statements, notifications). Also: the false positives the guard
//! must not refuse, the install SQL (idempotent, rotation), and the clean refusal message.

mod support;

use support::*;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// A database with `accounts` under FORCEd RLS on `pgsidecar.tenant()`, owned by the database
/// owner; the sidecar logs in as `<name>_app`. Returns (name, sidecar).
async fn setup(mode: &str) -> (String, pgsidecar::listener::Running) {
    let name = fresh_user("attack");
    let app = format!("{name}_app");
    install_tenancy_sql(&name);
    pg().psql(
        &name,
        &format!(
            "CREATE ROLE {app} LOGIN PASSWORD '{PASSWORD}';
             CREATE TABLE accounts (id int PRIMARY KEY, tenant_id text NOT NULL, owner text, secret text);
             ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
             ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON accounts
                 USING (tenant_id = (SELECT pgsidecar.tenant()))
                 WITH CHECK (tenant_id = (SELECT pgsidecar.tenant()));
             GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO {app};
             INSERT INTO accounts VALUES (1, 'acme', 'alice', 'acme-secret'),
                 (2, 'globex', 'hank', 'globex-secret'), (3, 'initech', 'peter', 'initech-secret');"
        ),
    )
    .unwrap();
    let toml = base_toml(
        &name,
        &format!("size = 1\nmode = \"{mode}\"\ncheckout_timeout = \"20s\""),
    )
    .replace(
        &pg().url(&name, PASSWORD, &name),
        &pg().url(&app, PASSWORD, &name),
    ) + TENANCY;
    (name, start(&toml).await)
}

/// Every row the client can read, as (tenant, secret).
async fn rows(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT tenant_id, coalesce(secret, '') FROM accounts ORDER BY id",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// The first column of every row `sql` returns, as text.
async fn texts(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The client reads no row of another tenant and nothing planted.
async fn only_own(client: &tokio_postgres::Client, tenant: &str, what: &str) {
    for (owner, secret) in rows(client).await {
        assert_eq!(owner, tenant, "{what}: {tenant} read a row of {owner}");
        assert!(
            !secret.contains("PLANTED"),
            "{what}: {tenant} read a planted row"
        );
    }
}

/// The attacker reads no row of another tenant (what it planted itself in its own temporary
/// objects is its own).
async fn attacker_reads_no_foreign_row(client: &tokio_postgres::Client, what: &str) {
    for (owner, secret) in rows(client).await {
        if secret != "PLANTED" {
            assert_eq!(owner, "acme", "{what}: acme read a row of {owner}");
        }
    }
}

/// A fresh client of every tenant, on the connection the attacker used: it reads its own row,
/// no other, runs with default settings, writes to the real table, and finds no prepared
/// statement or temp object of anyone else.
async fn next_tenants_are_clean(sidecar: &pgsidecar::listener::Running, name: &str, what: &str) {
    for tenant in TENANTS {
        let c = tenant_client(sidecar, name, tenant).await;
        let seen = rows(&c).await;
        assert_eq!(
            seen.iter().filter(|(t, _)| t == tenant).count(),
            1,
            "{what}: {tenant} lost its row: {seen:?}"
        );
        only_own(&c, tenant, what).await;
        let row = c
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('search_path'),
                        current_setting('default_transaction_read_only'),
                        (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),
                        (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
                        current_setting('app.loot', true), current_user = session_user",
                &[],
            )
            .await
            .unwrap();
        let (tz, path, ro): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_ne!(
            tz, "Pacific/Kiritimati",
            "{what}: {tenant} inherited a time zone"
        );
        assert_eq!(
            path, "\"$user\", public",
            "{what}: {tenant} inherited a search_path"
        );
        assert_eq!(ro, "off", "{what}: {tenant} inherited read-only");
        assert_eq!(
            row.get::<_, i64>(3),
            0,
            "{what}: prepared statements survived"
        );
        assert_eq!(row.get::<_, i64>(4), 0, "{what}: temp objects survived");
        assert!(
            row.get::<_, Option<String>>(5)
                .unwrap_or_default()
                .is_empty(),
            "{what}: app.loot survived"
        );
        assert!(row.get::<_, bool>(6), "{what}: {tenant} inherited a role");
    }
}

/// The reproductions sent by tenant acme as simple queries (each may fail; none may leak).
const SIMPLE_ATTACKS: &[&str] = &[
    // 1. set_config in every position.
    "SELECT * FROM set_config('app.tenant_id','globex',false); SELECT * FROM accounts",
    "SELECT * FROM accounts, LATERAL set_config('app.tenant_id','globex',false)",
    "WITH x AS (SELECT set_config('app.tenant_id','globex',false)) SELECT * FROM accounts, x",
    "EXPLAIN ANALYZE SELECT set_config('app.tenant_id','globex',false)",
    "PREPARE p1 AS SELECT set_config('app.tenant_id','globex',false); EXECUTE p1",
    "BEGIN; SELECT set_config('app.tenant_id','globex',true); SELECT * FROM accounts; COMMIT",
    // 2. Escapes the scanner once decoded differently from Postgres.
    "SELECT set_config(E'app\\x2etenant_id','globex',false)",
    "SELECT set_config(E'app\\056tenant_id','globex',false)",
    "SELECT set_config(E'\\u0061pp.tenant_id','globex',false)",
    // 3. standard_conforming_strings = off, hiding statements from the parser.
    "SET standard_conforming_strings = off",
    "SELECT '\\''; SET app.tenant_id = $$globex$$; SELECT secret FROM accounts; --'",
    // 4. Functions that run SQL from text.
    "SELECT query_to_xml('select set_config(''app.tenant_id'',''globex'',false)', false, false, '')",
    "SELECT query_to_xml('select set_config(''pgsidecar.tenant'',''v1:x'',false)', false, false, '')",
    "SELECT * FROM ts_stat('select to_tsvector(set_config(''app.tenant_id'',''globex'',false))')",
    // 5. Temporary aggregates, rules and defaults that call set_config.
    "CREATE AGGREGATE pg_temp.sc(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id'); SELECT pg_temp.sc('globex', false)",
    "CREATE TEMP TABLE r (a int); CREATE RULE rr AS ON INSERT TO r DO ALSO SELECT * FROM set_config('app.tenant_id','globex',false); INSERT INTO r VALUES (1)",
    "CREATE TEMP TABLE d (a text DEFAULT query_to_xml('select set_config(''app.tenant_id'',''globex'',false)', false, false, '')::text); INSERT INTO d DEFAULT VALUES",
    // 6. A temp table that shadows the real one.
    "SELECT * INTO TEMP accounts FROM (VALUES (99, 'globex', 'planted', 'PLANTED')) v(id, tenant_id, owner, secret)",
    // 7. A temp domain whose check copies rows into a setting.
    "CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (length(query_to_xml('select set_config(''app.loot'', (select string_agg(secret, '','') from accounts), false)', false, false, '')::text) > 0)",
    // 10. Session settings through set_config in FROM.
    "SELECT * FROM set_config('TimeZone','Pacific/Kiritimati',false) a, set_config('default_transaction_read_only','on',false) b, set_config('search_path','pg_catalog',false) c",
    // Advisory locks, role, session authorization, cursors.
    "SELECT pg_advisory_lock(42)",
    "SELECT query_to_xml('select set_config(''role'',''none'',false)', false, false, '')",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproductions_read_no_foreign_row_and_leave_nothing_behind() {
    let (name, sidecar) = setup("transaction").await;
    for (i, attack) in SIMPLE_ATTACKS.iter().enumerate() {
        let what = format!("attack {i}: {attack}");
        let acme = tenant_client(&sidecar, &name, "acme").await;
        let _ = acme.simple_query(attack).await;
        attacker_reads_no_foreign_row(&acme, &what).await;
        drop(acme);
        next_tenants_are_clean(&sidecar, &name, &what).await;
    }
    // Parse/Bind with the name as a parameter, and set_config local in a transaction.
    let acme = tenant_client(&sidecar, &name, "acme").await;
    let _ = acme
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"app.tenant_id", &"globex"],
        )
        .await;
    only_own(&acme, "acme", "parameterised set_config").await;
    // COPY out of a query that changes the setting.
    let _ = acme
        .copy_out("COPY (SELECT set_config('app.tenant_id','globex',false)) TO STDOUT")
        .await;
    only_own(&acme, "acme", "COPY").await;
    // 12. RESET ALL through the extended protocol, then a read in the same window.
    let _ = acme.execute("RESET ALL", &[]).await;
    only_own(&acme, "acme", "RESET ALL (extended)").await;
    drop(acme);
    next_tenants_are_clean(&sidecar, &name, "after the extended attacks").await;
    // The hops were counted.
    let hops = scrape(sidecar.metrics_addr, "pgsidecar_tenant_hops_total").await;
    assert!(hops.unwrap() >= 20.0, "{hops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_moved_token_verifies_to_nothing() {
    let (name, sidecar) = setup("transaction").await;
    let acme = tenant_client(&sidecar, &name, "acme").await;
    // The token is on the connection; the tenant it names is acme's.
    let row = acme
        .query_one(
            "SELECT current_setting('pgsidecar.tenant'), pgsidecar.tenant()",
            &[],
        )
        .await
        .unwrap();
    let (token, tenant): (String, String) = (row.get(0), row.get(1));
    assert_eq!(tenant, "acme");
    // Its text never appears in a query text.
    let admin = connect_direct_superuser(&name).await;
    let texts = texts(&admin, "SELECT coalesce(query, '') FROM pg_stat_activity").await;
    assert!(texts.iter().all(|q| !q.contains(&token)), "{texts:?}");
    // Another tenant's name, another PID, another key id, a later expiry: all NULL.
    let fields: Vec<&str> = token.split(':').collect();
    let forged = [
        token.replace(":acme:", ":globex:"),
        token.replacen(&format!(":{}:", fields[3]), ":1:", 1),
        token.replacen(fields[1], "0000000000000000", 1),
        token.replacen(&format!(":{}:", fields[2]), ":9999999999:", 1),
        "garbage".to_owned(),
    ];
    // Straight on the server as the sidecar's role: the function verifies them to nothing,
    // and acme's own token is worthless on another connection (another PID).
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", pg().port).parse().unwrap();
    let direct = connect(addr, &format!("{name}_app"), PASSWORD, &name)
        .await
        .unwrap();
    for forged in forged.iter().chain([&token]) {
        let row = direct
            .query_one(
                "SELECT set_config('pgsidecar.tenant', $1, false) IS NULL, pgsidecar.tenant(), (SELECT count(*) FROM accounts)",
                &[forged],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(1), None, "{forged}");
        assert_eq!(row.get::<_, i64>(2), 0, "{forged}");
    }
    // Through the sidecar, set by SQL the guard cannot see: nothing is visible for the rest of
    // that transaction, and the sidecar's own token is back after it.
    for forged in &forged {
        acme.batch_execute("BEGIN").await.unwrap();
        acme.query_one(
            "SELECT query_to_xml(format('select set_config(%L, %L, false)', 'pgsidecar.' || 'tenant', $1::text), false, false, '') IS NOT NULL",
            &[forged],
        )
        .await
        .unwrap();
        let row = acme
            .query_one(
                "SELECT pgsidecar.tenant(), (SELECT count(*) FROM accounts)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0), None, "{forged}");
        assert_eq!(row.get::<_, i64>(1), 0, "{forged}");
        acme.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            rows(&acme).await.len(),
            1,
            "{forged}: the token did not come back"
        );
    }
    drop(acme);
    next_tenants_are_clean(&sidecar, &name, "forged tokens").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_notifications_never_cross_tenants() {
    let (name, sidecar) = setup("transaction").await;
    let globex = tenant_client(&sidecar, &name, "globex").await;
    let statement = globex.prepare("SELECT secret FROM accounts").await.unwrap();
    globex
        .batch_execute("PREPARE mine AS SELECT secret FROM accounts")
        .await
        .unwrap();
    // 8. acme, on the same server connection, sees none of globex's statements.
    let acme = tenant_client(&sidecar, &name, "acme").await;
    let texts = texts(&acme, "SELECT statement FROM pg_prepared_statements").await;
    assert!(texts.iter().all(|t| !t.contains("secret")), "{texts:?}");
    let _ = acme
        .simple_query("DEALLOCATE ALL; PREPARE mine AS SELECT 'acme-sql'")
        .await;
    // globex's statements still run globex's SQL, and its rows only.
    let rows = globex.query(&statement, &[]).await.unwrap();
    let secrets: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(secrets, vec!["globex-secret".to_owned()]);
    let rows = globex.simple_query("EXECUTE mine").await.unwrap();
    let got: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["globex-secret".to_owned()]);
    // 9. A notification raised inside SQL on a guessed channel never reaches globex.
    let (listener, mut inbox) =
        listening_client(sidecar.addr, &format!("{name}.globex"), &name).await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    for channel in ["globex.jobs", "jobs"] {
        let _ = acme
            .simple_query(&format!(
                "SELECT query_to_xml('select pg_notify(''{channel}'', ''FORGED'')::text', false, false, '')"
            ))
            .await;
    }
    globex.batch_execute("NOTIFY jobs, 'real'").await.unwrap();
    let n = next(&mut inbox).await.expect("globex hears its own");
    assert_eq!(n.payload(), "real");
    none_within(&mut inbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_between_tenants_too() {
    let (name, sidecar) = setup("session").await;
    for attack in [
        SIMPLE_ATTACKS[11],
        SIMPLE_ATTACKS[17],
        SIMPLE_ATTACKS[18],
        SIMPLE_ATTACKS[19],
    ] {
        let acme = tenant_client(&sidecar, &name, "acme").await;
        let _ = acme.simple_query(attack).await;
        attacker_reads_no_foreign_row(&acme, attack).await;
        drop(acme);
        next_tenants_are_clean(&sidecar, &name, attack).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_drivers_send_is_not_refused() {
    let (name, sidecar) = setup("transaction").await;
    pg().psql(
        &name,
        &format!("GRANT CREATE ON SCHEMA public TO {name}_app"),
    )
    .unwrap();
    let acme = tenant_client(&sidecar, &name, "acme").await;
    for sql in [
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; COMMIT",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE; COMMIT",
        "SELECT * FROM accounts FOR KEY SHARE",
        "SELECT * FROM accounts FOR NO KEY UPDATE",
        "TABLE accounts",
        "SELECT 'a'\n'b'",
        "SELECT xmlelement(name foo)",
        "SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3))",
        "BEGIN; DECLARE c CURSOR FOR SELECT 1; MOVE NEXT IN c; COMMIT",
        "SET ROLE NONE",
        "RESET SESSION AUTHORIZATION",
        "SET standard_conforming_strings = on",
    ] {
        acme.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    only_own(&acme, "acme", "false positives").await;
    // A startup packet with replication=false is an ordinary connection.
    let mut raw = raw_connect(
        sidecar.addr,
        &format!("{name}.acme"),
        PASSWORD,
        &name,
        &[("replication", "false")],
    )
    .await
    .expect("replication=false is an ordinary login");
    let rows = raw.query_rows("SELECT pgsidecar.tenant()").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("acme"));
    // A refusal reads like the sidecar's own error: no PL/pgSQL context, no detail.
    let e = acme
        .simple_query("SET app.tenant_id = 'x'")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("an error from the server side");
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().starts_with("permission denied"), "{db:?}");
    assert_eq!((db.where_(), db.detail()), (None, None), "{db:?}");
}
