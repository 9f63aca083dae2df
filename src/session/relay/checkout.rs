//! Checkout for one client: waiting for a server connection (behind the tenant's cap, bounded
//! by `checkout_timeout`, ended by a cancel or by the client leaving), then preparing it —
//! DISCARD ALL when it last served another tenant, the signed tenant token and the client's
//! settings, pipelined before the client's statement.

use super::*;

/// While a client waits for a server connection, this much of what it sends next is read
/// ahead (so a client that leaves is noticed); past it the client is not read.
const WAITING_READ_AHEAD: usize = 1024 * 1024;

/// What waiting for a checkout gave: the tenant's permit (under a cap) and the checkout.
type Waited = (
    Option<tokio::sync::OwnedSemaphorePermit>,
    Result<crate::pool::Checkout, crate::pool::CheckoutError>,
);

impl Relay {
    /// Checks out a server connection for `target` and queues what makes it carry this
    /// client's settings.
    pub(super) async fn attach(&mut self, target: Target) -> Result<Box<Attachment>, ErrorReport> {
        let (pool, upstream) = self.pool_for(target)?;
        self.attach_pool(pool, upstream).await
    }

    /// Checks out a server connection of `pool` (serving `upstream`) and queues what makes it
    /// carry this client's settings.
    pub(super) async fn attach_pool(
        &mut self,
        pool: Arc<crate::pool::Pool>,
        upstream: crate::route::replica::Upstream,
    ) -> Result<Box<Attachment>, ErrorReport> {
        match self.attach_now(&pool, upstream) {
            Some(att) => Ok(att),
            None => self.attach_waiting_for(pool, upstream).await,
        }
    }

    /// [`Relay::attach_pool`] when an idle connection is there for the taking (and no tenant
    /// cap to wait behind): no waiting, so nothing to cancel and no client to watch.
    pub(super) fn attach_now(
        &mut self,
        pool: &Arc<crate::pool::Pool>,
        upstream: crate::route::replica::Upstream,
    ) -> Option<Box<Attachment>> {
        if self.live.tenant_limits.is_some() && self.info.tenant.is_some() {
            return None;
        }
        let checkout =
            pool.checkout_idle_now(&self.info.state.settings, self.info.tenant.as_deref())?;
        Some(self.prepared(checkout, None, upstream))
    }

    /// [`Relay::attach_pool`] when it has to wait (behind the tenant's cap, for a connection).
    pub(super) async fn attach_waiting_for(
        &mut self,
        pool: Arc<crate::pool::Pool>,
        upstream: crate::route::replica::Upstream,
    ) -> Result<Box<Attachment>, ErrorReport> {
        // Boxed: waiting is the rare path, and its future is large.
        let (tenant_permit, checkout) = Box::pin(self.wait_for_checkout(&pool)).await?;
        let server = match checkout {
            Ok(s) => s,
            Err(e) => {
                self.app.metrics.error(e.kind());
                tracing::debug!(error = %e, "checkout failed");
                return Err(checkout_report(&e, Severity::Error));
            }
        };
        Ok(self.prepared(server, tenant_permit, upstream))
    }

    /// The attachment of a connection just checked out, with what makes it carry this
    /// client's settings (and tenant) queued before anything else.
    fn prepared(
        &mut self,
        server: crate::pool::Checkout,
        tenant_permit: Option<tokio::sync::OwnedSemaphorePermit>,
        upstream: crate::route::replica::Upstream,
    ) -> Box<Attachment> {
        let spare = std::mem::take(&mut self.spare);
        let mut att = Box::new(Attachment::new(server, spare));
        self.info.key.running(att.cancel_target());
        att.upstream = upstream;
        att.tenant_permit = tenant_permit;
        self.tenant_on_checkout(&mut att);
        let token = tenancy::due_token(&self.live, self.info.grant.as_ref(), &mut att);
        let conn = att.server.conn_mut();
        // Connections in unknown state never reach the pool: this is a diff of known settings.
        let wanted = &self.info.state.settings;
        if conn.applied.carries(wanted) {
            if let Some(token) = token {
                let sets = [(crate::token::TOKEN_SETTING, token.as_str())];
                tenancy::push_set_config(&mut att, &sets, Source::Sidecar);
            }
            return att;
        }
        match (token, conn.applied.sets_to(wanted)) {
            // The token and the settings in one statement (set_config, values as parameters).
            (Some(token), Some(mut sets)) => {
                if !sets.is_empty() {
                    self.app.metrics.settings_applied.inc();
                }
                conn.applied = AppliedSettings::Known(wanted.clone());
                sets.push((crate::token::TOKEN_SETTING, &token));
                tenancy::push_set_config(&mut att, &sets, Source::Apply);
            }
            (token, _) => {
                if let Some(sql) = conn.applied.sql_to(wanted) {
                    self.app.metrics.settings_applied.inc();
                    conn.applied = AppliedSettings::Known(wanted.clone());
                    frontend::append_query(&mut att.wbuf, &sql);
                    att.push_expect(Expect {
                        source: Source::Apply,
                    });
                }
                if let Some(token) = token {
                    let sets = [(crate::token::TOKEN_SETTING, token.as_str())];
                    tenancy::push_set_config(&mut att, &sets, Source::Sidecar);
                }
            }
        }
        att
    }

    /// Waits for a server connection of `pool` (behind the tenant's cap first), ended by a
    /// cancel or by the client leaving.
    async fn wait_for_checkout(
        &mut self,
        pool: &Arc<crate::pool::Pool>,
    ) -> Result<Waited, ErrorReport> {
        let cancelled = self.info.key.waiting();
        // A client that leaves while it waits leaves the queue too.
        let waited = {
            let gone = self.client.gone(WAITING_READ_AHEAD);
            tokio::pin!(gone);
            let user_cancel = |app: &App| {
                app.metrics.error("cancelled_waiting");
                ErrorReport::error(
                    SqlState::QUERY_CANCELED,
                    "canceling statement due to user request",
                )
            };
            let left = |app: &App| {
                app.metrics.error("client_gone_waiting");
                ErrorReport::error(
                    SqlState::QUERY_CANCELED,
                    "canceling statement: the client went away while it waited for a connection",
                )
            };
            // A tenant at its cap waits here, behind nobody else's requests.
            let limits = self.live.tenant_limits.clone();
            let tenant_permit = match (&limits, &self.info.tenant) {
                (Some(limits), Some(tenant)) => {
                    let timeout = self.live.config.pool.checkout_timeout;
                    tokio::select! {
                        permit = limits.acquire(&self.info.database.name, tenant, timeout) => match permit {
                            Ok(p) => Some(p),
                            Err(e) => {
                                self.app.metrics.error("tenant_at_cap");
                                return Err(ErrorReport::error(SqlState::TOO_MANY_CONNECTIONS, e.to_string()));
                            }
                        },
                        _ = cancelled.notified() => return Err(user_cancel(&self.app)),
                        _ = &mut gone => return Err(left(&self.app)),
                    }
                }
                _ => None,
            };
            let checkout = tokio::select! {
                checkout = pool.checkout_for(&self.info.state.settings, self.info.tenant.as_deref()) => checkout,
                _ = cancelled.notified() => return Err(user_cancel(&self.app)),
                _ = &mut gone => return Err(left(&self.app)),
            };
            (tenant_permit, checkout)
        };
        Ok(waited)
    }
}
