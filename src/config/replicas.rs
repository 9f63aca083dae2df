//! Replica routing settings of one `[[database]]`: the replica URLs, how reads pick a replica,
//! whether the primary serves reads too, how much lag is tolerated, and the scope of
//! read-your-writes. Parsing and validation only.

use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, parse_size, ConfigError, UpstreamUrl};

/// How reads choose among the usable replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConnections,
    Random,
}

/// Whether the primary serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryReads {
    /// Never: with no usable replica, reads fail (57P03).
    Never,
    /// Only when no replica is usable.
    #[default]
    Fallback,
    /// Always, as one more candidate beside the replicas.
    Always,
}

/// Who must see a write once it committed (reads in that scope go to the primary until a
/// replica has replayed past the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// The client that wrote.
    Client,
    /// Every client of the same tenant (with `[tenancy]`).
    Tenant,
    /// Every client of the sidecar: the useful default for applications with their own pool,
    /// which read on another connection than they wrote on.
    #[default]
    Sidecar,
    /// Nobody: reads may miss writes that just committed.
    Off,
}

/// How far behind a replica may be and still serve reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxLag {
    /// WAL bytes not yet replayed.
    Bytes(u64),
    /// Time, estimated from the primary's recent WAL rate.
    Time(Duration),
}

/// The replica routing of one database.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaConfig {
    pub urls: Vec<UpstreamUrl>,
    pub strategy: Strategy,
    pub primary_reads: PrimaryReads,
    pub max_lag: MaxLag,
    pub read_your_writes: ReadYourWrites,
    /// How often each replica (and the primary's WAL position) is checked.
    pub check_interval: Duration,
}

/// The replica keys of a `[[database]]` table as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileReplicas {
    #[serde(default)]
    pub replicas: Vec<String>,
    pub replica_strategy: Option<Strategy>,
    pub primary_reads: Option<PrimaryReads>,
    pub max_replica_lag: Option<String>,
    pub read_your_writes: Option<String>,
    pub replica_check_interval: Option<String>,
}

impl ReplicaConfig {
    /// The settings as TOML lines (for `pgsidecar check`), URLs with passwords masked.
    pub fn describe(&self) -> String {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| format!("\"{}\"", u.masked()))
            .collect();
        let strategy = match self.strategy {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::Random => "random",
        };
        let primary_reads = match self.primary_reads {
            PrimaryReads::Never => "never",
            PrimaryReads::Fallback => "fallback",
            PrimaryReads::Always => "always",
        };
        let read_your_writes = match self.read_your_writes {
            ReadYourWrites::Client => "client",
            ReadYourWrites::Tenant => "tenant",
            ReadYourWrites::Sidecar => "sidecar",
            ReadYourWrites::Off => "off",
        };
        let max_lag = match self.max_lag {
            MaxLag::Bytes(n) => format!("{n}"),
            MaxLag::Time(d) => format!("{}ms", d.as_millis()),
        };
        format!(
            "replicas = [{}]\nreplica_strategy = \"{strategy}\"\nprimary_reads = \"{primary_reads}\"\n\
             max_replica_lag = \"{max_lag}\"\nread_your_writes = \"{read_your_writes}\"\n\
             replica_check_interval = \"{}ms\"\n",
            urls.join(", "),
            self.check_interval.as_millis()
        )
    }
}

const DEFAULT_MAX_LAG: MaxLag = MaxLag::Bytes(16 << 20);

impl FileReplicas {
    /// These settings for other replica URLs (a shard's).
    pub(super) fn with_urls(&self, replicas: Vec<String>) -> FileReplicas {
        FileReplicas {
            replicas,
            ..self.clone()
        }
    }

    /// The validated settings, or `None` when the database has no replicas.
    pub(super) fn validate(self) -> Result<Option<ReplicaConfig>, ConfigError> {
        if self.replicas.is_empty() {
            let set = self.replica_strategy.is_some()
                || self.primary_reads.is_some()
                || self.max_replica_lag.is_some()
                || self.read_your_writes.is_some()
                || self.replica_check_interval.is_some();
            if set {
                return Err(ConfigError::invalid(
                    "database.replicas",
                    "replica settings are given but no replicas",
                ));
            }
            return Ok(None);
        }
        let urls = self
            .replicas
            .iter()
            .map(|u| UpstreamUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let max_lag = match self.max_replica_lag {
            None => DEFAULT_MAX_LAG,
            Some(s) => parse_max_lag(&s)
                .map_err(|r| ConfigError::invalid("database.max_replica_lag", r))?,
        };
        let read_your_writes = match self.read_your_writes.as_deref() {
            None => ReadYourWrites::default(),
            Some("client") => ReadYourWrites::Client,
            Some("sidecar") => ReadYourWrites::Sidecar,
            Some("off") => ReadYourWrites::Off,
            Some("tenant") => ReadYourWrites::Tenant,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "database.read_your_writes",
                    format!("{other:?} is not one of \"client\", \"tenant\", \"sidecar\", \"off\""),
                ))
            }
        };
        let check_interval = match self.replica_check_interval {
            None => Duration::from_secs(1),
            Some(s) => parse_duration(&s)
                .map_err(|r| ConfigError::invalid("database.replica_check_interval", r))?,
        };
        if check_interval < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "database.replica_check_interval",
                "must be at least 10ms",
            ));
        }
        Ok(Some(ReplicaConfig {
            urls,
            strategy: self.replica_strategy.unwrap_or_default(),
            primary_reads: self.primary_reads.unwrap_or_default(),
            max_lag,
            read_your_writes,
            check_interval,
        }))
    }
}

/// "16MiB" (WAL bytes) or "5s" (time, from the WAL rate).
fn parse_max_lag(s: &str) -> Result<MaxLag, String> {
    let unit = s
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    match unit.trim() {
        "ms" | "s" | "m" | "min" | "h" => parse_duration(s).map(MaxLag::Time),
        _ => parse_size(s).map(|n| MaxLag::Bytes(n as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(replicas: &[&str]) -> FileReplicas {
        FileReplicas {
            replicas: replicas.iter().map(|s| s.to_string()).collect(),
            ..FileReplicas::default()
        }
    }

    #[test]
    fn defaults_and_lag_forms() {
        let c = file(&["postgres://a:b@127.0.0.1:5433/app"])
            .validate()
            .unwrap()
            .unwrap();
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert_eq!(c.primary_reads, PrimaryReads::Fallback);
        assert_eq!(c.read_your_writes, ReadYourWrites::Sidecar);
        assert_eq!(c.max_lag, MaxLag::Bytes(16 << 20));
        assert_eq!(
            parse_max_lag("5s"),
            Ok(MaxLag::Time(Duration::from_secs(5)))
        );
        assert_eq!(parse_max_lag("1MiB"), Ok(MaxLag::Bytes(1 << 20)));
        assert!(parse_max_lag("lots").is_err());
        assert!(file(&[]).validate().unwrap().is_none());
    }

    #[test]
    fn refusals() {
        let mut f = file(&[]);
        f.primary_reads = Some(PrimaryReads::Never);
        assert!(f.validate().is_err());
        let mut f = file(&["postgres://a:b@127.0.0.1:5433/app"]);
        f.read_your_writes = Some("everyone".into());
        assert!(f.validate().is_err());
        assert!(file(&["not a url"]).validate().is_err());
    }
}
