//! One client connection, as typed phases: [`handshake`] → [`auth`] → startup reply → [`relay`].
//!
//! Each phase returns what the next one needs. Errors meant for the client become an
//! ErrorResponse with a real SQLSTATE; everything else is logged and counted by `kind()`.

pub mod attachment;
pub mod auth;
mod cache_track;
pub mod certificate;
mod cleanup;
pub mod client;
pub mod effects;
mod extended;
pub mod guard;
pub mod handshake;
pub mod identity;
pub mod jwt;
pub mod relay;
mod resync;
pub mod state;
pub mod statements;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::App;
use crate::metrics::GaugeGuard;
use crate::pool::CheckoutError;
use crate::protocol::backend::{self, ErrorReport, TransactionStatus};
use crate::protocol::sqlstate::SqlState;
use crate::stream::Stream;
use client::ClientConn;
use handshake::{Accepted, Handshake, HandshakeError, Refused};

/// Serves one accepted client connection to its end.
pub async fn serve_client(app: Arc<App>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let loopback = tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    serve_stream(app, Stream::Plain(tcp), loopback).await;
}

/// Serves one client connection (`loopback`: from inside the host) to its end.
pub async fn serve_stream(app: Arc<App>, stream: Stream, loopback: bool) {
    let _connected = GaugeGuard::new(&app.metrics.client_connections);
    let acceptor = app.tls_acceptor();
    let tls = handshake::ClientTls {
        acceptor: acceptor.as_deref(),
        required: app.live().config.tls.as_ref().is_some_and(|t| t.required),
    };
    // A client that never finishes its first packets is dropped silently, as Postgres does.
    let outcome = tokio::time::timeout(
        app.live().config.limits.login_timeout,
        handshake::handshake(stream, tls),
    )
    .await;
    let (stream, leftover, startup) = match outcome {
        Ok(Ok(Accepted {
            stream,
            leftover,
            outcome: Handshake::Startup(startup),
        })) => (stream, leftover, startup),
        Ok(Ok(Accepted {
            outcome:
                Handshake::Cancel {
                    process_id,
                    secret_key,
                },
            ..
        })) => {
            app.cancel(process_id, secret_key).await;
            return;
        }
        Ok(Err(Refused { stream, error })) => {
            app.metrics.error(error.kind());
            tracing::debug!(error = %error, "refused client startup");
            if let Some(mut stream) = stream {
                let code = match error {
                    HandshakeError::TlsRequired => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    _ => SqlState::PROTOCOL_VIOLATION,
                };
                let mut buf = BytesMut::new();
                ErrorReport::fatal(code, error.to_string()).write(&mut buf);
                let _ = stream.write_all(&buf).await;
                let _ = stream.shutdown().await;
            }
            return;
        }
        Err(_) => {
            app.metrics.error("login_timeout");
            return;
        }
    };
    // Cleartext secrets (JWTs) only travel over TLS or inside the host.
    let secure = loopback || matches!(stream, Stream::Tls(_));
    // The client certificate the TLS handshake verified (with `[tls] client_ca`).
    let peer_certificate = match &stream {
        Stream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|der| der.as_ref().to_vec()),
        Stream::Plain(_) | Stream::Memory(_) => None,
    };
    let peer = Peer {
        secure,
        tls: stream.is_tls(),
        addr: stream.peer_addr(),
        certificate: peer_certificate.as_deref(),
    };
    let mut client = ClientConn::new(stream, leftover, app.live().config.max_message_size);
    let login = tokio::time::timeout(
        app.live().config.limits.login_timeout,
        login(&app, &mut client, &startup, &peer),
    )
    .await;
    let session = match login {
        Ok(Ok(LoggedIn::Session(session))) => *session,
        Ok(Ok(LoggedIn::Console(key))) => {
            tracing::info!(user = %startup.user, "admin console login");
            crate::admin::serve(app, client, key).await;
            return;
        }
        Ok(Err(report)) => {
            if let Some(report) = report {
                report.write(&mut client.wbuf);
            }
            client.close().await;
            return;
        }
        Err(_) => {
            app.metrics.error("login_timeout");
            ErrorReport::fatal(
                SqlState::QUERY_CANCELED,
                "canceling authentication due to timeout",
            )
            .write(&mut client.wbuf);
            client.close().await;
            return;
        }
    };
    tracing::debug!(user = %startup.user, database = %startup.database, "client logged in");
    relay::Relay::new(app, client, session).run().await;
}

/// What login establishes for the relay: the database, the client's session state, its issued key.
pub struct SessionInfo {
    pub database: Arc<crate::pool::Database>,
    pub state: state::SessionState,
    pub key: crate::cancel::IssuedKey,
    /// The client's tenant (with `[tenancy]`).
    pub tenant: Option<String>,
    /// What the signed tenant token says for this client (with a `[tenancy]` signing key).
    pub grant: Option<crate::token::Grant>,
}

/// What the sidecar knows of a client's connection at login.
struct Peer<'a> {
    /// TLS or loopback: cleartext secrets (JWTs) may travel.
    secure: bool,
    tls: bool,
    addr: Option<std::net::SocketAddr>,
    /// The client certificate the TLS handshake verified.
    certificate: Option<&'a [u8]>,
}

impl Peer<'_> {
    /// The BackendKeyData of a client that logged in as `user` (of `tenant`) to `database`,
    /// registered with what the admin console shows of it.
    fn issue_key(
        &self,
        app: &App,
        user: &str,
        tenant: Option<&str>,
        database: &str,
        startup: &crate::protocol::startup::StartupMessage,
    ) -> crate::cancel::IssuedKey {
        let facts = crate::cancel::ClientFacts {
            user: user.to_owned(),
            tenant: tenant.map(str::to_owned),
            database: database.to_owned(),
            // The last one, as the session's settings take it.
            application_name: startup
                .params
                .iter()
                .rev()
                .find(|(n, _)| n == "application_name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            addr: self.addr,
            tls: self.tls,
            connected: std::time::SystemTime::now(),
        };
        app.issue_key(owner(user, tenant), facts)
    }
}

/// Cleartext secrets (JWTs) only over TLS or inside the host: 28000 for a JWT user otherwise.
fn refuse_insecure_jwt(
    app: &App,
    user_auth: Option<&auth::UserAuth>,
    secure: bool,
) -> Result<(), Option<ErrorReport>> {
    if !secure && user_auth.is_some_and(|u| u.method() == crate::config::AuthMethod::Jwt) {
        app.metrics.error("jwt_insecure");
        return Err(Some(ErrorReport::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "JWT logins need TLS or a loopback connection",
        )));
    }
    Ok(())
}

/// Where a logged-in client goes.
enum LoggedIn {
    /// To a database, through the relay (boxed: the console's variant is small).
    Session(Box<SessionInfo>),
    /// To the admin console.
    Console(crate::cancel::IssuedKey),
}

/// Authenticates, checks the database, and sends the startup reply. `Err(Some(report))` is
/// the FATAL to send before closing; `Err(None)` means the client is already gone.
async fn login(
    app: &Arc<App>,
    client: &mut ClientConn,
    startup: &crate::protocol::startup::StartupMessage,
    peer: &Peer<'_>,
) -> Result<LoggedIn, Option<ErrorReport>> {
    let (secure, peer_certificate) = (peer.secure, peer.certificate);
    // `replication=false` (or off, no, 0) asks for an ordinary connection: it is dropped.
    let startup = &*without_false_replication(startup);
    if startup.params.iter().any(|(name, _)| name == "replication") {
        return Err(Some(ErrorReport::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgsidecar",
        )));
    }
    if startup.needs_negotiation() {
        backend::negotiate_protocol_version(&mut client.wbuf, 0, &startup.protocol_options);
    }
    // One configuration for the whole login, even if a reload comes meanwhile.
    let live = app.live_arc();
    if startup.database == crate::admin::CONSOLE_DATABASE {
        return console_login(app, &live, client, startup, peer)
            .await
            .map(LoggedIn::Console);
    }
    let tenancy = live.config.tenancy.as_ref();
    let mut identity = identity::resolve(&startup.user, tenancy, |u| live.fixed_tenant(u))
        .map_err(|e| {
            app.metrics.error(e.kind());
            Some(e.report())
        })?;
    let user_auth = live.user(&identity.user);
    refuse_insecure_jwt(app, user_auth, secure)?;
    let grant = match auth::authenticate(
        client,
        &identity.user,
        user_auth,
        app.mock_key(),
        app.rng(),
        live.jwt.as_ref(),
    )
    .await
    {
        Ok(grant) => grant,
        Err(e) => {
            app.metrics.error(e.kind());
            tracing::info!(user = %identity.user, reason = e.kind(), "client authentication failed");
            return Err(e.report());
        }
    };
    let TenantContext {
        reserved,
        grant: token_grant,
    } = tenant_context(app, &live, &mut identity, grant, startup, peer_certificate)?;
    let database = match live.database_for(&startup.database, identity.tenant.as_deref()) {
        Ok(database) => database,
        Err(e) => {
            app.metrics.error(e.kind());
            return Err(Some(ErrorReport::fatal(e.sqlstate(), e.to_string())));
        }
    };
    let startup_settings: BTreeMap<String, String> = startup.params.iter().cloned().collect();
    let mut settings = startup_settings.clone();
    settings.extend(reserved.clone());
    let known = match database.primary.startup_statuses(&settings).await {
        Ok(known) => known,
        Err(e) => {
            app.metrics.error(e.kind());
            return Err(Some(startup_failure(&e)));
        }
    };
    let key = peer.issue_key(
        app,
        &identity.user,
        identity.tenant.as_deref(),
        &startup.database,
        startup,
    );
    auth::write_ok(&mut client.wbuf);
    for (name, value) in known.statuses.iter() {
        backend::parameter_status(&mut client.wbuf, name, value);
    }
    backend::backend_key_data(&mut client.wbuf, key.process_id(), key.secret_key());
    backend::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
    if client.flush().await.is_err() {
        return Err(None);
    }
    Ok(LoggedIn::Session(Box::new(SessionInfo {
        database: Arc::clone(database),
        state: state::SessionState::new(
            startup_settings,
            reserved,
            known.settings,
            &known.statuses,
        ),
        grant: token_grant,
        tenant: identity.tenant,
        key,
    })))
}

/// A login to the admin console: the user (as named, no tenant) authenticates as any user
/// does and must be marked `admin = true` (else 42501); the console's startup reply follows.
async fn console_login(
    app: &Arc<App>,
    live: &crate::live::Live,
    client: &mut ClientConn,
    startup: &crate::protocol::startup::StartupMessage,
    peer: &Peer<'_>,
) -> Result<crate::cancel::IssuedKey, Option<ErrorReport>> {
    let user_auth = live.user(&startup.user);
    refuse_insecure_jwt(app, user_auth, peer.secure)?;
    if let Err(e) = auth::authenticate(
        client,
        &startup.user,
        user_auth,
        app.mock_key(),
        app.rng(),
        live.jwt.as_ref(),
    )
    .await
    {
        app.metrics.error(e.kind());
        tracing::info!(user = %startup.user, reason = e.kind(), "admin console authentication failed");
        return Err(e.report());
    }
    if !live.is_admin(&startup.user) {
        app.metrics.error("console_not_admin");
        return Err(Some(ErrorReport::fatal(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied for the admin console: user \"{}\" is not an admin (admin = true in its [[user]])",
                startup.user
            ),
        )));
    }
    let key = peer.issue_key(
        app,
        &startup.user,
        None,
        crate::admin::CONSOLE_DATABASE,
        startup,
    );
    auth::write_ok(&mut client.wbuf);
    for (name, value) in crate::admin::PARAMETER_STATUSES {
        backend::parameter_status(&mut client.wbuf, name, value);
    }
    backend::backend_key_data(&mut client.wbuf, key.process_id(), key.secret_key());
    backend::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
    if client.flush().await.is_err() {
        return Err(None);
    }
    Ok(key)
}

/// Who may signal a client by its PID: clients of the same user and tenant.
pub(crate) fn owner(user: &str, tenant: Option<&str>) -> String {
    format!("{user}\0{}", tenant.unwrap_or_default())
}

/// The client's tenant, once it authenticated: from its JWT grant or certificate (checked),
/// the settings the sidecar reserves for it (the tenant setting, the JWT claims setting and
/// role), refusing a startup packet that sets any of them, and what its signed token says
/// (`None` without a signing key).
fn tenant_context(
    app: &App,
    live: &crate::live::Live,
    identity: &mut identity::Identity,
    grant: Option<jwt::Grant>,
    startup: &crate::protocol::startup::StartupMessage,
    peer_certificate: Option<&[u8]>,
) -> Result<TenantContext, Option<ErrorReport>> {
    let mut reserved = BTreeMap::new();
    let mut token_grant = crate::token::Grant::default();
    let tenancy = live.config.tenancy.as_ref();
    if let (Some(grant), Some(t)) = (grant, tenancy) {
        if !t.valid_tenant(&grant.tenant) {
            app.metrics.error("tenant_invalid");
            return Err(Some(identity::IdentityError::InvalidTenant.report()));
        }
        identity.tenant = Some(grant.tenant);
        if let Some(setting) = t.jwt.as_ref().and_then(|j| j.claims_setting.as_ref()) {
            reserved.insert(setting.clone(), grant.claims_json.clone());
        }
        // `pgsidecar.claims()` returns them, verified, whether or not a setting gets them.
        token_grant.claims = Some(grant.claims_json);
        if let Some(role) = grant.role {
            reserved.insert("role".to_owned(), role.clone());
            token_grant.role = Some(role);
        }
    }
    if let Some(t) = tenancy.filter(|t| t.source == crate::config::TenantSource::Certificate) {
        if identity.tenant.is_none() {
            let tenant = peer_certificate
                .and_then(|der| certificate::tenant_of(der, t.certificate_pattern.as_deref()))
                .filter(|tenant| t.valid_tenant(tenant));
            if tenant.is_none() {
                app.metrics.error("tenant_certificate");
                return Err(Some(ErrorReport::fatal(
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    "the client certificate names no valid tenant",
                )));
            }
            identity.tenant = tenant;
        }
    }
    if let Some(e) = identity::needs_tenant(identity, tenancy) {
        app.metrics.error(e.kind());
        return Err(Some(e.report()));
    }
    if let (Some(t), Some(tenant)) = (tenancy, &identity.tenant) {
        tracing::debug!(user = %identity.user, tenant = %tenant, "client tenant");
        reserved.insert(t.setting.clone(), tenant.clone());
        // The startup packet cannot set what statements may not (the tenant, a granted role,
        // another role or session authorization).
        let refused = startup.params.iter().find(|(name, value)| {
            reserved.keys().any(|r| name.eq_ignore_ascii_case(r))
                || (t.enforce && startup_setting_refused(name, value))
        });
        if let Some((name, _)) = refused {
            app.metrics.error("tenancy_refused");
            app.metrics.tenancy_refusals.inc();
            return Err(Some(ErrorReport::fatal(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to set parameter \"{name}\": it is reserved for the tenant"
                ),
            )));
        }
    }
    let token_grant = identity
        .tenant
        .clone()
        .filter(|_| tenancy.is_some_and(|t| t.signer.is_some()))
        .map(|tenant| crate::token::Grant {
            tenant,
            ..token_grant
        });
    Ok(TenantContext {
        reserved,
        grant: token_grant,
    })
}

/// What [`tenant_context`] found.
struct TenantContext {
    /// The settings the sidecar owns for the client.
    reserved: BTreeMap<String, String>,
    /// What the client's signed tenant token says.
    grant: Option<crate::token::Grant>,
}

/// Under tenant enforcement, startup settings a statement could not make either: a role, a
/// session authorization, the sidecar's own, or strings that stop conforming.
fn startup_setting_refused(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "role" | "session_authorization")
        || name.starts_with(crate::token::RESERVED_SETTING_PREFIX)
        || (name == "standard_conforming_strings" && !guard::keeps_strings_conforming(value))
}

/// The startup message without a `replication` parameter that asks for no replication (a
/// copy only when there is one).
fn without_false_replication(
    startup: &crate::protocol::startup::StartupMessage,
) -> std::borrow::Cow<'_, crate::protocol::startup::StartupMessage> {
    let no_replication = |(name, value): &(String, String)| {
        name == "replication"
            && ["false", "off", "no", "0"]
                .iter()
                .any(|v| value.eq_ignore_ascii_case(v))
    };
    if !startup.params.iter().any(no_replication) {
        return std::borrow::Cow::Borrowed(startup);
    }
    let mut startup = startup.clone();
    startup.params.retain(|p| !no_replication(p));
    std::borrow::Cow::Owned(startup)
}

/// The FATAL for a login that could not get its settings checked upstream.
fn startup_failure(e: &CheckoutError) -> ErrorReport {
    match e {
        CheckoutError::Connect(crate::pool::ServerError::Upstream { code, message }) => {
            // The server refused one of the client's startup settings: say so as Postgres would.
            ErrorReport::fatal(SqlState::PROTOCOL_VIOLATION, message.clone()).with_code_text(code)
        }
        other => checkout_report(other, backend::Severity::Fatal),
    }
}

/// The error a client gets when no server connection could be had.
pub fn checkout_report(e: &CheckoutError, severity: backend::Severity) -> ErrorReport {
    let code = match e {
        CheckoutError::Timeout(_) | CheckoutError::QueueFull => SqlState::TOO_MANY_CONNECTIONS,
        CheckoutError::Connect(_) => SqlState::CONNECTION_FAILURE,
    };
    let message = match e {
        CheckoutError::Connect(_) => "could not connect to the upstream server".to_owned(),
        other => other.to_string(),
    };
    ErrorReport::new(severity, code, message)
}
