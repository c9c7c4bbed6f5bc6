//! Listeners: sockets, accept loops, connection tracking, draining, and the
//! network filters that handle connections.
//!
//! Owns:
//! - the [`ListenerManager`], which reconciles the set of listeners: an
//!   unchanged listener keeps its socket and its connections; a removed or
//!   changed one stops accepting and drains (its connections end on their own,
//!   or are closed after `drain_time`); new ones are bound. Sockets use
//!   `SO_REUSEPORT` (as Envoy does on Linux), so a changed listener's new socket
//!   is bound *before* the old one closes and every bind is validated before
//!   anything is applied;
//! - [`tcp`]: the TCP proxy; [`http`]: the HTTP connection manager and router;
//!   [`retry`]: the router's retry decisions;
//!   [`route`]: route tables and the RDS route configurations in force;
//! - the `listener.<address>.`, `tcp.<stat_prefix>.` and `http.<stat_prefix>.` stats.
//!
//! A listener accepts as soon as it is given. Envoy's listener warming (an
//! RDS listener waits for its route configuration) is done before that, by
//! the xDS store, which owns the one warming timeout: a listener given while
//! its RDS route configuration is absent (the wait timed out) answers 404
//! until it arrives.
//!
//! Does not own clusters (see `upstream`) nor the order of updates (see `runtime`).

pub mod http;
pub mod path;
pub mod retry;
pub mod route;
pub mod splice;
pub mod tcp;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{self, ListenerKind, NackError, RouteSource};
use crate::stats::{stats_struct, Counter, Gauge, GaugeGuard, Scopes};
use crate::upstream::ClusterManager;

use self::http::{HttpCtx, HttpStats, Routes};
use self::route::{RouteManager, RouteTable};
use self::tcp::{TcpCtx, TcpStats};

/// Listen backlog.
pub const BACKLOG: u32 = 1024;

stats_struct! {
    /// Envoy's `listener.<address>.` stats.
    pub struct ListenerStats {
        downstream_cx_total: Counter => "downstream_cx_total",
        downstream_cx_active: Gauge => "downstream_cx_active",
        downstream_cx_destroy: Counter => "downstream_cx_destroy",
    }
}

/// What a listener does with a connection.
#[derive(Debug, Clone)]
enum Handler {
    Tcp(Arc<TcpCtx>),
    Http(Arc<HttpCtx>),
}

/// One bound listener (active or draining).
#[derive(Debug)]
pub struct ListenerHandle {
    model: model::Listener,
    local_addr: SocketAddr,
    /// Stops the accept loop (closes the socket).
    stop_accept: CancellationToken,
    /// Asks connections to finish (HTTP: close after the current response / GOAWAY).
    drain: CancellationToken,
    /// Closes connections.
    close: CancellationToken,
    tracker: TaskTracker,
}

impl ListenerHandle {
    /// The model it was built from.
    pub fn model(&self) -> &model::Listener {
        &self.model
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Stops accepting, lets connections finish for at most `drain_time`, then
    /// closes the rest. Idempotent.
    pub async fn drain(&self, drain_time: Duration) {
        self.stop_accept.cancel();
        self.drain.cancel();
        self.tracker.close();
        if tokio::time::timeout(drain_time, self.tracker.wait())
            .await
            .is_err()
        {
            self.close.cancel();
            self.tracker.wait().await;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    active: BTreeMap<String, Arc<ListenerHandle>>,
    draining: Vec<Arc<ListenerHandle>>,
    shut_down: bool,
}

/// The listeners in force.
#[derive(Debug)]
pub struct ListenerManager {
    shutdown: CancellationToken,
    state: Arc<Mutex<State>>,
    listener_stats: Scopes<ListenerStats>,
    tcp_stats: Scopes<TcpStats>,
    http_stats: Scopes<HttpStats>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nack(l: &model::Listener, message: String) -> NackError {
    NackError {
        kind: Some(pylon::ResourceType::Listener),
        name: l.name.clone(),
        message,
    }
}

/// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    #[cfg(unix)]
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG)
}

/// Checks that `addr` can be bound as `bind` would (a socket bound, never
/// listening, then closed). Our own listeners share their ports through
/// `SO_REUSEPORT`, so only an address some other socket holds fails: the LDS
/// update naming it is then rejected, as Envoy rejects a listener it cannot
/// bind, instead of being accepted and failing later.
pub fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.bind(&addr.into())
}

/// `listener.<address>.` with `:` replaced by `_`, as Envoy names it.
fn listener_stat_prefix(addr: SocketAddr) -> String {
    format!("listener.{}.", addr.to_string().replace(':', "_"))
}

impl ListenerManager {
    /// An empty manager; every connection closes when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> ListenerManager {
        ListenerManager {
            shutdown,
            state: Arc::new(Mutex::new(State::default())),
            listener_stats: Scopes::default(),
            tcp_stats: Scopes::default(),
            http_stats: Scopes::default(),
        }
    }

    /// Replaces the set of listeners. Validates everything (names, addresses,
    /// inline routes, binds) before changing anything. Needs a tokio runtime.
    pub fn set(
        &self,
        listeners: Vec<model::Listener>,
        clusters: &ClusterManager,
        routes: &RouteManager,
        drain_time: Duration,
    ) -> Result<(), NackError> {
        let mut names = HashSet::new();
        let mut addrs: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for l in &listeners {
            if !names.insert(l.name.as_str()) {
                return Err(nack(l, "duplicate listener name".into()));
            }
            if l.addr.port() != 0 {
                if let Some(other) = addrs.insert(l.addr, &l.name) {
                    return Err(nack(
                        l,
                        format!("address {} is also used by listener {other}", l.addr),
                    ));
                }
            }
        }

        let current = {
            let st = lock(&self.state);
            if st.shut_down {
                // Drained for good: updates are accepted and ignored.
                return Ok(());
            }
            st.active.clone()
        };
        let mut kept = BTreeMap::new();
        let mut to_start = Vec::new();
        for l in listeners {
            match current.get(&l.name) {
                Some(h) if h.model == l => {
                    kept.insert(l.name.clone(), h.clone());
                }
                _ => to_start.push(l),
            }
        }
        // With SO_REUSEPORT a second bind of a kept listener's address would
        // silently share its connections: refuse it.
        for l in &to_start {
            if l.addr.port() == 0 {
                continue;
            }
            if let Some(k) = kept
                .values()
                .find(|k| k.model.addr == l.addr || k.local_addr == l.addr)
            {
                return Err(nack(
                    l,
                    format!("address {} is in use by listener {}", l.addr, k.model.name),
                ));
            }
        }

        // Build handlers (compiles inline routes), then bind; any error: nothing applied.
        let mut prepared = Vec::with_capacity(to_start.len());
        for l in to_start {
            let handler = self.handler(&l, clusters, routes)?;
            prepared.push((l, handler));
        }
        let mut bound = Vec::with_capacity(prepared.len());
        for (l, handler) in prepared {
            let socket =
                bind(l.addr).map_err(|e| nack(&l, format!("cannot bind {}: {e}", l.addr)))?;
            let local_addr = socket
                .local_addr()
                .map_err(|e| nack(&l, format!("cannot bind {}: {e}", l.addr)))?;
            bound.push((l, handler, socket, local_addr));
        }

        // Apply.
        let mut next = kept;
        for (l, handler, socket, local_addr) in bound {
            let h = Arc::new(ListenerHandle {
                local_addr,
                stop_accept: self.shutdown.child_token(),
                drain: CancellationToken::new(),
                close: self.shutdown.child_token(),
                tracker: TaskTracker::new(),
                model: l,
            });
            let lstats = self.listener_stats.get(&listener_stat_prefix(local_addr));
            tokio::spawn(accept_loop(socket, handler, lstats, h.clone()));
            tracing::info!(listener = h.model.name, address = %local_addr, "listener started");
            next.insert(h.model.name.clone(), h);
        }
        let mut st = lock(&self.state);
        let old = std::mem::replace(&mut st.active, next);
        for (name, h) in old {
            if st.active.get(&name).is_some_and(|n| Arc::ptr_eq(n, &h)) {
                continue;
            }
            tracing::info!(listener = name, address = %h.local_addr, "listener draining");
            st.draining.push(h.clone());
            let state = self.state.clone();
            tokio::spawn(async move {
                h.drain(drain_time).await;
                lock(&state).draining.retain(|d| !Arc::ptr_eq(d, &h));
            });
        }
        drop(st);
        self.listener_stats.prune();
        self.tcp_stats.prune();
        self.http_stats.prune();
        Ok(())
    }

    fn handler(
        &self,
        l: &model::Listener,
        clusters: &ClusterManager,
        routes: &RouteManager,
    ) -> Result<Handler, NackError> {
        Ok(match &l.kind {
            ListenerKind::Tcp(t) => {
                let stats = self.tcp_stats.get(&format!("tcp.{}.", t.stat_prefix));
                let ctx = TcpCtx::new(t.clone(), clusters.slot(&t.cluster), stats);
                Handler::Tcp(Arc::new(ctx))
            }
            ListenerKind::Http(hm) => {
                let stats = self.http_stats.get(&format!("http.{}.", hm.stat_prefix));
                let r = match &hm.routes {
                    RouteSource::Rds(name) => Routes::Rds(routes.slot(name)),
                    RouteSource::Inline(rc) => {
                        let t = RouteTable::compile(rc, |c| clusters.slot(c))
                            .map_err(|e| nack(l, format!("inline {e}")))?;
                        Routes::Inline(Arc::new(t))
                    }
                };
                Handler::Http(Arc::new(HttpCtx::new(stats, r, hm)))
            }
        })
    }

    /// Bound listeners: name and actual address.
    pub fn view(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.state)
            .active
            .values()
            .map(|h| (h.model.name.clone(), h.local_addr))
            .collect()
    }

    /// The listener models in force.
    pub fn models(&self) -> Vec<model::Listener> {
        lock(&self.state)
            .active
            .values()
            .map(|h| h.model.clone())
            .collect()
    }

    /// The active listener called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ListenerHandle>> {
        lock(&self.state).active.get(name).cloned()
    }

    /// Drains every listener (active and already draining) at once, at most
    /// `drain_time`; no listener is started afterwards.
    pub async fn drain_all(&self, drain_time: Duration) {
        let all: Vec<Arc<ListenerHandle>> = {
            let mut st = lock(&self.state);
            st.shut_down = true;
            let active = std::mem::take(&mut st.active);
            st.draining.extend(active.into_values());
            st.draining.clone()
        };
        futures::future::join_all(all.iter().map(|h| h.drain(drain_time))).await;
    }

    /// Appends the listener, TCP proxy and HTTP stats.
    pub fn collect_stats(&self, out: &mut Vec<(String, u64)>) {
        self.listener_stats.collect(out);
        self.tcp_stats.collect(out);
        self.http_stats.collect(out);
    }
}

async fn accept_loop(
    socket: TcpListener,
    handler: Handler,
    stats: Arc<ListenerStats>,
    h: Arc<ListenerHandle>,
) {
    // Out of file descriptors and the like: waited out with a growing delay
    // and a warning at most once a second, instead of spinning.
    let mut backoff = pylon::accept::AcceptBackoff::new(h.model.name.as_str());
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            _ = h.stop_accept.cancelled() => break,
            accepted = backoff.accept(&socket) => accepted,
        };
        dispatch(stream, &handler, &stats, &h);
    }
    // Connections the kernel already queued on this socket would be reset when
    // it closes (with SO_REUSEPORT a replacement socket may be taking new ones
    // already): take them, they drain with the others.
    while let Some(Ok((stream, _peer))) = socket.accept().now_or_never() {
        dispatch(stream, &handler, &stats, &h);
    }
}

fn dispatch(stream: TcpStream, handler: &Handler, stats: &Arc<ListenerStats>, h: &ListenerHandle) {
    let _ = stream.set_nodelay(true);
    stats.downstream_cx_total.inc();
    let guard = ConnGuard(GaugeGuard::new(stats.clone(), |s: &ListenerStats| {
        &s.downstream_cx_active
    }));
    match handler {
        Handler::Tcp(ctx) => {
            let (ctx, close) = (ctx.clone(), h.close.clone());
            h.tracker.spawn(async move {
                let _g = guard;
                tcp::serve(stream, ctx, close).await;
            });
        }
        Handler::Http(ctx) => {
            let (ctx, drain, close) = (ctx.clone(), h.drain.clone(), h.close.clone());
            h.tracker.spawn(async move {
                let _g = guard;
                http::serve(stream, ctx, drain, close).await;
            });
        }
    }
}

/// Holds `downstream_cx_active` and counts `downstream_cx_destroy` at the end.
struct ConnGuard(GaugeGuard<ListenerStats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.owner().downstream_cx_destroy.inc();
    }
}
