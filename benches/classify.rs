//! Criterion benchmarks of SQL understanding on the hot path. `scan_200b`: the fingerprint scan
//! of a 200-byte OLTP statement. (`classify_miss_200b` and `classify_hit_200b` join when the
//! classifier lands.)

use criterion::{criterion_group, criterion_main, Criterion};
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
    c.bench_function("scan_200b", |b| {
        b.iter(|| black_box(scan(black_box(OLTP_200B.as_bytes()))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
