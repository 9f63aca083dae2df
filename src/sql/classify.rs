//! The SQL classifier: parses a statement with sqlparser (PostgreSQL dialect) and answers what
//! the rest of the sidecar asks of it — its kind, the tables it reads and writes, locking,
//! temporary objects, the functions it calls and how safe they are, the settings it changes
//! (SET, RESET, `set_config` anywhere in an expression), and top-level equality predicates and
//! INSERT values for sharding and caching.
//!
//! Values that vary between executions are never stored: a classification refers to literals
//! by their index in the [`Scan`](super::fingerprint::Scan), so one classification serves every
//! execution of a statement shape. Pure: no I/O, no caching here (see `cache.rs`).

use sqlparser::ast::{
    self, AssignmentTarget, FromTable, SetExpr, Statement, TableObject, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use super::class::{
    Classification, Equality, FunctionCall, Isolation, Kind, SettingChange, SettingName,
    StatementClass, ValueRef,
};
use super::fingerprint::Scan;
pub use super::functions::{function_effect, Effect};
use super::walk::{aliases, object_name, predicates, Positions, Walker};

/// What the classifier is told beyond the SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Functions to treat as read-only besides the built-in list (`name` or `schema.name`).
    pub read_only_functions: Vec<String>,
}

/// Classifies `sql` (already scanned into `scan`).
pub fn classify(sql: &[u8], scan: &Scan, options: &Options) -> Classification {
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
    if statements.len() != scan.statements.len() {
        // sqlparser and Postgres's lexical rules (which the scanner follows) disagree on where
        // statements end (`a$0$b` is one identifier in Postgres, a dollar quote to sqlparser):
        // what sqlparser read is not what the server will run.
        return Classification::Unparsed {
            error: format!(
                "statement boundaries differ from Postgres's ({} parsed, {} scanned)",
                statements.len(),
                scan.statements.len()
            ),
        };
    }
    let positions = Positions::new(text, scan);
    Classification::Parsed(
        statements
            .iter()
            .map(|s| classify_statement(s, &positions, options))
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

fn classify_statement(
    statement: &Statement,
    positions: &Positions<'_>,
    options: &Options,
) -> StatementClass {
    let mut class = StatementClass::new(kind_of(statement));
    // Rows added: an INSERT, a MERGE, or (conservatively) a query that writes through a CTE.
    class.inserts = matches!(statement, Statement::Insert(_) | Statement::Merge { .. })
        || (matches!(statement, Statement::Query(_)) && class.kind == Kind::Write);
    let mut walker = Walker::new(positions, &options.read_only_functions);
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
        || walker.temporary
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
                let factors = select.from.iter().flat_map(|t| {
                    std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))
                });
                let aliases = aliases(factors);
                if let Some(selection) = &select.selection {
                    predicates(selection, &aliases, positions, &mut class);
                }
                // Join conditions only link columns: a key is read from WHERE alone.
                let mut on = StatementClass::new(Kind::Read);
                for join in select.from.iter().flat_map(|t| &t.joins) {
                    if let Some(condition) = join_condition(&join.join_operator) {
                        predicates(condition, &aliases, positions, &mut on);
                    }
                }
                class.links.append(&mut on.links);
            }
        }
        Statement::Update(update) => {
            assigned(&update.assignments, &mut class.assigned);
            if let Some(selection) = &update.selection {
                let aliases = aliases(std::iter::once(&update.table.relation));
                predicates(selection, &aliases, positions, &mut class);
            }
        }
        Statement::Delete(delete) => {
            if let Some(selection) = &delete.selection {
                let tables = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let aliases = aliases(tables.iter().map(|t| &t.relation));
                predicates(selection, &aliases, positions, &mut class);
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
            if let Some(ast::OnInsert::OnConflict(ast::OnConflict {
                action: ast::OnConflictAction::DoUpdate(update),
                ..
            })) = &insert.on
            {
                assigned(&update.assignments, &mut class.assigned);
            }
        }
        _ => {}
    }
    class
}

/// The columns assignments set (their last name part).
fn assigned(assignments: &[ast::Assignment], out: &mut Vec<String>) {
    for assignment in assignments {
        let targets = match &assignment.target {
            AssignmentTarget::ColumnName(name) => std::slice::from_ref(name),
            AssignmentTarget::Tuple(names) => names.as_slice(),
        };
        for name in targets {
            let name = object_name(name);
            out.push(name.rsplit('.').next().unwrap_or_default().to_owned());
        }
    }
}

/// A join's ON condition, if it has one.
fn join_condition(operator: &ast::JoinOperator) -> Option<&ast::Expr> {
    use ast::JoinOperator as J;
    match operator {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c)
        | J::StraightJoin(c) => match c {
            ast::JoinConstraint::On(expr) => Some(expr),
            _ => None,
        },
        _ => None,
    }
}

fn is_temporary_create(statement: &Statement) -> bool {
    match statement {
        Statement::CreateTable(t) => t.temporary,
        Statement::CreateView(v) => v.temporary,
        Statement::CreateSequence { temporary, .. } => *temporary,
        _ => false,
    }
}

/// An identifier as Postgres sees it: folded to lower case unless quoted.
fn ident_value(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn kind_of(statement: &Statement) -> Kind {
    match statement {
        Statement::Query(_) => Kind::Read,
        Statement::Explain {
            analyze, statement, ..
        } => {
            let inner = kind_of(statement);
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
            ast::Set::SetTransaction { session: true, .. } => Kind::SetSessionCharacteristics,
            ast::Set::SetTransaction { modes, .. } => {
                let (isolation, read_only) = transaction_modes(modes);
                Kind::SetTransaction {
                    isolation,
                    read_only,
                }
            }
            _ => Kind::Set,
        },
        Statement::Reset(reset) => match reset.reset {
            ast::Reset::ALL => Kind::ResetAll,
            ast::Reset::SessionAuthorization => Kind::SetSessionAuthorization,
            ast::Reset::ConfigurationParameter(_) => Kind::Reset,
        },
        Statement::Discard { object_type } => Kind::Discard {
            all: matches!(object_type, ast::DiscardObject::ALL),
        },
        Statement::Prepare { name, .. } => Kind::Prepare {
            name: ident_value(name),
        },
        Statement::Execute {
            name: Some(name), ..
        } => Kind::Execute {
            name: object_name(name),
        },
        Statement::Deallocate { name, .. } => {
            let n = ident_value(name);
            Kind::Deallocate {
                name: (n != "all").then_some(n),
            }
        }
        Statement::LISTEN { channel } => Kind::Listen {
            channel: ident_value(channel),
        },
        Statement::UNLISTEN { channel } => Kind::Unlisten {
            channel: (channel.value != "*").then(|| ident_value(channel)),
        },
        Statement::NOTIFY { channel, .. } => Kind::Notify {
            channel: ident_value(channel),
        },
        Statement::Copy { to, .. } => {
            if *to {
                Kind::CopyTo
            } else {
                Kind::CopyFrom
            }
        }
        Statement::CreateFunction(_) | Statement::CreateProcedure { .. } => Kind::CreateFunction,
        Statement::AlterRole { .. } => Kind::AlterRole,
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
        // SET ROLE and SET SESSION AUTHORIZATION change the settings of those names.
        Statement::Set(ast::Set::SetRole {
            context_modifier,
            role_name,
        }) => Some(vec![SettingChange {
            name: SettingName::Fixed("role".into()),
            value: Some(ValueRef::Word(
                role_name.as_ref().map_or("none".into(), ident_value),
            )),
            local: matches!(context_modifier, Some(ast::ContextModifier::Local)),
        }]),
        Statement::Set(ast::Set::SetSessionAuthorization(param)) => match &param.kind {
            ast::SetSessionAuthorizationParamKind::User(user) => Some(vec![SettingChange {
                name: SettingName::Fixed("session_authorization".into()),
                value: Some(ValueRef::Word(ident_value(user))),
                local: false,
            }]),
            ast::SetSessionAuthorizationParamKind::Default => None,
        },
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

#[cfg(test)]
mod tests;
