//! TLS on both sides, with certificates made in the test (rcgen): clients with libpq's psql
//! (sslmode=verify-full, client certificates, plaintext refused when TLS is required) and the
//! sidecar's own upstream connections for every sslmode against a TLS-enabled PostgreSQL.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use support::*;

/// A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second,
/// unrelated CA — as PEM files in one directory.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        // Under /tmp, not the build directory: the server runs as `postgres` and must reach it.
        let dir = std::env::temp_dir().join(format!("pgsidecar-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            (params.self_signed(&key).unwrap(), key)
        };
        let (ca_cert, ca_key) = ca("pgsidecar test CA");
        let (other_cert, other_key) = ca("some other CA");
        let leaf = |sans: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            (params.signed_by(&key, &ca_cert, &ca_key).unwrap(), key)
        };
        let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client, client_key) = leaf(vec![], "client");
        // Client certificates naming tenants: by a SPIFFE URI SAN, and one from an untrusted CA.
        let tenant_leaf = |uri: &str, cn: &str, signer: (&rcgen::Certificate, &KeyPair)| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.subject_alt_names = vec![rcgen::SanType::URI(
                rcgen::Ia5String::try_from(uri).unwrap(),
            )];
            (params.signed_by(&key, signer.0, signer.1).unwrap(), key)
        };
        for (file, uri, signer) in [
            (
                "acme",
                "spiffe://example.org/tenant/acme",
                (&ca_cert, &ca_key),
            ),
            (
                "service",
                "spiffe://example.org/service/billing",
                (&ca_cert, &ca_key),
            ),
            (
                "untrusted",
                "spiffe://example.org/tenant/acme",
                (&other_cert, &other_key),
            ),
        ] {
            let (cert, key) = tenant_leaf(uri, file, signer);
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
            write_private(&dir.join(format!("{file}.key")), &key.serialize_pem());
        }
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        write_private(&dir.join("server.key"), &server_key.serialize_pem());
        std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
        write_private(&dir.join("client.key"), &client_key.serialize_pem());
        // PostgreSQL reads its own copy of the key, owned by the user it runs as.
        std::fs::copy(dir.join("server.pem"), dir.join("pg-server.pem")).unwrap();
        write_private(&dir.join("pg-server.key"), &server_key.serialize_pem());
        if let Some((uid, gid)) = pgsidecar::localpg::postgres_user_if_root() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            for f in ["pg-server.pem", "pg-server.key"] {
                std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
            }
        }
        Certs { dir }
    })
}

/// This binary's PostgreSQL, with TLS on.
fn tls_pg() -> &'static pgsidecar::localpg::LocalPostgres {
    pg_with(|| {
        format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            certs().path("pg-server.pem"),
            certs().path("pg-server.key")
        )
    })
}

fn tls_section(client_ca: bool, required: bool) -> String {
    let mut s = format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nrequired = {required}\n",
        certs().path("server.pem"),
        certs().path("server.key")
    );
    if client_ca {
        s.push_str(&format!("client_ca = \"{}\"\n", certs().path("ca.pem")));
    }
    s
}

async fn psql(port: u16, name: &str, conninfo: &str) -> (bool, String, String) {
    psql_query(port, name, conninfo, "SELECT 42").await
}

async fn psql_query(port: u16, name: &str, conninfo: &str, sql: &str) -> (bool, String, String) {
    let conn = format!("host=127.0.0.1 port={port} user={name} dbname={name} {conninfo}");
    let out = run_pg_program("psql", &["-X", "-At", "-d", &conn, "-c", sql], PASSWORD).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_use_tls_and_plaintext_can_be_refused() {
    tls_pg();
    let name = fresh_user("tlsclient");
    let toml = format!(
        "{}{}",
        base_toml(&name, "size = 2"),
        tls_section(false, true)
    );
    let sidecar = start(&toml).await;
    let port = sidecar.addr.port();
    let ca = certs().path("ca.pem");
    let (ok, out, err) = psql(
        port,
        &name,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "42");
    // A CA the sidecar's certificate does not chain to: libpq refuses the sidecar.
    let other = certs().path("other-ca.pem");
    let (ok, _, err) = psql(
        port,
        &name,
        &format!("sslmode=verify-full sslrootcert={other}"),
    )
    .await;
    assert!(!ok && err.contains("certificate verify failed"), "{err}");
    // Plaintext is refused with 28000 when TLS is required.
    let (ok, _, err) = psql(port, &name, "sslmode=disable").await;
    assert!(!ok && err.contains("requires TLS"), "{err}");

    // With TLS configured but not required, plaintext still works; SSLRequest gets 'S'.
    let toml = format!(
        "{}{}",
        base_toml(&name, "size = 2"),
        tls_section(false, false)
    );
    let optional = start(&toml).await;
    let (ok, _, err) = psql(optional.addr.port(), &name, "sslmode=disable").await;
    assert!(ok, "{err}");
    let (ok, _, err) = psql(optional.addr.port(), &name, "sslmode=require").await;
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    tls_pg();
    let name = fresh_user("tlscert");
    let toml = format!(
        "{}{}",
        base_toml(&name, "size = 2"),
        tls_section(true, true)
    );
    let sidecar = start(&toml).await;
    let port = sidecar.addr.port();
    let ca = certs().path("ca.pem");
    let (ok, _, err) = psql(
        port,
        &name,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    )
    .await;
    assert!(!ok, "a client without a certificate got in: {err}");
    let with_cert = format!(
        "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
        certs().path("client.pem"),
        certs().path("client.key")
    );
    let (ok, out, err) = psql(port, &name, &with_cert).await;
    assert!(ok, "{err}");
    assert_eq!(out, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sslmodes() {
    let pg = tls_pg();
    let name = fresh_user("tlsup");
    let ca = certs().path("ca.pem");
    let other = certs().path("other-ca.pem");
    let plain_url = pg.url(&name, PASSWORD, &name);
    for (query, want_ssl) in [
        ("?sslmode=disable".to_owned(), Some(false)),
        (String::new(), Some(true)), // prefer
        ("?sslmode=require".to_owned(), Some(true)),
        (format!("?sslmode=verify-ca&sslrootcert={ca}"), Some(true)),
        (format!("?sslmode=verify-full&sslrootcert={ca}"), Some(true)),
        (format!("?sslmode=verify-full&sslrootcert={other}"), None),
    ] {
        let toml = base_toml(&name, "size = 1\nconnect_timeout = \"3s\"")
            .replace(&plain_url, &format!("{plain_url}{query}"));
        let sidecar = start(&toml).await;
        let client = connect(sidecar.addr, &name, PASSWORD, &name).await;
        match want_ssl {
            Some(want) => {
                let client = client.unwrap_or_else(|e| panic!("{query}: {e}"));
                let ssl: bool = client
                    .query_typed(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap()[0]
                    .get(0);
                assert_eq!(ssl, want, "{query}");
            }
            None => {
                let err = client.err().unwrap_or_else(|| panic!("{query}: connected"));
                assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{query}: {err:?}");
            }
        }
    }
}

#[test]
fn acceptor_reads_pem_files_and_names_broken_ones() {
    let dir = std::env::temp_dir().join(format!("pgsidecar-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = pgsidecar::config::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    std::fs::copy(certs().dir.join("server.pem"), &files.cert).unwrap();
    std::fs::copy(certs().dir.join("server.key"), &files.key).unwrap();
    assert!(pgsidecar::tls::acceptor(&files).is_ok());
    std::fs::write(&files.key, "not a key").unwrap();
    let err = pgsidecar::tls::acceptor(&files)
        .err()
        .expect("a broken key is refused");
    assert!(err.to_string().contains("key.pem"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_comes_from_the_client_certificate() {
    tls_pg();
    let name = fresh_user("tlstenant");
    let toml = format!(
        "{}{}{TENANCY}source = \"certificate\"\ncertificate_pattern = \"spiffe://example.org/tenant/{{tenant}}\"\n",
        base_toml(&name, "size = 2"),
        tls_section(true, true)
    );
    let sidecar = start(&toml).await;
    let port = sidecar.addr.port();
    let ca = certs().path("ca.pem");
    let with = |file: &str| {
        format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            certs().path(&format!("{file}.pem")),
            certs().path(&format!("{file}.key"))
        )
    };
    let tenant_query = "SELECT current_setting('app.tenant_id')";
    let (ok, out, err) = psql_query(port, &name, &with("acme"), tenant_query).await;
    assert!(ok, "{err}");
    assert_eq!(out, "acme");
    // A certificate that names no tenant is refused; so is one from an untrusted CA.
    for file in ["service", "untrusted"] {
        let (ok, _, err) = psql_query(port, &name, &with(file), tenant_query).await;
        assert!(!ok, "{file}: a login got in");
        if file == "service" {
            assert!(err.contains("names no valid tenant"), "{err}");
        }
    }
}
