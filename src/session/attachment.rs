//! A server connection attached to one client, and the queue of replies the client expects
//! from it.
//!
//! Each [`Expect`] is a ReadyForQuery still to come and says what to do with the messages up to
//! it: forward them to the client, or swallow them (replies to statements the sidecar
//! injected). The queue — not the socket — is the source of truth, so the sidecar can inject,
//! swallow and synthesize messages. No I/O here.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;

use super::cache_track::CacheTrack;
use super::state::Captured;
use crate::config::ClientLimits;
use crate::metrics::GaugeGuard;
use crate::pool::Checkout;
use crate::protocol::backend::{
    TransactionStatus, COMMAND_COMPLETE_TAG, EMPTY_QUERY_RESPONSE_TAG, NOTICE_RESPONSE_TAG,
    NOTIFICATION_RESPONSE_TAG, PARAMETER_DESCRIPTION_TAG, PARAMETER_STATUS_TAG,
    PORTAL_SUSPENDED_TAG,
};
use crate::sql::settings::Settings;

/// A deadline the relay acts on while attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The client sat idle inside a transaction: disconnect it (25P03).
    IdleInTransaction(Instant),
    /// The front statement ran too long: cancel it upstream (57014).
    QueryTimeout(Instant),
    /// The cancel was sent and the server has said nothing since, for longer than the grace
    /// period (a frozen server): end the client's requests with 57014 and close the connection.
    Abandon(Instant),
}

/// How long a server may stay silent after a query-timeout cancel before the sidecar gives up
/// on it.
pub(super) const ABANDON_GRACE: Duration = Duration::from_secs(5);

impl Timer {
    /// When it fires.
    pub(super) fn at(self) -> Instant {
        match self {
            Timer::IdleInTransaction(at) | Timer::QueryTimeout(at) | Timer::Abandon(at) => at,
        }
    }
}

/// Where an attachment is in following its client's session state.
#[derive(Debug, Default)]
pub(super) enum Resync {
    /// Nothing the client ran since the last capture could have changed its session.
    #[default]
    Clean,
    /// Something may have: capture the state when the transaction is over.
    Due,
    /// The capture query is in flight; the rows read so far. `then_due`: the client ran
    /// something since it was sent, so another capture follows.
    Capturing { rows: Captured, then_due: bool },
    /// The clean-up after a capture (or a reset) is in flight; then the connection carries
    /// exactly these settings.
    Settling { settings: Settings, then_due: bool },
    /// A statement the sidecar injected failed: the connection's state is not known, so it is
    /// reset with DISCARD ALL before anyone else uses it.
    Failed,
}

/// A transaction that began with a held BEGIN.
#[derive(Debug)]
pub(super) struct Began {
    pub(super) begin: crate::protocol::frame::Frame,
    /// A Query, Execute or FunctionCall was sent in it.
    pub(super) executed: bool,
}

/// What happens to the server's messages up to one ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// The client asked for them.
    Forward,
    /// The sidecar asked for them; the client never sees them.
    Swallow,
}

/// What a ReadyForQuery answers.
#[derive(Debug)]
pub(super) enum Source {
    /// Statements the sidecar injected.
    Sidecar,
    /// The client's settings, applied on a server connection that had others: the client
    /// hears of a ParameterStatus only if it differs from what it was told.
    Apply,
    /// The session-state capture: its DataRows are read by the sidecar.
    Capture,
    /// A client's simple Query (or FunctionCall). `in_batch`: sent inside an extended batch
    /// (after extended messages, before their Sync), where an error before it makes the server
    /// discard it without a reply. `copy_ends`: the client's CopyDone/CopyFail count then.
    Query {
        sent: Instant,
        in_batch: bool,
        copy_ends: u64,
    },
    /// A Sync the server ignores (sent while it was in COPY FROM STDIN for a simple Query):
    /// no ReadyForQuery comes for it.
    Ignored,
    /// A client's Sync, closing this batch.
    Sync(Batch),
}

/// One ReadyForQuery the client's connection is waiting for.
#[derive(Debug)]
pub(super) struct Expect {
    pub(super) source: Source,
}

impl Expect {
    pub(super) fn reply(&self) -> Reply {
        match self.source {
            Source::Sidecar | Source::Apply | Source::Capture | Source::Ignored => Reply::Swallow,
            Source::Query { .. } | Source::Sync(_) => Reply::Forward,
        }
    }

    /// Whether the client asked for this ReadyForQuery (it has a slot in the client's reply
    /// queue): a Query, a Sync — also one the server turned out to ignore.
    pub(super) fn has_client_slot(&self) -> bool {
        matches!(
            self.source,
            Source::Query { .. } | Source::Sync(_) | Source::Ignored
        )
    }

    /// Statements in the request (a Query counts one, a batch counts its Executes).
    pub(super) fn statements(&self) -> u32 {
        match &self.source {
            Source::Sidecar | Source::Apply | Source::Capture | Source::Ignored => 0,
            Source::Query { .. } => 1,
            Source::Sync(batch) => batch.executes,
        }
    }

    pub(super) fn sent(&self) -> Option<Instant> {
        match &self.source {
            Source::Sidecar | Source::Apply | Source::Capture | Source::Ignored => None,
            Source::Query { sent, .. } => Some(*sent),
            Source::Sync(batch) => Some(batch.started),
        }
    }
}

/// Extended-protocol messages sent since the last Sync.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) executes: u32,
    pub(super) started: Instant,
    /// The client's CopyDone/CopyFail count when the batch began.
    pub(super) copy_ends_at_start: u64,
    /// The server answered an Execute of this batch with CopyInResponse.
    pub(super) copy_in: bool,
}

/// The rest of a backend message that is being streamed through.
#[derive(Debug, Clone, Copy)]
pub(super) struct Passthrough {
    pub(super) remaining: usize,
    pub(super) reply: Reply,
}

/// A server connection serving this client, with what is in flight on it.
pub(super) struct Attachment {
    pub(super) server: Checkout,
    pub(super) expect: ExpectQueue,
    pub(super) batch: Option<Batch>,
    pub(super) status: TransactionStatus,
    /// Complete frames for the server not yet written.
    pub(super) wbuf: BytesMut,
    pub(super) passthrough: Option<Passthrough>,
    /// CopyDone and CopyFail messages the client has sent on this attachment.
    pub(super) copy_ends: u64,
    /// When the client last sent something or the last reply completed.
    pub(super) last_activity: Instant,
    /// When the server last sent something after a cancel of the front statement (the grace
    /// period runs from then).
    pub(super) last_server_bytes: Instant,
    /// Bytes of a large client CopyData still to stream through unbuffered.
    pub(super) client_stream: usize,
    /// Messages of the sidecar's own that wait for that CopyData to end (never inside it).
    pub(super) after_stream: BytesMut,
    /// Replies to individual extended-protocol messages, in order (see [`Pending`]).
    pub(super) pending: VecDeque<Pending>,
    /// ReadyForQuery messages asked for (Syncs, Queries, injected queries) on this attachment.
    pub(super) requests: u64,
    /// ReadyForQuery messages received (or known never to come) on this attachment.
    pub(super) readies: u64,
    /// The client's unnamed statement exists on this server connection.
    pub(super) unnamed_ready: bool,
    /// Following the client's session state (transaction mode).
    pub(super) resync: Resync,
    /// The client holds state that pins it to this server connection (counted while so).
    pub(super) pinned: Option<GaugeGuard>,
    /// The client's SQL prepared statements this server connection has now.
    pub(super) sql_on_conn: BTreeSet<String>,
    /// SQL prepared statements the client created on this attachment.
    pub(super) sql_created: Vec<String>,
    /// A client LISTEN ran on this server connection (the capture reports its channels).
    pub(super) listened: bool,
    /// Whose server connection it is: the primary's or a replica's.
    pub(super) upstream: crate::route::replica::Upstream,
    /// The client ran something on the primary that may have written (read-your-writes).
    pub(super) wrote: bool,
    /// The result cache's business on this connection (its database has cache rules).
    pub(super) cache: CacheTrack,
    /// A statement that may change the catalog ran on this attachment since the last
    /// transaction end the client asked for.
    pub(super) catalog_changed: bool,
    /// The transaction began here with a BEGIN the sidecar held, and whether a statement has
    /// run in it since (a sharded session may move a transaction that ran none).
    pub(super) began: Option<Began>,
    /// Proxy-wide statements prepared on the server connection since then: a rollback may
    /// leave them pointing at catalog objects that no longer exist.
    pub(super) parsed_since_catalog_change: Vec<bytes::Bytes>,
    /// The client asked for a rollback (or commit) in an extended batch after a catalog
    /// change: those statements are closed after its Sync (`Some(true)`: the transaction
    /// ends there).
    pub(super) forget_parsed_at_sync: Option<bool>,
    /// The client's transaction sent notifications: before the ReadyForQuery that ends it,
    /// the ones on channels the client listens to are delivered (as Postgres does).
    pub(super) notified: bool,
    /// The replica sent FATAL (the client got it as an ERROR) and is closing.
    pub(super) replica_said_fatal: bool,
    /// The client's tenant's share of server connections, given back with the attachment.
    pub(super) tenant_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The server entered COPY FROM STDIN for a simple Query while the client's
    /// CopyDone/CopyFail count was this: until the client ends it, its Syncs are ignored.
    pub(super) simple_copy_in: Option<u64>,
    /// The sidecar cannot be sure which ReadyForQuery messages are still to come (a COPY
    /// FROM STDIN that failed while the client's Syncs were in flight): the connection is
    /// closed instead of going back to the pool.
    pub(super) uncertain: bool,
}

/// The reply expected to one extended-protocol message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaited {
    /// Parse: ParseComplete.
    ParseComplete,
    /// Bind: BindComplete.
    BindComplete,
    /// Close: CloseComplete.
    CloseComplete,
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    StatementDescription { parameters_seen: bool },
    /// Describe of a portal: RowDescription or NoData.
    PortalDescription,
    /// Execute: rows or COPY data, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    ExecuteResult,
}

impl Awaited {
    /// Whether `tag` completes the reply (`Some(next)` when more is to come).
    pub(super) fn advance(self, tag: u8) -> Option<Awaited> {
        match (self, tag) {
            (Awaited::StatementDescription { .. }, PARAMETER_DESCRIPTION_TAG) => {
                Some(Awaited::StatementDescription {
                    parameters_seen: true,
                })
            }
            (
                Awaited::ExecuteResult,
                COMMAND_COMPLETE_TAG | EMPTY_QUERY_RESPONSE_TAG | PORTAL_SUSPENDED_TAG,
            ) => None,
            (Awaited::ExecuteResult, _) => Some(self),
            // Notices, notifications and parameter changes may come at any point.
            (_, NOTICE_RESPONSE_TAG | NOTIFICATION_RESPONSE_TAG | PARAMETER_STATUS_TAG) => {
                Some(self)
            }
            _ => None,
        }
    }
}

/// What the client gets, in order, for the extended messages of its batches.
#[derive(Debug)]
pub(super) enum Pending {
    /// A forwarded (or injected) message whose reply comes from the server.
    Reply {
        awaited: Awaited,
        reply: Reply,
        /// ReadyForQuery messages that come before this reply.
        after: u64,
        /// A Parse of a client's named statement: forget it if the server refuses it.
        parse_of: Option<(Vec<u8>, bytes::Bytes)>,
    },
    /// A reply the sidecar gives itself (ParseComplete for a statement the server already
    /// has, CloseComplete for a client's Close), at its place in the stream.
    Synthesized { bytes: bytes::Bytes, after: u64 },
}

impl Pending {
    pub(super) fn after(&self) -> u64 {
        match self {
            Pending::Reply { after, .. } | Pending::Synthesized { after, .. } => *after,
        }
    }
}

/// The ReadyForQuery messages still to come, in order, with when the front one started.
#[derive(Debug)]
pub(super) struct ExpectQueue {
    entries: VecDeque<Expect>,
    /// When the front entry became the one the server works on.
    front_since: Instant,
    /// When a cancel was sent for the front entry (query timeout).
    pub(super) front_cancelled: Option<Instant>,
}

impl ExpectQueue {
    fn new(now: Instant, entries: VecDeque<Expect>) -> ExpectQueue {
        ExpectQueue {
            entries,
            front_since: now,
            front_cancelled: None,
        }
    }

    pub(super) fn front(&self) -> Option<&Expect> {
        self.entries.front()
    }

    pub(super) fn push_back(&mut self, expect: Expect) {
        self.entries.push_back(expect);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where the last entry the client asked for stands in the queue (0: the front).
    fn last_client_position(&self) -> Option<usize> {
        self.entries.iter().rposition(Expect::has_client_slot)
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entries the client asked for, in order (each has a slot in the client's reply
    /// queue): `true` for a ReadyForQuery still to come, `false` for a Sync the server will
    /// ignore (no reply for it).
    pub(super) fn client_entries(&self) -> impl Iterator<Item = bool> + '_ {
        self.entries
            .iter()
            .filter(|e| e.has_client_slot())
            .map(|e| !matches!(e.source, Source::Ignored))
    }

    /// Syncs the client sent while its CopyDone/CopyFail count was `copy_ends` (during a
    /// simple Query's COPY FROM STDIN): the server ignores them.
    fn mark_ignored_syncs(&mut self, copy_ends: u64) {
        for entry in self.entries.iter_mut().skip(1) {
            if matches!(&entry.source, Source::Sync(b) if b.copy_ends_at_start == copy_ends) {
                entry.source = Source::Ignored;
            }
        }
    }

    /// The ReadyForQuery at the front arrived: the next entry is now the server's work.
    pub(super) fn pop_front(&mut self) -> Option<Expect> {
        self.front_since = Instant::now();
        self.front_cancelled = None;
        self.entries.pop_front()
    }

    /// When the server began the front entry's work.
    fn front_started(&self) -> Option<Instant> {
        let sent = self.entries.front().and_then(Expect::sent)?;
        Some(sent.max(self.front_since))
    }
}

impl Batch {
    pub(super) fn new(started: Instant, copy_ends: u64) -> Batch {
        Batch {
            executes: 0,
            started,
            copy_ends_at_start: copy_ends,
            copy_in: false,
        }
    }
}

/// The largest write buffer, and queue, a released attachment leaves to the next one.
const SPARE_BYTES: usize = 16 * 1024;
const SPARE_ENTRIES: usize = 64;

/// The buffers an attachment leaves to the client's next one, so a checkout allocates none.
#[derive(Default)]
pub(super) struct Spare {
    wbuf: BytesMut,
    expect: VecDeque<Expect>,
    pending: VecDeque<Pending>,
}

impl Attachment {
    /// A fresh attachment of `server` with nothing in flight, in `spare` buffers.
    pub(super) fn new(server: Checkout, spare: Spare) -> Attachment {
        let now = Instant::now();
        let Spare {
            mut wbuf,
            mut expect,
            mut pending,
        } = spare;
        wbuf.clear();
        expect.clear();
        pending.clear();
        Attachment {
            server,
            expect: ExpectQueue::new(now, expect),
            batch: None,
            status: TransactionStatus::Idle,
            wbuf,
            passthrough: None,
            copy_ends: 0,
            last_activity: now,
            last_server_bytes: now,
            client_stream: 0,
            after_stream: BytesMut::new(),
            pending,
            requests: 0,
            readies: 0,
            unnamed_ready: false,
            resync: Resync::Clean,
            pinned: None,
            sql_on_conn: BTreeSet::new(),
            sql_created: Vec::new(),
            listened: false,
            upstream: crate::route::replica::Upstream::Primary,
            wrote: false,
            cache: CacheTrack::default(),
            notified: false,
            catalog_changed: false,
            began: None,
            parsed_since_catalog_change: Vec::new(),
            forget_parsed_at_sync: None,
            replica_said_fatal: false,
            tenant_permit: None,
            simple_copy_in: None,
            uncertain: false,
        }
    }

    /// The deadline the relay must act on next, if a limit applies now.
    pub(super) fn next_timer(&self, limits: &ClientLimits) -> Option<Timer> {
        if let Some(started) = self.expect.front_started() {
            if limits.query_timeout.is_zero() {
                return None;
            }
            return Some(match self.expect.front_cancelled {
                Some(at) => Timer::Abandon(at.max(self.last_server_bytes) + ABANDON_GRACE),
                None => Timer::QueryTimeout(started + limits.query_timeout),
            });
        }
        let idle_in_transaction = self.expect.is_empty()
            && self.batch.is_none()
            && self.status != TransactionStatus::Idle;
        if idle_in_transaction && !limits.idle_in_transaction_timeout.is_zero() {
            return Some(Timer::IdleInTransaction(
                self.last_activity.max(self.expect.front_since)
                    + limits.idle_in_transaction_timeout,
            ));
        }
        None
    }

    /// The server entered COPY FROM STDIN for the request it is working on. In an extended
    /// batch, a Sync the client sent before ending the COPY is ignored by the server, so the
    /// batch stays open until the client's next Sync; for a simple Query, such Syncs are
    /// ignored and answered by nothing. Returns whether the client's Sync at the front was
    /// dropped so (it gets no reply).
    pub(super) fn note_copy_in(&mut self) -> bool {
        if let Some(Expect {
            source: Source::Query { copy_ends, .. },
        }) = self.expect.front()
        {
            let during_copy = *copy_ends;
            self.simple_copy_in = Some(during_copy);
            self.expect.mark_ignored_syncs(during_copy);
            return false;
        }
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
                // Its ReadyForQuery will never come.
                self.readies += 1;
                return true;
            }
        } else if let (true, Some(batch)) = (self.expect.is_empty(), self.batch.as_mut()) {
            batch.copy_in = true;
        }
        false
    }

    /// The server is in COPY FROM STDIN for a simple Query the client has not ended yet: a
    /// Sync now gets no ReadyForQuery.
    pub(super) fn in_simple_copy_in(&self) -> bool {
        self.simple_copy_in == Some(self.copy_ends)
    }

    /// The server waits for the client's COPY data (a COPY FROM STDIN the client has not ended,
    /// for a simple Query or in an extended batch): nothing more comes until CopyDone or
    /// CopyFail.
    pub(super) fn awaits_client_copy(&self) -> bool {
        self.in_simple_copy_in()
            || self
                .batch
                .as_ref()
                .is_some_and(|b| b.copy_in && b.copy_ends_at_start == self.copy_ends)
    }

    /// Entries whose ReadyForQuery will never come, now at the front: the server discarded a
    /// Query inside a failed extended batch (`after_batch_error`), or ignored a Sync during
    /// COPY. Returns whether one was skipped.
    pub(super) fn skip_unanswered(&mut self, after_batch_error: bool) -> bool {
        let unanswered = match self.expect.front().map(|e| &e.source) {
            Some(Source::Ignored) => true,
            Some(Source::Query { in_batch: true, .. }) => after_batch_error,
            _ => false,
        };
        if unanswered {
            self.expect.pop_front();
            self.readies += 1;
        }
        unanswered
    }

    /// Statements prepared since the catalog change are closed after the client's next Sync
    /// (`ends`: its transaction ends by then).
    pub(super) fn forget_parsed_after_sync(&mut self, ends: bool) {
        let at_sync = self.forget_parsed_at_sync.get_or_insert(ends);
        *at_sync |= ends;
    }

    /// A Sync of the sidecar's own (its ReadyForQuery swallowed), after any client message
    /// half forwarded: bytes of the sidecar's never land inside a client's CopyData.
    pub(super) fn inject_sync(&mut self) {
        let out = if self.client_stream > 0 {
            &mut self.after_stream
        } else {
            &mut self.wbuf
        };
        crate::protocol::frontend::append_sync(out);
        self.push_expect(Expect {
            source: Source::Sidecar,
        });
    }

    /// Some of a streamed client message went to the server: once it is whole, what the
    /// sidecar held back follows it.
    pub(super) fn streamed(&mut self, n: usize) {
        self.client_stream -= n;
        if self.client_stream == 0 && !self.after_stream.is_empty() {
            let held = self.after_stream.split();
            self.wbuf.extend_from_slice(&held);
        }
    }

    /// Where a CancelRequest for the statement running on this connection goes.
    pub(super) fn cancel_target(&mut self) -> crate::cancel::CancelTarget {
        let dialer = self.server.pool().dialer().clone();
        let conn = self.server.conn_mut();
        crate::cancel::CancelTarget {
            host: conn.host.clone(),
            port: conn.port,
            key: conn.key,
            dialer,
        }
    }

    /// Queues a ReadyForQuery the client's connection now waits for.
    pub(super) fn push_expect(&mut self, expect: Expect) {
        self.expect.push_back(expect);
        self.requests += 1;
    }

    /// Queues the reply to one extended message, after everything already queued.
    pub(super) fn push_reply(&mut self, awaited: Awaited, reply: Reply) {
        self.pending.push_back(Pending::Reply {
            awaited,
            reply,
            after: self.requests,
            parse_of: None,
        });
    }

    /// Queues a reply the sidecar gives itself, after everything already queued.
    pub(super) fn push_synthesized(&mut self, bytes: bytes::Bytes) {
        self.pending.push_back(Pending::Synthesized {
            bytes,
            after: self.requests,
        });
    }

    /// The front pending reply, if the server is now working on its batch.
    pub(super) fn current_pending(&self) -> Option<&Pending> {
        self.pending.front().filter(|p| p.after() == self.readies)
    }

    /// A reply the sidecar gives itself is next on the current request.
    pub(super) fn synthesized_due(&self) -> bool {
        matches!(self.current_pending(), Some(Pending::Synthesized { .. }))
    }

    /// Takes the front pending entry if it is a reply the sidecar gives itself and its turn
    /// has come (everything before it has been answered).
    pub(super) fn pop_current_synthesized(&mut self) -> Option<bytes::Bytes> {
        match self.current_pending() {
            Some(Pending::Synthesized { .. }) => match self.pending.pop_front() {
                Some(Pending::Synthesized { bytes, .. }) => Some(bytes),
                _ => None,
            },
            _ => None,
        }
    }

    /// The number of the ReadyForQuery that answers the client's latest request (counted like
    /// `readies`), if one is still to come.
    pub(super) fn last_client_ready(&self) -> Option<u64> {
        let position = self.expect.last_client_position()?;
        Some(self.readies + 1 + position as u64)
    }

    /// The buffers this attachment leaves to the client's next one (it is being released with
    /// nothing in flight).
    pub(super) fn spare(&mut self) -> Spare {
        // What a large request grew stays with it: an idle client keeps little.
        fn small<T: Default>(taken: T, capacity: usize, limit: usize) -> T {
            if capacity <= limit {
                taken
            } else {
                T::default()
            }
        }
        let wbuf_capacity = self.wbuf.capacity();
        let (expect_capacity, pending_capacity) =
            (self.expect.entries.capacity(), self.pending.capacity());
        Spare {
            wbuf: small(std::mem::take(&mut self.wbuf), wbuf_capacity, SPARE_BYTES),
            expect: small(
                std::mem::take(&mut self.expect.entries),
                expect_capacity,
                SPARE_ENTRIES,
            ),
            pending: small(
                std::mem::take(&mut self.pending),
                pending_capacity,
                SPARE_ENTRIES,
            ),
        }
    }

    /// Nothing in flight either way: no reply awaited, no batch open, no message half
    /// forwarded or unsent.
    pub(super) fn between_requests(&self) -> bool {
        self.client_stream == 0
            && self.after_stream.is_empty()
            && self.expect.is_empty()
            && self.pending.is_empty()
            && self.batch.is_none()
            && self.passthrough.is_none()
            && self.wbuf.is_empty()
    }

    /// Between requests and not in a transaction: the connection can go back to the pool.
    pub(super) fn is_quiet(&self) -> bool {
        self.between_requests() && self.status == TransactionStatus::Idle
    }
}
