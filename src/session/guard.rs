//! The tenant guard: defence in depth under tenant enforcement, and the source of clear 42501
//! errors. Isolation itself rests on the signed tenant token that Postgres verifies
//! (`crate::token`) and on DISCARD ALL between tenants; the guard refuses what plainly tries to
//! change the tenant or step outside it — SET / RESET / `set_config` of a reserved setting
//! (the tenant setting, what a JWT granted, `pgsidecar.*`), `role` and
//! `session_authorization` in every form, `standard_conforming_strings = off` (with it the
//! scanner and Postgres would disagree on where strings end), ALTER ROLE / USER / DATABASE /
//! SYSTEM, DO blocks, CREATE FUNCTION / PROCEDURE, the sidecar's reserved channels,
//! `pg_cancel_backend` / `pg_terminate_backend` (other connections serve other tenants) — and must
//! not refuse what real drivers and ORMs send. Text sqlparser cannot parse is let through
//! unless it names channels, `set_config`, a role change or string syntax. Pure: the relay
//! refuses what this returns.

use crate::sql::cache::Classified;
use crate::sql::classify::{Classification, Kind, SettingName, StatementClass, ValueRef};
use crate::sql::fingerprint::{Scan, PLACEHOLDER};
use crate::sql::quote::{quote_ident, quote_literal};
use crate::sql::settings::Settings;
use crate::token::RESERVED_SETTING_PREFIX;

/// Channels whose names start with this are the sidecar's own.
pub const RESERVED_CHANNEL_PREFIX: &str = "pgsidecar";

/// Words that make unparsable text refused: it may name channels (which the sidecar
/// namespaces), set settings it cannot read, or change the string syntax the scanner relies on.
const UNPARSED_REFUSED_WORDS: &[&str] = &[
    "listen",
    "unlisten",
    "notify",
    "pg_notify",
    "set_config",
    "standard_conforming_strings",
    "session_authorization",
];

/// Words that change the role when they follow `SET`, `RESET`, `LOCAL` or `SESSION`
/// (`SET ROLE x`, `SET LOCAL ROLE x`, `SET SESSION AUTHORIZATION x`); a column called `role`
/// elsewhere is no reason to refuse.
const ROLE_WORDS: &[&str] = &["role", "authorization"];

/// The DETAIL of the error the server raises for a refusal; the relay gives the client the
/// refusal alone, as an error of the sidecar's (no PL/pgSQL CONTEXT).
pub const REFUSAL_DETAIL: &str = "pgsidecar refusal";

/// A statement text the guard refuses, and why (the message the client gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    fn because(what: &str) -> Refusal {
        Refusal(format!(
            "permission denied: {what} while tenant enforcement is on"
        ))
    }
}

/// What the guard decided about a statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed and allowed.
    Allowed,
    /// Not parsed, and nothing in it concerns the sidecar's own state: forwarded (the signed
    /// tenant keeps it inside the tenant).
    Unparsed,
}

/// Checks a statement text (`sql`, classified) against the `reserved` settings (the tenant
/// setting, and what a JWT granted: its claims setting, the role).
pub fn check(sql: &[u8], classified: &Classified, reserved: &Settings) -> Result<Verdict, Refusal> {
    let statements = match classified.classification.as_ref() {
        Classification::Parsed(statements) => statements,
        Classification::Unparsed { .. } => return check_unparsed(&classified.scan),
    };
    let jwt_role = reserved.contains_key("role");
    for statement in statements {
        check_kind(statement)?;
        for change in &statement.settings {
            let name = match &change.name {
                SettingName::Fixed(name) => name.clone(),
                SettingName::Literal(i) => match classified.scan.literals.get(*i) {
                    Some(literal) => literal.value(sql).into_owned(),
                    None => String::new(),
                },
                SettingName::Computed => {
                    return Err(Refusal::because(
                        "set_config with a computed setting name is refused",
                    ))
                }
            };
            let value = change.value.as_ref().map(|v| match v {
                ValueRef::Literal(i) => classified
                    .scan
                    .literals
                    .get(*i)
                    .map(|l| l.value(sql).into_owned()),
                ValueRef::Word(w) => Some(w.clone()),
                ValueRef::Param(_) | ValueRef::Expression => None,
            });
            check_setting(name.trim(), value, reserved, jwt_role)?;
        }
        // Other server connections of the shared role serve other tenants.
        if let Some(call) = statement.functions.iter().find(|f| {
            matches!(
                f.name.rsplit('.').next(),
                Some("pg_cancel_backend" | "pg_terminate_backend")
            )
        }) {
            return Err(Refusal::because(&format!(
                "{}() is refused (the server connections of this role serve other tenants)",
                call.name.rsplit('.').next().unwrap_or_default()
            )));
        }
        // pg_notify with a channel the sidecar cannot read could reach its reserved channels.
        for call in &statement.functions {
            if call.name.rsplit('.').next() == Some("pg_notify")
                && !notifies_literal_channel(sql, classified)
            {
                return Err(Refusal::because(
                    "pg_notify with a computed channel is refused",
                ));
            }
        }
    }
    Ok(Verdict::Allowed)
}

fn check_kind(statement: &StatementClass) -> Result<(), Refusal> {
    let refused = match &statement.kind {
        // SET ROLE and SET SESSION AUTHORIZATION are judged as the settings they change.
        Kind::Do => Some("DO blocks are refused"),
        Kind::CreateFunction => Some("CREATE FUNCTION and CREATE PROCEDURE are refused"),
        Kind::AlterRole => Some("ALTER ROLE and ALTER USER are refused"),
        Kind::Listen { channel }
        | Kind::Notify { channel }
        | Kind::Unlisten {
            channel: Some(channel),
        } if reserved_channel(channel) => {
            Some("LISTEN and NOTIFY on the sidecar's channels are refused")
        }
        _ => None,
    };
    refused.map_or(Ok(()), |what| Err(Refusal::because(what)))
}

/// One setting a statement changes (`value`: `None` for RESET or a value the sidecar cannot
/// read, `Some(None)`…) — refused when reserved, a role, or strings that stop conforming.
fn check_setting(
    name: &str,
    value: Option<Option<String>>,
    reserved: &Settings,
    jwt_role: bool,
) -> Result<(), Refusal> {
    let lower = name.to_ascii_lowercase();
    if let Some(setting) = reserved.keys().find(|r| lower.eq_ignore_ascii_case(r)) {
        return Err(Refusal(format!(
            "permission denied to set parameter \"{setting}\": it is reserved for the tenant"
        )));
    }
    if lower.starts_with(RESERVED_SETTING_PREFIX) {
        return Err(Refusal(format!(
            "permission denied to set parameter \"{name}\": it is reserved for the sidecar"
        )));
    }
    let reset = value.is_none();
    let is = |v: &Option<Option<String>>, words: &[&str]| matches!(v, Some(Some(v)) if words.iter().any(|w| v.trim().eq_ignore_ascii_case(w)));
    match lower.as_str() {
        "role" if !jwt_role && (reset || is(&value, &["none"])) => Ok(()),
        "role" => Err(Refusal::because("changing the role is refused")),
        "session_authorization" if reset => Ok(()),
        "session_authorization" => Err(Refusal::because(
            "changing the session authorization is refused",
        )),
        "standard_conforming_strings"
            if reset || matches!(&value, Some(Some(v)) if keeps_strings_conforming(v)) =>
        {
            Ok(())
        }
        "standard_conforming_strings" => Err(Refusal::because(
            "standard_conforming_strings = off is refused",
        )),
        _ => Ok(()),
    }
}

/// Whether a value for `standard_conforming_strings` keeps it on (the scanner reads strings
/// as Postgres does only then).
pub fn keeps_strings_conforming(value: &str) -> bool {
    ["on", "true", "yes", "1"]
        .iter()
        .any(|v| value.trim().eq_ignore_ascii_case(v))
}

/// Text sqlparser cannot parse: forwarded, unless its words name channels, roles or the
/// string syntax, or it is ALTER DATABASE / SYSTEM / ROLE / USER.
fn check_unparsed(scan: &Scan) -> Result<Verdict, Refusal> {
    for statement in scan.fingerprint.split(|&b| b == b';') {
        let words = words(statement);
        if let [first, second, ..] = words.as_slice() {
            if first == "alter"
                && matches!(second.as_str(), "role" | "user" | "database" | "system")
            {
                return Err(Refusal(format!(
                    "permission denied: ALTER {} is refused while tenant enforcement is on",
                    second.to_ascii_uppercase()
                )));
            }
        }
        let role_change = words.windows(2).find(|pair| {
            matches!(pair[0].as_str(), "set" | "reset" | "local" | "session")
                && ROLE_WORDS.contains(&pair[1].as_str())
        });
        if let Some(word) = words
            .iter()
            .find(|w| UNPARSED_REFUSED_WORDS.contains(&w.as_str()))
            .or(role_change.map(|pair| &pair[1]))
        {
            return Err(Refusal(format!(
                "permission denied: a statement the sidecar cannot parse that mentions \"{word}\" is refused while tenant enforcement is on"
            )));
        }
    }
    Ok(Verdict::Unparsed)
}

/// The words of a fingerprint (comments and literals already gone, unquoted words lower
/// case), quoted identifiers unquoted and folded.
fn words(fingerprint: &[u8]) -> Vec<String> {
    fingerprint
        .split(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) || b == PLACEHOLDER)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
        .collect()
}

/// Under tenant enforcement, LISTEN / UNLISTEN / NOTIFY / `pg_notify` channels are the
/// tenant's: `jobs` is `<prefix>jobs` on the server, with a prefix keyed by the signing key
/// that another tenant cannot compute, so tenants never hear or forge each other's. Returns
/// the text to send instead of `sql` when it names channels (`None`: send it as it is).
pub fn namespace_channels(
    sql: &[u8],
    classified: &Classified,
    prefix: &str,
) -> Result<Option<String>, Refusal> {
    let Classification::Parsed(statements) = classified.classification.as_ref() else {
        return Ok(None);
    };
    let named = |channel: &str| -> Result<String, Refusal> {
        let full = format!("{prefix}{channel}");
        if full.len() > 63 {
            return Err(Refusal(format!(
                "channel name \"{channel}\" is too long: at most {} bytes under tenant enforcement",
                63 - prefix.len()
            )));
        }
        Ok(full)
    };
    let channel_statements = statements
        .iter()
        .filter(|s| {
            // UNLISTEN * needs no rewriting: it only ever reaches the tenant's own channels.
            matches!(
                s.kind,
                Kind::Listen { .. } | Kind::Unlisten { channel: Some(_) } | Kind::Notify { .. }
            )
        })
        .count();
    if channel_statements > 0 {
        let [statement] = statements.as_slice() else {
            return Err(Refusal(
                "permission denied: LISTEN, UNLISTEN and NOTIFY must be sent as a statement of their own while tenant enforcement is on".into(),
            ));
        };
        return Ok(match &statement.kind {
            Kind::Listen { channel } => Some(format!("LISTEN {}", quote_ident(&named(channel)?))),
            Kind::Unlisten {
                channel: Some(channel),
            } => Some(format!("UNLISTEN {}", quote_ident(&named(channel)?))),
            Kind::Notify { channel } => {
                let payload = classified
                    .scan
                    .literals
                    .last()
                    .map(|l| format!(", {}", quote_literal(&l.value(sql))))
                    .unwrap_or_default();
                Some(format!("NOTIFY {}{payload}", quote_ident(&named(channel)?)))
            }
            // UNLISTEN * only ever reaches the tenant's own channels.
            _ => None,
        });
    }
    let calls_notify = statements.iter().any(|s| {
        s.functions
            .iter()
            .any(|f| f.name.rsplit('.').next() == Some("pg_notify"))
    });
    if !calls_notify {
        return Ok(None);
    }
    // pg_notify('jobs', …): the channel literal is replaced in place (check() made sure every
    // channel is a literal).
    let text = String::from_utf8_lossy(sql).into_owned();
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len() + 16);
    let mut copied = 0;
    let mut search = 0;
    while let Some(at) = lower[search..].find("pg_notify") {
        let after = search + at + "pg_notify".len();
        let arg_start = lower.len()
            - lower[after..]
                .trim_start()
                .trim_start_matches('(')
                .trim_start()
                .len();
        let Some(literal) = classified
            .scan
            .literals
            .iter()
            .find(|l| l.span.start == arg_start)
        else {
            return Err(Refusal::because(
                "pg_notify with a computed channel is refused",
            ));
        };
        out.push_str(&text[copied..literal.span.start]);
        out.push_str(&quote_literal(&named(&literal.value(sql))?));
        copied = literal.span.end;
        search = literal.span.end.max(after);
    }
    out.push_str(&text[copied..]);
    Ok(Some(out))
}

fn reserved_channel(channel: &str) -> bool {
    channel
        .to_ascii_lowercase()
        .starts_with(RESERVED_CHANNEL_PREFIX)
}

/// Whether every `pg_notify(` in the text takes a string literal, not reserved, as its
/// channel.
fn notifies_literal_channel(sql: &[u8], classified: &Classified) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let mut rest = text.as_str();
    let mut offset = 0;
    while let Some(at) = rest.find("pg_notify") {
        let after = offset + at + "pg_notify".len();
        let open = text[after..].trim_start();
        let Some(arg) = open.strip_prefix('(') else {
            return false;
        };
        let arg_start = text.len() - arg.trim_start().len();
        let literal = classified
            .scan
            .literals
            .iter()
            .find(|l| l.span.start == arg_start);
        match literal {
            Some(l) if !reserved_channel(&l.value(sql)) => {}
            _ => return false,
        }
        offset = after;
        rest = &text[after..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::ClassificationCache;

    fn guard_with(sql: &str, reserved: &[(&str, &str)]) -> Result<Verdict, Refusal> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        let reserved: Settings = reserved
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(sql.as_bytes(), &cache.classify(sql.as_bytes()), &reserved)
    }

    /// With a role chosen by a JWT.
    fn guard(sql: &str) -> Result<Verdict, Refusal> {
        guard_with(sql, &[("app.tenant_id", "acme"), ("role", "reader")])
    }

    /// With the tenant only.
    fn guard_plain(sql: &str) -> Result<Verdict, Refusal> {
        guard_with(sql, &[("app.tenant_id", "acme")])
    }

    fn namespaced(sql: &str) -> Result<Option<String>, Refusal> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        namespace_channels(sql.as_bytes(), &cache.classify(sql.as_bytes()), "acme.")
    }

    #[test]
    fn channels_are_the_tenants() {
        assert_eq!(
            namespaced("LISTEN Jobs"),
            Ok(Some("LISTEN \"acme.jobs\"".into()))
        );
        assert_eq!(
            namespaced("UNLISTEN \"Jobs\""),
            Ok(Some("UNLISTEN \"acme.Jobs\"".into()))
        );
        assert_eq!(namespaced("UNLISTEN *"), Ok(None));
        assert_eq!(
            namespaced("NOTIFY jobs, 'it''s'"),
            Ok(Some("NOTIFY \"acme.jobs\", E'it''s'".into()))
        );
        assert_eq!(
            namespaced("NOTIFY jobs"),
            Ok(Some("NOTIFY \"acme.jobs\"".into()))
        );
        assert_eq!(
            namespaced("SELECT pg_notify('jobs', 'x'), PG_NOTIFY ( 'b', 'y')"),
            Ok(Some(
                "SELECT pg_notify(E'acme.jobs', 'x'), PG_NOTIFY ( E'acme.b', 'y')".into()
            ))
        );
        assert_eq!(namespaced("SELECT 1"), Ok(None));
        assert!(namespaced("LISTEN a; LISTEN b").is_err());
        assert!(namespaced(&format!("LISTEN {}", "x".repeat(60))).is_err());
    }

    #[test]
    fn allowed() {
        for sql in [
            "SELECT * FROM t WHERE tenant_id = current_setting('app.tenant_id')",
            "SET work_mem = '8MB'",
            "SELECT set_config('work_mem', '8MB', false)",
            "RESET ALL",
            "DISCARD ALL",
            "ALTER TABLE t ADD COLUMN c int",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT",
            "LISTEN jobs",
            "SELECT pg_notify('jobs', 'x')",
            "NOTIFY jobs, 'x'",
            "RESET ALL; SELECT * FROM t",
            "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
            "SET standard_conforming_strings = on",
            "RESET standard_conforming_strings",
        ] {
            assert_eq!(guard(sql), Ok(Verdict::Allowed), "{sql}");
        }
        // What sqlparser cannot parse but Postgres accepts goes through (the signed tenant
        // keeps it inside the tenant).
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "TABLE t",
            "SELECT 'a'\n'b'",
            "SELECT xmlelement(name foo)",
            "SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3))",
            "MOVE NEXT IN c",
            "SELECT role, authorization FROM users WHERE role = 'admin' FOR KEY SHARE",
        ] {
            assert_eq!(guard(sql), Ok(Verdict::Unparsed), "{sql}");
        }
        // Back to the login role, where no JWT chose one.
        for sql in [
            "SET ROLE NONE",
            "RESET ROLE",
            "RESET SESSION AUTHORIZATION",
            "SET SESSION AUTHORIZATION DEFAULT",
        ] {
            assert_eq!(guard_plain(sql), Ok(Verdict::Allowed), "{sql}");
        }
        assert!(guard("SET ROLE NONE").is_err() && guard("RESET ROLE").is_err());
    }

    #[test]
    fn refused() {
        for sql in [
            "SET app.tenant_id = 'other'",
            "set APP.TENANT_ID to 'other'",
            "SET \"app.tenant_id\" = 'other'",
            "SET LOCAL app.tenant_id = 'other'",
            "RESET app.tenant_id",
            "SET app.tenant_id TO DEFAULT",
            "SELECT set_config('app.tenant_id', 'other', false)",
            "SELECT pg_catalog.set_config('APP.tenant_id', 'other', true)",
            "SELECT 1; SELECT set_config('app.tenant_id', 'other', false)",
            "WITH x AS (SELECT set_config('app.tenant_id', 'b', false)) SELECT * FROM x",
            "SELECT * FROM t WHERE set_config('app.tenant_id', 'b', false) IS NOT NULL",
            "SELECT set_config(n, 'b', false) FROM (VALUES ('app.tenant_id')) v(n)",
            "SELECT set_config('app.' || 'tenant_id', 'b', false)",
            "PREPARE p AS SELECT set_config('app.tenant_id', 'b', false)",
            "EXPLAIN ANALYZE SELECT set_config('app.tenant_id', 'b', false)",
            "SET ROLE admin",
            // `a$0$x` is one identifier to Postgres, a dollar quote hiding the SET to sqlparser.
            "SELECT i_b$0$x; SET ROLE admin; SELECT $0$",
            "RESET ROLE",
            "ALTER ROLE CURRENT_USER SET app.tenant_id = 'other'",
            "alter   user me SET app.tenant_id = 'other'",
            "ALTER DATABASE d SET app.tenant_id = 'other'",
            "SET SESSION AUTHORIZATION admin",
            "SET role = 'admin'",
            "SET role TO admin",
            "SET LOCAL ROLE admin FOR KEY SHARE",
            "SET SESSION AUTHORIZATION admin FOR KEY SHARE",
            "SET session_authorization = 'admin'",
            "SELECT set_config('role', 'admin', false)",
            "SELECT set_config('session_authorization', 'admin', false)",
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO 'off'",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT set_config(E'app\\x2etenant_id', 'b', false)",
            "SELECT set_config(E'app\\056tenant_id', 'b', false)",
            "SELECT set_config(E'\\u0061pp.tenant_id', 'b', false)",
            "SELECT set_config(U&'\\0061pp.tenant_id', 'b', false)",
            "SELECT set_config(U&'!0061pp.tenant_id' UESCAPE '!', 'b', false)",
            "SELECT * FROM set_config('app.tenant_id', 'b', false)",
            "SELECT * FROM t, LATERAL set_config('app.tenant_id', 'b', false)",
            "SET pgsidecar.tenant = 'x'",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "SELECT pg_catalog.pg_cancel_backend(42)",
            "ALTER SYSTEM SET app.tenant_id = 'x'",
            "ALTER /* x */ ROLE me SET app.tenant_id = 'x'",
            "DO $$BEGIN PERFORM set_config('app.tenant_id', 'b', false); END$$",
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS $$ SELECT 1 $$",
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN END$$",
            "LISTEN pgsidecar_invalidate",
            "NOTIFY pgsidecar_invalidate",
            "SELECT pg_notify(chr(112) || 'gsidecar', 'x')",
            "SELECT pg_notify('pgsidecar_x', 'x')",
            "DECLARE c CURSOR FOR SELECT set_config('app.tenant_id', 'b', false)",
            "CREATE TABLE x AS SELECT set_config('app.tenant_id', 'b', false)",
            "COPY (SELECT set_config('app.tenant_id', 'b', false)) TO STDOUT",
            "SELECT \"set_config\"('app.tenant_id', 'b', false)",
            "CREATE VIEW v AS SELECT set_config('app.tenant_id', 'b', false)",
            "INSERT INTO t SELECT set_config('app.tenant_id', 'b', false)",
            "SELECT set_config(E'app.tenant_id', 'b', false)",
            "SELECT set_config('app.tenant_id'::text, 'b', false)",
        ] {
            assert!(guard(sql).is_err(), "{sql} was allowed");
        }
    }
}
