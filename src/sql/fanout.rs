//! A read that runs on several shards, pure: what each shard is sent and how the sidecar
//! merges their replies ([`crate::merge::MergeSpec`]) so the client gets what one server
//! holding every row would answer. ORDER BY stays on the shards and is merged; LIMIT is
//! pushed down as LIMIT + OFFSET; aggregates are rewritten into partials (avg into sum and
//! count, count(DISTINCT x) into a grouping by x) with GROUP BY kept and HAVING, ORDER BY,
//! LIMIT and DISTINCT applied after the merge. What cannot be merged exactly is refused with
//! a message that says what to change.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, LimitClause, ObjectName, OrderByKind, OrderBySort, Query, SelectItem,
    SetExpr, Statement, TableFactor, UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::merge::aggregate::{AggSpec, Func};
use crate::merge::{CmpOp, Grouping, Having, Item, MergeSpec, Operand, Outputs, SortKey};

/// What each shard runs and how their replies merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// The statement each shard runs (the client's own text when nothing changes).
    pub sql: String,
    pub spec: MergeSpec,
}

/// Aggregates Postgres has that the merge cannot combine.
const OTHER_AGGREGATES: &[&str] = &[
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

fn refuse<T>(message: impl Into<String>) -> Result<T, String> {
    Err(message.into())
}

/// How `sql` (one SELECT) runs on several shards, or why it cannot.
pub fn plan(sql: &str) -> Result<FanOut, String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|_| "the statement could not be parsed, so it cannot be merged across shards: add a shard key".to_string())?;
    let (Some(Statement::Query(query)), 1) = (statements.pop(), statements.len() + 1) else {
        return refuse("only one SELECT at a time can run on several shards");
    };
    let mut query = *query;
    check_query(&query)?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return refuse("UNION, INTERSECT, EXCEPT and VALUES are not merged across shards: run each part with a shard key");
    };
    check_select(select)?;
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(_) => return refuse("DISTINCT ON is not merged across shards: add a shard key"),
    };
    let (limit, offset) = limits(&query.limit_clause)?;
    let order: Vec<_> = match &query.order_by {
        None => Vec::new(),
        Some(o) => match &o.kind {
            OrderByKind::Expressions(exprs) => exprs.clone(),
            OrderByKind::All(_) => return refuse("ORDER BY ALL is not supported"),
        },
    };
    let aggregated = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        || select.having.is_some()
        || select.projection.iter().any(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                has_aggregate(e)
            }
            _ => false,
        })
        || order.iter().any(|o| has_aggregate(&o.expr));
    let mut builder = Builder::default();
    let spec = if aggregated {
        builder.aggregated(select, &order, distinct, limit, offset)?
    } else {
        builder.plain(select, &order, distinct, limit, offset)?
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return refuse("not a SELECT");
    };
    let changed = builder.apply(select);
    if aggregated {
        query.order_by = None;
        query.limit_clause = None;
    } else if offset > 0 || (limit.is_some() && changed) {
        query.limit_clause = limit.map(|l| LimitClause::LimitOffset {
            limit: Some(number(l + offset)),
            offset: None,
            limit_by: Vec::new(),
        });
    }
    let sql = if aggregated || changed || offset > 0 {
        query.to_string()
    } else {
        sql.to_string()
    };
    Ok(FanOut { sql, spec })
}

fn number(n: u64) -> Expr {
    Expr::value(Value::Number(n.to_string(), false))
}

fn check_query(query: &Query) -> Result<(), String> {
    if query.with.is_some() {
        return refuse(
            "WITH is not merged across shards: add a shard key, or write the query without it",
        );
    }
    if query.fetch.is_some() {
        return refuse("FETCH FIRST is not merged across shards: use LIMIT");
    }
    if !query.locks.is_empty() {
        return refuse("FOR UPDATE/SHARE cannot lock rows on several shards: add a shard key");
    }
    if query.for_clause.is_some() || query.settings.is_some() || query.format_clause.is_some() {
        return refuse("this clause is not merged across shards");
    }
    // Any nested query (subquery, derived table, EXISTS, IN (SELECT …)) may need rows of
    // other shards.
    struct Nested(usize);
    impl Visitor for Nested {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.0 += 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f) if f.over.is_some() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    let mut nested = Nested(0);
    if query.visit(&mut nested).is_break() {
        return refuse(
            "window functions over rows of several shards are not merged: add a shard key",
        );
    }
    if nested.0 > 1 {
        return refuse("subqueries in a statement that runs on several shards are not merged (they may need other shards' rows): add a shard key, or run the parts separately");
    }
    Ok(())
}

fn check_select(select: &sqlparser::ast::Select) -> Result<(), String> {
    if select.into.is_some() {
        return refuse("SELECT INTO is not run on several shards: add a shard key");
    }
    if select.top.is_some()
        || !select.lateral_views.is_empty()
        || select.prewhere.is_some()
        || !select.connect_by.is_empty()
        || !select.cluster_by.is_empty()
        || !select.distribute_by.is_empty()
        || !select.sort_by.is_empty()
        || !select.named_window.is_empty()
        || select.qualify.is_some()
        || select.value_table_mode.is_some()
    {
        return refuse("this SELECT clause is not merged across shards");
    }
    for from in &select.from {
        let factors = std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation));
        for factor in factors {
            if !matches!(factor, TableFactor::Table { args: None, .. }) {
                return refuse("only tables (not functions or subqueries) can be read in a statement that runs on several shards");
            }
        }
    }
    Ok(())
}

/// LIMIT and OFFSET as numbers.
fn limits(clause: &Option<LimitClause>) -> Result<(Option<u64>, u64), String> {
    let read = |e: &Expr| -> Result<Option<u64>, String> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse().map(Some).map_err(|_| {
                    "LIMIT and OFFSET must be whole numbers in a statement that runs on several shards".to_string()
                }),
                Value::Null => Ok(None),
                _ => refuse("LIMIT and OFFSET must be numbers in a statement that runs on several shards"),
            },
            _ => refuse("LIMIT and OFFSET must be written as numbers (not parameters or expressions) in a statement that runs on several shards"),
        }
    };
    match clause {
        None => Ok((None, 0)),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => {
            let limit = match limit {
                Some(e) => read(e)?,
                None => None,
            };
            let offset = match offset {
                Some(o) => read(&o.value)?.unwrap_or(0),
                None => 0,
            };
            Ok((limit, offset))
        }
        Some(_) => refuse("this LIMIT form is not supported"),
    }
}

/// The name Postgres gives an identifier (folded to lower case unless quoted).
fn ident_name(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

/// The lowercase last part of a function's name.
fn function_name(f: &Function) -> String {
    f.name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .map(|i| i.value.to_lowercase())
        .unwrap_or_default()
}

fn is_known_aggregate(name: &str) -> bool {
    matches!(
        name,
        "count" | "sum" | "min" | "max" | "avg" | "bool_and" | "bool_or" | "every"
    )
}

/// Whether an expression calls an aggregate anywhere.
fn has_aggregate(expr: &Expr) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr {
                let name = function_name(f);
                if f.over.is_none()
                    && (is_known_aggregate(&name)
                        || OTHER_AGGREGATES.contains(&name.as_str())
                        || !f.within_group.is_empty())
                {
                    self.0 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(false);
    let _ = expr.visit(&mut finder);
    finder.0
}

/// The shards' select list being built.
#[derive(Default)]
struct Builder {
    /// The shards' columns, in order: expression and alias.
    columns: Vec<(Expr, Option<Ident>)>,
    /// Replaces the GROUP BY (aggregated statements).
    group_by: Option<Vec<Expr>>,
    /// The client's select list is kept and these follow it (plain statements).
    hidden: Vec<(Expr, Ident)>,
    aggs: Vec<(Function, AggSpec)>,
}

impl Builder {
    fn plain(
        &mut self,
        select: &sqlparser::ast::Select,
        order: &[sqlparser::ast::OrderByExpr],
        distinct: bool,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<MergeSpec, String> {
        let wildcard = select.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
        let mut keys = Vec::with_capacity(order.len());
        for o in order {
            let (descending, nulls_first) = direction(o)?;
            let found = position(&o.expr, select.projection.len()).or_else(|| {
                select.projection.iter().position(|item| match item {
                    SelectItem::UnnamedExpr(e) => e == &o.expr,
                    SelectItem::ExprWithAlias { expr, alias } => {
                        expr == &o.expr
                            || matches!(&o.expr, Expr::Identifier(i) if i.value == alias.value)
                    }
                    _ => false,
                })
            });
            let item = match found {
                Some(i) if !wildcard || position(&o.expr, select.projection.len()).is_some() => {
                    Item::Shard(i)
                }
                _ if wildcard && matches!(o.expr, Expr::Identifier(_)) => match &o.expr {
                    Expr::Identifier(i) => Item::Named(ident_name(i)),
                    _ => return refuse("ORDER BY needs a column name"),
                },
                _ if distinct => {
                    return refuse(
                        "for SELECT DISTINCT, ORDER BY expressions must appear in the select list",
                    )
                }
                _ => {
                    let alias = Ident::new(format!("pgsc_sort_{}", self.hidden.len()));
                    self.hidden.push((o.expr.clone(), alias.clone()));
                    Item::Named(alias.value)
                }
            };
            keys.push(SortKey {
                item,
                descending,
                nulls_first,
            });
        }
        Ok(MergeSpec {
            outputs: Outputs::Leading {
                hidden: self.hidden.len(),
            },
            grouping: None,
            distinct,
            order: keys,
            limit,
            offset,
        })
    }

    fn aggregated(
        &mut self,
        select: &sqlparser::ast::Select,
        order: &[sqlparser::ast::OrderByExpr],
        distinct: bool,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<MergeSpec, String> {
        let projection: Vec<(&Expr, Option<&Ident>)> = select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(e) => Ok((e, None)),
                SelectItem::ExprWithAlias { expr, alias } => Ok((expr, Some(alias))),
                _ => refuse("* cannot be selected with aggregates or GROUP BY across shards: name the columns"),
            })
            .collect::<Result<_, _>>()?;
        let GroupByExpr::Expressions(group_exprs, modifiers) = &select.group_by else {
            return refuse("GROUP BY ALL is not supported");
        };
        if !modifiers.is_empty() {
            return refuse(
                "GROUP BY modifiers (ROLLUP, CUBE, GROUPING SETS) are not merged across shards",
            );
        }
        // GROUP BY 2 means the second item of the select list.
        let group_exprs: Vec<Expr> = group_exprs
            .iter()
            .map(|g| match position(g, projection.len()) {
                Some(i) => projection[i].0.clone(),
                None => g.clone(),
            })
            .collect();
        let is_key = |e: &Expr, alias: Option<&Ident>| {
            group_exprs.iter().position(|g| {
                g == e
                    || matches!((g, alias), (Expr::Identifier(gi), Some(a)) if gi.value == a.value)
            })
        };
        let mut outputs = Vec::with_capacity(projection.len());
        let mut key_columns: Vec<Option<usize>> = vec![None; group_exprs.len()];
        for (expr, alias) in &projection {
            if let Expr::Function(f) = expr {
                if f.over.is_none() && has_aggregate(expr) && is_known_aggregate(&function_name(f))
                {
                    let name = alias.map_or_else(|| function_name(f), ident_name);
                    outputs.push(Item::Agg(self.aggregate(f, name)?));
                    continue;
                }
            }
            if has_aggregate(expr) {
                return refuse(format!(
                    "\"{expr}\" computes over aggregates or uses one the sidecar cannot merge across shards \
                     (it merges count, sum, min, max, avg, bool_and, bool_or and count(DISTINCT x)): \
                     select those aggregates and compute the rest in the application, or add a shard key"
                ));
            }
            let Some(k) = is_key(expr, *alias) else {
                return refuse(format!(
                    "\"{expr}\" is neither grouped nor an aggregate: across shards select only GROUP BY \
                     expressions and aggregates"
                ));
            };
            let column = self.column((*expr).clone(), alias.cloned());
            key_columns[k].get_or_insert(column);
            outputs.push(Item::Shard(column));
        }
        let keys: Vec<usize> = group_exprs
            .iter()
            .zip(&mut key_columns)
            .map(|(g, c)| *c.get_or_insert_with(|| self.column(g.clone(), None)))
            .collect();
        let having = match &select.having {
            Some(h) => Some(self.having(h, &group_exprs, &keys)?),
            None => None,
        };
        let mut sort = Vec::with_capacity(order.len());
        for o in order {
            let (descending, nulls_first) = direction(o)?;
            let item = match position(&o.expr, projection.len()) {
                Some(i) => outputs[i].clone(),
                None => match projection.iter().position(|(e, a)| {
                    *e == &o.expr || matches!((&o.expr, a), (Expr::Identifier(i), Some(a)) if i.value == a.value)
                }) {
                    Some(i) => outputs[i].clone(),
                    None => self.operand_item(&o.expr, &group_exprs, &keys)?,
                },
            };
            sort.push(SortKey {
                item,
                descending,
                nulls_first,
            });
        }
        let distinct_column = self
            .aggs
            .iter()
            .find(|(_, a)| a.func == Func::CountDistinct)
            .map(|(_, a)| a.column);
        self.group_by = Some(group_exprs);
        Ok(MergeSpec {
            outputs: Outputs::Items(outputs),
            grouping: Some(Grouping {
                columns: self.columns.len(),
                keys,
                distinct: distinct_column,
                aggs: self.aggs.iter().map(|(_, a)| a.clone()).collect(),
                having,
            }),
            distinct,
            order: sort,
            limit,
            offset,
        })
    }

    /// A shard column for `expr` (reused when the same expression is there already).
    fn column(&mut self, expr: Expr, alias: Option<Ident>) -> usize {
        if let Some(i) = self
            .columns
            .iter()
            .position(|(e, a)| e == &expr && a == &alias)
        {
            return i;
        }
        self.columns.push((expr, alias));
        self.columns.len() - 1
    }

    /// The aggregate `f` (added with its partials unless the same call is there already).
    fn aggregate(&mut self, f: &Function, name: String) -> Result<usize, String> {
        if let Some(i) = self.aggs.iter().position(|(g, a)| g == f && a.name == name) {
            return Ok(i);
        }
        let fname = function_name(f);
        let FunctionArguments::List(list) = &f.args else {
            return refuse(format!("{fname} needs arguments"));
        };
        let distinct = matches!(
            list.duplicate_treatment,
            Some(sqlparser::ast::DuplicateTreatment::Distinct)
        );
        if !list.clauses.is_empty() || !f.within_group.is_empty() || f.null_treatment.is_some() {
            return refuse(format!(
                "{fname} with ORDER BY or other clauses is not merged across shards"
            ));
        }
        let renamed = |name: &str| {
            let mut g = f.clone();
            g.name = ObjectName::from(vec![Ident::new(name)]);
            Expr::Function(g)
        };
        let (func, column, count_column) = match (fname.as_str(), distinct) {
            ("count", true) => {
                if f.filter.is_some() {
                    return refuse("count(DISTINCT …) FILTER (…) is not merged across shards");
                }
                let [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] = &list.args[..] else {
                    return refuse(
                        "count(DISTINCT …) of one expression only is merged across shards",
                    );
                };
                if let Some((_, other)) = self
                    .aggs
                    .iter()
                    .find(|(_, a)| a.func == Func::CountDistinct)
                {
                    if self.columns[other.column].0 != *x {
                        return refuse("count(DISTINCT …) of two different expressions is not merged across shards");
                    }
                }
                (Func::CountDistinct, self.column(x.clone(), None), None)
            }
            (_, true) => {
                return refuse(format!(
                    "{fname}(DISTINCT …) is not merged across shards: only count(DISTINCT …) is"
                ))
            }
            ("count" | "sum" | "min" | "max" | "bool_and" | "every" | "bool_or", false) => {
                // The partial is the same call on each shard.
                let func = match fname.as_str() {
                    "count" => Func::Count,
                    "sum" => Func::Sum,
                    "min" => Func::Min,
                    "max" => Func::Max,
                    "bool_or" => Func::BoolOr,
                    _ => Func::BoolAnd,
                };
                (func, self.column(Expr::Function(f.clone()), None), None)
            }
            ("avg", false) => {
                let sum = self.column(renamed("sum"), None);
                let count = self.column(renamed("count"), None);
                (Func::Avg, sum, Some(count))
            }
            _ => return refuse(format!("the aggregate {fname} is not merged across shards")),
        };
        self.aggs.push((
            f.clone(),
            AggSpec {
                func,
                column,
                count_column,
                name,
            },
        ));
        Ok(self.aggs.len() - 1)
    }

    /// An ORDER BY or HAVING operand: an aggregate or a group key.
    fn operand_item(
        &mut self,
        expr: &Expr,
        group_exprs: &[Expr],
        keys: &[usize],
    ) -> Result<Item, String> {
        if let Expr::Nested(inner) = expr {
            return self.operand_item(inner, group_exprs, keys);
        }
        if let Some(k) = group_exprs.iter().position(|g| g == expr) {
            return Ok(Item::Shard(keys[k]));
        }
        if let Expr::Function(f) = expr {
            if is_known_aggregate(&function_name(f)) && f.over.is_none() {
                // The same call selected under another name serves.
                if let Some(i) = self.aggs.iter().position(|(g, _)| g == f) {
                    return Ok(Item::Agg(i));
                }
                let name = function_name(f);
                return Ok(Item::Agg(self.aggregate(f, name)?));
            }
        }
        refuse(format!(
            "\"{expr}\" is not merged across shards: ORDER BY and HAVING may use grouped expressions, \
             aggregates and numbers"
        ))
    }

    fn having(
        &mut self,
        expr: &Expr,
        group_exprs: &[Expr],
        keys: &[usize],
    ) -> Result<Having, String> {
        Ok(match expr {
            Expr::Nested(inner) => self.having(inner, group_exprs, keys)?,
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => Having::And(
                    Box::new(self.having(left, group_exprs, keys)?),
                    Box::new(self.having(right, group_exprs, keys)?),
                ),
                BinaryOperator::Or => Having::Or(
                    Box::new(self.having(left, group_exprs, keys)?),
                    Box::new(self.having(right, group_exprs, keys)?),
                ),
                op => {
                    let op = match op {
                        BinaryOperator::Eq => CmpOp::Eq,
                        BinaryOperator::NotEq => CmpOp::NotEq,
                        BinaryOperator::Lt => CmpOp::Lt,
                        BinaryOperator::LtEq => CmpOp::LtEq,
                        BinaryOperator::Gt => CmpOp::Gt,
                        BinaryOperator::GtEq => CmpOp::GtEq,
                        other => {
                            return refuse(format!(
                                "HAVING with {other} is not merged across shards"
                            ))
                        }
                    };
                    Having::Cmp(
                        self.operand(left, group_exprs, keys)?,
                        op,
                        self.operand(right, group_exprs, keys)?,
                    )
                }
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Having::Not(Box::new(self.having(expr, group_exprs, keys)?)),
            Expr::IsNull(e) => Having::IsNull(self.operand(e, group_exprs, keys)?, false),
            Expr::IsNotNull(e) => Having::IsNull(self.operand(e, group_exprs, keys)?, true),
            // A boolean aggregate or grouped expression on its own.
            other @ (Expr::Function(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => {
                Having::Cmp(
                    self.operand(other, group_exprs, keys)?,
                    CmpOp::Eq,
                    Operand::Bool(true),
                )
            }
            other => {
                return refuse(format!(
                "HAVING \"{other}\" is not merged across shards: compare aggregates with numbers"
            ))
            }
        })
    }

    fn operand(
        &mut self,
        expr: &Expr,
        group_exprs: &[Expr],
        keys: &[usize],
    ) -> Result<Operand, String> {
        Ok(match expr {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Operand::Number(n.clone()),
                Value::SingleQuotedString(s) => Operand::Text(s.clone()),
                Value::Boolean(b) => Operand::Bool(*b),
                Value::Null => Operand::Null,
                _ => {
                    return refuse(
                        "HAVING compares with numbers, strings, booleans or NULL across shards",
                    )
                }
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => Operand::Number(format!("-{n}")),
                    _ => return refuse("HAVING compares with numbers across shards"),
                },
                _ => return refuse("HAVING compares with numbers across shards"),
            },
            other => Operand::Item(self.operand_item(other, group_exprs, keys)?),
        })
    }

    /// Puts the shards' select list (and GROUP BY) into `select`; whether anything changed.
    fn apply(&mut self, select: &mut sqlparser::ast::Select) -> bool {
        if let Some(mut group) = self.group_by.take() {
            select.projection = self
                .columns
                .iter()
                .map(|(e, a)| match a {
                    Some(alias) => SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: alias.clone(),
                    },
                    None => SelectItem::UnnamedExpr(e.clone()),
                })
                .collect();
            if let Some((_, d)) = self
                .aggs
                .iter()
                .find(|(_, a)| a.func == Func::CountDistinct)
            {
                group.push(self.columns[d.column].0.clone());
            }
            select.group_by = GroupByExpr::Expressions(group, Vec::new());
            select.having = None;
            select.distinct = None;
            return true;
        }
        for (expr, alias) in &self.hidden {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: alias.clone(),
            });
        }
        !self.hidden.is_empty()
    }
}

/// `ORDER BY 2` means the second item of a list of `len` (1-based); None if not a position.
fn position(expr: &Expr, len: usize) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<usize>()
                .ok()
                .filter(|k| *k >= 1 && *k <= len)
                .map(|k| k - 1),
            _ => None,
        },
        _ => None,
    }
}

/// DESC, and NULLS FIRST (Postgres's default: NULLS FIRST for DESC).
fn direction(o: &sqlparser::ast::OrderByExpr) -> Result<(bool, bool), String> {
    let descending = match &o.options.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(_)) => {
            return refuse("ORDER BY … USING is not merged across shards")
        }
    };
    if let Expr::Collate { collation, .. } = &o.expr {
        let name = collation.to_string().trim_matches('"').to_lowercase();
        if name != "c" && name != "posix" {
            return refuse(format!(
                "ORDER BY … COLLATE {collation} is not merged across shards: the sidecar orders text as the C collation does"
            ));
        }
    }
    Ok((descending, o.options.nulls_first.unwrap_or(descending)))
}

#[cfg(test)]
mod tests;
