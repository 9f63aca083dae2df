//! Running one client frame of a request the plan sent on (or one that continues the attached
//! server connection): what it means (signals of issued PIDs, the tenant guard, its effects on
//! the session), LISTEN bookkeeping, attaching a server connection for its target, what the
//! connection needs before it (token, held BEGIN, session state), sending it, and what replies
//! to expect. `on_client_frame` dispatches; each step is its own function.

use super::*;
use crate::session::effects::Effects;

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

impl Relay {
    /// Runs one client frame; `target` is where its request goes when no server connection is
    /// attached.
    pub(super) async fn on_client_frame(
        &mut self,
        (frame, classified): Incoming,
        target: Target,
    ) -> Result<Option<End>, RelayError> {
        let role = frontend::role(frame.tag());
        match role {
            MessageRole::Terminate if self.owes_replies() => {
                self.closing = true;
                return Ok(None);
            }
            MessageRole::Terminate => return Ok(Some(End::ClientLeft)),
            MessageRole::Unknown => return Err(RelayError::UnknownMessage(frame.tag())),
            MessageRole::Copy => {
                self.forward_copy(frame);
                return Ok(None);
            }
            _ => {}
        }
        let understood = self.understand(frame, classified).await;
        if let Phase::SkipToSync = self.phase {
            if role == MessageRole::Sync {
                backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle);
                self.phase = Phase::Detached;
            }
            return Ok(None);
        }
        if role == MessageRole::Request && self.deallocated_protocol_statement(&understood.effects)
        {
            return Ok(None);
        }
        self.follow_listens(&understood.effects).await;
        let Some(held_begin) = self.ensure_attached(target, role).await else {
            return Ok(None);
        };
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
        Ok(None)
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

    /// What a frame means: signals of the PIDs this sidecar issued are acted on (and the text
    /// replaced by one that answers the outcome), the tenant guard passes, refuses or rewrites
    /// it, and its statement's effects and routing are read from its classification (made
    /// again only for a text the sidecar replaced).
    async fn understand(&mut self, frame: Frame, classified: Option<Classified>) -> Understood {
        let (frame, classified, signal) = match frame.tag() {
            // Signals are rare: their futures are boxed, so every request's is small.
            frontend::QUERY_TAG => match self.signal_query(&frame, classified.as_ref()) {
                Some((pid, call)) => {
                    let replaced = Box::pin(self.answer_signal_query(&frame, pid, call)).await;
                    (replaced, None, None)
                }
                None => (frame, classified, None),
            },
            frontend::PARSE_TAG => match self.signal_parse(&frame, classified.as_ref()) {
                Some((replaced, signal)) => (replaced, None, Some(signal)),
                None => (frame, classified, None),
            },
            frontend::BIND_TAG => {
                let signal = bound_statement(frame.body())
                    .and_then(|name| self.statements.effects_of(name))
                    .and_then(|effects| effects.signal);
                match signal {
                    Some((kind, n)) => {
                        (Box::pin(self.signal_bind(frame, kind, n)).await, None, None)
                    }
                    None => (frame, None, None),
                }
            }
            _ => (frame, None, None),
        };
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
        &self,
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
        let effects = Effects::of(sql, classified, client_prepared, cache);
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
        let held_begin = match std::mem::replace(&mut self.phase, Phase::Detached) {
            Phase::Detached => None,
            Phase::BeginHeld(begin) => Some(begin),
            attached => {
                self.phase = attached;
                return Some(None);
            }
        };
        match self.attach(target).await {
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
