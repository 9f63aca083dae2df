//! Sharding settings: the shards of a `[[database]]` (`[[database.shards]]`, each a primary
//! with its own replicas), the sharded tables (`[[sharded_table]]`: key column, key type and
//! placement) and where tenants live (`[tenancy] shard_by = "tenant"`, `[[tenant_shard]]`).
//! Parsing and validation only; placement itself is `route::shard`.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::replicas::FileReplicas;
use super::{Config, ConfigError, ReplicaConfig, UpstreamUrl};
use crate::route::shard::{owned_key, KeyType, OwnedKey, Placement, ShardedTable, TenantPlacement};

/// One shard of a database: its primary and its replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardConfig {
    pub primary: UpstreamUrl,
    /// With the database's replica settings, when the shard has replicas.
    pub replicas: Option<ReplicaConfig>,
}

/// What routes by shard, across databases.
#[derive(Debug, Clone, Default)]
pub struct Sharding {
    pub tables: Vec<ShardedTable>,
    /// Every statement of a client goes to its tenant's shard (`[tenancy] shard_by`).
    pub by_tenant: bool,
    /// Explicit tenant placements (`[[tenant_shard]]`).
    pub tenants: TenantPlacement,
}

impl Sharding {
    /// The sharded table `name` (`table` or `schema.table`) of `database`, if any.
    pub fn table(&self, database: &str, name: &str) -> Option<&ShardedTable> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        self.tables.iter().find(|t| {
            t.database == database
                && t.table == table
                && (schema.is_none() || t.schema.as_deref() == schema)
        })
    }
}

/// What `pgsidecar shard-of` asks about.
pub enum ShardQuestion<'a> {
    /// The shard of a row of a sharded table with this key (text form).
    Row { table: &'a str, key: &'a str },
    /// The shard of a tenant.
    Tenant(&'a str),
}

impl Config {
    /// The shard (0-based) that owns what `question` names, in `database` or the one sharded
    /// database there is.
    pub fn shard_of(
        &self,
        database: Option<&str>,
        question: ShardQuestion<'_>,
    ) -> Result<usize, String> {
        let mut sharded = self
            .databases
            .iter()
            .filter(|d| !d.shards.is_empty() && database.is_none_or(|n| d.name == n));
        let db = match (sharded.next(), sharded.next(), database) {
            (Some(db), None, _) => db,
            (Some(_), Some(_), _) => {
                return Err("several databases are sharded: name one with --database".into())
            }
            (None, _, Some(name)) => return Err(format!("database {name:?} is not sharded")),
            (None, _, None) => return Err("no database has [[database.shards]]".into()),
        };
        let shards = db.shards.len();
        match question {
            ShardQuestion::Tenant(tenant) => {
                if !self.sharding.by_tenant {
                    return Err(
                        "tenants are not sharded: [tenancy] shard_by = \"tenant\" is not set"
                            .into(),
                    );
                }
                Ok(self.sharding.tenants.shard_of(tenant, shards))
            }
            ShardQuestion::Row { table, key } => {
                let t = self.sharding.table(&db.name, table).ok_or_else(|| {
                    format!(
                        "{table:?} is not a [[sharded_table]] of database {:?}",
                        db.name
                    )
                })?;
                let key = t.key_type.parse(key).map_err(|e| e.to_string())?;
                t.shard_of(Some(key), shards).map_err(|e| e.to_string())
            }
        }
    }
}

/// A sharded database as TOML (for `pgsidecar check`), passwords masked.
pub(super) fn describe_database(name: &str, shards: &[ShardConfig]) -> String {
    let mut out = format!("\n[[database]]\nname = \"{name}\"\n");
    for shard in shards {
        out.push_str(&format!(
            "[[database.shards]]\nprimary = \"{}\"\n",
            shard.primary.masked()
        ));
        if let Some(r) = &shard.replicas {
            out.push_str(&r.describe());
        }
    }
    out
}

impl Sharding {
    /// The sharded tables and tenant placements as TOML (for `pgsidecar check`).
    pub(super) fn describe(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let method = match &t.placement {
                Placement::Hash => "hash",
                Placement::Range { .. } => "range",
                Placement::List { .. } => "list",
            };
            out.push_str(&format!(
                "\n[[sharded_table]]\ndatabase = \"{}\"\ntable = \"{}\"\ncolumn = \"{}\"\ntype = \"{}\"\nmethod = \"{method}\"\n",
                t.database,
                t.display_name(),
                t.column,
                t.key_type.name(),
            ));
            let list = |keys: &mut dyn Iterator<Item = String>| {
                format!("[{}]", keys.collect::<Vec<_>>().join(", "))
            };
            let (keys, default_shard) = match &t.placement {
                Placement::Hash => continue,
                Placement::Range {
                    ranges,
                    default_shard,
                } => {
                    let mut pairs = ranges
                        .iter()
                        .map(|(a, b)| list(&mut [toml_key(a), toml_key(b)].into_iter()));
                    (format!("ranges = {}\n", list(&mut pairs)), default_shard)
                }
                Placement::List {
                    values,
                    default_shard,
                } => {
                    let mut lists = values.iter().map(|v| list(&mut v.iter().map(toml_key)));
                    (format!("values = {}\n", list(&mut lists)), default_shard)
                }
            };
            out.push_str(&keys);
            if let Some(d) = default_shard {
                out.push_str(&format!("default_shard = {d}\n"));
            }
        }
        let mut placed: Vec<_> = self.tenants.placed.iter().collect();
        placed.sort();
        for (tenant, shard) in placed {
            out.push_str(&format!(
                "\n[[tenant_shard]]\ntenant = \"{tenant}\"\nshard = {shard}\n"
            ));
        }
        out
    }
}

/// A configured key as a TOML value.
fn toml_key(key: &OwnedKey) -> String {
    match key {
        OwnedKey::Int(v) => v.to_string(),
        OwnedKey::Text(_) | OwnedKey::Uuid(_) => {
            toml::Value::String(key.key().to_string()).to_string()
        }
    }
}

/// `[[database.shards]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileShard {
    primary: String,
    #[serde(default)]
    replicas: Vec<String>,
}

/// How `[[sharded_table]]` places rows.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Method {
    #[default]
    Hash,
    Range,
    List,
}

/// `[[sharded_table]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileShardedTable {
    database: String,
    table: String,
    column: String,
    #[serde(rename = "type")]
    key_type: KeyType,
    #[serde(default)]
    method: Method,
    ranges: Option<Vec<(toml::Value, toml::Value)>>,
    values: Option<Vec<Vec<toml::Value>>>,
    default_shard: Option<usize>,
}

/// `[[tenant_shard]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTenantShard {
    tenant: String,
    shard: usize,
}

/// The shards of one database (`replicas` carries the database's replica settings; its own
/// URL list must be empty when there are shards).
pub(super) fn validate_shards(
    database: &str,
    shards: Vec<FileShard>,
    replicas: &FileReplicas,
) -> Result<Vec<ShardConfig>, ConfigError> {
    if !replicas.replicas.is_empty() {
        return Err(ConfigError::invalid(
            "database.replicas",
            format!("database {database:?} has shards: give each [[database.shards]] its replicas"),
        ));
    }
    shards
        .into_iter()
        .map(|shard| {
            let replicas = if shard.replicas.is_empty() {
                None
            } else {
                replicas.with_urls(shard.replicas).validate()?
            };
            Ok(ShardConfig {
                primary: UpstreamUrl::parse(&shard.primary)?,
                replicas,
            })
        })
        .collect()
}

/// The sharded tables and tenant placements, checked against the databases' shard counts.
pub(super) fn validate_sharding(
    tables: Vec<FileShardedTable>,
    tenant_shards: Vec<FileTenantShard>,
    by_tenant: bool,
    shard_counts: &HashMap<String, usize>,
) -> Result<Sharding, ConfigError> {
    let mut seen = HashSet::new();
    let mut validated = Vec::new();
    for t in tables {
        let Some(&shards) = shard_counts.get(&t.database) else {
            return Err(ConfigError::invalid(
                "sharded_table.database",
                format!(
                    "{:?} is not a database with [[database.shards]]",
                    t.database
                ),
            ));
        };
        let table = t.table.clone();
        if !seen.insert((t.database.clone(), table.clone())) {
            return Err(ConfigError::invalid(
                "sharded_table.table",
                format!("{table:?} of database {:?} appears twice", t.database),
            ));
        }
        validated.push(t.validate(shards)?);
    }
    let smallest = shard_counts.values().copied().min();
    if by_tenant && smallest.is_none() {
        return Err(ConfigError::invalid(
            "tenancy.shard_by",
            "\"tenant\" needs a database with [[database.shards]]",
        ));
    }
    let mut tenants = TenantPlacement::default();
    for placed in tenant_shards {
        if !by_tenant {
            return Err(ConfigError::invalid(
                "tenant_shard",
                "tenant placements need [tenancy] shard_by = \"tenant\"",
            ));
        }
        if smallest.is_some_and(|n| placed.shard >= n) {
            return Err(ConfigError::invalid(
                "tenant_shard.shard",
                format!(
                    "tenant {:?}: shard {} does not exist (shards are numbered from 0)",
                    placed.tenant, placed.shard
                ),
            ));
        }
        if tenants
            .placed
            .insert(placed.tenant.clone(), placed.shard)
            .is_some()
        {
            return Err(ConfigError::invalid(
                "tenant_shard.tenant",
                format!("{:?} is placed twice", placed.tenant),
            ));
        }
    }
    Ok(Sharding {
        tables: validated,
        by_tenant,
        tenants,
    })
}

impl FileShardedTable {
    fn validate(self, shards: usize) -> Result<ShardedTable, ConfigError> {
        let name = self.table.clone();
        let (schema, table) = match self.table.split_once('.') {
            Some((schema, table)) => (Some(schema.to_owned()), table.to_owned()),
            None => (None, self.table),
        };
        if table.is_empty() || schema.as_deref() == Some("") || self.column.is_empty() {
            return Err(ConfigError::invalid(
                "sharded_table",
                format!("{name:?}: table and column must be named"),
            ));
        }
        let key_type = self.key_type;
        let key = |v: &toml::Value| -> Result<OwnedKey, ConfigError> {
            let text = match (v, key_type) {
                (toml::Value::String(s), _) => s.clone(),
                (
                    toml::Value::Integer(i),
                    KeyType::Smallint | KeyType::Integer | KeyType::Bigint,
                ) => i.to_string(),
                (other, _) => {
                    return Err(ConfigError::invalid(
                        "sharded_table",
                        format!(
                            "{name:?}: {other} must be a {} written as TOML",
                            key_type.name()
                        ),
                    ))
                }
            };
            owned_key(key_type, &text)
                .map_err(|e| ConfigError::invalid("sharded_table", format!("{name:?}: {e}")))
        };
        let wrong = |what: &str| {
            ConfigError::invalid(
                "sharded_table",
                format!("{name:?}: {what} (the database has {shards} shards)"),
            )
        };
        if self.default_shard.is_some_and(|d| d >= shards) {
            return Err(wrong("default_shard is not a shard"));
        }
        let placement = match (self.method, self.ranges, self.values) {
            (Method::Hash, None, None) if self.default_shard.is_none() => Placement::Hash,
            (Method::Hash, _, _) => {
                return Err(wrong(
                    "method = \"hash\" takes no ranges, values or default_shard",
                ))
            }
            (Method::Range, Some(ranges), None) => {
                if ranges.len() != shards {
                    return Err(wrong("ranges needs one [start, end] per shard"));
                }
                let ranges = ranges
                    .iter()
                    .map(|(start, end)| Ok((key(start)?, key(end)?)))
                    .collect::<Result<Vec<_>, ConfigError>>()?;
                Placement::Range {
                    ranges,
                    default_shard: self.default_shard,
                }
            }
            (Method::List, None, Some(values)) => {
                if values.len() != shards {
                    return Err(wrong("values needs one list per shard"));
                }
                let values = values
                    .iter()
                    .map(|list| list.iter().map(key).collect())
                    .collect::<Result<Vec<_>, ConfigError>>()?;
                Placement::List {
                    values,
                    default_shard: self.default_shard,
                }
            }
            (Method::Range, _, _) => return Err(wrong("method = \"range\" needs ranges")),
            (Method::List, _, _) => return Err(wrong("method = \"list\" needs values")),
        };
        Ok(ShardedTable {
            database: self.database,
            schema,
            table,
            column: self.column,
            key_type,
            placement,
        })
    }
}
