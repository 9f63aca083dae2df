//! Keeping a client's session state in step with the server connections it uses in
//! transaction mode: what a statement means for that state ([`Effects`]), what to send before
//! it ([`before_forward`]: the client's SQL prepared statements and LISTENs when the statement
//! needs them), and what to do once its transaction is over ([`on_quiet`]: capture the state,
//! clean the connection, then stay pinned or release). Writes only to the attachment's buffer.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use super::attachment::{Attachment, Awaited, Expect, Reply, Source};
use super::state::{capture_sql, mentions_prepared, Captured, SessionState, SqlPrepared};
use super::statements::message;
use crate::metrics::{GaugeGuard, Metrics};
use crate::pool::pool::Settings;
use crate::pool::AppliedSettings;
use crate::protocol::frontend::append_query;
use crate::protocol::frontend::{BIND_TAG, CLOSE_TAG, EXECUTE_TAG, PARSE_TAG};
use crate::sql::cache::Classified;
use crate::sql::classify::{Classification, Kind, StatementClass};

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

/// One LISTEN or UNLISTEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenChange {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

impl ListenChange {
    /// The channels a client listens on once `changes` run. An UNLISTEN counts at once; a
    /// LISTEN only when `standalone` (alone, outside a transaction, so it cannot be undone) —
    /// otherwise the capture after its transaction says whether it committed.
    pub fn apply(changes: &[ListenChange], channels: &mut BTreeSet<String>, standalone: bool) {
        for change in changes {
            match change {
                ListenChange::Listen(c) if standalone => {
                    channels.insert(c.clone());
                }
                ListenChange::Listen(_) => {}
                ListenChange::Unlisten(c) => {
                    channels.remove(c);
                }
                ListenChange::UnlistenAll => channels.clear(),
            }
        }
    }
}

/// A change to the client's SQL prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlOp {
    Prepare(String, SqlPrepared),
    Deallocate(String),
    DeallocateAll,
}

/// What a client statement means for its session state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// It may change session state (settings, role, locks, cursors, temp tables): capture it
    /// when the transaction is over.
    pub capture: bool,
    /// DISCARD ALL.
    pub discard_all: bool,
    /// RESET ALL.
    pub reset_all: bool,
    /// PREPARE / DEALLOCATE [ALL] in the order the text runs them.
    pub sql_ops: Vec<SqlOp>,
    /// EXECUTE of a SQL prepared statement.
    pub executes: Vec<String>,
    /// LISTEN or UNLISTEN (DISCARD ALL unlistens too).
    pub listens: bool,
    /// The LISTEN / UNLISTEN changes, in order.
    pub listen_changes: Vec<ListenChange>,
    /// The text may name SQL prepared statements (EXECUTE, DEALLOCATE, EXPLAIN EXECUTE…).
    pub mentions_prepared: bool,
    /// NOTIFY or pg_notify: listeners will see this server connection's PID as the sender.
    pub notifies: bool,
    /// Statements in the text.
    pub statements: usize,
    /// It may create or change catalog objects (DDL, DO, anything not understood): statements
    /// prepared after it may depend on objects a rollback removes.
    pub catalog: bool,
    /// It may end a transaction or subtransaction by rolling it back: ROLLBACK, ROLLBACK TO
    /// SAVEPOINT, or COMMIT (of a failed transaction). `Some(true)` when the transaction ends.
    pub ends_transaction: Option<bool>,
    /// COPY … FROM STDIN: the server reads the client's data after it.
    pub copy_from: bool,
    /// The sidecar's stand-in for a signal call whose PID is Bind parameter `n` (1-based):
    /// its Binds are looked at (`relay/signals.rs`).
    pub signal: Option<(crate::sql::signal::SignalKind, usize)>,
}

impl Effects {
    /// No effect at all (shared, no allocation).
    pub fn none() -> Arc<Effects> {
        static NONE: OnceLock<Arc<Effects>> = OnceLock::new();
        Arc::clone(NONE.get_or_init(|| Arc::new(Effects::default())))
    }

    /// Anything may have happened (a FunctionCall, an unparsable statement).
    pub fn unknown() -> Arc<Effects> {
        static UNKNOWN: OnceLock<Arc<Effects>> = OnceLock::new();
        Arc::clone(UNKNOWN.get_or_init(|| {
            Arc::new(Effects {
                capture: true,
                catalog: true,
                ..Effects::default()
            })
        }))
    }

    /// What a classified statement text means for the session. `client_prepared`: the client
    /// has SQL prepared statements (only then is the text searched for their use).
    pub fn of(sql: &[u8], classified: &Classified, client_prepared: bool) -> Arc<Effects> {
        let statements = match classified.classification.as_ref() {
            Classification::Unparsed { .. } => return Effects::unknown(),
            Classification::Parsed(statements) => statements,
        };
        let mut effects = Effects {
            mentions_prepared: client_prepared && mentions_prepared(sql),
            ..Effects::default()
        };
        effects.statements = statements.len();
        for (i, statement) in statements.iter().enumerate() {
            effects.capture |= may_change_session(statement);
            effects.catalog |=
                matches!(statement.kind, Kind::Ddl | Kind::Do | Kind::CreateFunction);
            match statement.kind {
                Kind::CopyFrom => effects.copy_from = true,
                Kind::Rollback | Kind::Commit => effects.ends_transaction = Some(true),
                Kind::RollbackTo => {
                    effects.ends_transaction.get_or_insert(false);
                }
                _ => {}
            }
            effects.notifies |= matches!(statement.kind, Kind::Notify { .. })
                || statement
                    .functions
                    .iter()
                    .any(|f| f.name.rsplit('.').next() == Some("pg_notify"));
            match &statement.kind {
                Kind::Discard { all: true } => {
                    effects.discard_all = true;
                    effects.listens = true;
                    effects.listen_changes.push(ListenChange::UnlistenAll);
                }
                Kind::Deallocate { name: None } => effects.sql_ops.push(SqlOp::DeallocateAll),
                Kind::ResetAll => effects.reset_all = true,
                Kind::Deallocate { name: Some(name) } => {
                    effects.sql_ops.push(SqlOp::Deallocate(name.clone()))
                }
                Kind::Execute { name } => effects.executes.push(name.clone()),
                Kind::Prepare { name } => {
                    let text = classified
                        .scan
                        .statements
                        .get(i)
                        .filter(|_| classified.scan.statements.len() == statements.len())
                        .and_then(|range| sql.get(range.clone()))
                        .map(|t| String::from_utf8_lossy(t).into_owned());
                    match text {
                        Some(text) => {
                            let prepared = SqlPrepared {
                                text,
                                capture: may_change_session(statement),
                            };
                            effects.sql_ops.push(SqlOp::Prepare(name.clone(), prepared));
                        }
                        // Its text cannot be told apart: the capture drops it afterwards.
                        None => effects.capture = true,
                    }
                }
                Kind::Listen { channel } => {
                    effects.listens = true;
                    effects
                        .listen_changes
                        .push(ListenChange::Listen(channel.clone()));
                }
                Kind::Unlisten { channel } => {
                    effects.listens = true;
                    effects.listen_changes.push(match channel {
                        Some(c) => ListenChange::Unlisten(c.clone()),
                        None => ListenChange::UnlistenAll,
                    });
                }
                _ => {}
            }
        }
        if effects.any()
            || effects.notifies
            || effects.catalog
            || effects.ends_transaction.is_some()
        {
            Arc::new(effects)
        } else {
            Effects::none()
        }
    }

    /// Whether anything here concerns the session state at all.
    pub fn any(&self) -> bool {
        self.capture
            || self.discard_all
            || self.listens
            || self.mentions_prepared
            || !self.sql_ops.is_empty()
            || !self.executes.is_empty()
    }

    /// DEALLOCATE ALL.
    pub fn deallocates_all(&self) -> bool {
        self.sql_ops.contains(&SqlOp::DeallocateAll)
    }
}

/// Whether a statement may leave session state behind that the pool must know of.
fn may_change_session(statement: &StatementClass) -> bool {
    matches!(
        statement.kind,
        Kind::Set
            | Kind::Reset
            | Kind::ResetAll
            | Kind::SetRole
            | Kind::SetSessionAuthorization
            | Kind::Discard { .. }
            // A DO block can do anything a function can; DECLARE … WITH HOLD, LOAD and the
            // like are utilities.
            | Kind::Do
            | Kind::Utility
    ) || statement.temporary
        || statement.settings.iter().any(|c| !c.local)
        || statement.functions.iter().any(|f| {
            // Sequence functions change only currval/lastval, which no pooler can carry;
            // set_config is judged by its `is_local` argument above.
            let base = f.name.rsplit('.').next().unwrap_or(&f.name);
            f.effect != crate::sql::classify::Effect::ReadOnly
                && !matches!(
                    base,
                    "nextval" | "setval" | "currval" | "lastval" | "set_config" | "pg_notify"
                )
        })
}

/// Queues what the server connection needs before the client's statement with `effects`
/// runs on it, and records what the statement does to the client's state. `extended`: the
/// statement runs through a Bind, inside an extended batch, where only extended messages may
/// be injected.
pub(super) fn before_forward(
    att: &mut Attachment,
    state: &mut SessionState,
    effects: &Effects,
    extended: bool,
) {
    if !effects.any() {
        return;
    }
    let needs_prepared = effects.mentions_prepared
        || effects.sql_ops.iter().any(
            |op| matches!(op, SqlOp::Prepare(name, _) if state.sql_prepared.contains_key(name)),
        );
    if needs_prepared {
        ensure_sql_prepared(att, state, extended);
    }
    if effects
        .listen_changes
        .iter()
        .any(|c| matches!(c, ListenChange::Listen(_)))
    {
        // The capture reports what this connection listens on; the cleanup unlistens it.
        att.listened = true;
    }
    for op in &effects.sql_ops {
        match op {
            // A name the client has already is refused by the server (42P05): no change.
            SqlOp::Prepare(name, _) if state.sql_prepared.contains_key(name) => {}
            SqlOp::Prepare(name, prepared) => {
                state.sql_prepared.insert(name.clone(), prepared.clone());
                att.sql_on_conn.insert(name.clone());
                att.sql_created.push(name.clone());
            }
            SqlOp::Deallocate(name) => {
                state.sql_prepared.remove(name);
                att.sql_on_conn.remove(name);
            }
            SqlOp::DeallocateAll => {
                state.sql_prepared.clear();
                att.sql_on_conn.clear();
            }
        }
    }
    if effects.discard_all {
        state.sql_prepared.clear();
        att.sql_on_conn.clear();
    }
    let executes_capturing = effects
        .executes
        .iter()
        .any(|name| state.sql_prepared.get(name).is_some_and(|p| p.capture));
    if effects.capture
        || executes_capturing
        || effects.listens
        || !att.sql_on_conn.is_empty()
        || effects
            .sql_ops
            .iter()
            .any(|op| matches!(op, SqlOp::Deallocate(_)))
    {
        mark_due(att);
    }
}

/// Prepares the client's SQL prepared statements this server connection lacks (a statement
/// that names them is about to be parsed or run). They are deallocated before release.
pub(super) fn ensure_sql_prepared(att: &mut Attachment, state: &SessionState, extended: bool) {
    let missing: Vec<(String, String)> = state
        .missing_prepares(&att.sql_on_conn)
        .map(|(name, p)| (name.clone(), p.text.clone()))
        .collect();
    if missing.is_empty() {
        return;
    }
    for (name, text) in missing {
        if extended {
            inject_extended(att, &text);
        } else {
            inject(att, &text);
        }
        att.sql_on_conn.insert(name);
    }
    mark_due(att);
}

/// The client's state may have changed: capture it when the transaction is over, and never
/// hand the connection on before that.
pub(super) fn mark_due(att: &mut Attachment) {
    match &mut att.resync {
        Resync::Clean => att.resync = Resync::Due,
        Resync::Capturing { then_due, .. } | Resync::Settling { then_due, .. } => *then_due = true,
        Resync::Due | Resync::Failed => {}
    }
    att.server.conn_mut().applied = AppliedSettings::Unknown;
}

/// An injected statement failed.
pub(super) fn injected_failed(att: &mut Attachment) {
    att.resync = match att.resync {
        // Even the reset failed: the connection is closed at release.
        Resync::Settling { .. } => Resync::Clean,
        _ => Resync::Failed,
    };
    att.server.conn_mut().applied = AppliedSettings::Unknown;
}

fn inject(att: &mut Attachment, sql: &str) {
    append_query(&mut att.wbuf, sql);
    att.push_expect(Expect {
        source: Source::Sidecar,
    });
}

/// Runs `sql` (no parameters, no rows) inside an extended batch: through the unnamed
/// statement (the client's is prepared again before it is next used) and a portal of the
/// sidecar's own, every reply swallowed.
pub(super) fn inject_extended(att: &mut Attachment, sql: &str) {
    const PORTAL: &[u8] = b"pgsc_portal\0";
    att.wbuf.extend_from_slice(&message(
        PARSE_TAG,
        &[b"\0", sql.as_bytes(), b"\0", &0i16.to_be_bytes()],
    ));
    att.wbuf
        .extend_from_slice(&message(BIND_TAG, &[PORTAL, b"\0", &[0, 0, 0, 0, 0, 0]]));
    att.wbuf
        .extend_from_slice(&message(EXECUTE_TAG, &[PORTAL, &0i32.to_be_bytes()]));
    att.wbuf
        .extend_from_slice(&message(CLOSE_TAG, &[b"P", PORTAL]));
    att.unnamed_ready = false;
    for awaited in [
        Awaited::ParseComplete,
        Awaited::BindComplete,
        Awaited::ExecuteResult,
        Awaited::CloseComplete,
    ] {
        att.push_reply(awaited, Reply::Swallow);
    }
}

/// What the relay does with a quiet attachment (transaction over, nothing in flight).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Quiet {
    /// The sidecar queued statements of its own; wait for them.
    Busy,
    /// The client holds session state that cannot be pooled: keep the connection.
    Pinned,
    /// Return the connection to the pool.
    Release,
}

/// Moves the resync along once the attachment is quiet. `upstream_user` is the role the pool
/// logs in as. Returns the channels the client's LISTENs on this connection left it
/// listening on, when it ran any.
pub(super) fn on_quiet(
    att: &mut Attachment,
    state: &mut SessionState,
    upstream_user: &str,
    metrics: &Metrics,
) -> (Quiet, Option<BTreeSet<String>>) {
    match std::mem::take(&mut att.resync) {
        // The client ran more since the capture was sent: capture again.
        Resync::Capturing { then_due: true, .. } | Resync::Settling { then_due: true, .. } => {
            att.resync = Resync::Due;
            on_quiet(att, state, upstream_user, metrics)
        }
        Resync::Due => {
            append_query(&mut att.wbuf, &capture_sql(upstream_user));
            att.push_expect(Expect {
                source: Source::Capture,
            });
            metrics.session_captures.inc();
            att.resync = Resync::Capturing {
                rows: Captured::default(),
                then_due: false,
            };
            (Quiet::Busy, None)
        }
        Resync::Capturing {
            rows: captured,
            then_due: false,
        } => {
            let conn = att.server.conn_mut();
            if conn.token.as_ref().map(|t| &t.token) != captured.token.as_ref() {
                // The client changed or reset its token: it is set again before its next
                // statement.
                conn.token = None;
            }
            let channels = std::mem::take(&mut att.listened).then(|| captured.channels.clone());
            for name in std::mem::take(&mut att.sql_created) {
                if !captured.prepared.contains(&name) {
                    // Its PREPARE failed.
                    state.sql_prepared.remove(&name);
                }
            }
            att.sql_on_conn.clear();
            state.adopt_settings(&captured.settings);
            if !captured.pins.is_empty() {
                // Reset (DISCARD ALL) if the client vanishes while pinned.
                att.server.conn_mut().applied = AppliedSettings::Unknown;
                if att.pinned.is_none() {
                    tracing::debug!(reasons = ?captured.pins, "client pinned to its server connection");
                    att.pinned = Some(GaugeGuard::new(&metrics.clients_pinned));
                }
                return (Quiet::Pinned, channels);
            }
            att.pinned = None;
            match captured.cleanup_sql() {
                Some(sql) => {
                    inject(att, &sql);
                    att.resync = Resync::Settling {
                        settings: captured.settings,
                        then_due: false,
                    };
                    (Quiet::Busy, channels)
                }
                None => {
                    att.server.conn_mut().applied = AppliedSettings::Known(captured.settings);
                    (Quiet::Release, channels)
                }
            }
        }
        Resync::Settling {
            settings,
            then_due: false,
        } => {
            att.server.conn_mut().applied = AppliedSettings::Known(settings);
            (Quiet::Release, None)
        }
        Resync::Failed => {
            reset(att);
            metrics.server_resets.inc();
            (Quiet::Busy, None)
        }
        Resync::Clean if att.pinned.is_some() => (Quiet::Pinned, None),
        Resync::Clean => (Quiet::Release, None),
    }
}

/// DISCARD ALL, after which the connection carries no client state at all.
fn reset(att: &mut Attachment) {
    att.server.conn_mut().discarded();
    att.unnamed_ready = false;
    att.sql_on_conn.clear();
    att.sql_created.clear();
    att.listened = false;
    att.pinned = None;
    inject(att, "DISCARD ALL");
    att.resync = Resync::Settling {
        settings: Settings::new(),
        then_due: false,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::ClassificationCache;

    fn effects(sql: &str) -> Arc<Effects> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        Effects::of(sql.as_bytes(), &cache.classify(sql.as_bytes()), true)
    }

    #[test]
    fn plain_statements_have_no_effects() {
        for sql in [
            "SELECT 1",
            "UPDATE t SET a = 1 WHERE id = 2",
            "BEGIN",
            "SET LOCAL work_mem = '8MB'",
            "SELECT set_config('a.b', 'x', true)",
            "INSERT INTO t VALUES (nextval('s'))",
        ] {
            assert!(!effects(sql).any(), "{sql}");
        }
    }

    #[test]
    fn session_changes_are_captured() {
        for sql in [
            "SET search_path = app",
            "RESET ALL",
            "SELECT set_config('a.b', 'x', false)",
            "SELECT my_function()",
            "SELECT pg_advisory_lock(1)",
            "CREATE TEMP TABLE t (a int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SET ROLE reader",
            "DO $$BEGIN END$$",
            "this is not sql",
            // set_config in any position, and functions that run SQL given as text.
            "SELECT * FROM set_config('a.b', 'x', false)",
            "SELECT * FROM t, LATERAL set_config('a.b', 'x', false)",
            "WITH c AS (SELECT set_config('a.b', 'x', false)) SELECT * FROM c",
            "COPY (SELECT set_config('a.b', 'x', false)) TO STDOUT",
            "EXPLAIN ANALYZE SELECT set_config('a.b', 'x', false)",
            "SELECT query_to_xml('select 1', false, false, '')",
            "SELECT * FROM ts_stat('select to_tsvector(''a'')')",
            "SELECT * INTO TEMP t2 FROM t",
        ] {
            assert!(effects(sql).capture, "{sql}");
        }
    }

    #[test]
    fn prepare_keeps_its_own_statement_text() {
        let e = effects("SELECT 1; PREPARE q(int) AS SELECT $1 + 1; EXECUTE q(2)");
        let [SqlOp::Prepare(name, prepared)] = e.sql_ops.as_slice() else {
            panic!("one PREPARE expected: {:?}", e.sql_ops);
        };
        assert_eq!(name, "q");
        assert_eq!(prepared.text.trim(), "PREPARE q(int) AS SELECT $1 + 1");
        assert_eq!(e.executes, vec!["q".to_owned()]);
        let e = effects("DEALLOCATE ALL");
        assert!(e.deallocates_all());
        let e = effects("LISTEN jobs");
        assert!(e.listens && !e.capture);
        assert!(effects("DISCARD ALL").discard_all);
    }
}
