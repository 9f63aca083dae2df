//! Keeping a client's session state in step with the server connections it uses in
//! transaction mode: what to send before a statement (given its [`Effects`] ([`before_forward`]: the client's SQL prepared statements and LISTENs when the statement
//! needs them), and what to do once its transaction is over ([`on_quiet`]: capture the state,
//! clean the connection, then stay pinned or release). Writes only to the attachment's buffer.

use std::collections::BTreeSet;

use super::attachment::{Attachment, Awaited, Expect, Reply, Resync, Source};
use super::effects::{Effects, ListenChange, SqlOp};
use super::state::{capture_sql, Captured, SessionState};
use crate::metrics::{GaugeGuard, Metrics};
use crate::pool::pool::{Settings, SharedSettings as Shared};
use crate::pool::AppliedSettings;
use crate::protocol::frontend::append_query;
use crate::protocol::frontend::{message, BIND_TAG, CLOSE_TAG, EXECUTE_TAG, PARSE_TAG};

/// Queues what the server connection needs before the client's statement with `effects`
/// runs on it, and records what the statement does to the client's state. `extended`: the
/// statement runs through a Bind, inside an extended batch, where only extended messages may
/// be injected.
pub(super) fn before_forward(
    att: &mut Attachment,
    state: &mut SessionState,
    effects: &Effects,
    extended: bool,
) {
    if !effects.any() {
        return;
    }
    let needs_prepared = effects.mentions_prepared
        || effects.sql_ops.iter().any(
            |op| matches!(op, SqlOp::Prepare(name, _) if state.sql_prepared.contains_key(name)),
        );
    if needs_prepared {
        ensure_sql_prepared(att, state, extended);
    }
    if effects
        .listen_changes
        .iter()
        .any(|c| matches!(c, ListenChange::Listen(_)))
    {
        // The capture reports what this connection listens on; the cleanup unlistens it.
        att.listened = true;
    }
    for op in &effects.sql_ops {
        match op {
            // A name the client has already is refused by the server (42P05): no change.
            SqlOp::Prepare(name, _) if state.sql_prepared.contains_key(name) => {}
            SqlOp::Prepare(name, prepared) => {
                state.sql_prepared.insert(name.clone(), prepared.clone());
                att.sql_on_conn.insert(name.clone());
                att.sql_created.push(name.clone());
            }
            SqlOp::Deallocate(name) => {
                state.sql_prepared.remove(name);
                att.sql_on_conn.remove(name);
            }
            SqlOp::DeallocateAll => {
                state.sql_prepared.clear();
                att.sql_on_conn.clear();
            }
        }
    }
    if effects.discard_all {
        state.sql_prepared.clear();
        att.sql_on_conn.clear();
    }
    let executes_capturing = effects
        .executes
        .iter()
        .any(|name| state.sql_prepared.get(name).is_some_and(|p| p.capture));
    if effects.capture
        || executes_capturing
        || effects.listens
        || !att.sql_on_conn.is_empty()
        || effects
            .sql_ops
            .iter()
            .any(|op| matches!(op, SqlOp::Deallocate(_)))
    {
        mark_due(att);
    }
}

/// Prepares the client's SQL prepared statements this server connection lacks (a statement
/// that names them is about to be parsed or run). They are deallocated before release.
pub(super) fn ensure_sql_prepared(att: &mut Attachment, state: &SessionState, extended: bool) {
    let missing: Vec<(String, String)> = state
        .missing_prepares(&att.sql_on_conn)
        .map(|(name, p)| (name.clone(), p.text.clone()))
        .collect();
    if missing.is_empty() {
        return;
    }
    for (name, text) in missing {
        if extended {
            inject_extended(att, &text);
        } else {
            inject(att, &text);
        }
        att.sql_on_conn.insert(name);
    }
    mark_due(att);
}

/// The client's state may have changed: capture it when the transaction is over, and never
/// hand the connection on before that.
pub(super) fn mark_due(att: &mut Attachment) {
    match &mut att.resync {
        Resync::Clean => att.resync = Resync::Due,
        Resync::Capturing { then_due, .. } | Resync::Settling { then_due, .. } => *then_due = true,
        Resync::Due | Resync::Failed => {}
    }
    att.server.conn_mut().applied = AppliedSettings::Unknown;
}

/// An injected statement failed.
pub(super) fn injected_failed(att: &mut Attachment) {
    att.resync = match att.resync {
        // Even the reset failed: the connection is closed at release.
        Resync::Settling { .. } => Resync::Clean,
        _ => Resync::Failed,
    };
    att.server.conn_mut().applied = AppliedSettings::Unknown;
}

pub(super) fn inject(att: &mut Attachment, sql: &str) {
    append_query(&mut att.wbuf, sql);
    att.push_expect(Expect {
        source: Source::Sidecar,
    });
}

/// Runs `sql` (no parameters, no rows) inside an extended batch: through the unnamed
/// statement (the client's is prepared again before it is next used) and a portal of the
/// sidecar's own, every reply swallowed.
pub(super) fn inject_extended(att: &mut Attachment, sql: &str) {
    const PORTAL: &[u8] = b"pgsc_portal\0";
    att.wbuf.extend_from_slice(&message(
        PARSE_TAG,
        &[b"\0", sql.as_bytes(), b"\0", &0i16.to_be_bytes()],
    ));
    att.wbuf
        .extend_from_slice(&message(BIND_TAG, &[PORTAL, b"\0", &[0, 0, 0, 0, 0, 0]]));
    att.wbuf
        .extend_from_slice(&message(EXECUTE_TAG, &[PORTAL, &0i32.to_be_bytes()]));
    att.wbuf
        .extend_from_slice(&message(CLOSE_TAG, &[b"P", PORTAL]));
    att.unnamed_ready = false;
    for awaited in [
        Awaited::ParseComplete,
        Awaited::BindComplete,
        Awaited::ExecuteResult,
        Awaited::CloseComplete,
    ] {
        att.push_reply(awaited, Reply::Swallow);
    }
}

/// What the relay does with a quiet attachment (transaction over, nothing in flight).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Quiet {
    /// The sidecar queued statements of its own; wait for them.
    Busy,
    /// The client holds session state that cannot be pooled: keep the connection.
    Pinned,
    /// Return the connection to the pool.
    Release,
}

/// Moves the resync along once the attachment is quiet. Returns the channels the client's LISTENs on this connection left it
/// listening on, when it ran any.
pub(super) fn on_quiet(
    att: &mut Attachment,
    state: &mut SessionState,
    metrics: &Metrics,
) -> (Quiet, Option<BTreeSet<String>>) {
    match std::mem::take(&mut att.resync) {
        // The client ran more since the capture was sent: capture again.
        Resync::Capturing { then_due: true, .. } | Resync::Settling { then_due: true, .. } => {
            att.resync = Resync::Due;
            on_quiet(att, state, metrics)
        }
        Resync::Due => {
            let sql = capture_sql(&att.server.pool().url().user);
            append_query(&mut att.wbuf, &sql);
            att.push_expect(Expect {
                source: Source::Capture,
            });
            metrics.session_captures.inc();
            att.resync = Resync::Capturing {
                rows: Captured::default(),
                then_due: false,
            };
            (Quiet::Busy, None)
        }
        Resync::Capturing {
            rows: captured,
            then_due: false,
        } => {
            let conn = att.server.conn_mut();
            if conn.token.as_ref().map(|t| &t.token) != captured.token.as_ref() {
                // The client changed or reset its token: it is set again before its next
                // statement.
                conn.token = None;
            }
            let channels = std::mem::take(&mut att.listened).then(|| captured.channels.clone());
            for name in std::mem::take(&mut att.sql_created) {
                if !captured.prepared.contains(&name) {
                    // Its PREPARE failed.
                    state.sql_prepared.remove(&name);
                }
            }
            att.sql_on_conn.clear();
            state.adopt_settings(&captured.settings);
            if !captured.pins.is_empty() {
                // Reset (DISCARD ALL) if the client vanishes while pinned.
                att.server.conn_mut().applied = AppliedSettings::Unknown;
                if att.pinned.is_none() {
                    tracing::debug!(reasons = ?captured.pins, "client pinned to its server connection");
                    att.pinned = Some(GaugeGuard::new(&metrics.clients_pinned));
                }
                return (Quiet::Pinned, channels);
            }
            att.pinned = None;
            match captured.cleanup_sql() {
                Some(sql) => {
                    inject(att, &sql);
                    att.resync = Resync::Settling {
                        settings: captured.settings,
                        then_due: false,
                    };
                    (Quiet::Busy, channels)
                }
                None => {
                    att.server.conn_mut().applied =
                        AppliedSettings::Known(Shared::new(captured.settings));
                    (Quiet::Release, channels)
                }
            }
        }
        Resync::Settling {
            settings,
            then_due: false,
        } => {
            att.server.conn_mut().applied = AppliedSettings::Known(Shared::new(settings));
            (Quiet::Release, None)
        }
        Resync::Failed => {
            reset(att);
            metrics.server_resets.inc();
            (Quiet::Busy, None)
        }
        Resync::Clean if att.pinned.is_some() => (Quiet::Pinned, None),
        Resync::Clean => (Quiet::Release, None),
    }
}

/// DISCARD ALL, after which the connection carries no client state at all.
fn reset(att: &mut Attachment) {
    att.server.conn_mut().discarded();
    att.unnamed_ready = false;
    att.sql_on_conn.clear();
    att.sql_created.clear();
    att.listened = false;
    att.pinned = None;
    inject(att, "DISCARD ALL");
    att.resync = Resync::Settling {
        settings: Settings::new(),
        then_due: false,
    };
}
