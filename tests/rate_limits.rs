//! Per-tenant statement rates against a real server: under pgbench, a tenant limited to 200
//! statements a second never gets more than its bucket allows while another tenant is never
//! throttled; `on_limit = "refuse"` answers 53400 at once, fails a transaction as Postgres
//! would and still lets the client end it; RELOAD changes (here: lifts) a tenant's rate live.

mod support;

use std::path::Path;
use std::time::Instant;

use support::*;

/// A database with the tenancy SQL installed, and the sidecar TOML for it with `tenancy` lines
/// and `more` (tenant limits) appended.
fn setup(prefix: &str, tenancy: &str, more: &str) -> (String, String) {
    let name = fresh_user(prefix);
    install_tenancy_sql(&name);
    let toml = base_toml(&name, "size = 4\ncheckout_timeout = \"5s\"") + TENANCY + tenancy + more;
    (name, toml)
}

/// `pgbench -f script` through the sidecar as `user` for `seconds`: (processed, tps).
async fn bench(port: u16, user: &str, db: &str, script: &Path, seconds: u32) -> (u64, f64) {
    let port = port.to_string();
    let seconds = seconds.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        user,
        "-n",
        "-c",
        "2",
        "-M",
        "simple",
        "-T",
        &seconds,
        "-f",
        script.to_str().unwrap(),
        db,
    ];
    let out = run_pg_program("pgbench", &args, PASSWORD).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"))
    };
    (
        field("number of transactions actually processed: ") as u64,
        field("tps = "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_tenant_stays_within_its_rate_and_others_are_unaffected() {
    let (name, toml) = setup(
        "rates",
        "",
        "\n[[tenant_limit]]\ntenant = \"acme\"\nmax_statements_per_second = 200\n",
    );
    let sidecar = start(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let port = sidecar.addr.port();
    let started = Instant::now();
    let acme_user = format!("{name}.acme");
    let globex_user = format!("{name}.globex");
    let (acme, globex) = tokio::join!(
        bench(port, &acme_user, &name, &script, 3),
        bench(port, &globex_user, &name, &script, 3),
    );
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "acme (200/s): {} statements, {:.1}/s; globex (no limit): {} statements, {:.1}/s; {elapsed:.2} s",
        acme.0, acme.1, globex.0, globex.1
    );
    // The bucket holds at most one second's worth (200) and refills at 200/s: over the whole
    // run acme cannot have had more, however fast or slow the machine.
    let bound = 200.0 + 200.0 * elapsed;
    assert!(
        (acme.0 as f64) <= bound,
        "acme ran {} statements in {elapsed:.2} s (bound {bound:.0})",
        acme.0
    );
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "pgsidecar_tenant_throttled_total{tenant=\"globex\"}"
        ),
        None,
        "globex is never throttled: {metrics}"
    );
}

#[tokio::test]
async fn refused_statements_get_53400_and_reload_changes_the_rate() {
    let limit = |per_second: &str| {
        format!(
            "\n[[tenant_limit]]\ntenant = \"acme\"\nmax_statements_per_second = {per_second}\nburst = 1\n"
        )
    };
    let (name, toml) = setup("refuse", "on_limit = \"refuse\"\n", &limit("0.001"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, &toml).unwrap();
    let sidecar = start_from_file(&path).await;
    let acme = tenant_client(&sidecar, &name, "acme").await;
    let globex = tenant_client(&sidecar, &name, "globex").await;
    // One token, then none for a thousand seconds.
    acme.simple_query("SELECT 1").await.unwrap();
    let err = acme.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53400"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("acme") && message.contains("max_statements_per_second"),
        "{message}"
    );
    // Extended protocol too.
    let err = acme.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53400"), "{err}");
    // Inside a transaction the refusal fails it, as an error there would; the client can
    // still end it (transaction control takes no token).
    acme.batch_execute("BEGIN").await.unwrap();
    let err = acme.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53400"), "{err}");
    let err = acme.simple_query("SELECT 2").await.unwrap_err();
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("25P02") | Some("53400")),
        "{err}"
    );
    acme.batch_execute("ROLLBACK").await.unwrap();
    // Others are not limited.
    for _ in 0..20 {
        globex.simple_query("SELECT 1").await.unwrap();
    }
    // RELOAD without acme's limit: it runs again, on the same connection.
    std::fs::write(&path, toml.replace(&limit("0.001"), "")).unwrap();
    sidecar.app.reload().expect("reload");
    for _ in 0..5 {
        acme.simple_query("SELECT 1")
            .await
            .expect("no limit any more");
    }
    let (_, metrics) = http_get(sidecar.metrics_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "pgsidecar_tenant_throttled_total{tenant=\"acme\"}"
        )
        .is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
}
