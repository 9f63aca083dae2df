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
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = '{name}' AND query LIKE 'LISTEN%'"
        ))
        .await
        .unwrap();
    let replies = tokio::time::timeout(Duration::from_secs(10), query(&mut conn, "NOTIFY jobs"))
        .await
        .expect("answered");
    assert!(tags(&replies).ends_with('Z'), "{}", tags(&replies));
}
