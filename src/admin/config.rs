//! `SHOW CONFIG`: the settings in effect, with their defaults and whether RELOAD changes them
//! (PgBouncer's columns `key`, `value`, `default`, `changeable`). Secrets are never listed.

use super::table::{Cell, Kind, Table};
use crate::app::App;
use crate::config::{format_duration, Config, Overrides};

/// The smallest valid configuration: every other setting at its default.
const MINIMAL: &str = "[[database]]\nname = \"d\"\nprimary = \"postgres://u@localhost/d\"\n\n\
                       [[user]]\nname = \"u\"\npassword = \"p\"\n";

/// The settings of `config` as (key, value, changeable by RELOAD).
fn settings(config: &Config) -> Vec<(&'static str, String, bool)> {
    let pool = &config.pool;
    let mut out = vec![
        ("listen", config.listen.to_string(), false),
        ("metrics_listen", config.metrics_listen.to_string(), false),
        (
            "shutdown_delay",
            format_duration(config.shutdown_delay),
            true,
        ),
        ("drain_timeout", format_duration(config.drain_timeout), true),
        (
            "max_message_size",
            config.max_message_size.to_string(),
            true,
        ),
        (
            "login_timeout",
            format_duration(config.limits.login_timeout),
            true,
        ),
        (
            "idle_in_transaction_timeout",
            format_duration(config.limits.idle_in_transaction_timeout),
            true,
        ),
        (
            "query_timeout",
            format_duration(config.limits.query_timeout),
            true,
        ),
        ("pool.mode", pool.mode.to_string(), false),
        ("pool.size", pool.size.to_string(), true),
        (
            "pool.checkout_timeout",
            format_duration(pool.checkout_timeout),
            true,
        ),
        ("pool.max_waiting", pool.max_waiting.to_string(), true),
        (
            "pool.connect_timeout",
            format_duration(pool.connect_timeout),
            true,
        ),
        (
            "pool.idle_timeout",
            format_duration(pool.idle_timeout),
            true,
        ),
        (
            "pool.max_lifetime",
            format_duration(pool.max_lifetime),
            true,
        ),
        (
            "pool.tcp_keepalive",
            format_duration(pool.tcp_keepalive),
            true,
        ),
        (
            "classifier.cache_size",
            config.classifier.cache_size.to_string(),
            true,
        ),
        ("tls", config.tls.is_some().to_string(), true),
        ("databases", config.databases.len().to_string(), true),
        ("users", config.users.len().to_string(), true),
        (
            "sharded_tables",
            config.sharding.tables.len().to_string(),
            true,
        ),
    ];
    if let Some(t) = &config.tenancy {
        out.extend([
            ("tenancy.setting", t.setting.clone(), true),
            ("tenancy.enforce", t.enforce.to_string(), true),
            (
                "tenancy.max_connections_per_tenant",
                t.max_connections_per_tenant.to_string(),
                true,
            ),
            ("tenancy.metric_tenants", t.metric_tenants.to_string(), true),
            (
                "tenancy.shard_by",
                if config.sharding.by_tenant {
                    "tenant"
                } else {
                    "statement"
                }
                .to_owned(),
                true,
            ),
            (
                "tenancy.max_statements_per_second",
                config
                    .rates
                    .default
                    .map_or_else(String::new, |r| r.per_second.to_string()),
                true,
            ),
            (
                "tenancy.on_limit",
                format!("{:?}", config.rates.on_limit).to_lowercase(),
                true,
            ),
        ]);
    }
    out
}

/// The `SHOW CONFIG` table.
pub fn config(app: &App) -> Table {
    let defaults = Config::from_toml(MINIMAL, &Overrides::default())
        .map(|c| settings(&c))
        .unwrap_or_default();
    let mut t = Table {
        columns: vec![
            ("key", Kind::Text),
            ("value", Kind::Text),
            ("default", Kind::Text),
            ("changeable", Kind::Text),
        ],
        rows: Vec::new(),
    };
    for (key, value, changeable) in settings(&app.live().config) {
        let default = defaults
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(Cell::Null, |(_, v, _)| Cell::Text(v.clone()));
        t.rows.push(vec![
            key.into(),
            value.into(),
            default,
            if changeable { "yes" } else { "no" }.into(),
        ]);
    }
    t
}
