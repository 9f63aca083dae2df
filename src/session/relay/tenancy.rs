//! Tenant enforcement in the relay: each Query and Parse passes the tenant guard (refused ones
//! become a statement that raises the refusal on the server, so a transaction fails there too;
//! channel names are made the tenant's), and notifications lose the tenant's channel prefix on
//! their way to the client.

use super::*;
use crate::token::{Grant, SET_TOKEN_SQL};

/// The keyed prefix of the tenant's channels, under tenant enforcement.
pub(super) fn channel_prefix(app: &App, tenant: Option<&str>) -> Option<String> {
    let tenancy = app.config.tenancy.as_ref().filter(|t| t.enforce)?;
    Some(tenancy.signer.as_ref()?.channel_prefix(tenant?))
}

impl Relay {
    /// A server connection was just checked out for this client: if it last served another
    /// tenant it is reset with DISCARD ALL first (nothing of that tenant's session survives:
    /// temporary objects, prepared statements, settings, role, LISTENs, advisory locks), and
    /// it gets this client's signed tenant token unless it carries a fresh one already.
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
        renew_token(&self.app, self.info.grant.as_ref(), att, false);
    }

    /// Under tenant enforcement: the statement that raises the refusal of a Query or Parse the
    /// guard refuses (42501 with the guard's message), counted and logged at debug level.
    pub(super) fn guard(&mut self, frame: &Frame) -> Guarded {
        let Some(prefix) = &self.channel_prefix else {
            return Guarded::Pass;
        };
        let sql = match frame.tag() {
            frontend::QUERY_TAG => frontend::query_text(frame.body()),
            frontend::PARSE_TAG => frontend::parse_text(frame.body()).map(|(_, sql)| sql),
            _ => None,
        };
        let Some(sql) = sql else {
            return Guarded::Pass;
        };
        let classified = match self.classified_next.take() {
            Some((bytes, c)) if bytes == frame.as_bytes() => c,
            _ => self.app.classifier.classify(sql),
        };
        // The tenant setting is among the reserved ones whenever there is a tenant (login).
        let outcome =
            guard::check(sql, &classified, self.info.state.reserved()).and_then(|verdict| {
                if verdict == guard::Verdict::Unparsed {
                    self.app.metrics.tenancy_unparsed_forwarded.inc();
                }
                guard::namespace_channels(sql, &classified, prefix)
            });
        match outcome {
            Ok(None) => {
                // The relay classifies the same text next: this classification serves it.
                self.classified_next = Some((frame.as_bytes().clone(), classified));
                Guarded::Pass
            }
            Ok(Some(sql)) => Guarded::Rewritten(sql),
            Err(Refusal(message)) => {
                self.app.metrics.tenancy_refusals.inc();
                tracing::debug!(reason = %message, "statement refused under tenant enforcement");
                Guarded::Refused(format!(
                    "DO $pgsc$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = {}, DETAIL = '{}'; END$pgsc$",
                    crate::pool::pool::quote_literal(&message),
                    guard::REFUSAL_DETAIL
                ))
            }
        }
    }

    /// A notification on its way to the client: under tenant enforcement the channel loses
    /// the tenant's prefix, and one of another tenant never arrives (`None`).
    pub(super) fn for_client(&self, message: Bytes) -> Option<Bytes> {
        match &self.channel_prefix {
            Some(prefix) => notify::strip_channel_prefix(&message, prefix),
            None => Some(message),
        }
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
/// reply swallowed) when the connection has none the sidecar can vouch for, or one past
/// half its lifetime, or always with `force` (after RESET ALL / DISCARD ALL). Only between
/// requests: the token goes as an extended batch of its own.
pub(super) fn renew_token(app: &App, grant: Option<&Grant>, att: &mut Attachment, force: bool) {
    let Some(tenancy) = app.config.tenancy.as_ref() else {
        return;
    };
    let (Some(signer), Some(grant)) = (tenancy.signer.as_ref(), grant) else {
        return;
    };
    let lifetime = tenancy.token_lifetime;
    let now = Instant::now();
    let conn = att.server.conn_mut();
    if !force && conn.token_fresh_until.is_some_and(|until| until > now) {
        return;
    }
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + lifetime;
    let token = signer.sign(grant, conn.key.process_id, expires.as_secs());
    conn.token_fresh_until = Some(now + lifetime / 2);
    append_set_token(&mut att.wbuf, &token);
    att.unnamed_ready = false;
    att.push_expect(Expect {
        source: Source::Sidecar,
    });
}

/// Parse, Bind, Execute and Sync of [`SET_TOKEN_SQL`] with `token` as its parameter, through
/// the unnamed statement and portal.
fn append_set_token(out: &mut bytes::BytesMut, token: &str) {
    use crate::session::statements::message;
    out.extend_from_slice(&message(
        frontend::PARSE_TAG,
        &[b"\0", SET_TOKEN_SQL.as_bytes(), b"\0", &0i16.to_be_bytes()],
    ));
    let len = i32::try_from(token.len()).unwrap_or(i32::MAX).to_be_bytes();
    out.extend_from_slice(&message(
        frontend::BIND_TAG,
        &[
            b"\0\0",
            &0i16.to_be_bytes(),
            &1i16.to_be_bytes(),
            &len,
            token.as_bytes(),
            &0i16.to_be_bytes(),
        ],
    ));
    out.extend_from_slice(&message(
        frontend::EXECUTE_TAG,
        &[b"\0", &0i32.to_be_bytes()],
    ));
    out.extend_from_slice(&message(frontend::SYNC_TAG, &[]));
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
    Frame::from_bytes(crate::session::statements::message(
        frontend::PARSE_TAG,
        &[name, &[0], sql.as_bytes(), &[0], rest],
    ))
}
