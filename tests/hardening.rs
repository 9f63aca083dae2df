//! What production throws at the pooler: cancel requests (running and still waiting),
//! query and idle-in-transaction timeouts, dead upstreams, several upstream hosts, server
//! connections killed or aged while idle in the pool. Time limits here are generous bounds,
//! never measurements.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_the_running_query_only() {
    let name = fresh_user("cancel");
    let sidecar = start(&base_toml(&name, "size = 2")).await;
    let victim = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let bystander = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let token = victim.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = victim.batch_execute("SELECT pg_sleep(30)").await;
        (r, victim)
    });
    let other = tokio::spawn(async move {
        bystander
            .batch_execute("SELECT pg_sleep(1)")
            .await
            .map(|_| bystander)
    });
    until_count(
        &name,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
    )
    .await;
    token.cancel_query(NoTls).await.unwrap();
    let (result, victim) = sleeper.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The other client's statement was not cancelled, and the victim can go on.
    let bystander = other.await.unwrap().expect("bystander unaffected");
    victim.batch_execute("SELECT 1").await.unwrap();
    bystander.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_answers_a_request_waiting_for_a_connection() {
    let name = fresh_user("cancelwait");
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"60s\"")).await;
    let holder = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let token = waiter.cancel_token();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let r = waiter.batch_execute("SELECT 2").await;
        (r, waiter)
    });
    until_metric(sidecar.metrics_addr, "pgsidecar_clients_waiting", 1.0).await;
    token.cancel_query(NoTls).await.unwrap();
    let (result, waiter) = waiting.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered long before the checkout timeout"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    waiter.batch_execute("SELECT 3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_long_statements() {
    let name = fresh_user("qtimeout");
    // 1 s: the short statements below stay far inside it even on a loaded machine.
    let toml = base_toml(&name, "size = 1")
        .replace("drain_timeout", "query_timeout = \"1s\"\ndrain_timeout");
    let sidecar = start(&toml).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let started = Instant::now();
    let err = client
        .batch_execute("SELECT pg_sleep(20)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Short statements are untouched, and the connection was not cancelled twice.
    for _ in 0..5 {
        client.batch_execute("SELECT pg_sleep(0.05)").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_clients_are_disconnected_and_their_server_freed() {
    let name = fresh_user("idletx");
    let toml = base_toml(&name, "size = 1\ncheckout_timeout = \"20s\"").replace(
        "drain_timeout",
        "idle_in_transaction_timeout = \"300ms\"\ndrain_timeout",
    );
    let sidecar = start(&toml).await;
    let mut sleeper = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    sleeper.run_internal("BEGIN").await.unwrap();
    // A client in autocommit mode is never affected, however long it idles.
    let patient = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // The sleeping BEGIN is ended: FATAL 25P03, then the connection closes.
    let started = Instant::now();
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), sleeper.read_more()).await {
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let fields = pgsidecar::protocol::backend::ErrorFields::parse(&sleeper.rbuf[5..]);
    assert_eq!(fields.code, "25P03");
    assert!(
        fields.message.contains("idle-in-transaction timeout"),
        "{}",
        fields.message
    );
    // Its server connection goes back to the pool, rolled back, for the next client (which
    // waits for it if the rollback is still under way).
    let v: i32 = patient.query_typed("SELECT 4", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 4);
    let admin = connect_direct_superuser("postgres").await;
    let open = open_transactions_of(&admin, &name).await;
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_fails_fast_and_later_hosts_are_tried() {
    let name = fresh_user("dead");
    let dead_port = pgsidecar::localpg::free_port().unwrap();
    let dead = base_toml(&name, "size = 2\nconnect_timeout = \"2s\"").replace(
        &format!("127.0.0.1:{}/", pg().port),
        &format!("127.0.0.1:{dead_port}/"),
    );
    let sidecar = start(&dead).await;
    let started = Instant::now();
    let err = connect(sidecar.addr, &name, PASSWORD, &name)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            &format!("pgsidecar_upstream_up{{database=\"{name}\",replica=\"\",shard=\"\"}}")
        ),
        Some(0.0)
    );

    // With the dead host listed first, the live one is used.
    let both = base_toml(&name, "size = 2").replace(
        &format!("127.0.0.1:{}/", pg().port),
        &format!("127.0.0.1:{dead_port},127.0.0.1:{}/", pg().port),
    );
    let sidecar = start(&both).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_that_die_or_age_are_replaced() {
    let name = fresh_user("reaper");
    let sidecar = start(&base_toml(&name, "size = 2\nmax_lifetime = \"2s\"")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let pid: i32 = client
        .query_typed("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()[0]
        .get(0);
    // An administrator kills the idle pooled connection: the sidecar notices (FATAL + EOF),
    // drops it, and the next transaction gets a fresh one without an error.
    let admin = connect_direct_superuser("postgres").await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
        if metric(&text, "pgsidecar_server_connections{state=\"idle\"}") == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead idle connection was not reaped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_pid: i32 = client
        .query_typed("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_ne!(pid, new_pid);
    // Past max_lifetime the connection is closed too (once released, then reaped).
    until_metric(
        sidecar.metrics_addr,
        "pgsidecar_server_connections{state=\"idle\"}",
        1.0,
    )
    .await;
    until_metric(
        sidecar.metrics_addr,
        "pgsidecar_server_connections{state=\"idle\"}",
        0.0,
    )
    .await;
    let last_pid: i32 = client
        .query_typed("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_ne!(last_pid, new_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_log_in_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = fresh_user("login");
    let toml = base_toml(&name, "size = 1")
        .replace("drain_timeout", "login_timeout = \"2s\"\ndrain_timeout");
    let sidecar = start(&toml).await;
    // Logged in before the others stall (a login under load may itself take 500 ms).
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // Silent after connecting: dropped without a word, as Postgres does.
    let mut silent = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf))
        .await
        .expect("closed by the sidecar")
        .unwrap();
    assert!(buf.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    // GSSENCRequest is declined with 'N', then the client stalls in the SCRAM exchange:
    // FATAL 57014 "canceling authentication due to timeout", as from Postgres.
    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let mut gss = 8i32.to_be_bytes().to_vec();
    gss.extend_from_slice(&80_877_104i32.to_be_bytes());
    s.write_all(&gss).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&startup_packet(196_608, &[("user", name.as_str())]))
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed by the sidecar")
        .unwrap();
    assert_eq!(buf[0], b'R', "the SASL request came first");
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let rest = &buf[len + 1..];
    assert_eq!(rest[0], b'E');
    let fields = pgsidecar::protocol::backend::ErrorFields::parse(&rest[5..]);
    assert_eq!(fields.code, "57014");
    // Other clients were never affected.
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_never_makes_the_sidecar_buffer_the_result() {
    let name = fresh_user("slowreader");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let mut reader = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let before = rss_kib();
    // ~300 MB of rows, and the client reads none of it for a while.
    let mut msg = bytes::BytesMut::new();
    pgsidecar::protocol::frontend::append_query(
        &mut msg,
        "SELECT repeat('x', 1000000) FROM generate_series(1, 300)",
    );
    reader.write_all(&msg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "the sidecar buffered {grown} KiB for a client that does not read"
    );
    // Then everything arrives, intact.
    let mut total = 0usize;
    let mut rows = 0;
    loop {
        reader.read_more().await.unwrap();
        let mut done = false;
        while let Some(h) = pgsidecar::protocol::frame::peek_header(&reader.rbuf).unwrap() {
            if reader.rbuf.len() < h.frame_len {
                break;
            }
            if h.tag == b'D' {
                rows += 1;
                total += h.frame_len;
            }
            done |= h.tag == b'Z';
            reader.consume(h.frame_len);
        }
        if done {
            break;
        }
    }
    assert_eq!(rows, 300);
    assert!(total > 300_000_000);
}

/// Sends SIGCONT to a process on drop (a frozen backend is never left behind).
struct Frozen(i32);

impl Frozen {
    fn freeze(pid: i32) -> Frozen {
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_given_up_after_the_timeout_and_its_grace() {
    let name = fresh_user("frozen");
    let toml = base_toml(&name, "size = 1")
        .replace("drain_timeout", "query_timeout = \"300ms\"\ndrain_timeout");
    let sidecar = start(&toml).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let frozen = Frozen::freeze(pid);
    // The cancel reaches a stopped process; the sidecar answers anyway and drops that
    // connection.
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    // The client carries on, on a new server connection, while the old one is still frozen.
    let other: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(other, pid);
    drop(frozen);
    let abandoned = scrape(
        sidecar.metrics_addr,
        "pgsidecar_errors_total{kind=\"query_abandoned\"}",
    )
    .await;
    assert_eq!(abandoned, Some(1.0));
}

/// A sidecar with one server connection, for database `<prefix>_…`, and a client of it.
async fn pool_of_one(
    prefix: &str,
) -> (String, pgsidecar::listener::Running, tokio_postgres::Client) {
    let name = fresh_user(prefix);
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    (name, sidecar, client)
}

/// The client's next query is answered (bounded, so a held pool fails the test, not hangs it).
async fn still_served(client: &tokio_postgres::Client) {
    let answered =
        tokio::time::timeout(Duration::from_secs(30), client.simple_query("SELECT 1")).await;
    answered.expect("the next query is answered").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_never_goes_back_with_a_client_message_half_sent() {
    let (name, sidecar, other) = pool_of_one("copyhdr").await;
    // COPY … TO STDOUT, then a CopyData whose length field says 5 MB and a few bytes of it
    // (found by the stress harness), then the client goes away.
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut bytes = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(
        "COPY (SELECT generate_series(1, 50)) TO STDOUT",
        &mut bytes,
    )
    .unwrap();
    bytes.extend_from_slice(b"d\x00S\x00\x00\x00\x04");
    raw.write_all(&bytes).await.unwrap();
    // The COPY's rows arrive while the CopyData is still half sent: the server connection must
    // not go back to the pool then, or the next client's query becomes CopyData.
    let replies = read_until_ready(&mut raw, 1).await;
    assert!(tags(&replies).ends_with("CZ"), "{}", tags(&replies));
    drop(raw);
    still_served(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_with_a_body_does_not_hold_the_pool() {
    let (name, sidecar, other) = pool_of_one("flushbody").await;
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    // Found by the stress harness: a Flush whose length says 5 takes the next message's tag
    // as its body.
    let mut bytes = bytes::BytesMut::from(&b"H\x00\x00\x00\x05"[..]);
    postgres_protocol::message::frontend::query(
        "COPY (SELECT generate_series(1, 50)) TO STDOUT",
        &mut bytes,
    )
    .unwrap();
    bytes.extend_from_slice(b"E\x00\x00\x00\t\x00\x00\x00\x00\x00");
    raw.write_all(&bytes).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_more()).await;
    drop(raw);
    still_served(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_batch_gets_its_connection_cleaned_not_closed() {
    let (name, sidecar, other) = pool_of_one("leavebatch").await;
    // A failed Parse, a Query the server discards with the batch, then garbage: the session
    // ends, and cleaning the connection must not wait for replies that never come.
    for garbage in [
        &b"\x13\x00\x00\x00\x04"[..],
        &b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"[..],
    ] {
        let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
            .await
            .unwrap();
        let mut bytes = bytes::BytesMut::new();
        postgres_protocol::message::frontend::parse("", "SELEC 1", [], &mut bytes).unwrap();
        postgres_protocol::message::frontend::query("SELECT 1", &mut bytes).unwrap();
        bytes.extend_from_slice(garbage);
        raw.write_all(&bytes).await.unwrap();
        drop(raw);
        other.simple_query("SELECT 1").await.unwrap();
    }
    // The connection was cleaned and reused, never closed and replaced.
    let connects = scrape(sidecar.metrics_addr, "pgsidecar_server_connects_total").await;
    assert_eq!(connects, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_after_requests_that_get_no_reply_closes_the_session() {
    let (name, sidecar, other) = pool_of_one("termwait").await;
    other
        .simple_query("CREATE TABLE IF NOT EXISTS t (x int)")
        .await
        .unwrap();
    use postgres_protocol::message::frontend;
    // Replies the server sends only after more from the client — to a batch never ended with
    // Sync, to a COPY FROM STDIN never ended (found by the relay fuzz harness, with a Bind
    // the COPY swallowed as its error) — are not waited for after Terminate: the client's
    // connection is closed, as Postgres closes it, and the server connection is cleaned.
    let mut cases: Vec<(&str, bytes::BytesMut)> = Vec::new();
    let mut b = bytes::BytesMut::new();
    frontend::parse("s1", "SELECT 1", [], &mut b).unwrap();
    cases.push(("a Parse without Sync", b));
    let mut b = bytes::BytesMut::new();
    frontend::query("COPY t FROM STDIN", &mut b).unwrap();
    cases.push(("a COPY FROM STDIN never ended", b));
    let mut b = bytes::BytesMut::new();
    frontend::parse("s1", "INSERT INTO t VALUES (1)", [], &mut b).unwrap();
    frontend::query("COPY t FROM STDIN", &mut b).unwrap();
    bind_and_execute(&mut b, "s2");
    cases.push(("a Bind the COPY took as its error", b));
    let mut b = bytes::BytesMut::new();
    frontend::parse("", "COPY t FROM STDIN", [], &mut b).unwrap();
    bind_execute(&mut b, "");
    cases.push(("an extended COPY FROM STDIN never ended", b));
    for (case, mut bytes) in cases {
        let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
            .await
            .unwrap();
        frontend::terminate(&mut bytes);
        raw.write_all(&bytes).await.unwrap();
        // The client keeps its end open and reads until the sidecar closes the connection.
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            while raw.read_more().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "{case}: the session was not closed");
        still_served(&other).await;
    }
    // The server connection was cleaned and reused each time but once: a COPY FROM STDIN that
    // failed leaves it closed (the sidecar cannot tell which Syncs the server then answers).
    let connects = scrape(sidecar.metrics_addr, "pgsidecar_server_connects_total").await;
    assert_eq!(connects, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_its_terminate_never_holds_a_server_connection() {
    let name = fresh_user("termleave");
    // The next client waits far longer than the cleanup's 5 s bound.
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"60s\"")).await;
    let other = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    // A long statement, a Terminate, and the client closes without waiting for the answer: the
    // session ends at the close (not when the statement does), and the pool of one serves the
    // next client (the busy server connection is given up after the cleanup's bound; the
    // statement still runs to its end, as it would had the client talked to Postgres).
    let mut bytes = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(120)", &mut bytes).unwrap();
    postgres_protocol::message::frontend::terminate(&mut bytes);
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    raw.write_all(&bytes).await.unwrap();
    let admin = connect_direct_superuser(&name).await;
    until_positive(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)'",
    )
    .await;
    drop(raw);
    let answered =
        tokio::time::timeout(Duration::from_secs(90), other.simple_query("SELECT 1")).await;
    answered.expect("the next query is answered").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_server_connection_fails_only_open_transactions() {
    let name = fresh_user("terminate");
    let sidecar = start(&base_toml(&name, "size = 4")).await;
    let mut in_tx = Vec::new();
    let mut idle = Vec::new();
    for i in 0..4 {
        let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
        if i < 2 {
            client.batch_execute("BEGIN; SELECT 1").await.unwrap();
            in_tx.push(client);
        } else {
            client.batch_execute("SELECT 1").await.unwrap();
            idle.push(client);
        }
    }
    // Every backend the sidecar holds (two in transactions, the rest idle in the pool) dies.
    let admin = connect_direct_superuser(&name).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_backend_pid()) t",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 2, "{killed}");
    // Wait until they are gone (their sockets closed), as the sidecar will find them.
    while backends_of(&admin, &name).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Clients inside a transaction learn it; idle clients never notice, on new connections.
    for client in &in_tx {
        let e = client.batch_execute("SELECT 1").await.unwrap_err();
        assert!(e.as_db_error().is_some() || e.is_closed(), "{e:?}");
    }
    for client in &idle {
        for _ in 0..3 {
            client.batch_execute("SELECT 1").await.unwrap();
        }
    }
    // The pool refilled: new clients are served too.
    let fresh = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    fresh.batch_execute("SELECT 1").await.unwrap();
}

/// Polls until the load has committed `n` increments of the counter since it was last reset.
async fn until_committed(admin: &tokio_postgres::Client, n: i32) {
    while admin
        .query_one("SELECT n FROM counter", &[])
        .await
        .unwrap()
        .get::<_, i32>(0)
        < n
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_server_connection_mid_load() {
    let name = fresh_user("terminate_load");
    let sidecar = start(&base_toml(&name, "size = 4\ncheckout_timeout = \"10s\"")).await;
    let setup = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    setup
        .batch_execute(
            "CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0)",
        )
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
        client.batch_execute("SELECT 1").await.unwrap();
        idle.push(client);
    }
    // Six clients committing transactions as fast as they can, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for _ in 0..6 {
        let stop = stop.clone();
        let (addr, name) = (sidecar.addr, name.clone());
        load.push(tokio::spawn(async move {
            let (mut committed, mut failed) = (0u32, 0u32);
            let mut client = connect(addr, &name, PASSWORD, &name).await.unwrap();
            while !stop.is_cancelled() {
                if client.is_closed() {
                    // The sidecar ended a session whose server connection died mid-transaction
                    // (08006); the application reconnects.
                    client = connect(addr, &name, PASSWORD, &name).await.unwrap();
                }
                let tx = "BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1; COMMIT";
                match tokio::time::timeout(Duration::from_secs(30), client.batch_execute(tx)).await
                {
                    Ok(Ok(())) => committed += 1,
                    Ok(Err(_)) => {
                        failed += 1;
                        // A transaction that failed mid-way is rolled back before going on.
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                    Err(_) => panic!("a transaction hung"),
                }
            }
            (committed, failed)
        }));
    }
    let admin = connect_direct_superuser(&name).await;
    // Mid-load: every server connection of the sidecar dies, twice.
    for _ in 0..2 {
        until_committed(&admin, 50).await;
        let killed: Vec<i32> = admin
            .query(
                "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE usename = $1 OFFSET 0) t \
                 WHERE pg_terminate_backend(pid)",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!killed.is_empty());
        // Until they are gone (their sockets closed), as the sidecar will find them.
        loop {
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                    &[&killed],
                )
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Idle clients never notice.
        for client in &idle {
            client.batch_execute("SELECT 1").await.unwrap();
        }
        admin
            .batch_execute("UPDATE counter SET n = 0")
            .await
            .unwrap();
    }
    // The load goes on after the kills: the pool refilled.
    until_committed(&admin, 50).await;
    stop.cancel();
    let mut totals = (0, 0);
    for task in load {
        let (committed, failed) = task.await.unwrap();
        totals.0 += committed;
        totals.1 += failed;
    }
    eprintln!(
        "mid-load terminations: {} transactions committed, {} failed",
        totals.0, totals.1
    );
    assert!(totals.0 > 100, "{totals:?}");
}
