//! Tenant context for Row-Level Security against a real Postgres: a table with policies on
//! `current_setting('app.tenant_id')` owned by another role than the one the sidecar logs in
//! as; tenants (from the login name `user.tenant`) interleaving on one server connection see
//! and change only their rows; an adversarial suite of attempts to change or escape the tenant
//! setting, each refused with 42501 and no foreign row coming back; identity refusals.

mod support;

use std::time::Duration;

use support::*;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// A database with an RLS-protected table, and a sidecar in front of it whose upstream role
/// (`<name>_app`) does not own the table. Returns (name, sidecar).
async fn setup() -> (String, pgsidecar::listener::Running) {
    setup_with(
        "size = 1\ncheckout_timeout = \"10s\"",
        "metric_tenants = 2\n",
    )
    .await
}

/// In database `name` (owned by role `name`): table `items` with an RLS policy on
/// `app.tenant_id`, and a login role `<name>_app` (returned) that may use it but does not own
/// it; `extra` SQL runs after.
fn rls_schema(name: &str, extra: &str) -> String {
    let app = format!("{name}_app");
    pg().psql(
        name,
        &format!(
            "CREATE ROLE {app} LOGIN PASSWORD '{PASSWORD}';
             CREATE TABLE items (tenant_id text NOT NULL, v int);
             ALTER TABLE items OWNER TO {name};
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON items
                 USING (tenant_id = current_setting('app.tenant_id', true))
                 WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
             GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {app};
             {extra}"
        ),
    )
    .unwrap();
    app
}

/// Like [`setup`], with these `[pool]` lines and extra `[tenancy]` lines.
async fn setup_with(pool: &str, tenancy: &str) -> (String, pgsidecar::listener::Running) {
    let name = fresh_user("tenant");
    let app = rls_schema(&name, "");
    pg().psql(
        &name,
        "INSERT INTO items VALUES ('acme', 1), ('acme', 2), ('globex', 10), ('initech', 100)",
    )
    .unwrap();
    let toml = base_toml(&name, pool).replace(
        &pg().url(&name, PASSWORD, &name),
        &pg().url(&app, PASSWORD, &name),
    ) + &format!(
        "\n[[user]]\nname = \"{name}_svc\"\npassword = \"{PASSWORD}\"\ntenant = \"globex\"\n"
    ) + TENANCY
        + "setting = \"app.tenant_id\"\n"
        + tenancy;
    (name.clone(), start(&toml).await)
}

async fn visible_tenants(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT DISTINCT tenant_id FROM items ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_interleaving_on_one_connection_see_only_their_rows() {
    let (name, sidecar) = setup().await;
    let mut clients = Vec::new();
    for tenant in TENANTS {
        clients.push((tenant, tenant_client(&sidecar, &name, tenant).await));
    }
    for round in 0..3 {
        for (tenant, client) in &clients {
            assert_eq!(visible_tenants(client).await, vec![tenant.to_string()]);
            // Writes land in the client's own tenant; another tenant's rows are refused.
            client
                .execute(
                    "INSERT INTO items VALUES ($1, $2)",
                    &[&tenant.to_string(), &round],
                )
                .await
                .unwrap();
            let e = client
                .execute("INSERT INTO items VALUES ('someone_else', 0)", &[])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
            // Prepared statements, transactions and updates stay inside the tenant.
            let statement = client
                .prepare("UPDATE items SET v = v + 1 WHERE v >= 0")
                .await
                .unwrap();
            client.batch_execute("BEGIN").await.unwrap();
            let updated = client.execute(&statement, &[]).await.unwrap();
            client.batch_execute("COMMIT").await.unwrap();
            let own: i64 = client
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(updated as i64, own);
        }
    }
    // COPY out is tenant-scoped (COPY FROM is refused by Postgres itself under RLS).
    let (_, acme) = &clients[0];
    let stream = acme.copy_out("COPY items TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().all(|l| l.starts_with("acme\t")), "{text}");
    assert!(text.lines().count() >= 2, "{text}");
    // RESET ALL and DISCARD ALL are allowed; the tenant stays in force after them.
    for reset in ["RESET ALL", "DISCARD ALL"] {
        acme.batch_execute(reset).await.unwrap();
        assert_eq!(
            visible_tenants(acme).await,
            vec!["acme".to_owned()],
            "{reset}"
        );
        let setting: String = acme
            .query_one("SELECT current_setting('app.tenant_id')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(setting, "acme");
    }
    // A service account with a fixed tenant needs no tenant in its login.
    let svc = connect(sidecar.addr, &format!("{name}_svc"), PASSWORD, &name)
        .await
        .unwrap();
    assert_eq!(visible_tenants(&svc).await, vec!["globex".to_owned()]);
    let e = connect(sidecar.addr, &format!("{name}_svc.acme"), PASSWORD, &name)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e}");
    // Queries by tenant, the label bounded to the first two tenants seen.
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        metric(&text, "pgsidecar_tenant_queries_total{tenant=\"acme\"}").unwrap() > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "pgsidecar_tenant_queries_total{tenant=\"other\"}").unwrap() > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "pgsidecar_tenant_queries_total{tenant=\"initech\"}").is_none(),
        "{text}"
    );
    // What the superuser sees: each tenant's rows where they belong.
    let rows = pg()
        .psql(
            &name,
            "SELECT tenant_id, count(*) FROM items GROUP BY 1 ORDER BY 1",
        )
        .unwrap();
    assert!(!rows.contains("someone_else"), "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_to_change_or_escape_the_tenant_are_refused() {
    let (name, sidecar) = setup().await;
    let acme = tenant_client(&sidecar, &name, "acme").await;
    let attempts = [
        "SET app.tenant_id = 'globex'",
        "set APP.TENANT_ID to 'globex'",
        "SET \"app.tenant_id\" = 'globex'",
        "SET SESSION app.tenant_id = 'globex'",
        "SET LOCAL app.tenant_id = 'globex'",
        "RESET app.tenant_id",
        "SET app.tenant_id TO DEFAULT",
        "SELECT set_config('app.tenant_id', 'globex', false)",
        "SELECT set_config('app.tenant_id', 'globex', true)",
        "SELECT pg_catalog.set_config('APP.Tenant_Id', 'globex', false)",
        "SELECT \"set_config\"('app.tenant_id', 'globex', false)",
        "SELECT set_config(E'app.tenant_id', 'globex', false)",
        "SELECT set_config('app.' || 'tenant_id', 'globex', false)",
        "SELECT set_config(n, 'globex', false) FROM (VALUES ('app.tenant_id')) v(n)",
        "SELECT * FROM items WHERE set_config('app.tenant_id', 'globex', false) IS NOT NULL",
        "WITH x AS (SELECT set_config('app.tenant_id', 'globex', false)) SELECT * FROM items, x",
        "SELECT 1; SELECT set_config('app.tenant_id', 'globex', false); SELECT * FROM items",
        "/* hello */ SET app.tenant_id = 'globex'",
        "-- comment\nSET app.tenant_id = 'globex'",
        "PREPARE p AS SELECT set_config('app.tenant_id', 'globex', false)",
        "EXPLAIN ANALYZE SELECT set_config('app.tenant_id', 'globex', false)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT set_config('app.tenant_id', 'globex', false)",
        "COPY (SELECT set_config('app.tenant_id', 'globex', false)) TO STDOUT",
        "CREATE TEMP TABLE x AS SELECT set_config('app.tenant_id', 'globex', false)",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "DO $$BEGIN PERFORM set_config('app.tenant_id', 'globex', false); END$$",
        "CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.tenant_id', 'globex', false) $$",
        "CREATE OR REPLACE PROCEDURE pg_temp.p() LANGUAGE sql AS $$ SELECT 1 $$",
        "SELEC set_config('app.tenant_id', 'globex', false)",
        "LISTEN pgsidecar_invalidate",
        "NOTIFY pgsidecar_invalidate, 'x'",
        "SELECT pg_notify(chr(112) || 'gsidecar_invalidate', 'x')",
        "ALTER ROLE CURRENT_USER SET app.tenant_id = 'globex'",
        "SET role = 'postgres'",
        "SELECT set_config('role', 'postgres', false)",
        "SET standard_conforming_strings = off",
        "SELECT set_config(E'app\\x2etenant_id', 'globex', false)",
    ];
    assert!(attempts.len() >= 30);
    for attempt in attempts {
        let e = acme.simple_query(attempt).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{attempt}: {e}");
        assert_eq!(
            visible_tenants(&acme).await,
            vec!["acme".to_owned()],
            "{attempt}"
        );
    }
    // The same through the extended protocol: refused at Parse.
    for attempt in &attempts[..12] {
        let e = acme.prepare(attempt).await.unwrap_err();
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some("42501"),
            "extended {attempt}: {e}"
        );
    }
    let e = acme
        .query(
            "SELECT set_config($1, 'globex', false)",
            &[&"app.tenant_id"],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    // A refusal inside a transaction fails it on the server too: COMMIT commits nothing.
    acme.batch_execute("BEGIN; INSERT INTO items VALUES ('acme', 555)")
        .await
        .unwrap();
    acme.simple_query("SET app.tenant_id = 'globex'")
        .await
        .unwrap_err();
    let e = acme.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e}");
    acme.batch_execute("COMMIT").await.unwrap();
    let kept: i64 = acme
        .query_one("SELECT count(*) FROM items WHERE v = 555", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 0, "a transaction with a refused statement committed");
    let setting: String = acme
        .query_one("SELECT current_setting('app.tenant_id')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "acme");
    let refusals = scrape(sidecar.metrics_addr, "pgsidecar_tenancy_refusals_total").await;
    assert!(refusals.unwrap() >= 40.0, "{refusals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_without_a_valid_tenant_are_refused() {
    let (name, sidecar) = setup().await;
    for (login, code) in [
        (name.clone(), "28000"),
        (format!("{name}.ac'me"), "28000"),
        (format!("{name}."), "28000"),
        (format!("{name}.{}", "x".repeat(64)), "28000"),
    ] {
        let e = connect(sidecar.addr, &login, PASSWORD, &name)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some(code), "{login}: {e}");
    }
    let e = connect(sidecar.addr, &format!("{name}.acme"), "wrong", &name)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    // The tenant setting cannot come in through the startup packet either, nor a role.
    for options in [
        "-c app.tenant_id=globex",
        "-c role=postgres",
        "-c session_authorization=postgres",
    ] {
        let e = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(sidecar.addr.port())
            .user(format!("{name}.acme"))
            .password(PASSWORD)
            .dbname(&name)
            .options(options)
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{options}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_hear_each_others_notifications() {
    let (name, sidecar) = setup().await;
    let (acme, mut acme_inbox) =
        listening_client(sidecar.addr, &format!("{name}.acme"), &name).await;
    let (globex, mut globex_inbox) =
        listening_client(sidecar.addr, &format!("{name}.globex"), &name).await;
    acme.batch_execute("LISTEN jobs").await.unwrap();
    globex.execute("LISTEN jobs", &[]).await.unwrap();
    // Same channel name, different tenants: each hears only its own.
    acme.batch_execute("NOTIFY jobs, 'for acme'").await.unwrap();
    globex
        .batch_execute("SELECT pg_notify('jobs', 'for globex')")
        .await
        .unwrap();
    let n = next(&mut acme_inbox).await.expect("acme hears its own");
    assert_eq!((n.channel(), n.payload()), ("jobs", "for acme"));
    let n = next(&mut globex_inbox).await.expect("globex hears its own");
    assert_eq!((n.channel(), n.payload()), ("jobs", "for globex"));
    none_within(&mut acme_inbox).await;
    none_within(&mut globex_inbox).await;
    // Someone outside the sidecar notifying the bare channel reaches no tenant.
    pg().psql(&name, "NOTIFY jobs, 'bare'").unwrap();
    none_within(&mut acme_inbox).await;
    // UNLISTEN works on the tenant's channel.
    acme.batch_execute("UNLISTEN jobs").await.unwrap();
    globex.batch_execute("NOTIFY jobs, 'again'").await.unwrap();
    assert_eq!(next(&mut globex_inbox).await.unwrap().payload(), "again");
    none_within(&mut acme_inbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_sql_installs_once_and_rotates_keys() {
    let name = fresh_user("tsql");
    let dir = std::env::temp_dir().join(format!("pgsidecar-tsql-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    // `pgsidecar tenancy-sql --config FILE [--rotate UNTIL]`, run with psql.
    let install = |key: &str, rotate: Option<&str>| {
        let config = dir.join(format!("{key}.toml"));
        std::fs::write(
            &config,
            base_toml(&name, "size = 1") + &format!("[tenancy]\nsigning_key = \"{key}\"\n"),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        command.arg("tenancy-sql").arg("--config").arg(&config);
        if let Some(until) = rotate {
            command.arg("--rotate").arg(until);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        pg().psql(&name, &String::from_utf8(out.stdout).unwrap())
            .unwrap();
    };
    let (old, new) = (
        "old-key-0123456789abcdef0123456789ab",
        "new-key-0123456789abcdef0123456789ab",
    );
    let admin = connect_direct_superuser(&name).await;
    let pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Which keys the installed function accepts now.
    let accepts = |key: &'static str| {
        let admin = &admin;
        async move {
            let signer = pgsidecar::token::Signer::new(key.as_bytes()).unwrap();
            let grant = pgsidecar::token::Grant {
                tenant: "acme".into(),
                ..Default::default()
            };
            let token = signer.sign(&grant, pid, 4_000_000_000);
            admin
                .query_one(
                    "SELECT set_config('pgsidecar.tenant', $1, false) IS NULL, pgsidecar.tenant()",
                    &[&token],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(1)
                .is_some()
        }
    };
    install(old, None);
    install(old, None);
    assert!(accepts(old).await);
    assert!(!accepts(new).await);
    // A rotation keeps the old key valid until the given time.
    install(new, Some("2999-01-01 00:00+00"));
    assert!(accepts(old).await && accepts(new).await);
    install(new, Some("2000-01-01 00:00+00"));
    assert!(!accepts(old).await && accepts(new).await);
    // Without --rotate, only the configured key stays.
    install(old, None);
    assert!(accepts(old).await && !accepts(new).await);
    // Without a key there is nothing to print.
    let config = dir.join("none.toml");
    std::fs::write(
        &config,
        base_toml(&name, "size = 1") + "[tenancy]\nenforce = false\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["tenancy-sql", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The key table is the owner's alone.
    let app = format!("{name}_reader");
    pg().psql(
        &name,
        &format!("CREATE ROLE {app} LOGIN PASSWORD '{PASSWORD}'"),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", pg().port).parse().unwrap();
    let mut conn = raw_connect(addr, &app, PASSWORD, &name, &[]).await.unwrap();
    assert!(conn
        .query_rows("SELECT * FROM pgsidecar.signing_keys")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_warns_about_roles_that_could_escape_rls() {
    let (name, _sidecar) = setup().await;
    let app = format!("{name}_app");
    let config = pgsidecar::config::Config::from_toml(
        &(base_toml(&name, "size = 1") + TENANCY),
        &Default::default(),
    )
    .unwrap();
    let audit = |user: String| {
        let name = name.clone();
        let tenancy = config.tenancy.clone();
        async move {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", pg().port).parse().unwrap();
            let mut conn = raw_connect(addr, &user, PASSWORD, &name, &[])
                .await
                .unwrap();
            pgsidecar::pool::audit::audit_role(&mut conn, tenancy.as_ref())
                .await
                .unwrap()
        }
    };
    let has = |warnings: &[String], needle: &str| warnings.iter().any(|w| w.contains(needle));
    // The table owner bypasses policies that are not FORCEd, and may create in its schema.
    let owner = audit(name.clone()).await;
    assert!(has(&owner, "owns table items"), "{owner:?}");
    assert!(has(&owner, "CREATE in schema public"), "{owner:?}");
    // The sidecar's role: TEMP, track_activities, a policy on the plain setting, and no
    // pgsidecar.tenant() yet.
    let plain = audit(app.clone()).await;
    for needle in [
        "TEMP",
        "track_activities",
        "policy by_tenant",
        "has no function pgsidecar.tenant()",
    ] {
        assert!(has(&plain, needle), "{needle}: {plain:?}");
    }
    assert_eq!(plain.len(), 4, "{plain:?}");
    install_tenancy_sql(&name);
    pg().psql(
        &name,
        &format!(
            "REVOKE TEMP ON DATABASE {name} FROM PUBLIC; ALTER ROLE {app} SET track_activities = off;
             ALTER POLICY by_tenant ON items USING (tenant_id = (SELECT pgsidecar.tenant()))
                 WITH CHECK (tenant_id = (SELECT pgsidecar.tenant()))"
        ),
    )
    .unwrap();
    assert_eq!(audit(app.clone()).await, Vec::<String>::new());
    // A role that can read the key could sign any tenant: named.
    pg().psql(
        &name,
        &format!("GRANT SELECT ON pgsidecar.signing_keys TO {app}"),
    )
    .unwrap();
    let plain = audit(app.clone()).await;
    assert!(has(&plain, "may read pgsidecar.signing_keys"), "{plain:?}");
    pg().psql(
        &name,
        &format!("REVOKE SELECT ON pgsidecar.signing_keys FROM {app}"),
    )
    .unwrap();
    // Installed with another key: named.
    let other = pgsidecar::token::Signer::new(&[7; 32]).unwrap();
    pg().psql(&name, &other.install_sql(None)).unwrap();
    let plain = audit(app.clone()).await;
    assert!(
        has(&plain, "does not accept this sidecar's signing key"),
        "{plain:?}"
    );
    install_tenancy_sql(&name);
    // Role defaults for the tenant setting, and membership in a role that bypasses RLS.
    pg().psql(
        &name,
        &format!(
            "ALTER ROLE {app} SET app.tenant_id = 'globex'; CREATE ROLE {name}_auditor BYPASSRLS;
             GRANT {name}_auditor TO {app}; GRANT {name} TO {app}"
        ),
    )
    .unwrap();
    let plain = audit(app.clone()).await;
    for needle in [
        "default for app.tenant_id",
        &format!("member of role {name}_auditor, which has BYPASSRLS"),
        &format!("member of {name}, owner of table items"),
    ] {
        assert!(has(&plain, needle), "{needle}: {plain:?}");
    }
    pg().psql(&name, "ALTER TABLE items FORCE ROW LEVEL SECURITY")
        .unwrap();
    let owner = audit(name.clone()).await;
    assert!(!has(&owner, "owns table"), "{owner:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_cap_waits_while_others_are_served() {
    let (name, sidecar) = setup_with(
        "size = 2\ncheckout_timeout = \"500ms\"",
        "max_connections_per_tenant = 1\n",
    )
    .await;
    let first = tenant_client(&sidecar, &name, "acme").await;
    let second = tenant_client(&sidecar, &name, "acme").await;
    let other = tenant_client(&sidecar, &name, "globex").await;
    // acme holds one server connection in an open transaction: its cap.
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let e = second.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("maximum of 1"), "{message}");
    // The pool has room, and globex gets it.
    assert_eq!(visible_tenants(&other).await, vec!["globex".to_owned()]);
    first.batch_execute("COMMIT").await.unwrap();
    assert_eq!(visible_tenants(&second).await, vec!["acme".to_owned()]);
}

fn token(key: &rcgen::KeyPair, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_logins_carry_their_tenant_and_bad_tokens_are_refused() {
    let name = fresh_user("jwt");
    let app = rls_schema(
        &name,
        &format!(
            "CREATE ROLE {name}_app_reader; GRANT {name}_app_reader TO {name}_app;
             GRANT SELECT ON items TO {name}_app_reader;
             INSERT INTO items VALUES ('acme', 1), ('globex', 2);"
        ),
    );
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = std::env::temp_dir().join(format!("pgsidecar-jwt-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("jwt.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
[pool]
size = 1
[[database]]
name = "{name}"
primary = "{url}"
[[user]]
name = "web"
auth = "jwt"
[tenancy]
signing_key = "test-signing-key-0123456789abcdefghij"
source = "jwt"
jwt_algorithm = "ES256"
jwt_public_key = "{public}"
jwt_audience = "pgsidecar"
jwt_issuer = "tests"
jwt_claims_setting = "request.jwt.claims"
jwt_role_claim = "role"
allowed_roles = ["{app}_reader"]
"#,
        url = pg().url(&app, PASSWORD, &name),
        public = public.display()
    );
    install_tenancy_sql(&name);
    let sidecar = start(&toml).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = serde_json::json!({
        "tenant_id": "acme", "aud": "pgsidecar", "iss": "tests", "exp": now + 600, "sub": "u1",
        "role": format!("{app}_reader")
    });
    let client = connect(sidecar.addr, "web", &token(&key, good.clone()), &name)
        .await
        .unwrap();
    assert_eq!(visible_tenants(&client).await, vec!["acme".to_owned()]);
    let claims: String = client
        .query_one("SELECT current_setting('request.jwt.claims')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(claims.contains("\"sub\":\"u1\""), "{claims}");
    // The same, verified: from the signed tenant, through pgsidecar.claims() / role().
    let row = client
        .query_one(
            "SELECT pgsidecar.tenant(), pgsidecar.claims()->>'sub', pgsidecar.role()",
            &[],
        )
        .await
        .unwrap();
    let verified: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        verified,
        ("acme".to_owned(), "u1".to_owned(), format!("{app}_reader"))
    );
    // The role claim selected the upstream role; the client cannot leave it.
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, format!("{app}_reader"));
    let e = client.simple_query("RESET ROLE").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let e = client
        .simple_query("SET request.jwt.claims = '{}'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut expired = good.clone();
    expired["exp"] = serde_json::json!(now - 10);
    let mut early = good.clone();
    early["nbf"] = serde_json::json!(now + 600);
    let mut audience = good.clone();
    audience["aud"] = serde_json::json!("someone-else");
    let mut issuer = good.clone();
    issuer["iss"] = serde_json::json!("mallory");
    let mut no_tenant = good.clone();
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let mut other_role = good.clone();
    other_role["role"] = serde_json::json!("postgres");
    let mut bad_tenant = good.clone();
    bad_tenant["tenant_id"] = serde_json::json!("ac'me");
    for (case, password, code) in [
        ("expired", token(&key, expired), "28P01"),
        ("not yet valid", token(&key, early), "28P01"),
        ("wrong audience", token(&key, audience), "28P01"),
        ("wrong issuer", token(&key, issuer), "28P01"),
        ("wrongly signed", token(&other_key, good.clone()), "28P01"),
        ("no tenant claim", token(&key, no_tenant), "28P01"),
        ("invalid tenant", token(&key, bad_tenant), "28000"),
        ("role not allowed", token(&key, other_role), "28P01"),
        ("not a token", "secret".to_owned(), "28P01"),
    ] {
        let e = connect(sidecar.addr, "web", &password, &name)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some(code), "{case}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
