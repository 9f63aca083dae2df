//! What a classified statement means for the client's session ([`Effects`]): settings, LISTENs,
//! SQL prepared statements, pins, notifications, catalog changes. Pure: the relay and `resync`
//! act on it.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use super::state::{mentions_prepared, SqlPrepared};
use crate::sql::cache::Classified;
use crate::sql::cacheable::Writes;
use crate::sql::classify::{Classification, Kind, StatementClass};

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
    /// The tables it may write (the result cache invalidates them once it commits).
    pub writes: Writes,
    /// A whole-transaction ROLLBACK.
    pub rolls_back: bool,
    /// BEGIN / START TRANSACTION: a transaction may be open after it.
    pub begins: bool,
    /// BEGIN READ ONLY or SET TRANSACTION READ ONLY: the transaction cannot write.
    pub read_only_transaction: bool,
    /// The sidecar's stand-in for a signal call whose PID is Bind parameter `n` (1-based):
    /// its Binds are looked at (`relay/signals.rs`).
    pub signal: Option<(crate::sql::signal::SignalKind, usize)>,
}

/// A client's last statement shape and its effects. Texts of one shape share their
/// classification (one `Arc` from the classification cache), and [`Effects::of`] reads nothing
/// else of the text unless the client has SQL prepared statements (it looks for their names)
/// or the text prepares one (its text is kept): without those, the next text of the same
/// shape has the same effects, and the memo gives them without looking at the statements
/// again (most clients run a few shapes over and over).
#[derive(Default)]
pub struct EffectsMemo {
    last: Option<Remembered>,
}

struct Remembered {
    /// Held, so the pointer cannot be reused for another classification.
    classification: Arc<Classification>,
    cache: bool,
    effects: Arc<Effects>,
}

impl EffectsMemo {
    fn get(
        &self,
        classified: &Classified,
        client_prepared: bool,
        cache: bool,
    ) -> Option<Arc<Effects>> {
        let last = self.last.as_ref().filter(|_| !client_prepared)?;
        (last.cache == cache && Arc::ptr_eq(&last.classification, &classified.classification))
            .then(|| Arc::clone(&last.effects))
    }

    fn remember(
        &mut self,
        classified: &Classified,
        client_prepared: bool,
        cache: bool,
        effects: &Arc<Effects>,
    ) {
        let prepares = match classified.classification.as_ref() {
            Classification::Parsed(statements) => statements
                .iter()
                .any(|s| matches!(s.kind, Kind::Prepare { .. })),
            Classification::Unparsed { .. } => false,
        };
        self.last = (!client_prepared && !prepares).then(|| Remembered {
            classification: Arc::clone(&classified.classification),
            cache,
            effects: Arc::clone(effects),
        });
    }
}

impl Effects {
    /// No effect at all (shared, no allocation). One per thread: most messages take it, and
    /// one reference count for every runtime thread would bounce between their caches.
    pub fn none() -> Arc<Effects> {
        thread_local! {
            static NONE: Arc<Effects> = Arc::new(Effects::default());
        }
        NONE.with(Arc::clone)
    }

    /// Anything may have happened (a FunctionCall, an unparsable statement).
    pub fn unknown() -> Arc<Effects> {
        static UNKNOWN: OnceLock<Arc<Effects>> = OnceLock::new();
        Arc::clone(UNKNOWN.get_or_init(|| {
            Arc::new(Effects {
                capture: true,
                catalog: true,
                writes: Writes::Everything,
                ..Effects::default()
            })
        }))
    }

    /// What a classified statement text means for the session. `client_prepared`: the client
    /// has SQL prepared statements (only then is the text searched for their use).
    /// `cache`: the database has a result cache, which follows what statements write, BEGIN,
    /// ROLLBACK and READ ONLY (left out otherwise: most statements then share one `Effects`).
    pub fn of(
        sql: &[u8],
        classified: &Classified,
        client_prepared: bool,
        cache: bool,
    ) -> Arc<Effects> {
        let statements = match classified.classification.as_ref() {
            Classification::Unparsed { .. } => return Effects::unknown(),
            Classification::Parsed(statements) => statements,
        };
        let mut effects = Effects {
            mentions_prepared: client_prepared && mentions_prepared(sql),
            ..Effects::default()
        };
        effects.statements = statements.len();
        // Writes a ROLLBACK later in the text undoes are not writes; those a COMMIT ended are.
        let (mut committed, mut pending) = (Writes::None, Writes::None);
        for (i, statement) in statements.iter().enumerate() {
            if cache {
                pending.add(&Writes::of(statement));
                match statement.kind {
                    Kind::Commit => committed.add(&std::mem::take(&mut pending)),
                    Kind::Rollback => pending = Writes::None,
                    _ => {}
                }
                effects.rolls_back |= statement.kind == Kind::Rollback;
                effects.begins |= matches!(statement.kind, Kind::Begin { .. });
                effects.read_only_transaction |= matches!(
                    statement.kind,
                    Kind::Begin {
                        read_only: Some(true),
                        ..
                    } | Kind::SetTransaction {
                        read_only: Some(true),
                        ..
                    }
                );
            }
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
        committed.add(&pending);
        effects.writes = committed;
        if effects.any()
            || effects.notifies
            || effects.catalog
            || effects.ends_transaction.is_some()
            || !effects.writes.is_none()
            || effects.begins
            || effects.read_only_transaction
        {
            Arc::new(effects)
        } else {
            Effects::none()
        }
    }

    /// The effects of `classified`, from `memo` when the client's previous text had the same
    /// shape (see [`EffectsMemo`]).
    pub fn remembered(
        memo: &mut EffectsMemo,
        sql: &[u8],
        classified: &Classified,
        client_prepared: bool,
        cache: bool,
    ) -> Arc<Effects> {
        if let Some(known) = memo.get(classified, client_prepared, cache) {
            return known;
        }
        let effects = Effects::of(sql, classified, client_prepared, cache);
        memo.remember(classified, client_prepared, cache, &effects);
        effects
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
            | Kind::SetSessionCharacteristics
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::ClassificationCache;

    fn effects(sql: &str) -> Arc<Effects> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        Effects::of(sql.as_bytes(), &cache.classify(sql.as_bytes()), true, true)
    }

    #[test]
    fn the_memo_gives_what_the_text_means() {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        let mut memo = EffectsMemo::default();
        let mut run = |sql: &str, client_prepared: bool, cache_on: bool| {
            let classified = cache.classify(sql.as_bytes());
            let got = Effects::remembered(
                &mut memo,
                sql.as_bytes(),
                &classified,
                client_prepared,
                cache_on,
            );
            let want = Effects::of(sql.as_bytes(), &classified, client_prepared, cache_on);
            assert_eq!(
                got, want,
                "{sql} prepared={client_prepared} cache={cache_on}"
            );
            got
        };
        // The same shape, other literals: remembered.
        let first = run("UPDATE t SET a = 1 WHERE id = 2", false, true);
        let again = run("UPDATE t SET a = 7 WHERE id = 9", false, true);
        assert!(Arc::ptr_eq(&first, &again));
        // Another cache setting, another shape: asked again.
        run("UPDATE t SET a = 7 WHERE id = 9", false, false);
        run("LISTEN a", false, false);
        run("LISTEN b", false, false);
        // With SQL prepared statements the text is looked at (EXECUTE of which statement).
        run("EXECUTE p1", true, false);
        let p2 = run("EXECUTE p2", true, false);
        assert_eq!(p2.executes, vec!["p2".to_string()]);
        // A PREPARE keeps its own text: never remembered.
        run("PREPARE a AS SELECT 1", false, false);
        let b = run("PREPARE a AS SELECT 2", false, false);
        assert!(matches!(&b.sql_ops[..], [SqlOp::Prepare(_, p)] if p.text.contains('2')));
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
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
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
