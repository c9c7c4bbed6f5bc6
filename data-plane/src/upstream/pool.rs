//! Upstream HTTP/1.1 connection pools and the request circuit breakers.
//!
//! Owns, per cluster, a [`PoolSet`]: one [`HostPool`] of idle connections
//! per host address, shared by every version of the cluster (as its stats
//! are), so a host that stays across an EDS update or a cluster change keeps
//! its connections. Each host pool is split per worker thread, as HAProxy
//! keeps its idle connections per thread: a request takes the most recently
//! used connection of its own worker's list (one uncontended lock), and
//! another worker's only when its own list is empty, so no connection is
//! opened while one sits idle. A connection goes back to the list of the
//! worker that finished with it.
//!
//! Idle connections have no task: each registers the pool set's waker for
//! read readiness when it goes idle, so a host closing one wakes a single
//! sweeper task per cluster that drops the closed ones (their place under
//! `max_connections` is given back at once); taking one checks it again
//! without a system call unless its socket turned readable.
//!
//! [`acquire`] applies the cluster's request circuit breakers as Envoy's
//! HTTP/1 connection pool does (see its docs). Writing the request and
//! reading the response are the router's (`listener::http`, through
//! `client`), and so are retries and outlier reports.
//!
//! Does not own hosts (`host`), connecting (`connect`) or the wire format
//! (`client`, `crate::http1`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::model::CircuitBreakers;
use crate::upstream::client::{ClientError, UpstreamConn, Waiters};
use crate::upstream::connect::{self, ConnectError};
use crate::upstream::host::Host;
use crate::upstream::stats::ClusterStats;

/// Idle connections kept per host at most (all workers together).
pub const MAX_IDLE_PER_HOST: usize = 1024;

/// Worker lists per host pool when [`set_workers`] was not called.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

static WORKERS: AtomicUsize = AtomicUsize::new(0);
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's list in every host pool (taken in the order threads
    /// first use a pool: the workers, in practice).
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

/// Sets the number of per-worker lists of pools created from now on (the
/// proxy's worker threads); call before any traffic.
pub fn set_workers(n: usize) {
    WORKERS.store(n.clamp(1, 256), Ordering::Relaxed);
}

fn workers() -> usize {
    match WORKERS.load(Ordering::Relaxed) {
        0 => default_workers().clamp(1, 256),
        n => n,
    }
}

#[inline]
fn my_slot(n: usize) -> usize {
    SLOT.with(|s| *s) % n
}

/// Wakes a pool set's sweeper when an idle connection turned readable.
#[derive(Debug, Default)]
struct Sweep {
    dirty: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Sweep {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.dirty.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One host's idle connections, per worker, and the requests waiting for one.
#[derive(Debug)]
pub struct HostPool {
    lists: Box<[Mutex<Vec<UpstreamConn>>]>,
    idle: AtomicUsize,
    waiters: Arc<Waiters>,
    /// The host left its cluster: connections given back are closed.
    retired: AtomicBool,
    sweep: Waker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HostPool {
    fn new(sweep: Waker) -> HostPool {
        HostPool {
            lists: (0..workers()).map(|_| Mutex::new(Vec::new())).collect(),
            idle: AtomicUsize::new(0),
            waiters: Arc::new(Waiters::default()),
            retired: AtomicBool::new(false),
            sweep,
        }
    }

    /// An idle connection still usable: this worker's most recent, else
    /// another worker's.
    fn take(&self) -> Option<UpstreamConn> {
        if self.idle.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mine = my_slot(self.lists.len());
        let order = (0..self.lists.len()).map(|i| (mine + i) % self.lists.len());
        for i in order {
            let Some(list) = self.lists.get(i) else {
                continue;
            };
            let mut list = lock(list);
            while let Some(conn) = list.pop() {
                self.idle.fetch_sub(1, Ordering::Relaxed);
                if conn.idle_alive() {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// Gives back a connection whose last exchange ended cleanly; it is
    /// closed instead if it is no longer usable, the host left its cluster
    /// or the pool is full.
    pub fn put(&self, conn: UpstreamConn) {
        if self.retired.load(Ordering::Relaxed)
            || self.idle.load(Ordering::Relaxed) >= MAX_IDLE_PER_HOST
            || !conn.watch(&self.sweep)
        {
            return;
        }
        let mine = my_slot(self.lists.len());
        if let Some(list) = self.lists.get(mine) {
            lock(list).push(conn);
            self.idle.fetch_add(1, Ordering::Relaxed);
        }
        self.waiters.wake_one();
    }

    /// Drops the idle connections the host closed; keeps watching the others.
    fn sweep(&self) {
        for list in self.lists.iter() {
            let mut list = lock(list);
            let before = list.len();
            list.retain(|c| c.watch(&self.sweep));
            self.idle.fetch_sub(before - list.len(), Ordering::Relaxed);
        }
    }

    /// The host left its cluster: its idle connections are closed.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        for list in self.lists.iter() {
            let drained = std::mem::take(&mut *lock(list));
            self.idle.fetch_sub(drained.len(), Ordering::Relaxed);
        }
    }

    /// Idle connections now (all workers).
    pub fn idle_len(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }
}

/// A cheap hash for socket addresses (keys chosen by the control plane's
/// config, not by clients).
#[derive(Debug, Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type HostMap = HashMap<SocketAddr, Arc<HostPool>, BuildHasherDefault<AddrHasher>>;

/// The pools of one cluster's hosts (shared by every version of the cluster).
#[derive(Debug)]
pub struct PoolSet {
    hosts: ArcSwap<HostMap>,
    /// Serialises changes of the host set.
    update: Mutex<()>,
    sweep: Arc<Sweep>,
    _stop: DropGuard,
}

impl PoolSet {
    /// An empty set. Within a tokio runtime, it starts the task that drops
    /// idle connections their hosts closed.
    pub fn new() -> Arc<PoolSet> {
        let stop = CancellationToken::new();
        let set = Arc::new(PoolSet {
            hosts: ArcSwap::from_pointee(HostMap::default()),
            update: Mutex::new(()),
            sweep: Arc::new(Sweep::default()),
            _stop: stop.clone().drop_guard(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweeper(Arc::downgrade(&set), set.sweep.clone(), stop));
        }
        set
    }

    /// The pool of the host at `addr`, if it is one of the cluster's.
    #[inline]
    pub fn get(&self, addr: &SocketAddr) -> Option<Arc<HostPool>> {
        self.hosts.load().get(addr).cloned()
    }

    /// Adds pools for hosts that have none. Call before the hosts can be
    /// picked.
    pub fn add(&self, hosts: &[Arc<Host>]) {
        let _g = lock(&self.update);
        let cur = self.hosts.load();
        if hosts.iter().all(|h| cur.contains_key(&h.addr())) {
            return;
        }
        let mut next: HostMap = (**cur).clone();
        let waker = Waker::from(self.sweep.clone());
        for h in hosts {
            next.entry(h.addr())
                .or_insert_with(|| Arc::new(HostPool::new(waker.clone())));
        }
        self.hosts.store(Arc::new(next));
    }

    /// Keeps the pools of `hosts` only; the others are retired (their idle
    /// connections closed). Call once the others can no longer be picked.
    pub fn retain(&self, hosts: &[Arc<Host>]) {
        let _g = lock(&self.update);
        let cur = self.hosts.load();
        let keep: std::collections::HashSet<SocketAddr> = hosts.iter().map(|h| h.addr()).collect();
        if cur.len() == keep.len() && cur.keys().all(|a| keep.contains(a)) {
            return;
        }
        let mut next = HostMap::default();
        for (addr, pool) in cur.iter() {
            if keep.contains(addr) {
                next.insert(*addr, pool.clone());
            } else {
                pool.retire();
            }
        }
        self.hosts.store(Arc::new(next));
    }
}

/// Drops idle connections their hosts closed, whenever one of them turns
/// readable; ends with its pool set.
async fn sweeper(set: Weak<PoolSet>, sweep: Arc<Sweep>, stop: CancellationToken) {
    loop {
        let woke = std::future::poll_fn(|cx| {
            sweep.task.register(cx.waker());
            if stop.is_cancelled() {
                return Poll::Ready(false);
            }
            if sweep.dirty.swap(false, Ordering::AcqRel) {
                return Poll::Ready(true);
            }
            Poll::Pending
        });
        let woke = tokio::select! {
            w = woke => w,
            () = stop.cancelled() => false,
        };
        if !woke {
            return;
        }
        let Some(set) = set.upgrade() else { return };
        for pool in set.hosts.load().values() {
            pool.sweep();
        }
    }
}

/// Why a request got no answer from its host. The display strings are
/// Envoy's local-reply bodies.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting failed.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection failure")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than `connect_timeout`.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection timeout")]
    ConnectTimeout,
    /// The connection broke before response headers.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection termination")]
    Reset(#[source] ClientError),
    /// The host's answer was not a response we can relay.
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    )]
    Protocol(#[source] ClientError),
    /// A circuit breaker is open: `max_pending_requests` or `max_requests`
    /// (counted in `upstream_rq_pending_overflow`).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
}

impl From<ConnectError> for UpstreamError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout => UpstreamError::ConnectTimeout,
            ConnectError::Io(e) => UpstreamError::Connect(e),
            ConnectError::Overflow => UpstreamError::Overflow,
        }
    }
}

impl From<ClientError> for UpstreamError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Protocol(_) => UpstreamError::Protocol(e),
            _ => UpstreamError::Reset(e),
        }
    }
}

/// One request in flight to a host: holds `rq_active` of the host and the
/// cluster (the place `max_requests` counts), and counts `rq_total` on both
/// when created.
#[derive(Debug)]
pub struct ActiveRq {
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
}

impl ActiveRq {
    /// Starts counting a request to `host` of a cluster with `stats`, if the
    /// cluster has fewer than `max_requests` in flight.
    fn try_new(host: &Arc<Host>, stats: &Arc<ClusterStats>, max_requests: u32) -> Option<ActiveRq> {
        if !stats.upstream_rq_active.try_inc(u64::from(max_requests)) {
            return None;
        }
        stats.upstream_rq_total.inc();
        host.stats.rq_total.inc();
        host.stats.rq_active.inc();
        Some(ActiveRq {
            host: host.clone(),
            stats: stats.clone(),
        })
    }

    /// The host.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }
}

impl Drop for ActiveRq {
    fn drop(&mut self) {
        self.host.stats.rq_active.dec();
        self.stats.upstream_rq_active.dec();
    }
}

/// A request waiting for a connection (Envoy's pending request): holds
/// `upstream_rq_pending_active` and the host's count of waiters.
struct Pending<'a> {
    stats: &'a ClusterStats,
    waiters: &'a Waiters,
}

impl<'a> Pending<'a> {
    /// Takes a place under `max_pending_requests`, or `None`.
    fn try_new(stats: &'a ClusterStats, waiters: &'a Waiters, max: u32) -> Option<Pending<'a>> {
        if !stats.upstream_rq_pending_active.try_inc(u64::from(max)) {
            return None;
        }
        stats.upstream_rq_pending_total.inc();
        waiters.waiting.fetch_add(1, Ordering::AcqRel);
        Some(Pending { stats, waiters })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.stats.upstream_rq_pending_active.dec();
        self.waiters.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`acquire`] needs of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// The cluster's stats.
    pub stats: &'a Arc<ClusterStats>,
    /// Its circuit breakers (DEFAULT priority).
    pub breakers: CircuitBreakers,
    /// Its `connect_timeout`.
    pub connect_timeout: Duration,
}

/// A connection to `host` for one request, within the cluster's circuit
/// breakers, as Envoy's HTTP/1 connection pool does:
/// - an idle connection is used at once;
/// - otherwise the request is pending (at most `max_pending_requests` of
///   them, beyond which it fails with [`UpstreamError::Overflow`], counted in
///   `upstream_rq_pending_overflow`) while a connection is opened, if
///   `max_connections` allows (else counted once in `upstream_cx_overflow`),
///   or until a connection of the host is freed;
/// - a request is sent only while fewer than `max_requests` are in flight
///   (else it overflows too).
///
/// `rq` is the request's place under `max_requests` if it already has one
/// (a request sent again on another connection keeps it). Nothing here
/// waits on a lock: the limits are atomic counters, and a pending request
/// sleeps on its host's [`Waiters`]. `pool` is `None` for a host that left
/// its cluster meanwhile: its connection is then not kept.
pub async fn acquire(
    limits: Limits<'_>,
    host: &Arc<Host>,
    pool: Option<&HostPool>,
    mut rq: Option<ActiveRq>,
) -> Result<(UpstreamConn, ActiveRq), UpstreamError> {
    let stats = limits.stats;
    let cb = limits.breakers;
    let overflow = || {
        stats.upstream_rq_pending_overflow.inc();
        UpstreamError::Overflow
    };
    let orphan = Waiters::default();
    let waiters: &Waiters = pool.map_or(&orphan, |p| &p.waiters);
    let mut pending: Option<Pending<'_>> = None;
    let mut counted_cx_overflow = false;
    loop {
        let notified = waiters.available.notified();
        tokio::pin!(notified);
        if pending.is_some() {
            // Registered before looking, so a wake between the look and the
            // wait is not lost.
            notified.as_mut().enable();
        }
        if let Some(conn) = pool.and_then(HostPool::take) {
            drop(pending.take());
            let Some(active) = rq
                .take()
                .or_else(|| ActiveRq::try_new(host, stats, cb.max_requests))
            else {
                if let Some(p) = pool {
                    p.put(conn);
                }
                return Err(overflow());
            };
            return Ok((conn, active));
        }
        if pending.is_none() {
            // Waiting for a connection, be it one being opened: pending, as in Envoy.
            pending = Some(
                Pending::try_new(stats, waiters, cb.max_pending_requests).ok_or_else(overflow)?,
            );
            continue;
        }
        if let Some(cx) = connect::reserve(stats, cb.max_connections, host, true) {
            let (stream, cx) = connect::open(cx, limits.connect_timeout).await?;
            drop(pending.take());
            let weak = pool.map_or_else(Weak::new, |p| Arc::downgrade(&p.waiters));
            let conn = UpstreamConn::new(stream, cx, weak);
            let Some(active) = rq
                .take()
                .or_else(|| ActiveRq::try_new(host, stats, cb.max_requests))
            else {
                if let Some(p) = pool {
                    p.put(conn);
                }
                return Err(overflow());
            };
            return Ok((conn, active));
        }
        if !counted_cx_overflow {
            stats.upstream_cx_overflow.inc();
            counted_cx_overflow = true;
        }
        notified.await;
    }
}
