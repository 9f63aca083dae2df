//! What `pgsidecar check --connect` says about the role the sidecar logs in as and what the
//! signed tenant relies on: the ways it could read past Row-Level Security (superuser,
//! BYPASSRLS or owning an RLS table — itself or through a role it is a member of), host code
//! (CREATE on a schema, TEMP on the database), see other tenants' query texts
//! (`track_activities`), policies that read the plain tenant setting, and whether
//! `pgsidecar.tenant()` is installed with this sidecar's signing key.

use super::server::{ServerConn, ServerError};
use crate::config::TenancyConfig;

const AUDIT_SQL: &str = "\
SELECT 'is a superuser: Row-Level Security does not apply to it' \
  WHERE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
UNION ALL SELECT 'has BYPASSRLS: Row-Level Security does not apply to it' \
  WHERE (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user) \
UNION ALL SELECT 'is a member of role ' || pg_catalog.quote_ident(r.rolname) \
  || CASE WHEN r.rolsuper THEN ', a superuser' ELSE ', which has BYPASSRLS' END \
  || ': SET ROLE reads past Row-Level Security; revoke the membership' \
  FROM pg_catalog.pg_roles r \
  WHERE (r.rolsuper OR r.rolbypassrls) AND r.rolname <> current_user \
    AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') \
UNION ALL SELECT 'owns table ' || c.oid::pg_catalog.regclass::text \
  || ', whose Row-Level Security is not FORCEd: its owner bypasses the policies' \
  FROM pg_catalog.pg_class c \
  WHERE c.relrowsecurity AND NOT c.relforcerowsecurity \
    AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
UNION ALL SELECT 'is a member of ' || pg_catalog.quote_ident(o.rolname) || ', owner of table ' \
  || c.oid::pg_catalog.regclass::text || ' (Row-Level Security): the owner can turn the policies off' \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner \
  WHERE c.relrowsecurity AND pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER') \
UNION ALL SELECT 'may CREATE in schema ' || pg_catalog.quote_ident(n.nspname) \
  || ': it could create functions that change the tenant setting' \
  FROM pg_catalog.pg_namespace n \
  WHERE pg_catalog.has_schema_privilege(current_user, n.oid, 'CREATE') \
    AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
UNION ALL SELECT 'may create TEMP objects in the database: harmless after the reset between tenants, but no sidecar feature needs it (REVOKE TEMP)' \
  WHERE pg_catalog.has_database_privilege(current_database(), 'TEMP') \
UNION ALL SELECT 'has a role or database default for ' || s.setting_name \
  || ': RESET ALL would bring it back; remove it (ALTER ROLE / ALTER DATABASE … RESET)' \
  FROM (SELECT split_part(unnest(d.setconfig), '=', 1) AS setting_name \
        FROM pg_catalog.pg_db_role_setting d \
        WHERE d.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)) \
          AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))) s \
  WHERE s.setting_name = {setting} \
UNION ALL SELECT 'runs with track_activities on: every session of a shared role sees the others'' query texts in pg_stat_activity; run ALTER ROLE ' \
  || pg_catalog.quote_ident(current_user) || ' SET track_activities = off' \
  WHERE pg_catalog.current_setting('track_activities')::bool \
UNION ALL SELECT 'policy ' || pg_catalog.quote_ident(p.policyname) || ' on ' \
  || pg_catalog.quote_ident(p.schemaname) || '.' || pg_catalog.quote_ident(p.tablename) \
  || ' reads the plain setting ' || {setting} || ', which any SQL can change: use (SELECT pgsidecar.tenant())' \
  FROM pg_catalog.pg_policies p \
  WHERE {setting} <> '' AND (pg_catalog.strpos(COALESCE(p.qual, '') || COALESCE(p.with_check, ''), {setting}) > 0) \
UNION ALL SELECT 'has no function pgsidecar.tenant(): run the SQL of `pgsidecar tenancy-sql` as the database owner' \
  WHERE {signed} AND pg_catalog.to_regprocedure('pgsidecar.tenant()') IS NULL \
UNION ALL SELECT 'may read pgsidecar.signing_keys: whoever reads it can sign any tenant; install as another role' \
  WHERE {signed} AND pg_catalog.to_regclass('pgsidecar.signing_keys') IS NOT NULL \
    AND pg_catalog.has_table_privilege(current_user, 'pgsidecar.signing_keys', 'SELECT') \
UNION ALL SELECT 'owns (or is a member of the owner of) pgsidecar.tenant(): it could replace the function; install as another role' \
  FROM pg_catalog.pg_proc p \
  WHERE {signed} AND p.oid = pg_catalog.to_regprocedure('pgsidecar.tenant()') \
    AND pg_catalog.pg_has_role(current_user, p.proowner, 'MEMBER')";

/// How the audit's warning about a missing `pgsidecar.tenant()` begins.
const MISSING_FUNCTION: &str = "has no function pgsidecar.tenant()";

/// The tenant the audit's own token names.
const AUDIT_TENANT: &str = "pgsidecar-audit";

/// One warning per risk found for the connection's role (empty: none), with `[tenancy]`
/// also about the tenant setting, its policies and the signed tenant.
pub async fn audit_role(
    conn: &mut ServerConn,
    tenancy: Option<&TenancyConfig>,
) -> Result<Vec<String>, ServerError> {
    let setting = crate::sql::quote::quote_literal(tenancy.map_or("", |t| t.setting.as_str()));
    let signer = tenancy.and_then(|t| t.signer.as_ref());
    let sql = AUDIT_SQL
        .replace("{setting}", &setting)
        .replace("{signed}", if signer.is_some() { "true" } else { "false" });
    let mut warnings: Vec<String> = conn
        .query_rows(&sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let missing = warnings.iter().any(|w| w.starts_with(MISSING_FUNCTION));
    if let (Some(signer), false) = (signer, missing) {
        // A token for this connection, signed with this sidecar's key: the function must
        // accept it. (It names no real tenant and dies with the connection.)
        let grant = crate::token::Grant {
            tenant: AUDIT_TENANT.into(),
            ..Default::default()
        };
        let token = signer.sign_for(
            &grant,
            conn.key.process_id,
            std::time::Duration::from_secs(60),
        );
        let rows = conn
            .query_rows(&format!(
                "SELECT pg_catalog.set_config('pgsidecar.tenant', {}, false) IS NULL, pgsidecar.tenant()",
                crate::sql::quote::quote_literal(&token)
            ))
            .await?;
        let accepted = rows
            .first()
            .and_then(|row| row.get(1).cloned().flatten())
            .is_some_and(|tenant| tenant == AUDIT_TENANT);
        if !accepted {
            warnings.push(format!(
                "pgsidecar.tenant() does not accept this sidecar's signing key (key id {}): run the SQL of `pgsidecar tenancy-sql` again (with --rotate during a key change)",
                signer.kid()
            ));
        }
    }
    Ok(warnings)
}

/// With two-phase commit: a warning when the server cannot prepare transactions
/// (`max_prepared_transactions` is 0, or below what the sidecar's pool may hold at once).
pub async fn audit_two_phase(
    conn: &mut ServerConn,
    pool_size: usize,
) -> Result<Option<String>, ServerError> {
    let rows = conn.query_rows("SHOW max_prepared_transactions").await?;
    let max: usize = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(match max {
        0 => Some(
            "has max_prepared_transactions = 0: writes across shards cannot PREPARE TRANSACTION \
             and are rolled back; set it (at least the pool size) and restart the server"
                .to_owned(),
        ),
        n if n < pool_size => Some(format!(
            "has max_prepared_transactions = {n}, below the pool size ({pool_size}): writes across \
             shards may fail to PREPARE under load"
        )),
        _ => None,
    })
}
