//! Shard servers and a sidecar in front of them, for the sharding tests.

use pgsidecar::listener::Running;
use pgsidecar::localpg::LocalPostgres;

use super::{start, PASSWORD};

/// A shard server: its own PostgreSQL with database `app` owned by role app.
pub fn shard_server() -> LocalPostgres {
    let pg = LocalPostgres::start("").expect("start a shard server");
    pg.create_user_and_database("app", PASSWORD, "app")
        .expect("role and database");
    pg
}

/// A sidecar in front of `shards` (database `app`, user app), with `more` TOML after the
/// user (sharded tables, tenancy).
pub async fn sharded_sidecar(shards: &[LocalPostgres], more: &str) -> Running {
    let plain: Vec<(&LocalPostgres, Option<&LocalPostgres>)> =
        shards.iter().map(|s| (s, None)).collect();
    sharded_sidecar_with_replicas(&plain, more).await
}

/// Like [`sharded_sidecar`], each shard with its replica if it has one.
pub async fn sharded_sidecar_with_replicas(
    shards: &[(&LocalPostgres, Option<&LocalPostgres>)],
    more: &str,
) -> Running {
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
    start(&format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [pool]\nsize = 2\n\n[[database]]\nname = \"app\"\n{shard_lines}\n\
         [[user]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n{more}"
    ))
    .await
}
