//! The tenant guard: what a client may not run while tenant enforcement is on, because it would
//! change the tenant setting or step outside what the sidecar can check — SET / SET LOCAL /
//! RESET of the setting, `set_config` of it anywhere (or with a name the sidecar cannot read),
//! SET ROLE and SET SESSION AUTHORIZATION, DO blocks, CREATE FUNCTION / PROCEDURE, text that
//! does not parse, and LISTEN / NOTIFY on the sidecar's reserved channels. Pure: the relay
//! refuses what this returns with 42501.

use crate::pool::pool::{quote_ident, quote_literal, Settings};
use crate::sql::cache::Classified;
use crate::sql::classify::{Classification, Kind, SettingName};

/// Channels whose names start with this are the sidecar's own.
pub const RESERVED_CHANNEL_PREFIX: &str = "pgsidecar";

/// A statement text the guard refuses, and why (the message the client gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Checks a statement text (`sql`, classified) against the `reserved` settings (the tenant
/// setting, and what a JWT granted: its claims setting, the role).
pub fn check(sql: &[u8], classified: &Classified, reserved: &Settings) -> Result<(), Refusal> {
    let statements = match classified.classification.as_ref() {
        Classification::Parsed(statements) => statements,
        Classification::Unparsed { .. } => {
            return Err(Refusal(
                "permission denied: statements the sidecar cannot parse are refused while tenant enforcement is on".into(),
            ))
        }
    };
    // RESET ALL / DISCARD ALL empty the tenant setting until the sidecar sets it again right
    // after them: nothing may run in between.
    let resets = statements
        .iter()
        .any(|s| matches!(s.kind, Kind::ResetAll | Kind::Discard { all: true }));
    if resets && statements.len() > 1 {
        return Err(Refusal(
            "permission denied: RESET ALL and DISCARD ALL must be sent as a statement of their own while tenant enforcement is on".into(),
        ));
    }
    // Setting defaults of roles and databases apply under RESET ALL.
    for range in &classified.scan.statements {
        let text = String::from_utf8_lossy(sql.get(range.clone()).unwrap_or_default())
            .to_ascii_lowercase();
        let words: Vec<&str> = text.split_whitespace().take(2).collect();
        if let ["alter", what @ ("role" | "user" | "database" | "system")] = words.as_slice() {
            return Err(Refusal(format!(
                "permission denied: ALTER {} is refused while tenant enforcement is on",
                what.to_ascii_uppercase()
            )));
        }
    }
    for statement in statements {
        let refused_kind = match &statement.kind {
            Kind::SetRole => Some("SET ROLE"),
            Kind::SetSessionAuthorization => Some("SET SESSION AUTHORIZATION"),
            Kind::Do => Some("DO blocks"),
            Kind::CreateFunction => Some("CREATE FUNCTION and CREATE PROCEDURE"),
            Kind::Listen { channel }
            | Kind::Notify { channel }
            | Kind::Unlisten {
                channel: Some(channel),
            } if reserved_channel(channel) => Some("LISTEN and NOTIFY on the sidecar's channels"),
            _ => None,
        };
        if let Some(what) = refused_kind {
            return Err(Refusal(format!(
                "permission denied: {what} are refused while tenant enforcement is on"
            )));
        }
        for change in &statement.settings {
            let name = match &change.name {
                SettingName::Fixed(name) => name.clone(),
                SettingName::Literal(i) => match classified.scan.literals.get(*i) {
                    Some(literal) => literal.value(sql).into_owned(),
                    None => String::new(),
                },
                SettingName::Computed => {
                    return Err(Refusal(
                        "permission denied: set_config with a computed setting name is refused while tenant enforcement is on".into(),
                    ))
                }
            };
            if let Some(setting) = reserved
                .keys()
                .find(|r| name.trim().eq_ignore_ascii_case(r))
            {
                return Err(Refusal(format!(
                    "permission denied to set parameter \"{setting}\": it is reserved for the tenant"
                )));
            }
        }
        // pg_notify with a channel the sidecar cannot read could reach its reserved channels.
        for call in &statement.functions {
            if call.name.rsplit('.').next() == Some("pg_notify")
                && !notifies_literal_channel(sql, classified)
            {
                return Err(Refusal(
                    "permission denied: pg_notify with a computed channel is refused while tenant enforcement is on".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Under tenant enforcement, LISTEN / UNLISTEN / NOTIFY / `pg_notify` channels are the
/// tenant's: `jobs` is `<tenant>.jobs` on the server, so tenants never hear each other. Returns
/// the text to send instead of `sql` when it names channels (`None`: send it as it is).
pub fn namespace_channels(
    sql: &[u8],
    classified: &Classified,
    tenant: &str,
) -> Result<Option<String>, Refusal> {
    let Classification::Parsed(statements) = classified.classification.as_ref() else {
        return Ok(None);
    };
    let named = |channel: &str| -> Result<String, Refusal> {
        let full = format!("{tenant}.{channel}");
        if full.len() > 63 {
            return Err(Refusal(format!(
                "channel name \"{channel}\" is too long for tenant \"{tenant}\" (at most {} bytes)",
                62 - tenant.len()
            )));
        }
        Ok(full)
    };
    let channel_statements = statements
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                Kind::Listen { .. } | Kind::Unlisten { .. } | Kind::Notify { .. }
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
            return Err(Refusal(
                "permission denied: pg_notify with a computed channel is refused while tenant enforcement is on".into(),
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

    fn guard(sql: &str) -> Result<(), Refusal> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        check(
            sql.as_bytes(),
            &cache.classify(sql.as_bytes()),
            &[("app.tenant_id", "acme"), ("role", "reader")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        )
    }

    fn namespaced(sql: &str) -> Result<Option<String>, Refusal> {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        namespace_channels(sql.as_bytes(), &cache.classify(sql.as_bytes()), "acme")
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
        ] {
            assert_eq!(guard(sql), Ok(()), "{sql}");
        }
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
            "RESET ROLE",
            "ALTER ROLE CURRENT_USER SET app.tenant_id = 'other'",
            "alter   user me SET app.tenant_id = 'other'",
            "ALTER DATABASE d SET app.tenant_id = 'other'",
            "RESET ALL; SELECT * FROM t",
            "SELECT 1; DISCARD ALL",
            "SET SESSION AUTHORIZATION admin",
            "DO $$BEGIN PERFORM set_config('app.tenant_id', 'b', false); END$$",
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS $$ SELECT 1 $$",
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN END$$",
            "this is not sql",
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
