//! Shard placement, pure: which shard owns a key. Hash placement equals Postgres's own
//! `PARTITION BY HASH` (a row lands on the shard whose number is the remainder of the
//! partition a hash-partitioned table with `MODULUS` = shard count would put it in); range and
//! list placement follow the configured bounds and values; a tenant's shard is an explicit
//! placement or the hash of its id. No SQL here: callers find the key.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::protocol::bind::parse_uuid;
use crate::protocol::sqlstate::SqlState;

/// The seed Postgres hashes partition keys with (`HASH_PARTITION_SEED`).
const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The type of a shard key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Smallint,
    Integer,
    Bigint,
    Text,
    Varchar,
    Uuid,
}

impl KeyType {
    /// The type's name in Postgres.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Smallint => "smallint",
            KeyType::Integer => "integer",
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
            KeyType::Varchar => "varchar",
            KeyType::Uuid => "uuid",
        }
    }

    /// Reads a key in text form as Postgres reads input of this type.
    pub fn parse(self, text: &str) -> Result<Key<'_>, ShardError> {
        let invalid = || ShardError::InvalidKey {
            key_type: self.name(),
            value: text.to_owned(),
        };
        match self {
            KeyType::Smallint | KeyType::Integer | KeyType::Bigint => {
                // Postgres allows surrounding whitespace and a leading sign.
                let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
                let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                let value = trimmed
                    .parse::<i64>()
                    .map_err(|_| self.out_of_range(text))?;
                self.int(value).map_err(|_| self.out_of_range(text))
            }
            KeyType::Text | KeyType::Varchar => Ok(Key::Text(text)),
            KeyType::Uuid => parse_uuid(text).map(Key::Uuid).ok_or_else(invalid),
        }
    }

    /// An integer key, checked against the type's range.
    pub fn int(self, value: i64) -> Result<Key<'static>, ShardError> {
        let fits = match self {
            KeyType::Smallint => i16::try_from(value).is_ok(),
            KeyType::Integer => i32::try_from(value).is_ok(),
            KeyType::Bigint => true,
            KeyType::Text | KeyType::Varchar | KeyType::Uuid => {
                return Err(ShardError::InvalidKey {
                    key_type: self.name(),
                    value: value.to_string(),
                })
            }
        };
        if fits {
            Ok(Key::Int(value))
        } else {
            Err(self.out_of_range(&value.to_string()))
        }
    }

    /// Reads a key in this type's binary format (int2/int4/int8 by width, text bytes, uuid's 16).
    pub fn from_binary(self, bytes: &[u8]) -> Result<Key<'_>, ShardError> {
        let invalid = || ShardError::InvalidKey {
            key_type: self.name(),
            value: format!("(a binary value of {} bytes)", bytes.len()),
        };
        match self {
            KeyType::Smallint | KeyType::Integer | KeyType::Bigint => {
                let value = match bytes.len() {
                    2 => i16::from_be_bytes([bytes[0], bytes[1]]).into(),
                    4 => i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
                    8 => {
                        let mut b = [0; 8];
                        b.copy_from_slice(bytes);
                        i64::from_be_bytes(b)
                    }
                    _ => return Err(invalid()),
                };
                self.int(value)
            }
            KeyType::Text | KeyType::Varchar => std::str::from_utf8(bytes)
                .map(Key::Text)
                .map_err(|_| invalid()),
            KeyType::Uuid => <[u8; 16]>::try_from(bytes)
                .map(Key::Uuid)
                .map_err(|_| invalid()),
        }
    }

    /// Whether equal keys of the two types hash alike (integers of any width; text and varchar).
    fn same_family(self, other: KeyType) -> bool {
        use KeyType::*;
        matches!(
            (self, other),
            (Smallint | Integer | Bigint, Smallint | Integer | Bigint)
                | (Text | Varchar, Text | Varchar)
                | (Uuid, Uuid)
        )
    }

    fn out_of_range(self, text: &str) -> ShardError {
        ShardError::OutOfRange {
            key_type: self.name(),
            value: text.to_owned(),
        }
    }
}

/// A shard key value (borrowed from the statement or its parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Int(i64),
    Text(&'a str),
    Uuid([u8; 16]),
}

impl Key<'_> {
    /// The key's order among keys of the same type (integers by value, text by bytes as in the
    /// C collation, UUIDs by bytes as Postgres orders them); keys of different types do not
    /// compare.
    fn compare(&self, other: &Key<'_>) -> Option<Ordering> {
        match (self, other) {
            (Key::Int(a), Key::Int(b)) => Some(a.cmp(b)),
            (Key::Text(a), Key::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Key::Uuid(a), Key::Uuid(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn owned(&self) -> OwnedKey {
        match self {
            Key::Int(v) => OwnedKey::Int(*v),
            Key::Text(s) => OwnedKey::Text((*s).to_owned()),
            Key::Uuid(u) => OwnedKey::Uuid(*u),
        }
    }
}

/// A key held in the configuration (range bounds, list values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedKey {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

impl OwnedKey {
    pub fn key(&self) -> Key<'_> {
        match self {
            OwnedKey::Int(v) => Key::Int(*v),
            OwnedKey::Text(s) => Key::Text(s),
            OwnedKey::Uuid(u) => Key::Uuid(*u),
        }
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(v) => write!(f, "{v}"),
            Key::Text(s) => write!(f, "{s}"),
            Key::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why no shard could be chosen for a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("invalid input syntax for type {key_type}: \"{value}\" (shard key)")]
    InvalidKey {
        key_type: &'static str,
        value: String,
    },
    #[error("value \"{value}\" is out of range for type {key_type} (shard key)")]
    OutOfRange {
        key_type: &'static str,
        value: String,
    },
    #[error("the shard key {column} of {table} is NULL: a row needs a key to have a shard")]
    NullKey { table: String, column: String },
    #[error("no shard of table \"{table}\" takes the key {key} (no range or list covers it and there is no default_shard)")]
    Uncovered { table: String, key: String },
}

impl ShardError {
    /// The SQLSTATE a client gets.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ShardError::InvalidKey { .. } => SqlState::INVALID_TEXT_REPRESENTATION,
            ShardError::OutOfRange { .. } => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            ShardError::NullKey { .. } => SqlState::NULL_VALUE_NOT_ALLOWED,
            ShardError::Uncovered { .. } => SqlState::CHECK_VIOLATION,
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardError::InvalidKey { .. } => "shard_key_invalid",
            ShardError::OutOfRange { .. } => "shard_key_out_of_range",
            ShardError::NullKey { .. } => "shard_key_null",
            ShardError::Uncovered { .. } => "shard_key_uncovered",
        }
    }
}

/// How a sharded table's rows are spread over the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Postgres-compatible hash of the key, modulo the shard count.
    Hash,
    /// `ranges[i]` = the keys of shard i, start inclusive, end exclusive.
    Range {
        ranges: Vec<(OwnedKey, OwnedKey)>,
        default_shard: Option<usize>,
    },
    /// `values[i]` = the keys of shard i.
    List {
        values: Vec<Vec<OwnedKey>>,
        default_shard: Option<usize>,
    },
}

/// A table whose rows live on one shard each, by the value of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedTable {
    pub database: String,
    /// The schema, when the configuration named one (else the client's `search_path` decides).
    pub schema: Option<String>,
    pub table: String,
    pub column: String,
    pub key_type: KeyType,
    pub placement: Placement,
}

impl ShardedTable {
    /// The table as written in messages (`schema.table` or `table`).
    pub fn display_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// Whether rows of the two tables with equal keys are always on the same shard (same key
    /// family, same placement), so a join on their keys runs on one shard.
    pub fn co_located(&self, other: &ShardedTable) -> bool {
        self.database == other.database
            && self.key_type.same_family(other.key_type)
            && self.placement == other.placement
    }

    /// The shard (0-based, below `shards`) that owns rows with this key (`None`: NULL).
    pub fn shard_of(&self, key: Option<Key<'_>>, shards: usize) -> Result<usize, ShardError> {
        let Some(key) = key else {
            return Err(ShardError::NullKey {
                table: self.display_name(),
                column: self.column.clone(),
            });
        };
        let uncovered = || ShardError::Uncovered {
            table: self.display_name(),
            key: key.to_string(),
        };
        match &self.placement {
            Placement::Hash => Ok(hash_shard(key, shards)),
            Placement::Range {
                ranges,
                default_shard,
            } => ranges
                .iter()
                .position(|(start, end)| {
                    key.compare(&start.key()).is_some_and(Ordering::is_ge)
                        && key.compare(&end.key()).is_some_and(Ordering::is_lt)
                })
                .or(*default_shard)
                .ok_or_else(uncovered),
            Placement::List {
                values,
                default_shard,
            } => values
                .iter()
                .position(|list| {
                    list.iter()
                        .any(|v| key.compare(&v.key()) == Some(Ordering::Equal))
                })
                .or(*default_shard)
                .ok_or_else(uncovered),
        }
    }
}

/// Where tenants live when every statement of a client routes by its tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPlacement {
    /// Explicit placements (`[[tenant_shard]]`): they win over the hash.
    pub placed: HashMap<String, usize>,
}

impl TenantPlacement {
    /// The tenant's shard: its placement, else the hash of its id as `text`.
    pub fn shard_of(&self, tenant: &str, shards: usize) -> usize {
        match self.placed.get(tenant) {
            Some(&shard) => shard,
            None => hash_shard(Key::Text(tenant), shards),
        }
    }
}

/// The shard a hash-placed key belongs to among `shards`: the remainder of the partition
/// Postgres picks for it with `MODULUS` = `shards`.
pub fn hash_shard(key: Key<'_>, shards: usize) -> usize {
    let modulus = u64::try_from(shards.max(1)).unwrap_or(u64::MAX);
    // The remainder is below `shards`, so it fits.
    usize::try_from(postgres_hash(key) % modulus).unwrap_or(0)
}

/// Postgres's `compute_partition_hash_value` for a one-column key: the type's extended hash
/// function with the partition seed, combined into a row hash.
pub fn postgres_hash(key: Key<'_>) -> u64 {
    let hash = match key {
        // hashint2/4/8extended agree for equal values: int8's halves folded as Postgres does.
        Key::Int(v) => {
            let lo = v as u32;
            let hi = (v >> 32) as u32;
            hash_uint32_extended(lo ^ if v >= 0 { hi } else { !hi }, HASH_PARTITION_SEED)
        }
        // hashtextextended (deterministic collations) and uuid_hash_extended: the bytes.
        Key::Text(s) => hash_bytes_extended(s.as_bytes(), HASH_PARTITION_SEED),
        Key::Uuid(u) => hash_bytes_extended(&u, HASH_PARTITION_SEED),
    };
    hash_combine64(0, hash)
}

/// `hash_combine64` from Postgres's `hashfn.h`.
fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// Jenkins lookup3's mix step, as in Postgres's `hashfn.c`.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// Jenkins lookup3's final step.
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The initial state with the seed mixed in, as both extended hashes start.
fn seeded(init: u32, seed: u64) -> (u32, u32, u32) {
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// `hash_bytes_uint32_extended`.
fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(0x9e37_79b9_u32.wrapping_add(4 + 3_923_095), seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_bytes_extended` (little-endian words, as on the machines Postgres runs on here).
fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    // Postgres takes the length as an int; keys are far shorter than 4 GiB.
    let init = 0x9e37_79b9_u32
        .wrapping_add(k.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = seeded(init, seed);
    let word = |w: &[u8]| {
        w.iter()
            .enumerate()
            .fold(0u32, |acc, (i, &byte)| acc | (u32::from(byte) << (8 * i)))
    };
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 11 bytes: the lowest byte of c is reserved for the length.
    let tail = rest.len();
    a = a.wrapping_add(word(&rest[..tail.min(4)]));
    if tail > 4 {
        b = b.wrapping_add(word(&rest[4..tail.min(8)]));
    }
    if tail > 8 {
        c = c.wrapping_add(word(&rest[8..tail]) << 8);
    }
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// Range bounds and list values of a sharded table, read for its key type (configuration).
pub fn owned_key(key_type: KeyType, text: &str) -> Result<OwnedKey, ShardError> {
    Ok(key_type.parse(text)?.owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(placement: Placement) -> ShardedTable {
        ShardedTable {
            database: "app".into(),
            schema: None,
            table: "orders".into(),
            column: "customer_id".into(),
            key_type: KeyType::Bigint,
            placement,
        }
    }

    #[test]
    fn integer_types_agree_for_equal_values() {
        for v in [-70000i64, -1, 0, 1, 42, 32767, 2_000_000_000] {
            let h = postgres_hash(Key::Int(v));
            assert_eq!(h, postgres_hash(KeyType::Integer.int(v).unwrap()));
            if i16::try_from(v).is_ok() {
                assert_eq!(h, postgres_hash(KeyType::Smallint.int(v).unwrap()));
            }
        }
    }

    #[test]
    fn integers_parse_as_postgres_reads_them() {
        assert_eq!(KeyType::Bigint.parse(" -42 "), Ok(Key::Int(-42)));
        assert_eq!(KeyType::Integer.parse("+7"), Ok(Key::Int(7)));
        assert!(matches!(
            KeyType::Smallint.parse("40000"),
            Err(ShardError::OutOfRange { .. })
        ));
        assert!(matches!(
            KeyType::Bigint.parse("99999999999999999999"),
            Err(ShardError::OutOfRange { .. })
        ));
        for bad in ["", "1.5", "abc", "- 1", "0x10"] {
            let e = KeyType::Bigint.parse(bad).unwrap_err();
            assert_eq!(e.sqlstate(), SqlState::INVALID_TEXT_REPRESENTATION, "{bad}");
        }
        assert!(KeyType::Uuid.parse("not-a-uuid").is_err());
        let u = KeyType::Uuid
            .parse("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}")
            .unwrap();
        assert_eq!(u.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn hash_placement_spreads_keys_over_every_shard() {
        let t = table(Placement::Hash);
        let mut seen = [0usize; 3];
        for v in 0..3000 {
            seen[t.shard_of(Some(Key::Int(v)), 3).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        assert_eq!(
            t.shard_of(None, 3).unwrap_err().sqlstate(),
            SqlState::NULL_VALUE_NOT_ALLOWED
        );
    }

    #[test]
    fn ranges_are_start_inclusive_end_exclusive_with_an_optional_default() {
        let ranges = vec![
            (OwnedKey::Int(0), OwnedKey::Int(1000)),
            (OwnedKey::Int(1000), OwnedKey::Int(5000)),
        ];
        let t = table(Placement::Range {
            ranges: ranges.clone(),
            default_shard: None,
        });
        assert_eq!(t.shard_of(Some(Key::Int(0)), 2), Ok(0));
        assert_eq!(t.shard_of(Some(Key::Int(999)), 2), Ok(0));
        assert_eq!(t.shard_of(Some(Key::Int(1000)), 2), Ok(1));
        let e = t.shard_of(Some(Key::Int(5000)), 2).unwrap_err();
        assert_eq!(e.sqlstate(), SqlState::CHECK_VIOLATION);
        assert!(e.to_string().contains("5000"), "{e}");
        let t = table(Placement::Range {
            ranges,
            default_shard: Some(1),
        });
        assert_eq!(t.shard_of(Some(Key::Int(-5)), 2), Ok(1));
    }

    #[test]
    fn lists_name_each_shards_values() {
        let t = ShardedTable {
            key_type: KeyType::Text,
            placement: Placement::List {
                values: vec![
                    vec![OwnedKey::Text("eu".into()), OwnedKey::Text("uk".into())],
                    vec![OwnedKey::Text("us".into())],
                ],
                default_shard: None,
            },
            ..table(Placement::Hash)
        };
        assert_eq!(t.shard_of(Some(Key::Text("uk")), 2), Ok(0));
        assert_eq!(t.shard_of(Some(Key::Text("us")), 2), Ok(1));
        assert!(t.shard_of(Some(Key::Text("jp")), 2).is_err());
    }

    #[test]
    fn a_tenants_placement_wins_over_its_hash() {
        let mut placement = TenantPlacement::default();
        let hashed = placement.shard_of("acme", 4);
        assert_eq!(hashed, hash_shard(Key::Text("acme"), 4));
        placement.placed.insert("acme".into(), (hashed + 1) % 4);
        assert_eq!(placement.shard_of("acme", 4), (hashed + 1) % 4);
        assert_eq!(
            placement.shard_of("globex", 4),
            hash_shard(Key::Text("globex"), 4)
        );
    }
}
