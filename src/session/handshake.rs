//! The first packets of a connection: SSLRequest and GSSENCRequest (both answered 'N' until
//! TLS lands), CancelRequest, and the StartupMessage. Returns a [`Handshake`] outcome and the
//! bytes read past it; it authenticates nobody.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::startup::{
    packet_len, parse_first_packet, FirstPacket, StartupError, StartupMessage,
};

/// How many SSL/GSS negotiation packets a client may send before its StartupMessage.
const MAX_NEGOTIATIONS: usize = 2;

/// What the client asked for.
#[derive(Debug)]
pub enum Handshake {
    /// A session: authenticate this user next.
    Startup(StartupMessage),
    /// A cancel request for a query of the session holding this key.
    Cancel { process_id: i32, secret_key: i32 },
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("client sent data after SSLRequest before the server answered")]
    BufferedAfterSslRequest,
    #[error("too many SSL/GSS negotiation requests")]
    TooManyNegotiations,
    #[error("client closed the connection during startup")]
    Closed,
    #[error("client I/O during startup: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Startup(e) => e.kind(),
            HandshakeError::BufferedAfterSslRequest | HandshakeError::TooManyNegotiations => {
                "startup_protocol"
            }
            HandshakeError::Closed | HandshakeError::Io(_) => "client_io",
        }
    }

    /// Whether the client deserves an ErrorResponse (it is still speaking the protocol).
    pub fn reportable(&self) -> bool {
        !matches!(self, HandshakeError::Closed | HandshakeError::Io(_))
    }
}

/// Reads first packets until a StartupMessage or CancelRequest arrives.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Handshake, HandshakeError> {
    for _ in 0..=MAX_NEGOTIATIONS {
        let body = read_packet(stream, buf).await?;
        match parse_first_packet(&body)? {
            FirstPacket::Startup(startup) => return Ok(Handshake::Startup(startup)),
            FirstPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Handshake::Cancel {
                    process_id,
                    secret_key,
                })
            }
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
                if !buf.is_empty() {
                    // Bytes sent before the answer would be read as if they were encrypted
                    // (CVE-2021-23214); refuse them.
                    return Err(HandshakeError::BufferedAfterSslRequest);
                }
                stream.write_all(b"N").await?;
            }
        }
    }
    Err(HandshakeError::TooManyNegotiations)
}

async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, HandshakeError> {
    while buf.len() < 4 {
        fill(stream, buf).await?;
    }
    let len = packet_len([buf[0], buf[1], buf[2], buf[3]])?;
    while buf.len() < len {
        fill(stream, buf).await?;
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    Ok(packet)
}

async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), HandshakeError> {
    buf.reserve(1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(HandshakeError::Closed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::startup::{PROTOCOL_3_0, SSL_REQUEST_CODE};

    #[tokio::test]
    async fn ssl_request_answered_no_then_startup() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut packet = 8i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        client.write_all(&packet).await.unwrap();
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            handshake(&mut server, &mut buf).await
        });
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        let body = [&PROTOCOL_3_0.to_be_bytes()[..], b"user\0app\0\0"].concat();
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        client.write_all(&startup).await.unwrap();
        let Handshake::Startup(s) = task.await.unwrap().unwrap() else {
            panic!("expected startup")
        };
        assert_eq!(s.user, "app");
    }

    #[tokio::test]
    async fn bytes_after_ssl_request_are_refused() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut packet = 8i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        packet.extend_from_slice(b"Qgarbage");
        client.write_all(&packet).await.unwrap();
        let mut buf = BytesMut::new();
        let err = handshake(&mut server, &mut buf).await.unwrap_err();
        assert!(matches!(err, HandshakeError::BufferedAfterSslRequest));
    }

    #[tokio::test]
    async fn oversize_startup_is_refused_before_reading_it() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&1_000_000i32.to_be_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let err = handshake(&mut server, &mut buf).await.unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Startup(StartupError::BadLength)
        ));
    }
}
