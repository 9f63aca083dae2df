//! The `pgsidecar` command line (clap): `run`, `check`, `tenancy-sql`, `shard-of` and `demo`. Loads the configuration once,
//! starts the [`pgsidecar::app`], and turns signals into the sidecar shutdown sequence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pgsidecar::config::{Config, ConfigError, Overrides, PoolMode, ShardQuestion};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "pgsidecar",
    version,
    about = "A Postgres proxy for sidecar deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Validate a configuration offline and print the effective configuration (secrets masked).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Also connect to every upstream and warn about unsafe roles.
        #[arg(long)]
        connect: bool,
    },
    /// Print the SQL that installs `pgsidecar.tenant()` and the signing key of `[tenancy]`;
    /// run it once per database as its owner (psql -f). Running it twice is harmless.
    TenancySql {
        #[arg(long)]
        config: PathBuf,
        /// Key rotation: keys installed before stay valid until this time (an SQL timestamp,
        /// e.g. "2026-12-01 12:00+00"); without it, this key becomes the only one.
        #[arg(long, value_name = "UNTIL")]
        rotate: Option<String>,
    },
    /// Print statement-level triggers for the result cache's whitelisted tables that announce
    /// every committed write, so writers that bypass the sidecars invalidate the caches too;
    /// run it once per database as the tables' owner.
    CacheSql {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the shard (0-based) that owns a sharded table's key, or a tenant.
    ShardOf {
        #[arg(long)]
        config: PathBuf,
        /// The sharded database (needed when several are sharded).
        #[arg(long)]
        database: Option<String>,
        /// A `[[sharded_table]]` (`table` or `schema.table`), with --key.
        #[arg(long, requires = "key", conflicts_with = "tenant")]
        table: Option<String>,
        /// The key, as it would be written in SQL (without quotes; negative numbers too).
        #[arg(long, requires = "table", allow_hyphen_values = true)]
        key: Option<String>,
        /// A tenant (with `[tenancy] shard_by = "tenant"`).
        #[arg(long, required_unless_present = "table")]
        tenant: Option<String>,
    },
    /// Start a throwaway local PostgreSQL and run the proxy in front of it.
    Demo {
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9930")]
        metrics_listen: SocketAddr,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The TOML configuration file.
    #[arg(
        long,
        conflicts_with = "upstream",
        required_unless_present = "upstream"
    )]
    config: Option<PathBuf>,
    /// Zero-config form: one upstream URL; clients log in with its user and password.
    #[arg(long)]
    upstream: Option<String>,
    #[arg(long, env = "PGSIDECAR_LISTEN")]
    listen: Option<SocketAddr>,
    #[arg(long, env = "PGSIDECAR_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "PGSIDECAR_POOL_SIZE")]
    pool_size: Option<usize>,
    #[arg(long, env = "PGSIDECAR_POOL_MODE", value_enum)]
    pool_mode: Option<PoolMode>,
    /// After SIGTERM, keep serving this long (e.g. `5s`) before draining.
    #[arg(long, env = "PGSIDECAR_SHUTDOWN_DELAY", value_parser = pgsidecar::config::parse_duration)]
    shutdown_delay: Option<std::time::Duration>,
    /// Let running transactions finish this long (e.g. `30s`) before closing every session.
    #[arg(long, env = "PGSIDECAR_DRAIN_TIMEOUT", value_parser = pgsidecar::config::parse_duration)]
    drain_timeout: Option<std::time::Duration>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            pool_size: self.pool_size,
            pool_mode: self.pool_mode,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
        }
    }

    /// The configuration file RELOAD reads again (none with `--upstream`).
    fn file(&self) -> Option<pgsidecar::app::ConfigFile> {
        self.config.as_ref().map(|path| pgsidecar::app::ConfigFile {
            path: path.clone(),
            overrides: self.overrides(),
        })
    }

    fn load(&self) -> Result<Config, ConfigError> {
        let overrides = self.overrides();
        match (&self.config, &self.upstream) {
            (Some(path), _) => Config::from_file(path, &overrides),
            (None, Some(url)) => Config::from_upstream(url, &overrides),
            (None, None) => unreachable!("clap requires --config or --upstream"),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // PGSIDECAR_WORKERS: runtime worker threads (default: one per core); 1 runs everything on
    // a single thread, as PgBouncer does.
    let workers = std::env::var("PGSIDECAR_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|w| *w > 0);
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgsidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => match args.load() {
            Ok(config) => runtime.block_on(run(config, args.file())),
            Err(e) => {
                eprintln!("pgsidecar: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config, connect } => runtime.block_on(check(&config, connect)),
        Command::TenancySql { config, rotate } => tenancy_sql(&config, rotate.as_deref()),
        Command::CacheSql { config } => cache_sql(&config),
        Command::ShardOf {
            config,
            database,
            table,
            key,
            tenant,
        } => {
            let question = match (&table, &key, &tenant) {
                (Some(table), Some(key), _) => ShardQuestion::Row { table, key },
                (_, _, Some(tenant)) => ShardQuestion::Tenant(tenant),
                _ => unreachable!("clap requires --table and --key, or --tenant"),
            };
            let answer = Config::from_file(&config, &Overrides::default())
                .map_err(|e| e.to_string())
                .and_then(|c| c.shard_of(database.as_deref(), question));
            match answer {
                Ok(shard) => {
                    println!("{shard}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pgsidecar: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            listen,
            metrics_listen,
        } => runtime.block_on(demo(listen, metrics_listen)),
    }
}

async fn run(config: Config, file: Option<pgsidecar::app::ConfigFile>) -> ExitCode {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("pgsidecar: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Every client and every server connection is a file descriptor: take what the hard
    // limit allows instead of failing at the soft limit's 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let running = match pgsidecar::listener::start_from(config, file).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgsidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = running.app;
    admin_signals(&app);
    tokio::select! {
        // The admin console's SHUTDOWN drained already.
        _ = app.stopped.cancelled() => {
            tracing::info!("stopped (admin SHUTDOWN)");
            return ExitCode::SUCCESS;
        }
        _ = term.recv() => {
            let delay = app.live().config.shutdown_delay;
            tracing::info!(?delay, "SIGTERM: still serving for shutdown_delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ = int.recv() => {}
    }
    tracing::info!(drain_timeout = ?app.live().config.drain_timeout, "draining: no new clients");
    app.drain().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP = RELOAD, SIGUSR1 = PAUSE, SIGUSR2 = RESUME (as PgBouncer).
fn admin_signals(app: &std::sync::Arc<pgsidecar::app::App>) {
    if let Ok(mut hup) = signal(SignalKind::hangup()) {
        let app = std::sync::Arc::clone(app);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // RELOAD: the file again (TLS files included); the outcome is logged there.
                // Without a file (`--upstream`), the TLS files alone.
                if let Err(pgsidecar::app::ReloadError::NoFile) = app.reload() {
                    if let Err(e) = app.reload_tls() {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificates")
                    }
                }
            }
        });
    }
    if let (Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) {
        let app = std::sync::Arc::clone(app);
        tokio::spawn(async move {
            loop {
                let pools: Vec<_> = app.live().all().flat_map(|d| d.pools().cloned()).collect();
                tokio::select! {
                    Some(()) = usr1.recv() => {
                        tracing::info!("SIGUSR1: PAUSE");
                        // Waits for the connections in use; a SIGUSR2 meanwhile resumes.
                        tokio::spawn(async move {
                            futures_util::future::join_all(pools.iter().map(|p| p.pause())).await;
                            tracing::info!("SIGUSR1: paused");
                        });
                    }
                    Some(()) = usr2.recv() => {
                        tracing::info!("SIGUSR2: RESUME");
                        pools.iter().for_each(|p| p.resume());
                    }
                    else => return,
                }
            }
        });
    }
}

async fn check(path: &std::path::Path, connect: bool) -> ExitCode {
    let config = match Config::from_file(path, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsidecar: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    print!("{}", config.describe());
    if !connect {
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for db in &config.databases {
        let options = match pgsidecar::pool::ConnectOptions::for_url(
            &db.primary,
            config.pool.connect_timeout,
            config.pool.tcp_keepalive,
        ) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("pgsidecar: database {}: {e}", db.name);
                ok = false;
                continue;
            }
        };
        match pgsidecar::pool::ServerConn::connect(0, &db.primary, &[], &options).await {
            Ok(mut conn) => {
                println!(
                    "# database {}: connected to {}",
                    db.name,
                    db.primary.masked()
                );
                match pgsidecar::pool::audit::audit_role(&mut conn, config.tenancy.as_ref()).await {
                    Ok(warnings) => {
                        for warning in warnings {
                            println!("# WARNING: upstream user {:?} {warning}", db.primary.user);
                        }
                    }
                    Err(e) => eprintln!(
                        "pgsidecar: database {}: could not check the upstream role: {e}",
                        db.name
                    ),
                }
                if db.two_phase_commit {
                    ok &= check_two_phase(db, &config.pool).await;
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("pgsidecar: database {}: {e}", db.name);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `check --connect` of every shard of a database with two-phase commit: can it prepare?
async fn check_two_phase(
    db: &pgsidecar::config::DatabaseConfig,
    pool: &pgsidecar::config::PoolConfig,
) -> bool {
    let mut ok = true;
    for (n, shard) in db.shards.iter().enumerate() {
        let connected = match pgsidecar::pool::ConnectOptions::for_url(
            &shard.primary,
            pool.connect_timeout,
            pool.tcp_keepalive,
        ) {
            Ok(options) => pgsidecar::pool::ServerConn::connect(0, &shard.primary, &[], &options)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(mut conn) => {
                match pgsidecar::pool::audit::audit_two_phase(&mut conn, pool.size).await {
                    Ok(Some(warning)) => {
                        println!("# WARNING: database {} shard {n} {warning}", db.name)
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("pgsidecar: database {} shard {n}: {e}", db.name),
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("pgsidecar: database {} shard {n}: {e}", db.name);
            }
        }
    }
    ok
}

fn cache_sql(path: &std::path::Path) -> ExitCode {
    let config = match Config::from_file(path, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsidecar: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match &config.cache {
        Some(cache) => {
            print!("{}", pgsidecar::cache::cache_sql(cache));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("pgsidecar: {}: no [cache] section", path.display());
            ExitCode::FAILURE
        }
    }
}

fn tenancy_sql(path: &std::path::Path, rotate: Option<&str>) -> ExitCode {
    let config = match Config::from_file(path, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsidecar: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match config.tenancy.as_ref().and_then(|t| t.signer.as_ref()) {
        Some(signer) => {
            print!("{}", signer.install_sql(rotate));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "pgsidecar: {}: no [tenancy] signing_key or signing_key_file",
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

async fn demo(listen: SocketAddr, metrics_listen: SocketAddr) -> ExitCode {
    eprintln!("pgsidecar demo: starting a throwaway PostgreSQL primary and streaming replica…");
    let set_up =
        tokio::task::spawn_blocking(move || pgsidecar::demo::setup(listen, metrics_listen)).await;
    let demo = match set_up {
        Ok(Ok(demo)) => demo,
        Ok(Err(e)) => {
            eprintln!("pgsidecar demo: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("pgsidecar demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::from_toml(&demo.config, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsidecar demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in pgsidecar::demo::try_lines(&demo, listen, metrics_listen) {
        eprintln!("pgsidecar demo: {line}");
    }
    eprintln!("pgsidecar demo: Ctrl-C stops everything and removes the data");
    let code = run(config, None).await;
    drop(demo);
    code
}
