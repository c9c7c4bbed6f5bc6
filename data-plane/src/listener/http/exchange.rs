//! One request's exchanges with its cluster: attempts, retries, timers.
//!
//! Owns, for HTTP/1.1 and HTTP/2 clients alike: picking a host, taking a
//! connection within the circuit breakers (`upstream::pool`), writing the
//! request head and body ([`Sender`], which keeps sending while the answer
//! streams back), reading the response head, the retry decisions
//! (`listener::retry`) with the body replayed from what was kept
//! (`upstream::replay`), what each attempt tells outlier detection, the
//! request's timers ([`Timers`]: route, per-try and stream idle timeouts on
//! one lazily re-armed tokio timer), Envoy's local replies for failures, and
//! reading the response body ([`poll_piece`]). All of it runs in the task of
//! the request: no task per upstream connection and no channel.
//!
//! The response head is parsed once, borrowing the connection's buffer, and
//! handed to the caller's `build` (HTTP/1.1: the downstream head written at
//! once; HTTP/2: a header map) only when it is the answer the client gets.
//!
//! Does not own the downstream side (`h1`, `h2`) nor routing (`router`).

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::time::{Instant, Sleep};

use crate::http1::{self, BodyDecoder, Framing, Step};
use crate::listener::retry::{self, would_retry, Failure, RetryState};
use crate::upstream::client::{
    parse_response, ClientError, HeaderSlots, ResponseHead, UpstreamConn, MAX_RESPONSE_HEADERS,
};
use crate::upstream::outlier::Report;
use crate::upstream::pool::{self, ActiveRq, HostPool, UpstreamError};
use crate::upstream::replay::{BodyError, BodySource, Chunk, Cursor, Replay};
use crate::upstream::{Cluster, Host};

use super::router::Forward;
use super::{HttpCtx, LocalReply};

/// A tokio timer re-armed lazily: it may fire early (the caller then looks
/// at its deadlines and re-arms it), never late. Moving it later costs
/// nothing until it fires; moving it earlier re-registers it.
#[derive(Debug)]
pub struct LazySleep {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl LazySleep {
    /// A timer firing at `at`.
    pub fn new(at: Instant) -> LazySleep {
        LazySleep {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
        }
    }

    /// Makes the timer fire no later than `at`.
    #[inline]
    pub fn arm_by(&mut self, at: Instant) {
        if at < self.armed {
            self.set(at);
        }
    }

    /// Makes the timer fire at `at`.
    #[inline]
    pub fn set(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = at;
    }

    /// Ready once the armed time has passed (and until it is re-armed).
    #[inline]
    pub fn poll_fire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

/// When nothing is armed, the timer still wakes this often to look again.
const FAR: Duration = Duration::from_secs(86_400);

/// Which request timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The route timeout.
    Route,
    /// The retry policy's per-try timeout.
    PerTry,
    /// The stream idle timeout; whether the request had been received in full.
    Idle(bool),
}

/// When bytes of the request last moved either way, and whether its body
/// has been read in full: what the stream idle timer needs.
#[derive(Debug)]
pub struct Activity {
    last: Instant,
    /// Whether the stream idle timeout is on (else the clock is not read).
    tracked: bool,
    /// The client's body was received in full.
    pub request_done: bool,
}

impl Activity {
    /// A request starting `now`.
    pub fn new(now: Instant, tracked: bool, request_done: bool) -> Activity {
        Activity {
            last: now,
            tracked,
            request_done,
        }
    }

    /// Bytes moved now.
    #[inline]
    pub fn touch(&mut self) {
        if self.tracked {
            self.last = Instant::now();
        }
    }
}

/// A request's route, per-try and stream idle timeouts, on one timer.
#[derive(Debug)]
pub struct Timers {
    sleep: LazySleep,
    route: Option<Instant>,
    per_try: Option<Instant>,
    idle: Option<Duration>,
}

impl Timers {
    /// The timers of a request starting `now`, on `sleep`.
    pub fn start(
        mut sleep: LazySleep,
        now: Instant,
        route: Option<Duration>,
        idle: Option<Duration>,
    ) -> Timers {
        let route = route.map(|t| now + t);
        if let Some(at) = [route, idle.map(|t| now + t)].into_iter().flatten().min() {
            sleep.arm_by(at);
        }
        Timers {
            sleep,
            route,
            per_try: None,
            idle,
        }
    }

    /// The timer, for the connection's own use once the request is over.
    pub fn into_sleep(self) -> LazySleep {
        self.sleep
    }

    /// Starts an attempt's per-try timeout (`None`: none).
    fn start_try(&mut self, per_try: Option<Duration>) {
        self.per_try = per_try.map(|t| Instant::now() + t);
        if let Some(at) = self.per_try {
            self.sleep.arm_by(at);
        }
    }

    /// The attempt is over: only the route and idle timeouts run on.
    pub fn end_try(&mut self) {
        self.per_try = None;
    }

    fn next(&self, act: &Activity) -> Option<Instant> {
        let idle_at = self.idle.map(|t| act.last + t);
        [self.route, self.per_try, idle_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ready with the timeout that expired.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, act: &Activity) -> Poll<Expired> {
        loop {
            ready!(self.sleep.poll_fire(cx));
            let now = Instant::now();
            if self.route.is_some_and(|r| r <= now) {
                return Poll::Ready(Expired::Route);
            }
            if self.per_try.is_some_and(|r| r <= now) {
                return Poll::Ready(Expired::PerTry);
            }
            if self.idle.is_some_and(|t| act.last + t <= now) {
                return Poll::Ready(Expired::Idle(act.request_done));
            }
            let next = self.next(act).unwrap_or(now + FAR);
            self.sleep.set(next);
        }
    }
}

/// Why sending a request failed.
#[derive(Debug)]
pub enum SendError {
    /// Reading the client's body failed.
    Client(BodyError),
    /// Writing to the host failed.
    Host(std::io::Error),
}

/// Writes one attempt's request (the head, then the body from its
/// [`Replay`], framed for the host) as far as both sides allow.
#[derive(Debug)]
pub struct Sender {
    head_off: usize,
    framing: Framing,
    cursor: Cursor,
    out: Option<Bytes>,
    out_off: usize,
    /// The last piece is being written: done after it.
    last: bool,
    done: bool,
    /// Some bytes reached the socket.
    wrote: bool,
}

impl Sender {
    /// A sender for a body framed so upstream.
    pub fn new(framing: Framing) -> Sender {
        Sender {
            head_off: 0,
            framing,
            cursor: Cursor::default(),
            out: None,
            out_off: 0,
            last: false,
            done: false,
            wrote: false,
        }
    }

    /// Writes as much as can be written now; ready once all of it was.
    pub fn poll_send<S: BodySource>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut UpstreamConn,
        head: &[u8],
        body: &mut Replay<S>,
        act: &mut Activity,
    ) -> Poll<Result<(), SendError>> {
        loop {
            if let Some(rest) = head.get(self.head_off..).filter(|r| !r.is_empty()) {
                let n = ready!(conn.poll_write(cx, rest)).map_err(SendError::Host)?;
                self.wrote = true;
                self.head_off += n;
                continue;
            }
            if let Some(out) = &self.out {
                let n = ready!(conn.poll_write(cx, out.get(self.out_off..).unwrap_or_default()))
                    .map_err(SendError::Host)?;
                self.out_off += n;
                if self.out_off >= out.len() {
                    self.out = None;
                    self.out_off = 0;
                    if self.last {
                        self.done = true;
                    }
                }
                continue;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.framing == Framing::Empty {
                self.done = true;
                continue;
            }
            let chunked = self.framing == Framing::Chunked;
            let next = ready!(body.poll_next(&mut self.cursor, cx));
            act.request_done = body.ended();
            match next {
                None => {
                    if chunked {
                        self.out = Some(Bytes::from_static(b"0\r\n\r\n"));
                        self.last = true;
                    } else {
                        self.done = true;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(SendError::Client(e))),
                Some(Ok(Chunk::Data(d))) => {
                    act.touch();
                    if d.is_empty() {
                        continue;
                    }
                    self.out = Some(if chunked {
                        let mut framed = Vec::with_capacity(d.len() + 12);
                        http1::chunk_header(&mut framed, d.len());
                        framed.extend_from_slice(&d);
                        framed.extend_from_slice(b"\r\n");
                        Bytes::from(framed)
                    } else {
                        d
                    });
                }
                Some(Ok(Chunk::Trailers(t))) => {
                    if chunked {
                        let mut framed = Vec::with_capacity(t.len() + 5);
                        http1::last_chunk(&mut framed, &t);
                        self.out = Some(Bytes::from(framed));
                        self.last = true;
                    }
                    // A body of known length has no room for trailers.
                }
            }
        }
    }
}

/// A response the client gets from its host, with what is left to do.
#[derive(Debug)]
pub struct Answered<T> {
    /// What the caller built from the response head.
    pub built: T,
    /// The status.
    pub status: u16,
    /// The connection, its head consumed.
    pub conn: UpstreamConn,
    pool: Option<Arc<HostPool>>,
    /// The request's place under `max_requests`, held until the response ends.
    rq: ActiveRq,
    /// The response body.
    pub decoder: BodyDecoder,
    /// The request body still being sent, if [`Answered::sending`].
    pub sender: Sender,
    /// The request is still being sent.
    pub sending: bool,
    /// The connection may carry another request once this one is over.
    pub reusable: bool,
}

impl<T> Answered<T> {
    /// Keeps sending the request while the response streams; an error
    /// sending to the host only stops the sending (and the connection's
    /// reuse), one reading the client's body is returned.
    pub fn poll_sending<S: BodySource>(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
        body: &mut Replay<S>,
        act: &mut Activity,
    ) -> Result<(), BodyError> {
        if !self.sending {
            return Ok(());
        }
        match self.sender.poll_send(cx, &mut self.conn, head, body, act) {
            Poll::Ready(Ok(())) => self.sending = false,
            Poll::Ready(Err(SendError::Client(e))) => return Err(e),
            Poll::Ready(Err(SendError::Host(_))) => {
                self.sending = false;
                self.reusable = false;
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    /// The response ended: the connection goes back to its pool if it can
    /// carry another request (the request was sent in full and the host
    /// sent nothing more).
    pub fn finish(self) {
        let Answered {
            mut conn,
            pool,
            rq,
            decoder,
            sending,
            reusable,
            ..
        } = self;
        drop(rq);
        if reusable && !sending && decoder.is_done() && conn.buf.is_empty() {
            if let Some(p) = pool {
                conn.set_reused();
                p.put(conn);
            }
        }
    }
}

/// What became of a request.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The host's answer goes to the client.
    Answered(Answered<T>),
    /// Envoy's local reply goes to the client.
    Local(LocalReply),
    /// The client went away, or its body could not be read: nothing to answer.
    Abandoned,
}

/// How one attempt ended.
enum AttemptEnd<T> {
    Answered(Answered<T>),
    /// An answer the retry policy retries (already decided and counted).
    Retry(Duration),
    Failed(UpstreamError),
    Expired(Expired),
    Abandoned,
}

/// What one request's attempts share.
#[derive(Debug)]
pub struct Exchange<'a, S> {
    /// The listener.
    pub ctx: &'a HttpCtx,
    /// The router's decision.
    pub fwd: &'a Forward,
    /// The upstream request head.
    pub head: &'a [u8],
    /// How the body is framed upstream.
    pub framing: Framing,
    /// The body.
    pub body: &'a mut Replay<S>,
    /// The request's timers.
    pub timers: &'a mut Timers,
    /// The request's activity.
    pub act: &'a mut Activity,
}

/// What happened while waiting for a response head.
enum Wait {
    Head(usize),
    Broken(ClientError),
    /// A reused connection failed before anything was written to it.
    Stale,
    ClientFailed,
    Gone,
    Expired(Expired),
}

/// Sends the request until an answer the retry policy does not retry, the
/// retries are spent, or a timeout ends it. `build` makes what the caller
/// needs of the answer's head (called once, for the answer the client gets,
/// with whether the client's body was read in full by then).
pub async fn exchange<S: BodySource, T>(
    x: &mut Exchange<'_, S>,
    mut build: impl FnMut(&ResponseHead<'_>, bool) -> T,
) -> Outcome<T> {
    let cluster = x.fwd.cluster.clone();
    let mut state = x.fwd.retry.clone().map(RetryState::new);
    let (per_try, previous_hosts, repicks) = state.as_ref().map_or((None, false, 0), |s| {
        let p = s.policy();
        (
            p.per_try_timeout,
            p.previous_hosts,
            p.host_selection_retry_max_attempts as usize,
        )
    });
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // Envoy's default: the load balancer's next pick, which round robin
        // moves past the host just tried; `previous_hosts` insists.
        let host = if previous_hosts && !tried.is_empty() {
            cluster.pick_avoiding(&tried, repicks)
        } else {
            cluster.pick()
        };
        let Some(host) = host else {
            return Outcome::Local(LocalReply::new(503, "no healthy upstream"));
        };
        if state.is_some() {
            tried.push(host.addr());
        }
        x.timers.start_try(per_try);
        let end = attempt(x, &cluster, &host, &mut state, &mut build).await;
        let failure = match &end {
            AttemptEnd::Answered(_) | AttemptEnd::Abandoned | AttemptEnd::Retry(_) => None,
            AttemptEnd::Failed(UpstreamError::Overflow) => Some(Failure::Overflow),
            AttemptEnd::Failed(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout) => {
                Some(Failure::ConnectFailure)
            }
            AttemptEnd::Failed(UpstreamError::Reset(_) | UpstreamError::Protocol(_)) => {
                Some(Failure::Reset)
            }
            AttemptEnd::Expired(Expired::PerTry) => Some(Failure::PerTryTimeout),
            // The route timeout ends every attempt, the stream idle timeout too.
            AttemptEnd::Expired(Expired::Route | Expired::Idle(_)) => None,
        };
        let back_off = match end {
            AttemptEnd::Answered(a) => {
                x.timers.end_try();
                return Outcome::Answered(a);
            }
            AttemptEnd::Abandoned => return Outcome::Abandoned,
            AttemptEnd::Retry(b) => b,
            end => {
                let decision = match &mut state {
                    None => retry::Decision::No,
                    Some(st) => {
                        let mut would = failure.is_some_and(|f| would_retry(st.policy(), f));
                        if would && !x.body.replayable() {
                            // The body outgrew what is kept for retries.
                            cluster.stats().retry_or_shadow_abandoned.inc();
                            would = false;
                        }
                        st.decide(&cluster, would)
                    }
                };
                match decision {
                    retry::Decision::Retry(b) => {
                        if let AttemptEnd::Expired(Expired::PerTry) = end {
                            cluster.stats().upstream_rq_per_try_timeout.inc();
                        }
                        host.stats.rq_error.inc();
                        b
                    }
                    _ => {
                        x.timers.end_try();
                        return Outcome::Local(local_for(x.ctx, &cluster, &host, end));
                    }
                }
            }
        };
        tracing::debug!(cluster = cluster.name(), host = %host.addr(), ?failure, ?back_off, "retrying request");
        x.timers.end_try();
        // The route timeout runs on during the back-off.
        let mut sleep = pin!(tokio::time::sleep(back_off));
        let timers = &mut *x.timers;
        let act = &*x.act;
        let expired = std::future::poll_fn(|cx| {
            if let Poll::Ready(e) = timers.poll_expired(cx, act) {
                return Poll::Ready(Some(e));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await;
        if let Some(e) = expired {
            // No attempt is under way: nothing to tell outlier detection.
            return Outcome::Local(local_for(
                x.ctx,
                &cluster,
                &host,
                AttemptEnd::<T>::Expired(e),
            ));
        }
    }
}

/// One attempt on `host`; reports its outcome to outlier detection as
/// Envoy's router does: a connection is a success at the connection level
/// and the status says the rest; a failure or reset before the response is
/// a connect failure; a timeout is a timeout. A request a circuit breaker
/// refused says nothing about the host.
async fn attempt<S: BodySource, T>(
    x: &mut Exchange<'_, S>,
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    state: &mut Option<RetryState>,
    build: &mut impl FnMut(&ResponseHead<'_>, bool) -> T,
) -> AttemptEnd<T> {
    let pool = cluster.pools().get(&host.addr());
    let mut rq = None;
    'connection: loop {
        let acquired = {
            let acquire = pool::acquire(cluster.pool_limits(), host, pool.as_deref(), rq.take());
            let mut acquire = pin!(acquire);
            let timers = &mut *x.timers;
            let act = &*x.act;
            std::future::poll_fn(|cx| {
                // The exchange first: a connection that is ready wins over a
                // timer that fired with it.
                if let Poll::Ready(r) = acquire.as_mut().poll(cx) {
                    return Poll::Ready(Ok(r));
                }
                timers.poll_expired(cx, act).map(Err)
            })
            .await
        };
        let (mut conn, active) = match acquired {
            Err(e) => {
                if !matches!(e, Expired::Idle(_)) {
                    cluster.report(host, Report::Timeout);
                }
                return AttemptEnd::Expired(e);
            }
            Ok(Err(e)) => {
                if !matches!(e, UpstreamError::Overflow) {
                    cluster.report(host, Report::ConnectFailed);
                }
                return AttemptEnd::Failed(e);
            }
            Ok(Ok(c)) => c,
        };
        let mut sender = Sender::new(x.framing);
        let mut sending = true;
        let mut searched = 0;
        loop {
            let wait = {
                let (head, body, act, timers) = (x.head, &mut *x.body, &mut *x.act, &mut *x.timers);
                let conn = &mut conn;
                let sender = &mut sender;
                let sending = &mut sending;
                std::future::poll_fn(|cx| {
                    if *sending {
                        match sender.poll_send(cx, conn, head, body, act) {
                            Poll::Ready(Ok(())) => *sending = false,
                            Poll::Ready(Err(SendError::Client(_))) => {
                                return Poll::Ready(Wait::ClientFailed)
                            }
                            Poll::Ready(Err(SendError::Host(e))) => {
                                if !sender.wrote && conn.reused() {
                                    return Poll::Ready(Wait::Stale);
                                }
                                // The host may still answer; its reading says.
                                tracing::debug!(error = %e, "writing the request failed");
                                *sending = false;
                            }
                            Poll::Pending => {}
                        }
                    }
                    // Also right after the last byte went out, so that the
                    // client's socket is watched from then on.
                    if !*sending && body.ended() && body.poll_gone(cx).is_ready() {
                        return Poll::Ready(Wait::Gone);
                    }
                    match conn.poll_head(cx, &mut searched) {
                        Poll::Ready(Ok(end)) => return Poll::Ready(Wait::Head(end)),
                        Poll::Ready(Err(e)) => return Poll::Ready(Wait::Broken(e)),
                        Poll::Pending => {}
                    }
                    timers.poll_expired(cx, act).map(Wait::Expired)
                })
                .await
            };
            let end = match wait {
                Wait::Head(end) => end,
                Wait::Stale => {
                    // The host closed it while idle; nothing was sent: another one.
                    rq = Some(active);
                    continue 'connection;
                }
                Wait::ClientFailed | Wait::Gone => return AttemptEnd::Abandoned,
                Wait::Broken(e) => {
                    cluster.report(host, Report::ConnectFailed);
                    return AttemptEnd::Failed(e.into());
                }
                Wait::Expired(e) => {
                    if !matches!(e, Expired::Idle(_)) {
                        cluster.report(host, Report::Timeout);
                    }
                    return AttemptEnd::Expired(e);
                }
            };
            let mut slots: HeaderSlots<'_> =
                [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
            let parsed = match parse_response(
                conn.buf.get(..end).unwrap_or_default(),
                x.fwd.head_request,
                &mut slots,
            ) {
                Ok(p) => p,
                Err(e) => {
                    cluster.report(host, Report::ConnectFailed);
                    return AttemptEnd::Failed(e.into());
                }
            };
            let status = parsed.status;
            if status < 200 {
                // An interim response (103 Early Hints, ...): the final one follows.
                conn.buf.advance(end);
                searched = 0;
                continue;
            }
            cluster.report(host, Report::ConnectSuccess);
            cluster.report(host, Report::Status(status));
            if let Some(st) = state {
                let policy = st.policy();
                let failure = (status >= 500 || policy.retriable_status_codes.contains(&status))
                    .then_some(Failure::Response {
                        status,
                        overloaded: parsed.overloaded,
                    });
                let mut would = failure.is_some_and(|f| would_retry(policy, f));
                if would && !x.body.replayable() {
                    cluster.stats().retry_or_shadow_abandoned.inc();
                    would = false;
                }
                if let retry::Decision::Retry(b) = st.decide(cluster, would) {
                    host.stats.rq_error.inc();
                    return AttemptEnd::Retry(b);
                }
            }
            cluster.stats().count_status(status);
            if status >= 500 {
                host.stats.rq_error.inc();
            } else {
                host.stats.rq_success.inc();
            }
            let built = build(&parsed, x.body.ended());
            let (framing, reusable) = (parsed.framing, parsed.reusable);
            conn.buf.advance(end);
            return AttemptEnd::Answered(Answered {
                built,
                status,
                conn,
                pool,
                rq: active,
                decoder: BodyDecoder::new(framing),
                sender,
                sending,
                reusable,
            });
        }
    }
}

/// Envoy's local reply for an attempt that ended without an answer.
fn local_for<T>(ctx: &HttpCtx, cluster: &Cluster, host: &Host, end: AttemptEnd<T>) -> LocalReply {
    let stats = cluster.stats();
    match end {
        AttemptEnd::Expired(Expired::Route) => {
            stats.upstream_rq_timeout.inc();
            stats.count_status(504);
            host.stats.rq_error.inc();
            LocalReply::new(504, "upstream request timeout")
        }
        AttemptEnd::Expired(Expired::PerTry) => {
            stats.upstream_rq_per_try_timeout.inc();
            stats.count_status(504);
            host.stats.rq_error.inc();
            LocalReply::new(504, "upstream request timeout")
        }
        AttemptEnd::Expired(Expired::Idle(request_done)) => {
            ctx.stats.downstream_rq_idle_timeout.inc();
            host.stats.rq_error.inc();
            // Envoy's choice: 504 once the request was received in full, 408
            // while the client is still sending it.
            LocalReply::new(if request_done { 504 } else { 408 }, "stream timeout")
        }
        AttemptEnd::Failed(e) => {
            stats.count_status(503);
            let overflow = matches!(e, UpstreamError::Overflow);
            if !overflow {
                host.stats.rq_error.inc();
            }
            tracing::debug!(cluster = cluster.name(), host = %host.addr(), error = %e, "upstream request failed");
            let mut r = LocalReply::new(503, e.to_string());
            r.overloaded = overflow;
            r
        }
        // Not failures: never asked for.
        AttemptEnd::Answered(_) | AttemptEnd::Retry(_) | AttemptEnd::Abandoned => {
            LocalReply::new(503, "")
        }
    }
}

/// A piece of a response body.
#[derive(Debug)]
pub enum Piece {
    /// Data: the first `n` bytes of the connection's buffer (framing
    /// consumed). The caller consumes what it used and calls
    /// [`BodyDecoder::consumed`].
    Data(usize),
    /// The body ended, with its trailer lines, if any.
    End(Option<Bytes>),
}

/// The next piece of the response body on `conn`.
pub fn poll_piece(
    conn: &mut UpstreamConn,
    dec: &mut BodyDecoder,
    cx: &mut Context<'_>,
) -> Poll<Result<Piece, ClientError>> {
    loop {
        match dec.step(&conn.buf) {
            Ok(Step::Data { skip, len }) => {
                conn.buf.advance(skip);
                return Poll::Ready(Ok(Piece::Data(len)));
            }
            Ok(Step::End { skip, trailers }) => {
                let t = trailers
                    .and_then(|(s, e)| conn.buf.get(s..e))
                    .map(Bytes::copy_from_slice);
                conn.buf.advance(skip);
                return Poll::Ready(Ok(Piece::End(t)));
            }
            Ok(Step::More { skip }) => {
                conn.buf.advance(skip);
                if let Some(n) = dec.remaining() {
                    // Large bodies are read in large pieces.
                    conn.reserve(
                        usize::try_from(n)
                            .unwrap_or(usize::MAX)
                            .clamp(8192, 64 * 1024),
                    );
                }
                match ready!(conn.poll_read(cx)) {
                    Ok(0) => {
                        if dec.eof().is_err() {
                            return Poll::Ready(Err(ClientError::Closed));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(ClientError::Io(e))),
                }
            }
            Err(_) => return Poll::Ready(Err(ClientError::Protocol("invalid body framing"))),
        }
    }
}
