//! Throwaway local PostgreSQL servers for `pgsidecar demo` and the integration tests: initdb into
//! a fresh directory, a free loopback port, scram-sha-256 for TCP connections. Run as the
//! `postgres` OS user when the process is root (initdb refuses root).
//!
//! The server is supervised by a small shell that stops it and removes its directory as soon as
//! this process closes the shell's stdin — on drop, or when the process exits for any reason —
//! so no server outlives the program that started it. Nothing here is used on the proxy path.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a local server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL binaries not found (looked in $PG_BIN, $PATH and /usr/lib/postgresql/*/bin)"
    )]
    NoBinaries,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the PostgreSQL server did not start: {0}")]
    Start(String),
    #[error("psql failed: {0}")]
    Psql(String),
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A running throwaway PostgreSQL server.
pub struct LocalPostgres {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    options: String,
    owner: Option<(u32, u32)>,
    supervisor: Child,
    stdin: Option<ChildStdin>,
}

const SUPERVISOR: &str = r#"
# Signals aimed at the whole process group (Ctrl-C, `timeout`) must not kill the supervisor
# before it stops the server: it stops when its stdin closes, however the parent ended.
trap '' INT TERM HUP
set -e
dir="$1"; port="$2"; bin="$3"; opts="$4"; hba="$5"; primary_dir="$6"; primary_port="$7"
trap 'rm -rf "$dir"' EXIT
if [ -n "$primary_dir" ]; then
  # A streaming replica of the primary whose socket is in $primary_dir.
  # Its own replication slot keeps the WAL it needs while other backups checkpoint.
  "$bin/pg_basebackup" -D "$dir/data" -h "$primary_dir" -p "$primary_port" -U postgres -R -X stream \
      --checkpoint=fast --create-slot --slot="pgsc_$(basename "$dir" | tr -c 'a-z0-9\n' '_')" \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
else
  "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  { printf '%s\n' "$hba"; cat "$dir/data/pg_hba.conf"; } >"$dir/hba.tmp" && mv "$dir/hba.tmp" "$dir/data/pg_hba.conf"
fi
"$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "$opts" \
    start >/dev/null || { cat "$dir/postgres.log" >&2; exit 1; }
echo ready
cat >/dev/null || true
"$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
"#;

impl LocalPostgres {
    /// Starts a fresh server; `extra` is appended to the server options (`-c name=value …`).
    pub fn start(extra: &str) -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::start_with_hba(extra, "")
    }

    /// Like [`LocalPostgres::start`], with `hba` lines placed first in `pg_hba.conf` (for
    /// per-user authentication methods such as `md5` or `trust`).
    pub fn start_with_hba(extra: &str, hba: &str) -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::launch(extra, hba, None)
    }

    /// Starts a streaming replica of this server (pg_basebackup -R over its Unix socket);
    /// `extra` is appended to the replica's server options (e.g.
    /// `-c recovery_min_apply_delay=2s`). It stops on drop like any other.
    pub fn start_replica(&self, extra: &str) -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::launch(extra, "", Some((&self.dir, self.port)))
    }

    fn launch(
        extra: &str,
        hba: &str,
        primary: Option<(&Path, u16)>,
    ) -> Result<LocalPostgres, LocalPgError> {
        let bin = find_bin_dir().ok_or(LocalPgError::NoBinaries)?;
        // Base backups of one primary taken at once make each other's WAL disappear.
        let _one_backup_at_a_time = primary.map(|_| {
            static BACKUPS: std::sync::Mutex<()> = std::sync::Mutex::new(());
            BACKUPS.lock().unwrap_or_else(|e| e.into_inner())
        });
        // A free port can be taken by someone else (another server, a client's ephemeral
        // port) before the server binds it: then another port, a few times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match LocalPostgres::launch_on(&bin, free_port()?, extra, hba, primary) {
                Err(LocalPgError::Start(log))
                    if attempts < 5 && log.contains("Address already in use") => {}
                other => return other,
            }
        }
    }

    /// One attempt of [`LocalPostgres::launch`] on `port`.
    fn launch_on(
        bin: &Path,
        port: u16,
        extra: &str,
        hba: &str,
        primary: Option<(&Path, u16)>,
    ) -> Result<LocalPostgres, LocalPgError> {
        let bin = bin.to_path_buf();
        let dir = std::env::temp_dir().join(format!(
            "pgsidecar-pg-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c wal_keep_size=128MB {extra}",
            dir.display()
        );
        let owner = postgres_user_if_root();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("pgsidecar-localpg")
            .arg(&dir)
            .arg(port.to_string())
            .arg(&bin)
            .arg(&options)
            .arg(hba)
            .arg(primary.map(|(dir, _)| dir.as_os_str()).unwrap_or_default())
            .arg(
                primary
                    .map(|(_, port)| port.to_string())
                    .unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            cmd.uid(uid).gid(gid);
        }
        let mut supervisor = cmd.spawn()?;
        let stdout = supervisor
            .stdout
            .take()
            .ok_or_else(|| LocalPgError::Start("no stdout".into()))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut stderr) = supervisor.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut err);
            }
            let _ = supervisor.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(LocalPgError::Start(err));
        }
        let stdin = supervisor.stdin.take();
        Ok(LocalPostgres {
            port,
            dir,
            bin,
            options,
            owner,
            supervisor,
            stdin,
        })
    }

    /// Runs SQL as the superuser over the Unix socket and returns psql's unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, LocalPgError> {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(LocalPgError::Psql(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Creates a login role with a (SCRAM-stored) password and a database it owns.
    pub fn create_user_and_database(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<(), LocalPgError> {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE \"{user}\" LOGIN PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        )?;
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{database}\" OWNER \"{user}\""),
        )?;
        Ok(())
    }

    /// Stops the server (fast shutdown: clients get 57P01) until [`LocalPostgres::start_again`].
    pub fn stop(&self) -> Result<(), LocalPgError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Starts a server stopped by [`LocalPostgres::stop`] again, on the same port.
    pub fn start_again(&self) -> Result<(), LocalPgError> {
        let log = self.dir.join("postgres.log");
        let log = log.to_string_lossy();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &self.options])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), LocalPgError> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data")).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let output = cmd.output()?;
        if !output.status.success() {
            return Err(LocalPgError::Start(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(())
    }

    /// A TCP URL for this server.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The directory of the PostgreSQL client and server programs in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.supervisor.wait();
    }
}

/// The directory holding `initdb`, `pg_ctl` and `psql`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versioned.sort();
    if let Some(dir) = versioned.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The uid/gid of the `postgres` OS user when this process is root (the owner servers run as).
pub fn postgres_user_if_root() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let me = std::fs::metadata("/proc/self")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    if me != 0 {
        return None;
    }
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}
