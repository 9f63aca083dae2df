//! A client's extended-protocol messages on the server connection it is attached to: named
//! statements travel under their proxy-wide names, a Parse the server already has is answered
//! by the sidecar (ParseComplete in its place), a statement the server lacks is prepared again
//! (its ParseComplete swallowed) before the Bind or Describe that needs it, and a Close of a
//! named statement stays with the client. Every message leaves a [`Pending`] entry so replies
//! reach the client in order. No I/O: this writes to the attachment's buffer.

use std::sync::Arc;

use bytes::Bytes;

use super::attachment::{Attachment, Awaited, Pending, Reply};
use super::effects::Effects;
use super::statements::{ClientStatements, Prepared, PROXY_PREFIX};
use crate::protocol::backend::{CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{append_message, message, split_cstr};
use crate::protocol::frontend::{
    BIND_TAG, CLOSE_TAG, DESCRIBE_TAG, EXECUTE_TAG, PARSE_TAG, TARGET_STATEMENT,
};
use crate::route::replica::Routing;

/// Queues one Parse, Bind, Describe, Execute or Close for the server (or answers it).
/// `parsed`: what a Parse's statement does to the session when it runs, and where it may go.
pub(super) fn forward(
    att: &mut Attachment,
    statements: &mut ClientStatements,
    frame: &Frame,
    parsed: Option<(Arc<Effects>, Routing)>,
) {
    let body = frame.body();
    match frame.tag() {
        PARSE_TAG => {
            let (effects, routing) = parsed.unwrap_or_else(|| (Effects::none(), Routing::PRIMARY));
            parse(att, statements, frame, effects, routing)
        }
        BIND_TAG => {
            let fields =
                split_cstr(body).and_then(|(portal, rest)| Some((portal, split_cstr(rest)?)));
            let Some((portal, (name, rest))) = fields else {
                return pass(att, frame, Awaited::BindComplete);
            };
            let server_name = server_statement_name(att, statements, name);
            if server_name == name {
                // The unnamed statement (or one the client does not have): as it came.
                return pass(att, frame, Awaited::BindComplete);
            }
            append_message(
                &mut att.wbuf,
                BIND_TAG,
                &[portal, &[0], &server_name, &[0], rest],
            );
            att.push_reply(Awaited::BindComplete, Reply::Forward);
        }
        DESCRIBE_TAG => match body.split_first() {
            Some((&TARGET_STATEMENT, rest)) => {
                let Some((name, _)) = split_cstr(rest) else {
                    return pass(att, frame, Awaited::PortalDescription);
                };
                let name = server_statement_name(att, statements, name);
                let describe: [&[u8]; 3] = [&[TARGET_STATEMENT], &name, &[0]];
                append_message(&mut att.wbuf, DESCRIBE_TAG, &describe);
                let awaited = Awaited::StatementDescription {
                    parameters_seen: false,
                };
                att.push_reply(awaited, Reply::Forward);
            }
            _ => pass(att, frame, Awaited::PortalDescription),
        },
        CLOSE_TAG => match body.split_first() {
            Some((&TARGET_STATEMENT, rest)) => match split_cstr(rest).map(|(name, _)| name) {
                // The proxy-named statement may serve other clients: it stays on the server.
                Some(name) if !name.is_empty() => {
                    statements.forget(name);
                    att.push_synthesized(Bytes::from_static(CLOSE_COMPLETE));
                }
                _ => {
                    statements.unnamed = None;
                    att.unnamed_ready = false;
                    pass(att, frame, Awaited::CloseComplete)
                }
            },
            _ => pass(att, frame, Awaited::CloseComplete),
        },
        EXECUTE_TAG => pass(att, frame, Awaited::ExecuteResult),
        // Not an extended message; the relay does not send others here.
        _ => att.wbuf.extend_from_slice(frame.as_bytes()),
    }
}

/// Forwards the message as it came.
fn pass(att: &mut Attachment, frame: &Frame, awaited: Awaited) {
    att.wbuf.extend_from_slice(frame.as_bytes());
    att.push_reply(awaited, Reply::Forward);
}

fn parse(
    att: &mut Attachment,
    statements: &mut ClientStatements,
    frame: &Frame,
    effects: Arc<Effects>,
    routing: Routing,
) {
    let Some((name, rest)) = split_cstr(frame.body()) else {
        // Malformed: let the server say so.
        return pass(att, frame, Awaited::ParseComplete);
    };
    if name.is_empty() {
        statements.set_unnamed(frame.as_bytes().clone(), effects, routing);
        att.unnamed_ready = true;
        return pass(att, frame, Awaited::ParseComplete);
    }
    let prepared = statements.register(name, rest, effects, routing);
    let conn = att.server.conn_mut();
    if conn.prepared.contains(&prepared.proxy) {
        att.push_synthesized(Bytes::from_static(PARSE_COMPLETE));
        return;
    }
    send_parse(att, &prepared, Reply::Forward, Some(name.to_vec()));
}

/// Sends the statement's Parse under its proxy name, closing the oldest statement first when
/// the server connection holds too many.
fn send_parse(
    att: &mut Attachment,
    prepared: &Prepared,
    reply: Reply,
    client_name: Option<Vec<u8>>,
) {
    if let Some(oldest) = att
        .server
        .conn_mut()
        .prepared
        .insert(prepared.proxy.clone())
    {
        let close = message(CLOSE_TAG, &[b"S", &oldest, &[0]]);
        att.wbuf.extend_from_slice(&close);
        att.push_reply(Awaited::CloseComplete, Reply::Swallow);
    }
    att.wbuf.extend_from_slice(&prepared.parse);
    if att.catalog_changed && att.parsed_since_catalog_change.len() < MAX_PARSED_TRACKED {
        att.parsed_since_catalog_change.push(prepared.proxy.clone());
    }
    att.pending.push_back(Pending::Reply {
        awaited: Awaited::ParseComplete,
        reply,
        after: att.requests,
        parse_of: Some((client_name.unwrap_or_default(), prepared.proxy.clone())),
    });
}

/// Statements prepared after a catalog change that a rollback closes, at most (past that, the
/// server connection's own bound on prepared statements closes the oldest anyway).
const MAX_PARSED_TRACKED: usize = 1024;

/// The client's rollback (or commit, which rolls back a failed transaction) of a transaction
/// that changed the catalog is on its way: statements prepared since the change are closed on
/// the server (and prepared again when next used), so no client ever runs one parsed against
/// a type or table that the rollback removed. Between requests only: Closes and a Sync of its
/// own, their replies swallowed. `ends`: the transaction ends (not just a subtransaction).
pub(super) fn forget_parsed_since_catalog_change(att: &mut Attachment, ends: bool) {
    let parsed = std::mem::take(&mut att.parsed_since_catalog_change);
    att.catalog_changed &= !ends;
    if parsed.is_empty() {
        return;
    }
    for proxy in parsed {
        att.server.conn_mut().prepared.remove(&proxy);
        att.wbuf
            .extend_from_slice(&message(CLOSE_TAG, &[b"S", &proxy, &[0]]));
        att.push_reply(Awaited::CloseComplete, Reply::Swallow);
    }
    att.inject_sync();
}

/// Prepares the statement on this server connection, if it lacks it, before a simple Query
/// that runs it (SQL `EXECUTE` of a protocol-level name): with a Sync of its own, its
/// ReadyForQuery swallowed.
pub(super) fn prepare_for_query(att: &mut Attachment, prepared: &Prepared) {
    if ensure_prepared(att, prepared) {
        att.inject_sync();
    }
}

/// Prepares the statement on this server connection if it lacks it; true if a Parse was sent.
fn ensure_prepared(att: &mut Attachment, prepared: &Prepared) -> bool {
    let lacks = !att.server.conn_mut().prepared.contains(&prepared.proxy);
    if lacks {
        send_parse(att, prepared, Reply::Swallow, None);
    }
    lacks
}

/// The name a Bind or Describe must use on this server connection for the client's `name`,
/// preparing the statement there first if the server lacks it.
fn server_statement_name(
    att: &mut Attachment,
    statements: &ClientStatements,
    name: &[u8],
) -> Bytes {
    if name.is_empty() {
        ensure_unnamed(att, statements);
        return Bytes::new();
    }
    match statements.get(name) {
        Some(prepared) => {
            ensure_prepared(att, prepared);
            prepared.proxy.clone()
        }
        // Unknown to the client: the server answers "does not exist", as it should — unless
        // the name imitates a proxy-wide one, which could name another client's statement.
        None if name.starts_with(PROXY_PREFIX) => {
            Bytes::from([b"pgsc_unknown_".as_slice(), name].concat())
        }
        None => Bytes::copy_from_slice(name),
    }
}

/// Makes the server's unnamed statement the client's: re-created from its Parse, or closed
/// when the client has none (so another client's unnamed statement is never run).
fn ensure_unnamed(att: &mut Attachment, statements: &ClientStatements) {
    if att.unnamed_ready {
        return;
    }
    match &statements.unnamed {
        Some(parse) => {
            att.wbuf.extend_from_slice(parse);
            att.push_reply(Awaited::ParseComplete, Reply::Swallow);
        }
        None => {
            att.wbuf
                .extend_from_slice(&message(CLOSE_TAG, &[b"S", &[0]]));
            att.push_reply(Awaited::CloseComplete, Reply::Swallow);
        }
    }
    att.unnamed_ready = true;
}
