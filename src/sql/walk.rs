//! Walking a parsed statement: sqlparser locations mapped back to the scan's literals, and a
//! visitor that collects the relations, write targets, CTE names, functions, `set_config` calls
//! and locking clauses of a statement and everything nested in it; top-level equalities,
//! memberships and column links with aliases resolved. Used by `classify.rs` only.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, FromTable, ObjectName, Query, Statement, TableFactor, TableObject, Visitor,
};

use super::class::{
    ColumnLink, ColumnRef, Equality, FunctionCall, Members, Membership, SettingChange, SettingName,
    StatementClass, ValueRef,
};
use super::fingerprint::Scan;
use super::functions::function_effect;

/// Maps sqlparser's line/column locations to scan literal indexes.
pub(super) struct Positions<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    scan: &'a Scan,
}

impl<'a> Positions<'a> {
    pub(super) fn new(text: &'a str, scan: &'a Scan) -> Positions<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Positions {
            text,
            line_starts,
            scan,
        }
    }

    pub(super) fn literal_at(&self, location: sqlparser::tokenizer::Location) -> Option<usize> {
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

    pub(super) fn value_ref(&self, expr: &Expr) -> ValueRef {
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
            _ => ValueRef::Expression,
        }
    }
}

pub(super) fn object_name(name: &ObjectName) -> String {
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

/// Table aliases in scope: alias (or the table's own last name part) → table name.
pub(super) fn aliases<'a>(factors: impl Iterator<Item = &'a TableFactor>) -> Vec<(String, String)> {
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

/// Collects `column = value`, `column IN (…)`, `column = ANY(…)` and `a.x = b.y` from the
/// top-level AND chain of a WHERE or ON condition.
pub(super) fn predicates(
    expr: &Expr,
    aliases: &[(String, String)],
    positions: &Positions<'_>,
    out: &mut StatementClass,
) {
    let resolve = |(qualifier, column): (Option<String>, String)| {
        let table = match qualifier {
            Some(q) => aliases
                .iter()
                .find(|(a, _)| *a == q)
                .map(|(_, t)| t.clone()),
            // Unqualified: unambiguous only when one table is in scope.
            None if single_table(aliases) => aliases.first().map(|(_, t)| t.clone()),
            None => None,
        };
        ColumnRef { table, column }
    };
    let is_value = |v: &ValueRef| matches!(v, ValueRef::Literal(_) | ValueRef::Param(_));
    match expr {
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            predicates(left, aliases, positions, out);
            predicates(right, aliases, positions, out);
        }
        Expr::Nested(inner) => predicates(inner, aliases, positions, out),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } => {
            let (column, value) = match (column_of(left), column_of(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                (Some(l), Some(r)) => {
                    out.links.push(ColumnLink {
                        left: resolve(l),
                        right: resolve(r),
                    });
                    return;
                }
                (None, None) => return,
            };
            let value = positions.value_ref(value);
            if is_value(&value) {
                let ColumnRef { table, column } = resolve(column);
                out.equalities.push(Equality {
                    table,
                    column,
                    value,
                });
            }
        }
        Expr::In {
            expr,
            target: ast::InTarget::List(list),
            negated: false,
            ..
        } => {
            let Some(column) = column_of(expr) else {
                return;
            };
            // NULL in the list matches no row: it adds nothing.
            let values: Vec<ValueRef> = list
                .iter()
                .map(|e| positions.value_ref(e))
                .filter(|v| !matches!(v, ValueRef::Word(w) if w == "null"))
                .collect();
            if values.iter().all(is_value) {
                let ColumnRef { table, column } = resolve(column);
                out.memberships.push(Membership {
                    table,
                    column,
                    values: Members::List(values),
                });
            }
        }
        Expr::AnyOp {
            left,
            compare_op: ast::BinaryOperator::Eq,
            right,
            ..
        } => {
            let Some(column) = column_of(left) else {
                return;
            };
            let values = match strip_casts(right) {
                Expr::Array(array) => {
                    let values: Vec<ValueRef> =
                        array.elem.iter().map(|e| positions.value_ref(e)).collect();
                    if !values.iter().all(is_value) {
                        return;
                    }
                    Members::List(values)
                }
                other => {
                    let value = positions.value_ref(other);
                    if !is_value(&value) {
                        return;
                    }
                    Members::Array(value)
                }
            };
            let ColumnRef { table, column } = resolve(column);
            out.memberships.push(Membership {
                table,
                column,
                values,
            });
        }
        _ => {}
    }
}

/// The expression under any casts and parentheses.
fn strip_casts(expr: &Expr) -> &Expr {
    match expr {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => strip_casts(expr),
        other => other,
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
pub(super) struct Walker<'a> {
    pub(super) positions: &'a Positions<'a>,
    /// Functions configured as read-only on top of the built-in list.
    pub(super) read_only: &'a [String],
    pub(super) relations: Vec<String>,
    pub(super) targets: Vec<String>,
    pub(super) ctes: HashSet<String>,
    /// Names used as table functions (`FROM f(…)`), reported as relations by sqlparser too.
    pub(super) table_functions: Vec<String>,
    pub(super) functions: Vec<FunctionCall>,
    pub(super) settings: Vec<SettingChange>,
    pub(super) locking: bool,
    pub(super) writes: bool,
    /// It creates a temporary table (SELECT … INTO TEMP).
    pub(super) temporary: bool,
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
        // SELECT … INTO [TEMP] t creates a table.
        if let ast::SetExpr::Select(select) = query.body.as_ref() {
            if let Some(into) = &select.into {
                self.writes = true;
                self.temporary |= into.temporary;
                for target in &into.targets {
                    match target {
                        Expr::Identifier(ident) => self.targets.push(ident.value.to_lowercase()),
                        Expr::CompoundIdentifier(parts) => self.targets.push(
                            parts
                                .iter()
                                .map(|p| p.value.to_lowercase())
                                .collect::<Vec<_>>()
                                .join("."),
                        ),
                        _ => {}
                    }
                }
            }
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
        // `FROM generate_series(…)`, `FROM dblink(…)`, `LATERAL f(…)`: a function, not a
        // table.
        let (name, args) = match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => (name, args.args.as_slice()),
            TableFactor::Function { name, args, .. } => (name, args.as_slice()),
            _ => return ControlFlow::Continue(()),
        };
        let name = object_name(name);
        if name.rsplit('.').next() == Some("set_config") {
            // `FROM set_config(…)`: as in an expression.
            self.settings.push(self.set_config_args(args));
        }
        self.table_functions.push(name.clone());
        let effect = function_effect(&name, self.read_only);
        self.functions.push(FunctionCall { name, effect });
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            let name = object_name(&function.name);
            if name.rsplit('.').next() == Some("set_config") {
                self.settings.push(self.set_config(function));
            }
            let effect = function_effect(&name, self.read_only);
            self.functions.push(FunctionCall { name, effect });
        }
        ControlFlow::Continue(())
    }
}

impl<'a> Walker<'a> {
    /// A walker that has seen nothing yet.
    pub(super) fn new(positions: &'a Positions<'a>, read_only: &'a [String]) -> Walker<'a> {
        Walker {
            positions,
            read_only,
            relations: Vec::new(),
            targets: Vec::new(),
            ctes: HashSet::new(),
            table_functions: Vec::new(),
            functions: Vec::new(),
            settings: Vec::new(),
            locking: false,
            writes: false,
            temporary: false,
        }
    }

    /// `set_config(name, value, is_local)` as a setting change.
    fn set_config(&self, function: &ast::Function) -> SettingChange {
        match &function.args {
            ast::FunctionArguments::List(list) => self.set_config_args(&list.args),
            _ => self.set_config_args(&[]),
        }
    }

    /// A setting change from `set_config`'s arguments: a name or `is_local` the sidecar cannot
    /// read counts as computed and as session-wide.
    fn set_config_args(&self, args: &[ast::FunctionArg]) -> SettingChange {
        let args: Vec<&Expr> = args
            .iter()
            .filter_map(|a| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
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
