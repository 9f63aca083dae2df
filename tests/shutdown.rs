//! The sidecar's shutdown sequence, on the real binary with real signals: SIGTERM keeps serving
//! for `shutdown_delay`, then stops accepting, lets running transactions finish up to
//! `drain_timeout`, closes the rest with 57P01 and exits 0; SIGINT skips the delay.

mod support;

use std::time::{Duration, Instant};

use support::*;

struct Binary {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

async fn spawn_binary(name: &str, shutdown_delay: &str, drain_timeout: &str) -> Binary {
    let port = pgsidecar::localpg::free_port().unwrap();
    let metrics = pgsidecar::localpg::free_port().unwrap();
    let toml = base_toml(name, "size = 2")
        .replace(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
        )
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{port}\""),
        )
        .replace(
            "drain_timeout = \"2s\"",
            &format!("shutdown_delay = \"{shutdown_delay}\"\ndrain_timeout = \"{drain_timeout}\""),
        );
    let path = std::env::temp_dir().join(format!("pgsidecar-shutdown-{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let child = spawn_binary_with(&path, port).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _ = std::fs::remove_file(&path);
    Binary { child, addr }
}

async fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delays_then_drains_then_exits_zero() {
    let name = fresh_user("shutdown");
    let mut bin = spawn_binary(&name, "1s", "3s").await;
    let in_tx = connect(bin.addr, &name, PASSWORD, &name).await.unwrap();
    in_tx
        .batch_execute("CREATE TABLE s (id int); BEGIN; INSERT INTO s VALUES (1)")
        .await
        .unwrap();
    let idle = connect(bin.addr, &name, PASSWORD, &name).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();

    let sent = Instant::now();
    signal(&bin.child, "-TERM").await;
    // During shutdown_delay the sidecar still serves, new clients included.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = connect(bin.addr, &name, PASSWORD, &name)
        .await
        .expect("still accepting during the delay");
    late.batch_execute("SELECT 1").await.unwrap();
    // After it: no new clients; idle clients are told 57P01; the open transaction may finish.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        connect(bin.addr, &name, PASSWORD, &name).await.is_err(),
        "no longer accepting"
    );
    assert!(idle.batch_execute("SELECT 1").await.is_err());
    in_tx
        .batch_execute("INSERT INTO s VALUES (2); COMMIT")
        .await
        .expect("running transaction finishes");
    let status = tokio::time::timeout(Duration::from_secs(15), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(15));
    let admin = connect_direct_superuser(&name).await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM s", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 2,
        "the transaction that was running at SIGTERM committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_ends_long_transactions_and_sigint_skips_the_delay() {
    let name = fresh_user("sigint");
    let mut bin = spawn_binary(&name, "60s", "1s").await;
    let in_tx = connect(bin.addr, &name, PASSWORD, &name).await.unwrap();
    in_tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let sent = Instant::now();
    signal(&bin.child, "-TERM").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&bin.child, "-INT").await;
    let status = tokio::time::timeout(Duration::from_secs(20), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "SIGINT skipped the 60 s delay"
    );
    assert!(
        in_tx.batch_execute("SELECT 1").await.is_err(),
        "the transaction was ended by the drain timeout"
    );
    // Its server connection was rolled back: nothing is left idle in transaction.
    let admin = connect_direct_superuser("postgres").await;
    let open = open_transactions_of(&admin, &name).await;
    assert_eq!(open, 0);
}
