//! Upstream faults under load: the primary killed with SIGKILL during pgbench, and frozen with
//! SIGSTOP for 20 s. Every client gets an answer or an error within the configured bounds
//! (never a hang), `/readyz` stays 200 while `/readyz?upstream=1` reports the outage, and the
//! sidecar recovers by itself. This binary owns its server, since it kills it; the tests take
//! turns.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The tests take turns with the server.
static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The postmaster's PID.
fn postmaster() -> i32 {
    let file = pg().dir.join("data/postmaster.pid");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file:?}: {e}"))
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a PID")
}

/// The postmaster and its children (backends, background processes).
fn server_processes() -> Vec<i32> {
    let parent = postmaster();
    let mut pids = vec![parent];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may contain spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[i32], signal: &str) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg(format!("-{signal}"));
    for pid in pids {
        cmd.arg(pid.to_string());
    }
    let _ = cmd.status();
}

/// Starts the killed server again (its backends may take a moment to notice the death).
async fn restart() {
    for _ in 0..100 {
        if tokio::task::spawn_blocking(|| pg().start_again())
            .await
            .unwrap()
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the server did not start again");
}

/// Runs `SELECT 1` until it succeeds (bounded): the sidecar serves again.
async fn until_served(sidecar: &pgsidecar::listener::Running, name: &str) {
    for _ in 0..300 {
        if let Ok(client) = connect(sidecar.addr, name, PASSWORD, name).await {
            if client.simple_query("SELECT 1").await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sidecar did not serve again after the server came back");
}

/// A client that runs `sql` over and over until `stop`, checking that each attempt ends
/// (answer or error) within `bound`; returns (successes, errors).
async fn prober(
    sidecar_addr: std::net::SocketAddr,
    name: String,
    bound: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    while !stop.is_cancelled() {
        let started = Instant::now();
        let attempt = async {
            let client = connect(sidecar_addr, &name, PASSWORD, &name).await?;
            client.simple_query("SELECT 1").await.map(drop)
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("a client waited more than {bound:?} (started {started:?})"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_during_pgbench() {
    let _turn = SERVER.lock().await;
    let name = fresh_user("sigkill");
    let sidecar = start(&base_toml(
        &name,
        "size = 10\nconnect_timeout = \"2s\"\ncheckout_timeout = \"3s\"",
    ))
    .await;
    pgbench(sidecar.addr.port(), &name, true, &["-t", "10"], 10).await;
    let port = sidecar.addr.port().to_string();
    let load = tokio::spawn({
        let name = name.clone();
        async move {
            let args = [
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                &name,
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "6",
                "-n",
                &name,
            ];
            run_pg_program("pgbench", &args, PASSWORD).await
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    // connect_timeout + checkout_timeout, and room for a login's own checkout.
    let bound = Duration::from_secs(2 + 3 + 10);
    let probe = tokio::spawn(prober(sidecar.addr, name.clone(), bound, stop.clone()));
    // Kill once pgbench has committed a few hundred transactions.
    let admin = connect_direct_superuser(&name).await;
    for _ in 0..1000 {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pgbench_history", &[])
            .await
            .unwrap()
            .get(0);
        if n >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(admin);
    signal(&[postmaster()], "KILL");

    // pgbench ends (its clients got errors), it does not hang.
    let out = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("pgbench ended")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("abort") || stderr.contains("error") || !out.status.success(),
        "pgbench did not notice the outage: {stderr}"
    );
    // During the outage the sidecar is ready, the upstream is not.
    let (status, _) = http_get(sidecar.metrics_addr, "/readyz").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(sidecar.metrics_addr, "/readyz?upstream=1").await;
    assert_ne!(status, 200, "{body}");

    restart().await;
    until_served(&sidecar, &name).await;
    stop.cancel();
    let (ok, failed) = probe.await.expect("no client waited past its bound");
    eprintln!(
        "SIGKILL: prober {ok} answered, {failed} errors; pgbench: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("processed") || l.contains("failed"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(failed > 0, "the outage was noticed ({ok} ok)");
    let (status, body) = http_get(sidecar.metrics_addr, "/readyz?upstream=1").await;
    assert_eq!(status, 200, "{body}");
    pgbench(
        sidecar.addr.port(),
        &name,
        false,
        &["-c", "4", "-t", "20"],
        80,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_frozen_for_twenty_seconds() {
    let _turn = SERVER.lock().await;
    let name = fresh_user("sigstop");
    let config = format!(
        "query_timeout = \"2s\"\n{}",
        base_toml(
            &name,
            "size = 2\nconnect_timeout = \"2s\"\ncheckout_timeout = \"3s\""
        )
    );
    let sidecar = start(&config).await;
    let idle = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();

    let frozen = server_processes();
    signal(&frozen, "STOP");
    let started = Instant::now();
    // query_timeout, the cancel that cannot be delivered, its grace: 57014, never a hang.
    let bound = Duration::from_secs(2 + 5 + 5 + 5);
    let e = tokio::time::timeout(bound, idle.simple_query("SELECT 1"))
        .await
        .expect("answered while the server is frozen")
        .unwrap_err();
    let answered_after = started.elapsed();
    assert!(
        matches!(sqlstate(&e).as_deref(), Some("57014" | "08006" | "53300")),
        "{e}"
    );
    // New requests end within connect_timeout + checkout_timeout (+ the same grace).
    let stop = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(prober(sidecar.addr, name.clone(), bound, stop.clone()));
    let (status, _) = http_get(sidecar.metrics_addr, "/readyz").await;
    assert_eq!(status, 200);
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&frozen, "CONT");
    until_served(&sidecar, &name).await;
    stop.cancel();
    let (ok, failed) = probe.await.expect("no client waited past its bound");
    eprintln!(
        "SIGSTOP: idle client got {:?} after {:?}; prober {ok} answered, {failed} errors",
        sqlstate(&e),
        answered_after
    );
    assert!(failed > 0, "the freeze was noticed ({ok} ok)");
    // Everything continues: the same client, new clients, a pgbench run.
    idle.simple_query("SELECT 1").await.unwrap();
    pgbench(
        sidecar.addr.port(),
        &name,
        true,
        &["-c", "4", "-t", "20"],
        80,
    )
    .await;
}
