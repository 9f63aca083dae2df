//! Writes across shards, against 3 real shard servers: multi-row INSERTs split by key (literals
//! and Bind parameters) land where the hash says, UPDATE/DELETE without a key and with keys on
//! several shards, DDL and writes to tables on every shard, RETURNING from every shard — all
//! committed with two-phase commit; a statement that fails on one shard, and a shard that
//! refuses PREPARE, leave nothing anywhere; and a sidecar killed (SIGKILL) after phase one, or
//! after its commit decision, is resolved by the restarted sidecar to what its log says.

mod support;

use std::time::Duration;

use pgsidecar::localpg::LocalPostgres;
use pgsidecar::route::shard::{hash_shard, Key};
use support::shards::shard_lines;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

const TABLE: &str = "SET ROLE app; CREATE TABLE items (customer_id bigint, note text)";
const SHARDED: &str = "[[sharded_table]]\ndatabase = \"app\"\ntable = \"items\"\n\
    column = \"customer_id\"\ntype = \"bigint\"\n";

fn shard(prepared: usize) -> LocalPostgres {
    let pg = LocalPostgres::start(&format!("-c max_prepared_transactions={prepared}"))
        .expect("start a shard server");
    pg.create_user_and_database("app", PASSWORD, "app")
        .expect("role and database");
    pg.psql("app", TABLE).expect("the table");
    pg
}

fn toml(urls: &[String], state_dir: &std::path::Path, listen: &str) -> String {
    let shards = shard_lines(urls);
    format!(
        "listen = \"{listen}\"\nmetrics_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\
         [pool]\nsize = 2\n\n[[database]]\nname = \"app\"\ntwo_phase_commit = true\n{shards}\n\
         [[user]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n{SHARDED}",
        state_dir.display()
    )
}

fn url(pg: &LocalPostgres) -> String {
    pg.url("app", PASSWORD, "app")
}

fn one(pg: &LocalPostgres, sql: &str) -> String {
    pg.psql("app", sql).unwrap().trim().to_owned()
}

/// The keys on `pg`, in order.
fn keys(pg: &LocalPostgres) -> String {
    one(
        pg,
        "SELECT coalesce(string_agg(customer_id::text, ',' ORDER BY customer_id), '') FROM items",
    )
}

fn expected_keys(all: &[i64], n: usize) -> String {
    let mut mine: Vec<i64> = all
        .iter()
        .copied()
        .filter(|k| hash_shard(Key::Int(*k), 3) == n)
        .collect();
    mine.sort_unstable();
    mine.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn tag(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .expect("a command tag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_shards_commit_everywhere_or_nowhere() {
    let shards: Vec<LocalPostgres> = (0..3).map(|_| shard(10)).collect();
    let state = tempfile::tempdir().unwrap();
    let urls: Vec<String> = shards.iter().map(url).collect();
    let sidecar = start(&toml(&urls, state.path(), "127.0.0.1:0")).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();

    // A multi-row INSERT of literals, and one of parameters, split by key.
    let literal: Vec<i64> = (1..=10).collect();
    let values: Vec<String> = literal.iter().map(|k| format!("({k}, 'n{k}')")).collect();
    let inserted = client
        .simple_query(&format!(
            "INSERT INTO items (customer_id, note) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    assert_eq!(tag(&inserted), 10);
    // Without a column list the key's position is unknown: refused, never sent everywhere.
    let err = client
        .batch_execute("INSERT INTO items VALUES (98, 'x'), (99, 'y')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    let n = client
        .execute(
            "INSERT INTO items (customer_id, note) VALUES ($1, $2), ($3, $4), ($5, $6)",
            &[&11i64, &"p11", &12i64, &"p12", &13i64, &"p13"],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let all: Vec<i64> = (1..=13).collect();
    for (i, pg) in shards.iter().enumerate() {
        assert_eq!(keys(pg), expected_keys(&all, i), "shard {i} holds its keys");
    }
    // UPDATE without a key, DELETE of keys on several shards, RETURNING from each.
    assert_eq!(
        client
            .execute("UPDATE items SET note = 'u'", &[])
            .await
            .unwrap(),
        13
    );
    let returned = client
        .query(
            "UPDATE items SET note = 'r' WHERE customer_id IN (4, 5, 6) RETURNING customer_id",
            &[],
        )
        .await
        .unwrap();
    let mut got: Vec<i64> = returned.iter().map(|r| r.get(0)).collect();
    got.sort_unstable();
    assert_eq!(got, vec![4, 5, 6]);
    assert_eq!(
        tag(&client
            .simple_query("DELETE FROM items WHERE customer_id IN (1, 2, 3)")
            .await
            .unwrap()),
        3
    );
    // DDL and writes to a table that is not sharded: every shard.
    client
        .batch_execute("CREATE TABLE settings (k text, v text)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO settings VALUES ('a', 'b')")
        .await
        .unwrap();
    for pg in &shards {
        assert_eq!(one(pg, "SELECT count(*) FROM settings"), "1");
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }

    // A statement that fails on one shard: nothing anywhere.
    let bad_shard = hash_shard(Key::Int(100), 3);
    shards[bad_shard]
        .psql("app", "ALTER TABLE items ADD CHECK (note <> 'bad')")
        .unwrap();
    // One row on each shard, so the statement is split across all three.
    let err = client
        .batch_execute(&insert_sql(&key_per_shard(100), "bad"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23514"), "{err}");
    for pg in &shards {
        assert_eq!(
            one(pg, "SELECT count(*) FROM items WHERE customer_id >= 100"),
            "0"
        );
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }
    // Inside a transaction, a write to several shards is refused.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO items (customer_id, note) VALUES (50, 'tx')")
        .await
        .unwrap();
    let err = client
        .batch_execute("UPDATE items SET note = 'x'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();

    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    for (name, at_least) in [
        ("pgsidecar_two_phase_total{outcome=\"committed\"}", 6.0),
        ("pgsidecar_two_phase_total{outcome=\"rolled_back\"}", 1.0),
        (
            "pgsidecar_cross_shard_total{kind=\"write\",result=\"ok\"}",
            6.0,
        ),
    ] {
        assert!(
            metric(&metrics, name).unwrap_or(0.0) >= at_least,
            "{name} in {metrics}"
        );
    }
    // A shard that refuses PREPARE (max_prepared_transactions = 0): rolled back everywhere.
    let refusing = shard(0);
    let urls2 = vec![url(&shards[0]), url(&shards[1]), url(&refusing)];
    let state2 = tempfile::tempdir().unwrap();
    let second = start(&toml(&urls2, state2.path(), "127.0.0.1:0")).await;
    let c2 = connect(second.addr, "app", PASSWORD, "app").await.unwrap();
    let keys_everywhere: Vec<String> = (200..212).map(|k| format!("({k}, 'z')")).collect();
    let err = c2
        .batch_execute(&format!(
            "INSERT INTO items (customer_id, note) VALUES {}",
            keys_everywhere.join(", ")
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err}");
    for pg in [&shards[0], &shards[1], &refusing] {
        assert_eq!(
            one(pg, "SELECT count(*) FROM items WHERE customer_id >= 200"),
            "0"
        );
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }
    // `check --connect` names the shard that cannot prepare.
    let path = state2.path().join("check.toml");
    std::fs::write(&path, toml(&urls2, state2.path(), "127.0.0.1:0")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["check", "--connect", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("shard 2 has max_prepared_transactions = 0"),
        "{stdout}"
    );
    assert!(!stdout.contains("shard 0 has"), "{stdout}");
}

/// A TCP proxy that forwards until the client side sends `needle`, then holds that and
/// everything after it (the server never sees it).
async fn hold_proxy(target: u16, needle: &'static [u8]) -> u16 {
    cuttable_hold_proxy(target, needle).await.0
}

/// As [`hold_proxy`]; sending `true` on the returned channel closes the held connections and
/// stops holding (later connections forward everything).
async fn cuttable_hold_proxy(
    target: u16,
    needle: &'static [u8],
) -> (u16, std::sync::Arc<tokio::sync::watch::Sender<bool>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, _) = tokio::sync::watch::channel(false);
    let cut = std::sync::Arc::new(cut);
    let cuts = std::sync::Arc::clone(&cut);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let mut cut = cuts.subscribe();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    let held = buf[..n].windows(needle.len()).any(|w| w == needle);
                    if n == 0 || (held && !*cut.borrow()) {
                        // Held: the connection stays open, nothing more reaches the server;
                        // until cut, which closes it.
                        let _ = cut.wait_for(|c| *c).await;
                        return;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, cut)
}

/// An INSERT of one row per key, with this note.
fn insert_sql(keys: &[i64], note: &str) -> String {
    let rows: Vec<String> = keys.iter().map(|k| format!("({k}, '{note}')")).collect();
    format!(
        "INSERT INTO items (customer_id, note) VALUES {}",
        rows.join(", ")
    )
}

/// The sidecar binary over `urls` (its state in `state`) and, in the background, a client
/// inserting one row per key through it.
async fn binary_writing(
    urls: &[String],
    state: &std::path::Path,
    keys: &[i64],
    note: &str,
) -> (
    tokio::process::Child,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let port = free_port();
    let sidecar = spawn_sidecar(&toml(urls, state, &format!("127.0.0.1:{port}")), port).await;
    let client = connect(([127, 0, 0, 1], port).into(), "app", PASSWORD, "app")
        .await
        .unwrap();
    let sql = insert_sql(keys, note);
    (
        sidecar,
        tokio::spawn(async move { client.batch_execute(&sql).await }),
    )
}

/// The sidecar binary on `port` with this configuration.
async fn spawn_sidecar(config: &str, port: u16) -> tokio::process::Child {
    let path = std::env::temp_dir().join(format!("pgsidecar-two-phase-{port}.toml"));
    std::fs::write(&path, config).unwrap();
    spawn_binary_with(&path, port).await
}

fn free_port() -> u16 {
    pgsidecar::localpg::free_port().unwrap()
}

/// Polls `sql` on `pg` until it prints `want` (bounded: 20 s).
async fn until(pg: &LocalPostgres, sql: &str, want: &str) {
    for _ in 0..1000 {
        if one(pg, sql) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sql} never gave {want}");
}

/// One key on each shard, from `from` on.
fn key_per_shard(from: i64) -> Vec<i64> {
    (0..3)
        .map(|n| (from..).find(|k| hash_shard(Key::Int(*k), 3) == n).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_between_the_phases_is_resolved_by_its_restart() {
    let shards: Vec<LocalPostgres> = (0..3).map(|_| shard(10)).collect();
    let state = tempfile::tempdir().unwrap();
    let direct: Vec<String> = shards.iter().map(url).collect();
    let through = |proxy: u16| {
        let mut urls = direct.clone();
        urls[2] = format!("postgres://app:{PASSWORD}@127.0.0.1:{proxy}/app");
        urls
    };
    let prepared = "SELECT count(*) FROM pg_prepared_xacts";

    // Killed after the decision to commit: shards 0 and 1 committed, shard 2 still prepared.
    let keys = key_per_shard(1000);
    let proxy = hold_proxy(shards[2].port, b"COMMIT PREPARED").await;
    let (mut sidecar, write) = binary_writing(&through(proxy), state.path(), &keys, "c").await;
    until(
        &shards[0],
        &format!("SELECT count(*) FROM items WHERE customer_id = {}", keys[0]),
        "1",
    )
    .await;
    until(
        &shards[1],
        &format!("SELECT count(*) FROM items WHERE customer_id = {}", keys[1]),
        "1",
    )
    .await;
    until(&shards[2], prepared, "1").await;
    sidecar.kill().await.unwrap();
    assert!(
        write.await.unwrap().is_err(),
        "the client saw its connection end"
    );
    let port = free_port();
    let sidecar = spawn_sidecar(
        &toml(&direct, state.path(), &format!("127.0.0.1:{port}")),
        port,
    )
    .await;
    until(&shards[2], prepared, "0").await;
    assert_eq!(
        one(
            &shards[2],
            &format!("SELECT count(*) FROM items WHERE customer_id = {}", keys[2])
        ),
        "1",
        "committed as logged"
    );
    drop(sidecar);

    // Killed before every shard prepared: rolled back everywhere.
    let keys = key_per_shard(2000);
    let proxy = hold_proxy(shards[2].port, b"PREPARE TRANSACTION").await;
    let (mut sidecar, write) = binary_writing(&through(proxy), state.path(), &keys, "r").await;
    until(&shards[0], prepared, "1").await;
    until(&shards[1], prepared, "1").await;
    sidecar.kill().await.unwrap();
    assert!(write.await.unwrap().is_err());
    let port = free_port();
    let _sidecar = spawn_sidecar(
        &toml(&direct, state.path(), &format!("127.0.0.1:{port}")),
        port,
    )
    .await;
    for pg in &shards {
        until(pg, prepared, "0").await;
        assert_eq!(
            one(pg, "SELECT count(*) FROM items WHERE customer_id >= 2000"),
            "0",
            "rolled back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_a_sharded_table_is_split_by_key() {
    use futures_util::SinkExt;
    let shards: Vec<LocalPostgres> = (0..3).map(|_| shard(10)).collect();
    let state = tempfile::tempdir().unwrap();
    let urls: Vec<String> = shards.iter().map(url).collect();
    let sidecar = start(&toml(&urls, state.path(), "127.0.0.1:0")).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();

    // Text, rows split across CopyData messages anywhere.
    let text: String = (1000..1300).map(|k| format!("{k}\tnote\\t{k}\n")).collect();
    let sink = client
        .copy_in("COPY items (customer_id, note) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in text.as_bytes().chunks(777) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 300);
    // CSV with a header, the key in the second column, quoted fields.
    let sink = client
        .copy_in("COPY items (note, customer_id) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let csv = "note,customer_id\n\"a,\"\"b\"\"\",1500\n\"multi\nline\",1501\nplain,1502";
    sink.send(bytes::Bytes::from(csv)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    // Binary.
    let sink = client
        .copy_in("COPY items (customer_id, note) FROM STDIN BINARY")
        .await
        .unwrap();
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(
        sink,
        &[
            tokio_postgres::types::Type::INT8,
            tokio_postgres::types::Type::TEXT,
        ],
    );
    futures_util::pin_mut!(writer);
    for k in 1600i64..1650 {
        writer.as_mut().write(&[&k, &"bin"]).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 50);
    let all: Vec<i64> = (1000..1300).chain(1500..1503).chain(1600..1650).collect();
    for (i, pg) in shards.iter().enumerate() {
        assert_eq!(keys(pg), expected_keys(&all, i), "shard {i} holds its keys");
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }
    assert_eq!(
        one(
            &shards[hash_shard(Key::Int(1500), 3)],
            "SELECT note FROM items WHERE customer_id = 1500"
        ),
        "a,\"b\""
    );
    assert_eq!(
        one(
            &shards[hash_shard(Key::Int(1000), 3)],
            "SELECT note FROM items WHERE customer_id = 1000"
        ),
        "note\t1000"
    );

    // A bad key anywhere: nothing lands, the session goes on.
    let sink = client
        .copy_in("COPY items (customer_id, note) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from("2000\tok\nabc\tbad\n2001\tok\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"), "{err}");
    for pg in &shards {
        assert_eq!(
            one(pg, "SELECT count(*) FROM items WHERE customer_id >= 2000"),
            "0"
        );
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, all.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_shards_commits_on_all_or_none() {
    let shards: Vec<LocalPostgres> = (0..3).map(|_| shard(10)).collect();
    let state = tempfile::tempdir().unwrap();
    let urls: Vec<String> = shards.iter().map(url).collect();
    let sidecar = start(&toml(&urls, state.path(), "127.0.0.1:0")).await;
    let mut client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    let count = |pg: &LocalPostgres, from: i64| {
        one(
            pg,
            &format!(
                "SELECT count(*) FROM items WHERE customer_id >= {from} AND customer_id < {}",
                from + 1000
            ),
        )
    };
    let on = |k: i64| hash_shard(Key::Int(k), 3);

    // Committed on every shard it touched; it reads its own writes where they are.
    let k = key_per_shard(3000);
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; INSERT INTO items (customer_id, note) VALUES ({}, 'a')",
            k[0]
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO items (customer_id, note) VALUES ({}, 'b')",
            k[1]
        ))
        .await
        .unwrap();
    let isolation: String = client
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        isolation, "repeatable read",
        "the second shard began as the first"
    );
    let note: String = client
        .query_one("SELECT note FROM items WHERE customer_id = $1", &[&k[0]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "a", "its own write on the first shard");
    for pg in &shards {
        assert_eq!(count(pg, 3000), "0", "nothing visible before COMMIT");
    }
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(&shards[on(k[0])], 3000), "1");
    assert_eq!(count(&shards[on(k[1])], 3000), "1");

    // Through a driver's transaction (extended protocol), rolled back everywhere.
    let k = key_per_shard(4000);
    let tx = client.transaction().await.unwrap();
    for key in &k {
        tx.execute(
            "INSERT INTO items (customer_id, note) VALUES ($1, 'r')",
            &[key],
        )
        .await
        .unwrap();
    }
    tx.rollback().await.unwrap();
    for pg in &shards {
        assert_eq!(count(pg, 4000), "0");
    }
    let tx = client.transaction().await.unwrap();
    for key in &k {
        tx.execute(
            "INSERT INTO items (customer_id, note) VALUES ($1, 'c')",
            &[key],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    for pg in &shards {
        assert_eq!(count(pg, 4000), "1");
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }

    // A statement fails on one shard: the transaction is failed everywhere, COMMIT rolls back.
    let k = key_per_shard(5000);
    shards[on(k[1])]
        .psql(
            "app",
            "ALTER TABLE items ADD CONSTRAINT no_bad CHECK (note <> 'bad')",
        )
        .unwrap();
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items (customer_id, note) VALUES ({}, 'ok')",
            k[0]
        ))
        .await
        .unwrap();
    let err = client
        .batch_execute(&format!(
            "INSERT INTO items (customer_id, note) VALUES ({}, 'bad')",
            k[1]
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23514"), "{err}");
    let err = client
        .batch_execute(&format!(
            "INSERT INTO items (customer_id, note) VALUES ({}, 'x')",
            k[2]
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
    let tag = client.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        tag.last(),
        Some(SimpleQueryMessage::CommandComplete(0))
    ));
    for pg in &shards {
        assert_eq!(count(pg, 5000), "0");
    }

    // Savepoints and session changes are refused once it spreads; the session goes on.
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items (customer_id, note) VALUES ({}, 's'); INSERT INTO items (customer_id, note) VALUES ({}, 's')",
            k[0], k[2]
        ))
        .await
        .unwrap_err();
    client.batch_execute("ROLLBACK").await.unwrap();
    for refused in [
        "SAVEPOINT a",
        "PREPARE TRANSACTION 'mine'",
        "SET work_mem = '8MB'",
    ] {
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items (customer_id, note) VALUES ({}, 's')",
                k[0]
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO items (customer_id, note) VALUES ({}, 's')",
                k[2]
            ))
            .await
            .unwrap();
        let err = client.batch_execute(refused).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{refused}: {err}");
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    for pg in &shards {
        assert_eq!(count(pg, 5000), "0");
        assert_eq!(one(pg, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5, "the session goes on: 2 + 3 committed rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_prepared_that_fails_is_finished_in_the_background() {
    let shards: Vec<LocalPostgres> = (0..3).map(|_| shard(10)).collect();
    let state = tempfile::tempdir().unwrap();
    let (proxy, cut) = cuttable_hold_proxy(shards[2].port, b"COMMIT PREPARED").await;
    let mut urls: Vec<String> = shards.iter().map(url).collect();
    urls[2] = format!("postgres://app:{PASSWORD}@127.0.0.1:{proxy}/app");
    let sidecar = start(&toml(&urls, state.path(), "127.0.0.1:0")).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    let keys = key_per_shard(6000);
    let sql = insert_sql(&keys, "d");
    let write = tokio::spawn(async move { client.simple_query(&sql).await.map(|m| tag(&m)) });
    let prepared = "SELECT count(*) FROM pg_prepared_xacts";
    until(&shards[2], prepared, "1").await;
    until(
        &shards[0],
        &format!("SELECT count(*) FROM items WHERE customer_id = {}", keys[0]),
        "1",
    )
    .await;
    // Shard 2's connection is lost before COMMIT PREPARED reaches it: the decision stands, the
    // client is told the write committed, and the sidecar finishes shard 2 by itself.
    cut.send_replace(true);
    assert_eq!(write.await.unwrap().unwrap(), 3);
    until(&shards[2], prepared, "0").await;
    assert_eq!(
        one(
            &shards[2],
            &format!("SELECT count(*) FROM items WHERE customer_id = {}", keys[2])
        ),
        "1"
    );
    let name = "pgsidecar_two_phase_total{outcome=\"in_doubt\"}";
    assert_eq!(scrape(sidecar.metrics_addr, name).await, Some(1.0));
}
