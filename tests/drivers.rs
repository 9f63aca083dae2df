//! Real drivers against the sidecar in transaction mode with fewer server connections than
//! clients: Python's psycopg 3 (from PyPI, in a virtualenv under `target/pydeps` that `.ci/run`
//! prepares and this test creates when missing) with server-side prepared statements, pipeline
//! mode, transactions, COPY and notifications; psql and pgbench are in `clients.rs`.

mod support;

use std::path::PathBuf;

use support::*;

/// The virtualenv's python, with psycopg installed (created on first use).
fn python_with_psycopg() -> PathBuf {
    // The tests of this binary run at once: one creates the virtualenv, the others wait.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pydeps");
    let python = venv.join("bin/python");
    let has_psycopg = |python: &PathBuf| {
        std::process::Command::new(python)
            .args(["-c", "import psycopg"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_psycopg(&python) {
        return python;
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is needed for the psycopg driver test");
    assert!(made.success(), "python3 -m venv {venv:?} failed");
    let installed = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "psycopg[binary]>=3.1,<4"])
        .status()
        .expect("pip runs");
    assert!(
        installed.success(),
        "pip install psycopg[binary] failed (PyPI must be reachable, or run .ci/run)"
    );
    assert!(has_psycopg(&python), "psycopg still not importable");
    python
}

/// Runs a script under `tests/drivers` against the sidecar; asserts it printed "ok".
async fn run_script(script: &str, sidecar: &pgsidecar::listener::Running, name: &str) {
    let python = tokio::task::spawn_blocking(python_with_psycopg)
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(script);
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", sidecar.addr.port().to_string())
        .env("PGUSER", name)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", name)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_prepared_pipeline_copy_and_notifications() {
    let name = fresh_user("psycopg");
    let sidecar = start(&base_toml(&name, "size = 2\ncheckout_timeout = \"30s\"")).await;
    run_script("psycopg_check.py", &sidecar, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_cannot_tell_the_sidecar_from_postgres() {
    for mode in ["transaction", "session"] {
        let name = fresh_user("psycopg_transparent");
        let pool = format!("mode = \"{mode}\"\nsize = 3\ncheckout_timeout = \"30s\"");
        let sidecar = start(&base_toml(&name, &pool)).await;
        run_script("psycopg_transparency.py", &sidecar, &name).await;
    }
}
