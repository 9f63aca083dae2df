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
    /// The database's default collation (`lc_collate`), once a merge across shards asked.
    pub collation: std::sync::OnceLock<String>,
}

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
    /// Whether text orders bytewise here (the C or POSIX collation, or C.UTF-8: code point
    /// order, which is UTF-8's byte order). `None` until known.
    pub fn collation_c(&self) -> Option<bool> {
        let name = self.collation.get()?;
        Some(name == "C" || name == "POSIX" || name.starts_with("C."))
    }

    /// Every pool of the database: the primary's, then the replicas'.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let replicas = self.replicas.iter().flat_map(|t| t.replicas.iter());
        std::iter::once(&self.primary).chain(replicas.map(|r| &r.pool))
    }
}
