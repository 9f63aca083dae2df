//! The client's reply queue: one slot per request the client is owed an answer for, in the
//! order it asked. A slot's source is the attached server connection (its replies are
//! forwarded as they arrive, zero-copy) or the sidecar itself (a reply rendered when its turn
//! comes: SQL DEALLOCATE of a protocol-level statement, `SET pgsidecar.route`, a result-cache
//! hit). The attachment
//! keeps the server's side of the protocol (what each ReadyForQuery answers, injected
//! statements whose replies are swallowed); this queue is what the client sees, so a reply the
//! sidecar gives itself behind requests in flight keeps its place. No I/O here.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::backend::{self, ErrorReport, TransactionStatus};
use crate::protocol::sqlstate::SqlState;
use crate::route::plan::ROUTE_SETTING;
use crate::route::replica::Upstream;
use crate::session::statements::{ClientStatements, Prepared};

/// Where a slot's reply comes from.
#[derive(Debug)]
pub(super) enum Slot {
    /// The next client-visible ReadyForQuery of the client's server connection of this
    /// upstream, with the messages before it.
    Server(Upstream),
    /// A reply the sidecar gives itself when everything before it has been answered.
    Local(LocalReply),
}

/// A reply the sidecar renders itself, with the transaction status of the moment its turn
/// comes.
#[derive(Debug)]
pub(super) enum LocalReply {
    /// SQL `DEALLOCATE name` of a protocol-level statement, taken out of the client's
    /// statements (put back if the transaction has failed by then).
    Deallocate(String, Arc<Prepared>),
    /// A command the sidecar carried out (`SET pgsidecar.route`): its tag.
    Done(&'static str),
    /// A value `pgsidecar.route` does not take.
    BadRoute(String),
    /// A request that could not run (no server connection for it): its error.
    Failed(ErrorReport),
    /// A request answered from the result cache: its reply without the ReadyForQuery.
    Cached(bytes::Bytes),
}

impl LocalReply {
    /// Writes the reply, ending with a ReadyForQuery of `status`.
    pub(super) fn render(
        self,
        out: &mut BytesMut,
        statements: &mut ClientStatements,
        status: TransactionStatus,
    ) {
        match self {
            LocalReply::Deallocate(name, prepared) => {
                return local_deallocate(out, statements, (&name, prepared), status);
            }
            LocalReply::Done(tag) => backend::command_complete(out, tag),
            LocalReply::BadRoute(value) => ErrorReport::error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"{ROUTE_SETTING}\": \"{value}\" (use primary, replica or auto)"
                ),
            )
            .write(out),
            LocalReply::Failed(report) => report.write(out),
            LocalReply::Cached(reply) => out.extend_from_slice(&reply),
        }
        backend::ready_for_query(out, status);
    }
}

/// The client's slots, in order.
#[derive(Debug, Default)]
pub(super) struct ReplyQueue {
    slots: VecDeque<Slot>,
}

impl ReplyQueue {
    /// Nothing is owed to the client.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The client asked its server connection of `upstream` for a reply.
    pub(super) fn push_server(&mut self, upstream: Upstream) {
        self.slots.push_back(Slot::Server(upstream));
    }

    /// A reply the sidecar gives itself: returned when it is due now (nothing before it),
    /// queued behind the replies still owed otherwise.
    pub(super) fn push_local(&mut self, reply: LocalReply) -> Option<LocalReply> {
        if self.slots.is_empty() {
            return Some(reply);
        }
        self.slots.push_back(Slot::Local(reply));
        None
    }

    /// The server answered the client's front request (or never will: a Query it discarded
    /// after an error in a batch, a Sync it ignored during COPY): its slot goes.
    pub(super) fn server_done(&mut self, upstream: Upstream) {
        // A reply the sidecar gives itself is rendered as soon as it reaches the front, and a
        // server connection is read only while its slots are at the front: the first slot of
        // `upstream` is the front one.
        match self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Server(u) if *u == upstream))
        {
            Some(i) => {
                self.slots.remove(i);
            }
            None => tracing::debug!("a server reply with no slot waiting for it"),
        }
    }

    /// A reply the sidecar gives itself is at the front.
    pub(super) fn has_due(&self) -> bool {
        matches!(self.slots.front(), Some(Slot::Local(_)))
    }

    /// The replies the sidecar gives itself that are now at the front, in order.
    pub(super) fn pop_due(&mut self) -> Option<LocalReply> {
        match self.slots.front() {
            Some(Slot::Local(_)) => match self.slots.pop_front() {
                Some(Slot::Local(reply)) => Some(reply),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Answers SQL `DEALLOCATE name` of a protocol-level statement as Postgres would in
/// transaction state `status`: refused in a failed transaction, else the statement is gone.
fn local_deallocate(
    out: &mut bytes::BytesMut,
    statements: &mut ClientStatements,
    (name, prepared): (&str, Arc<Prepared>),
    status: TransactionStatus,
) {
    if status == TransactionStatus::Failed {
        statements.restore(name.as_bytes(), prepared);
        ErrorReport::error(
            SqlState::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
        .write(out);
    } else {
        backend::command_complete(out, "DEALLOCATE");
    }
    backend::ready_for_query(out, status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_keep_their_place() {
        let mut q = ReplyQueue::default();
        assert!(matches!(
            q.push_local(LocalReply::Done("SET")),
            Some(LocalReply::Done("SET"))
        ));
        q.push_server(Upstream::Replica(0));
        assert!(q.push_local(LocalReply::Done("SET")).is_none());
        q.push_server(Upstream::Primary);
        assert!(q.push_local(LocalReply::Done("RESET")).is_none());
        assert!(q.pop_due().is_none());
        q.server_done(Upstream::Replica(0));
        assert!(matches!(q.pop_due(), Some(LocalReply::Done("SET"))));
        assert!(q.pop_due().is_none());
        q.server_done(Upstream::Primary);
        assert!(matches!(q.pop_due(), Some(LocalReply::Done("RESET"))));
        assert!(q.is_empty());
    }

    #[test]
    fn rendering_uses_the_status_of_its_turn() {
        let mut out = BytesMut::new();
        let mut statements = ClientStatements::default();
        LocalReply::BadRoute("x".into()).render(
            &mut out,
            &mut statements,
            TransactionStatus::InTransaction,
        );
        assert_eq!(out[0], b'E');
        assert_eq!(&out[out.len() - 6..], b"Z\0\0\0\x05T");
    }
}
