//! The classification cache: classifications keyed by fingerprint, bounded by memory (moka), so
//! sqlparser runs once per distinct statement shape and every execution after that costs one
//! scan and one lookup. A classification holds literal indexes, never values, so sharing it
//! between executions (and clients) is sound.

use std::sync::Arc;

use super::classify::{classify, Classification, Options, StatementClass};
use super::fingerprint::{scan, Scan};
use super::rescan::rescan;

/// A scanned statement with its (possibly shared) classification.
#[derive(Debug, Clone)]
pub struct Classified {
    /// Shared by executions of the very same text (a prepared statement's, with parameters).
    pub scan: Arc<Scan>,
    pub classification: Arc<Classification>,
    /// Whether the classification came from the cache.
    pub hit: bool,
}

impl Classified {
    /// A setting's value as written (`sql` is the classified text): a word, or a literal's
    /// decoded value; empty for anything computed.
    pub fn setting_value(&self, sql: &[u8], value: &crate::sql::class::ValueRef) -> String {
        use crate::sql::class::ValueRef;
        match value {
            ValueRef::Word(w) => w.clone(),
            ValueRef::Literal(i) => self
                .scan
                .literals
                .get(*i)
                .map(|l| l.value(sql).into_owned())
                .unwrap_or_default(),
            ValueRef::Param(_) | ValueRef::Expression => String::new(),
        }
    }
}

/// Classifications by fingerprint, bounded in bytes.
pub struct ClassificationCache {
    /// Keyed by fingerprint with aHash (randomly seeded per process, so clients cannot aim
    /// statements at one bucket); SipHash was a fifth of a cached classification's cost.
    cache: moka::sync::Cache<Box<[u8]>, Arc<Classification>, ahash::RandomState>,
    options: Options,
}

impl ClassificationCache {
    /// A cache holding at most about `max_bytes` of fingerprints and classifications.
    pub fn new(max_bytes: u64, options: Options) -> ClassificationCache {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .build_with_hasher(ahash::RandomState::new());
        ClassificationCache { cache, options }
    }

    /// Scans `sql` and returns its classification, parsing only on a miss.
    pub fn classify(&self, sql: &[u8]) -> Classified {
        self.shared(sql, Arc::new(scan(sql)), None)
    }

    /// Like [`ClassificationCache::classify`], looking first among one client's `recent`
    /// shapes (a client repeats a few statement shapes; comparing a fingerprint costs less
    /// than a lookup in the shared cache).
    pub fn classify_recent(&self, sql: &[u8], recent: &mut Recent) -> Classified {
        // The very text of a recent statement (one with parameters, not literals, repeats
        // verbatim): its scan and classification again, with no scan.
        if let Some(classified) = recent.text(sql) {
            return classified;
        }
        // The same shape as a recent text with other literal values: only literals are lexed.
        let scan = match recent.rescan(sql) {
            Some(scan) => Arc::new(scan),
            None => {
                let scan = Arc::new(scan(sql));
                recent.remember_text(sql, &scan);
                scan
            }
        };
        if let Some(classification) = recent.get(&scan.fingerprint) {
            return Classified {
                scan,
                classification,
                hit: true,
            };
        }
        self.shared(sql, scan, Some(recent))
    }

    /// The classification of a scanned text from the shared cache, parsing only on a miss;
    /// what is found or made is kept among the client's `recent` shapes when there are some.
    fn shared(&self, sql: &[u8], scan: Arc<Scan>, recent: Option<&mut Recent>) -> Classified {
        if let Some(classification) = self.cache.get(&scan.fingerprint[..]) {
            if let Some(recent) = recent {
                recent.put(&scan.fingerprint, &classification);
            }
            return Classified {
                scan,
                classification,
                hit: true,
            };
        }
        let classification = Arc::new(classify(sql, &scan, &self.options));
        if let Some(recent) = recent {
            recent.put(&scan.fingerprint, &classification);
        }
        self.cache.insert(
            Box::from(&scan.fingerprint[..]),
            Arc::clone(&classification),
        );
        Classified {
            scan,
            classification,
            hit: false,
        }
    }

    /// Entries currently cached (approximate, for metrics and tests).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

/// How many shapes [`Recent`] keeps.
const RECENT_SHAPES: usize = 4;

/// The longest texts [`Recent`] keeps (per client, four of them): without literals (they
/// repeat verbatim), and with literals (they come back with other values).
const MAX_TEXT_WITHOUT_LITERALS: usize = 4096;
const MAX_TEXT_WITH_LITERALS: usize = 1024;

/// A fingerprint and its classification.
type Shape = (Box<[u8]>, Arc<Classification>);

/// A statement's exact text and its scan.
type Text = (Box<[u8]>, Arc<Scan>);

/// The statement shapes one client used last, with their classifications (round robin), and
/// the last texts it sent that needed a whole scan, with their scans.
#[derive(Default)]
pub struct Recent {
    entries: [Option<Shape>; RECENT_SHAPES],
    next: usize,
    texts: [Option<Text>; RECENT_SHAPES],
    next_text: usize,
}

impl Recent {
    /// The text's scan and classification, if the client sent this very text lately.
    fn text(&self, sql: &[u8]) -> Option<Classified> {
        let (_, scan) = self
            .texts
            .iter()
            .flatten()
            .find(|(text, _)| **text == *sql)?;
        let classification = self.get(&scan.fingerprint)?;
        Some(Classified {
            scan: Arc::clone(scan),
            classification,
            hit: true,
        })
    }

    /// The scan of a text that differs from a recent one only in its literals' values.
    fn rescan(&self, sql: &[u8]) -> Option<Scan> {
        self.texts
            .iter()
            .flatten()
            .find_map(|(text, scan)| rescan(text, scan, sql))
    }

    /// Keeps a text and its scan: a text without literals repeats as the same bytes; one with
    /// literals comes back with other values (then [`Recent::rescan`] serves it).
    fn remember_text(&mut self, sql: &[u8], scan: &Arc<Scan>) {
        let most = match scan.literals.is_empty() {
            true => MAX_TEXT_WITHOUT_LITERALS,
            false => MAX_TEXT_WITH_LITERALS,
        };
        if sql.len() > most {
            return;
        }
        self.texts[self.next_text] = Some((sql.into(), Arc::clone(scan)));
        self.next_text = (self.next_text + 1) % RECENT_SHAPES;
    }

    fn get(&self, fingerprint: &[u8]) -> Option<Arc<Classification>> {
        self.entries
            .iter()
            .flatten()
            .find(|(shape, _)| **shape == *fingerprint)
            .map(|(_, classification)| Arc::clone(classification))
    }

    fn put(&mut self, fingerprint: &[u8], classification: &Arc<Classification>) {
        self.entries[self.next] = Some((fingerprint.into(), Arc::clone(classification)));
        self.next = (self.next + 1) % RECENT_SHAPES;
    }
}

/// The weight of one entry in bytes (moka hands the key as `&Box<[u8]>`).
#[allow(clippy::borrowed_box)]
fn weigh(key: &Box<[u8]>, value: &Arc<Classification>) -> u32 {
    u32::try_from(key.len() + approximate_size(value)).unwrap_or(u32::MAX)
}

/// Roughly how many bytes a classification occupies.
fn approximate_size(c: &Classification) -> usize {
    let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    let statement = |s: &StatementClass| {
        std::mem::size_of::<StatementClass>()
            + strings(&s.tables_read)
            + strings(&s.tables_written)
            + strings(&s.assigned)
            + s.functions.iter().map(|f| f.name.len() + 32).sum::<usize>()
            + (s.settings.len() + s.equalities.len()) * 64
            + s.insert_rows.iter().map(|r| r.len() * 64).sum::<usize>()
    };
    match c {
        Classification::Parsed(statements) => statements.iter().map(statement).sum::<usize>() + 32,
        Classification::Unparsed { error } => error.len() + 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify::Kind;

    #[test]
    fn one_parse_per_shape() {
        let cache = ClassificationCache::new(1 << 20, Options::default());
        let first = cache.classify(b"SELECT * FROM t WHERE id = 1");
        let second = cache.classify(b"select *   from t where id = 99");
        assert!(!first.hit);
        assert!(second.hit);
        assert!(Arc::ptr_eq(&first.classification, &second.classification));
        let Classification::Parsed(c) = second.classification.as_ref() else {
            panic!("parsed")
        };
        assert_eq!(c[0].kind, Kind::Read);
        assert_eq!(
            second.scan.literals[0].value(b"select *   from t where id = 99"),
            "99"
        );
        assert!(!cache.classify(b"SELECT * FROM u WHERE id = 1").hit);
        assert_eq!(cache.entry_count(), 2);
    }

    #[test]
    fn recent_shapes_answer_before_the_shared_cache() {
        let cache = ClassificationCache::new(1 << 20, Options::default());
        let mut recent = Recent::default();
        let first = cache.classify_recent(b"SELECT 1 FROM t WHERE id = 1", &mut recent);
        let again = cache.classify_recent(b"SELECT 1 FROM t WHERE id = 2", &mut recent);
        assert!(!first.hit && again.hit);
        assert!(Arc::ptr_eq(&first.classification, &again.classification));
        // As many other shapes push the first out of the client's recent ones; the shared cache
        // still has it.
        for i in 0..RECENT_SHAPES {
            cache.classify_recent(format!("SELECT {i} FROM u{i}").as_bytes(), &mut recent);
        }
        assert!(recent.get(&first.scan.fingerprint).is_none());
        let shared = cache.classify_recent(b"SELECT 1 FROM t WHERE id = 3", &mut recent);
        assert!(shared.hit && Arc::ptr_eq(&first.classification, &shared.classification));
        assert!(recent.get(&first.scan.fingerprint).is_some());
    }

    #[test]
    fn recent_texts_are_not_scanned_again() {
        let cache = ClassificationCache::new(1 << 20, Options::default());
        let mut recent = Recent::default();
        let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let first = cache.classify_recent(sql, &mut recent);
        let again = cache.classify_recent(sql, &mut recent);
        assert!(again.hit && Arc::ptr_eq(&first.scan, &again.scan));
        assert!(Arc::ptr_eq(&first.classification, &again.classification));
        // Texts with literals are kept too: the same bytes again reuse the scan, other values
        // are rescanned from it (exactly as a scan would have found them).
        let lit = b"SELECT 1 FROM t WHERE id = 7 LIMIT 2";
        let a = cache.classify_recent(lit, &mut recent);
        let b = cache.classify_recent(lit, &mut recent);
        assert!(Arc::ptr_eq(&a.scan, &b.scan));
        let other = b"SELECT 1 FROM t WHERE id = 123456 LIMIT 2";
        let c = cache.classify_recent(other, &mut recent);
        assert!(c.hit && !Arc::ptr_eq(&a.scan, &c.scan));
        assert_eq!(*c.scan, scan(other));
        assert_eq!(c.scan.literals[1].value(other), "123456");
        assert!(Arc::ptr_eq(&a.classification, &c.classification));
        // Not kept: the text it was rescanned from stays the template.
        assert!(recent.texts.iter().flatten().all(|(t, _)| **t != other[..]));
    }

    #[test]
    fn bounded_by_bytes() {
        let cache = ClassificationCache::new(16 * 1024, Options::default());
        for i in 0..2000 {
            cache.classify(format!("SELECT * FROM table_{i} WHERE id = 1").as_bytes());
        }
        assert!(cache.entry_count() < 2000);
    }
}
