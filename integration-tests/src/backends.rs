//! In-process backends that stand in for real upstreams, each bound on a
//! loopback address and stoppable:
//!
//! - [`HttpServer`]: HTTP/1.1 replica answering its own id, counting requests;
//!   the status it answers can be changed (a replica that starts failing).
//! - [`HeaderEcho`]: HTTP/1.1 server answering with the request line and
//!   headers it received, and response headers naming one in `Connection`.
//! - [`Silent`]: accepts connections and never answers (a hung upstream).
//! - [`TcpEcho`]: echoes bytes back, counting connections.
//! - [`ApiServer`]: TLS server answering like a kube-apiserver (`/healthz`,
//!   `/readyz`, `/livez`, `/version`), counting requests (kubectl's apart);
//!   can be stopped and started again on the same port, and made unready
//!   (`/readyz` 500 with the port open).
//!
//! Owns the servers and their counters only; what traffic reaches them is up to
//! the tests. Stopping a server closes its listener and every open connection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::TestCa;

/// A running accept loop and its connections; stopping waits until the
/// listener is closed and every connection task has ended.
#[derive(Debug)]
struct Serving {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Serving {
    fn spawn<H, Fut>(listener: TcpListener, handler: H) -> Self
    where
        H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (t, tr) = (token.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = t.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let conn = handler(stream);
                let t = t.clone();
                tr.spawn(async move {
                    tokio::select! {
                        _ = t.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
            // `listener` is dropped here: the port is closed before `stop` returns.
        });
        Serving { token, tracker }
    }

    async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

// ---------------------------------------------------------------------------

/// An HTTP/1.1 replica: every request is answered `200` (or the status set
/// with [`HttpServer::set_status`]) with body `<id>`, header
/// `x-backend-id: <id>` and header `x-request-path: <path as received>`.
#[derive(Debug)]
pub struct HttpServer {
    id: String,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    serving: Serving,
}

impl HttpServer {
    /// Binds `ip:0` and serves.
    pub async fn start(ip: IpAddr, id: &str) -> anyhow::Result<Self> {
        Self::start_at(SocketAddr::new(ip, 0), id, false).await
    }

    /// Binds `addr` and serves; with `h2c`, HTTP/2 with prior knowledge
    /// (what Envoy sends to a cluster with HTTP/2 protocol options) besides
    /// HTTP/1.1.
    pub async fn start_at(addr: SocketAddr, id: &str, h2c: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("replica {id} binding {addr}"))?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (id_owned, counter, answer) = (id.to_string(), served.clone(), status.clone());
        let serving = Serving::spawn(listener, move |stream| {
            let (id, counter, answer) = (id_owned.clone(), counter.clone(), answer.clone());
            async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let status = StatusCode::from_u16(answer.load(Ordering::SeqCst))
                        .unwrap_or(StatusCode::OK);
                    let mut resp = text(status, id.clone());
                    let headers = resp.headers_mut();
                    if let Ok(v) = id.parse() {
                        headers.insert("x-backend-id", v);
                    }
                    if let Ok(v) = req.uri().path().parse() {
                        headers.insert("x-request-path", v);
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                if h2c {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
        Ok(HttpServer {
            id: id.to_string(),
            addr,
            served,
            status,
            serving,
        })
    }

    /// Answers every request from now on with `status`.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection.
    pub async fn stop(&self) {
        self.serving.stop().await;
    }
}

// ---------------------------------------------------------------------------

/// An HTTP/1.1 server that answers every request `200` with what it
/// received: the method and path on the first line, then one `name: value`
/// line per header, names lower-case, in the order received. Each response
/// also carries `connection: x-resp-hop`, `x-resp-hop: 1` and
/// `x-resp-keep: 1`, for checking what a proxy drops on the way back.
#[derive(Debug)]
pub struct HeaderEcho {
    addr: SocketAddr,
    serving: Serving,
}

impl HeaderEcho {
    /// Binds `ip:0` and serves.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let serving = Serving::spawn(listener, move |stream| async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut body = format!("{} {}\n", req.method(), req.uri());
                for (name, value) in req.headers() {
                    body.push_str(&format!(
                        "{name}: {}\n",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                }
                let mut resp = text(StatusCode::OK, body);
                let headers = resp.headers_mut();
                headers.insert(
                    "connection",
                    hyper::header::HeaderValue::from_static("x-resp-hop"),
                );
                headers.insert("x-resp-hop", hyper::header::HeaderValue::from_static("1"));
                headers.insert("x-resp-keep", hyper::header::HeaderValue::from_static("1"));
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        Ok(HeaderEcho { addr, serving })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(&self) {
        self.serving.stop().await;
    }
}

// ---------------------------------------------------------------------------

/// Accepts connections, reads what arrives and never answers: an upstream
/// that hangs. Counts the connections it accepted.
#[derive(Debug)]
pub struct Silent {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    serving: Serving,
}

impl Silent {
    /// Binds `ip:0` and accepts.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let serving = Serving::spawn(listener, move |mut stream| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                // Drain the request (so the proxy never blocks writing it)
                // and hold the connection until the peer or `stop` ends it.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            }
        });
        Ok(Silent {
            addr,
            connections,
            serving,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub async fn stop(&self) {
        self.serving.stop().await;
    }
}

// ---------------------------------------------------------------------------

/// A TCP echo server.
#[derive(Debug)]
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    serving: Serving,
}

impl TcpEcho {
    /// Binds `ip:0` and echoes every connection until it closes.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let serving = Serving::spawn(listener, move |mut stream| {
            let counter = counter.clone();
            async move {
                // Counted on the first byte, so that a TCP health check's
                // bare connect (which may reconnect at any time) is not.
                let mut first = [0u8; 4096];
                let n = match stream.read(&mut first).await {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(&first[..n]).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            }
        });
        Ok(TcpEcho {
            addr,
            connections,
            serving,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections that have sent at least one byte so far. A TCP health
    /// check's connect, which carries nothing, is not counted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub async fn stop(&self) {
        self.serving.stop().await;
    }
}

// ---------------------------------------------------------------------------

/// Counters of one [`ApiServer`], kept across stop/start.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// HTTP requests answered.
    pub requests: AtomicU64,
    /// Requests whose `User-Agent` is kubectl's (health checks send `Envoy/HC`).
    pub kubectl_requests: AtomicU64,
    /// TLS handshakes completed (a TCP health check never completes one).
    pub tls_connections: AtomicU64,
    /// Paths requested, in order.
    pub paths: std::sync::Mutex<Vec<String>>,
    /// `/readyz` answers 500, as an apiserver that is not ready does (its
    /// port stays open and `/healthz` stays 200).
    pub not_ready: std::sync::atomic::AtomicBool,
}

/// A TLS server answering like a kube-apiserver.
#[derive(Debug)]
pub struct ApiServer {
    id: String,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    stats: Arc<ApiStats>,
    serving: Option<Serving>,
}

/// The `/version` body, shaped like the apiserver's.
pub fn version_json(id: &str) -> String {
    serde_json::json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.4-pylon-{id}"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
    .to_string()
}

impl ApiServer {
    /// Binds `ip:0` and serves TLS with the CA's server certificate.
    pub async fn start(ip: IpAddr, id: &str, ca: &TestCa) -> anyhow::Result<Self> {
        let mut server = ApiServer {
            id: id.to_string(),
            addr: SocketAddr::new(ip, 0),
            tls: ca.server_config()?,
            stats: Arc::new(ApiStats::default()),
            serving: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP requests answered so far (across restarts).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far (across restarts).
    pub fn tls_connections(&self) -> u64 {
        self.stats.tls_connections.load(Ordering::SeqCst)
    }

    /// Requests from kubectl so far (across restarts).
    pub fn kubectl_requests(&self) -> u64 {
        self.stats.kubectl_requests.load(Ordering::SeqCst)
    }

    /// Makes `/readyz` answer 500 (`false`) or 200 (`true`), as an apiserver
    /// losing its etcd and getting it back would; the port stays open.
    pub fn set_ready(&self, ready: bool) {
        self.stats.not_ready.store(!ready, Ordering::SeqCst);
    }

    /// Paths requested so far, in order (across restarts).
    pub fn paths(&self) -> Vec<String> {
        self.stats
            .paths
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.serving.is_some()
    }

    /// Closes the listener and every open connection; new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
    }

    /// Starts serving again on the same address (the first start picks the port).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.serving.is_none(), "{} is already running", self.id);
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("apiserver {} binding {}", self.id, self.addr))?;
        self.addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let (id, stats) = (self.id.clone(), self.stats.clone());
        self.serving = Some(Serving::spawn(listener, move |stream| {
            let (acceptor, id, stats) = (acceptor.clone(), id.clone(), stats.clone());
            async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return; // health checks and port probes end here
                };
                stats.tls_connections.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    stats.requests.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut paths) = stats.paths.lock() {
                        paths.push(req.uri().path().to_string());
                    }
                    let kubectl = req
                        .headers()
                        .get(hyper::header::USER_AGENT)
                        .is_some_and(|ua| ua.as_bytes().starts_with(b"kubectl"));
                    if kubectl {
                        stats.kubectl_requests.fetch_add(1, Ordering::SeqCst);
                    }
                    let ready = !stats.not_ready.load(Ordering::SeqCst);
                    let resp = apiserver_response(&id, req.uri().path(), ready);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        }));
        Ok(())
    }
}

fn apiserver_response(id: &str, path: &str, ready: bool) -> Response<Full<Bytes>> {
    let mut resp = match path {
        // What an apiserver that lost etcd answers.
        "/readyz" if !ready => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]etcd failed: reason withheld\nreadyz check failed",
        ),
        "/healthz" | "/readyz" | "/livez" => text(StatusCode::OK, "ok"),
        "/version" => {
            let mut r = text(StatusCode::OK, version_json(id));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404,
            });
            text(StatusCode::NOT_FOUND, status.to_string())
        }
    };
    if let Ok(v) = id.parse() {
        resp.headers_mut().insert("x-backend-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::loopback;

    #[tokio::test]
    async fn http_server_answers_its_id_and_counts() {
        let s = HttpServer::start(loopback(2), "r1").await.unwrap();
        assert_eq!(s.addr().ip(), loopback(2));
        for _ in 0..3 {
            let r = crate::http::get(s.addr(), "/service/1/x").await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, "r1");
            assert_eq!(r.header("x-request-path"), Some("/service/1/x"));
        }
        assert_eq!(s.served(), 3);
        s.stop().await;
        assert!(crate::http::get(s.addr(), "/").await.is_err());
    }

    #[tokio::test]
    async fn echo_echoes_and_stop_closes_connections() {
        let e = TcpEcho::start(loopback(1)).await.unwrap();
        let mut c = TcpStream::connect(e.addr()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(e.connections(), 1);
        e.stop().await;
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "connection still open: {n:?}");
        assert!(TcpStream::connect(e.addr()).await.is_err());
    }

    async fn tls_get(ca: &TestCa, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let connector = tokio_rustls::TlsConnector::from(ca.client_config()?);
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn apiserver_answers_over_tls_and_restarts_on_the_same_port() {
        let ca = TestCa::new().unwrap();
        let mut a = ApiServer::start(loopback(1), "a1", &ca).await.unwrap();
        let addr = a.addr();
        assert_eq!(tls_get(&ca, addr, "/healthz").await.unwrap(), "ok");
        let v: serde_json::Value =
            serde_json::from_str(&tls_get(&ca, addr, "/version").await.unwrap()).unwrap();
        assert_eq!(v["gitVersion"], "v1.32.4-pylon-a1");
        assert_eq!(a.requests(), 2);
        a.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stopped server still accepts"
        );
        a.start_again().await.unwrap();
        assert_eq!(a.addr(), addr);
        assert_eq!(tls_get(&ca, addr, "/readyz").await.unwrap(), "ok");
        assert_eq!(a.requests(), 3);
        assert_eq!(a.tls_connections(), 3);
        a.set_ready(false);
        assert!(tls_get(&ca, addr, "/readyz")
            .await
            .unwrap()
            .contains("readyz check failed"));
        assert_eq!(tls_get(&ca, addr, "/healthz").await.unwrap(), "ok");
        a.set_ready(true);
        assert_eq!(tls_get(&ca, addr, "/readyz").await.unwrap(), "ok");
        assert_eq!(a.kubectl_requests(), 0);
    }
}
