//! The SQLSTATE codes pgsidecar itself emits (Postgres `errcodes.txt`).
//!
//! Codes the upstream server sends are forwarded untouched and never pass through here.

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 08006: the upstream connection failed or could not be made.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08P01: the client broke the protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 0A000: something the sidecar does not support.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 22P02: a value that is not valid input for its type (a shard key).
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState("22P02");
    /// 53400: a configured limit was reached (a tenant's statement rate).
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
    /// 22021: bytes that are not valid in the encoding.
    pub const CHARACTER_NOT_IN_REPERTOIRE: SqlState = SqlState("22021");
    /// 22003: a number outside its type's range (a shard key).
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState("22003");
    /// 22004: a NULL where a value is needed (a shard key).
    pub const NULL_VALUE_NOT_ALLOWED: SqlState = SqlState("22004");
    /// 23514: no partition (here: shard) takes the row, as Postgres says for partitions.
    pub const CHECK_VIOLATION: SqlState = SqlState("23514");
    /// 25P02: a statement in a transaction that already failed.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    /// 25P03: a client sat idle inside a transaction too long.
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState("25P03");
    /// 28000: the client may not log in this way.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    /// 28P01: wrong password or unknown user (deliberately indistinguishable).
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 3D000: the client asked for a database the sidecar does not serve.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// 53300: the pool had no server connection within `checkout_timeout`.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 42601: an admin console command the sidecar does not know.
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// 42704: an object (a client of the admin console's KILL_CLIENT) that does not exist.
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// F0000: a configuration file a RELOAD could not use.
    pub const CONFIG_FILE_ERROR: SqlState = SqlState("F0000");
    /// 57P01: the sidecar is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57P03: the upstream cannot take connections right now.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// 57014: a statement or a login was cancelled (also Postgres's login timeout code).
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// XX000: a bug in the sidecar.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    /// The five characters.
    pub fn code(self) -> &'static str {
        self.0
    }
}
