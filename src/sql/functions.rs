//! Which functions are safe: the read-only list, the side-effecting list and prefixes, and the
//! judgement of a called function against them (unknown functions are the caller's to treat
//! as side-effecting in strict mode). Pure data and one lookup.

/// How a function call may affect the database or the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// On the read-only list.
    ReadOnly,
    /// On the side-effecting list (`nextval`, `set_config`, advisory locks, …).
    SideEffecting,
    /// Neither: user-defined or unlisted; strict callers treat it as side-effecting.
    Unknown,
}

/// Functions known to change nothing.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_date",
    "current_schema",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "exp",
    "extract",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_set",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "octet_length",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_sleep",
    "position",
    "power",
    "random",
    "regexp_replace",
    "repeat",
    "replace",
    "right",
    "round",
    "row_number",
    "rank",
    "dense_rank",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "uuid_generate_v4",
    "version",
    "clock_timestamp",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    "percentile_cont",
    "percentile_disc",
    "stddev",
    "variance",
    "exists",
    "cast",
    "array_remove",
    "array_append",
    "array_cat",
    "cardinality",
    "initcap",
    "reverse",
    "translate",
    "encode",
    "decode",
    "date",
    "timezone",
    "justify_interval",
];

/// Functions known to have effects beyond the statement's own result.
const SIDE_EFFECTING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_stat_reset",
];

/// Side-effecting function name prefixes (`pg_advisory_lock*`, `lo_*`, `dblink*`).
const SIDE_EFFECTING_PREFIXES: &[&str] = &["pg_advisory", "pg_try_advisory", "lo_", "dblink"];

/// How a function name is judged; `extra_read_only` extends the safe list.
pub fn function_effect(name: &str, extra_read_only: &[String]) -> Effect {
    let base = name.rsplit('.').next().unwrap_or(name);
    if SIDE_EFFECTING_FUNCTIONS.contains(&base)
        || SIDE_EFFECTING_PREFIXES.iter().any(|p| base.starts_with(p))
    {
        Effect::SideEffecting
    } else if READ_ONLY_FUNCTIONS.contains(&base)
        || extra_read_only.iter().any(|f| f == name || f == base)
    {
        Effect::ReadOnly
    } else {
        Effect::Unknown
    }
}
