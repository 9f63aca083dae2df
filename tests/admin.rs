//! The admin console over real connections: psql's simple protocol and a driver's extended
//! protocol; every SHOW; refusals (not an admin: 42501; unknown command: 42601, the session
//! goes on); PAUSE holds new queries until RESUME; RECONNECT replaces server connections
//! without client errors; KILL_CLIENT ends exactly one client; KILL ends a database's clients;
//! RELOAD through the console (and a refused one); SHUTDOWN.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::SimpleQueryMessage;

const ADMIN: &str = "\n[[user]]\nname = \"admin\"\npassword = \"secret\"\nadmin = true\n";

/// A sidecar for database `name` (pool 2, a long checkout timeout) with an admin user.
async fn sidecar(name: &str) -> pgsidecar::listener::Running {
    start(&(base_toml(name, "size = 2\ncheckout_timeout = \"20s\"") + ADMIN)).await
}

async fn admin(sidecar: &pgsidecar::listener::Running) -> tokio_postgres::Client {
    connect(sidecar.addr, "admin", PASSWORD, "pgsidecar")
        .await
        .expect("admin console login")
}

/// A console command's rows as column-name → value maps (simple protocol).
async fn rows(client: &tokio_postgres::Client, command: &str) -> Vec<Vec<(String, String)>> {
    client
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn field<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_in_both_protocols_and_clear_refusals() {
    let name = fresh_user("console");
    let sidecar = sidecar(&name).await;
    let client = connect(sidecar.addr, &name, PASSWORD, &name).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let console = admin(&sidecar).await;
    let pools = rows(&console, "SHOW POOLS").await;
    let pool = pools
        .iter()
        .find(|r| field(r, "database") == name)
        .expect("the database's pool");
    for column in [
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "pool_mode",
    ] {
        field(pool, column);
    }
    assert_eq!(field(pool, "sv_idle"), "1", "{pool:?}");
    assert_eq!(field(pool, "cl_active"), "1", "{pool:?}");
    for (show, column) in [
        ("SHOW STATS", "total_query_count"),
        ("SHOW STATS_TOTALS", "query_count"),
        ("SHOW STATS_AVERAGES", "query_count"),
        ("SHOW CLIENTS", "application_name"),
        ("SHOW SERVERS", "remote_pid"),
        ("SHOW DATABASES", "pool_size"),
        ("SHOW CONFIG", "changeable"),
        ("SHOW LISTS", "items"),
        ("SHOW VERSION", "version"),
        ("SHOW HELP", "command"),
        ("SHOW PREPARED", "prepared_statements"),
    ] {
        let found = rows(&console, show).await;
        assert!(!found.is_empty(), "{show}");
        field(&found[0], column);
    }
    for show in ["SHOW TENANTS", "SHOW REPLICAS", "SHOW SHARDS"] {
        console.simple_query(show).await.unwrap();
    }
    let version = rows(&console, "show version;").await;
    assert!(field(&version[0], "version").starts_with("pgsidecar "));
    let config = rows(&console, "SHOW CONFIG").await;
    let size = config
        .iter()
        .find(|r| field(r, "key") == "pool.size")
        .unwrap();
    assert_eq!(field(size, "value"), "2");
    assert_eq!(field(size, "default"), "20");
    assert!(
        config.iter().all(|r| !field(r, "value").contains(PASSWORD)),
        "no secret in SHOW CONFIG"
    );
    // The extended protocol, with typed columns.
    let typed = console.query("SHOW POOLS", &[]).await.unwrap();
    let row = typed
        .iter()
        .find(|r| r.get::<_, String>("database") == name)
        .unwrap();
    assert_eq!(row.get::<_, i64>("sv_idle"), 1);
    let clients = console.query("SHOW CLIENTS", &[]).await.unwrap();
    assert!(clients
        .iter()
        .any(|r| r.get::<_, String>("database") == name));
    // Refusals: an unknown command (the session goes on), and a user who is not an admin.
    let err = console.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"), "{err}");
    let err = console.query("SHOW NOTHING", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"), "{err}");
    console.simple_query("SHOW VERSION").await.unwrap();
    let err = connect(sidecar.addr, &name, PASSWORD, "pgsidecar")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    // psql, as operators use it.
    let port = sidecar.addr.port().to_string();
    let out = run_pg_program(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "admin",
            "-d",
            "pgsidecar",
            "-c",
            "SHOW POOLS",
        ],
        PASSWORD,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cl_active") && text.contains(&name), "{text}");
}

/// Polls `SHOW CLIENTS` until a client with `application_name` is in `state`; its id.
async fn client_id(console: &tokio_postgres::Client, app_name: &str, state: &str) -> String {
    for _ in 0..400 {
        let clients = rows(console, "SHOW CLIENTS").await;
        if let Some(c) = clients
            .iter()
            .find(|r| field(r, "application_name") == app_name && field(r, "state") == state)
        {
            return field(c, "id").to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no client {app_name} in state {state}");
}

async fn named_client(
    sidecar: &pgsidecar::listener::Running,
    name: &str,
    app: &str,
) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(sidecar.addr.port())
        .user(name)
        .password(PASSWORD)
        .dbname(name)
        .application_name(app)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_reconnect_and_kill() {
    let name = fresh_user("console_ops");
    let sidecar = sidecar(&name).await;
    let console = admin(&sidecar).await;
    let holder = named_client(&sidecar, &name, "holder").await;
    let waiter = named_client(&sidecar, &name, "waiter").await;
    // PAUSE waits for the transaction in progress to release its connection.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pausing = {
        let console = admin(&sidecar).await;
        tokio::spawn(async move { console.simple_query("PAUSE").await.map(|_| ()) })
    };
    for _ in 0..400 {
        let dbs = rows(&console, "SHOW DATABASES").await;
        if dbs
            .iter()
            .any(|r| field(r, "name") == name && field(r, "paused") == "1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !pausing.is_finished(),
        "PAUSE waits for the open transaction"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    pausing
        .await
        .unwrap()
        .expect("PAUSE completes once released");
    // While paused a new query waits; RESUME lets it run.
    let query = tokio::spawn(async move {
        waiter
            .query_one("SELECT 41 + 1", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    client_id(&console, "waiter", "waiting").await;
    console.simple_query("RESUME").await.unwrap();
    assert_eq!(query.await.unwrap().unwrap(), 42);
    // RECONNECT: the next query runs on a new server connection, without an error.
    let before = backend_pid(&holder).await;
    console
        .simple_query(&format!("RECONNECT {name}"))
        .await
        .unwrap();
    let after = backend_pid(&holder).await;
    assert_ne!(before, after, "a new server connection");
    // KILL_CLIENT ends exactly that client.
    let other = named_client(&sidecar, &name, "other").await;
    other.simple_query("SELECT 1").await.unwrap();
    let id = client_id(&console, "holder", "active").await;
    console
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .unwrap();
    assert!(holder.simple_query("SELECT 1").await.is_err(), "killed");
    other
        .simple_query("SELECT 1")
        .await
        .expect("the other client lives");
    let err = console.simple_query("KILL_CLIENT 12345").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42704"), "{err}");
    // KILL ends the database's clients (not the console's).
    console.simple_query(&format!("KILL {name}")).await.unwrap();
    assert!(
        other.simple_query("SELECT 1").await.is_err(),
        "killed with its database"
    );
    console
        .simple_query("SHOW VERSION")
        .await
        .expect("the console lives");
    let err = console.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err}");
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn reload_and_shutdown_from_the_console() {
    let name = fresh_user("console_reload");
    let added = fresh_user("console_added");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let toml = base_toml(&name, "size = 2") + ADMIN;
    std::fs::write(&path, &toml).unwrap();
    let sidecar = start_from_file(&path).await;
    let console = admin(&sidecar).await;
    std::fs::write(
        &path,
        format!(
            "{toml}\n[[database]]\nname = \"{added}\"\nprimary = \"{}\"\n\n[[user]]\nname = \"{added}\"\npassword = \"{PASSWORD}\"\n",
            pg().url(&added, PASSWORD, &added)
        ),
    )
    .unwrap();
    console.simple_query("RELOAD").await.unwrap();
    let client = connect(sidecar.addr, &added, PASSWORD, &added)
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    std::fs::write(&path, "[[database]]\n").unwrap();
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("F0000"), "{err}");
    client
        .simple_query("SELECT 1")
        .await
        .expect("still serving");
    // SHUTDOWN: the sidecar stops; every client is told.
    let _ = console.simple_query("SHUTDOWN").await;
    tokio::time::timeout(Duration::from_secs(30), sidecar.app.stopped.cancelled())
        .await
        .expect("the sidecar stopped");
    assert!(client.simple_query("SELECT 1").await.is_err());
    assert!(connect(sidecar.addr, &name, PASSWORD, &name).await.is_err());
}
