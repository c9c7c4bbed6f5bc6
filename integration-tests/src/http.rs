//! A tiny HTTP/1.1 client for tests: one new connection per request, so every
//! request is independent (no pooling hides which upstream answered).
//!
//! Owns only the client side; servers live in `backends`. Used for Envoy's
//! admin API, pylon-xds's admin API, and traffic through Envoy listeners.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Upper bound on one request, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    /// The value of a header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET http://{addr}{path}`.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request(addr, Method::GET, path).await
}

/// `POST http://{addr}{path}` with an empty body.
pub async fn post(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request(addr, Method::POST, path).await
}

/// One request on a fresh connection, bounded by [`REQUEST_TIMEOUT`].
pub async fn request(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<Response> {
    request_with(addr, method, path, &[]).await
}

/// [`request`] with extra `headers`; a `host` among them replaces the
/// default (`addr`).
pub async fn request_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(addr, method.clone(), path, headers),
    )
    .await
    .with_context(|| format!("{method} http://{addr}{path}: timed out after {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("{method} http://{addr}{path}"))
}

async fn request_inner(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(hyper::header::HOST, addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
