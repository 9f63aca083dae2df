//! The primary and replicas of one database: each replica's health and lag, checked every
//! `replica_check_interval` on a connection from its own pool (so the pool size bounds the
//! checks too); ejection with backoff and reinstatement; the primary's WAL position, polled on
//! the same schedule, for lag and read-your-writes; and the choice of a replica for a read.
//!
//! Lag is measured by WAL position (the primary's `pg_current_wal_insert_lsn()` against each
//! replica's `pg_last_wal_replay_lsn()`), never by replay timestamps, which grow while the
//! primary is idle. Read-your-writes costs no round trip per query: a committed write gets a
//! sequence number, and the first primary poll that *starts* after it says which WAL position a
//! replica must have replayed before reads in the write's scope may go there again. The insert
//! position, not `pg_current_wal_lsn()` (the write position): with `synchronous_commit = off`
//! a commit returns before its record is written, and the write position can still be short of
//! it, which let a read reach a replica that had not replayed the client's own commit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

use super::Pool;
use crate::config::{MaxLag, PrimaryReads, ReadYourWrites, ReplicaConfig, Strategy};
use crate::metrics::Metrics;
use crate::route::replica::{choose, Candidate};

/// Longest pause between checks of a replica that keeps failing.
/// The shortest bound on one health check (intervals below it would eject replicas that are
/// merely busy).
const MIN_CHECK_BOUND: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Primary WAL polls remembered for read-your-writes.
const POLLS_KEPT: usize = 256;

/// One replica and what the last checks found.
pub struct Replica {
    pub pool: Arc<Pool>,
    usable: AtomicBool,
    replay_lsn: AtomicU64,
    up: IntGauge,
    lag: IntGauge,
    ejections: IntCounter,
}

impl Replica {
    /// Whether its last check found it healthy and within the lag limit (it serves reads).
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// WAL bytes it had not replayed at its last check.
    pub fn lag_bytes(&self) -> i64 {
        self.lag.get()
    }

    /// Times it stopped serving reads.
    pub fn ejections(&self) -> u64 {
        self.ejections.get()
    }
}

/// A primary WAL poll: the write sequence when it started, and the LSN it read.
#[derive(Debug, Clone, Copy)]
struct Poll {
    writes_before: u64,
    lsn: u64,
}

/// Why a read cannot go to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplica {
    /// None is healthy and within the lag limit; `primary_reads` says whether the primary may
    /// serve the read instead.
    Unavailable { primary_allowed: bool },
    /// Read-your-writes: none has replayed the client's last write yet (the primary serves it).
    NotCaughtUp,
}

/// The primary and replicas of one database.
pub struct Topology {
    pub primary: Arc<Pool>,
    pub replicas: Vec<Replica>,
    pub config: ReplicaConfig,
    turn: AtomicUsize,
    /// Writes committed on the primary (read-your-writes scope "sidecar").
    writes: AtomicU64,
    /// The sequence of each tenant's last write (scope "tenant").
    tenant_writes: Mutex<std::collections::HashMap<String, u64>>,
    polls: Mutex<VecDeque<Poll>>,
    /// The primary's WAL position at the last poll, and its WAL rate (bytes per second).
    primary_lsn: AtomicU64,
    wal_rate: AtomicU64,
    routed_primary: IntCounter,
    routed_replica: IntCounter,
}

impl Topology {
    /// The topology of a database whose replicas are served by `replica_pools` (in config order).
    pub fn new(
        primary: Arc<Pool>,
        replica_pools: Vec<Arc<Pool>>,
        config: ReplicaConfig,
        metrics: &Metrics,
    ) -> Topology {
        let replicas = replica_pools
            .into_iter()
            .enumerate()
            .map(|(i, pool)| {
                let name = &pool.name;
                let (shard, replica) = (name.shard_label(), i.to_string());
                let labels = [name.database.as_str(), &shard, &replica];
                let up = metrics.replica_up.with_label_values(&labels);
                up.set(0);
                let lag = metrics.replica_lag_bytes.with_label_values(&labels);
                let ejections = metrics.replica_ejections.with_label_values(&labels);
                Replica {
                    pool,
                    // Usable from the first successful check on.
                    usable: AtomicBool::new(false),
                    replay_lsn: AtomicU64::new(0),
                    up,
                    lag,
                    ejections,
                }
            })
            .collect();
        Topology {
            primary,
            replicas,
            config,
            turn: AtomicUsize::new(0),
            writes: AtomicU64::new(0),
            tenant_writes: Mutex::new(std::collections::HashMap::new()),
            polls: Mutex::new(VecDeque::new()),
            primary_lsn: AtomicU64::new(0),
            wal_rate: AtomicU64::new(0),
            routed_primary: metrics.routed_primary.clone(),
            routed_replica: metrics.routed_replica.clone(),
        }
    }

    /// Records a write that committed on the primary (by a client of `tenant`); returns its
    /// sequence number (kept by the client for read-your-writes scope "client").
    pub fn note_write(&self, tenant: Option<&str>) -> u64 {
        let seq = self.writes.fetch_add(1, Ordering::AcqRel) + 1;
        if let (Some(tenant), ReadYourWrites::Tenant) = (tenant, self.config.read_your_writes) {
            let mut writes = self.tenant_writes.lock().unwrap_or_else(|e| e.into_inner());
            if writes.len() >= 100_000 {
                // Tenants whose writes every replica has long replayed.
                writes.clear();
            }
            writes.insert(tenant.to_owned(), seq);
        }
        seq
    }

    /// The replica a read should use, with its index. `client_writes` is the sequence of the
    /// client's last write (0: none).
    pub fn choose_replica(
        &self,
        client_writes: u64,
        tenant: Option<&str>,
    ) -> Result<(usize, &Replica), NoReplica> {
        let scope_writes = match self.config.read_your_writes {
            ReadYourWrites::Off => 0,
            ReadYourWrites::Client => client_writes,
            ReadYourWrites::Tenant => match tenant {
                Some(tenant) => {
                    let writes = self.tenant_writes.lock().unwrap_or_else(|e| e.into_inner());
                    writes.get(tenant).copied().unwrap_or(0).max(client_writes)
                }
                None => client_writes,
            },
            ReadYourWrites::Sidecar => self.writes.load(Ordering::Acquire),
        };
        let required = match self.required_lsn(scope_writes) {
            Some(lsn) => lsn,
            None => return Err(NoReplica::NotCaughtUp),
        };
        let mut any_healthy = false;
        let candidates: Vec<Candidate> = self
            .replicas
            .iter()
            .map(|r| {
                let healthy = r.usable.load(Ordering::Acquire);
                any_healthy |= healthy;
                Candidate {
                    usable: healthy && r.replay_lsn.load(Ordering::Acquire) >= required,
                    in_use: r.pool.in_use(),
                }
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let random = match self.config.strategy {
            Strategy::Random => spread(turn),
            _ => 0,
        };
        match choose(&candidates, self.config.strategy, turn, random) {
            Some(i) => Ok((i, &self.replicas[i])),
            None if any_healthy => Err(NoReplica::NotCaughtUp),
            None => Err(NoReplica::Unavailable {
                primary_allowed: self.config.primary_reads != PrimaryReads::Never,
            }),
        }
    }

    /// Stops sending reads to the replica behind `pool` (it failed under a client) until its
    /// next successful check.
    pub fn eject(&self, pool: &Arc<Pool>) {
        if let Some(replica) = self.replicas.iter().find(|r| Arc::ptr_eq(&r.pool, pool)) {
            if replica.usable.swap(false, Ordering::AcqRel) {
                replica.ejections.inc();
            }
            replica.up.set(0);
        }
    }

    /// Whether a read may use the primary even though a replica could serve it.
    pub fn primary_serves_reads_too(&self) -> bool {
        self.config.primary_reads == PrimaryReads::Always && {
            let turn = self.turn.load(Ordering::Relaxed);
            turn % (self.replicas.len() + 1) == self.replicas.len()
        }
    }

    /// Counts where a request went.
    pub fn count_route(&self, replica: bool) {
        if replica {
            self.routed_replica.inc()
        } else {
            self.routed_primary.inc()
        }
    }

    /// The WAL position a replica must have replayed to show every write up to `writes`, or
    /// `None` when no primary poll has started since the last of them.
    fn required_lsn(&self, writes: u64) -> Option<u64> {
        if writes == 0 {
            return Some(0);
        }
        let polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        polls
            .iter()
            .find(|p| p.writes_before >= writes)
            .map(|p| p.lsn)
    }

    /// How long one check may take: its interval, but at least [`MIN_CHECK_BOUND`]. A replica
    /// that does not answer within it is ejected.
    fn check_bound(&self) -> Duration {
        self.config.check_interval.max(MIN_CHECK_BOUND)
    }

    /// Checks the primary and every replica until `stop` fires.
    pub async fn monitor(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let interval = self.config.check_interval;
        let mut next_check: Vec<Instant> = vec![Instant::now(); self.replicas.len()];
        let mut failures: Vec<u32> = vec![0; self.replicas.len()];
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll: Option<(Instant, u64)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            self.poll_primary(&mut last_poll).await;
            let now = Instant::now();
            for (i, replica) in self.replicas.iter().enumerate() {
                if now < next_check[i] {
                    continue;
                }
                match self.check_replica(replica).await {
                    Ok(()) => {
                        failures[i] = 0;
                        next_check[i] = now;
                    }
                    Err(reason) => {
                        failures[i] += 1;
                        let backoff = interval
                            .saturating_mul(1 << failures[i].min(10))
                            .min(MAX_BACKOFF);
                        next_check[i] = now + backoff;
                        tracing::warn!(
                            replica = i,
                            reason,
                            ?backoff,
                            "replica does not serve reads"
                        );
                    }
                }
            }
        }
    }

    /// Reads the primary's WAL position (and its WAL rate), remembering which writes the
    /// poll covers.
    async fn poll_primary(&self, last: &mut Option<(Instant, u64)>) {
        let writes_before = self.writes.load(Ordering::Acquire);
        let Ok(Some(lsn)) = lsn_query(
            &self.primary,
            "SELECT pg_catalog.pg_current_wal_insert_lsn()::text",
            self.check_bound(),
        )
        .await
        else {
            return;
        };
        let now = Instant::now();
        if let Some((at, previous)) = *last {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rate = (lsn.saturating_sub(previous) as f64 / secs) as u64;
                // A smoothed rate, so one idle interval does not make every lag look endless.
                let old = self.wal_rate.load(Ordering::Relaxed);
                self.wal_rate.store((old + rate) / 2, Ordering::Relaxed);
            }
        }
        *last = Some((now, lsn));
        self.primary_lsn.store(lsn, Ordering::Release);
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        if polls.len() >= POLLS_KEPT {
            polls.pop_front();
        }
        polls.push_back(Poll { writes_before, lsn });
    }

    /// One check of a replica; marks it usable or not.
    async fn check_replica(&self, replica: &Replica) -> Result<(), &'static str> {
        let outcome = replica_state(&replica.pool, self.check_bound()).await;
        let verdict = match outcome {
            Err(reason) => Err(reason),
            Ok(replay) => {
                replica.replay_lsn.store(replay, Ordering::Release);
                let behind = self
                    .primary_lsn
                    .load(Ordering::Acquire)
                    .saturating_sub(replay);
                replica.lag.set(behind.min(i64::MAX as u64) as i64);
                if self.within_lag(behind) {
                    Ok(())
                } else {
                    Err("behind the primary by more than max_replica_lag")
                }
            }
        };
        let was = replica.usable.swap(verdict.is_ok(), Ordering::AcqRel);
        replica.up.set(verdict.is_ok() as i64);
        if was && verdict.is_err() {
            replica.ejections.inc();
        }
        verdict
    }

    fn within_lag(&self, behind: u64) -> bool {
        match self.config.max_lag {
            MaxLag::Bytes(max) => behind <= max,
            MaxLag::Time(max) => {
                if behind == 0 {
                    return true;
                }
                let rate = self.wal_rate.load(Ordering::Relaxed);
                rate > 0 && Duration::from_secs_f64(behind as f64 / rate as f64) <= max
            }
        }
    }
}

/// `pg_last_wal_replay_lsn()` of a server that must be in recovery.
async fn replica_state(pool: &Arc<Pool>, bound: Duration) -> Result<u64, &'static str> {
    let sql =
        "SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.pg_last_wal_replay_lsn()::text";
    let rows = query(pool, sql, bound)
        .await
        .ok_or("check failed or not answered in time")?;
    match rows.first().map(Vec::as_slice) {
        Some([Some(recovery), Some(lsn)]) if recovery == "true" => {
            parse_lsn(lsn).ok_or("unreadable replay position")
        }
        Some([Some(_), _]) => Err("not in recovery (promoted?)"),
        _ => Err("unexpected check reply"),
    }
}

async fn lsn_query(pool: &Arc<Pool>, sql: &str, bound: Duration) -> Result<Option<u64>, ()> {
    let rows = query(pool, sql, bound).await.ok_or(())?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| parse_lsn(&v)))
}

/// Runs `sql` on a connection of `pool` within `bound` (a stalled network path or a frozen
/// server must not stall the checks); `None` on any failure or when the bound passed, in which
/// case the connection is not returned to the pool.
async fn query(pool: &Arc<Pool>, sql: &str, bound: Duration) -> Option<Vec<Vec<Option<String>>>> {
    let run = async {
        let mut checkout = pool.checkout().await.ok()?;
        let rows = checkout.conn_mut().query_rows(sql).await.ok()?;
        checkout.release();
        Some(rows)
    };
    tokio::time::timeout(bound, run).await.ok().flatten()
}

/// `16/B374D848` → a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// A well-spread number from a counter (SplitMix64): random enough to pick a replica, and
/// without a system call.
fn spread(turn: usize) -> usize {
    let mut z = (turn as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x3000148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/"), None);
    }
}
