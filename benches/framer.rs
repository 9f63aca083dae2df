//! Criterion micro-benchmarks of the hot path: framing client messages, scanning server
//! message headers the way the relay does, and parsing a startup packet.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsidecar::protocol::frame::{peek_header, try_frame};
use pgsidecar::protocol::startup::parse_first_packet;
use std::hint::black_box;

/// A server reply like pgbench's SELECT: RowDescription, `rows` DataRows, CommandComplete, Z.
fn reply(rows: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(b'T');
    buf.put_i32(4 + 2 + 25);
    buf.put_i16(1);
    buf.put_slice(b"abalance\0");
    buf.put_slice(&[0u8; 16]);
    for i in 0..rows {
        let value = format!("{}", i * 7919);
        buf.put_u8(b'D');
        buf.put_i32(4 + 2 + 4 + value.len() as i32);
        buf.put_i16(1);
        buf.put_i32(value.len() as i32);
        buf.put_slice(value.as_bytes());
    }
    buf.put_u8(b'C');
    buf.put_i32(4 + 9);
    buf.put_slice(b"SELECT 1\0");
    buf.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    buf
}

fn bench(c: &mut Criterion) {
    let server = reply(1000);
    let mut group = c.benchmark_group("server_scan");
    group.throughput(Throughput::Bytes(server.len() as u64));
    group.bench_function("peek_headers_1000_rows", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut ready = 0;
            while let Ok(Some(h)) = peek_header(&server[at..]) {
                if h.tag == b'Z' {
                    ready += 1;
                }
                at += h.frame_len;
            }
            black_box((at, ready))
        })
    });
    group.finish();

    let mut client = BytesMut::new();
    for _ in 0..100 {
        let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0";
        client.put_u8(b'Q');
        client.put_i32(4 + sql.len() as i32);
        client.put_slice(sql);
    }
    let mut group = c.benchmark_group("client_frames");
    group.throughput(Throughput::Elements(100));
    group.bench_function("try_frame_100_queries", |b| {
        b.iter(|| {
            let mut buf = client.clone();
            let mut n = 0;
            while let Ok(Some(frame)) = try_frame(&mut buf, 64 << 20) {
                n += frame.len();
            }
            black_box(n)
        })
    });
    group.finish();

    let mut startup = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "app"),
        ("database", "app"),
        ("application_name", "bench"),
        ("client_encoding", "UTF8"),
        (
            "options",
            "-c search_path=app,public -c statement_timeout=5s",
        ),
    ] {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    c.bench_function("parse_startup_packet", |b| {
        b.iter(|| black_box(parse_first_packet(black_box(&startup))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
