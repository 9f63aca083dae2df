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
}

impl Database {
    /// Every pool of the database: the primary's, then the replicas'.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let replicas = self.replicas.iter().flat_map(|t| t.replicas.iter());
        std::iter::once(&self.primary).chain(replicas.map(|r| &r.pool))
    }
}
