//! The request/response pump of one logged-in client.
//!
//! The client's queue of expected replies ([`Expect`]) is the source of truth: each entry is a
//! ReadyForQuery still to come and says what to do with the messages up to it — forward them
//! to the client, or swallow them (replies to statements the sidecar injected, such as the
//! client's startup settings). Backend messages are never decoded beyond their header except
//! ReadyForQuery, ParameterStatus, ErrorResponse and NoticeResponse; rows stream through as
//! the bytes that arrived. In transaction mode the server connection is released when the
//! queue is empty and ReadyForQuery says idle; in session mode it stays until the client goes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::net::TcpStream;

use super::client::{ClientConn, ClientIoError};
use super::{checkout_report, SessionInfo};
use crate::app::App;
use crate::config::PoolMode;
use crate::pool::pool::settings_sql;
use crate::pool::server::AppliedSettings;
use crate::pool::server::Exchange;
use crate::pool::{Checkout, ServerError};
use crate::protocol::backend::{
    self, parse_parameter_status, ErrorFields, ErrorReport, Severity, TransactionStatus,
    COPY_IN_RESPONSE_TAG, ERROR_RESPONSE_TAG, NOTICE_RESPONSE_TAG, NOTIFICATION_RESPONSE_TAG,
    PARAMETER_STATUS_TAG, READY_FOR_QUERY_TAG,
};
use crate::protocol::frame::{peek_header, Frame, FrameError, HEADER_LEN};
use crate::protocol::frontend::{self, MessageRole};
use crate::protocol::sqlstate::SqlState;

/// While this many bytes wait to be written to the server, the client is not read (backpressure).
const SERVER_WRITE_CHUNK: usize = 64 * 1024;
/// How long cleaning a server connection after its client vanished may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Client(#[from] ClientIoError),
    #[error("server connection lost: {0}")]
    Server(#[from] ServerError),
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    #[error("server sent a message the sidecar cannot frame: {0}")]
    ServerFrame(FrameError),
    #[error("terminating connection due to administrator command")]
    Shutdown,
}

impl RelayError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Client(ClientIoError::Frame(e)) => e.kind(),
            RelayError::Client(_) => "client_io",
            RelayError::Server(e) => e.kind(),
            RelayError::UnknownMessage(_) => "protocol_violation",
            RelayError::ServerFrame(_) => "upstream_protocol",
            RelayError::Shutdown => "shutdown",
        }
    }

    /// The FATAL the client gets before the connection closes, if it can still get one.
    fn report(&self) -> Option<ErrorReport> {
        match self {
            RelayError::Client(ClientIoError::Frame(e)) => Some(ErrorReport::fatal(
                SqlState::PROTOCOL_VIOLATION,
                e.to_string(),
            )),
            RelayError::Client(_) => None,
            RelayError::UnknownMessage(_) => Some(ErrorReport::fatal(
                SqlState::PROTOCOL_VIOLATION,
                self.to_string(),
            )),
            RelayError::Server(_) | RelayError::ServerFrame(_) => Some(ErrorReport::fatal(
                SqlState::CONNECTION_FAILURE,
                "the connection to the upstream server was lost",
            )),
            RelayError::Shutdown => Some(ErrorReport::fatal(
                SqlState::ADMIN_SHUTDOWN,
                self.to_string(),
            )),
        }
    }
}

/// What happens to the server's messages up to one ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The client asked for them.
    Forward,
    /// The sidecar asked for them; the client never sees them.
    Swallow,
}

/// What a ReadyForQuery answers.
#[derive(Debug)]
enum Source {
    /// Statements the sidecar injected.
    Sidecar,
    /// A client's simple Query (or FunctionCall).
    Query { sent: Instant },
    /// A client's Sync, closing this batch.
    Sync(Batch),
}

/// One ReadyForQuery the client's connection is waiting for.
#[derive(Debug)]
struct Expect {
    source: Source,
}

impl Expect {
    fn reply(&self) -> Reply {
        match self.source {
            Source::Sidecar => Reply::Swallow,
            Source::Query { .. } | Source::Sync(_) => Reply::Forward,
        }
    }

    /// Statements in the request (a Query counts one, a batch counts its Executes).
    fn statements(&self) -> u32 {
        match &self.source {
            Source::Sidecar => 0,
            Source::Query { .. } => 1,
            Source::Sync(batch) => batch.executes,
        }
    }

    fn sent(&self) -> Option<Instant> {
        match &self.source {
            Source::Sidecar => None,
            Source::Query { sent } => Some(*sent),
            Source::Sync(batch) => Some(batch.started),
        }
    }
}

/// Extended-protocol messages sent since the last Sync.
#[derive(Debug)]
struct Batch {
    executes: u32,
    started: Instant,
    /// The client's CopyDone/CopyFail count when the batch began.
    copy_ends_at_start: u64,
    /// The server answered an Execute of this batch with CopyInResponse.
    copy_in: bool,
}

/// The rest of a backend message that is being streamed through.
#[derive(Debug, Clone, Copy)]
struct Passthrough {
    remaining: usize,
    reply: Reply,
}

/// A server connection serving this client, with what is in flight on it.
struct Attachment {
    server: Checkout,
    expect: VecDeque<Expect>,
    batch: Option<Batch>,
    status: TransactionStatus,
    /// Complete frames for the server not yet written.
    wbuf: BytesMut,
    passthrough: Option<Passthrough>,
    /// CopyDone and CopyFail messages the client has sent on this attachment.
    copy_ends: u64,
}

impl Batch {
    fn new(started: Instant, copy_ends: u64) -> Batch {
        Batch {
            executes: 0,
            started,
            copy_ends_at_start: copy_ends,
            copy_in: false,
        }
    }
}

impl Attachment {
    /// The server entered COPY FROM STDIN for the request it is working on. In an extended
    /// batch, a Sync the client sent before ending the COPY is ignored by the server, so the
    /// batch stays open until the client's next Sync.
    fn note_copy_in(&mut self) {
        let ignored_sync = matches!(
            self.expect.front(),
            Some(Expect { source: Source::Sync(b) }) if b.copy_ends_at_start == self.copy_ends
        );
        if ignored_sync {
            if let Some(Expect {
                source: Source::Sync(mut batch),
            }) = self.expect.pop_front()
            {
                batch.copy_in = true;
                self.batch = Some(batch);
            }
        } else if let (true, Some(batch)) = (self.expect.is_empty(), self.batch.as_mut()) {
            batch.copy_in = true;
        }
    }

    /// Nothing in flight, not in a transaction: the connection can go back to the pool.
    fn is_quiet(&self) -> bool {
        self.expect.is_empty()
            && self.batch.is_none()
            && self.passthrough.is_none()
            && self.wbuf.is_empty()
            && self.status == TransactionStatus::Idle
    }
}

/// Where the client is between its messages.
enum Phase {
    /// No server connection.
    Detached,
    /// A checkout failed inside an extended batch: drop messages until Sync, then answer it.
    SkipToSync,
    /// A server connection serves the client.
    Attached(Box<Attachment>),
}

/// How a session ends normally.
enum End {
    /// The client sent Terminate or closed its socket between requests.
    ClientLeft,
}

/// The pump for one client.
pub struct Relay {
    app: Arc<App>,
    client: ClientConn<TcpStream>,
    info: SessionInfo,
    mode: PoolMode,
    phase: Phase,
}

impl Relay {
    /// A relay for a client that has just received its first ReadyForQuery.
    pub fn new(app: Arc<App>, client: ClientConn<TcpStream>, info: SessionInfo) -> Relay {
        let mode = app.config.pool.mode;
        Relay {
            app,
            client,
            info,
            mode,
            phase: Phase::Detached,
        }
    }

    /// Runs until the client leaves or the session must end, then cleans up.
    pub async fn run(mut self) {
        let outcome = self.pump().await;
        if let Err(e) = &outcome {
            match e {
                RelayError::Client(ClientIoError::Closed) => {}
                other => {
                    self.app.metrics.error(other.kind());
                    tracing::debug!(error = %other, "session ended");
                }
            }
            if let Some(report) = e.report() {
                report.write(&mut self.client.wbuf);
            }
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Detached);
        if let Phase::Attached(att) = phase {
            self.info.key.set_target(None);
            let server_lost = matches!(
                outcome,
                Err(RelayError::Server(_) | RelayError::ServerFrame(_))
            );
            if !server_lost {
                clean_and_release(*att, self.mode).await;
            }
        }
        let sent = self.client.wbuf.len();
        self.app.metrics.client_bytes_sent.inc_by(sent as u64);
        self.client.close().await;
    }

    async fn pump(&mut self) -> Result<End, RelayError> {
        let draining = self.app.draining.clone();
        let terminate = self.app.terminate.clone();
        loop {
            match &mut self.phase {
                Phase::Attached(att) => {
                    // The server is read while it is written to, so a server that is busy
                    // sending replies to a long pipeline never deadlocks against the sidecar.
                    let room = att.wbuf.len() < SERVER_WRITE_CHUNK;
                    tokio::select! {
                        event = att.server.conn_mut().exchange(&mut att.wbuf) => {
                            if event? == Exchange::Read {
                                self.on_server_bytes().await?;
                            }
                        }
                        read = self.client.fill(), if room => {
                            let n = read?;
                            self.app.metrics.client_bytes_received.inc_by(n as u64);
                            if let Some(end) = self.on_client_bytes().await? {
                                return Ok(end);
                            }
                        }
                        _ = terminate.cancelled() => return Err(RelayError::Shutdown),
                    }
                }
                Phase::Detached | Phase::SkipToSync => {
                    tokio::select! {
                        read = self.client.fill() => {
                            let n = match read {
                                Ok(n) => n,
                                Err(ClientIoError::Closed) => return Ok(End::ClientLeft),
                                Err(e) => return Err(e.into()),
                            };
                            self.app.metrics.client_bytes_received.inc_by(n as u64);
                            if let Some(end) = self.on_client_bytes().await? {
                                return Ok(end);
                            }
                        }
                        _ = draining.cancelled(), if matches!(self.phase, Phase::Detached) => {
                            return Err(RelayError::Shutdown);
                        }
                    }
                }
            }
        }
    }

    /// Handles every complete frame the client sent, then writes what the server should get.
    async fn on_client_bytes(&mut self) -> Result<Option<End>, RelayError> {
        while let Some(frame) = self.client.buffered_frame().map_err(ClientIoError::from)? {
            if let Some(end) = self.on_client_frame(frame).await? {
                return Ok(Some(end));
            }
        }
        self.write_client().await?;
        Ok(None)
    }

    async fn on_client_frame(&mut self, frame: Frame) -> Result<Option<End>, RelayError> {
        let role = frontend::role(frame.tag());
        match role {
            MessageRole::Terminate => return Ok(Some(End::ClientLeft)),
            MessageRole::Unknown => return Err(RelayError::UnknownMessage(frame.tag())),
            MessageRole::Copy => {
                // Outside COPY these are ignored, as Postgres ignores them after a failed COPY.
                if let Phase::Attached(att) = &mut self.phase {
                    if frame.tag() != frontend::COPY_DATA_TAG {
                        att.copy_ends += 1;
                    }
                    att.wbuf.extend_from_slice(frame.as_bytes());
                }
                return Ok(None);
            }
            _ => {}
        }
        if let Phase::SkipToSync = self.phase {
            if role == MessageRole::Sync {
                backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle);
                self.phase = Phase::Detached;
            }
            return Ok(None);
        }
        if let Phase::Detached = self.phase {
            match self.attach().await {
                Ok(att) => self.phase = Phase::Attached(Box::new(att)),
                Err(report) => {
                    report.write(&mut self.client.wbuf);
                    match role {
                        MessageRole::Request | MessageRole::Sync => {
                            backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle)
                        }
                        _ => self.phase = Phase::SkipToSync,
                    }
                    return Ok(None);
                }
            }
        }
        let Phase::Attached(att) = &mut self.phase else {
            return Ok(None);
        };
        att.wbuf.extend_from_slice(frame.as_bytes());
        let now = Instant::now();
        match role {
            MessageRole::Request => {
                self.app.metrics.queries.inc();
                att.expect.push_back(Expect {
                    source: Source::Query { sent: now },
                });
            }
            MessageRole::Extended => {
                let copy_ends = att.copy_ends;
                let batch = att.batch.get_or_insert_with(|| Batch::new(now, copy_ends));
                if frame.tag() == frontend::EXECUTE_TAG {
                    batch.executes += 1;
                    self.app.metrics.queries.inc();
                }
            }
            MessageRole::Sync => {
                let batch = att
                    .batch
                    .take()
                    .unwrap_or_else(|| Batch::new(now, att.copy_ends));
                if batch.copy_in && batch.copy_ends_at_start == att.copy_ends {
                    // The server is in COPY FROM STDIN and ignores this Sync: no ReadyForQuery.
                    att.batch = Some(batch);
                } else {
                    att.expect.push_back(Expect {
                        source: Source::Sync(batch),
                    });
                }
            }
            MessageRole::Flush
            | MessageRole::Copy
            | MessageRole::Terminate
            | MessageRole::Unknown => {}
        }
        Ok(None)
    }

    /// Checks out a server connection and queues what makes it carry this client's settings.
    async fn attach(&mut self) -> Result<Attachment, ErrorReport> {
        let mut server = match self.info.pool.checkout().await {
            Ok(s) => s,
            Err(e) => {
                self.app.metrics.error(e.kind());
                tracing::debug!(error = %e, "checkout failed");
                return Err(checkout_report(&e, Severity::Error));
            }
        };
        let conn = server.conn_mut();
        self.info.key.set_target(Some(crate::app::CancelTarget {
            host: self.info.pool.url().host.clone(),
            port: self.info.pool.url().port,
            key: conn.key,
        }));
        let mut att = Attachment {
            server,
            expect: VecDeque::new(),
            batch: None,
            status: TransactionStatus::Idle,
            wbuf: BytesMut::new(),
            passthrough: None,
            copy_ends: 0,
        };
        let conn = att.server.conn_mut();
        let have = match &conn.applied {
            AppliedSettings::Known(have) => Some(have),
            AppliedSettings::Unknown => None,
        };
        // Connections in unknown state never reach the pool, so `have` is always known here.
        if let Some(sql) = have.and_then(|have| settings_sql(have, &self.info.settings)) {
            append_query(&mut att.wbuf, &sql);
            att.expect.push_back(Expect {
                source: Source::Sidecar,
            });
            conn.applied = AppliedSettings::Known(self.info.settings.clone());
        }
        Ok(att)
    }

    /// Scans what the server sent: forwards or swallows each message, tracks ReadyForQuery,
    /// and releases the server connection when the client no longer needs it.
    async fn on_server_bytes(&mut self) -> Result<(), RelayError> {
        let max = self.app.config.max_message_size;
        let Phase::Attached(att) = &mut self.phase else {
            return Ok(());
        };
        let metrics = &self.app.metrics;
        let client = &mut self.client;
        let mut cut = 0usize;
        loop {
            let conn = att.server.conn_mut();
            if let Some(mut pt) = att.passthrough.take() {
                let take = pt.remaining.min(conn.rbuf.len() - cut);
                if pt.reply == Reply::Swallow {
                    emit(client, conn, &mut cut, metrics).await?;
                    conn.consume(take);
                } else {
                    cut += take;
                }
                pt.remaining -= take;
                if pt.remaining > 0 {
                    att.passthrough = Some(pt);
                    break;
                }
                continue;
            }
            let Some(header) = peek_header(&conn.rbuf[cut..]).map_err(RelayError::ServerFrame)?
            else {
                break;
            };
            if header.tag == COPY_IN_RESPONSE_TAG {
                att.note_copy_in();
            }
            let conn = att.server.conn_mut();
            let reply = att.expect.front().map_or(Reply::Forward, Expect::reply);
            let inspected = matches!(
                header.tag,
                READY_FOR_QUERY_TAG
                    | PARAMETER_STATUS_TAG
                    | ERROR_RESPONSE_TAG
                    | NOTICE_RESPONSE_TAG
            );
            if !inspected {
                let reply = if header.tag == NOTIFICATION_RESPONSE_TAG {
                    Reply::Forward
                } else {
                    reply
                };
                att.passthrough = Some(Passthrough {
                    remaining: header.frame_len,
                    reply,
                });
                continue;
            }
            if header.frame_len > max {
                return Err(RelayError::ServerFrame(FrameError::TooLarge {
                    tag: header.tag,
                    len: header.frame_len,
                    max,
                }));
            }
            if conn.rbuf.len() - cut < header.frame_len {
                break;
            }
            let body = &conn.rbuf[cut + HEADER_LEN..cut + header.frame_len];
            let mut reply = reply;
            match header.tag {
                READY_FOR_QUERY_TAG => {
                    let status = body
                        .first()
                        .and_then(|b| TransactionStatus::from_byte(*b))
                        .ok_or_else(|| {
                            RelayError::ServerFrame(FrameError::BadLength {
                                tag: header.tag,
                                len: header.frame_len as i32 - 1,
                            })
                        })?;
                    att.status = status;
                    if let Some(done) = att.expect.pop_front() {
                        reply = done.reply();
                        if let Some(sent) = done.sent() {
                            metrics.query_duration.observe(sent.elapsed().as_secs_f64());
                        }
                        if done.statements() > 0 && status == TransactionStatus::Idle {
                            metrics.transactions.inc();
                        }
                    }
                }
                PARAMETER_STATUS_TAG => {
                    if let Some((name, value)) = parse_parameter_status(body) {
                        let (name, value) = (name.to_owned(), value.to_owned());
                        conn.note_parameter(&name, &value);
                    }
                }
                ERROR_RESPONSE_TAG => {
                    metrics.error("server_error");
                    if reply == Reply::Swallow {
                        let fields = ErrorFields::parse(body);
                        tracing::warn!(code = %fields.code, message = %fields.message, "applying client settings on a server connection failed");
                        conn.applied = AppliedSettings::Unknown;
                    }
                }
                _ => {}
            }
            match reply {
                Reply::Forward => cut += header.frame_len,
                Reply::Swallow => {
                    emit(client, conn, &mut cut, metrics).await?;
                    conn.consume(header.frame_len);
                }
            }
        }
        let conn = att.server.conn_mut();
        emit(client, conn, &mut cut, metrics).await?;
        if self.mode == PoolMode::Transaction && att.is_quiet() {
            self.release();
            if self.app.draining.is_cancelled() {
                return Err(RelayError::Shutdown);
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        if let Phase::Attached(att) = std::mem::replace(&mut self.phase, Phase::Detached) {
            self.info.key.set_target(None);
            att.server.release();
        }
    }

    async fn write_client(&mut self) -> Result<(), RelayError> {
        let n = self.client.flush().await?;
        self.app.metrics.client_bytes_sent.inc_by(n as u64);
        Ok(())
    }
}

/// Writes the first `cut` bytes of the server's buffer to the client and consumes them.
async fn emit(
    client: &mut ClientConn<TcpStream>,
    conn: &mut crate::pool::ServerConn,
    cut: &mut usize,
    metrics: &crate::metrics::Metrics,
) -> Result<(), RelayError> {
    if *cut > 0 {
        client.write_through(&conn.rbuf[..*cut]).await?;
        metrics.client_bytes_sent.inc_by(*cut as u64);
        conn.consume(*cut);
        *cut = 0;
    }
    Ok(())
}

/// Writes the frames gathered for the server.
async fn write_server(att: &mut Attachment) -> Result<(), RelayError> {
    if !att.wbuf.is_empty() {
        att.server.conn_mut().write_all(&att.wbuf).await?;
        att.wbuf.clear();
    }
    Ok(())
}

/// Appends a simple Query message.
fn append_query(buf: &mut BytesMut, sql: &str) {
    buf.put_u8(frontend::QUERY_TAG);
    buf.put_i32((4 + sql.len() + 1) as i32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// After the client left: end any COPY, batch and transaction on the server connection (and,
/// in session mode, the session state with DISCARD ALL), then return it to the pool — or close
/// it if that does not finish cleanly in time.
async fn clean_and_release(mut att: Attachment, mode: PoolMode) {
    if mode == PoolMode::Transaction && att.is_quiet() {
        att.server.release();
        return;
    }
    let outcome = tokio::time::timeout(CLEANUP_TIMEOUT, clean(&mut att, mode)).await;
    match outcome {
        Ok(Ok(())) if att.status == TransactionStatus::Idle => {
            if mode == PoolMode::Session {
                att.server.conn_mut().applied = AppliedSettings::Known(Default::default());
            }
            att.server.release();
        }
        other => {
            tracing::debug!(
                ok = matches!(other, Ok(Ok(()))),
                "closing server connection that could not be cleaned"
            );
        }
    }
}

async fn clean(att: &mut Attachment, mode: PoolMode) -> Result<(), RelayError> {
    let mut expected = att.expect.len() + 2;
    // CopyFail ends a COPY FROM STDIN (and is ignored otherwise); Sync ends an open batch;
    // ROLLBACK ends a transaction. Each Sync and Query yields one ReadyForQuery.
    att.wbuf.put_u8(frontend::COPY_FAIL_TAG);
    let reason = b"client disconnected\0";
    att.wbuf.put_i32(4 + reason.len() as i32);
    att.wbuf.put_slice(reason);
    att.wbuf.put_slice(&[frontend::SYNC_TAG, 0, 0, 0, 4]);
    append_query(&mut att.wbuf, "ROLLBACK");
    if mode == PoolMode::Session {
        append_query(&mut att.wbuf, "DISCARD ALL");
        expected += 1;
    }
    write_server(att).await?;
    let mut skip = att.passthrough.take().map_or(0, |p| p.remaining);
    let conn = att.server.conn_mut();
    loop {
        if skip > 0 {
            let n = skip.min(conn.rbuf.len());
            conn.consume(n);
            skip -= n;
            if skip > 0 {
                conn.read_more().await?;
                continue;
            }
        }
        if expected == 0 {
            break;
        }
        let Some(header) = peek_header(&conn.rbuf).map_err(RelayError::ServerFrame)? else {
            conn.read_more().await?;
            continue;
        };
        tracing::debug!(tag = %char::from(header.tag), expected, "cleanup reply");
        if header.tag == READY_FOR_QUERY_TAG {
            if conn.rbuf.len() < header.frame_len {
                conn.read_more().await?;
                continue;
            }
            if let Some(s) = TransactionStatus::from_byte(conn.rbuf[HEADER_LEN]) {
                att.status = s;
            }
            expected -= 1;
        }
        skip = header.frame_len;
    }
    att.expect.clear();
    att.batch = None;
    Ok(())
}
