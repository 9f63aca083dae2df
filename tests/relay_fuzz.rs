//! Random and mutated client sessions through a running relay, over `tokio::io::duplex`,
//! against a scripted server (`tests/scripted`): valid sessions with bit flips, truncations,
//! length fields of 0, 3 and huge, unknown message types, Binds with inconsistent counts, Sync
//! storms, Flush without Sync, and Terminate wherever it falls. For every session: no panic
//! anywhere in the sidecar; the client is answered or closed, never left hanging; the scripted
//! server never receives a malformed message; and afterwards an ordinary client is served at
//! once by the pool of one (nothing leaked, nothing left waiting for a reply that never comes).
//! Twice: against the scripted server over TCP, and with a replica (both ends over in-process
//! pipes), where requests move between the two and a client holds both at once.
//! `PROPTEST_CASES` sets the number of sessions per run (default 1024).

mod scripted;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pgsidecar::app::App;
use pgsidecar::config::{Config, Overrides};
use pgsidecar::protocol::frame::try_frame;
use pgsidecar::stream::Stream;
use postgres_protocol::message::frontend;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const QUERIES: &[&str] = &[
    "SELECT 1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT FAIL",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "SET search_path = public",
    "DISCARD ALL",
    "SELECT 1; SELECT 2",
    "",
    "BEGIN; SELECT FAIL",
    "DEALLOCATE s1",
    "SAVEPOINT a",
    "ROLLBACK TO a",
    "LISTEN jobs",
];
const STATEMENTS: &[&str] = &[
    "SELECT $1",
    "SELECT FAIL",
    "COPY t FROM STDIN",
    "BEGIN",
    "COMMIT",
    "INSERT INTO t VALUES (1)",
];
const NAMES: &[&str] = &["", "s1", "s2"];

/// One well-formed client message.
#[derive(Debug, Clone)]
enum Msg {
    Query(usize),
    Parse(usize, usize),
    Bind(usize, u8),
    DescribeStatement(usize),
    DescribePortal,
    Execute,
    CloseStatement(usize),
    Sync,
    Flush,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail,
    FunctionCall,
    Terminate,
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        10 => (0..QUERIES.len()).prop_map(Msg::Query),
        10 => (0..NAMES.len(), 0..STATEMENTS.len()).prop_map(|(n, s)| Msg::Parse(n, s)),
        10 => (0..NAMES.len(), 0u8..2).prop_map(|(n, p)| Msg::Bind(n, p)),
        10 => (0..NAMES.len()).prop_map(Msg::DescribeStatement),
        10 => Just(Msg::DescribePortal),
        10 => Just(Msg::Execute),
        10 => (0..NAMES.len()).prop_map(Msg::CloseStatement),
        10 => Just(Msg::Sync),
        10 => Just(Msg::Flush),
        10 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Msg::CopyData),
        10 => Just(Msg::CopyDone),
        10 => Just(Msg::CopyFail),
        10 => Just(Msg::FunctionCall),
        // Rarer: it ends the session (about one session in nine holds one).
        1 => Just(Msg::Terminate),
    ]
}

fn encode(m: &Msg, out: &mut BytesMut) {
    match m {
        Msg::Query(i) => frontend::query(QUERIES[*i], out).unwrap(),
        Msg::Parse(n, s) => frontend::parse(NAMES[*n], STATEMENTS[*s], [], out).unwrap(),
        Msg::Bind(n, params) => {
            let values: Vec<Option<&str>> = (0..*params).map(|_| Some("7")).collect();
            frontend::bind(
                "",
                NAMES[*n],
                [],
                values,
                |v: Option<&str>, buf| {
                    buf.put_slice(v.unwrap_or_default().as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                },
                [],
                out,
            )
            .map_err(|_| ())
            .unwrap()
        }
        Msg::DescribeStatement(n) => frontend::describe(b'S', NAMES[*n], out).unwrap(),
        Msg::DescribePortal => frontend::describe(b'P', "", out).unwrap(),
        Msg::Execute => frontend::execute("", 0, out).unwrap(),
        Msg::CloseStatement(n) => frontend::close(b'S', NAMES[*n], out).unwrap(),
        Msg::Sync => frontend::sync(out),
        Msg::Flush => frontend::flush(out),
        Msg::CopyData(data) => frontend::CopyData::new(&data[..]).unwrap().write(out),
        Msg::CopyDone => frontend::copy_done(out),
        Msg::CopyFail => frontend::copy_fail("client says no", out).unwrap(),
        Msg::Terminate => frontend::terminate(out),
        Msg::FunctionCall => {
            // oid 1, no formats, one text argument, text result.
            let body = [
                &1i32.to_be_bytes()[..],
                &[0, 0, 0, 1],
                &1i32.to_be_bytes(),
                b"x",
                &[0, 0],
            ]
            .concat();
            out.put_u8(b'F');
            out.put_i32(body.len() as i32 + 4);
            out.put_slice(&body);
        }
    }
}

/// How a valid session is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    BitFlip(usize, u8),
    Truncate(usize),
    /// The length field of the message starting at (roughly) this offset.
    Length(usize, i32),
    UnknownTag(usize, u8),
    BindInconsistentCounts,
    SyncStorm(usize),
    FlushWithoutSync(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        2 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::BitFlip(p, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop_oneof![Just(0), Just(3), Just(i32::MAX), Just(-1), 4..200]).prop_map(|(p, l)| Mutation::Length(p, l)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, t)| Mutation::UnknownTag(p, t)),
        1 => Just(Mutation::BindInconsistentCounts),
        1 => (1usize..200).prop_map(Mutation::SyncStorm),
        1 => (1usize..50).prop_map(Mutation::FlushWithoutSync),
    ]
}

/// The offsets where messages start in `bytes` (well-formed ones).
fn starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 5 <= bytes.len() {
        out.push(at);
        let len = i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        at += len as usize + 1;
    }
    out
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let starts = starts(&bytes);
    match m {
        Mutation::None => {}
        Mutation::BitFlip(p, b) if !bytes.is_empty() => {
            let i = p % bytes.len();
            bytes[i] ^= 1 << b;
        }
        Mutation::Truncate(p) if !bytes.is_empty() => bytes.truncate(p % bytes.len()),
        Mutation::Length(p, len) if !starts.is_empty() => {
            let at = starts[p % starts.len()];
            bytes[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
        }
        Mutation::UnknownTag(p, tag) if !starts.is_empty() => {
            bytes[starts[p % starts.len()]] = *tag;
        }
        Mutation::BindInconsistentCounts => {
            // Two parameter formats, one parameter.
            let body = [
                b"\0\0".as_slice(),
                &[0, 2, 0, 0, 0, 0],
                &[0, 1],
                &1i32.to_be_bytes(),
                b"7",
                &[0, 0],
            ]
            .concat();
            bytes.push(b'B');
            bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            bytes.extend_from_slice(&body);
        }
        Mutation::SyncStorm(n) => {
            let mut out = BytesMut::new();
            for _ in 0..*n {
                frontend::sync(&mut out);
            }
            bytes.extend_from_slice(&out);
        }
        Mutation::FlushWithoutSync(n) => {
            let mut out = BytesMut::new();
            frontend::parse("", "SELECT $1", [], &mut out).unwrap();
            for _ in 0..*n {
                frontend::flush(&mut out);
            }
            bytes.extend_from_slice(&out);
        }
        _ => {}
    }
    bytes
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    /// Its runtime's thread name.
    name: &'static str,
    app: Arc<App>,
    /// What the scripted server saw that it should never see.
    violations: Arc<std::sync::Mutex<Vec<String>>>,
    sessions: AtomicUsize,
    /// The first session that hung or after which an ordinary client was not served, if any.
    poisoned: std::sync::Mutex<Option<String>>,
}

impl Harness {
    /// Panics on this harness's runtime so far.
    fn panics(&self) -> usize {
        let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        panics.iter().filter(|thread| *thread == self.name).count()
    }
}

/// Why a session failed.
#[derive(Debug)]
enum Failure {
    /// The session itself went wrong (an error the test did not expect).
    Session(String),
    /// The session hung: its client was neither answered nor closed, or it did not end.
    Hang(String),
    /// The ordinary client after it was not served: the pool was left unusable.
    NextClientNotServed(String),
}

impl Failure {
    /// Whether the session may have left the pool of one held (every later session fails).
    fn holds_the_pool(&self) -> bool {
        matches!(self, Failure::Hang(_) | Failure::NextClientNotServed(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Session(why) | Failure::Hang(why) => write!(f, "{why}"),
            Failure::NextClientNotServed(why) => write!(f, "after it, {why}"),
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Session(why)
    }
}

/// The names of the threads that panicked (each harness's runtime names its threads).
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The sidecar configuration: a pool of one in front of `primary`, with `extra` lines in the
/// database (replicas). No query timeout (the default): a reply the sidecar waits for in vain
/// must show as a hang, not as a recovery 25 s later.
fn fuzz_toml(primary: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"

[pool]
size = 1
checkout_timeout = "20s"

[[database]]
name = "fuzz"
primary = "{primary}"
{extra}

[[user]]
name = "fuzz"
auth = "trust"
"#
    )
}

/// How long a client waits for an answer before the session counts as hanging.
const WAIT_BOUND: Duration = Duration::from_secs(60);

/// A runtime of its own (proptest cases are synchronous) whose threads are called `name`, with
/// panics recorded.
fn runtime(name: &'static str) -> tokio::runtime::Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or_default().to_owned();
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread);
            default(info);
        }));
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// The sidecar in front of the scripted server over TCP.
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let name = "fuzz-tcp";
        let runtime = runtime(name);
        let (app, violations) = runtime.block_on(async {
            let server = scripted::start().await;
            let url = format!(
                "postgres://fuzz:secret@127.0.0.1:{}/fuzz",
                server.addr.port()
            );
            let config =
                Config::from_toml(&fuzz_toml(&url, ""), &Overrides::default()).expect("config");
            (App::new(config).expect("app"), server.violations)
        });
        Harness {
            runtime,
            app,
            violations,
            name,
            sessions: AtomicUsize::new(0),
            poisoned: std::sync::Mutex::new(None),
        }
    })
}

/// The sidecar routing between a primary and a replica, both the scripted server over
/// in-process pipes, with the replica's health checks running and the replica serving reads:
/// requests move between the two, and a client holds both at once.
fn routing_harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let name = "fuzz-routing";
        let runtime = runtime(name);
        let (dialer, violations) = runtime.block_on(async { scripted::memory() });
        let toml = fuzz_toml(
            "postgres://fuzz:secret@primary:5432/fuzz",
            "replicas = [\"postgres://fuzz:secret@replica:5432/fuzz\"]\n\
             replica_check_interval = \"100ms\"\nread_your_writes = \"off\"",
        );
        let config = Config::from_toml(&toml, &Overrides::default()).expect("config");
        let app = App::with_dialer(config, dialer).expect("app");
        runtime.block_on(async {
            let topology = app
                .live()
                .database("fuzz")
                .and_then(|d| d.replicas.clone())
                .expect("a replica");
            tokio::spawn(Arc::clone(&topology).monitor(app.terminate.clone()));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !topology.replicas.iter().all(|r| r.usable()) {
                assert!(Instant::now() < deadline, "the replica never became usable");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Harness {
            runtime,
            app,
            violations,
            name,
            sessions: AtomicUsize::new(0),
            poisoned: std::sync::Mutex::new(None),
        }
    })
}

fn startup_packet() -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "fuzz"), ("database", "fuzz")], &mut out).unwrap();
    out.to_vec()
}

/// A client logged in through a new in-process connection.
async fn login(app: &Arc<App>) -> Result<(DuplexStream, tokio::task::JoinHandle<()>), String> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(pgsidecar::session::serve_stream(
        Arc::clone(app),
        Stream::Memory(server),
        true,
    ));
    client
        .write_all(&startup_packet())
        .await
        .map_err(|e| e.to_string())?;
    let replies = read_until(&mut client, |r| r.last().is_some_and(|(t, _)| *t == b'Z')).await?;
    if replies.iter().any(|(t, _)| *t == b'E') {
        return Err(format!("login failed: {replies:?}"));
    }
    Ok((client, task))
}

/// Reads messages until `done` says so or the connection closes (Ok either way); Err if
/// neither happens within the bound.
async fn read_until(
    client: &mut DuplexStream,
    done: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        while let Some(frame) = try_frame(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
            replies.push((frame.tag(), frame.body().to_vec()));
            if done(&replies) {
                return Ok(replies);
            }
        }
        match tokio::time::timeout_at(deadline.into(), client.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(replies),
            Ok(Ok(_)) => {}
            Err(_) => return Err(format!("neither answered nor closed; got {replies:?}")),
        }
    }
}

/// One session: the bytes, then a probe (CopyFail, Sync, a query), then the client's end.
async fn run_session(app: &Arc<App>, bytes: Vec<u8>) -> Result<(), Failure> {
    let (client, task) = login(app).await?;
    let (mut reader, mut writer) = tokio::io::split(client);
    let writing = async move {
        let mut out = BytesMut::from(&bytes[..]);
        frontend::copy_fail("probe", &mut out).unwrap();
        frontend::sync(&mut out);
        frontend::query("SELECT 'probe'", &mut out).unwrap();
        // The sidecar may close early (a FATAL): later writes fail, which is fine.
        let _ = writer.write_all(&out).await;
        let _ = writer.shutdown().await;
        writer
    };
    let reading = async {
        let mut sink = Vec::new();
        tokio::time::timeout(WAIT_BOUND, reader.read_to_end(&mut sink))
            .await
            .map_err(|_| Failure::Hang("the client was neither answered nor closed".to_owned()))
    };
    let (_writer, read) = tokio::join!(writing, reading);
    read?.map_err(|e| e.to_string())?;
    match tokio::time::timeout(WAIT_BOUND, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("session task failed: {e}").into()),
        Err(_) => {
            return Err(Failure::Hang(
                "the session did not end after its client left".to_owned(),
            ))
        }
    }
    // The pool of one serves an ordinary client at once.
    let (mut client, task) = login(app).await.map_err(Failure::NextClientNotServed)?;
    let mut out = BytesMut::new();
    frontend::query("SELECT 'clean'", &mut out).unwrap();
    client
        .write_all(&out)
        .await
        .map_err(|e| Failure::NextClientNotServed(e.to_string()))?;
    let replies = read_until(&mut client, |r| r.last().is_some_and(|(t, _)| *t == b'Z'))
        .await
        .map_err(Failure::NextClientNotServed)?;
    out.clear();
    frontend::terminate(&mut out);
    let _ = client.write_all(&out).await;
    let tags: String = replies.iter().map(|(t, _)| *t as char).collect();
    if tags != "TDCZ" {
        return Err(Failure::NextClientNotServed(format!(
            "the next client was not served: {tags} {replies:?}"
        )));
    }
    match tokio::time::timeout(WAIT_BOUND, task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::NextClientNotServed(format!(
            "the next client's session failed: {e}"
        ))),
        Err(_) => Err(Failure::NextClientNotServed(
            "the next client's session did not end after its Terminate".to_owned(),
        )),
    }
}

/// Runs one mutated session through `h` and checks what must always hold.
fn check_session(h: &Harness, session: &[Msg], mutation: &Mutation) -> Result<(), TestCaseError> {
    let mut out = BytesMut::new();
    for m in session {
        encode(m, &mut out);
    }
    let bytes = apply(out.to_vec(), mutation);
    // Once a session has hung or left the pool of one unusable, every later session fails the
    // same way: shrinking would only retry innocent ones (each after a checkout timeout), so
    // they fail at once and name the session that did it.
    if let Some(culprit) = h.poisoned.lock().unwrap().as_ref() {
        return Err(TestCaseError::fail(format!(
            "an earlier session may have left the pool held: {culprit}"
        )));
    }
    let panics = h.panics();
    let outcome = h.runtime.block_on(run_session(&h.app, bytes.clone()));
    h.sessions.fetch_add(1, Ordering::Relaxed);
    if let Err(failure) = outcome {
        if failure.holds_the_pool() {
            let culprit = format!(
                "{failure}; session = {session:?}, mutation = {mutation:?}, bytes = {bytes:?}"
            );
            eprintln!("the pool may have been left held by: {culprit}");
            *h.poisoned.lock().unwrap() = Some(culprit);
        }
        return Err(TestCaseError::fail(failure.to_string()));
    }
    let violations = std::mem::take(&mut *h.violations.lock().unwrap());
    prop_assert!(
        violations.is_empty(),
        "the scripted server saw: {:?}",
        violations
    );
    prop_assert_eq!(h.panics(), panics, "the sidecar panicked");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1024),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_sessions_never_panic_hang_or_reach_the_server_malformed(
        session in proptest::collection::vec(msg(), 0..30),
        mutation in mutation(),
    ) {
        check_session(harness(), &session, &mutation)?;
    }

    #[test]
    fn mutated_sessions_with_a_replica_too(
        session in proptest::collection::vec(msg(), 0..30),
        mutation in mutation(),
    ) {
        check_session(routing_harness(), &session, &mutation)?;
    }
}

/// The routing harness really moves requests: a read goes to the replica, and a write
/// pipelined behind it moves on to the primary while the replica answers.
#[test]
fn the_routing_harness_uses_both_servers() {
    let h = routing_harness();
    let (replica_before, primary_before) = (
        h.app.metrics.routed_replica.get(),
        h.app.metrics.routed_primary.get(),
    );
    let mut out = BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    frontend::query("SET search_path = public", &mut out).unwrap();
    let outcome = h.runtime.block_on(run_session(&h.app, out.to_vec()));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(h.app.metrics.routed_replica.get() > replica_before);
    assert!(h.app.metrics.routed_primary.get() > primary_before);
    assert!(h.violations.lock().unwrap().is_empty());
}

/// A Terminate inside a request the sidecar holds until it is whole (with a replica, every
/// request is), while the replica still owes earlier answers: the session waits for those, and
/// what follows the Terminate — the rest of the request, a write — is never run.
#[test]
fn a_terminate_inside_a_held_request_ends_the_session() {
    let h = routing_harness();
    let mut out = BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    frontend::query("SELECT 2", &mut out).unwrap();
    // Held until whole (through its Sync), run while the replica still owes both answers.
    frontend::parse("", "SELECT 3", [], &mut out).unwrap();
    frontend::terminate(&mut out);
    frontend::sync(&mut out);
    frontend::query("SET search_path = public", &mut out).unwrap();
    let panics = h.panics();
    let replies = h.runtime.block_on(async {
        let (mut client, task) = login(&h.app).await.expect("login");
        client.write_all(&out).await.expect("write");
        let replies = read_until(&mut client, |_| false).await.expect("closed");
        tokio::time::timeout(WAIT_BOUND, task)
            .await
            .expect("the session ended")
            .expect("without a panic");
        replies
    });
    let tags: String = replies.iter().map(|(t, _)| *t as char).collect();
    // Both answers, then the close: nothing for the unsynced Parse, nothing for the SET.
    assert_eq!(tags, "TDCZTDCZ");
    assert_eq!(h.panics(), panics);
    assert!(h.violations.lock().unwrap().is_empty());
}
