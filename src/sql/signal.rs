//! `SELECT pg_cancel_backend(pid)` / `SELECT pg_terminate_backend(pid [, timeout])` as a whole
//! statement, recognised so the sidecar can act on the PIDs it issued itself (they name no
//! backend), and the statement texts it sends instead. Pure: no I/O, no knowledge of clients.

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, SelectItem, SetExpr, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Which signal the statement sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// `pg_cancel_backend`: cancel the running query.
    Cancel,
    /// `pg_terminate_backend`: end the session.
    Terminate,
}

impl SignalKind {
    pub fn function(self) -> &'static str {
        match self {
            SignalKind::Cancel => "pg_cancel_backend",
            SignalKind::Terminate => "pg_terminate_backend",
        }
    }
}

/// The PID argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalArg {
    /// A literal integer.
    Literal(i64),
    /// A Bind parameter (`$n`, 1-based).
    Param(usize),
}

/// A statement that is exactly one signal call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalCall {
    pub kind: SignalKind,
    pub arg: SignalArg,
    /// `pg_terminate_backend`'s timeout argument, as written.
    timeout: Option<String>,
    /// The result column's name: the alias, or the function's name.
    column: String,
}

/// The statement `sql` if it is exactly `SELECT [pg_catalog.]pg_cancel_backend(pid)` or
/// `SELECT [pg_catalog.]pg_terminate_backend(pid [, timeout])` (optionally aliased, the PID a
/// literal or a `$n` parameter, possibly cast).
/// Whether a classified statement may be a signal call: its classification (kept per
/// statement shape) names `pg_cancel_backend` or `pg_terminate_backend`, or the statement
/// could not be parsed. Most statements are ruled out without reading their text.
pub fn may_signal(classified: &super::cache::Classified) -> bool {
    match classified.classification.as_ref() {
        super::class::Classification::Parsed(parsed) => parsed.iter().any(|s| {
            s.functions.iter().any(|f| {
                f.name.ends_with("pg_cancel_backend") || f.name.ends_with("pg_terminate_backend")
            })
        }),
        super::class::Classification::Unparsed { .. } => true,
    }
}

pub fn signal_call(sql: &str) -> Option<SignalCall> {
    // Most statements never mention either function: no parse for them.
    let bytes = sql.as_bytes();
    let mentions = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'_'
            && bytes
                .get(i + 1..i + 8)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"backend"))
    });
    if !mentions {
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if !select.from.is_empty() || select.selection.is_some() || select.distinct.is_some() {
        return None;
    }
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let (expr, alias) = match item {
        SelectItem::UnnamedExpr(e) => (e, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
        _ => return None,
    };
    let Expr::Function(function) = expr else {
        return None;
    };
    let parts: Vec<String> = function
        .name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
        .collect();
    let kind = match parts
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["pg_cancel_backend"] | ["pg_catalog", "pg_cancel_backend"] => SignalKind::Cancel,
        ["pg_terminate_backend"] | ["pg_catalog", "pg_terminate_backend"] => SignalKind::Terminate,
        _ => return None,
    };
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    if function.filter.is_some() || function.over.is_some() || !list.clauses.is_empty() {
        return None;
    }
    let args: Vec<&Expr> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (pid, timeout) = match (kind, args.as_slice()) {
        (_, [pid]) => (*pid, None),
        (SignalKind::Terminate, [pid, timeout]) => (*pid, Some(timeout.to_string())),
        _ => return None,
    };
    Some(SignalCall {
        kind,
        arg: pid_arg(pid)?,
        timeout,
        column: alias.unwrap_or_else(|| kind.function().to_owned()),
    })
}

fn pid_arg(expr: &Expr) -> Option<SignalArg> {
    match expr {
        Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => n.parse().ok().map(SignalArg::Literal),
            ast::Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .filter(|&n: &usize| n >= 1)
                .map(SignalArg::Param),
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => pid_arg(expr),
        _ => None,
    }
}

impl SignalCall {
    /// A statement whose answer is `result` under the call's column name (the sidecar acted
    /// itself).
    pub fn answered(&self, result: bool) -> String {
        format!("SELECT {result} AS {}", quote(&self.column))
    }

    /// For a `$n` PID: the statement prepared instead. PIDs above `issued_above` (the PIDs the
    /// sidecar issues) yield `$n = 2147483647`, so the sidecar answers by binding
    /// [`SignalCall::TRUE_PID`] or [`SignalCall::FALSE_PID`]; others reach the real function,
    /// or, with `real_backends = false`, yield false.
    pub fn dispatching(&self, issued_above: i32, real_backends: bool) -> Option<String> {
        let SignalArg::Param(n) = self.arg else {
            return None;
        };
        let otherwise = if real_backends {
            let timeout = self
                .timeout
                .as_ref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default();
            format!("pg_catalog.{}(${n}{timeout})", self.kind.function())
        } else {
            "false".to_owned()
        };
        Some(format!(
            "SELECT CASE WHEN ${n} > {issued_above} THEN ${n} = {} ELSE {otherwise} END AS {}",
            Self::TRUE_PID,
            quote(&self.column)
        ))
    }

    /// The parameter value that makes [`SignalCall::dispatching`] answer true.
    pub const TRUE_PID: i32 = i32::MAX;
    /// The parameter value that makes [`SignalCall::dispatching`] answer false.
    pub const FALSE_PID: i32 = i32::MAX - 1;
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_whole_signal_calls_only() {
        let call = signal_call("select pg_terminate_backend(4194305)").unwrap();
        assert_eq!(call.kind, SignalKind::Terminate);
        assert_eq!(call.arg, SignalArg::Literal(4194305));
        assert_eq!(
            call.answered(true),
            "SELECT true AS \"pg_terminate_backend\""
        );
        let call = signal_call("SELECT pg_catalog.pg_cancel_backend($1::int) AS \"ok\"").unwrap();
        assert_eq!(call.kind, SignalKind::Cancel);
        assert_eq!(call.arg, SignalArg::Param(1));
        assert_eq!(
            call.dispatching(4194304, true).unwrap(),
            "SELECT CASE WHEN $1 > 4194304 THEN $1 = 2147483647 ELSE \
             pg_catalog.pg_cancel_backend($1) END AS \"ok\""
        );
        let call = signal_call("SELECT pg_terminate_backend($2, 1000)").unwrap();
        assert!(call
            .dispatching(4194304, true)
            .unwrap()
            .contains("pg_terminate_backend($2, 1000)"));
        assert!(call
            .dispatching(4194304, false)
            .unwrap()
            .contains("ELSE false END"));
        for other in [
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "SELECT pg_cancel_backend(1), 2",
            "SELECT pg_cancel_backend(1, 2)",
            "SELECT my_backend(1)",
            "SELECT 1",
            "SELECT pg_cancel_backend(1); SELECT 2",
        ] {
            assert_eq!(signal_call(other), None, "{other}");
        }
    }
}
