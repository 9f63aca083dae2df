//! The result cache: replies to whitelisted reads, kept in memory (moka, weighed by bytes,
//! each entry with its rule's TTL) under a key that carries everything that can change a
//! result (see `key.rs`), and invalidated by per-table generations.
//!
//! A read snapshots the generations of the tables it reads when it is planned; its reply is
//! stored only if they are unchanged when it completes, and served only while they still are
//! (no stale fill, no stale hit). A committed write bumps them: at once in the sidecar that saw
//! it, and in every sidecar through a notification on [`CHANNEL`], which each sidecar's LISTEN
//! connection for the database receives (`invalidation.rs`). While that connection is down the
//! cache serves and stores nothing, and what was stored before is never served again (the
//! connection's link value is part of every snapshot). Concurrent misses on one key send one
//! request upstream; the others wait for its reply (single flight).

mod invalidation;
pub mod key;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, CacheRule};
use crate::metrics::Metrics;
use crate::pool::notify::Notifier;
use crate::protocol::backend::{
    BIND_COMPLETE_TAG, CLOSE_COMPLETE_TAG, COMMAND_COMPLETE_TAG, DATA_ROW_TAG,
    EMPTY_QUERY_RESPONSE_TAG, NOTICE_RESPONSE_TAG, NO_DATA_TAG, PARAMETER_DESCRIPTION_TAG,
    PARAMETER_STATUS_TAG, PARSE_COMPLETE_TAG, ROW_DESCRIPTION_TAG,
};
use crate::sql::cacheable::{Cacheable, Refusal, Writes};

pub use invalidation::{cache_sql, notify_sql};

/// The channel on which writes announce the tables they changed (payload: table names
/// separated by commas, or `*` for every table).
pub const CHANNEL: &str = "pgsidecar_cache";

/// Key bytes (see `key.rs`).
type Key = Box<[u8]>;

/// One cached reply.
#[derive(Debug)]
pub struct Entry {
    /// What a hit writes, up to (not including) its ReadyForQuery: the request's key fixes
    /// which messages it sent, so the reply is made once, when stored.
    pub reply: Bytes,
    snapshot: Snapshot,
    ttl: Duration,
}

/// The generations a reply was read under.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    link: u64,
    everything: u64,
    tables: Vec<(String, u64)>,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Entry>),
    Miss,
    /// The invalidation listener is down: nothing is served or stored.
    Offline,
}

/// What a miss does next.
pub enum Start {
    /// Send the request and record its reply.
    Record(Box<Recording>),
    /// Another client is sending this very request: wait for its reply (the receiver's
    /// sender goes away when it is stored or given up).
    Wait(watch::Receiver<()>),
}

/// The cache of every configured database, for one configuration.
pub struct ResultCache {
    pub config: CacheConfig,
    databases: HashMap<String, Arc<DatabaseCache>>,
    /// Ends the invalidation listeners (when a reload replaces this cache).
    stop: CancellationToken,
}

impl ResultCache {
    /// A cache for `config`; `notifier` gives each database's LISTEN connection. Starts one
    /// invalidation listener per database with rules (needs a tokio runtime).
    pub fn new(
        config: CacheConfig,
        notifier: impl Fn(&str) -> Option<Arc<Notifier>>,
        metrics: &Arc<Metrics>,
    ) -> Arc<ResultCache> {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &Key, entry: &Arc<Entry>| weight(key, entry))
            .expire_after(Ttl)
            .eviction_listener({
                let metrics = Arc::clone(metrics);
                move |_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        metrics.cache.evictions.inc();
                    }
                }
            })
            .build_with_hasher(ahash::RandomState::new());
        let stop = CancellationToken::new();
        let mut databases = HashMap::new();
        for rule in &config.rules {
            if databases.contains_key(&rule.database) {
                continue;
            }
            let Some(notifier) = notifier(&rule.database) else {
                continue;
            };
            let db = Arc::new(DatabaseCache {
                rules: config.rules_of(&rule.database).cloned().collect(),
                entries: entries.clone(),
                max_entry_bytes: config.max_entry_bytes,
                in_read_only_transactions: config.in_read_only_transactions,
                metrics: Arc::clone(metrics),
                notifier,
                ready: AtomicBool::new(false),
                stamps: AtomicU64::new(0),
                everything: AtomicU64::new(0),
                generations: RwLock::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
            });
            invalidation::spawn_listener(Arc::clone(&db), stop.child_token());
            databases.insert(rule.database.clone(), db);
        }
        Arc::new(ResultCache {
            config,
            databases,
            stop,
        })
    }

    /// The cache of one database, if it has rules.
    pub fn database(&self, name: &str) -> Option<&Arc<DatabaseCache>> {
        self.databases.get(name)
    }
}

impl Drop for ResultCache {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An entry lives for its rule's TTL.
struct Ttl;

impl moka::Expiry<Key, Arc<Entry>> for Ttl {
    fn expire_after_create(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// What an entry weighs: its key, its reply and what holds them.
#[allow(clippy::borrowed_box)]
fn weight(key: &Key, entry: &Arc<Entry>) -> u32 {
    let reply = entry.reply.len();
    let tables: usize = entry
        .snapshot
        .tables
        .iter()
        .map(|(t, _)| t.len() + 40)
        .sum();
    u32::try_from(key.len() + reply + tables + 160).unwrap_or(u32::MAX)
}

/// One database's part of the cache: its rules, its table generations, its requests in flight.
pub struct DatabaseCache {
    rules: Vec<CacheRule>,
    entries: moka::sync::Cache<Key, Arc<Entry>, ahash::RandomState>,
    max_entry_bytes: usize,
    /// `[cache] in_read_only_transactions`.
    in_read_only_transactions: bool,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    /// The invalidation listener's LISTEN took effect once (after that, the notifier's link
    /// says whether it still listens).
    ready: AtomicBool,
    /// Source of generation values (never repeats, so a table bumped and bumped again never
    /// looks unchanged).
    stamps: AtomicU64,
    /// Bumped by writes that may touch any table.
    everything: AtomicU64,
    /// Table (last name part) → its generation; absent: never bumped.
    generations: RwLock<HashMap<String, u64>>,
    /// Keys being fetched by one client, which others wait for.
    flights: Mutex<HashMap<Key, watch::Receiver<()>>>,
}

impl DatabaseCache {
    /// The database's `[[cache.rule]]`s.
    pub fn rules(&self) -> &[CacheRule] {
        &self.rules
    }

    /// Reads inside transactions declared READ ONLY may use the cache.
    pub fn in_read_only_transactions(&self) -> bool {
        self.in_read_only_transactions
    }

    /// Counts a read that was neither served nor stored.
    pub fn refused(&self, refusal: Refusal) {
        tracing::trace!(reason = refusal.label(), "not cached");
        self.metrics
            .cache
            .refusals
            .with_label_values(&[refusal.label()])
            .inc();
    }

    /// The link value while the invalidation listener listens.
    fn online(&self) -> Option<u64> {
        let link = self.notifier.link();
        (self.ready.load(Ordering::Acquire) && link % 2 == 1).then_some(link)
    }

    /// The entry for `key`, if one is stored and still valid; `count`: this lookup counts as
    /// a hit or a miss (a second look after waiting for another client does not).
    pub fn lookup(&self, key: &[u8], count: bool) -> Lookup {
        let Some(link) = self.online() else {
            if count {
                self.refused(Refusal::Offline);
            }
            return Lookup::Offline;
        };
        let found = match self.entries.get(key) {
            Some(entry) if self.valid(&entry.snapshot, link) => Some(entry),
            Some(_) => {
                self.entries.invalidate(key);
                None
            }
            None => None,
        };
        match (found, count) {
            (Some(entry), true) => {
                self.metrics.cache.hits.inc();
                Lookup::Hit(entry)
            }
            (Some(entry), false) => Lookup::Hit(entry),
            (None, true) => {
                self.metrics.cache.misses.inc();
                Lookup::Miss
            }
            (None, false) => Lookup::Miss,
        }
    }

    /// After a miss: record the reply (first for this key), or wait for the client already
    /// fetching it (`alone`: never wait, record without registering — the caller cannot wait).
    /// `tags`: the request's message types, which say what its reply holds.
    pub fn start(
        self: &Arc<Self>,
        key: Key,
        cacheable: &Cacheable,
        tags: &[u8],
        alone: bool,
    ) -> Start {
        let flight = if alone {
            None
        } else {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(rx) = flights.get(&key) {
                self.metrics.cache.single_flight_waits.inc();
                return Start::Wait(rx.clone());
            }
            let (tx, rx) = watch::channel(());
            flights.insert(key.clone(), rx);
            Some(Flight {
                db: Arc::clone(self),
                key: key.clone(),
                _done: tx,
            })
        };
        let snapshot = self.snapshot(&cacheable.tables);
        Start::Record(Box::new(Recording {
            db: Arc::clone(self),
            key,
            snapshot,
            ttl: cacheable.ttl,
            tags: tags.into(),
            bytes: Some(BytesMut::new()),
            _flight: flight,
        }))
    }

    /// A committed write changed `writes`: their generations move on, here at once.
    pub fn invalidate(&self, writes: &Writes) {
        match writes {
            Writes::None => return,
            Writes::Everything => {
                self.everything.store(self.stamp(), Ordering::Release);
            }
            Writes::Tables(tables) => {
                let mut generations = self.generations.write().unwrap_or_else(|e| e.into_inner());
                for table in tables {
                    let stamp = self.stamp();
                    generations.insert(table.clone(), stamp);
                }
            }
        }
        self.metrics.cache.invalidations.inc();
    }

    fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The generations of `tables` now (link 0 when offline: such a snapshot is never valid).
    fn snapshot(&self, tables: &[String]) -> Snapshot {
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            link: self.online().unwrap_or(0),
            everything: self.everything.load(Ordering::Acquire),
            tables: tables
                .iter()
                .map(|t| (t.clone(), generations.get(t).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Whether nothing a snapshot depends on has changed since it was taken.
    fn valid(&self, snapshot: &Snapshot, link: u64) -> bool {
        if snapshot.link != link || snapshot.everything != self.everything.load(Ordering::Acquire) {
            return false;
        }
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        snapshot
            .tables
            .iter()
            .all(|(t, g)| generations.get(t).copied().unwrap_or(0) == *g)
    }

    fn store(&self, key: Key, entry: Entry) {
        let Some(link) = self.online() else {
            return self.refused(Refusal::Offline);
        };
        if !self.valid(&entry.snapshot, link) {
            return self.refused(Refusal::Reply);
        }
        self.entries.insert(key, Arc::new(entry));
        self.metrics.cache.stores.inc();
        self.metrics
            .cache
            .bytes
            .set(i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX));
        self.metrics
            .cache
            .entries
            .set(i64::try_from(self.entries.entry_count()).unwrap_or(i64::MAX));
    }
}

/// A key being fetched: while it lives, other clients with the same key wait.
struct Flight {
    db: Arc<DatabaseCache>,
    key: Key,
    /// Dropped last: the waiters wake once the entry is stored (or given up).
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.db.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.remove(&self.key);
    }
}

/// The reply to a cacheable request being forwarded to its client, copied as it goes.
pub struct Recording {
    db: Arc<DatabaseCache>,
    key: Key,
    snapshot: Snapshot,
    ttl: Duration,
    /// The request's message types.
    tags: Box<[u8]>,
    /// `None` once the reply cannot be stored (too large, an error, a message the cache
    /// does not replay).
    bytes: Option<BytesMut>,
    _flight: Option<Flight>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("bytes", &self.bytes.as_ref().map(BytesMut::len))
            .finish()
    }
}

impl Recording {
    /// More of the reply (whole messages, possibly with the start or the rest of a long one),
    /// as forwarded to the client.
    pub fn extend(&mut self, data: &[u8]) {
        if let Some(bytes) = &mut self.bytes {
            if bytes.len() + data.len() > self.db.max_entry_bytes {
                self.bytes = None;
            } else {
                bytes.extend_from_slice(data);
            }
        }
    }

    /// The reply holds something that must not be replayed (an error).
    pub fn spoil(&mut self) {
        self.bytes = None;
    }

    /// The reply ended with a ReadyForQuery; `idle`: outside a transaction. Stores it if it
    /// can be replayed and nothing it read changed meanwhile.
    pub fn finish(mut self, idle: bool) {
        let reply = self.bytes.take().filter(|_| idle).and_then(split_reply);
        match reply {
            Some((row_description, rows)) => self.db.store(
                std::mem::take(&mut self.key),
                Entry {
                    reply: replay(row_description.as_deref(), &rows, &self.tags),
                    snapshot: self.snapshot.clone(),
                    ttl: self.ttl,
                },
            ),
            None => self.db.refused(Refusal::Reply),
        }
    }
}

/// A recorded reply's RowDescription and its rows with their CommandComplete; `None` if it
/// holds anything else a replay would need (an error, COPY, a suspended portal) or no end.
/// ParseComplete, BindComplete, NoData, ParameterDescription, CloseComplete, notices and
/// ParameterStatus are left out: a hit writes what its own request asks for.
fn split_reply(bytes: BytesMut) -> Option<(Option<Bytes>, Bytes)> {
    let bytes = bytes.freeze();
    let mut row_description = None;
    let mut rows = BytesMut::new();
    let mut ended = false;
    let mut at = 0;
    while at < bytes.len() {
        let header = crate::protocol::frame::peek_header(&bytes[at..]).ok()??;
        let end = at.checked_add(header.frame_len)?;
        let message = bytes.get(at..end)?;
        match header.tag {
            _ if ended => return None,
            ROW_DESCRIPTION_TAG if row_description.is_none() && rows.is_empty() => {
                row_description = Some(bytes.slice(at..end));
            }
            DATA_ROW_TAG => rows.extend_from_slice(message),
            COMMAND_COMPLETE_TAG | EMPTY_QUERY_RESPONSE_TAG => {
                rows.extend_from_slice(message);
                ended = true;
            }
            PARSE_COMPLETE_TAG
            | BIND_COMPLETE_TAG
            | CLOSE_COMPLETE_TAG
            | NO_DATA_TAG
            | PARAMETER_DESCRIPTION_TAG
            | NOTICE_RESPONSE_TAG
            | PARAMETER_STATUS_TAG => {}
            _ => return None,
        }
        at = end;
    }
    ended.then(|| (row_description, rows.freeze()))
}

/// The reply a hit gives a request with these message types (`Q`, or `P`/`B`/`D`/`E`/`S`),
/// without its ReadyForQuery: what the request asks for around the recorded rows.
fn replay(row_description: Option<&[u8]>, rows: &[u8], tags: &[u8]) -> Bytes {
    use crate::protocol::backend::{BIND_COMPLETE, NO_DATA, PARSE_COMPLETE};
    use crate::protocol::frontend::{BIND_TAG, DESCRIBE_TAG, EXECUTE_TAG, PARSE_TAG, QUERY_TAG};
    let mut out = BytesMut::new();
    for &tag in tags {
        match tag {
            QUERY_TAG => {
                out.extend_from_slice(row_description.unwrap_or_default());
                out.extend_from_slice(rows);
            }
            PARSE_TAG => out.extend_from_slice(PARSE_COMPLETE),
            BIND_TAG => out.extend_from_slice(BIND_COMPLETE),
            DESCRIBE_TAG => out.extend_from_slice(row_description.unwrap_or(NO_DATA)),
            EXECUTE_TAG => out.extend_from_slice(rows),
            _ => {}
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn replies_keep_what_a_replay_needs() {
        let t = message(b'T', b"\0\0");
        let d = message(b'D', b"\0\x01\0\0\0\x011");
        let c = message(b'C', b"SELECT 1\0");
        let reply = [
            message(b'1', b""),
            message(b'2', b""),
            t.clone(),
            d.clone(),
            message(b'N', b"Snotice\0\0"),
            c.clone(),
        ]
        .concat();
        let (rd, rows) = split_reply(BytesMut::from(&reply[..])).unwrap();
        assert_eq!(rd.as_deref(), Some(&t[..]));
        assert_eq!(&rows[..], &[d.clone(), c.clone()].concat()[..]);
        // An error, a reply cut short, COPY: never stored.
        let error = [t.clone(), message(b'E', b"SERROR\0\0")].concat();
        assert!(split_reply(BytesMut::from(&error[..])).is_none());
        assert!(split_reply(BytesMut::from(&[t.clone(), d.clone()].concat()[..])).is_none());
        let cut = [t.clone(), c.clone()].concat();
        assert!(split_reply(BytesMut::from(&cut[..cut.len() - 2])).is_none());
        let copy = [message(b'H', b"\0\0\0"), c].concat();
        assert!(split_reply(BytesMut::from(&copy[..])).is_none());
    }
}
