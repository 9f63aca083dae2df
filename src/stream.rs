//! A TCP connection, plain or TLS — or an in-process pipe, which the relay's own tests drive
//! over `tokio::io::duplex` — as one `AsyncRead + AsyncWrite` type for both sides of the proxy,
//! and the [`Dialer`] that opens upstream connections. No protocol knowledge here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Opens one end of an in-process pipe to a host and port.
pub type MemoryDial = dyn Fn(&str, u16) -> io::Result<tokio::io::DuplexStream> + Send + Sync;

/// How upstream connections (and cancel requests) reach a server: TCP, or an in-process pipe
/// (the relay's tests run a scripted server with no network and, with `tokio::time::pause`,
/// no real time either).
#[derive(Clone, Default)]
pub enum Dialer {
    #[default]
    Tcp,
    Memory(std::sync::Arc<MemoryDial>),
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialer::Tcp => "Tcp",
            Dialer::Memory(_) => "Memory",
        })
    }
}

/// A client or server connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// An in-process connection (`tokio::io::duplex`); never TLS.
    Memory(tokio::io::DuplexStream),
}

impl Stream {
    /// Whether TLS protects the connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Writes what a plain TCP socket takes now, with no task context: no waker registered,
    /// no cooperative budget spent — a write the socket takes whole (nearly all of them) costs
    /// the system call and little else. Returns how much was written: less than `buf` when the
    /// socket takes no more now, and nothing for TLS and in-process pipes, whose writes go
    /// through `AsyncWrite`.
    pub fn write_without_waiting(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Stream::Plain(s) = self else {
            return Ok(0);
        };
        let mut written = 0;
        while written < buf.len() {
            match s.try_write(&buf[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// The peer's address (none in-process).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Plain(s) => s.peer_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.peer_addr().ok(),
            Stream::Memory(_) => None,
        }
    }

    /// The peer's verified certificate chain (TLS with client certificates only).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) | Stream::Memory(_) => None,
            Stream::Tls(s) => s.get_ref().1.peer_certificates(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Memory(s) => s.is_write_vectored(),
        }
    }
}
