//! What `pgsidecar check --connect` says about the role the sidecar logs in as: the ways it
//! could read past Row-Level Security (superuser, BYPASSRLS, owning a table whose RLS is not
//! FORCEd) or host code that changes settings (CREATE on a schema, TEMP on the database).

use super::server::{ServerConn, ServerError};

const AUDIT_SQL: &str = "\
SELECT 'is a superuser: Row-Level Security does not apply to it' \
  WHERE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
UNION ALL SELECT 'has BYPASSRLS: Row-Level Security does not apply to it' \
  WHERE (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user) \
UNION ALL SELECT 'owns table ' || c.oid::pg_catalog.regclass::text \
  || ', whose Row-Level Security is not FORCEd: its owner bypasses the policies' \
  FROM pg_catalog.pg_class c \
  WHERE c.relrowsecurity AND NOT c.relforcerowsecurity \
    AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
UNION ALL SELECT 'may CREATE in schema ' || pg_catalog.quote_ident(n.nspname) \
  || ': it could create functions that change the tenant setting' \
  FROM pg_catalog.pg_namespace n \
  WHERE pg_catalog.has_schema_privilege(current_user, n.oid, 'CREATE') \
    AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
UNION ALL SELECT 'may create TEMP objects in the database: revoke TEMP to keep code out of pg_temp' \
  WHERE pg_catalog.has_database_privilege(current_database(), 'TEMP') \
UNION ALL SELECT 'has a role or database default for ' || s.setting_name \
  || ': RESET ALL would bring it back; remove it (ALTER ROLE / ALTER DATABASE … RESET)' \
  FROM (SELECT split_part(unnest(d.setconfig), '=', 1) AS setting_name \
        FROM pg_catalog.pg_db_role_setting d \
        WHERE d.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)) \
          AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))) s \
  WHERE s.setting_name = {setting}";

/// One warning per risk found for the connection's role (empty: none); `tenant_setting` is
/// the `[tenancy]` setting, whose role or database defaults are reported too.
pub async fn audit_role(
    conn: &mut ServerConn,
    tenant_setting: Option<&str>,
) -> Result<Vec<String>, ServerError> {
    let setting = super::pool::quote_literal(tenant_setting.unwrap_or(""));
    let rows = conn
        .query_rows(&AUDIT_SQL.replace("{setting}", &setting))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}
