//! One client-facing database, or one shard of a sharded one: its primary's pool and, when it
//! has replicas, their pools and health ([`Topology`]). Built by the app from the
//! configuration; sessions hold an `Arc` of the one they are routed to.

use std::sync::Arc;

use super::health::Topology;
use super::Pool;

/// A database clients connect to by name.
pub struct Database {
    pub name: String,
    /// The primary's pool (the only one without replicas).
    pub primary: Arc<Pool>,
    /// The replicas and their health, when configured.
    pub replicas: Option<Arc<Topology>>,
    /// Which shard of its database this is, when the database is sharded.
    pub shard: Option<usize>,
    /// Fires when a reload drops this database (or the sidecar terminates): its background
    /// tasks end; sessions still on it finish with it.
    pub retired: tokio_util::sync::CancellationToken,
    /// Whether text orders bytewise in this database, once a merge across shards asked
    /// ([`TEXT_ORDER_SQL`]).
    pub bytewise_text: std::sync::OnceLock<bool>,
}

/// The database's default collation, and whether any user column declares a collation other
/// than the default, C or POSIX (text the sidecar compares must order bytewise).
pub const TEXT_ORDER_SQL: &str = "SELECT pg_catalog.current_setting('lc_collate'), EXISTS (\
    SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
    WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attcollation NOT IN (0, 100, 950, 951) \
      AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace))::text";

/// Which upstream a pool serves: a database, which shard of it, which replica. Displayed as
/// `app`, `app/shard0`, `app/shard0/replica1` in logs; separate metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolName {
    pub database: String,
    pub shard: Option<usize>,
    pub replica: Option<usize>,
}

impl PoolName {
    /// The `shard` metric label: the shard number, empty when the database is not sharded.
    pub fn shard_label(&self) -> String {
        self.shard.map(|s| s.to_string()).unwrap_or_default()
    }

    /// The `replica` metric label: the replica's position, empty for a primary.
    pub fn replica_label(&self) -> String {
        self.replica.map(|r| r.to_string()).unwrap_or_default()
    }

    /// The same database and shard, replica `i`.
    pub fn replica(&self, i: usize) -> PoolName {
        PoolName {
            replica: Some(i),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PoolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.database)?;
        if let Some(shard) = self.shard {
            write!(f, "/shard{shard}")?;
        }
        if let Some(replica) = self.replica {
            write!(f, "/replica{replica}")?;
        }
        Ok(())
    }
}

impl Database {
    /// Records the answer to [`TEXT_ORDER_SQL`]: bytewise when the default collation is C,
    /// POSIX or C.UTF-8 (code point order, which is UTF-8's byte order) and no column declares
    /// another collation.
    pub fn note_text_order(&self, collation: &str, other_columns: bool) {
        let c = collation == "C" || collation == "POSIX" || collation.starts_with("C.");
        let _ = self.bytewise_text.set(c && !other_columns);
    }

    /// Every pool of the database: the primary's, then the replicas'.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let replicas = self.replicas.iter().flat_map(|t| t.replicas.iter());
        std::iter::once(&self.primary).chain(replicas.map(|r| &r.pool))
    }
}
