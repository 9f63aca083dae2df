//! Routing between the primary and replicas (transaction mode, databases with replicas). Each
//! request — a simple Query, or extended messages up to their Sync or Flush — is held until it
//! is complete, then runs where its statements allow: on a replica when it only reads and starts
//! outside a transaction (or is `BEGIN READ ONLY`), on the primary otherwise. A request that
//! needs another server than the attached one waits, held, until the attached one is done; a
//! transaction or an open batch never switches.

use super::*;
use crate::pool::health::NoReplica;
use crate::pool::Pool;
use crate::route::replica::{RoutePreference, Target, Upstream};
use crate::sql::classify::{Isolation, Kind, SettingName, StatementClass, ValueRef};

/// Frames held for one request at most; past that it runs on the primary as it is.
const MAX_HELD: usize = 4096;
/// Bytes of held frames past which an incomplete request runs on the primary as it is, and the
/// client is not read while complete requests wait (backpressure: never unbounded memory).
pub(super) const MAX_HELD_BYTES: usize = 1 << 20;

/// Client frames held until their request is complete and its server is attached, with their
/// size. Read like a queue; frames go in and out only through `push_back` and `pop_front`.
#[derive(Default)]
pub(super) struct Held {
    frames: VecDeque<Frame>,
    bytes: usize,
}

impl Held {
    pub(super) fn push_back(&mut self, frame: Frame) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    pub(super) fn pop_front(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl std::ops::Deref for Held {
    type Target = VecDeque<Frame>;

    fn deref(&self) -> &VecDeque<Frame> {
        &self.frames
    }
}
/// The session setting by which a client states where its reads go; never sent upstream.
const ROUTE_SETTING: &str = "pgsidecar.route";

impl Relay {
    /// Takes one frame from the client: runs it now, or holds it until its request is complete
    /// and the right server connection is attached.
    pub(super) async fn admit(&mut self, frame: Frame) -> Result<Option<End>, RelayError> {
        if self.topology.is_none() || self.mode != PoolMode::Transaction {
            return self.on_client_frame(frame).await;
        }
        if self.held.is_empty() && self.continues_attached(&frame) && !names_route_setting(&frame) {
            return self.on_client_frame(frame).await;
        }
        self.held.push_back(frame);
        self.run_held().await
    }

    /// Whether a frame continues what the attached server connection is doing: a transaction,
    /// an open extended batch, COPY data — or ends the session.
    fn continues_attached(&self, frame: &Frame) -> bool {
        match frontend::role(frame.tag()) {
            MessageRole::Terminate | MessageRole::Unknown | MessageRole::Copy => true,
            _ => match &self.phase {
                Phase::Attached(att) => {
                    att.status != TransactionStatus::Idle || att.batch.is_some()
                }
                Phase::SkipToSync => true,
                Phase::Detached => false,
            },
        }
    }

    /// Runs the held requests that can run now, in order; stops at one that is incomplete or
    /// needs another server connection than the attached one (it runs once that one is done).
    pub(super) async fn run_held(&mut self) -> Result<Option<End>, RelayError> {
        while let Some(first) = self.held.front() {
            if self.continues_attached(first) {
                let frame = self.held.pop_front().expect("front exists");
                if let Some(end) = self.on_client_frame(frame).await? {
                    return Ok(Some(end));
                }
                continue;
            }
            let Some(len) = self.held_request_len() else {
                return Ok(None);
            };
            if let Some(setting) = self.route_setting(&self.held[0]) {
                // `SET pgsidecar.route`: the sidecar's own, answered here in its turn.
                let (busy, status) = match &self.phase {
                    Phase::Attached(att) => {
                        (!att.expect.is_empty() || att.batch.is_some(), att.status)
                    }
                    _ if self.begin_pending.is_some() => (false, TransactionStatus::InTransaction),
                    _ => (false, TransactionStatus::Idle),
                };
                if busy {
                    return Ok(None);
                }
                self.held.pop_front();
                match setting {
                    Ok((preference, tag)) => {
                        self.route_preference = preference;
                        backend::command_complete(&mut self.client.wbuf, tag);
                    }
                    Err(report) => report.write(&mut self.client.wbuf),
                }
                backend::ready_for_query(&mut self.client.wbuf, status);
                continue;
            }
            if let Some(reply) = self.held_begin_step(len) {
                // A bare BEGIN, or the COMMIT / ROLLBACK that ends one with nothing in it.
                self.held.pop_front();
                let (tag, status) = match reply {
                    BeginStep::Hold(frame) => {
                        self.begin_pending = Some(frame);
                        ("BEGIN", TransactionStatus::InTransaction)
                    }
                    BeginStep::End(tag) => {
                        self.begin_pending = None;
                        (tag, TransactionStatus::Idle)
                    }
                };
                backend::command_complete(&mut self.client.wbuf, tag);
                backend::ready_for_query(&mut self.client.wbuf, status);
                continue;
            }
            let target = match self.begin_pending {
                // The statement after a held BEGIN decides where the transaction runs.
                Some(_) if self.sets_read_only(&self.held[0]) => Target::Replica,
                Some(_) => Target::Primary,
                None => {
                    let (target, classified) = self.held_target(len);
                    // A Query's classification, made for routing, serves the relay too.
                    self.classified_next = classified.map(|c| (self.held[0].as_bytes().clone(), c));
                    target
                }
            };
            let runs_now = match &self.phase {
                Phase::Attached(att) => !att.upstream.is_replica() || target == Target::Replica,
                _ => true,
            };
            if !runs_now {
                // The replica finishes what it has; then this request is routed afresh.
                return Ok(None);
            }
            self.next_target = target;
            for _ in 0..len {
                let frame = self.held.pop_front().expect("request is held");
                if let Some(end) = self.on_client_frame(frame).await? {
                    return Ok(Some(end));
                }
            }
            self.next_target = Target::Primary;
        }
        Ok(None)
    }

    /// Frames in the first held request, when it is complete: a Query or FunctionCall alone,
    /// or extended messages through the first Sync or Flush.
    fn held_request_len(&self) -> Option<usize> {
        let first = self.held.front()?;
        if frontend::role(first.tag()) == MessageRole::Request {
            return Some(1);
        }
        match self.held.iter().position(|f| {
            matches!(
                frontend::role(f.tag()),
                MessageRole::Sync | MessageRole::Flush | MessageRole::Request
            )
        }) {
            Some(i) if frontend::role(self.held[i].tag()) == MessageRole::Request => Some(i),
            Some(i) => Some(i + 1),
            None if self.held.len() >= MAX_HELD || self.held.bytes() >= MAX_HELD_BYTES => {
                Some(self.held.len())
            }
            None => None,
        }
    }

    /// Where the first `len` held frames (one request) may run, with the classification of a
    /// request that is one Query.
    fn held_target(&self, len: usize) -> (Target, Option<Classified>) {
        let mut routing: Option<Routing> = None;
        let mut query_classified = None;
        let mut parsed_here: Vec<(&[u8], Routing)> = Vec::new();
        for frame in self.held.iter().take(len) {
            let part = match frame.tag() {
                frontend::QUERY_TAG => frontend::query_text(frame.body()).map(|sql| {
                    let classified = self.app.classifier.classify(sql);
                    let r = Routing::of(&classified.classification, classified.scan.hint.as_ref());
                    query_classified = (len == 1).then_some(classified);
                    r
                }),
                frontend::PARSE_TAG => frontend::parse_text(frame.body()).map(|(name, sql)| {
                    let r = self.routing_of(sql);
                    parsed_here.push((name, r));
                    r
                }),
                frontend::BIND_TAG => bound_statement(frame.body()).map(|name| {
                    parsed_here
                        .iter()
                        .rev()
                        .find(|(n, _)| *n == name)
                        .map(|(_, r)| *r)
                        .unwrap_or_else(|| self.statements.routing_of(name))
                }),
                frontend::FUNCTION_CALL_TAG => Some(Routing::PRIMARY),
                _ => None,
            };
            if let Some(part) = part {
                routing = Some(match routing {
                    // A batch reads only if every statement in it does.
                    Some(r) if frame.tag() != frontend::QUERY_TAG => r.and(part),
                    _ => part,
                });
            }
        }
        let target = routing.map_or(Target::Primary, |r| r.target(self.route_preference));
        (target, query_classified)
    }

    /// A simple Query that is only `SET [LOCAL] pgsidecar.route = …` or `RESET
    /// pgsidecar.route`: the preference and command tag, or the error for a bad value.
    fn route_setting(
        &self,
        frame: &Frame,
    ) -> Option<Result<(RoutePreference, &'static str), ErrorReport>> {
        // Cheap test first: only texts that name the setting are looked at closely.
        if !names_route_setting(frame) {
            return None;
        }
        let (sql, classified, statement) = self.sole_statement(frame)?;
        let [change] = statement.settings.as_slice() else {
            return None;
        };
        let named =
            matches!(&change.name, SettingName::Fixed(n) if n.eq_ignore_ascii_case(ROUTE_SETTING));
        if !named || !matches!(statement.kind, Kind::Set | Kind::SetLocal | Kind::Reset) {
            return None;
        }
        let value = match &change.value {
            None => return Some(Ok((RoutePreference::Auto, "RESET"))),
            Some(ValueRef::Word(w)) => w.clone(),
            Some(ValueRef::Literal(i)) => classified
                .scan
                .literals
                .get(*i)
                .map(|l| l.value(sql).into_owned())
                .unwrap_or_default(),
            Some(_) => String::new(),
        };
        Some(RoutePreference::parse(&value).map(|p| (p, "SET")).ok_or_else(|| {
            ErrorReport::error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"{ROUTE_SETTING}\": \"{value}\" (use primary, replica or auto)"
                ),
            )
        }))
    }

    /// What a held request means for a bare BEGIN: one that starts outside a transaction is
    /// answered by the sidecar and held ([`BeginStep::Hold`]), and a COMMIT or ROLLBACK right
    /// after one ends it without a server ([`BeginStep::End`]).
    fn held_begin_step(&self, len: usize) -> Option<BeginStep> {
        let frame = self.held.front().filter(|_| len == 1)?;
        let (_, _, statement) = self.sole_statement(frame)?;
        match (&statement.kind, &self.begin_pending, &self.phase) {
            (
                Kind::Begin {
                    read_only: None,
                    isolation,
                },
                None,
                Phase::Detached,
            ) if *isolation != Some(Isolation::Serializable) => {
                Some(BeginStep::Hold(frame.clone()))
            }
            (Kind::Commit, Some(_), _) => Some(BeginStep::End("COMMIT")),
            (Kind::Rollback, Some(_), _) => Some(BeginStep::End("ROLLBACK")),
            _ => None,
        }
    }

    /// `SET TRANSACTION READ ONLY` (not SERIALIZABLE, which a hot standby refuses) as the
    /// statement after a held BEGIN.
    fn sets_read_only(&self, frame: &Frame) -> bool {
        let Some((_, _, statement)) = self.sole_statement(frame) else {
            return false;
        };
        matches!(
            statement.kind,
            Kind::SetTransaction {
                read_only: Some(true),
                isolation,
            } if isolation != Some(Isolation::Serializable)
        )
    }

    /// A simple Query of exactly one statement: its text, classification, and the statement.
    fn sole_statement<'f>(
        &self,
        frame: &'f Frame,
    ) -> Option<(&'f [u8], Classified, StatementClass)> {
        if frame.tag() != frontend::QUERY_TAG {
            return None;
        }
        let sql = frontend::query_text(frame.body())?;
        let classified = self.app.classifier.classify(sql);
        let Classification::Parsed(statements) = classified.classification.as_ref() else {
            return None;
        };
        let [statement] = statements.as_slice() else {
            return None;
        };
        let statement = statement.clone();
        Some((sql, classified, statement))
    }

    /// Routing of one statement text (classified through the cache; not counted in metrics —
    /// the relay classifies it again, counted, when it runs).
    fn routing_of(&self, sql: &[u8]) -> Routing {
        let classified = self.app.classifier.classify(sql);
        Routing::of(&classified.classification, classified.scan.hint.as_ref())
    }

    /// The replica the client was attached to is gone (closed, or a socket error) while the
    /// client's session is sound: every request it still waits for gets an ERROR (08006) and a
    /// ReadyForQuery, the replica is ejected until its next good check, and the client's next
    /// request goes elsewhere. The sidecar does not retry the request: it may have run.
    pub(super) async fn replica_lost(&mut self, error: ServerError) -> Result<(), RelayError> {
        let Phase::Attached(att) = std::mem::replace(&mut self.phase, Phase::Detached) else {
            return Ok(());
        };
        self.info.key.detach().await;
        self.app.metrics.error("replica_lost");
        tracing::warn!(error = %error, "the replica serving a client was lost");
        if let Some(topology) = &self.topology {
            topology.eject(att.server.pool());
        }
        let message = "the replica serving this query was lost; the query did not complete";
        for i in 0..att.expect.clients() {
            if !(i == 0 && att.replica_said_fatal) {
                ErrorReport::error(SqlState::CONNECTION_FAILURE, message)
                    .write(&mut self.client.wbuf);
            }
            backend::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle);
        }
        if att.batch.is_some() {
            // The rest of the open batch is dropped up to its Sync, which gets its answer.
            ErrorReport::error(SqlState::CONNECTION_FAILURE, message).write(&mut self.client.wbuf);
            self.phase = Phase::SkipToSync;
        }
        // The server connection is closed with the attachment, never returned to the pool.
        drop(att);
        self.run_held().await?;
        self.finish_client_turn().await
    }

    /// The pool the next checkout uses, and whether it is a replica's.
    pub(super) fn pool_for_next(&self) -> Result<(Arc<Pool>, Upstream), ErrorReport> {
        let Some(topology) = &self.topology else {
            return Ok((Arc::clone(&self.info.pool), Upstream::Primary));
        };
        if self.next_target == Target::Primary || topology.primary_serves_reads_too() {
            topology.count_route(false);
            return Ok((Arc::clone(&self.info.pool), Upstream::Primary));
        }
        match topology.choose_replica(self.last_write, self.info.tenant.as_deref()) {
            Ok((index, replica)) => {
                topology.count_route(true);
                Ok((Arc::clone(&replica.pool), Upstream::Replica(index)))
            }
            Err(
                NoReplica::NotCaughtUp
                | NoReplica::Unavailable {
                    primary_allowed: true,
                },
            ) => {
                topology.count_route(false);
                Ok((Arc::clone(&self.info.pool), Upstream::Primary))
            }
            Err(NoReplica::Unavailable {
                primary_allowed: false,
            }) => Err(ErrorReport::error(
                SqlState::CANNOT_CONNECT_NOW,
                "no replica can serve reads now, and primary_reads = \"never\"",
            )),
        }
    }
}

/// What a held request does to a bare BEGIN.
enum BeginStep {
    /// A bare BEGIN: answered, and sent upstream with the next statement.
    Hold(Frame),
    /// COMMIT or ROLLBACK of a held BEGIN with nothing in it: answered with this tag.
    End(&'static str),
}

/// Whether a simple Query's text names `pgsidecar.route` (a cheap test before classifying).
fn names_route_setting(frame: &Frame) -> bool {
    frame.tag() == frontend::QUERY_TAG
        && frontend::query_text(frame.body()).is_some_and(|sql| {
            sql.windows(ROUTE_SETTING.len())
                .any(|w| w.eq_ignore_ascii_case(ROUTE_SETTING.as_bytes()))
        })
}
