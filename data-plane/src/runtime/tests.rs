//! Loopback tests of a whole runtime: listeners on 127.0.0.1 port 0, real
//! backends, real clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::{
    Cluster, Discovery, Endpoint, HealthCheck, HealthCheckKind, HttpManager, Listener,
    ListenerKind, LoadAssignment, PathMatch, Route, RouteAction, RouteConfig, RouteSource,
    TcpProxy, VirtualHost,
};

/// Polls `cond` until it holds (at most 5 s).
macro_rules! assert_eventually {
    ($cond:expr) => {{
        let mut ok = false;
        for _ in 0..500 {
            if $cond {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok, "condition never held: {}", stringify!($cond));
    }};
}

fn runtime(drain_time: Duration) -> Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        shutdown: CancellationToken::new(),
        drain_time,
    })
}

/// A static cluster of `addrs` with a 1 s connect timeout.
pub(crate) fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
    let endpoints = addrs
        .iter()
        .map(|&addr| Endpoint { addr, weight: 1 })
        .collect();
    Cluster {
        connect_timeout: Duration::from_secs(1),
        ..Cluster::new(
            name,
            Discovery::Static(LoadAssignment {
                name: name.into(),
                endpoints,
            }),
        )
    }
}

fn tcp_listener(name: &str, cluster: &str) -> Listener {
    Listener {
        name: name.into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        kind: ListenerKind::Tcp(TcpProxy {
            stat_prefix: name.into(),
            cluster: cluster.into(),
            max_connect_attempts: 1,
            idle_timeout: Some(Duration::from_secs(3600)),
        }),
    }
}

fn http_listener(name: &str, routes: RouteSource) -> Listener {
    Listener {
        name: name.into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        kind: ListenerKind::Http(HttpManager {
            stat_prefix: name.into(),
            routes,
            limits: Default::default(),
            normalize_path: false,
            merge_slashes: false,
        }),
    }
}

fn route(
    path: PathMatch,
    cluster: &str,
    rewrite: Option<&str>,
    timeout: Option<Duration>,
) -> Route {
    Route {
        path,
        action: RouteAction {
            cluster: cluster.into(),
            prefix_rewrite: rewrite.map(str::to_owned),
            timeout,
            retry_policy: None,
            per_request_buffer_limit_bytes: None,
        },
    }
}

fn route_config(name: &str, routes: Vec<Route>) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            retry_policy: None,
            per_request_buffer_limit_bytes: None,
        }],
    }
}

fn bound(rt: &Runtime, name: &str) -> SocketAddr {
    rt.listeners_view()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("listener {name} not bound"))
}

fn stat(rt: &Runtime, name: &str) -> u64 {
    rt.stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// An echo server that counts its connections.
async fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count)
}

/// An HTTP server answering `<id> <path?query> <x-envoy-original-path or ->`;
/// `/slow` never answers.
async fn id_backend(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    if req.uri().path() == "/slow" {
                        std::future::pending::<()>().await;
                    }
                    let orig = req
                        .headers()
                        .get("x-envoy-original-path")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_else(|| "-".into());
                    let body = format!("{id} {} {orig}", req.uri());
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type Client = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn client(addr: SocketAddr) -> Client {
    let s = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(c: &mut Client, path: &str) -> (StatusCode, String) {
    c.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "example.com")
        .body(Empty::new())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn echo_once(addr: SocketAddr, msg: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
    s.shutdown().await.unwrap();
    // Half-close propagates: the backend sees EOF, closes, and so do we.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn tcp_proxy_round_robin_over_three_echo_backends() {
    let rt = runtime(Duration::from_secs(1));
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(echo_backend().await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
    rt.set_clusters(vec![static_cluster("echo", &addrs)])
        .await
        .unwrap();
    rt.set_listeners(vec![tcp_listener("tcp_in", "echo")])
        .await
        .unwrap();
    assert!(rt.ready());
    let addr = bound(&rt, "tcp_in");
    for i in 0..9 {
        echo_once(addr, format!("hello {i}").as_bytes()).await;
    }
    for (_, count) in &backends {
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }
    let view = rt.clusters_view();
    assert_eq!(view.len(), 1);
    assert!(view[0]
        .hosts
        .iter()
        .all(|h| h.cx_total == 3 && h.health_flags == "healthy"));
    assert_eventually!(view_active(&rt) == 0);
    assert_eq!(stat(&rt, "tcp.tcp_in.downstream_cx_total"), 9);
    assert_eq!(stat(&rt, "cluster.echo.upstream_cx_total"), 9);
    assert_eventually!(stat(&rt, "tcp.tcp_in.downstream_cx_rx_bytes_total") == 9 * 7);
    let lprefix = format!("listener.{}.", addr.to_string().replace(':', "_"));
    assert_eq!(stat(&rt, &format!("{lprefix}downstream_cx_total")), 9);

    // No host (empty cluster): the downstream connection is closed.
    rt.set_clusters(vec![static_cluster("echo", &[])])
        .await
        .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(stat(&rt, "cluster.echo.upstream_cx_none_healthy"), 1);
}

fn view_active(rt: &Runtime) -> u64 {
    rt.clusters_view()
        .iter()
        .flat_map(|c| c.hosts.iter())
        .map(|h| h.cx_active)
        .sum()
}

#[tokio::test]
async fn tcp_proxy_tries_next_host_on_connect_failure() {
    let rt = runtime(Duration::from_secs(1));
    let (live, count) = echo_backend().await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    rt.set_clusters(vec![static_cluster("c", &[dead, live])])
        .await
        .unwrap();
    let mut l = tcp_listener("t", "c");
    if let ListenerKind::Tcp(t) = &mut l.kind {
        t.max_connect_attempts = 2;
    }
    rt.set_listeners(vec![l]).await.unwrap();
    let addr = bound(&rt, "t");
    for _ in 0..4 {
        echo_once(addr, b"x").await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 4);
    let hosts = &rt.clusters_view()[0].hosts;
    let dead_view = hosts.iter().find(|h| h.addr == dead).unwrap();
    // Round robin from a random start: the dead host is tried first 3 or 4 times.
    assert!(
        (3..=4).contains(&dead_view.cx_connect_fail),
        "{dead_view:?}"
    );
    assert_eq!(
        stat(&rt, "cluster.c.upstream_cx_connect_fail"),
        dead_view.cx_connect_fail
    );
}

#[tokio::test]
async fn http_routes_to_backends_with_prefix_rewrite_and_rds_updates() {
    let rt = runtime(Duration::from_secs(1));
    let a = id_backend("a").await;
    let b = id_backend("b").await;
    rt.set_clusters(vec![static_cluster("a", &[a]), static_cluster("b", &[b])])
        .await
        .unwrap();
    let timeout = Some(Duration::from_secs(15));
    let rc = route_config(
        "rc",
        vec![
            route(PathMatch::Prefix("/a/".into()), "a", Some("/"), timeout),
            route(PathMatch::Exact("/b".into()), "b", None, timeout),
            route(PathMatch::Prefix("/gone".into()), "nope", None, timeout),
        ],
    );
    rt.set_route_configs(vec![rc]).await.unwrap();
    rt.set_listeners(vec![http_listener("web", RouteSource::Rds("rc".into()))])
        .await
        .unwrap();
    let mut c = client(bound(&rt, "web")).await;

    assert_eq!(
        get(&mut c, "/a/hello?x=1").await,
        (StatusCode::OK, "a /hello?x=1 /a/hello?x=1".into())
    );
    assert_eq!(
        get(&mut c, "/b?q").await,
        (StatusCode::OK, "b /b?q -".into())
    );
    assert_eq!(
        get(&mut c, "/nothing").await,
        (StatusCode::NOT_FOUND, String::new())
    );
    assert_eq!(
        get(&mut c, "/gone").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for _ in 0..5 {
        assert_eq!(get(&mut c, "/a/x").await.0, StatusCode::OK);
    }
    // Upstream connections are reused.
    let a_host = &rt
        .clusters_view()
        .into_iter()
        .find(|v| v.name == "a")
        .unwrap()
        .hosts[0];
    assert_eq!(a_host.cx_total, 1);
    assert_eq!(a_host.rq_total, 6);

    // RDS update: the same downstream connection's next request follows it.
    let rc = route_config(
        "rc",
        vec![route(
            PathMatch::SeparatedPrefix("/b".into()),
            "a",
            None,
            timeout,
        )],
    );
    rt.set_route_configs(vec![rc]).await.unwrap();
    assert_eq!(
        get(&mut c, "/b/z").await,
        (StatusCode::OK, "a /b/z -".into())
    );
    assert_eq!(get(&mut c, "/a/x").await.0, StatusCode::NOT_FOUND);

    assert_eq!(stat(&rt, "http.web.downstream_rq_total"), 11);
    assert_eq!(stat(&rt, "http.web.downstream_rq_2xx"), 8);
    assert_eq!(stat(&rt, "http.web.downstream_rq_4xx"), 2);
    assert_eq!(stat(&rt, "http.web.downstream_rq_5xx"), 1);
    assert_eq!(stat(&rt, "cluster.a.upstream_rq_total"), 7);
    assert_eq!(stat(&rt, "cluster.a.upstream_rq_2xx"), 7);
    let dump = rt.config_dump();
    assert_eq!(
        dump["configs"][3]["dynamic_route_configs"][0]["route_config"]["virtual_hosts"][0]
            ["routes"][0]["match"]["path_separated_prefix"],
        "/b"
    );
}

#[tokio::test]
async fn http_local_replies_and_timeouts() {
    let rt = runtime(Duration::from_secs(1));
    let a = id_backend("a").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut unhealthy = static_cluster("unhealthy", &[dead]);
    unhealthy.healthy_panic_threshold = 0.0;
    unhealthy.health_check = Some(HealthCheck {
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(1),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        no_traffic_interval: Duration::from_secs(60),
        unhealthy_interval: Duration::from_secs(60),
        kind: HealthCheckKind::Http {
            path: "/healthz".into(),
            host: None,
            expected_statuses: vec![],
        },
        tls: None,
    });
    rt.set_clusters(vec![
        static_cluster("a", &[a]),
        static_cluster("dead", &[dead]),
        unhealthy,
    ])
    .await
    .unwrap();
    // Warming: the health-checked cluster's host gets its first check.
    assert_eventually!(rt.ready());
    let view = rt.clusters_view();
    let u = view.iter().find(|c| c.name == "unhealthy").unwrap();
    assert_eq!(u.hosts[0].health_flags, "/failed_active_hc");
    assert!(u.stats.contains(&("health_check.failure".to_owned(), 1)));

    let rc = RouteConfig {
        name: "inline".into(),
        virtual_hosts: vec![VirtualHost {
            name: "v".into(),
            domains: vec!["example.com".into()],
            routes: vec![
                route(
                    PathMatch::Prefix("/slow".into()),
                    "a",
                    None,
                    Some(Duration::from_millis(200)),
                ),
                route(PathMatch::Prefix("/dead".into()), "dead", None, None),
                route(
                    PathMatch::Prefix("/unhealthy".into()),
                    "unhealthy",
                    None,
                    None,
                ),
            ],
            retry_policy: None,
            per_request_buffer_limit_bytes: None,
        }],
    };
    rt.set_listeners(vec![http_listener("web", RouteSource::Inline(rc))])
        .await
        .unwrap();
    let mut c = client(bound(&rt, "web")).await;
    assert_eq!(
        get(&mut c, "/unhealthy").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream".into()
        )
    );
    assert_eq!(
        get(&mut c, "/dead").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure".into()
        )
    );
    assert_eq!(
        get(&mut c, "/slow").await,
        (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout".into()
        )
    );
    assert_eq!(stat(&rt, "cluster.a.upstream_rq_timeout"), 1);
    assert_eq!(stat(&rt, "cluster.dead.upstream_cx_connect_fail"), 1);
}

/// The xDS store owns warming: it gives an EDS cluster without its
/// assignment, or an RDS listener without its routes, only once their one
/// warming timeout has passed. The runtime then uses them at once: it does
/// not start a second wait of its own (which made an RDS listener wait
/// twice the timeout).
#[tokio::test]
async fn resources_given_before_their_eds_or_rds_are_used_at_once() {
    let rt = runtime(Duration::from_secs(1));
    let mut eds = static_cluster("a", &[]);
    eds.discovery = Discovery::Eds {
        service_name: "a".into(),
    };
    rt.set_clusters(vec![eds]).await.unwrap();
    assert!(rt.ready(), "an EDS cluster without its assignment is warm");
    rt.set_listeners(vec![http_listener("web", RouteSource::Rds("never".into()))])
        .await
        .unwrap();
    let mut c = client(bound(&rt, "web")).await;
    // Well before a second warming timeout would end.
    let answer = tokio::time::timeout(Duration::from_secs(5), get(&mut c, "/"))
        .await
        .expect("the listener answers without waiting for its routes");
    assert_eq!(answer, (StatusCode::NOT_FOUND, String::new()));
}

#[tokio::test]
async fn listener_reconciliation_keeps_unchanged_and_drains_changed() {
    let rt = runtime(Duration::from_millis(300));
    let (echo, _) = echo_backend().await;
    let (echo2, count2) = echo_backend().await;
    rt.set_clusters(vec![
        static_cluster("e", &[echo]),
        static_cluster("e2", &[echo2]),
    ])
    .await
    .unwrap();
    rt.set_listeners(vec![tcp_listener("keep", "e"), tcp_listener("change", "e")])
        .await
        .unwrap();
    let keep = bound(&rt, "keep");
    let change = bound(&rt, "change");
    let mut kept_conn = TcpStream::connect(keep).await.unwrap();
    let mut changed_conn = TcpStream::connect(change).await.unwrap();
    for s in [&mut kept_conn, &mut changed_conn] {
        s.write_all(b"1").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }

    // Same "keep", changed "change" (other cluster), plus a new one.
    rt.set_listeners(vec![
        tcp_listener("keep", "e"),
        tcp_listener("change", "e2"),
        tcp_listener("new", "e"),
    ])
    .await
    .unwrap();
    assert_eq!(
        bound(&rt, "keep"),
        keep,
        "unchanged listener keeps its socket"
    );
    let change2 = bound(&rt, "change");
    assert_ne!(change2, change);
    echo_once(change2, b"via e2").await;
    assert_eq!(count2.load(Ordering::SeqCst), 1);
    echo_once(bound(&rt, "new"), b"new").await;

    // Within drain_time both old connections still work.
    for s in [&mut kept_conn, &mut changed_conn] {
        s.write_all(b"2").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"2");
    }
    // After drain_time the changed listener's connection is closed, the kept one is not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), changed_conn.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "drained connection closed");
    kept_conn.write_all(b"3").await.unwrap();
    kept_conn.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"3");
    // The old socket of the changed listener no longer accepts.
    assert!(TcpStream::connect(change).await.is_err());

    // Drain: stops accepting, closes what is left after drain_time.
    let t0 = std::time::Instant::now();
    rt.drain().await;
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert!(rt.listeners_view().is_empty());
    let n = tokio::time::timeout(Duration::from_secs(2), kept_conn.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(keep).await.is_err());
}

#[tokio::test]
async fn bind_error_names_listener_and_applies_nothing() {
    let rt = runtime(Duration::from_secs(1));
    rt.set_clusters(vec![static_cluster("e", &[])])
        .await
        .unwrap();
    rt.set_listeners(vec![tcp_listener("first", "e")])
        .await
        .unwrap();
    let first = bound(&rt, "first");
    // Taken by a socket without SO_REUSEPORT.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut bad = tcp_listener("bad", "e");
    bad.addr = taken_addr;
    let err = rt
        .set_listeners(vec![tcp_listener("other", "e"), bad])
        .await
        .unwrap_err();
    assert_eq!(err.kind, Some(pylon::ResourceType::Listener));
    assert_eq!(err.name, "bad");
    assert!(err.message.contains(&taken_addr.to_string()), "{err}");
    // Nothing applied: "first" still there, "other" not bound.
    assert_eq!(rt.listeners_view(), vec![("first".to_owned(), first)]);

    // Duplicate addresses in one update, and a kept listener's address.
    let mut x = tcp_listener("x", "e");
    x.addr = first;
    let err = rt
        .set_listeners(vec![tcp_listener("first", "e"), x])
        .await
        .unwrap_err();
    assert_eq!(err.name, "x");
    assert_eq!(rt.listeners_view(), vec![("first".to_owned(), first)]);
}

#[tokio::test]
async fn changed_listener_on_the_same_port_rebinds_and_old_connections_continue() {
    let rt = runtime(Duration::from_secs(5));
    let (e1, c1) = echo_backend().await;
    let (e2, c2) = echo_backend().await;
    rt.set_clusters(vec![
        static_cluster("e1", &[e1]),
        static_cluster("e2", &[e2]),
    ])
    .await
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut l = tcp_listener("fixed", "e1");
    l.addr = port;
    rt.set_listeners(vec![l.clone()]).await.unwrap();
    assert_eq!(bound(&rt, "fixed"), port);
    let mut old = TcpStream::connect(port).await.unwrap();
    old.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    old.read_exact(&mut b).await.unwrap();

    if let ListenerKind::Tcp(t) = &mut l.kind {
        t.cluster = "e2".into();
    }
    rt.set_listeners(vec![l]).await.unwrap();
    assert_eq!(bound(&rt, "fixed"), port);
    // New connections reach the new listener (the old socket closes right after;
    // a connection racing with that close may be refused, so retry).
    assert_eventually!({
        if let Ok(mut s) = TcpStream::connect(port).await {
            let _ = s.write_all(b"b").await;
            let mut b = [0u8; 1];
            let _ = s.read_exact(&mut b).await;
        }
        c2.load(Ordering::SeqCst) > 0
    });
    // The old connection keeps going to its backend.
    old.write_all(b"c").await.unwrap();
    old.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"c");
    assert_eq!(c1.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tcp_idle_timeout_closes_quiet_connections() {
    let rt = runtime(Duration::from_secs(1));
    let (e, _) = echo_backend().await;
    rt.set_clusters(vec![static_cluster("e", &[e])])
        .await
        .unwrap();
    let mut l = tcp_listener("idle", "e");
    if let ListenerKind::Tcp(t) = &mut l.kind {
        t.idle_timeout = Some(Duration::from_millis(300));
    }
    rt.set_listeners(vec![l]).await.unwrap();
    let mut s = TcpStream::connect(bound(&rt, "idle")).await.unwrap();
    let t0 = std::time::Instant::now();
    // Activity keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    assert!(t0.elapsed() >= Duration::from_millis(600));
    // ...silence closes it.
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eventually!(stat(&rt, "tcp.idle.idle_timeout") == 1);
}

#[tokio::test]
async fn h2c_downstream_is_proxied_to_http1_upstream() {
    let rt = runtime(Duration::from_secs(1));
    let a = id_backend("a").await;
    rt.set_clusters(vec![static_cluster("a", &[a])])
        .await
        .unwrap();
    let rc = route_config(
        "inline",
        vec![route(PathMatch::Prefix("/".into()), "a", None, None)],
    );
    rt.set_listeners(vec![http_listener("h2", RouteSource::Inline(rc))])
        .await
        .unwrap();
    let s = TcpStream::connect(bound(&rt, "h2")).await.unwrap();
    let (mut c, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://example.com/p?x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"a /p?x -");
    }
    assert_eq!(stat(&rt, "http.h2.downstream_rq_http2_total"), 3);
}

// After the helpers and the macro above, which they use.
mod http1;
mod resilience;
