//! Protocol details drivers depend on, compared message for message with PostgreSQL itself:
//! the same bytes are sent to the server directly and through the sidecar (transaction mode,
//! one server connection that another client uses between every step), and the replies must
//! be identical — empty queries, multi-statement queries, ReadyForQuery status 'I'/'T'/'E',
//! pipelines with several Syncs and errors in the middle, Flush without Sync, Describe of
//! statements and portals, FunctionCall. Also COPY in text, csv and binary, and CopyFail.

mod support;

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use postgres_protocol::message::frontend;
use support::*;

fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap();
    out
}

fn parse_bind_execute(out: &mut BytesMut, sql: &str) {
    parse_bind_execute_named(out, "", sql);
}

/// Parse of `sql` as statement `name`, Bind of it to the unnamed portal, Execute.
fn parse_bind_execute_named(out: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, [], out).unwrap();
    frontend::bind(
        "",
        name,
        [],
        [],
        |_: (), _| Ok(postgres_protocol::IsNull::No),
        [],
        out,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, out).unwrap();
}

/// `COPY proto_copy FROM STDIN` with one row, then a Sync while the COPY runs, then CopyDone.
fn copy_with_sync_inside(row: &[u8]) -> BytesMut {
    let mut out = query("COPY proto_copy FROM STDIN");
    frontend::CopyData::new(row).unwrap().write(&mut out);
    frontend::sync(&mut out);
    frontend::copy_done(&mut out);
    out
}

/// A FunctionCall of `int4abs` (OID 1397) on a text argument.
fn function_call(arg: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(1397);
    body.put_i16(0);
    body.put_i16(1);
    body.put_i32(arg.len() as i32);
    body.put_slice(arg.as_bytes());
    body.put_i16(0);
    let mut out = BytesMut::new();
    out.put_u8(b'F');
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out
}

/// Each step: the bytes to send and how many ReadyForQuery messages answer them.
fn steps() -> Vec<(&'static str, BytesMut, usize)> {
    let mut pipeline = BytesMut::new();
    parse_bind_execute(&mut pipeline, "SELECT 1");
    frontend::sync(&mut pipeline);
    parse_bind_execute(&mut pipeline, "SELECT 1/0");
    frontend::sync(&mut pipeline);
    parse_bind_execute(&mut pipeline, "SELECT 3");
    frontend::sync(&mut pipeline);
    let mut skip = BytesMut::new();
    parse_bind_execute(&mut skip, "SELECT 1");
    parse_bind_execute(&mut skip, "SELEC 2");
    parse_bind_execute(&mut skip, "SELECT 3");
    frontend::sync(&mut skip);
    let mut describe = BytesMut::new();
    frontend::parse("", "SELECT $1::int + 1 AS n", [23], &mut describe).unwrap();
    frontend::describe(b'S', "", &mut describe).unwrap();
    frontend::bind(
        "p",
        "",
        [0],
        [Some(b"41".as_slice())],
        |v, out: &mut BytesMut| {
            out.put_slice(v.unwrap());
            Ok(postgres_protocol::IsNull::No)
        },
        [0],
        &mut describe,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "p", &mut describe).unwrap();
    frontend::execute("p", 0, &mut describe).unwrap();
    frontend::sync(&mut describe);
    let mut in_block = BytesMut::new();
    frontend::query("BEGIN", &mut in_block).unwrap();
    parse_bind_execute(&mut in_block, "SELECT 1");
    frontend::sync(&mut in_block);
    frontend::query("SELECT 1/0", &mut in_block).unwrap();
    frontend::query("SELECT 1", &mut in_block).unwrap();
    frontend::query("ROLLBACK", &mut in_block).unwrap();
    // A Query or FunctionCall after an error inside an extended batch is discarded by the
    // server with the rest of the batch: one ReadyForQuery, for the Sync.
    let mut discarded = BytesMut::new();
    frontend::parse("", "SELEC 1", [], &mut discarded).unwrap();
    frontend::query("SELECT 1", &mut discarded).unwrap();
    frontend::sync(&mut discarded);
    let mut discarded_call = BytesMut::new();
    frontend::parse("", "SELEC 1", [], &mut discarded_call).unwrap();
    discarded_call.extend_from_slice(&function_call("-5"));
    frontend::query("SELECT 2", &mut discarded_call).unwrap();
    frontend::sync(&mut discarded_call);
    // Without an error, a Query inside a batch is answered on its own.
    let mut answered = BytesMut::new();
    parse_bind_execute(&mut answered, "SELECT 1");
    frontend::query("SELECT 2", &mut answered).unwrap();
    frontend::sync(&mut answered);
    // A Sync during a simple Query's COPY FROM STDIN is ignored by the server.
    let copy_sync = copy_with_sync_inside(b"1\n");
    // SQL DEALLOCATE of a statement prepared through the protocol (how psycopg with libpq < 17
    // evicts), then the same name prepared again.
    let mut prepare_named = BytesMut::new();
    frontend::parse("_pg3_0", "SELECT 1", [], &mut prepare_named).unwrap();
    frontend::sync(&mut prepare_named);
    let mut prepare_again = BytesMut::new();
    parse_bind_execute_named(&mut prepare_again, "_pg3_0", "SELECT 2");
    frontend::sync(&mut prepare_again);
    vec![
        ("a named protocol statement", prepare_named, 1),
        ("SQL DEALLOCATE of it", query("DEALLOCATE _pg3_0"), 1),
        ("the same name prepared again", prepare_again, 1),
        ("query after an error in a batch", discarded, 1),
        ("function call after an error in a batch", discarded_call, 1),
        ("query inside a batch", answered, 2),
        ("sync during simple COPY FROM STDIN", copy_sync, 1),
        ("empty query", query(""), 1),
        ("empty statements", query(";;"), 1),
        ("multi-statement", query("SELECT 1; SELECT 'two'; SELECT 3"), 1),
        ("multi-statement error", query("SELECT 1; SELECT 1/0; SELECT 3"), 1),
        ("pipeline with several syncs", pipeline, 3),
        ("error skips to sync", skip, 1),
        ("describe statement and portal", describe, 1),
        ("statuses I T E", in_block, 5),
        ("function call", function_call("-5"), 1),
        ("function call error", function_call("x"), 1),
        (
            "transaction across requests",
            query("BEGIN; CREATE TEMP TABLE t (a int) ON COMMIT DROP; INSERT INTO t VALUES (1); SELECT count(*) FROM t; COMMIT"),
            1,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_match_postgres_message_for_message() {
    let name = fresh_user("proto");
    pg().psql(
        &name,
        &format!("CREATE TABLE proto_copy (a int); ALTER TABLE proto_copy OWNER TO {name}"),
    )
    .unwrap();
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let direct_addr: SocketAddr = format!("127.0.0.1:{}", pg().port).parse().unwrap();
    let mut direct = raw_connect(direct_addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut through = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let other = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    for (step, bytes, readies) in steps() {
        direct.write_all(&bytes).await.unwrap();
        let expected = read_until_ready(&mut direct, readies).await;
        through.write_all(&bytes).await.unwrap();
        let got = read_until_ready(&mut through, readies).await;
        assert_eq!(
            tags(&got),
            tags(&expected),
            "{step}: message sequence differs from PostgreSQL"
        );
        assert_eq!(got, expected, "{step}: replies differ from PostgreSQL");
        // Another client takes the one server connection in between.
        other.simple_query("SELECT 1").await.unwrap();
    }
    // A Sync during a COPY FROM STDIN that fails: Postgres answers it or not depending on
    // whether it read it before the error; the sidecar gives the client the COPY's error and
    // closes that server connection rather than guess, so the pool is never held.
    let failing_copy = copy_with_sync_inside(b"not a number\n");
    let mut copy_client = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    copy_client.write_all(&failing_copy).await.unwrap();
    let got = read_until_ready(&mut copy_client, 1).await;
    assert_eq!(error_code(&got).as_deref(), Some("22P02"), "{}", tags(&got));
    other.simple_query("SELECT 1").await.unwrap();
    drop(copy_client);
    other.simple_query("SELECT 1").await.unwrap();
    // Flush without Sync: the replies so far arrive, without ReadyForQuery.
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT 5", [], &mut out).unwrap();
    frontend::describe(b'S', "", &mut out).unwrap();
    frontend::flush(&mut out);
    through.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        while let Some(frame) =
            pgsidecar::protocol::frame::try_frame(&mut through.rbuf, 1 << 20).unwrap()
        {
            seen.push(frame.tag());
        }
        if seen.len() < 3 {
            tokio::time::timeout(std::time::Duration::from_secs(10), through.read_more())
                .await
                .expect("Flush delivers replies without Sync")
                .unwrap();
        }
    }
    assert_eq!(seen, b"1tT");
    let mut out = BytesMut::new();
    frontend::sync(&mut out);
    through.write_all(&out).await.unwrap();
    assert_eq!(tags(&read_until_ready(&mut through, 1).await), "Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_text_csv_binary_and_copy_fail() {
    let name = fresh_user("copy");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let other = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client
        .batch_execute("CREATE TABLE c (id int, note text)")
        .await
        .unwrap();
    let sink = client
        .copy_in("COPY c FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"1,\"a, b\"\n2,\"say \"\"hi\"\"\"\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    other.simple_query("SELECT 1").await.unwrap();
    // Binary out, then back in through binary.
    let stream = client
        .copy_out("COPY c TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut binary = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        binary.extend_from_slice(&chunk.unwrap());
    }
    assert!(binary.starts_with(b"PGCOPY\n\xff\r\n\0"));
    let sink = client
        .copy_in("COPY c FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(binary)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    // CopyFail: the client gives up; nothing is copied and both clients carry on.
    {
        let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"9\tlost\n"))
            .await
            .unwrap();
        // Dropped without finish: tokio-postgres sends CopyFail.
    }
    other.simple_query("SELECT 1").await.unwrap();
    let rows = client
        .query("SELECT id, note FROM c ORDER BY id, note", &[])
        .await
        .unwrap();
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, "a, b".to_owned()),
            (1, "a, b".to_owned()),
            (2, "say \"hi\"".to_owned()),
            (2, "say \"hi\"".to_owned()),
        ]
    );
    // CSV out.
    let stream = client
        .copy_out("COPY (SELECT id, note FROM c ORDER BY id LIMIT 1) TO STDOUT (FORMAT csv)")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut csv = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        csv.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(csv, b"1,\"a, b\"\n");
}
