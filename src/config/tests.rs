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
        shutdown_delay: Some(Duration::from_secs(7)),
        drain_timeout: None,
    };
    let c = Config::from_toml(FULL, &o).unwrap();
    assert_eq!(c.shutdown_delay, Duration::from_secs(7));
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

const SHARDED: &str = r#"
[[database]]
name = "app"
replica_strategy = "random"
[[database.shards]]
primary = "postgres://u:p@127.0.0.1:5433/app"
[[database.shards]]
primary = "postgres://u:p@127.0.0.1:5434/app"
replicas = ["postgres://u:p@127.0.0.1:5435/app"]
[[database.shards]]
primary = "postgres://u:p@127.0.0.1:5436/app"

[[sharded_table]]
database = "app"
table = "orders"
column = "customer_id"
type = "bigint"

[[sharded_table]]
database = "app"
table = "public.regions"
column = "code"
type = "text"
method = "list"
values = [["eu", "uk"], ["us"], ["jp"]]

[[sharded_table]]
database = "app"
table = "events"
column = "id"
type = "integer"
method = "range"
ranges = [[0, 1000], [1000, 5000], [5000, 9000]]
default_shard = 2

[[user]]
name = "app"
password = "secret"

[tenancy]
signing_key = "0123456789abcdef0123456789abcdef"
shard_by = "tenant"

[[tenant_shard]]
tenant = "acme"
shard = 2
"#;

#[test]
fn sharded_databases_tables_and_tenants() {
    let c = Config::from_toml(SHARDED, &Overrides::default()).unwrap();
    let db = &c.databases[0];
    assert_eq!(db.shards.len(), 3);
    assert_eq!(db.primary.hosts[0].1, 5433, "shard 0 is the primary");
    assert!(db.shards[0].replicas.is_none());
    let replicas = db.shards[1].replicas.as_ref().unwrap();
    assert_eq!(replicas.urls[0].hosts[0].1, 5435);
    assert_eq!(replicas.strategy, Strategy::Random);
    assert!(c.sharding.by_tenant);
    assert!(c.sharding.table("app", "regions").is_some());
    assert!(c.sharding.table("app", "public.regions").is_some());
    assert!(c.sharding.table("app", "other.regions").is_none());
    let row = |table, key| c.shard_of(None, ShardQuestion::Row { table, key });
    assert_eq!(row("regions", "us"), Ok(1));
    assert_eq!(row("events", "999"), Ok(0));
    assert_eq!(row("events", "-1"), Ok(2), "the default shard");
    assert!(row("orders", "x")
        .unwrap_err()
        .contains("invalid input syntax"));
    assert!(row("regions", "fr").unwrap_err().contains("no shard"));
    assert_eq!(c.shard_of(None, ShardQuestion::Tenant("acme")), Ok(2));
    // check prints the sharding as it was configured.
    let described = c.describe();
    for line in [
        "[[database.shards]]\nprimary = \"postgres://u:****@127.0.0.1:5434/app\"\nreplicas = [",
        "table = \"public.regions\"\ncolumn = \"code\"\ntype = \"text\"\nmethod = \"list\"\nvalues = [[\"eu\", \"uk\"], [\"us\"], [\"jp\"]]\n",
        "method = \"range\"\nranges = [[0, 1000], [1000, 5000], [5000, 9000]]\ndefault_shard = 2\n",
        "[[tenant_shard]]\ntenant = \"acme\"\nshard = 2\n",
    ] {
        assert!(described.contains(line), "{line} in {described}");
    }
}

#[test]
fn sharding_mistakes_are_named() {
    for (bad, needle) in [
        (
            SHARDED.replacen(
                "name = \"app\"\n",
                "name = \"app\"\nprimary = \"postgres://u@h/app\"\n",
                1,
            ),
            "not both",
        ),
        (
            SHARDED.replace(
                "ranges = [[0, 1000], [1000, 5000], [5000, 9000]]",
                "ranges = [[0, 1000]]",
            ),
            "one [start, end] per shard",
        ),
        (
            SHARDED.replace("default_shard = 2", "default_shard = 3"),
            "not a shard",
        ),
        (
            SHARDED.replace("type = \"bigint\"", "type = \"float\""),
            "unknown variant",
        ),
        (
            SHARDED.replace(
                "tenant = \"acme\"\nshard = 2",
                "tenant = \"acme\"\nshard = 7",
            ),
            "does not exist",
        ),
        (
            SHARDED.replace("shard_by = \"tenant\"", "shard_by = \"moon\""),
            "shard_by",
        ),
        (
            SHARDED.replace("shard_by = \"tenant\"", ""),
            "need [tenancy] shard_by",
        ),
        (
            SHARDED.replace("[\"eu\", \"uk\"]", "[1.5]"),
            "must be a text",
        ),
        (
            SHARDED.replace("[0, 1000]", "[\"zero\", 1000]"),
            "invalid input syntax",
        ),
        (
            SHARDED.replace(
                "database = \"app\"\ntable = \"orders\"",
                "database = \"other\"\ntable = \"orders\"",
            ),
            "not a database with [[database.shards]]",
        ),
        (
            SHARDED.replace(
                "replica_strategy = \"random\"",
                "replicas = [\"postgres://u@h/app\"]",
            ),
            "give each [[database.shards]] its replicas",
        ),
    ] {
        let err = Config::from_toml(&bad, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn statement_rates() {
    let tenancy = "\n[tenancy]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n";
    let c = Config::from_toml(
        &format!(
            "{FULL}{tenancy}max_statements_per_second = 50\non_limit = \"refuse\"\n\n\
             [[tenant_limit]]\ntenant = \"acme\"\nmax_statements_per_second = 200\nburst = 20\n"
        ),
        &Overrides::default(),
    )
    .unwrap();
    let acme = c.rates.rate_of("acme").unwrap();
    assert_eq!((acme.per_second, acme.burst), (200.0, 20.0));
    let other = c.rates.rate_of("globex").unwrap();
    assert_eq!((other.per_second, other.burst), (50.0, 50.0));
    assert_eq!(c.rates.on_limit, OnLimit::Refuse);
    for (bad, needle) in [
        (format!("{FULL}{tenancy}max_statements_per_second = 0\n"), "positive"),
        (format!("{FULL}{tenancy}burst = 5\n"), "needs max_statements_per_second"),
        (format!("{FULL}{tenancy}on_limit = \"drop\"\n"), "on_limit"),
        (
            format!("{FULL}\n[[tenant_limit]]\ntenant = \"a\"\nmax_statements_per_second = 5\n"),
            "need [tenancy]",
        ),
        (
            format!("{FULL}{tenancy}\n[[tenant_limit]]\ntenant = \"a\"\nmax_statements_per_second = 5\n[[tenant_limit]]\ntenant = \"a\"\nmax_statements_per_second = 6\n"),
            "twice",
        ),
    ] {
        let err = Config::from_toml(&bad, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{bad}: {err}");
    }
}

const CACHED: &str = r#"
[[database]]
name = "app"
primary = "postgres://app:x@127.0.0.1:5432/app"

[[user]]
name = "app"
password = "x"

[cache]
max_bytes = "8MiB"
ttl = "30s"
max_entry_bytes = "64KiB"
in_read_only_transactions = true

[[cache.rule]]
database = "app"
tables = ["Products", "public.prices"]
fingerprints = ["SELECT count(*) FROM orders WHERE day = $1"]
ttl = "5s"

[[cache.rule]]
database = "app"
tables = ["tags"]
"#;

#[test]
fn parses_the_cache() {
    let c = Config::from_toml(CACHED, &Overrides::default()).unwrap();
    let cache = c.cache.expect("[cache]");
    assert_eq!(cache.max_bytes, 8 << 20);
    assert_eq!(cache.ttl, Duration::from_secs(30));
    assert_eq!(cache.max_entry_bytes, 64 << 10);
    assert!(cache.in_read_only_transactions);
    assert_eq!(cache.rules[0].tables, ["products", "public.prices"]);
    assert_eq!(cache.rules[0].ttl, Duration::from_secs(5));
    assert_eq!(cache.rules[0].fingerprints.len(), 1);
    // A rule without a TTL takes the cache's.
    assert_eq!(cache.rules[1].ttl, Duration::from_secs(30));
}

#[test]
fn refuses_cache_rules_it_cannot_serve() {
    let cases = [
        (
            CACHED.replace(
                "database = \"app\"\ntables = [\"tags\"]",
                "database = \"other\"\ntables = [\"tags\"]",
            ),
            "cache.rule.database",
        ),
        (CACHED.replace("tables = [\"tags\"]", ""), "cache.rule"),
        (CACHED.replace("ttl = \"30s\"", "ttl = \"0s\""), "cache.ttl"),
        (
            CACHED.replace("max_entry_bytes = \"64KiB\"", "max_entry_bytes = \"16MiB\""),
            "cache.max_entry_bytes",
        ),
        (format!("[pool]\nmode = \"session\"\n{CACHED}"), "cache"),
    ];
    for (toml, key) in cases {
        match Config::from_toml(&toml, &Overrides::default()) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
            other => panic!("{key}: {other:?}"),
        }
    }
}
