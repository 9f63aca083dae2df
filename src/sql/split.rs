//! Writes whose rows belong to several shards, pure: a multi-row `INSERT … VALUES` split into
//! one INSERT per shard (each keeps its own rows and everything else of the statement:
//! columns, ON CONFLICT, RETURNING; its `$n` parameters renumbered from 1 in order of first
//! use), and what a `COPY … FROM STDIN` needs to be split (its table, columns and format).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, SetExpr,
    Statement, Value, VisitMut, VisitorMut,
};

use crate::protocol::copy::CopyFormat;
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

/// What a `COPY table (columns) FROM STDIN [WITH (…)]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFrom {
    /// The table as written.
    pub table: String,
    /// The columns as Postgres names them (folded unless quoted).
    pub columns: Vec<String>,
    pub format: CopyFormat,
}

/// Reads a COPY FROM STDIN statement (the refusal says what to change).
pub fn copy_from(sql: &str) -> Result<CopyFrom, String> {
    let refuse = |why: &str| Err(format!("COPY into a sharded table {why}"));
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return refuse("could not be parsed: add /* pgsidecar: shard=N */ to copy into one shard");
    };
    let (
        Some(Statement::Copy {
            source,
            to: false,
            target: CopyTarget::Stdin,
            options,
            legacy_options,
            ..
        }),
        true,
    ) = (statements.pop(), statements.is_empty())
    else {
        return refuse("is split across shards only as one COPY … FROM STDIN");
    };
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return refuse("needs a table");
    };
    if columns.is_empty() {
        return refuse("needs its column list across shards (COPY t (a, b, …) FROM STDIN), so the key's position is known");
    }
    let mut format = CopyFormat::text();
    let (mut delimiter, mut null, mut quote, mut escape, mut header) =
        (None, None, None, None, false);
    for option in options {
        match option {
            CopyOption::Format(name) => {
                format = match name.value.to_lowercase().as_str() {
                    "text" => CopyFormat::text(),
                    "csv" => CopyFormat::csv(),
                    "binary" => CopyFormat::Binary,
                    _ => return refuse("has an unknown FORMAT"),
                }
            }
            CopyOption::Delimiter(c) => delimiter = Some(c),
            CopyOption::Null(s) => null = Some(s),
            CopyOption::Quote(c) => quote = Some(c),
            CopyOption::Escape(c) => escape = Some(c),
            CopyOption::Header(h) => header = h,
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            CopyOption::Freeze(_) | CopyOption::ForceNotNull(_) | CopyOption::ForceNull(_) => {}
            other => return refuse(&format!("cannot be split with the option {other}")),
        }
    }
    for option in legacy_options {
        match option {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(c),
            CopyLegacyOption::Null(s) => null = Some(s),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::csv();
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(c),
                        CopyLegacyCsvOption::Escape(c) => escape = Some(c),
                        _ => {}
                    }
                }
            }
            other => return refuse(&format!("cannot be split with the option {other}")),
        }
    }
    let byte = |c: char| u8::try_from(c).ok().filter(u8::is_ascii);
    format = match format {
        CopyFormat::Text {
            delimiter: d,
            null: n,
        } => CopyFormat::Text {
            delimiter: delimiter.and_then(byte).unwrap_or(d),
            null: null.map_or(n, String::into_bytes),
        },
        CopyFormat::Csv {
            delimiter: d,
            quote: q,
            null: n,
            ..
        } => {
            let quote = quote.and_then(byte).unwrap_or(q);
            CopyFormat::Csv {
                delimiter: delimiter.and_then(byte).unwrap_or(d),
                quote,
                escape: escape.and_then(byte).unwrap_or(quote),
                null: null.map_or(n, String::into_bytes),
                header,
            }
        }
        CopyFormat::Binary => CopyFormat::Binary,
    };
    Ok(CopyFrom {
        table: table_name.to_string(),
        columns: columns
            .iter()
            .map(|c| match c.quote_style {
                Some(_) => c.value.clone(),
                None => c.value.to_lowercase(),
            })
            .collect(),
        format,
    })
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

    #[test]
    fn copy_statements_give_table_columns_and_format() {
        let c =
            copy_from("COPY items (customer_id, Note) FROM STDIN WITH (FORMAT csv, HEADER true)")
                .unwrap();
        assert_eq!(c.table, "items");
        assert_eq!(c.columns, vec!["customer_id", "note"]);
        assert!(matches!(
            c.format,
            CopyFormat::Csv {
                header: true,
                delimiter: b',',
                ..
            }
        ));
        let c = copy_from("COPY items (k) FROM STDIN (DELIMITER '|', NULL 'nil')").unwrap();
        assert_eq!(
            c.format,
            CopyFormat::Text {
                delimiter: b'|',
                null: b"nil".to_vec()
            }
        );
        assert_eq!(
            copy_from("COPY items (k) FROM STDIN BINARY")
                .unwrap()
                .format,
            CopyFormat::Binary
        );
        assert!(copy_from("COPY items FROM STDIN")
            .unwrap_err()
            .contains("column list"));
        assert!(copy_from("COPY items (k) TO STDOUT").is_err());
    }
}
