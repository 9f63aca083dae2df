//! Two-phase commit for writes that span shards, the coordinator's side: transaction ids
//! (`pgsidecar:<sidecar id>:<incarnation>:<n>`, the sidecar id kept in `state_dir`), the
//! durable decision log (`state_dir/twophase.log`: `commit <gid>` appended and fsynced before
//! phase two, `done <gid>` once every shard committed), and recovery: at start the sidecar
//! commits the prepared transactions of earlier incarnations the log decided to commit and
//! rolls back the rest, on every shard of every database with two-phase commit.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Database;

/// Why the coordinator could not start or record a decision.
#[derive(Debug, thiserror::Error)]
pub enum TwoPhaseError {
    #[error("state_dir {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("the commit decision could not be logged: {0}")]
    Log(std::io::Error),
    #[error("resolving in-doubt transactions: {0}")]
    Shard(String),
}

/// The sidecar's two-phase commit coordinator.
pub struct Coordinator {
    /// `pgsidecar:<id>:`: every transaction id this sidecar made starts so.
    prefix: String,
    /// This run's part of the ids: ids of other runs are recovery's to resolve.
    incarnation: u64,
    next: AtomicU64,
    log: Mutex<std::fs::File>,
    path: PathBuf,
    /// Decided to commit and not known done, from the log at start.
    committed: Mutex<HashSet<String>>,
}

impl Coordinator {
    /// Opens (creating) the state directory, the sidecar's id and the decision log.
    pub fn open(dir: &Path) -> Result<Coordinator, TwoPhaseError> {
        let state = |source| TwoPhaseError::State {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(state)?;
        let id_path = dir.join("sidecar-id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let mut bytes = [0u8; 8];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| state(std::io::Error::other("no randomness")))?;
                let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                std::fs::write(&id_path, &id).map_err(state)?;
                id
            }
        };
        let path = dir.join("twophase.log");
        let mut committed = HashSet::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                match line.split_once(' ') {
                    Some(("commit", gid)) => {
                        committed.insert(gid.to_owned());
                    }
                    Some(("done", gid)) => {
                        committed.remove(gid);
                    }
                    _ => {}
                }
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(state)?;
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Ok(Coordinator {
            prefix: format!("pgsidecar:{id}:"),
            incarnation,
            next: AtomicU64::new(1),
            log: Mutex::new(log),
            path,
            committed: Mutex::new(committed),
        })
    }

    /// A new transaction id.
    pub fn gid(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{}:{n}", self.prefix, self.incarnation)
    }

    /// Records, durably, that `gid` commits (before any COMMIT PREPARED is sent).
    pub async fn decide_commit(self: &Arc<Self>, gid: &str) -> Result<(), TwoPhaseError> {
        let this = Arc::clone(self);
        let line = format!("commit {gid}\n");
        tokio::task::spawn_blocking(move || this.append(&line, true))
            .await
            .map_err(|e| TwoPhaseError::Log(std::io::Error::other(e.to_string())))?
            .map_err(TwoPhaseError::Log)
    }

    /// Records that every shard committed `gid` (not fsynced: recovery finds nothing left).
    pub fn finished(&self, gid: &str) {
        if let Err(e) = self.append(&format!("done {gid}\n"), false) {
            tracing::warn!(error = %e, path = %self.path.display(), "could not log a finished commit");
        }
    }

    fn append(&self, line: &str, sync: bool) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.write_all(line.as_bytes())?;
        if sync {
            log.sync_data()?;
        }
        Ok(())
    }

    /// Resolves the prepared transactions earlier runs of this sidecar left on `database`'s
    /// shard: commits those the log decided to commit, rolls back the rest (each counted in
    /// `recovered` by decision). Returns how many it resolved.
    pub async fn recover(
        &self,
        database: &Database,
        recovered: &prometheus::IntCounterVec,
    ) -> Result<usize, TwoPhaseError> {
        let failed = |e: &dyn std::fmt::Display| TwoPhaseError::Shard(e.to_string());
        let mut checkout = database.primary.checkout().await.map_err(|e| failed(&e))?;
        let conn = checkout.conn_mut();
        let ours = format!("{}%", self.prefix.replace('%', "\\%").replace('_', "\\_"));
        let rows = conn
            .query_rows(&format!(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = current_database() AND gid LIKE {}",
                crate::sql::quote::quote_literal(&ours)
            ))
            .await
            .map_err(|e| failed(&e))?;
        let current = format!("{}{}:", self.prefix, self.incarnation);
        let mut resolved = 0;
        for gid in rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
        {
            if gid.starts_with(&current) {
                // This run's own, still in flight.
                continue;
            }
            // Each shard's transaction is `<gid>:s<shard>`; the decision is the gid's.
            let decided = gid.rsplit_once(":s").map_or(gid.as_str(), |(base, _)| base);
            let commit = self
                .committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(decided);
            let verb = if commit { "COMMIT" } else { "ROLLBACK" };
            conn.run_internal(&format!(
                "{verb} PREPARED {}",
                crate::sql::quote::quote_literal(&gid)
            ))
            .await
            .map_err(|e| failed(&e))?;
            tracing::info!(%gid, decision = verb, shard = ?database.shard, "resolved an in-doubt transaction");
            recovered
                .with_label_values(&[if commit { "commit" } else { "rollback" }])
                .inc();
            resolved += 1;
        }
        checkout.release();
        Ok(resolved)
    }
}

/// Recovers every shard of the databases with two-phase commit, retrying a shard that cannot
/// be reached (every second) until it is done or the sidecar stops.
pub async fn recover_all(
    coordinator: Arc<Coordinator>,
    databases: Vec<Arc<Database>>,
    recovered: prometheus::IntCounterVec,
    stop: tokio_util::sync::CancellationToken,
) {
    for database in databases {
        loop {
            match coordinator.recover(&database, &recovered).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, shard = ?database.shard, "in-doubt transactions not resolved yet");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
