//! Criterion benchmarks of SQL understanding on the hot path, on a 200-byte OLTP statement:
//! `scan_200b` (fingerprint scan), `classify_miss_200b` (scan + sqlparser classification, as on
//! a cache miss), `classify_hit_200b` (scan + cached lookup, every later execution),
//! `classify_recent_200b` (a client's next execution with other literal values: rescanned from
//! its recent text, looked up among its recent shapes) and
//! `shard_route_200b` (finding the shard of the classified statement by its key, what a sharded
//! database adds per statement).

use criterion::{criterion_group, criterion_main, Criterion};
use pgsidecar::route::shard::{KeyType, Placement, ShardedTable};
use pgsidecar::route::shard_key::{route, ShardRoute, Statement};
use pgsidecar::sql::cache::{ClassificationCache, Recent};
use pgsidecar::sql::classify::{classify, Options};
use pgsidecar::sql::fingerprint::scan;
use std::hint::black_box;

const OLTP_200B: &str = "SELECT o.id, o.status, o.total_cents, c.email FROM orders o \
    JOIN customers c ON c.id = o.customer_id WHERE o.tenant_id = 'acme' AND o.id = 982734 \
    AND o.status IN ('open', 'paid') ORDER BY o.created_at DESC LIMIT 20";

fn bench(c: &mut Criterion) {
    assert!(
        (190..=230).contains(&OLTP_200B.len()),
        "{}",
        OLTP_200B.len()
    );
    let sql = OLTP_200B.as_bytes();
    c.bench_function("scan_200b", |b| b.iter(|| black_box(scan(black_box(sql)))));
    c.bench_function("classify_miss_200b", |b| {
        b.iter(|| {
            let s = scan(black_box(sql));
            black_box(classify(sql, &s, &Options::default()))
        })
    });
    let cache = ClassificationCache::new(64 << 20, Options::default());
    assert!(!cache.classify(sql).hit);
    c.bench_function("classify_hit_200b", |b| {
        b.iter(|| {
            let c = cache.classify(black_box(sql));
            debug_assert!(c.hit);
            black_box(c)
        })
    });
    // A client's next execution of the statement with other values: rescanned from its
    // recent text (only the literals are lexed), then looked up among its recent shapes.
    let mut recent = Recent::default();
    cache.classify_recent(sql, &mut recent);
    let other = OLTP_200B
        .replace("'acme'", "'globex'")
        .replace("982734", "17");
    c.bench_function("classify_recent_200b", |b| {
        b.iter(|| {
            let c = cache.classify_recent(black_box(other.as_bytes()), &mut recent);
            debug_assert!(c.hit);
            black_box(c)
        })
    });
    let tables = [ShardedTable {
        database: "app".into(),
        schema: None,
        table: "orders".into(),
        column: "id".into(),
        key_type: KeyType::Bigint,
        placement: Placement::Hash,
    }];
    let classified = cache.classify(sql);
    c.bench_function("shard_route_200b", |b| {
        b.iter(|| {
            let statement = Statement {
                sql: black_box(sql),
                classified: &classified,
                bind: None,
                search_path: None,
            };
            let r = route(&statement, &tables, 3, None);
            debug_assert!(matches!(r, ShardRoute::Shard(_)));
            black_box(r)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
