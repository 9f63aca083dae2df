//! The floor under every tokio proxy: a byte pipe that relays each client connection to its
//! own upstream connection (`tokio::io::copy_bidirectional`) on one runtime thread, with no
//! protocol logic, pooling or metrics at all. `benches/instructions.sh` counts what it spends
//! per transaction next to PgBouncer and pgsidecar: what is left of pgsidecar's count above
//! this one is pgsidecar's own work; this one is tokio's.
//!
//!   cargo run --release --example byte_pipe -- LISTEN_ADDR UPSTREAM_ADDR
//!
//! Ends on SIGINT or SIGTERM. Not a proxy to use: authentication and everything else pass
//! through untouched, each client holds a server connection for its whole session.

use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: byte_pipe LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        loop {
            let (client, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
            };
            tokio::spawn(relay(client, upstream.clone()));
        }
    })
}

/// Copies bytes both ways until either side closes.
async fn relay(mut client: TcpStream, upstream: String) {
    let pipe = async {
        let mut server = TcpStream::connect(&upstream).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await
    };
    if let Err(e) = pipe.await {
        eprintln!("byte_pipe: {e}");
    }
}
