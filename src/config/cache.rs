//! The result cache's settings: `[cache]` (`max_bytes`, `ttl`, `max_entry_bytes`,
//! `in_read_only_transactions`) and its `[[cache.rule]]` whitelist (per database: tables and/or
//! statement fingerprints, each rule with an optional TTL of its own). Parsing and validation
//! only; the cache is off unless `[cache]` has at least one rule.

use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, parse_size, ConfigError};

/// The result cache, when configured.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// What all entries together may weigh (bytes of keys and recorded replies).
    pub max_bytes: u64,
    /// How long an entry lives when its rule gives no TTL.
    pub ttl: Duration,
    /// Larger replies are forwarded and not stored.
    pub max_entry_bytes: usize,
    /// Reads inside `BEGIN READ ONLY` / `SET TRANSACTION READ ONLY` transactions may be
    /// served from (and stored into) the cache too.
    pub in_read_only_transactions: bool,
    pub rules: Vec<CacheRule>,
}

/// One `[[cache.rule]]`: statements that read only these tables, or have one of these shapes,
/// may be cached for `ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRule {
    pub database: String,
    /// Tables as written (`products`, `public.prices`), lower-cased unless quoted.
    pub tables: Vec<String>,
    /// Statement shapes: the fingerprint of each statement text given (literals, comments,
    /// whitespace and case of keywords do not matter).
    pub fingerprints: Vec<Vec<u8>>,
    pub ttl: Duration,
}

impl CacheConfig {
    /// The effective `[cache]` as TOML-like text (fingerprints as comments: their normalized
    /// shapes, `?` for each literal).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "\n[cache]\nmax_bytes = \"{}\"\nttl = \"{}\"\nmax_entry_bytes = \"{}\"\nin_read_only_transactions = {}\n",
            super::format_size(self.max_bytes as usize),
            super::format_duration(self.ttl),
            super::format_size(self.max_entry_bytes),
            self.in_read_only_transactions
        );
        for rule in &self.rules {
            let quoted = |items: Vec<String>| {
                items
                    .iter()
                    .map(|i| format!("{i:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let shapes = rule
                .fingerprints
                .iter()
                .map(|f| String::from_utf8_lossy(f).replace('\0', "?"))
                .collect();
            out.push_str(&format!(
                "\n[[cache.rule]]\ndatabase = \"{}\"\ntables = [{}]\n# fingerprints (shapes): [{}]\nttl = \"{}\"\n",
                rule.database,
                quoted(rule.tables.clone()),
                quoted(shapes),
                super::format_duration(rule.ttl)
            ));
        }
        out
    }

    /// The rules of one database.
    pub fn rules_of<'a>(&'a self, database: &'a str) -> impl Iterator<Item = &'a CacheRule> {
        self.rules.iter().filter(move |r| r.database == database)
    }
}

/// `[cache]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCache {
    max_bytes: Option<String>,
    ttl: Option<String>,
    max_entry_bytes: Option<String>,
    #[serde(default)]
    in_read_only_transactions: bool,
    #[serde(default)]
    rule: Vec<FileCacheRule>,
}

/// `[[cache.rule]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCacheRule {
    database: String,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    fingerprints: Vec<String>,
    ttl: Option<String>,
}

/// The cache settings, checked against the databases they name: each must exist and not be
/// sharded by statement (a cached read names no shard).
pub(super) fn validate_cache(
    file: Option<FileCache>,
    databases: &[super::DatabaseConfig],
) -> Result<Option<CacheConfig>, ConfigError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let duration = |key: &str, v: Option<&String>, default: &str| {
        parse_duration(v.map_or(default, String::as_str)).map_err(|r| ConfigError::invalid(key, r))
    };
    let size = |key: &str, v: Option<&String>, default: &str| {
        parse_size(v.map_or(default, String::as_str)).map_err(|r| ConfigError::invalid(key, r))
    };
    let ttl = duration("cache.ttl", file.ttl.as_ref(), "60s")?;
    let max_bytes = size("cache.max_bytes", file.max_bytes.as_ref(), "64MiB")? as u64;
    let max_entry_bytes = size(
        "cache.max_entry_bytes",
        file.max_entry_bytes.as_ref(),
        "1MiB",
    )?;
    if ttl.is_zero() {
        return Err(ConfigError::invalid("cache.ttl", "must be more than 0s"));
    }
    if max_entry_bytes == 0 || max_entry_bytes as u64 > max_bytes {
        return Err(ConfigError::invalid(
            "cache.max_entry_bytes",
            "must be more than 0 and at most cache.max_bytes",
        ));
    }
    let mut rules = Vec::new();
    for rule in file.rule {
        let Some(db) = databases.iter().find(|d| d.name == rule.database) else {
            return Err(ConfigError::invalid(
                "cache.rule.database",
                format!("{:?} is not a configured [[database]]", rule.database),
            ));
        };
        if !db.shards.is_empty() {
            return Err(ConfigError::invalid(
                "cache.rule.database",
                format!(
                    "{:?} is sharded: the result cache serves unsharded databases only",
                    rule.database
                ),
            ));
        }
        if rule.tables.is_empty() && rule.fingerprints.is_empty() {
            return Err(ConfigError::invalid(
                "cache.rule",
                "a rule needs tables, fingerprints or both",
            ));
        }
        let rule_ttl = match &rule.ttl {
            Some(t) => duration("cache.rule.ttl", Some(t), "60s")?,
            None => ttl,
        };
        if rule_ttl.is_zero() {
            return Err(ConfigError::invalid(
                "cache.rule.ttl",
                "must be more than 0s",
            ));
        }
        rules.push(CacheRule {
            database: rule.database,
            tables: rule.tables.iter().map(|t| table_name(t)).collect(),
            fingerprints: rule
                .fingerprints
                .iter()
                .map(|f| {
                    crate::sql::fingerprint::scan(f.as_bytes())
                        .fingerprint
                        .to_vec()
                })
                .collect(),
            ttl: rule_ttl,
        });
    }
    Ok(Some(CacheConfig {
        max_bytes,
        ttl,
        max_entry_bytes,
        in_read_only_transactions: file.in_read_only_transactions,
        rules,
    }))
}

/// A table name as the classifier spells it: unquoted parts lower-cased, quoted ones as they
/// are (without their quotes).
fn table_name(written: &str) -> String {
    written
        .split('.')
        .map(|part| match part.trim() {
            p if p.len() >= 2 && p.starts_with('"') && p.ends_with('"') => {
                p[1..p.len() - 1].replace("\"\"", "\"")
            }
            p => p.to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_fold_like_the_classifier() {
        assert_eq!(table_name("Products"), "products");
        assert_eq!(table_name("public.\"Prices\""), "public.Prices");
    }
}
