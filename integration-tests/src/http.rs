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
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

/// What came back on a raw connection: the status code of the first
/// response (`None` if the connection closed without one) and everything
/// read until the peer closed.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: Option<u16>,
    pub text: String,
}

impl RawResponse {
    /// The value of a header of the first response (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// The body of the first response (what follows its head).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Writes `request` as is on a fresh connection and reads until the peer
/// closes (send `connection: close`), within [`REQUEST_TIMEOUT`]: for
/// requests a regular client would not send.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<RawResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    read_raw(&mut s).await
}

/// Reads from `s` until the peer closes (or resets), within [`REQUEST_TIMEOUT`].
pub async fn read_raw(s: &mut TcpStream) -> anyhow::Result<RawResponse> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.context("the peer did not close the connection")?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Ok(RawResponse { status, text })
}
