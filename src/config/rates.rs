//! Per-tenant statement rates: `[tenancy] max_statements_per_second`, `burst` and `on_limit`,
//! and `[[tenant_limit]]` overrides for single tenants. Parsing and validation only.

use std::collections::HashMap;

use serde::Deserialize;

use super::ConfigError;

/// What a statement over its tenant's rate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    /// It waits for a token, at most `checkout_timeout`; then 53400.
    #[default]
    Wait,
    /// 53400 at once.
    Refuse,
}

/// One tenant's token bucket: `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The statement rates of every tenant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateConfig {
    /// Every tenant's rate (`[tenancy] max_statements_per_second`), when set.
    pub default: Option<Rate>,
    /// `[[tenant_limit]]`: rates of single tenants, over the default.
    pub tenants: HashMap<String, Rate>,
    pub on_limit: OnLimit,
}

impl RateConfig {
    /// The rate `tenant` is held to, if any.
    pub fn rate_of(&self, tenant: &str) -> Option<Rate> {
        self.tenants.get(tenant).copied().or(self.default)
    }

    /// Whether any tenant is limited.
    pub fn limits_anyone(&self) -> bool {
        self.default.is_some() || !self.tenants.is_empty()
    }
}

/// The rate keys of `[tenancy]` as written.
#[derive(Debug, Default, Deserialize)]
pub(super) struct FileRates {
    pub(super) max_statements_per_second: Option<f64>,
    pub(super) burst: Option<f64>,
    pub(super) on_limit: Option<String>,
}

/// `[[tenant_limit]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTenantLimit {
    tenant: String,
    max_statements_per_second: f64,
    burst: Option<f64>,
}

/// A rate from its keys; the burst defaults to one second's worth (at least one statement).
fn rate(key: &str, per_second: f64, burst: Option<f64>) -> Result<Rate, ConfigError> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return Err(ConfigError::invalid(
            key,
            format!("{per_second} is not a positive number of statements per second"),
        ));
    }
    let burst = burst.unwrap_or(per_second.max(1.0));
    if !(burst.is_finite() && burst >= 1.0) {
        return Err(ConfigError::invalid(
            key,
            format!("burst {burst} must be at least 1 statement"),
        ));
    }
    Ok(Rate { per_second, burst })
}

/// The rates, checked: they need `[tenancy]` (tenants come from it).
pub(super) fn validate_rates(
    file: FileRates,
    limits: Vec<FileTenantLimit>,
    has_tenancy: bool,
) -> Result<RateConfig, ConfigError> {
    let on_limit = match file.on_limit.as_deref() {
        None | Some("wait") => OnLimit::Wait,
        Some("refuse") => OnLimit::Refuse,
        Some(other) => {
            return Err(ConfigError::invalid(
                "tenancy.on_limit",
                format!("{other:?} is not one of \"wait\", \"refuse\""),
            ))
        }
    };
    let default = match file.max_statements_per_second {
        Some(n) => Some(rate("tenancy.max_statements_per_second", n, file.burst)?),
        None if file.burst.is_some() => {
            return Err(ConfigError::invalid(
                "tenancy.burst",
                "burst needs max_statements_per_second",
            ))
        }
        None => None,
    };
    let mut tenants = HashMap::new();
    for limit in limits {
        let r = rate(
            "tenant_limit.max_statements_per_second",
            limit.max_statements_per_second,
            limit.burst,
        )?;
        if tenants.insert(limit.tenant.clone(), r).is_some() {
            return Err(ConfigError::invalid(
                "tenant_limit.tenant",
                format!("{:?} appears twice", limit.tenant),
            ));
        }
    }
    let config = RateConfig {
        default,
        tenants,
        on_limit,
    };
    if config.limits_anyone() && !has_tenancy {
        return Err(ConfigError::invalid(
            "tenant_limit",
            "statement rates are per tenant: they need [tenancy]",
        ));
    }
    Ok(config)
}
