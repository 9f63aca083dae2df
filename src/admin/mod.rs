//! The admin console: the virtual database `pgsidecar` on the client listener, for users with
//! `admin = true`. After the sidecar's own startup and authentication, the connection is
//! served by pgwire — its message decoder, its query-handler traits (simple and extended
//! protocol) and its RowDescription/DataRow encoders — through [`ConsoleClient`], which gives
//! pgwire the connection state it expects and collects what it writes. Never on the hot path.

mod command;
mod config;
mod handler;
mod show;
mod table;

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::Sink;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::store::MemPortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, DefaultClient, PgWireConnectionState, SessionExtensions,
};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::{DecodeContext, PgWireBackendMessage, PgWireFrontendMessage};

use crate::app::App;
use crate::cancel::IssuedKey;
use crate::protocol::sqlstate::SqlState;
use crate::session::client::ClientConn;

pub use command::{parse, Command, CommandError, Show};

/// The database name that reaches the console.
pub const CONSOLE_DATABASE: &str = "pgsidecar";

/// What the console reports at login (as PgBouncer's console does).
pub const PARAMETER_STATUSES: [(&str, &str); 6] = [
    ("server_version", "15.0 (pgsidecar)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// The connection as pgwire's handlers see it: its state, and a sink that encodes what they
/// send into `out` (written to the client after each message).
pub struct ConsoleClient {
    info: DefaultClient<String>,
    out: BytesMut,
}

impl ConsoleClient {
    fn new(key: &IssuedKey) -> ConsoleClient {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut info = DefaultClient::new(addr, false);
        info.set_state(PgWireConnectionState::ReadyForQuery);
        info.set_pid_and_secret_key(
            key.process_id(),
            pgwire::messages::startup::SecretKey::I32(key.secret_key()),
        );
        ConsoleClient {
            info,
            out: BytesMut::new(),
        }
    }
}

impl ClientInfo for ConsoleClient {
    fn socket_addr(&self) -> std::net::SocketAddr {
        self.info.socket_addr()
    }
    fn is_secure(&self) -> bool {
        self.info.is_secure()
    }
    fn protocol_version(&self) -> pgwire::messages::ProtocolVersion {
        self.info.protocol_version()
    }
    fn set_protocol_version(&mut self, version: pgwire::messages::ProtocolVersion) {
        self.info.set_protocol_version(version)
    }
    fn pid_and_secret_key(&self) -> (i32, pgwire::messages::startup::SecretKey) {
        self.info.pid_and_secret_key()
    }
    fn set_pid_and_secret_key(&mut self, pid: i32, key: pgwire::messages::startup::SecretKey) {
        self.info.set_pid_and_secret_key(pid, key)
    }
    fn state(&self) -> PgWireConnectionState {
        self.info.state()
    }
    fn set_state(&mut self, state: PgWireConnectionState) {
        self.info.set_state(state)
    }
    fn transaction_status(&self) -> pgwire::messages::response::TransactionStatus {
        self.info.transaction_status()
    }
    fn set_transaction_status(&mut self, status: pgwire::messages::response::TransactionStatus) {
        self.info.set_transaction_status(status)
    }
    fn metadata(&self) -> &HashMap<String, String> {
        self.info.metadata()
    }
    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        self.info.metadata_mut()
    }
    fn session_extensions(&self) -> &SessionExtensions {
        self.info.session_extensions()
    }
}

impl ClientPortalStore for ConsoleClient {
    type PortalStore = MemPortalStore<String>;
    fn portal_store(&self) -> &Self::PortalStore {
        self.info.portal_store()
    }
}

impl Sink<PgWireBackendMessage> for ConsoleClient {
    type Error = PgWireError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), PgWireError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: PgWireBackendMessage) -> Result<(), PgWireError> {
        item.encode(&mut self.out)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), PgWireError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), PgWireError>> {
        Poll::Ready(Ok(()))
    }
}

/// An error as the console sends it.
pub(crate) fn error(state: SqlState, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        state.0.to_owned(),
        message.into(),
    )))
}

/// Ends the console session with a FATAL (the connection closes when the caller returns).
async fn fatal(client: &mut ClientConn, state: SqlState, message: &str) {
    crate::protocol::backend::ErrorReport::fatal(state, message).write(&mut client.wbuf);
    let _ = client.flush().await;
}

/// Serves an authenticated admin client until it leaves (or the sidecar shuts down).
pub async fn serve(app: std::sync::Arc<App>, mut client: ClientConn, key: IssuedKey) {
    let console = handler::Console::new(std::sync::Arc::clone(&app));
    let mut conn = ConsoleClient::new(&key);
    let terminated = key.terminated();
    tokio::pin!(terminated);
    let context = {
        let mut c = DecodeContext::default();
        c.awaiting_frontend_ssl = false;
        c.awaiting_frontend_startup = false;
        c
    };
    // After an error in an extended batch, messages are skipped up to the next Sync.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            frame = client.read_frame() => match frame {
                Ok(frame) => frame,
                Err(_) => return,
            },
            _ = &mut terminated => {
                let message = "terminating connection due to administrator command";
                return fatal(&mut client, SqlState::ADMIN_SHUTDOWN, message).await;
            }
        };
        let mut bytes = BytesMut::from(&frame.as_bytes()[..]);
        let message = match PgWireFrontendMessage::decode(&mut bytes, &context) {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => {
                let message = "invalid message on the admin console";
                return fatal(&mut client, SqlState::PROTOCOL_VIOLATION, message).await;
            }
        };
        if skipping && !matches!(message, PgWireFrontendMessage::Sync(_)) {
            continue;
        }
        let simple = matches!(message, PgWireFrontendMessage::Query(_));
        let result = match message {
            PgWireFrontendMessage::Query(q) => console.on_query(&mut conn, q).await,
            PgWireFrontendMessage::Parse(m) => console.on_parse(&mut conn, m).await,
            PgWireFrontendMessage::Bind(m) => console.on_bind(&mut conn, m).await,
            PgWireFrontendMessage::Describe(m) => console.on_describe(&mut conn, m).await,
            PgWireFrontendMessage::Execute(m) => console.on_execute(&mut conn, m).await,
            PgWireFrontendMessage::Close(m) => console.on_close(&mut conn, m).await,
            PgWireFrontendMessage::Flush(m) => console.on_flush(&mut conn, m).await,
            PgWireFrontendMessage::Sync(m) => {
                skipping = false;
                console.on_sync(&mut conn, m).await
            }
            PgWireFrontendMessage::Terminate(_) => return,
            _ => Err(error(
                SqlState::PROTOCOL_VIOLATION,
                "the admin console does not take this message",
            )),
        };
        if let Err(e) = result {
            let info: ErrorInfo = e.into();
            let _ = PgWireBackendMessage::ErrorResponse(info.into()).encode(&mut conn.out);
            conn.set_state(PgWireConnectionState::ReadyForQuery);
            if simple {
                let ready = ReadyForQuery::new(conn.transaction_status());
                let _ = PgWireBackendMessage::ReadyForQuery(ready).encode(&mut conn.out);
            } else {
                skipping = true;
            }
        }
        client.wbuf.extend_from_slice(&conn.out.split());
        if client.flush().await.is_err() {
            return;
        }
    }
}
