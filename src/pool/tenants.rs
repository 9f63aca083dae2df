//! Per-tenant caps on the server connections one tenant may hold at once in a database, so one
//! noisy tenant cannot take the whole pool: a tenant at its cap waits on its own queue, and the
//! requests of other tenants go ahead of it to the pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tenants remembered before idle ones are forgotten.
const FORGET_OVER: usize = 10_000;

/// The caps of every (database, tenant).
pub struct TenantLimits {
    cap: usize,
    queues: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// Why a tenant got no server connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "tenant {tenant:?} already holds its maximum of {cap} server connections; waited {waited:?}"
)]
pub struct AtCap {
    pub tenant: String,
    pub cap: usize,
    pub waited: Duration,
}

impl TenantLimits {
    /// Caps of `cap` server connections per tenant and database.
    pub fn new(cap: usize) -> TenantLimits {
        TenantLimits {
            cap,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// The cap per tenant and database.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Waits (at most `timeout`) until `tenant` may hold one more server connection of
    /// `database`; the permit gives it back when dropped.
    pub async fn acquire(
        &self,
        database: &str,
        tenant: &str,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, AtCap> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            if queues.len() >= FORGET_OVER {
                // Tenants nobody waits on and who hold nothing.
                queues.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.cap);
            }
            Arc::clone(
                queues
                    .entry((database.to_owned(), tenant.to_owned()))
                    .or_insert_with(|| Arc::new(Semaphore::new(self.cap))),
            )
        };
        match tokio::time::timeout(timeout, queue.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(AtCap {
                tenant: tenant.to_owned(),
                cap: self.cap,
                waited: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_at_its_cap_waits_and_others_do_not() {
        let limits = TenantLimits::new(1);
        let held = limits
            .acquire("db", "acme", Duration::from_secs(1))
            .await
            .unwrap();
        let short = Duration::from_millis(50);
        assert!(limits.acquire("db", "acme", short).await.is_err());
        assert!(limits.acquire("db", "globex", short).await.is_ok());
        assert!(limits.acquire("other", "acme", short).await.is_ok());
        drop(held);
        assert!(limits.acquire("db", "acme", short).await.is_ok());
    }
}
