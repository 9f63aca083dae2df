//! Client identity → tenant: which configured user a login authenticates as, and which tenant
//! it runs as (`[tenancy] source = "username"`: `app.acme` is user `app`, tenant `acme`; or the
//! user's fixed `tenant`). Pure.

use crate::config::{TenancyConfig, TenantSource};
use crate::protocol::backend::ErrorReport;
use crate::protocol::sqlstate::SqlState;

/// Who a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The configured user whose credentials the client must present.
    pub user: String,
    /// The tenant it runs as (with `[tenancy]`).
    pub tenant: Option<String>,
}

/// Why a login cannot have a tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the login names no tenant: log in as user{separator}tenant")]
    MissingTenant { separator: char },
    #[error("invalid tenant name in the login")]
    InvalidTenant,
    #[error("user has a fixed tenant and cannot log in as another")]
    OtherTenant,
}

impl IdentityError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::MissingTenant { .. } => "tenant_missing",
            IdentityError::InvalidTenant => "tenant_invalid",
            IdentityError::OtherTenant => "tenant_other",
        }
    }

    /// The FATAL the client gets (28000, as for any login Postgres refuses by rule).
    pub fn report(&self) -> ErrorReport {
        ErrorReport::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            self.to_string(),
        )
    }
}

/// Resolves a login name. `fixed_tenant` gives a configured user's fixed tenant. A tenant that
/// is malformed is refused before authentication; one that is missing only after it (the
/// caller checks [`Identity::tenant`] against [`needs_tenant`]).
pub fn resolve(
    login: &str,
    tenancy: Option<&TenancyConfig>,
    fixed_tenant: impl Fn(&str) -> Option<String>,
) -> Result<Identity, IdentityError> {
    let Some(tenancy) = tenancy else {
        return Ok(Identity {
            user: login.to_owned(),
            tenant: None,
        });
    };
    if let Some(tenant) = fixed_tenant(login) {
        return Ok(Identity {
            user: login.to_owned(),
            tenant: Some(tenant),
        });
    }
    if matches!(
        tenancy.source,
        TenantSource::Jwt | TenantSource::Certificate
    ) {
        // The tenant comes with the token or the certificate.
        return Ok(Identity {
            user: login.to_owned(),
            tenant: None,
        });
    }
    match tenancy.split(login) {
        (user, Some(tenant)) => {
            if !tenancy.valid_tenant(tenant) {
                return Err(IdentityError::InvalidTenant);
            }
            if fixed_tenant(user).is_some_and(|fixed| fixed != tenant) {
                return Err(IdentityError::OtherTenant);
            }
            Ok(Identity {
                user: user.to_owned(),
                tenant: Some(tenant.to_owned()),
            })
        }
        (user, None) => Ok(Identity {
            user: user.to_owned(),
            tenant: None,
        }),
    }
}

/// The error for an authenticated login that has no tenant while tenancy is on.
pub fn needs_tenant(identity: &Identity, tenancy: Option<&TenancyConfig>) -> Option<IdentityError> {
    match (tenancy, &identity.tenant) {
        (Some(t), None) => Some(IdentityError::MissingTenant {
            separator: t.separator,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy() -> TenancyConfig {
        crate::config::Config::from_toml(
            "[[database]]\nname = \"d\"\nprimary = \"postgres://a:b@h/d\"\n[[user]]\nname = \"app\"\npassword = \"x\"\n[tenancy]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n",
            &Default::default(),
        )
        .unwrap()
        .tenancy
        .unwrap()
    }

    #[test]
    fn logins_resolve() {
        let t = tenancy();
        let fixed = |u: &str| (u == "svc").then(|| "ops".to_owned());
        let id = resolve("app.acme", Some(&t), fixed).unwrap();
        assert_eq!(
            (id.user.as_str(), id.tenant.as_deref()),
            ("app", Some("acme"))
        );
        let id = resolve("svc", Some(&t), fixed).unwrap();
        assert_eq!(id.tenant.as_deref(), Some("ops"));
        assert_eq!(
            resolve("svc.other", Some(&t), fixed),
            Err(IdentityError::OtherTenant)
        );
        assert_eq!(
            resolve("app.ac'me", Some(&t), fixed),
            Err(IdentityError::InvalidTenant)
        );
        assert_eq!(
            resolve("app.", Some(&t), fixed),
            Err(IdentityError::InvalidTenant)
        );
        let id = resolve("app", Some(&t), fixed).unwrap();
        assert!(needs_tenant(&id, Some(&t)).is_some());
        let id = resolve("app.acme", None, fixed).unwrap();
        assert_eq!((id.user.as_str(), id.tenant), ("app.acme", None));
    }
}
