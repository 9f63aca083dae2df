//! The [`App`] bundle — what the configuration built ([`Live`], swapped whole by RELOAD),
//! metrics, issued cancel keys and shutdown tokens — shared by every session. Passed down
//! explicitly; there is no global accessor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::{CancelRegistry, IssuedKey};
use crate::config::Config;
use crate::live::{self, BuildError, Builder, Live};
use crate::metrics::Metrics;
use crate::sql::signal::SignalKind;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a reload was refused (the old configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration was given on the command line, not in a file: nothing to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where the configuration came from, for RELOAD.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: std::path::PathBuf,
    pub overrides: crate::config::Overrides,
}

/// Everything a session needs, shared by all of them.
pub struct App {
    /// What the current configuration built; swapped whole by a reload.
    live: ArcSwap<Live>,
    /// Counts reloads, so a session notices one with a single load.
    generation: AtomicU64,
    /// Reloads one at a time.
    reloading: std::sync::Mutex<()>,
    file: Option<ConfigFile>,
    dialer: crate::stream::Dialer,
    pub metrics: Arc<Metrics>,
    mock_key: [u8; 32],
    rng: SystemRandom,
    cancels: CancelRegistry,
    /// Fires when the sidecar stops accepting clients; idle sessions close.
    pub draining: CancellationToken,
    /// Set with `draining` (a load, where the token's check takes a lock).
    draining_flag: std::sync::atomic::AtomicBool,
    /// Fires when the drain time is over; every session closes.
    pub terminate: CancellationToken,
    pub tracker: TaskTracker,
    /// The client-facing TLS acceptor; swapped on reload.
    tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// When the sidecar started (the console's averages).
    pub started: std::time::Instant,
    /// Fires when a drain has finished (the admin console's SHUTDOWN ends the process).
    pub stopped: CancellationToken,
    /// The two-phase commit coordinator, when `state_dir` is set.
    pub two_phase: Option<Arc<crate::pool::twophase::Coordinator>>,
}

/// What a reload changed that needs a restart to take effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadNotes {
    pub needs_restart: Vec<&'static str>,
}

impl App {
    /// Builds pools and prepares credentials; opens no connection yet.
    pub fn new(config: Config) -> Result<Arc<App>, AppError> {
        App::with_dialer(config, crate::stream::Dialer::Tcp)
    }

    /// As [`App::new`], with upstream connections opened by `dialer` (tests: in-process pipes).
    pub fn with_dialer(
        config: Config,
        dialer: crate::stream::Dialer,
    ) -> Result<Arc<App>, AppError> {
        App::with_source(config, dialer, None)
    }

    /// As [`App::with_dialer`]; RELOAD reads `file` again.
    pub fn with_source(
        config: Config,
        dialer: crate::stream::Dialer,
        file: Option<ConfigFile>,
    ) -> Result<Arc<App>, AppError> {
        let metrics = Arc::new(Metrics::new());
        let rng = SystemRandom::new();
        let terminate = CancellationToken::new();
        let tls = match &config.tls {
            Some(settings) => Some(crate::tls::acceptor(&settings.files)?),
            None => None,
        };
        let two_phase = match &config.state_dir {
            Some(dir) => Some(Arc::new(
                crate::pool::twophase::Coordinator::open(dir)
                    .map_err(|e| BuildError::User(e.to_string()))?,
            )),
            None => None,
        };
        let live = Live::build(
            config,
            None,
            &Builder {
                metrics: &metrics,
                dialer: &dialer,
                terminate: &terminate,
            },
        )?;
        let mut mock_key = [0u8; 32];
        rng.fill(&mut mock_key)
            .map_err(|_| BuildError::User("no randomness available".into()))?;
        Ok(Arc::new(App {
            live: ArcSwap::from_pointee(live),
            generation: AtomicU64::new(0),
            reloading: std::sync::Mutex::new(()),
            file,
            dialer,
            metrics,
            mock_key,
            rng,
            cancels: CancelRegistry::default(),
            tls: arc_swap::ArcSwapOption::new(tls.map(Arc::new)),
            draining: CancellationToken::new(),
            draining_flag: std::sync::atomic::AtomicBool::new(false),
            terminate,
            tracker: TaskTracker::new(),
            started: std::time::Instant::now(),
            stopped: CancellationToken::new(),
            two_phase,
        }))
    }

    /// What the current configuration built (configuration, databases, users, tenancy,
    /// classifier).
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// As [`App::live`], to keep across awaits (a login).
    pub fn live_arc(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The number of reloads so far: a session whose copy differs looks its database up again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// RELOAD: reads the configuration file again and applies it (see [`App::reload_with`]).
    pub fn reload(&self) -> Result<ReloadNotes, ReloadError> {
        let file = self.file.as_ref().ok_or(ReloadError::NoFile);
        let result =
            file.and_then(|f| Config::from_file(&f.path, &f.overrides).map_err(ReloadError::from));
        match result {
            Ok(config) => self.reload_with(config),
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "reload refused; the old configuration stays");
                Err(e)
            }
        }
    }

    /// Applies `config` without dropping a client: users, databases (added; removed ones
    /// serve their sessions until they leave; changed ones get new pools that sessions move
    /// to at their next transaction), tenancy, TLS files, classifier settings. Invalid, it
    /// changes nothing. Listen addresses and the pool mode need a restart (listed in the
    /// notes).
    pub fn reload_with(&self, config: Config) -> Result<ReloadNotes, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.apply(config);
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(notes) => {
                tracing::info!(needs_restart = ?notes.needs_restart, "configuration reloaded")
            }
            Err(e) => tracing::error!(error = %e, "reload refused; the old configuration stays"),
        }
        result
    }

    fn apply(&self, mut config: Config) -> Result<ReloadNotes, ReloadError> {
        let old = self.live.load_full();
        let mut notes = ReloadNotes::default();
        // What is bound or fixed at start stays; say so.
        if config.listen != old.config.listen {
            notes.needs_restart.push("listen");
            config.listen = old.config.listen;
        }
        if config.metrics_listen != old.config.metrics_listen {
            notes.needs_restart.push("metrics_listen");
            config.metrics_listen = old.config.metrics_listen;
        }
        if config.pool.mode != old.config.pool.mode {
            notes.needs_restart.push("pool.mode");
            config.pool.mode = old.config.pool.mode;
        }
        let tls = match &config.tls {
            Some(settings) => Some(Arc::new(crate::tls::acceptor(&settings.files)?)),
            None => None,
        };
        let builder = Builder {
            metrics: &self.metrics,
            dialer: &self.dialer,
            terminate: &self.terminate,
        };
        let new = Arc::new(Live::build(config, Some(&old), &builder)?);
        for database in old.added_in(&new) {
            live::spawn_tasks(database);
        }
        self.tls.store(tls);
        self.live.store(Arc::clone(&new));
        self.generation.fetch_add(1, Ordering::AcqRel);
        for database in old.retired_by(&new) {
            database.retired.cancel();
            for pool in database.pools() {
                pool.retire();
            }
        }
        Ok(notes)
    }

    /// Whether the sidecar is draining (no new clients; sessions end when idle).
    pub fn is_draining(&self) -> bool {
        self.draining_flag.load(Ordering::Acquire)
    }

    /// The TLS acceptor for new clients, if TLS is configured.
    pub fn tls_acceptor(&self) -> Option<Arc<tokio_rustls::TlsAcceptor>> {
        self.tls.load_full()
    }

    /// Reads the TLS certificate, key and client CA files again; new clients get the new ones.
    /// On error the old configuration stays.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        if let Some(settings) = &self.live().config.tls {
            let acceptor = crate::tls::acceptor(&settings.files)?;
            self.tls.store(Some(Arc::new(acceptor)));
        }
        Ok(())
    }

    /// The per-process key behind mock SCRAM secrets for unknown users.
    pub fn mock_key(&self) -> &[u8] {
        &self.mock_key
    }

    pub fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    /// Issues a unique BackendKeyData for a new client.
    /// `owner` (user and tenant) is who may signal the client by its PID.
    pub fn issue_key(&self, owner: String, facts: crate::cancel::ClientFacts) -> IssuedKey {
        self.cancels.issue(&self.rng, owner, facts, &self.terminate)
    }

    /// The issued clients (the admin console's SHOW CLIENTS, KILL).
    pub fn clients(&self) -> &CancelRegistry {
        &self.cancels
    }

    /// `pg_cancel_backend` / `pg_terminate_backend` of an issued PID by a client of `owner`.
    pub async fn signal(&self, process_id: i32, owner: &str, kind: SignalKind) -> bool {
        self.cancels.signal(process_id, owner, kind).await
    }

    /// Handles a CancelRequest from a client connection.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        self.cancels.cancel(process_id, secret_key).await;
    }

    /// Stops accepting, lets running transactions finish up to `drain_timeout`, then closes
    /// every session with 57P01.
    pub async fn drain(&self) {
        self.draining_flag.store(true, Ordering::Release);
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.live().config.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            self.terminate.cancel();
            self.tracker.wait().await;
        }
        for pool in self.live().all().flat_map(|d| d.pools()) {
            pool.close_idle();
        }
        self.stopped.cancel();
    }
}
