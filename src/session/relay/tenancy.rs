//! Tenant enforcement in the relay: each Query and Parse passes the tenant guard (refused ones
//! become a statement that raises the refusal on the server, so a transaction fails there too;
//! channel names are made the tenant's), and notifications lose the tenant's channel prefix on
//! their way to the client.

use super::*;

impl Relay {
    /// Under tenant enforcement: the statement that raises the refusal of a Query or Parse the
    /// guard refuses (42501 with the guard's message), counted and logged at debug level.
    pub(super) fn guard(&mut self, frame: &Frame) -> Guarded {
        let (Some(_), Some(tenant)) = (
            self.app.config.tenancy.as_ref().filter(|t| t.enforce),
            &self.info.tenant,
        ) else {
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
        let outcome = guard::check(sql, &classified, self.info.state.reserved())
            .and_then(|()| guard::namespace_channels(sql, &classified, tenant));
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
                    "DO $pgsc$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = {}; END$pgsc$",
                    crate::pool::pool::quote_literal(&message)
                ))
            }
        }
    }

    /// A notification on its way to the client: under tenant enforcement the channel loses
    /// the tenant's prefix, and one of another tenant never arrives (`None`).
    pub(super) fn for_client(&self, message: Bytes) -> Option<Bytes> {
        match (
            &self.info.tenant,
            self.app.config.tenancy.as_ref().filter(|t| t.enforce),
        ) {
            (Some(tenant), Some(_)) => {
                notify::strip_channel_prefix(&message, &format!("{tenant}."))
            }
            _ => Some(message),
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
