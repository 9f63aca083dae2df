//! What the classifier says about a statement: its kind, tables, functions, settings, equality,
//! membership and column-link predicates and INSERT rows, with values referred to by literal index. Plain data shared by
//! the classifier (`classify.rs`), its AST walks (`walk.rs`) and everyone who reads a
//! classification.

use super::functions::Effect;

/// Where a value in a statement comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRef {
    /// The n-th literal of the scan (read its value per execution).
    Literal(usize),
    /// A `$n` parameter.
    Param(u32),
    /// `DEFAULT`, or a value spelled as a keyword or identifier (e.g. `SET x TO on`).
    Word(String),
    /// Anything computed.
    Expression,
}

/// A transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// What kind of statement it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A query that reads (SELECT, VALUES, SHOW, EXPLAIN without ANALYZE…).
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, TRUNCATE, or a query with a data-modifying CTE.
    Write,
    /// CREATE/ALTER/DROP and friends.
    Ddl,
    Begin {
        isolation: Option<Isolation>,
        read_only: Option<bool>,
    },
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    /// `SET name …` (session level).
    Set,
    /// `SET LOCAL name …`.
    SetLocal,
    Reset,
    ResetAll,
    /// `DISCARD ALL` (`all`), or `DISCARD PLANS | SEQUENCES | TEMP`.
    Discard {
        all: bool,
    },
    SetRole,
    SetSessionAuthorization,
    /// `SET TRANSACTION …`: the current transaction's modes, not a session setting.
    SetTransaction {
        isolation: Option<Isolation>,
        read_only: Option<bool>,
    },
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION …`: the session's default transaction modes
    /// (session state, like SET).
    SetSessionCharacteristics,
    Prepare {
        name: String,
    },
    Execute {
        name: String,
    },
    Deallocate {
        name: Option<String>,
    },
    Listen {
        channel: String,
    },
    Unlisten {
        channel: Option<String>,
    },
    Notify {
        channel: String,
    },
    CopyFrom,
    CopyTo,
    /// A `DO` block.
    Do,
    /// CREATE FUNCTION / PROCEDURE.
    CreateFunction,
    /// ALTER ROLE / ALTER USER (role defaults apply to later sessions).
    AlterRole,
    /// Anything else (VACUUM, LOCK, GRANT, …).
    Utility,
}

/// A function the statement calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// Lower-cased, schema-qualified when written so (`pg_catalog.set_config`).
    pub name: String,
    pub effect: Effect,
}

/// A setting the statement changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The setting's name, when written as an identifier or a literal.
    pub name: SettingName,
    /// The new value; `None` for RESET.
    pub value: Option<ValueRef>,
    /// `SET LOCAL` or `set_config(…, true)`: only for the current transaction.
    pub local: bool,
}

/// How a setting is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingName {
    /// Written as an identifier (part of the statement shape).
    Fixed(String),
    /// A literal (`set_config('app.tenant_id', …)`): read it per execution.
    Literal(usize),
    /// Computed: the sidecar cannot know which setting changes.
    Computed,
}

/// `column = value` in the top-level AND chain of WHERE, or a column of an INSERT row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equality {
    /// The table the column belongs to (alias resolved), when known.
    pub table: Option<String>,
    pub column: String,
    pub value: ValueRef,
}

/// `column IN (…)` or `column = ANY(…)` in the top-level AND chain of WHERE: the column equals
/// one of the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The table the column belongs to (alias resolved), when known.
    pub table: Option<String>,
    pub column: String,
    pub values: Members,
}

/// The values of a membership test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// `IN (v1, v2, …)` or `= ANY(ARRAY[v1, v2, …])`.
    List(Vec<ValueRef>),
    /// `= ANY($1)` or `= ANY('{…}')`: one array value.
    Array(ValueRef),
}

/// A column as a predicate names it (alias resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub table: Option<String>,
    pub column: String,
}

/// `a.x = b.y`: two columns equal, in the top-level AND chain of WHERE or of a join's ON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnLink {
    pub left: ColumnRef,
    pub right: ColumnRef,
}

/// Everything the classifier says about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementClass {
    pub kind: Kind,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// FOR UPDATE / FOR SHARE / … anywhere.
    pub locking: bool,
    /// Creates or uses temporary objects (CREATE TEMP …, `pg_temp.` names).
    pub temporary: bool,
    pub functions: Vec<FunctionCall>,
    pub settings: Vec<SettingChange>,
    pub equalities: Vec<Equality>,
    pub memberships: Vec<Membership>,
    pub links: Vec<ColumnLink>,
    /// INSERT rows as column/value pairs.
    pub insert_rows: Vec<Vec<Equality>>,
    /// The statement adds rows (INSERT, MERGE, a data-modifying CTE): it is never sent to
    /// every shard as it is.
    pub inserts: bool,
    /// The columns an UPDATE (or INSERT … ON CONFLICT DO UPDATE) assigns (their last name
    /// part).
    pub assigned: Vec<String>,
}

/// The classification of a whole query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// One entry per statement of the string.
    Parsed(Vec<StatementClass>),
    /// sqlparser could not parse it; callers decide (primary, never cached, refused under
    /// tenant enforcement).
    Unparsed { error: String },
}

impl StatementClass {
    pub(super) fn new(kind: Kind) -> StatementClass {
        StatementClass {
            kind,
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            locking: false,
            temporary: false,
            functions: Vec::new(),
            settings: Vec::new(),
            equalities: Vec::new(),
            memberships: Vec::new(),
            links: Vec::new(),
            insert_rows: Vec::new(),
            inserts: false,
            assigned: Vec::new(),
        }
    }

    /// Whether any called function is not known to be read-only.
    pub fn has_unsafe_functions(&self) -> bool {
        self.functions.iter().any(|f| f.effect != Effect::ReadOnly)
    }
}
