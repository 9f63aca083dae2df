//! One upstream server connection: connect, authenticate (SCRAM-SHA-256, md5, cleartext or
//! trust, whatever the server asks), remember its startup ParameterStatus and BackendKeyData,
//! and carry the client settings currently applied to it.
//!
//! It moves bytes; it never decides what a client may do. The startup exchange is decoded with
//! postgres-protocol (small, bounded messages); after startup only headers are looked at.

use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{SslMode, UpstreamUrl};
use crate::protocol::backend::{
    parse_data_row, parse_parameter_status, ErrorFields, DATA_ROW_TAG, ERROR_RESPONSE_TAG,
    PARAMETER_STATUS_TAG, READY_FOR_QUERY_TAG,
};
use crate::protocol::frame::{try_frame, FrameError};
use crate::stream::Stream;

/// Messages during startup are small; anything bigger is a broken or hostile upstream.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// What can go wrong with an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to upstream {0}")]
    ConnectTimeout(String),
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    #[error("upstream error {code}: {message}")]
    Upstream { code: String, message: String },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection")]
    Closed,
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ServerError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::Connect { .. } => "upstream_connect",
            ServerError::ConnectTimeout(_) => "upstream_connect_timeout",
            ServerError::Auth(_) => "upstream_auth",
            ServerError::Upstream { code, .. } if code.starts_with("28") => "upstream_auth",
            ServerError::Upstream { .. } => "upstream_error",
            ServerError::Protocol(_) | ServerError::Frame(_) => "upstream_protocol",
            ServerError::Io(_) | ServerError::Closed => "upstream_io",
            ServerError::Tls(_) => "upstream_tls",
        }
    }
}

/// What [`ServerConn::exchange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    Wrote,
    Read,
}

/// The key a server process issued for cancelling its queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub process_id: i32,
    pub secret_key: i32,
}

/// What the sidecar knows about the session settings on a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedSettings {
    /// Exactly these client settings (from `set_config`) are applied on top of the defaults.
    Known(crate::sql::settings::Shared),
    /// Something ran that the sidecar could not follow; reset or discard before reuse.
    Unknown,
}

/// One authenticated upstream connection, idle at a ReadyForQuery when not checked out.
pub struct ServerConn {
    pub id: u64,
    stream: Stream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// The latest ParameterStatus value the server reported for each parameter.
    pub params: Vec<(String, String)>,
    pub key: BackendKey,
    pub applied: AppliedSettings,
    pub created: Instant,
    /// When the connection last went back to the pool.
    pub idle_since: Instant,
    /// The host and port this connection reached (cancel requests go there).
    pub host: std::sync::Arc<str>,
    pub port: u16,
    /// Proxy-named prepared statements that exist on this connection.
    pub prepared: PreparedSet,
    /// The tenant whose session this connection carries (`None`: no tenant's, as after
    /// DISCARD ALL); another tenant gets it only after DISCARD ALL.
    pub tenant: Option<std::sync::Arc<str>>,
    /// The signed tenant token the sidecar set on the connection (`None`: none it can vouch
    /// for).
    pub token: Option<TokenOnConn>,
}

/// A signed tenant token the sidecar set on a server connection.
#[derive(Debug, Clone)]
pub struct TokenOnConn {
    pub token: String,
    /// Until then it needs no renewal (half its lifetime).
    pub fresh_until: Instant,
}

/// The proxy-named statements a server connection has prepared, oldest first, bounded.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// aHash (randomly seeded): looked up for every Bind and Describe.
    names: std::collections::HashSet<bytes::Bytes, ahash::RandomState>,
    order: std::collections::VecDeque<bytes::Bytes>,
}

impl PreparedSet {
    /// How many statements one server connection keeps before closing the oldest.
    pub const LIMIT: usize = 256;

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains(name)
    }

    /// How many statements are prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Records a statement; returns the oldest one to close when over the limit.
    pub fn insert(&mut self, name: bytes::Bytes) -> Option<bytes::Bytes> {
        if self.names.insert(name.clone()) {
            self.order.push_back(name);
        }
        if self.order.len() > Self::LIMIT {
            let oldest = self.order.pop_front()?;
            self.names.remove(&oldest);
            return Some(oldest);
        }
        None
    }

    pub fn remove(&mut self, name: &[u8]) {
        if self.names.remove(name) {
            self.order.retain(|n| n.as_ref() != name);
        }
    }

    /// The server dropped them all (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.names.clear();
        self.order.clear();
    }
}

/// How upstream connections are opened.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Per host: TCP connect, TLS and authentication together.
    pub timeout: Duration,
    /// TCP keepalive idle time; zero disables it.
    pub keepalive: Duration,
    /// TLS per the URL's `sslmode` (`None`: plaintext).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// TCP, or an in-process pipe (tests).
    pub dialer: crate::stream::Dialer,
}

impl ConnectOptions {
    /// Options for `url` with the pool's timeouts; builds the TLS connector its sslmode asks for.
    pub fn for_url(
        url: &UpstreamUrl,
        timeout: Duration,
        keepalive: Duration,
    ) -> Result<ConnectOptions, crate::tls::TlsError> {
        Ok(ConnectOptions {
            timeout,
            keepalive,
            tls: crate::tls::connector(url.sslmode, url.sslrootcert.as_deref())?,
            dialer: crate::stream::Dialer::Tcp,
        })
    }
}

impl ServerConn {
    /// Connects and authenticates as the URL's user, trying its hosts in order, each within
    /// `options.timeout`. `params` are extra startup parameters (the sidecar sends none; tests
    /// use it as a raw protocol client).
    pub async fn connect(
        id: u64,
        url: &UpstreamUrl,
        params: &[(&str, &str)],
        options: &ConnectOptions,
    ) -> Result<ServerConn, ServerError> {
        let mut last = None;
        for (host, port) in &url.hosts {
            let addr = format!("{host}:{port}");
            let attempt = Self::connect_one(id, url, (host, *port), params, options);
            match tokio::time::timeout(options.timeout, attempt).await {
                Ok(Ok(conn)) => return Ok(conn),
                // A server that answered and refused us will refuse on every host alike.
                Ok(Err(e @ ServerError::Upstream { .. })) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(ServerError::ConnectTimeout(addr)),
            }
        }
        Err(last.unwrap_or_else(|| ServerError::Protocol("the upstream URL has no host".into())))
    }

    /// A TCP connection (keepalive set, TLS as the URL's sslmode asks).
    async fn open_tcp(
        url: &UpstreamUrl,
        (host, port): (&str, u16),
        options: &ConnectOptions,
    ) -> Result<Stream, ServerError> {
        let stream =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| ServerError::Connect {
                    addr: format!("{host}:{port}"),
                    source,
                })?;
        stream.set_nodelay(true)?;
        if !options.keepalive.is_zero() {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(options.keepalive)
                .with_interval(options.keepalive.min(Duration::from_secs(10)));
            socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        }
        Self::negotiate_tls(stream, url, host, options).await
    }

    async fn connect_one(
        id: u64,
        url: &UpstreamUrl,
        (host, port): (&str, u16),
        params: &[(&str, &str)],
        options: &ConnectOptions,
    ) -> Result<ServerConn, ServerError> {
        let stream = match &options.dialer {
            crate::stream::Dialer::Tcp => Self::open_tcp(url, (host, port), options).await?,
            // In-process pipes (tests) carry no TLS.
            crate::stream::Dialer::Memory(dial) => {
                Stream::Memory(dial(host, port).map_err(|source| ServerError::Connect {
                    addr: format!("{host}:{port}"),
                    source,
                })?)
            }
        };
        let mut conn = ServerConn {
            id,
            stream,
            host: std::sync::Arc::from(host),
            port,
            rbuf: BytesMut::with_capacity(16 * 1024),
            params: Vec::new(),
            key: BackendKey {
                process_id: 0,
                secret_key: 0,
            },
            applied: AppliedSettings::Known(Default::default()),
            created: Instant::now(),
            idle_since: Instant::now(),
            prepared: PreparedSet::default(),
            tenant: None,
            token: None,
        };
        conn.startup(url, params).await?;
        Ok(conn)
    }

    /// SSLRequest, then TLS if the server agrees; `prefer` falls back to plaintext on 'N'.
    async fn negotiate_tls(
        mut tcp: TcpStream,
        url: &UpstreamUrl,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<Stream, ServerError> {
        let Some(connector) = &options.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {
                let name = crate::tls::server_name(host).ok_or_else(|| {
                    ServerError::Tls(format!("{host:?} is not a valid TLS server name"))
                })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ServerError::Tls(e.to_string()))?;
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
            }
            b'N' if url.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(ServerError::Tls(format!(
                "the server does not support TLS, but sslmode is {:?}",
                url.sslmode
            ))),
            other => Err(ServerError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))),
        }
    }

    async fn startup(
        &mut self,
        url: &UpstreamUrl,
        params: &[(&str, &str)],
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let login = [
            ("user", url.user.as_str()),
            ("database", url.dbname.as_str()),
        ];
        frontend::startup_message(login.iter().chain(params).copied(), &mut out)?;
        self.stream.write_all(&out).await?;
        let password = url.password.as_deref().unwrap_or("").as_bytes();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = self.read_startup_message().await?;
            out.clear();
            match message {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    self.require_password(url)?;
                    frontend::password_message(password, &mut out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    self.require_password(url)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        url.user.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                Message::AuthenticationSasl(body) => {
                    self.require_password(url)?;
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next()? {
                        offered |= m == "SCRAM-SHA-256";
                    }
                    if !offered {
                        return Err(ServerError::Auth(
                            "server offers no supported SASL mechanism".into(),
                        ));
                    }
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Protocol("unexpected SASLContinue".into()))?;
                    s.update(body.data())
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Protocol("unexpected SASLFinal".into()))?;
                    s.finish(body.data())
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
                }
                Message::ParameterStatus(body) => {
                    self.params
                        .push((body.name()?.to_owned(), body.value()?.to_owned()));
                }
                Message::BackendKeyData(body) => {
                    self.key = BackendKey {
                        process_id: body.process_id(),
                        secret_key: body.secret_key(),
                    };
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    let mut fields = body.fields();
                    let (mut code, mut message) = (String::new(), String::new());
                    while let Some(f) = fields.next()? {
                        match f.type_() {
                            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                            _ => {}
                        }
                    }
                    return Err(ServerError::Upstream { code, message });
                }
                Message::NoticeResponse(_) => {}
                _ => {
                    return Err(ServerError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
            if !out.is_empty() {
                self.stream.write_all(&out).await?;
            }
        }
    }

    fn require_password(&self, url: &UpstreamUrl) -> Result<(), ServerError> {
        match url.password {
            Some(_) => Ok(()),
            None => Err(ServerError::Auth(format!(
                "the server asks for a password but the upstream URL for user \"{}\" has none",
                url.user
            ))),
        }
    }

    async fn read_startup_message(&mut self) -> Result<Message, ServerError> {
        loop {
            if let Some(header) = crate::protocol::frame::peek_header(&self.rbuf)? {
                if header.frame_len > MAX_STARTUP_MESSAGE {
                    return Err(ServerError::Protocol("oversized startup message".into()));
                }
            }
            if let Some(message) = Message::parse(&mut self.rbuf)? {
                return Ok(message);
            }
            self.read_more().await?;
        }
    }

    /// The next whole message from the server (up to `max` bytes), reading as needed.
    pub async fn next_frame(
        &mut self,
        max: usize,
    ) -> Result<crate::protocol::frame::Frame, ServerError> {
        loop {
            if let Some(frame) = crate::protocol::frame::try_frame(&mut self.rbuf, max)? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// Reads more bytes from the server into `rbuf`. Cancel-safe.
    pub async fn read_more(&mut self) -> Result<usize, ServerError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(ServerError::Closed);
        }
        Ok(n)
    }

    /// Writes some of `out` to the server or (when `read`) reads from it, whichever is ready
    /// first; written bytes are removed from `out`, read ones appended to `rbuf`. Without
    /// `read` and with nothing to write it never completes. Cancel-safe.
    pub async fn exchange(
        &mut self,
        out: &mut BytesMut,
        read: bool,
    ) -> Result<Exchange, ServerError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        let (stream, rbuf) = (&mut self.stream, &mut self.rbuf);
        std::future::poll_fn(|cx| {
            if !out.is_empty() {
                if let Poll::Ready(written) = Pin::new(&mut *stream).poll_write(cx, out) {
                    let n = written?;
                    if n == 0 {
                        return Poll::Ready(Err(ServerError::Closed));
                    }
                    out.advance(n);
                    return Poll::Ready(Ok(Exchange::Wrote));
                }
            }
            if !read {
                return Poll::Pending;
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, rbuf) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(ServerError::Closed)),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(Exchange::Read)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Writes what the socket takes of `out` now, without waiting (the written bytes are
    /// removed from `out`); the rest goes when the pump next polls [`ServerConn::exchange`],
    /// which waits for the socket. A failed write leaves its bytes in `out` for that exchange,
    /// which meets the error again.
    pub fn write_now(&mut self, out: &mut BytesMut) {
        if let crate::stream::Stream::Plain(_) = self.stream {
            // What the socket did not take now waits for the exchange, which registers the
            // pump's waker (a second try here would meet the same full socket).
            if let Ok(n) = self.stream.write_without_waiting(out) {
                out.advance(n);
            }
            return;
        }
        // TLS and in-process pipes: what they take without a task to wake.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while !out.is_empty() {
            match Pin::new(&mut self.stream).poll_write(&mut cx, out) {
                Poll::Ready(Ok(n)) if n > 0 => out.advance(n),
                _ => break,
            }
        }
    }

    /// Writes bytes to the server.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// True when an idle connection shows no sign of trouble: nothing unread (a FATAL from an
    /// administrator's `pg_terminate_backend`, for one) and not closed by the peer. Reads
    /// without waiting, through TLS when there is TLS, so TLS housekeeping records (session
    /// tickets) do not count as trouble.
    pub fn looks_idle(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 64];
        if let crate::stream::Stream::Plain(tcp) = &self.stream {
            // Plain TCP: tokio's readiness answers without a system call or a waker.
            return match tcp.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Ok(n) => {
                    self.rbuf.extend_from_slice(&probe[..n]);
                    false
                }
                Err(_) => false,
            };
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        match Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => {
                self.rbuf.extend_from_slice(buf.filled());
                false
            }
            Poll::Ready(Err(_)) => false,
        }
    }

    /// DISCARD ALL ran: the connection carries no client's session state, tenant or token.
    pub fn discarded(&mut self) {
        self.applied = AppliedSettings::Known(Default::default());
        self.prepared.clear();
        self.tenant = None;
        self.token = None;
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => value.clone_into(&mut slot.1),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Runs one simple query outside any client's view and waits for its ReadyForQuery,
    /// recording the ParameterStatus messages it caused; an ErrorResponse becomes `Upstream`.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_rows(sql).await.map(|_| ())
    }

    /// Like [`ServerConn::run_internal`], returning the rows (text values, `None` for NULL).
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.write_all(&out).await?;
        let mut error = None;
        let mut rows = Vec::new();
        loop {
            let Some(frame) = try_frame(&mut self.rbuf, MAX_STARTUP_MESSAGE)? else {
                self.read_more().await?;
                continue;
            };
            match frame.tag() {
                PARAMETER_STATUS_TAG => {
                    if let Some((name, value)) = parse_parameter_status(frame.body()) {
                        self.note_parameter(name, value);
                    }
                }
                ERROR_RESPONSE_TAG => {
                    let fields = ErrorFields::parse(frame.body());
                    error.get_or_insert(ServerError::Upstream {
                        code: fields.code,
                        message: fields.message,
                    });
                }
                DATA_ROW_TAG => {
                    let row = parse_data_row(frame.body())
                        .ok_or_else(|| ServerError::Protocol("malformed DataRow".into()))?;
                    rows.push(row);
                }
                READY_FOR_QUERY_TAG => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Consumes `n` handled bytes from the read buffer.
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }
}
