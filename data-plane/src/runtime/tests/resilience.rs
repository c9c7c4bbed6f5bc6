//! Loopback tests of what a runtime does when a backend dies or misbehaves:
//! HTTP retries (another host, the body sent again, per-try timeouts, the
//! replay bound), outlier detection fed by real traffic, and removed hosts
//! kept while they pass their health checks.

use std::sync::atomic::AtomicU16;

use http_body_util::Full;

use super::*;
use crate::model::{OutlierDetection, RetryOn, RetryPolicy};

/// A port nobody listens on.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An HTTP backend answering `<id> <request body>` with the status `status`
/// holds; counts its requests.
async fn status_backend(
    id: &'static str,
    status: Arc<AtomicU16>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (status, count) = (status.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (status, count) = (status.clone(), count.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let body = body.unwrap_or_default();
                        let mut r = Response::new(Full::new(Bytes::from(format!(
                            "{id} {}",
                            String::from_utf8_lossy(&body)
                        ))));
                        *r.status_mut() = StatusCode::from_u16(status.load(Ordering::SeqCst))
                            .unwrap_or(StatusCode::OK);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

/// Accepts connections and never answers.
async fn hung_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

fn retry(on: RetryOn, num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: on,
        num_retries,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(10),
        previous_hosts: false,
        host_selection_retry_max_attempts: 1,
    }
}

/// An inline HTTP listener routing `/` to `cluster` with `policy`.
async fn retrying_listener(
    rt: &Arc<Runtime>,
    cluster: &str,
    policy: RetryPolicy,
    buffer_limit: Option<u32>,
) -> SocketAddr {
    let mut r = route(PathMatch::Prefix("/".into()), cluster, None, None);
    r.action.retry_policy = Some(policy);
    r.action.per_request_buffer_limit_bytes = buffer_limit;
    rt.set_listeners(vec![http_listener(
        "web",
        RouteSource::Inline(route_config("inline", vec![r])),
    )])
    .await
    .unwrap();
    bound(rt, "web")
}

type BodyClient = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn post(addr: SocketAddr, body: &'static str) -> (StatusCode, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut c, conn): (BodyClient, _) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/submit")
        .header("host", "example.com")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn retries_go_to_another_host_and_send_the_body_again() {
    let rt = runtime(Duration::from_secs(1));
    let (ok, ok_served) = status_backend("ok", Arc::new(AtomicU16::new(200))).await;
    let (bad, bad_served) = status_backend("bad", Arc::new(AtomicU16::new(503))).await;
    let dead = dead_addr();
    rt.set_clusters(vec![static_cluster("c", &[dead, bad, ok])])
        .await
        .unwrap();
    let on = RetryOn {
        connect_failure: true,
        gateway_error: true,
        ..RetryOn::default()
    };
    let addr = retrying_listener(&rt, "c", retry(on, 2), None).await;
    // Whichever host a request starts on, two retries reach `ok` (round
    // robin moves on), with the whole body.
    for _ in 0..6 {
        assert_eq!(
            post(addr, "payload").await,
            (StatusCode::OK, "ok payload".into())
        );
    }
    assert_eq!(ok_served.load(Ordering::SeqCst), 6);
    // Each attempt on the dead or the 503 host was retried once.
    let retries = stat(&rt, "cluster.c.upstream_rq_retry");
    assert!(retries >= 6, "{retries}");
    // Requests retried at all (one may have started on `ok`).
    let retried = stat(&rt, "cluster.c.upstream_rq_retry_success");
    assert!((5..=6).contains(&retried), "{retried}");
    assert_eq!(
        bad_served.load(Ordering::SeqCst) as u64 + stat(&rt, "cluster.c.upstream_cx_connect_fail"),
        retries
    );

    // One retry is not always enough: the last answer is returned.
    let addr = retrying_listener(&rt, "c", retry(on, 0), None).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(post(addr, "x").await.0.as_u16());
    }
    answers.sort_unstable();
    assert_eq!(answers, vec![200, 503, 503]);
    assert_eq!(stat(&rt, "cluster.c.upstream_rq_retry_limit_exceeded"), 2);
}

#[tokio::test]
async fn previous_hosts_avoids_the_hosts_tried() {
    let rt = runtime(Duration::from_secs(1));
    let status = Arc::new(AtomicU16::new(503));
    let (b0, _) = status_backend("b0", status.clone()).await;
    let (b1, _) = status_backend("b1", status.clone()).await;
    let (ok, _) = status_backend("ok", Arc::new(AtomicU16::new(200))).await;
    rt.set_clusters(vec![static_cluster("c", &[b0, b1, ok])])
        .await
        .unwrap();
    let mut p = retry(
        RetryOn {
            status_5xx: true,
            ..RetryOn::default()
        },
        2,
    );
    p.previous_hosts = true;
    p.host_selection_retry_max_attempts = 3;
    let addr = retrying_listener(&rt, "c", p, None).await;
    for _ in 0..5 {
        assert_eq!(post(addr, "p").await, (StatusCode::OK, "ok p".into()));
    }
}

#[tokio::test]
async fn per_try_timeout_moves_on_and_the_route_timeout_ends_all_attempts() {
    let rt = runtime(Duration::from_secs(1));
    let hung = hung_backend().await;
    let (ok, _) = status_backend("ok", Arc::new(AtomicU16::new(200))).await;
    rt.set_clusters(vec![static_cluster("c", &[hung, ok])])
        .await
        .unwrap();
    let mut p = retry(
        RetryOn {
            reset: true,
            ..RetryOn::default()
        },
        1,
    );
    p.per_try_timeout = Some(Duration::from_millis(200));
    let addr = retrying_listener(&rt, "c", p.clone(), None).await;
    for _ in 0..2 {
        assert_eq!(post(addr, "t").await, (StatusCode::OK, "ok t".into()));
    }
    // Round robin from a random start: one or both began on the hung host.
    let timeouts = stat(&rt, "cluster.c.upstream_rq_per_try_timeout");
    assert!((1..=2).contains(&timeouts), "{timeouts}");

    // Only the hung host: the per-try timeout, retried once, then a 504.
    rt.set_clusters(vec![static_cluster("c", &[hung])])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        post(addr, "t").await,
        (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout".into()
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        stat(&rt, "cluster.c.upstream_rq_per_try_timeout"),
        timeouts + 2
    );
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_not_retried() {
    let rt = runtime(Duration::from_secs(1));
    let (bad, _) = status_backend("bad", Arc::new(AtomicU16::new(503))).await;
    let (ok, _) = status_backend("ok", Arc::new(AtomicU16::new(200))).await;
    rt.set_clusters(vec![static_cluster("c", &[bad, ok])])
        .await
        .unwrap();
    let on = RetryOn {
        status_5xx: true,
        ..RetryOn::default()
    };
    let addr = retrying_listener(&rt, "c", retry(on, 1), Some(4)).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(post(addr, "0123456789").await);
    }
    answers.sort();
    assert_eq!(
        answers,
        vec![
            (StatusCode::OK, "ok 0123456789".into()),
            (StatusCode::SERVICE_UNAVAILABLE, "bad 0123456789".into()),
        ]
    );
    assert_eq!(stat(&rt, "cluster.c.retry_or_shadow_abandoned"), 1);
    assert_eq!(stat(&rt, "cluster.c.upstream_rq_retry"), 0);
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_host_and_returns_it() {
    let rt = runtime(Duration::from_secs(1));
    let status = Arc::new(AtomicU16::new(200));
    let (flaky, _) = status_backend("flaky", status.clone()).await;
    let (ok, _) = status_backend("ok", Arc::new(AtomicU16::new(200))).await;
    let mut c = static_cluster("c", &[flaky, ok]);
    c.outlier_detection = Some(Box::new(OutlierDetection {
        consecutive_5xx: 2,
        interval: Duration::from_millis(50),
        base_ejection_time: Duration::from_millis(300),
        max_ejection_percent: 50,
        ..OutlierDetection::default()
    }));
    rt.set_clusters(vec![c]).await.unwrap();
    let on = RetryOn {
        status_5xx: true,
        ..RetryOn::default()
    };
    let addr = retrying_listener(&rt, "c", retry(on, 1), None).await;
    let flags = |rt: &Runtime| {
        rt.clusters_view()[0]
            .hosts
            .iter()
            .find(|h| h.addr == flaky)
            .map(|h| h.health_flags.clone())
            .unwrap_or_default()
    };
    status.store(503, Ordering::SeqCst);
    // Every request succeeds (retried); two 503s in a row eject `flaky`.
    for _ in 0..4 {
        assert_eq!(post(addr, "o").await, (StatusCode::OK, "ok o".into()));
    }
    assert_eq!(flags(&rt), "/failed_outlier_check");
    assert_eq!(
        stat(
            &rt,
            "cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"
        ),
        1
    );
    assert_eq!(stat(&rt, "cluster.c.outlier_detection.ejections_active"), 1);
    // It is back after the ejection time, at a sweep.
    status.store(200, Ordering::SeqCst);
    assert_eventually!(flags(&rt) == "healthy");
    assert_eq!(stat(&rt, "cluster.c.outlier_detection.ejections_active"), 0);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(post(addr, "o").await.1);
    }
    assert!(ids.contains(&"flaky o".to_string()), "{ids:?}");
    // Without outlier detection the stats are not shown.
    rt.set_clusters(vec![static_cluster("c", &[flaky, ok])])
        .await
        .unwrap();
    assert!(!rt
        .stats()
        .iter()
        .any(|(n, _)| n.contains("outlier_detection")));
}

#[tokio::test]
async fn tcp_connect_failures_eject_with_split_local_origin_errors() {
    let rt = runtime(Duration::from_secs(1));
    let (live, count) = echo_backend().await;
    let dead = dead_addr();
    let mut c = static_cluster("c", &[dead, live]);
    c.outlier_detection = Some(Box::new(OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: 2,
        max_ejection_percent: 50,
        ..OutlierDetection::default()
    }));
    rt.set_clusters(vec![c]).await.unwrap();
    let mut l = tcp_listener("t", "c");
    if let ListenerKind::Tcp(t) = &mut l.kind {
        t.max_connect_attempts = 3;
    }
    rt.set_listeners(vec![l]).await.unwrap();
    let addr = bound(&rt, "t");
    for _ in 0..6 {
        echo_once(addr, b"x").await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 6);
    let view = rt.clusters_view();
    let d = view[0].hosts.iter().find(|h| h.addr == dead).unwrap();
    assert_eq!(d.health_flags, "/failed_outlier_check");
    // Two failed connects ejected it; no connection tried it since.
    assert_eq!(d.cx_connect_fail, 2);
    assert_eq!(
        stat(
            &rt,
            "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"
        ),
        1
    );
}

/// A health-checked EDS cluster `c` with TCP checks every 50 ms.
fn checked_eds(ignore_health_on_host_removal: bool) -> Cluster {
    let mut c = static_cluster("c", &[]);
    c.discovery = Discovery::Eds {
        service_name: "c".into(),
    };
    c.health_check = Some(HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        no_traffic_interval: Duration::from_millis(50),
        unhealthy_interval: Duration::from_millis(50),
        kind: HealthCheckKind::Tcp,
        tls: None,
    });
    c.ignore_health_on_host_removal = ignore_health_on_host_removal;
    c
}

fn assignment(addrs: &[SocketAddr]) -> LoadAssignment {
    LoadAssignment {
        name: "c".into(),
        endpoints: addrs
            .iter()
            .map(|&addr| Endpoint { addr, weight: 1 })
            .collect(),
    }
}

fn hosts_and_flags(rt: &Runtime) -> Vec<(SocketAddr, String)> {
    let mut v: Vec<(SocketAddr, String)> = rt.clusters_view()[0]
        .hosts
        .iter()
        .map(|h| (h.addr, h.health_flags.clone()))
        .collect();
    v.sort();
    v
}

/// A TCP backend that can be stopped (its listener closed).
async fn stoppable_backend() -> (SocketAddr, CancellationToken) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                r = l.accept() => drop(r),
            }
        }
    });
    (addr, stop)
}

#[tokio::test]
async fn a_removed_host_stays_while_it_passes_its_health_checks() {
    let rt = runtime(Duration::from_secs(1));
    let (a, _stop_a) = stoppable_backend().await;
    let (b, stop_b) = stoppable_backend().await;
    rt.set_clusters(vec![checked_eds(false)]).await.unwrap();
    rt.set_load_assignments(vec![assignment(&[a, b])])
        .await
        .unwrap();
    assert_eventually!(hosts_and_flags(&rt).iter().all(|(_, f)| f == "healthy"));
    // Removed from EDS while healthy: kept, flagged, and still picked.
    rt.set_load_assignments(vec![assignment(&[a])])
        .await
        .unwrap();
    assert_eq!(
        hosts_and_flags(&rt),
        sorted(vec![
            (a, "healthy".into()),
            (b, "/pending_dynamic_removal".into())
        ])
    );
    let cluster = rt.clusters.slot("c").get().unwrap();
    let picked: Vec<SocketAddr> = (0..4)
        .filter_map(|_| cluster.pick())
        .map(|h| h.addr())
        .collect();
    assert!(picked.contains(&b), "{picked:?}");
    // Added back: no longer pending. Removed again, then its checks fail: gone.
    rt.set_load_assignments(vec![assignment(&[a, b])])
        .await
        .unwrap();
    assert_eq!(
        hosts_and_flags(&rt),
        sorted(vec![(a, "healthy".into()), (b, "healthy".into())])
    );
    rt.set_load_assignments(vec![assignment(&[a])])
        .await
        .unwrap();
    stop_b.cancel();
    assert_eventually!(hosts_and_flags(&rt) == vec![(a, "healthy".to_string())]);
    // With ignore_health_on_host_removal a removed host leaves at once.
    let (c, _stop_c) = stoppable_backend().await;
    rt.set_clusters(vec![checked_eds(true)]).await.unwrap();
    rt.set_load_assignments(vec![assignment(&[a, c])])
        .await
        .unwrap();
    assert_eventually!(
        hosts_and_flags(&rt).len() == 2 && hosts_and_flags(&rt).iter().all(|(_, f)| f == "healthy")
    );
    rt.set_load_assignments(vec![assignment(&[a])])
        .await
        .unwrap();
    assert_eq!(hosts_and_flags(&rt), vec![(a, "healthy".to_string())]);
}

fn sorted(mut v: Vec<(SocketAddr, String)>) -> Vec<(SocketAddr, String)> {
    v.sort();
    v
}
