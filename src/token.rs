//! The signed tenant token: what the sidecar sets on a server connection at checkout so that
//! Postgres itself can tell which tenant the connection serves, and the SQL that verifies it
//! there (`pgsidecar tenancy-sql`). Pure but for reading the clock for expiries: signing, the
//! keyed channel prefix, and SQL text.
//!
//! A token is `v1:<kid>:<expires>:<pid>:<tenant>:<role>:<claims>:<mac>`: the key id, the
//! expiry (Unix seconds), the backend PID of the server connection it was made for, the tenant,
//! the JWT role and claims (base64, empty when none), and HMAC-SHA256 over everything before
//! the last `:` under the deployment's signing key (hex). A client can overwrite the setting,
//! but cannot make one that names another tenant, nor move one to another connection.
//!
//! The verifying functions are plpgsql `SECURITY DEFINER` holding one query (a `LANGUAGE sql`
//! one is planned again on every call, and a view is planned into every statement that uses
//! it); HMAC is computed with the built-in `sha256()` from the key's inner and outer pads,
//! which are stored instead of the key, in a table only the owner can read.

use base64::Engine;
use ring::{digest, hmac};

/// Settings whose names start with this are the sidecar's own: clients may not set them and
/// never carry them from one server connection to another.
pub const RESERVED_SETTING_PREFIX: &str = "pgsidecar.";
/// The setting that carries the token on a server connection.
pub const TOKEN_SETTING: &str = "pgsidecar.tenant";
/// Shortest signing key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
/// HMAC-SHA256's block size: keys are padded to it.
const BLOCK: usize = 64;
/// Hex characters of the keyed channel prefix.
const CHANNEL_PREFIX_HEX: usize = 16;

/// Why a signing key cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the signing key has {0} bytes; at least {MIN_KEY_LEN} are needed")]
    KeyTooShort(usize),
}

/// What a token says, besides the connection and expiry it is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    /// The upstream role a JWT chose.
    pub role: Option<String>,
    /// A JWT's claims as JSON.
    pub claims: Option<String>,
}

/// Signs tokens with one deployment key.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    key: hmac::Key,
    pads: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer {{ kid: {} }}", self.kid)
    }
}

impl Signer {
    /// A signer for `key` (at least [`MIN_KEY_LEN`] bytes).
    pub fn new(key: &[u8]) -> Result<Signer, TokenError> {
        if key.len() < MIN_KEY_LEN {
            return Err(TokenError::KeyTooShort(key.len()));
        }
        let id = digest::digest(&digest::SHA256, key);
        let kid = hex(&id.as_ref()[..8]);
        // RFC 2104: a key longer than the block is hashed first, then zero-padded.
        let mut block = if key.len() > BLOCK {
            digest::digest(&digest::SHA256, key).as_ref().to_vec()
        } else {
            key.to_vec()
        };
        block.resize(BLOCK, 0);
        let inner = block.iter().map(|b| b ^ 0x36).collect();
        let outer = block.iter().map(|b| b ^ 0x5c).collect();
        Ok(Signer {
            kid,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            pads: (inner, outer),
        })
    }

    /// The key's public id (the first 8 bytes of its SHA-256, hex).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The token for `grant` on the server connection of backend `pid`, valid until
    /// `expires` (Unix seconds).
    pub fn sign(&self, grant: &Grant, pid: i32, expires: u64) -> String {
        let b64 = |v: &Option<String>| {
            v.as_deref()
                .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
                .unwrap_or_default()
        };
        let message = format!(
            "v1:{}:{expires}:{pid}:{}:{}:{}",
            self.kid,
            grant.tenant,
            b64(&grant.role),
            b64(&grant.claims)
        );
        let mac = hmac::sign(&self.key, message.as_bytes());
        format!("{message}:{}", hex(mac.as_ref()))
    }

    /// [`Signer::sign`] with an expiry `valid_for` from now (the only place the clock is read).
    pub fn sign_for(&self, grant: &Grant, pid: i32, valid_for: std::time::Duration) -> String {
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + valid_for;
        self.sign(grant, pid, expires.as_secs())
    }

    /// The channel prefix of `tenant`'s notifications: another tenant cannot compute it.
    pub fn channel_prefix(&self, tenant: &str) -> String {
        let mac = hmac::sign(&self.key, format!("channel:{tenant}").as_bytes());
        format!("{}.", &hex(mac.as_ref())[..CHANNEL_PREFIX_HEX])
    }

    /// The SQL a database owner runs once (with psql) to install `pgsidecar.tenant()` and this
    /// key. Without `rotate_until`, this key becomes the only one; with it, the keys installed
    /// before stay valid until then (an SQL timestamp, e.g. `2026-12-01 12:00+00`).
    pub fn install_sql(&self, rotate_until: Option<&str>) -> String {
        let others = match rotate_until {
            None => format!(
                "DELETE FROM pgsidecar.signing_keys WHERE kid <> '{}';",
                self.kid
            ),
            Some(until) => format!(
                "UPDATE pgsidecar.signing_keys\n   SET valid_until = LEAST(COALESCE(valid_until, 'infinity'), '{}'::timestamptz)\n WHERE kid <> '{}';",
                until.replace('\'', "''"),
                self.kid
            ),
        };
        let function = |name: &str, returns: &str, result: &str| {
            format!(
                "CREATE OR REPLACE FUNCTION pgsidecar.{name}() RETURNS {returns}\n\
                 LANGUAGE plpgsql STABLE SECURITY DEFINER\n\
                 SET search_path = pg_catalog, pg_temp\n\
                 AS $fn$\nBEGIN\n  RETURN (SELECT {result}\n{VERIFY});\nEND\n$fn$;\n\
                 REVOKE ALL ON FUNCTION pgsidecar.{name}() FROM PUBLIC;\n\
                 GRANT EXECUTE ON FUNCTION pgsidecar.{name}() TO PUBLIC;\n"
            )
        };
        format!(
            "-- pgsidecar: the signed tenant, verified inside Postgres. Run with psql as the database\n\
             -- owner or a superuser, never as the role pgsidecar logs in as (whoever can read the\n\
             -- key can sign any tenant). Running it again is harmless.\n\
             BEGIN;\n\
             CREATE SCHEMA IF NOT EXISTS pgsidecar;\n\
             REVOKE ALL ON SCHEMA pgsidecar FROM PUBLIC;\n\
             GRANT USAGE ON SCHEMA pgsidecar TO PUBLIC;\n\
             CREATE TABLE IF NOT EXISTS pgsidecar.signing_keys (\n\
             \x20 kid text PRIMARY KEY,\n\
             \x20 inner_pad bytea NOT NULL,\n\
             \x20 outer_pad bytea NOT NULL,\n\
             \x20 valid_until timestamptz\n);\n\
             REVOKE ALL ON pgsidecar.signing_keys FROM PUBLIC;\n\
             {others}\n\
             INSERT INTO pgsidecar.signing_keys VALUES ('{kid}', decode('{inner}', 'hex'), decode('{outer}', 'hex'), NULL)\n\
             \x20 ON CONFLICT (kid) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, outer_pad = EXCLUDED.outer_pad, valid_until = NULL;\n\
             {tenant}{claims}{role}\
             COMMIT;\n",
            kid = self.kid,
            inner = hex(&self.pads.0),
            outer = hex(&self.pads.1),
            tenant = function("tenant", "text", "split_part(s.t, ':', 5)"),
            claims = function(
                "claims",
                "jsonb",
                "NULLIF(convert_from(decode(split_part(s.t, ':', 7), 'base64'), 'UTF8'), '')::jsonb"
            ),
            role = function(
                "role",
                "text",
                "NULLIF(convert_from(decode(split_part(s.t, ':', 6), 'base64'), 'UTF8'), '')"
            ),
        )
    }
}

/// The query every verifying function shares (one SQL statement, so plpgsql sets up one plan
/// per transaction, not one per step): the token's fields as `s.t`, joined to its key, kept
/// only if its MAC verifies, its PID is the connection's, and its expiry and key are valid;
/// anything wrong gives no row, so the function returns NULL (fail closed: `tenant_id = NULL`
/// is never true). The fields are cast only after the MAC proved the sidecar wrote them
/// (CASE orders the evaluation). The MAC is compared as text: a comparison of 64 bytes differs
/// in timing by nanoseconds, far below the microseconds of noise of one call from SQL.
const VERIFY: &str = "    FROM (SELECT current_setting('pgsidecar.tenant', true) AS t) s
    JOIN pgsidecar.signing_keys k ON k.kid = split_part(s.t, ':', 2)
   WHERE CASE WHEN length(s.t) BETWEEN 90 AND 65536
               AND split_part(s.t, ':', 4) = pg_backend_pid()::text
               AND encode(sha256(k.outer_pad || sha256(k.inner_pad
                     || convert_to(left(s.t, -65), 'UTF8'))), 'hex') = right(s.t, 64)
              THEN split_part(s.t, ':', 1) = 'v1'
               AND split_part(s.t, ':', 3)::bigint > extract(epoch FROM now())
               AND (k.valid_until IS NULL OR k.valid_until > now())
              ELSE false END";

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            Signer::new(&[7; 31]).unwrap_err(),
            TokenError::KeyTooShort(31)
        );
    }

    #[test]
    fn tokens_are_hmac_over_their_fields_and_the_pads_reproduce_it() {
        for key in [vec![1u8; 32], vec![9u8; 100]] {
            let signer = Signer::new(&key).unwrap();
            let grant = Grant {
                tenant: "acme".into(),
                role: Some("reader".into()),
                claims: Some("{\"a\":1}".into()),
            };
            let token = signer.sign(&grant, 4242, 1_900_000_000);
            let (message, mac) = token.rsplit_once(':').unwrap();
            let fields: Vec<&str> = token.split(':').collect();
            assert_eq!(fields.len(), 8);
            assert_eq!(
                &fields[..5],
                &["v1", signer.kid(), "1900000000", "4242", "acme"]
            );
            // What the SQL computes: sha256(outer || sha256(inner || message)).
            let inner = digest::digest(
                &digest::SHA256,
                &[signer.pads.0.as_slice(), message.as_bytes()].concat(),
            );
            let outer = digest::digest(
                &digest::SHA256,
                &[signer.pads.1.as_slice(), inner.as_ref()].concat(),
            );
            assert_eq!(hex(outer.as_ref()), mac);
            // Another tenant, PID or key gives another MAC.
            let other = Grant {
                tenant: "globex".into(),
                ..grant.clone()
            };
            assert_ne!(signer.sign(&other, 4242, 1_900_000_000), token);
            assert_ne!(
                Signer::new(&[2; 32])
                    .unwrap()
                    .sign(&grant, 4242, 1_900_000_000),
                token
            );
        }
    }

    #[test]
    fn channel_prefixes_are_keyed_and_short() {
        let a = Signer::new(&[1; 32]).unwrap();
        let b = Signer::new(&[2; 32]).unwrap();
        assert_eq!(a.channel_prefix("acme").len(), CHANNEL_PREFIX_HEX + 1);
        assert_ne!(a.channel_prefix("acme"), a.channel_prefix("globex"));
        assert_ne!(a.channel_prefix("acme"), b.channel_prefix("acme"));
    }

    #[test]
    fn install_sql_keeps_or_replaces_other_keys() {
        let s = Signer::new(&[3; 32]).unwrap();
        let plain = s.install_sql(None);
        assert!(plain.contains("DELETE FROM pgsidecar.signing_keys WHERE kid <>"));
        assert!(plain.contains("FUNCTION pgsidecar.tenant() RETURNS text"));
        assert!(
            !plain.contains(&hex(&[3; 32])),
            "the key itself is never written"
        );
        let rotate = s.install_sql(Some("2026-12-01 00:00+00"));
        assert!(rotate.contains("LEAST(COALESCE(valid_until, 'infinity'), '2026-12-01 00:00+00'"));
    }
}
