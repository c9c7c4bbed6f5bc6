//! The HTTP/1.1 (and h2c) server behind both admin endpoints (pylon-xds's
//! and pylon-proxy's). It owns connections, their limits, and the check that
//! a state-changing request comes from the operator rather than from a web
//! page; what a request means belongs to the handler each binary passes in.
//!
//! Limits, so that a client cannot hold a connection or memory for free:
//!
//! - a connection must send its first request within [`HEADER_READ_TIMEOUT`]
//!   of being accepted, whatever protocol it speaks;
//! - HTTP/1.1: each request's headers must arrive within
//!   [`HEADER_READ_TIMEOUT`] (hyper's timer, which only runs when a timer is
//!   given, as here); the same timer closes a keep-alive connection that
//!   stays idle that long between requests. Headers are read into at most
//!   [`MAX_HEADER_BYTES`] and at most [`MAX_HEADERS`] of them;
//! - HTTP/2: at most [`MAX_H2_STREAMS`] requests at once, a header list of at
//!   most [`MAX_HEADER_BYTES`], small flow-control windows (the admin takes
//!   no request bodies);
//! - any connection that sends and receives nothing for [`IDLE_TIMEOUT`] is
//!   closed.
//!
//! State-changing requests (any method but GET and HEAD) must pass
//! [`check_origin`]: a `Host` that is `localhost`, a loopback address or the
//! address the connection came in on, and no `Origin` or one of that same
//! host and port. A browser visiting a hostile page sends such a request with
//! the page's `Origin` (a cross-site POST) or with the page's own host name
//! in `Host` (DNS rebinding); both are refused with 403 and logged.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, HOST, ORIGIN};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accept::AcceptBackoff;
use crate::throttle::{truncate, Throttle};

/// Answers one admin request from its method, URI and headers (the body is
/// not read: no admin request has one).
pub type Handler = Arc<dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync>;

/// How long a client may take to send a request's headers (and, over
/// HTTP/1.1, how long a keep-alive connection may stay idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any connection may send and receive nothing before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most header bytes read for one request (HTTP/1.1 read buffer, HTTP/2
/// header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most headers in one HTTP/1.1 request.
pub const MAX_HEADERS: usize = 100;
/// The most HTTP/2 requests in flight on one connection.
pub const MAX_H2_STREAMS: u32 = 16;
/// HTTP/2 flow-control windows: request bodies are never read.
const H2_WINDOW: u32 = 64 * 1024;

/// Serves `handler` over TLS on `listener` until `stop` is cancelled: each
/// connection's handshake runs on its own task (see [`crate::tls::accept`]),
/// then the connection is served as in [`serve`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<crate::tls::ServerTls>,
    handler: Handler,
    stop: CancellationToken,
) {
    use futures::StreamExt as _;
    let refusals = Arc::new(Throttle::new(5, Duration::from_secs(1)));
    let refused = || {};
    let mut conns = Box::pin(crate::tls::accept(
        crate::accept::incoming(listener, "admin"),
        tls,
        refused,
    ));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            next = conns.next() => match next {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let (tcp, _) = stream.get_ref();
        let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
            continue;
        };
        let handler = Arc::clone(&handler);
        let refusals = Arc::clone(&refusals);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, local, peer, handler, refusals).await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// Serves `handler` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, handler: Handler, stop: CancellationToken) {
    let mut backoff = AcceptBackoff::new("admin");
    // One allowance for every connection: a page POSTing in a loop writes a
    // few lines a second, not one per request.
    let refusals = Arc::new(Throttle::new(5, Duration::from_secs(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = backoff.accept(&listener) => accepted,
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "admin connection gone before it was served");
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let refusals = Arc::clone(&refusals);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, local, peer, handler, refusals).await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// Serves one connection (`io`, accepted on `local` from `peer`) under the
/// limits in the module docs.
pub async fn serve_connection<I>(
    io: I,
    local: SocketAddr,
    peer: SocketAddr,
    handler: Handler,
    refusals: Arc<Throttle>,
) -> Result<(), ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: io,
        activity: Arc::clone(&activity),
    };
    let requested = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        requested.requested.store(true, Ordering::Relaxed);
        let (parts, _body) = req.into_parts();
        let resp = match guard(&parts, local) {
            Ok(()) => handler(&parts),
            Err(why) => {
                if let Some(suppressed) = refusals.allow() {
                    tracing::warn!(
                        %peer,
                        method = %parts.method,
                        path = %truncate(parts.uri.path(), 200),
                        host = %truncate(header(&parts, HOST.as_str()), 200),
                        origin = %truncate(header(&parts, ORIGIN.as_str()), 200),
                        suppressed,
                        "admin request refused: {why}"
                    );
                }
                forbidden(why)
            }
        };
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_send_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let first_request_by = Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let check_at = if activity.requested.load(Ordering::Relaxed) {
            activity.last() + IDLE_TIMEOUT
        } else {
            first_request_by.min(activity.last() + IDLE_TIMEOUT)
        };
        tokio::select! {
            done = conn.as_mut() => return done.map_err(ConnectionError::Http),
            _ = tokio::time::sleep_until(check_at) => {
                // Dropping the connection closes the socket.
                if !activity.requested.load(Ordering::Relaxed) && Instant::now() >= first_request_by {
                    return Err(ConnectionError::NoRequest);
                }
                if activity.last() + IDLE_TIMEOUT <= Instant::now() {
                    return Err(ConnectionError::Idle);
                }
            }
        }
    }
}

/// Why the server closed a connection.
#[derive(Debug)]
pub enum ConnectionError {
    /// No request arrived within [`HEADER_READ_TIMEOUT`] of the accept.
    NoRequest,
    /// Nothing was sent or received for [`IDLE_TIMEOUT`].
    Idle,
    /// hyper ended it (a header timeout, a protocol error, a reset).
    Http(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionError::NoRequest => write!(
                f,
                "no request within {}s of connecting; closed",
                HEADER_READ_TIMEOUT.as_secs()
            ),
            ConnectionError::Idle => {
                write!(f, "idle for {}s; closed", IDLE_TIMEOUT.as_secs())
            }
            ConnectionError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectionError {}

/// Refuses a state-changing request that fails [`check_origin`].
fn guard(parts: &Parts, local: SocketAddr) -> Result<(), String> {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return Ok(());
    }
    check_origin(parts, local)
}

/// Whether a state-changing request may have come from the operator: its
/// `Host` (or HTTP/2 `:authority`) names `localhost`, a loopback address or
/// `local`'s own IP, and its `Origin`, if any, is `http://` that same host
/// and port. A request without `Host` is not from a browser and passes.
pub fn check_origin(parts: &Parts, local: SocketAddr) -> Result<(), String> {
    let host = match parts.headers.get(HOST) {
        Some(v) => Some(v.to_str().map_err(|_| "Host is not ASCII".to_string())?),
        None => parts.uri.authority().map(|a| a.as_str()),
    };
    let Some(host) = host else {
        return Ok(());
    };
    let (name, port) = split_host(host).ok_or_else(|| format!("Host `{host}` is malformed"))?;
    if !host_is_ours(name, local.ip()) {
        return Err(format!(
            "Host `{name}` is not localhost, a loopback address or this admin's address {}",
            local.ip()
        ));
    }
    let Some(origin) = parts.headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "Origin is not ASCII".to_string())?;
    let same = origin
        .strip_prefix("http://")
        .and_then(split_host)
        .is_some_and(|(o_name, o_port)| {
            o_name.eq_ignore_ascii_case(name) && o_port.unwrap_or(80) == port.unwrap_or(80)
        });
    if same {
        Ok(())
    } else {
        Err(format!(
            "Origin `{origin}` is not this admin (http://{host})"
        ))
    }
}

/// `host[:port]` or `[v6][:port]` as (host without brackets, port).
fn split_host(s: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (name, rest) = v6.split_once(']')?;
            match rest {
                "" => (name, None),
                _ => (name, Some(rest.strip_prefix(':')?)),
            }
        }
        None => match s.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (s, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    if name.is_empty() || name.contains(['/', '@', '[', ']']) {
        return None;
    }
    Some((name, port))
}

fn host_is_ours(name: &str, local: IpAddr) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.to_canonical() == local.to_canonical(),
        Err(_) => false,
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn forbidden(why: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("forbidden: {why}\n"))));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// When a connection last moved bytes, and whether it sent a request yet.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    last_ms: AtomicU64,
    requested: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            requested: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An IO object that records when bytes last moved.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const LOCAL: &str = "127.0.0.1:9901";

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/healthcheck/fail");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).map(|r| r.into_parts().0).unwrap()
    }

    #[test]
    fn state_changes_need_a_local_host_and_a_same_origin() {
        let local: SocketAddr = LOCAL.parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        type Case<'a> = (&'a [(&'a str, &'a str)], SocketAddr, bool);
        let cases: &[Case] = &[
            // curl and scripts: no Origin.
            (&[("host", "127.0.0.1:9901")], local, true),
            (&[("host", "localhost:9901")], local, true),
            (&[("host", "[::1]:9901")], local, true),
            (&[("host", "127.0.0.2")], local, true),
            (&[], local, true),
            // Through a port-forward: another port in Host.
            (&[("host", "127.0.0.1:19901")], local, true),
            // The admin's own non-loopback address.
            (&[("host", "10.1.2.3:9901")], lan, true),
            (&[("host", "10.1.2.4:9901")], lan, false),
            // A browser on the admin's own origin.
            (
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://127.0.0.1:9901"),
                ],
                local,
                true,
            ),
            // Cross-site POST from a page elsewhere.
            (
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://evil.example"),
                ],
                local,
                false,
            ),
            (
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://127.0.0.1:8000"),
                ],
                local,
                false,
            ),
            (
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "https://127.0.0.1:9901"),
                ],
                local,
                false,
            ),
            (
                &[("host", "127.0.0.1:9901"), ("origin", "null")],
                local,
                false,
            ),
            // DNS rebinding: the page's name in Host.
            (&[("host", "evil.example:9901")], local, false),
            (&[("host", "evil.example")], local, false),
            (&[("host", "127.0.0.1.evil.example")], local, false),
            (&[("host", "")], local, false),
            (&[("host", "127.0.0.1:notaport")], local, false),
        ];
        for (headers, local, ok) in cases {
            let got = check_origin(&parts(Method::POST, headers), *local);
            assert_eq!(got.is_ok(), *ok, "{headers:?} on {local}: {got:?}");
        }
        // Reads are never checked.
        let evil = [("host", "evil.example"), ("origin", "http://evil.example")];
        assert!(guard(&parts(Method::GET, &evil), local).is_ok());
        assert!(guard(&parts(Method::HEAD, &evil), local).is_ok());
        assert!(guard(&parts(Method::POST, &evil), local).is_err());
        assert!(guard(&parts(Method::PUT, &evil), local).is_err());
    }

    /// A handler that answers its method and path.
    fn echo() -> Handler {
        Arc::new(|p: &Parts| {
            Response::new(Full::new(Bytes::from(format!("{} {}", p.method, p.uri))))
        })
    }

    /// Serves one in-memory connection; returns the client end and the
    /// server's outcome.
    fn connect() -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<(), ConnectionError>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let local: SocketAddr = LOCAL.parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let task = tokio::spawn(serve_connection(
            server,
            local,
            peer,
            echo(),
            Arc::new(Throttle::per_second()),
        ));
        (client, task)
    }

    async fn read_response(c: &mut DuplexStream) -> String {
        let mut buf = vec![0; 4096];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let (_client, task) = connect();
        let started = Instant::now();
        let outcome = task.await.unwrap();
        assert!(
            matches!(outcome, Err(ConnectionError::NoRequest)),
            "{outcome:?}"
        );
        assert_eq!(started.elapsed(), HEADER_READ_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowloris_is_closed_after_the_header_timeout() {
        let (mut client, task) = connect();
        let started = Instant::now();
        client.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
        // A header line a second, never the blank line that ends them.
        let trickle = tokio::spawn(async move {
            for i in 0.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client
                    .write_all(format!("x-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return i;
                }
            }
            unreachable!()
        });
        let outcome = task.await.unwrap();
        let waited = started.elapsed();
        // hyper's header timer and the first-request deadline expire at
        // the same instant here: either may close it.
        assert!(
            matches!(
                outcome,
                Err(ConnectionError::Http(_) | ConnectionError::NoRequest)
            ),
            "{outcome:?}"
        );
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited <= HEADER_READ_TIMEOUT + Duration::from_secs(1),
            "closed after {waited:?}"
        );
        let lines = trickle.await.unwrap();
        assert!(lines <= 11, "{lines} header lines were taken");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (mut client, task) = connect();
        client
            .write_all(b"GET /ready HTTP/1.1\r\nhost: 127.0.0.1:9901\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let answered = Instant::now();
        let outcome = task.await.unwrap();
        // hyper's header timer, started when it waits for the next request.
        assert!(
            matches!(outcome, Err(ConnectionError::Http(_))),
            "{outcome:?}"
        );
        assert_eq!(answered.elapsed(), HEADER_READ_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowloris_after_a_first_request_is_closed_too() {
        let (mut client, task) = connect();
        client
            .write_all(b"GET /ready HTTP/1.1\r\nhost: 127.0.0.1:9901\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let started = Instant::now();
        client.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
        let trickle = tokio::spawn(async move {
            for i in 0.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client
                    .write_all(format!("x-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let outcome = task.await.unwrap();
        assert!(
            matches!(outcome, Err(ConnectionError::Http(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() <= HEADER_READ_TIMEOUT);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_connection_that_never_sends_a_request_is_closed() {
        let (mut client, task) = connect();
        // Half the HTTP/2 preface, then nothing.
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let outcome = task.await.unwrap();
        assert!(
            matches!(outcome, Err(ConnectionError::NoRequest)),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_h2_connection_is_closed() {
        let (client, task) = connect();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        let driver = tokio::spawn(conn);
        let req = Request::get("http://127.0.0.1:9901/ready")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let answered = Instant::now();
        let outcome = task.await.unwrap();
        assert!(matches!(outcome, Err(ConnectionError::Idle)), "{outcome:?}");
        let waited = answered.elapsed();
        assert!(
            waited >= IDLE_TIMEOUT && waited <= IDLE_TIMEOUT + Duration::from_secs(1),
            "closed after {waited:?}"
        );
        driver.abort();
    }

    #[tokio::test]
    async fn large_answers_go_through_over_h2c() {
        use http_body_util::BodyExt as _;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let big: Handler =
            Arc::new(|_: &Parts| Response::new(Full::new(Bytes::from(vec![b'x'; 4 << 20]))));
        let local: SocketAddr = LOCAL.parse().unwrap();
        tokio::spawn(serve_connection(
            server,
            local,
            local,
            big,
            Arc::new(Throttle::per_second()),
        ));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://127.0.0.1:9901/stats")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 4 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_headers_are_refused() {
        let (mut client, task) = connect();
        let big = "a".repeat(MAX_HEADER_BYTES);
        let req = format!("GET /ready HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {big}\r\n\r\n");
        // The server stops reading once its buffer is full; a write of the
        // rest may fail as it closes.
        let _ = client.write_all(req.as_bytes()).await;
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        let _ = task.await.unwrap();
        let (mut client, task) = connect();
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        let req = format!("GET /ready HTTP/1.1\r\nhost: 127.0.0.1\r\n{many}\r\n");
        let _ = client.write_all(req.as_bytes()).await;
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        let _ = task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cross_site_post_is_refused_before_the_handler() {
        let (mut client, _task) = connect();
        client
            .write_all(
                b"POST /healthcheck/fail HTTP/1.1\r\nhost: 127.0.0.1:9901\r\norigin: http://evil.example\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
        assert!(resp.contains("evil.example"), "{resp}");
        client
            .write_all(b"POST /healthcheck/fail HTTP/1.1\r\nhost: 127.0.0.1:9901\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("POST /healthcheck/fail"), "{resp}");
    }
}
