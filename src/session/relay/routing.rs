//! Primary or replica for a checkout (transaction mode, databases with replicas), and what
//! happens when the replica serving a client is lost.

use super::*;
use crate::pool::health::NoReplica;
use crate::pool::Pool;
use crate::route::replica::Upstream;

impl Relay {
    /// After a reload, a session follows the new configuration: its settings (timeouts,
    /// limits, classifier, rates) at its next request, and in transaction mode from its next
    /// transaction a changed database's new pools, a tenant's new shard, a sharded database's
    /// new shards. A database the reload removed keeps serving the session until it leaves.
    pub(super) fn follow_reload(&mut self) {
        let generation = self.app.generation();
        if generation == self.generation {
            return;
        }
        let transaction_mode = self.mode == PoolMode::Transaction;
        if transaction_mode && (!matches!(self.phase, Phase::Detached) || self.earlier.is_some()) {
            // Soon: between transactions.
            return;
        }
        self.generation = generation;
        let live = self.app.live_arc();
        self.rate_limited = super::rate_limited(&live, self.info.tenant.as_deref());
        if !Arc::ptr_eq(&self.live.classifier, &live.classifier) {
            // Shapes classified under the old settings are not this classifier's.
            self.recent_shapes = Default::default();
        }
        self.live = Arc::clone(&live);
        self.cache = super::database_cache(&live, &self.info.database.name, self.mode);
        if !transaction_mode {
            // A session-mode client keeps its server connection: new settings, same database.
            return;
        }
        let name = self.info.database.name.clone();
        let shard = self.info.database.shard;
        match (self.shards.take(), live.statement_shards(&name)) {
            (Some(old), Some(now)) => {
                let changed = !old
                    .databases
                    .iter()
                    .zip(&now.databases)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
                    || old.databases.len() != now.databases.len();
                let last = now.databases.len().saturating_sub(1);
                self.shards = Some(old.reloaded(now, &self.app.metrics));
                if changed {
                    self.last_writes.clear();
                    self.move_to_shard(shard.unwrap_or(0).min(last));
                }
            }
            (old, _) => {
                self.shards = old;
                let Ok(database) = live.database_for(&name, self.info.tenant.as_deref()) else {
                    return;
                };
                if !Arc::ptr_eq(database, &self.info.database) {
                    self.info.database = Arc::clone(database);
                    self.topology = database.replicas.clone();
                    self.last_writes.clear();
                }
            }
        }
    }

    /// The replica the client was attached to is gone (closed, or a socket error) while the
    /// client's session is sound: every request it still waits for gets an ERROR (08006) and a
    /// ReadyForQuery, the replica is ejected until its next good check, and the client's next
    /// request goes elsewhere. The sidecar does not retry the request: it may have run.
    pub(super) async fn replica_lost(
        &mut self,
        which: Which,
        error: ServerError,
    ) -> Result<(), RelayError> {
        let Some(att) = self.take_attachment(which).await else {
            return Ok(());
        };
        self.app.metrics.error("replica_lost");
        tracing::warn!(error = %error, "the replica serving a client was lost");
        if let Some(topology) = &self.topology {
            topology.eject(att.server.pool());
        }
        let message = "the replica serving this query was lost; the query did not complete";
        let said_fatal = att.replica_said_fatal;
        self.fail_owed(&att, |i, out| {
            // The first request already got the replica's FATAL as an ERROR.
            if !(i == 0 && said_fatal) {
                ErrorReport::error(SqlState::CONNECTION_FAILURE, message).write(out);
            }
        });
        if att.batch.is_some() && matches!(self.phase, Phase::Detached) {
            // The rest of the open batch is dropped up to its Sync, which gets its answer.
            ErrorReport::error(SqlState::CONNECTION_FAILURE, message).write(&mut self.client.wbuf);
            self.phase = Phase::SkipToSync;
        }
        // The server connection is closed with the attachment, never returned to the pool.
        drop(att);
        self.run_held().await?;
        self.finish_client_turn().await
    }

    /// The pool a checkout for `target` uses, and whose it is.
    pub(super) fn pool_for(&self, target: Target) -> Result<(Arc<Pool>, Upstream), ErrorReport> {
        let Some(topology) = &self.topology else {
            return Ok((Arc::clone(&self.info.database.primary), Upstream::Primary));
        };
        if target == Target::Primary || topology.primary_serves_reads_too() {
            topology.count_route(false);
            return Ok((Arc::clone(&self.info.database.primary), Upstream::Primary));
        }
        let shard = self.info.database.shard.unwrap_or(0);
        let last_write = self.last_writes.get(shard).copied().unwrap_or(0);
        match topology.choose_replica(last_write, self.info.tenant.as_deref()) {
            Ok((index, replica)) => {
                topology.count_route(true);
                Ok((Arc::clone(&replica.pool), Upstream::Replica(index)))
            }
            Err(
                NoReplica::NotCaughtUp
                | NoReplica::Unavailable {
                    primary_allowed: true,
                },
            ) => {
                topology.count_route(false);
                Ok((Arc::clone(&self.info.database.primary), Upstream::Primary))
            }
            Err(NoReplica::Unavailable {
                primary_allowed: false,
            }) => Err(ErrorReport::error(
                SqlState::CANNOT_CONNECT_NOW,
                "no replica can serve reads now, and primary_reads = \"never\"",
            )),
        }
    }
}
