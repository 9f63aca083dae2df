//! Which shard one statement needs, pure: from a hint (`/* pgsidecar: shard=N */`,
//! `/* pgsidecar: shard_key=V */`), else from its classification — the key column of each
//! sharded table it touches compared with a literal or a `$n` parameter at the top level
//! (AND-ed, aliases resolved), or every row of an INSERT … VALUES — with values read from the
//! statement text or the Bind. A statement that would need several shards, or whose shard
//! cannot be known, is refused with a message that says what to add; statements that touch no
//! sharded table read on any shard, and writes to such (omnisharded) tables are refused until
//! they can be sent to every shard.

use std::borrow::Cow;

use super::shard::{Key, ShardError, ShardedTable};
use crate::protocol::array::{self, ArrayError};
use crate::protocol::bind::Bind;
use crate::protocol::sqlstate::SqlState;
use crate::sql::cache::Classified;
use crate::sql::class::{Classification, Equality, Kind, Members, StatementClass, ValueRef};

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardRoute {
    /// On this shard.
    Shard(usize),
    /// On any shard (it touches no sharded table and writes nothing).
    Any,
    /// A read on each of these shards (more than one), its replies merged.
    Shards(Vec<usize>),
    /// A write on each of these shards (more than one), committed on all or none (two-phase
    /// commit); a multi-row INSERT is split by the rows' shards.
    Writes(Vec<usize>),
    /// Nowhere: the client gets this error.
    Refused(SqlState, String),
}

impl ShardRoute {
    /// Where two parts of one request run together: the same shard, or anywhere the other
    /// may; a refusal wins; different shards are refused with `conflict`.
    pub fn and(self, other: ShardRoute, conflict: impl FnOnce() -> String) -> ShardRoute {
        match (self, other) {
            (refused @ ShardRoute::Refused(..), _) | (_, refused @ ShardRoute::Refused(..)) => {
                refused
            }
            (ShardRoute::Any, other) | (other, ShardRoute::Any) => other,
            (ShardRoute::Shard(a), ShardRoute::Shard(b)) if a == b => ShardRoute::Shard(a),
            (ShardRoute::Shards(a), ShardRoute::Shards(b)) if a == b => ShardRoute::Shards(a),
            (ShardRoute::Writes(a), ShardRoute::Writes(b)) if a == b => ShardRoute::Writes(a),
            (ShardRoute::Shard(_) | ShardRoute::Shards(_) | ShardRoute::Writes(_), _) => {
                ShardRoute::refused(conflict())
            }
        }
    }

    fn is_refused(&self) -> bool {
        matches!(self, ShardRoute::Refused(..))
    }

    fn refused(message: impl Into<String>) -> ShardRoute {
        ShardRoute::Refused(SqlState::FEATURE_NOT_SUPPORTED, message.into())
    }

    fn error(e: &ShardError) -> ShardRoute {
        ShardRoute::Refused(e.sqlstate(), e.to_string())
    }
}

/// What a statement's shard is read from.
pub struct Statement<'a> {
    pub sql: &'a [u8],
    pub classified: &'a Classified,
    /// The Bind that executes it (extended protocol), for `$n` keys.
    pub bind: Option<&'a Bind<'a>>,
    /// The schemas of the client's `search_path` (`$user` resolved), when it set one.
    pub search_path: Option<&'a [String]>,
}

/// The shard `statement` needs among `shards`, given the database's sharded tables and the
/// client's shard setting (a hint in the statement wins over it; both win over keys).
pub fn route(
    statement: &Statement<'_>,
    tables: &[ShardedTable],
    shards: usize,
    setting: Option<&ShardHint>,
) -> ShardRoute {
    // Most statements have no block comment: the scan says so without reading them again.
    let hinted = match statement.classified.scan.block_comments {
        true => hint(statement.sql),
        false => None,
    };
    match hinted.or_else(|| setting.cloned()) {
        Some(ShardHint::Shard(n)) if n < shards => return ShardRoute::Shard(n),
        Some(ShardHint::Shard(n)) => {
            return ShardRoute::Refused(
                SqlState::INVALID_PARAMETER_VALUE,
                format!(
                    "shard {n} does not exist: the database has {shards} shards (0 to {})",
                    shards - 1
                ),
            )
        }
        Some(ShardHint::Key(key)) => {
            // The hint's key is read as the type of the sharded table the statement touches.
            let Some(table) = touched(statement, tables).next() else {
                return ShardRoute::refused(
                    "a shard_key hint needs a statement on a sharded table (or use shard=N)",
                );
            };
            return match table.key_type.parse(&key) {
                Ok(key) => placed(table, Some(key), shards),
                Err(e) => ShardRoute::error(&e),
            };
        }
        None => {}
    }
    let Classification::Parsed(parsed) = statement.classified.classification.as_ref() else {
        return ShardRoute::refused(
            "the statement could not be parsed, so its shard is unknown: add /* pgsidecar: shard=N */",
        );
    };
    let mut route = ShardRoute::Any;
    for class in parsed {
        route = route.and(one(statement, class, tables, shards), || {
            "the statements of this query need different shards: send them separately".into()
        });
        if route.is_refused() {
            break;
        }
    }
    route
}

/// One statement of a query string.
fn one(
    statement: &Statement<'_>,
    class: &StatementClass,
    tables: &[ShardedTable],
    shards: usize,
) -> ShardRoute {
    let names = class.tables_read.iter().chain(&class.tables_written);
    let sharded = tables.iter().filter(|t| {
        names
            .clone()
            .any(|n| names_table(n, t) && on_search_path(n, t, statement.search_path))
    });
    if matches!(class.kind, Kind::CopyFrom | Kind::CopyTo) {
        return match (sharded.clone().next().is_some(), &class.kind) {
            // Split by each row's key, on every shard (all or none).
            (true, Kind::CopyFrom) => ShardRoute::Writes((0..shards).collect()),
            (true, _) => ShardRoute::refused(
                "COPY … TO of a sharded table needs its shard: add /* pgsidecar: shard=N */ (or SELECT, which reads every shard)",
            ),
            // Any shard holds all of a table that is not sharded.
            (false, Kind::CopyTo) => ShardRoute::Any,
            (false, _) => ShardRoute::refused(
                "COPY into a table that is on every shard needs a shard: add /* pgsidecar: shard=N */ (or INSERT, which goes to every shard)",
            ),
        };
    }
    if sharded.clone().next().is_none() {
        let writes =
            !class.tables_written.is_empty() || matches!(class.kind, Kind::Write | Kind::Ddl);
        // Tables that are not sharded are on every shard: a write (or DDL) goes to them all.
        return if writes {
            ShardRoute::Writes((0..shards).collect())
        } else {
            ShardRoute::Any
        };
    }
    // A statement names few tables: no allocation per statement.
    let sharded: smallvec::SmallVec<[&ShardedTable; 4]> = sharded.collect();
    if let Some(table) = sharded.iter().find(|t| class.assigned.contains(&t.column)) {
        return ShardRoute::refused(format!(
            "this statement changes the shard key \"{}\" of \"{}\", which would move the row to another shard: delete and insert it instead",
            table.column,
            table.display_name()
        ));
    }
    // Each table's shard from its own key, then through join links to co-located tables.
    let mut routes: smallvec::SmallVec<[Option<ShardRoute>; 4]> = sharded
        .iter()
        .map(|t| own_route(statement, class, t, shards))
        .collect();
    while let Some((i, route)) = (0..sharded.len()).find_map(|i| {
        if routes[i].is_some() {
            return None;
        }
        (0..sharded.len())
            .filter(|&j| routes[j].is_some() && linked(class, sharded[i], sharded[j]))
            .find_map(|j| routes[j].clone())
            .map(|route| (i, route))
    }) {
        routes[i] = Some(route);
    }
    let reads = class.tables_written.is_empty() && class.kind == Kind::Read;
    if !class.inserts && routes.iter().all(Option::is_none) && connected(class, &sharded) {
        // No key anywhere: every shard holds some of the rows (co-located joins stay on
        // each shard); a write runs on each, all or none.
        let all = (0..shards).collect();
        return match reads {
            true => ShardRoute::Shards(all),
            false => ShardRoute::Writes(all),
        };
    }
    let mut route = ShardRoute::Any;
    for (table, own) in sharded.iter().zip(routes) {
        let next = own.unwrap_or_else(|| needs_key(table));
        route = route.and(next, || {
            format!(
                "the keys of this statement are on different shards ({} and others): \
                 one statement runs on one shard in this version",
                table.display_name()
            )
        });
        if route.is_refused() {
            break;
        }
    }
    route
}

fn needs_key(table: &ShardedTable) -> ShardRoute {
    ShardRoute::refused(format!(
        "table \"{}\" is sharded by \"{}\": add \"{} = <value>\" to the statement (or /* pgsidecar: shard_key=<value> */)",
        table.display_name(),
        table.column,
        table.column
    ))
}

/// Whether the sharded tables of a statement are all joined through their key columns
/// (one table alone is).
fn connected(class: &StatementClass, tables: &[&ShardedTable]) -> bool {
    let mut reached = vec![false; tables.len()];
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        stack.extend(
            (0..tables.len()).filter(|&j| !reached[j] && linked(class, tables[i], tables[j])),
        );
    }
    reached.iter().all(|r| *r)
}

/// Whether a column reference is the key column of `table`.
fn is_key_of(table: &ShardedTable, name: Option<&str>, column: &str) -> bool {
    column == table.column && name.is_some_and(|n| names_table(n, table))
}

/// Whether the statement joins the key columns of two co-located tables (`a.key = b.key`), so
/// that every row it reads of one is on the shard of the other's key.
fn linked(class: &StatementClass, a: &ShardedTable, b: &ShardedTable) -> bool {
    a.co_located(b)
        && class.links.iter().any(|l| {
            let (left, right) = (&l.left, &l.right);
            (is_key_of(a, left.table.as_deref(), &left.column)
                && is_key_of(b, right.table.as_deref(), &right.column))
                || (is_key_of(b, left.table.as_deref(), &left.column)
                    && is_key_of(a, right.table.as_deref(), &right.column))
        })
}

/// The shard one sharded table of a statement needs by its own key (`None`: it has none).
fn own_route(
    statement: &Statement<'_>,
    class: &StatementClass,
    table: &ShardedTable,
    shards: usize,
) -> Option<ShardRoute> {
    let is_key = |e: &Equality| is_key_of(table, e.table.as_deref(), &e.column);
    if !class.insert_rows.is_empty() {
        return Some(match insert_row_shards(statement, class, table, shards) {
            Err(refused) => refused,
            Ok(rows) => {
                let mut on: Vec<usize> = rows.clone();
                on.sort_unstable();
                on.dedup();
                match on[..] {
                    [] => ShardRoute::Any,
                    [one] => ShardRoute::Shard(one),
                    _ => ShardRoute::Writes(on),
                }
            }
        });
    }
    if let Some(eq) = class.equalities.iter().find(|e| is_key(e)) {
        return Some(match value(statement, table, &eq.value) {
            Ok(key) => placed(table, key, shards),
            Err(route) => route,
        });
    }
    class
        .memberships
        .iter()
        .find(|m| is_key_of(table, m.table.as_deref(), &m.column))
        .map(|m| {
            let reads = class.tables_written.is_empty() && class.kind == Kind::Read;
            members_route(statement, table, &m.values, shards, reads)
        })
}

/// The shard of each row of an INSERT … VALUES into `table`, in order.
fn insert_row_shards(
    statement: &Statement<'_>,
    class: &StatementClass,
    table: &ShardedTable,
    shards: usize,
) -> Result<Vec<usize>, ShardRoute> {
    let is_key = |e: &Equality| is_key_of(table, e.table.as_deref(), &e.column);
    class
        .insert_rows
        .iter()
        .map(|row| {
            let eq = row
                .iter()
                .find(|e| is_key(e))
                .ok_or_else(|| needs_key(table))?;
            match placed(table, value(statement, table, &eq.value)?, shards) {
                ShardRoute::Shard(n) => Ok(n),
                other => Err(other),
            }
        })
        .collect()
}

/// The shard of each row of a multi-row INSERT … VALUES into one sharded table, in order
/// (`None`: the statement is not one, or a row has no shard).
pub fn insert_rows(
    statement: &Statement<'_>,
    tables: &[ShardedTable],
    shards: usize,
) -> Option<Vec<usize>> {
    let Classification::Parsed(parsed) = statement.classified.classification.as_ref() else {
        return None;
    };
    let [class] = &parsed[..] else {
        return None;
    };
    if class.insert_rows.len() < 2 {
        return None;
    }
    let table = tables.iter().find(|t| {
        class
            .tables_written
            .iter()
            .any(|n| names_table(n, t) && on_search_path(n, t, statement.search_path))
    })?;
    insert_row_shards(statement, class, table, shards).ok()
}

/// The shard of every value of `IN (…)` or `= ANY(…)`: one, or for a read the shards they
/// are on.
fn members_route(
    statement: &Statement<'_>,
    table: &ShardedTable,
    members: &Members,
    shards: usize,
    reads: bool,
) -> ShardRoute {
    let conflict = || {
        format!(
            "the values listed for \"{}\" of \"{}\" are on different shards: \
             one statement runs on one shard in this version, so query each shard's values separately",
            table.column,
            table.display_name()
        )
    };
    let mut route = ShardRoute::Any;
    let mut on: smallvec::SmallVec<[usize; 8]> = smallvec::SmallVec::new();
    let mut add = |next: ShardRoute| {
        if let ShardRoute::Shard(n) = &next {
            if !on.contains(n) {
                on.push(*n);
            }
            return true;
        }
        route = std::mem::replace(&mut route, ShardRoute::Any).and(next, conflict);
        !route.is_refused()
    };
    match members {
        Members::List(values) => {
            for v in values {
                // NULL in an IN list matches no row: it needs no shard.
                let next = match value(statement, table, v) {
                    Ok(None) => continue,
                    Ok(key) => placed(table, key, shards),
                    Err(refused) => refused,
                };
                if !add(next) {
                    break;
                }
            }
        }
        Members::Array(v) => {
            if let Err(refused) = array_keys(statement, table, v, |key| {
                add(match key {
                    Ok(None) => ShardRoute::Any,
                    Ok(key) => placed(table, key, shards),
                    Err(e) => ShardRoute::error(&e),
                })
            }) {
                return refused;
            }
        }
    }
    if route.is_refused() {
        return route;
    }
    on.sort_unstable();
    let listed = match (&on[..], reads) {
        ([], _) => ShardRoute::Any,
        ([one], _) => ShardRoute::Shard(*one),
        (_, true) => ShardRoute::Shards(on.to_vec()),
        (_, false) => ShardRoute::Writes(on.to_vec()),
    };
    route.and(listed, conflict)
}

/// Calls `each` with every element of an array value (a literal or a Bind parameter) as a key
/// of the table's type, until it returns false.
fn array_keys(
    statement: &Statement<'_>,
    table: &ShardedTable,
    value: &ValueRef,
    mut each: impl FnMut(Result<Option<Key<'_>>, ShardError>) -> bool,
) -> Result<(), ShardRoute> {
    let array_error =
        |e: ArrayError| ShardRoute::Refused(SqlState::INVALID_TEXT_REPRESENTATION, e.to_string());
    let text: Cow<'_, str> = match value {
        ValueRef::Literal(i) => statement
            .classified
            .scan
            .literals
            .get(*i)
            .map(|l| l.value(statement.sql))
            .ok_or_else(|| ShardRoute::refused("the shard key array could not be read"))?,
        ValueRef::Param(n) => {
            let i = (*n as usize).saturating_sub(1);
            let bind = statement.bind.ok_or_else(|| {
                ShardRoute::refused(
                    "the shard keys are a parameter and there is no Bind to read them from",
                )
            })?;
            let bytes = match bind.param(i) {
                None => {
                    return Err(ShardRoute::refused(format!(
                        "the Bind has no parameter ${}",
                        i + 1
                    )))
                }
                // `= ANY(NULL)` matches no row.
                Some(None) => return Ok(()),
                Some(Some(bytes)) => bytes,
            };
            if bind.param_format(i) != 0 {
                for element in array::binary_elements(bytes).map_err(array_error)? {
                    if !each(element.map(|b| table.key_type.from_binary(b)).transpose()) {
                        break;
                    }
                }
                return Ok(());
            }
            Cow::Borrowed(std::str::from_utf8(bytes).map_err(|_| {
                ShardRoute::Refused(
                    SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                    "the shard key array is not valid UTF-8".into(),
                )
            })?)
        }
        ValueRef::Word(_) | ValueRef::Expression => return Err(needs_key(table)),
    };
    for element in array::text_elements(&text).map_err(array_error)? {
        if !each(
            element
                .as_deref()
                .map(|t| table.key_type.parse(t))
                .transpose(),
        ) {
            break;
        }
    }
    Ok(())
}

/// The key a value reference stands for (`None`: NULL).
fn value<'a>(
    statement: &Statement<'a>,
    table: &ShardedTable,
    value: &ValueRef,
) -> Result<Option<Key<'a>>, ShardRoute> {
    match value {
        ValueRef::Literal(i) => {
            let Some(literal) = statement.classified.scan.literals.get(*i) else {
                return Err(ShardRoute::refused(
                    "the shard key literal could not be read",
                ));
            };
            match literal.value(statement.sql) {
                Cow::Borrowed(text) => table.key_type.parse(text).map(Some),
                // Escapes were resolved into a copy: numbers and UUIDs need no borrow.
                Cow::Owned(text) => match table.key_type.parse(&text) {
                    Ok(Key::Int(v)) => Ok(Some(Key::Int(v))),
                    Ok(Key::Uuid(u)) => Ok(Some(Key::Uuid(u))),
                    Ok(Key::Text(_)) => {
                        return Err(ShardRoute::refused(
                            "a text shard key written with escapes: pass it as a parameter",
                        ))
                    }
                    Err(e) => Err(e),
                },
            }
            .map_err(|e| ShardRoute::error(&e))
        }
        ValueRef::Param(n) => {
            let Some(bind) = statement.bind else {
                return Err(ShardRoute::refused(
                    "the shard key is a parameter and there is no Bind to read it from",
                ));
            };
            bind_key(bind, table, (*n as usize).saturating_sub(1))
        }
        // An INSERT of a NULL key.
        ValueRef::Word(w) if w == "null" => Ok(None),
        ValueRef::Word(_) | ValueRef::Expression => Err(ShardRoute::refused(format!(
            "the shard key \"{}\" of \"{}\" is computed: give it as a literal or a parameter",
            table.column,
            table.display_name()
        ))),
    }
}

/// Parameter `i` of a Bind as a key of the table's type (text or binary format).
fn bind_key<'a>(
    bind: &Bind<'a>,
    table: &ShardedTable,
    i: usize,
) -> Result<Option<Key<'a>>, ShardRoute> {
    let invalid = || {
        ShardRoute::error(&ShardError::InvalidKey {
            key_type: table.key_type.name(),
            value: format!("(parameter ${})", i + 1),
        })
    };
    match bind.param(i) {
        None => Err(ShardRoute::refused(format!(
            "the Bind has no parameter ${}",
            i + 1
        ))),
        Some(None) => Ok(None),
        Some(Some(bytes)) if bind.param_format(i) == 0 => {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
            table
                .key_type
                .parse(text)
                .map(Some)
                .map_err(|e| ShardRoute::error(&e))
        }
        Some(Some(bytes)) => binary_key(table, bytes).map(Some),
    }
}

/// A key in binary format, as the table's key type sends it.
fn binary_key<'a>(table: &ShardedTable, bytes: &'a [u8]) -> Result<Key<'a>, ShardRoute> {
    table
        .key_type
        .from_binary(bytes)
        .map_err(|e| ShardRoute::error(&e))
}

/// The table's shard for a key.
fn placed(table: &ShardedTable, key: Option<Key<'_>>, shards: usize) -> ShardRoute {
    match table.shard_of(key, shards) {
        Ok(n) => ShardRoute::Shard(n),
        Err(e) => ShardRoute::error(&e),
    }
}

/// The first sharded table a statement names.
pub fn sharded_table<'t>(
    statement: &Statement<'_>,
    tables: &'t [ShardedTable],
) -> Option<&'t ShardedTable> {
    touched(statement, tables).next()
}

/// Sharded tables a statement names (from its classification).
fn touched<'t>(
    statement: &Statement<'_>,
    tables: &'t [ShardedTable],
) -> impl Iterator<Item = &'t ShardedTable> {
    let names: Vec<String> = match statement.classified.classification.as_ref() {
        Classification::Parsed(parsed) => parsed
            .iter()
            .flat_map(|c| c.tables_read.iter().chain(&c.tables_written).cloned())
            .collect(),
        Classification::Unparsed { .. } => Vec::new(),
    };
    let path: Option<Vec<String>> = statement.search_path.map(<[String]>::to_vec);
    tables.iter().filter(move |t| {
        names
            .iter()
            .any(|n| names_table(n, t) && on_search_path(n, t, path.as_deref()))
    })
}

/// Whether a table name as the statement wrote it (`t`, `s.t`) may be the sharded table. A
/// name without a schema may resolve to any schema on the client's `search_path`, so it counts
/// (treating a sharded table as unsharded could read the wrong shard; the other way round only
/// asks for a key).
fn names_table(name: &str, table: &ShardedTable) -> bool {
    let (schema, last) = match name.as_bytes().iter().rposition(|&b| b == b'.') {
        Some(dot) => (Some(&name[..dot]), &name[dot + 1..]),
        None => (None, name),
    };
    last == table.table
        && match (schema, &table.schema) {
            (Some(written), Some(configured)) => written == configured,
            _ => true,
        }
}

/// Whether an unqualified name may resolve to the configured schema of `table` under the
/// client's search path: not when the client's `search_path` (known) leaves that schema out,
/// as Postgres would not look there. Qualified names, tables configured without a schema and
/// clients that set no search path (the server's default applies) may.
fn on_search_path(name: &str, table: &ShardedTable, search_path: Option<&[String]>) -> bool {
    match (&table.schema, search_path) {
        (Some(schema), Some(path)) if !name.as_bytes().contains(&b'.') => {
            path.iter().any(|s| s == schema) || schema == "pg_temp"
        }
        _ => true,
    }
}

/// Where a client says a statement goes: a shard, or a key of the sharded table it touches
/// (a comment hint, or `SET pgsidecar.shard` / `pgsidecar.shard_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardHint {
    Shard(usize),
    Key(String),
}

/// `SET pgsidecar.shard = N`, and the key form, are the sidecar's: never sent upstream.
pub const SHARD_SETTING: &str = "pgsidecar.shard";
pub const SHARD_KEY_SETTING: &str = "pgsidecar.shard_key";

/// A `SET [LOCAL]` (hint) or `RESET` (`None`) of one of the shard settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSetting {
    pub hint: Option<ShardHint>,
    /// `SET LOCAL`: until the transaction ends.
    pub local: bool,
}

/// Whether a classification is one SET or RESET (which may be of a shard setting): a cheap
/// check before reading the statement's text.
pub fn sets_something(classified: &Classified) -> bool {
    matches!(classified.classification.as_ref(),
        Classification::Parsed(parsed) if parsed.len() == 1
            && matches!(parsed[0].kind, Kind::Set | Kind::SetLocal | Kind::Reset))
}

/// The shard setting a one-statement Query sets or resets, if it is one (`Err`: a value that
/// is not a shard number).
pub fn shard_setting(sql: &[u8], classified: &Classified) -> Option<Result<ShardSetting, String>> {
    let Classification::Parsed(parsed) = classified.classification.as_ref() else {
        return None;
    };
    let [statement] = parsed.as_slice() else {
        return None;
    };
    if !matches!(statement.kind, Kind::Set | Kind::SetLocal | Kind::Reset) {
        return None;
    }
    let [change] = statement.settings.as_slice() else {
        return None;
    };
    let crate::sql::class::SettingName::Fixed(name) = &change.name else {
        return None;
    };
    let key = if name.eq_ignore_ascii_case(SHARD_SETTING) {
        false
    } else if name.eq_ignore_ascii_case(SHARD_KEY_SETTING) {
        true
    } else {
        return None;
    };
    let value = change
        .value
        .as_ref()
        .map(|v| classified.setting_value(sql, v));
    let hint = match value {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("default") => None,
        Some(v) if key => Some(ShardHint::Key(v)),
        Some(v) => match v.parse() {
            Ok(n) => Some(ShardHint::Shard(n)),
            Err(_) => {
                return Some(Err(format!(
                "invalid value for parameter \"{SHARD_SETTING}\": \"{v}\" (a shard number from 0)"
            )))
            }
        },
    };
    Some(Ok(ShardSetting {
        hint,
        local: change.local,
    }))
}

/// `/* pgsidecar: shard=N */` or `/* pgsidecar: shard_key=V */` anywhere in the statement.
fn hint(sql: &[u8]) -> Option<ShardHint> {
    const MARK: &[u8] = b"pgsidecar:";
    // Most statements have no block comment at all.
    let first_comment = sql.windows(2).position(|w| w == b"/*")?;
    let at = first_comment
        + sql[first_comment..]
            .windows(MARK.len())
            .position(|w| w.eq_ignore_ascii_case(MARK))?;
    // Only inside a block comment that opened before the mark.
    let before = &sql[..at];
    let opened = before.windows(2).rposition(|w| w == b"/*")?;
    if before[opened..].windows(2).any(|w| w == b"*/") {
        return None;
    }
    let rest = &sql[at + MARK.len()..];
    let end = rest.windows(2).position(|w| w == b"*/")?;
    let body = std::str::from_utf8(&rest[..end]).ok()?.trim();
    let (name, value) = body.split_once('=')?;
    let value = value.trim().trim_matches('\'');
    match name.trim().to_ascii_lowercase().as_str() {
        "shard" => value.parse().ok().map(ShardHint::Shard),
        "shard_key" => Some(ShardHint::Key(value.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
