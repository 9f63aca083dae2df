//! One client-facing database: its primary's pool and, when it has replicas, their pools and
//! health ([`Topology`]). Later its shards, notifier and cache belong here too. Built by the
//! app from the configuration; sessions hold an `Arc` of it.

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
}

impl Database {
    /// Every pool of the database: the primary's, then the replicas'.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let replicas = self.replicas.iter().flat_map(|t| t.replicas.iter());
        std::iter::once(&self.primary).chain(replicas.map(|r| &r.pool))
    }
}
