//! A client's session state in transaction mode, beyond its protocol-level prepared statements:
//! its settings (from the startup packet and from SET), the ParameterStatus values it has been
//! told, its SQL-level prepared statements (PREPARE), and the channels it listens on.
//!
//! The sidecar does not predict what statements did to the session; after a transaction that
//! may have changed it, it asks the server ([`capture_sql`]) and adopts the answer
//! ([`Captured`]). So a SET that failed, a ROLLBACK (TO SAVEPOINT), `set_config` with a computed
//! name or a setting changed inside a function are followed exactly, and the same answer says
//! whether the client holds something that pins it to its server connection (advisory locks,
//! WITH HOLD cursors, temporary tables, another session authorization). No I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::protocol::backend::parse_data_row;
use crate::sql::quote::{quote_ident, quote_literal};
use crate::sql::settings::{Settings, Shared};

/// Row names in the capture reply that are not settings start with a space (no setting can).
const ROLE_ROW: &str = " role";
const PIN_ROW: &str = " pin";
const PREPARED_ROW: &str = " prepared";
const LISTEN_ROW: &str = " listen";

/// The query that reads a server connection's session state after a client's transaction:
/// settings changed in the session, the role, what pins the session, SQL prepared statements
/// and listened channels. `upstream_user` is the role the pool logs in as.
pub fn capture_sql(upstream_user: &str) -> String {
    format!(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         UNION ALL SELECT '{ROLE_ROW}', pg_catalog.current_setting('role') \
         UNION ALL SELECT '{PIN_ROW}', 'advisory lock' WHERE EXISTS (SELECT FROM pg_catalog.pg_locks \
           WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
         UNION ALL SELECT '{PIN_ROW}', 'WITH HOLD cursor' WHERE EXISTS (SELECT FROM pg_catalog.pg_cursors \
           WHERE is_holdable) \
         UNION ALL SELECT '{PIN_ROW}', 'temporary table' WHERE EXISTS (SELECT FROM pg_catalog.pg_class \
           WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
         UNION ALL SELECT '{PIN_ROW}', 'session authorization' WHERE session_user <> {} \
         UNION ALL SELECT '{PREPARED_ROW}', name FROM pg_catalog.pg_prepared_statements WHERE from_sql \
         UNION ALL SELECT '{LISTEN_ROW}', c FROM pg_catalog.pg_listening_channels() c",
        quote_literal(upstream_user)
    )
}

/// Why a capture reply could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("malformed DataRow in the session-state reply")]
    MalformedRow,
}

/// What one capture query found on a server connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Settings with a session-level value (the role as `role` when one is set).
    pub settings: Settings,
    /// Why the session cannot be pooled now (empty: it can).
    pub pins: Vec<String>,
    /// SQL-level prepared statements on the connection.
    pub prepared: BTreeSet<String>,
    /// Channels the connection listens on.
    pub channels: BTreeSet<String>,
    /// The signed tenant token on the connection, if any.
    pub token: Option<String>,
}

impl Captured {
    /// Adds one DataRow (two text columns) of the capture reply.
    pub fn add_row(&mut self, body: &[u8]) -> Result<(), StateError> {
        let Some([Some(name), value]) =
            parse_data_row(body).and_then(|r| <[_; 2]>::try_from(r).ok())
        else {
            return Err(StateError::MalformedRow);
        };
        let value = value.unwrap_or_default();
        match name.as_str() {
            ROLE_ROW if value != "none" => {
                self.settings.insert("role".into(), value);
            }
            ROLE_ROW => {}
            PIN_ROW => self.pins.push(value),
            PREPARED_ROW => {
                self.prepared.insert(value);
            }
            LISTEN_ROW => {
                self.channels.insert(value);
            }
            // The sidecar's own: never a client setting.
            crate::token::TOKEN_SETTING => self.token = Some(value),
            _ if name.starts_with(crate::token::RESERVED_SETTING_PREFIX) => {}
            _ => {
                self.settings.insert(name, value);
            }
        }
        Ok(())
    }

    /// The statements that leave the connection with nothing of this client's but settings.
    pub fn cleanup_sql(&self) -> Option<String> {
        let mut sql = String::new();
        for name in &self.prepared {
            sql.push_str(&format!("DEALLOCATE {};", quote_ident(name)));
        }
        if !self.channels.is_empty() {
            sql.push_str("UNLISTEN *;");
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// A client's SQL-level prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlPrepared {
    /// The PREPARE statement that creates it.
    pub text: String,
    /// Executing it may change session state (calls functions that are not read-only).
    pub capture: bool,
}

/// A client's session state (transaction mode keeps it here, not on a server connection).
#[derive(Debug, Default)]
pub struct SessionState {
    /// The startup packet's settings: what RESET goes back to.
    startup: Settings,
    /// Settings the sidecar owns (the tenant): always in force, whatever the client runs.
    reserved: Settings,
    /// The settings the client's next transaction must run with.
    pub settings: Shared,
    /// The ParameterStatus values the client has been told.
    reported: HashMap<String, String>,
    /// SQL-level prepared statements, by name.
    pub sql_prepared: BTreeMap<String, SqlPrepared>,
    /// Channels the client listens on.
    pub channels: BTreeSet<String>,
}

impl SessionState {
    /// The state of a client that just logged in with `startup` settings, the sidecar's
    /// `reserved` ones and `settings` (both together, shared with the pool's other clients
    /// that logged in with them), and was told `statuses`.
    pub fn new(
        startup: Settings,
        reserved: Settings,
        settings: Shared,
        statuses: &[(String, String)],
    ) -> SessionState {
        debug_assert!(reserved.iter().all(|(k, v)| settings.get(k) == Some(v)));
        SessionState {
            settings,
            startup,
            reserved,
            reported: statuses.iter().cloned().collect(),
            sql_prepared: BTreeMap::new(),
            channels: BTreeSet::new(),
        }
    }

    /// The SQL that puts the settings the sidecar owns back (after RESET ALL / DISCARD ALL).
    pub fn reserved_sql(&self) -> Option<String> {
        crate::sql::settings::sql(&Settings::new(), &self.reserved)
    }

    /// The settings the sidecar owns.
    pub fn reserved(&self) -> &Settings {
        &self.reserved
    }

    /// Records a ParameterStatus the client is sent.
    pub fn reported(&mut self, name: &str, value: &str) {
        self.reported.insert(name.to_owned(), value.to_owned());
    }

    /// Whether the client was told something else for `name` than `value`.
    pub fn told_otherwise(&self, name: &str, value: &str) -> bool {
        self.reported.get(name).is_some_and(|v| v != value)
    }

    /// Adopts the settings a capture found. A startup setting the session no longer overrides
    /// goes back to its startup value, as RESET and `SET … TO DEFAULT` do in Postgres.
    pub fn adopt_settings(&mut self, captured: &Settings) {
        let mut settings = captured.clone();
        for (name, value) in &self.startup {
            settings
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        // Whatever happened on the server (RESET ALL, DISCARD ALL), these stay.
        settings.extend(self.reserved.clone());
        if *self.settings != settings {
            self.settings = Shared::new(settings);
        }
    }

    /// The PREPARE statements to run on a server connection that has only `present` of the
    /// client's SQL-level statements.
    pub fn missing_prepares<'a>(
        &'a self,
        present: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = (&'a String, &'a SqlPrepared)> + 'a {
        self.sql_prepared
            .iter()
            .filter(move |(name, _)| !present.contains(*name))
    }
}

/// Whether SQL text may refer to SQL-level prepared statements (EXECUTE, DEALLOCATE, also
/// inside EXPLAIN or CREATE TABLE AS); a cheap test before anything is prepared again.
pub fn mentions_prepared(sql: &[u8]) -> bool {
    const WORDS: [&[u8]; 2] = [b"execute", b"deallocate"];
    WORDS.iter().any(|w| {
        sql.windows(w.len())
            .any(|window| window.eq_ignore_ascii_case(w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, value: Option<&str>) -> Vec<u8> {
        let mut b = vec![0, 2];
        b.extend_from_slice(&(name.len() as i32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        match value {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        b
    }

    #[test]
    fn capture_rows_are_sorted_into_their_places() {
        let mut c = Captured::default();
        c.add_row(&row("search_path", Some("app, public"))).unwrap();
        c.add_row(&row(ROLE_ROW, Some("none"))).unwrap();
        c.add_row(&row(PIN_ROW, Some("advisory lock"))).unwrap();
        c.add_row(&row(PREPARED_ROW, Some("q1"))).unwrap();
        c.add_row(&row(LISTEN_ROW, Some("jobs"))).unwrap();
        assert_eq!(c.settings.get("search_path").unwrap(), "app, public");
        assert!(!c.settings.contains_key("role"));
        assert_eq!(c.pins, vec!["advisory lock"]);
        assert!(c.prepared.contains("q1") && c.channels.contains("jobs"));
        assert_eq!(
            c.cleanup_sql().unwrap(),
            "DEALLOCATE \"q1\";UNLISTEN *;".to_owned()
        );
        c.add_row(&row(ROLE_ROW, Some("reader"))).unwrap();
        assert_eq!(c.settings.get("role").unwrap(), "reader");
    }

    #[test]
    fn malformed_rows_are_refused() {
        let mut c = Captured::default();
        assert_eq!(c.add_row(&[0, 1]), Err(StateError::MalformedRow));
        let mut short = row("a", Some("b"));
        short.truncate(short.len() - 1);
        assert_eq!(c.add_row(&short), Err(StateError::MalformedRow));
        assert_eq!(
            c.add_row(&row("x", None)).map(|_| c.settings["x"].clone()),
            Ok(String::new())
        );
    }

    #[test]
    fn reset_goes_back_to_the_startup_value() {
        let startup: Settings = [("application_name".to_owned(), "web".to_owned())].into();
        let reserved: Settings = [("app.tenant_id".to_owned(), "acme".to_owned())].into();
        let mut settings = startup.clone();
        settings.extend(reserved.clone());
        let mut s = SessionState::new(
            startup,
            reserved,
            Shared::new(settings),
            &[("application_name".into(), "web".into())],
        );
        s.adopt_settings(&[("work_mem".to_owned(), "8192".to_owned())].into());
        assert_eq!(s.settings.get("application_name").unwrap(), "web");
        assert_eq!(s.settings.get("work_mem").unwrap(), "8192");
        s.adopt_settings(&[("application_name".to_owned(), "x".to_owned())].into());
        assert_eq!(s.settings.get("application_name").unwrap(), "x");
        s.adopt_settings(&[("app.tenant_id".to_owned(), "other".to_owned())].into());
        assert_eq!(s.settings.get("app.tenant_id").unwrap(), "acme");
        assert!(!s.told_otherwise("application_name", "web"));
        assert!(s.told_otherwise("application_name", "x"));
    }

    #[test]
    fn mentions_prepared_is_case_insensitive() {
        assert!(mentions_prepared(b"EXPLAIN ExEcUtE q(1)"));
        assert!(mentions_prepared(b"deallocate q"));
        assert!(!mentions_prepared(b"SELECT 1"));
    }

    #[test]
    fn capture_sql_quotes_the_user() {
        assert!(capture_sql("o'neil").contains("session_user <> E'o''neil'"));
    }
}
