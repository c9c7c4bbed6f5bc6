//! Active health checking with Envoy's semantics.
//!
//! Owns: the per-host state machine ([`Session`], a port of Envoy's
//! `ActiveHealthCheckSession::handleSuccess`/`setUnhealthy`), the probes (TCP
//! connect, HTTP `GET`, either over TLS through `tls`), the choice of the
//! next interval, and the per-host checker task. Does not own hosts (it
//! flips their flags) nor the host set: after each check it tells its
//! [`CheckObserver`] (the cluster), which rebuilds the load balancer's
//! healthy set when a host changed state and decides what else follows
//! (outlier detection, removals).
//!
//! Semantics (Envoy's, see docs/envoy-behaviour.md):
//! - hosts start `/failed_active_hc`; the first check decides: one success
//!   makes the host healthy at once;
//! - then `healthy_threshold` successes in a row make an unhealthy host
//!   healthy, and `unhealthy_threshold` network failures (connect error,
//!   timeout, broken response) in a row make a healthy host unhealthy; an HTTP
//!   status outside `expected_statuses` fails it at once;
//! - a timeout also sets `/active_hc_timeout` (cleared by any other result);
//! - the next check comes after `no_traffic_interval` while the cluster has not
//!   carried traffic, else `unhealthy_interval` for an unhealthy host, else
//!   `interval`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::model::{HealthCheck, HealthCheckKind};
use crate::upstream::host::{Host, ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC};
use crate::upstream::stats::ClusterStats;
use crate::upstream::tls::TlsClient;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Success,
    /// Connect error, connection closed or unparseable response.
    NetworkFailure,
    /// The check did not finish within `timeout`.
    Timeout,
    /// The host answered, but wrongly (unexpected HTTP status): fails at once.
    ActiveFailure,
}

/// What a result did to the host's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    Unchanged,
    /// The host changed state (healthy <-> unhealthy).
    Changed,
    /// Counting towards a threshold.
    Pending,
}

/// Per-host check state (Envoy's `ActiveHealthCheckSession` counters).
#[derive(Debug, Clone)]
pub struct Session {
    first_check: bool,
    num_healthy: u32,
    num_unhealthy: u32,
}

impl Session {
    /// A session; `first_check` is true for a host that never had a check.
    pub fn new(first_check: bool) -> Session {
        Session {
            first_check,
            num_healthy: 0,
            num_unhealthy: 0,
        }
    }

    /// Applies one result to `host` and counts it in `stats`.
    pub fn on_result(
        &mut self,
        host: &Host,
        outcome: Outcome,
        cfg: &HealthCheck,
        stats: &ClusterStats,
    ) -> Transition {
        let t = match outcome {
            Outcome::Success => {
                stats.hc_success.inc();
                self.num_unhealthy = 0;
                if !host.failed_active_hc() {
                    Transition::Unchanged
                } else {
                    self.num_healthy += 1;
                    if self.first_check || self.num_healthy >= cfg.healthy_threshold {
                        // The timeout flag may toggle while unhealthy; it goes with the host
                        // turning healthy.
                        host.clear_flag(ACTIVE_HC_TIMEOUT | FAILED_ACTIVE_HC);
                        self.num_healthy = 0;
                        Transition::Changed
                    } else {
                        Transition::Pending
                    }
                }
            }
            Outcome::NetworkFailure | Outcome::Timeout | Outcome::ActiveFailure => {
                stats.hc_failure.inc();
                if outcome != Outcome::ActiveFailure {
                    stats.hc_network_failure.inc();
                }
                self.num_healthy = 0;
                let mut t = Transition::Unchanged;
                if !host.failed_active_hc() {
                    self.num_unhealthy += 1;
                    if outcome == Outcome::ActiveFailure
                        || self.num_unhealthy >= cfg.unhealthy_threshold
                    {
                        host.set_flag(FAILED_ACTIVE_HC);
                        self.num_unhealthy = 0;
                        t = Transition::Changed;
                    } else {
                        t = Transition::Pending;
                    }
                }
                // Envoy: the timeout flag is set only on a failed host, and cleared by
                // any other kind of failure.
                if outcome == Outcome::Timeout && host.failed_active_hc() {
                    host.set_flag(ACTIVE_HC_TIMEOUT);
                } else {
                    host.clear_flag(ACTIVE_HC_TIMEOUT);
                }
                t
            }
        };
        self.first_check = false;
        t
    }
}

/// The wait before the next check (Envoy's `interval()` without jitter; the
/// edge intervals are not configurable here and default, as in Envoy, to
/// `interval` after a success and `unhealthy_interval` after a failure).
pub fn next_interval(
    cfg: &HealthCheck,
    cluster_had_traffic: bool,
    last_check_passed: bool,
) -> Duration {
    if !cluster_had_traffic {
        cfg.no_traffic_interval
    } else if last_check_passed {
        cfg.interval
    } else {
        cfg.unhealthy_interval
    }
}

/// What a check does on the wire.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Connect (and complete the TLS handshake, over TLS), then close.
    Tcp {
        /// TLS, when the check runs over it.
        tls: Option<TlsClient>,
    },
    /// `GET path` with `Connection: close`; the status line decides.
    Http {
        /// The request, serialised once.
        request: Arc<[u8]>,
        /// Half-open `[start, end)` ranges of good statuses.
        expected: Arc<[(u16, u16)]>,
        /// TLS, when the check runs over it.
        tls: Option<TlsClient>,
    },
    /// The check's TLS settings could not be used (the reason): every check
    /// fails, as a connection that cannot be made.
    Unusable(Arc<str>),
    /// Test double: answers from a script, then repeats the last answer.
    #[cfg(test)]
    Scripted(Arc<std::sync::Mutex<std::collections::VecDeque<ScriptStep>>>),
}

/// One scripted check (tests only): the outcome, or a hang (to provoke a timeout).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub enum ScriptStep {
    /// Return this outcome.
    Answer(Outcome),
    /// Never answer.
    Hang,
}

impl Probe {
    /// The probe for a cluster's health check.
    pub fn new(cfg: &HealthCheck, cluster_name: &str) -> Probe {
        let tls = match cfg.tls.as_ref().map(TlsClient::new).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(cluster = cluster_name, error = %e, "health check TLS unusable; every check fails");
                return Probe::Unusable(Arc::from(e));
            }
        };
        match &cfg.kind {
            HealthCheckKind::Tcp => Probe::Tcp { tls },
            HealthCheckKind::Http {
                path,
                host,
                expected_statuses,
            } => {
                let host = host.as_deref().unwrap_or(cluster_name);
                let request = format!(
                    "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: Envoy/HC\r\nconnection: close\r\n\r\n"
                );
                let expected: Arc<[(u16, u16)]> = if expected_statuses.is_empty() {
                    Arc::from(&[(200, 201)][..])
                } else {
                    Arc::from(expected_statuses.as_slice())
                };
                Probe::Http {
                    request: Arc::from(request.into_bytes()),
                    expected,
                    tls,
                }
            }
        }
    }

    /// Runs one check (without the timeout, which the caller applies).
    pub async fn check(&self, addr: SocketAddr) -> Outcome {
        match self {
            Probe::Tcp { tls } => match TcpStream::connect(addr).await {
                Ok(s) => match tls {
                    None => Outcome::Success,
                    Some(tls) => match tls.handshake(s, addr.ip()).await {
                        Ok(_) => Outcome::Success,
                        Err(_) => Outcome::NetworkFailure,
                    },
                },
                Err(_) => Outcome::NetworkFailure,
            },
            Probe::Http {
                request,
                expected,
                tls,
            } => {
                let Ok(s) = TcpStream::connect(addr).await else {
                    return Outcome::NetworkFailure;
                };
                let _ = s.set_nodelay(true);
                match tls {
                    None => http_exchange(s, request, expected).await,
                    Some(tls) => match tls.handshake(s, addr.ip()).await {
                        Ok(s) => http_exchange(s, request, expected).await,
                        Err(_) => Outcome::NetworkFailure,
                    },
                }
            }
            Probe::Unusable(_) => Outcome::NetworkFailure,
            #[cfg(test)]
            Probe::Scripted(script) => {
                let step = {
                    let mut s = script.lock().unwrap();
                    if s.len() > 1 {
                        s.pop_front()
                    } else {
                        s.front().copied()
                    }
                };
                match step {
                    Some(ScriptStep::Answer(o)) => o,
                    Some(ScriptStep::Hang) | None => std::future::pending().await,
                }
            }
        }
    }
}

/// Sends `request` over `s` and judges the status line of the answer.
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    expected: &[(u16, u16)],
) -> Outcome {
    if s.write_all(request).await.is_err() || s.flush().await.is_err() {
        return Outcome::NetworkFailure;
    }
    // Only the status line matters: "HTTP/1.1 200 OK\r\n".
    let mut buf = [0u8; 512];
    let mut len = 0;
    loop {
        match s.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return Outcome::NetworkFailure,
            Ok(n) => len += n,
        }
        if len >= 12 || buf[..len].contains(&b'\n') {
            break;
        }
    }
    match parse_status(&buf[..len]) {
        Some(code) if expected.iter().any(|&(lo, hi)| code >= lo && code < hi) => Outcome::Success,
        Some(_) => Outcome::ActiveFailure,
        None => Outcome::NetworkFailure,
    }
}

fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// What a host's checks mean for the host set: told after every check.
pub trait CheckObserver: std::fmt::Debug + Send + Sync {
    /// After a check of `host` that `passed` or not; `changed` when the host
    /// turned healthy or unhealthy. False stops the host's checker (the host
    /// left the cluster).
    fn after_check(&self, host: &Arc<Host>, changed: bool, passed: bool) -> bool;
}

/// Everything a host's checker task needs.
#[derive(Debug, Clone)]
pub struct CheckerCtx {
    /// The health check settings.
    pub cfg: Arc<HealthCheck>,
    /// The probe.
    pub probe: Probe,
    /// The cluster's stats (check counters; traffic detection).
    pub stats: Arc<ClusterStats>,
    /// Told after each check (the cluster version; gone once it is dropped).
    pub observer: Weak<dyn CheckObserver>,
}

/// Checks `host` until `token` is cancelled. A host that already had its
/// first check (kept across a cluster change) waits one interval first.
pub async fn run_checker(host: Arc<Host>, ctx: CheckerCtx, token: CancellationToken) {
    let mut session = Session::new(!host.first_check_done());
    if !session.first_check {
        let wait = next_interval(&ctx.cfg, ctx.stats.had_traffic(), !host.failed_active_hc());
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    loop {
        ctx.stats.hc_attempt.inc();
        let outcome = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = tokio::time::timeout(ctx.cfg.timeout, ctx.probe.check(host.addr())) => {
                r.unwrap_or(Outcome::Timeout)
            }
        };
        let t = session.on_result(&host, outcome, &ctx.cfg, &ctx.stats);
        let passed = outcome == Outcome::Success;
        host.mark_first_check_done();
        let changed = t == Transition::Changed;
        if changed {
            tracing::info!(
                host = %host.addr(),
                healthy = !host.failed_active_hc(),
                ?outcome,
                "health check changed host state"
            );
        }
        let keep = match ctx.observer.upgrade() {
            Some(o) => o.after_check(&host, changed, passed),
            None => false,
        };
        if !keep {
            return;
        }
        let wait = next_interval(&ctx.cfg, ctx.stats.had_traffic(), passed);
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::lb::LoadBalancer;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn cfg(unhealthy: u32, healthy: u32) -> HealthCheck {
        HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            no_traffic_interval: Duration::from_secs(60),
            unhealthy_interval: Duration::from_secs(3),
            kind: HealthCheckKind::Tcp,
            tls: None,
        }
    }

    fn host() -> Arc<Host> {
        Arc::new(Host::new("127.0.0.1:9".parse().unwrap(), 1, true))
    }

    #[test]
    fn first_success_decides_then_thresholds() {
        let (c, st, h) = (cfg(3, 2), ClusterStats::default(), host());
        let mut s = Session::new(true);
        assert!(!h.is_healthy());
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Changed
        );
        assert!(h.is_healthy());
        // Network failures count towards unhealthy_threshold (3).
        assert_eq!(
            s.on_result(&h, Outcome::NetworkFailure, &c, &st),
            Transition::Pending
        );
        assert_eq!(
            s.on_result(&h, Outcome::Timeout, &c, &st),
            Transition::Pending
        );
        // A healthy host does not show the timeout flag.
        assert_eq!(h.health_flags(), "healthy");
        // A success in between resets the count.
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Unchanged
        );
        assert_eq!(h.health_flags(), "healthy");
        for _ in 0..2 {
            assert_eq!(
                s.on_result(&h, Outcome::Timeout, &c, &st),
                Transition::Pending
            );
        }
        assert_eq!(
            s.on_result(&h, Outcome::Timeout, &c, &st),
            Transition::Changed
        );
        assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
        // While unhealthy the timeout flag follows the last failure.
        assert_eq!(
            s.on_result(&h, Outcome::NetworkFailure, &c, &st),
            Transition::Unchanged
        );
        assert_eq!(h.health_flags(), "/failed_active_hc");
        assert_eq!(
            s.on_result(&h, Outcome::Timeout, &c, &st),
            Transition::Unchanged
        );
        // Back to healthy takes healthy_threshold (2) successes; the flag stays until then.
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Pending
        );
        assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Changed
        );
        assert_eq!(h.health_flags(), "healthy");
        assert_eq!(st.hc_success.get(), 4);
        assert_eq!(st.hc_failure.get(), 7);
        assert_eq!(st.hc_network_failure.get(), 7);
    }

    #[test]
    fn unexpected_status_fails_at_once_and_failed_first_check_needs_threshold() {
        let (c, st, h) = (cfg(3, 2), ClusterStats::default(), host());
        let mut s = Session::new(true);
        // First check fails: stays unhealthy, and the first-check shortcut is gone.
        assert_eq!(
            s.on_result(&h, Outcome::NetworkFailure, &c, &st),
            Transition::Unchanged
        );
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Pending
        );
        assert_eq!(
            s.on_result(&h, Outcome::Success, &c, &st),
            Transition::Changed
        );
        assert!(h.is_healthy());
        assert_eq!(
            s.on_result(&h, Outcome::ActiveFailure, &c, &st),
            Transition::Changed
        );
        assert_eq!(h.health_flags(), "/failed_active_hc");
        assert_eq!(st.hc_network_failure.get(), 1);
        assert_eq!(st.hc_failure.get(), 2);
    }

    #[test]
    fn intervals() {
        let c = cfg(1, 1);
        // (had traffic, last check passed)
        assert_eq!(next_interval(&c, false, true), Duration::from_secs(60));
        assert_eq!(next_interval(&c, false, false), Duration::from_secs(60));
        assert_eq!(next_interval(&c, true, true), Duration::from_secs(1));
        assert_eq!(next_interval(&c, true, false), Duration::from_secs(3));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"garbage"), None);
    }

    fn scripted(steps: &[ScriptStep]) -> Probe {
        Probe::Scripted(Arc::new(Mutex::new(
            steps.iter().copied().collect::<VecDeque<_>>(),
        )))
    }

    /// Refreshes the load balancer when a host changes state (what the
    /// cluster does, without the rest).
    #[derive(Debug)]
    struct Refresh(Arc<LoadBalancer>);

    impl CheckObserver for Refresh {
        fn after_check(&self, _: &Arc<Host>, changed: bool, _: bool) -> bool {
            if changed {
                self.0.refresh();
            }
            true
        }
    }

    /// The checker loop on paused time: first check at once, timeouts mark
    /// the host, no_traffic_interval until traffic, then interval /
    /// unhealthy_interval, and the load balancer follows.
    #[tokio::test(start_paused = true)]
    async fn checker_loop_on_paused_time() {
        use ScriptStep::*;
        let h = host();
        let lb = Arc::new(LoadBalancer::new(vec![h.clone()], 0.0, 0));
        let observer = Arc::new(Refresh(lb.clone()));
        assert!(lb.pick().is_none());
        let stats = Arc::new(ClusterStats::default());
        let ctx = CheckerCtx {
            cfg: Arc::new(cfg(2, 1)),
            probe: scripted(&[
                Answer(Outcome::Success),
                Hang,
                Hang,
                Answer(Outcome::Success),
            ]),
            stats: stats.clone(),
            observer: Arc::downgrade(&observer) as Weak<dyn CheckObserver>,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(run_checker(h.clone(), ctx, token.clone()));
        let t0 = tokio::time::Instant::now();

        // First check at once: healthy, and the lb sees it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(h.first_check_done());
        assert!(h.is_healthy());
        assert_eq!(lb.pick().unwrap().addr(), h.addr());
        assert_eq!(stats.hc_attempt.get(), 1);

        // No traffic yet: next check after no_traffic_interval (60 s).
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(stats.hc_attempt.get(), 1);
        stats.upstream_cx_total.inc(); // the cluster carries traffic from now on
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stats.hc_attempt.get(), 2);
        // That check hangs: timeout after 500 ms, counts as a network failure (1 of 2).
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(h.is_healthy());
        assert_eq!(h.health_flags(), "healthy");
        // After a failure the next check comes after unhealthy_interval (3 s); it hangs
        // again: second failure, unhealthy.
        tokio::time::sleep(Duration::from_millis(2800)).await;
        assert_eq!(stats.hc_attempt.get(), 2);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(stats.hc_attempt.get(), 3);
        assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
        assert!(lb.pick().is_none());
        // Unhealthy: next check after unhealthy_interval (3 s), succeeds (threshold 1).
        tokio::time::sleep(Duration::from_millis(2700)).await;
        assert_eq!(stats.hc_attempt.get(), 3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stats.hc_attempt.get(), 4);
        assert_eq!(h.health_flags(), "healthy");
        assert!(lb.pick().is_some());
        assert!(t0.elapsed() >= Duration::from_secs(67));

        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_loopback() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tcp = Probe::new(&cfg(1, 1), "c");
        assert_eq!(tcp.check(addr).await, Outcome::Success);
        drop(l.accept().await.unwrap()); // the TCP check's connection

        let mut http = cfg(1, 1);
        http.kind = HealthCheckKind::Http {
            path: "/healthz".into(),
            host: None,
            expected_statuses: Vec::new(),
        };
        let probe = Probe::new(&http, "svc");
        for (answer, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
                Outcome::Success,
            ),
            (
                &b"HTTP/1.1 503 Service Unavailable\r\n\r\n"[..],
                Outcome::ActiveFailure,
            ),
            (&b""[..], Outcome::NetworkFailure),
        ] {
            let server = async {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                s.write_all(answer).await.unwrap();
                req
            };
            let (req, got) = tokio::join!(server, probe.check(addr));
            assert!(
                req.starts_with("GET /healthz HTTP/1.1\r\nhost: svc\r\n"),
                "{req}"
            );
            assert_eq!(got, want);
        }
        drop(l);
        assert_eq!(probe.check(addr).await, Outcome::NetworkFailure);
    }

    /// A CA and a TLS server it certifies, answering every request with
    /// `status`, reporting the SNI each handshake carried.
    struct TlsServer {
        addr: SocketAddr,
        ca_pem: String,
        sni: tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    }

    async fn tls_server(status: u16) -> TlsServer {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        // Named for another host than the one checked: Envoy (and so
        // pylon-proxy) checks the chain only.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["apiserver.example".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let _ = tx.send(tls.get_ref().1.server_name().map(str::to_string));
                    let mut buf = vec![0u8; 1024];
                    if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        TlsServer {
            addr,
            ca_pem: ca.pem(),
            sni: rx,
        }
    }

    fn tls_probe(kind: HealthCheckKind, tls: crate::model::UpstreamTls) -> Probe {
        let mut c = cfg(1, 1);
        c.kind = kind;
        c.tls = Some(tls);
        Probe::new(&c, "api")
    }

    fn trusted(pem: &str) -> Option<crate::model::TrustedCa> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, pem).unwrap();
        Some(crate::model::TrustedCa::read(&path.display().to_string()).unwrap())
    }

    #[tokio::test]
    async fn probes_over_tls_verify_the_chain_and_send_sni_only_when_set() {
        use crate::model::UpstreamTls;
        let http = HealthCheckKind::Http {
            path: "/readyz".into(),
            host: None,
            expected_statuses: Vec::new(),
        };
        let mut ok = tls_server(200).await;
        let other = tls_server(200).await;

        // The right CA, with SNI.
        let probe = tls_probe(
            http.clone(),
            UpstreamTls {
                sni: Some("kubernetes".into()),
                trusted_ca: trusted(&ok.ca_pem),
            },
        );
        assert_eq!(probe.check(ok.addr).await, Outcome::Success);
        assert_eq!(ok.sni.recv().await.unwrap().as_deref(), Some("kubernetes"));
        // No SNI unless asked for.
        let probe = tls_probe(
            http.clone(),
            UpstreamTls {
                sni: None,
                trusted_ca: trusted(&ok.ca_pem),
            },
        );
        assert_eq!(probe.check(ok.addr).await, Outcome::Success);
        assert_eq!(ok.sni.recv().await.unwrap(), None);
        // A chain leading to another CA fails the handshake: a network failure.
        let probe = tls_probe(
            http.clone(),
            UpstreamTls {
                sni: None,
                trusted_ca: trusted(&other.ca_pem),
            },
        );
        assert_eq!(probe.check(ok.addr).await, Outcome::NetworkFailure);
        // Without a CA any certificate passes, as in Envoy.
        let insecure = UpstreamTls {
            sni: None,
            trusted_ca: None,
        };
        let probe = tls_probe(http.clone(), insecure.clone());
        assert_eq!(probe.check(other.addr).await, Outcome::Success);
        // The status still decides.
        let failing = tls_server(500).await;
        let probe = tls_probe(http, insecure.clone());
        assert_eq!(probe.check(failing.addr).await, Outcome::ActiveFailure);
        // A TCP check over TLS passes once the handshake is done.
        let probe = tls_probe(HealthCheckKind::Tcp, insecure.clone());
        assert_eq!(probe.check(failing.addr).await, Outcome::Success);
        // ... and a plain server fails it.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        assert_eq!(probe.check(plain_addr).await, Outcome::NetworkFailure);
    }
}
