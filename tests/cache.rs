//! The result cache against a real server, with two sidecars on one database: a write
//! committed through one invalidates the other's entry (a rolled-back one does not), a client
//! always reads its own committed write, a direct write invalidates once `cache-sql`'s
//! triggers are installed, tenants never receive each other's cached rows, uncacheable reads
//! are never stored, both protocols and pipelined hits keep their order, and after concurrent
//! writers and readers every cached answer equals a direct query.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgsidecar::listener::Running;
use support::*;

const READ: &str = "SELECT name FROM products WHERE id = $1";

/// A database with whitelisted tables `products` and `prices`, an RLS table `items`, a table
/// `orders` that no rule names, and the TOML of a sidecar with a result cache in front of it
/// (its upstream role does not own the tables).
fn setup(prefix: &str) -> (String, String) {
    let name = fresh_user(prefix);
    install_tenancy_sql(&name);
    let app = format!("{name}_app");
    pg().psql(
        &name,
        &format!(
            "CREATE ROLE {app} LOGIN PASSWORD '{PASSWORD}';
             CREATE TABLE products (id int PRIMARY KEY, name text);
             CREATE TABLE prices (id int PRIMARY KEY, price int);
             CREATE TABLE orders (id int PRIMARY KEY);
             CREATE TABLE items (tenant_id text NOT NULL, v int);
             ALTER TABLE products OWNER TO {name};
             ALTER TABLE prices OWNER TO {name};
             ALTER TABLE items OWNER TO {name};
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON items
                 USING (tenant_id = current_setting('app.tenant_id', true));
             INSERT INTO products SELECT i, 'p' || i FROM generate_series(0, 20) i;
             INSERT INTO prices SELECT i, i FROM generate_series(0, 20) i;
             INSERT INTO items VALUES ('acme', 1), ('acme', 2), ('globex', 10);
             GRANT SELECT, INSERT, UPDATE, DELETE ON products, prices, orders, items TO {app};"
        ),
    )
    .unwrap();
    let toml = base_toml(&name, "size = 4\ncheckout_timeout = \"10s\"").replace(
        &pg().url(&name, PASSWORD, &name),
        &pg().url(&app, PASSWORD, &name),
    ) + TENANCY
        + "setting = \"app.tenant_id\"\n"
        + &format!(
            "\n[cache]\nmax_bytes = \"8MiB\"\nttl = \"300s\"\n\
             [[cache.rule]]\ndatabase = \"{name}\"\ntables = [\"products\", \"public.prices\", \"items\"]\n"
        );
    (name, toml)
}

async fn counter(sidecar: &Running, name: &str) -> f64 {
    scrape(sidecar.metrics_addr, name).await.unwrap_or(0.0)
}

/// Polls (bounded: 20 s) until the counter `name` is at least `value`.
async fn until_at_least(addr: SocketAddr, name: &str, value: f64) {
    for _ in 0..1000 {
        if scrape(addr, name).await.unwrap_or(0.0) >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached {value}");
}

async fn read(client: &tokio_postgres::Client, id: i32) -> String {
    client.query_one(READ, &[&id]).await.unwrap().get(0)
}

/// Reads `id` until the sidecar has a reply of it stored: the read was stored or served from
/// the cache (its cache listens for invalidations only once its LISTEN connection is up; until
/// then nothing is stored).
async fn until_stored(sidecar: &Running, client: &tokio_postgres::Client, id: i32) {
    let cached = || async {
        counter(sidecar, "pgsidecar_cache_stores_total").await
            + counter(sidecar, "pgsidecar_cache_hits_total").await
    };
    for _ in 0..500 {
        let before = cached().await;
        read(client, id).await;
        if cached().await > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http_get(sidecar.metrics_addr, "/metrics").await.1;
    let cache: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pgsidecar_cache"))
        .collect();
    panic!("the cache never stored a read: {cache:#?}");
}

/// Reads `id` through `client` until it says `value` (bounded: 20 s); returns how long.
async fn until_reads(client: &tokio_postgres::Client, id: i32, value: &str) -> Duration {
    let started = Instant::now();
    for _ in 0..2000 {
        if read(client, id).await == value {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("product {id} never read {value:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_sidecar_invalidate_the_other() {
    let (name, toml) = setup("cache_x");
    let (a, b) = (start(&toml).await, start(&toml).await);
    let ca = tenant_client(&a, &name, "acme").await;
    let cb = tenant_client(&b, &name, "acme").await;
    until_stored(&b, &cb, 1).await;
    let hits = counter(&b, "pgsidecar_cache_hits_total").await;
    assert_eq!(read(&cb, 1).await, "p1");
    assert_eq!(counter(&b, "pgsidecar_cache_hits_total").await, hits + 1.0);

    // Committed through A: B's entry goes once the notification arrives.
    ca.execute("UPDATE products SET name = 'banana' WHERE id = 1", &[])
        .await
        .unwrap();
    let delay = until_reads(&cb, 1, "banana").await;
    eprintln!("commit through A to a fresh read through B: {delay:?}");
    // A simple-Query write (announced right after its transaction) and one in an extended
    // batch (the batch carries the announcement in its own transaction) alike.
    ca.simple_query("UPDATE products SET name = 'fig' WHERE id = 1")
        .await
        .unwrap();
    until_reads(&cb, 1, "fig").await;
    // Inside an explicit transaction (the announcement goes with it): nothing changes for B
    // until the COMMIT.
    until_stored(&b, &cb, 1).await;
    ca.simple_query("BEGIN").await.unwrap();
    ca.simple_query("UPDATE prices SET price = 7 WHERE id = 1")
        .await
        .unwrap();
    ca.simple_query("UPDATE products SET name = 'grape' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(read(&cb, 1).await, "fig");
    ca.simple_query("COMMIT").await.unwrap();
    until_reads(&cb, 1, "grape").await;

    // A client reads its own committed write at once (its sidecar forgot the entry before
    // the client could ask again).
    until_stored(&a, &ca, 1).await;
    ca.execute("UPDATE products SET name = 'cherry' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(read(&ca, 1).await, "cherry");
    until_reads(&cb, 1, "cherry").await;
    until_stored(&b, &cb, 1).await;

    // A rolled-back write announces nothing: B's entry survives a later committed write to
    // another table, whose notification B has handled.
    let invalidations = counter(&b, "pgsidecar_cache_invalidations_total").await;
    ca.batch_execute("BEGIN; UPDATE products SET name = 'durian' WHERE id = 1; ROLLBACK")
        .await
        .unwrap();
    ca.simple_query("BEGIN").await.unwrap();
    ca.execute("UPDATE products SET name = 'elder' WHERE id = 1", &[])
        .await
        .unwrap();
    ca.simple_query("ROLLBACK").await.unwrap();
    ca.execute("UPDATE prices SET price = 42 WHERE id = 1", &[])
        .await
        .unwrap();
    until_at_least(
        b.metrics_addr,
        "pgsidecar_cache_invalidations_total",
        invalidations + 1.0,
    )
    .await;
    let hits = counter(&b, "pgsidecar_cache_hits_total").await;
    assert_eq!(read(&cb, 1).await, "cherry");
    assert_eq!(counter(&b, "pgsidecar_cache_hits_total").await, hits + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_invalidate_once_the_triggers_are_installed() {
    let (name, toml) = setup("cache_direct");
    let config = pgsidecar::config::Config::from_toml(&toml, &Default::default()).unwrap();
    let sql = pgsidecar::cache::cache_sql(config.cache.as_ref().unwrap());
    assert!(sql.contains("CREATE TRIGGER"), "{sql}");
    pg().psql(&name, &sql)
        .expect("the cache-sql output installs");
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &client, 2).await;
    let direct = connect_direct_superuser(&name).await;
    direct
        .execute("UPDATE products SET name = 'direct' WHERE id = 2", &[])
        .await
        .unwrap();
    let delay = until_reads(&client, 2, "direct").await;
    eprintln!("direct commit to a fresh read through the sidecar: {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_receive_each_others_cached_rows() {
    let (name, toml) = setup("cache_tenants");
    let sidecar = start(&toml).await;
    let acme = tenant_client(&sidecar, &name, "acme").await;
    let globex = tenant_client(&sidecar, &name, "globex").await;
    until_stored(&sidecar, &acme, 3).await;
    let values =
        |rows: Vec<tokio_postgres::Row>| -> Vec<i32> { rows.iter().map(|r| r.get(0)).collect() };
    let sql = "SELECT v FROM items WHERE v > $1 ORDER BY v";
    let hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
    for _ in 0..3 {
        assert_eq!(values(acme.query(sql, &[&0]).await.unwrap()), vec![1, 2]);
        assert_eq!(values(globex.query(sql, &[&0]).await.unwrap()), vec![10]);
        // The simple protocol too, same text for both tenants.
        let simple = "SELECT v FROM items ORDER BY v";
        let rows = |m: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
            m.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(rows(acme.simple_query(simple).await.unwrap()), ["1", "2"]);
        assert_eq!(rows(globex.simple_query(simple).await.unwrap()), ["10"]);
    }
    // Rounds two and three were served from memory, each tenant its own.
    assert!(counter(&sidecar, "pgsidecar_cache_hits_total").await >= hits + 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_reads_are_never_stored() {
    let (name, toml) = setup("cache_refused");
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &client, 4).await;
    let stores = counter(&sidecar, "pgsidecar_cache_stores_total").await;
    let hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
    for _ in 0..2 {
        for sql in [
            "SELECT name, now() FROM products WHERE id = 5",
            "SELECT name, random() FROM products WHERE id = 5",
            "SELECT name FROM products WHERE id = 5 FOR UPDATE",
            "SELECT id FROM orders",
            "SELECT relname FROM pg_class WHERE relname = 'products'",
            "/* pgsidecar: nocache */ SELECT name FROM products WHERE id = 5",
        ] {
            client.simple_query(sql).await.unwrap();
        }
        // Inside a transaction that wrote.
        client
            .batch_execute(
                "BEGIN; UPDATE prices SET price = price WHERE id = 5; \
                 SELECT name FROM products WHERE id = 5; COMMIT",
            )
            .await
            .unwrap();
        client.simple_query("BEGIN").await.unwrap();
        client
            .query_one("SELECT name FROM products WHERE id = 6", &[])
            .await
            .unwrap();
        client.simple_query("COMMIT").await.unwrap();
        // A temporary table (pins the session to its connection).
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS scratch (x int); SELECT * FROM pg_temp.scratch",
            )
            .await
            .unwrap();
    }
    assert_eq!(
        counter(&sidecar, "pgsidecar_cache_stores_total").await,
        stores
    );
    assert_eq!(counter(&sidecar, "pgsidecar_cache_hits_total").await, hits);
    let refusals = scrape_text(&sidecar).await;
    for reason in ["function", "locking", "not_whitelisted", "catalog", "hint"] {
        let line = format!("pgsidecar_cache_refusals_total{{reason=\"{reason}\"}}");
        assert!(
            metric(&refusals, &line).unwrap_or(0.0) > 0.0,
            "no refusal for {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_use_the_cache_only_when_allowed() {
    let (name, toml) = setup("cache_ro");
    let allowed = toml.replace("[cache]\n", "[cache]\nin_read_only_transactions = true\n");
    for (toml, served) in [(toml, false), (allowed, true)] {
        let sidecar = start(&toml).await;
        let client = tenant_client(&sidecar, &name, "acme").await;
        until_stored(&sidecar, &client, 3).await;
        let hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
        eprintln!("pass {served}: begin read only");
        client.batch_execute("BEGIN READ ONLY").await.unwrap();
        assert_eq!(read(&client, 3).await, "p3");
        client.batch_execute("COMMIT").await.unwrap();
        let hit = counter(&sidecar, "pgsidecar_cache_hits_total").await > hits;
        assert_eq!(hit, served, "in_read_only_transactions = {served}");
        // A transaction that may write never uses the cache.
        let hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(read(&client, 3).await, "p3");
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(counter(&sidecar, "pgsidecar_cache_hits_total").await, hits);
    }
}

async fn scrape_text(sidecar: &Running) -> String {
    http_get(sidecar.metrics_addr, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_hits_between_misses_keep_their_order() {
    let (name, toml) = setup("cache_pipeline");
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &client, 7).await;
    until_stored(&sidecar, &client, 8).await;
    let statement = client.prepare(READ).await.unwrap();
    for round in 0..3 {
        // tokio-postgres sends these together on one connection: hits (7, 8) and misses (the
        // others, fresh each round) interleaved; each reply must be its own request's.
        let ids = [7, 9 + round, 8, 12 + round, 7];
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
            ids.iter().map(|id| [id as _]).collect();
        let (r0, r1, r2, r3, r4) = tokio::join!(
            client.query_one(&statement, &params[0]),
            client.query_one(&statement, &params[1]),
            client.query_one(&statement, &params[2]),
            client.query_one(&statement, &params[3]),
            client.query_one(&statement, &params[4]),
        );
        for (id, row) in ids.iter().zip([r0, r1, r2, r3, r4]) {
            let got: String = row.unwrap().get(0);
            assert_eq!(got, format!("p{id}"), "round {round}");
        }
    }
    assert!(counter(&sidecar, "pgsidecar_cache_hits_total").await >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_concurrent_writers_and_readers_every_cached_answer_is_current() {
    let (name, toml) = setup("cache_stress");
    let (a, b) = (start(&toml).await, start(&toml).await);
    let probe = tenant_client(&b, &name, "acme").await;
    until_stored(&b, &probe, 0).await;
    let mut tasks = Vec::new();
    for w in 0..3 {
        let client = tenant_client(&a, &name, "acme").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let id = 1 + (i * 7 + w * 3) % 20;
                client
                    .execute(
                        "UPDATE products SET name = $1 WHERE id = $2",
                        &[&format!("w{w}-{i}"), &id],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for (r, sidecar) in [&a, &b, &a, &b].into_iter().enumerate() {
        let client = tenant_client(sidecar, &name, "acme").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                let id = 1 + (i * 5 + r) % 20;
                client.query_one(READ, &[&(id as i32)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Quiescence: a last write through A; once B reads it, B has handled every notification
    // before it (they arrive in commit order).
    let writer = tenant_client(&a, &name, "acme").await;
    writer
        .execute("UPDATE products SET name = 'last' WHERE id = 0", &[])
        .await
        .unwrap();
    until_reads(&probe, 0, "last").await;
    let direct = connect_direct_superuser(&name).await;
    let readers = [&writer, &probe];
    for id in 1..=20 {
        let truth: String = direct
            .query_one("SELECT name FROM products WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        for client in readers {
            for _ in 0..2 {
                assert_eq!(read(client, id).await, truth, "product {id}");
            }
        }
    }
    assert!(counter(&b, "pgsidecar_cache_hits_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_send_one_query() {
    let (name, toml) = setup("cache_flight");
    let sidecar = start(&toml).await;
    let probe = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &probe, 1).await;
    // The first read of product 11 waits on a lock; the others must wait for its reply, not
    // send their own. (Each client prepares first: a Parse would wait on the lock too.)
    let mut clients = Vec::new();
    for _ in 0..4 {
        let client = tenant_client(&sidecar, &name, "acme").await;
        let statement = client.prepare(READ).await.unwrap();
        clients.push((client, statement));
    }
    let direct = connect_direct_superuser(&name).await;
    direct
        .batch_execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waits = counter(&sidecar, "pgsidecar_cache_single_flight_waits_total").await;
    let mut readers = Vec::new();
    for (client, statement) in clients {
        readers.push(tokio::spawn(async move {
            let row = client.query_one(&statement, &[&11]).await.unwrap();
            row.get::<_, String>(0)
        }));
    }
    until_at_least(
        sidecar.metrics_addr,
        "pgsidecar_cache_single_flight_waits_total",
        waits + 3.0,
    )
    .await;
    // The three wait for the first one's reply; its query may still be on its way to the
    // server (it reaches the lock after the others have started waiting for it).
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT name FROM products%' \
                   AND wait_event_type = 'Lock'";
    until_positive(&direct, waiting).await;
    let sent: i64 = direct.query_one(waiting, &[]).await.unwrap().get(0);
    assert_eq!(sent, 1, "one query upstream for four clients");
    let stores = counter(&sidecar, "pgsidecar_cache_stores_total").await;
    direct.batch_execute("COMMIT").await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), "p11");
    }
    assert_eq!(
        counter(&sidecar, "pgsidecar_cache_stores_total").await,
        stores + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_behind_a_settings_change_uses_the_new_settings() {
    let (name, toml) = setup("cache_settings");
    pg().psql(
        &name,
        &format!(
            "CREATE SCHEMA other AUTHORIZATION {name};
             CREATE TABLE other.products (id int PRIMARY KEY, name text);
             ALTER TABLE other.products OWNER TO {name};
             INSERT INTO other.products VALUES (1, 'other1');
             GRANT USAGE ON SCHEMA other TO {name}_app;
             GRANT SELECT ON other.products TO {name}_app;"
        ),
    )
    .unwrap();
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &client, 1).await;
    let statement = client.prepare(READ).await.unwrap();
    // Sent together: the read must run with the new search_path, not hit the old key.
    let (set, row) = tokio::join!(
        client.simple_query("SET search_path = other, public"),
        client.query_one(&statement, &[&1]),
    );
    set.unwrap();
    assert_eq!(row.unwrap().get::<_, String>(0), "other1");
    assert_eq!(read(&client, 1).await, "other1");
    client.simple_query("RESET search_path").await.unwrap();
    assert_eq!(read(&client, 1).await, "p1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pipelined_behind_a_held_begin_are_not_served() {
    let (name, toml) = setup("cache_begin");
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &client, 1).await;
    let statement = client.prepare(READ).await.unwrap();
    let hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
    // The BEGIN is held by the sidecar and goes upstream with the first read; the second read
    // is inside the transaction (one snapshot) and must not come from the cache.
    let (begin, first, second) = tokio::join!(
        client.simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ"),
        client.query_one(&statement, &[&2]),
        client.query_one(&statement, &[&1]),
    );
    begin.unwrap();
    assert_eq!(first.unwrap().get::<_, String>(0), "p2");
    assert_eq!(second.unwrap().get::<_, String>(0), "p1");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(counter(&sidecar, "pgsidecar_cache_hits_total").await, hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_never_fills_the_cache() {
    let (name, toml) = setup("cache_replica");
    let replica = pg()
        .start_replica("-c recovery_min_apply_delay=3s")
        .expect("start a delayed replica");
    let app = format!("{name}_app");
    let toml = toml.replace(
        &format!("primary = \"{}\"\n", pg().url(&app, PASSWORD, &name)),
        &format!(
            "primary = \"{}\"\nreplicas = [\"{}\"]\nreplica_check_interval = \"100ms\"\n",
            pg().url(&app, PASSWORD, &name),
            replica.url(&app, PASSWORD, &name)
        ),
    );
    assert!(toml.contains("replicas"), "{toml}");
    let sidecar = start(&toml).await;
    let writer = tenant_client(&sidecar, &name, "acme").await;
    let reader = tenant_client(&sidecar, &name, "globex").await;
    // Reads hinted to the replica: a miss must still be read on the primary, never on the
    // replica that has not applied the write whose invalidation made it a miss.
    let hinted = "/* pgsidecar: route=replica */ SELECT name FROM products WHERE id = $1";
    let statement = reader.prepare(hinted).await.unwrap();
    let name_of = |row: tokio_postgres::Row| row.get::<_, String>(0);
    for _ in 0..500 {
        let stores = counter(&sidecar, "pgsidecar_cache_stores_total").await;
        reader.query_one(&statement, &[&1]).await.unwrap();
        if counter(&sidecar, "pgsidecar_cache_stores_total").await > stores {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer
        .execute("UPDATE products SET name = 'fresh' WHERE id = 1", &[])
        .await
        .unwrap();
    for _ in 0..2 {
        let row = reader.query_one(&statement, &[&1]).await.unwrap();
        assert_eq!(name_of(row), "fresh");
    }
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_table_that_shadows_a_whitelisted_one_never_meets_the_cache() {
    let (name, toml) = setup("cache_temp");
    pg().psql(
        &name,
        &format!("GRANT TEMPORARY ON DATABASE {name} TO {name}_app"),
    )
    .unwrap();
    let sidecar = start(&toml).await;
    let client = tenant_client(&sidecar, &name, "acme").await;
    // The sidecar must be listening before the write, or its announcement is missed.
    until_stored(&sidecar, &client, 2).await;
    let invalidations = counter(&sidecar, "pgsidecar_cache_invalidations_total").await;
    client
        .batch_execute(
            "CREATE TEMP TABLE products (id int, name text); \
             INSERT INTO products VALUES (1, 'mine')",
        )
        .await
        .unwrap();
    // The DDL counts as writing every table: forgotten here at once, then again when the
    // sidecar's own announcement comes back through its LISTEN connection. Only after both is
    // the other client's entry stored for good.
    until_at_least(
        sidecar.metrics_addr,
        "pgsidecar_cache_invalidations_total",
        invalidations + 2.0,
    )
    .await;
    let other = tenant_client(&sidecar, &name, "acme").await;
    until_stored(&sidecar, &other, 1).await;
    let stores = counter(&sidecar, "pgsidecar_cache_stores_total").await;
    // Same text, same tenant, same settings: the temporary table answers, not the cache, and
    // its rows are never stored for anyone else.
    for _ in 0..3 {
        assert_eq!(read(&client, 1).await, "mine");
        assert_eq!(read(&other, 1).await, "p1");
    }
    assert_eq!(
        counter(&sidecar, "pgsidecar_cache_stores_total").await,
        stores
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_of_another_portal_is_not_answered_from_the_cache() {
    use postgres_protocol::message::frontend as fe;
    let (name, toml) = setup("cache_portal");
    let sidecar = start(&toml).await;
    let user = format!("{name}.acme");
    let mut conn = raw_connect(sidecar.addr, &user, PASSWORD, &name, &[])
        .await
        .unwrap();
    let sql = "SELECT name FROM products WHERE id = 3";
    // Parse + Bind of portal "" + Execute "" + Sync, twice: stored, then a hit.
    let request = |execute_portal: &str| {
        let mut out = bytes::BytesMut::new();
        fe::parse("", sql, [], &mut out).unwrap();
        fe::bind(
            "",
            "",
            [],
            [],
            |_: (), _| Ok(postgres_protocol::IsNull::No),
            [],
            &mut out,
        )
        .map_err(|_| ())
        .unwrap();
        fe::execute(execute_portal, 0, &mut out).unwrap();
        fe::sync(&mut out);
        out
    };
    // Until one is answered from the cache (it stores once its LISTEN connection is up).
    let mut hits = 0.0;
    for _ in 0..500 {
        conn.write_all(&request("")).await.unwrap();
        let replies = read_until_ready(&mut conn, 1).await;
        assert_eq!(tags(&replies), "12DCZ");
        hits = counter(&sidecar, "pgsidecar_cache_hits_total").await;
        if hits > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hits > 0.0, "never answered from the cache");
    // The same Bind, but an Execute of a portal that does not exist: the server's error, not
    // the cached rows.
    conn.write_all(&request("other")).await.unwrap();
    let replies = read_until_ready(&mut conn, 1).await;
    assert_eq!(
        error_code(&replies).as_deref(),
        Some("34000"),
        "{}",
        tags(&replies)
    );
    assert_eq!(counter(&sidecar, "pgsidecar_cache_hits_total").await, hits);
}
