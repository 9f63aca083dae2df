//! A multi-row `INSERT … VALUES` whose rows belong to several shards, split into one INSERT per
//! shard, pure: each keeps its own rows (and everything else of the statement: columns, ON
//! CONFLICT, RETURNING), with its `$n` parameters renumbered from 1 in order of first use.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, SetExpr, Statement, Value, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// One shard's part of a split INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub shard: usize,
    pub sql: String,
    /// The client's parameters this part uses (0-based), in the order of its `$1, $2, …`.
    pub params: Vec<usize>,
}

/// Splits `sql` (one INSERT … VALUES of `row_shards.len()` rows) by the shard of each row.
pub fn split_insert(sql: &str, row_shards: &[usize]) -> Result<Vec<Part>, String> {
    let cannot = |why: &str| {
        format!("this INSERT's rows are on several shards and {why}: insert each shard's rows separately")
    };
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|_| cannot("it could not be parsed"))?;
    let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
        return Err(cannot("it is not one statement"));
    };
    let mut shards_in_order: Vec<usize> = Vec::new();
    for s in row_shards {
        if !shards_in_order.contains(s) {
            shards_in_order.push(*s);
        }
    }
    let mut parts = Vec::with_capacity(shards_in_order.len());
    for shard in shards_in_order {
        let mut part = statement.clone();
        let Statement::Insert(insert) = &mut part else {
            return Err(cannot("it is not an INSERT"));
        };
        let Some(source) = insert.source.as_mut() else {
            return Err(cannot("it has no VALUES"));
        };
        let SetExpr::Values(values) = source.body.as_mut() else {
            return Err(cannot("its rows are not a VALUES list"));
        };
        if values.rows.len() != row_shards.len() {
            return Err(cannot("its rows could not be matched to their keys"));
        }
        let rows = std::mem::take(&mut values.rows);
        values.rows = rows
            .into_iter()
            .zip(row_shards)
            .filter(|(_, s)| **s == shard)
            .map(|(row, _)| row)
            .collect();
        let mut renumber = Renumber::default();
        let _ = part.visit(&mut renumber);
        parts.push(Part {
            shard,
            sql: part.to_string(),
            params: renumber.used,
        });
    }
    Ok(parts)
}

/// Renumbers `$n` placeholders from 1 in order of first use.
#[derive(Default)]
struct Renumber {
    new_of: HashMap<usize, usize>,
    /// Old numbers (0-based) in new order.
    used: Vec<usize>,
}

impl VisitorMut for Renumber {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = expr {
            if let Value::Placeholder(p) = &mut v.value {
                if let Some(old) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    let old = old.saturating_sub(1);
                    let next = self.used.len();
                    let new = *self.new_of.entry(old).or_insert(next);
                    if new == next {
                        self.used.push(old);
                    }
                    *p = format!("${}", new + 1);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_their_shards_with_parameters_renumbered() {
        let parts = split_insert(
            "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, 'x') ON CONFLICT (k) DO UPDATE SET v = $6 RETURNING k",
            &[1, 0, 1],
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].shard, 1);
        assert_eq!(
            parts[0].sql,
            "INSERT INTO t (k, v) VALUES ($1, $2), ($3, 'x') ON CONFLICT(k) DO UPDATE SET v = $4 RETURNING k"
        );
        assert_eq!(parts[0].params, vec![0, 1, 4, 5]);
        assert_eq!(
            parts[1].sql,
            "INSERT INTO t (k, v) VALUES ($1, $2) ON CONFLICT(k) DO UPDATE SET v = $3 RETURNING k"
        );
        assert_eq!(parts[1].params, vec![2, 3, 5]);
        let literal = split_insert("INSERT INTO t VALUES (1), (2)", &[0, 2]).unwrap();
        assert_eq!(literal[1].sql, "INSERT INTO t VALUES (2)");
        assert!(literal[1].params.is_empty());
        assert!(split_insert("INSERT INTO t SELECT 1", &[0]).is_err());
    }
}
