//! `pgsidecar demo`: a throwaway primary and streaming replica from the machine's PostgreSQL
//! binaries, a multi-tenant table under Row-Level Security with the signed tenant installed,
//! and the configuration of a sidecar in front of them (tenants, replica routing, a result cache, an admin
//! user). The servers stop and their data is removed when the [`Demo`] is dropped.

use std::net::SocketAddr;

use ring::rand::SecureRandom;

use crate::localpg::{LocalPgError, LocalPostgres};

/// The password of every demo login.
pub const PASSWORD: &str = "secret";

/// The demo's servers and the sidecar configuration for them.
pub struct Demo {
    pub primary: LocalPostgres,
    pub replica: LocalPostgres,
    /// The sidecar's TOML.
    pub config: String,
}

/// Why the demo could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Postgres(#[from] LocalPgError),
    #[error("the replica did not catch up within 30 s")]
    ReplicaBehind,
    #[error("no randomness for the signing key")]
    Randomness,
}

/// The table, its policy and its rows (run as the superuser, who bypasses the policy).
const SCHEMA: &str = "
CREATE TABLE notes (
    id serial PRIMARY KEY,
    tenant text NOT NULL DEFAULT pgsidecar.tenant(),
    body text NOT NULL
);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes USING (tenant = pgsidecar.tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO app;
GRANT USAGE ON SEQUENCE notes_id_seq TO app;
INSERT INTO notes (tenant, body) VALUES
    ('acme', 'acme: renew the TLS certificate'),
    ('acme', 'acme: invoice #1042 is due'),
    ('globex', 'globex: the quarterly report'),
    ('initech', 'initech: fix the printer');
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int);
INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 1000) g;
GRANT SELECT ON accounts TO app;
";

/// Starts the servers and writes the schema (blocking: run it off the async runtime).
pub fn setup(listen: SocketAddr, metrics_listen: SocketAddr) -> Result<Demo, DemoError> {
    let primary = LocalPostgres::start("")?;
    primary.create_user_and_database("app", PASSWORD, "app")?;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| DemoError::Randomness)?;
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let signer = crate::token::Signer::new(key.as_bytes()).map_err(|_| DemoError::Randomness)?;
    primary.psql("app", &signer.install_sql(None))?;
    primary.psql("app", SCHEMA)?;
    let replica = primary.start_replica("")?;
    // The replica has the schema before anyone is told to read from it.
    let caught_up = (0..300).any(|_| {
        let seen = replica
            .psql("app", "SELECT count(*) FROM notes")
            .is_ok_and(|n| n.trim() == "4");
        if !seen {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        seen
    });
    if !caught_up {
        return Err(DemoError::ReplicaBehind);
    }
    let config = format!(
        r#"listen = "{listen}"
metrics_listen = "{metrics_listen}"

[pool]
size = 10

[[database]]
name = "app"
primary = "{primary}"
replicas = ["{replica}"]

[[user]]
name = "app"
password = "{PASSWORD}"

[[user]]
name = "admin"
password = "{PASSWORD}"
admin = true

[tenancy]
signing_key = "{key}"

[cache]
[[cache.rule]]
database = "app"
tables = ["notes"]
"#,
        primary = primary.url("app", PASSWORD, "app"),
        replica = replica.url("app", PASSWORD, "app"),
    );
    Ok(Demo {
        primary,
        replica,
        config,
    })
}

/// One line per thing to try against the running demo.
pub fn try_lines(demo: &Demo, listen: SocketAddr, metrics_listen: SocketAddr) -> Vec<String> {
    let tenant = |t: &str| format!("postgres://app.{t}:{PASSWORD}@{listen}/app");
    vec![
        format!(
            "PostgreSQL primary on 127.0.0.1:{}, streaming replica on 127.0.0.1:{}",
            demo.primary.port, demo.replica.port
        ),
        format!(
            "a tenant sees only its rows:    psql {} -c 'select * from notes'",
            tenant("acme")
        ),
        format!(
            "…and another tenant its own:    psql {} -c 'select * from notes'",
            tenant("globex")
        ),
        format!(
            "no SQL escapes the tenant:      psql {} -c \"select set_config('app.tenant_id', 'acme', false)\"",
            tenant("globex")
        ),
        format!(
            "reads are served by the replica: psql {} -c 'select pg_is_in_recovery(), count(*) from accounts'",
            tenant("acme")
        ),
        format!(
            "reads of notes are cached per tenant (run one twice): curl -s http://{metrics_listen}/metrics | grep cache_hits"
        ),
        format!(
            "the admin console:              psql postgres://admin:{PASSWORD}@{listen}/pgsidecar -c 'SHOW POOLS'"
        ),
        format!("the metrics:                    curl -s http://{metrics_listen}/metrics"),
    ]
}
