//! Transaction and session pooling against a real PostgreSQL: queries through tokio-postgres,
//! the pool-size bound under 500 clients, disconnects mid-transaction, pool exhaustion (53300),
//! ParameterStatus and startup parameters, metrics and health endpoints.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_transactions_and_errors() {
    let name = fresh_user("queries");
    let sidecar = start(&base_toml(&name, "size = 2")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();

    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')",
        )
        .await
        .unwrap();
    // Simple protocol.
    let rows = client
        .simple_query("SELECT v FROM t WHERE id = 1")
        .await
        .unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("one"));
    // Extended protocol with the unnamed statement: Parse/Bind/Execute/Sync in one batch.
    let rows = client
        .query_typed(
            "SELECT v FROM t WHERE id = $1",
            &[(&1i32, tokio_postgres::types::Type::INT4)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "one");

    // A named statement prepared and executed inside one transaction.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let stmt = tx.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    tx.execute(&stmt, &[&2i32, &"two"]).await.unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    tx.commit().await.unwrap();

    // An error aborts the transaction; later statements fail with 25P02 until ROLLBACK.
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute("INSERT INTO t VALUES (1, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"));
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"));
    client.batch_execute("ROLLBACK").await.unwrap();
    // And the session keeps working, on whichever server connection.
    let rows = client
        .query_typed("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    // An error outside a transaction leaves the connection usable.
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_share_ten_server_connections() {
    let name = fresh_user("crowd");
    let sidecar = start(&base_toml(&name, "size = 10\ncheckout_timeout = \"60s\"")).await;
    let admin = connect_direct_superuser("postgres").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (done, name) = (done.clone(), name.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                max = max.max(backends_of(&admin, &name).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max.max(backends_of(&admin, &name).await)
        })
    };
    let mut tasks = Vec::new();
    for i in 0..500i32 {
        let name = name.clone();
        let addr = sidecar.addr;
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, &name, PASSWORD, &name).await?;
            let mut sum = 0i64;
            for j in 0..3i32 {
                let row = client
                    .query_typed(
                        "SELECT $1::int8 + $2::int8, pg_sleep(0.002)",
                        &[
                            (&(i as i64), tokio_postgres::types::Type::INT8),
                            (&(j as i64), tokio_postgres::types::Type::INT8),
                        ],
                    )
                    .await?;
                sum += row[0].get::<_, i64>(0);
            }
            client.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
            Ok::<i64, tokio_postgres::Error>(sum)
        }));
    }
    let mut completed = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let sum = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i} failed: {e:?}"));
        assert_eq!(sum, 3 * i as i64 + 3);
        completed += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let max = monitor.await.unwrap();
    assert_eq!(completed, 500);
    assert!(max <= 10, "saw {max} backends for a pool of 10");
    assert!(max >= 1, "the monitor saw no backend at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_and_session_mode_pins() {
    let name = fresh_user("modes");
    // Transaction mode with one server connection: two clients see the same backend.
    let tx_sidecar = start(&base_toml(&name, "size = 1")).await;
    let a = connect(tx_sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap();
    let b = connect(tx_sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap();
    let pid_a: i32 = a.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    let pid_b: i32 = b.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_eq!(pid_a, pid_b);

    // Session mode: each client keeps its own backend and its session state.
    let s_sidecar = start(&base_toml(
        &name,
        "size = 2\nmode = \"session\"\ncheckout_timeout = \"300ms\"",
    ))
    .await;
    let c = connect(s_sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap();
    let d = connect(s_sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap();
    c.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let pid_c1: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pid_d: i32 = d
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pid_c2: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_c1, pid_c2);
    assert_ne!(pid_c1, pid_d);
    let wm: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "7MB");
    // Named prepared statements across transactions work in session mode.
    let stmt = c.prepare("SELECT $1::int + 1").await.unwrap();
    for i in 0..3 {
        let v: i32 = c.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
    // A third client waits for a server connection and times out with 53300.
    let e = connect(s_sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap();
    let err = e.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    // When a session client leaves, its server connection is reset (DISCARD ALL) and reused.
    drop(c);
    let wm: String = e.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB", "session state must not leak to the next client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transaction_leaves_nothing_open() {
    let name = fresh_user("vanish");
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"5s\"")).await;
    let admin = connect_direct_superuser(&name).await;
    let setup = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    setup
        .batch_execute("CREATE TABLE v (id int)")
        .await
        .unwrap();

    for case in ["simple", "copy", "pipeline"] {
        let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO v VALUES (1)")
            .await
            .unwrap();
        match case {
            "copy" => {
                // Leave in the middle of COPY FROM STDIN.
                let sink = client
                    .copy_in::<_, bytes::Bytes>("COPY v FROM STDIN")
                    .await
                    .unwrap();
                drop(sink);
            }
            "pipeline" => {
                // Leave while a statement is still running.
                let query = client.batch_execute("SELECT pg_sleep(0.3)");
                let _ = tokio::time::timeout(Duration::from_millis(50), query).await;
            }
            _ => {}
        }
        drop(client);
        // The single server connection must come back clean: the next client can use it and
        // no row of the abandoned transaction is visible.
        let next = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
        let n: i64 = next
            .query_typed("SELECT count(*) FROM v", &[])
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"))[0]
            .get(0);
        assert_eq!(n, 0, "{case}: abandoned transaction must be rolled back");
        let status: String = next
            .query_typed(
                "SELECT state FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()[0]
            .get(0);
        assert_eq!(status, "active");
        let open = open_transactions_of(&admin, &name).await;
        assert_eq!(open, 0, "{case}: no transaction may stay open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_answers_53300_and_client_can_retry() {
    let name = fresh_user("exhaust");
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"300ms\"")).await;
    let holder = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let waiter = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("pool is exhausted"),
        "{}",
        db.message()
    );
    // Extended protocol gets the same answer, and the connection stays in sync.
    let err = waiter.query_typed("SELECT 2", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));

    holder.batch_execute("COMMIT").await.unwrap();
    let v: i32 = waiter.query_typed("SELECT 3", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 3);

    // The wait queue is bounded too: past max_waiting, 53300 comes at once.
    let bounded = start(&base_toml(
        &name,
        "size = 1
checkout_timeout = \"30s\"\nmax_waiting = 1",
    ))
    .await;
    let holder = connect(bounded.addr, &name, PASSWORD, &name).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let queued = connect(bounded.addr, &name, PASSWORD, &name).await.unwrap();
    let queued = tokio::spawn(async move { queued.batch_execute("SELECT 1").await });
    until_metric(bounded.metrics_addr, "pgsidecar_clients_waiting", 1.0).await;
    let extra = connect(bounded.addr, &name, PASSWORD, &name).await.unwrap();
    let started = std::time::Instant::now();
    let err = extra.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused without waiting 30 s"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    queued
        .await
        .unwrap()
        .expect("the queued request ran once the connection was free");
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        metric(&metrics, "pgsidecar_errors_total{kind=\"pool_timeout\"}").unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_upstream_parameters_and_carry_startup_settings() {
    let name = fresh_user("params");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let direct = raw_connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], pg().port)),
        &name,
        PASSWORD,
        &name,
        &[],
    )
    .await
    .unwrap();
    let params = [
        ("extra_float_digits", "3"),
        ("application_name", "harness app"),
        ("DateStyle", "SQL, DMY"),
        (
            "options",
            "-c search_path=public,pg_catalog -c statement_timeout=12345",
        ),
    ];
    let mut proxied = raw_connect(sidecar.addr, &name, PASSWORD, &name, &params)
        .await
        .unwrap();
    let get = |list: &Vec<(String, String)>, key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    for key in [
        "server_version",
        "server_encoding",
        "client_encoding",
        "integer_datetimes",
        "standard_conforming_strings",
        "TimeZone",
        "IntervalStyle",
        "is_superuser",
    ] {
        assert_eq!(get(&proxied.params, key), get(&direct.params, key), "{key}");
        assert!(get(&proxied.params, key).is_some(), "{key} missing");
    }
    assert_eq!(
        get(&proxied.params, "application_name").as_deref(),
        Some("harness app")
    );
    assert_eq!(
        get(&proxied.params, "DateStyle").as_deref(),
        Some("SQL, DMY")
    );
    // The key the client got was issued by the sidecar, not the server's.
    assert_ne!(proxied.key, direct.key);
    proxied.run_internal("SELECT 1").await.unwrap();

    // Another client without those settings shares the one server connection but sees defaults,
    // and the first client still sees its own settings afterwards.
    let plain = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let edf: String = plain
        .query_typed("SHOW extra_float_digits", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(edf, "1");
    let client = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(sidecar.addr.port())
        .user(&name)
        .password(PASSWORD)
        .dbname(&name)
        .application_name("second app")
        .options("-c extra_float_digits=2 -c search_path=pg_catalog,public")
        .connect(tokio_postgres::NoTls)
        .await;
    let (with_opts, conn) = client.unwrap();
    tokio::spawn(conn);
    let row = &with_opts
        .query_typed(
            "SELECT current_setting('extra_float_digits'), current_setting('search_path'), current_setting('application_name')",
            &[],
        )
        .await
        .unwrap()[0];
    assert_eq!(row.get::<_, String>(0), "2");
    // As Postgres itself stores a startup-packet value: verbatim.
    assert_eq!(row.get::<_, String>(1), "pg_catalog,public");
    assert_eq!(row.get::<_, String>(2), "second app");
    let edf: String = plain
        .query_typed("SHOW extra_float_digits", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(edf, "1");

    // An invalid startup setting is refused the way Postgres refuses it.
    let err = raw_connect(
        sidecar.addr,
        &name,
        PASSWORD,
        &name,
        &[("DateStyle", "nonsense")],
    )
    .await
    .err()
    .expect("invalid DateStyle is refused");
    assert!(
        matches!(&err, pgsidecar::pool::ServerError::Upstream { code, .. } if code == "22023"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let name = fresh_user("metrics");
    let sidecar = start(&base_toml(&name, "size = 3")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    client.query_typed("SELECT 1", &[]).await.unwrap();
    // The server connection goes back to the pool just after the client got its reply.
    until_metric(
        sidecar.metrics_addr,
        "pgsidecar_server_connections{state=\"idle\"}",
        1.0,
    )
    .await;

    let (status, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "pgsidecar_client_connections"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "pgsidecar_server_connections{state=\"idle\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "pgsidecar_server_connections{state=\"active\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(metric(&text, "pgsidecar_queries_total").unwrap() >= 2.0);
    assert!(metric(&text, "pgsidecar_transactions_total").unwrap() >= 2.0);
    assert!(metric(&text, "pgsidecar_query_duration_seconds_count").unwrap() >= 2.0);
    assert!(metric(&text, "pgsidecar_checkout_wait_seconds_count").unwrap() >= 2.0);
    assert!(metric(&text, "pgsidecar_client_bytes_received_total").unwrap() > 0.0);
    assert!(metric(&text, "pgsidecar_client_bytes_sent_total").unwrap() > 0.0);
    // Both statements ("SELECT 1" simple, then extended) share one shape: one miss, one hit.
    assert_eq!(
        metric(
            &text,
            "pgsidecar_statements_classified_total{outcome=\"miss\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "pgsidecar_statements_classified_total{outcome=\"hit\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "pgsidecar_upstream_up{database=\"".to_owned().as_str()
        ),
        None
    );

    assert_eq!(http_get(sidecar.metrics_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(sidecar.metrics_addr, "/readyz").await.0, 200);
    assert_eq!(
        http_get(sidecar.metrics_addr, "/readyz?upstream=1").await.0,
        200
    );
    assert_eq!(http_get(sidecar.metrics_addr, "/nope").await.0, 404);

    // An unreachable upstream makes only the upstream variant unready.
    let port = pgsidecar::localpg::free_port().unwrap();
    let dead =
        base_toml(&name, "size = 1").replace(&format!(":{}/", pg().port), &format!(":{port}/"));
    let dead = start(&dead).await;
    assert_eq!(http_get(dead.metrics_addr, "/readyz").await.0, 200);
    assert_eq!(
        http_get(dead.metrics_addr, "/readyz?upstream=1").await.0,
        503
    );

    // Draining: readiness fails, idle clients are told 57P01.
    let app = sidecar.app.clone();
    let drain = tokio::spawn(async move { app.drain().await });
    let mut ready = 200;
    for _ in 0..500 {
        ready = http_get(sidecar.metrics_addr, "/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503);
    assert!(client.batch_execute("SELECT 1").await.is_err());
    drain.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pipeline_with_large_replies_does_not_deadlock() {
    let name = fresh_user("pipeline");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection: the sidecar must keep
    // reading the server's large replies while it is still writing the later requests.
    let payload = "y".repeat(40000);
    let queries = (0..3000).map(|i| {
        let (client, payload) = (&client, &payload);
        async move {
            let rows = client
                .query_typed(
                    "SELECT $1::int, $2::text",
                    &[
                        (&i, tokio_postgres::types::Type::INT4),
                        (payload, tokio_postgres::types::Type::TEXT),
                    ],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((
                rows[0].get::<_, i32>(0),
                rows[0].get::<_, String>(1).len(),
            ))
        }
    });
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(queries),
    )
    .await
    .expect("the pipeline completes");
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (i as i32, 40000));
    }
}
