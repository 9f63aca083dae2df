//! Real clients through the sidecar — psql (`-c`, a script, COPY, notices) and pgbench
//! (simple and extended protocol, more clients than server connections) — plus client
//! authentication (SCRAM, md5, trust, unknown users, unknown databases) and hostile input.

mod support;

use std::time::Duration;

use bytes::BufMut;
use futures_util::SinkExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn psql_args<'a>(port: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        name,
        "-d",
        name,
        "-v",
        "ON_ERROR_STOP=1",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_commands_scripts_copy_and_notices() {
    let name = fresh_user("psql");
    let sidecar = start(&base_toml(&name, "size = 2")).await;
    let port = sidecar.addr.port().to_string();

    let mut args = psql_args(&port, &name);
    args.extend(["-At", "-c", "SELECT 40 + 2"]);
    let out = run_pg_program("psql", &args, PASSWORD).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let dir = std::env::temp_dir().join(format!("pgsidecar-psql-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.sql");
    std::fs::write(
        &script,
        "CREATE TABLE items (id int PRIMARY KEY, label text);\n\
         BEGIN;\n\
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;\n\
         COMMIT;\n\
         \\copy items TO 'OUT' WITH (FORMAT csv)\n\
         CREATE TABLE copied (id int, label text);\n\
         \\copy copied FROM 'OUT' WITH (FORMAT csv)\n\
         DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$;\n\
         SELECT count(*), sum(id) FROM copied;\n"
            .replace("OUT", &dir.join("items.csv").display().to_string()),
    )
    .unwrap();
    let mut args = psql_args(&port, &name);
    let script_path = script.display().to_string();
    args.extend(["-At", "-f", &script_path]);
    let out = run_pg_program("psql", &args, PASSWORD).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NOTICE:  hello from the server"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("500|125250"));

    // A failing statement reports the server's error; psql exits 1 for a failed -c.
    let mut args = psql_args(&port, &name);
    args.extend(["-c", "SELECT * FROM no_such_table"]);
    let out = run_pg_program("psql", &args, PASSWORD).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relation \"no_such_table\" does not exist")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_with_more_clients_than_servers() {
    let name = fresh_user("bench");
    let sidecar = start(&base_toml(&name, "size = 4\ncheckout_timeout = \"30s\"")).await;
    let port = sidecar.addr.port();
    pgbench(
        port,
        &name,
        true,
        &["-c", "16", "-j", "2", "-t", "40", "-M", "simple"],
        640,
    )
    .await;
    pgbench(
        port,
        &name,
        false,
        &["-c", "16", "-j", "2", "-t", "40", "-M", "extended"],
        640,
    )
    .await;
    let admin = connect_direct_superuser("postgres").await;
    assert!(backends_of(&admin, &name).await <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_through_the_extended_protocol() {
    let name = fresh_user("copy");
    let sidecar = start(&base_toml(&name, "size = 1\ncheckout_timeout = \"10s\"")).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client
        .batch_execute("CREATE TABLE c (id int, body text)")
        .await
        .unwrap();
    let other = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();

    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    // While this COPY runs the only server connection is busy; another client waits for it
    // instead of being handed a connection in the middle of a COPY.
    let waiting = tokio::spawn(async move {
        let n: i64 = other
            .query_typed("SELECT count(*) FROM c", &[])
            .await
            .unwrap()[0]
            .get(0);
        n
    });
    let mut big = String::new();
    for i in 0..20_000 {
        big.push_str(&format!(
            "{i}\tline number {i} with some padding to make it larger\n"
        ));
    }
    for chunk in big.as_bytes().chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    let copied = sink.as_mut().finish().await.unwrap();
    assert_eq!(copied, 20_000);
    assert_eq!(waiting.await.unwrap(), 20_000);

    let stream = client.copy_out("COPY c TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(stream)
        .await
        .unwrap();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    assert_eq!(total, big.len());
    let v: i32 = client.query_typed("SELECT 7", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_methods_and_refusals() {
    let name = fresh_user("auth");
    let toml = format!(
        "{}\n[[user]]\nname = \"md5user\"\npassword = \"pw5\"\nauth = \"md5\"\n\n[[user]]\nname = \"trusty\"\nauth = \"trust\"\n\n[[user]]\nname = \"verifier\"\nscram_verifier = \"{}\"\n\n[[user]]\nname = \"clear\"\npassword = \"pwc\"\nauth = \"password\"\n",
        base_toml(&name, "size = 2"),
        postgres_protocol::password::scram_sha_256(b"vpw")
    );
    let sidecar = start(&toml).await;
    let ok = |user: &'static str, pw: &'static str| {
        let name = name.clone();
        let addr = sidecar.addr;
        async move {
            let client = connect(addr, user, pw, &name)
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            let v: i32 = client.query_typed("SELECT 1", &[]).await.unwrap()[0].get(0);
            assert_eq!(v, 1);
        }
    };
    ok("md5user", "pw5").await;
    ok("trusty", "anything").await;
    ok("verifier", "vpw").await;
    ok("clear", "pwc").await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();

    let wrong = connect(sidecar.addr, &name, "wrong", &name)
        .await
        .unwrap_err();
    let unknown = connect(sidecar.addr, "nobody", "wrong", &name)
        .await
        .unwrap_err();
    let md5_wrong = connect(sidecar.addr, "md5user", "nope", &name)
        .await
        .unwrap_err();
    for (err, user) in [
        (&wrong, name.as_str()),
        (&unknown, "nobody"),
        (&md5_wrong, "md5user"),
    ] {
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{user}: {err:?}"));
        assert_eq!(db.code().code(), "28P01");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // The database is checked only after authentication.
    let err = connect(sidecar.addr, &name, PASSWORD, "nodb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
    let err = connect(sidecar.addr, &name, "wrong", "nodb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
}

/// The SQLSTATEs of the ErrorResponses among complete backend messages in `buf`.
fn error_codes(buf: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < len + 1 {
            break;
        }
        if rest[0] == b'E' {
            codes.push(pgsidecar::protocol::backend::ErrorFields::parse(&rest[5..len + 1]).code);
        }
        rest = &rest[len + 1..];
    }
    codes
}

/// Reads until EOF (bounded in time) and returns the SQLSTATEs of ErrorResponses seen.
async fn error_codes_until_close(stream: &mut tokio::net::TcpStream) -> Vec<String> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    error_codes(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_08p01_and_harms_nobody() {
    let name = fresh_user("hostile");
    let toml = base_toml(&name, "size = 2").replace(
        "drain_timeout",
        "max_message_size = \"64KiB\"\ndrain_timeout",
    );
    let sidecar = start(&toml).await;
    let bystander = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    bystander.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // Garbage instead of a startup packet.
    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(error_codes_until_close(&mut s).await, vec!["08P01"]);
    // A startup packet with parameters that do not end.
    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let mut packet = bytes::BytesMut::new();
    packet.put_i32(4 + 4 + 9);
    packet.put_i32(196_608);
    packet.put_slice(b"user\0abc\0x");
    s.write_all(&packet).await.unwrap();
    assert_eq!(error_codes_until_close(&mut s).await, vec!["08P01"]);

    // After login: an unknown message type, a length over the limit, a bad length, a
    // truncated message followed by EOF.
    let cases: Vec<Vec<u8>> = vec![
        vec![b'?', 0, 0, 0, 4],
        {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&(1_000_000i32).to_be_bytes());
            m
        },
        vec![b'Q', 0, 0, 0, 2],
    ];
    for bytes in cases {
        let mut conn = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
            .await
            .unwrap();
        conn.write_all(&bytes).await.unwrap();
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), conn.read_more()).await {
        }
        let codes = error_codes(&conn.rbuf);
        assert_eq!(codes, vec!["08P01"], "input {bytes:?}");
    }
    let mut conn = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    conn.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E'])
        .await
        .unwrap();
    drop(conn);

    // The bystander's transaction is untouched and the sidecar still serves new clients.
    bystander.batch_execute("SELECT 2; COMMIT").await.unwrap();
    let fresh = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    let v: i32 = fresh.query_typed("SELECT 5", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_logins_with_md5_and_trust() {
    for (upstream_user, url_password) in [(UPSTREAM_MD5_USER, PASSWORD), (UPSTREAM_TRUST_USER, "")]
    {
        let name = fresh_user("upauth");
        let auth = if url_password.is_empty() {
            String::new()
        } else {
            format!(":{url_password}")
        };
        let toml = base_toml(&name, "size = 1").replace(
            &pg().url(&name, PASSWORD, &name),
            &format!(
                "postgres://{upstream_user}{auth}@127.0.0.1:{}/{name}",
                pg().port
            ),
        );
        let sidecar = start(&toml).await;
        let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
        let who: String = client
            .query_typed("SELECT current_user::text", &[])
            .await
            .unwrap()[0]
            .get(0);
        assert_eq!(who, upstream_user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_versions_are_negotiated_and_replication_refused() {
    let name = fresh_user("negotiate");
    let sidecar = start(&base_toml(&name, "size = 1")).await;
    // Protocol 3.2 with an unknown _pq_ option: NegotiateProtocolVersion (3.0, the option),
    // then authentication proceeds as usual.
    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let packet = startup_packet(
        196_608 + 2,
        &[
            ("user", name.as_str()),
            ("database", name.as_str()),
            ("_pq_.magic", "1"),
        ],
    );
    s.write_all(&packet).await.unwrap();
    let mut buf = vec![0u8; 256];
    let mut got = Vec::new();
    while got.len() < 5 + 8 + 11 + 1 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got[0], b'v');
    assert_eq!(
        &got[5..9],
        &0i32.to_be_bytes(),
        "newest minor version supported"
    );
    assert_eq!(&got[9..13], &1i32.to_be_bytes());
    assert_eq!(&got[13..24], b"_pq_.magic\0");
    assert_eq!(got[24], b'R', "authentication follows");

    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let packet = startup_packet(
        196_608,
        &[
            ("user", name.as_str()),
            ("database", name.as_str()),
            ("replication", "database"),
        ],
    );
    s.write_all(&packet).await.unwrap();
    assert_eq!(error_codes_until_close(&mut s).await, vec!["0A000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_larger_than_max_message_size_is_streamed() {
    let name = fresh_user("bigcopy");
    let toml = base_toml(&name, "size = 1").replace(
        "drain_timeout",
        "max_message_size = \"1MiB\"\ndrain_timeout",
    );
    let sidecar = start(&toml).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client
        .batch_execute("CREATE TABLE big (id int, body text)")
        .await
        .unwrap();
    let mut rows = String::new();
    for i in 0..100_000 {
        rows.push_str(&format!("{i}\t{}\n", "z".repeat(60)));
    }
    assert!(rows.len() > 6 << 20);
    let sink = client.copy_in("COPY big FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    // One CopyData message of ~6 MiB, six times the configured maximum.
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 100_000);

    // A client that leaves in the middle of such a message does not poison the connection.
    let mut quitter = raw_connect(sidecar.addr, &name, PASSWORD, &name, &[])
        .await
        .unwrap();
    let mut msg = bytes::BytesMut::new();
    pgsidecar::protocol::frontend::append_query(&mut msg, "COPY big FROM STDIN");
    quitter.write_all(&msg).await.unwrap();
    while !quitter.rbuf.contains(&b'G') {
        quitter.read_more().await.unwrap();
    }
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&(10_000_000i32).to_be_bytes());
    partial.extend(std::iter::repeat_n(b'x', 200_000));
    quitter.write_all(&partial).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(quitter);
    let n: i64 = client
        .query_typed("SELECT count(*) FROM big", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 100_000);
}
