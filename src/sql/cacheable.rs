//! Whether a classified statement's result may be cached, and for how long: one read whose
//! classification is fully understood, calling only functions whose result depends on nothing
//! but their arguments and the session's settings (no `now()`, `random()`, `nextval`,
//! `current_setting`…), with no locking clause, no temporary objects and no system catalogs,
//! and whitelisted by a rule (every table it reads, or its fingerprint). Also which tables a
//! statement may write, for invalidation. Pure.

use std::time::Duration;

use super::cache::Classified;
use super::class::{Classification, Kind, StatementClass};
use super::functions::{function_effect, Effect};
use crate::config::CacheRule;

/// Why a statement is not cached (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `/* pgsidecar: nocache */`.
    Hint,
    /// Not parsed, or more than one statement.
    NotUnderstood,
    /// Not a plain read.
    NotRead,
    /// FOR UPDATE / FOR SHARE.
    Locking,
    /// Temporary objects.
    Temporary,
    /// A function whose result may change between calls (or is not known).
    Function,
    /// Reads a system catalog.
    Catalog,
    /// No rule whitelists it.
    NotWhitelisted,
    /// Inside a transaction (or after the client's own write still in flight).
    Transaction,
    /// The request is not one statement run once (several Executes, a Describe of a
    /// statement, a Close, a row limit, a Flush).
    Shape,
    /// The reply was an error, too large, or did not end the transaction idle.
    Reply,
    /// The invalidation listener is down: nothing is served or stored.
    Offline,
}

impl Refusal {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Hint => "hint",
            Refusal::NotUnderstood => "not_understood",
            Refusal::NotRead => "not_read",
            Refusal::Locking => "locking",
            Refusal::Temporary => "temporary",
            Refusal::Function => "function",
            Refusal::Catalog => "catalog",
            Refusal::NotWhitelisted => "not_whitelisted",
            Refusal::Transaction => "transaction",
            Refusal::Shape => "shape",
            Refusal::Reply => "reply",
            Refusal::Offline => "offline",
        }
    }

    pub const ALL: [Refusal; 12] = [
        Refusal::Hint,
        Refusal::NotUnderstood,
        Refusal::NotRead,
        Refusal::Locking,
        Refusal::Temporary,
        Refusal::Function,
        Refusal::Catalog,
        Refusal::NotWhitelisted,
        Refusal::Transaction,
        Refusal::Shape,
        Refusal::Reply,
        Refusal::Offline,
    ];
}

/// A cacheable statement: the tables it reads (last name part, what generations are kept by)
/// and the TTL of the rule that whitelists it (the shortest, when several do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cacheable {
    pub tables: Vec<String>,
    pub ttl: Duration,
}

/// Functions on the read-only list whose result still changes between calls with the same
/// arguments, or depends on who or where the session is: never cached.
const VOLATILE_READS: &[&str] = &[
    "age",
    "clock_timestamp",
    "current_date",
    "current_schema",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "gen_random_uuid",
    "localtime",
    "localtimestamp",
    "now",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_sleep",
    "random",
    "session_user",
    "statement_timestamp",
    "timeofday",
    "transaction_timestamp",
    "uuid_generate_v4",
    "version",
];

/// Whether a statement's text may be cached under `rules` (the database's).
pub fn judge(classified: &Classified, rules: &[CacheRule]) -> Result<Cacheable, Refusal> {
    if nocache_hint(classified) {
        return Err(Refusal::Hint);
    }
    judge_shape(classified, rules)
}

/// `/* pgsidecar: nocache */`: this text is never cached.
pub fn nocache_hint(classified: &Classified) -> bool {
    classified
        .scan
        .hint
        .as_ref()
        .is_some_and(|h| h.get("nocache").is_some())
}

/// [`judge`] without the text's hint: the same for every text of one classification (its
/// fingerprint), so callers may remember it.
pub fn judge_shape(classified: &Classified, rules: &[CacheRule]) -> Result<Cacheable, Refusal> {
    let Classification::Parsed(statements) = classified.classification.as_ref() else {
        return Err(Refusal::NotUnderstood);
    };
    let [statement] = statements.as_slice() else {
        return Err(Refusal::NotUnderstood);
    };
    check_statement(statement)?;
    let by_fingerprint = rules
        .iter()
        .filter(|r| {
            r.fingerprints
                .iter()
                .any(|f| f[..] == classified.scan.fingerprint[..])
        })
        .map(|r| r.ttl);
    let by_tables = rules
        .iter()
        .filter(|r| {
            !statement.tables_read.is_empty()
                && statement
                    .tables_read
                    .iter()
                    .all(|t| r.tables.iter().any(|w| same_table(t, w)))
        })
        .map(|r| r.ttl);
    let ttl = by_fingerprint
        .chain(by_tables)
        .min()
        .ok_or(Refusal::NotWhitelisted)?;
    Ok(Cacheable {
        tables: statement
            .tables_read
            .iter()
            .map(|t| base_name(t).to_owned())
            .collect(),
        ttl,
    })
}

/// What makes one statement uncacheable whatever the rules say.
fn check_statement(statement: &StatementClass) -> Result<(), Refusal> {
    if statement.kind != Kind::Read || !statement.settings.is_empty() {
        return Err(Refusal::NotRead);
    }
    if statement.locking {
        return Err(Refusal::Locking);
    }
    if statement.temporary {
        return Err(Refusal::Temporary);
    }
    if statement.tables_read.iter().any(|t| is_catalog(t)) {
        return Err(Refusal::Catalog);
    }
    let volatile = statement.functions.iter().any(|f| {
        f.effect != Effect::ReadOnly
            // The classifier's own list may be extended by configuration; only the built-in
            // judgement counts here.
            || function_effect(&f.name, &[]) != Effect::ReadOnly
            || VOLATILE_READS.contains(&base_name(&f.name))
            || is_catalog(&f.name)
    });
    if volatile {
        return Err(Refusal::Function);
    }
    Ok(())
}

/// The tables a statement may write, for invalidation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Writes {
    /// Nothing.
    #[default]
    None,
    /// These tables (last name part).
    Tables(Vec<String>),
    /// Anything: DDL, DO, a function with unknown effects, a statement not understood.
    Everything,
}

impl Writes {
    /// What `statement` may write.
    pub fn of(statement: &StatementClass) -> Writes {
        match statement.kind {
            Kind::Read if statement.has_unsafe_functions() => Writes::Everything,
            Kind::Write | Kind::CopyFrom if !statement.has_unsafe_functions() => {
                match statement.tables_written.is_empty() {
                    true => Writes::Everything,
                    false => Writes::Tables(
                        statement
                            .tables_written
                            .iter()
                            .map(|t| base_name(t).to_owned())
                            .collect(),
                    ),
                }
            }
            Kind::Write
            | Kind::CopyFrom
            | Kind::Ddl
            | Kind::Do
            | Kind::CreateFunction
            | Kind::Execute { .. }
            | Kind::Utility => Writes::Everything,
            _ => Writes::None,
        }
    }

    /// Both.
    pub fn add(&mut self, other: &Writes) {
        match (&mut *self, other) {
            (_, Writes::None) | (Writes::Everything, _) => {}
            (_, Writes::Everything) => *self = Writes::Everything,
            (Writes::None, w) => *self = w.clone(),
            (Writes::Tables(mine), Writes::Tables(theirs)) => {
                for t in theirs {
                    if !mine.contains(t) {
                        mine.push(t.clone());
                    }
                }
            }
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Writes::None
    }
}

/// The last part of a possibly qualified name.
pub fn base_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Whether a table read matches a whitelisted name: equal when both are qualified, by last
/// part when either is not (search_path is part of the cache key).
fn same_table(read: &str, whitelisted: &str) -> bool {
    match (read.contains('.'), whitelisted.contains('.')) {
        (true, true) => read == whitelisted,
        _ => base_name(read) == base_name(whitelisted),
    }
}

/// Whether a name is a system catalog's (`pg_*`, `pg_catalog.*`, `information_schema.*`).
fn is_catalog(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("pg_catalog.")
        || lower.starts_with("information_schema.")
        || base_name(&lower).starts_with("pg_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::ClassificationCache;

    fn rule(tables: &[&str], fingerprints: &[&str], ttl: u64) -> CacheRule {
        CacheRule {
            database: "app".into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            fingerprints: fingerprints
                .iter()
                .map(|f| {
                    crate::sql::fingerprint::scan(f.as_bytes())
                        .fingerprint
                        .to_vec()
                })
                .collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn judge_sql(sql: &str, rules: &[CacheRule]) -> Result<Cacheable, Refusal> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        judge(&cache.classify(sql.as_bytes()), rules)
    }

    #[test]
    fn whitelisted_reads_only() {
        let rules = [
            rule(&["products", "public.prices"], &[], 60),
            rule(
                &[],
                &["SELECT count(*) FROM orders WHERE day = '2026-01-01'"],
                5,
            ),
        ];
        let ok = |sql: &str| judge_sql(sql, &rules);
        assert_eq!(
            ok("SELECT * FROM products WHERE id = $1"),
            Ok(Cacheable {
                tables: vec!["products".into()],
                ttl: Duration::from_secs(60)
            })
        );
        assert!(
            ok("SELECT p.name, x.price FROM public.products p JOIN prices x ON x.id = p.id")
                .is_ok()
        );
        // A fingerprint rule: same shape, other literal; its own TTL.
        assert_eq!(
            ok("select count(*) from orders where day = '2027-02-02'").map(|c| c.ttl),
            Ok(Duration::from_secs(5))
        );
        let cases: &[(&str, Refusal)] = &[
            ("SELECT * FROM orders", Refusal::NotWhitelisted),
            (
                "SELECT * FROM products JOIN orders USING (id)",
                Refusal::NotWhitelisted,
            ),
            ("SELECT * FROM other.prices", Refusal::NotWhitelisted),
            ("SELECT * FROM products FOR UPDATE", Refusal::Locking),
            ("SELECT now(), * FROM products", Refusal::Function),
            ("SELECT random() FROM products", Refusal::Function),
            ("SELECT nextval('s') FROM products", Refusal::Function),
            ("SELECT my_func(id) FROM products", Refusal::Function),
            (
                "SELECT current_setting('x') FROM products",
                Refusal::Function,
            ),
            ("SELECT * FROM pg_class", Refusal::Catalog),
            ("SELECT * FROM pg_temp.products", Refusal::Temporary),
            ("UPDATE products SET name = 'x'", Refusal::NotRead),
            (
                "SELECT 1 FROM products; SELECT 2 FROM products",
                Refusal::NotUnderstood,
            ),
            (
                "/* pgsidecar: nocache */ SELECT * FROM products",
                Refusal::Hint,
            ),
            ("SELEC x", Refusal::NotUnderstood),
        ];
        for (sql, refusal) in cases {
            assert_eq!(ok(sql).map(|_| ()), Err(*refusal), "{sql}");
        }
    }

    #[test]
    fn writes_name_their_tables_or_everything() {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        let writes = |sql: &str| {
            let c = cache.classify(sql.as_bytes());
            let Classification::Parsed(s) = c.classification.as_ref() else {
                return Writes::Everything;
            };
            let mut w = Writes::None;
            s.iter().for_each(|s| w.add(&Writes::of(s)));
            w
        };
        assert_eq!(
            writes("INSERT INTO public.products VALUES (1)"),
            Writes::Tables(vec!["products".into()])
        );
        assert_eq!(
            writes("UPDATE prices SET p = 1; DELETE FROM products"),
            Writes::Tables(vec!["prices".into(), "products".into()])
        );
        assert_eq!(writes("SELECT * FROM products"), Writes::None);
        assert_eq!(writes("SELECT my_func()"), Writes::Everything);
        assert_eq!(writes("DROP TABLE products"), Writes::Everything);
        assert_eq!(writes("BEGIN"), Writes::None);
    }
}
