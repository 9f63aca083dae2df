//! The sidecar's listeners: binds the client and metrics addresses, starts the pools' and
//! replicas' background tasks, and accepts clients (each becomes a session task) until draining
//! starts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{App, AppError, ConfigFile};
use crate::config::Config;

/// A running sidecar: its bound addresses and its [`App`].
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
}

/// Binds the client and metrics listeners and starts serving both in the current runtime.
pub async fn start(config: Config) -> Result<Running, AppError> {
    start_from(config, None).await
}

/// As [`start`]; RELOAD reads `file` again.
pub async fn start_from(config: Config, file: Option<ConfigFile>) -> Result<Running, AppError> {
    let listen = config.listen;
    let metrics_listen = config.metrics_listen;
    let app = App::with_source(config, crate::stream::Dialer::Tcp, file)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: listen,
            source,
        })?;
    let metrics_listener =
        TcpListener::bind(metrics_listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: metrics_listen,
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: listen,
        source,
    })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: metrics_listen,
            source,
        })?;
    tokio::spawn(crate::http::serve(Arc::clone(&app), metrics_listener));
    for database in app.live().all() {
        crate::live::spawn_tasks(database);
    }
    if let Some(coordinator) = &app.two_phase {
        // In-doubt transactions an earlier run left: resolved in the background (a shard that
        // is down is tried again).
        tokio::spawn(crate::pool::twophase::recover_all(
            Arc::clone(coordinator),
            app.live().two_phase_shards(),
            app.metrics.shards.recovered.clone(),
            app.terminate.clone(),
        ));
    }
    tokio::spawn(accept_clients(Arc::clone(&app), listener));
    tracing::info!(%addr, %metrics_addr, mode = %app.live().config.pool.mode, "pgsidecar is listening");
    Ok(Running {
        addr,
        metrics_addr,
        app,
    })
}

/// Accepts clients until draining starts.
async fn accept_clients(app: Arc<App>, listener: TcpListener) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let session = crate::session::serve_client(Arc::clone(&app), stream);
                    app.tracker.spawn(session);
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly, keep serving.
                    app.metrics.error("accept");
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = app.draining.cancelled() => return,
        }
    }
}
