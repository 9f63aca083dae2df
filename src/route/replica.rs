//! Primary or replica: whether a request may run on a read replica (its statements, the
//! client's hint and route setting), and which replica serves it. Pure: the health and lag the
//! choice depends on are passed in.

use crate::config::Strategy;
use crate::sql::cache::Classified;
use crate::sql::classify::{Classification, Effect, Isolation, Kind, StatementClass};
use crate::sql::fingerprint::Hint;

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica,
}

/// The server a connection serving a client belongs to, by name (later: a shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Primary,
    /// The database's replica at this index (its order in the configuration).
    Replica(usize),
}

impl Upstream {
    pub fn is_replica(self) -> bool {
        matches!(self, Upstream::Replica(_))
    }
}

/// What the client asked for, by a `/* pgsidecar: route=… */` hint or `SET pgsidecar.route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutePreference {
    /// The classifier decides.
    #[default]
    Auto,
    Primary,
    Replica,
}

impl RoutePreference {
    /// `primary`, `replica` or `auto` (case-insensitive).
    pub fn parse(value: &str) -> Option<RoutePreference> {
        match value.trim().to_ascii_lowercase().as_str() {
            "primary" => Some(RoutePreference::Primary),
            "replica" => Some(RoutePreference::Replica),
            "auto" | "default" => Some(RoutePreference::Auto),
            _ => None,
        }
    }

    /// A hint's route, if it has a valid one.
    pub fn from_hint(hint: Option<&Hint>) -> Option<RoutePreference> {
        hint.and_then(|h| h.get("route"))
            .and_then(RoutePreference::parse)
    }
}

/// Whether a statement only reads and could run on a hot standby: a read (no FOR UPDATE/SHARE,
/// no temporary objects, no settings changed) whose functions are all known read-only.
fn replica_safe(statement: &StatementClass) -> bool {
    statement.kind == Kind::Read
        && !statement.locking
        && !statement.temporary
        && statement.settings.is_empty()
        && statement
            .functions
            .iter()
            .all(|f| f.effect == Effect::ReadOnly)
}

/// COMMIT, ROLLBACK and savepoints: fine inside a read-only transaction.
fn ends_or_marks(statement: &StatementClass) -> bool {
    matches!(
        statement.kind,
        Kind::Commit | Kind::Rollback | Kind::Savepoint | Kind::Release | Kind::RollbackTo
    )
}

/// How a request's statements bear on routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Reads a replica can serve outside a transaction.
    Read,
    /// Starts a transaction a replica can serve (`BEGIN READ ONLY`, not SERIALIZABLE, which a
    /// hot standby refuses), with nothing else in the request that needs the primary.
    BeginReadOnly,
    /// Anything else: the primary.
    Other,
}

/// What a classified request is, for routing.
pub fn request_kind(classification: &Classification) -> RequestKind {
    let Classification::Parsed(statements) = classification else {
        return RequestKind::Other;
    };
    let Some((first, rest)) = statements.split_first() else {
        return RequestKind::Other;
    };
    match first.kind {
        Kind::Begin {
            read_only: Some(true),
            isolation,
        } if isolation != Some(Isolation::Serializable)
            && rest.iter().all(|s| replica_safe(s) || ends_or_marks(s)) =>
        {
            RequestKind::BeginReadOnly
        }
        _ if statements.iter().all(replica_safe) => RequestKind::Read,
        _ => RequestKind::Other,
    }
}

/// How one statement text (or a whole request) bears on routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub kind: RequestKind,
    /// A `/* pgsidecar: route=… */` hint.
    pub hint: Option<RoutePreference>,
}

impl Routing {
    /// What an unknown statement means: the primary.
    pub const PRIMARY: Routing = Routing {
        kind: RequestKind::Other,
        hint: None,
    };

    /// Routing of a classified text, with its scanned hint.
    pub fn of(classified: &Classified) -> Routing {
        Routing {
            kind: request_kind(&classified.classification),
            hint: RoutePreference::from_hint(classified.scan.hint.as_ref()),
        }
    }

    /// Two parts of one request (an extended batch): a replica only if both only read.
    pub fn and(self, other: Routing) -> Routing {
        Routing {
            kind: match (self.kind, other.kind) {
                (RequestKind::Read, RequestKind::Read) => RequestKind::Read,
                _ => RequestKind::Other,
            },
            hint: self.hint.or(other.hint),
        }
    }

    /// Where the request runs when it starts outside a transaction; `preference` is the
    /// client's `SET pgsidecar.route` (a hint in the statement wins).
    pub fn target(self, preference: RoutePreference) -> Target {
        target(self.kind, self.hint.unwrap_or(preference))
    }
}

/// Where a request that starts outside a transaction runs.
pub fn target(kind: RequestKind, preference: RoutePreference) -> Target {
    match (preference, kind) {
        (RoutePreference::Primary, _) | (_, RequestKind::Other) => Target::Primary,
        // A hint cannot send a write to a replica; it can send a read there.
        (RoutePreference::Replica, _) => Target::Replica,
        (RoutePreference::Auto, RequestKind::Read | RequestKind::BeginReadOnly) => Target::Replica,
    }
}

/// One replica as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Healthy, within the lag limit, and fresh enough for read-your-writes.
    pub usable: bool,
    /// Server connections of its pool in use now.
    pub in_use: usize,
}

/// The replica to use among `candidates`, or `None` when none is usable. `turn` is a counter
/// the caller increments per choice (round robin), `random` a random number.
pub fn choose(
    candidates: &[Candidate],
    strategy: Strategy,
    turn: usize,
    random: usize,
) -> Option<usize> {
    let usable: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].usable)
        .collect();
    if usable.is_empty() {
        return None;
    }
    Some(match strategy {
        Strategy::RoundRobin => usable[turn % usable.len()],
        Strategy::Random => usable[random % usable.len()],
        Strategy::LeastConnections => {
            let least = usable
                .iter()
                .map(|&i| candidates[i].in_use)
                .min()
                .unwrap_or(0);
            let tied: Vec<usize> = usable
                .into_iter()
                .filter(|&i| candidates[i].in_use == least)
                .collect();
            tied[turn % tied.len()]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::ClassificationCache;

    fn kind(sql: &str) -> RequestKind {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        request_kind(&cache.classify(sql.as_bytes()).classification)
    }

    #[test]
    fn reads_and_the_rest() {
        for sql in [
            "SELECT * FROM t WHERE id = 1",
            "SELECT count(*) FROM a JOIN b ON a.id = b.a",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SHOW work_mem",
            "SELECT 1; SELECT 2",
        ] {
            assert_eq!(kind(sql), RequestKind::Read, "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT nextval('s')",
            "SELECT currval('s')",
            "SELECT my_function()",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT set_config('a.b', '1', false)",
            "SELECT * FROM pg_temp.t",
            "BEGIN",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "SELECT 1; UPDATE t SET a = 1",
            "not sql at all",
        ] {
            assert_eq!(kind(sql), RequestKind::Other, "{sql}");
        }
        assert_eq!(kind("BEGIN READ ONLY"), RequestKind::BeginReadOnly);
        assert_eq!(
            kind("BEGIN READ ONLY; SELECT 1; COMMIT"),
            RequestKind::BeginReadOnly
        );
        assert_eq!(
            kind("BEGIN READ ONLY; INSERT INTO t VALUES (1); COMMIT"),
            RequestKind::Other
        );
        assert_eq!(
            kind("START TRANSACTION READ ONLY; SELECT 1"),
            RequestKind::BeginReadOnly
        );
    }

    #[test]
    fn preferences() {
        assert_eq!(
            target(RequestKind::Read, RoutePreference::Auto),
            Target::Replica
        );
        assert_eq!(
            target(RequestKind::Read, RoutePreference::Primary),
            Target::Primary
        );
        assert_eq!(
            target(RequestKind::Other, RoutePreference::Replica),
            Target::Primary
        );
        assert_eq!(
            RoutePreference::parse(" Replica "),
            Some(RoutePreference::Replica)
        );
        assert_eq!(RoutePreference::parse("elsewhere"), None);
    }

    #[test]
    fn choosing() {
        let c = |usable, in_use| Candidate { usable, in_use };
        let cs = [c(true, 3), c(false, 0), c(true, 1)];
        assert_eq!(choose(&cs, Strategy::RoundRobin, 0, 0), Some(0));
        assert_eq!(choose(&cs, Strategy::RoundRobin, 1, 0), Some(2));
        assert_eq!(choose(&cs, Strategy::LeastConnections, 0, 0), Some(2));
        assert_eq!(choose(&cs, Strategy::Random, 0, 5), Some(2));
        assert_eq!(choose(&[c(false, 0)], Strategy::RoundRobin, 0, 0), None);
    }
}
