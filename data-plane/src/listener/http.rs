//! HTTP connection manager and router (`envoy.filters.network.http_connection_manager`
//! with `envoy.filters.http.router`).
//!
//! Owns: serving one downstream connection (HTTP/1.1 with keep-alive, or h2c,
//! through hyper's auto server), the per-request path (route lookup in the
//! current route table, host pick, path rewrite, upstream exchange under the
//! route timeout), Envoy's local replies (404 no route, 503 no cluster / no
//! healthy upstream / connect failure, 504 timeout) and the `http.<stat_prefix>.`
//! stats.
//!
//! The route table is read on every request (from the RDS slot, or the inline
//! table), so an RDS update applies to the next request of an existing
//! connection. Draining: a draining listener asks each connection to finish
//! (HTTP/1: close after the current response; h2: GOAWAY).
//!
//! Does not own upstream connections (see `upstream::pool`) or routing tables
//! (see `listener::route`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::listener::route::{RouteSlot, RouteTable};
use crate::runtime::stats::{stats_struct, Counter, Gauge, GaugeGuard};
use crate::upstream::pool::{self, ActiveRq, UpstreamBody};

stats_struct! {
    /// Envoy's `http.<stat_prefix>.` stats.
    pub struct HttpStats {
        downstream_cx_total: Counter => "downstream_cx_total",
        downstream_cx_active: Gauge => "downstream_cx_active",
        downstream_rq_total: Counter => "downstream_rq_total",
        downstream_rq_active: Gauge => "downstream_rq_active",
        downstream_rq_http1_total: Counter => "downstream_rq_http1_total",
        downstream_rq_http2_total: Counter => "downstream_rq_http2_total",
        downstream_rq_1xx: Counter => "downstream_rq_1xx",
        downstream_rq_2xx: Counter => "downstream_rq_2xx",
        downstream_rq_3xx: Counter => "downstream_rq_3xx",
        downstream_rq_4xx: Counter => "downstream_rq_4xx",
        downstream_rq_5xx: Counter => "downstream_rq_5xx",
        no_route: Counter => "no_route",
        no_cluster: Counter => "no_cluster",
    }
}

impl HttpStats {
    #[inline]
    fn count_status(&self, status: u16) {
        match status / 100 {
            1 => self.downstream_rq_1xx.inc(),
            2 => self.downstream_rq_2xx.inc(),
            3 => self.downstream_rq_3xx.inc(),
            4 => self.downstream_rq_4xx.inc(),
            _ => self.downstream_rq_5xx.inc(),
        }
    }
}

/// Where an HTTP listener's routes come from.
#[derive(Debug)]
pub enum Routes {
    /// RDS: the current version, read per request.
    Rds(Arc<RouteSlot>),
    /// Inline, fixed for the listener's life.
    Inline(Arc<RouteTable>),
}

/// Everything the connections of one HTTP listener share.
#[derive(Debug)]
pub struct HttpCtx {
    stats: Arc<HttpStats>,
    routes: Routes,
    server: auto::Builder<TokioExecutor>,
}

impl HttpCtx {
    /// A context for a listener with these stats and routes.
    pub fn new(stats: Arc<HttpStats>, routes: Routes) -> HttpCtx {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server.http1().keep_alive(true);
        HttpCtx {
            stats,
            routes,
            server,
        }
    }
}

/// Serves one downstream connection until it ends, `drain` asks it to finish,
/// or `close` ends it.
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<HttpCtx>,
    drain: CancellationToken,
    close: CancellationToken,
) {
    ctx.stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_cx_active);
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let conn = ctx.server.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // A connection taken from the backlog of a listener that is already
    // draining is served (until `close`) rather than shut before its request.
    let late = drain.is_cancelled();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = close.cancelled() => return,
        _ = drain.cancelled(), if !late => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = close.cancelled() => {}
    }
}

/// Headers that describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// What the route lookup decided, detached from the route table.
struct Decision {
    cluster: Option<Arc<crate::upstream::Cluster>>,
    rewrite: Option<(String, HeaderValue)>,
    timeout: Option<std::time::Duration>,
}

fn decide(table: &RouteTable, parts: &Parts) -> Option<Decision> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = table.route(host, parts.uri.path(), pq)?;
    let rewrite = route.rewrite(pq).and_then(|new| {
        let original = HeaderValue::from_str(pq).ok()?;
        Some((new, original))
    });
    Some(Decision {
        cluster: route.cluster.get(),
        rewrite,
        timeout: route.timeout,
    })
}

/// Handles one request; never fails (errors become Envoy's local replies).
pub async fn handle(ctx: &HttpCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    if req.version() == Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    let active = GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_rq_active);
    let resp = route_and_forward(ctx, req, active).await;
    stats.count_status(resp.status().as_u16());
    resp
}

async fn route_and_forward(
    ctx: &HttpCtx,
    req: Request<Incoming>,
    active: GaugeGuard<HttpStats>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let decision = match &ctx.routes {
        Routes::Inline(t) => decide(t, &parts),
        Routes::Rds(slot) => {
            let guard = slot.load();
            guard.as_deref().and_then(|t| decide(t, &parts))
        }
    };
    let Some(d) = decision else {
        ctx.stats.no_route.inc();
        return local_reply(StatusCode::NOT_FOUND, "", active);
    };
    let Some(cluster) = d.cluster else {
        ctx.stats.no_cluster.inc();
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "", active);
    };
    let Some(host) = cluster.pick() else {
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            active,
        );
    };

    // The upstream request: origin-form URI, HTTP/1.1, Host kept (h2 :authority becomes Host).
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if let Some((new, original)) = d.rewrite {
        match Uri::try_from(new) {
            Ok(u) => parts.uri = u,
            Err(_) => return local_reply(StatusCode::BAD_REQUEST, "", active),
        }
        parts.headers.insert(ORIGINAL_PATH, original);
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().cloned();
        let mut up = hyper::http::uri::Parts::default();
        up.path_and_query = pq;
        if let Ok(u) = Uri::from_parts(up) {
            parts.uri = u;
        }
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    if parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v != "trailers")
    {
        parts.headers.remove(header::TE);
    }
    let req = Request::from_parts(parts, body);

    let rq = ActiveRq::new(host, cluster.stats().clone());
    let mut deadline = d.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let result = match deadline.as_mut() {
        Some(sleep) => tokio::select! {
            r = pool::send(&cluster, &rq, req) => Some(r),
            _ = sleep.as_mut() => None,
        },
        None => Some(pool::send(&cluster, &rq, req).await),
    };
    match result {
        None => {
            cluster.stats().upstream_rq_timeout.inc();
            rq.host().stats.rq_error.inc();
            local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                active,
            )
        }
        Some(Err(e)) => {
            rq.host().stats.rq_error.inc();
            tracing::debug!(cluster = cluster.name(), host = %rq.host().addr(), error = %e, "upstream request failed");
            local_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), active)
        }
        Some(Ok((resp, sender))) => {
            let status = resp.status().as_u16();
            cluster.stats().count_status(status);
            if status >= 500 {
                rq.host().stats.rq_error.inc();
            } else {
                rq.host().stats.rq_success.inc();
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = ProxyBody {
                kind: Kind::Upstream {
                    body: UpstreamBody::new(body, sender, rq),
                    deadline,
                },
                _active: active,
            };
            Response::from_parts(parts, body)
        }
    }
}

fn local_reply(
    status: StatusCode,
    body: &str,
    active: GaugeGuard<HttpStats>,
) -> Response<ProxyBody> {
    let data = if body.is_empty() {
        None
    } else {
        Some(Bytes::copy_from_slice(body.as_bytes()))
    };
    let has_body = data.is_some();
    let mut r = Response::new(ProxyBody {
        kind: Kind::Local(data),
        _active: active,
    });
    *r.status_mut() = status;
    if has_body {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

/// Why a response body failed mid-stream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream connection broke.
    #[error("upstream: {0}")]
    Upstream(#[from] hyper::Error),
    /// The route timeout expired while the body was streaming.
    #[error("upstream request timeout")]
    Timeout,
}

/// A downstream response body: a local reply, or an upstream body under the
/// rest of the route timeout. Holds `downstream_rq_active` until dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _active: GaugeGuard<HttpStats>,
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        deadline: Option<Pin<Box<Sleep>>>,
    },
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { body, deadline } => {
                if let Some(sleep) = deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                }
                let r = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = r {
                    *deadline = None;
                }
                r.map_err(BodyError::Upstream)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(d) => d.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
