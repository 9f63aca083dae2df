//! The integration-test harness shared by every test binary: one real PostgreSQL server per
//! test binary (started on first use, stopped when the binary exits), fresh roles and databases
//! per test, an in-process sidecar on free loopback ports, and real clients (tokio-postgres,
//! psql, pgbench, a raw protocol client).
#![allow(dead_code)]

pub mod shards;
pub mod stall;

use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use pgsidecar::config::{Config, Overrides, UpstreamUrl};
use pgsidecar::listener::Running;
use pgsidecar::localpg::LocalPostgres;
use pgsidecar::pool::ServerConn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

pub const PASSWORD: &str = "secret";

/// The `[tenancy]` signing key of the test sidecars.
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdefghij";
/// `[tenancy]` with the test signing key, to append further tenancy lines to.
pub const TENANCY: &str = "\n[tenancy]\nsigning_key = \"test-signing-key-0123456789abcdefghij\"\n";

/// A client of `tenant` (login `<name>.<tenant>`) through the sidecar, to database `name`.
pub async fn tenant_client(sidecar: &Running, name: &str, tenant: &str) -> tokio_postgres::Client {
    connect(sidecar.addr, &format!("{name}.{tenant}"), PASSWORD, name)
        .await
        .unwrap()
}

/// Installs `pgsidecar.tenant()` with the test signing key in database `db`.
pub fn install_tenancy_sql(db: &str) {
    let signer = pgsidecar::token::Signer::new(SIGNING_KEY.as_bytes()).expect("test key");
    pg().psql(db, &signer.install_sql(None))
        .expect("install the tenancy SQL");
}

static PG: OnceLock<LocalPostgres> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Upstream roles that log in with md5 and with trust (every other role uses SCRAM).
pub const UPSTREAM_MD5_USER: &str = "upstream_md5";
pub const UPSTREAM_TRUST_USER: &str = "upstream_trust";

/// The test binary's PostgreSQL server.
pub fn pg() -> &'static LocalPostgres {
    pg_with(String::new)
}

/// The test binary's PostgreSQL server, started with `options()` (`-c name=value …`) if this
/// is the first use in the binary.
pub fn pg_with(options: impl FnOnce() -> String) -> &'static LocalPostgres {
    PG.get_or_init(|| {
        let options = options();
        let hba = format!(
            "host all {UPSTREAM_MD5_USER} 127.0.0.1/32 md5\nhost all {UPSTREAM_TRUST_USER} 127.0.0.1/32 trust"
        );
        let pg = LocalPostgres::start_with_hba(&options, &hba).expect("start a local PostgreSQL server");
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE {UPSTREAM_MD5_USER} LOGIN PASSWORD '{PASSWORD}'; \
                 CREATE ROLE {UPSTREAM_TRUST_USER} LOGIN"
            ),
        )
        .expect("create upstream md5 and trust roles");
        pg
    })
}

/// A role (password [`PASSWORD`]) and a database it owns, both new, named after `prefix`.
pub fn fresh_user(prefix: &str) -> String {
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    pg().create_user_and_database(&name, PASSWORD, &name)
        .expect("create role and database");
    name
}

/// TOML for a sidecar on free ports with one database and one SCRAM user named `name`, where
/// the upstream role, the client user and the database all share that name. Unless `pool` sets
/// its own, the connect timeout is a generous bound (30 s): a machine busy with the other tests
/// can take seconds to start a backend (the 5 s default failed logins so); tests of timeouts
/// set theirs.
pub fn base_toml(name: &str, pool: &str) -> String {
    let connect_timeout = if pool.contains("connect_timeout") {
        ""
    } else {
        "connect_timeout = \"30s\"\n"
    };
    format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
drain_timeout = "2s"

[pool]
{connect_timeout}{pool}

[[database]]
name = "{name}"
primary = "{url}"

[[user]]
name = "{name}"
password = "{PASSWORD}"
"#,
        url = pg().url(name, PASSWORD, name)
    )
}

/// Starts an in-process sidecar with this configuration (logs follow `RUST_LOG`).
pub async fn start(toml: &str) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = Config::from_toml(toml, &Overrides::default()).expect("valid test config");
    pgsidecar::listener::start(config)
        .await
        .expect("sidecar starts")
}

/// Starts an in-process sidecar from the configuration file at `path` (RELOAD reads it again).
pub async fn start_from_file(path: &std::path::Path) -> Running {
    let config = Config::from_file(path, &Overrides::default()).expect("valid test config");
    pgsidecar::listener::start_from(
        config,
        Some(pgsidecar::app::ConfigFile {
            path: path.to_owned(),
            overrides: Overrides::default(),
        }),
    )
    .await
    .expect("sidecar starts")
}

/// The sidecar binary (a process of its own, for signals and kills) started with the
/// configuration file at `path`; returns once it listens on `port` (bounded: 20 s). Killed
/// when dropped.
pub async fn spawn_binary_with(path: &std::path::Path, port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["run", "--config"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar binary did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// A tokio-postgres client through `addr`.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A tokio-postgres client straight to the test server, as the superuser.
pub async fn connect_direct_superuser(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(&pg().dir)
        .port(pg().port)
        .user("postgres")
        .dbname(db)
        .connect(NoTls)
        .await
        .expect("superuser connects over the Unix socket");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Backends of `user` as Postgres sees them.
pub async fn backends_of(admin: &tokio_postgres::Client, user: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
            &[&user],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Backends of `user` idle inside a transaction (what a pooler must never leave behind).
pub async fn open_transactions_of(admin: &tokio_postgres::Client, user: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state LIKE 'idle in transaction%'",
            &[&user],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// A StartupMessage for protocol `version` with these parameters, length word included.
pub fn startup_packet(version: i32, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in pairs {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// The SQLSTATE of a tokio-postgres error, if the server (or sidecar) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// A raw protocol client through `addr`, with extra startup parameters.
pub async fn raw_connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    params: &[(&str, &str)],
) -> Result<ServerConn, pgsidecar::pool::ServerError> {
    let url = UpstreamUrl::parse(&format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{db}",
        addr.port()
    ))
    .expect("url");
    let options = pgsidecar::pool::ConnectOptions {
        timeout: Duration::from_secs(10),
        keepalive: Duration::ZERO,
        tls: None,
        dialer: Default::default(),
    };
    ServerConn::connect(0, &url, params, &options).await
}

/// This process's resident memory (the in-process sidecar's included), KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Polls (bounded: panics after 20 s) until `sql`, run directly on database `db` as the
/// superuser, returns a count of at least one.
pub async fn until_count(db: &str, sql: &str) {
    until_positive(&connect_direct_superuser(db).await, sql).await;
}

/// Polls (bounded: panics after 20 s) until each connection from `client_ports` to
/// `server_port` that the server closed is closed by the sidecar too: none of them is still
/// ESTABLISHED or CLOSE_WAIT in `/proc/net/tcp`. A backend leaves pg_stat_activity a moment
/// before its socket closes, and the kernel has the close before the sidecar's reactor has
/// seen it; once the sidecar closed its end, it has seen it.
pub async fn until_closed_by_sidecar(client_ports: &[u16], server_port: u16) {
    let port = |address: &str| {
        let hex = address.rsplit(':').next()?;
        u16::from_str_radix(hex, 16).ok()
    };
    for _ in 0..1000 {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let open = table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // 01 ESTABLISHED, 08 CLOSE_WAIT (closed by the server, not yet by the sidecar).
            let open = matches!(fields.get(3), Some(&"01") | Some(&"08"));
            let ours = fields
                .get(1)
                .and_then(|a| port(a))
                .is_some_and(|p| client_ports.contains(&p));
            let to_server = fields.get(2).and_then(|a| port(a)) == Some(server_port);
            open && ours && to_server
        });
        if !open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("connections from ports {client_ports:?} were never closed by both ends");
}

/// Polls `sql` (a count) through `client` until it is positive (bounded: panics after 20 s).
pub async fn until_positive(client: &tokio_postgres::Client, sql: &str) {
    for _ in 0..1000 {
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never true: {sql}");
}

/// Polls `/metrics` until the metric `name` has `value` (bounded: panics after 10 s), for
/// gauges that a concurrent task (a release after the reply) is about to change.
pub async fn until_metric(metrics_addr: SocketAddr, name: &str, value: f64) {
    for _ in 0..500 {
        if scrape(metrics_addr, name).await == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never became {value}");
}

/// `GET path` on the metrics listener: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs a PostgreSQL client program (psql, pgbench) from the server's bin directory.
pub async fn run_pg_program(program: &str, args: &[&str], password: &str) -> Output {
    tokio::process::Command::new(pg().bin_dir().join(program))
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs pgbench through the sidecar at `port` as `name` (database `name`): `pgbench -i -s 1`
/// first when `init`, then the run with `args`; asserts every transaction ran, none failed.
pub async fn pgbench(port: u16, name: &str, init: bool, args: &[&str], transactions: usize) {
    let port = port.to_string();
    let common = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", name];
    if init {
        let mut init = common.to_vec();
        init.extend(["-i", "-s", "1", "-q", name]);
        let out = run_pg_program("pgbench", &init, PASSWORD).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut run = common.to_vec();
    run.extend(args);
    run.extend(["-n", name]);
    let out = run_pg_program("pgbench", &run, PASSWORD).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let processed =
        format!("number of transactions actually processed: {transactions}/{transactions}");
    assert!(stdout.contains(&processed), "{args:?}: {stdout}");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{args:?}: {stdout}"
    );
}

/// A value of one metric line (`name` may include labels) from the /metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Metric `name` as the sidecar whose metrics listener is `metrics_addr` reports it now.
pub async fn scrape(metrics_addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    metric(&text, name)
}

/// Bind of `statement` to the unnamed portal, Execute, Sync.
pub fn bind_execute(out: &mut bytes::BytesMut, statement: &str) {
    bind_and_execute(out, statement);
    postgres_protocol::message::frontend::sync(out);
}

/// Bind of `statement` to the unnamed portal and Execute (no Sync: the batch goes on).
pub fn bind_and_execute(out: &mut bytes::BytesMut, statement: &str) {
    postgres_protocol::message::frontend::bind(
        "",
        statement,
        [],
        [],
        |_: (), _| Ok(postgres_protocol::IsNull::No),
        [],
        out,
    )
    .map_err(|_| ())
    .unwrap();
    postgres_protocol::message::frontend::execute("", 0, out).unwrap();
}

/// Reads whole messages until `readies` ReadyForQuery arrived: (tag, body) each.
pub async fn read_until_ready(
    conn: &mut pgsidecar::pool::ServerConn,
    readies: usize,
) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < readies {
        while let Some(frame) =
            pgsidecar::protocol::frame::try_frame(&mut conn.rbuf, 1 << 20).unwrap()
        {
            if frame.tag() == b'Z' {
                seen += 1;
            }
            out.push((frame.tag(), frame.body().to_vec()));
            if seen == readies {
                return out;
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_more())
            .await
            .expect("no hang")
            .unwrap();
    }
    out
}

/// The message tags of `replies`, as a string.
pub fn tags(replies: &[(u8, Vec<u8>)]) -> String {
    replies.iter().map(|(t, _)| *t as char).collect()
}

/// The text of each DataRow's first column in `replies`, in order.
pub fn first_columns(replies: &[(u8, Vec<u8>)]) -> Vec<String> {
    replies
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned())
        .collect()
}

/// The SQLSTATE of the first ErrorResponse in `replies`.
pub fn error_code(replies: &[(u8, Vec<u8>)]) -> Option<String> {
    replies
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, body)| pgsidecar::protocol::backend::ErrorFields::parse(body).code)
}

/// A tokio-postgres client through the sidecar whose notifications arrive on a channel.
pub async fn listening_client(
    addr: std::net::SocketAddr,
    user: &str,
    database: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let (client, mut conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .password(PASSWORD)
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

pub async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> Option<tokio_postgres::Notification> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

pub async fn none_within(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let late = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    assert!(late.is_err(), "unexpected notification: {late:?}");
}
