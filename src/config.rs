//! The configuration contract: serde structs for the TOML file, environment and command-line
//! overrides, and `validate()` into the typed [`Config`] the rest of the program reads.
//!
//! Parsed once in `main`; nothing else reads files or the environment. Secrets never appear in
//! `Debug` or [`Config::describe`] output.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid upstream URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("the [{0}] section is not supported by this version of pgsidecar")]
    Unsupported(&'static str),
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Transaction or session pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is attached per transaction.
    Transaction,
    /// A server connection stays with its client until the client leaves.
    Session,
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        })
    }
}

/// How the sidecar checks a client's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "password")]
    Password,
    #[serde(rename = "trust")]
    Trust,
    /// The password is a JWT, checked as `[tenancy]` says (`source = "jwt"`).
    #[serde(rename = "jwt")]
    Jwt,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Trust => "trust",
            AuthMethod::Jwt => "jwt",
        })
    }
}

/// A database clients can ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub name: String,
    /// The primary; of shard 0 when the database is sharded (client startup settings are
    /// checked there).
    pub primary: UpstreamUrl,
    /// Replica routing, when the database (or its shard 0) has replicas.
    pub replicas: Option<ReplicaConfig>,
    /// The shards in order, when the database is sharded (empty: it is not).
    pub shards: Vec<ShardConfig>,
    /// What merging one statement's rows from several shards may hold (`max_merge_bytes`).
    pub max_merge_bytes: usize,
    /// Writes that span shards commit with two-phase commit (`two_phase_commit`; needs
    /// `state_dir`). Off: such writes are refused.
    pub two_phase_commit: bool,
}

/// `max_merge_bytes` when not given.
pub const DEFAULT_MAX_MERGE_BYTES: usize = 64 << 20;

/// A client credential the sidecar checks.
#[derive(Clone)]
pub struct UserConfig {
    pub name: String,
    pub auth: AuthMethod,
    pub secret: UserSecret,
    /// A fixed tenant for this user (service accounts), with `[tenancy]`.
    pub tenant: Option<String>,
    /// May use the admin console (database `pgsidecar`).
    pub admin: bool,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// What the sidecar knows of a user's password.
#[derive(Clone)]
pub enum UserSecret {
    /// The plaintext password (works for every method).
    Password(String),
    /// A `SCRAM-SHA-256$…` verifier (SCRAM only).
    ScramVerifier(String),
    /// Nothing: only `trust`.
    None,
}

/// Pool settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub mode: PoolMode,
    pub size: usize,
    pub checkout_timeout: Duration,
    pub max_waiting: usize,
    /// Opening and authenticating one upstream connection may take this long.
    pub connect_timeout: Duration,
    /// An idle server connection older than this (unused) is closed; zero keeps it.
    pub idle_timeout: Duration,
    /// A server connection older than this is closed when it next becomes idle; zero: never.
    pub max_lifetime: Duration,
    /// TCP keepalive idle time on upstream sockets; zero disables keepalive.
    pub tcp_keepalive: Duration,
}

/// Limits on what one client may do.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Startup and authentication must finish within this.
    pub login_timeout: Duration,
    /// A client idle inside a transaction this long is disconnected (25P03); zero: never.
    pub idle_in_transaction_timeout: Duration,
    /// A statement running this long is cancelled upstream (57014); zero: never.
    pub query_timeout: Duration,
}

/// The SQL classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Bytes of classifications cached by statement fingerprint.
    pub cache_size: usize,
    /// Functions to treat as read-only besides the built-in list.
    pub read_only_functions: Vec<String>,
}

/// TLS for clients.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub files: TlsFiles,
    /// Refuse clients that do not use TLS.
    pub required: bool,
}

/// Where the client-facing certificate, key and optional client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    pub max_message_size: usize,
    pub limits: ClientLimits,
    pub tls: Option<TlsSettings>,
    pub classifier: ClassifierConfig,
    pub pool: PoolConfig,
    pub databases: Vec<DatabaseConfig>,
    pub users: Vec<UserConfig>,
    /// Tenant context for Row-Level Security, when configured.
    pub tenancy: Option<TenancyConfig>,
    /// Sharded tables and tenant placement.
    pub sharding: Sharding,
    /// Per-tenant statement rates.
    pub rates: RateConfig,
    /// The result cache (`[cache]`), when configured.
    pub cache: Option<CacheConfig>,
    /// Where the sidecar keeps state across restarts (its two-phase commit decisions).
    pub state_dir: Option<std::path::PathBuf>,
}

/// Values given on the command line or in `PGSIDECAR_*` variables; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub shutdown_delay: Option<Duration>,
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    shutdown_delay: Option<String>,
    drain_timeout: Option<String>,
    max_message_size: Option<String>,
    login_timeout: Option<String>,
    idle_in_transaction_timeout: Option<String>,
    query_timeout: Option<String>,
    #[serde(default)]
    pool: FilePool,
    #[serde(default)]
    database: Vec<FileDatabase>,
    #[serde(default)]
    user: Vec<FileUser>,
    tls: Option<FileTls>,
    tenancy: Option<tenancy::FileTenancy>,
    #[serde(default)]
    classifier: FileClassifier,
    #[serde(default)]
    sharded_table: Vec<shards::FileShardedTable>,
    #[serde(default)]
    tenant_shard: Vec<shards::FileTenantShard>,
    #[serde(default)]
    tenant_limit: Vec<rates::FileTenantLimit>,
    cache: Option<cache::FileCache>,
    state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClassifier {
    cache_size: Option<String>,
    #[serde(default)]
    read_only_functions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    mode: Option<PoolMode>,
    size: Option<usize>,
    checkout_timeout: Option<String>,
    max_waiting: Option<usize>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_lifetime: Option<String>,
    tcp_keepalive: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    name: String,
    primary: Option<String>,
    #[serde(default)]
    shards: Vec<shards::FileShard>,
    max_merge_bytes: Option<String>,
    #[serde(default)]
    two_phase_commit: bool,
    #[serde(flatten)]
    replicas: replicas::FileReplicas,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    password: Option<String>,
    scram_verifier: Option<String>,
    auth: Option<AuthMethod>,
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9930";

impl Config {
    /// Reads and validates a TOML file, then applies overrides.
    pub fn from_file(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, overrides)
    }

    /// Parses and validates TOML text, then applies overrides.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text)?;
        file.validate(overrides)
    }

    /// The zero-config form: one database and one client user taken from the upstream URL.
    pub fn from_upstream(url: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let upstream = UpstreamUrl::parse(url)?;
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut text = format!(
            "[[database]]\nname = {}\nprimary = {}\n\n[[user]]\nname = {}\n",
            quoted(&upstream.dbname),
            quoted(url),
            quoted(&upstream.user)
        );
        match &upstream.password {
            Some(pw) => text.push_str(&format!("password = {}\n", quoted(pw))),
            None => text.push_str("auth = \"trust\"\n"),
        }
        Config::from_toml(&text, overrides)
    }

    /// The effective configuration as TOML-like text with secrets masked.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "listen = \"{}\"\nmetrics_listen = \"{}\"\nshutdown_delay = \"{}\"\ndrain_timeout = \"{}\"\nmax_message_size = \"{}\"\nlogin_timeout = \"{}\"\nidle_in_transaction_timeout = \"{}\"\nquery_timeout = \"{}\"\n\n[pool]\nmode = \"{}\"\nsize = {}\ncheckout_timeout = \"{}\"\nmax_waiting = {}\nconnect_timeout = \"{}\"\nidle_timeout = \"{}\"\nmax_lifetime = \"{}\"\ntcp_keepalive = \"{}\"\n",
            self.listen,
            self.metrics_listen,
            format_duration(self.shutdown_delay),
            format_duration(self.drain_timeout),
            format_size(self.max_message_size),
            format_duration(self.limits.login_timeout),
            format_duration(self.limits.idle_in_transaction_timeout),
            format_duration(self.limits.query_timeout),
            self.pool.mode,
            self.pool.size,
            format_duration(self.pool.checkout_timeout),
            self.pool.max_waiting,
            format_duration(self.pool.connect_timeout),
            format_duration(self.pool.idle_timeout),
            format_duration(self.pool.max_lifetime),
            format_duration(self.pool.tcp_keepalive)
        );
        out.push_str(&format!(
            "\n[classifier]\ncache_size = \"{}\"\nread_only_functions = {:?}\n",
            format_size(self.classifier.cache_size),
            self.classifier.read_only_functions
        ));
        if let Some(tls) = &self.tls {
            out.push_str(&format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nrequired = {}\n",
                tls.files.cert.display(),
                tls.files.key.display(),
                tls.required
            ));
            if let Some(ca) = &tls.files.client_ca {
                out.push_str(&format!("client_ca = \"{}\"\n", ca.display()));
            }
        }
        for db in &self.databases {
            if !db.shards.is_empty() {
                out.push_str(&shards::describe_database(&db.name, &db.shards));
                continue;
            }
            out.push_str(&format!(
                "\n[[database]]\nname = \"{}\"\nprimary = \"{}\"\n",
                db.name,
                db.primary.masked()
            ));
            if let Some(r) = &db.replicas {
                out.push_str(&r.describe());
            }
        }
        out.push_str(&self.sharding.describe());
        for user in &self.users {
            let secret = match user.secret {
                UserSecret::Password(_) => "password = \"****\"",
                UserSecret::ScramVerifier(_) => "scram_verifier = \"****\"",
                UserSecret::None => "# no password",
            };
            out.push_str(&format!(
                "\n[[user]]\nname = \"{}\"\nauth = \"{}\"\n{secret}\n",
                user.name, user.auth
            ));
            if let Some(tenant) = &user.tenant {
                out.push_str(&format!("tenant = \"{tenant}\"\n"));
            }
        }
        if let Some(tenancy) = &self.tenancy {
            out.push_str(&tenancy.describe());
        }
        if let Some(cache) = &self.cache {
            out.push_str(&cache.describe());
        }
        out
    }
}

impl FileConfig {
    fn validate(self, o: &Overrides) -> Result<Config, ConfigError> {
        let shard_by_tenant = match &self.tenancy {
            Some(t) => t.shard_by_tenant()?,
            None => false,
        };
        let rates = rates::validate_rates(
            self.tenancy
                .as_ref()
                .map(tenancy::FileTenancy::rates)
                .unwrap_or_default(),
            self.tenant_limit,
            self.tenancy.is_some(),
        )?;
        let tenancy = self
            .tenancy
            .map(tenancy::FileTenancy::validate)
            .transpose()?;
        let verified_clients = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if tenancy
            .as_ref()
            .is_some_and(|t| t.source == TenantSource::Certificate)
            && !verified_clients
        {
            return Err(ConfigError::invalid(
                "tenancy.source",
                "\"certificate\" needs [tls] client_ca, so client certificates are verified",
            ));
        }
        let addr = |key: &str,
                    v: Option<String>,
                    default: &str|
         -> Result<SocketAddr, ConfigError> {
            let v = v.unwrap_or_else(|| default.to_owned());
            v.parse().map_err(|_| {
                ConfigError::invalid(key, format!("{v:?} is not an address like 127.0.0.1:6432"))
            })
        };
        let duration = |key: &str, v: Option<String>, default: &str| {
            parse_duration(v.as_deref().unwrap_or(default))
                .map_err(|r| ConfigError::invalid(key, r))
        };
        let listen = match o.listen {
            Some(a) => a,
            None => addr("listen", self.listen, DEFAULT_LISTEN)?,
        };
        let metrics_listen = match o.metrics_listen {
            Some(a) => a,
            None => addr(
                "metrics_listen",
                self.metrics_listen,
                DEFAULT_METRICS_LISTEN,
            )?,
        };
        let max_message_size = parse_size(self.max_message_size.as_deref().unwrap_or("64MiB"))
            .map_err(|r| ConfigError::invalid("max_message_size", r))?;
        if max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "max_message_size",
                "must be at least 1KiB",
            ));
        }
        let pool = PoolConfig {
            mode: o
                .pool_mode
                .or(self.pool.mode)
                .unwrap_or(PoolMode::Transaction),
            size: o.pool_size.or(self.pool.size).unwrap_or(20),
            checkout_timeout: duration("pool.checkout_timeout", self.pool.checkout_timeout, "5s")?,
            max_waiting: self.pool.max_waiting.unwrap_or(10_000),
            connect_timeout: duration("pool.connect_timeout", self.pool.connect_timeout, "5s")?,
            idle_timeout: duration("pool.idle_timeout", self.pool.idle_timeout, "10m")?,
            max_lifetime: duration("pool.max_lifetime", self.pool.max_lifetime, "1h")?,
            tcp_keepalive: duration("pool.tcp_keepalive", self.pool.tcp_keepalive, "30s")?,
        };
        if pool.connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "pool.connect_timeout",
                "must be more than zero",
            ));
        }
        let limits = ClientLimits {
            login_timeout: duration("login_timeout", self.login_timeout, "60s")?,
            idle_in_transaction_timeout: duration(
                "idle_in_transaction_timeout",
                self.idle_in_transaction_timeout,
                "10m",
            )?,
            query_timeout: duration("query_timeout", self.query_timeout, "0s")?,
        };
        if limits.login_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "login_timeout",
                "must be more than zero",
            ));
        }
        if pool.size == 0 {
            return Err(ConfigError::invalid("pool.size", "must be at least 1"));
        }
        if self.database.is_empty() {
            return Err(ConfigError::invalid(
                "database",
                "at least one [[database]] is required",
            ));
        }
        let mut names = HashSet::new();
        let mut databases = Vec::new();
        let mut shard_counts = std::collections::HashMap::new();
        for db in self.database {
            if !names.insert(db.name.clone()) {
                return Err(ConfigError::invalid(
                    "database.name",
                    format!("{:?} appears twice", db.name),
                ));
            }
            let (primary, replicas, shards) = match (db.primary, db.shards.is_empty()) {
                (Some(primary), true) => (
                    UpstreamUrl::parse(&primary)?,
                    db.replicas.validate()?,
                    Vec::new(),
                ),
                (None, false) => {
                    let shards = shards::validate_shards(&db.name, db.shards, &db.replicas)?;
                    shard_counts.insert(db.name.clone(), shards.len());
                    (
                        shards[0].primary.clone(),
                        shards[0].replicas.clone(),
                        shards,
                    )
                }
                (Some(_), false) => {
                    return Err(ConfigError::invalid(
                        "database.primary",
                        format!(
                            "database {:?}: give primary or [[database.shards]], not both",
                            db.name
                        ),
                    ))
                }
                (None, true) => {
                    return Err(ConfigError::invalid(
                        "database.primary",
                        format!(
                            "database {:?} needs a primary (or [[database.shards]])",
                            db.name
                        ),
                    ))
                }
            };
            if replicas
                .as_ref()
                .is_some_and(|r| r.read_your_writes == ReadYourWrites::Tenant)
                && tenancy.is_none()
            {
                return Err(ConfigError::invalid(
                    "database.read_your_writes",
                    "\"tenant\" needs a [tenancy] section",
                ));
            }
            let max_merge_bytes = match &db.max_merge_bytes {
                None => DEFAULT_MAX_MERGE_BYTES,
                Some(text) => parse_size(text)
                    .map_err(|r| ConfigError::invalid("database.max_merge_bytes", r))?,
            };
            if db.two_phase_commit && self.state_dir.is_none() {
                return Err(ConfigError::invalid(
                    "database.two_phase_commit",
                    "two-phase commit needs state_dir (where the sidecar logs its commit decisions)",
                ));
            }
            databases.push(DatabaseConfig {
                name: db.name,
                primary,
                replicas,
                shards,
                max_merge_bytes,
                two_phase_commit: db.two_phase_commit,
            });
        }
        let sharding = shards::validate_sharding(
            self.sharded_table,
            self.tenant_shard,
            shard_by_tenant,
            &shard_counts,
        )?;
        let cache = cache::validate_cache(self.cache, &databases)?;
        if cache.is_some() && pool.mode != PoolMode::Transaction {
            return Err(ConfigError::invalid(
                "cache",
                "the result cache needs pool.mode = \"transaction\"",
            ));
        }
        let mut names = HashSet::new();
        let mut users = Vec::new();
        for u in self.user {
            if !names.insert(u.name.clone()) {
                return Err(ConfigError::invalid(
                    "user.name",
                    format!("{:?} appears twice", u.name),
                ));
            }
            let auth = u.auth.unwrap_or(AuthMethod::ScramSha256);
            let secret = match (u.password, u.scram_verifier) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        "user",
                        format!(
                            "user {:?}: give password or scram_verifier, not both",
                            u.name
                        ),
                    ))
                }
                (Some(p), None) => UserSecret::Password(p),
                (None, Some(v)) => UserSecret::ScramVerifier(v),
                (None, None) => UserSecret::None,
            };
            match (auth, &secret) {
                (AuthMethod::Trust, _) => {}
                (AuthMethod::Jwt, UserSecret::None)
                    if tenancy.as_ref().is_some_and(|t| t.jwt.is_some()) => {}
                (AuthMethod::Jwt, _) => {
                    return Err(ConfigError::invalid(
                        "user",
                        format!(
                            "user {:?}: auth = \"jwt\" needs [tenancy] source = \"jwt\" and no password",
                            u.name
                        ),
                    ))
                }
                (
                    AuthMethod::ScramSha256,
                    UserSecret::Password(_) | UserSecret::ScramVerifier(_),
                ) => {}
                (AuthMethod::Md5 | AuthMethod::Password, UserSecret::Password(_)) => {}
                (method, _) => {
                    return Err(ConfigError::invalid(
                        "user",
                        format!(
                            "user {:?}: auth = \"{method}\" needs a plaintext password",
                            u.name
                        ),
                    ))
                }
            }
            if let Some(tenant) = &u.tenant {
                match &tenancy {
                    Some(t) if t.valid_tenant(tenant) => {}
                    Some(_) => {
                        return Err(ConfigError::invalid(
                            "user.tenant",
                            format!("user {:?}: {tenant:?} is not a valid tenant name", u.name),
                        ))
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            "user.tenant",
                            format!("user {:?}: a tenant needs a [tenancy] section", u.name),
                        ))
                    }
                }
            }
            users.push(UserConfig {
                name: u.name,
                auth,
                secret,
                tenant: u.tenant,
                admin: u.admin,
            });
        }
        if users.is_empty() {
            return Err(ConfigError::invalid(
                "user",
                "at least one [[user]] is required",
            ));
        }
        Ok(Config {
            state_dir: self.state_dir.map(Into::into),
            tenancy,
            sharding,
            rates,
            cache,
            listen,
            metrics_listen,
            shutdown_delay: match o.shutdown_delay {
                Some(d) => d,
                None => duration("shutdown_delay", self.shutdown_delay, "0s")?,
            },
            drain_timeout: match o.drain_timeout {
                Some(d) => d,
                None => duration("drain_timeout", self.drain_timeout, "30s")?,
            },
            max_message_size,
            limits,
            classifier: ClassifierConfig {
                cache_size: parse_size(self.classifier.cache_size.as_deref().unwrap_or("16MiB"))
                    .map_err(|r| ConfigError::invalid("classifier.cache_size", r))?,
                read_only_functions: self
                    .classifier
                    .read_only_functions
                    .iter()
                    .map(|f| f.to_ascii_lowercase())
                    .collect(),
            },
            tls: self.tls.map(|t| TlsSettings {
                files: TlsFiles {
                    cert: t.cert.into(),
                    key: t.key.into(),
                    client_ca: t.client_ca.map(Into::into),
                },
                required: t.required,
            }),
            pool,
            databases,
            users,
        })
    }
}

mod cache;
mod rates;
mod replicas;
mod shards;
mod tenancy;
#[cfg(test)]
mod tests;
mod units;
mod upstream;

pub use cache::{CacheConfig, CacheRule};
pub use rates::{OnLimit, Rate, RateConfig};
pub use replicas::{MaxLag, PrimaryReads, ReadYourWrites, ReplicaConfig, Strategy};
pub use shards::{ShardConfig, ShardQuestion, Sharding};
pub use tenancy::{JwtConfig, TenancyConfig, TenantSource};
pub(crate) use units::format_size;
pub use units::{format_duration, parse_duration, parse_size};
pub use upstream::{SslMode, UpstreamUrl};
