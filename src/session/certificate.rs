//! The tenant of a client that presented a certificate the sidecar verified against
//! `[tls] client_ca` (`[tenancy] source = "certificate"`): a URI SAN matching the configured
//! pattern (`spiffe://example.org/tenant/{tenant}`), or else the subject CN. Pure.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The tenant the certificate (DER) names, if it names one.
pub fn tenant_of(der: &[u8], pattern: Option<&str>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match pattern {
        Some(pattern) => {
            let (prefix, suffix) = pattern.split_once("{tenant}")?;
            let sans = cert.subject_alternative_name().ok()??;
            sans.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => uri
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .filter(|tenant| !tenant.is_empty())
                    .map(str::to_owned),
                _ => None,
            })
        }
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| rcgen::SanType::URI(rcgen::Ia5String::try_from(*s).unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn tenants_come_from_the_cn_or_a_matching_uri() {
        let pattern = Some("spiffe://example.org/tenant/{tenant}");
        let der = cert(
            "acme",
            &[
                "spiffe://example.org/service/x",
                "spiffe://example.org/tenant/globex",
            ],
        );
        assert_eq!(tenant_of(&der, None).as_deref(), Some("acme"));
        assert_eq!(tenant_of(&der, pattern).as_deref(), Some("globex"));
        let der = cert("acme", &["spiffe://example.org/service/x"]);
        assert_eq!(tenant_of(&der, pattern), None);
        assert_eq!(tenant_of(b"not a certificate", None), None);
    }
}
