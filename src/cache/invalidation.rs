//! Invalidation across sidecars: the notification a write's connection sends once it has
//! committed ([`notify_sql`]), the listener that bumps a database's generations when one
//! arrives on its LISTEN connection, and the statement-level triggers (`pgsidecar cache-sql`)
//! that make writes which bypass every sidecar send the same notification.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DatabaseCache, CHANNEL};
use crate::config::CacheConfig;
use crate::pool::notify::{parse_notification, CLIENT_QUEUE};
use crate::protocol::frame::HEADER_LEN;
use crate::sql::cacheable::{base_name, Writes};
use crate::sql::quote::{quote_ident, quote_literal};

/// Postgres's limit on a notification payload is 8000 bytes; longer lists say "every table".
const MAX_PAYLOAD: usize = 7900;

/// Listener ids on the notifiers (negative: never a client's issued PID), one per cache.
static NEXT_LISTENER: AtomicI32 = AtomicI32::new(-1);

/// How long one attempt to start listening waits before it is tried again.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The payload naming what a write changed.
fn payload(writes: &Writes) -> Option<String> {
    match writes {
        Writes::None => None,
        Writes::Everything => Some("*".to_owned()),
        Writes::Tables(tables) => {
            let list = tables.join(",");
            Some(if list.len() > MAX_PAYLOAD {
                "*".to_owned()
            } else {
                list
            })
        }
    }
}

/// What a payload says was written.
fn writes_of(payload: &str) -> Writes {
    if payload.split(',').any(|t| t.trim() == "*") {
        return Writes::Everything;
    }
    let tables: Vec<String> = payload
        .split(',')
        .map(|t| base_name(t.trim()).to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    match tables.is_empty() {
        true => Writes::None,
        false => Writes::Tables(tables),
    }
}

/// The statement a connection runs after a transaction that wrote `writes` committed, so
/// every sidecar's cache of the database drops what it read from them.
pub fn notify_sql(writes: &Writes) -> Option<String> {
    payload(writes).map(|p| {
        format!(
            "SELECT pg_notify({}, {})",
            quote_literal(CHANNEL),
            quote_literal(&p)
        )
    })
}

/// Starts the listener of one database's invalidations: it registers on the database's LISTEN
/// connection, marks the cache ready once that listens, and bumps generations for every
/// notification until `stop`.
pub(super) fn spawn_listener(db: Arc<DatabaseCache>, stop: CancellationToken) {
    let id = NEXT_LISTENER.fetch_sub(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let (sink, mut rx) = mpsc::channel(CLIENT_QUEUE);
        let channels = BTreeSet::from([CHANNEL.to_owned()]);
        loop {
            let listening = tokio::select! {
                _ = stop.cancelled() => break,
                ok = db.notifier.listen_and_wait(id, channels.clone(), sink.clone(), LISTEN_WAIT) => ok,
            };
            if listening {
                db.ready.store(true, Ordering::Release);
                break;
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = rx.recv() => {
                    let Some(message) = message else { break };
                    let payload = message
                        .get(HEADER_LEN..)
                        .and_then(parse_notification)
                        .map(|(_, _, payload)| writes_of(payload));
                    if let Some(writes) = payload {
                        tracing::debug!(?writes, "the cache's tables were written");
                        db.invalidate(&writes);
                    }
                }
            }
        }
        db.notifier.listen(id, BTreeSet::new(), sink);
    });
}

/// `pgsidecar cache-sql`: per database with table rules, a trigger function and one
/// statement-level trigger per whitelisted table that announces every committed write, so
/// writers that bypass the sidecars invalidate the caches too.
pub fn cache_sql(config: &CacheConfig) -> String {
    let mut out = String::new();
    let databases: BTreeSet<&str> = config.rules.iter().map(|r| r.database.as_str()).collect();
    for database in databases {
        let tables: BTreeSet<&str> = config
            .rules_of(database)
            .flat_map(|r| r.tables.iter().map(String::as_str))
            .collect();
        out.push_str(&format!(
            "-- database {database}: run as a role that owns the tables below\n"
        ));
        if tables.is_empty() {
            out.push_str("-- (its rules whitelist fingerprints only: no table to watch)\n\n");
            continue;
        }
        out.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS pgsidecar;\n\
             CREATE OR REPLACE FUNCTION pgsidecar.cache_invalidate() RETURNS trigger\n\
             LANGUAGE plpgsql AS $pgsc$\n\
             BEGIN\n  PERFORM pg_notify({}, TG_TABLE_NAME);\n  RETURN NULL;\nEND\n$pgsc$;\n",
            quote_literal(CHANNEL)
        ));
        for table in tables {
            let name = table
                .split('.')
                .map(quote_ident)
                .collect::<Vec<_>>()
                .join(".");
            out.push_str(&format!(
                "DROP TRIGGER IF EXISTS pgsidecar_cache_invalidate ON {name};\n\
                 CREATE TRIGGER pgsidecar_cache_invalidate\n  \
                 AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {name}\n  \
                 FOR EACH STATEMENT EXECUTE FUNCTION pgsidecar.cache_invalidate();\n"
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let w = Writes::Tables(vec!["products".into(), "prices".into()]);
        assert_eq!(writes_of(&payload(&w).unwrap()), w);
        assert_eq!(writes_of("*"), Writes::Everything);
        assert_eq!(
            writes_of("public.products"),
            Writes::Tables(vec!["products".into()])
        );
        assert_eq!(writes_of(""), Writes::None);
        assert!(payload(&Writes::None).is_none());
        let many = Writes::Tables((0..2000).map(|i| format!("table_{i}")).collect());
        assert_eq!(payload(&many).as_deref(), Some("*"));
        assert_eq!(
            notify_sql(&w).unwrap(),
            "SELECT pg_notify(E'pgsidecar_cache', E'products,prices')"
        );
    }
}
