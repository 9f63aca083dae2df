//! The SQL classifier: parses a statement with sqlparser (PostgreSQL dialect) and answers what
//! the rest of the sidecar asks of it — its kind, the tables it reads and writes, locking,
//! temporary objects, the functions it calls and how safe they are, the settings it changes
//! (SET, RESET, `set_config` anywhere in an expression), and top-level equality predicates and
//! INSERT values for sharding and caching.
//!
//! Values that vary between executions are never stored: a classification refers to literals
//! by their index in the [`Scan`](super::fingerprint::Scan), so one classification serves every
//! execution of a statement shape. Pure: no I/O, no caching here (see `cache.rs`).

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, FromTable, ObjectName, Query, SetExpr, Statement, TableFactor, TableObject,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::fingerprint::Scan;

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
    Discard,
    SetRole,
    SetSessionAuthorization,
    /// `SET TRANSACTION …` / `SET SESSION CHARACTERISTICS …`: not a session setting.
    SetTransaction,
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
    /// Anything else (VACUUM, LOCK, GRANT, …).
    Utility,
}

/// How a function call may affect the database or the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// On the read-only list.
    ReadOnly,
    /// On the side-effecting list (`nextval`, `set_config`, advisory locks, …).
    SideEffecting,
    /// Neither: user-defined or unlisted; strict callers treat it as side-effecting.
    Unknown,
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
    /// INSERT rows as column/value pairs.
    pub insert_rows: Vec<Vec<Equality>>,
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
    fn new(kind: Kind) -> StatementClass {
        StatementClass {
            kind,
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            locking: false,
            temporary: false,
            functions: Vec::new(),
            settings: Vec::new(),
            equalities: Vec::new(),
            insert_rows: Vec::new(),
        }
    }

    /// Whether any called function is not known to be read-only.
    pub fn has_unsafe_functions(&self) -> bool {
        self.functions.iter().any(|f| f.effect != Effect::ReadOnly)
    }
}

/// Functions known to change nothing.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_date",
    "current_schema",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "exp",
    "extract",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_set",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "octet_length",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_sleep",
    "position",
    "power",
    "random",
    "regexp_replace",
    "repeat",
    "replace",
    "right",
    "round",
    "row_number",
    "rank",
    "dense_rank",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "uuid_generate_v4",
    "version",
    "clock_timestamp",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    "percentile_cont",
    "percentile_disc",
    "stddev",
    "variance",
    "exists",
    "cast",
    "array_remove",
    "array_append",
    "array_cat",
    "cardinality",
    "initcap",
    "reverse",
    "translate",
    "encode",
    "decode",
    "date",
    "timezone",
    "justify_interval",
];

/// Functions known to have effects beyond the statement's own result.
const SIDE_EFFECTING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_stat_reset",
];

/// Side-effecting function name prefixes (`pg_advisory_lock*`, `lo_*`, `dblink*`).
const SIDE_EFFECTING_PREFIXES: &[&str] = &["pg_advisory", "pg_try_advisory", "lo_", "dblink"];

/// How a function name is judged; `extra_read_only` extends the safe list.
pub fn function_effect(name: &str, extra_read_only: &[String]) -> Effect {
    let base = name.rsplit('.').next().unwrap_or(name);
    if SIDE_EFFECTING_FUNCTIONS.contains(&base)
        || SIDE_EFFECTING_PREFIXES.iter().any(|p| base.starts_with(p))
    {
        Effect::SideEffecting
    } else if READ_ONLY_FUNCTIONS.contains(&base)
        || extra_read_only.iter().any(|f| f == name || f == base)
    {
        Effect::ReadOnly
    } else {
        Effect::Unknown
    }
}

/// Classifies `sql` (already scanned into `scan`).
pub fn classify(sql: &[u8], scan: &Scan) -> Classification {
    let Ok(text) = std::str::from_utf8(sql) else {
        return Classification::Unparsed {
            error: "the statement is not valid UTF-8".into(),
        };
    };
    // DO blocks are not in sqlparser's PostgreSQL grammar; they are recognised by their word.
    if first_word(text).eq_ignore_ascii_case("do") && scan.statements.len() == 1 {
        return Classification::Parsed(vec![StatementClass::new(Kind::Do)]);
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, text) {
        Ok(s) => s,
        // Function bodies in languages sqlparser does not know still say what they are.
        Err(_) if creates_routine(text) && scan.statements.len() == 1 => {
            return Classification::Parsed(vec![StatementClass::new(Kind::CreateFunction)]);
        }
        Err(e) => {
            return Classification::Unparsed {
                error: e.to_string(),
            }
        }
    };
    let positions = Positions::new(text, scan);
    Classification::Parsed(
        statements
            .iter()
            .map(|s| classify_statement(s, &positions))
            .collect(),
    )
}

/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE …`, judged by its leading words.
fn creates_routine(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .take(4)
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["create", "function" | "procedure", ..]
            | ["create", "or", "replace", "function" | "procedure"]
    )
}

fn first_word(text: &str) -> &str {
    let t = text.trim_start();
    let end = t
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(t.len());
    &t[..end]
}

/// Maps sqlparser's line/column locations to scan literal indexes.
struct Positions<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    scan: &'a Scan,
}

impl<'a> Positions<'a> {
    fn new(text: &'a str, scan: &'a Scan) -> Positions<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Positions {
            text,
            line_starts,
            scan,
        }
    }

    fn literal_at(&self, location: sqlparser::tokenizer::Location) -> Option<usize> {
        let line = usize::try_from(location.line).ok()?.checked_sub(1)?;
        let start = *self.line_starts.get(line)?;
        let column = usize::try_from(location.column).ok()?.checked_sub(1)?;
        let offset = start
            + self.text[start..]
                .char_indices()
                .nth(column)
                .map(|(i, _)| i)?;
        self.scan
            .literals
            .iter()
            .position(|l| l.span.start == offset)
    }

    fn value_ref(&self, expr: &Expr) -> ValueRef {
        match expr {
            Expr::Value(v) => match &v.value {
                ast::Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .map_or(ValueRef::Expression, ValueRef::Param),
                ast::Value::Boolean(b) => ValueRef::Word(b.to_string()),
                ast::Value::Null => ValueRef::Word("null".into()),
                _ => self
                    .literal_at(v.span.start)
                    .map_or(ValueRef::Expression, ValueRef::Literal),
            },
            Expr::Cast { expr, .. } | Expr::Nested(expr) => self.value_ref(expr),
            Expr::Identifier(id) => ValueRef::Word(id.value.to_lowercase()),
            Expr::UnaryOp { .. } => ValueRef::Expression,
            _ => ValueRef::Expression,
        }
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(id) if id.quote_style.is_some() => id.value.clone(),
            Some(id) => id.value.to_lowercase(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn classify_statement(statement: &Statement, positions: &Positions<'_>) -> StatementClass {
    let mut class = StatementClass::new(kind_of(statement, positions));
    let mut walker = Walker {
        positions,
        relations: Vec::new(),
        targets: Vec::new(),
        ctes: HashSet::new(),
        table_functions: Vec::new(),
        functions: Vec::new(),
        settings: Vec::new(),
        locking: false,
        writes: false,
    };
    let _ = statement.visit(&mut walker);
    // Tables: every relation named, minus CTE names; targets of writes are written, and read
    // too when they also appear elsewhere (UPDATE t … FROM t).
    let mut remaining = walker.relations.clone();
    for target in walker.targets.iter().chain(&walker.table_functions) {
        if let Some(i) = remaining.iter().position(|r| r == target) {
            remaining.remove(i);
        }
    }
    let is_cte = |name: &String| !name.contains('.') && walker.ctes.contains(name);
    for name in remaining.into_iter().filter(|n| !is_cte(n)) {
        if !class.tables_read.contains(&name) {
            class.tables_read.push(name);
        }
    }
    for name in walker.targets.iter().filter(|n| !is_cte(n)) {
        if !class.tables_written.contains(name) {
            class.tables_written.push(name.clone());
        }
    }
    class.temporary = class
        .tables_read
        .iter()
        .chain(&class.tables_written)
        .any(|t| t.starts_with("pg_temp"))
        || is_temporary_create(statement);
    class.locking = walker.locking;
    class.functions = walker.functions;
    class.settings.extend(walker.settings);
    if walker.writes && class.kind == Kind::Read {
        class.kind = Kind::Write;
    }
    if let Some(settings) = statement_settings(statement, positions) {
        class.settings.splice(0..0, settings);
    }
    match statement {
        Statement::Query(query) => {
            if let SetExpr::Select(select) = query.body.as_ref() {
                if let Some(selection) = &select.selection {
                    let factors = select.from.iter().flat_map(|t| {
                        std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))
                    });
                    let aliases = aliases(factors);
                    equalities(selection, &aliases, positions, &mut class.equalities);
                }
            }
        }
        Statement::Update(update) => {
            if let Some(selection) = &update.selection {
                let aliases = aliases(std::iter::once(&update.table.relation));
                equalities(selection, &aliases, positions, &mut class.equalities);
            }
        }
        Statement::Delete(delete) => {
            if let Some(selection) = &delete.selection {
                let tables = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let aliases = aliases(tables.iter().map(|t| &t.relation));
                equalities(selection, &aliases, positions, &mut class.equalities);
            }
        }
        Statement::Insert(insert) => {
            let table = match &insert.table {
                TableObject::TableName(name) => Some(object_name(name)),
                _ => None,
            };
            let values = insert.source.as_ref().map(|q| q.body.as_ref());
            if let (Some(SetExpr::Values(values)), false) = (values, insert.columns.is_empty()) {
                for row in &values.rows {
                    let pairs = insert
                        .columns
                        .iter()
                        .zip(&row.content)
                        .map(|(column, value)| Equality {
                            table: table.clone(),
                            column: object_name(column),
                            value: positions.value_ref(value),
                        })
                        .collect();
                    class.insert_rows.push(pairs);
                }
            }
        }
        _ => {}
    }
    class
}

fn is_temporary_create(statement: &Statement) -> bool {
    match statement {
        Statement::CreateTable(t) => t.temporary,
        Statement::CreateView(v) => v.temporary,
        Statement::CreateSequence { temporary, .. } => *temporary,
        _ => false,
    }
}

fn kind_of(statement: &Statement, positions: &Positions<'_>) -> Kind {
    let _ = positions;
    match statement {
        Statement::Query(_) => Kind::Read,
        Statement::Explain {
            analyze, statement, ..
        } => {
            let inner = kind_of(statement, positions);
            if *analyze && inner != Kind::Read {
                inner
            } else {
                Kind::Read
            }
        }
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. } => Kind::Read,
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_) => Kind::Write,
        Statement::StartTransaction { modes, .. } => {
            let (isolation, read_only) = transaction_modes(modes);
            Kind::Begin {
                isolation,
                read_only,
            }
        }
        Statement::Commit { .. } => Kind::Commit,
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Kind::RollbackTo,
        Statement::Rollback { .. } => Kind::Rollback,
        Statement::Savepoint { .. } => Kind::Savepoint,
        Statement::ReleaseSavepoint { .. } => Kind::Release,
        Statement::Set(set) => match set {
            ast::Set::SingleAssignment {
                scope: Some(ast::ContextModifier::Local),
                ..
            } => Kind::SetLocal,
            ast::Set::SetTimeZone { local: true, .. } => Kind::SetLocal,
            ast::Set::SetRole { .. } => Kind::SetRole,
            ast::Set::SetSessionAuthorization(_) => Kind::SetSessionAuthorization,
            ast::Set::SetTransaction { .. } => Kind::SetTransaction,
            _ => Kind::Set,
        },
        Statement::Reset(reset) => match reset.reset {
            ast::Reset::ALL => Kind::ResetAll,
            ast::Reset::SessionAuthorization => Kind::SetSessionAuthorization,
            ast::Reset::ConfigurationParameter(_) => Kind::Reset,
        },
        Statement::Discard { .. } => Kind::Discard,
        Statement::Prepare { name, .. } => Kind::Prepare {
            name: name.value.to_lowercase(),
        },
        Statement::Execute {
            name: Some(name), ..
        } => Kind::Execute {
            name: object_name(name),
        },
        Statement::Deallocate { name, .. } => {
            let n = name.value.to_lowercase();
            Kind::Deallocate {
                name: (n != "all").then_some(n),
            }
        }
        Statement::LISTEN { channel } => Kind::Listen {
            channel: channel.value.clone(),
        },
        Statement::UNLISTEN { channel } => Kind::Unlisten {
            channel: (channel.value != "*").then(|| channel.value.clone()),
        },
        Statement::NOTIFY { channel, .. } => Kind::Notify {
            channel: channel.value.clone(),
        },
        Statement::Copy { to, .. } => {
            if *to {
                Kind::CopyTo
            } else {
                Kind::CopyFrom
            }
        }
        Statement::CreateFunction(_) | Statement::CreateProcedure { .. } => Kind::CreateFunction,
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateExtension(_)
        | Statement::CreatePolicy(_)
        | Statement::CreateTrigger(_)
        | Statement::CreateRole(_)
        | Statement::CreateDomain(_)
        | Statement::AlterTable(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView(_)
        | Statement::AlterRole { .. }
        | Statement::AlterPolicy(_)
        | Statement::AlterSchema(_)
        | Statement::AlterType(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::DropTrigger(_)
        | Statement::DropExtension(_)
        | Statement::DropPolicy(_)
        | Statement::RenameTable(_)
        | Statement::Comment { .. } => Kind::Ddl,
        _ => Kind::Utility,
    }
}

fn transaction_modes(modes: &[TransactionMode]) -> (Option<Isolation>, Option<bool>) {
    let mut isolation = None;
    let mut read_only = None;
    for mode in modes {
        match mode {
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => read_only = Some(true),
            TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                read_only = Some(false)
            }
            TransactionMode::IsolationLevel(level) => {
                isolation = Some(match level {
                    TransactionIsolationLevel::ReadUncommitted => Isolation::ReadUncommitted,
                    TransactionIsolationLevel::ReadCommitted => Isolation::ReadCommitted,
                    TransactionIsolationLevel::RepeatableRead => Isolation::RepeatableRead,
                    _ => Isolation::Serializable,
                })
            }
        }
    }
    (isolation, read_only)
}

/// The settings a SET or RESET statement changes.
fn statement_settings(
    statement: &Statement,
    positions: &Positions<'_>,
) -> Option<Vec<SettingChange>> {
    match statement {
        Statement::Set(ast::Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        }) => {
            let local = matches!(scope, Some(ast::ContextModifier::Local));
            let value = match values.as_slice() {
                [one] => positions.value_ref(one),
                _ => ValueRef::Expression,
            };
            Some(vec![SettingChange {
                name: SettingName::Fixed(object_name(variable)),
                value: Some(value),
                local,
            }])
        }
        Statement::Set(ast::Set::SetTimeZone { local, value }) => Some(vec![SettingChange {
            name: SettingName::Fixed("timezone".into()),
            value: Some(positions.value_ref(value)),
            local: *local,
        }]),
        Statement::Reset(reset) => match &reset.reset {
            ast::Reset::ConfigurationParameter(name) => Some(vec![SettingChange {
                name: SettingName::Fixed(object_name(name)),
                value: None,
                local: false,
            }]),
            _ => None,
        },
        _ => None,
    }
}

/// Table aliases in scope: alias (or the table's own last name part) → table name.
fn aliases<'a>(factors: impl Iterator<Item = &'a TableFactor>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for factor in factors {
        if let TableFactor::Table { name, alias, .. } = factor {
            let table = object_name(name);
            if let Some(alias) = alias {
                out.push((alias.name.value.to_lowercase(), table.clone()));
            }
            let last = table.rsplit('.').next().unwrap_or(&table).to_owned();
            out.push((last, table.clone()));
            out.push((table.clone(), table));
        }
    }
    out
}

/// Collects `column = value` from the top-level AND chain.
fn equalities(
    expr: &Expr,
    aliases: &[(String, String)],
    positions: &Positions<'_>,
    out: &mut Vec<Equality>,
) {
    match expr {
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            equalities(left, aliases, positions, out);
            equalities(right, aliases, positions, out);
        }
        Expr::Nested(inner) => equalities(inner, aliases, positions, out),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } => {
            let (column, value) = match (column_of(left), column_of(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return,
            };
            let value = positions.value_ref(value);
            if matches!(value, ValueRef::Literal(_) | ValueRef::Param(_)) {
                let (qualifier, column) = column;
                let table = match qualifier {
                    Some(q) => aliases
                        .iter()
                        .find(|(a, _)| *a == q)
                        .map(|(_, t)| t.clone()),
                    // Unqualified: unambiguous only when one table is in scope.
                    None if single_table(aliases) => aliases.first().map(|(_, t)| t.clone()),
                    None => None,
                };
                out.push(Equality {
                    table,
                    column,
                    value,
                });
            }
        }
        _ => {}
    }
}

fn single_table(aliases: &[(String, String)]) -> bool {
    aliases.windows(2).all(|w| w[0].1 == w[1].1)
}

/// `(qualifier, column)` when the expression is a column reference.
fn column_of(expr: &Expr) -> Option<(Option<String>, String)> {
    match expr {
        Expr::Identifier(id) => Some((None, id.value.to_lowercase())),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let column = parts.last()?.value.to_lowercase();
            let qualifier = parts[..parts.len() - 1]
                .iter()
                .map(|p| p.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            Some((Some(qualifier), column))
        }
        Expr::Nested(inner) => column_of(inner),
        _ => None,
    }
}

/// Walks every node of a statement once, nested statements (data-modifying CTEs) included.
struct Walker<'a> {
    positions: &'a Positions<'a>,
    relations: Vec<String>,
    targets: Vec<String>,
    ctes: HashSet<String>,
    /// Names used as table functions (`FROM f(…)`), reported as relations by sqlparser too.
    table_functions: Vec<String>,
    functions: Vec<FunctionCall>,
    settings: Vec<SettingChange>,
    locking: bool,
    writes: bool,
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.relations.push(object_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.locking = true;
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                self.writes = true;
                if let TableObject::TableName(name) = &insert.table {
                    self.targets.push(object_name(name));
                }
            }
            Statement::Update(update) => {
                self.writes = true;
                if let TableFactor::Table { name, .. } = &update.table.relation {
                    self.targets.push(object_name(name));
                }
            }
            Statement::Delete(delete) => {
                self.writes = true;
                let tables = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                for t in tables {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        self.targets.push(object_name(name));
                    }
                }
            }
            Statement::Merge(merge) => {
                self.writes = true;
                if let TableFactor::Table { name, .. } = &merge.table {
                    self.targets.push(object_name(name));
                }
            }
            Statement::Truncate(truncate) => {
                self.writes = true;
                for t in &truncate.table_names {
                    self.targets.push(object_name(&t.name));
                }
            }
            Statement::Copy {
                source: ast::CopySource::Table { table_name, .. },
                to,
                ..
            } => {
                // COPY … FROM writes the table; COPY … TO reads it.
                if *to {
                    self.relations.push(object_name(table_name));
                } else {
                    self.targets.push(object_name(table_name));
                }
            }
            // Schema changes count as writes of the table they change.
            Statement::CreateTable(create) => self.targets.push(object_name(&create.name)),
            Statement::CreateView(view) => self.targets.push(object_name(&view.name)),
            Statement::AlterTable(alter) => self.targets.push(object_name(&alter.name)),
            Statement::CreateIndex(index) => self.targets.push(object_name(&index.table_name)),
            Statement::CreatePolicy(policy) => self.targets.push(object_name(&policy.table_name)),
            Statement::Drop {
                object_type: ast::ObjectType::Table | ast::ObjectType::View,
                names,
                ..
            } => {
                self.targets.extend(names.iter().map(object_name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // `FROM generate_series(…)`, `FROM dblink(…)`: a function, not a table.
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
        {
            let name = object_name(name);
            self.table_functions.push(name.clone());
            let effect = function_effect(&name, &[]);
            self.functions.push(FunctionCall { name, effect });
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            let name = object_name(&function.name);
            if name.rsplit('.').next() == Some("set_config") {
                self.settings.push(self.set_config(function));
            }
            let effect = function_effect(&name, &[]);
            self.functions.push(FunctionCall { name, effect });
        }
        ControlFlow::Continue(())
    }
}

impl Walker<'_> {
    /// `set_config(name, value, is_local)` as a setting change.
    fn set_config(&self, function: &ast::Function) -> SettingChange {
        let args: Vec<&Expr> = match &function.args {
            ast::FunctionArguments::List(list) => list
                .args
                .iter()
                .filter_map(|a| match a {
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let name = match args.first().map(|e| self.positions.value_ref(e)) {
            Some(ValueRef::Literal(i)) => SettingName::Literal(i),
            _ => SettingName::Computed,
        };
        let value = args.get(1).map(|e| self.positions.value_ref(e));
        // is_local: a literal true/false is fixed; anything else is unknown, treated as local
        // only when spelled `true`.
        let local = matches!(args.get(2).map(|e| self.positions.value_ref(e)), Some(ValueRef::Word(w)) if w == "true");
        SettingChange { name, value, local }
    }
}

#[cfg(test)]
mod tests;
