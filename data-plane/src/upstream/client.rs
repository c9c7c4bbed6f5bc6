//! The HTTP/1.1 client of the request path: one upstream connection, driven
//! by the task of the request that holds it.
//!
//! Owns [`UpstreamConn`] (the socket, the bytes read from the host and not
//! yet consumed, and the connection's place under `max_connections`) and
//! the reading of response heads ([`ResponseHead`], parsed once by httparse
//! when complete, borrowing the connection's buffer: the headers are never
//! copied into a map). There is no task per connection and no channel: the
//! request that took the connection from its pool writes the request, reads
//! the response and gives the connection back (`pool`), so a request costs
//! the polls of its own task only. An idle connection is watched by its
//! pool, not by a task (see `pool`).
//!
//! Does not own pools, circuit breakers other than the connection's place,
//! routing or timeouts.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Weak;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::http1::{self, find_head_end, Framing};
use crate::upstream::connect::UpstreamCx;

/// Largest response head accepted (Envoy's default `max_response_headers_kb`).
pub const MAX_RESPONSE_HEAD: usize = 60 * 1024;

/// Most headers a response head may carry (Envoy's default `max_headers_count`).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// What a connection's buffer grows to at least before a read.
const READ_CHUNK: usize = 8 * 1024;

/// Storage for the headers of one parsed head.
pub type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_RESPONSE_HEADERS];

/// Requests of one host waiting for a connection, and the wake-up a
/// connection gives them when it goes back to its pool or closes (a place
/// under `max_connections` may then be free).
#[derive(Debug, Default)]
pub struct Waiters {
    /// Requests waiting (pending).
    pub waiting: AtomicUsize,
    /// Wakes one of them.
    pub available: Notify,
}

impl Waiters {
    /// Wakes one waiting request, if any waits (a wake-up with nobody
    /// waiting costs one atomic load).
    #[inline]
    pub fn wake_one(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.available.notify_one();
        }
    }
}

/// Why an exchange failed after its connection was had.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The host closed the connection before the response ended.
    #[error("connection closed by the host")]
    Closed,
    /// The host's bytes are not an HTTP/1.1 response we can relay.
    #[error("invalid response: {0}")]
    Protocol(&'static str),
}

/// One upstream HTTP/1.1 connection.
#[derive(Debug)]
pub struct UpstreamConn {
    stream: TcpStream,
    /// Bytes read from the host and not yet consumed.
    pub buf: BytesMut,
    /// The connection's place under `max_connections`; given back (before
    /// waking a waiter) when the connection closes.
    cx: Option<UpstreamCx>,
    waiters: Weak<Waiters>,
    /// Whether the connection already carried a request.
    reused: bool,
}

impl UpstreamConn {
    /// A fresh connection holding its place `cx`; `waiters` are woken when it closes.
    pub fn new(stream: TcpStream, cx: UpstreamCx, waiters: Weak<Waiters>) -> UpstreamConn {
        UpstreamConn {
            stream,
            buf: BytesMut::new(),
            cx: Some(cx),
            waiters,
            reused: false,
        }
    }

    /// Whether the connection already carried a request (it came from a pool).
    #[inline]
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Marks the connection as having carried a request.
    #[inline]
    pub fn set_reused(&mut self) {
        self.reused = true;
    }

    /// The socket.
    #[inline]
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the host sent into [`UpstreamConn::buf`]; `Ok(0)` at EOF.
    #[inline]
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Grows the buffer so that reads take up to `n` bytes at once (large bodies).
    pub fn reserve(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() < n {
            self.buf.reserve(n);
        }
    }

    /// Writes some of `data` to the host.
    #[inline]
    pub fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    /// Writes some of `bufs` to the host in one call.
    #[inline]
    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    /// Reads until [`UpstreamConn::buf`] holds a complete response head and
    /// returns its length. `searched` is how much of the buffer was already
    /// searched for the head's end (start at 0).
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        searched: &mut usize,
    ) -> Poll<Result<usize, ClientError>> {
        loop {
            if let Some(end) = find_head_end(&self.buf, *searched) {
                return Poll::Ready(Ok(end));
            }
            *searched = self.buf.len();
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return Poll::Ready(Err(ClientError::Protocol("response head too large")));
            }
            match std::task::ready!(self.poll_read(cx)) {
                Ok(0) => return Poll::Ready(Err(ClientError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ClientError::Io(e))),
            }
        }
    }

    /// Whether an idle connection is still usable: the host has neither
    /// closed it nor sent anything unasked. Costs no system call unless the
    /// socket turned readable.
    pub fn idle_alive(&self) -> bool {
        self.watch(Waker::noop())
    }

    /// Checks an idle connection as [`UpstreamConn::idle_alive`] does and,
    /// while it is usable, has `waker` woken when the socket turns readable
    /// (the host closing it, usually).
    pub fn watch(&self, waker: &Waker) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(waker);
        loop {
            match self.stream.poll_read_ready(&mut cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => {
                    let mut byte = [0u8; 1];
                    match self.stream.try_read(&mut byte) {
                        // Closed, or bytes nobody asked for: unusable.
                        Ok(_) => return false,
                        // Spurious readiness, now cleared: look again (this
                        // registers the waker).
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        // The place first, so that the request woken finds it free.
        drop(self.cx.take());
        if let Some(w) = self.waiters.upgrade() {
            w.wake_one();
        }
    }
}

/// A parsed response head, borrowing the connection's buffer.
#[derive(Debug)]
pub struct ResponseHead<'b> {
    /// The status code.
    pub status: u16,
    /// The headers, as the host wrote them.
    pub headers: &'b [httparse::Header<'b>],
    /// The head they were parsed from.
    pub raw: &'b [u8],
    /// Where the body ends.
    pub framing: Framing,
    /// Whether the connection may carry another request afterwards.
    pub reusable: bool,
    /// Whether the host marked the answer `x-envoy-overloaded`.
    pub overloaded: bool,
}

/// Parses the response head `buf` (complete: see [`UpstreamConn::poll_head`])
/// of a request that was a `HEAD` when `head_request`.
pub fn parse_response<'b>(
    buf: &'b [u8],
    head_request: bool,
    slots: &'b mut HeaderSlots<'b>,
) -> Result<ResponseHead<'b>, ClientError> {
    let mut r = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut r, buf, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ClientError::Protocol("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::Protocol("too many headers"))
        }
        Err(_) => return Err(ClientError::Protocol("malformed head")),
    }
    let status = r.code.unwrap_or(0);
    let http11 = r.version == Some(1);
    let headers: &'b [httparse::Header<'b>] = r.headers;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut overloaded = false;
    for h in headers {
        let name = h.name.as_bytes();
        match name.len() {
            10 if http1::eq_lower(name, b"connection") => {
                let c = http1::connection_value(h.value);
                close |= c.close;
                keep_alive |= c.keep_alive;
            }
            14 if http1::eq_lower(name, b"content-length") => {
                let n = http1::parse_content_length(h.value)
                    .ok_or(ClientError::Protocol("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ClientError::Protocol("conflicting content-length"));
                }
                length = Some(n);
            }
            17 if http1::eq_lower(name, b"transfer-encoding") => {
                chunked = Some(http1::final_chunked(h.value));
            }
            18 if http1::eq_lower(name, b"x-envoy-overloaded") => overloaded = true,
            _ => {}
        }
    }
    if status == 101 {
        // Nothing was asked to upgrade (Upgrade is never forwarded).
        return Err(ClientError::Protocol("unexpected 101 Switching Protocols"));
    }
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            // Another final coding: the body runs until the connection closes.
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let reusable = framing != Framing::Close && if http11 { !close } else { keep_alive };
    Ok(ResponseHead {
        status,
        headers,
        raw: buf,
        framing,
        reusable,
        overloaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> (u16, Framing, bool, bool) {
        let mut slots: HeaderSlots<'_> = [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
        let h = parse_response(raw, head, &mut slots).unwrap();
        (h.status, h.framing, h.reusable, h.overloaded)
    }

    #[test]
    fn response_framing_and_reuse() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false),
            (200, Framing::Length(2), true, false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true),
            (200, Framing::Empty, true, false)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            (200, Framing::Chunked, true, false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 503 x\r\nconnection: close\r\nx-envoy-overloaded: true\r\ncontent-length: 0\r\n\r\n", false),
            (503, Framing::Length(0), false, true)
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (200, Framing::Length(1), false, false)
        );
        assert_eq!(
            parse(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (200, Framing::Length(1), true, false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (200, Framing::Close, false, false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (204, Framing::Empty, true, false)
        );
        let mut slots: HeaderSlots<'_> = [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
        let bad = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(parse_response(bad, false, &mut slots).is_err());
    }
}
