//! The server side of the relay: each backend message is forwarded, swallowed (replies to
//! what the sidecar injected), inspected (ReadyForQuery, ParameterStatus, errors, notifications,
//! the session-state capture) or answered in its place by a reply the sidecar synthesized; and
//! once the client's transaction is over, the session state is resynchronised and the server
//! connection released.

use super::*;
use bytes::BytesMut;

/// Parameters a hot standby reports differently from its primary.
const STANDBY_PARAMETERS: &[&str] = &[
    "in_hot_standby",
    "default_transaction_read_only",
    "transaction_read_only",
];

impl Relay {
    /// Scans what the server sent: forwards or swallows each message, tracks ReadyForQuery,
    /// and releases the server connection when the client no longer needs it.
    pub(super) async fn on_server_bytes(
        &mut self,
        which: Which,
    ) -> Result<Option<End>, RelayError> {
        self.forward_replies(which).await?;
        if self.held.is_empty() {
            return Ok(None);
        }
        // Requests held for another server connection may run now.
        let end = self.run_held().await?;
        self.finish_client_turn().await?;
        Ok(end)
    }

    async fn forward_replies(&mut self, which: Which) -> Result<(), RelayError> {
        let max = self.live.config.max_message_size;
        let Some(att) = attachment(which, &mut self.phase, &mut self.earlier) else {
            return Ok(());
        };
        let metrics = &self.app.metrics;
        let cache = self.cache.as_deref();
        let client = &mut self.client;
        let statements = &mut self.statements;
        let replies = &mut self.replies;
        let state = &mut self.info.state;
        let notifier = &self.info.database.primary.notifier;
        let notifications = &mut self.notifications;
        // Under tenant enforcement, channels arrive as `<tenant>.<channel>`.
        let channel_prefix = &self.channel_prefix;
        let ctx = Context {
            metrics,
            notifier,
            channel_prefix: channel_prefix.as_deref(),
            transaction_mode: self.mode == PoolMode::Transaction,
        };
        let mut cut = 0usize;
        loop {
            // Most turns have neither to do (and make no future then).
            if att.passthrough.is_some() || att.synthesized_due() {
                match stream_through(att, client, &mut cut, metrics).await? {
                    Through::MessageDone => continue,
                    Through::NeedMore => break,
                    Through::AtMessage => {}
                }
            }
            if skip_forwarded(att, &mut cut) {
                continue;
            }
            let conn = att.server.conn_mut();
            let Some(header) = peek_header(&conn.rbuf[cut..]).map_err(RelayError::ServerFrame)?
            else {
                break;
            };
            if header.tag == COPY_IN_RESPONSE_TAG && att.note_copy_in() {
                // The client's Sync the server now ignores gets no reply; what the sidecar
                // answers itself behind it goes before the COPY begins.
                replies.server_done(att.upstream);
                emit(client, att.server.conn_mut(), &mut cut, metrics).await?;
                render_due(client, replies, statements, att.status, metrics).await?;
            }
            let capturing = matches!(
                att.expect.front(),
                Some(Expect {
                    source: Source::Capture
                })
            );
            let conn = att.server.conn_mut();
            let inspected =
                always_inspected(header.tag) || (capturing && header.tag == DATA_ROW_TAG);
            if inspected && header.frame_len > max {
                return Err(RelayError::ServerFrame(FrameError::TooLarge {
                    tag: header.tag,
                    len: header.frame_len,
                    max,
                }));
            }
            if inspected && conn.rbuf.len() - cut < header.frame_len {
                break;
            }
            // Each message is matched once, when it is complete or starts streaming.
            let reply = match_pending(att, statements, replies, header.tag)
                .unwrap_or_else(|| att.expect.front().map_or(Reply::Forward, Expect::reply));
            if !inspected {
                let conn = att.server.conn_mut();
                if reply == Reply::Forward && conn.rbuf.len() - cut >= header.frame_len {
                    // Whole and forwarded (most rows): passed on with the bytes before it.
                    att.cache
                        .record(att.readies + 1, &conn.rbuf[cut..cut + header.frame_len]);
                    cut += header.frame_len;
                    continue;
                }
                att.passthrough = Some(Passthrough {
                    remaining: header.frame_len,
                    reply,
                });
                continue;
            }
            let mut reply = reply;
            let recorded = record_inspected(att, header.tag);
            let range = cut + HEADER_LEN..cut + header.frame_len;
            let Inspected {
                own_notifications,
                message: notification,
            } = inspect(att, &ctx, state, replies, header.tag, range, &mut reply)?;
            let conn = att.server.conn_mut();
            if own_notifications {
                // The client's transaction notified channels it listens to: Postgres
                // delivers those before this ReadyForQuery, and so does the sidecar.
                emit(client, conn, &mut cut, metrics).await?;
                deliver_own_notifications(client, notifier, notifications, channel_prefix, metrics)
                    .await?;
            }
            if let Some(recording) = recorded {
                finish_recording(att, *recording, reply);
            }
            if let (READY_FOR_QUERY_TAG, Some(cache)) = (header.tag, cache) {
                att.cache.forget_ended(cache);
            }
            let conn = att.server.conn_mut();
            match reply {
                Reply::Forward => cut += header.frame_len,
                Reply::Swallow => {
                    emit(client, conn, &mut cut, metrics).await?;
                    conn.consume(header.frame_len);
                }
            }
            if header.tag == READY_FOR_QUERY_TAG {
                // Replies the sidecar gives itself, now that their turn has come (no future
                // when everything goes without waiting and none is due).
                if !emit_now(client, att.server.conn_mut(), &mut cut, metrics)? {
                    emit(client, att.server.conn_mut(), &mut cut, metrics).await?;
                }
                if replies.has_due() {
                    render_due(client, replies, statements, att.status, metrics).await?;
                }
            }
            if let Some(message) = notification {
                client.write_through(&message).await?;
                metrics.client_bytes_sent.inc_by(message.len() as u64);
            }
        }
        let conn = att.server.conn_mut();
        if !emit_now(client, conn, &mut cut, metrics)? {
            emit(client, conn, &mut cut, metrics).await?;
        }
        self.after_replies(which).await
    }

    /// The connection has answered everything and the client is outside a transaction (in
    /// transaction mode): read-your-writes notes the client's writes, the session state is
    /// captured if it may have changed, then the connection goes back to its pool — or stays,
    /// when what the client holds pins it.
    async fn after_replies(&mut self, which: Which) -> Result<(), RelayError> {
        let transaction_mode = self.mode == PoolMode::Transaction;
        let wrote = matches!(attachment(which, &mut self.phase, &mut self.earlier),
            Some(att) if transaction_mode && att.is_quiet() && !att.cache.to_announce.is_none());
        if wrote && self.announce_writes(which) {
            // Released once the announcement is answered.
            return Ok(());
        }
        let Some(att) = attachment(which, &mut self.phase, &mut self.earlier) else {
            return Ok(());
        };
        if self.mode == PoolMode::Transaction && att.is_quiet() {
            if std::mem::take(&mut att.wrote) {
                if let Some(topology) = &self.topology {
                    let shard = self.info.database.shard.unwrap_or(0);
                    if self.last_writes.len() <= shard {
                        self.last_writes.resize(shard + 1, 0);
                    }
                    self.last_writes[shard] = topology.note_write(self.info.tenant.as_deref());
                }
            }
            // Session state this client changed is captured and cleaned before anyone else
            // gets the connection; state that cannot be pooled keeps it.
            let (step, channels) = resync::on_quiet(att, &mut self.info.state, &self.app.metrics);
            if let Some(added) = channels.filter(|c| !c.is_subset(&self.info.state.channels)) {
                // LISTENs that committed inside a transaction.
                let channels: std::collections::BTreeSet<String> =
                    self.info.state.channels.union(&added).cloned().collect();
                self.info.state.channels = channels.clone();
                self.subscribe(channels, true).await;
            }
            if step != Quiet::Release {
                return Ok(());
            }
            self.release(which).await;
            if which == Which::Current && self.app.is_draining() {
                return Err(RelayError::Shutdown);
            }
        }
        Ok(())
    }
}

impl Relay {
    /// The server stayed silent past the query-timeout cancel and its grace period (frozen):
    /// every request the client waits for ends with 57014, and the server connection is
    /// closed, never reused. Inside a message already half forwarded the client cannot be told
    /// cleanly: the session ends as when the upstream is lost.
    pub(super) async fn abandon(&mut self, which: Which) -> Result<(), RelayError> {
        let Some(att) = self.take_attachment(which).await else {
            return Ok(());
        };
        self.app.metrics.error("query_abandoned");
        tracing::warn!(
            "the server did not answer after a query-timeout cancel; closing its connection"
        );
        if att.passthrough.is_some() {
            return Err(RelayError::Server(crate::pool::ServerError::Closed));
        }
        let cancelled = ErrorReport::error(
            SqlState::QUERY_CANCELED,
            "canceling statement due to statement timeout: the server did not answer",
        );
        self.fail_owed(&att, |_, out| cancelled.write(out));
        if att.batch.is_some() && matches!(self.phase, Phase::Detached) {
            // An extended batch the client has not ended yet: the rest up to its Sync is
            // dropped, and the Sync answered.
            cancelled.write(&mut self.client.wbuf);
            self.phase = Phase::SkipToSync;
        }
        // Dropping the attachment closes the server connection.
        drop(att);
        self.write_client().await
    }

    /// Takes one of the client's server connections out of the session (lost, or given up):
    /// without its current one the client is detached, unless it still has the one it moved on
    /// from, which becomes current.
    pub(super) async fn take_attachment(&mut self, which: Which) -> Option<Box<Attachment>> {
        match which {
            Which::Current => match std::mem::replace(&mut self.phase, Phase::Detached) {
                Phase::Attached(att) => {
                    self.info.key.detach().await;
                    if let Some(earlier) = self.earlier.take() {
                        self.phase = Phase::Attached(earlier);
                    }
                    Some(att)
                }
                other => {
                    self.phase = other;
                    None
                }
            },
            Which::Earlier => self.earlier.take(),
        }
    }

    /// One of the client's server connections has answered everything: back to its pool (once
    /// no cancel for it is in flight), or closed when its replies are uncertain.
    async fn release(&mut self, which: Which) {
        if let Some(mut att) = self.take_attachment(which).await {
            self.spare = att.spare();
            if att.uncertain {
                // Dropping a checkout closes its connection.
                tracing::debug!("closing a server connection whose replies are uncertain");
            } else {
                att.server.release();
            }
        }
    }
}

impl Relay {
    /// A server connection that is gone owed the client replies: each request it owed gets
    /// `report(i, …)` (the i-th) and a ReadyForQuery, a Sync it would have ignored gets
    /// nothing, and the replies the sidecar gives itself between them keep their place.
    pub(super) fn fail_owed(&mut self, att: &Attachment, report: impl Fn(usize, &mut BytesMut)) {
        let out = &mut self.client.wbuf;
        for (i, answered) in att.expect.client_entries().enumerate() {
            if answered {
                report(i, out);
                backend::ready_for_query(out, TransactionStatus::Idle);
            }
            self.replies.server_done(att.upstream);
            while let Some(local) = self.replies.pop_due() {
                local.render(out, &mut self.statements, TransactionStatus::Idle);
            }
        }
    }
}

/// Writes the replies the sidecar gives itself that are due now (their turn has come), with
/// the transaction status `status`.
async fn render_due(
    client: &mut ClientConn,
    replies: &mut queue::ReplyQueue,
    statements: &mut ClientStatements,
    status: TransactionStatus,
    metrics: &crate::metrics::Metrics,
) -> Result<(), RelayError> {
    while let Some(local) = replies.pop_due() {
        let mut answer = BytesMut::new();
        local.render(&mut answer, statements, status);
        client.write_through(&answer).await?;
        metrics.client_bytes_sent.inc_by(answer.len() as u64);
    }
    Ok(())
}

/// What an inspected message means for a reply being recorded: an error spoils it; its
/// ReadyForQuery ends it (returned, to be finished once the message is read). Other inspected
/// messages (notices, ParameterStatus) are not replayed.
fn record_inspected(att: &mut Attachment, tag: u8) -> Option<Box<crate::cache::Recording>> {
    let front = att.readies + 1;
    match tag {
        ERROR_RESPONSE_TAG => {
            if let Some(recording) = att.cache.recording_for(front) {
                recording.spoil();
            }
            None
        }
        READY_FOR_QUERY_TAG => att
            .cache
            .recording
            .take_if(|(n, _)| *n == front)
            .map(|(_, recording)| recording),
        _ => None,
    }
}

/// A recorded reply is complete: stored if it reached the client, came from the primary and
/// ended outside a transaction (or inside one declared READ ONLY, where the cache may serve).
fn finish_recording(att: &Attachment, recording: crate::cache::Recording, reply: Reply) {
    let settled = att.status == TransactionStatus::Idle
        || (att.status == TransactionStatus::InTransaction && att.cache.read_only());
    // Only what the primary answered (a replica may lag behind an invalidation).
    let fresh = !att.upstream.is_replica();
    recording.finish(reply == Reply::Forward && settled && fresh);
}

/// Where [`stream_through`] left the server's bytes.
enum Through {
    /// A message streamed through ended: look again.
    MessageDone,
    /// Everything buffered belongs to a message still streaming: read more.
    NeedMore,
    /// At the start of a message.
    AtMessage,
}

/// Replies the sidecar gives itself go out at their place, between messages; then the rest of
/// a message being streamed through is forwarded (or swallowed) as far as it has arrived.
async fn stream_through(
    att: &mut Attachment,
    client: &mut ClientConn,
    cut: &mut usize,
    metrics: &crate::metrics::Metrics,
) -> Result<Through, RelayError> {
    while att.passthrough.is_none() {
        let Some(bytes) = att.pop_current_synthesized() else {
            break;
        };
        emit(client, att.server.conn_mut(), cut, metrics).await?;
        client.write_through(&bytes).await?;
        metrics.client_bytes_sent.inc_by(bytes.len() as u64);
    }
    let conn = att.server.conn_mut();
    let Some(mut pt) = att.passthrough.take() else {
        return Ok(Through::AtMessage);
    };
    let take = pt.remaining.min(conn.rbuf.len() - *cut);
    if pt.reply == Reply::Swallow {
        emit(client, conn, cut, metrics).await?;
        conn.consume(take);
    } else {
        att.cache
            .record(att.readies + 1, &conn.rbuf[*cut..*cut + take]);
        *cut += take;
    }
    pt.remaining -= take;
    if pt.remaining > 0 {
        att.passthrough = Some(pt);
        return Ok(Through::NeedMore);
    }
    Ok(Through::MessageDone)
}

/// Whole messages at `cut` that are only forwarded, passed over at once (a reply's rows):
/// what the message loop would do with each of them one by one, when none is inspected, none
/// is recorded for the cache, the connection owes the client the reply in progress, and the
/// extended message each answers (if any) is forwarded too. Stops at anything else, which the
/// loop looks at. True when a reply the sidecar gives itself became due (the loop sends it
/// first).
fn skip_forwarded(att: &mut Attachment, cut: &mut usize) -> bool {
    let plain = att.passthrough.is_none()
        && att.cache.recording.is_none()
        && att
            .expect
            .front()
            .is_some_and(|e| e.reply() == Reply::Forward);
    if !plain {
        return false;
    }
    loop {
        let rbuf = &att.server.conn_mut().rbuf;
        let Ok(Some(header)) = peek_header(&rbuf[*cut..]) else {
            return false;
        };
        let special = always_inspected(header.tag) || header.tag == COPY_IN_RESPONSE_TAG;
        if special || rbuf.len() - *cut < header.frame_len {
            return false;
        }
        let before = att.pending.len();
        match att.current_pending() {
            None => {}
            Some(Pending::Reply {
                reply: Reply::Forward,
                ..
            }) => {
                advance_pending(att, header.tag);
            }
            Some(_) => return false,
        }
        *cut += header.frame_len;
        // Only an extended reply done can make one the sidecar gives itself due.
        if att.pending.len() < before && att.synthesized_due() {
            return true;
        }
    }
}

/// Backend messages the relay always reads whole and looks into.
fn always_inspected(tag: u8) -> bool {
    matches!(
        tag,
        READY_FOR_QUERY_TAG
            | PARAMETER_STATUS_TAG
            | ERROR_RESPONSE_TAG
            | NOTICE_RESPONSE_TAG
            | NOTIFICATION_RESPONSE_TAG
    )
}

/// What the relay needs to inspect a message.
struct Context<'a> {
    metrics: &'a crate::metrics::Metrics,
    notifier: &'a crate::pool::notify::Notifier,
    channel_prefix: Option<&'a str>,
    transaction_mode: bool,
}

/// What inspecting one whole message decided, besides whether it is forwarded.
#[derive(Default)]
struct Inspected {
    /// Deliver the client's own notifications before this ReadyForQuery.
    own_notifications: bool,
    /// A message for the client in this one's place (a notification, a rewritten error).
    message: Option<Bytes>,
}

/// Looks at one whole message of the kinds the relay decodes (ReadyForQuery, ParameterStatus,
/// ErrorResponse, NotificationResponse, the session-state capture's rows; notices pass): the
/// attachment, the session state and the client's reply queue follow it, and `reply` says
/// whether the client gets it.
fn inspect(
    att: &mut Attachment,
    ctx: &Context<'_>,
    state: &mut crate::session::state::SessionState,
    replies: &mut queue::ReplyQueue,
    tag: u8,
    range: std::ops::Range<usize>,
    reply: &mut Reply,
) -> Result<Inspected, RelayError> {
    let mut out = Inspected::default();
    let frame_len = range.len() + HEADER_LEN;
    let conn = att.server.conn_mut();
    let body = &conn.rbuf[range];
    match tag {
        READY_FOR_QUERY_TAG => {
            let status = body.first().copied();
            let client_slot_done = ready(att, ctx, state, status, frame_len, reply, &mut out)?;
            // The client's request is answered; Syncs the server ignored during COPY never
            // will be.
            if client_slot_done {
                replies.server_done(att.upstream);
            }
            while att.skip_unanswered(false) {
                replies.server_done(att.upstream);
            }
        }
        PARAMETER_STATUS_TAG => {
            if let Some((name, value)) = parse_parameter_status(body) {
                let (name, value) = (name.to_owned(), value.to_owned());
                conn.note_parameter(&name, &value);
                // Applying the client's settings tells it only what it did not know.
                let applying = matches!(
                    att.expect.front(),
                    Some(Expect {
                        source: Source::Apply
                    })
                );
                if applying && state.told_otherwise(&name, &value) {
                    *reply = Reply::Forward;
                }
                if att.upstream.is_replica() && STANDBY_PARAMETERS.contains(&name.as_str()) {
                    // The client's session is the primary's: it never hears of standby.
                    *reply = Reply::Swallow;
                }
                if *reply == Reply::Forward {
                    state.reported(&name, &value);
                }
            }
        }
        NOTIFICATION_RESPONSE_TAG => {
            // The client's whatever reply it is in: sent on with the sender's PID
            // translated, unless the LISTEN connection delivers this channel already.
            *reply = Reply::Swallow;
            out.message = ctx
                .notifier
                .translate(body)
                .filter(|(_, channel)| !(ctx.transaction_mode && state.channels.contains(channel)))
                .and_then(|(message, _)| tenancy::for_client(ctx.channel_prefix, message));
        }
        DATA_ROW_TAG => {
            if let Resync::Capturing { rows, .. } = &mut att.resync {
                if let Err(e) = rows.add_row(body) {
                    tracing::warn!(error = %e, "reading the session state failed");
                    resync::injected_failed(att);
                }
            }
        }
        ERROR_RESPONSE_TAG => {
            let fields = ErrorFields::parse(body);
            error(att, ctx, fields, reply, &mut out)
        }
        _ => {}
    }
    Ok(out)
}

/// A ReadyForQuery: the transaction status, and the expected entry it answers; whether that
/// was a request of the client's (its slot is done).
fn ready(
    att: &mut Attachment,
    ctx: &Context<'_>,
    state: &crate::session::state::SessionState,
    status: Option<u8>,
    frame_len: usize,
    reply: &mut Reply,
    out: &mut Inspected,
) -> Result<bool, RelayError> {
    let mut client_slot_done = false;
    let status = status
        .and_then(TransactionStatus::from_byte)
        .ok_or_else(|| {
            RelayError::ServerFrame(FrameError::BadLength {
                tag: READY_FOR_QUERY_TAG,
                len: frame_len as i32 - 1,
            })
        })?;
    att.status = status;
    if status == TransactionStatus::Idle {
        att.began = None;
    }
    let done = att.expect.pop_front();
    if done.is_some() {
        att.readies += 1;
    }
    if status == TransactionStatus::Idle {
        att.cache.transaction_ended(att.readies);
    }
    let readies = att.readies;
    // Anything still pending for a finished batch was skipped by the server.
    att.pending.retain(|p| p.after() >= readies);
    match done {
        Some(done) => {
            client_slot_done = done.has_client_slot();
            if let Source::Query { .. } = done.source {
                // Whatever COPY the Query ran is over.
                att.simple_copy_in = None;
            }
            *reply = done.reply();
            if let Some(sent) = done.sent() {
                ctx.metrics
                    .query_duration
                    .observe(sent.elapsed().as_secs_f64());
            }
            if done.statements() > 0 && status == TransactionStatus::Idle {
                ctx.metrics.transactions.inc();
            }
            out.own_notifications = *reply == Reply::Forward
                && status == TransactionStatus::Idle
                && std::mem::take(&mut att.notified)
                && ctx.transaction_mode
                && !state.channels.is_empty();
        }
        None => {
            // One the sidecar could not foresee (a Sync Postgres answered after
            // a COPY it ended with an error): the client gets it, as from
            // Postgres.
            tracing::debug!("ReadyForQuery with nothing expected");
            *reply = Reply::Forward;
        }
    }
    Ok(client_slot_done)
}

/// An ErrorResponse: counted; a failed injected statement, an unsolicited error, a guard
/// refusal or a replica's FATAL is noted (the latter two reach the client rewritten).
fn error(
    att: &mut Attachment,
    ctx: &Context<'_>,
    fields: ErrorFields,
    reply: &mut Reply,
    out: &mut Inspected,
) {
    ctx.metrics.error("server_error");
    ctx.metrics.server_error(&fields.code);
    if att.simple_copy_in.is_some() {
        // The COPY failed: Syncs the client sent during it are answered if
        // the server read them after the error, ignored if before.
        att.uncertain = true;
    }
    let unsolicited = att.expect.is_empty() && att.pending.is_empty() && fields.severity != "FATAL";
    if *reply == Reply::Swallow {
        tracing::warn!(code = %fields.code, message = %fields.message, "a statement the sidecar sent on a server connection failed");
        resync::injected_failed(att);
    } else if fields.code == SqlState::INSUFFICIENT_PRIVILEGE.code()
        && fields.detail == guard::REFUSAL_DETAIL
    {
        // A tenant-guard refusal the server raised so the transaction fails
        // there too: the client gets it as the sidecar's own error.
        let mut error = bytes::BytesMut::new();
        ErrorReport::error(SqlState::INSUFFICIENT_PRIVILEGE, fields.message).write(&mut error);
        out.message = Some(error.freeze());
        *reply = Reply::Swallow;
    } else if att.upstream.is_replica() && fields.severity == "FATAL" {
        // The replica is going away, not the client's session: the client
        // gets an ERROR and keeps its connection.
        let mut error = bytes::BytesMut::new();
        ErrorReport::error(SqlState::CONNECTION_FAILURE, fields.message)
            .with_code_text(&fields.code)
            .write(&mut error);
        out.message = Some(error.freeze());
        *reply = Reply::Swallow;
        att.replica_said_fatal = true;
    }
    if unsolicited {
        // An error nothing asked for (a message without a reply was refused): the server may
        // now skip everything up to a Sync, so one is sent (its ReadyForQuery swallowed)
        // before the connection serves anything else.
        att.inject_sync();
    }
}

/// Matches a server message to the pending reply it answers, if the server is working on an
/// extended message now; returns what to do with the message. An ErrorResponse ends the batch:
/// the server skips the rest, so the rest's pending replies go, and statements whose Parse
/// failed or was skipped are forgotten.
fn match_pending(
    att: &mut Attachment,
    statements: &mut ClientStatements,
    replies: &mut queue::ReplyQueue,
    tag: u8,
) -> Option<Reply> {
    if !matches!(att.current_pending(), Some(Pending::Reply { .. })) {
        return None;
    }
    if tag == ERROR_RESPONSE_TAG {
        loop {
            let readies = att.readies;
            while att.pending.front().is_some_and(|p| p.after() == readies) {
                if let Some(Pending::Reply {
                    parse_of: Some((client_name, proxy)),
                    ..
                }) = att.pending.pop_front()
                {
                    att.server.conn_mut().prepared.remove(&proxy);
                    if !client_name.is_empty() {
                        statements.forget(&client_name);
                    }
                }
            }
            // A Query or FunctionCall the client sent before the batch's Sync is discarded
            // too: no ReadyForQuery comes for it, and the batch's messages after it are
            // skipped as well.
            if !att.skip_unanswered(true) {
                break;
            }
            replies.server_done(att.upstream);
        }
        // Errors always reach the client.
        return Some(Reply::Forward);
    }
    advance_pending(att, tag)
}

/// The pending extended reply a message (not an error) belongs to moves on past it: it is
/// done, or awaits more. Its [`Reply`]; `None` when no pending reply is current.
fn advance_pending(att: &mut Attachment, tag: u8) -> Option<Reply> {
    let Some(Pending::Reply { awaited, reply, .. }) = att.current_pending() else {
        return None;
    };
    let (awaited, reply) = (*awaited, *reply);
    match awaited.advance(tag) {
        Some(next) => {
            if let Some(Pending::Reply { awaited, .. }) = att.pending.front_mut() {
                *awaited = next;
            }
        }
        None => {
            att.pending.pop_front();
        }
    }
    Some(reply)
}

/// How long a ReadyForQuery waits for the client's own notifications to come round through the
/// database's LISTEN connection.
const OWN_NOTIFICATIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes the notifications that reached the client's queue up to now, once the LISTEN
/// connection has handed on everything committed so far (a barrier).
async fn deliver_own_notifications(
    client: &mut ClientConn,
    notifier: &Arc<crate::pool::notify::Notifier>,
    notifications: &mut Option<(Sink, mpsc::Receiver<Bytes>)>,
    channel_prefix: &Option<String>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), RelayError> {
    let Some((_, rx)) = notifications else {
        return Ok(());
    };
    if !notifier.barrier(OWN_NOTIFICATIONS_WAIT).await {
        tracing::debug!("the LISTEN connection did not answer a barrier; notifications may follow");
    }
    while let Ok(message) = rx.try_recv() {
        if let Some(message) = tenancy::for_client(channel_prefix.as_deref(), message) {
            client.write_through(&message).await?;
            metrics.client_bytes_sent.inc_by(message.len() as u64);
        }
    }
    Ok(())
}

/// Writes the first `cut` bytes of the server's buffer to the client and consumes them.
async fn emit(
    client: &mut ClientConn,
    conn: &mut crate::pool::ServerConn,
    cut: &mut usize,
    metrics: &crate::metrics::Metrics,
) -> Result<(), RelayError> {
    if !emit_now(client, conn, cut, metrics)? {
        client.write_through(&conn.rbuf[..*cut]).await?;
        metrics.client_bytes_sent.inc_by(*cut as u64);
        conn.consume(*cut);
        *cut = 0;
    }
    Ok(())
}

/// [`emit`] as far as it goes without waiting: true when everything before `cut` went.
fn emit_now(
    client: &mut ClientConn,
    conn: &mut crate::pool::ServerConn,
    cut: &mut usize,
    metrics: &crate::metrics::Metrics,
) -> Result<bool, RelayError> {
    if *cut == 0 {
        return Ok(true);
    }
    let n = client.write_through_now(&conn.rbuf[..*cut])?;
    metrics.client_bytes_sent.inc_by(n as u64);
    conn.consume(n);
    *cut -= n;
    Ok(*cut == 0)
}
