//! SQL `DEALLOCATE` and `EXECUTE` of a statement the client prepared through the protocol:
//! the two share one namespace in Postgres, but on the servers the statement has its
//! proxy-wide name. DEALLOCATE is answered by the sidecar (at once, or when its turn comes
//! behind requests in flight); EXECUTE is sent with the proxy-wide name, the statement
//! prepared on that server connection first if it lacks it.

use super::queue::LocalReply;
use super::*;
use crate::sql::rename::execute_target;

impl Relay {
    /// SQL `DEALLOCATE [PREPARE] name` of a statement the client prepared through the protocol
    /// (drivers evict their Parse'd statements so: psycopg with libpq < 17): the two share one
    /// namespace in Postgres, but on the servers the statement has its proxy-wide name, so the
    /// sidecar forgets it and answers as Postgres would — when nothing is in flight before it
    /// and no failed transaction must refuse it (then it goes to the server as sent).
    pub(super) fn deallocated_protocol_statement(&mut self, effects: &Effects) -> bool {
        let [crate::session::effects::SqlOp::Deallocate(name)] = effects.sql_ops.as_slice() else {
            return false;
        };
        if effects.statements != 1
            || self.info.state.sql_prepared.contains_key(name)
            || self.statements.get(name.as_bytes()).is_none()
        {
            return false;
        }
        // Answered in its turn behind requests in flight (pipelined), with the transaction
        // status of that moment; inside an open batch, or in a failed transaction with
        // nothing in flight, it goes to the server as sent (which refuses it as Postgres).
        let answered_here = match &self.phase {
            Phase::Detached | Phase::BeginHeld(_) => true,
            Phase::Attached(att) => {
                att.batch.is_none()
                    && att.client_stream == 0
                    && (att.status != TransactionStatus::Failed || !self.replies.is_empty())
            }
            Phase::SkipToSync => false,
        };
        if !answered_here {
            return false;
        }
        if let Some(prepared) = self.statements.take(name.as_bytes()) {
            self.answer_in_turn(LocalReply::Deallocate(name.clone(), prepared));
        }
        true
    }

    /// A Query that is exactly `EXECUTE name …` of a protocol-level statement: the text with
    /// the proxy-wide name, the statement prepared on the attached server connection first
    /// (with a Sync of its own, so a failed Parse cannot make the server discard the Query).
    /// `None` when the Query is something else, or an extended batch is open.
    pub(super) fn protocol_execute(&mut self, frame: &Frame, effects: &Effects) -> Option<Frame> {
        let [name] = effects.executes.as_slice() else {
            return None;
        };
        if effects.statements != 1 || self.info.state.sql_prepared.contains_key(name) {
            return None;
        }
        let prepared = Arc::clone(self.statements.get(name.as_bytes())?);
        let Phase::Attached(att) = &mut self.phase else {
            return None;
        };
        if att.batch.is_some() {
            return None;
        }
        let sql = std::str::from_utf8(frontend::query_text(frame.body())?).ok()?;
        let proxy = std::str::from_utf8(&prepared.proxy).ok()?;
        let renamed = execute_target(sql, name, proxy)?;
        extended::prepare_for_query(att, &prepared);
        Some(with_text(frame, &renamed))
    }
}
