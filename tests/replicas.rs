//! Routing between a primary and real streaming replicas (pg_basebackup -R of the test
//! binary's server): reads outside transactions land on a replica, writes and everything in a
//! read-write transaction on the primary, FOR UPDATE / nextval / data-modifying CTEs on the
//! primary, hints obeyed, BEGIN READ ONLY on a replica; read-your-writes with a replica held back
//! by recovery_min_apply_delay; a stopped replica is ejected and comes back.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use pgsidecar::localpg::LocalPostgres;
use support::*;

static REPLICA: OnceLock<LocalPostgres> = OnceLock::new();
static DELAYED: OnceLock<LocalPostgres> = OnceLock::new();

/// A streaming replica of the test server, shared by the tests that do not stop it.
fn replica() -> &'static LocalPostgres {
    REPLICA.get_or_init(|| pg().start_replica("").expect("start a streaming replica"))
}

/// A replica that applies commits two seconds late.
fn delayed() -> &'static LocalPostgres {
    DELAYED.get_or_init(|| {
        pg().start_replica("-c recovery_min_apply_delay=2s")
            .expect("start a delayed replica")
    })
}

fn toml(name: &str, replicas: &[&LocalPostgres], settings: &str) -> String {
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.url(name, PASSWORD, name)))
        .collect();
    base_toml(name, "size = 4\ncheckout_timeout = \"10s\"").replace(
        &format!("primary = \"{}\"\n", pg().url(name, PASSWORD, name)),
        &format!(
            "primary = \"{}\"\nreplicas = [{}]\nreplica_check_interval = \"100ms\"\n{settings}\n",
            pg().url(name, PASSWORD, name),
            urls.join(", ")
        ),
    )
}

async fn on_replica(client: &tokio_postgres::Client, sql: &str) -> bool {
    let rows = client.simple_query(sql).await.unwrap();
    let value = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    value == "t"
}

/// Whether `sql` runs on the replica, tried again while a health check keeps the replica from
/// serving reads for a moment (the read then runs on the primary, as it should).
async fn eventually_on_replica(client: &tokio_postgres::Client, sql: &str) -> bool {
    for _ in 0..5 {
        if on_replica(client, sql).await {
            return true;
        }
        until_replica_serves(client).await;
    }
    false
}

/// Waits until reads through `client` can reach a replica (it is checked and caught up).
async fn until_replica_serves(client: &tokio_postgres::Client) {
    for _ in 0..300 {
        // Until the first good check, reads may fail where the primary may not serve them.
        let read = client
            .simple_query("/* pgsidecar: route=replica */ SELECT pg_is_in_recovery()")
            .await;
        let on_replica = read.ok().is_some_and(|rows| {
            rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
            })
        });
        if on_replica {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no read reached a replica within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_everything_else_to_the_primary() {
    let name = fresh_user("route");
    pg().psql(
        &name,
        &format!("CREATE TABLE t (id int); INSERT INTO t VALUES (0); CREATE SEQUENCE s; ALTER TABLE t OWNER TO {name}; ALTER SEQUENCE s OWNER TO {name}"),
    )
    .unwrap();
    let replica = replica();
    let sidecar = start(&toml(&name, &[replica], "read_your_writes = \"off\"")).await;
    let mut client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&client).await;
    for (sql, replica_expected) in [
        ("SELECT pg_is_in_recovery()", true),
        (
            "SELECT pg_is_in_recovery() FROM t WHERE id = 0 FOR UPDATE",
            false,
        ),
        ("SELECT pg_is_in_recovery() WHERE nextval('s') > 0", false),
        (
            "WITH d AS (INSERT INTO t VALUES (1) RETURNING id) SELECT pg_is_in_recovery() FROM d",
            false,
        ),
        (
            "/* pgsidecar: route=primary */ SELECT pg_is_in_recovery()",
            false,
        ),
        (
            "/* pgsidecar: route=replica */ SELECT pg_is_in_recovery()",
            true,
        ),
        ("BEGIN READ ONLY; SELECT pg_is_in_recovery(); COMMIT", true),
        ("BEGIN; SELECT pg_is_in_recovery(); COMMIT", false),
        (
            "SELECT pg_is_in_recovery(); INSERT INTO t VALUES (2)",
            false,
        ),
    ] {
        let on = if replica_expected {
            eventually_on_replica(&client, sql).await
        } else {
            on_replica(&client, sql).await
        };
        assert_eq!(on, replica_expected, "{sql}");
    }
    // SET pgsidecar.route is the sidecar's own: consumed, never sent upstream.
    client
        .batch_execute("SET pgsidecar.route = primary")
        .await
        .unwrap();
    assert!(!on_replica(&client, "SELECT pg_is_in_recovery()").await);
    assert!(
        eventually_on_replica(
            &client,
            "/* pgsidecar: route=replica */ SELECT pg_is_in_recovery()"
        )
        .await
    );
    client
        .batch_execute("SET pgsidecar.route TO 'replica'")
        .await
        .unwrap();
    assert!(eventually_on_replica(&client, "SELECT pg_is_in_recovery()").await);
    // It cannot send a write to a replica.
    client
        .batch_execute("INSERT INTO t VALUES (9)")
        .await
        .unwrap();
    let e = client
        .batch_execute("SET pgsidecar.route = sideways")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"), "{e}");
    client.batch_execute("RESET pgsidecar.route").await.unwrap();
    assert!(eventually_on_replica(&client, "SELECT pg_is_in_recovery()").await);
    let e = client
        .simple_query("SHOW pgsidecar.route")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("42704"),
        "never reached the server: {e}"
    );
    // A bare BEGIN waits for the statement that decides where the transaction runs. (A replica
    // a health check found slow a moment ago serves no reads: the transaction then runs on the
    // primary, as it should; it is tried again once the replica serves.)
    let mut read_only_on_replica = false;
    for _ in 0..5 {
        until_replica_serves(&client).await;
        client.batch_execute("BEGIN").await.unwrap();
        client
            .batch_execute("SET TRANSACTION READ ONLY")
            .await
            .unwrap();
        let first = on_replica(&client, "SELECT pg_is_in_recovery()").await;
        let second = on_replica(&client, "SELECT pg_is_in_recovery()").await;
        assert_eq!(first, second, "a transaction never changes server");
        client.batch_execute("COMMIT").await.unwrap();
        if first {
            read_only_on_replica = true;
            break;
        }
    }
    assert!(
        read_only_on_replica,
        "BEGIN; SET TRANSACTION READ ONLY runs on the replica"
    );
    for end in ["COMMIT", "ROLLBACK"] {
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute(end).await.unwrap();
    }
    let transaction = client.transaction().await.unwrap();
    let row = transaction
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "a read-write transaction runs on the primary"
    );
    transaction
        .execute("INSERT INTO t VALUES (6)", &[])
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    // A read-write transaction stays on the primary for all its statements.
    client.batch_execute("BEGIN").await.unwrap();
    assert!(!on_replica(&client, "SELECT pg_is_in_recovery()").await);
    client
        .batch_execute("INSERT INTO t VALUES (3); COMMIT")
        .await
        .unwrap();
    // The extended protocol: an unnamed statement, and a prepared one used again.
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let statement = client
        .prepare("SELECT pg_is_in_recovery(), $1::int")
        .await
        .unwrap();
    for i in 0..3 {
        let row = client.query_one(&statement, &[&i]).await.unwrap();
        assert!(row.get::<_, bool>(0));
    }
    let n = client
        .execute("INSERT INTO t VALUES ($1)", &[&4i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A pipeline of a read and a write: both run, the write on the primary.
    let (read, write) = tokio::join!(
        client.query_one("SELECT pg_is_in_recovery()", &[]),
        client.execute("INSERT INTO t VALUES (5)", &[])
    );
    read.unwrap();
    write.unwrap();
    // The client never hears that a standby served it.
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    raw.run_internal("SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    let hot = raw.params.iter().find(|(n, _)| n == "in_hot_standby");
    assert_eq!(hot.map(|(_, v)| v.as_str()), Some("off"));
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        metric(&text, "pgsidecar_routed_total{target=\"replica\"}").unwrap() >= 5.0,
        "{text}"
    );
    assert!(
        metric(&text, "pgsidecar_routed_total{target=\"primary\"}").unwrap() >= 5.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("pgsidecar_replica_up{{database=\"{name}\",replica=\"0\",shard=\"\"}}")
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_while_the_replica_lags() {
    let name = fresh_user("ryw");
    pg().psql(
        &name,
        &format!("CREATE TABLE w (id int); ALTER TABLE w OWNER TO {name}"),
    )
    .unwrap();
    let delayed = delayed();
    let sidecar = start(&toml(&name, &[delayed], "read_your_writes = \"client\"")).await;
    let writer = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let other = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&other).await;
    for i in 0..3 {
        writer
            .batch_execute(&format!("INSERT INTO w VALUES ({i})"))
            .await
            .unwrap();
        // The writer always sees its committed write, though the replica is 2 s behind.
        let seen: i64 = writer
            .query_one("SELECT count(*) FROM w WHERE id = $1", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1, "the writer missed its own write {i}");
    }
    // Another client (scope "client") may read the lagging replica, and does (whether the
    // replica has applied the write by then depends on the machine's speed, not on routing).
    assert!(
        eventually_on_replica(
            &other,
            "SELECT pg_is_in_recovery(), count(*) FROM w WHERE id = 2"
        )
        .await,
        "the other client read the replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_ejected_and_comes_back() {
    let name = fresh_user("eject");
    let own = pg().start_replica("").expect("start a replica to stop");
    let sidecar = start(&toml(&name, &[&own], "read_your_writes = \"off\"")).await;
    let never = start(&toml(
        &name,
        &[&own],
        "read_your_writes = \"off\"\nprimary_reads = \"never\"",
    ))
    .await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let strict = connect(never.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&client).await;
    until_replica_serves(&strict).await;
    // A query running on the replica when it stops fails with an error, and its client's
    // next query runs elsewhere on the same connection.
    let victim = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&victim).await;
    let running = tokio::spawn(async move {
        let outcome = victim
            .simple_query("SELECT pg_sleep(5), pg_is_in_recovery()")
            .await;
        (victim, outcome)
    });
    // Until the query runs on the replica.
    for _ in 0..500 {
        let running = own
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(5)%'",
            )
            .unwrap();
        if running != "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    own.stop().unwrap();
    let (victim, outcome) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("no hang")
        .unwrap();
    let e = outcome.unwrap_err();
    assert!(
        matches!(sqlstate(&e).as_deref(), Some("57P01" | "08006")),
        "{e}"
    );
    assert!(!on_replica(&victim, "SELECT pg_is_in_recovery()").await);
    // Reads go on, on the primary, once the replica is found gone; never a hang.
    let mut on_primary = false;
    for _ in 0..100 {
        match client.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(rows) => {
                let v = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                if v.as_deref() == Some("f") {
                    on_primary = true;
                    break;
                }
            }
            Err(e) => panic!("a read failed after the replica stopped: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_primary, "reads did not fall back to the primary");
    // With primary_reads = "never", a read says clearly that no replica can serve it (once
    // that sidecar's health check found the replica gone).
    until_metric(
        never.metrics_addr,
        &format!("pgsidecar_replica_up{{database=\"{name}\",replica=\"0\",shard=\"\"}}"),
        0.0,
    )
    .await;
    let e = strict
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57P03"), "{e}");
    let (_, text) = http_get(sidecar.metrics_addr, "/metrics").await;
    let up = format!("pgsidecar_replica_up{{database=\"{name}\",replica=\"0\",shard=\"\"}}");
    assert_eq!(metric(&text, &up), Some(0.0), "{text}");
    assert!(
        metric(
            &text,
            &format!(
                "pgsidecar_replica_ejections_total{{database=\"{name}\",replica=\"0\",shard=\"\"}}"
            )
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    own.start_again().unwrap();
    until_replica_serves(&client).await;
    until_replica_serves(&strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_by_tenant() {
    let name = fresh_user("rywtenant");
    pg().psql(
        &name,
        &format!("CREATE TABLE w (id int); ALTER TABLE w OWNER TO {name}"),
    )
    .unwrap();
    let delayed = delayed();
    let sidecar = start(&format!(
        "{}{TENANCY}",
        toml(&name, &[delayed], "read_your_writes = \"tenant\"")
    ))
    .await;
    let as_tenant = |tenant: &'static str| {
        let name = name.clone();
        async move {
            connect(sidecar.addr, &format!("{name}.{tenant}"), PASSWORD, &name)
                .await
                .unwrap()
        }
    };
    let writer = as_tenant("acme").await;
    let colleague = as_tenant("acme").await;
    let stranger = as_tenant("globex").await;
    until_replica_serves(&stranger).await;
    writer
        .batch_execute("INSERT INTO w VALUES (1)")
        .await
        .unwrap();
    // Another client of the writer's tenant reads the write (from the primary)…
    let seen: i64 = colleague
        .query_one("SELECT count(*) FROM w WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "a client of the writing tenant missed the write");
    // …while another tenant may read the lagging replica.
    assert!(eventually_on_replica(&stranger, "SELECT pg_is_in_recovery()").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_stalled_network_path_is_ejected() {
    let name = fresh_user("stall");
    let port = replica().port;
    let proxy =
        support::stall::StallProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    let direct = replica().url(&name, PASSWORD, &name);
    let through_proxy = direct.replace(&format!(":{port}/"), &format!(":{}/", proxy.addr.port()));
    let config = format!(
        "query_timeout = \"2s\"\n{}",
        toml(&name, &[replica()], "read_your_writes = \"off\"").replace(&direct, &through_proxy)
    );
    let sidecar = start(&config).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&client).await;

    proxy.stall();
    let up = format!("pgsidecar_replica_up{{database=\"{name}\",replica=\"0\",shard=\"\"}}");
    let mut ejected = false;
    for _ in 0..200 {
        if scrape(sidecar.metrics_addr, &up).await == Some(0.0) {
            ejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ejected,
        "the health check never gave up on the stalled replica"
    );
    // Reads go to the primary; a read that was already on the stalled path ends with an
    // error (query timeout), never a hang.
    let mut on_primary = false;
    for _ in 0..20 {
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            client.simple_query("SELECT pg_is_in_recovery()"),
        )
        .await
        .expect("a read never hangs");
        if let Ok(rows) = read {
            on_primary = rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("f"))
            });
            if on_primary {
                break;
            }
        }
    }
    assert!(on_primary, "reads did not go to the primary");
    proxy.resume();
    until_replica_serves(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_behind_a_busy_server_are_bounded() {
    let Blocked {
        locker,
        standby,
        raw: mut conn,
        _sidecar,
        ..
    } = blocked_replica("held_bound").await;
    // A read that waits on the replica (for the lock), then 4,000 pipelined extended requests
    // of 10 KB each (40 MB) for the primary, each ended by a Flush — a request that may go on
    // cannot move to another server, so they wait, held, until the replica is done. The
    // client reads nothing meanwhile.
    let mut first = bytes::BytesMut::new();
    pgsidecar::protocol::frontend::append_query(&mut first, "SELECT count(*) FROM blocker");
    let padding = "x".repeat(10_000);
    let mut rest = bytes::BytesMut::new();
    for i in 0..4000 {
        let sql = format!("/* pgsidecar: route=primary */ SELECT {i} /* {padding} */");
        postgres_protocol::message::frontend::parse("", &sql, [], &mut rest).unwrap();
        postgres_protocol::message::frontend::bind(
            "",
            "",
            [] as [i16; 0],
            [] as [Option<&str>; 0],
            |_: Option<&str>, _| Ok(postgres_protocol::IsNull::Yes),
            [] as [i16; 0],
            &mut rest,
        )
        .map_err(|_| ())
        .unwrap();
        postgres_protocol::message::frontend::execute("", 0, &mut rest).unwrap();
        postgres_protocol::message::frontend::flush(&mut rest);
    }
    postgres_protocol::message::frontend::sync(&mut rest);
    let before = rss_kib();
    conn.write_all(&first).await.unwrap();
    let writer = tokio::spawn(async move {
        conn.write_all(&rest).await.unwrap();
        conn
    });
    // The sidecar stops reading the client once it holds its bound: the writer cannot finish
    // (kernel buffers take far less than 40 MB) while the read waits. A pause gives a sidecar
    // that took everything in the time to show it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        !writer.is_finished(),
        "40 MB of requests were all taken in while they had to wait"
    );
    assert!(
        grown < 16 * 1024,
        "the sidecar held {grown} KiB of requests"
    );
    drop(standby);
    locker.batch_execute("COMMIT").await.unwrap();
    // Then they all run, in order.
    let mut conn = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the requests were taken in once the first was done")
        .unwrap();
    let replies = read_until_ready(&mut conn, 2).await;
    let rows = first_columns(&replies);
    assert_eq!(rows.len(), 4001, "the count row and one per read");
    assert_eq!(rows[1], "0");
    assert_eq!(rows[4000], "3999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_setting_answers_in_its_turn_behind_pipelined_requests() {
    let name = fresh_user("route_pipelined");
    let sidecar = start(&toml(&name, &[replica()], "read_your_writes = \"off\"")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    until_replica_serves(&client).await;
    let mut raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    // All sent at once: the settings are the sidecar's, answered between the replica's and
    // the primary's replies in the order they were asked, and each changes where the
    // requests after it go.
    let mut out = bytes::BytesMut::new();
    for sql in [
        "SELECT pg_is_in_recovery()::text FROM pg_sleep(0.2)",
        "SET pgsidecar.route = primary",
        "SELECT pg_is_in_recovery()::text",
        "SET pgsidecar.route = sideways",
        "RESET pgsidecar.route",
        "SELECT pg_is_in_recovery()::text",
    ] {
        pgsidecar::protocol::frontend::append_query(&mut out, sql);
    }
    raw.write_all(&out).await.unwrap();
    let replies = read_until_ready(&mut raw, 6).await;
    assert_eq!(tags(&replies), "TDCZCZTDCZEZCZTDCZ");
    let text = |(_, body): &(u8, Vec<u8>)| String::from_utf8_lossy(body).into_owned();
    let rows: Vec<String> = replies
        .iter()
        .filter(|(t, _)| matches!(t, b'D' | b'C'))
        .map(text)
        .collect();
    assert!(rows[0].ends_with("true"), "{rows:?}");
    assert!(rows[2].starts_with("SET"), "{rows:?}");
    assert!(rows[3].ends_with("false"), "{rows:?}");
    assert!(rows[5].starts_with("RESET"), "{rows:?}");
    // A read behind requests in flight on the primary stays there, in order.
    assert!(rows[6].ends_with("false"), "{rows:?}");
    assert_eq!(error_code(&replies).as_deref(), Some("22023"));
}

/// A superuser connection to the replica, over its Unix socket.
async fn connect_replica_superuser(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(&replica().dir)
        .port(replica().port)
        .user("postgres")
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("superuser connects to the replica");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A sidecar in front of the primary and the replica, tables `blocker` and `done`, and a read
/// of `blocker` on the replica made to wait (see [`lock_on_replica`]).
struct Blocked {
    name: String,
    _sidecar: pgsidecar::listener::Running,
    /// Holds the lock until it commits.
    locker: tokio_postgres::Client,
    standby: tokio_postgres::Client,
    /// A raw protocol client of the sidecar.
    raw: pgsidecar::pool::ServerConn,
}

async fn blocked_replica(prefix: &str) -> Blocked {
    let name = fresh_user(prefix);
    let sidecar = start(&toml(&name, &[replica()], "read_your_writes = \"off\"")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client
        .batch_execute("CREATE TABLE blocker (a int); CREATE TABLE done (a int)")
        .await
        .unwrap();
    until_replica_serves(&client).await;
    let (locker, standby) = lock_on_replica(&name, "blocker").await;
    let raw = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    Blocked {
        name,
        _sidecar: sidecar,
        locker,
        standby,
        raw,
    }
}

/// A transaction on the primary holding an ACCESS EXCLUSIVE lock on `table`, once the replica
/// has replayed it (a read of `table` on the replica then waits until the transaction ends),
/// and a superuser connection to the replica.
async fn lock_on_replica(
    db: &str,
    table: &str,
) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let standby = connect_replica_superuser(db).await;
    until_positive(
        &standby,
        &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'"),
    )
    .await;
    let locker = connect_direct_superuser(db).await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    until_positive(
        &standby,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass \
             AND mode = 'AccessExclusiveLock'"
        ),
    )
    .await;
    (locker, standby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_a_replica_read_runs_on_the_primary_at_once() {
    // A read of `blocker` on the replica waits until `locker` ends its transaction.
    let Blocked {
        name,
        locker,
        mut raw,
        _sidecar,
        ..
    } = blocked_replica("move_on").await;
    let mut out = bytes::BytesMut::new();
    for sql in [
        "SELECT count(*) FROM blocker",
        "INSERT INTO done VALUES (1)",
        "SELECT 'after'",
    ] {
        pgsidecar::protocol::frontend::append_query(&mut out, sql);
    }
    raw.write_all(&out).await.unwrap();
    // The write goes to the primary on a connection of its own while the read waits on the
    // replica: it is done before the read can be.
    until_count(&name, "SELECT count(*) FROM done").await;
    locker.batch_execute("COMMIT").await.unwrap();
    // The client hears of them in the order it asked.
    let replies = read_until_ready(&mut raw, 3).await;
    assert_eq!(tags(&replies), "TDCZCZTDCZ");
    let complete: Vec<String> = replies
        .iter()
        .filter(|(t, _)| *t == b'C')
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(complete, ["SELECT 1\0", "INSERT 0 1\0", "SELECT 1\0"]);
}
