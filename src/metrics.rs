//! One typed [`Metrics`] struct (prometheus crate) with label enums and RAII gauges.
//!
//! Labelled children are resolved once, when `Metrics` is built, so the hot path only touches
//! atomics. Nothing here knows about sockets or SQL text.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Where a server connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In the pool, waiting for a client.
    Idle,
    /// Checked out by a client (or by the sidecar's own work on it).
    Active,
}

/// Counters labelled by tenant, bounded: the first `limit` tenants seen get their own label,
/// the rest count as `other` (see [`Metrics::tenant_queries`]).
pub struct TenantQueries {
    vec: IntCounterVec,
    /// Changed by RELOAD.
    limit: std::sync::atomic::AtomicUsize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TenantQueries {
    /// Counters `name{tenant}`, not registered yet, labelling the first `limit` tenants.
    fn new(name: &str, help: &str, limit: usize) -> TenantQueries {
        TenantQueries {
            vec: IntCounterVec::new(Opts::new(name, help), &["tenant"])
                .expect("metric definition is valid"),
            limit: std::sync::atomic::AtomicUsize::new(limit),
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The counter of a tenant.
    pub fn counter(&self, tenant: &str) -> IntCounter {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let label = if seen.contains(tenant)
            || (seen.len() < self.limit.load(std::sync::atomic::Ordering::Relaxed)
                && seen.insert(tenant.to_owned()))
        {
            tenant
        } else {
            "other"
        };
        self.vec.with_label_values(&[label])
    }
}

/// All metrics of one sidecar process.
pub struct Metrics {
    registry: Registry,
    /// Every metric family's name (`pgsidecar_tenant_queries_total` is registered on first use).
    names: Vec<String>,
    /// `pgsidecar_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `pgsidecar_server_errors_total{class}`.
    server_errors: IntCounterVec,
    /// `pgsidecar_tenant_throttled_total{tenant}`: statements that waited for or were refused
    /// a token of their tenant's rate.
    pub tenant_throttled: TenantQueries,
    /// `pgsidecar_tenant_queries_total`, registered on first use.
    tenant_queries: std::sync::OnceLock<Arc<TenantQueries>>,
    pub client_connections: IntGauge,
    pub clients_waiting: IntGauge,
    server_idle: IntGauge,
    server_active: IntGauge,
    pub server_connects: IntCounter,
    /// Server connections reset (DISCARD ALL) because a client changed their session state.
    pub server_resets: IntCounter,
    /// Session-state captures after transactions that may have changed a client's session.
    pub session_captures: IntCounter,
    /// Checkouts that had to apply the client's settings (the connection carried others).
    pub settings_applied: IntCounter,
    /// Clients holding a server connection because of session state that cannot be pooled.
    pub clients_pinned: IntGauge,
    /// Notifications fanned out to listening clients, and dropped for clients too slow to read.
    pub notifications_delivered: IntCounter,
    pub notifications_dropped: IntCounter,
    /// Requests routed to the primary and to replicas (databases with replicas only).
    pub routed_primary: IntCounter,
    /// Statements and logins refused to protect the tenant setting (42501).
    pub tenancy_refusals: IntCounter,
    /// Server connections handed from one tenant to another (each after DISCARD ALL).
    pub tenant_hops: IntCounter,
    /// Statements forwarded under tenant enforcement although the classifier could not parse
    /// them (the signed tenant keeps them inside the tenant).
    pub tenancy_unparsed_forwarded: IntCounter,
    pub routed_replica: IntCounter,
    /// `pgsidecar_routed_total` for other targets (`shard0`, `shard1`, …).
    routed: IntCounterVec,
    /// Per replica (`database`, `replica` = its position in the config): usable now, WAL bytes
    /// behind the primary, times it was ejected.
    pub replica_up: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_ejections: IntCounterVec,
    pub checkout_wait: Histogram,
    pub queries: IntCounter,
    pub transactions: IntCounter,
    pub query_duration: Histogram,
    errors: IntCounterVec,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub upstream_up: IntGaugeVec,
    /// Statements classified, by outcome.
    pub classified_hit: IntCounter,
    pub classified_miss: IntCounter,
    pub classified_unparsed: IntCounter,
    /// The result cache's counters and gauges.
    pub cache: CacheMetrics,
    pub shards: ShardMetrics,
}

/// Statements across shards (`pgsidecar_cross_shard_total`) and two-phase commit
/// (`pgsidecar_two_phase_total`, `pgsidecar_two_phase_recovered_total`).
pub struct ShardMetrics {
    /// By kind (`read`, `write`, `copy`) and result (`ok`, `error`).
    pub cross_shard: IntCounterVec,
    /// By outcome: `committed`, `rolled_back`, `in_doubt` (a shard did not confirm COMMIT
    /// PREPARED; tried again in the background, and at the next start).
    pub two_phase: IntCounterVec,
    /// In-doubt transactions of earlier runs resolved at start, by decision.
    pub recovered: IntCounterVec,
}

impl ShardMetrics {
    fn new(registry: &Registry, names: &std::cell::RefCell<Vec<String>>) -> ShardMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definition is valid");
            register(registry, names, &v);
            v
        };
        ShardMetrics {
            cross_shard: vec(
                "pgsidecar_cross_shard_total",
                "Statements run on several shards, by kind (read, write, copy) and result (ok, error)",
                &["kind", "result"],
            ),
            two_phase: vec(
                "pgsidecar_two_phase_total",
                "Writes across shards by two-phase commit outcome (committed, rolled_back, in_doubt)",
                &["outcome"],
            ),
            recovered: vec(
                "pgsidecar_two_phase_recovered_total",
                "Prepared transactions of earlier runs resolved at start, by decision (commit, rollback)",
                &["decision"],
            ),
        }
    }

    /// Counts one statement across shards.
    pub fn ran(&self, kind: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.cross_shard.with_label_values(&[kind, result]).inc();
    }
}

/// The result cache's metrics (`pgsidecar_cache_*`).
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub stores: IntCounter,
    /// By reason (`sql::cacheable::Refusal::label`).
    pub refusals: IntCounterVec,
    pub evictions: IntCounter,
    pub invalidations: IntCounter,
    pub single_flight_waits: IntCounter,
    pub bytes: IntGauge,
    pub entries: IntGauge,
}

impl CacheMetrics {
    fn new(registry: &Registry, names: &std::cell::RefCell<Vec<String>>) -> CacheMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition is valid");
            register(registry, names, &c);
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definition is valid");
            register(registry, names, &g);
            g
        };
        let refusals = IntCounterVec::new(
            Opts::new(
                "pgsidecar_cache_refusals_total",
                "Reads of databases with cache rules that were not served from or stored in the cache, by reason",
            ),
            &["reason"],
        )
        .expect("metric definition is valid");
        register(registry, names, &refusals);
        for refusal in crate::sql::cacheable::Refusal::ALL {
            refusals.with_label_values(&[refusal.label()]);
        }
        CacheMetrics {
            hits: counter("pgsidecar_cache_hits_total", "Requests answered from the result cache"),
            misses: counter(
                "pgsidecar_cache_misses_total",
                "Cacheable requests not in the result cache (sent upstream, their replies recorded)",
            ),
            stores: counter("pgsidecar_cache_stores_total", "Replies stored in the result cache"),
            refusals,
            evictions: counter(
                "pgsidecar_cache_evictions_total",
                "Entries evicted from the result cache to stay within max_bytes",
            ),
            invalidations: counter(
                "pgsidecar_cache_invalidations_total",
                "Table invalidations (a committed write seen by this sidecar or announced by another), and flushes",
            ),
            single_flight_waits: counter(
                "pgsidecar_cache_single_flight_waits_total",
                "Misses that waited for another client's identical request instead of sending their own",
            ),
            bytes: gauge("pgsidecar_cache_bytes", "Bytes held by the result cache"),
            entries: gauge("pgsidecar_cache_entries", "Entries in the result cache"),
        }
    }
}

impl Metrics {
    /// The request counter of one routing target (e.g. `shard2`).
    pub fn routed_to(&self, target: &str) -> IntCounter {
        self.routed.with_label_values(&[target])
    }

    /// Builds and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definition is valid");
            register(&registry, &names, &g);
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition is valid");
            register(&registry, &names, &c);
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("metric definition is valid");
            register(&registry, &names, &h);
            h
        };
        let server_connections = IntGaugeVec::new(
            Opts::new(
                "pgsidecar_server_connections",
                "Upstream server connections by state",
            ),
            &["state"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &server_connections);
        let errors = IntCounterVec::new(
            Opts::new("pgsidecar_errors_total", "Errors by kind"),
            &["kind"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &errors);
        let upstream_up = IntGaugeVec::new(
            Opts::new(
                "pgsidecar_upstream_up",
                "1 when the last connection attempt to the upstream succeeded",
            ),
            &["database", "shard", "replica"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &upstream_up);
        let classified = IntCounterVec::new(
            Opts::new(
                "pgsidecar_statements_classified_total",
                "Statements classified: cache hit, miss (parsed now), or unparsed (not understood)",
            ),
            &["outcome"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &classified);
        let routed = IntCounterVec::new(
            Opts::new(
                "pgsidecar_routed_total",
                "Requests routed, by target (primary and replica with replicas; shardN when sharded)",
            ),
            &["target"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &routed);
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "pgsidecar_config_reloads_total",
                "Configuration reloads (RELOAD, SIGHUP), by result: ok or error (the old configuration stayed)",
            ),
            &["result"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &config_reloads);
        let server_errors = IntCounterVec::new(
            Opts::new(
                "pgsidecar_server_errors_total",
                "ErrorResponses from upstream servers, by SQLSTATE class (the code's first two characters)",
            ),
            &["class"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &server_errors);
        let tenant_throttled = TenantQueries::new(
            "pgsidecar_tenant_throttled_total",
            "Statements delayed or refused by their tenant's statement rate (the first 100 tenants; the rest as \"other\")",
            100,
        );
        register(&registry, &names, &tenant_throttled.vec);
        let replica_gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["database", "shard", "replica"])
                .expect("metric definition is valid");
            register(&registry, &names, &g);
            g
        };
        let replica_up = replica_gauge(
            "pgsidecar_replica_up",
            "1 while the replica serves reads (healthy and within max_replica_lag)",
        );
        let replica_lag_bytes = replica_gauge(
            "pgsidecar_replica_lag_bytes",
            "WAL bytes the replica has not replayed yet, at the last check",
        );
        let replica_ejections = IntCounterVec::new(
            Opts::new(
                "pgsidecar_replica_ejections_total",
                "Times a replica stopped serving reads (failed check, not in recovery, or lagging)",
            ),
            &["database", "shard", "replica"],
        )
        .expect("metric definition is valid");
        register(&registry, &names, &replica_ejections);
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        Metrics {
            client_connections: gauge("pgsidecar_client_connections", "Connected clients"),
            clients_waiting: gauge(
                "pgsidecar_clients_waiting",
                "Client requests waiting for a server connection",
            ),
            server_idle: server_connections.with_label_values(&["idle"]),
            server_active: server_connections.with_label_values(&["active"]),
            server_connects: counter(
                "pgsidecar_server_connects_total",
                "Upstream server connections opened",
            ),
            server_resets: counter(
                "pgsidecar_server_resets_total",
                "Server connections reset with DISCARD ALL because a client changed session state",
            ),
            session_captures: counter(
                "pgsidecar_session_captures_total",
                "Session-state captures after transactions that may have changed a client's session",
            ),
            settings_applied: counter(
                "pgsidecar_settings_applied_total",
                "Checkouts that re-applied a client's session settings on a connection that carried others",
            ),
            clients_pinned: gauge(
                "pgsidecar_clients_pinned",
                "Clients pinned to a server connection (advisory locks, temporary tables, WITH HOLD cursors, session authorization)",
            ),
            notifications_delivered: counter(
                "pgsidecar_notifications_delivered_total",
                "Notifications fanned out from the LISTEN connection to listening clients",
            ),
            notifications_dropped: counter(
                "pgsidecar_notifications_dropped_total",
                "Notifications dropped because a listening client did not read its earlier ones",
            ),
            checkout_wait: histogram(
                "pgsidecar_checkout_wait_seconds",
                "Time a request waited for a server connection",
                latency.clone(),
            ),
            queries: counter(
                "pgsidecar_queries_total",
                "Queries forwarded (simple Query and extended Execute messages)",
            ),
            transactions: counter(
                "pgsidecar_transactions_total",
                "Transactions completed (explicit or implicit)",
            ),
            query_duration: histogram(
                "pgsidecar_query_duration_seconds",
                "Time from forwarding a request to its ReadyForQuery",
                latency,
            ),
            errors,
            client_bytes_received: counter(
                "pgsidecar_client_bytes_received_total",
                "Bytes received from clients",
            ),
            client_bytes_sent: counter(
                "pgsidecar_client_bytes_sent_total",
                "Bytes sent to clients",
            ),
            upstream_up,
            routed_primary: routed.with_label_values(&["primary"]),
            tenancy_refusals: counter(
                "pgsidecar_tenancy_refusals_total",
                "Statements and logins refused because they would change or escape the tenant setting",
            ),
            tenant_hops: counter(
                "pgsidecar_tenant_hops_total",
                "Server connections handed from one tenant to another, each after DISCARD ALL",
            ),
            tenancy_unparsed_forwarded: counter(
                "pgsidecar_tenancy_unparsed_forwarded_total",
                "Statements the classifier could not parse, forwarded under tenant enforcement",
            ),
            routed_replica: routed.with_label_values(&["replica"]),
            routed: routed.clone(),
            replica_up,
            replica_lag_bytes,
            replica_ejections,
            classified_hit: classified.with_label_values(&["hit"]),
            classified_miss: classified.with_label_values(&["miss"]),
            classified_unparsed: classified.with_label_values(&["unparsed"]),
            config_reloads,
            server_errors,
            tenant_throttled,
            cache: CacheMetrics::new(&registry, &names),
            shards: ShardMetrics::new(&registry, &names),
            registry,
            names: {
                let mut names = names.into_inner();
                names.push("pgsidecar_tenant_queries_total".to_owned());
                names
            },
            tenant_queries: std::sync::OnceLock::new(),
        }
    }

    /// Counts an ErrorResponse from a server by its SQLSTATE's class.
    pub fn server_error(&self, code: &str) {
        let class = match code.as_bytes() {
            [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => &code[..2],
            _ => "other",
        };
        self.server_errors.with_label_values(&[class]).inc();
    }

    /// Counts an error of a bounded kind (each module's `kind()`).
    pub fn error(&self, kind: &'static str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The gauge of one server state.
    pub fn server_state(&self, state: ServerState) -> &IntGauge {
        match state {
            ServerState::Idle => &self.server_idle,
            ServerState::Active => &self.server_active,
        }
    }

    /// Per-tenant query counts for the first `limit` tenants seen (the rest count as
    /// `other`), so the label's cardinality stays bounded. Registered once; a later call (a
    /// reload) changes the limit for tenants not seen yet.
    pub fn tenant_queries(&self, limit: usize) -> Arc<TenantQueries> {
        let queries = self
            .tenant_queries
            .get_or_init(|| Arc::new(self.new_tenant_queries()));
        queries
            .limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        Arc::clone(queries)
    }

    fn new_tenant_queries(&self) -> TenantQueries {
        let queries = TenantQueries::new(
            "pgsidecar_tenant_queries_total",
            "Queries by tenant (the first [tenancy] metric_tenants tenants; the rest as \"other\")",
            0,
        );
        self.registry
            .register(Box::new(queries.vec.clone()))
            .expect("metric registers once");
        queries
    }

    /// The name of every metric family `/metrics` exports (once it has a series).
    pub fn family_names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding in-memory metric families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Registers a collector and remembers its family names.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    names: &std::cell::RefCell<Vec<String>>,
    collector: &C,
) {
    names
        .borrow_mut()
        .extend(collector.desc().iter().map(|d| d.fq_name.clone()));
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registers once");
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Holds a gauge up by one while alive (a connected client, a waiting request).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub fn new(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_required_names() {
        let m = Metrics::new();
        m.error("pool_timeout");
        let _g = GaugeGuard::new(&m.client_connections);
        m.server_state(ServerState::Idle).inc();
        let text = m.render();
        for name in [
            "pgsidecar_client_connections 1",
            "pgsidecar_server_connections{state=\"idle\"} 1",
            "pgsidecar_checkout_wait_seconds_bucket",
            "pgsidecar_queries_total",
            "pgsidecar_transactions_total",
            "pgsidecar_query_duration_seconds_bucket",
            "pgsidecar_errors_total{kind=\"pool_timeout\"} 1",
            "pgsidecar_client_bytes_received_total",
            "pgsidecar_client_bytes_sent_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
