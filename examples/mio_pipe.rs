//! The floor under a proxy with an event loop of its own, as PgBouncer has (libevent): the same
//! byte pipe as `byte_pipe.rs` (each client relayed to its own upstream connection, no protocol
//! logic, pooling or metrics) written directly on mio's epoll loop, with no tokio runtime, no
//! futures and no wakers. `benches/instructions.sh` counts what it spends per transaction next
//! to PgBouncer, pgsidecar and the tokio pipe: the tokio pipe's count above this one is what
//! tokio's runtime costs.
//!
//!   cargo run --release --example mio_pipe -- LISTEN_ADDR UPSTREAM_ADDR
//!
//! Ends on SIGTERM (the default action; a script's background job ignores SIGINT). Not a proxy
//! to use: authentication and everything else pass through untouched, each client holds a
//! server connection for its whole session, and a side that stops reading makes the other
//! side's bytes wait in memory.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

/// One relayed connection: a client or its server, the other end's token, and the bytes the
/// socket did not take yet.
struct End {
    socket: TcpStream,
    peer: Token,
    unsent: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: mio_pipe LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse(), upstream.parse()) else {
        eprintln!("mio_pipe: addresses are IP:PORT");
        std::process::exit(2);
    };
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut ends: HashMap<Token, End> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept(&poll, &mut listener, &mut ends, &mut next, upstream)?,
                token => {
                    if event.is_writable() {
                        flush(&mut ends, token);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        relay(&poll, &mut ends, token, &mut buf);
                    }
                }
            }
        }
    }
}

/// Accepts every waiting client and connects each to its own upstream connection.
fn accept(
    poll: &Poll,
    listener: &mut TcpListener,
    ends: &mut HashMap<Token, End>,
    next: &mut usize,
    upstream: std::net::SocketAddr,
) -> std::io::Result<()> {
    loop {
        let (mut client, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        // A blocking connect: a pipe for measurement, not for serving while connecting.
        let server = std::net::TcpStream::connect(upstream)?;
        server.set_nonblocking(true)?;
        let mut server = TcpStream::from_std(server);
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (c, s) = (Token(*next), Token(*next + 1));
        *next += 2;
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut client, c, both)?;
        poll.registry().register(&mut server, s, both)?;
        for (token, socket, peer) in [(c, client, s), (s, server, c)] {
            let unsent = Vec::new();
            ends.insert(
                token,
                End {
                    socket,
                    peer,
                    unsent,
                },
            );
        }
    }
}

/// Reads what `token`'s socket has and writes it to its peer; a read shorter than the buffer
/// drained the socket (the next bytes bring a new edge), as tokio assumes too. Either side
/// closing closes both.
fn relay(poll: &Poll, ends: &mut HashMap<Token, End>, token: Token, buf: &mut [u8]) {
    loop {
        let Some(end) = ends.get_mut(&token) else {
            return;
        };
        let peer = end.peer;
        let n = match end.socket.read(buf) {
            Ok(0) => return close(poll, ends, token),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return close(poll, ends, token),
        };
        let Some(other) = ends.get_mut(&peer) else {
            return;
        };
        if other.unsent.is_empty() {
            match other.socket.write(&buf[..n]) {
                Ok(w) => other.unsent.extend_from_slice(&buf[w..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    other.unsent.extend_from_slice(&buf[..n])
                }
                Err(_) => return close(poll, ends, token),
            }
        } else {
            other.unsent.extend_from_slice(&buf[..n]);
        }
        if n < buf.len() {
            return;
        }
    }
}

/// Writes what `token`'s socket did not take before, now that it is writable.
fn flush(ends: &mut HashMap<Token, End>, token: Token) {
    let Some(end) = ends.get_mut(&token) else {
        return;
    };
    while !end.unsent.is_empty() {
        match end.socket.write(&end.unsent) {
            Ok(w) => {
                end.unsent.drain(..w);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Closes a connection and its peer.
fn close(poll: &Poll, ends: &mut HashMap<Token, End>, token: Token) {
    if let Some(mut end) = ends.remove(&token) {
        let _ = poll.registry().deregister(&mut end.socket);
        if let Some(mut peer) = ends.remove(&end.peer) {
            let _ = poll.registry().deregister(&mut peer.socket);
        }
    }
}
