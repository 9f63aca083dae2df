//! The metrics listener: `GET /metrics` (Prometheus text), `/healthz` (liveness: the process
//! answers) and `/readyz` (readiness: listening and not draining; `?upstream=1` also requires
//! every upstream to hand out a connection). A brief database outage must not make the pod
//! unready, so plain `/readyz` never looks upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;

/// How long `/readyz?upstream=1` waits for each upstream.
const UPSTREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves HTTP until the process ends.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(respond(&app, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

async fn respond(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n", PLAIN);
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            app.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => {
            if app.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", PLAIN);
            }
            let upstream = req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "upstream=1" || p == "upstream=true")
            });
            if upstream {
                for pool in app.live().all().map(|d| &d.primary) {
                    let checked =
                        tokio::time::timeout(UPSTREAM_CHECK_TIMEOUT, pool.checkout()).await;
                    match checked {
                        Ok(Ok(checkout)) => checkout.release(),
                        _ => {
                            return text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("upstream for database {} is unavailable\n", pool.name),
                                PLAIN,
                            )
                        }
                    }
                }
            }
            text(StatusCode::OK, "ready\n", PLAIN)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
            PLAIN,
        ),
    }
}
