//! Per-tenant statement rates, per sidecar: one token bucket for each tenant that has a rate
//! (`[tenancy] max_statements_per_second`, `[[tenant_limit]]`), refilled continuously up to its
//! burst. A statement takes a token, or learns how long until there is one. RELOAD changes the
//! rates in place; buckets keep their tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{OnLimit, Rate, RateConfig};

/// Buckets beyond this many are pruned of the full ones (tenants idle for a while).
const MAX_BUCKETS: usize = 10_000;

/// One tenant's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Statements delayed or refused.
    throttled: u64,
}

/// What a tenant's bucket looks like now (for the admin console).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRate {
    pub tenant: String,
    pub rate: Rate,
    pub tokens: f64,
    pub throttled: u64,
}

/// The statement rates of all tenants.
#[derive(Debug)]
pub struct Rates {
    config: Mutex<RateConfig>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Rates {
    pub fn new(config: RateConfig) -> Rates {
        Rates {
            config: Mutex::new(config),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Applies reloaded rates (buckets keep their tokens, capped at the new burst).
    pub fn configure(&self, config: RateConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The rate `tenant` is held to, if any.
    pub fn rate_of(&self, tenant: &str) -> Option<Rate> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate_of(tenant)
    }

    /// What a statement over its rate does.
    pub fn on_limit(&self) -> OnLimit {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_limit
    }

    /// Takes `n` tokens (capped at the burst) of `tenant`'s bucket at `now`: `Ok` when they
    /// were there (or the tenant has no rate), else how long until they will be.
    pub fn take(&self, tenant: &str, n: f64, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate_of(tenant) else {
            return Ok(());
        };
        let n = n.min(rate.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tenant) {
            buckets.retain(|_, b| {
                let refilled = b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second;
                refilled < rate.burst
            });
        }
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
            throttled: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= n {
            bucket.tokens -= n;
            return Ok(());
        }
        let missing = n - bucket.tokens;
        Err(Duration::from_secs_f64(missing / rate.per_second))
    }

    /// Counts a statement of `tenant` that waited for a token or was refused.
    pub fn count_throttled(&self, tenant: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = buckets.get_mut(tenant) {
            b.throttled += 1;
        }
    }

    /// Every tenant with a bucket, by name.
    pub fn tenants(&self) -> Vec<TenantRate> {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out: Vec<TenantRate> = buckets
            .iter()
            .filter_map(|(tenant, b)| {
                let rate = config.rate_of(tenant)?;
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                Some(TenantRate {
                    tenant: tenant.clone(),
                    rate,
                    tokens: (b.tokens + elapsed * rate.per_second).min(rate.burst),
                    throttled: b.throttled,
                })
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(per_second: f64, burst: f64) -> Rates {
        let mut config = RateConfig::default();
        config
            .tenants
            .insert("acme".into(), Rate { per_second, burst });
        Rates::new(config)
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let r = rates(100.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(r.take("acme", 1.0, t0), Ok(()));
        }
        let wait = r.take("acme", 1.0, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(10) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // 10 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(r.take("acme", 1.0, t1), Ok(()));
        assert!(r.take("acme", 1.0, t1).is_err());
        // Idle for long: at most the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(r.take("acme", 1.0, t2), Ok(()));
        }
        assert!(r.take("acme", 1.0, t2).is_err());
        // Other tenants have no rate here.
        assert_eq!(r.take("globex", 1000.0, t2), Ok(()));
        r.count_throttled("acme");
        let seen = r.tenants();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].throttled, 1);
    }

    #[test]
    fn a_reload_changes_the_rate_in_place() {
        let r = rates(1.0, 1.0);
        let t0 = Instant::now();
        assert_eq!(r.take("acme", 1.0, t0), Ok(()));
        assert!(r.take("acme", 1.0, t0).is_err());
        r.configure(RateConfig::default());
        assert_eq!(r.take("acme", 1.0, t0), Ok(()), "no rate any more");
    }
}
