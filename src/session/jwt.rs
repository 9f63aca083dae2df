//! JWT-as-password logins (`[tenancy] source = "jwt"`): the token is verified (HS256 with a
//! shared secret, RS256 or ES256 with a public key; `exp`, `nbf`, `aud`, `iss`), and says the
//! tenant, optionally the upstream role (from an allowed list only) and the claims a setting
//! receives as JSON. The key is read once, when the sidecar starts.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;

/// Why a JWT was not accepted (the client only ever hears "authentication failed").
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read the JWT public key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token has no string claim {0:?}")]
    MissingClaim(String),
    #[error("the token asks for role {0:?}, which is not in allowed_roles")]
    RoleNotAllowed(String),
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    /// The upstream role to run as, when the configuration maps one.
    pub role: Option<String>,
    /// All claims as JSON, for `claims_setting`.
    pub claims_json: String,
}

/// Verifies tokens as the configuration says.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    config: JwtConfig,
}

impl JwtVerifier {
    /// Loads the key named in the configuration.
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, JwtError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| JwtError::Key {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let key_error = |path: &std::path::Path, e: jsonwebtoken::errors::Error| JwtError::Key {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let (algorithm, key) = match (
            config.algorithm.as_str(),
            &config.secret,
            &config.public_key,
        ) {
            ("HS256", Some(secret), _) => (
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ),
            ("RS256", _, Some(path)) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&read(path)?).map_err(|e| key_error(path, e))?,
            ),
            ("ES256", _, Some(path)) => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&read(path)?).map_err(|e| key_error(path, e))?,
            ),
            _ => {
                return Err(JwtError::Key {
                    path: String::new(),
                    reason: "no key for the configured algorithm".into(),
                })
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(JwtVerifier {
            key,
            validation,
            config: config.clone(),
        })
    }

    /// Verifies `token` and reads what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, JwtError> {
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token.trim(), &self.key, &self.validation)?;
        let claims = data.claims;
        let string_claim = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| JwtError::MissingClaim(name.to_owned()))
        };
        let tenant = string_claim(&self.config.tenant_claim)?;
        let role = match &self.config.role_claim {
            Some(claim) => {
                let role = string_claim(claim)?;
                if !self.config.allowed_roles.contains(&role) {
                    return Err(JwtError::RoleNotAllowed(role));
                }
                Some(role)
            }
            None => None,
        };
        Ok(Grant {
            tenant,
            role,
            claims_json: Value::Object(claims).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        JwtConfig {
            algorithm: "HS256".into(),
            secret: Some("k".repeat(32)),
            public_key: None,
            audience: None,
            issuer: None,
            tenant_claim: "tenant_id".into(),
            claims_setting: None,
            role_claim: None,
            allowed_roles: Vec::new(),
        }
    }

    fn hs256(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens() {
        let verifier = JwtVerifier::new(&config()).unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let good = hs256(
            &"k".repeat(32),
            serde_json::json!({"tenant_id": "acme", "exp": exp}),
        );
        assert_eq!(verifier.verify(&good).unwrap().tenant, "acme");
        let forged = hs256(
            &"x".repeat(32),
            serde_json::json!({"tenant_id": "acme", "exp": exp}),
        );
        assert!(verifier.verify(&forged).is_err());
        let no_exp = hs256(&"k".repeat(32), serde_json::json!({"tenant_id": "acme"}));
        assert!(verifier.verify(&no_exp).is_err());
        let numeric = hs256(
            &"k".repeat(32),
            serde_json::json!({"tenant_id": 7, "exp": exp}),
        );
        assert!(matches!(
            verifier.verify(&numeric),
            Err(JwtError::MissingClaim(_))
        ));
    }
}
