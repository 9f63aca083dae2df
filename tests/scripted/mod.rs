//! A scripted Postgres for the relay's fuzz harness: it logs in anyone (trust), answers each
//! message at the protocol level as Postgres does — error skip-to-Sync, the COPY FROM STDIN
//! sub-protocol in both query modes, Flush, FunctionCall, transaction status — without
//! understanding SQL beyond a first word, and checks that every frame it receives is well
//! formed. Anything malformed is recorded as a violation and the connection closed. Replies go
//! out when Postgres would flush them (a Sync, a Flush, an error, a COPY starting, a full
//! buffer): those of an extended batch never synced nor flushed never arrive. It listens
//! on TCP ([`start`]) or answers in-process pipes ([`memory`]: no network, so tests may pause
//! time). `SELECT pg_sleep(n)` sleeps (a CancelRequest ends it with 57014) and `SELECT
//! pg_freeze()` never answers, even a cancel. The sidecar's replica health checks are answered
//! as a caught-up standby would (every connection may serve as primary or replica).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use pgsidecar::protocol::bind::Bind;
use pgsidecar::protocol::frame::peek_header;
use pgsidecar::stream::Dialer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The running server: where it listens and what it saw that it should never see.
pub struct Scripted {
    pub addr: SocketAddr,
    pub violations: Arc<Mutex<Vec<String>>>,
}

pub async fn start() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Shared::default();
    let violations = Arc::clone(&shared.violations);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(shared.clone().serve(socket));
        }
    });
    Scripted { addr, violations }
}

/// The in-process server: a dialer for `App::with_dialer` (every dial is a new connection, any
/// host and port) and the violations it saw.
pub fn memory() -> (Dialer, Arc<Mutex<Vec<String>>>) {
    let shared = Shared::default();
    let violations = Arc::clone(&shared.violations);
    let dial = move |_: &str, _: u16| {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(shared.clone().serve(theirs));
        Ok(ours)
    };
    (Dialer::Memory(Arc::new(dial)), violations)
}

/// What the server's connections share: PIDs, the way to cancel each, what went wrong.
#[derive(Clone, Default)]
struct Shared {
    violations: Arc<Mutex<Vec<String>>>,
    pids: Arc<AtomicI32>,
    cancels: Arc<Mutex<HashMap<i32, Arc<Notify>>>>,
}

impl Shared {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, socket: S) {
        let pid = 100 + self.pids.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        self.cancels
            .lock()
            .unwrap()
            .insert(pid, Arc::clone(&cancel));
        if let Err(v) = serve(socket, pid, &cancel, &self.cancels).await {
            self.violations.lock().unwrap().push(v);
        }
        self.cancels.lock().unwrap().remove(&pid);
    }
}

/// Where the scripted session is.
#[derive(Default)]
struct Session {
    /// 'I', 'T' or 'E'.
    status: u8,
    /// An extended-protocol error: everything up to Sync is discarded.
    skipping: bool,
    /// In COPY FROM STDIN: `Some(extended)`.
    copy_in: Option<bool>,
    rows_copied: usize,
    statements: HashMap<Vec<u8>, String>,
    portals: HashMap<Vec<u8>, String>,
}

type Violation = String;

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    pid: i32,
    cancel: &Notify,
    cancels: &Mutex<HashMap<i32, Arc<Notify>>>,
) -> Result<(), Violation> {
    let mut out = BytesMut::new();
    // Startup, after any SSLRequest (answered N); a connection closed during it is no fault.
    loop {
        let Ok(len) = socket.read_i32().await else {
            return Ok(());
        };
        if !(8..=10_000).contains(&len) {
            return Err(format!("startup packet length {len}"));
        }
        let mut body = vec![0; len as usize - 4];
        if socket.read_exact(&mut body).await.is_err() {
            return Ok(());
        }
        match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
            80877103 => {
                if socket.write_all(b"N").await.is_err() {
                    return Ok(());
                }
            }
            196608 => break,
            // CancelRequest: the statement that connection is running (if any) ends with 57014.
            80877102 if body.len() == 12 => {
                let target = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                if let Some(notify) = cancels.lock().unwrap().get(&target) {
                    notify.notify_waiters();
                }
                return Ok(());
            }
            code => return Err(format!("startup code {code}")),
        }
    }
    message(&mut out, b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        message(
            &mut out,
            b'S',
            &[k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat(),
        );
    }
    message(
        &mut out,
        b'K',
        &[pid.to_be_bytes(), 7i32.to_be_bytes()].concat(),
    );
    let mut session = Session {
        status: b'I',
        ..Session::default()
    };
    ready(&mut out, &mut session);
    // How much of `out` Postgres would have flushed (see `flushes`); the rest stays in its
    // output buffer, and is lost if the connection ends first.
    let mut flushed = out.len();
    let mut rbuf = BytesMut::new();
    let mut history: Vec<(char, i32)> = Vec::new();
    loop {
        // Replies go out when the messages that arrived together have been answered.
        let whole_frame_buffered = rbuf.len() >= 5
            && rbuf.len()
                > i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]).max(0) as usize;
        if flushed > 0 && !whole_frame_buffered {
            if socket.write_all(&out[..flushed]).await.is_err() {
                return Ok(());
            }
            out.advance(flushed);
            flushed = 0;
        }
        while rbuf.len() < 5 {
            match socket.read_buf(&mut rbuf).await {
                // The sidecar closed the connection (a reset is a close too).
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
        let tag = rbuf[0];
        let len = i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]);
        if !(4..=(1 << 30)).contains(&len) {
            let seen = &rbuf[..rbuf.len().min(16)];
            return Err(format!(
                "message {:?} with length {len} (then {seen:?}; {} bytes buffered; after {history:?})",
                tag as char,
                rbuf.len()
            ));
        }
        while rbuf.len() < len as usize + 1 {
            match socket.read_buf(&mut rbuf).await {
                // Closed inside a message: the sidecar gave the connection up (Postgres takes
                // that as the client's disconnection, as here).
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
        let frame = rbuf.split_to(len as usize + 1);
        history.push((tag as char, len));
        if history.len() > 12 {
            history.remove(0);
        }
        let body = &frame[5..];
        well_formed(tag, body).map_err(|why| format!("malformed {:?}: {why}", tag as char))?;
        if tag == b'X' {
            return Ok(());
        }
        let before = out.len();
        let copying = session.copy_in.is_some();
        answer(&mut session, tag, body, &mut out, cancel).await;
        if flushes(tag, copying, &out[before..]) || out.len() >= SEND_BUFFER {
            flushed = out.len();
        }
    }
}

/// Postgres's output buffer: full, it is flushed.
const SEND_BUFFER: usize = 8192;

/// Whether Postgres flushes its output buffer after answering a `tag` message with `replies`:
/// on a Flush (ignored during COPY FROM STDIN), and with a ReadyForQuery, an error, or the
/// response that starts a COPY. Replies to Parse, Bind, Describe, Execute and Close otherwise
/// wait for one of those.
fn flushes(tag: u8, copying: bool, mut replies: &[u8]) -> bool {
    if tag == b'H' && !copying {
        return true;
    }
    // The replies are the server's own, whole and well formed.
    while let Ok(Some(header)) = peek_header(replies) {
        if matches!(header.tag, b'Z' | b'E' | b'G' | b'H' | b'W') {
            return true;
        }
        replies = &replies[header.frame_len.min(replies.len())..];
    }
    false
}

/// Checks a frontend message body against its grammar.
fn well_formed(tag: u8, body: &[u8]) -> Result<(), &'static str> {
    let exact_cstr = |b: &[u8]| b.iter().position(|&c| c == 0) == Some(b.len().wrapping_sub(1));
    let ok = match tag {
        b'Q' | b'f' => exact_cstr(body),
        b'S' | b'H' | b'c' | b'X' => body.is_empty(),
        b'd' => true,
        b'D' | b'C' => matches!(body.first(), Some(b'S' | b'P')) && exact_cstr(&body[1..]),
        b'E' => body.len() >= 5 && exact_cstr(&body[..body.len() - 4]),
        b'B' => Bind::parse(body).is_some(),
        b'P' => parse_fields(body).is_some(),
        b'F' => function_call(body).is_some(),
        _ => return Err("unknown message type"),
    };
    ok.then_some(())
        .ok_or("does not follow the message's grammar")
}

/// (name, query) of a Parse body whose parameter types are consistent.
fn parse_fields(body: &[u8]) -> Option<(Vec<u8>, String)> {
    let name_end = body.iter().position(|&c| c == 0)?;
    let rest = &body[name_end + 1..];
    let query_end = rest.iter().position(|&c| c == 0)?;
    let mut types = &rest[query_end + 1..];
    if types.len() < 2 {
        return None;
    }
    let n = types.get_i16();
    (n >= 0 && types.len() == n as usize * 4).then(|| {
        (
            body[..name_end].to_vec(),
            String::from_utf8_lossy(&rest[..query_end]).into_owned(),
        )
    })
}

fn function_call(mut b: &[u8]) -> Option<()> {
    fn i16_of(b: &mut &[u8]) -> Option<i16> {
        (b.len() >= 2).then(|| b.get_i16())
    }
    fn i32_of(b: &mut &[u8]) -> Option<i32> {
        (b.len() >= 4).then(|| b.get_i32())
    }
    i32_of(&mut b)?;
    let nformats = i16_of(&mut b)?;
    for _ in 0..usize::try_from(nformats).ok()? {
        i16_of(&mut b)?;
    }
    let nargs = i16_of(&mut b)?;
    for _ in 0..usize::try_from(nargs).ok()? {
        let len = i32_of(&mut b)?;
        if len >= 0 {
            let len = len as usize;
            (b.len() >= len).then(|| b.advance(len))?;
        } else if len != -1 {
            return None;
        }
    }
    i16_of(&mut b)?;
    b.is_empty().then_some(())
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// ReadyForQuery; outside a transaction block the implicit transaction is over, and its
/// portals with it (the unnamed one too), as in Postgres.
fn ready(out: &mut BytesMut, session: &mut Session) {
    if session.status == b'I' {
        session.portals.clear();
    }
    message(out, b'Z', &[session.status]);
}

/// An ErrorResponse; a transaction block fails with it.
fn error(session: &mut Session, out: &mut BytesMut, code: &str, text: &str) {
    if session.status == b'T' {
        session.status = b'E';
    }
    let body = [
        b"SERROR\0VERROR\0C".as_slice(),
        code.as_bytes(),
        b"\0M",
        text.as_bytes(),
        b"\0\0",
    ]
    .concat();
    message(out, b'E', &body);
}

fn complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', &[tag.as_bytes(), b"\0"].concat());
}

fn row_description(out: &mut BytesMut) {
    row_description_of(out, &["c"]);
}

/// A RowDescription of text columns with these names.
fn row_description_of(out: &mut BytesMut, names: &[&str]) {
    let mut body = BytesMut::new();
    body.put_i16(names.len() as i16);
    for name in names {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_i32(0);
        body.put_i16(0);
        body.put_i32(25);
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
    }
    message(out, b'T', &body);
}

/// A DataRow of these text values.
fn data_row_of(out: &mut BytesMut, values: &[&str]) {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for value in values {
        body.put_i32(value.len() as i32);
        body.put_slice(value.as_bytes());
    }
    message(out, b'D', &body);
}

fn data_row(out: &mut BytesMut, value: &str) {
    data_row_of(out, &[value]);
}

/// What one statement does, by its first words: Err = it fails.
enum Outcome {
    Done,
    CopyIn,
    /// `SELECT pg_sleep(n)`: its result comes after n seconds, or an error on a cancel.
    Sleep(Duration),
    /// `SELECT pg_freeze()`: nothing ever comes.
    Freeze,
}

fn statement(
    session: &mut Session,
    sql: &str,
    out: &mut BytesMut,
    describe: bool,
) -> Result<Outcome, ()> {
    let upper = sql.trim().to_ascii_uppercase();
    let ends =
        (upper.starts_with("COMMIT") || upper.starts_with("END") || upper.starts_with("ABORT"))
            || (upper.starts_with("ROLLBACK") && !upper.contains(" TO "));
    if session.status == b'E' && !ends {
        error(
            session,
            out,
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        );
        return Err(());
    }
    if upper.contains("FAIL") {
        error(session, out, "42601", "syntax error (scripted)");
        return Err(());
    }
    if upper.starts_with("BEGIN") || upper.starts_with("START") {
        session.status = b'T';
        complete(out, "BEGIN");
    } else if ends {
        session.status = b'I';
        complete(
            out,
            if upper.starts_with("COMMIT") {
                "COMMIT"
            } else {
                "ROLLBACK"
            },
        );
    } else if upper.starts_with("COPY") && upper.contains("FROM STDIN") {
        message(out, b'G', &[0, 0, 0]);
        session.rows_copied = 0;
        return Ok(Outcome::CopyIn);
    } else if upper.starts_with("COPY") && upper.contains("TO STDOUT") {
        message(out, b'H', &[0, 0, 0]);
        message(out, b'd', b"1\n");
        message(out, b'c', b"");
        complete(out, "COPY 1");
    } else if upper.contains("PG_LAST_WAL_REPLAY_LSN()") {
        // The health check of a replica: in recovery, at a fixed replay position.
        row_description_of(out, &["in_recovery", "lsn"]);
        data_row_of(out, &["true", "0/1000"]);
        complete(out, "SELECT 1");
    } else if upper.contains("PG_CURRENT_WAL_INSERT_LSN()") {
        data_row(out, "0/1000");
        complete(out, "SELECT 1");
    } else if let Some(secs) = upper
        .strip_prefix("SELECT PG_SLEEP(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        return Ok(Outcome::Sleep(Duration::from_secs(
            secs.parse().unwrap_or(1),
        )));
    } else if upper.starts_with("SELECT PG_FREEZE()") {
        return Ok(Outcome::Freeze);
    } else if upper.starts_with("SELECT") || upper.starts_with("WITH") || upper.starts_with("SHOW")
    {
        if describe {
            row_description(out);
        }
        // `SELECT '<text>'` answers its text (the sidecar's cleanup marker needs that).
        let value = sql
            .trim()
            .strip_prefix("SELECT '")
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or("1");
        data_row(out, value);
        complete(out, "SELECT 1");
    } else {
        let word = upper.split_whitespace().next().unwrap_or("OK").to_owned();
        complete(out, &word);
    }
    Ok(Outcome::Done)
}

/// Sleeps for `pg_sleep`: the statement's result, or 57014 when `cancel` fires first.
async fn sleep(
    session: &mut Session,
    duration: Duration,
    out: &mut BytesMut,
    cancel: &Notify,
) -> Result<(), ()> {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {
            data_row(out, "");
            complete(out, "SELECT 1");
            Ok(())
        }
        _ = cancel.notified() => {
            error(session, out, "57014", "canceling statement due to user request");
            Err(())
        }
    }
}

async fn answer(session: &mut Session, tag: u8, body: &[u8], out: &mut BytesMut, cancel: &Notify) {
    if let Some(extended) = session.copy_in {
        return copy_message(session, extended, tag, out);
    }
    if session.skipping {
        if tag == b'S' {
            session.skipping = false;
            ready(out, session);
        }
        return;
    }
    let cstr = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())])
            .into_owned()
    };
    match tag {
        b'Q' => {
            let text = cstr(body);
            if text.trim().is_empty() {
                message(out, b'I', b"");
            }
            for sql in text.split(';').filter(|s| !s.trim().is_empty()) {
                match statement(session, sql, out, true) {
                    Ok(Outcome::Done) => {}
                    Ok(Outcome::CopyIn) => {
                        session.copy_in = Some(false);
                        return;
                    }
                    Ok(Outcome::Sleep(duration)) => {
                        row_description(out);
                        if sleep(session, duration, out, cancel).await.is_err() {
                            break;
                        }
                    }
                    Ok(Outcome::Freeze) => std::future::pending::<()>().await,
                    Err(()) => break,
                }
            }
            ready(out, session);
        }
        b'P' => match parse_fields(body) {
            Some((_, query)) if query.to_ascii_uppercase().contains("FAIL") => {
                fail_batch(session, out, "42601", "syntax error (scripted)");
            }
            Some((name, query)) => {
                session.statements.insert(name, query);
                message(out, b'1', b"");
            }
            None => {}
        },
        b'B' => {
            let bind = Bind::parse(body).expect("checked");
            match session.statements.get(bind.statement).cloned() {
                Some(text) => {
                    session.portals.insert(bind.portal.to_vec(), text);
                    message(out, b'2', b"");
                }
                None => missing(session, out, "26000", "prepared statement", bind.statement),
            }
        }
        b'D' => {
            let name = &body[1..body.len() - 1];
            match body[0] {
                b'S' if !session.statements.contains_key(name) => {
                    missing(session, out, "26000", "prepared statement", name)
                }
                b'P' if !session.portals.contains_key(name) => {
                    missing(session, out, "34000", "portal", name)
                }
                b'S' => {
                    message(out, b't', &0i16.to_be_bytes());
                    message(out, b'n', b"");
                }
                _ => message(out, b'n', b""),
            }
        }
        b'E' => {
            let portal = body[..body.len() - 4]
                .split(|&c| c == 0)
                .next()
                .unwrap_or_default();
            let Some(text) = session.portals.get(portal).cloned() else {
                return missing(session, out, "34000", "portal", portal);
            };
            match statement(session, &text, out, false) {
                Ok(Outcome::Done) => {}
                Ok(Outcome::CopyIn) => session.copy_in = Some(true),
                Ok(Outcome::Sleep(duration)) => {
                    if sleep(session, duration, out, cancel).await.is_err() {
                        session.skipping = true;
                    }
                }
                Ok(Outcome::Freeze) => std::future::pending::<()>().await,
                Err(()) => session.skipping = true,
            }
        }
        b'C' => message(out, b'3', b""),
        b'S' => ready(out, session),
        b'F' => {
            message(out, b'V', &(-1i32).to_be_bytes());
            ready(out, session);
        }
        // Flush: everything is written at once anyway. CopyData/Done/Fail outside COPY are
        // ignored, as Postgres ignores them.
        _ => {}
    }
}

/// An extended message naming a statement or portal that does not exist: Postgres's error,
/// and the rest of the batch is skipped.
fn missing(session: &mut Session, out: &mut BytesMut, code: &str, what: &str, name: &[u8]) {
    let name = String::from_utf8_lossy(name);
    fail_batch(
        session,
        out,
        code,
        &format!("{what} \"{name}\" does not exist"),
    );
}

/// An error in an extended batch: the rest is skipped to Sync.
fn fail_batch(session: &mut Session, out: &mut BytesMut, code: &str, text: &str) {
    error(session, out, code, text);
    session.skipping = true;
}

/// A message during COPY FROM STDIN.
fn copy_message(session: &mut Session, extended: bool, tag: u8, out: &mut BytesMut) {
    match tag {
        b'd' => session.rows_copied += 1,
        b'c' => {
            session.copy_in = None;
            complete(out, &format!("COPY {}", session.rows_copied));
            if !extended {
                ready(out, session);
            }
        }
        // Flush and Sync are ignored during COPY FROM STDIN.
        b'H' | b'S' => {}
        other => {
            session.copy_in = None;
            if other == b'f' {
                error(session, out, "57014", "COPY from stdin failed (scripted)");
            } else {
                error(
                    session,
                    out,
                    "08P01",
                    &format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                );
            }
            if extended {
                session.skipping = true;
            } else {
                ready(out, session);
            }
        }
    }
}
