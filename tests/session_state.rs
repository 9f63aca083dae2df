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
    let current: String = a
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, name, "RESET ROLE");
    // DISCARD ALL, DEALLOCATE ALL and RESET ALL act on their client only.
    b.batch_execute("SET work_mem = '3MB'; PREPARE keep AS SELECT 1")
        .await
        .unwrap();
    let kept = b.prepare("SELECT 2").await.unwrap();
    for reset in ["DISCARD ALL", "DEALLOCATE ALL", "RESET ALL"] {
        a.batch_execute("SET work_mem = '5MB'").await.unwrap();
        a.batch_execute(reset).await.unwrap();
        assert_eq!(
            show(&a, "work_mem").await,
            if reset == "DEALLOCATE ALL" {
                "5MB"
            } else {
                "4MB"
            },
            "{reset}"
        );
        assert_eq!(show(&b, "work_mem").await, "3MB", "{reset} reached b");
        b.simple_query("EXECUTE keep").await.unwrap();
        b.query(&kept, &[]).await.unwrap();
    }
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

async fn one_int(client: &tokio_postgres::Client, sql: &str) -> Result<i32, tokio_postgres::Error> {
    let rows = client.simple_query(sql).await?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    Ok(row.get(0).unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_survive_transactions_and_stay_private() {
    let name = fresh_user("sqlprep");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let a = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let b = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // The same name in two clients, on one server connection.
    a.batch_execute("PREPARE q(int) AS SELECT $1 + 1")
        .await
        .unwrap();
    b.batch_execute("PREPARE q(int) AS SELECT $1 * 100")
        .await
        .unwrap();
    assert_eq!(one_int(&a, "EXECUTE q(1)").await.unwrap(), 2);
    assert_eq!(one_int(&b, "EXECUTE q(1)").await.unwrap(), 100);
    // Through the extended protocol, inside a transaction, and inside EXPLAIN.
    let row = a.query_one("EXECUTE q(41)", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    a.batch_execute("BEGIN; PREPARE t AS SELECT 5; COMMIT")
        .await
        .unwrap();
    assert_eq!(one_int(&a, "EXECUTE t").await.unwrap(), 5);
    b.simple_query("EXPLAIN EXECUTE q(3)").await.unwrap();
    // A client cannot run another's statement.
    let e = b.simple_query("EXECUTE t").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    // A duplicate PREPARE fails as in Postgres; a failed PREPARE leaves nothing.
    let e = a
        .batch_execute("PREPARE q(int) AS SELECT 0")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P05"));
    assert_eq!(one_int(&a, "EXECUTE q(2)").await.unwrap(), 3);
    for _ in 0..3 {
        // The failed duplicate changed nothing, on this connection or the next.
        b.simple_query("SELECT 1").await.unwrap();
        assert_eq!(one_int(&a, "EXECUTE q(2)").await.unwrap(), 3);
    }
    // In one query, in order: the old statement goes, the new one comes.
    a.batch_execute("DEALLOCATE q; PREPARE q(int) AS SELECT $1 + 10")
        .await
        .unwrap();
    assert_eq!(one_int(&a, "EXECUTE q(1)").await.unwrap(), 11);
    let e = a.batch_execute("PREPARE bad AS SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42601"));
    let e = a.simple_query("EXECUTE bad").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    // DEALLOCATE and DEALLOCATE ALL affect only their client.
    a.batch_execute("DEALLOCATE q").await.unwrap();
    let e = a.simple_query("EXECUTE q(1)").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    assert_eq!(one_int(&b, "EXECUTE q(2)").await.unwrap(), 200);
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let e = a.simple_query("EXECUTE t").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    assert_eq!(one_int(&b, "EXECUTE q(3)").await.unwrap(), 300);
    // Followed, never discarded: one connection, no resets.
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(&text, "pgsidecar_server_connects_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "pgsidecar_server_resets_total"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_temp_tables_and_hold_cursors_pin_their_client() {
    let name = fresh_user("pin");
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"300ms\"")).await;
    let a = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let b = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // The sidecar learns what pins a client just after the client's reply: wait for it.
    let pinned = |want: f64| async move {
        let mut seen = -1.0;
        for _ in 0..100 {
            let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
            seen = metric(&text, "pgsidecar_clients_pinned").unwrap();
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    for (take, use_it, give_back) in [
        (
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_advisory_unlock(42)::int - 1",
            "SELECT pg_advisory_unlock_all()",
        ),
        (
            "CREATE TEMP TABLE scratch AS SELECT 0 AS x",
            "SELECT x FROM scratch",
            "DROP TABLE scratch",
        ),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 0",
            "FETCH c",
            "CLOSE c",
        ),
    ] {
        a.batch_execute(take).await.unwrap();
        assert_eq!(pinned(1.0).await, 1.0, "{take}");
        // a keeps its server connection: b cannot get one.
        let e = b.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{take}");
        // a's later transactions see what it holds.
        a.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        if take.starts_with("SELECT pg_advisory_lock") {
            // Unlocking once succeeds (the lock was held): 1 - 1 = 0; relock for the release.
            assert_eq!(one_int(&a, use_it).await.unwrap(), 0);
            a.batch_execute(take).await.unwrap();
        } else {
            assert_eq!(one_int(&a, use_it).await.unwrap(), 0, "{use_it}");
        }
        a.batch_execute(give_back).await.unwrap();
        assert_eq!(pinned(0.0).await, 0.0, "{give_back}");
        assert_eq!(one_int(&b, "SELECT 1").await.unwrap(), 1, "{give_back}");
    }
    // A pinned client that leaves gets its connection reset, not reused dirty.
    a.batch_execute("SELECT pg_advisory_lock(7)").await.unwrap();
    drop(a);
    let mut free = false;
    for _ in 0..50 {
        if let Ok(v) = one_int(&b, "SELECT pg_try_advisory_xact_lock(7)::int").await {
            free = v == 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        free,
        "the advisory lock of a client that left was not released"
    );
    assert_eq!(pinned(0.0).await, 0.0);
}

fn status(conn: &pgsidecar::pool::ServerConn, name: &str) -> String {
    conn.params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_and_parameter_status_stay_with_their_client() {
    let name = fresh_user("status");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let params = [("application_name", "web"), ("options", "-c work_mem=5MB")];
    let mut a = raw_connect(sidecar.addr, &name, PASSWORD, &name, &params)
        .await
        .unwrap();
    let mut b = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    assert_eq!(status(&a, "application_name"), "web");
    assert_eq!(status(&b, "application_name"), "");
    a.run_internal("SET application_name = 'x'").await.unwrap();
    assert_eq!(status(&a, "application_name"), "x");
    // b runs on the same server connection and is told nothing of a's name.
    b.run_internal("SET DateStyle = 'German'").await.unwrap();
    assert_eq!(status(&b, "application_name"), "");
    assert_eq!(status(&b, "DateStyle"), "German, DMY");
    a.run_internal("SELECT 1").await.unwrap();
    assert_eq!(status(&a, "application_name"), "x");
    assert_eq!(status(&a, "DateStyle"), "ISO, MDY");
    b.run_internal("SELECT 1").await.unwrap();
    assert_eq!(status(&b, "DateStyle"), "German, DMY");
    // RESET goes back to the startup value, as in Postgres (the client hears of it by its
    // next transaction at the latest).
    a.run_internal("RESET application_name").await.unwrap();
    b.run_internal("SELECT 1").await.unwrap();
    a.run_internal("SELECT 1").await.unwrap();
    assert_eq!(status(&a, "application_name"), "web");
    // Startup options stay the client's.
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(sidecar.addr.port())
        .user(&name)
        .password(PASSWORD)
        .dbname(&name)
        .options("-c work_mem=5MB")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    b.run_internal("SET work_mem = '9MB'").await.unwrap();
    assert_eq!(show(&c, "work_mem").await, "5MB");
    c.batch_execute("SET work_mem = '6MB'").await.unwrap();
    b.run_internal("SELECT 1").await.unwrap();
    assert_eq!(show(&c, "work_mem").await, "6MB");
    c.batch_execute("RESET work_mem").await.unwrap();
    b.run_internal("SELECT 1").await.unwrap();
    assert_eq!(show(&c, "work_mem").await, "5MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_keeps_delivering_across_transactions() {
    let name = fresh_user("listen");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let (a, mut inbox) = listening_client(sidecar.addr, &name, &name).await;
    let mut b = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let b_pid = b.key.process_id;
    a.batch_execute("LISTEN Jobs").await.unwrap();
    // a's server connection went back to the pool; b sends on that very connection.
    b.run_internal("NOTIFY jobs, 'one'").await.unwrap();
    let n = next(&mut inbox).await.expect("notification after LISTEN");
    assert_eq!((n.channel(), n.payload()), ("jobs", "one"));
    assert_eq!(
        n.process_id(),
        b_pid,
        "the sender's PID is the one the sidecar issued to b"
    );
    b.run_internal("SELECT pg_notify('jobs', 'two')")
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.unwrap().payload(), "two");
    // The extended protocol, and quoted names.
    a.execute("LISTEN \"Other\"", &[]).await.unwrap();
    b.run_internal("NOTIFY \"Other\", 'three'").await.unwrap();
    assert_eq!(next(&mut inbox).await.unwrap().payload(), "three");
    // A LISTEN rolled back does not listen; one committed does.
    a.batch_execute("BEGIN; LISTEN later; ROLLBACK")
        .await
        .unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    b.run_internal("NOTIFY later, 'no'").await.unwrap();
    none_within(&mut inbox).await;
    a.batch_execute("BEGIN; LISTEN later; COMMIT")
        .await
        .unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    b.run_internal("NOTIFY later, 'yes'").await.unwrap();
    assert_eq!(next(&mut inbox).await.unwrap().payload(), "yes");
    // UNLISTEN is respected; other channels keep working.
    a.batch_execute("UNLISTEN jobs").await.unwrap();
    b.run_internal("NOTIFY jobs, 'gone'").await.unwrap();
    b.run_internal("NOTIFY later, 'still'").await.unwrap();
    assert_eq!(next(&mut inbox).await.unwrap().payload(), "still");
    a.batch_execute("UNLISTEN *").await.unwrap();
    b.run_internal("NOTIFY later, 'none'").await.unwrap();
    none_within(&mut inbox).await;
    // A client's own notifications carry a PID that is not b's.
    a.batch_execute("LISTEN mine; NOTIFY mine, 'self'")
        .await
        .unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    let own = next(&mut inbox).await.expect("own notification");
    assert_eq!(own.payload(), "self");
    assert_ne!(own.process_id(), b_pid);
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        metric(&text, "pgsidecar_notifications_delivered_total").unwrap() >= 4.0,
        "{text}"
    );
}
