//! One pool of server connections for one (database, upstream user, target).
//!
//! `size` bounds every server connection the pool opens, the sidecar's own work included.
//! Requests wait in a bounded FIFO (tokio's fair semaphore) for at most `checkout_timeout`.
//! A [`Checkout`] owns its connection and its permit: dropping it without `release` closes
//! the connection, so an unclean connection can never slip back into the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::server::{AppliedSettings, ConnectOptions, ServerConn, ServerError};
use crate::config::{PoolConfig, UpstreamUrl};
use crate::metrics::{GaugeGuard, Metrics, ServerState};

/// How often idle server connections are checked for FATAL/EOF and timeouts.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct startup-setting combinations remembered per pool.
const STARTUP_CACHE_LIMIT: usize = 256;

/// Why no server connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection available within {0:?}: the pool is exhausted")]
    Timeout(Duration),
    #[error("too many clients are already waiting for a server connection")]
    QueueFull,
    #[error(transparent)]
    Connect(#[from] ServerError),
}

impl CheckoutError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckoutError::Timeout(_) => "pool_timeout",
            CheckoutError::QueueFull => "pool_queue_full",
            CheckoutError::Connect(e) => e.kind(),
        }
    }
}

/// The settings a client's startup packet asks for.
pub use crate::sql::settings::{Settings, Shared as SharedSettings};
/// The ParameterStatus list a client receives at login.
pub type Statuses = Arc<Vec<(String, String)>>;
type StatusCache = HashMap<Settings, Startup>;

/// What clients with one combination of startup settings get: the ParameterStatus list, and
/// the settings as one shared value (so their sessions and the connections they leave compare
/// as one pointer).
#[derive(Clone)]
pub struct Startup {
    pub statuses: Statuses,
    pub settings: SharedSettings,
}

/// An idle server connection, for the admin console.
#[derive(Debug, Clone)]
pub struct IdleServer {
    pub id: u64,
    pub host: String,
    pub port: u16,
    /// The server's backend process ID.
    pub process_id: i32,
    /// The tenant it last served.
    pub tenant: Option<String>,
    /// Statements prepared on it.
    pub prepared: usize,
    pub age: std::time::Duration,
}

/// A pool of server connections to one upstream.
pub struct Pool {
    /// The upstream it serves (metric labels, logs).
    pub name: super::PoolName,
    /// `pgsidecar_upstream_up` of this upstream.
    up: prometheus::IntGauge,
    url: UpstreamUrl,
    config: PoolConfig,
    connect_options: ConnectOptions,
    permits: Arc<Semaphore>,
    /// Boxed: a connection moves between the pool and its clients on every checkout.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    waiting: AtomicUsize,
    next_id: AtomicU64,
    /// Set when a reload replaced the pool: connections given back are closed.
    retired: std::sync::atomic::AtomicBool,
    /// The admin console's PAUSE: new checkouts wait for RESUME (the flag is the fast check).
    paused: tokio::sync::watch::Sender<bool>,
    paused_flag: std::sync::atomic::AtomicBool,
    /// Wakes a PAUSE waiting for the connections in use to come back.
    released: tokio::sync::Notify,
    /// RECONNECT: connections opened before this many nanoseconds after `born` are closed when
    /// given back (0: none).
    reconnect_before: AtomicU64,
    born: Instant,
    metrics: Arc<Metrics>,
    /// ParameterStatus a client with these startup settings sees, learned from the server.
    startup_statuses: Mutex<StatusCache>,
    /// The database's LISTEN connection and its clients.
    pub notifier: Arc<super::notify::Notifier>,
}

impl Pool {
    /// How this pool's connections are opened (cancel requests go the same way).
    pub fn dialer(&self) -> &crate::stream::Dialer {
        &self.connect_options.dialer
    }

    /// A pool with no connections yet; they are opened on demand.
    pub fn new(
        name: super::PoolName,
        url: UpstreamUrl,
        config: PoolConfig,
        connect_options: ConnectOptions,
        metrics: Arc<Metrics>,
    ) -> Pool {
        let up = metrics.upstream_up.with_label_values(&[
            name.database.as_str(),
            &name.shard_label(),
            &name.replica_label(),
        ]);
        up.set(0);
        let notifier = Arc::new(super::notify::Notifier::new(
            url.clone(),
            connect_options.clone(),
            Arc::clone(&metrics),
        ));
        Pool {
            name,
            up,
            url,
            notifier,
            connect_options,
            permits: Arc::new(Semaphore::new(config.size)),
            config,
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            retired: std::sync::atomic::AtomicBool::new(false),
            paused: tokio::sync::watch::Sender::new(false),
            paused_flag: std::sync::atomic::AtomicBool::new(false),
            released: tokio::sync::Notify::new(),
            reconnect_before: AtomicU64::new(0),
            born: Instant::now(),
            metrics,
            startup_statuses: Mutex::new(HashMap::new()),
        }
    }

    /// Server connections lent out now.
    pub fn in_use(&self) -> usize {
        self.config
            .size
            .saturating_sub(self.permits.available_permits())
    }

    /// The upstream this pool connects to.
    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// Waits (bounded, FIFO) for a server connection, opening one if none is idle.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, CheckoutError> {
        self.checkout_for(&SharedSettings::default(), None).await
    }

    /// Like [`Pool::checkout`], preferring an idle connection that last served `tenant` (so
    /// no DISCARD ALL is needed), then one that already carries `settings` (so nothing has to
    /// be applied before the client's statement).
    pub async fn checkout_for(
        self: &Arc<Self>,
        settings: &SharedSettings,
        tenant: Option<&str>,
    ) -> Result<Checkout, CheckoutError> {
        if let Some(checkout) = self.checkout_idle_now(settings, tenant) {
            return Ok(checkout);
        }
        if self.paused_flag.load(Ordering::Acquire) {
            self.until_resumed().await?;
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.metrics.checkout_wait.observe(0.0);
                p
            }
            Err(_) => {
                let started = Instant::now();
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(CheckoutError::QueueFull);
                }
                let _waiting = GaugeGuard::new(&self.metrics.clients_waiting);
                let acquired = tokio::time::timeout(
                    self.config.checkout_timeout,
                    self.permits.clone().acquire_owned(),
                )
                .await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                self.metrics
                    .checkout_wait
                    .observe(started.elapsed().as_secs_f64());
                match acquired {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it like a timeout all the same.
                    Ok(Err(_)) | Err(_) => {
                        return Err(CheckoutError::Timeout(self.config.checkout_timeout))
                    }
                }
            }
        };
        let conn = match self.take_idle(settings, tenant) {
            Some(conn) => conn,
            // Boxed: opening a connection (TLS, authentication) is a large future that every
            // checkout would otherwise carry and copy.
            None => Box::new(Box::pin(self.connect()).await?),
        };
        self.metrics.server_state(ServerState::Active).inc();
        Ok(Checkout {
            conn: Some(conn),
            permit: Some(permit),
            pool: Arc::clone(self),
        })
    }

    /// [`Pool::checkout_for`] when it needs no waiting: the pool is not paused, a permit is
    /// free and an idle connection is there. `None` otherwise (nothing is taken).
    pub fn checkout_idle_now(
        self: &Arc<Self>,
        settings: &SharedSettings,
        tenant: Option<&str>,
    ) -> Option<Checkout> {
        if self.paused_flag.load(Ordering::Acquire) {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let conn = self.take_idle(settings, tenant)?;
        self.metrics.checkout_wait.observe(0.0);
        self.metrics.server_state(ServerState::Active).inc();
        Some(Checkout {
            conn: Some(conn),
            permit: Some(permit),
            pool: Arc::clone(self),
        })
    }

    /// The most recently used idle connection of the same tenant (or of none) that carries
    /// `settings`; else of the same tenant; else of no tenant; else the most recently used.
    fn take_idle(
        &self,
        settings: &SharedSettings,
        tenant: Option<&str>,
    ) -> Option<Box<ServerConn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let score = |conn: &ServerConn| {
            let same_tenant = conn.tenant.as_deref() == tenant;
            let same_settings =
                matches!(&conn.applied, AppliedSettings::Known(have) if have == settings);
            2 * u8::from(same_tenant) + u8::from(same_settings) + u8::from(conn.tenant.is_none())
        };
        // The most recently used of the best; the first (from the back) with the best score
        // there can be ends the search.
        let perfect = 3 + u8::from(tenant.is_none());
        let mut best: Option<(u8, usize)> = None;
        for (i, conn) in idle.iter().enumerate().rev() {
            let s = score(conn);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
            if s == perfect {
                break;
            }
        }
        let best = best.map(|(_, i)| i);
        if let Some(i) = best {
            let last = idle.len() - 1;
            idle.swap(i, last);
        }
        while let Some(mut conn) = idle.pop() {
            self.metrics.server_state(ServerState::Idle).dec();
            if conn.looks_idle() {
                return Some(conn);
            }
            tracing::debug!(
                server = conn.id,
                "dropping idle server connection that went bad"
            );
        }
        None
    }

    async fn connect(&self) -> Result<ServerConn, ServerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let up = &self.up;
        match ServerConn::connect(id, &self.url, &[], &self.connect_options).await {
            Ok(conn) => {
                self.metrics.server_connects.inc();
                up.set(1);
                tracing::debug!(server = id, pool = %self.name, "opened server connection");
                Ok(conn)
            }
            Err(e) => {
                up.set(0);
                self.metrics.error(e.kind());
                tracing::warn!(pool = %self.name, error = %e, "could not open server connection");
                Err(e)
            }
        }
    }

    /// The ParameterStatus list a client with these startup settings should receive, checking
    /// the settings against the server the first time a combination is seen.
    pub async fn startup_statuses(
        self: &Arc<Self>,
        settings: &Settings,
    ) -> Result<Startup, CheckoutError> {
        if let Some(found) = self.cache().get(settings) {
            return Ok(found.clone());
        }
        let mut checkout = self.checkout().await?;
        let conn = checkout.conn_mut();
        if let Some(sql) = conn.applied.sql_to(settings) {
            if let Err(e) = conn.run_internal(&sql).await {
                // The statements ran in their own implicit transaction, which failed: the
                // connection is sound but its settings are unknown, so it is closed.
                conn.applied = AppliedSettings::Unknown;
                return Err(CheckoutError::Connect(e));
            }
        }
        let startup = Startup {
            statuses: Arc::new(conn.params.clone()),
            settings: SharedSettings::new(settings.clone()),
        };
        conn.applied = AppliedSettings::Known(startup.settings.clone());
        checkout.release();
        let mut cache = self.cache();
        if cache.len() >= STARTUP_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(settings.clone(), startup.clone());
        Ok(startup)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StatusCache> {
        self.startup_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, mut conn: Box<ServerConn>) {
        self.metrics.server_state(ServerState::Active).dec();
        let now = Instant::now();
        if self.expired(&conn, now) {
            tracing::debug!(
                server = conn.id,
                "closing server connection past max_lifetime"
            );
            return;
        }
        if self.retired.load(Ordering::Acquire) {
            tracing::debug!(
                server = conn.id,
                "closing server connection of a reloaded pool"
            );
            return;
        }
        let reconnect = self.reconnect_before.load(Ordering::Acquire);
        if reconnect > 0 && self.age_of(conn.created) < reconnect {
            tracing::debug!(server = conn.id, "closing server connection (RECONNECT)");
            return;
        }
        self.metrics.server_state(ServerState::Idle).inc();
        conn.idle_since = now;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        let lifetime = self.config.max_lifetime;
        !lifetime.is_zero() && now.duration_since(conn.created) >= lifetime
    }

    /// Closes idle connections that went bad (the server sent FATAL or closed), sat unused
    /// past `idle_timeout`, or lived past `max_lifetime`. Run periodically by [`Pool::watch`].
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let idle_timeout = self.config.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let before = idle.len();
        idle.retain_mut(|conn| {
            let stale =
                !idle_timeout.is_zero() && now.duration_since(conn.idle_since) >= idle_timeout;
            let keep = !stale && !self.expired(conn, now) && conn.looks_idle();
            if !keep {
                tracing::debug!(server = conn.id, stale, "closing idle server connection");
            }
            keep
        });
        let closed = before - idle.len();
        self.metrics
            .server_state(ServerState::Idle)
            .sub(closed as i64);
        closed
    }

    /// Watches the idle connections until `stop` fires.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.reap_idle();
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// PAUSE: new checkouts wait (at most `checkout_timeout`) until [`Pool::resume`]; returns
    /// once no connection is in use.
    pub async fn pause(&self) {
        self.paused.send_replace(true);
        self.paused_flag.store(true, Ordering::Release);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.in_use() == 0 {
                return;
            }
            released.await;
        }
    }

    /// RESUME: waiting checkouts go on.
    pub fn resume(&self) {
        self.paused_flag.store(false, Ordering::Release);
        self.paused.send_replace(false);
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_flag.load(Ordering::Acquire)
    }

    /// RECONNECT: idle connections close now, the ones in use when given back; new ones are
    /// opened as needed.
    pub fn reconnect(&self) {
        let now = self.age_of(Instant::now()).max(1);
        self.reconnect_before.store(now, Ordering::Release);
        self.close_idle();
    }

    /// Nanoseconds from the pool's creation to `at`.
    fn age_of(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits while the pool is paused, at most `checkout_timeout`.
    async fn until_resumed(&self) -> Result<(), CheckoutError> {
        let mut resumed = self.paused.subscribe();
        tokio::time::timeout(self.config.checkout_timeout, resumed.wait_for(|p| !*p))
            .await
            .map(|_| ())
            .map_err(|_| CheckoutError::Timeout(self.config.checkout_timeout))
    }

    /// The idle connections as the admin console lists them.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let now = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| IdleServer {
                id: c.id,
                host: c.host.to_string(),
                port: c.port,
                process_id: c.key.process_id,
                tenant: c.tenant.as_deref().map(str::to_owned),
                prepared: c.prepared.len(),
                age: now.saturating_duration_since(c.created),
            })
            .collect()
    }

    /// The connections idle now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Checkouts waiting for a connection now.
    pub fn waiting_count(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A reload replaced this pool: its idle connections close now, the others when their
    /// clients release them.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.close_idle();
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let drained: Vec<Box<ServerConn>> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics
            .server_state(ServerState::Idle)
            .sub(drained.len() as i64);
    }
}

impl Drop for Pool {
    /// A pool a reload dropped closes what it still holds (and its gauge says so).
    fn drop(&mut self) {
        self.close_idle();
    }
}

/// The settings of a connection in unknown state are diffed from the defaults.
static NO_SETTINGS: Settings = Settings::new();

impl AppliedSettings {
    /// The client settings a connection in this state carries (none known: the defaults).
    fn have(&self) -> &Settings {
        match self {
            AppliedSettings::Known(have) => have,
            AppliedSettings::Unknown => &NO_SETTINGS,
        }
    }

    /// Whether a connection in this state carries exactly the `wanted` client settings.
    pub fn carries(&self, wanted: &SharedSettings) -> bool {
        matches!(self, AppliedSettings::Known(have) if have == wanted)
    }

    /// The SQL that gives a server connection in this state the `wanted` client settings
    /// (from the defaults when the state is unknown), or `None` when nothing differs.
    pub fn sql_to(&self, wanted: &Settings) -> Option<String> {
        crate::sql::settings::sql(self.have(), wanted)
    }

    /// The settings to set (name, value) that give a server connection in this state the
    /// `wanted` ones, when nothing needs a RESET (`None` when something does).
    pub fn sets_to<'w>(&self, wanted: &'w Settings) -> Option<Vec<(&'w str, &'w str)>> {
        let (sets, resets) = crate::sql::settings::diff(self.have(), wanted);
        resets.is_empty().then_some(sets)
    }
}

/// A server connection lent to one client (or to the sidecar's own work).
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    /// Released after the connection went back (a PAUSE counts connections in use by it).
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl Checkout {
    /// The connection.
    pub fn conn_mut(&mut self) -> &mut ServerConn {
        // `conn` is only taken by `release`/`drop`, which consume the checkout.
        self.conn
            .as_mut()
            .expect("checkout holds its connection until released")
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a clean, idle connection to the pool. A connection whose settings are unknown or
    /// that still has unread bytes is closed instead.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.applied == AppliedSettings::Unknown || !conn.rbuf.is_empty() {
                tracing::debug!(
                    server = conn.id,
                    "closing server connection in unknown state"
                );
                self.pool.metrics.server_state(ServerState::Active).dec();
            } else {
                self.pool.give_back(conn);
            }
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!(server = conn.id, "closing server connection");
            self.pool.metrics.server_state(ServerState::Active).dec();
        }
        self.permit.take();
        if self.pool.paused_flag.load(Ordering::Acquire) {
            self.pool.released.notify_waiters();
        }
    }
}
