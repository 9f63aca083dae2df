//! The [`App`] bundle — configuration, pools, user credentials, metrics, issued cancel keys and
//! shutdown tokens — and the listeners that feed it clients. Passed down explicitly; there is
//! no global accessor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::{CancelRegistry, IssuedKey};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::health::Topology;
use crate::pool::{ConnectOptions, Database, Pool, PoolName};
use crate::route::shard::ShardedTable;
use crate::session::auth::UserAuth;
use crate::sql::signal::SignalKind;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid user configuration: {0}")]
    User(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a client cannot be given a database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("database \"{0}\" is sharded by tenant and this login has no tenant")]
    NoTenant(String),
    #[error("database \"{0}\" is sharded by statement key, which needs pool mode \"transaction\" (or [tenancy] shard_by = \"tenant\")")]
    StatementRouting(String),
}

impl RouteError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::UnknownDatabase(_) => "unknown_database",
            RouteError::NoTenant(_) => "no_tenant_for_shard",
            RouteError::StatementRouting(_) => "shard_routing_unavailable",
        }
    }

    /// The SQLSTATE the client gets (as Postgres answers an unknown database).
    pub fn sqlstate(&self) -> crate::protocol::sqlstate::SqlState {
        use crate::protocol::sqlstate::SqlState;
        match self {
            RouteError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            RouteError::NoTenant(_) => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            RouteError::StatementRouting(_) => SqlState::FEATURE_NOT_SUPPORTED,
        }
    }
}

/// Everything a session needs, shared by all of them.
pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// The databases clients connect to, by name: one entry, or one per shard.
    databases: HashMap<String, Vec<Arc<Database>>>,
    /// `[tenancy] max_connections_per_tenant`, when set.
    pub tenant_limits: Option<crate::pool::tenants::TenantLimits>,
    /// Verifies JWT logins (`[tenancy] source = "jwt"`).
    pub jwt: Option<crate::session::jwt::JwtVerifier>,
    /// `[tenancy] metric_tenants`, when set.
    pub tenant_queries: Option<crate::metrics::TenantQueries>,
    users: HashMap<String, UserAuth>,
    mock_key: [u8; 32],
    rng: SystemRandom,
    cancels: CancelRegistry,
    /// Fires when the sidecar stops accepting clients; idle sessions close.
    pub draining: CancellationToken,
    /// Fires when the drain time is over; every session closes.
    pub terminate: CancellationToken,
    pub tracker: TaskTracker,
    /// Statement classifications by fingerprint.
    pub classifier: crate::sql::cache::ClassificationCache,
    /// The client-facing TLS acceptor; swapped on reload.
    tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
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
        let metrics = Arc::new(Metrics::new());
        let rng = SystemRandom::new();
        let mut users = HashMap::new();
        for user in &config.users {
            users.insert(
                user.name.clone(),
                UserAuth::prepare(user, &rng).map_err(AppError::User)?,
            );
        }
        let databases = databases(&config, &metrics, &dialer)?;
        let tls = match &config.tls {
            Some(settings) => Some(crate::tls::acceptor(&settings.files)?),
            None => None,
        };
        let mut mock_key = [0u8; 32];
        rng.fill(&mut mock_key)
            .map_err(|_| AppError::User("no randomness available".into()))?;
        let classifier = crate::sql::cache::ClassificationCache::new(
            config.classifier.cache_size as u64,
            crate::sql::classify::Options {
                read_only_functions: config.classifier.read_only_functions.clone(),
            },
        );
        let tenant_limits = config
            .tenancy
            .as_ref()
            .filter(|t| t.max_connections_per_tenant > 0)
            .map(|t| crate::pool::tenants::TenantLimits::new(t.max_connections_per_tenant));
        let jwt = match config.tenancy.as_ref().and_then(|t| t.jwt.as_ref()) {
            Some(j) => Some(
                crate::session::jwt::JwtVerifier::new(j)
                    .map_err(|e| AppError::User(e.to_string()))?,
            ),
            None => None,
        };
        let tenant_queries = config
            .tenancy
            .as_ref()
            .filter(|t| t.metric_tenants > 0)
            .map(|t| metrics.tenant_queries(t.metric_tenants));
        Ok(Arc::new(App {
            jwt,
            tenant_queries,
            config,
            metrics,
            databases,
            tenant_limits,
            users,
            mock_key,
            rng,
            cancels: CancelRegistry::default(),
            classifier,
            tls: arc_swap::ArcSwapOption::new(tls.map(Arc::new)),
            draining: CancellationToken::new(),
            terminate: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }))
    }

    /// The TLS acceptor for new clients, if TLS is configured.
    pub fn tls_acceptor(&self) -> Option<Arc<tokio_rustls::TlsAcceptor>> {
        self.tls.load_full()
    }

    /// Reads the TLS certificate, key and client CA files again; new clients get the new ones.
    /// On error the old configuration stays.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        if let Some(settings) = &self.config.tls {
            let acceptor = crate::tls::acceptor(&settings.files)?;
            self.tls.store(Some(Arc::new(acceptor)));
        }
        Ok(())
    }

    /// A database clients connect to, by name (of a sharded one: shard 0).
    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.get(name).and_then(|shards| shards.first())
    }

    /// The database (or shard of it) a client of `tenant` asking for `name` is routed to.
    pub fn database_for(
        &self,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<&Arc<Database>, RouteError> {
        let shards = self
            .databases
            .get(name)
            .ok_or_else(|| RouteError::UnknownDatabase(name.to_owned()))?;
        match shards.as_slice() {
            [single] if single.shard.is_none() => Ok(single),
            // Each request picks its shard; the session starts on shard 0.
            [first, ..] if !self.config.sharding.by_tenant => match self.config.pool.mode {
                crate::config::PoolMode::Transaction => Ok(first),
                crate::config::PoolMode::Session => {
                    Err(RouteError::StatementRouting(name.to_owned()))
                }
            },
            _ => {
                let tenant = tenant.ok_or_else(|| RouteError::NoTenant(name.to_owned()))?;
                let shard = self.config.sharding.tenants.shard_of(tenant, shards.len());
                shards
                    .get(shard)
                    .ok_or_else(|| RouteError::NoTenant(name.to_owned()))
            }
        }
    }

    /// The shards of a database whose requests each pick their shard (sharded, and not by
    /// tenant), with its sharded tables.
    pub fn statement_shards(&self, name: &str) -> Option<(Vec<Arc<Database>>, Vec<ShardedTable>)> {
        let shards = self.databases.get(name)?;
        if shards.first()?.shard.is_none() || self.config.sharding.by_tenant {
            return None;
        }
        let tables = self
            .config
            .sharding
            .tables
            .iter()
            .filter(|t| t.database == name)
            .cloned()
            .collect();
        Some((shards.clone(), tables))
    }

    /// Every database, and every shard of the sharded ones.
    pub fn databases(&self) -> impl Iterator<Item = &Arc<Database>> {
        self.databases.values().flatten()
    }

    /// A configured client user.
    pub fn user(&self, name: &str) -> Option<&UserAuth> {
        self.users.get(name)
    }

    /// A configured user's fixed tenant.
    pub fn fixed_tenant(&self, name: &str) -> Option<String> {
        self.config
            .users
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.tenant.clone())
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
    pub fn issue_key(&self, owner: String) -> IssuedKey {
        self.cancels.issue(&self.rng, owner, &self.terminate)
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
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.config.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            self.terminate.cancel();
            self.tracker.wait().await;
        }
        for pool in self.databases().flat_map(|d| d.pools()) {
            pool.close_idle();
        }
    }
}

/// The databases of the configuration, by name: each one's (or each shard's) pools, not
/// connected yet, and with replicas their topology.
fn databases(
    config: &Config,
    metrics: &Arc<Metrics>,
    dialer: &crate::stream::Dialer,
) -> Result<HashMap<String, Vec<Arc<Database>>>, AppError> {
    let mut databases = HashMap::new();
    for db in &config.databases {
        let nodes: Vec<(Option<usize>, &crate::config::UpstreamUrl, _)> = if db.shards.is_empty() {
            vec![(None, &db.primary, &db.replicas)]
        } else {
            db.shards
                .iter()
                .enumerate()
                .map(|(i, shard)| (Some(i), &shard.primary, &shard.replicas))
                .collect()
        };
        let shards = nodes
            .into_iter()
            .map(|(shard, primary, replicas)| {
                node(config, metrics, dialer, &db.name, shard, primary, replicas)
            })
            .collect::<Result<Vec<_>, _>>()?;
        databases.insert(db.name.clone(), shards);
    }
    Ok(databases)
}

/// One database or shard: its primary's pool and its replicas' (named by database, shard and
/// replica).
fn node(
    config: &Config,
    metrics: &Arc<Metrics>,
    dialer: &crate::stream::Dialer,
    name: &str,
    shard: Option<usize>,
    primary: &crate::config::UpstreamUrl,
    replicas: &Option<crate::config::ReplicaConfig>,
) -> Result<Arc<Database>, AppError> {
    let pool_for = |name: PoolName, url: &crate::config::UpstreamUrl| {
        let options = ConnectOptions {
            dialer: dialer.clone(),
            ..ConnectOptions::for_url(url, config.pool.connect_timeout, config.pool.tcp_keepalive)?
        };
        Ok::<_, AppError>(Arc::new(Pool::new(
            name,
            url.clone(),
            config.pool.clone(),
            options,
            Arc::clone(metrics),
        )))
    };
    let pool_name = PoolName {
        database: name.to_owned(),
        shard,
        replica: None,
    };
    let primary = pool_for(pool_name.clone(), primary)?;
    let mut topology = None;
    if let Some(replicas) = replicas {
        let replica_pools = replicas
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| pool_for(pool_name.replica(i), url))
            .collect::<Result<Vec<_>, _>>()?;
        topology = Some(Arc::new(Topology::new(
            Arc::clone(&primary),
            replica_pools,
            replicas.clone(),
            metrics,
        )));
    }
    Ok(Arc::new(Database {
        name: name.to_owned(),
        primary,
        replicas: topology,
        shard,
    }))
}
