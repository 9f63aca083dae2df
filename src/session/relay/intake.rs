//! The intake: client frames become requests — a simple Query (or FunctionCall), or extended
//! messages up to their Sync or Flush — in every pool mode. Each statement text is classified
//! once, when its frame arrives; the classification travels with the frame. A complete request
//! is planned (`route::plan`: answer it here, send it to a target, or wait) and run; frames that
//! continue what the attached server connection is doing (a transaction, an open batch, COPY
//! data) run at once. What is held is bounded in bytes: past the bound the client is not read
//! until the queue drains.

use super::cached::CacheStep;
use super::queue::LocalReply;
use super::shards::Placed;
use super::*;
use crate::route::plan::{plan, Local, Plan, RequestFacts, SessionView, Sole, TxPin};

/// Frames held for one request at most; past that it runs on the primary as it is.
const MAX_HELD: usize = 4096;
/// Bytes of held frames past which an incomplete request runs on the primary as it is, and the
/// client is not read while complete requests wait (backpressure: never unbounded memory).
pub(super) const MAX_HELD_BYTES: usize = 1 << 20;

/// A client frame with the classification of the statement text it carries (Query, Parse).
pub(super) type Incoming = (Frame, Option<Classified>);

/// What became of a frame the client sent.
pub(super) enum Admitted {
    /// Run as far as it goes without waiting.
    Ran(super::request::Now),
    /// Held: the held requests run when they can ([`Relay::run_held`]).
    Held,
}

/// How a refused request is answered.
pub(super) enum Refused {
    /// By the sidecar, in its turn.
    Answer(ErrorReport),
    /// By the server, which runs this statement (it raises the error) inside the transaction.
    Raise(String),
}

/// Client frames held until their request is complete and can run, with their size. Read like a
/// queue; frames go in and out only through `push_back` and `pop_front`.
#[derive(Default)]
pub(super) struct Held {
    frames: VecDeque<Incoming>,
    bytes: usize,
}

impl Held {
    pub(super) fn push_back(&mut self, incoming: Incoming) {
        self.bytes += incoming.0.len();
        self.frames.push_back(incoming);
    }

    pub(super) fn pop_front(&mut self) -> Option<Incoming> {
        let incoming = self.frames.pop_front()?;
        self.bytes -= incoming.0.len();
        Some(incoming)
    }

    /// Drops every frame held (those after the client's Terminate).
    pub(super) fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl std::ops::Deref for Held {
    type Target = VecDeque<Incoming>;

    fn deref(&self) -> &VecDeque<Incoming> {
        &self.frames
    }
}

impl Relay {
    /// Takes one frame from the client: checks it, classifies its text, and runs it as far as it
    /// goes without waiting, or holds it until its request is complete and can run. No future
    /// of its own: the caller awaits only what waits.
    pub(super) fn admit(&mut self, frame: Frame) -> Result<Admitted, RelayError> {
        if !crate::protocol::grammar::well_formed(frame.tag(), frame.body()) {
            // Postgres raises "invalid message format" (and skips to the next Sync); the
            // sidecar never forwards a malformed message and ends the session.
            return Err(RelayError::MalformedMessage(frame.tag()));
        }
        if self.held.is_empty() {
            self.follow_reload();
        }
        let classified = self.classify_text(&frame);
        // The attached connection serves a frame that continues its work (or nothing does:
        // COPY data outside COPY, the rest of a failed batch, Terminate); without routing every
        // request runs on the primary as it is (the plan's answer for any request), so nothing
        // waits for the rest of it.
        if self.held.is_empty() && (!self.routes() || self.continues_attached(&frame)) {
            return Ok(Admitted::Ran(
                self.frame_now((frame, classified), Target::Primary)?,
            ));
        }
        self.held.push_back((frame, classified));
        Ok(Admitted::Held)
    }

    /// Classifies the statement text a Query or Parse carries — once per shape thanks to the
    /// cache — and counts it, so `pgsidecar_statements_classified_total` shows how much of the
    /// traffic the sidecar understands.
    pub(super) fn classify_text(&mut self, frame: &Frame) -> Option<Classified> {
        let sql = frontend::statement_text(frame.tag(), frame.body())?;
        let classified = self
            .live
            .classifier
            .classify_recent(sql, &mut self.recent_shapes);
        let metrics = &self.app.metrics;
        match (classified.hit, classified.classification.as_ref()) {
            (_, Classification::Unparsed { .. }) => metrics.classified_unparsed.inc(),
            (true, _) => metrics.classified_hit.inc(),
            (false, _) => metrics.classified_miss.inc(),
        }
        Some(classified)
    }

    /// A frame's classification, or one made now for `sql` when the frame has none (a text
    /// the sidecar wrote itself).
    pub(super) fn classified_or_now<'a>(
        &self,
        sql: &[u8],
        classified: Option<&'a Classified>,
    ) -> std::borrow::Cow<'a, Classified> {
        match classified {
            Some(c) => std::borrow::Cow::Borrowed(c),
            None => std::borrow::Cow::Owned(self.live.classifier.classify(sql)),
        }
    }

    /// Whether a frame continues what the attached server connection is doing: a transaction,
    /// an open extended batch, COPY data, the rest of a failed batch — or ends the session.
    fn continues_attached(&self, frame: &Frame) -> bool {
        match frontend::role(frame.tag()) {
            MessageRole::Terminate | MessageRole::Unknown | MessageRole::Copy => true,
            _ => match self.session_view().pin {
                // In a sharded session every request is placed, so one for another shard is
                // refused rather than run where the transaction is; a tenant with a statement
                // rate takes its tokens in transactions too (an open batch continues).
                TxPin::Pinned(_) => {
                    let batch_open =
                        matches!(&self.phase, Phase::Attached(att) if att.batch.is_some());
                    // Reads in a READ ONLY transaction may be answered from the cache.
                    let cached = self
                        .cache
                        .as_ref()
                        .is_some_and(|c| c.in_read_only_transactions())
                        && matches!(&self.phase, Phase::Attached(att) if att.cache.read_only());
                    self.shards.is_none()
                        && (!self.rate_limited || batch_open)
                        && (!cached || batch_open)
                }
                TxPin::None | TxPin::HeldBegin | TxPin::Attached(_) => {
                    matches!(self.phase, Phase::SkipToSync)
                }
            },
        }
    }

    /// The session as the plan sees it.
    pub(super) fn session_view(&self) -> SessionView {
        let pin = match &self.phase {
            // Dropping the rest of a failed batch happens before any plan.
            Phase::Detached | Phase::SkipToSync => TxPin::None,
            Phase::BeginHeld(_) => TxPin::HeldBegin,
            Phase::Attached(att)
                if att.status != TransactionStatus::Idle || att.batch.is_some() =>
            {
                TxPin::Pinned(att.upstream)
            }
            Phase::Attached(att) => TxPin::Attached(att.upstream),
        };
        SessionView {
            pin,
            preference: self.route_preference,
            routes: self.routes(),
            earlier: self.earlier.is_some(),
        }
    }

    /// Requests are held and planned one by one (transaction mode, with replicas, shards or a
    /// statement rate), rather than forwarded as they come.
    fn routes(&self) -> bool {
        (self.topology.is_some()
            || self.shards.is_some()
            || self.rate_limited
            || self.cache.is_some())
            && self.mode == PoolMode::Transaction
    }

    /// Whether the client is inside a transaction (a held BEGIN counts).
    pub(super) fn in_transaction(&self) -> bool {
        matches!(self.phase, Phase::BeginHeld(_))
            || matches!(&self.phase, Phase::Attached(att) if att.status != TransactionStatus::Idle)
    }

    /// Refuses the first `len` held frames (one request) with an error; the frames are
    /// dropped. Inside a transaction a complete request is answered by a Query that raises the
    /// error on the server ([`Refused::Raise`]), so the transaction fails there as Postgres
    /// would fail it; otherwise the error is the client's answer in turn.
    pub(super) fn refuse_request(
        &mut self,
        len: usize,
        state: SqlState,
        message: String,
        in_transaction: bool,
    ) -> Refused {
        let synced = self.held.iter().take(len).last().is_some_and(|(f, _)| {
            matches!(
                frontend::role(f.tag()),
                MessageRole::Sync | MessageRole::Request
            )
        });
        for _ in 0..len {
            self.held.pop_front();
        }
        if in_transaction && synced {
            return Refused::Raise(format!(
                "DO $pgsc$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}; END$pgsc$",
                state.0,
                crate::sql::quote::quote_literal(&message)
            ));
        }
        Refused::Answer(ErrorReport::error(state, message))
    }

    /// Runs the held requests that can run now, in order; stops at one that is incomplete or
    /// must wait for the attached server connection (it runs once that one is done).
    pub(super) async fn run_held(&mut self) -> Result<Option<End>, RelayError> {
        while let Some((first, _)) = self.held.front() {
            if self.closing {
                // What the client sent after its Terminate is never run.
                self.held.clear();
                break;
            }
            if self.continues_attached(first) {
                let incoming = self.held.pop_front().expect("front exists");
                if let Some(end) = self.on_client_frame(incoming, Target::Primary).await? {
                    return Ok(Some(end));
                }
                continue;
            }
            let Some(len) = self.held_request_len() else {
                return Ok(None);
            };
            self.follow_reload();
            if self.rate_limited {
                match self.throttle(len).await {
                    None => {}
                    Some(Refused::Answer(report)) => {
                        self.answer_in_turn(LocalReply::Failed(report));
                        continue;
                    }
                    Some(Refused::Raise(sql)) => {
                        self.raise_upstream(&sql).await;
                        continue;
                    }
                }
            }
            if self.shards.is_some() {
                match self.place_request(len).await {
                    Placed::Here => {}
                    Placed::Wait => return Ok(None),
                    Placed::Refuse(report) => {
                        self.answer_in_turn(LocalReply::Failed(report));
                        continue;
                    }
                    Placed::Done(tag) => {
                        self.answer_in_turn(LocalReply::Done(tag));
                        continue;
                    }
                    Placed::Raise(sql) => {
                        self.raise_upstream(&sql).await;
                        continue;
                    }
                    Placed::FanOut(on) => {
                        self.fan_out(len, &on).await?;
                        continue;
                    }
                    Placed::Write(on) => {
                        self.write_shards(len, &on).await?;
                        continue;
                    }
                    Placed::Handled => continue,
                }
            }
            let recording = match self.consult_cache(len).await {
                CacheStep::Hit(reply) => {
                    self.serve_hit(len, reply);
                    continue;
                }
                CacheStep::Record(recording) => Some(recording),
                CacheStep::Pass => None,
            };
            let mut facts = self.held_facts(len);
            if recording.is_some() {
                // A reply to be stored is read on the primary: a replica may not have replayed
                // the write whose invalidation made this a miss.
                facts.routing = Routing::PRIMARY;
            }
            let target = match plan(&facts, &self.session_view()) {
                Plan::Wait => return Ok(None),
                Plan::Answer(local) => {
                    let (frame, _) = self.held.pop_front().expect("request is held");
                    self.answer_locally(local, frame);
                    continue;
                }
                Plan::Send(target) => target,
                Plan::MoveOn(target) => match self.attach(target).await {
                    Ok(att) => {
                        let current = Phase::Attached(att);
                        if let Phase::Attached(old) = std::mem::replace(&mut self.phase, current) {
                            self.earlier = Some(old);
                        }
                        target
                    }
                    Err(report) => {
                        // Nothing of the request runs; its error comes in its turn.
                        for _ in 0..len {
                            self.held.pop_front();
                        }
                        self.answer_in_turn(LocalReply::Failed(report));
                        continue;
                    }
                },
                // The attached connection serves it; no target is chosen.
                Plan::Continue => Target::Primary,
            };
            for _ in 0..len {
                let incoming = self.held.pop_front().expect("request is held");
                if let Some(end) = self.on_client_frame(incoming, target).await? {
                    return Ok(Some(end));
                }
                if self.closing {
                    break;
                }
            }
            if let Some(recording) = recording {
                self.start_recording(recording);
            }
        }
        Ok(None)
    }

    /// Frames in the first held request, when it is complete: a Query or FunctionCall alone,
    /// or extended messages through the first Sync or Flush.
    fn held_request_len(&self) -> Option<usize> {
        let (first, _) = self.held.front()?;
        if frontend::role(first.tag()) == MessageRole::Request {
            return Some(1);
        }
        match self.held.iter().position(|(f, _)| {
            matches!(
                frontend::role(f.tag()),
                MessageRole::Sync | MessageRole::Flush | MessageRole::Request
            )
        }) {
            Some(i) if frontend::role(self.held[i].0.tag()) == MessageRole::Request => Some(i),
            Some(i) => Some(i + 1),
            None if self.held.len() >= MAX_HELD || self.held.bytes() >= MAX_HELD_BYTES => {
                Some(self.held.len())
            }
            None => None,
        }
    }

    /// What the plan needs to know of the first `len` held frames (one request), from the
    /// classifications they carry and, for a Bind, the statement it binds.
    fn held_facts(&self, len: usize) -> RequestFacts {
        let request = || self.held.iter().take(len);
        let mut routing: Option<Routing> = None;
        // Primary or replica matters only where there are replicas (a shard, or a database
        // held for its statement rate, may have none).
        let replicas = self.topology.is_some();
        for (i, (frame, classified)) in request().enumerate().filter(|_| replicas) {
            let part = match frame.tag() {
                frontend::QUERY_TAG | frontend::PARSE_TAG => Some(routing_of(classified.as_ref())),
                frontend::BIND_TAG => bound_statement(frame.body()).map(|name| {
                    // A statement parsed earlier in this request, or one the client has.
                    let parsed_here = request().take(i).filter(|(f, c)| {
                        f.tag() == frontend::PARSE_TAG
                            && c.is_some()
                            && frontend::parse_text(f.body()).is_some_and(|(n, _)| n == name)
                    });
                    match parsed_here.last() {
                        Some((_, c)) => routing_of(c.as_ref()),
                        None => self.statements.routing_of(name),
                    }
                }),
                frontend::FUNCTION_CALL_TAG => Some(Routing::PRIMARY),
                _ => None,
            };
            if let Some(part) = part {
                routing = Some(match routing {
                    // A batch reads only if every statement in it does.
                    Some(r) => r.and(part),
                    None => part,
                });
            }
        }
        let sole = match request().next() {
            Some((frame, Some(classified))) if len == 1 && frame.tag() == frontend::QUERY_TAG => {
                frontend::query_text(frame.body())
                    .map_or(Sole::Other, |sql| Sole::of(sql, classified))
            }
            _ => Sole::Other,
        };
        let synced = request().last().is_some_and(|(frame, _)| {
            matches!(
                frontend::role(frame.tag()),
                MessageRole::Sync | MessageRole::Request
            )
        });
        RequestFacts {
            routing: routing.unwrap_or(Routing::PRIMARY),
            sole,
            synced,
        }
    }

    /// Answers a one-Query request the sidecar handles itself, in its turn.
    fn answer_locally(&mut self, local: Local, frame: Frame) {
        let wbuf = &mut self.client.wbuf;
        match local {
            // Only without a server connection: nothing is owed before these.
            Local::HoldBegin => {
                self.phase = Phase::BeginHeld(frame);
                backend::command_complete(wbuf, "BEGIN");
                backend::ready_for_query(wbuf, TransactionStatus::InTransaction);
            }
            Local::EndHeldBegin(tag) => {
                self.phase = Phase::Detached;
                backend::command_complete(wbuf, tag);
                backend::ready_for_query(wbuf, TransactionStatus::Idle);
            }
            // Requests after this one route by the new preference; its answer keeps its place.
            Local::Route(preference, tag) => {
                self.route_preference = preference;
                self.answer_in_turn(LocalReply::Done(tag));
            }
            Local::BadRoute(value) => self.answer_in_turn(LocalReply::BadRoute(value)),
        }
    }
}

/// Routing of one classified statement text (a text the sidecar could not read: the primary).
fn routing_of(classified: Option<&Classified>) -> Routing {
    classified.map_or(Routing::PRIMARY, Routing::of)
}
