//! What one configuration builds, and a RELOAD replaces whole: the databases and their pools,
//! the users' credentials, the tenancy helpers (per-tenant connection caps and statement rates,
//! the JWT verifier, tenant query counters) and the statement classifier. A reload builds a new [`Live`] from
//! the new configuration, reusing from the old one what its settings did not change (a
//! database's pools, the classifications, the caps), so nothing is dropped that need not be.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::ResultCache;

use crate::config::{Config, DatabaseConfig, PoolMode};
use crate::metrics::{Metrics, TenantQueries};
use crate::pool::health::Topology;
use crate::pool::rates::Rates;
use crate::pool::tenants::TenantLimits;
use crate::pool::{ConnectOptions, Database, Pool, PoolName};
use crate::route::shard::ShardedTable;
use crate::session::auth::UserAuth;
use crate::session::jwt::JwtVerifier;
use crate::sql::cache::ClassificationCache;

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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

/// A database sharded by statement: its shards, sharded tables and merge budget.
pub struct StatementShards {
    pub databases: Vec<Arc<Database>>,
    pub tables: Vec<ShardedTable>,
    pub max_merge_bytes: usize,
    /// Writes across shards commit in two phases (else they are refused).
    pub two_phase_commit: bool,
}

/// Everything one configuration builds.
pub struct Live {
    pub config: Config,
    /// The databases clients connect to, by name: one entry, or one per shard.
    databases: HashMap<String, Vec<Arc<Database>>>,
    users: HashMap<String, UserAuth>,
    /// `[tenancy] max_connections_per_tenant`, when set.
    pub tenant_limits: Option<Arc<TenantLimits>>,
    /// Verifies JWT logins (`[tenancy] source = "jwt"`).
    pub jwt: Option<JwtVerifier>,
    /// `[tenancy] metric_tenants`, when set.
    pub tenant_queries: Option<Arc<TenantQueries>>,
    /// Statement classifications by fingerprint.
    pub classifier: Arc<ClassificationCache>,
    /// Per-tenant statement rates (kept across reloads, with their buckets).
    pub rates: Arc<Rates>,
    /// The result cache, when `[cache]` has rules (kept across reloads that change neither it
    /// nor the databases it serves).
    pub cache: Option<Arc<ResultCache>>,
}

/// How pools are built: shared by every build of one sidecar.
pub struct Builder<'a> {
    pub metrics: &'a Arc<Metrics>,
    pub dialer: &'a crate::stream::Dialer,
    /// Background tasks of a database end when its token (a child of this) is cancelled.
    pub terminate: &'a CancellationToken,
}

impl Live {
    /// Builds what `config` describes, reusing what `previous` built for the same settings.
    pub fn build(
        config: Config,
        previous: Option<&Live>,
        builder: &Builder<'_>,
    ) -> Result<Live, BuildError> {
        let rng = ring::rand::SystemRandom::new();
        let mut users = HashMap::new();
        for user in &config.users {
            users.insert(
                user.name.clone(),
                UserAuth::prepare(user, &rng).map_err(BuildError::User)?,
            );
        }
        let mut databases = HashMap::new();
        for db in &config.databases {
            let same = previous.and_then(|p| p.reusable(db, &config));
            let shards = match same {
                Some(shards) => shards.clone(),
                None => nodes(&config, db, builder)?,
            };
            databases.insert(db.name.clone(), shards);
        }
        let classifier = match previous {
            Some(p) if p.config.classifier == config.classifier => Arc::clone(&p.classifier),
            _ => Arc::new(ClassificationCache::new(
                config.classifier.cache_size as u64,
                crate::sql::classify::Options {
                    read_only_functions: config.classifier.read_only_functions.clone(),
                },
            )),
        };
        let cap = config
            .tenancy
            .as_ref()
            .map_or(0, |t| t.max_connections_per_tenant);
        let tenant_limits = match previous.and_then(|p| p.tenant_limits.as_ref()) {
            Some(limits) if limits.cap() == cap => Some(Arc::clone(limits)),
            _ => (cap > 0).then(|| Arc::new(TenantLimits::new(cap))),
        };
        let jwt = match config.tenancy.as_ref().and_then(|t| t.jwt.as_ref()) {
            Some(j) => Some(JwtVerifier::new(j).map_err(|e| BuildError::User(e.to_string()))?),
            None => None,
        };
        let tenant_queries = config
            .tenancy
            .as_ref()
            .filter(|t| t.metric_tenants > 0)
            .map(|t| builder.metrics.tenant_queries(t.metric_tenants));
        // Last, once nothing can fail: the one Rates object takes the new rates.
        let rates = match previous {
            Some(p) => {
                p.rates.configure(config.rates.clone());
                Arc::clone(&p.rates)
            }
            None => Arc::new(Rates::new(config.rates.clone())),
        };
        let cache = build_cache(&config, previous, &databases, builder);
        Ok(Live {
            cache,
            rates,
            config,
            databases,
            users,
            tenant_limits,
            jwt,
            tenant_queries,
            classifier,
        })
    }

    /// This build's pools for `db`, if `config` builds them exactly alike.
    fn reusable(&self, db: &DatabaseConfig, config: &Config) -> Option<&Vec<Arc<Database>>> {
        let before = self.config.databases.iter().find(|d| d.name == db.name)?;
        (before == db && self.config.pool == config.pool).then(|| self.databases.get(&db.name))?
    }

    /// Databases of this build that `next` does not carry over (their tasks should end).
    pub fn retired_by<'a>(&'a self, next: &'a Live) -> impl Iterator<Item = &'a Arc<Database>> {
        self.all()
            .filter(move |d| !next.all().any(|n| Arc::ptr_eq(d, n)))
    }

    /// Databases of `next` that this build did not have (their tasks should start).
    pub fn added_in<'a>(&'a self, next: &'a Live) -> impl Iterator<Item = &'a Arc<Database>> {
        next.all()
            .filter(move |n| !self.all().any(|d| Arc::ptr_eq(d, n)))
    }

    /// Every database, and every shard of the sharded ones.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Database>> {
        self.databases.values().flatten()
    }

    /// A database clients connect to, by name (of a sharded one: shard 0).
    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.get(name).and_then(|shards| shards.first())
    }

    /// Every shard of database `name` (one entry when it is not sharded).
    pub fn shards(&self, name: &str) -> &[Arc<Database>] {
        self.databases.get(name).map_or(&[], Vec::as_slice)
    }

    /// The shards of the databases that commit writes across shards in two phases.
    pub fn two_phase_shards(&self) -> Vec<Arc<Database>> {
        self.config
            .databases
            .iter()
            .filter(|d| d.two_phase_commit)
            .flat_map(|d| self.shards(&d.name).iter().cloned())
            .collect()
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
                PoolMode::Transaction => Ok(first),
                PoolMode::Session => Err(RouteError::StatementRouting(name.to_owned())),
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
    pub fn statement_shards(&self, name: &str) -> Option<StatementShards> {
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
        let config = self.config.databases.iter().find(|d| d.name == name);
        Some(StatementShards {
            databases: shards.clone(),
            tables,
            max_merge_bytes: config.map_or(crate::config::DEFAULT_MAX_MERGE_BYTES, |d| {
                d.max_merge_bytes
            }),
            two_phase_commit: config.is_some_and(|d| d.two_phase_commit),
        })
    }

    /// A configured client user.
    pub fn user(&self, name: &str) -> Option<&UserAuth> {
        self.users.get(name)
    }

    /// Whether a configured user may use the admin console.
    pub fn is_admin(&self, name: &str) -> bool {
        self.config.users.iter().any(|u| u.name == name && u.admin)
    }

    /// A configured user's fixed tenant.
    pub fn fixed_tenant(&self, name: &str) -> Option<String> {
        self.config
            .users
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.tenant.clone())
    }
}

/// The result cache for `config`: the previous one when neither `[cache]` nor the databases it
/// serves changed (its entries stay valid), else a new one.
fn build_cache(
    config: &Config,
    previous: Option<&Live>,
    databases: &HashMap<String, Vec<Arc<Database>>>,
    builder: &Builder<'_>,
) -> Option<Arc<ResultCache>> {
    let wanted = config.cache.as_ref()?;
    let first = |dbs: &HashMap<String, Vec<Arc<Database>>>, name: &str| {
        dbs.get(name).and_then(|shards| shards.first()).cloned()
    };
    let same = previous.and_then(|p| p.cache.as_ref()).filter(|c| {
        c.config == *wanted
            && wanted.rules.iter().all(|r| {
                match (
                    first(databases, &r.database),
                    previous.and_then(|p| first(&p.databases, &r.database)),
                ) {
                    (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
                    _ => false,
                }
            })
    });
    if let Some(cache) = same {
        return Some(Arc::clone(cache));
    }
    Some(ResultCache::new(
        wanted.clone(),
        |name| first(databases, name).map(|db| Arc::clone(&db.primary.notifier)),
        builder.metrics,
    ))
}

/// Starts a database's background tasks: each pool's idle and lifetime watch, the replicas'
/// health checks. They end when the database retires (or the sidecar terminates).
pub fn spawn_tasks(database: &Database) {
    for pool in database.pools() {
        tokio::spawn(Arc::clone(pool).watch(database.retired.clone()));
    }
    if let Some(topology) = &database.replicas {
        tokio::spawn(Arc::clone(topology).monitor(database.retired.clone()));
    }
}

/// One database's pools, not connected yet: one node, or one per shard.
fn nodes(
    config: &Config,
    db: &DatabaseConfig,
    builder: &Builder<'_>,
) -> Result<Vec<Arc<Database>>, BuildError> {
    if db.shards.is_empty() {
        return Ok(vec![node(
            config,
            builder,
            &db.name,
            None,
            &db.primary,
            &db.replicas,
        )?]);
    }
    db.shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            node(
                config,
                builder,
                &db.name,
                Some(i),
                &shard.primary,
                &shard.replicas,
            )
        })
        .collect()
}

/// One database or shard: its primary's pool and its replicas' (named by database, shard and
/// replica).
fn node(
    config: &Config,
    builder: &Builder<'_>,
    name: &str,
    shard: Option<usize>,
    primary: &crate::config::UpstreamUrl,
    replicas: &Option<crate::config::ReplicaConfig>,
) -> Result<Arc<Database>, BuildError> {
    let pool_for = |name: PoolName, url: &crate::config::UpstreamUrl| {
        let options = ConnectOptions {
            dialer: builder.dialer.clone(),
            ..ConnectOptions::for_url(url, config.pool.connect_timeout, config.pool.tcp_keepalive)?
        };
        Ok::<_, BuildError>(Arc::new(Pool::new(
            name,
            url.clone(),
            config.pool.clone(),
            options,
            Arc::clone(builder.metrics),
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
            builder.metrics,
        )));
    }
    Ok(Arc::new(Database {
        name: name.to_owned(),
        primary,
        replicas: topology,
        shard,
        retired: builder.terminate.child_token(),
        bytewise_text: Default::default(),
    }))
}
