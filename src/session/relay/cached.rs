//! The result cache in the relay: a complete held request that is one whitelisted read,
//! outside a transaction and not behind a write of the client's own that has not been
//! announced, is looked up under its key (`cache/key.rs`). A hit is a reply the sidecar gives
//! itself in its turn (the recorded RowDescription, rows and CommandComplete, with what the
//! request's own messages ask for around them: ParseComplete, BindComplete, NoData); a miss
//! goes upstream with a recording of its reply (or waits for the client already fetching the
//! same key). Writes a transaction made are announced once it has ended (`announce_writes`).

use super::*;
use crate::cache::key::{Asker, KeyBuilder};
use crate::cache::{DatabaseCache, Lookup, Recording, Start};
use crate::route::plan::TxPin;
use crate::sql::cacheable::{judge_shape, nocache_hint, Cacheable, Refusal};
use crate::sql::classify::Classification;

/// What the cache does for a request.
pub(super) enum CacheStep {
    /// Answered from memory: the reply up to (not including) its ReadyForQuery.
    Hit(Bytes),
    /// Sent upstream; its reply is recorded.
    Record(Box<Recording>),
    /// Nothing: sent upstream as it is.
    Pass,
}

/// A cacheable request: its key, what makes it cacheable, and what its messages ask for.
struct Request {
    /// Boxed only when stored (a miss): a hit looks it up as it is.
    key: Vec<u8>,
    cacheable: Arc<Cacheable>,
    /// The request's message tags, in order (`Q`, or `P`/`B`/`D`/`E`/`S`).
    tags: smallvec::SmallVec<[u8; 8]>,
}

/// How many judgements a client remembers.
const JUDGED: usize = 4;

/// A judgement of one classification under a cache's rules.
type Judgement = (Arc<Classification>, Result<Arc<Cacheable>, Refusal>);

/// The client's last judgements, by classification (a client repeats a few shapes; judging
/// walks the rules and the statement's tables and functions).
#[derive(Default)]
pub(super) struct Judged {
    /// The cache whose rules they were made under.
    cache: Option<Arc<DatabaseCache>>,
    entries: [Option<Judgement>; JUDGED],
    next: usize,
}

impl Judged {
    fn judge(
        &mut self,
        classified: &Classified,
        cache: &Arc<DatabaseCache>,
    ) -> Result<Arc<Cacheable>, Refusal> {
        if nocache_hint(classified) {
            return Err(Refusal::Hint);
        }
        if !self.cache.as_ref().is_some_and(|c| Arc::ptr_eq(c, cache)) {
            *self = Judged {
                cache: Some(Arc::clone(cache)),
                ..Judged::default()
            };
        }
        let seen = self
            .entries
            .iter()
            .flatten()
            .find(|(c, _)| Arc::ptr_eq(c, &classified.classification));
        if let Some((_, judgement)) = seen {
            return judgement.clone();
        }
        let judgement = judge_shape(classified, cache.rules()).map(Arc::new);
        self.entries[self.next] = Some((Arc::clone(&classified.classification), judgement.clone()));
        self.next = (self.next + 1) % JUDGED;
        judgement
    }
}

/// The Parse message body after the statement's name (text and parameter types).
fn after_name(body: &[u8]) -> Option<&[u8]> {
    split_cstr(body).map(|(_, rest)| rest)
}

impl Relay {
    /// The cache's part in the first `len` held frames (one complete request).
    pub(super) async fn consult_cache(&mut self, len: usize) -> CacheStep {
        let Some(cache) = self.cache.clone() else {
            return CacheStep::Pass;
        };
        let request = match self.cacheable_request(len, &cache) {
            Ok(request) => request,
            Err(refusal) => {
                cache.refused(refusal);
                return CacheStep::Pass;
            }
        };
        match cache.lookup(&request.key, true) {
            Lookup::Hit(entry) => return CacheStep::Hit(entry.reply.clone()),
            Lookup::Offline => return CacheStep::Pass,
            Lookup::Miss => {}
        }
        // A client with replies still owed cannot wait for another's (it may be its own).
        let alone = self.owes_replies();
        let mut rx = match cache.start(
            request.key.clone().into_boxed_slice(),
            &request.cacheable,
            &request.tags,
            alone,
        ) {
            Start::Record(recording) => return CacheStep::Record(recording),
            Start::Wait(rx) => rx,
        };
        let timeout = self.live.config.pool.checkout_timeout;
        // Woken when the other client's reply is stored or given up (its sender goes).
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
        match cache.lookup(&request.key, false) {
            Lookup::Hit(entry) => CacheStep::Hit(entry.reply.clone()),
            Lookup::Offline => CacheStep::Pass,
            Lookup::Miss => match cache.start(
                request.key.into_boxed_slice(),
                &request.cacheable,
                &request.tags,
                true,
            ) {
                Start::Record(recording) => CacheStep::Record(recording),
                Start::Wait(_) => CacheStep::Pass,
            },
        }
    }

    /// The key of the first `len` held frames, if they are one cacheable read the client may
    /// be answered from the cache now.
    fn cacheable_request(
        &mut self,
        len: usize,
        cache: &Arc<DatabaseCache>,
    ) -> Result<Request, Refusal> {
        // Behind requests of the client's that may have written (not announced yet), begun a
        // transaction or changed its session (settings, role: the key would be the old one
        // until the capture), a read is not answered from the cache; inside a transaction only
        // with `in_read_only_transactions`, in one declared READ ONLY.
        // A session pinned to its connection may hold temporary tables that shadow a
        // whitelisted name: it neither reads nor fills the cache.
        let unsettled = |att: &Attachment| {
            att.cache.unannounced()
                || att.pinned.is_some()
                || !matches!(att.resync, Resync::Clean)
                || att.batch.is_some()
                || att.cache.may_begin(att.readies)
        };
        let read_only_tx = cache.in_read_only_transactions();
        let earlier = self.earlier.as_deref().is_some_and(unsettled);
        match (self.session_view().pin, &self.phase) {
            (TxPin::None, _) => {}
            (TxPin::Attached(_), Phase::Attached(att)) if !unsettled(att) && !earlier => {}
            (TxPin::Pinned(_), Phase::Attached(att))
                if read_only_tx
                    && att.cache.read_only()
                    && att.status == TransactionStatus::InTransaction
                    && !unsettled(att)
                    && !earlier => {}
            _ => return Err(Refusal::Transaction),
        }
        let mut key = KeyBuilder::resume(self.asker_key());
        let tags: smallvec::SmallVec<[u8; 8]> =
            self.held.iter().take(len).map(|(f, _)| f.tag()).collect();
        let classified = match tags.as_slice() {
            [frontend::QUERY_TAG] => {
                let (frame, classified) = &self.held[0];
                let text = frontend::query_text(frame.body()).ok_or(Refusal::Shape)?;
                key.query(text);
                classified.clone().ok_or(Refusal::NotUnderstood)?
            }
            _ => self.extended_key(len, &tags, &mut key)?,
        };
        let cacheable = self.cache_judged.judge(&classified, cache)?;
        Ok(Request {
            key: key.into_bytes(),
            cacheable,
            tags,
        })
    }

    /// The asker's part of the client's keys, made again only when its settings changed.
    fn asker_key(&mut self) -> &[u8] {
        let settings = &self.info.state.settings;
        if !matches!(&self.cache_asker, Some((s, _)) if s == settings) {
            let asker = Asker {
                database: &self.info.database.name,
                tenant: self.info.tenant.as_deref(),
                role: self.info.grant.as_ref().and_then(|g| g.role.as_deref()),
                claims: self.info.grant.as_ref().and_then(|g| g.claims.as_deref()),
                settings,
            };
            self.cache_asker = Some((settings.clone(), KeyBuilder::asker(&asker)));
        }
        self.cache_asker.as_ref().map_or(&[], |(_, key)| key)
    }

    /// The key parts of an extended request — an optional Parse, a Bind, an optional Describe
    /// of its portal, an Execute with no row limit and a Sync — and the classification of the
    /// statement it runs.
    fn extended_key(
        &mut self,
        len: usize,
        tags: &[u8],
        key: &mut KeyBuilder,
    ) -> Result<Classified, Refusal> {
        use frontend::{BIND_TAG, DESCRIBE_TAG, EXECUTE_TAG, PARSE_TAG, SYNC_TAG};
        let shapes: [&[u8]; 4] = [b"PBDES", b"PBES", b"BDES", b"BES"];
        if !shapes.contains(&tags) {
            return Err(Refusal::Shape);
        }
        let mut parsed: Option<(&[u8], &[u8], Option<&Classified>)> = None;
        let mut statement: Option<(Bytes, Option<Classified>)> = None;
        // The portal the Bind makes: the Describe and the Execute must name it (another
        // portal would run something else).
        let mut portal: Option<&[u8]> = None;
        let names_portal = |body: &[u8], portal: Option<&[u8]>| {
            split_cstr(body).is_some_and(|(name, _)| Some(name) == portal)
        };
        for (frame, classified) in self.held.iter().take(len) {
            let body = frame.body();
            match frame.tag() {
                PARSE_TAG => {
                    let (name, rest) = split_cstr(body).ok_or(Refusal::Shape)?;
                    key.parse(rest);
                    parsed = Some((name, rest, classified.as_ref()));
                }
                BIND_TAG => {
                    let (bound, rest) = split_cstr(body).ok_or(Refusal::Shape)?;
                    portal = Some(bound);
                    let (name, parameters) = split_cstr(rest).ok_or(Refusal::Shape)?;
                    let (text_and_types, classified) = match parsed {
                        Some((parsed_name, rest, classified)) if parsed_name == name => {
                            (Bytes::copy_from_slice(rest), classified.cloned())
                        }
                        Some(_) => return Err(Refusal::Shape),
                        None => (self.statement_body(name).ok_or(Refusal::Shape)?, None),
                    };
                    key.bind(&text_and_types, parameters);
                    statement = Some((text_and_types, classified));
                }
                DESCRIBE_TAG if body.first() == Some(&b'P') && names_portal(&body[1..], portal) => {
                    key.describe()
                }
                EXECUTE_TAG => {
                    let (_, limit) = split_cstr(body).ok_or(Refusal::Shape)?;
                    if limit != [0, 0, 0, 0] || !names_portal(body, portal) {
                        return Err(Refusal::Shape);
                    }
                    key.execute();
                }
                SYNC_TAG => {}
                _ => return Err(Refusal::Shape),
            }
        }
        let (text_and_types, classified) = statement.ok_or(Refusal::Shape)?;
        match classified {
            Some(classified) => Ok(classified),
            None => {
                let text = frontend::query_text(&text_and_types).ok_or(Refusal::Shape)?;
                Ok(self
                    .live
                    .classifier
                    .classify_recent(text, &mut self.recent_shapes))
            }
        }
    }

    /// The text and parameter types of a statement the client prepared earlier.
    pub(super) fn statement_body(&self, name: &[u8]) -> Option<Bytes> {
        let parse = match name {
            b"" => self.statements.unnamed.as_ref()?,
            name => &self.statements.get(name)?.parse,
        };
        let body = parse.get(HEADER_LEN..)?;
        let rest = after_name(body)?;
        Some(parse.slice_ref(rest))
    }

    /// Answers the first `len` held frames from the cache: Parses in them are the client's
    /// statements now, as if the server had parsed them.
    pub(super) fn serve_hit(&mut self, len: usize, reply: Bytes) {
        for _ in 0..len {
            let Some((frame, classified)) = self.held.pop_front() else {
                break;
            };
            match frame.tag() {
                frontend::PARSE_TAG => self.adopt_parse(&frame, classified.as_ref()),
                frontend::QUERY_TAG => {
                    // A simple Query destroys the unnamed statement, as in Postgres.
                    self.statements.unnamed = None;
                    self.forget_unnamed_upstream();
                    self.count_query();
                }
                frontend::EXECUTE_TAG => self.count_query(),
                _ => {}
            }
        }
        self.answer_in_turn(queue::LocalReply::Cached(reply));
    }

    /// A Parse answered from the cache: the statement is the client's (prepared on a server
    /// connection when one first needs it).
    pub(super) fn adopt_parse(&mut self, frame: &Frame, classified: Option<&Classified>) {
        let (effects, routing) = self.effects(frame, classified);
        let Some((name, rest)) = split_cstr(frame.body()) else {
            return;
        };
        if name.is_empty() {
            self.statements
                .set_unnamed(frame.as_bytes().clone(), effects, routing);
            self.forget_unnamed_upstream();
        } else {
            self.statements.register(name, rest, effects, routing);
        }
    }

    /// The attached server connection's unnamed statement is no longer the client's.
    pub(super) fn forget_unnamed_upstream(&mut self) {
        if let Phase::Attached(att) = &mut self.phase {
            att.unnamed_ready = false;
        }
    }

    /// The request just sent is recorded as its reply is forwarded.
    pub(super) fn start_recording(&mut self, recording: Box<Recording>) {
        if let Phase::Attached(att) = &mut self.phase {
            if let Some(ready) = att.last_client_ready() {
                att.cache.recording = Some((ready, recording));
            }
        }
    }

    /// A quiet connection's ended transactions wrote tables (this sidecar's cache forgot them
    /// at their ReadyForQuery): the connection tells every sidecar (its reply swallowed).
    /// Returns whether it sent the announcement (the connection is not quiet any more).
    pub(super) fn announce_writes(&mut self, which: Which) -> bool {
        let Some(att) = attachment(which, &mut self.phase, &mut self.earlier) else {
            return false;
        };
        let ended = std::mem::take(&mut att.cache.to_announce);
        let Some(sql) = crate::cache::notify_sql(&ended) else {
            return false;
        };
        resync::inject(att, &sql);
        true
    }
}
