//! Running one client frame of a request the plan sent on (or one that continues the attached
//! server connection): what it means (signals of issued PIDs, the tenant guard, its effects on
//! the session), LISTEN bookkeeping, attaching a server connection for its target, what the
//! connection needs before it (token, held BEGIN, session state), sending it, and what replies
//! to expect. `on_client_frame` dispatches; each step is its own function.

use super::*;
use crate::route::replica::Upstream;
use crate::session::effects::Effects;
use crate::sql::signal::SignalKind;

/// A client frame once the sidecar has understood it.
struct Understood {
    frame: Frame,
    /// What running it does to the session (none for a Parse: see `parsed`).
    effects: Arc<Effects>,
    routing: Routing,
    /// A Parse: what its statement does, and where it may go, when bound.
    parsed: Option<(Arc<Effects>, Routing)>,
    /// A Parse the tenant guard refused: the statement that raises the refusal instead.
    refused_parse: Option<String>,
}

/// A signal the frame asks for, to be acted on before it runs (waits for the signalled client).
enum SignalDue {
    /// A Query that is a signal call of an issued PID.
    Query(Frame, i32, crate::sql::signal::SignalCall),
    /// A Bind of a signal statement: its kind and the PID parameter's number.
    Bind(Frame, SignalKind, usize),
}

/// A frame with its signals dealt with: the frame (replaced by one that answers a signal),
/// its classification, and the signal a Parse's statement makes.
type Signalled = (Frame, Option<Classified>, Option<(SignalKind, usize)>);

/// What is left of a client frame that has to wait for something before it is sent.
enum Later {
    /// A signal to act on; nothing else was done yet.
    Signal(SignalDue, MessageRole, Target),
    /// Understood; the LISTEN connection follows the client's channels first.
    Listen(Understood, MessageRole, Target),
    /// Understood; a server connection of `pool` has to be waited for.
    Attach(Understood, MessageRole, Arc<crate::pool::Pool>, Upstream),
}

/// How a frame went on the path that never waits.
pub(super) enum Now {
    Done(Option<End>),
    Later(Waiting),
}

/// A frame that waits for something before it is sent (opaque outside this file).
pub(super) struct Waiting(Box<Later>);

/// Attaching a server connection without waiting.
pub(super) enum AttachNow {
    /// Attached (with the held BEGIN to send first), or failed (the client was answered).
    Done(Option<Option<Frame>>),
    /// No idle connection at hand: one of `pool` has to be waited for.
    Wait(Arc<crate::pool::Pool>, Upstream),
}

impl Relay {
    /// Runs one client frame; `target` is where its request goes when no server connection is
    /// attached. What never waits (almost every frame) runs without a future of its own; what
    /// waits (a signal, the LISTEN connection, a checkout) goes on in a boxed one.
    pub(super) async fn on_client_frame(
        &mut self,
        incoming: Incoming,
        target: Target,
    ) -> Result<Option<End>, RelayError> {
        match self.frame_now(incoming, target)? {
            Now::Done(end) => Ok(end),
            Now::Later(later) => {
                self.frame_waits(later).await;
                Ok(None)
            }
        }
    }

    /// The rest of a frame [`Relay::frame_now`] left because it waits (boxed: rare, and its
    /// future is large).
    pub(super) async fn frame_waits(&mut self, Waiting(later): Waiting) {
        Box::pin(self.frame_later(*later)).await
    }

    /// [`Relay::on_client_frame`] up to the first step that waits.
    pub(super) fn frame_now(
        &mut self,
        (frame, classified): Incoming,
        target: Target,
    ) -> Result<Now, RelayError> {
        let role = frontend::role(frame.tag());
        match role {
            MessageRole::Terminate if self.replies_coming() => {
                // Postgres reads nothing after a Terminate: neither does the sidecar (frames
                // held after it are dropped by `run_held`).
                self.closing = true;
                return Ok(Now::Done(None));
            }
            MessageRole::Terminate => return Ok(Now::Done(Some(End::ClientLeft))),
            MessageRole::Unknown => return Err(RelayError::UnknownMessage(frame.tag())),
            MessageRole::Copy => {
                self.forward_copy(frame);
                return Ok(Now::Done(None));
            }
            _ => {}
        }
        let (frame, classified, signal) = match self.signal_now(frame, classified) {
            Ok(understood) => understood,
            Err(due) => {
                return Ok(Now::Later(Waiting(Box::new(Later::Signal(
                    due, role, target,
                )))))
            }
        };
        let understood = self.understand(frame, classified, signal);
        if !self.goes_on(&understood, role) {
            return Ok(Now::Done(None));
        }
        if self.mode == PoolMode::Transaction && !understood.effects.listen_changes.is_empty() {
            return Ok(Now::Later(Waiting(Box::new(Later::Listen(
                understood, role, target,
            )))));
        }
        match self.ensure_attached_now(target, role) {
            AttachNow::Done(Some(held_begin)) => self.dispatch(role, understood, held_begin),
            AttachNow::Done(None) => {}
            AttachNow::Wait(pool, upstream) => {
                return Ok(Now::Later(Waiting(Box::new(Later::Attach(
                    understood, role, pool, upstream,
                )))))
            }
        }
        Ok(Now::Done(None))
    }

    /// The rest of a frame that had to wait.
    async fn frame_later(&mut self, later: Later) {
        let (understood, role, attached) = match later {
            Later::Signal(due, role, target) => {
                let (frame, classified, signal) = self.deliver_signal(due).await;
                let understood = self.understand(frame, classified, signal);
                if !self.goes_on(&understood, role) {
                    return;
                }
                self.follow_listens(&understood.effects).await;
                let attached = self.ensure_attached(target, role).await;
                (understood, role, attached)
            }
            Later::Listen(understood, role, target) => {
                self.follow_listens(&understood.effects).await;
                let attached = self.ensure_attached(target, role).await;
                (understood, role, attached)
            }
            Later::Attach(understood, role, pool, upstream) => {
                let attached = self.attach_waiting(pool, upstream, role).await;
                (understood, role, attached)
            }
        };
        if let Some(held_begin) = attached {
            self.dispatch(role, understood, held_begin);
        }
    }

    /// Whether an understood frame is sent on: not inside a failed batch (dropped up to its
    /// Sync, which is answered), nor a DEALLOCATE of a protocol statement (answered here).
    fn goes_on(&mut self, understood: &Understood, role: MessageRole) -> bool {
        if let Phase::SkipToSync = self.phase {
            if role == MessageRole::Sync {
                backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle);
                self.phase = Phase::Detached;
            }
            return false;
        }
        !(role == MessageRole::Request && self.deallocated_protocol_statement(&understood.effects))
    }

    /// An understood frame on the attached server connection: what the connection needs before
    /// it, the frame, and the replies to expect.
    fn dispatch(&mut self, role: MessageRole, understood: Understood, held_begin: Option<Frame>) {
        let understood = match role {
            MessageRole::Request => Understood {
                frame: self
                    .protocol_execute(&understood.frame, &understood.effects)
                    .unwrap_or(understood.frame),
                ..understood
            },
            _ => understood,
        };
        self.prepare_attached(role, &understood, held_begin);
        self.send(role, understood);
    }

    /// Sends a Query the sidecar wrote in place of a request it refused inside a transaction:
    /// the server raises the refusal, so the transaction fails there as Postgres would fail
    /// it, and the client gets its replies. Neither guarded nor classified (the sidecar wrote
    /// it); a failed checkout answers the client as for any request.
    pub(super) async fn raise_upstream(&mut self, sql: &str) {
        let mut query = bytes::BytesMut::new();
        frontend::append_query(&mut query, sql);
        let frame = Frame::from_bytes(query.freeze());
        let Some(held_begin) = self
            .ensure_attached(Target::Primary, MessageRole::Request)
            .await
        else {
            return;
        };
        let understood = Understood {
            frame,
            effects: Effects::none(),
            routing: Routing::PRIMARY,
            parsed: None,
            refused_parse: None,
        };
        self.prepare_attached(MessageRole::Request, &understood, held_begin);
        self.send(MessageRole::Request, understood);
    }

    /// CopyData, CopyDone, CopyFail: to the attached server. Outside COPY these are ignored, as
    /// Postgres ignores them after a failed COPY.
    fn forward_copy(&mut self, frame: Frame) {
        if let Phase::Attached(att) = &mut self.phase {
            if frame.tag() != frontend::COPY_DATA_TAG {
                att.copy_ends += 1;
            }
            att.wbuf.extend_from_slice(frame.as_bytes());
        }
    }

    /// The signals a frame carries that need no waiting (a Parse's is only marked), or the
    /// one to act on first ([`Relay::deliver_signal`]).
    fn signal_now(
        &self,
        frame: Frame,
        classified: Option<Classified>,
    ) -> Result<Signalled, SignalDue> {
        match frame.tag() {
            frontend::QUERY_TAG => match self.signal_query(&frame, classified.as_ref()) {
                Some((pid, call)) => Err(SignalDue::Query(frame, pid, call)),
                None => Ok((frame, classified, None)),
            },
            frontend::PARSE_TAG => match self.signal_parse(&frame, classified.as_ref()) {
                Some((replaced, signal)) => Ok((replaced, None, Some(signal))),
                None => Ok((frame, classified, None)),
            },
            frontend::BIND_TAG => {
                let signal = bound_statement(frame.body())
                    .and_then(|name| self.statements.effects_of(name))
                    .and_then(|effects| effects.signal);
                match signal {
                    Some((kind, n)) => Err(SignalDue::Bind(frame, kind, n)),
                    None => Ok((frame, None, None)),
                }
            }
            _ => Ok((frame, None, None)),
        }
    }

    /// Acts on a signal of an issued PID; the frame becomes one that answers the outcome.
    async fn deliver_signal(&mut self, due: SignalDue) -> Signalled {
        match due {
            SignalDue::Query(frame, pid, call) => (
                self.answer_signal_query(&frame, pid, call).await,
                None,
                None,
            ),
            SignalDue::Bind(frame, kind, n) => (self.signal_bind(frame, kind, n).await, None, None),
        }
    }

    /// What a frame means (its signals dealt with): the tenant guard passes, refuses or
    /// rewrites it, and its statement's effects and routing are read from its classification
    /// (made again only for a text the sidecar replaced).
    fn understand(
        &mut self,
        frame: Frame,
        classified: Option<Classified>,
        signal: Option<(SignalKind, usize)>,
    ) -> Understood {
        // Under tenant enforcement, a refused Query becomes one that raises the refusal on the
        // server (so a transaction fails there too); a refused Parse is replaced when sent.
        let (frame, classified, refused_parse) = match self.guard(&frame, classified.as_ref()) {
            Guarded::Pass => (frame, classified, None),
            Guarded::Refused(raise) if frame.tag() == frontend::QUERY_TAG => {
                (with_text(&frame, &raise), None, None)
            }
            Guarded::Refused(raise) => (frame, classified, Some(raise)),
            // Channel names made the tenant's.
            Guarded::Rewritten(sql) => (with_text(&frame, &sql), None, None),
        };
        let classified = classified.or_else(|| self.classify_text(&frame));
        // What the message runs: a Query's statements, the statement a Bind binds (classified
        // at its Parse), or a function (FunctionCall). A Parse only classifies.
        let (effects, routing, parsed) = match frame.tag() {
            frontend::QUERY_TAG => {
                let (effects, routing) = self.effects(&frame, classified.as_ref());
                (effects, routing, None)
            }
            frontend::PARSE_TAG => {
                let (effects, routing) = self.effects(&frame, classified.as_ref());
                let effects = match signal {
                    Some(signal) => Arc::new(Effects {
                        signal: Some(signal),
                        ..(*effects).clone()
                    }),
                    None => effects,
                };
                (Effects::none(), Routing::PRIMARY, Some((effects, routing)))
            }
            frontend::BIND_TAG => {
                let bound = bound_statement(frame.body());
                let effects = bound.and_then(|name| self.statements.effects_of(name));
                let routing = bound.map_or(Routing::PRIMARY, |n| self.statements.routing_of(n));
                (effects.unwrap_or_else(Effects::none), routing, None)
            }
            frontend::FUNCTION_CALL_TAG => (Effects::unknown(), Routing::PRIMARY, None),
            _ => (Effects::none(), Routing::PRIMARY, None),
        };
        Understood {
            frame,
            effects,
            routing,
            parsed,
            refused_parse,
        }
    }

    /// The effects and routing of a Query's or Parse's statement text.
    pub(super) fn effects(
        &mut self,
        frame: &Frame,
        classified: Option<&Classified>,
    ) -> (Arc<Effects>, Routing) {
        let sql = frontend::statement_text(frame.tag(), frame.body());
        let (Some(sql), Some(classified)) = (sql, classified) else {
            return (Effects::none(), Routing::PRIMARY);
        };
        let client_prepared = !self.info.state.sql_prepared.is_empty();
        // A Parse's effects are kept with the statement: followed for the cache whether or not
        // one is configured now (a reload may add one while the statement lives).
        let cache = self.cache.is_some() || frame.tag() == frontend::PARSE_TAG;
        let effects = Effects::remembered(
            &mut self.effects_memo,
            sql,
            classified,
            client_prepared,
            cache,
        );
        let routing = Routing::of(classified);
        (effects, routing)
    }

    /// In transaction mode the LISTEN connection listens before a LISTEN returns to the client,
    /// so nothing sent after that is missed; notifications then come only from there.
    async fn follow_listens(&mut self, effects: &Effects) {
        if self.mode != PoolMode::Transaction || effects.listen_changes.is_empty() {
            return;
        }
        let standalone = effects.statements == 1
            && match &self.phase {
                Phase::Attached(att) => att.status == TransactionStatus::Idle,
                _ => true,
            };
        let mut channels = self.info.state.channels.clone();
        ListenChange::apply(&effects.listen_changes, &mut channels, standalone);
        if channels != self.info.state.channels {
            self.info.state.channels = channels.clone();
            self.subscribe(channels, true).await;
        }
    }

    /// Attaches a server connection for `target` when none is: `Some` with the held BEGIN (to
    /// be sent first) when the client is attached now, `None` when the checkout failed (the
    /// client got the error; the rest of an extended batch is dropped up to its Sync).
    async fn ensure_attached(
        &mut self,
        target: Target,
        role: MessageRole,
    ) -> Option<Option<Frame>> {
        match self.ensure_attached_now(target, role) {
            AttachNow::Done(attached) => attached,
            AttachNow::Wait(pool, upstream) => self.attach_waiting(pool, upstream, role).await,
        }
    }

    /// [`Relay::ensure_attached`] when an idle connection is at hand (or it fails at once).
    fn ensure_attached_now(&mut self, target: Target, role: MessageRole) -> AttachNow {
        if !matches!(self.phase, Phase::Detached | Phase::BeginHeld(_)) {
            return AttachNow::Done(Some(None));
        }
        let (pool, upstream) = match self.pool_for(target) {
            Ok(chosen) => chosen,
            Err(report) => return AttachNow::Done(self.attached(Err(report), role)),
        };
        match self.attach_now(&pool, upstream) {
            Some(att) => AttachNow::Done(self.attached(Ok(att), role)),
            None => AttachNow::Wait(pool, upstream),
        }
    }

    /// [`Relay::ensure_attached`] once it has to wait for a connection of `pool`.
    async fn attach_waiting(
        &mut self,
        pool: Arc<crate::pool::Pool>,
        upstream: Upstream,
        role: MessageRole,
    ) -> Option<Option<Frame>> {
        let checkout = self.attach_waiting_for(pool, upstream).await;
        self.attached(checkout, role)
    }

    /// The client is attached to the connection it got (`Some` with the held BEGIN, to be sent
    /// first), or was told why it got none.
    fn attached(
        &mut self,
        checkout: Result<Box<Attachment>, ErrorReport>,
        role: MessageRole,
    ) -> Option<Option<Frame>> {
        let held_begin = match std::mem::replace(&mut self.phase, Phase::Detached) {
            Phase::BeginHeld(begin) => Some(begin),
            _ => None,
        };
        match checkout {
            Ok(att) => {
                self.phase = Phase::Attached(att);
                Some(held_begin)
            }
            Err(report) => {
                // The held BEGIN goes with the failed statement: the client is told it is idle.
                report.write(&mut self.client.wbuf);
                match role {
                    MessageRole::Request | MessageRole::Sync => {
                        backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle)
                    }
                    _ => self.phase = Phase::SkipToSync,
                }
                None
            }
        }
    }

    /// What the attached server connection needs before the frame: a renewed token, the held
    /// BEGIN, the client's session state; and what the frame tells about the transaction
    /// (writes for read-your-writes, notifications, catalog changes, statements deallocated).
    fn prepare_attached(&mut self, role: MessageRole, u: &Understood, held_begin: Option<Frame>) {
        let Phase::Attached(att) = &mut self.phase else {
            return;
        };
        if att.is_quiet() {
            // A token past half its lifetime is renewed between requests (session mode, and
            // clients pinned to their connection).
            tenancy::renew_token(&self.live, self.info.grant.as_ref(), att, false);
        }
        if let Some(begin) = held_begin {
            // The held BEGIN goes first; its reply was given already.
            att.wbuf.extend_from_slice(begin.as_bytes());
            att.push_expect(Expect {
                source: Source::Sidecar,
            });
            att.began = Some(Began {
                begin,
                executed: false,
            });
            att.cache.note_begin();
        }
        if matches!(
            u.frame.tag(),
            frontend::QUERY_TAG | frontend::EXECUTE_TAG | frontend::FUNCTION_CALL_TAG
        ) {
            if let Some(began) = &mut att.began {
                began.executed = true;
            }
        }
        if matches!(
            u.frame.tag(),
            frontend::QUERY_TAG | frontend::BIND_TAG | frontend::FUNCTION_CALL_TAG
        ) && u.routing.kind != RequestKind::Read
            && !att.upstream.is_replica()
        {
            // Read-your-writes: this transaction may write on the primary.
            att.wrote = true;
        }
        if self.cache.is_some()
            && matches!(
                u.frame.tag(),
                frontend::QUERY_TAG | frontend::BIND_TAG | frontend::FUNCTION_CALL_TAG
            )
        {
            att.cache.note(&u.effects, !att.upstream.is_replica());
        }
        if u.effects.notifies {
            att.notified = true;
            let server_pid = att.server.conn_mut().key.process_id;
            let pool = &self.info.database.primary;
            pool.notifier
                .note_sender(server_pid, self.info.key.process_id());
        }
        if self.mode == PoolMode::Transaction {
            let extended = role == MessageRole::Extended;
            resync::before_forward(att, &mut self.info.state, &u.effects, extended);
            if u.parsed.as_ref().is_some_and(|(p, _)| p.mentions_prepared) {
                // Describing `EXECUTE name` needs the statement too.
                resync::ensure_sql_prepared(att, &self.info.state, true);
            }
            if att.pinned.is_some() && matches!(role, MessageRole::Request | MessageRole::Sync) {
                // Whether the client still holds what pins it is asked after each request.
                resync::mark_due(att);
            }
        }
        if u.effects.catalog {
            att.catalog_changed = true;
        }
        if u.effects.deallocates_all() || u.effects.discard_all {
            self.statements.clear();
            att.server.conn_mut().prepared.clear();
        }
    }

    /// Writes the frame to the attached server connection and queues the replies it asks for.
    fn send(&mut self, role: MessageRole, u: Understood) {
        let Phase::Attached(att) = &mut self.phase else {
            return;
        };
        if let Some(raise) = &u.refused_parse {
            // The server raises the refusal where the Parse was, and skips to Sync.
            match frontend::parse_text(u.frame.body()).map(|(name, _)| name) {
                Some(b"") | None => self.statements.unnamed = None,
                Some(name) => {
                    self.statements.forget(name);
                }
            }
            resync::inject_extended(att, raise);
        } else if role == MessageRole::Extended {
            extended::forward(att, &mut self.statements, &u.frame, u.parsed);
        } else {
            match role {
                MessageRole::Sync if self.cache.is_some() => carry_announcement(att),
                MessageRole::Request if self.cache.is_some() => carry_in_transaction(att),
                _ => {}
            }
            att.wbuf.extend_from_slice(u.frame.as_bytes());
        }
        // The clock is read only where a request starts (five messages make one batch).
        match role {
            MessageRole::Request => self.expect_query(&u.effects, Instant::now()),
            MessageRole::Extended => {
                if let (Some(ends), true) = (u.effects.ends_transaction, att.catalog_changed) {
                    att.forget_parsed_after_sync(ends);
                }
                let copy_ends = att.copy_ends;
                let batch = att
                    .batch
                    .get_or_insert_with(|| Batch::new(Instant::now(), copy_ends));
                if u.frame.tag() == frontend::EXECUTE_TAG {
                    batch.executes += 1;
                    self.count_query();
                }
            }
            MessageRole::Sync if att.in_simple_copy_in() => {
                // The server is in a simple Query's COPY FROM STDIN: it ignores this Sync.
            }
            MessageRole::Sync => {
                let batch = att
                    .batch
                    .take()
                    .unwrap_or_else(|| Batch::new(Instant::now(), att.copy_ends));
                if batch.copy_in && batch.copy_ends_at_start == att.copy_ends {
                    // The server is in COPY FROM STDIN and ignores this Sync: no ReadyForQuery.
                    att.batch = Some(batch);
                } else {
                    att.push_expect(Expect {
                        source: Source::Sync(batch),
                    });
                    att.cache.asked(att.requests);
                    self.replies.push_server(att.upstream);
                    if let Some(ends) = att.forget_parsed_at_sync.take() {
                        extended::forget_parsed_since_catalog_change(att, ends);
                    }
                }
            }
            MessageRole::Flush
            | MessageRole::Copy
            | MessageRole::Terminate
            | MessageRole::Unknown => {}
        }
    }

    /// The ReadyForQuery a simple Query (or FunctionCall) asks for, and what follows it.
    fn expect_query(&mut self, effects: &Effects, now: Instant) {
        self.count_query();
        let Phase::Attached(att) = &mut self.phase else {
            return;
        };
        // A simple Query destroys the unnamed statement, as in Postgres.
        self.statements.unnamed = None;
        att.unnamed_ready = false;
        let in_batch = att.batch.is_some();
        let copy_ends = att.copy_ends;
        att.push_expect(Expect {
            source: Source::Query {
                sent: now,
                in_batch,
                copy_ends,
            },
        });
        self.replies.push_server(att.upstream);
        att.cache.asked(att.requests);
        if let (Some(ends), true) = (effects.ends_transaction, att.catalog_changed) {
            if in_batch || effects.copy_from {
                // Not while the server may skip to a Sync or read COPY data: after the client's
                // next Sync.
                att.forget_parsed_after_sync(ends);
            } else {
                extended::forget_parsed_since_catalog_change(att, ends);
            }
        }
        if effects.reset_all || effects.discard_all {
            // The tenant (and what else the sidecar owns) is back before anything else.
            if let Some(sql) = self.info.state.reserved_sql() {
                frontend::append_query(&mut att.wbuf, &sql);
                att.push_expect(Expect {
                    source: Source::Apply,
                });
            }
            tenancy::renew_token(&self.live, self.info.grant.as_ref(), att, true);
        }
    }

    /// One more statement run by the client (and its tenant).
    pub(super) fn count_query(&self) {
        self.app.metrics.queries.inc();
        if let Some(c) = &self.tenant_queries {
            c.inc();
        }
    }
}

/// The result cache: an extended batch that may write carries the announcement of what it
/// writes to every sidecar in its own transaction, before its Sync (delivered only if that
/// transaction commits; skipped with the rest of the batch if a statement fails). Not during
/// COPY, nor on a replica.
fn carry_announcement(att: &mut Attachment) {
    let copying = att.batch.as_ref().is_none_or(|b| b.copy_in) || att.in_simple_copy_in();
    if copying || att.upstream.is_replica() {
        return;
    }
    if let Some(sql) = att.cache.carry() {
        resync::inject_extended(att, &sql);
    }
}

/// The result cache: a simple Query that may write, sent inside an explicit transaction with
/// nothing in flight (its status is known: in progress, not failed), carries the announcement
/// in that transaction, ahead of it (delivered only if the transaction commits). An autocommit
/// write cannot: a statement before it would commit first; it is announced after it ends.
fn carry_in_transaction(att: &mut Attachment) {
    let healthy = att.status == TransactionStatus::InTransaction && att.between_requests();
    if !healthy || att.upstream.is_replica() {
        return;
    }
    if let Some(sql) = att.cache.carry() {
        resync::inject(att, &sql);
    }
}
