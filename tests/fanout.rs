//! Reads without a single shard, against 3 real shard servers and an oracle holding every row:
//! a randomized differential test (filters, ORDER BY with ties and NULLs, LIMIT/OFFSET,
//! DISTINCT, GROUP BY/HAVING, every merged aggregate, `IN` lists over some shards; simple and
//! extended protocol — text and binary results compared byte for byte), then what cannot be
//! merged, a shard's error, a shard that is down (57P03, or `partial_ok`), and the merge's
//! memory bound (sorts stream; grouping and DISTINCT past the budget get 53400, the connection
//! goes on).

mod support;

use pgsidecar::localpg::LocalPostgres;
use pgsidecar::route::shard::{hash_shard, Key};
use support::shards::*;
use support::*;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const TABLE: &str = "SET ROLE app; CREATE TABLE items (customer_id bigint, region text, \
    qty int, price numeric(10,2), score float8, flag bool, day date, note text)";

const SHARDED: &str = "[[sharded_table]]\ndatabase = \"app\"\ntable = \"items\"\n\
    column = \"customer_id\"\ntype = \"bigint\"\n";

const ROWS: i64 = 300;

/// A small deterministic generator (the seed is printed on failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One row of `items` as SQL values.
fn row(k: i64, rng: &mut Lcg) -> String {
    let null_or = |rng: &mut Lcg, v: String| if rng.chance(8) { "NULL".into() } else { v };
    let region = format!("'{}'", rng.pick(&["eu", "us", "apac", "uk", "mx"]));
    let qty = rng.below(20).to_string();
    let price = format!("{}.{:02}", rng.below(100), rng.below(100));
    let score = format!("{}", rng.below(1000) as f64 / 8.0);
    let flag = rng.pick(&["true", "false"]).to_string();
    let day = format!("date '2024-01-01' + {}", rng.below(60));
    let note = format!("'n{}'", rng.below(50));
    format!(
        "({k}, {}, {}, {}, {}, {}, {}, {})",
        null_or(rng, region),
        null_or(rng, qty),
        null_or(rng, price),
        null_or(rng, score),
        null_or(rng, flag),
        null_or(rng, day),
        null_or(rng, note)
    )
}

/// The shards and the oracle, loaded directly (rows placed by the sidecar's hash).
fn servers() -> (Vec<LocalPostgres>, LocalPostgres) {
    let shards: Vec<LocalPostgres> = (0..3)
        .map(|_| {
            let pg = shard_server();
            pg.psql("app", TABLE).expect("the table");
            pg
        })
        .collect();
    let oracle = shard_server();
    oracle.psql("app", TABLE).expect("the table");
    let mut rng = Lcg(7);
    let mut per_shard = vec![Vec::new(); 3];
    let mut all = Vec::new();
    for k in 0..ROWS {
        let values = row(k, &mut rng);
        per_shard[hash_shard(Key::Int(k), 3)].push(values.clone());
        all.push(values);
    }
    for (pg, rows) in shards.iter().zip(&per_shard) {
        pg.psql(
            "app",
            &format!("INSERT INTO items VALUES {}", rows.join(",")),
        )
        .expect("load a shard");
    }
    oracle
        .psql(
            "app",
            &format!("INSERT INTO items VALUES {}", all.join(",")),
        )
        .expect("load the oracle");
    (shards, oracle)
}

async fn direct(pg: &LocalPostgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url("app", PASSWORD, "app"), NoTls)
        .await
        .expect("connect to the oracle");
    tokio::spawn(conn);
    client
}

/// A value in any type, as the bytes the server sent (binary results).
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

type Rows = Vec<Vec<Option<Vec<u8>>>>;

/// The rows of `sql` (text through the simple protocol, binary through the extended one).
async fn run(client: &Client, sql: &str, extended: bool) -> Result<Rows, tokio_postgres::Error> {
    if extended {
        let rows = client.query(sql, &[]).await?;
        return Ok(rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i).0).collect())
            .collect());
    }
    let mut rows = Vec::new();
    let mut counted = None;
    for message in client.simple_query(sql).await? {
        match message {
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(|v| v.as_bytes().to_vec()))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => counted = Some(n),
            _ => {}
        }
    }
    assert_eq!(
        counted,
        Some(rows.len() as u64),
        "{sql}: the command tag counts the rows"
    );
    Ok(rows)
}

/// A generated query and how to compare its answers.
struct Generated {
    sql: String,
    /// Positions (0-based) of the ORDER BY keys, when the query orders by selected columns.
    order: Option<Vec<usize>>,
    /// LIMIT or OFFSET: with ties only the order keys are comparable.
    limited: bool,
}

const COLUMNS: &[&str] = &[
    "customer_id",
    "region",
    "qty",
    "price",
    "score",
    "flag",
    "day",
    "note",
];
const FILTERS: &[&str] = &[
    "qty > 5",
    "region = 'eu'",
    "price < 50",
    "flag",
    "note IS NULL",
    "customer_id IN (1, 2, 3, 50, 77, 123)",
    "customer_id = ANY('{4,5,6,7}')",
    "day >= '2024-02-01'",
    "qty IS NOT NULL AND region <> 'us'",
];
const AGGREGATES: &[&str] = &[
    "count(*)",
    "count(qty)",
    "sum(qty)",
    "sum(price)",
    "min(price)",
    "max(day)",
    "min(note)",
    "max(score)",
    "avg(qty)",
    "avg(price)",
    "bool_and(flag)",
    "bool_or(flag)",
    "count(DISTINCT region)",
];

fn filter(rng: &mut Lcg) -> String {
    if rng.chance(40) {
        format!(" WHERE {}", rng.pick(FILTERS))
    } else {
        String::new()
    }
}

fn direction(rng: &mut Lcg) -> &'static str {
    const DIRECTIONS: &[&str] = &["", " DESC", " NULLS FIRST", " DESC NULLS LAST", " ASC"];
    DIRECTIONS[rng.below(DIRECTIONS.len() as u64) as usize]
}

fn limit(rng: &mut Lcg) -> String {
    match rng.below(4) {
        0 => format!(" LIMIT {}", 1 + rng.below(20)),
        1 => format!(" LIMIT {} OFFSET {}", 1 + rng.below(20), rng.below(10)),
        2 => format!(" OFFSET {}", rng.below(30)),
        _ => String::new(),
    }
}

/// A generated statement, with LIMIT/OFFSET drawn when it orders its rows.
fn ordered(mut sql: String, order: Option<Vec<usize>>, rng: &mut Lcg) -> Generated {
    let lim = if order.is_some() {
        limit(rng)
    } else {
        String::new()
    };
    sql += &lim;
    Generated {
        sql,
        order,
        limited: !lim.is_empty(),
    }
}

fn generate(rng: &mut Lcg) -> Generated {
    match rng.below(4) {
        // Plain rows.
        0 => {
            let n = 1 + rng.below(3) as usize;
            let cols: Vec<&str> = (0..n).map(|_| *rng.pick(COLUMNS)).collect();
            let mut sql = format!("SELECT {} FROM items{}", cols.join(", "), filter(rng));
            let mut order = None;
            if rng.chance(70) {
                let keys: Vec<usize> = (0..1 + rng.below(2) as usize)
                    .map(|_| rng.below(n as u64) as usize)
                    .collect();
                let by: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{}{}", k + 1, direction(rng)))
                    .collect();
                sql += &format!(" ORDER BY {}", by.join(", "));
                order = Some(keys);
            }
            ordered(sql, order, rng)
        }
        // DISTINCT.
        1 => {
            let a = *rng.pick(&["region", "qty", "flag", "day"]);
            let b = *rng.pick(&["flag", "region"]);
            let mut sql = format!("SELECT DISTINCT {a}, {b} FROM items{}", filter(rng));
            let mut order = None;
            if rng.chance(60) {
                sql += &format!(" ORDER BY 1{}, 2{}", direction(rng), direction(rng));
                order = Some(vec![0, 1]);
            }
            ordered(sql, order, rng)
        }
        // Aggregates without GROUP BY.
        2 => {
            let aggs: Vec<&str> = (0..1 + rng.below(4))
                .map(|_| *rng.pick(AGGREGATES))
                .collect();
            Generated {
                sql: format!("SELECT {} FROM items{}", aggs.join(", "), filter(rng)),
                order: None,
                limited: false,
            }
        }
        // GROUP BY, HAVING, ORDER BY a key or an aggregate.
        _ => {
            let key = *rng.pick(&["region", "qty", "flag", "day"]);
            let aggs: Vec<&str> = (0..1 + rng.below(3))
                .map(|_| *rng.pick(AGGREGATES))
                .collect();
            let mut sql = format!(
                "SELECT {key}, {} FROM items{} GROUP BY {key}",
                aggs.join(", "),
                filter(rng)
            );
            if rng.chance(40) {
                sql += &format!(
                    " HAVING {}",
                    rng.pick(&[
                        "count(*) > 3",
                        "sum(qty) >= 20",
                        "max(price) < 90 OR count(*) = 1",
                        "NOT bool_or(flag)",
                        "avg(qty) > 9.5"
                    ])
                );
            }
            let mut order = None;
            if rng.chance(70) {
                if rng.chance(50) {
                    sql += &format!(" ORDER BY 1{}", direction(rng));
                    order = Some(vec![0]);
                } else {
                    sql += &format!(" ORDER BY 2{}, 1", direction(rng));
                    order = Some(vec![1, 0]);
                }
            }
            ordered(sql, order, rng)
        }
    }
}

fn keys_of(rows: &Rows, keys: &[usize]) -> Rows {
    rows.iter()
        .map(|r| keys.iter().map(|k| r[*k].clone()).collect())
        .collect()
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_reads_answer_as_one_server_holding_every_row() {
    let (shards, oracle_pg) = servers();
    let sidecar = sharded_sidecar(&shards, SHARDED).await;
    let client = connect(sidecar.addr, "app", PASSWORD, "app").await.unwrap();
    let oracle = direct(&oracle_pg).await;
    // A fixed seed, so every run compares the same statements; FANOUT_SEED explores others.
    let seed: u64 = std::env::var("FANOUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let mut rng = Lcg(seed);
    let mut compared = 0;
    for i in 0..220 {
        let q = generate(&mut rng);
        let extended = i % 2 == 1;
        let want = run(&oracle, &q.sql, extended)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: oracle: {}: {e}", q.sql));
        let got = run(&client, &q.sql, extended).await.unwrap_or_else(|e| {
            panic!(
                "seed {seed} (FANOUT_SEED={seed}): {} ({}): {e:?}",
                q.sql,
                if extended { "extended" } else { "simple" }
            )
        });
        let context = format!(
            "seed {seed} (FANOUT_SEED={seed}), {} protocol: {}",
            if extended { "extended" } else { "simple" },
            q.sql
        );
        match (&q.order, q.limited) {
            (Some(keys), true) => {
                assert_eq!(keys_of(&got, keys), keys_of(&want, keys), "{context}")
            }
            (Some(keys), false) => {
                assert_eq!(keys_of(&got, keys), keys_of(&want, keys), "{context}");
                assert_eq!(sorted(got), sorted(want), "{context}");
            }
            (None, _) => assert_eq!(sorted(got), sorted(want), "{context}"),
        }
        compared += 1;
    }
    assert!(compared >= 200);
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    let name = "pgsidecar_cross_shard_total{kind=\"read\",result=\"ok\"}";
    assert!(
        metric(&metrics, name).unwrap_or(0.0) >= 1.0,
        "{name} in {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_errors_down_shards_and_the_memory_bound() {
    let (shards, _oracle) = servers();
    let client_of = |addr| async move { connect(addr, "app", PASSWORD, "app").await.unwrap() };
    let sidecar = sharded_sidecar(&shards, SHARDED).await;
    let client = client_of(sidecar.addr).await;
    // What cannot be merged is refused with what to change; the connection goes on.
    let err = client
        .simple_query("SELECT sum(qty) / count(*) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("compute the rest"), "{message}");
    // An error on one shard is the client's error.
    let err = client
        .simple_query("SELECT 100 / (qty - 7) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    let rows = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), ROWS);
    // Inside a transaction a read of several shards is refused (the transaction fails).
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SELECT 1 FROM items WHERE customer_id = 1")
        .await
        .unwrap();
    let err = client
        .simple_query("SELECT count(*) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // A session pinned to one connection (an advisory lock) cannot read several shards.
    let pinned = client_of(sidecar.addr).await;
    pinned
        .batch_execute("SELECT pg_advisory_lock(1)")
        .await
        .unwrap();
    let err = pinned
        .simple_query("SELECT count(*) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    pinned
        .batch_execute("SELECT 1")
        .await
        .expect("the session goes on");

    // A column with a collation the sidecar cannot reproduce: text is no longer compared
    // across shards (a fresh sidecar asks the shards again), numbers still are.
    for pg in &shards {
        pg.psql("app", "SET ROLE app; CREATE TABLE labels (customer_id bigint, label text COLLATE \"en-US-x-icu\")")
            .unwrap();
    }
    let fresh = support::start(&sidecar_toml(&shards, None, "")).await;
    let c = client_of(fresh.addr).await;
    let err = c
        .simple_query("SELECT note FROM items ORDER BY note LIMIT 3")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    c.simple_query("SELECT qty FROM items ORDER BY qty LIMIT 3")
        .await
        .unwrap();
    for pg in &shards {
        pg.psql("app", "SET ROLE app; DROP TABLE labels").unwrap();
    }

    // The merge's memory bound: a sort over more rows than the budget.
    let bounded = support::start(&sidecar_toml(&shards, None, "max_merge_bytes = \"4kB\"\n")).await;
    let c = client_of(bounded.addr).await;
    // A sort streams (a k-way merge holds one row per shard): it needs no budget.
    let sorted = c
        .query(
            "SELECT customer_id, note FROM items ORDER BY note, customer_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sorted.len() as i64, ROWS);
    // Grouping (and DISTINCT) hold their groups: past the budget, 53400.
    let err = c
        .simple_query("SELECT customer_id, count(*) FROM items GROUP BY customer_id ORDER BY 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53400"), "{err}");
    let err = c
        .simple_query("SELECT DISTINCT customer_id, note FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53400"), "{err}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ROWS, "the connection goes on");

    // A shard that is down: 57P03, or the other shards' rows with a warning when hinted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_dead = support::start(&sidecar_toml(&shards[..2], Some(dead), "")).await;
    let c = client_of(with_dead.addr).await;
    let err = c
        .simple_query("SELECT count(*) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    let rows = c
        .simple_query("/* pgsidecar: partial_ok */ SELECT count(*) FROM items")
        .await
        .unwrap();
    let Some(SimpleQueryMessage::Row(row)) = rows
        .iter()
        .find(|m| matches!(m, SimpleQueryMessage::Row(_)))
    else {
        panic!("a row");
    };
    let counted: i64 = row.get(0).unwrap().parse().unwrap();
    assert!(counted > 0 && counted < ROWS, "{counted}");
    // Text is merged bytewise when the shards that answer order it so: the one that is down
    // (whose collation was never learned) leaves out its rows, not the ORDER BY.
    let rows = c
        .simple_query(
            "/* pgsidecar: partial_ok */ SELECT customer_id, note FROM items ORDER BY note, customer_id",
        )
        .await
        .unwrap();
    let sorted = rows
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count() as i64;
    assert_eq!(
        sorted, counted,
        "the answering shards' rows, merged in order"
    );
}

/// A sidecar over `shards` (and a shard at `dead`, a port nothing listens on), with `extra`
/// lines in its `[[database]]`. The connect timeout is a generous bound: the dead shard refuses
/// at once, and a machine busy starting this file's twelve servers can take seconds to start a
/// backend (a 2 s bound failed a login so).
fn sidecar_toml(shards: &[LocalPostgres], dead: Option<u16>, extra: &str) -> String {
    let dead = dead.map(|port| format!("postgres://app:{PASSWORD}@127.0.0.1:{port}/app"));
    let lines = shard_lines(
        shards
            .iter()
            .map(|s| s.url("app", PASSWORD, "app"))
            .chain(dead),
    );
    format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [pool]\nsize = 2\nconnect_timeout = \"30s\"\n\n[[database]]\nname = \"app\"\n{extra}{lines}\n\
         [[user]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n{SHARDED}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_read_only_their_rows_across_shards() {
    let shards: Vec<LocalPostgres> = (0..3).map(|_| tenant_shard_server()).collect();
    let more = format!(
        "{TENANCY}\n[[sharded_table]]\ndatabase = \"app\"\ntable = \"orders\"\ncolumn = \"id\"\ntype = \"integer\"\n"
    );
    let sidecar = sharded_sidecar(&shards, &more).await;
    for tenant in ["acme", "globex"] {
        let client = tenant_client(&sidecar, "app", tenant).await;
        for id in 0i32..12 {
            client
                .execute("INSERT INTO orders (id) VALUES ($1)", &[&id])
                .await
                .unwrap();
        }
    }
    let acme = tenant_client(&sidecar, "app", "acme").await;
    // Every shard answers under the client's signed tenant: its rows only.
    let n: i64 = acme
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 12);
    let tenants: Vec<String> = acme
        .query("SELECT DISTINCT tenant FROM orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, vec!["acme".to_owned()]);
    // The tenant guard applies to statements run on several shards too.
    let err = acme
        .simple_query("SELECT count(*) FROM orders WHERE set_config('pgsidecar.tenant', 'globex', false) IS NOT NULL")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    let n: i64 = acme
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 12, "the session goes on, still acme's");
}
