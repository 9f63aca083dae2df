//! Shard servers and a sidecar in front of them, for the sharding tests.

use pgsidecar::listener::Running;
use pgsidecar::localpg::LocalPostgres;

use super::{start, PASSWORD, SIGNING_KEY};

/// A shard server: its own PostgreSQL with database `app` owned by role app.
pub fn shard_server() -> LocalPostgres {
    let pg = LocalPostgres::start("").expect("start a shard server");
    pg.create_user_and_database("app", PASSWORD, "app")
        .expect("role and database");
    pg
}

/// `[[database.shards]]` tables for primaries at these URLs, in order.
pub fn shard_lines<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> String {
    urls.into_iter()
        .map(|u| format!("[[database.shards]]\nprimary = \"{}\"\n", u.as_ref()))
        .collect()
}

/// A sidecar in front of `shards` (database `app`, user app), with `more` TOML after the
/// user (sharded tables, tenancy).
pub async fn sharded_sidecar(shards: &[LocalPostgres], more: &str) -> Running {
    start(&sharded_toml(shards, more)).await
}

/// The configuration [`sharded_sidecar`] starts.
pub fn sharded_toml(shards: &[LocalPostgres], more: &str) -> String {
    let plain: Vec<(&LocalPostgres, Option<&LocalPostgres>)> =
        shards.iter().map(|s| (s, None)).collect();
    sharded_toml_with_replicas(&plain, more)
}

/// Like [`sharded_sidecar`], each shard with its replica if it has one.
pub async fn sharded_sidecar_with_replicas(
    shards: &[(&LocalPostgres, Option<&LocalPostgres>)],
    more: &str,
) -> Running {
    start(&sharded_toml_with_replicas(shards, more)).await
}

/// The configuration [`sharded_sidecar_with_replicas`] starts.
fn sharded_toml_with_replicas(
    shards: &[(&LocalPostgres, Option<&LocalPostgres>)],
    more: &str,
) -> String {
    let shard_lines: String = shards
        .iter()
        .map(|(primary, replica)| {
            let replicas = replica
                .map(|r| format!("\"{}\"", r.url("app", PASSWORD, "app")))
                .unwrap_or_default();
            format!(
                "[[database.shards]]\nprimary = \"{}\"\nreplicas = [{replicas}]\n",
                primary.url("app", PASSWORD, "app")
            )
        })
        .collect();
    format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [pool]\nsize = 2\n\n[[database]]\nname = \"app\"\n{shard_lines}\n\
         [[user]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n{more}"
    )
}

/// A shard server with the tenancy SQL and a tenant table under Row-Level Security.
pub fn tenant_shard_server() -> LocalPostgres {
    let pg = shard_server();
    let signer = pgsidecar::token::Signer::new(SIGNING_KEY.as_bytes()).expect("test key");
    pg.psql("app", &signer.install_sql(None))
        .expect("install the tenancy SQL");
    pg.psql(
        "app",
        "CREATE TABLE orders (tenant text NOT NULL DEFAULT pgsidecar.tenant(), id int); \
         ALTER TABLE orders OWNER TO app; ALTER TABLE orders ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE orders FORCE ROW LEVEL SECURITY; \
         CREATE POLICY own ON orders USING (tenant = pgsidecar.tenant());",
    )
    .expect("the orders table");
    pg
}
