//! What the console's `SHOW` commands list, as tables of text and integer cells: PgBouncer
//! 1.25's column names and meanings wherever the concept exists here (so habits and scripts
//! carry over), and the sidecar's own lists (tenants, replicas, shards). Read from the
//! running [`App`]; nothing here changes anything.

use std::time::UNIX_EPOCH;

use super::command::Show;
use super::table::{int, Cell, Kind, Table};
use crate::app::App;
use crate::pool::{Database, Pool};

use Kind::{Int as I, Text as T};

/// The table `SHOW what` answers with.
pub fn show(app: &App, what: Show) -> Table {
    match what {
        Show::Pools => pools(app),
        Show::Stats => stats(app, Stats::Both),
        Show::StatsTotals => stats(app, Stats::Totals),
        Show::StatsAverages => stats(app, Stats::Averages),
        Show::Clients => clients(app),
        Show::Servers => servers(app),
        Show::Databases => databases(app),
        Show::Config => super::config::config(app),
        Show::Lists => lists(app),
        Show::Version => {
            let mut t = Table::new(&[("version", T)]);
            t.rows.push(vec![
                format!("pgsidecar {}", env!("CARGO_PKG_VERSION")).into()
            ]);
            t
        }
        Show::Tenants => tenants(app),
        Show::Replicas => replicas(app),
        Show::Prepared => prepared(app),
        Show::Shards => shards(app),
        Show::Help => help(),
    }
}

/// Every pool of every database, with the database it belongs to.
fn all_pools(app: &App) -> Vec<(std::sync::Arc<Database>, std::sync::Arc<Pool>)> {
    let live = app.live();
    let mut out: Vec<_> = live
        .all()
        .flat_map(|d| {
            d.pools()
                .map(move |p| (std::sync::Arc::clone(d), std::sync::Arc::clone(p)))
        })
        .collect();
    out.sort_by_key(|(_, p)| p.name.to_string());
    out
}

/// The database's clients (in `state`, if given), counted on its primary's pool (shard 0's
/// of a sharded one); every other pool counts none.
fn clients_on(
    database: &Database,
    pool: &Pool,
    clients: &[crate::cancel::ClientRow],
    state: Option<&str>,
) -> usize {
    if pool.name.replica.is_some() || database.shard.unwrap_or(0) != 0 {
        return 0;
    }
    clients
        .iter()
        .filter(|c| c.facts.database == database.name && state.is_none_or(|s| c.state == s))
        .count()
}

fn mode(app: &App) -> String {
    app.live().config.pool.mode.to_string()
}

fn pools(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("user", T),
        ("cl_active", I),
        ("cl_waiting", I),
        ("cl_active_cancel_req", I),
        ("cl_waiting_cancel_req", I),
        ("sv_active", I),
        ("sv_active_cancel", I),
        ("sv_being_canceled", I),
        ("sv_idle", I),
        ("sv_used", I),
        ("sv_tested", I),
        ("sv_login", I),
        ("maxwait", I),
        ("maxwait_us", I),
        ("pool_mode", T),
        ("load_balance_hosts", T),
    ]);
    let clients = app.clients().clients();
    let mode = mode(app);
    for (database, pool) in all_pools(app) {
        // Clients are counted on their database's primary (shard 0 of a sharded one).
        t.rows.push(vec![
            pool.name.to_string().into(),
            pool.url().user.as_str().into(),
            int(clients_on(&database, &pool, &clients, Some("active"))),
            int(pool.waiting_count()),
            int(0),
            int(0),
            int(pool.in_use()),
            int(0),
            int(0),
            int(pool.idle_count()),
            int(0),
            int(0),
            int(0),
            int(0),
            int(0),
            mode.as_str().into(),
            Cell::Null,
        ]);
    }
    t
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stats {
    Both,
    Totals,
    Averages,
}

/// The sidecar's counters (one row, database `*`: they are not kept per database).
fn stats(app: &App, which: Stats) -> Table {
    let m = &app.metrics;
    let elapsed = app.started.elapsed().as_secs_f64().max(1.0);
    let xacts = m.transactions.get();
    let queries = m.queries.get();
    let received = m.client_bytes_received.get();
    let sent = m.client_bytes_sent.get();
    let query_us = (m.query_duration.get_sample_sum() * 1e6) as u64;
    let wait_us = (m.checkout_wait.get_sample_sum() * 1e6) as u64;
    let per = |n: u64, of: u64| n.checked_div(of).unwrap_or(0);
    let totals = [xacts, queries, received, sent, query_us, query_us, wait_us];
    let averages = [
        (xacts as f64 / elapsed) as u64,
        (queries as f64 / elapsed) as u64,
        (received as f64 / elapsed) as u64,
        (sent as f64 / elapsed) as u64,
        per(query_us, xacts),
        per(query_us, queries),
        per(wait_us, queries),
    ];
    const PLAIN: [&str; 7] = [
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
    ];
    const TOTAL: [&str; 7] = [
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
    ];
    const AVG: [&str; 7] = [
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ];
    let parts: Vec<(&[&'static str; 7], &[u64; 7])> = match which {
        Stats::Both => vec![(&TOTAL, &totals), (&AVG, &averages)],
        Stats::Totals => vec![(&PLAIN, &totals)],
        Stats::Averages => vec![(&PLAIN, &averages)],
    };
    let mut names: Vec<(&'static str, Kind)> = vec![("database", T)];
    let mut row: Vec<Cell> = vec!["*".into()];
    for (columns, values) in parts {
        for (name, value) in columns.iter().zip(values) {
            names.push((name, I));
            row.push(int(*value));
        }
    }
    let mut t = Table::new(&names);
    t.rows.push(row);
    t
}

/// The first host and port of an upstream.
fn host_port(url: &crate::config::UpstreamUrl) -> (Cell, Cell) {
    url.hosts
        .first()
        .map_or((Cell::Null, Cell::Null), |(h, p)| {
            (h.as_str().into(), int(*p))
        })
}

fn unix_seconds(t: std::time::SystemTime) -> Cell {
    int(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn clients(app: &App) -> Table {
    let mut t = Table::new(&[
        ("type", T),
        ("user", T),
        ("database", T),
        ("state", T),
        ("addr", T),
        ("port", I),
        ("connect_time", I),
        ("remote_pid", I),
        ("tls", T),
        ("application_name", T),
        ("id", I),
        ("tenant", T),
    ]);
    for c in app.clients().clients() {
        t.rows.push(vec![
            "C".into(),
            c.facts.user.as_str().into(),
            c.facts.database.as_str().into(),
            c.state.into(),
            c.facts
                .addr
                .map_or(Cell::Null, |a| a.ip().to_string().into()),
            c.facts.addr.map_or(Cell::Null, |a| int(a.port())),
            unix_seconds(c.facts.connected),
            int(c.process_id),
            if c.facts.tls { "TLS" } else { "" }.into(),
            c.facts.application_name.as_str().into(),
            int(c.process_id),
            c.facts.tenant.clone().map_or(Cell::Null, Cell::Text),
        ]);
    }
    t
}

/// Server connections: those serving a client now (from the clients' keys) and the idle ones.
fn servers(app: &App) -> Table {
    let mut t = Table::new(&[
        ("type", T),
        ("user", T),
        ("database", T),
        ("state", T),
        ("addr", T),
        ("port", I),
        ("remote_pid", I),
        ("link", I),
        ("prepared_statements", I),
        ("tenant", T),
    ]);
    for c in app.clients().clients() {
        if let Some((host, port, pid)) = &c.server {
            t.rows.push(vec![
                "S".into(),
                Cell::Null,
                c.facts.database.as_str().into(),
                "active".into(),
                host.as_ref().into(),
                int(*port),
                int(*pid),
                int(c.process_id),
                Cell::Null,
                c.facts.tenant.clone().map_or(Cell::Null, Cell::Text),
            ]);
        }
    }
    for (_, pool) in all_pools(app) {
        for s in pool.idle_servers() {
            t.rows.push(vec![
                "S".into(),
                pool.url().user.as_str().into(),
                pool.name.to_string().into(),
                "idle".into(),
                s.host.into(),
                int(s.port),
                int(s.process_id),
                Cell::Null,
                int(s.prepared),
                s.tenant.map_or(Cell::Null, Cell::Text),
            ]);
        }
    }
    t
}

fn databases(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("host", T),
        ("port", I),
        ("database", T),
        ("force_user", T),
        ("pool_size", I),
        ("min_pool_size", I),
        ("reserve_pool_size", I),
        ("server_lifetime", I),
        ("pool_mode", T),
        ("load_balance_hosts", T),
        ("max_connections", I),
        ("current_connections", I),
        ("max_client_connections", I),
        ("current_client_connections", I),
        ("paused", I),
        ("disabled", I),
    ]);
    let clients = app.clients().clients();
    let mode = mode(app);
    for (database, pool) in all_pools(app) {
        let url = pool.url();
        let (host, port) = host_port(url);
        t.rows.push(vec![
            pool.name.to_string().into(),
            host,
            port,
            url.dbname.as_str().into(),
            url.user.as_str().into(),
            int(pool.config().size),
            int(0),
            int(0),
            int(pool.config().max_lifetime.as_secs()),
            mode.as_str().into(),
            Cell::Null,
            int(0),
            int(pool.in_use() + pool.idle_count()),
            int(0),
            int(clients_on(&database, &pool, &clients, None)),
            int(u8::from(pool.is_paused())),
            int(0),
        ]);
    }
    t
}

fn lists(app: &App) -> Table {
    let live = app.live();
    let pools = all_pools(app);
    let servers: usize = pools.iter().map(|(_, p)| p.in_use() + p.idle_count()).sum();
    let items = [
        ("databases", live.config.databases.len()),
        ("users", live.config.users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", app.clients().clients().len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let mut t = Table::new(&[("list", T), ("items", I)]);
    for (list, n) in items {
        t.rows.push(vec![list.into(), int(n)]);
    }
    t
}

/// Tenants with a statement rate and a bucket, and how many clients each has.
fn tenants(app: &App) -> Table {
    let mut t = Table::new(&[
        ("tenant", T),
        ("clients", I),
        ("max_statements_per_second", T),
        ("burst", T),
        ("tokens", T),
        ("throttled", I),
    ]);
    let clients = app.clients().clients();
    let rates = app.live().rates.tenants();
    let mut names: Vec<String> = clients
        .iter()
        .filter_map(|c| c.facts.tenant.clone())
        .collect();
    names.extend(rates.iter().map(|r| r.tenant.clone()));
    names.sort();
    names.dedup();
    for tenant in names {
        let n = clients
            .iter()
            .filter(|c| c.facts.tenant.as_deref() == Some(tenant.as_str()))
            .count();
        let rate = rates.iter().find(|r| r.tenant == tenant);
        let limit = app.live().rates.rate_of(&tenant);
        t.rows.push(vec![
            tenant.as_str().into(),
            int(n),
            limit.map_or(Cell::Null, |r| format!("{}", r.per_second).into()),
            limit.map_or(Cell::Null, |r| format!("{}", r.burst).into()),
            rate.map_or(Cell::Null, |r| format!("{:.1}", r.tokens).into()),
            int(rate.map_or(0, |r| r.throttled)),
        ]);
    }
    t
}

fn replicas(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("shard", T),
        ("replica", I),
        ("host", T),
        ("port", I),
        ("up", I),
        ("lag_bytes", I),
        ("ejections", I),
    ]);
    let live = app.live();
    let mut dbs: Vec<_> = live.all().collect();
    dbs.sort_by_key(|d| (d.name.clone(), d.shard));
    for d in dbs {
        let Some(topology) = &d.replicas else {
            continue;
        };
        for (i, r) in topology.replicas.iter().enumerate() {
            let (host, port) = host_port(r.pool.url());
            t.rows.push(vec![
                d.name.as_str().into(),
                d.shard.map_or(Cell::Null, |s| s.to_string().into()),
                int(i),
                host,
                port,
                int(u8::from(r.usable())),
                int(r.lag_bytes()),
                int(r.ejections()),
            ]);
        }
    }
    t
}

/// Statements prepared on idle server connections, by pool.
fn prepared(app: &App) -> Table {
    let mut t = Table::new(&[("database", T), ("server", I), ("prepared_statements", I)]);
    for (_, pool) in all_pools(app) {
        for s in pool.idle_servers() {
            t.rows.push(vec![
                pool.name.to_string().into(),
                int(s.process_id),
                int(s.prepared),
            ]);
        }
    }
    t
}

fn shards(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("shard", I),
        ("host", T),
        ("port", I),
        ("replicas", I),
        ("sv_active", I),
        ("sv_idle", I),
        ("sharded_tables", T),
    ]);
    let live = app.live();
    let mut dbs: Vec<_> = live.all().filter(|d| d.shard.is_some()).collect();
    dbs.sort_by_key(|d| (d.name.clone(), d.shard));
    for d in dbs {
        let url = d.primary.url();
        let (host, port) = host_port(url);
        let tables: Vec<String> = live
            .config
            .sharding
            .tables
            .iter()
            .filter(|t| t.database == d.name)
            .map(|t| format!("{}({})", t.display_name(), t.column))
            .collect();
        t.rows.push(vec![
            d.name.as_str().into(),
            int(d.shard.unwrap_or(0)),
            host,
            port,
            int(d.replicas.as_ref().map_or(0, |r| r.replicas.len())),
            int(d.primary.in_use()),
            int(d.primary.idle_count()),
            tables.join(", ").into(),
        ]);
    }
    t
}

fn help() -> Table {
    let mut t = Table::new(&[("command", T), ("description", T)]);
    for (c, d) in [
        ("SHOW POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|CLIENTS|SERVERS|DATABASES|CONFIG|LISTS|VERSION", "as in PgBouncer"),
        ("SHOW TENANTS|REPLICAS|SHARDS|PREPARED", "tenants and their rates, replicas' health and lag, shards, prepared statements"),
        ("PAUSE [db] / RESUME [db]", "wait for server connections to be released, then hold new requests / let them go"),
        ("RECONNECT [db]", "close server connections as they are released"),
        ("KILL [db] / KILL_CLIENT id", "end the database's clients and server connections / one client"),
        ("RELOAD", "read the configuration file again"),
        ("SHUTDOWN [WAIT_FOR_CLIENTS]", "stop now / after the clients' transactions (drain)"),
    ] {
        t.rows.push(vec![c.into(), d.into()]);
    }
    t
}
