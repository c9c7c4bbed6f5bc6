//! The admin HTTP endpoint of pylon-xds, and the small client `pylon-xds status` uses.
//!
//! Read-only: `/healthz` (the process answers and its xDS runtime runs: see
//! [`Heartbeat`]), `/readyz` (a valid snapshot is
//! served and the server is not stopping), `/metrics` (Prometheus text),
//! `/nodes` (JSON: every connected stream and its per-type sync state) and
//! `/status` (JSON: the config source, version, last reload error, resource
//! counts and the nodes). Anything but GET is refused with 405 (or 403, by
//! `pylon::admin_http`, when it comes from a web page of another origin).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::registry::{Registry, StreamStatus};
use crate::server::Transport;
use crate::source::{Reloader, SourceStatus};
use pylon::tls::ServerTls;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The snapshot being served.
    pub cache: Cache,
    /// Connected streams (and the metrics).
    pub registry: Arc<Registry>,
    /// The source's status.
    pub reloader: Arc<Reloader>,
    /// Cancelled while stopping: `/readyz` turns 503.
    pub shutdown: CancellationToken,
    /// How the listeners are secured.
    pub transport: TransportInfo,
    /// The xDS runtime's pulse and handle.
    pub heartbeat: Heartbeat,
}

/// `/healthz` fails once the xDS runtime has not beaten for this long.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);
/// How often the xDS runtime beats.
const BEAT_EVERY: Duration = Duration::from_millis(500);

/// The xDS runtime's pulse, read by the admin API.
///
/// The admin API runs on a thread and runtime of its own (`app`), so that
/// probes answer promptly while the xDS runtime is saturated, as in a
/// reconnect storm of every stream on two cores. `/healthz` must still mean
/// "this process serves": a task on the xDS runtime stamps the time every
/// 500 ms, and `/healthz` turns 503 when the stamp is older than
/// [`STALLED_AFTER`]. The handle lets `/metrics` report that runtime's tasks.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Heartbeat {
    /// A heartbeat of the runtime this is called on (beaten now).
    pub fn current() -> Self {
        Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Beats until `stop`; spawn it on the runtime to watch.
    pub async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(BEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.beat(),
            }
        }
    }
}

/// How the listeners are secured, for `/status`.
#[derive(Debug, Clone)]
pub struct TransportInfo {
    /// How xDS clients connect.
    pub xds: Transport,
    /// Plaintext beyond loopback was asked for (`--insecure`).
    pub insecure: bool,
    /// The xDS listener's TLS.
    pub xds_tls: Option<Arc<ServerTls>>,
    /// The admin listener's TLS.
    pub admin_tls: Option<Arc<ServerTls>>,
}

/// What `/status` shows about the listeners' transport.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransportStatus {
    /// How xDS clients connect.
    pub xds: Transport,
    /// Plaintext beyond loopback was asked for (`--insecure`).
    pub insecure: bool,
    /// The xDS listener's certificate, when TLS is on.
    pub xds_tls: Option<pylon::tls::TlsStatus>,
    /// The admin listener's certificate, when TLS is on.
    pub admin_tls: Option<pylon::tls::TlsStatus>,
}

impl TransportInfo {
    fn status(&self) -> TransportStatus {
        TransportStatus {
            xds: self.xds,
            insecure: self.insecure,
            xds_tls: self.xds_tls.as_ref().map(|t| t.status()),
            admin_tls: self.admin_tls.as_ref().map(|t| t.status()),
        }
    }
}

/// The body of `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The source of truth and its reload state.
    #[serde(flatten)]
    pub source: SourceStatus,
    /// Resources being served, by kind.
    pub resources: ResourceCounts,
    /// How the listeners are secured, and their certificates.
    pub transport: TransportStatus,
    /// Connected streams.
    pub nodes: Vec<StreamStatus>,
    /// The host names of endpoints: addresses served, last lookup error.
    pub dns: Vec<crate::dns::NameStatus>,
}

/// Resource counts of the snapshot being served.
#[derive(Debug, Serialize)]
pub struct ResourceCounts {
    /// Clusters.
    pub clusters: usize,
    /// Load assignments.
    pub endpoints: usize,
    /// Listeners.
    pub listeners: usize,
    /// Route configurations.
    pub routes: usize,
}

impl AdminState {
    /// The `/status` document.
    pub fn status(&self) -> Status {
        let [clusters, endpoints, listeners, routes] = self.cache.current().counts();
        Status {
            source: self.reloader.status(),
            resources: ResourceCounts {
                clusters,
                endpoints,
                listeners,
                routes,
            },
            transport: self.transport.status(),
            nodes: self.registry.list(),
            dns: self.reloader.dns().map(|d| d.status()).unwrap_or_default(),
        }
    }

    fn handle(&self, method: &Method, path_and_query: &str) -> Response<Full<Bytes>> {
        if method != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is supported\n".into(),
            );
        }
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(p, _)| p);
        match path {
            "/healthz" => match self.heartbeat.age() {
                age if age > STALLED_AFTER => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the xDS runtime has not run for {} s\n", age.as_secs()),
                ),
                _ => text(StatusCode::OK, "ok\n".into()),
            },
            "/readyz" if self.shutdown.is_cancelled() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
            }
            "/readyz" => text(StatusCode::OK, "ready\n".into()),
            "/metrics" => {
                let metrics = self.registry.metrics();
                metrics.refresh_process(self.heartbeat.runtime.as_ref());
                for (listener, tls) in [
                    ("xds", &self.transport.xds_tls),
                    ("admin", &self.transport.admin_tls),
                ] {
                    if let Some(tls) = tls {
                        metrics.refresh_tls(listener, tls);
                    }
                }
                let mut r = text(StatusCode::OK, metrics.encode());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            "/nodes" => json(&self.registry.list()),
            "/status" => json(&self.status()),
            "/" => text(
                StatusCode::OK,
                "pylon-xds admin: /healthz /readyz /metrics /nodes /status\n".into(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Serves the admin endpoint on `listener` (over TLS with `tls`) until
/// `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    state: AdminState,
    stop: CancellationToken,
) {
    let state = Arc::new(state);
    let handler: pylon::admin_http::Handler = Arc::new(move |req: &hyper::http::request::Parts| {
        state.handle(
            &req.method,
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
    });
    match tls {
        Some(tls) => pylon::admin_http::serve_tls(listener, tls, handler, stop).await,
        None => pylon::admin_http::serve(listener, handler, stop).await,
    }
}

/// GETs `path` from an admin endpoint; returns the status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn heartbeat_goes_stale_when_its_runtime_stops_beating() {
        let heart = Heartbeat::current();
        let stop = CancellationToken::new();
        let beating = tokio::spawn(heart.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(heart.age() <= BEAT_EVERY, "{:?}", heart.age());
        stop.cancel();
        beating.await.unwrap();
        tokio::time::sleep(STALLED_AFTER + Duration::from_secs(1)).await;
        assert!(heart.age() > STALLED_AFTER, "{:?}", heart.age());
    }
}
