//! What a client can tell about its connection, compared with a direct one: ParameterStatus
//! values that describe its own session, its own notifications before its ReadyForQuery, SQL
//! `DEALLOCATE` / `EXECUTE` of protocol-level statements, `pg_cancel_backend` /
//! `pg_terminate_backend` of the PIDs the sidecar issued, and shared statements after a
//! rolled-back type. Each in both pool modes where the modes differ.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use pgsidecar::pool::ServerConn;
use support::*;

fn toml(name: &str, mode: &str) -> String {
    base_toml(name, &format!("mode = \"{mode}\"\nsize = 1"))
}

async fn raw(addr: std::net::SocketAddr, name: &str, params: &[(&str, &str)]) -> ServerConn {
    raw_connect(addr, name, PASSWORD, name, params)
        .await
        .unwrap()
}

/// Sends one simple Query and reads its replies up to the ReadyForQuery.
async fn query(conn: &mut ServerConn, sql: &str) -> Vec<(u8, Vec<u8>)> {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
    conn.write_all(&out).await.unwrap();
    read_until_ready(conn, 1).await
}

fn parameter(conn: &ServerConn, name: &str) -> Option<String> {
    conn.params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notifications_arrive_before_the_ready_for_query() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("own_notify");
        let sidecar = start(&toml(&name, mode)).await;
        let mut conn = raw(sidecar.addr, &name, &[]).await;
        assert_eq!(tags(&query(&mut conn, "LISTEN jobs").await), "CZ");
        for i in 0..50 {
            let sql = if i % 2 == 0 {
                format!("NOTIFY jobs, '{i}'")
            } else {
                format!("BEGIN; SELECT pg_notify('jobs', '{i}'); COMMIT")
            };
            let replies = query(&mut conn, &sql).await;
            let tags = tags(&replies);
            assert!(tags.ends_with("AZ"), "{mode} {i}: {tags}");
        }
        // A rolled-back NOTIFY delivers nothing, as in Postgres.
        let replies = query(&mut conn, "BEGIN; NOTIFY jobs, 'no'; ROLLBACK").await;
        assert!(!tags(&replies).contains('A'), "{mode}: {}", tags(&replies));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_describes_the_clients_own_session() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("encoding");
        let sidecar = start(&toml(&name, mode)).await;
        for _ in 0..2 {
            let mut a = raw(sidecar.addr, &name, &[("client_encoding", "UTF8")]).await;
            let replies = query(&mut a, "SET client_encoding TO latin9").await;
            assert!(tags(&replies).contains('S'), "{mode}: {}", tags(&replies));
            query(&mut a, "SELECT 1").await;
            drop(a);
        }
        // Each new client with its own startup combination hears its own encoding.
        for (i, params) in [
            vec![("client_encoding", "UTF8")],
            vec![("client_encoding", "UTF8"), ("application_name", "b")],
            vec![("application_name", "c")],
        ]
        .iter()
        .enumerate()
        {
            let mut b = raw(sidecar.addr, &name, params).await;
            assert_eq!(
                parameter(&b, "client_encoding").as_deref(),
                Some("UTF8"),
                "{mode} client {i}"
            );
            let replies = query(&mut b, "SHOW client_encoding").await;
            let row = replies.iter().find(|(t, _)| *t == b'D').unwrap();
            assert!(row.1.ends_with(b"UTF8"), "{mode} client {i}: {:?}", row.1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_ordering_survives_a_slow_listener_connection_loss() {
    // The barrier must not hang a client when the LISTEN connection is gone: the request is
    // answered within the barrier's bound.
    let name = fresh_user("notify_lost");
    let sidecar = start(&toml(&name, "transaction")).await;
    let mut conn = raw(sidecar.addr, &name, &[]).await;
    query(&mut conn, "LISTEN jobs").await;
    let admin = connect_direct_superuser(&name).await;
    // The LISTEN connection, and the pooled connection that ran the client's LISTEN when it
    // has not run the sidecar's clean-up (`UNLISTEN *`) yet, which can happen. The test
    // waits until those backends are gone (pg_terminate_backend only signals) and the sidecar
    // has closed its end of each: the kernel has a close before the sidecar's reactor has seen
    // it, and a pooled connection that still looks alive when the NOTIFY is checked out would
    // die under it, which ends the session (a lost primary does) — a different test.
    let rows = admin
        .query(
            "SELECT pid, client_port FROM pg_stat_activity WHERE usename = $1 AND query LIKE 'LISTEN%'",
            &[&name],
        )
        .await
        .unwrap();
    let killed: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let ports: Vec<u16> = rows
        .iter()
        .map(|row| u16::try_from(row.get::<_, i32>(1)).expect("a TCP port"))
        .collect();
    assert!(!killed.is_empty());
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
            &[&killed],
        )
        .await
        .unwrap();
    until_positive(
        &admin,
        &format!(
            "SELECT (count(*) = 0)::int::bigint FROM pg_stat_activity WHERE pid = ANY('{{{}}}')",
            killed
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    until_closed_by_sidecar(&ports, pg().port).await;
    let replies = tokio::time::timeout(Duration::from_secs(10), query(&mut conn, "NOTIFY jobs"))
        .await
        .expect("answered");
    assert!(tags(&replies).ends_with('Z'), "{}", tags(&replies));
}

/// Reads from a raw connection until the sidecar closes it: (tag, body) of each message.
async fn replies_until_closed(conn: &mut ServerConn) -> Vec<(u8, Vec<u8>)> {
    let mut replies = Vec::new();
    loop {
        while let Ok(Some(frame)) = pgsidecar::protocol::frame::try_frame(&mut conn.rbuf, 1 << 20) {
            replies.push((frame.tag(), frame.body().to_vec()));
        }
        match tokio::time::timeout(Duration::from_secs(10), conn.read_more()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return replies,
            Err(_) => panic!("still open; got {}", tags(&replies)),
        }
    }
}

/// The SQLSTATEs of the errors a raw connection gets until the sidecar closes it.
async fn errors_until_closed(conn: &mut ServerConn) -> Vec<String> {
    replies_until_closed(conn)
        .await
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| pgsidecar::protocol::backend::ErrorFields::parse(body).code)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_of_issued_pids_act_on_the_sidecars_own_clients() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("signals");
        let sidecar = start(&base_toml(&name, &format!("mode = \"{mode}\"\nsize = 3"))).await;
        let mut a = raw(sidecar.addr, &name, &[]).await;
        let a_pid = a.key.process_id;
        assert!(a_pid > 1 << 22, "{a_pid} could be a real PID");
        let b = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();

        // Simple protocol, literal PID: the running query is cancelled.
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query("SELECT pg_sleep(60)", &mut out).unwrap();
        a.write_all(&out).await.unwrap();
        until_count(
            &name,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
        )
        .await;
        let rows = b
            .simple_query(&format!("SELECT pg_cancel_backend({a_pid})"))
            .await
            .unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
            panic!("{mode}: no row");
        };
        assert_eq!(row.get("pg_cancel_backend"), Some("t"), "{mode}");
        let replies = read_until_ready(&mut a, 1).await;
        assert_eq!(error_code(&replies).as_deref(), Some("57014"), "{mode}");
        assert_eq!(
            tags(&query(&mut a, "SELECT 1").await),
            "TDCZ",
            "{mode}: a goes on"
        );

        // Extended protocol, PID as a parameter: the session ends with 57P01.
        let ended: bool = b
            .query_one("SELECT pg_terminate_backend($1)", &[&a_pid])
            .await
            .unwrap()
            .get(0);
        assert!(ended, "{mode}");
        assert_eq!(errors_until_closed(&mut a).await, ["57P01"], "{mode}");

        // Gone, or never issued: false, and nothing happens.
        let again: bool = b
            .query_one("SELECT pg_terminate_backend($1)", &[&a_pid])
            .await
            .unwrap()
            .get(0);
        assert!(!again, "{mode}");
        let rows = b
            .simple_query("SELECT pg_catalog.pg_cancel_backend(2147483000) AS c")
            .await
            .unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
            panic!("{mode}: no row");
        };
        assert_eq!(row.get("c"), Some("f"), "{mode}");
        // A PID that is not the sidecar's reaches Postgres's own function.
        let real: bool = b
            .query_one("SELECT pg_cancel_backend($1)", &[&1i32])
            .await
            .unwrap()
            .get(0);
        assert!(!real, "{mode}: PID 1 is no backend");
        assert_eq!(
            b.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_signal_another_tenants_client() {
    let name = fresh_user("signal_tenant");
    install_tenancy_sql(&name);
    let sidecar = start(&(base_toml(&name, "size = 3") + TENANCY)).await;
    let acme_login = format!("{name}.acme");
    let mut acme = raw_connect(sidecar.addr, &acme_login, PASSWORD, &name, &[])
        .await
        .unwrap();
    let pid = acme.key.process_id;
    let globex = tenant_client(&sidecar, &name, "globex").await;
    for sql in [
        format!("SELECT pg_terminate_backend({pid})"),
        format!("SELECT pg_cancel_backend({pid})"),
    ] {
        let rows = globex.simple_query(&sql).await.unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
            panic!("no row for {sql}");
        };
        assert_eq!(row.get(0), Some("f"), "{sql}");
    }
    let by_param: bool = globex
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(!by_param);
    assert_eq!(tags(&query(&mut acme, "SELECT 1").await), "TDCZ");
    // Under enforcement a real backend's PID is not for tenants to signal.
    let real: bool = globex
        .query_one("SELECT pg_terminate_backend($1)", &[&1i32])
        .await
        .unwrap()
        .get(0);
    assert!(!real);
    // The same tenant may.
    let acme2 = tenant_client(&sidecar, &name, "acme").await;
    let ended: bool = acme2
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    assert_eq!(errors_until_closed(&mut acme).await, ["57P01"]);
}

/// Parse of a named statement with a Sync, its replies read.
async fn prepare(conn: &mut ServerConn, name: &str, sql: &str) {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::parse(name, sql, [], &mut out).unwrap();
    postgres_protocol::message::frontend::sync(&mut out);
    conn.write_all(&out).await.unwrap();
    assert_eq!(tags(&read_until_ready(conn, 1).await), "1Z");
}

/// The text of the first DataRow's first column.
fn first_value(replies: &[(u8, Vec<u8>)]) -> String {
    first_columns(replies).into_iter().next().expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_and_execute_reach_protocol_statements_even_pipelined() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("sql_names");
        let sidecar = start(&toml(&name, mode)).await;
        let mut conn = raw(sidecar.addr, &name, &[]).await;
        prepare(&mut conn, "_pg3_0", "SELECT $1::int * 10").await;
        prepare(&mut conn, "_pg3_1", "SELECT 7").await;

        // EXECUTE by the protocol-level name, alone and pipelined.
        assert_eq!(
            first_value(&query(&mut conn, "EXECUTE _pg3_0(4)").await),
            "40"
        );
        let mut out = BytesMut::new();
        for sql in [
            "SELECT pg_sleep(0.01)",
            "EXECUTE _pg3_0(5)",
            "DEALLOCATE _pg3_1",
            "DEALLOCATE PREPARE _pg3_1",
            "BEGIN",
            "SELECT 1/0",
            "DEALLOCATE _pg3_0",
            "ROLLBACK",
        ] {
            postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
        }
        conn.write_all(&out).await.unwrap();
        let replies = read_until_ready(&mut conn, 8).await;
        let per_query: Vec<String> = tags(&replies)
            .split_inclusive('Z')
            .map(str::to_owned)
            .collect();
        assert_eq!(
            per_query,
            ["TDCZ", "TDCZ", "CZ", "EZ", "CZ", "EZ", "EZ", "CZ"],
            "{mode}"
        );
        assert_eq!(first_value(&replies[4..]), "50", "{mode}");
        let codes: Vec<String> = replies
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| pgsidecar::protocol::backend::ErrorFields::parse(b).code)
            .collect();
        assert_eq!(codes, ["26000", "22012", "25P02"], "{mode}");
        // _pg3_1 is gone, _pg3_0 survived the failed transaction's DEALLOCATE.
        let mut out = BytesMut::new();
        bind_execute(&mut out, "_pg3_1");
        conn.write_all(&out).await.unwrap();
        let replies = read_until_ready(&mut conn, 1).await;
        assert_eq!(error_code(&replies).as_deref(), Some("26000"), "{mode}");
        assert_eq!(
            first_value(&query(&mut conn, "EXECUTE _pg3_0(6)").await),
            "60"
        );

        // A server connection that lacks the statement gets it before the EXECUTE.
        let admin = connect_direct_superuser(&name).await;
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
            ))
            .await
            .unwrap();
        if mode == "transaction" {
            until_count(
                &name,
                &format!("SELECT (count(*) = 0)::int::bigint FROM pg_stat_activity WHERE usename = '{name}'"),
            )
            .await;
            let replies = query(&mut conn, "EXECUTE _pg3_0(7)").await;
            let replies = if error_code(&replies).is_some() {
                // The pool learned of the dead connection on this request; the next is served.
                query(&mut conn, "EXECUTE _pg3_0(7)").await
            } else {
                replies
            };
            assert_eq!(first_value(&replies), "70", "{mode}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_the_sidecar_gives_itself_keep_their_place_among_the_servers() {
    // One batch: the Close and the second Parse are answered by the sidecar (the statement
    // stays on the server, which has it), between the server's own replies.
    let mut batch = BytesMut::new();
    bind_and_execute(&mut batch, "s1");
    postgres_protocol::message::frontend::close(b'S', "s1", &mut batch).unwrap();
    postgres_protocol::message::frontend::parse("s1", "SELECT 1", [], &mut batch).unwrap();
    bind_execute(&mut batch, "s1");
    let name = fresh_user("synthesized_order");
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], pg().port));
    let mut conn = raw(direct, &name, &[]).await;
    prepare(&mut conn, "s1", "SELECT 1").await;
    conn.write_all(&batch).await.unwrap();
    let expected = tags(&read_until_ready(&mut conn, 1).await);
    assert_eq!(expected, "2DC312DCZ");
    for mode in ["transaction", "session"] {
        let name = fresh_user("synthesized_order");
        let sidecar = start(&toml(&name, mode)).await;
        let mut conn = raw(sidecar.addr, &name, &[]).await;
        prepare(&mut conn, "s1", "SELECT 1").await;
        conn.write_all(&batch).await.unwrap();
        let replies = read_until_ready(&mut conn, 1).await;
        assert_eq!(tags(&replies), expected, "{mode}");
        // Many rows, over many reads: every one, in order.
        let replies = query(&mut conn, "SELECT generate_series(1, 5000)").await;
        let rows = first_columns(&replies);
        assert_eq!(rows.len(), 5000, "{mode}");
        assert!(
            rows.iter().zip(1..).all(|(r, i)| *r == i.to_string()),
            "{mode}"
        );
        assert_eq!(tags(&replies[replies.len() - 2..]), "CZ", "{mode}");
    }
}

/// Prepares `sql` as `b1`, binds 'happy' to it and runs it: its replies.
async fn prepare_and_run(conn: &mut ServerConn, sql: &str) -> Vec<(u8, Vec<u8>)> {
    prepare(conn, "b1", sql).await;
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::bind(
        "",
        "b1",
        [],
        [Some("happy")],
        |v: Option<&str>, buf| {
            buf.extend_from_slice(v.unwrap_or_default().as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [],
        &mut out,
    )
    .map_err(|_| ())
    .unwrap();
    postgres_protocol::message::frontend::execute("", 0, &mut out).unwrap();
    postgres_protocol::message::frontend::sync(&mut out);
    conn.write_all(&out).await.unwrap();
    let replies = read_until_ready(conn, 1).await;
    query(conn, "DEALLOCATE b1").await;
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_statements_do_not_outlive_a_rolled_back_type() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("rolled_back_type");
        let sidecar = start(&toml(&name, mode)).await;
        for (i, rollback) in ["ROLLBACK TO s", "ROLLBACK"].iter().enumerate() {
            let ty = format!("mood{i}");
            let sql = format!("SELECT $1::{ty}");
            let mut a = raw(sidecar.addr, &name, &[]).await;
            query(
                &mut a,
                &format!("BEGIN; SAVEPOINT s; CREATE TYPE {ty} AS ENUM ('happy')"),
            )
            .await;
            prepare(&mut a, "a1", &sql).await;
            assert_eq!(tags(&query(&mut a, rollback).await), "CZ");
            query(&mut a, "COMMIT").await;
            query(&mut a, "DEALLOCATE a1").await;
            query(&mut a, &format!("CREATE TYPE {ty} AS ENUM ('happy')")).await;
            // The same text prepared again — by this client, or by the next one on the same
            // server connection — is parsed against the type that exists now.
            let replies = prepare_and_run(&mut a, &sql).await;
            assert_eq!(tags(&replies), "2DCZ", "{mode} {rollback}: {replies:?}");
            drop(a);
            let mut b = raw(sidecar.addr, &name, &[]).await;
            let replies = prepare_and_run(&mut b, &sql).await;
            assert_eq!(
                tags(&replies),
                "2DCZ",
                "{mode} {rollback}, next client: {replies:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_before_terminate_are_answered() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("terminate_late");
        let sidecar = start(&toml(&name, mode)).await;
        let mut conn = raw(sidecar.addr, &name, &[]).await;
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query("SELECT pg_sleep(0.05), 1", &mut out).unwrap();
        postgres_protocol::message::frontend::parse("late", "SELECT 2", [], &mut out).unwrap();
        postgres_protocol::message::frontend::sync(&mut out);
        postgres_protocol::message::frontend::terminate(&mut out);
        conn.write_all(&out).await.unwrap();
        let replies = replies_until_closed(&mut conn).await;
        assert_eq!(tags(&replies), "TDCZ1Z", "{mode}");
    }
}
