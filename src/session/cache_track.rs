//! What the result cache follows on one server connection: the reply being recorded, what
//! each request sent may write (by the number of the ReadyForQuery that answers it), whether a
//! transaction may have begun or was declared READ ONLY, and what ended transactions wrote,
//! first to forget here, then to announce to the other sidecars. No I/O.

use std::collections::VecDeque;

use crate::sql::cacheable::Writes;

/// What the result cache follows on one server connection.
#[derive(Debug, Default)]
pub(super) struct CacheTrack {
    /// The reply being recorded, and the number of the ReadyForQuery that ends it (the
    /// attachment's `readies` once it has arrived).
    pub(super) recording: Option<(u64, Box<crate::cache::Recording>)>,
    /// What the client's request being sent does (until its ReadyForQuery is asked for).
    unsent: Unsent,
    /// Requests that may write (or roll back), by the number of their ReadyForQuery.
    sent: VecDeque<Sent>,
    /// The number of the ReadyForQuery of the last request that began a transaction.
    began: u64,
    /// The number of the ReadyForQuery of the request that declared the transaction in
    /// progress READ ONLY.
    read_only: Option<u64>,
    /// What transactions that ended (not rolled back) wrote, before this sidecar's cache
    /// forgot it: announced already inside them (`.0`), or not.
    ended: (Writes, Writes),
    /// What this sidecar's cache forgot, not announced to the other sidecars yet.
    pub(super) to_announce: Writes,
}

/// What the messages of the request being sent do, for the cache.
#[derive(Debug, Default)]
struct Unsent {
    writes: Writes,
    rolls_back: bool,
    begins: bool,
    read_only: bool,
    /// Its writes are announced inside its transaction (an extended batch carries the
    /// notification).
    carried: bool,
    /// It ends a transaction (COMMIT, ROLLBACK): an announcement it carried could land in
    /// the transaction after it, so it carries none.
    ends: bool,
}

/// A sent request that may write or roll back.
#[derive(Debug)]
struct Sent {
    /// The number of its ReadyForQuery.
    ready: u64,
    writes: Writes,
    rolls_back: bool,
    carried: bool,
}

impl CacheTrack {
    /// Writes of the client's that may not have been announced yet: its next read must not
    /// be served from the cache.
    pub(super) fn unannounced(&self) -> bool {
        !self.unsent.writes.is_none()
            || !self.sent.is_empty()
            || !self.ended.0.is_none()
            || !self.ended.1.is_none()
            || !self.to_announce.is_none()
    }

    /// `bytes` of the front reply (ReadyForQuery number `front`) were forwarded: copied into
    /// its recording, if it has one.
    pub(super) fn record(&mut self, front: u64, bytes: &[u8]) {
        if let Some(recording) = self.recording_for(front) {
            recording.extend(bytes);
        }
    }

    /// The recording the front reply (ReadyForQuery number `front`) is copied into, if any.
    pub(super) fn recording_for(&mut self, front: u64) -> Option<&mut crate::cache::Recording> {
        match &mut self.recording {
            Some((n, rec)) if *n == front => Some(rec),
            _ => None,
        }
    }

    /// A message of the client's request runs a statement with these effects: what it may
    /// write, whether it rolls the transaction back (undoing what the transaction wrote
    /// before), begins one, or declares it READ ONLY. `primary`: on a primary (a replica's
    /// connection writes nothing and announces nothing).
    pub(super) fn note(&mut self, effects: &crate::session::effects::Effects, primary: bool) {
        if primary {
            self.unsent.writes.add(&effects.writes);
            self.unsent.rolls_back |= effects.rolls_back;
        }
        self.unsent.begins |= effects.begins;
        self.unsent.read_only |= effects.read_only_transaction;
        self.unsent.ends |= effects.ends_transaction.is_some();
    }

    /// At a ReadyForQuery, before the client sees it: what ended transactions wrote is
    /// forgotten by this sidecar's cache now (so no client of it can read the write and then
    /// an older cached answer), and is to be announced to the others.
    pub(super) fn forget_ended(&mut self, cache: &crate::cache::DatabaseCache) {
        let (carried, ended) = std::mem::take(&mut self.ended);
        let mut all = carried;
        all.add(&ended);
        if !all.is_none() {
            cache.invalidate(&all);
            self.to_announce.add(&ended);
        }
    }

    /// The announcement the request being sent carries in its own transaction: what it may
    /// write (`None`: nothing).
    pub(super) fn carry(&mut self) -> Option<String> {
        if self.unsent.ends {
            return None;
        }
        let sql = crate::cache::notify_sql(&self.unsent.writes)?;
        self.unsent.carried = true;
        Some(sql)
    }

    /// The BEGIN the sidecar held goes before the client's request.
    pub(super) fn note_begin(&mut self) {
        self.unsent.begins = true;
    }

    /// Whether a request in flight (past ReadyForQuery number `readies`) may have begun a
    /// transaction the attachment's status does not show yet.
    pub(super) fn may_begin(&self, readies: u64) -> bool {
        self.unsent.begins || self.began > readies
    }

    /// Whether the transaction in progress was declared READ ONLY.
    pub(super) fn read_only(&self) -> bool {
        self.read_only.is_some()
    }

    /// The client's request is answered by ReadyForQuery number `ready`.
    pub(super) fn asked(&mut self, ready: u64) {
        let unsent = std::mem::take(&mut self.unsent);
        if unsent.begins {
            self.began = ready;
        }
        if unsent.read_only {
            self.read_only = Some(ready);
        }
        if !unsent.writes.is_none() || unsent.rolls_back {
            self.sent.push_back(Sent {
                ready,
                writes: unsent.writes,
                rolls_back: unsent.rolls_back,
                carried: unsent.carried,
            });
        }
    }

    /// ReadyForQuery number `ready` said the transaction is over: what the requests up to it
    /// wrote is to be announced, except what a ROLLBACK undid (every request of its
    /// transaction is after the previous transaction's end).
    pub(super) fn transaction_ended(&mut self, ready: u64) {
        if self.read_only.is_some_and(|n| n <= ready) {
            self.read_only = None;
        }
        // (carried, not carried)
        let mut transaction = (Writes::None, Writes::None);
        while self.sent.front().is_some_and(|s| s.ready <= ready) {
            let Some(sent) = self.sent.pop_front() else {
                break;
            };
            if sent.rolls_back {
                transaction = (Writes::None, Writes::None);
            }
            match sent.carried {
                true => transaction.0.add(&sent.writes),
                false => transaction.1.add(&sent.writes),
            }
        }
        self.ended.0.add(&transaction.0);
        self.ended.1.add(&transaction.1);
    }
}
