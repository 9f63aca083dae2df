//! The first packets of a connection: SSLRequest (TLS when `[tls]` is configured, 'N'
//! otherwise), GSSENCRequest ('N'), CancelRequest and the StartupMessage. Returns the client's
//! stream — upgraded to TLS if it asked — with a [`Handshake`] outcome; it authenticates nobody.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::protocol::startup::{
    packet_len, parse_first_packet, FirstPacket, StartupError, StartupMessage,
};
use crate::stream::Stream;

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

/// A finished handshake: the stream (TLS or not), bytes read past the first packets, outcome.
pub struct Accepted {
    pub stream: Stream,
    pub leftover: BytesMut,
    pub outcome: Handshake,
}

/// A refused handshake, with the stream when the client can still be told why.
pub struct Refused {
    pub stream: Option<Stream>,
    pub error: HandshakeError,
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// `SSLRequest` or `GSSENCRequest`.
    #[error("client sent data after {0} before the server answered")]
    BufferedAfterNegotiation(&'static str),
    #[error("too many SSL/GSS negotiation requests")]
    TooManyNegotiations,
    #[error("this server requires TLS: connect with sslmode=require or stronger")]
    TlsRequired,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
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
            HandshakeError::BufferedAfterNegotiation(_) | HandshakeError::TooManyNegotiations => {
                "startup_protocol"
            }
            HandshakeError::TlsRequired => "tls_required",
            HandshakeError::Tls(_) => "tls_handshake",
            HandshakeError::Closed | HandshakeError::Io(_) => "client_io",
        }
    }
}

/// TLS policy for client connections.
pub struct ClientTls<'a> {
    pub acceptor: Option<&'a tokio_rustls::TlsAcceptor>,
    pub required: bool,
}

/// Reads first packets until a StartupMessage or CancelRequest arrives.
pub async fn handshake(stream: Stream, tls: ClientTls<'_>) -> Result<Accepted, Refused> {
    let mut stream = stream;
    let mut buf = BytesMut::new();
    let refuse = |stream, error| Refused {
        stream: Some(stream),
        error,
    };
    for _ in 0..=MAX_NEGOTIATIONS {
        let body = match read_packet(&mut stream, &mut buf).await {
            Ok(body) => body,
            Err(e @ (HandshakeError::Closed | HandshakeError::Io(_))) => {
                return Err(Refused {
                    stream: None,
                    error: e,
                })
            }
            Err(e) => return Err(refuse(stream, e)),
        };
        let packet = match parse_first_packet(&body) {
            Ok(p) => p,
            Err(e) => return Err(refuse(stream, e.into())),
        };
        match packet {
            FirstPacket::Startup(startup) => {
                if tls.required && !stream.is_tls() {
                    return Err(refuse(stream, HandshakeError::TlsRequired));
                }
                return Ok(Accepted {
                    stream,
                    leftover: buf,
                    outcome: Handshake::Startup(startup),
                });
            }
            FirstPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Accepted {
                    stream,
                    leftover: buf,
                    outcome: Handshake::Cancel {
                        process_id,
                        secret_key,
                    },
                })
            }
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
                if !buf.is_empty() {
                    // Bytes sent before the answer would be read as if they were encrypted
                    // (CVE-2021-23214); refuse them.
                    let request = match packet {
                        FirstPacket::SslRequest => "SSLRequest",
                        _ => "GSSENCRequest",
                    };
                    return Err(refuse(
                        stream,
                        HandshakeError::BufferedAfterNegotiation(request),
                    ));
                }
                let wants_tls = matches!(packet, FirstPacket::SslRequest);
                stream = match (stream, tls.acceptor) {
                    (Stream::Plain(mut tcp), Some(acceptor)) if wants_tls => {
                        if let Err(e) = tcp.write_all(b"S").await {
                            return Err(Refused {
                                stream: None,
                                error: e.into(),
                            });
                        }
                        match acceptor.accept(tcp).await {
                            Ok(tls) => Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
                            Err(e) => {
                                return Err(Refused {
                                    stream: None,
                                    error: HandshakeError::Tls(e),
                                })
                            }
                        }
                    }
                    (mut other, _) => {
                        if let Err(e) = other.write_all(b"N").await {
                            return Err(Refused {
                                stream: None,
                                error: e.into(),
                            });
                        }
                        other
                    }
                };
            }
        }
    }
    Err(refuse(stream, HandshakeError::TooManyNegotiations))
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
    use crate::protocol::startup::{GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE};

    /// A connected in-process pair: (client side, server side).
    async fn pair() -> (tokio::io::DuplexStream, Stream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (client, Stream::Memory(server))
    }

    const NO_TLS: ClientTls<'static> = ClientTls {
        acceptor: None,
        required: false,
    };

    fn ssl_request() -> Vec<u8> {
        let mut packet = 8i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        packet
    }

    fn startup() -> Vec<u8> {
        let body = [&PROTOCOL_3_0.to_be_bytes()[..], b"user\0app\0\0"].concat();
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        packet
    }

    #[tokio::test]
    async fn ssl_request_answered_no_then_startup() {
        let (mut client, server) = pair().await;
        client.write_all(&ssl_request()).await.unwrap();
        let task = tokio::spawn(async move { handshake(server, NO_TLS).await.map(|a| a.outcome) });
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        client.write_all(&startup()).await.unwrap();
        let Ok(Handshake::Startup(s)) = task.await.unwrap() else {
            panic!("expected startup")
        };
        assert_eq!(s.user, "app");
    }

    #[tokio::test]
    async fn bytes_after_ssl_or_gssenc_request_are_refused_naming_the_request() {
        for (code, request) in [
            (SSL_REQUEST_CODE, "SSLRequest"),
            (GSSENC_REQUEST_CODE, "GSSENCRequest"),
        ] {
            let (mut client, server) = pair().await;
            let mut packet = 8i32.to_be_bytes().to_vec();
            packet.extend_from_slice(&code.to_be_bytes());
            packet.extend_from_slice(b"Qgarbage");
            // One write: the request and the bytes after it arrive together.
            client.write_all(&packet).await.unwrap();
            let Err(refused) = handshake(server, NO_TLS).await else {
                panic!("accepted")
            };
            assert!(
                matches!(refused.error, HandshakeError::BufferedAfterNegotiation(r) if r == request),
                "{}",
                refused.error
            );
            assert!(refused.stream.is_some(), "the client can still be told why");
        }
    }

    #[tokio::test]
    async fn plaintext_is_refused_when_tls_is_required() {
        let (mut client, server) = pair().await;
        client.write_all(&startup()).await.unwrap();
        let tls = ClientTls {
            acceptor: None,
            required: true,
        };
        let Err(refused) = handshake(server, tls).await else {
            panic!("accepted")
        };
        assert!(matches!(refused.error, HandshakeError::TlsRequired));
    }

    #[tokio::test]
    async fn oversize_startup_is_refused_before_reading_it() {
        let (mut client, server) = pair().await;
        client.write_all(&1_000_000i32.to_be_bytes()).await.unwrap();
        let Err(refused) = handshake(server, NO_TLS).await else {
            panic!("accepted")
        };
        assert!(matches!(
            refused.error,
            HandshakeError::Startup(StartupError::BadLength)
        ));
    }
}
