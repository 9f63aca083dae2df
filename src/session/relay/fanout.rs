//! A read on several shards, in the relay: the client's request (a simple Query, or
//! [Parse] Bind [Describe] Execute Sync) is planned by `sql::fanout`, sent to every shard
//! it needs on a connection of each (prepared for the client like any checkout: tenant,
//! token, settings), their replies are read in parallel and merged (`merge`) into the one
//! reply the client gets — streamed when the merge allows. An error from any shard is the
//! client's error (the other shards' statements are cancelled, their connections closed); a
//! shard that cannot be reached gives 57P03 unless the statement says
//! `/* pgsidecar: partial_ok */`. Runs only between transactions with nothing in flight.

use std::collections::HashSet;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::*;
use crate::merge::{self, MergeError, Merger, Row};
use crate::protocol::bind::Bind;
use crate::sql::fanout::FanOut;

/// Past this much the client's buffer is written out while shards still send.
const CLIENT_CHUNK: usize = 64 * 1024;
/// Rows in flight from the shards to the merge (backpressure beyond).
const EVENTS_IN_FLIGHT: usize = 256;
/// The largest message a shard may send in a merged reply (Postgres's own bound).
const MAX_SHARD_MESSAGE: usize = 1 << 30;

/// What the client's request asks.
pub(super) struct Asked {
    /// The statement's text.
    pub(super) text: String,
    /// The Parse's parameter types (count and OIDs), extended protocol only.
    pub(super) parameter_types: Option<Bytes>,
    /// The Bind (extended protocol only).
    pub(super) bind: Option<Bytes>,
    /// Whether the client's request has a Parse (ParseComplete), a Describe (RowDescription).
    pub(super) parse: bool,
    pub(super) describe: bool,
    pub(super) partial_ok: bool,
}

/// What a shard's connection sends back for the statement.
enum Event {
    Described(Bytes),
    Row(Bytes),
    Error(Bytes),
    Notice(Bytes),
}

/// Why a statement run on several shards ends in an error (reads, writes, COPY).
pub(super) enum Failure {
    /// A shard's own ErrorResponse body.
    Shard(Bytes),
    Sidecar(ErrorReport),
}

impl From<MergeError> for Failure {
    fn from(e: MergeError) -> Failure {
        Failure::Sidecar(ErrorReport::error(e.sqlstate(), e.to_string()))
    }
}

impl Failure {
    /// The client's ErrorResponse.
    pub(super) fn write(&self, out: &mut BytesMut) {
        match self {
            Failure::Shard(body) => {
                frontend::append_message(out, backend::ERROR_RESPONSE_TAG, &[body])
            }
            Failure::Sidecar(report) => report.write(out),
        }
    }
}

/// An ErrorResponse body (08006) in the sidecar's name, as a shard's would come: a shard's
/// connection lost or unreadable.
pub(super) fn lost_body(message: &str) -> Bytes {
    let mut body = BytesMut::new();
    ErrorReport::error(SqlState::CONNECTION_FAILURE, message.to_string()).write(&mut body);
    body.split_off(HEADER_LEN).freeze()
}

impl Relay {
    /// Runs the first `len` held frames (one read request) on shards `on` and answers it with
    /// the merged reply.
    pub(super) async fn fan_out(&mut self, len: usize, on: &[usize]) -> Result<(), RelayError> {
        let frames: Vec<(Frame, Option<Classified>)> =
            (0..len).filter_map(|_| self.held.pop_front()).collect();
        let asked = match self.asked(&frames) {
            Ok(asked) => asked,
            Err(report) => {
                self.answer_in_turn(queue::LocalReply::Failed(report));
                return Ok(());
            }
        };
        let plan = match crate::sql::fanout::plan(&asked.text) {
            Ok(plan) => plan,
            Err(message) => {
                self.app.metrics.error("shard_refused");
                let report = ErrorReport::error(SqlState::FEATURE_NOT_SUPPORTED, message);
                self.answer_in_turn(queue::LocalReply::Failed(report));
                return Ok(());
            }
        };
        let mut out = BytesMut::new();
        if asked.parse {
            out.extend_from_slice(backend::PARSE_COMPLETE);
        }
        if asked.bind.is_some() {
            out.extend_from_slice(backend::BIND_COMPLETE);
        }
        let (outcome, ran) = self.run_fan_out(&asked, &plan, on, out).await?;
        if ran {
            self.adopt_request(&frames);
        }
        self.app.metrics.shards.ran("read", outcome.is_ok());
        self.end_across(outcome.map(|rows| format!("SELECT {rows}")))
            .await
    }

    /// The end of a statement run on several shards: its command tag or its error, then the
    /// client's ReadyForQuery (outside a transaction), written out.
    pub(super) async fn end_across(
        &mut self,
        outcome: Result<String, Failure>,
    ) -> Result<(), RelayError> {
        let out = &mut self.client.wbuf;
        match outcome {
            Ok(tag) => backend::command_complete(out, &tag),
            Err(failure) => failure.write(out),
        }
        backend::ready_for_query(out, TransactionStatus::Idle);
        self.write_client().await
    }

    /// The statement text, Bind and shape of a request that runs on several shards.
    pub(super) fn asked(
        &self,
        frames: &[(Frame, Option<Classified>)],
    ) -> Result<Asked, ErrorReport> {
        let mut asked = self.asked_unguarded(frames)?;
        // Statements run on several shards pass the tenant guard as any other does.
        match self.guard_text(asked.text.as_bytes(), None) {
            Ok(None) => {}
            Ok(Some(rewritten)) => asked.text = rewritten,
            Err(guard::Refusal(message)) => {
                return Err(ErrorReport::error(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    message,
                ))
            }
        }
        Ok(asked)
    }

    fn asked_unguarded(
        &self,
        frames: &[(Frame, Option<Classified>)],
    ) -> Result<Asked, ErrorReport> {
        let shape = || {
            ErrorReport::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "a statement that needs several shards must come as one Query, or as [Parse] \
                 Bind [Describe portal] Execute Sync with no row limit",
            )
        };
        let tags: Vec<u8> = frames.iter().map(|(f, _)| f.tag()).collect();
        let hinted = |classified: Option<&Classified>| {
            classified
                .and_then(|c| c.scan.hint.as_ref())
                .is_some_and(|h| h.get("partial_ok").is_some())
        };
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| shape());
        if let [(frame, classified)] = frames {
            if frame.tag() == frontend::QUERY_TAG {
                return Ok(Asked {
                    text: text(frontend::query_text(frame.body()).ok_or_else(shape)?)?,
                    parameter_types: None,
                    bind: None,
                    parse: false,
                    describe: true,
                    partial_ok: hinted(classified.as_ref()),
                });
            }
        }
        let shapes: [&[u8]; 4] = [b"PBDES", b"PBES", b"BDES", b"BES"];
        if !shapes.contains(&tags.as_slice()) {
            return Err(shape());
        }
        let mut asked = Asked {
            text: String::new(),
            parameter_types: None,
            bind: None,
            parse: false,
            describe: false,
            partial_ok: false,
        };
        let mut parsed: Option<(&[u8], Bytes, bool)> = None;
        for (frame, classified) in frames {
            let body = frame.body();
            match frame.tag() {
                frontend::PARSE_TAG => {
                    let (name, rest) = split_cstr(body).ok_or_else(shape)?;
                    let rest = frame.as_bytes().slice_ref(rest);
                    parsed = Some((name, rest, hinted(classified.as_ref())));
                    asked.parse = true;
                }
                frontend::BIND_TAG => {
                    let bind = Bind::parse(body).ok_or_else(shape)?;
                    if !bind.portal.is_empty() {
                        return Err(shape());
                    }
                    let (rest, hint) = match &parsed {
                        Some((name, rest, hint)) if *name == bind.statement => {
                            (rest.clone(), *hint)
                        }
                        Some(_) => return Err(shape()),
                        None => {
                            let rest = self.statement_body(bind.statement).ok_or_else(|| {
                                ErrorReport::error(
                                    SqlState("26000"),
                                    format!(
                                        "prepared statement \"{}\" does not exist",
                                        String::from_utf8_lossy(bind.statement)
                                    ),
                                )
                            })?;
                            let classified = split_cstr(&rest)
                                .map(|(sql, _)| self.live.classifier.classify(sql));
                            (rest, hinted(classified.as_ref()))
                        }
                    };
                    let (sql, types) = split_cstr(&rest).ok_or_else(shape)?;
                    asked.text = text(sql)?;
                    asked.parameter_types = Some(rest.slice_ref(types));
                    asked.partial_ok = hint;
                    asked.bind = Some(frame.as_bytes().slice(HEADER_LEN..));
                }
                frontend::DESCRIBE_TAG => {
                    if body != b"P\0" {
                        return Err(shape());
                    }
                    asked.describe = true;
                }
                frontend::EXECUTE_TAG if body != b"\0\0\0\0\0" => return Err(shape()),
                _ => {}
            }
        }
        Ok(asked)
    }

    /// Checks out a connection on each shard, runs the statement on them all and merges their
    /// replies into the client's buffer (written out as it grows). The number of rows sent,
    /// or why the reply ends in an error; and whether the statement ran (false: no connection
    /// for it).
    async fn run_fan_out(
        &mut self,
        asked: &Asked,
        plan: &FanOut,
        on: &[usize],
        mut out: BytesMut,
    ) -> Result<(Result<u64, Failure>, bool), RelayError> {
        let client_formats: Vec<i16> = match &asked.bind {
            Some(body) => Bind::parse(body)
                .map(|b| b.result_formats().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let request = shard_request(asked, plan, &client_formats);
        let budget = self
            .shards
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_MERGE_BYTES, |s| {
                s.max_merge_bytes
            });
        let mut attachments = Vec::with_capacity(on.len());
        let mut missing = Vec::new();
        for &n in on {
            let Some((database, attached)) = self.attach_shard(n).await else {
                continue;
            };
            match attached {
                Ok(mut att) => {
                    if database.bytewise_text.get().is_none() {
                        // Once per database: whether its text orders bytewise.
                        let sql = crate::pool::database::TEXT_ORDER_SQL;
                        if let Ok(rows) = att.server.conn_mut().query_rows(sql).await {
                            if let Some([Some(name), Some(other)]) = rows.first().map(Vec::as_slice)
                            {
                                database.note_text_order(name, other == "true");
                            }
                        }
                    }
                    att.wbuf.extend_from_slice(&request);
                    attachments.push(att);
                }
                Err(report) if report.code.as_ref() == SqlState::QUERY_CANCELED.0 => {
                    self.info.key.detach().await;
                    return Ok((Err(Failure::Sidecar(report)), false));
                }
                Err(report) if asked.partial_ok => {
                    tracing::debug!(shard = n, error = %report.message, "shard left out of a partial_ok read");
                    missing.push(n);
                }
                Err(report) => {
                    self.info.key.detach().await;
                    self.app.metrics.error("shard_unavailable");
                    let report = ErrorReport::error(
                        SqlState::CANNOT_CONNECT_NOW,
                        format!(
                            "shard {n} is not available ({}): the statement needs every shard; \
                             add /* pgsidecar: partial_ok */ to accept a result without its rows",
                            report.message
                        ),
                    );
                    return Ok((Err(Failure::Sidecar(report)), false));
                }
            }
        }
        for n in &missing {
            backend::warning(
                &mut out,
                &format!("shard {n} was not available: the result leaves out its rows"),
            );
        }
        self.client.wbuf.extend_from_slice(&out);
        let targets: Vec<_> = attachments.iter_mut().map(|a| a.cancel_target()).collect();
        // Sorted rows are merged as they come from each shard (a channel per shard, read in
        // Postgres's order); everything else in arrival order (one channel).
        let count = attachments.len();
        let sorted = plan.spec.grouping.is_none() && !plan.spec.order.is_empty();
        let (senders, events) = if sorted {
            let each = EVENTS_IN_FLIGHT.div_ceil(count.max(1)).max(16);
            let (senders, receivers): (Vec<_>, Vec<_>) =
                (0..count).map(|_| mpsc::channel(each)).unzip();
            (senders, Events::PerShard(receivers))
        } else {
            let (sender, receiver) = mpsc::channel(EVENTS_IN_FLIGHT);
            (vec![sender; count], Events::Shared(receiver))
        };
        let mut running: FuturesUnordered<_> = attachments
            .into_iter()
            .zip(senders)
            .enumerate()
            .map(|(slot, (att, sender))| run_shard(slot, att, sender))
            .collect();
        let finish_shards = async {
            let mut done = Vec::new();
            while let Some(finished) = running.next().await {
                done.push(finished);
            }
            done
        };
        let merging = Merging {
            spec: plan.spec.clone(),
            formats: client_formats,
            budget,
            describe: asked.describe,
            // Only the shards that answer: one left out (partial_ok) adds no rows to compare.
            collation_c: on
                .iter()
                .filter(|n| !missing.contains(n))
                .all(|&n| self.collation_is_c(n)),
            targets: targets.clone(),
        };
        let timeout = self.live.config.limits.query_timeout;
        let work = async { tokio::join!(finish_shards, merging.run(events, &mut self.client)) };
        let (done, merged) = match timeout.is_zero() {
            true => work.await,
            false => match tokio::time::timeout(timeout, work).await {
                Ok(finished) => finished,
                Err(_) => {
                    // The shards' connections are closed with their futures.
                    self.app.metrics.error("query_timeout");
                    for target in targets {
                        tokio::spawn(async move { crate::cancel::send_cancel(&target).await });
                    }
                    self.info.key.detach().await;
                    let report = ErrorReport::error(
                        SqlState::QUERY_CANCELED,
                        "canceling statement due to statement timeout",
                    );
                    return Ok((Err(Failure::Sidecar(report)), true));
                }
            },
        };
        let cancelled = merged.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        for (slot, att, clean) in done {
            // A connection whose statement was cancelled may see the cancel late: closed.
            if clean && !cancelled.contains(&slot) {
                att.server.release();
            }
        }
        self.info.key.detach().await;
        Ok((merged.map(|(result, _)| result)?, true))
    }

    /// Whether shard `n`'s database orders text as the C collation does (text is compared
    /// bytewise by the merge).
    fn collation_is_c(&self, n: usize) -> bool {
        self.shards
            .as_ref()
            .and_then(|s| s.databases.get(n))
            .is_some_and(|d| d.bytewise_text.get() == Some(&true))
    }
}

/// The messages each shard gets.
fn shard_request(asked: &Asked, plan: &FanOut, client_formats: &[i16]) -> BytesMut {
    let mut request = BytesMut::new();
    match (&asked.bind, &asked.parameter_types) {
        (Some(bind), Some(types)) => {
            frontend::append_message(
                &mut request,
                frontend::PARSE_TAG,
                &[b"\0", plan.sql.as_bytes(), b"\0", types],
            );
            let formats = plan.spec.shard_formats(client_formats);
            if let Some(bind) = Bind::parse(bind) {
                request.extend_from_slice(&bind.encode_unnamed(&formats));
            }
            frontend::append_message(&mut request, frontend::DESCRIBE_TAG, &[b"P\0"]);
            frontend::append_message(&mut request, frontend::EXECUTE_TAG, &[b"\0\0\0\0\0"]);
            frontend::append_sync(&mut request);
        }
        _ => frontend::append_query(&mut request, &plan.sql),
    }
    request
}

/// Sends a shard its statement (after what prepares the connection) and reads the replies to
/// the last ReadyForQuery, passing the statement's on. Returns the connection and whether it
/// ended cleanly (idle, every reply read).
async fn run_shard(
    slot: usize,
    mut att: Box<Attachment>,
    events: mpsc::Sender<(usize, Event)>,
) -> (usize, Box<Attachment>, bool) {
    // Every statement the checkout queued answers with a ReadyForQuery, then ours.
    let mut owed = att.expect.len() + 1;
    let request = std::mem::take(&mut att.wbuf);
    let lost = |message: &str| Event::Error(lost_body(message));
    let conn = att.server.conn_mut();
    if conn.write_all(&request).await.is_err() {
        let _ = events
            .send((slot, lost("a shard's connection was lost")))
            .await;
        return (slot, att, false);
    }
    loop {
        let frame = match conn.next_frame(MAX_SHARD_MESSAGE).await {
            Ok(frame) => frame,
            Err(e) => {
                let what = match e {
                    crate::pool::ServerError::Frame(_) => {
                        "a shard sent a message that could not be read"
                    }
                    _ => "a shard's connection was lost during the statement",
                };
                let _ = events.send((slot, lost(what))).await;
                return (slot, att, false);
            }
        };
        let body = || frame.as_bytes().slice(HEADER_LEN..);
        let ours = owed == 1;
        let event = match frame.tag() {
            backend::READY_FOR_QUERY_TAG => {
                owed -= 1;
                if owed == 0 {
                    let idle = frame.body().first() == Some(&TransactionStatus::Idle.as_byte());
                    return (slot, att, idle);
                }
                None
            }
            backend::ERROR_RESPONSE_TAG => Some(Event::Error(body())),
            // COPY is never sent here; a connection in COPY is given up (closed).
            backend::COPY_IN_RESPONSE_TAG
            | backend::COPY_OUT_RESPONSE_TAG
            | backend::COPY_BOTH_RESPONSE_TAG => {
                let _ = events
                    .send((slot, lost("COPY is not run across shards")))
                    .await;
                return (slot, att, false);
            }
            backend::ROW_DESCRIPTION_TAG if ours => Some(Event::Described(body())),
            backend::DATA_ROW_TAG if ours => Some(Event::Row(body())),
            backend::NOTICE_RESPONSE_TAG if ours => Some(Event::Notice(body())),
            _ => None,
        };
        if let Some(event) = event {
            // The merge may be done (an error, or LIMIT reached): the rest is read and dropped.
            let _ = events.send((slot, event)).await;
        }
    }
}

/// The merge side of a fan-out.
struct Merging {
    spec: merge::MergeSpec,
    formats: Vec<i16>,
    budget: usize,
    describe: bool,
    collation_c: bool,
    targets: Vec<crate::cancel::CancelTarget>,
}

impl Merging {
    /// Takes the shards' events until every shard is done, writing the client's reply (but
    /// its CommandComplete) as it goes. The rows sent or the failure, and the shards whose
    /// statements were cancelled.
    async fn run(
        self,
        events: Events,
        client: &mut ClientConn,
    ) -> Result<(Result<u64, Failure>, Vec<usize>), RelayError> {
        match events {
            Events::Shared(events) => self.in_arrival_order(events, client).await,
            Events::PerShard(shards) => self.in_order(shards, client).await,
        }
    }

    /// Cancels the statement on every shard but `slot` (whose error ends the fan-out).
    fn cancel_others(&self, slot: usize) -> Vec<usize> {
        let mut cancelled = Vec::new();
        for (other, target) in self.targets.iter().enumerate() {
            if other != slot {
                cancelled.push(other);
                let target = target.clone();
                tokio::spawn(async move { crate::cancel::send_cancel(&target).await });
            }
        }
        cancelled
    }

    /// The k-way merge of the shards' sorted streams: each shard's description, then always
    /// the smallest of their next rows; nothing is held but one row per shard.
    async fn in_order(
        self,
        mut shards: Vec<mpsc::Receiver<(usize, Event)>>,
        client: &mut ClientConn,
    ) -> Result<(Result<u64, Failure>, Vec<usize>), RelayError> {
        let mut made: Option<(Merger, usize)> = None;
        let mut notices = HashSet::new();
        let mut heads: Vec<Option<Row>> = Vec::with_capacity(shards.len());
        let failed = |this: &Self, slot: usize, f: Failure| Ok((Err(f), this.cancel_others(slot)));
        for (slot, events) in shards.iter_mut().enumerate() {
            loop {
                let step = match events.recv().await {
                    None => break,
                    Some((_, Event::Described(body))) => {
                        match self.described(&body, &mut made, &mut client.wbuf) {
                            Ok(()) => break,
                            Err(f) => Err(f),
                        }
                    }
                    Some((_, Event::Notice(body))) => {
                        notice(&mut notices, body, &mut client.wbuf);
                        Ok(())
                    }
                    Some((_, Event::Error(body))) => Err(Failure::Shard(body)),
                    Some((_, Event::Row(_))) => Err(Failure::from(MergeError::Malformed(
                        "a shard sent rows before describing them".into(),
                    ))),
                };
                if let Err(f) = step {
                    return failed(&self, slot, f);
                }
            }
        }
        let Some((merger, _)) = made.as_mut() else {
            return Ok((Err(no_shard()), Vec::new()));
        };
        for (slot, events) in shards.iter_mut().enumerate() {
            match next_row(events, merger, &mut notices, &mut client.wbuf).await {
                Ok(row) => heads.push(row),
                Err(f) => return failed(&self, slot, f),
            }
        }
        loop {
            let slot = match smallest(merger, &heads) {
                Ok(Some(slot)) => slot,
                Ok(None) => break,
                Err(e) => return failed(&self, usize::MAX, Failure::from(e)),
            };
            let Some(row) = heads[slot].take() else {
                break;
            };
            if let Err(e) = merger.push_row(row, &mut client.wbuf) {
                return failed(&self, usize::MAX, Failure::from(e));
            }
            if merger.full() {
                // The rest is read and dropped by the shards' readers.
                break;
            }
            match next_row(&mut shards[slot], merger, &mut notices, &mut client.wbuf).await {
                Ok(row) => heads[slot] = row,
                Err(f) => return failed(&self, slot, f),
            }
            if client.wbuf.len() >= CLIENT_CHUNK {
                client.flush().await?;
            }
        }
        drop(shards);
        let Some((merger, _)) = made.take() else {
            return Ok((Err(no_shard()), Vec::new()));
        };
        Ok((
            merger.finish(&mut client.wbuf).map_err(Failure::from),
            Vec::new(),
        ))
    }

    async fn in_arrival_order(
        self,
        mut events: mpsc::Receiver<(usize, Event)>,
        client: &mut ClientConn,
    ) -> Result<(Result<u64, Failure>, Vec<usize>), RelayError> {
        let mut merger: Option<(Merger, usize)> = None;
        let mut failure: Option<Failure> = None;
        let mut cancelled = Vec::new();
        let mut notices = HashSet::new();
        while let Some((slot, event)) = events.recv().await {
            if failure.is_some() {
                continue;
            }
            let step: Result<(), Failure> = match event {
                Event::Described(body) => self.described(&body, &mut merger, &mut client.wbuf),
                Event::Row(body) => match &mut merger {
                    Some((m, _)) if !m.full() => {
                        m.push(body, &mut client.wbuf).map_err(Failure::from)
                    }
                    _ => Ok(()),
                },
                Event::Notice(body) => {
                    notice(&mut notices, body, &mut client.wbuf);
                    Ok(())
                }
                Event::Error(body) => Err(Failure::Shard(body)),
            };
            if let Err(f) = step {
                failure = Some(f);
                cancelled = self.cancel_others(slot);
            }
            if client.wbuf.len() >= CLIENT_CHUNK {
                client.flush().await?;
            }
        }
        if let Some(f) = failure {
            return Ok((Err(f), cancelled));
        }
        let Some((merger, _)) = merger else {
            return Ok((Err(no_shard()), cancelled));
        };
        Ok((
            merger.finish(&mut client.wbuf).map_err(Failure::from),
            cancelled,
        ))
    }

    /// A shard described its rows: the first makes the merger (and the client's
    /// RowDescription); the others must describe the same columns.
    fn described(
        &self,
        body: &[u8],
        merger: &mut Option<(Merger, usize)>,
        out: &mut BytesMut,
    ) -> Result<(), Failure> {
        let malformed = || {
            Failure::from(MergeError::Malformed(
                "a shard sent a malformed RowDescription".into(),
            ))
        };
        let fields = merge::parse_fields(body).ok_or_else(malformed)?;
        if let Some((_, columns)) = merger {
            if *columns != fields.len() {
                return Err(Failure::from(MergeError::Unsupported(
                    "the shards describe different columns for this statement: their schemas differ".into(),
                )));
            }
            return Ok(());
        }
        let (made, client_fields) =
            Merger::new(self.spec.clone(), &fields, &self.formats, self.budget)?;
        if made.compares_text() && !self.collation_c {
            return Err(Failure::from(MergeError::Unsupported(
                "this statement orders or compares text across shards, and the shards' collation is \
                 not C (or a column declares another collation): the sidecar cannot reproduce that \
                 order; order by another column or add a shard key"
                    .into(),
            )));
        }
        if self.describe {
            merge::row_description(&client_fields, out);
        }
        *merger = Some((made, fields.len()));
        Ok(())
    }
}

/// How the shards' events reach the merge.
enum Events {
    /// One channel, in arrival order.
    Shared(mpsc::Receiver<(usize, Event)>),
    /// A channel per shard (sorted rows, merged in order).
    PerShard(Vec<mpsc::Receiver<(usize, Event)>>),
}

/// A shard's notice goes to the client once (every shard sends the same ones).
fn notice(seen: &mut HashSet<Bytes>, body: Bytes, out: &mut BytesMut) {
    if seen.insert(body.clone()) {
        frontend::append_message(out, backend::NOTICE_RESPONSE_TAG, &[&body]);
    }
}

fn no_shard() -> Failure {
    Failure::Sidecar(ErrorReport::error(
        SqlState::CANNOT_CONNECT_NOW,
        "no shard answered the statement",
    ))
}

/// A shard's next row (`None`: it has no more), its notices passed on.
async fn next_row(
    events: &mut mpsc::Receiver<(usize, Event)>,
    merger: &Merger,
    notices: &mut HashSet<Bytes>,
    out: &mut BytesMut,
) -> Result<Option<Row>, Failure> {
    loop {
        match events.recv().await {
            None => return Ok(None),
            Some((_, Event::Row(body))) => {
                return merger.row(body).map(Some).map_err(Failure::from)
            }
            Some((_, Event::Notice(body))) => notice(notices, body, out),
            Some((_, Event::Error(body))) => return Err(Failure::Shard(body)),
            Some((_, Event::Described(_))) => {
                return Err(Failure::from(MergeError::Malformed(
                    "a shard described its rows twice".into(),
                )))
            }
        }
    }
}

/// The shard whose next row comes first (the lowest such shard among equals).
fn smallest(merger: &Merger, heads: &[Option<Row>]) -> Result<Option<usize>, MergeError> {
    let mut best: Option<(usize, &Row)> = None;
    for (i, head) in heads.iter().enumerate() {
        let Some(row) = head else {
            continue;
        };
        best = match best {
            Some((_, have)) if merger.order(row, have)?.is_lt() => Some((i, row)),
            None => Some((i, row)),
            kept => kept,
        };
    }
    Ok(best.map(|(i, _)| i))
}
