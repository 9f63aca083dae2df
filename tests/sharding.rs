//! Shard placement against a real server: the shard the sidecar picks for a key equals the
//! partition Postgres picks for a `PARTITION BY HASH` table with the same modulus, for every
//! supported key type; and `pgsidecar shard-of` prints the same.

mod support;

use pgsidecar::route::shard::{hash_shard, Key, KeyType};
use support::shards::*;
use support::*;

/// Deterministic pseudo-random numbers (no dependency on a seeded RNG crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
}

/// 10,000 keys of `key_type` in text form: edge values, then pseudo-random ones.
fn keys(key_type: KeyType, rng: &mut Lcg) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(10_000);
    match key_type {
        KeyType::Smallint => {
            keys.extend(["-32768", "32767", "0", "-1", "1"].map(String::from));
            while keys.len() < 10_000 {
                keys.push(((rng.next() as u16) as i16).to_string());
            }
        }
        KeyType::Integer => {
            keys.extend(["-2147483648", "2147483647", "0", "-1"].map(String::from));
            while keys.len() < 10_000 {
                keys.push(((rng.next() as u32) as i32).to_string());
            }
        }
        KeyType::Bigint => {
            keys.extend(
                [
                    "-9223372036854775808",
                    "9223372036854775807",
                    "0",
                    "-1",
                    "4294967296",
                ]
                .map(String::from),
            );
            while keys.len() < 10_000 {
                let v = (rng.next() << 11 ^ rng.next()) as i64;
                // Small and large magnitudes both.
                let v = if keys.len() % 2 == 0 { v % 100_000 } else { v };
                keys.push(v.to_string());
            }
        }
        KeyType::Text | KeyType::Varchar => {
            keys.extend(["", "a", "acme", "ünïcødé ✓", "exactly12byt"].map(String::from));
            let alphabet: Vec<char> = "abcXYZ019 _-é✓".chars().collect();
            while keys.len() < 10_000 {
                let len = (rng.next() % 40) as usize;
                keys.push(
                    (0..len)
                        .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
                        .collect(),
                );
            }
        }
        KeyType::Uuid => {
            while keys.len() < 10_000 {
                let (a, b) = (rng.next() << 11 ^ rng.next(), rng.next() << 11 ^ rng.next());
                let hex = format!("{a:016x}{b:016x}");
                keys.push(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[0..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                ));
            }
        }
    }
    keys
}

#[tokio::test]
async fn hash_placement_equals_postgres_hash_partitioning() {
    let db = fresh_user("shard_hash");
    let admin = connect_direct_superuser(&db).await;
    let mut rng = Lcg(0x5eed);
    let types = [
        (KeyType::Smallint, "smallint"),
        (KeyType::Integer, "integer"),
        (KeyType::Bigint, "bigint"),
        (KeyType::Text, "text"),
        (KeyType::Varchar, "varchar"),
        (KeyType::Uuid, "uuid"),
    ];
    for (key_type, sql_type) in types {
        let table = format!("h_{sql_type}");
        admin
            .batch_execute(&format!(
                "CREATE TABLE {table} (k {sql_type}) PARTITION BY HASH (k)"
            ))
            .await
            .expect("create a hash-partitioned table");
        let keys = keys(key_type, &mut rng);
        for modulus in [3, 5] {
            // The remainder of the partition Postgres would route each key to.
            let rows = admin
                .query(
                    &format!(
                        "SELECT (SELECT r FROM generate_series(0, $2 - 1) r \
                           WHERE satisfies_hash_partition('{table}'::regclass, $2, r, k::{sql_type})) \
                         FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) ORDER BY i"
                    ),
                    &[&keys, &modulus],
                )
                .await
                .expect("ask Postgres for the partitions");
            assert_eq!(rows.len(), keys.len());
            for (key, row) in keys.iter().zip(rows) {
                let postgres: i32 = row.get(0);
                let key_value = key_type.parse(key).expect("a valid key");
                let ours = hash_shard(key_value, modulus as usize);
                assert_eq!(
                    ours, postgres as usize,
                    "{sql_type} key {key:?} with modulus {modulus}"
                );
            }
        }
    }
}

#[test]
fn shard_of_prints_the_shard_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sharded.toml");
    let shard =
        |port| format!("[[database.shards]]\nprimary = \"postgres://u:p@127.0.0.1:{port}/app\"\n");
    std::fs::write(
        &path,
        format!(
            "[[database]]\nname = \"app\"\n{}{}{}\n\
             [[sharded_table]]\ndatabase = \"app\"\ntable = \"public.orders\"\ncolumn = \"customer_id\"\ntype = \"bigint\"\n\n\
             [[user]]\nname = \"app\"\npassword = \"secret\"\n\n\
             [tenancy]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\nshard_by = \"tenant\"\n\n\
             [[tenant_shard]]\ntenant = \"acme\"\nshard = 1\n",
            shard(5433),
            shard(5434),
            shard(5435)
        ),
    )
    .expect("write the config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .arg("shard-of")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("run pgsidecar shard-of");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for key in [42i64, -7, 1 << 40] {
        let expected = hash_shard(Key::Int(key), 3);
        let (ok, stdout, _) = run(&["--table", "orders", "--key", &key.to_string()]);
        assert!(ok);
        assert_eq!(stdout, format!("{expected}\n"), "key {key}");
    }
    assert_eq!(run(&["--tenant", "acme"]).1, "1\n", "the placement wins");
    let globex = hash_shard(Key::Text("globex"), 3);
    assert_eq!(run(&["--tenant", "globex"]).1, format!("{globex}\n"));
    let (ok, stdout, stderr) = run(&["--table", "orders", "--key", "forty-two"]);
    assert!(!ok && stdout.is_empty());
    assert!(
        stderr.contains("invalid input syntax for type bigint"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["--table", "customers", "--key", "1"]);
    assert!(
        !ok && stderr.contains("not a [[sharded_table]]"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tenant_sharding_puts_each_tenant_on_its_shard() {
    let shards: Vec<_> = (0..3).map(|_| tenant_shard_server()).collect();
    let more = format!(
        "{TENANCY}shard_by = \"tenant\"\n\n[[tenant_shard]]\ntenant = \"acme\"\nshard = 2\n"
    );
    let sidecar = sharded_sidecar(&shards, &more).await;
    let tenants = [
        "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne",
    ];
    for (i, tenant) in tenants.iter().enumerate() {
        let client = tenant_client(&sidecar, "app", tenant).await;
        client
            .execute("INSERT INTO orders (id) VALUES ($1)", &[&(i as i32)])
            .await
            .expect("insert through the sidecar");
        // Inside a transaction too, and the tenant reads back only its own row.
        client
            .batch_execute("BEGIN; INSERT INTO orders (id) VALUES (100); COMMIT")
            .await
            .unwrap();
        let seen: i64 = client
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 2, "{tenant} sees its own rows");
    }
    let placement = {
        let mut p = pgsidecar::route::shard::TenantPlacement::default();
        p.placed.insert("acme".into(), 2);
        p
    };
    for (n, shard) in shards.iter().enumerate() {
        let on_shard = shard
            .psql("app", "SET row_security = off; SELECT string_agg(DISTINCT tenant, ',' ORDER BY tenant) FROM orders")
            .expect("read the shard directly");
        let mut expected: Vec<&str> = tenants
            .iter()
            .copied()
            .filter(|t| placement.shard_of(t, 3) == n)
            .collect();
        expected.sort();
        assert_eq!(on_shard.trim(), expected.join(","), "shard {n}");
    }
    assert_eq!(placement.shard_of("acme", 3), 2);
    // A login without a tenant has no shard.
    let err = connect(sidecar.addr, "app", PASSWORD, "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
}

/// A shard server with database `app` (role app) and `orders` and `countries` tables.
fn plain_shard_server() -> pgsidecar::localpg::LocalPostgres {
    let pg = shard_server();
    pg.psql(
        "app",
        "SET ROLE app; CREATE TABLE orders (customer_id bigint, note text); \
         CREATE TABLE countries (code text)",
    )
    .expect("the tables");
    pg
}

#[tokio::test]
async fn statements_go_to_the_shard_of_their_key() {
    let shards: Vec<_> = (0..3).map(|_| plain_shard_server()).collect();
    let more = "[[sharded_table]]\ndatabase = \"app\"\ntable = \"orders\"\ncolumn = \"customer_id\"\ntype = \"bigint\"\n";
    let sidecar = sharded_sidecar(&shards, more).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    // Literal keys (simple protocol) and parameters (extended, binary int8).
    for k in 0i64..30 {
        client
            .batch_execute(&format!(
                "INSERT INTO orders (customer_id, note) VALUES ({k}, 'n{k}')"
            ))
            .await
            .expect("insert by literal key");
    }
    for k in 30i64..60 {
        client
            .execute(
                "INSERT INTO orders (customer_id, note) VALUES ($1, $2)",
                &[&k, &format!("n{k}")],
            )
            .await
            .expect("insert by parameter key");
    }
    for (n, shard) in shards.iter().enumerate() {
        let keys = shard
            .psql(
                "app",
                "SELECT string_agg(customer_id::text, ',' ORDER BY customer_id) FROM orders",
            )
            .unwrap();
        let expected: Vec<String> = (0i64..60)
            .filter(|k| hash_shard(Key::Int(*k), 3) == n)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys.trim(), expected.join(","), "shard {n} holds its keys");
    }
    for k in [0i64, 17, 31, 59] {
        let note: String = client
            .query_one("SELECT note FROM orders WHERE customer_id = $1", &[&k])
            .await
            .unwrap()
            .get(0);
        assert_eq!(note, format!("n{k}"));
    }
    // Hints.
    let on_one = shards[1]
        .psql("app", "SELECT count(*) FROM orders")
        .unwrap();
    let hinted: i64 = client
        .query_one("/* pgsidecar: shard=1 */ SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hinted.to_string(), on_one.trim());
    // The shard settings: answered by the sidecar, used until RESET.
    let on_two = shards[2]
        .psql("app", "SELECT count(*) FROM orders")
        .unwrap();
    client
        .batch_execute("SET pgsidecar.shard = 2")
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count.to_string(), on_two.trim());
    client
        .batch_execute("SET pgsidecar.shard_key = '17'")
        .await
        .unwrap();
    let note: String = client
        .query_one("SELECT note FROM orders WHERE note = 'n17'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "n17", "the key's shard");
    client
        .batch_execute("RESET pgsidecar.shard_key")
        .await
        .unwrap();
    // Without a key a read runs on every shard; a write is refused.
    let all: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 60);
    let err = client
        .batch_execute("UPDATE orders SET note = note")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    let err = client
        .batch_execute("SET pgsidecar.shard = 'x'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));
    // A transaction stays on the shard of its first statement.
    let (a, b) = {
        let a = 100i64;
        let b = (101i64..)
            .find(|k| hash_shard(Key::Int(*k), 3) != hash_shard(Key::Int(a), 3))
            .unwrap();
        (a, b)
    };
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO orders (customer_id, note) VALUES ($1, 'tx')",
            &[&a],
        )
        .await
        .unwrap();
    let err = client
        .execute(
            "INSERT INTO orders (customer_id, note) VALUES ($1, 'tx')",
            &[&b],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25P02"),
        "the transaction failed: {err}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    for shard in &shards {
        let left = shard
            .psql("app", "SELECT count(*) FROM orders WHERE note = 'tx'")
            .unwrap();
        assert_eq!(left.trim(), "0", "rolled back everywhere");
    }
    // Refusals name what to add; bad keys get Postgres's codes; nothing is sent anywhere.
    for (sql, code, needle) in [
        // Writes across shards without two-phase commit configured.
        ("DELETE FROM orders", "0A000", "two-phase commit"),
        (
            "INSERT INTO orders (note) VALUES ('x')",
            "0A000",
            "customer_id",
        ),
        (
            "SELECT * FROM orders WHERE customer_id = 'abc'",
            "22P02",
            "bigint",
        ),
        (
            "INSERT INTO countries (code) VALUES ('fr')",
            "0A000",
            "two-phase commit",
        ),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql}: {err}");
        assert!(
            err.as_db_error().unwrap().message().contains(needle),
            "{sql}: {err}"
        );
    }
    let err = client
        .query(
            "SELECT note FROM orders WHERE customer_id = $1",
            &[&None::<i64>],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22004"), "{err}");
    // Statements on no sharded table run on any shard.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    for n in 0..3 {
        let line = format!("pgsidecar_routed_total{{target=\"shard{n}\"}}");
        let routed = metric(&metrics, &line).unwrap_or(0.0);
        assert!(routed > 0.0, "{line} in {metrics}");
    }
}
