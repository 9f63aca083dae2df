//! RELOAD against real servers: a reload under pgbench load that shrinks and grows the pool and
//! adds a database loses no transaction; an invalid file changes nothing; a tenant placed on
//! another shard moves there at its next transaction while the other tenants stay.

mod support;

use support::shards::*;
use support::*;

/// `base_toml` for `name`, plus a second database and user `extra` when given.
fn two_databases(name: &str, pool: &str, extra: Option<&str>) -> String {
    let mut toml = base_toml(name, pool);
    if let Some(other) = extra {
        toml.push_str(&format!(
            "\n[[database]]\nname = \"{other}\"\nprimary = \"{}\"\n\n[[user]]\nname = \"{other}\"\npassword = \"{PASSWORD}\"\n",
            pg().url(other, PASSWORD, other)
        ));
    }
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_changes_pools_and_adds_a_database_without_failures() {
    let name = fresh_user("reload");
    let added = fresh_user("reload_added");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, two_databases(&name, "size = 4", None)).unwrap();
    let sidecar = start_from_file(&path).await;
    let port = sidecar.addr.port();
    let bench = {
        let name = name.clone();
        tokio::spawn(async move {
            pgbench(port, &name, true, &["-c", "4", "-t", "1000"], 4000).await;
        })
    };
    // Reload while transactions run: a smaller pool, then a larger one with a new database.
    until_metric_at_least(sidecar.metrics_addr, "pgsidecar_transactions_total", 200.0).await;
    std::fs::write(&path, two_databases(&name, "size = 2", None)).unwrap();
    sidecar.app.reload().expect("reload to a smaller pool");
    until_metric_at_least(sidecar.metrics_addr, "pgsidecar_transactions_total", 600.0).await;
    std::fs::write(&path, two_databases(&name, "size = 6", Some(&added))).unwrap();
    let notes = sidecar.app.reload().expect("reload with a new database");
    assert!(notes.needs_restart.is_empty(), "{notes:?}");
    bench
        .await
        .expect("pgbench ran every transaction, none failed");
    let client = connect(sidecar.addr, &added, PASSWORD, &added)
        .await
        .expect("the added database serves");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // An invalid file is refused whole: the old configuration keeps serving.
    std::fs::write(&path, "listen = \"nowhere\"\n").unwrap();
    let err = sidecar.app.reload().unwrap_err();
    assert!(err.to_string().contains("listen"), "{err}");
    let old = connect(sidecar.addr, &name, PASSWORD, &name)
        .await
        .expect("still serving");
    old.query_one("SELECT 1", &[]).await.unwrap();
    // A listen address change needs a restart: applied otherwise, and said.
    let moved = two_databases(&name, "size = 6", Some(&added))
        .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"127.0.0.1:1\"");
    std::fs::write(&path, moved).unwrap();
    let notes = sidecar.app.reload().unwrap();
    assert_eq!(notes.needs_restart, vec!["listen"]);
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    let count = |result: &str| {
        metric(
            &metrics,
            &format!("pgsidecar_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(count("ok"), Some(3.0), "{metrics}");
    assert_eq!(count("error"), Some(1.0), "{metrics}");
}

/// Polls `/metrics` until the counter `name` reaches `value`.
async fn until_metric_at_least(metrics_addr: std::net::SocketAddr, name: &str, value: f64) {
    for _ in 0..600 {
        let (_, text) = http_get(metrics_addr, "/metrics").await;
        if metric(&text, name).is_some_and(|v| v >= value) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{name} did not reach {value} within 30 s");
}

/// The tenants whose rows shard `n` holds, sorted, comma-separated.
fn tenants_on(shard: &pgsidecar::localpg::LocalPostgres, id: i32) -> String {
    shard
        .psql(
            "app",
            &format!(
                "SET row_security = off; \
                 SELECT string_agg(DISTINCT tenant, ',' ORDER BY tenant) FROM orders WHERE id = {id}"
            ),
        )
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_reload_moves_one_tenant_to_another_shard() {
    let shards: Vec<_> = (0..3).map(|_| tenant_shard_server()).collect();
    let placed = |shard: usize| {
        format!(
            "{TENANCY}shard_by = \"tenant\"\n\n[[tenant_shard]]\ntenant = \"acme\"\nshard = {shard}\n\n\
             [[tenant_shard]]\ntenant = \"globex\"\nshard = 1\n"
        )
    };
    // The sidecar's file: what `sharded_sidecar` would start, acme on shard 2.
    let file = |shard: usize| sharded_toml(&shards, &placed(shard));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, file(2)).unwrap();
    let sidecar = start_from_file(&path).await;
    let acme = tenant_client(&sidecar, "app", "acme").await;
    let globex = tenant_client(&sidecar, "app", "globex").await;
    for client in [&acme, &globex] {
        client
            .execute("INSERT INTO orders (id) VALUES (1)", &[])
            .await
            .unwrap();
    }
    assert_eq!(tenants_on(&shards[2], 1), "acme");
    assert_eq!(tenants_on(&shards[1], 1), "globex");
    // Move acme to shard 0: its connected client's next transaction runs there.
    std::fs::write(&path, file(0)).unwrap();
    sidecar.app.reload().expect("reload");
    for client in [&acme, &globex] {
        client
            .batch_execute("BEGIN; INSERT INTO orders (id) VALUES (2); COMMIT")
            .await
            .unwrap();
    }
    let fresh = tenant_client(&sidecar, "app", "acme").await;
    fresh
        .execute("INSERT INTO orders (id) VALUES (2)", &[])
        .await
        .unwrap();
    assert_eq!(tenants_on(&shards[0], 2), "acme", "acme moved to shard 0");
    assert_eq!(
        tenants_on(&shards[2], 2),
        "",
        "nothing new for acme on shard 2"
    );
    assert_eq!(tenants_on(&shards[1], 2), "globex", "globex stayed");
    let seen: i64 = acme
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 2, "acme reads its rows on its new shard");
}
