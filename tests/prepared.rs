//! Prepared statements in transaction pooling: named statements (driver-generated names that
//! collide across clients), re-preparation on whichever server connection serves the next
//! transaction, the unnamed statement across server hops, failed Parse, Close, DISCARD ALL,
//! and `pgbench -M prepared` with more clients than server connections.

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_work_across_server_connections_and_clients() {
    let name = fresh_user("prep");
    let sidecar = start(&base_toml(&name, "size = 2\ncheckout_timeout = \"30s\"")).await;
    let mut tasks = Vec::new();
    for client_no in 0..6i32 {
        let name = name.clone();
        let addr = sidecar.addr;
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, &name, PASSWORD, &name).await.unwrap();
            // tokio-postgres names these s0, s1, … in every client: same names, different SQL.
            let mul = client.prepare("SELECT $1::int * $2::int").await.unwrap();
            let own = client
                .prepare(&format!("SELECT $1::int + {client_no}"))
                .await
                .unwrap();
            for i in 0..40i32 {
                let product: i32 = client.query_one(&mul, &[&i, &3]).await.unwrap().get(0);
                assert_eq!(product, i * 3);
                let sum: i32 = client.query_one(&own, &[&i]).await.unwrap().get(0);
                assert_eq!(
                    sum,
                    i + client_no,
                    "client {client_no} ran another client's statement"
                );
                if i % 10 == 0 {
                    // A transaction in between, so statements hop between server connections.
                    client
                        .batch_execute("BEGIN; SELECT pg_sleep(0.001); COMMIT")
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // On the server, statements carry proxy-wide names, never the drivers' s0, s1, ….
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let stmt = client
        .prepare("SELECT name FROM pg_prepared_statements ORDER BY 1")
        .await
        .unwrap();
    let names: Vec<String> = client
        .query(&stmt, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n.starts_with("pgsc_")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_parse_and_closed_statements_behave_as_in_postgres() {
    let name = fresh_user("prepfail");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let err = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let ok = client.prepare("SELECT 1").await.unwrap();
    let v: i32 = client.query_one(&ok, &[]).await.unwrap().get(0);
    assert_eq!(v, 1);

    // Raw protocol: Parse "a", Close "a", then Bind "a" fails with 26000.
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    frontend::parse("a", "SELECT 2", [], &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::close(b'S', "a", &mut out).unwrap();
    frontend::sync(&mut out);
    raw.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut raw, 2).await;
    assert_eq!(tags(&replies), "1Z3Z");
    let mut out = BytesMut::new();
    bind_execute(&mut out, "a");
    raw.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut raw, 1).await;
    assert_eq!(
        error_code(&replies).as_deref(),
        Some("26000"),
        "{}",
        tags(&replies)
    );

    // DISCARD ALL drops the client's statements, as in Postgres.
    let stmt = client.prepare("SELECT 3").await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    let err = client.query_one(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_follows_its_client() {
    let name = fresh_user("unnamed");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let mut x = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut y = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    // X prepares the unnamed statement (like libpq's PQprepare with ""), in its own batch.
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT 42", [], &mut out).unwrap();
    frontend::describe(b'S', "", &mut out).unwrap();
    frontend::sync(&mut out);
    x.write_all(&out).await.unwrap();
    assert_eq!(tags(&read_until_ready(&mut x, 1).await), "1tTZ");
    // Y overwrites the unnamed statement on the one server connection.
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT 7", [], &mut out).unwrap();
    bind_execute(&mut out, "");
    y.write_all(&out).await.unwrap();
    assert_eq!(tags(&read_until_ready(&mut y, 1).await), "12DCZ");
    // X's Bind "" still runs X's statement.
    let mut out = BytesMut::new();
    bind_execute(&mut out, "");
    x.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut x, 1).await;
    assert_eq!(tags(&replies), "2DCZ");
    assert!(replies
        .iter()
        .any(|(t, body)| *t == b'D' && body.ends_with(b"42")));
    // A client that never prepared an unnamed statement cannot run another client's.
    let mut z = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    bind_execute(&mut out, "");
    z.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut z, 1).await;
    assert_eq!(
        error_code(&replies).as_deref(),
        Some("26000"),
        "{}",
        tags(&replies)
    );
    // Nor guess another client's proxy-wide statement name.
    let mut out = BytesMut::new();
    frontend::parse("mine", "SELECT 99", [], &mut out).unwrap();
    frontend::sync(&mut out);
    x.write_all(&out).await.unwrap();
    read_until_ready(&mut x, 1).await;
    let proxy = pgsidecar::session::statements::proxy_name(b"SELECT 99\0\0\0");
    let proxy = String::from_utf8(proxy.to_vec()).unwrap();
    let mut out = BytesMut::new();
    bind_execute(&mut out, &proxy);
    z.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut z, 1).await;
    assert_eq!(
        error_code(&replies).as_deref(),
        Some("26000"),
        "{}",
        tags(&replies)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_more_clients_than_servers() {
    let name = fresh_user("benchprep");
    let sidecar = start(&base_toml(&name, "size = 3\ncheckout_timeout = \"30s\"")).await;
    // One thread per client: pgbench prepares synchronously, so a thread shared by several
    // clients would block on one client's Parse while its other clients hold every server
    // connection in their transactions (the same happens with any transaction pooler).
    let args = ["-c", "8", "-j", "8", "-t", "30", "-M", "prepared"];
    pgbench(sidecar.addr.port(), &name, true, &args, 240).await;
}
