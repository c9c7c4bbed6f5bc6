//! HTTP/1.1 downstream connections.
//!
//! Owns one HTTP/1.1 connection's life: reading request heads (found with
//! [`crate::http1::find_head_end`], parsed once by httparse, borrowing the
//! read buffer), the head size and count limits (431), the header and idle
//! timers on one lazily re-armed tokio timer (a keep-alive connection
//! serving requests back to back touches it about once per header timeout,
//! not per request), `100 Continue`, each request's body read straight from
//! the connection (`H1Source`), the response written from the upstream's
//! bytes (its head copied once, its body coalesced into one write when it
//! is small, written straight from the upstream buffer when it is not,
//! re-chunked when the upstream chunked it), keep-alive and pipelining,
//! draining, and closing without losing a reply to a reset.
//!
//! A connection whose first bytes are the HTTP/2 preface is handed back to
//! the caller for `h2`.
//!
//! Does not own routing (`router`), attempts and retries (`exchange`) or
//! which headers cross (`headers`).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{self, find_head_end, BodyDecoder, Framing, Step};
use crate::upstream::client::ResponseHead;
use crate::upstream::replay::{BodyError, BodySource, Chunk, Replay};

use super::exchange::{
    exchange, poll_piece, Activity, Answered, Exchange, Expired, LazySleep, Outcome, Piece, Timers,
};
use super::headers::{self, BadRequest};
use super::router::{self, Forward};
use super::{push_date, HttpCtx, HttpStats, LocalReply, Signal, Signals};

/// The start of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Envoy's local reply to a request whose headers did not arrive in time.
const HEADER_TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// When nothing is due, the connection timer still wakes this often.
const FAR: Duration = Duration::from_secs(86_400);

/// A response body up to this size goes out in the same write as its head.
const COALESCE: usize = 16 * 1024;

/// Most header slots kept on the stack; more (a larger `max_headers_count`)
/// are allocated per request.
const STACK_HEADERS: usize = 100;

/// How long a connection closed with unread input keeps reading (and
/// discarding) it, so that the reply is not lost to a TCP reset.
const LINGER: Duration = Duration::from_secs(1);

/// At most this much unread input is discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// How an HTTP/1.1 connection ended.
pub enum End {
    /// Closed.
    Closed,
    /// The client spoke HTTP/2 with prior knowledge: the socket, and what
    /// was read from it.
    H2(TcpStream, BytesMut),
}

enum Ran {
    Closed,
    H2,
}

enum Head {
    Complete(usize),
    H2,
    Closed,
}

/// What follows a request.
enum Next {
    KeepAlive,
    Close,
    /// Close, reading out what the client still sends first.
    Linger,
}

/// Which connection timeout expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnTimeout {
    /// The head of a request did not arrive in time.
    Header,
    /// No request for `idle_timeout`.
    Idle,
}

struct Conn<'c> {
    ctx: &'c HttpCtx,
    stream: TcpStream,
    /// Bytes read from the client and not yet consumed.
    rbuf: BytesMut,
    /// The response being written.
    wbuf: Vec<u8>,
    /// The upstream request head.
    up_head: Vec<u8>,
    /// The connection's timer, lent to each request for its own timers.
    timer: Option<LazySleep>,
    /// When the connection last had no request (its start at first).
    idle_since: Instant,
    /// When the first byte of the next request's head arrived.
    head_started: Option<Instant>,
    /// How much of `rbuf` was searched for the head's end.
    searched: usize,
    /// No request yet: the first bytes may be the HTTP/2 preface.
    sniff: bool,
}

/// Serves one HTTP/1.1 connection until it closes, `close` fires, or its
/// first bytes turn out to be HTTP/2's.
pub(super) async fn serve(stream: TcpStream, ctx: &HttpCtx, signals: &mut Signals<'_>) -> End {
    let now = Instant::now();
    let mut c = Conn {
        ctx,
        stream,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: Vec::new(),
        up_head: Vec::new(),
        // Early enough for the first head's timer; re-armed as it fires.
        timer: Some(LazySleep::new(now + ctx.header_timeout)),
        idle_since: now,
        head_started: None,
        searched: 0,
        sniff: true,
    };
    let draining = AtomicBool::new(false);
    let ran = {
        let run = c.run(&draining);
        let mut run = pin!(run);
        std::future::poll_fn(|cx| {
            match signals.poll_signal(cx) {
                Poll::Ready(Signal::Close) => return Poll::Ready(Ran::Closed),
                Poll::Ready(Signal::Drain) => draining.store(true, Ordering::Relaxed),
                Poll::Pending => {}
            }
            run.as_mut().poll(cx)
        })
        .await
    };
    match ran {
        Ran::H2 => End::H2(c.stream, c.rbuf),
        Ran::Closed => End::Closed,
    }
}

/// The deadline the connection's state asks for while it has no request.
fn due(
    ctx: &HttpCtx,
    head_started: Option<Instant>,
    idle_since: Instant,
) -> Option<(Instant, ConnTimeout)> {
    match head_started {
        Some(h) => Some((h + ctx.header_timeout, ConnTimeout::Header)),
        None => ctx
            .limits
            .idle_timeout
            .map(|t| (idle_since + t, ConnTimeout::Idle)),
    }
}

/// Holds `downstream_rq_active` for one request.
struct ActiveRequest<'a>(&'a HttpStats);

impl<'a> ActiveRequest<'a> {
    fn new(stats: &'a HttpStats) -> Self {
        stats.downstream_rq_active.inc();
        ActiveRequest(stats)
    }
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.downstream_rq_active.dec();
    }
}

/// What the head of a request decided.
struct Prepared {
    fwd: Forward,
    /// The request body's framing.
    framing: Framing,
    http10: bool,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a request is answered without going upstream.
enum Refusal {
    /// The codec could not read it: not counted as a request of its own.
    Codec(u16),
    /// A local reply to a request that was read.
    Local {
        reply: LocalReply,
        framing: Framing,
        keep_alive: bool,
        head_request: bool,
        /// A protocol error: the connection closes.
        close: bool,
    },
}

impl Conn<'_> {
    async fn run(&mut self, draining: &AtomicBool) -> Ran {
        loop {
            let end = match std::future::poll_fn(|cx| self.poll_head(cx, draining)).await {
                Head::Complete(end) => end,
                Head::H2 => return Ran::H2,
                Head::Closed => return Ran::Closed,
            };
            match self.request(end, draining).await {
                Next::KeepAlive => {}
                Next::Close => return Ran::Closed,
                Next::Linger => {
                    self.linger().await;
                    return Ran::Closed;
                }
            }
        }
    }

    /// Waits for a complete request head (its length), or the end.
    fn poll_head(&mut self, cx: &mut Context<'_>, draining: &AtomicBool) -> Poll<Head> {
        loop {
            if !self.rbuf.is_empty() {
                if self.head_started.is_none() {
                    let now = Instant::now();
                    self.head_started = Some(now);
                    if let Some(t) = &mut self.timer {
                        t.arm_by(now + self.ctx.header_timeout);
                    }
                }
                if self.sniff {
                    let n = self.rbuf.len().min(H2_PREFACE.len());
                    if self.rbuf.get(..n) != H2_PREFACE.get(..n) {
                        self.sniff = false;
                    } else if n == H2_PREFACE.len() {
                        return Poll::Ready(Head::H2);
                    }
                }
                if !self.sniff {
                    let found = find_head_end(&self.rbuf, self.searched);
                    if let Some(end) = found.filter(|&e| e <= self.ctx.head_limit) {
                        self.searched = 0;
                        return Poll::Ready(Head::Complete(end));
                    }
                    self.searched = self.rbuf.len();
                    if found.is_some() || self.rbuf.len() > self.ctx.head_limit {
                        self.codec_reply(431);
                        return Poll::Ready(Head::Closed);
                    }
                }
            } else if draining.load(Ordering::Relaxed) {
                // Idle while draining: close now.
                return Poll::Ready(Head::Closed);
            }
            let mut timed_out = None;
            if let Some(t) = &mut self.timer {
                if t.poll_fire(cx).is_ready() {
                    let now = Instant::now();
                    match due(self.ctx, self.head_started, self.idle_since) {
                        Some((at, what)) if at <= now => timed_out = Some(what),
                        Some((at, _)) => t.set(at),
                        None => t.set(now + FAR),
                    }
                    if timed_out.is_none() {
                        continue;
                    }
                }
            }
            if let Some(what) = timed_out {
                self.on_timeout(what);
                return Poll::Ready(Head::Closed);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.rbuf
            )) {
                Ok(0) | Err(_) => return Poll::Ready(Head::Closed),
                Ok(_) => {}
            }
        }
    }

    fn on_timeout(&mut self, what: ConnTimeout) {
        let stats = &self.ctx.stats;
        match what {
            ConnTimeout::Header => {
                stats.downstream_rq_header_timeout.inc();
                stats.count_codec_reply();
                // Best effort: the reply is small enough for the socket buffer.
                let _ = self.stream.try_write(HEADER_TIMEOUT_REPLY);
                let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
            }
            ConnTimeout::Idle => stats.downstream_cx_idle_timeout.inc(),
        }
    }

    /// Answers a request the codec refused (431, 400) and counts it; the
    /// connection closes.
    fn codec_reply(&mut self, status: u16) {
        let stats = &self.ctx.stats;
        stats.downstream_cx_protocol_error.inc();
        stats.count_codec_reply();
        self.wbuf.clear();
        http1::status_line(&mut self.wbuf, status);
        self.wbuf.extend_from_slice(b"content-length: 0\r\n");
        push_date(&mut self.wbuf);
        self.wbuf.extend_from_slice(b"connection: close\r\n\r\n");
        // Best effort, as small as the 408.
        let _ = self.stream.try_write(&self.wbuf);
    }

    /// Reads the head at `rbuf[..end]` and decides where the request goes.
    fn prepare(&mut self, end: usize) -> Result<Prepared, Refusal> {
        let ctx = self.ctx;
        let max = ctx.limits.max_headers_count as usize;
        let head = self.rbuf.get(..end).unwrap_or_default();
        let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
            [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
        let slots = if max <= STACK_HEADERS {
            stack.get_mut(..max).unwrap_or_default()
        } else {
            heap.resize_with(max, MaybeUninit::uninit);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, slots) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Refusal::Codec(431)),
            _ => return Err(Refusal::Codec(400)),
        }
        let http10 = req.version == Some(0);
        let (method, target) = (req.method.unwrap_or("GET"), req.path.unwrap_or("/"));
        let headers: &[httparse::Header<'_>] = req.headers;
        let info = match headers::scan_request(headers) {
            Ok(i) => i,
            Err(BadRequest::ContentLength | BadRequest::TransferEncoding) => {
                return Err(Refusal::Codec(400))
            }
            Err(e) => {
                tracing::debug!(error = ?e, "request refused: invalid Connection header");
                ctx.stats.downstream_cx_protocol_error.inc();
                // A protocol error ends the connection, as in Envoy's codec.
                return Err(Refusal::Local {
                    reply: LocalReply::new(400, ""),
                    framing: Framing::Empty,
                    keep_alive: false,
                    head_request: method == "HEAD",
                    close: true,
                });
            }
        };
        let framing = match (info.transfer_encoding, info.content_length) {
            (Some(true), None) if !http10 => Framing::Chunked,
            (Some(_), _) => return Err(Refusal::Codec(400)),
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Empty,
        };
        let keep_alive = if http10 { info.keep_alive } else { !info.close };
        let request = router::Request {
            method,
            target,
            authority: None,
            headers,
        };
        match router::prepare(ctx, &request, &info, framing, &mut self.up_head) {
            Ok(fwd) => Ok(Prepared {
                fwd,
                framing,
                http10,
                keep_alive,
                expect_continue: info.expect_continue,
            }),
            Err(reply) => Err(Refusal::Local {
                reply,
                framing,
                keep_alive,
                head_request: method == "HEAD",
                close: false,
            }),
        }
    }

    /// Serves the request whose head is `rbuf[..end]`.
    async fn request(&mut self, end: usize, draining: &AtomicBool) -> Next {
        let ctx = self.ctx;
        let stats = &*ctx.stats;
        self.head_started = None;
        let prepared = self.prepare(end);
        self.rbuf.advance(end);
        if let Err(Refusal::Codec(status)) = prepared {
            self.codec_reply(status);
            return Next::Linger;
        }
        stats.downstream_rq_total.inc();
        stats.downstream_rq_http1_total.inc();
        let _active = ActiveRequest::new(stats);
        let next = match prepared {
            Err(Refusal::Local {
                reply,
                framing,
                keep_alive,
                head_request,
                close,
            }) => {
                stats.count_status(reply.status);
                // The body was not read: the connection cannot carry another request.
                let unread = framing != Framing::Empty;
                let close = close || unread || !keep_alive || draining.load(Ordering::Relaxed);
                write_local(&mut self.wbuf, &reply, head_request, close);
                if self.write_out().await.is_err() {
                    Next::Close
                } else if unread {
                    Next::Linger
                } else if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Err(Refusal::Codec(_)) => Next::Close,
            Ok(p) => self.forward(p, draining).await,
        };
        self.idle_since = Instant::now();
        next
    }

    /// Writes `wbuf` to the client, within the stream idle timeout.
    async fn write_out(&mut self) -> io::Result<()> {
        let limit = self.ctx.limits.stream_idle_timeout.unwrap_or(FAR);
        match tokio::time::timeout(limit, self.stream.write_all(&self.wbuf)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends the request upstream and relays the answer.
    async fn forward(&mut self, p: Prepared, draining: &AtomicBool) -> Next {
        let ctx = self.ctx;
        let stats = &*ctx.stats;
        let now = Instant::now();
        if p.expect_continue && p.framing != Framing::Empty && self.rbuf.is_empty() {
            // The client waits for this before sending its body.
            if self
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Next::Close;
            }
        }
        let idle = ctx.limits.stream_idle_timeout;
        let sleep = self
            .timer
            .take()
            .unwrap_or_else(|| LazySleep::new(now + FAR));
        let mut timers = Timers::start(sleep, now, p.fwd.timeout, idle);
        let mut act = Activity::new(now, idle.is_some(), p.framing == Framing::Empty);
        let ended = p.framing == Framing::Empty;
        let (rd, mut wr) = self.stream.split();
        let source = H1Source {
            rd,
            buf: &mut self.rbuf,
            dec: BodyDecoder::new(p.framing),
        };
        let mut body = match p.fwd.retry {
            Some(_) => Replay::keeping(source, ended, p.fwd.retry_buffer_limit),
            None => Replay::once(source, ended),
        };
        let wbuf = &mut self.wbuf;
        let (http10, keep) = (p.http10, p.keep_alive);
        let outcome = {
            let mut x = Exchange {
                ctx,
                fwd: &p.fwd,
                head: &self.up_head,
                framing: p.framing,
                body: &mut body,
                timers: &mut timers,
                act: &mut act,
            };
            exchange(&mut x, |head, _body_done| {
                // A request body still arriving does not close the
                // connection up front: if it is still unread once the
                // response is over, the connection closes then (`Linger`).
                let keep = keep && !draining.load(Ordering::Relaxed);
                begin_response(wbuf, head, http10, keep)
            })
            .await
        };
        let next = match outcome {
            Outcome::Abandoned => Next::Close,
            Outcome::Local(reply) => {
                stats.count_status(reply.status);
                let unread = !body.ended();
                let close = unread || !keep || draining.load(Ordering::Relaxed);
                write_local(wbuf, &reply, p.fwd.head_request, close);
                let limit = idle.unwrap_or(FAR);
                match tokio::time::timeout(limit, wr.write_all(wbuf)).await {
                    Ok(Ok(())) if unread => Next::Linger,
                    Ok(Ok(())) if close => Next::Close,
                    Ok(Ok(())) => Next::KeepAlive,
                    _ => Next::Close,
                }
            }
            Outcome::Answered(mut ans) => {
                stats.count_status(ans.status);
                let plan = ans.built;
                let relayed = relay(
                    &mut ans,
                    &mut wr,
                    wbuf,
                    &self.up_head,
                    &mut body,
                    &mut timers,
                    &mut act,
                    stats,
                )
                .await;
                match relayed {
                    Ok(()) => {
                        let unread = !body.ended();
                        ans.finish();
                        if unread {
                            Next::Linger
                        } else if plan.close || draining.load(Ordering::Relaxed) {
                            Next::Close
                        } else {
                            Next::KeepAlive
                        }
                    }
                    // The response could not be completed: only closing
                    // tells the client.
                    Err(()) => Next::Close,
                }
            }
        };
        drop(body);
        self.timer = Some(timers.into_sleep());
        next
    }

    /// Stops writing, then reads and discards what the client still sends
    /// for a while, so that closing with unread input (which makes the
    /// kernel send a reset) does not destroy the reply in flight.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut discarded = 0;
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while discarded < LINGER_BYTES {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => discarded += n,
                }
            }
        })
        .await;
    }
}

/// How the response goes to the client.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Re-framed with the chunked coding.
    chunked: bool,
    /// The connection closes after it.
    close: bool,
}

/// Writes the client's response head for the upstream's `head` into `wbuf`.
fn begin_response(wbuf: &mut Vec<u8>, head: &ResponseHead<'_>, http10: bool, keep: bool) -> Plan {
    // A chunked or close-delimited body is re-chunked for HTTP/1.1 clients
    // (the connection stays usable); an HTTP/1.0 client reads until close.
    let reframed = matches!(head.framing, Framing::Chunked | Framing::Close);
    let chunked = reframed && !http10;
    let close = !keep || (reframed && http10);
    wbuf.clear();
    http1::status_line(wbuf, head.status);
    let info = headers::write_response_headers(wbuf, head.raw, head.headers, reframed);
    if !info.has_date {
        push_date(wbuf);
    }
    if chunked {
        wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        wbuf.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        wbuf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    Plan { chunked, close }
}

/// Writes Envoy's local reply into `wbuf`.
fn write_local(wbuf: &mut Vec<u8>, r: &LocalReply, head_request: bool, close: bool) {
    wbuf.clear();
    http1::status_line(wbuf, r.status);
    http1::header_line(wbuf, b"content-length", r.body.len().to_string().as_bytes());
    if !r.body.is_empty() {
        wbuf.extend_from_slice(b"content-type: text/plain\r\n");
    }
    if r.overloaded {
        wbuf.extend_from_slice(b"x-envoy-overloaded: true\r\n");
    }
    push_date(wbuf);
    if close {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    if !head_request {
        wbuf.extend_from_slice(r.body.as_bytes());
    }
}

/// Relays the response body (the head is in `wbuf`) to the client while the
/// request, if still going, is sent on. `Err` when it cannot be completed
/// (the host broke off, a timeout, the client went away).
#[allow(clippy::too_many_arguments)]
async fn relay<S: BodySource>(
    ans: &mut Answered<Plan>,
    wr: &mut WriteHalf<'_>,
    wbuf: &mut Vec<u8>,
    head: &[u8],
    body: &mut Replay<S>,
    timers: &mut Timers,
    act: &mut Activity,
    stats: &HttpStats,
) -> Result<(), ()> {
    let chunked = ans.built.chunked;
    let mut off = 0;
    let mut ended = false;
    std::future::poll_fn(|cx| {
        loop {
            if ans.poll_sending(cx, head, body, act).is_err() {
                return Poll::Ready(Err(()));
            }
            // What is buffered goes out when the body ended or it is large.
            if off < wbuf.len() && (ended || wbuf.len() >= COALESCE) {
                match Pin::new(&mut *wr).poll_write(cx, wbuf.get(off..).unwrap_or_default()) {
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Pending => break,
                }
            }
            if off > 0 && off >= wbuf.len() {
                wbuf.clear();
                off = 0;
            }
            if ended {
                if wbuf.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match poll_piece(&mut ans.conn, &mut ans.decoder, cx) {
                Poll::Ready(Ok(Piece::Data(n))) => {
                    act.touch();
                    if chunked {
                        http1::chunk_header(wbuf, n);
                        wbuf.extend_from_slice(ans.conn.buf.get(..n).unwrap_or_default());
                        wbuf.extend_from_slice(b"\r\n");
                        ans.conn.buf.advance(n);
                        ans.decoder.consumed(n);
                    } else if wbuf.len() + n <= COALESCE {
                        wbuf.extend_from_slice(ans.conn.buf.get(..n).unwrap_or_default());
                        ans.conn.buf.advance(n);
                        ans.decoder.consumed(n);
                    } else if !wbuf.is_empty() {
                        // Large: what is buffered goes first.
                        match Pin::new(&mut *wr).poll_write(cx, wbuf.get(off..).unwrap_or_default())
                        {
                            Poll::Ready(Ok(n)) => off += n,
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                            Poll::Pending => break,
                        }
                    } else {
                        // Straight from the upstream's bytes.
                        let data = ans.conn.buf.get(..n).unwrap_or_default();
                        match Pin::new(&mut *wr).poll_write(cx, data) {
                            Poll::Ready(Ok(m)) => {
                                ans.conn.buf.advance(m);
                                ans.decoder.consumed(m);
                            }
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                            Poll::Pending => break,
                        }
                    }
                }
                Poll::Ready(Ok(Piece::End(trailers))) => {
                    if chunked {
                        http1::last_chunk(wbuf, trailers.as_deref().unwrap_or_default());
                    }
                    ended = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "upstream response broke off");
                    return Poll::Ready(Err(()));
                }
                Poll::Pending => {
                    // Nothing more at hand: what is buffered goes out now.
                    if off < wbuf.len() {
                        match Pin::new(&mut *wr).poll_write(cx, wbuf.get(off..).unwrap_or_default())
                        {
                            Poll::Ready(Ok(n)) => {
                                off += n;
                                continue;
                            }
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                            Poll::Pending => {}
                        }
                    }
                    if body.ended() && !ans.sending && body.poll_gone(cx).is_ready() {
                        return Poll::Ready(Err(()));
                    }
                    break;
                }
            }
        }
        match timers.poll_expired(cx, act) {
            Poll::Ready(e) => {
                if let Expired::Idle(_) = e {
                    stats.downstream_rq_idle_timeout.inc();
                }
                Poll::Ready(Err(()))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A request body read straight from the connection.
struct H1Source<'s, 'b> {
    rd: ReadHalf<'s>,
    buf: &'b mut BytesMut,
    dec: BodyDecoder,
}

impl BodySource for H1Source<'_, '_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, BodyError>>> {
        loop {
            match self.dec.step(self.buf) {
                Ok(Step::Data { skip, len }) => {
                    self.buf.advance(skip);
                    let data = self.buf.split_to(len).freeze();
                    self.dec.consumed(len);
                    return Poll::Ready(Some(Ok(Chunk::Data(data))));
                }
                Ok(Step::End { skip, trailers }) => {
                    let t = trailers
                        .and_then(|(s, e)| self.buf.get(s..e))
                        .map(bytes::Bytes::copy_from_slice);
                    self.buf.advance(skip);
                    return Poll::Ready(t.map(|t| Ok(Chunk::Trailers(t))));
                }
                Ok(Step::More { skip }) => {
                    self.buf.advance(skip);
                    let want = self
                        .dec
                        .remaining()
                        .map_or(8192, |n| usize::try_from(n).unwrap_or(usize::MAX))
                        .clamp(4096, 64 * 1024);
                    if self.buf.capacity() - self.buf.len() < want {
                        self.buf.reserve(want);
                    }
                    match ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut self.rd),
                        cx,
                        self.buf
                    )) {
                        Ok(0) => {
                            if let Err(e) = self.dec.eof() {
                                return Poll::Ready(Some(Err(BodyError(Box::new(e)))));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(BodyError(Box::new(e))))),
                    }
                }
                Err(e) => return Poll::Ready(Some(Err(BodyError(Box::new(e))))),
            }
        }
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // What arrives meanwhile is the next request (pipelined): kept, up
        // to a bound beyond which the client is no longer watched.
        if self.buf.len() >= 64 * 1024 {
            return Poll::Pending;
        }
        loop {
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.rd),
                cx,
                self.buf
            )) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) if self.buf.len() >= 64 * 1024 => return Poll::Pending,
                Ok(_) => {}
            }
        }
    }
}
