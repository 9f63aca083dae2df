//! Every way the sidecar finds a statement's shard, against 3 real shard servers and an
//! unsharded oracle holding all the rows: keys by `=`, `IN`, `= ANY` (literal arrays and binary
//! array parameters), co-located joins, `INSERT … ON CONFLICT`, UPDATE and DELETE by key, for
//! bigint hash, text list, uuid hash and integer range placement; rows land where the
//! placement says (read on each shard directly) and every read equals the oracle's answer; bad
//! keys get Postgres's codes and reach no shard. And replicas inside a shard serve its reads.

mod support;

use pgsidecar::localpg::LocalPostgres;
use pgsidecar::route::shard::{hash_shard, Key};
use support::shards::*;
use support::*;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Client;

const TABLES: &str = "SET ROLE app; \
    CREATE TABLE orders (customer_id bigint, note text); \
    CREATE TABLE customers (id bigint PRIMARY KEY, name text); \
    CREATE TABLE regions (region text, n int); \
    CREATE TABLE devices (id uuid, n int); \
    CREATE TABLE ranged (k integer, n int)";

const SHARDED: &str = r#"
[[sharded_table]]
database = "app"
table = "orders"
column = "customer_id"
type = "bigint"

[[sharded_table]]
database = "app"
table = "public.customers"
column = "id"
type = "bigint"

[[sharded_table]]
database = "app"
table = "regions"
column = "region"
type = "text"
method = "list"
values = [["eu", "uk"], ["us"], ["apac"]]

[[sharded_table]]
database = "app"
table = "devices"
column = "id"
type = "uuid"

[[sharded_table]]
database = "app"
table = "ranged"
column = "k"
type = "integer"
method = "range"
ranges = [[0, 100], [100, 200], [200, 300]]
"#;

/// A UUID parameter in binary format (tokio-postgres without its uuid feature).
#[derive(Debug, Clone, Copy)]
struct Uuid([u8; 16]);

impl ToSql for Uuid {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    tokio_postgres::types::to_sql_checked!();
}

impl Uuid {
    fn nth(i: u8) -> Uuid {
        let mut b = [0u8; 16];
        for (j, byte) in b.iter_mut().enumerate() {
            *byte = i.wrapping_mul(37).wrapping_add(j as u8 * 11);
        }
        Uuid(b)
    }

    fn text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

/// The one text column of a one-row query, through the sidecar and on the oracle: equal, and
/// not empty (so that the check means something).
async fn agree(sidecar: &Client, oracle: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) {
    let got: Option<String> = sidecar
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    let want: Option<String> = oracle.query_one(sql, params).await.unwrap().get(0);
    assert!(want.is_some(), "{sql}: the oracle found rows");
    assert_eq!(got, want, "{sql}");
}

/// Runs a write through the sidecar and on the oracle.
async fn write_both(sidecar: &Client, oracle: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) {
    let through = sidecar
        .execute(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let direct = oracle.execute(sql, params).await.unwrap();
    assert_eq!(through, direct, "{sql}: rows affected");
}

fn shard_servers() -> Vec<LocalPostgres> {
    (0..3)
        .map(|_| {
            let pg = shard_server();
            pg.psql("app", TABLES).expect("the tables");
            pg
        })
        .collect()
}

/// The rows' key column on shard `n`, as text in key order.
fn keys_on(shard: &LocalPostgres, table: &str, column: &str) -> String {
    shard
        .psql(
            "app",
            &format!("SELECT string_agg({column}::text, ',' ORDER BY {column}) FROM {table}"),
        )
        .unwrap()
        .trim()
        .to_owned()
}

async fn load(sidecar: &Client, oracle: &Client) {
    for k in 0i64..40 {
        let note = format!("n{k}");
        write_both(
            sidecar,
            oracle,
            "INSERT INTO orders (customer_id, note) VALUES ($1, $2)",
            &[&k, &note],
        )
        .await;
        let name = format!("c{k}");
        write_both(
            sidecar,
            oracle,
            "INSERT INTO customers (id, name) VALUES ($1, $2)",
            &[&k, &name],
        )
        .await;
    }
    for (i, region) in ["eu", "uk", "us", "apac", "eu", "us"].iter().enumerate() {
        let n = i as i32;
        write_both(
            sidecar,
            oracle,
            "INSERT INTO regions (region, n) VALUES ($1, $2)",
            &[region, &n],
        )
        .await;
    }
    for i in 0u8..20 {
        let n = i32::from(i);
        write_both(
            sidecar,
            oracle,
            "INSERT INTO devices (id, n) VALUES ($1, $2)",
            &[&Uuid::nth(i), &n],
        )
        .await;
    }
    for k in (0i32..300).step_by(7) {
        write_both(
            sidecar,
            oracle,
            "INSERT INTO ranged (k, n) VALUES ($1, $1)",
            &[&k],
        )
        .await;
    }
}

#[tokio::test]
async fn every_key_form_routes_as_placed_and_answers_as_one_server_would() {
    let shards = shard_servers();
    shards[0]
        .psql("postgres", "CREATE DATABASE oracle OWNER app")
        .unwrap();
    shards[0].psql("oracle", TABLES).unwrap();
    let sidecar = sharded_sidecar(&shards, SHARDED).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    let oracle_addr = format!("127.0.0.1:{}", shards[0].port).parse().unwrap();
    let oracle = connect(oracle_addr, "app", PASSWORD, "oracle")
        .await
        .unwrap();
    load(&client, &oracle).await;

    // Each shard holds exactly the rows its placement gives it.
    let config = pgsidecar::config::Config::from_toml(
        &format!(
            "[[database]]\nname = \"app\"\n{}\n[[user]]\nname = \"app\"\npassword = \"x\"\n{SHARDED}",
            "[[database.shards]]\nprimary = \"postgres://a@h/app\"\n".repeat(3)
        ),
        &Default::default(),
    )
    .unwrap();
    let place = |table: &str, key: &str| {
        config
            .shard_of(None, pgsidecar::config::ShardQuestion::Row { table, key })
            .unwrap()
    };
    for (table, column) in [
        ("orders", "customer_id"),
        ("customers", "id"),
        ("regions", "region"),
        ("devices", "id"),
        ("ranged", "k"),
    ] {
        let every: Vec<String> = oracle
            .query(
                &format!("SELECT {column}::text AS key FROM {table} ORDER BY {table}.{column}"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (n, shard) in shards.iter().enumerate() {
            let expected: Vec<&str> = every
                .iter()
                .map(String::as_str)
                .filter(|k| place(table, k) == n)
                .collect();
            assert_eq!(
                keys_on(shard, table, column),
                expected.join(","),
                "{table} on shard {n}"
            );
        }
    }

    // Two keys on one shard, and one on another.
    let on = |k: i64| hash_shard(Key::Int(k), 3);
    let a = 1i64;
    let same = (2i64..40).find(|&k| on(k) == on(a)).unwrap();
    let notes = "SELECT string_agg(note, ',' ORDER BY note) FROM orders";
    agree(
        &client,
        &oracle,
        &format!("{notes} WHERE customer_id = $1"),
        &[&same],
    )
    .await;
    agree(
        &client,
        &oracle,
        &format!("{notes} WHERE customer_id IN ({a}, {same})"),
        &[],
    )
    .await;
    agree(
        &client,
        &oracle,
        &format!("{notes} WHERE customer_id = ANY('{{{a},{same}}}')"),
        &[],
    )
    .await;
    agree(
        &client,
        &oracle,
        &format!("{notes} WHERE customer_id = ANY($1)"),
        &[&vec![a, same]],
    )
    .await;
    agree(
        &client,
        &oracle,
        "SELECT string_agg(o.note || c.name, ',') FROM orders o \
         JOIN customers c ON o.customer_id = c.id WHERE c.id = $1",
        &[&same],
    )
    .await;
    // Writes by key, and the upsert.
    write_both(
        &client,
        &oracle,
        "UPDATE orders SET note = note || '!' WHERE customer_id = ANY($1)",
        &[&vec![a, same]],
    )
    .await;
    write_both(
        &client,
        &oracle,
        "DELETE FROM orders WHERE customer_id = $1",
        &[&3i64],
    )
    .await;
    write_both(
        &client,
        &oracle,
        "INSERT INTO customers (id, name) VALUES ($1, 'renamed') \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
        &[&same],
    )
    .await;
    agree(
        &client,
        &oracle,
        &format!("{notes} WHERE customer_id IN ({a}, {same})"),
        &[],
    )
    .await;
    agree(
        &client,
        &oracle,
        "SELECT count(*)::text FROM orders WHERE customer_id = 3",
        &[],
    )
    .await;
    agree(
        &client,
        &oracle,
        "SELECT string_agg(name, ',') FROM customers WHERE id = $1",
        &[&same],
    )
    .await;
    // Text list, uuid hash and integer range placement.
    let counts =
        |t: &str, c: &str| format!("SELECT string_agg(n::text, ',' ORDER BY n) FROM {t} WHERE {c}");
    agree(
        &client,
        &oracle,
        &counts("regions", "region = $1"),
        &[&"eu"],
    )
    .await;
    agree(
        &client,
        &oracle,
        &counts("regions", "region IN ('eu', 'uk')"),
        &[],
    )
    .await;
    let device = Uuid::nth(4);
    let twin = (5u8..20)
        .map(Uuid::nth)
        .find(|u| hash_shard(Key::Uuid(u.0), 3) == hash_shard(Key::Uuid(device.0), 3))
        .unwrap();
    agree(&client, &oracle, &counts("devices", "id = $1"), &[&device]).await;
    agree(
        &client,
        &oracle,
        &counts("devices", &format!("id = '{}'", device.text())),
        &[],
    )
    .await;
    agree(
        &client,
        &oracle,
        &counts("devices", "id = ANY($1)"),
        &[&vec![device, twin]],
    )
    .await;
    agree(&client, &oracle, &counts("ranged", "k = $1"), &[&105i32]).await;
    agree(
        &client,
        &oracle,
        &counts("ranged", "k = ANY($1)"),
        &[&vec![203i32, 210]],
    )
    .await;

    // `public.customers` is sharded; under a search path without `public`, `customers` is
    // another (unsharded) table that any shard serves.
    for shard in &shards {
        shard
            .psql(
                "app",
                "SET ROLE app; CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.customers (id bigint)",
            )
            .unwrap();
    }
    client
        .batch_execute("SET search_path = elsewhere")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .expect("not the sharded table")
        .get(0);
    assert_eq!(n, 0);
    client.batch_execute("RESET search_path").await.unwrap();
    // Without a key the read runs on every shard (the counts are added); keys listed on
    // several shards read those shards.
    for sql in [
        "SELECT count(*) FROM customers",
        "SELECT k::bigint FROM ranged WHERE k IN (7, 154) ORDER BY k",
    ] {
        let values = |rows: Vec<tokio_postgres::Row>| -> Vec<i64> {
            rows.iter().map(|r| r.get(0)).collect()
        };
        let got = values(client.query(sql, &[]).await.unwrap());
        assert_eq!(got, values(oracle.query(sql, &[]).await.unwrap()), "{sql}");
        assert!(!got.is_empty() && got[0] > 0, "{sql}: {got:?}");
    }

    // Bad keys: Postgres's codes, and nothing reaches a shard.
    let before: Vec<String> = shards.iter().map(|s| keys_on(s, "ranged", "k")).collect();
    for (sql, code) in [
        ("INSERT INTO ranged (k, n) VALUES (500, 0)", "23514"),
        ("INSERT INTO ranged (k, n) VALUES (NULL, 0)", "22004"),
        ("INSERT INTO ranged (k, n) VALUES (99999999999, 0)", "22003"),
        ("INSERT INTO ranged (k, n) VALUES ('x', 0)", "22P02"),
        (
            "INSERT INTO regions (region, n) VALUES ('mars', 0)",
            "23514",
        ),
        ("SELECT * FROM devices WHERE id = 'not-a-uuid'", "22P02"),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql}: {err}");
    }
    let err = client
        .execute("INSERT INTO ranged (k, n) VALUES ($1, 0)", &[&400i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23514"), "{err}");
    let after: Vec<String> = shards.iter().map(|s| keys_on(s, "ranged", "k")).collect();
    assert_eq!(before, after, "refused writes reached no shard");
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    for n in 0..3 {
        let up = format!("pgsidecar_upstream_up{{database=\"app\",replica=\"\",shard=\"{n}\"}}");
        assert_eq!(metric(&metrics, &up), Some(1.0), "{up} in {metrics}");
    }
}

#[tokio::test]
async fn a_shards_replica_serves_its_reads() {
    let shards: Vec<LocalPostgres> = (0..2)
        .map(|_| {
            let pg = shard_server();
            pg.psql("app", TABLES).expect("the tables");
            pg
        })
        .collect();
    let replica = shards[1].start_replica("").expect("a replica of shard 1");
    let sidecar = sharded_sidecar_with_replicas(
        &[(&shards[0], None), (&shards[1], Some(&replica))],
        "[[sharded_table]]\ndatabase = \"app\"\ntable = \"orders\"\ncolumn = \"customer_id\"\ntype = \"bigint\"\n",
    )
    .await;
    let on = |k: i64| hash_shard(Key::Int(k), 2);
    let key = (0i64..).find(|&k| on(k) == 1).unwrap();
    let writer = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    writer
        .execute(
            "INSERT INTO orders (customer_id, note) VALUES ($1, 'replicated')",
            &[&key],
        )
        .await
        .unwrap();
    // The writer reads its own write (on the primary or a replica that has it).
    let note: String = writer
        .query_one("SELECT note FROM orders WHERE customer_id = $1", &[&key])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "replicated");
    // Once the replica has replayed the row and the sidecar's check has seen that it did
    // (read-your-writes is `sidecar` by default: reads go to the primary until then), another
    // client's read of that shard runs there; ask until the check has run.
    let replayed = "SELECT count(*) FROM orders WHERE note = 'replicated'";
    for _ in 0..300 {
        if replica.psql("app", replayed).unwrap().trim() == "1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let up = "pgsidecar_replica_up{database=\"app\",replica=\"0\",shard=\"1\"}";
    let reader = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    let mut on_replica = false;
    for _ in 0..300 {
        until_metric(sidecar.metrics_addr, up, 1.0).await;
        let row = reader
            .query_one(
                "SELECT note, pg_is_in_recovery() FROM orders WHERE customer_id = $1",
                &[&key],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "replicated");
        if row.get::<_, bool>(1) {
            on_replica = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        on_replica,
        "a read of shard 1 ran on its replica: {metrics}"
    );
    // Writes still go to the shard's primary; the other shard has no replica.
    let other = (0i64..).find(|&k| on(k) == 0).unwrap();
    let row = reader
        .query_one(
            "SELECT pg_is_in_recovery(), count(*) FROM orders WHERE customer_id = $1",
            &[&other],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "shard 0 has only its primary");
}
