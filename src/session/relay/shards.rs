//! Statement shard routing for a database sharded by key: which shard a held request needs
//! (`route::shard_key` on its statements and Bind parameters), moving the session to that
//! shard between transactions (a held BEGIN goes with the first statement, so a transaction
//! runs on the shard of its first routed statement), waiting while another shard still owes
//! replies, and refusals — answered in turn outside a transaction, raised on the server inside
//! one so the transaction fails there as Postgres would fail it.

use super::*;
use crate::live::StatementShards;
use crate::pool::Database;
use crate::protocol::bind::Bind;
use crate::route::plan::Sole;
use crate::route::shard::ShardedTable;
use crate::route::shard_key::{self, ShardHint, ShardRoute};

/// The shards of the client's database, when each request picks its own.
pub(super) struct Shards {
    pub(super) databases: Vec<Arc<Database>>,
    pub(super) tables: Arc<[ShardedTable]>,
    /// Round robin for requests that may run on any shard.
    next_any: usize,
    /// `SET pgsidecar.shard` / `pgsidecar.shard_key`, and whether it was `SET LOCAL`.
    setting: Option<(ShardHint, bool)>,
    /// `pgsidecar_routed_total{target="shardN"}`, by shard.
    routed: Vec<prometheus::IntCounter>,
    /// Some sharded table is configured in a schema: the client's search_path matters.
    schemas: bool,
    /// What merging one statement's rows from several shards may hold.
    pub(super) max_merge_bytes: usize,
    /// Writes across shards commit in two phases (else they are refused).
    pub(super) two_phase_commit: bool,
    /// The other shards' connections of a transaction that spread over shards.
    pub(super) spread: Option<Box<Spread>>,
}

/// The other shards' connections of a transaction spread over shards (`relay/shard_tx.rs`).
pub(super) struct Spread {
    pub(super) parked: Vec<(usize, Box<Attachment>)>,
    /// How the transaction began (`BEGIN ISOLATION LEVEL … READ …`), for each shard it adds.
    pub(super) begin: String,
}

impl Shards {
    pub(super) fn new(now: StatementShards, metrics: &crate::metrics::Metrics) -> Shards {
        let routed = (0..now.databases.len())
            .map(|n| metrics.routed_to(&format!("shard{n}")))
            .collect();
        Shards {
            routed,
            schemas: now.tables.iter().any(|t| t.schema.is_some()),
            databases: now.databases,
            tables: now.tables.into(),
            next_any: 0,
            setting: None,
            max_merge_bytes: now.max_merge_bytes,
            two_phase_commit: now.two_phase_commit,
            spread: None,
        }
    }
}

impl Shards {
    /// The same client's shard state over a reloaded database's shards: its shard setting
    /// and turn carry over.
    pub(super) fn reloaded(
        self,
        now: StatementShards,
        metrics: &crate::metrics::Metrics,
    ) -> Shards {
        let count = now.databases.len();
        Shards {
            setting: self.setting,
            spread: self.spread,
            next_any: self.next_any % count.max(1),
            ..Shards::new(now, metrics)
        }
    }
}

/// What to do with the first held request of a sharded session.
pub(super) enum Placed {
    /// Plan and run it where the session now is.
    Here,
    /// Another shard still owes replies: plan it again once they are in.
    Wait,
    /// Answer it with this error in its turn (its frames are dropped).
    Refuse(ErrorReport),
    /// Answered by the sidecar with this command tag in its turn (its frames are dropped).
    Done(&'static str),
    /// Refused inside a transaction: the server runs this statement, which raises the error
    /// (its frames are dropped).
    Raise(String),
    /// A read on each of these shards, its replies merged (`relay/fanout.rs`).
    FanOut(Vec<usize>),
    /// A write on each of these shards, all or none (`relay/shard_write.rs`).
    Write(Vec<usize>),
    /// Answered already (its frames are gone): a spread transaction's COMMIT or ROLLBACK.
    Handled,
}

impl Relay {
    /// Places the first `len` held frames (one request) on a shard; may move the session
    /// to another shard or replace the request with one that raises the refusal upstream.
    pub(super) async fn place_request(&mut self, len: usize) -> Placed {
        let route = self.request_shard(len);
        let Some(count) = self.shards.as_ref().map(|s| s.databases.len()) else {
            return Placed::Here;
        };
        let current = self.info.database.shard.unwrap_or(0);
        let in_transaction = self.in_transaction();
        let attached = matches!(self.phase, Phase::Attached(_));
        if !in_transaction {
            // A SET LOCAL lasted until its transaction ended.
            if let Some(shards) = &mut self.shards {
                if shards.setting.as_ref().is_some_and(|(_, local)| *local) {
                    shards.setting = None;
                }
            }
        }
        if in_transaction {
            if let Some(placed) = self.spread_request(len).await {
                return placed;
            }
        }
        if let Some(answer) = self.shard_setting_first(len, in_transaction) {
            for _ in 0..len {
                self.held.pop_front();
            }
            return answer;
        }
        if attached && !in_transaction && len == 1 && self.bare_begin_first() {
            // Held once the replies in flight are in, so the transaction goes where its first
            // statement with a key goes.
            return Placed::Wait;
        }
        let wanted = match route {
            ShardRoute::Refused(state, message) => {
                self.app.metrics.error("shard_refused");
                return self.refuse(len, state, message, in_transaction);
            }
            // Outside a transaction and detached: the next shard in turn.
            ShardRoute::Any if !in_transaction && !attached => match &mut self.shards {
                Some(shards) => {
                    shards.next_any = (shards.next_any + 1) % count;
                    shards.next_any
                }
                None => current,
            },
            ShardRoute::Any => current,
            ShardRoute::Shard(n) => n,
            ShardRoute::Shards(on) => {
                return self.place_several(len, Placed::FanOut(on), in_transaction)
            }
            ShardRoute::Writes(on) => {
                return self.place_several(len, Placed::Write(on), in_transaction)
            }
        };
        if let Some(counter) = self.shards.as_ref().and_then(|s| s.routed.get(wanted)) {
            counter.inc();
        }
        if wanted == current {
            return Placed::Here;
        }
        match &self.phase {
            Phase::Detached | Phase::BeginHeld(_) => {
                self.move_to_shard(wanted);
                Placed::Here
            }
            Phase::Attached(att)
                if in_transaction
                    && att.expect.is_empty()
                    && att.began.as_ref().is_some_and(|b| !b.executed) =>
            {
                // Only statements were prepared in the transaction so far: it begins again on
                // the statement's shard. Closing the connection rolls the empty one back.
                if let Some(att) = self.take_attachment(Which::Current).await {
                    if let Some(began) = att.began {
                        self.phase = Phase::BeginHeld(began.begin);
                    }
                }
                tracing::debug!(
                    from = current,
                    to = wanted,
                    "empty transaction moved to another shard"
                );
                self.move_to_shard(wanted);
                Placed::Here
            }
            Phase::Attached(_) if in_transaction => {
                if let Some(placed) = self.spread_to(len, wanted).await {
                    return placed;
                }
                let message = format!(
                    "this transaction runs on shard {current} and the statement needs shard {wanted}: \
                     one transaction runs on one shard in this version"
                );
                self.refuse(len, SqlState::FEATURE_NOT_SUPPORTED, message, true)
            }
            // Replies from the current shard come first.
            Phase::Attached(_) | Phase::SkipToSync => Placed::Wait,
        }
    }

    /// A read or write that needs several shards (`placed`: FanOut or Write): run on them all
    /// once nothing is in flight, outside a transaction, and a write only with two-phase
    /// commit. A request that only prepares or describes it runs on the current shard.
    fn place_several(&mut self, len: usize, placed: Placed, in_transaction: bool) -> Placed {
        let executes = self
            .held
            .iter()
            .take(len)
            .any(|(f, _)| matches!(f.tag(), frontend::QUERY_TAG | frontend::EXECUTE_TAG));
        if !executes {
            return Placed::Here;
        }
        let (write, on) = match &placed {
            Placed::Write(on) => (true, on.clone()),
            Placed::FanOut(on) => (false, on.clone()),
            _ => return placed,
        };
        let what = if write { "a write" } else { "a read" };
        let two_phase = self.shards.as_ref().is_some_and(|s| s.two_phase_commit)
            && self.app.two_phase.is_some();
        let refusal = if write && !two_phase {
            Some(format!(
                "this write needs shards {on:?}: writes across shards commit with two-phase commit, \
                 which is off for this database (two_phase_commit = true and state_dir, with \
                 max_prepared_transactions set on the shards); or add a shard key"
            ))
        } else if in_transaction {
            Some(format!(
                "{what} that needs several shards runs outside transactions in this version: \
                 run it outside the transaction, or add a shard key"
            ))
        } else if matches!(&self.phase, Phase::Attached(att) if att.pinned.is_some()) {
            // A pinned session keeps its connection: waiting for it would never end.
            Some(format!(
                "this session is pinned to one connection (temporary tables, advisory locks, \
                 WITH HOLD cursors or SET SESSION AUTHORIZATION), so {what} of several shards \
                 cannot run: add a shard key, or end what pins it (DISCARD ALL)"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.app.metrics.error("shard_refused");
            return self.refuse(
                len,
                SqlState::FEATURE_NOT_SUPPORTED,
                message,
                in_transaction,
            );
        }
        if !matches!(self.phase, Phase::Detached) || self.owes_replies() {
            return Placed::Wait;
        }
        if let Some(shards) = &self.shards {
            for n in &on {
                if let Some(counter) = shards.routed.get(*n) {
                    counter.inc();
                }
            }
        }
        placed
    }

    /// A one-Query request that sets or resets a shard setting: applied here and answered in
    /// turn (never sent upstream).
    fn shard_setting_first(&mut self, len: usize, in_transaction: bool) -> Option<Placed> {
        let (frame, classified) = self.held.front().filter(|_| len == 1)?;
        let classified = classified.as_ref()?;
        if frame.tag() != frontend::QUERY_TAG || !shard_key::sets_something(classified) {
            return None;
        }
        let sql = frontend::query_text(frame.body())?;
        let setting = shard_key::shard_setting(sql, classified)?;
        let shards = self.shards.as_mut()?;
        Some(match setting {
            Ok(setting) => {
                let tag = if setting.hint.is_some() {
                    "SET"
                } else {
                    "RESET"
                };
                match setting.hint {
                    // Postgres ignores SET LOCAL outside a transaction (with a warning).
                    Some(_) if setting.local && !in_transaction => {}
                    Some(hint) => shards.setting = Some((hint, setting.local)),
                    None => shards.setting = None,
                }
                Placed::Done(tag)
            }
            Err(message) => Placed::Refuse(ErrorReport::error(
                SqlState::INVALID_PARAMETER_VALUE,
                message,
            )),
        })
    }

    /// Whether the first held frame is a bare BEGIN (held until a statement decides).
    fn bare_begin_first(&self) -> bool {
        match self.held.front() {
            Some((frame, Some(classified))) if frame.tag() == frontend::QUERY_TAG => {
                frontend::query_text(frame.body())
                    .is_some_and(|sql| Sole::of(sql, classified) == Sole::BareBegin)
            }
            _ => false,
        }
    }

    /// A connection to shard `n`'s primary, prepared for this client like any checkout
    /// (`None`: no such shard).
    pub(super) async fn attach_shard(
        &mut self,
        n: usize,
    ) -> Option<(Arc<Database>, Result<Box<Attachment>, ErrorReport>)> {
        let database = self.shards.as_ref()?.databases.get(n).cloned()?;
        let pool = Arc::clone(&database.primary);
        let attached = self
            .attach_pool(pool, crate::route::replica::Upstream::Primary)
            .await;
        Some((database, attached))
    }

    /// The session's requests go to shard `n` from now on (its pools and replicas).
    pub(super) fn move_to_shard(&mut self, n: usize) {
        let Some(shards) = &self.shards else {
            return;
        };
        let Some(database) = shards.databases.get(n) else {
            return;
        };
        self.info.database = Arc::clone(database);
        self.topology = match self.mode {
            PoolMode::Transaction => database.replicas.clone(),
            PoolMode::Session => None,
        };
    }

    /// Refuses the request (see [`Relay::refuse_request`]).
    fn refuse(
        &mut self,
        len: usize,
        state: SqlState,
        message: String,
        in_transaction: bool,
    ) -> Placed {
        match self.refuse_request(len, state, message, in_transaction) {
            intake::Refused::Answer(report) => Placed::Refuse(report),
            intake::Refused::Raise(sql) => Placed::Raise(sql),
        }
    }

    /// The shard the first `len` held frames need (every statement of the request must agree).
    fn request_shard(&self, len: usize) -> ShardRoute {
        let Some(shards) = &self.shards else {
            return ShardRoute::Any;
        };
        let setting = shards.setting.as_ref().map(|(hint, _)| hint);
        let search_path = match shards.schemas {
            true => self.info.state.settings.get("search_path").map(|path| {
                crate::sql::settings::search_path_schemas(
                    path,
                    &self.info.database.primary.url().user,
                )
            }),
            false => None,
        };
        let route_of = |sql: &[u8], classified: &Classified, bind: Option<&Bind<'_>>| {
            let statement = shard_key::Statement {
                sql,
                classified,
                bind,
                search_path: search_path.as_deref(),
            };
            shard_key::route(&statement, &shards.tables, shards.databases.len(), setting)
        };
        let request = || self.held.iter().take(len);
        let mut route = ShardRoute::Any;
        for (i, (frame, classified)) in request().enumerate() {
            let next = match frame.tag() {
                frontend::QUERY_TAG => match (frontend::query_text(frame.body()), classified) {
                    (Some(sql), Some(classified)) => route_of(sql, classified, None),
                    _ => ShardRoute::Any,
                },
                frontend::BIND_TAG => match Bind::parse(frame.body()) {
                    Some(bind) => {
                        // The statement parsed earlier in this request (classified when it
                        // came), or the client's statement of that name.
                        let parsed_here = request().take(i).filter_map(|(f, c)| {
                            let (name, sql) = frontend::parse_text(f.body())?;
                            (f.tag() == frontend::PARSE_TAG && name == bind.statement)
                                .then_some((sql, c.as_ref()?))
                        });
                        match parsed_here.last() {
                            Some((sql, classified)) => route_of(sql, classified, Some(&bind)),
                            None => match self.stored_statement(bind.statement) {
                                Some(parse) => match frontend::parse_text(&parse[HEADER_LEN..]) {
                                    Some((_, sql)) => {
                                        let classified = self.live.classifier.classify(sql);
                                        route_of(sql, &classified, Some(&bind))
                                    }
                                    None => ShardRoute::Any,
                                },
                                None => ShardRoute::Any,
                            },
                        }
                    }
                    None => ShardRoute::Any,
                },
                frontend::FUNCTION_CALL_TAG => ShardRoute::Refused(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "function calls (FunctionCall messages) have no shard key: use a statement with one"
                        .into(),
                ),
                _ => ShardRoute::Any,
            };
            route = route.and(next, || {
                "the statements of this request need different shards: send them in separate requests (Sync between them)".into()
            });
            if matches!(route, ShardRoute::Refused(..)) {
                break;
            }
        }
        route
    }

    /// The whole Parse message of a statement the client prepared before (`""`: unnamed).
    fn stored_statement(&self, name: &[u8]) -> Option<Bytes> {
        if name.is_empty() {
            self.statements.unnamed.clone()
        } else {
            self.statements.get(name).map(|p| p.parse.clone())
        }
    }
}
