//! The `[tenancy]` section: which setting Row-Level Security policies read, where a client's
//! tenant comes from, how a tenant name is checked, and whether clients are kept from changing
//! or escaping it. Parsing and validation only.

use serde::Deserialize;

use super::ConfigError;

/// Where a client's tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    /// `app.acme` logs in as user `app`, tenant `acme` (split at the last separator).
    Username,
    /// The client's password is a JWT; the tenant is one of its claims.
    Jwt,
    /// The verified client certificate (`[tls] client_ca`): its subject CN, or a URI SAN
    /// matching `certificate_pattern`.
    Certificate,
}

/// How JWTs are checked (`source = "jwt"`).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// The HS256 shared secret.
    pub secret: Option<String>,
    /// The RS256/ES256 public key (PEM file).
    pub public_key: Option<std::path::PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// A setting that receives all claims as JSON (PostgREST's `request.jwt.claims`).
    pub claims_setting: Option<String>,
    /// A claim naming the upstream role to SET ROLE to, from `allowed_roles` only.
    pub role_claim: Option<String>,
    pub allowed_roles: Vec<String>,
}

/// Tenant context for Row-Level Security.
#[derive(Debug, Clone)]
pub struct TenancyConfig {
    /// The setting the policies read (`current_setting('app.tenant_id')`).
    pub setting: String,
    pub source: TenantSource,
    pub separator: char,
    /// Longest tenant name accepted.
    pub max_length: usize,
    /// Clients may not change the tenant setting or escape it (SET ROLE, DO, functions…).
    pub enforce: bool,
    /// Server connections one tenant may hold at once per database (0: no cap).
    pub max_connections_per_tenant: usize,
    /// Tenants that get their own `tenant` label on `pgsidecar_tenant_queries_total` (0: no
    /// per-tenant metric).
    pub metric_tenants: usize,
    /// With `source = "jwt"`.
    pub jwt: Option<JwtConfig>,
    /// With `source = "certificate"`: a URI pattern with one `{tenant}`, matched against the
    /// certificate's URI SANs (e.g. `spiffe://example.org/tenant/{tenant}`); without one, the
    /// subject CN is the tenant.
    pub certificate_pattern: Option<String>,
    /// Signs the tenant token the sidecar sets on every server connection (`signing_key` or
    /// `signing_key_file`); `None` only with `enforce = false`.
    pub signer: Option<crate::token::Signer>,
    /// How long a token is valid; it is set again before half of that has passed.
    pub token_lifetime: std::time::Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTenancy {
    setting: Option<String>,
    source: Option<String>,
    separator: Option<String>,
    max_tenant_length: Option<usize>,
    enforce: Option<bool>,
    max_connections_per_tenant: Option<usize>,
    metric_tenants: Option<usize>,
    jwt_algorithm: Option<String>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<String>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    jwt_tenant_claim: Option<String>,
    jwt_claims_setting: Option<String>,
    jwt_role_claim: Option<String>,
    #[serde(default)]
    allowed_roles: Vec<String>,
    certificate_pattern: Option<String>,
    signing_key: Option<String>,
    signing_key_file: Option<String>,
    token_lifetime: Option<String>,
    shard_by: Option<String>,
    max_statements_per_second: Option<f64>,
    burst: Option<f64>,
    on_limit: Option<String>,
}

impl FileTenancy {
    /// The statement-rate keys (validated with `[[tenant_limit]]` in `rates.rs`).
    pub(super) fn rates(&self) -> super::rates::FileRates {
        super::rates::FileRates {
            max_statements_per_second: self.max_statements_per_second,
            burst: self.burst,
            on_limit: self.on_limit.clone(),
        }
    }

    /// `shard_by = "tenant"`: every statement of a client goes to its tenant's shard.
    pub(super) fn shard_by_tenant(&self) -> Result<bool, ConfigError> {
        match self.shard_by.as_deref() {
            None | Some("statement") => Ok(false),
            Some("tenant") => Ok(true),
            Some(other) => Err(ConfigError::invalid(
                "tenancy.shard_by",
                format!("{other:?} is not one of \"tenant\", \"statement\""),
            )),
        }
    }

    pub(super) fn validate(self) -> Result<TenancyConfig, ConfigError> {
        let setting = self.setting.unwrap_or_else(|| "app.tenant_id".to_owned());
        let valid_setting = setting.split_once('.').is_some_and(|(a, b)| {
            [a, b].iter().all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
        });
        if !valid_setting {
            return Err(ConfigError::invalid(
                "tenancy.setting",
                format!("{setting:?} is not a custom setting name like \"app.tenant_id\" (lower case, one dot)"),
            ));
        }
        let source = match self.source.as_deref().unwrap_or("username") {
            "username" => TenantSource::Username,
            "jwt" => TenantSource::Jwt,
            "certificate" => TenantSource::Certificate,
            other => {
                return Err(ConfigError::invalid(
                    "tenancy.source",
                    format!("{other:?} is not one of \"username\", \"certificate\", \"jwt\""),
                ))
            }
        };
        let separator = match self.separator.as_deref().unwrap_or(".") {
            s if s.chars().count() == 1 => s.chars().next().unwrap_or('.'),
            s => {
                return Err(ConfigError::invalid(
                    "tenancy.separator",
                    format!("{s:?} must be one character"),
                ))
            }
        };
        let max_length = self.max_tenant_length.unwrap_or(63);
        if max_length == 0 || max_length > 1024 {
            return Err(ConfigError::invalid(
                "tenancy.max_tenant_length",
                "must be between 1 and 1024",
            ));
        }
        let jwt = match source {
            TenantSource::Jwt => {
                let algorithm = self.jwt_algorithm.unwrap_or_else(|| "HS256".into());
                let key_ok = match algorithm.as_str() {
                    "HS256" => self.jwt_secret.as_ref().is_some_and(|s| s.len() >= 32),
                    "RS256" | "ES256" => self.jwt_public_key.is_some(),
                    _ => {
                        return Err(ConfigError::invalid(
                            "tenancy.jwt_algorithm",
                            format!("{algorithm:?} is not one of \"HS256\", \"RS256\", \"ES256\""),
                        ))
                    }
                };
                if !key_ok {
                    return Err(ConfigError::invalid(
                        "tenancy.jwt_secret",
                        "HS256 needs jwt_secret (at least 32 bytes); RS256 and ES256 need jwt_public_key (a PEM file)",
                    ));
                }
                if self.jwt_role_claim.is_some() && self.allowed_roles.is_empty() {
                    return Err(ConfigError::invalid(
                        "tenancy.allowed_roles",
                        "jwt_role_claim needs the list of roles it may select",
                    ));
                }
                Some(JwtConfig {
                    algorithm,
                    secret: self.jwt_secret,
                    public_key: self.jwt_public_key.map(Into::into),
                    audience: self.jwt_audience,
                    issuer: self.jwt_issuer,
                    tenant_claim: self.jwt_tenant_claim.unwrap_or_else(|| "tenant_id".into()),
                    claims_setting: self.jwt_claims_setting,
                    role_claim: self.jwt_role_claim,
                    allowed_roles: self.allowed_roles,
                })
            }
            TenantSource::Username | TenantSource::Certificate => None,
        };
        if let Some(pattern) = &self.certificate_pattern {
            if pattern.matches("{tenant}").count() != 1 {
                return Err(ConfigError::invalid(
                    "tenancy.certificate_pattern",
                    format!("{pattern:?} must contain {{tenant}} exactly once"),
                ));
            }
        }
        let enforce = self.enforce.unwrap_or(true);
        let signer = signer(self.signing_key, self.signing_key_file.as_deref(), enforce)?;
        let token_lifetime = match self.token_lifetime.as_deref() {
            None => std::time::Duration::from_secs(3600),
            Some(s) => super::parse_duration(s)
                .ok()
                .filter(|d| d.as_secs() >= 60)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "tenancy.token_lifetime",
                        format!("{s:?} is not a duration of at least 60s"),
                    )
                })?,
        };
        Ok(TenancyConfig {
            signer,
            token_lifetime,
            certificate_pattern: self.certificate_pattern,
            jwt,
            setting,
            source,
            separator,
            max_length,
            enforce,
            max_connections_per_tenant: self.max_connections_per_tenant.unwrap_or(0),
            metric_tenants: self.metric_tenants.unwrap_or(0).min(1000),
        })
    }
}

/// The token signer from `signing_key` (the key's bytes as written) or `signing_key_file` (the
/// file's bytes, one trailing newline dropped). Required unless enforcement is off.
fn signer(
    key: Option<String>,
    file: Option<&str>,
    enforce: bool,
) -> Result<Option<crate::token::Signer>, ConfigError> {
    let bytes = match (key, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "tenancy.signing_key",
                "give signing_key or signing_key_file, not both",
            ))
        }
        (Some(key), None) => key.into_bytes(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(path).map_err(|e| {
                ConfigError::invalid("tenancy.signing_key_file", format!("{path}: {e}"))
            })?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            bytes
        }
        (None, None) if enforce => {
            return Err(ConfigError::invalid(
                "tenancy.signing_key",
                "tenant enforcement needs a signing key (signing_key or signing_key_file, at least 32 bytes, the same for every sidecar of the deployment); see `pgsidecar tenancy-sql`",
            ))
        }
        (None, None) => return Ok(None),
    };
    crate::token::Signer::new(&bytes)
        .map(Some)
        .map_err(|e| ConfigError::invalid("tenancy.signing_key", e.to_string()))
}

impl TenancyConfig {
    /// Splits a login name into (user, tenant) at the last separator; the tenant part is
    /// `None` when there is no separator.
    pub fn split<'a>(&self, login: &'a str) -> (&'a str, Option<&'a str>) {
        match login.rfind(self.separator) {
            Some(i) => (&login[..i], Some(&login[i + self.separator.len_utf8()..])),
            None => (login, None),
        }
    }

    /// Whether a tenant name is acceptable: 1 to `max_length` ASCII letters, digits, `_`, `-`.
    pub fn valid_tenant(&self, tenant: &str) -> bool {
        !tenant.is_empty()
            && tenant.len() <= self.max_length
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The section as TOML (for `pgsidecar check`).
    pub fn describe(&self) -> String {
        format!(
            "\n[tenancy]\nsetting = \"{}\"\nsource = \"{}\"\nseparator = \"{}\"\nmax_tenant_length = {}\nenforce = {}\nmax_connections_per_tenant = {}\n",
            self.setting,
            match self.source {
                TenantSource::Username => "username",
                TenantSource::Jwt => "jwt",
                TenantSource::Certificate => "certificate",
            },
            self.separator,
            self.max_length,
            self.enforce,
            self.max_connections_per_tenant
        ) + &match &self.signer {
            Some(signer) => format!(
                "signing_key = \"****\"  # key id {}\ntoken_lifetime = \"{}s\"\n",
                signer.kid(),
                self.token_lifetime.as_secs()
            ),
            None => "# no signing key: policies cannot verify the tenant (unsafe against hostile SQL)\n".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "signing_key = \"0123456789abcdef0123456789abcdef\"\n";

    fn tenancy(toml: &str) -> Result<TenancyConfig, ConfigError> {
        toml::from_str::<FileTenancy>(&format!("{KEY}{toml}"))
            .unwrap()
            .validate()
    }

    #[test]
    fn splits_at_the_last_separator_and_checks_tenants() {
        let t = tenancy("").unwrap();
        assert_eq!(t.setting, "app.tenant_id");
        assert_eq!(t.split("app.acme"), ("app", Some("acme")));
        assert_eq!(t.split("my.app.acme"), ("my.app", Some("acme")));
        assert_eq!(t.split("app"), ("app", None));
        assert!(t.valid_tenant("acme-2_b"));
        for bad in ["", "a'b", "a b", "acme;", &"x".repeat(64), "é"] {
            assert!(!t.valid_tenant(bad), "{bad:?}");
        }
        let t = tenancy("separator = \"@\"\nsetting = \"rls.tenant\"").unwrap();
        assert_eq!(t.split("app@acme"), ("app", Some("acme")));
    }

    #[test]
    fn refusals() {
        assert!(tenancy("source = \"jwt\"").is_err());
        assert!(tenancy("source = \"jwt\"\njwt_secret = \"short\"").is_err());
        assert!(
            tenancy("source = \"certificate\"\ncertificate_pattern = \"spiffe://x/\"").is_err()
        );
        let t = tenancy(&format!(
            "source = \"jwt\"\njwt_secret = \"{}\"",
            "k".repeat(32)
        ))
        .unwrap();
        assert_eq!(t.jwt.unwrap().tenant_claim, "tenant_id");
        assert!(tenancy("setting = \"Tenant\"").is_err());
        assert!(tenancy("setting = \"a.b'c\"").is_err());
        assert!(tenancy("separator = \"::\"").is_err());
        assert!(tenancy("token_lifetime = \"1s\"").is_err());
        // No key: only without enforcement (unsafe against hostile SQL).
        let bare = |t: &str| toml::from_str::<FileTenancy>(t).unwrap().validate();
        assert!(bare("").is_err());
        assert!(bare("signing_key = \"short\"").is_err());
        assert!(bare("enforce = false").unwrap().signer.is_none());
    }
}
