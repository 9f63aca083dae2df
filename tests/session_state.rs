//! Session state in transaction pooling, on one server connection shared by interleaving
//! clients: session settings (SET, set_config, RESET, transactions that commit or roll back,
//! failed SETs, SET LOCAL, DO blocks, SET ROLE, startup options) stay with their client and
//! never reach another; ParameterStatus stays consistent; SQL PREPARE / EXECUTE / DEALLOCATE
//! survive transactions; advisory locks, temporary tables and WITH HOLD cursors pin a client
//! to its server connection until released.

mod support;

use std::time::Duration;

use support::*;

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one("SELECT current_setting($1, true)", &[&setting])
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_their_client_and_never_reach_another() {
    let name = fresh_user("settings");
    pg().psql(
        &name,
        &format!("CREATE ROLE {name}_reader; GRANT {name}_reader TO {name}"),
    )
    .unwrap();
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let a = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let b = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let both = |expect_a: &'static str, setting: &'static str, step: &'static str| {
        let (a, b) = (&a, &b);
        async move {
            // One server connection: b always runs on the connection a just used.
            assert_eq!(
                show(b, setting).await,
                default_of(setting),
                "{step}: leaked to b"
            );
            assert_eq!(
                show(a, setting).await,
                expect_a,
                "{step}: a lost its setting"
            );
        }
    };
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    both("7MB", "work_mem", "SET").await;
    a.batch_execute("SELECT set_config('work_mem', '6MB', false)")
        .await
        .unwrap();
    both("6MB", "work_mem", "set_config").await;
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .unwrap();
    both("6MB", "work_mem", "SET rolled back").await;
    a.batch_execute("BEGIN; SET work_mem = '8MB'; COMMIT")
        .await
        .unwrap();
    both("8MB", "work_mem", "SET committed").await;
    a.batch_execute("BEGIN; SAVEPOINT s; SET work_mem = '10MB'; ROLLBACK TO s; COMMIT")
        .await
        .unwrap();
    both("8MB", "work_mem", "ROLLBACK TO SAVEPOINT").await;
    let e = a.batch_execute("SET work_mem = 'lots'").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"));
    both("8MB", "work_mem", "failed SET").await;
    a.batch_execute(
        "BEGIN; SET LOCAL work_mem = '11MB'; SELECT set_config('work_mem', '12MB', true); COMMIT",
    )
    .await
    .unwrap();
    both("8MB", "work_mem", "SET LOCAL").await;
    a.batch_execute("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; COMMIT")
        .await
        .unwrap();
    both("read committed", "transaction_isolation", "SET TRANSACTION").await;
    a.batch_execute("DO $$ BEGIN PERFORM set_config('statement_timeout', '5s', false); END $$")
        .await
        .unwrap();
    both("5s", "statement_timeout", "set_config in a DO block").await;
    a.batch_execute("SET search_path = pg_catalog, public")
        .await
        .unwrap();
    both("pg_catalog, public", "search_path", "list-valued SET").await;
    a.batch_execute("RESET work_mem").await.unwrap();
    both("4MB", "work_mem", "RESET").await;
    a.batch_execute("SET statement_timeout TO DEFAULT")
        .await
        .unwrap();
    both("0", "statement_timeout", "SET TO DEFAULT").await;
    a.batch_execute(&format!("SET ROLE {name}_reader"))
        .await
        .unwrap();
    let current: String = a
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, format!("{name}_reader"));
    let current: String = b
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, name, "SET ROLE leaked to b");
    let current: String = a
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, format!("{name}_reader"), "a lost its role");
    a.batch_execute("RESET ALL; RESET ROLE").await.unwrap();
    both("\"$user\", public", "search_path", "RESET ALL").await;
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    // Followed by capture, never by discarding the connection.
    assert_eq!(
        metric(&text, "pgsidecar_server_resets_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "pgsidecar_server_connects_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "pgsidecar_session_captures_total").unwrap() >= 12.0,
        "{text}"
    );
}

fn default_of(setting: &str) -> &'static str {
    match setting {
        "work_mem" => "4MB",
        "transaction_isolation" => "read committed",
        "statement_timeout" => "0",
        "search_path" => "\"$user\", public",
        _ => "",
    }
}
