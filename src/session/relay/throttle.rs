//! Per-tenant statement rates in the relay: each held request of a tenant with a rate takes a
//! token per statement (Query or Execute) before it runs — waiting for them, at most
//! `checkout_timeout`, or refused at once, as `on_limit` says — with 53400 when refused:
//! answered in turn outside a transaction, raised on the server inside one.

use std::time::Instant;

use super::*;
use crate::config::OnLimit;
use crate::sql::class::Kind;

impl Relay {
    /// Takes the tokens of the first `len` held frames (one request). `None`: it runs;
    /// `Some`: it was refused (its frames dropped) and is answered so.
    pub(super) async fn throttle(&mut self, len: usize) -> Option<intake::Refused> {
        let tenant = self.info.tenant.clone()?;
        let statements = statements(self.held.iter().take(len));
        if statements == 0 {
            return None;
        }
        let (rates, timeout) = (
            Arc::clone(&self.live.rates),
            self.live.config.pool.checkout_timeout,
        );
        let deadline = Instant::now() + timeout;
        let mut counted = false;
        loop {
            let now = Instant::now();
            let wait = match rates.take(&tenant, statements as f64, now) {
                Ok(()) => return None,
                Err(wait) => wait,
            };
            if !counted {
                counted = true;
                rates.count_throttled(&tenant);
                self.app.metrics.tenant_throttled.counter(&tenant).inc();
            }
            if rates.on_limit() == OnLimit::Refuse || now + wait > deadline {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        self.app.metrics.error("tenant_rate_limited");
        let per_second = rates.rate_of(&tenant).map_or(0.0, |r| r.per_second);
        let message = format!(
            "tenant \"{tenant}\" is over its limit of {per_second} statements per second (max_statements_per_second)"
        );
        let in_transaction = self.in_transaction();
        Some(self.refuse_request(
            len,
            SqlState::CONFIGURATION_LIMIT_EXCEEDED,
            message,
            in_transaction,
        ))
    }
}

/// The statements of a request that take a token: each Query and each Execute, except those
/// that only control the transaction (so a client over its rate can still end one).
fn statements<'a>(request: impl Iterator<Item = &'a Incoming>) -> usize {
    let control = |c: &Option<Classified>| {
        c.as_ref().is_some_and(|c| match c.classification.as_ref() {
            Classification::Parsed(parsed) => {
                !parsed.is_empty()
                    && parsed.iter().all(|s| {
                        matches!(
                            s.kind,
                            Kind::Begin { .. }
                                | Kind::Commit
                                | Kind::Rollback
                                | Kind::Savepoint
                                | Kind::Release
                                | Kind::RollbackTo
                        )
                    })
            }
            Classification::Unparsed { .. } => false,
        })
    };
    let (mut queries, mut executes, mut parses, mut control_parses) = (0, 0, 0, 0);
    for (frame, classified) in request {
        match frame.tag() {
            frontend::QUERY_TAG if !control(classified) => queries += 1,
            frontend::EXECUTE_TAG => executes += 1,
            frontend::PARSE_TAG => {
                parses += 1;
                if control(classified) {
                    control_parses += 1;
                }
            }
            _ => {}
        }
    }
    if parses > 0 && parses == control_parses {
        executes = 0;
    }
    queries + executes
}
