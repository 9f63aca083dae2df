//! The upstream PostgreSQL goes away and comes back: clients get clear errors while it is
//! down and the sidecar recovers by itself. This binary owns its server, since it stops it.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_recovers_when_the_upstream_restarts() {
    let name = fresh_user("restart");
    let sidecar = start(&base_toml(&name, "size = 2\nconnect_timeout = \"2s\"")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client
        .batch_execute("CREATE TABLE r (id int); INSERT INTO r VALUES (1)")
        .await
        .unwrap();
    let in_tx = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO r VALUES (2)")
        .await
        .unwrap();

    tokio::task::spawn_blocking(|| pg().stop())
        .await
        .unwrap()
        .unwrap();
    // The client whose transaction died with the server learns it (08006 or the server's
    // own 57P01 that the sidecar passed on) — never a hang.
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), in_tx.batch_execute("SELECT 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        in_tx.is_closed() || err.as_db_error().is_some() || err.is_closed(),
        "{err:?}"
    );
    // A client between transactions gets 08006 within the connect timeout, and stays connected.
    let err = tokio::time::timeout(Duration::from_secs(10), client.batch_execute("SELECT 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(15));

    tokio::task::spawn_blocking(|| pg().start_again())
        .await
        .unwrap()
        .unwrap();
    let n: i64 = client
        .query_typed("SELECT count(*) FROM r", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 1, "the interrupted transaction did not commit");
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            &format!("pgsidecar_upstream_up{{database=\"{name}\",replica=\"\",shard=\"\"}}")
        ),
        Some(1.0)
    );
}
