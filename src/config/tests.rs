//! Unit tests of configuration parsing and validation.

use super::*;

const FULL: &str = r#"
listen = "127.0.0.1:7000"
metrics_listen = "127.0.0.1:7001"
shutdown_delay = "2s"
drain_timeout = "10s"
max_message_size = "1MiB"

[pool]
mode = "session"
size = 7
checkout_timeout = "250ms"
max_waiting = 3

[[database]]
name = "app"
primary = "postgres://app:se%40cret@127.0.0.1:5433/appdb"

[[user]]
name = "app"
password = "secret"
auth = "md5"
"#;

#[test]
fn parses_every_key() {
    let c = Config::from_toml(FULL, &Overrides::default()).unwrap();
    assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(c.metrics_listen, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(c.shutdown_delay, Duration::from_secs(2));
    assert_eq!(c.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.max_message_size, 1 << 20);
    assert_eq!(c.pool.mode, PoolMode::Session);
    assert_eq!(c.pool.size, 7);
    assert_eq!(c.pool.checkout_timeout, Duration::from_millis(250));
    assert_eq!(c.pool.max_waiting, 3);
    let db = &c.databases[0];
    assert_eq!(db.primary.password.as_deref(), Some("se@cret"));
    assert_eq!(db.primary.hosts, vec![("127.0.0.1".to_owned(), 5433)]);
    assert_eq!(db.primary.dbname, "appdb");
    assert_eq!(c.users[0].auth, AuthMethod::Md5);
}

#[test]
fn overrides_win() {
    let o = Overrides {
        listen: Some("127.0.0.1:9999".parse().unwrap()),
        metrics_listen: None,
        pool_size: Some(3),
        pool_mode: Some(PoolMode::Transaction),
    };
    let c = Config::from_toml(FULL, &o).unwrap();
    assert_eq!(c.listen.port(), 9999);
    assert_eq!(c.pool.size, 3);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
}

#[test]
fn upstream_form_makes_one_database_and_user() {
    let c = Config::from_upstream(
        "postgres://app:secret@127.0.0.1:5432/app",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.databases.len(), 1);
    assert_eq!(c.databases[0].name, "app");
    assert_eq!(c.users[0].name, "app");
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.listen.port(), 6432);
}

#[test]
fn secrets_are_masked() {
    let c = Config::from_toml(FULL, &Overrides::default()).unwrap();
    let text = c.describe();
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("max_message_size = \"1MiB\""), "{text}");
    assert!(text.contains("checkout_timeout = \"250ms\""), "{text}");
    // What `check` prints is itself a valid configuration.
    assert!(
        Config::from_toml(&text, &Overrides::default()).is_ok(),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("secret"));
    let err = UpstreamUrl::parse("mysql://u:hunter2@h/db").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn refuses_bad_values() {
    for (bad, needle) in [
        (FULL.replace("size = 7", "size = 0"), "pool.size"),
        (FULL.replace("\"250ms\"", "\"soon\""), "checkout_timeout"),
        (
            FULL.replace("auth = \"md5\"", "auth = \"kerberos\""),
            "unknown variant",
        ),
        (
            FULL.replace("password = \"secret\"", "scram_verifier = \"x\""),
            "plaintext",
        ),
        (
            format!("{FULL}\n[tls]\ncert = \"x\"\n"),
            "missing field `key`",
        ),
        (
            format!("{FULL}\n[tenancy]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\nsource = \"certificate\"\n"),
            "client_ca",
        ),
        (
            FULL.replace("max_waiting = 3", "max_waitng = 3"),
            "unknown field",
        ),
        (FULL.replace("postgres://", "http://"), "postgres://"),
        (
            FULL.replace("[[database]]", "[[database]]\nreplica_stratgy = \"random\""),
            "unknown field",
        ),
        (
            FULL.replace(
                "[[database]]",
                "[[database]]\nreplicas = [\"postgres://a:b@h/d\"]\nread_your_writes = \"tenant\"",
            ),
            "needs a [tenancy]",
        ),
    ] {
        let err = Config::from_toml(&bad, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5 parsecs").is_err());
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert!(parse_size("99999999999999999999GiB").is_err());
}

#[test]
fn url_forms() {
    let u = UpstreamUrl::parse("postgresql://bob@db.internal").unwrap();
    assert_eq!(u.hosts, vec![("db.internal".to_owned(), 5432)]);
    assert_eq!(u.dbname, "bob");
    assert_eq!(u.sslmode, SslMode::Prefer);
    assert!(u.password.is_none());
    let u = UpstreamUrl::parse("postgres://a@h1,h2:5433,[::1]:5434/db?sslmode=require").unwrap();
    assert_eq!(
        u.hosts,
        vec![
            ("h1".to_owned(), 5432),
            ("h2".to_owned(), 5433),
            ("::1".to_owned(), 5434)
        ]
    );
    assert_eq!(u.sslmode, SslMode::Require);
    assert_eq!(
        u.masked(),
        "postgres://a@h1:5432,h2:5433,::1:5434/db?sslmode=require"
    );
    let u = UpstreamUrl::parse("postgres://a@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem")
        .unwrap();
    assert_eq!(u.sslrootcert.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert!(UpstreamUrl::parse("postgres://a@h/db?sslmode=verify-ca").is_err());
    assert!(UpstreamUrl::parse("postgres://a@h/db?sslmode=sometimes").is_err());
    assert!(UpstreamUrl::parse("postgres://a@h/db?fallback=1").is_err());
    assert!(UpstreamUrl::parse("postgres://a@h:notaport/db").is_err());
}

#[test]
fn example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgsidecar.toml");
    let c = Config::from_file(&path, &Overrides::default()).unwrap();
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.databases[0].name, "app");
}
