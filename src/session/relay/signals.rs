//! `pg_cancel_backend` / `pg_terminate_backend` of the PIDs this sidecar issued (an app that
//! signals `conn.info.backend_pid`): the sidecar acts on its own client — cancels its request
//! or ends its session, for clients of the same user and tenant only — and what reaches the
//! server merely answers with the outcome. PIDs of real backends go to Postgres as written
//! (under tenant enforcement the guard refuses them, or the prepared form answers false).

use super::*;
use crate::cancel::FIRST_ISSUED_PID;
use crate::protocol::bind::Bind;
use crate::sql::signal::{signal_call, SignalArg, SignalCall, SignalKind};

impl Relay {
    /// A Query that is exactly a signal call of an issued PID, with that PID. In a failed
    /// transaction there is none (the server refuses the statement, as Postgres would).
    pub(super) fn signal_query(
        &self,
        frame: &Frame,
        classified: Option<&Classified>,
    ) -> Option<(i32, SignalCall)> {
        if classified.is_some_and(|c| !crate::sql::signal::may_signal(c)) {
            return None;
        }
        let call = frontend::query_text(frame.body())
            .and_then(|sql| std::str::from_utf8(sql).ok())
            .and_then(signal_call)?;
        let SignalArg::Literal(pid) = call.arg else {
            return None;
        };
        let pid = issued(pid)?;
        if matches!(&self.phase, Phase::Attached(att) if att.status == TransactionStatus::Failed) {
            return None;
        }
        Some((pid, call))
    }

    /// Acts on a [`Relay::signal_query`] now; the Query becomes a statement that answers with
    /// the outcome.
    pub(super) async fn answer_signal_query(
        &mut self,
        frame: &Frame,
        pid: i32,
        call: SignalCall,
    ) -> Frame {
        let done = self.app.signal(pid, self.info.key.owner(), call.kind).await;
        with_text(frame, &call.answered(done))
    }

    /// A Parse of a signal call whose PID is a `$n` parameter: replaced by a statement that
    /// answers for issued PIDs from the parameter the sidecar binds (`Some`: the replacement),
    /// and the statement marked as a signal so its Binds are looked at.
    pub(super) fn signal_parse(
        &self,
        frame: &Frame,
        classified: Option<&Classified>,
    ) -> Option<(Frame, (SignalKind, usize))> {
        if classified.is_some_and(|c| !crate::sql::signal::may_signal(c)) {
            return None;
        }
        let call = frontend::parse_text(frame.body())
            .and_then(|(_, sql)| std::str::from_utf8(sql).ok())
            .and_then(signal_call)?;
        let SignalCall {
            arg: SignalArg::Param(n),
            ..
        } = call
        else {
            return None;
        };
        let real_backends = self.channel_prefix.is_none();
        let sql = call.dispatching(FIRST_ISSUED_PID - 1, real_backends)?;
        Some((with_text(frame, &sql), (call.kind, n)))
    }

    /// A Bind of a signal statement whose PID parameter is an issued PID: acted on, and the
    /// parameter replaced by the value that makes the statement answer the outcome.
    pub(super) async fn signal_bind(&mut self, frame: Frame, kind: SignalKind, n: usize) -> Frame {
        let Some(bind) = Bind::parse(frame.body()) else {
            return frame;
        };
        let Some(pid) = bind.param_int(n - 1).and_then(issued) else {
            return frame;
        };
        let done = self.app.signal(pid, self.info.key.owner(), kind).await;
        let answer = if done {
            SignalCall::TRUE_PID
        } else {
            SignalCall::FALSE_PID
        };
        let value = bind.int_like(n - 1, answer);
        Frame::from_bytes(bind.encode_replacing(n - 1, &value).freeze())
    }
}

/// `pid` if it is in the range of the PIDs this sidecar issues.
fn issued(pid: i64) -> Option<i32> {
    i32::try_from(pid).ok().filter(|&p| p >= FIRST_ISSUED_PID)
}
