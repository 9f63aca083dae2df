//! A transaction that spreads over shards (two-phase commit configured): inside a transaction
//! on one shard, a statement for another shard parks the current connection and runs on a
//! connection of the other shard, begun with the same isolation level and access mode (or on
//! the one parked there before). Each statement runs through the relay as any other; the
//! client sees the transaction status of the shard that answered it, and after an error the
//! failed connection answers everything (25P02) until the transaction ends. A COMMIT of its
//! own prepares on every shard and commits with the logged decision (`pool::twophase`); a
//! ROLLBACK, or a COMMIT of a failed transaction, rolls back everywhere. Savepoints, ending the
//! transaction any other way, and statements that change session state are refused while the
//! transaction is spread (raised there, so the transaction fails as Postgres would fail it).

use super::shard_write::{append_prepare, shard_gid, Shape};
use super::shards::{Placed, Spread};
use super::*;
use crate::sql::class::Kind;

impl Relay {
    /// Inside a transaction on the current shard, a request needs shard `wanted`. `None`
    /// without two-phase commit (the caller refuses); else where the request runs now.
    pub(super) async fn spread_to(&mut self, len: usize, wanted: usize) -> Option<Placed> {
        let two_phase = self.shards.as_ref().is_some_and(|s| s.two_phase_commit);
        if !two_phase || self.app.two_phase.is_none() {
            return None;
        }
        let Phase::Attached(att) = &mut self.phase else {
            return None;
        };
        if att.status == TransactionStatus::Failed {
            // The failed transaction answers 25P02 wherever the statement would go.
            return Some(Placed::Here);
        }
        if !att.between_requests() {
            return Some(Placed::Wait);
        }
        if att.pinned.is_some() || !matches!(att.resync, Resync::Clean) {
            return Some(self.refuse_spread(
                len,
                "this transaction changed session state (settings, locks, temporary objects) \
                 on its first shard, so it cannot spread to another shard: change it before \
                 BEGIN, or keep the transaction on one shard",
            ));
        }
        let begin = match self.shards.as_ref().and_then(|s| s.spread.as_ref()) {
            Some(spread) => spread.begin.clone(),
            None => match transaction_begin(att).await {
                Some(begin) => begin,
                None => return Some(Placed::Here),
            },
        };
        let current = self.info.database.shard.unwrap_or(0);
        let mut parked = self
            .shards
            .as_mut()
            .and_then(|s| s.spread.take())
            .map_or_else(Vec::new, |s| s.parked);
        let next = match parked.iter().position(|(n, _)| *n == wanted) {
            Some(i) => Ok(parked.remove(i).1),
            None => match self.attach_shard(wanted).await {
                Some((_, Ok(mut att))) => {
                    frontend::append_query(&mut att.wbuf, &begin);
                    att.push_expect(Expect {
                        source: Source::Sidecar,
                    });
                    Ok(att)
                }
                Some((_, Err(report))) => Err(report.message),
                None => Err(format!("shard {wanted} does not exist")),
            },
        };
        let next = match next {
            Ok(next) => next,
            Err(message) => {
                if let Some(shards) = &mut self.shards {
                    shards.spread =
                        (!parked.is_empty()).then(|| Box::new(Spread { parked, begin }));
                }
                return Some(
                    self.refuse_spread(len, &format!("shard {wanted} is not available: {message}")),
                );
            }
        };
        if let Some(att) = self.take_attachment(Which::Current).await {
            parked.push((current, att));
        }
        if let Some(shards) = &mut self.shards {
            shards.spread = Some(Box::new(Spread { parked, begin }));
        }
        self.move_to_shard(wanted);
        let mut next = next;
        self.info.key.running(next.cancel_target());
        self.phase = Phase::Attached(next);
        tracing::debug!(
            from = current,
            to = wanted,
            "transaction spread to another shard"
        );
        Some(Placed::Here)
    }

    /// A request inside a spread transaction: a COMMIT or ROLLBACK of its own ends it on every
    /// shard (`Handled`); savepoints, other ways of ending it and statements that change session
    /// state are refused; anything else runs (`None`).
    pub(super) async fn spread_request(&mut self, len: usize) -> Option<Placed> {
        if self.shards.as_ref().is_none_or(|s| s.spread.is_none()) {
            return None;
        }
        let mut ends = None;
        let mut refused = None;
        let frames: Vec<(Frame, Option<Classified>)> =
            self.held.iter().take(len).cloned().collect();
        for (frame, classified) in &frames {
            let Some(sql) = frontend::statement_text(frame.tag(), frame.body()) else {
                continue;
            };
            let classified = &*self.classified_or_now(sql, classified.as_ref());
            let kinds: Vec<&Kind> = match classified.classification.as_ref() {
                Classification::Parsed(parsed) => parsed.iter().map(|c| &c.kind).collect(),
                Classification::Unparsed { .. } => Vec::new(),
            };
            // A COMMIT or ROLLBACK of its own (the classification keeps no AND CHAIN: a
            // statement that short has no string literal the word could stand in).
            let own = frames.len() == 1
                && frame.tag() == frontend::QUERY_TAG
                && kinds.len() == 1
                && !sql.to_ascii_lowercase().windows(5).any(|w| w == b"chain");
            match kinds.as_slice() {
                [Kind::Commit] if own => ends = Some(true),
                [Kind::Rollback] if own => ends = Some(false),
                _ if kinds.iter().any(|k| matches!(k, Kind::Commit | Kind::Rollback)) => {
                    refused = Some("a transaction across shards ends with a COMMIT or ROLLBACK statement of its own (simple query, no AND CHAIN)")
                }
                _ if kinds.iter().any(|k| matches!(k, Kind::Savepoint | Kind::Release | Kind::RollbackTo)) => {
                    refused = Some("savepoints are not supported in a transaction across shards")
                }
                _ => {
                    // PREPARE TRANSACTION and COMMIT/ROLLBACK PREPARED do not parse: their
                    // effects are unknown, so they are refused here too.
                    let (effects, _) = self.effects(frame, Some(classified));
                    if effects.capture || effects.listens || !effects.sql_ops.is_empty() {
                        refused = Some(
                            "a transaction across shards cannot change session state (settings, locks, \
                             LISTEN, prepared statements, temporary objects) or prepare itself: do it \
                             outside the transaction",
                        );
                    }
                }
            }
        }
        if let Some(message) = refused {
            return Some(self.refuse_spread(len, message));
        }
        let commit = ends?;
        if !matches!(&self.phase, Phase::Attached(att) if att.between_requests()) {
            return Some(Placed::Wait);
        }
        for _ in 0..len {
            self.held.pop_front();
        }
        self.count_query();
        self.end_spread(commit).await;
        Some(Placed::Handled)
    }

    /// Ends a spread transaction on every shard: rolled back, or prepared everywhere and
    /// committed with the logged decision. The client gets COMMIT or ROLLBACK (or the error
    /// that made the commit fail; then nothing committed) in turn.
    async fn end_spread(&mut self, commit: bool) {
        let spread = self.shards.as_mut().and_then(|s| s.spread.take());
        let mut all: Vec<(usize, Box<Attachment>)> = spread.map_or_else(Vec::new, |s| s.parked);
        let current = self.info.database.shard.unwrap_or(0);
        if let Some(att) = self.take_attachment(Which::Current).await {
            all.push((current, att));
        }
        let failed = all
            .iter()
            .any(|(_, a)| a.status == TransactionStatus::Failed);
        let reply = match (commit && !failed, self.app.two_phase.clone()) {
            (true, Some(coordinator)) => {
                let gid = coordinator.gid();
                let attachments = all
                    .into_iter()
                    .map(|(n, mut att)| {
                        let shard_gid = shard_gid(&gid, n);
                        append_prepare(&mut att.wbuf, &shard_gid);
                        (shard_gid, att)
                    })
                    .collect();
                self.run_two_phase(&coordinator, &gid, attachments, Shape::Commit)
                    .await
                    .map(|_| "COMMIT")
            }
            _ => {
                for (_, mut att) in all {
                    if att.server.conn_mut().run_internal("ROLLBACK").await.is_ok() {
                        att.server.release();
                    }
                }
                Ok("ROLLBACK")
            }
        };
        self.app.metrics.shards.ran("transaction", reply.is_ok());
        let reply = match reply {
            Ok(tag) => queue::LocalReply::Done(tag),
            Err(failure) => {
                // The error the COMMIT failed with; the ReadyForQuery follows in turn.
                let mut out = bytes::BytesMut::new();
                failure.write(&mut out);
                queue::LocalReply::Cached(out.freeze())
            }
        };
        self.move_to_shard(current);
        self.answer_in_turn(reply);
    }

    /// Refuses the request inside the spread transaction: raised on the server, so the
    /// transaction fails there.
    fn refuse_spread(&mut self, len: usize, message: &str) -> Placed {
        self.app.metrics.error("shard_refused");
        match self.refuse_request(
            len,
            SqlState::FEATURE_NOT_SUPPORTED,
            message.to_owned(),
            true,
        ) {
            intake::Refused::Answer(report) => Placed::Refuse(report),
            intake::Refused::Raise(sql) => Placed::Raise(sql),
        }
    }

    /// The session ends inside a spread transaction: every parked connection is rolled back and
    /// cleaned like a client's that left.
    pub(super) async fn drop_spread(&mut self) {
        let Some(spread) = self.shards.as_mut().and_then(|s| s.spread.take()) else {
            return;
        };
        for (_, att) in spread.parked {
            clean_and_release(*att, self.mode).await;
        }
    }
}

/// `BEGIN` with the isolation level and access mode of the transaction on `att` (quiet).
async fn transaction_begin(att: &mut Attachment) -> Option<String> {
    let rows = att
        .server
        .conn_mut()
        .query_rows("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')")
        .await
        .ok()?;
    let row = rows.first()?;
    let isolation = row.first()?.as_deref()?.to_ascii_uppercase();
    let read_only = row.get(1)?.as_deref()? == "on";
    let allowed = [
        "READ UNCOMMITTED",
        "READ COMMITTED",
        "REPEATABLE READ",
        "SERIALIZABLE",
    ];
    let isolation = allowed.iter().find(|a| **a == isolation)?;
    Some(format!(
        "BEGIN ISOLATION LEVEL {isolation} {}",
        if read_only { "READ ONLY" } else { "READ WRITE" }
    ))
}
