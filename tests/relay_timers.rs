//! The relay's timers without Postgres and without real time: an in-process sidecar whose
//! upstream is the scripted server over in-process pipes (`scripted::memory`), clients over
//! `tokio::io::duplex`, and `tokio::time` paused, so a 30-second timeout takes no time and no
//! outcome depends on how busy the machine is.

mod scripted;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgsidecar::app::App;
use pgsidecar::config::{Config, Overrides};
use pgsidecar::protocol::backend::ErrorFields;
use pgsidecar::protocol::frame::try_frame;
use pgsidecar::stream::Stream;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A sidecar with a pool of one in front of the in-process scripted server.
fn sidecar(limits: &str) -> (Arc<App>, Arc<std::sync::Mutex<Vec<String>>>) {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
{limits}

[pool]
size = 1
checkout_timeout = "600s"

[[database]]
name = "app"
primary = "postgres://app:secret@scripted:5432/app"

[[user]]
name = "app"
auth = "trust"
"#
    );
    let config = Config::from_toml(&toml, &Overrides::default()).expect("config");
    let (dialer, violations) = scripted::memory();
    (App::with_dialer(config, dialer).expect("app"), violations)
}

/// A client of the sidecar over an in-process pipe.
struct Client {
    conn: DuplexStream,
    buf: BytesMut,
}

impl Client {
    async fn login(app: &Arc<App>) -> Client {
        let (mut conn, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(pgsidecar::session::serve_stream(
            Arc::clone(app),
            Stream::Memory(theirs),
            true,
        ));
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "app"), ("database", "app")], &mut out).unwrap();
        conn.write_all(&out).await.unwrap();
        let mut client = Client {
            conn,
            buf: BytesMut::new(),
        };
        let tags = client.tags_until_ready().await;
        assert!(tags.ends_with('Z') && !tags.contains('E'), "login: {tags}");
        client
    }

    async fn query(&mut self, sql: &str) {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        self.conn.write_all(&out).await.unwrap();
    }

    /// The next message (tag, body); `None` when the sidecar closed the connection.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(frame) = try_frame(&mut self.buf, 1 << 20).unwrap() {
                return Some((frame.tag(), frame.body().to_vec()));
            }
            if self.conn.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Message tags up to and including the next ReadyForQuery (or the close), with the
    /// SQLSTATE of each error in brackets.
    async fn tags_until_ready(&mut self) -> String {
        self.tags(true).await
    }

    /// Everything until the sidecar closes the connection.
    async fn tags_until_closed(&mut self) -> String {
        self.tags(false).await
    }

    /// Message tags until the close, or the next ReadyForQuery when `until_ready`.
    async fn tags(&mut self, until_ready: bool) -> String {
        let mut tags = String::new();
        while let Some((tag, body)) = self.next().await {
            tags.push(tag as char);
            if tag == b'E' {
                tags.push_str(&format!("[{}]", ErrorFields::parse(&body).code));
            }
            if until_ready && tag == b'Z' {
                break;
            }
        }
        tags
    }
}

#[tokio::test(start_paused = true)]
async fn query_timeout_cancels_upstream_and_the_session_goes_on() {
    let (app, violations) = sidecar("query_timeout = \"30s\"");
    let mut client = Client::login(&app).await;
    let started = tokio::time::Instant::now();
    client.query("SELECT pg_sleep(3600)").await;
    // The sidecar cancels at 30 s; the server answers the cancel with 57014.
    assert_eq!(client.tags_until_ready().await, "TE[57014]Z");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(35)).contains(&waited),
        "{waited:?}"
    );
    // The same session, on the same (pool of one) connection, goes on.
    client.query("SELECT 'after'").await;
    assert_eq!(client.tags_until_ready().await, "TDCZ");
    client.query("SELECT pg_sleep(10)").await;
    assert_eq!(client.tags_until_ready().await, "TDCZ");
    assert!(violations.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_frozen_server_is_given_up_after_the_grace_period() {
    let (app, violations) = sidecar("query_timeout = \"10s\"");
    let mut client = Client::login(&app).await;
    let started = tokio::time::Instant::now();
    // Pipelined: both requests were sent; both end with 57014 and the session stays.
    client.query("SELECT pg_freeze()").await;
    client.query("SELECT 'queued'").await;
    assert_eq!(client.tags_until_ready().await, "E[57014]Z");
    assert_eq!(client.tags_until_ready().await, "E[57014]Z");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(16)).contains(&waited),
        "the cancel at 10 s, then 5 s of silence: {waited:?}"
    );
    // The frozen connection was closed, not pooled: the next request gets a new one.
    client.query("SELECT 'fresh'").await;
    assert_eq!(client.tags_until_ready().await, "TDCZ");
    assert!(violations.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn idle_in_transaction_ends_the_session_and_frees_the_connection() {
    let (app, violations) = sidecar("idle_in_transaction_timeout = \"60s\"");
    let mut idle = Client::login(&app).await;
    idle.query("BEGIN").await;
    assert_eq!(idle.tags_until_ready().await, "CZ");
    let started = tokio::time::Instant::now();
    // The pool of one is held by the idle transaction: this client waits for it.
    let mut waiting = Client::login(&app).await;
    waiting.query("SELECT 'next'").await;
    assert_eq!(idle.tags_until_closed().await, "E[25P03]");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(60)..Duration::from_secs(61)).contains(&waited),
        "{waited:?}"
    );
    // The connection was rolled back and serves the waiting client.
    assert_eq!(waiting.tags_until_ready().await, "TDCZ");
    assert!(violations.lock().unwrap().is_empty());
}
