//! Client authentication, server side: SCRAM-SHA-256 (RFC 5802/7677 as Postgres speaks it),
//! md5, cleartext password and trust.
//!
//! Like Postgres, an unknown user goes through a SCRAM exchange against a mock secret and fails
//! exactly like a wrong password, so user names cannot be probed. Passwords never reach a log.
//! This module must not look at databases or tenants; it only answers "is this the user".

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

use super::client::{ClientConn, ClientIoError};
use super::jwt::{Grant, JwtVerifier};
use crate::config::{AuthMethod, UserConfig, UserSecret};
use crate::protocol::backend::{self, ErrorReport, AUTH_MD5_PASSWORD, AUTH_SASL_CONTINUE};
use crate::protocol::backend::{AUTH_CLEARTEXT_PASSWORD, AUTH_SASL_FINAL};
use crate::protocol::frontend::{parse_password, SaslInitialResponse, PASSWORD_TAG};
use crate::protocol::sqlstate::SqlState;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;
/// Authentication messages are small; Postgres caps them similarly.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Why a client was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] ClientIoError),
}

impl AuthError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Failed(_) => "auth_failed",
            AuthError::Protocol(_) => "auth_protocol",
            AuthError::Io(_) => "client_io",
        }
    }

    /// The FATAL the client gets, if it can still get one.
    pub fn report(&self) -> Option<ErrorReport> {
        match self {
            AuthError::Failed(_) => Some(ErrorReport::fatal(
                SqlState::INVALID_PASSWORD,
                self.to_string(),
            )),
            AuthError::Protocol(_) => Some(ErrorReport::fatal(
                SqlState::PROTOCOL_VIOLATION,
                self.to_string(),
            )),
            AuthError::Io(_) => None,
        }
    }
}

/// A SCRAM-SHA-256 secret as Postgres stores it (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`).
#[derive(Clone)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramSecret {
    /// Derives the secret from a plaintext password (done once, at configuration load).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let mut salted = [0u8; 32];
        let iters = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iters,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let server_key = hmac::sign(&key, b"Server Key");
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: digest::digest(&digest::SHA256, client_key.as_ref())
                .as_ref()
                .to_vec(),
            server_key: server_key.as_ref().to_vec(),
        }
    }

    /// Parses a Postgres SCRAM verifier string.
    pub fn parse_verifier(verifier: &str) -> Option<ScramSecret> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let secret = ScramSecret {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (secret.stored_key.len() == 32 && secret.server_key.len() == 32).then_some(secret)
    }

    /// A secret no password matches, stable per user name so repeated probes look alike.
    fn mock(user: &str, nonce_key: &[u8]) -> ScramSecret {
        let key = hmac::Key::new(hmac::HMAC_SHA256, nonce_key);
        let salt = hmac::sign(&key, user.as_bytes());
        let stored = hmac::sign(&key, salt.as_ref());
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.as_ref()[..16].to_vec(),
            stored_key: stored.as_ref().to_vec(),
            server_key: stored.as_ref().to_vec(),
        }
    }
}

/// What the sidecar checks for one configured user, prepared once.
#[derive(Clone)]
pub struct UserAuth {
    method: AuthMethod,
    scram: Option<ScramSecret>,
    password: Option<String>,
}

impl UserAuth {
    /// How this user authenticates.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// Prepares a user's credential (derives the SCRAM secret from a password once).
    pub fn prepare(user: &UserConfig, rng: &SystemRandom) -> Result<UserAuth, String> {
        let (scram, password) = match &user.secret {
            UserSecret::Password(p) => {
                let mut salt = [0u8; 16];
                rng.fill(&mut salt)
                    .map_err(|_| "no randomness available".to_owned())?;
                (
                    Some(ScramSecret::from_password(p, &salt, DEFAULT_ITERATIONS)),
                    Some(p.clone()),
                )
            }
            UserSecret::ScramVerifier(v) => (
                Some(ScramSecret::parse_verifier(v).ok_or_else(|| {
                    format!(
                        "user {:?}: scram_verifier is not a SCRAM-SHA-256 verifier",
                        user.name
                    )
                })?),
                None,
            ),
            UserSecret::None => (None, None),
        };
        Ok(UserAuth {
            method: user.auth,
            scram,
            password,
        })
    }
}

/// Runs the exchange for `user` (`None` when no such user is configured) and returns when the
/// client proved who it is. The caller sends AuthenticationOk.
pub async fn authenticate(
    conn: &mut ClientConn,
    user: &str,
    auth: Option<&UserAuth>,
    mock_key: &[u8],
    rng: &SystemRandom,
    jwt: Option<&JwtVerifier>,
) -> Result<Option<Grant>, AuthError> {
    let Some(auth) = auth else {
        let mock = ScramSecret::mock(user, mock_key);
        scram_exchange(conn, &mock, rng).await?;
        return Err(AuthError::Failed(user.to_owned()));
    };
    if auth.method == AuthMethod::Jwt {
        backend::authentication(&mut conn.wbuf, AUTH_CLEARTEXT_PASSWORD, &[]);
        let token = read_password(conn).await?;
        return match jwt.map(|v| v.verify(&token)) {
            Some(Ok(grant)) => Ok(Some(grant)),
            Some(Err(e)) => {
                tracing::debug!(user, error = %e, "JWT refused");
                Err(AuthError::Failed(user.to_owned()))
            }
            None => Err(AuthError::Failed(user.to_owned())),
        };
    }
    let ok = match auth.method {
        AuthMethod::Trust => true,
        AuthMethod::ScramSha256 => match &auth.scram {
            Some(secret) => scram_exchange(conn, secret, rng).await?,
            None => false,
        },
        AuthMethod::Md5 => {
            let mut salt = [0u8; 4];
            rng.fill(&mut salt)
                .map_err(|_| AuthError::Protocol("no randomness available".into()))?;
            backend::authentication(&mut conn.wbuf, AUTH_MD5_PASSWORD, &salt);
            let answer = read_password(conn).await?;
            let expected = auth.password.as_deref().map(|p| {
                postgres_protocol::authentication::md5_hash(user.as_bytes(), p.as_bytes(), salt)
            });
            expected.is_some_and(|e| constant_time_eq(e.as_bytes(), answer.as_bytes()))
        }
        AuthMethod::Password => {
            backend::authentication(&mut conn.wbuf, AUTH_CLEARTEXT_PASSWORD, &[]);
            let answer = read_password(conn).await?;
            auth.password
                .as_deref()
                .is_some_and(|p| constant_time_eq(p.as_bytes(), answer.as_bytes()))
        }
        AuthMethod::Jwt => false,
    };
    if ok {
        Ok(None)
    } else {
        Err(AuthError::Failed(user.to_owned()))
    }
}

/// Flushes what is pending and reads the client's next `p` message.
async fn read_auth_message(conn: &mut ClientConn) -> Result<bytes::Bytes, AuthError> {
    conn.flush().await?;
    let frame = conn.read_frame().await?;
    if frame.tag() != PASSWORD_TAG {
        return Err(AuthError::Protocol(format!(
            "expected password response, got message type {}",
            frame.tag()
        )));
    }
    if frame.len() > MAX_AUTH_MESSAGE {
        return Err(AuthError::Protocol(
            "authentication message too long".into(),
        ));
    }
    Ok(frame.as_bytes().slice(5..))
}

async fn read_password(conn: &mut ClientConn) -> Result<String, AuthError> {
    let body = read_auth_message(conn).await?;
    parse_password(&body)
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Protocol("invalid password packet".into()))
}

fn malformed() -> AuthError {
    AuthError::Protocol("malformed SCRAM message".into())
}

/// The SCRAM-SHA-256 server side; `Ok(false)` when the proof does not match.
async fn scram_exchange(
    conn: &mut ClientConn,
    secret: &ScramSecret,
    rng: &SystemRandom,
) -> Result<bool, AuthError> {
    backend::authentication_sasl(&mut conn.wbuf, &[SCRAM_SHA_256]);
    let body = read_auth_message(conn).await?;
    let initial = SaslInitialResponse::parse(&body).ok_or_else(malformed)?;
    if initial.mechanism != SCRAM_SHA_256 {
        return Err(AuthError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let first = ClientFirst::parse(initial.data)?;
    let mut server_nonce = [0u8; 18];
    rng.fill(&mut server_nonce).map_err(|_| malformed())?;
    let nonce = format!("{}{}", first.nonce, B64.encode(server_nonce));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&secret.salt),
        secret.iterations
    );
    backend::authentication(&mut conn.wbuf, AUTH_SASL_CONTINUE, server_first.as_bytes());

    let body = read_auth_message(conn).await?;
    let ClientFinal {
        without_proof,
        channel_binding,
        nonce: final_nonce,
        proof,
    } = ClientFinal::parse(&body)?;
    if channel_binding != Some(B64.encode(first.gs2_header).as_str()) {
        return Err(AuthError::Protocol(
            "unexpected SCRAM channel-binding attribute in client-final-message".into(),
        ));
    }
    if final_nonce != Some(nonce.as_str()) {
        return Err(AuthError::Protocol("SCRAM nonce mismatch".into()));
    }
    let auth_message = format!("{},{server_first},{without_proof}", first.bare);
    let stored = hmac::Key::new(hmac::HMAC_SHA256, &secret.stored_key);
    let signature = hmac::sign(&stored, auth_message.as_bytes());
    let client_key: Vec<u8> = proof
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let computed = digest::digest(&digest::SHA256, &client_key);
    if !constant_time_eq(computed.as_ref(), &secret.stored_key) {
        return Ok(false);
    }
    let server = hmac::Key::new(hmac::HMAC_SHA256, &secret.server_key);
    let server_signature = hmac::sign(&server, auth_message.as_bytes());
    let server_final = format!("v={}", B64.encode(server_signature.as_ref()));
    backend::authentication(&mut conn.wbuf, AUTH_SASL_FINAL, server_final.as_bytes());
    Ok(true)
}

/// The parts of a client-first-message the server needs.
pub struct ClientFirst<'a> {
    pub gs2_header: &'a str,
    pub bare: &'a str,
    pub nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    /// Reads a client-first-message (RFC 5802); channel binding is refused.
    pub fn parse(data: &'a [u8]) -> Result<ClientFirst<'a>, AuthError> {
        let text = std::str::from_utf8(data).map_err(|_| malformed())?;
        let header_len = if text.starts_with("n,,") || text.starts_with("y,,") {
            3
        } else if text.starts_with("p=") {
            return Err(AuthError::Protocol(
                "channel binding was requested, but the sidecar did not offer SCRAM-SHA-256-PLUS"
                    .into(),
            ));
        } else {
            return Err(malformed());
        };
        let bare = &text[header_len..];
        let nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or_else(malformed)?;
        Ok(ClientFirst {
            gs2_header: &text[..header_len],
            bare,
            nonce,
        })
    }
}

/// The parts of a client-final-message the server needs.
pub struct ClientFinal<'a> {
    /// Everything before `,p=` (part of the AuthMessage).
    pub without_proof: &'a str,
    /// `c=`: the base64 GS2 header.
    pub channel_binding: Option<&'a str>,
    /// `r=`: the combined nonce.
    pub nonce: Option<&'a str>,
    /// `p=`, decoded: 32 bytes.
    pub proof: Vec<u8>,
}

impl<'a> ClientFinal<'a> {
    /// Reads a client-final-message (RFC 5802).
    pub fn parse(body: &'a [u8]) -> Result<ClientFinal<'a>, AuthError> {
        let text = std::str::from_utf8(body).map_err(|_| malformed())?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(malformed)?;
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel_binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let proof = B64.decode(proof).map_err(|_| malformed())?;
        if proof.len() != 32 {
            return Err(malformed());
        }
        Ok(ClientFinal {
            without_proof,
            channel_binding,
            nonce,
            proof,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Appends AuthenticationOk.
pub fn write_ok(buf: &mut BytesMut) {
    backend::authentication(buf, backend::AUTH_OK, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trip_matches_postgres_protocol() {
        // postgres-protocol generates the verifier Postgres would store.
        let verifier = postgres_protocol::password::scram_sha_256(b"secret");
        let parsed = ScramSecret::parse_verifier(&verifier).unwrap();
        let derived = ScramSecret::from_password("secret", &parsed.salt, parsed.iterations);
        assert_eq!(derived.stored_key, parsed.stored_key);
        assert_eq!(derived.server_key, parsed.server_key);
    }

    #[test]
    fn rejects_bad_verifiers() {
        assert!(ScramSecret::parse_verifier("md5abc").is_none());
        assert!(ScramSecret::parse_verifier("SCRAM-SHA-256$x:AAAA$AAAA:AAAA").is_none());
    }

    #[test]
    fn client_first_parsing() {
        let f = ClientFirst::parse(b"n,,n=,r=abc").unwrap();
        assert_eq!((f.gs2_header, f.bare, f.nonce), ("n,,", "n=,r=abc", "abc"));
        assert!(ClientFirst::parse(b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(ClientFirst::parse(b"x,,n=,r=abc").is_err());
        assert!(ClientFirst::parse(b"n,,n=").is_err());
    }
}
