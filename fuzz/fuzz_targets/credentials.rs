//! JWT verification (HS256) and the client-certificate reader. Asserts: no panic; a token
//! the verifier accepts carries a tenant.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgsidecar::config::JwtConfig;
use pgsidecar::session::jwt::JwtVerifier;

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        JwtVerifier::new(&JwtConfig {
            algorithm: "HS256".into(),
            secret: Some("fuzz-secret-0123456789abcdef0123456789".into()),
            public_key: None,
            audience: None,
            issuer: None,
            tenant_claim: "tenant".into(),
            claims_setting: Some("request.jwt.claims".into()),
            role_claim: Some("role".into()),
            allowed_roles: vec!["reader".into()],
        })
        .expect("a valid verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(grant) = verifier().verify(token) {
            assert!(!grant.tenant.is_empty());
        }
    }
    let _ = pgsidecar::session::certificate::tenant_of(data, None);
    let _ = pgsidecar::session::certificate::tenant_of(data, Some("^tenant-(.+)$"));
});
