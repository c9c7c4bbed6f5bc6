//! The HTTP/1.1 (and h2c) accept loop behind both admin endpoints (pylon-xds's
//! and pylon-proxy's). It owns connections only; what a request means belongs
//! to the handler each binary passes in.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers one admin request from its method and path (with query).
pub type Handler = Arc<dyn Fn(&Method, &str) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, handler: Handler, stop: CancellationToken) {
    let mut backoff = crate::accept::AcceptBackoff::new("admin");
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = backoff.accept(&listener) => accepted,
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let resp = handler(req.method(), pq);
                async move { Ok::<_, Infallible>(resp) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}
