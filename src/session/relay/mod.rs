//! The request/response pump of one logged-in client.
//!
//! The client's queue of expected replies ([`Expect`]) is the source of truth: each entry is a
//! ReadyForQuery still to come and says what to do with the messages up to it — forward them
//! to the client, or swallow them (replies to statements the sidecar injected, such as the
//! client's startup settings). Backend messages are never decoded beyond their header except
//! ReadyForQuery, ParameterStatus, ErrorResponse, NoticeResponse, NotificationResponse and the
//! rows of the sidecar's own session-state capture; rows stream through as the bytes that
//! arrived. In transaction mode the server connection is released when the queue is empty,
//! ReadyForQuery says idle and the client's session state is resynchronised (`resync.rs`); in
//! session mode it stays until the client goes. This file is the client side (messages in,
//! checkout, what statements mean for the session); `replies.rs` is the server side.

use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::attachment::Resync;
use super::attachment::{
    Attachment, Batch, Began, Expect, Passthrough, Pending, Reply, Source, Timer,
};
use super::cleanup::clean_and_release;
use super::client::{ClientConn, ClientIoError};
use super::effects::{Effects, ListenChange};
use super::extended;
use super::guard::{self, Refusal};
use super::resync::{self, Quiet};
use super::statements::ClientStatements;
use super::{checkout_report, SessionInfo};
use crate::app::App;
use crate::config::PoolMode;
use crate::pool::health::Topology;
use crate::pool::notify::{self, Sink};
use crate::pool::server::AppliedSettings;
use crate::pool::server::Exchange;
use crate::pool::ServerError;
use crate::protocol::backend::{
    self, parse_parameter_status, ErrorFields, ErrorReport, Severity, TransactionStatus,
    COPY_IN_RESPONSE_TAG, DATA_ROW_TAG, ERROR_RESPONSE_TAG, NOTICE_RESPONSE_TAG,
    NOTIFICATION_RESPONSE_TAG, PARAMETER_STATUS_TAG, READY_FOR_QUERY_TAG,
};
use crate::protocol::frame::{peek_header, Frame, FrameError, HEADER_LEN};
use crate::protocol::frontend::split_cstr;
use crate::protocol::frontend::{self, MessageRole};
use crate::protocol::sqlstate::SqlState;
use crate::route::replica::{RequestKind, RoutePreference, Routing, Target};
use crate::sql::cache::Classified;
use crate::sql::classify::Classification;

mod cached;
mod checkout;
mod fanout;
mod intake;
mod queue;
mod replies;
mod request;
mod routing;
mod shard_copy;
mod shard_tx;
mod shard_write;
mod shards;
mod signals;
mod sql_names;
mod tenancy;
mod throttle;
mod woken;

use intake::{Admitted, Incoming};
use request::Now;

use tenancy::{with_text, Guarded};

/// While this many bytes wait to be written to the server, the client is not read (backpressure).
const SERVER_WRITE_CHUNK: usize = 64 * 1024;
/// CopyData messages larger than this are streamed to the server instead of buffered.
const STREAM_COPY_DATA_OVER: usize = 64 * 1024;
/// Postgres's own limit on one message it reads (`PQ_LARGE_MESSAGE_LIMIT`).
const MAX_COPY_DATA: usize = 0x3fff_ffff;

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Client(#[from] ClientIoError),
    #[error("server connection lost: {0}")]
    Server(#[from] ServerError),
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    #[error("invalid message format (message type {:?})", char::from(*.0))]
    MalformedMessage(u8),
    #[error("server sent a message the sidecar cannot frame: {0}")]
    ServerFrame(FrameError),
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransaction,
    /// Another client ran `pg_terminate_backend` of this client's PID.
    #[error("terminating connection due to administrator command")]
    Terminated,
}

impl RelayError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Client(ClientIoError::Frame(e)) => e.kind(),
            RelayError::Client(_) => "client_io",
            RelayError::Server(e) => e.kind(),
            RelayError::UnknownMessage(_) | RelayError::MalformedMessage(_) => "protocol_violation",
            RelayError::ServerFrame(_) => "upstream_protocol",
            RelayError::Shutdown => "shutdown",
            RelayError::IdleInTransaction => "idle_in_transaction_timeout",
            RelayError::Terminated => "terminated_by_pid",
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
            RelayError::UnknownMessage(_) | RelayError::MalformedMessage(_) => Some(
                ErrorReport::fatal(SqlState::PROTOCOL_VIOLATION, self.to_string()),
            ),
            RelayError::Server(_) | RelayError::ServerFrame(_) => Some(ErrorReport::fatal(
                SqlState::CONNECTION_FAILURE,
                "the connection to the upstream server was lost",
            )),
            RelayError::Shutdown | RelayError::Terminated => Some(ErrorReport::fatal(
                SqlState::ADMIN_SHUTDOWN,
                self.to_string(),
            )),
            RelayError::IdleInTransaction => Some(ErrorReport::fatal(
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                self.to_string(),
            )),
        }
    }
}

/// Where the client is between its messages.
enum Phase {
    /// No server connection.
    Detached,
    /// No server connection, inside a transaction the sidecar answered BEGIN for: the BEGIN
    /// goes upstream with the next statement, which decides where the transaction runs.
    BeginHeld(Frame),
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
    client: ClientConn,
    info: SessionInfo,
    mode: PoolMode,
    phase: Phase,
    /// The client's prepared statements (proxy-named on the servers).
    statements: ClientStatements,
    /// Notifications for the client from its database's LISTEN connection (transaction mode),
    /// once it has listened.
    notifications: Option<(Sink, mpsc::Receiver<Bytes>)>,
    /// The database's primary and replicas, when it has replicas (transaction mode routes).
    topology: Option<Arc<Topology>>,
    /// Client frames held until their request is complete and can run.
    held: intake::Held,
    /// The database's shards, when each request picks its shard by key.
    shards: Option<shards::Shards>,
    /// The statement shapes this client used last (classified without the shared cache).
    recent_shapes: crate::sql::cache::Recent,
    /// The effects of the client's last statement shape.
    effects_memo: super::effects::EffectsMemo,
    /// The replies owed to the client, in order.
    replies: queue::ReplyQueue,
    /// The result cache of the client's database, when it has rules (transaction mode).
    cache: Option<Arc<crate::cache::DatabaseCache>>,
    /// The asker's part of this client's cache keys, and the settings it was made with.
    cache_asker: Option<(crate::sql::settings::Shared, Box<[u8]>)>,
    /// The client's last cache judgements.
    cache_judged: cached::Judged,
    /// Buffers the last released server connection left for the next checkout.
    spare: super::attachment::Spare,
    /// A server connection the client moved on from outside a transaction (a replica, when a
    /// request for the primary came behind reads in flight): it owes the front replies, gets
    /// no new requests, and is released once it has answered them. Only while attached.
    earlier: Option<Box<Attachment>>,
    /// The sequence of this client's last write on the primary of each shard (one entry when
    /// not sharded; read-your-writes): sequences of different shards do not compare.
    last_writes: smallvec::SmallVec<[u64; 4]>,
    /// `SET pgsidecar.route`.
    route_preference: RoutePreference,
    /// The reload generation this session's database was looked up in.
    generation: u64,
    /// The client's tenant has a statement rate: its requests are held and take tokens.
    rate_limited: bool,
    /// The configuration this session follows (kept here so the hot path never loads it;
    /// replaced when the session follows a reload).
    live: Arc<crate::live::Live>,
    /// This client's tenant's query counter (`[tenancy] metric_tenants`).
    tenant_queries: Option<prometheus::IntCounter>,
    /// Under tenant enforcement: the keyed prefix of the tenant's channels upstream.
    channel_prefix: Option<String>,
    /// The client sent Terminate while replies were still owed to it: they are delivered,
    /// then the session ends (Postgres answers everything before it reads the Terminate).
    closing: bool,
}

impl Relay {
    /// A relay for a client that has just received its first ReadyForQuery.
    pub fn new(app: Arc<App>, client: ClientConn, info: SessionInfo) -> Relay {
        let generation = app.generation();
        let live = app.live_arc();
        let mode = live.config.pool.mode;
        let topology = match mode {
            PoolMode::Transaction => info.database.replicas.clone(),
            // Session mode pins the client to the primary.
            PoolMode::Session => None,
        };
        let tenant_queries = match (&live.tenant_queries, &info.tenant) {
            (Some(q), Some(tenant)) => Some(q.counter(tenant)),
            _ => None,
        };
        Relay {
            channel_prefix: tenancy::channel_prefix(&app, info.tenant.as_deref()),
            tenant_queries,
            topology,
            held: intake::Held::default(),
            shards: live
                .statement_shards(&info.database.name)
                .map(|now| shards::Shards::new(now, &app.metrics)),
            recent_shapes: Default::default(),
            effects_memo: Default::default(),
            replies: queue::ReplyQueue::default(),
            cache: database_cache(&live, &info.database.name, mode),
            cache_asker: None,
            cache_judged: Default::default(),
            spare: Default::default(),
            earlier: None,
            last_writes: smallvec::SmallVec::new(),
            route_preference: RoutePreference::Auto,
            generation,
            rate_limited: rate_limited(&live, info.tenant.as_deref()),
            live: Arc::clone(&live),
            app,
            client,
            info,
            mode,
            phase: Phase::Detached,
            statements: ClientStatements::default(),
            notifications: None,
            closing: false,
        }
    }

    /// Runs until the client leaves or the session must end, then cleans up.
    pub async fn run(mut self) {
        let outcome = self.pump().await;
        if let Some((sink, _)) = self.notifications.take() {
            let pid = self.info.key.process_id();
            let notifier = &self.info.database.primary.notifier;
            notifier.listen(pid, Default::default(), sink);
        }
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
        self.drop_spread().await;
        let server_lost = matches!(
            outcome,
            Err(RelayError::Server(_) | RelayError::ServerFrame(_))
        );
        if let Some(earlier) = self.earlier.take() {
            if !server_lost {
                clean_and_release(*earlier, self.mode).await;
            }
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Detached);
        if let Phase::Attached(att) = phase {
            self.info.key.detach().await;
            if !server_lost {
                clean_and_release(*att, self.mode).await;
            }
        }
        let sent = self.client.wbuf.len();
        self.app.metrics.client_bytes_sent.inc_by(sent as u64);
        self.client.close().await;
    }

    async fn pump(&mut self) -> Result<End, RelayError> {
        // Registered once, not on every turn of the loop (each registration takes a lock), and
        // polled again only when they wake (each poll takes one too).
        let draining = woken::Woken::new(self.app.draining.clone().cancelled_owned());
        // Fires for the sidecar's shutdown too (its token is the key's parent).
        let killed = woken::Woken::new(self.info.key.terminated());
        // One timer, moved when the deadline changes (a new sleep per turn would register and
        // deregister with the timer wheel every time).
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(draining, killed, sleep);
        loop {
            if self.closing && !self.replies_coming() {
                return Ok(End::ClientLeft);
            }
            match &mut self.phase {
                Phase::Attached(att) => {
                    // The server is read while it is written to, so a server that is busy
                    // sending replies to a long pipeline never deadlocks against the sidecar.
                    // Requests held behind the attached server count too (backpressure).
                    let room = att.wbuf.len() < SERVER_WRITE_CHUNK
                        && self.held.bytes() < intake::MAX_HELD_BYTES;
                    // The connection the client moved on from owes the front replies: only it
                    // is read (and timed) until it is done; the current one is written to.
                    let earlier = self.earlier.as_deref();
                    let timer = earlier.unwrap_or(att).next_timer(&self.live.config.limits);
                    let read_current = earlier.is_none();
                    if let Some(at) = timer.map(Timer::at) {
                        if sleep.deadline() != at {
                            sleep.as_mut().reset(at);
                        }
                    }
                    // Notifications go out between messages, never inside one; those of a
                    // transaction that notified wait for its ReadyForQuery (replies.rs).
                    // Branches that cannot be ready are not polled (each poll of one costs).
                    let listening = self.notifications.is_some();
                    let between_messages = [Some(&**att), earlier]
                        .into_iter()
                        .flatten()
                        .all(|a| a.passthrough.is_none() && !a.notified);
                    // Biased (no random start): deadlines and shutdown first, so a server
                    // that never stops sending cannot starve them.
                    tokio::select! {
                        biased;
                        _ = &mut killed => return Err(self.ended()),
                        _ = &mut sleep, if timer.is_some() => self.on_timer(timer).await?,
                        Some(message) = next_notification(&mut self.notifications), if listening && between_messages => {
                            let message = self.for_client(message).unwrap_or_default();
                            self.client.wbuf.extend_from_slice(&message);
                            let n = self.client.flush().await?;
                            self.app.metrics.client_bytes_sent.inc_by(n as u64);
                        }
                        event = att.server.conn_mut().exchange(&mut att.wbuf, read_current) => {
                            if let Some(end) = self.on_exchange(Which::Current, event).await? {
                                return Ok(end);
                            }
                        }
                        event = earlier_exchange(&mut self.earlier), if !read_current => {
                            if let Some(end) = self.on_exchange(Which::Earlier, event).await? {
                                return Ok(end);
                            }
                        }
                        // After a Terminate the client is still read, only to notice that it
                        // left (what it sends is dropped): a reply that never comes then holds
                        // nothing past the client, as Postgres ends at the client's close.
                        read = self.client.fill(), if room || self.closing => {
                            let n = read?;
                            self.app.metrics.client_bytes_received.inc_by(n as u64);
                            if self.closing {
                                self.client.discard_buffered();
                            } else if let Some(end) = self.on_client_bytes().await? {
                                return Ok(end);
                            }
                        }
                    }
                }
                Phase::Detached | Phase::BeginHeld(_) | Phase::SkipToSync => {
                    let listening = self.notifications.is_some();
                    tokio::select! {
                        biased;
                        _ = &mut killed => return Err(self.ended()),
                        _ = &mut draining, if matches!(self.phase, Phase::Detached) => {
                            return Err(RelayError::Shutdown);
                        }
                        Some(message) = next_notification(&mut self.notifications), if listening => {
                            let message = self.for_client(message).unwrap_or_default();
                            self.client.wbuf.extend_from_slice(&message);
                            self.write_client().await?;
                        }
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
                    }
                }
            }
        }
    }

    /// Why the session's end fired: the sidecar's shutdown or `pg_terminate_backend`.
    fn ended(&self) -> RelayError {
        if self.app.terminate.is_cancelled() {
            RelayError::Shutdown
        } else {
            RelayError::Terminated
        }
    }

    /// A deadline passed, on the connection that owes the front replies (the one the client
    /// moved on from, while there is one).
    async fn on_timer(&mut self, timer: Option<Timer>) -> Result<(), RelayError> {
        let which = match self.earlier {
            Some(_) => Which::Earlier,
            None => Which::Current,
        };
        match timer {
            Some(Timer::IdleInTransaction(_)) => return Err(RelayError::IdleInTransaction),
            Some(Timer::QueryTimeout(_)) => {
                self.app.metrics.error("query_timeout");
                let Some(att) = attachment(which, &mut self.phase, &mut self.earlier) else {
                    return Ok(());
                };
                att.expect.front_cancelled = Some(Instant::now());
                match which {
                    Which::Current => self.info.key.cancel_in_background(),
                    Which::Earlier => {
                        // The client's key points at its current connection. This one is
                        // closed afterwards, never pooled: the cancel may land after a release.
                        att.uncertain = true;
                        let target = att.cancel_target();
                        tokio::spawn(async move { crate::cancel::send_cancel(&target).await });
                    }
                }
            }
            Some(Timer::Abandon(_)) => self.abandon(which).await?,
            None => {}
        }
        Ok(())
    }

    /// What one of the client's server connections did: bytes arrived, bytes went, or it is
    /// gone — a replica that goes away ends the requests it owed, not the session (unless a
    /// reply was halfway through to the client).
    async fn on_exchange(
        &mut self,
        which: Which,
        event: Result<Exchange, ServerError>,
    ) -> Result<Option<End>, RelayError> {
        let Some(att) = attachment(which, &mut self.phase, &mut self.earlier) else {
            return Ok(None);
        };
        match event {
            Ok(Exchange::Read) => {
                // Only a cancelled statement's server is timed by when it last said something.
                if att.expect.front_cancelled.is_some() {
                    att.last_server_bytes = Instant::now();
                }
                self.on_server_bytes(which).await
            }
            Ok(Exchange::Wrote) => Ok(None),
            Err(e) if att.upstream.is_replica() && att.passthrough.is_none() => {
                // Rare: boxed, so the future every server event makes stays small.
                Box::pin(self.replica_lost(which, e)).await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handles every complete frame the client sent, then writes what the server should get.
    async fn on_client_bytes(&mut self) -> Result<Option<End>, RelayError> {
        if let Phase::Attached(att) = &mut self.phase {
            att.last_activity = Instant::now();
        }
        while !self.closing {
            if let Phase::Attached(att) = &mut self.phase {
                if att.client_stream > 0 {
                    let chunk = self.client.take_buffered(att.client_stream);
                    if chunk.is_empty() {
                        break;
                    }
                    att.wbuf.extend_from_slice(&chunk);
                    att.streamed(chunk.len());
                    continue;
                }
                let header = self.client.peek_header().map_err(ClientIoError::from)?;
                if let Some(h) = header.filter(|h| {
                    h.tag == frontend::COPY_DATA_TAG
                        && h.frame_len > STREAM_COPY_DATA_OVER
                        && h.frame_len <= MAX_COPY_DATA
                        && self.held.is_empty()
                }) {
                    // Large COPY rows go through as they arrive, never buffered whole — unless
                    // requests before them are held: then they wait in line, whole (up to
                    // max_message_size), so nothing overtakes or lands inside them.
                    att.client_stream = h.frame_len;
                    continue;
                }
            }
            let Some(frame) = self.client.buffered_frame().map_err(ClientIoError::from)? else {
                break;
            };
            let end = match self.admit(frame)? {
                Admitted::Ran(Now::Done(end)) => end,
                Admitted::Ran(Now::Later(later)) => {
                    self.frame_waits(later).await;
                    None
                }
                Admitted::Held => self.run_held().await?,
            };
            if let Some(end) = end {
                return Ok(Some(end));
            }
        }
        self.finish_client_turn().await?;
        Ok(None)
    }

    /// After client messages were handled: replies the sidecar gives itself with nothing ahead
    /// of them go out, and so does everything queued for the client.
    async fn finish_client_turn(&mut self) -> Result<(), RelayError> {
        // The current connection's replies wait while an earlier one owes the front ones.
        if let (Phase::Attached(att), None) = (&mut self.phase, &self.earlier) {
            while let Some(bytes) = att.pop_current_synthesized() {
                self.client.wbuf.extend_from_slice(&bytes);
            }
        }
        // The request goes to the server now rather than on the pump's next turn (one turn
        // less per request); what the socket does not take goes when the pump polls it.
        if let Phase::Attached(att) = &mut self.phase {
            if !att.wbuf.is_empty() {
                att.server.conn_mut().write_now(&mut att.wbuf);
            }
        }
        if self.client.wbuf.is_empty() {
            return Ok(());
        }
        self.write_client().await
    }

    /// The client now listens on `channels`: (un)subscribes it on the database's LISTEN
    /// connection; with `wait`, returns once that connection listens on all of them.
    async fn subscribe(&mut self, channels: std::collections::BTreeSet<String>, wait: bool) {
        if channels.is_empty() && self.notifications.is_none() {
            return;
        }
        let (sink, _) = self
            .notifications
            .get_or_insert_with(|| mpsc::channel(notify::CLIENT_QUEUE));
        let sink = sink.clone();
        let pid = self.info.key.process_id();
        let notifier = &self.info.database.primary.notifier;
        if !wait {
            return notifier.listen(pid, channels, sink);
        }
        let timeout = self.live.config.pool.connect_timeout;
        if !notifier.listen_and_wait(pid, channels, sink, timeout).await {
            self.app.metrics.error("listen_unavailable");
            tracing::warn!(
                "the LISTEN connection does not listen yet; notifications may be missed"
            );
        }
    }

    /// Replies to the client's requests are still to come from the server.
    pub(super) fn owes_replies(&self) -> bool {
        let owes = |att: &Attachment| !att.expect.is_empty() || !att.pending.is_empty();
        !self.replies.is_empty()
            || self.earlier.as_deref().is_some_and(owes)
            || matches!(&self.phase, Phase::Attached(att) if owes(att))
    }

    /// After the client's Terminate: replies the server still sends without anything more from
    /// the client — the ReadyForQuery of each Query and Sync in flight — which Postgres would
    /// send before it closes. Replies to a batch the client never ended with Sync (Postgres may
    /// never flush them) and to a COPY FROM STDIN it never ended never come: they are not
    /// waited for (the cleanup ends both); nor are those of a connection whose replies are
    /// uncertain (a COPY FROM STDIN failed on a message pipelined behind it, which the server
    /// took as the error, not as a request). While an earlier connection owes the front
    /// replies, the current one's wait behind it.
    fn replies_coming(&self) -> bool {
        let coming = |att: &Attachment| {
            !att.expect.is_empty() && !att.awaits_client_copy() && !att.uncertain
        };
        match (self.earlier.as_deref(), &self.phase) {
            (Some(earlier), _) => coming(earlier),
            (None, Phase::Attached(att)) => coming(att),
            (None, _) => false,
        }
    }

    /// The transaction status the client was last told of (replies the sidecar gives itself
    /// report it).
    fn status_now(&self) -> TransactionStatus {
        match &self.phase {
            Phase::Attached(att) => att.status,
            Phase::BeginHeld(_) => TransactionStatus::InTransaction,
            Phase::Detached | Phase::SkipToSync => TransactionStatus::Idle,
        }
    }

    /// A reply the sidecar gives itself: written now if nothing is owed before it, else
    /// queued to be rendered when its turn comes.
    fn answer_in_turn(&mut self, reply: queue::LocalReply) {
        if let Some(due) = self.replies.push_local(reply) {
            let status = self.status_now();
            due.render(&mut self.client.wbuf, &mut self.statements, status);
        }
    }

    async fn write_client(&mut self) -> Result<(), RelayError> {
        let n = self.client.flush().await?;
        self.app.metrics.client_bytes_sent.inc_by(n as u64);
        Ok(())
    }
}

/// The result cache of a database, in transaction mode.
fn database_cache(
    live: &crate::live::Live,
    database: &str,
    mode: PoolMode,
) -> Option<Arc<crate::cache::DatabaseCache>> {
    if mode != PoolMode::Transaction {
        return None;
    }
    live.cache.as_ref()?.database(database).cloned()
}

/// Whether a client of `tenant` is held to a statement rate.
fn rate_limited(live: &crate::live::Live, tenant: Option<&str>) -> bool {
    tenant.is_some_and(|t| live.rates.rate_of(t).is_some())
}

/// The statement name of a Bind body.
fn bound_statement(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = split_cstr(body)?;
    split_cstr(rest).map(|(name, _)| name)
}

/// Which of the client's server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// The one its latest request went to.
    Current,
    /// The one it moved on from, still answering.
    Earlier,
}

/// One of the client's server connections, from the fields that hold them (so the rest of the
/// relay stays free to borrow).
fn attachment<'a>(
    which: Which,
    phase: &'a mut Phase,
    earlier: &'a mut Option<Box<Attachment>>,
) -> Option<&'a mut Attachment> {
    match (which, phase, earlier) {
        (Which::Current, Phase::Attached(att), _) | (Which::Earlier, _, Some(att)) => Some(att),
        _ => None,
    }
}

/// Reads from (and writes to) the connection the client moved on from, or never when there is
/// none.
async fn earlier_exchange(earlier: &mut Option<Box<Attachment>>) -> Result<Exchange, ServerError> {
    match earlier {
        Some(att) => att.server.conn_mut().exchange(&mut att.wbuf, true).await,
        None => std::future::pending().await,
    }
}

/// The next notification for the client, or never when it does not listen.
async fn next_notification(
    notifications: &mut Option<(Sink, mpsc::Receiver<Bytes>)>,
) -> Option<Bytes> {
    match notifications {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}
