//! Tenant enforcement in the relay: each Query and Parse passes the tenant guard (refused ones
//! become a statement that raises the refusal on the server, so a transaction fails there too;
//! channel names are made the tenant's), and notifications lose the tenant's channel prefix on
//! their way to the client.

use super::*;
use crate::token::{Grant, TOKEN_SETTING};

/// The keyed prefix of the tenant's channels, under tenant enforcement.
pub(super) fn channel_prefix(app: &App, tenant: Option<&str>) -> Option<String> {
    let live = app.live();
    let tenancy = live.config.tenancy.as_ref().filter(|t| t.enforce)?;
    Some(tenancy.signer.as_ref()?.channel_prefix(tenant?))
}

impl Relay {
    /// A server connection was just checked out for this client: if it last served another
    /// tenant it is reset with DISCARD ALL first (nothing of that tenant's session survives:
    /// temporary objects, prepared statements, settings, role, LISTENs, advisory locks). The
    /// token and the client's settings follow ([`due_token`]).
    pub(super) fn tenant_on_checkout(&self, att: &mut Attachment) {
        let Some(tenant) = &self.info.tenant else {
            return;
        };
        let conn = att.server.conn_mut();
        if conn.tenant.as_deref() != Some(tenant.as_str()) {
            if conn.tenant.is_some() {
                frontend::append_query(&mut att.wbuf, "DISCARD ALL");
                att.push_expect(Expect {
                    source: Source::Sidecar,
                });
                self.app.metrics.tenant_hops.inc();
                att.server.conn_mut().discarded();
            }
            att.server.conn_mut().tenant = Some(Arc::from(tenant.as_str()));
        }
    }

    /// Under tenant enforcement: the statement that raises the refusal of a Query or Parse the
    /// guard refuses (42501 with the guard's message), counted and logged at debug level.
    pub(super) fn guard(&self, frame: &Frame, classified: Option<&Classified>) -> Guarded {
        if self.channel_prefix.is_none() {
            // No tenant enforcement (the text is not even looked for).
            return Guarded::Pass;
        }
        let Some(sql) = frontend::statement_text(frame.tag(), frame.body()) else {
            return Guarded::Pass;
        };
        match self.guard_text(sql, classified) {
            Ok(None) => Guarded::Pass,
            Ok(Some(sql)) => Guarded::Rewritten(sql),
            Err(Refusal(message)) => Guarded::Refused(format!(
                "DO $pgsc$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = {}, DETAIL = '{}'; END$pgsc$",
                crate::sql::quote::quote_literal(&message),
                guard::REFUSAL_DETAIL
            )),
        }
    }

    /// The tenant guard on one statement text (statements the sidecar runs on several shards
    /// pass it too): passed, rewritten (tenant channels), or refused with its message.
    pub(super) fn guard_text(
        &self,
        sql: &[u8],
        classified: Option<&Classified>,
    ) -> Result<Option<String>, Refusal> {
        let Some(prefix) = &self.channel_prefix else {
            return Ok(None);
        };
        let classified = &*self.classified_or_now(sql, classified);
        // The tenant setting is among the reserved ones whenever there is a tenant (login).
        let outcome =
            guard::check(sql, classified, self.info.state.reserved()).and_then(|verdict| {
                if verdict == guard::Verdict::Unparsed {
                    self.app.metrics.tenancy_unparsed_forwarded.inc();
                }
                guard::namespace_channels(sql, classified, prefix)
            });
        if let Err(Refusal(message)) = &outcome {
            self.app.metrics.tenancy_refusals.inc();
            tracing::debug!(reason = %message, "statement refused under tenant enforcement");
        }
        outcome
    }

    /// A notification on its way to the client: under tenant enforcement the channel loses
    /// the tenant's prefix, and one of another tenant never arrives (`None`).
    pub(super) fn for_client(&self, message: Bytes) -> Option<Bytes> {
        for_client(self.channel_prefix.as_deref(), message)
    }
}

/// A notification with the tenant's channel prefix (if any) taken off; `None` when it is
/// another tenant's.
pub(super) fn for_client(channel_prefix: Option<&str>, message: Bytes) -> Option<Bytes> {
    match channel_prefix {
        Some(prefix) => notify::strip_channel_prefix(&message, prefix),
        None => Some(message),
    }
}

/// What the tenant guard makes of a Query or Parse.
pub(super) enum Guarded {
    Pass,
    /// Refused: the statement that raises the refusal on the server instead.
    Refused(String),
    /// Sent with this text instead (tenant channels).
    Rewritten(String),
}

/// Sets the client's signed tenant token on the attached server connection (pipelined, its
/// reply swallowed) when [`due_token`] says so. Only between requests: it goes as an extended
/// batch of its own.
pub(super) fn renew_token(
    live: &crate::live::Live,
    grant: Option<&Grant>,
    att: &mut Attachment,
    force: bool,
) {
    if force {
        att.server.conn_mut().token = None;
    }
    if let Some(token) = due_token(live, grant, att) {
        push_set_config(att, &[(TOKEN_SETTING, &token)], Source::Sidecar);
    }
}

/// The signed tenant token to set on the attached server connection, when it has none the
/// sidecar can vouch for or one past half its lifetime (the connection then counts it as
/// fresh: the caller must send it).
pub(super) fn due_token(
    live: &crate::live::Live,
    grant: Option<&Grant>,
    att: &mut Attachment,
) -> Option<String> {
    let tenancy = live.config.tenancy.as_ref()?;
    let (signer, grant) = (tenancy.signer.as_ref()?, grant?);
    let lifetime = tenancy.token_lifetime;
    let now = std::time::Instant::now();
    let conn = att.server.conn_mut();
    if conn.token.as_ref().is_some_and(|t| t.fresh_until > now) {
        return None;
    }
    let token = signer.sign_for(grant, conn.key.process_id, lifetime);
    conn.token = Some(crate::pool::server::TokenOnConn {
        token: token.clone(),
        fresh_until: now + lifetime / 2,
    });
    Some(token)
}

/// One statement that sets every (name, value) with `set_config` — the values as Bind
/// parameters, so a token never appears in a query text — as an extended batch of its own
/// (Parse, Bind, Execute, Sync through the unnamed statement and portal) whose reply is
/// handled as `source` says.
pub(super) fn push_set_config(att: &mut Attachment, sets: &[(&str, &str)], source: Source) {
    use crate::protocol::frontend::message;
    let calls: Vec<String> = (0..sets.len())
        .map(|i| {
            format!(
                "pg_catalog.set_config(${}, ${}, false)",
                2 * i + 1,
                2 * i + 2
            )
        })
        .collect();
    let sql = format!("SELECT {}", calls.join(", "));
    let out = &mut att.wbuf;
    out.extend_from_slice(&message(
        frontend::PARSE_TAG,
        &[b"\0", sql.as_bytes(), b"\0", &0i16.to_be_bytes()],
    ));
    let mut bind = bytes::BytesMut::new();
    bind.extend_from_slice(b"\0\0");
    bind.extend_from_slice(&0i16.to_be_bytes());
    let count = i16::try_from(2 * sets.len()).unwrap_or(i16::MAX);
    bind.extend_from_slice(&count.to_be_bytes());
    for value in sets.iter().flat_map(|(name, value)| [*name, *value]) {
        let len = i32::try_from(value.len()).unwrap_or(i32::MAX);
        bind.extend_from_slice(&len.to_be_bytes());
        bind.extend_from_slice(value.as_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&message(frontend::BIND_TAG, &[&bind]));
    out.extend_from_slice(&message(
        frontend::EXECUTE_TAG,
        &[b"\0", &0i32.to_be_bytes()],
    ));
    frontend::append_sync(out);
    att.unnamed_ready = false;
    att.push_expect(Expect { source });
}

/// A Query or Parse like `frame` with another statement text.
pub(super) fn with_text(frame: &Frame, sql: &str) -> Frame {
    let mut out = bytes::BytesMut::new();
    if frame.tag() == frontend::QUERY_TAG {
        frontend::append_query(&mut out, sql);
        return Frame::from_bytes(out.freeze());
    }
    let body = frame.body();
    let Some((name, old)) = frontend::parse_text(body) else {
        return frame.clone();
    };
    let rest = &body[(name.len() + 1 + old.len() + 1).min(body.len())..];
    Frame::from_bytes(crate::protocol::frontend::message(
        frontend::PARSE_TAG,
        &[name, &[0], sql.as_bytes(), &[0], rest],
    ))
}
