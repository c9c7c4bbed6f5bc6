//! The sink that lays xDS updates over the static resources, against a real
//! runtime; and [`serve`] end to end on loopback: a static plan proxies, then
//! drains in order and returns when its shutdown future completes.

use std::net::SocketAddr;
use std::time::Duration;

use pylon::ResourceType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::*;
use crate::model::{
    Cluster, Decoded, Discovery, Endpoint, HttpManager, Listener, ListenerKind, LoadAssignment,
    RouteConfig, RouteSource, TcpProxy,
};
use crate::runtime::tests::static_cluster;

/// How long an eventually-assertion waits before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `probe` until it returns `Some`, failing the test (naming `what`)
/// once [`DEADLINE`] has passed.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        discovery: Discovery::Eds {
            service_name: name.into(),
        },
        ..static_cluster(name, &[])
    }
}

fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> Listener {
    Listener {
        name: name.into(),
        addr,
        kind: ListenerKind::Tcp(TcpProxy {
            stat_prefix: name.into(),
            cluster: cluster.into(),
            max_connect_attempts: 1,
            idle_timeout: Some(Duration::from_secs(3600)),
        }),
    }
}

fn http_listener(name: &str, addr: SocketAddr, cluster: &str) -> Listener {
    Listener {
        name: name.into(),
        addr,
        kind: ListenerKind::Http(HttpManager {
            stat_prefix: name.into(),
            routes: RouteSource::Inline(crate::xds::testing::route_config("inline", cluster)),
            limits: Default::default(),
            normalize_path: false,
            merge_slashes: false,
        }),
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address no socket holds now (bound, read, released): for the
/// addresses [`serve`] binds, which a test must know in advance.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).unwrap();
    l.local_addr().unwrap()
}

/// A runtime holding `clusters` and `listeners` as [`serve`] applies the
/// static resources, and the sink over it.
async fn with_statics(clusters: Vec<Cluster>, listeners: Vec<Listener>) -> (Arc<Runtime>, Sink) {
    let runtime = Runtime::new(RuntimeOptions {
        shutdown: CancellationToken::new(),
        drain_time: Duration::from_millis(100),
    });
    runtime.mark_static_clusters(clusters.iter().map(|c| c.name.clone()));
    runtime.set_clusters(clusters.clone()).await.unwrap();
    runtime.set_listeners(listeners.clone()).await.unwrap();
    let sink = Sink {
        runtime: Arc::clone(&runtime),
        static_clusters: clusters,
        static_listeners: listeners,
    };
    (runtime, sink)
}

/// The clusters in force: name, whether added over the API, host addresses.
fn clusters(rt: &Runtime) -> Vec<(String, bool, Vec<SocketAddr>)> {
    let mut v: Vec<_> = rt
        .clusters_view()
        .into_iter()
        .map(|c| {
            let hosts = c.hosts.iter().map(|h| h.addr).collect();
            (c.name, c.added_via_api, hosts)
        })
        .collect();
    v.sort();
    v
}

fn listener_names(rt: &Runtime) -> Vec<String> {
    let mut v: Vec<String> = rt.listeners_view().into_iter().map(|(n, _)| n).collect();
    v.sort();
    v
}

fn listener_addr(rt: &Runtime, name: &str) -> SocketAddr {
    rt.listeners_view()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("listener {name} not bound"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn static_clusters_stay_when_xds_replaces_its_own() {
    let st = addr("127.0.0.1:1001");
    let (rt, sink) = with_statics(vec![static_cluster("static", &[st])], vec![]).await;
    let fixed = ("static".to_string(), false, vec![st]);

    sink.set_clusters(vec![static_cluster("a", &[addr("127.0.0.1:1002")])])
        .await
        .unwrap();
    assert_eq!(
        clusters(&rt),
        [
            ("a".into(), true, vec![addr("127.0.0.1:1002")]),
            fixed.clone()
        ]
    );

    sink.set_clusters(vec![eds_cluster("b")]).await.unwrap();
    assert_eq!(clusters(&rt), [("b".into(), true, vec![]), fixed.clone()]);

    // An empty CDS set removes every dynamic cluster, never a static one.
    sink.set_clusters(vec![]).await.unwrap();
    assert_eq!(clusters(&rt), [fixed]);
}

#[tokio::test]
async fn static_listeners_stay_when_xds_replaces_its_own() {
    let (rt, sink) = with_statics(
        vec![static_cluster("c", &[addr("127.0.0.1:1001")])],
        vec![tcp_listener("static", any_port(), "c")],
    )
    .await;
    let static_addr = listener_addr(&rt, "static");

    sink.set_listeners(vec![tcp_listener("a", any_port(), "c")])
        .await
        .unwrap();
    assert_eq!(listener_names(&rt), ["a", "static"]);

    sink.set_listeners(vec![tcp_listener("b", any_port(), "c")])
        .await
        .unwrap();
    assert_eq!(listener_names(&rt), ["b", "static"]);

    sink.set_listeners(vec![]).await.unwrap();
    assert_eq!(listener_names(&rt), ["static"]);
    // Not rebound along the way: the same socket throughout.
    assert_eq!(listener_addr(&rt, "static"), static_addr);
}

#[tokio::test]
async fn a_dynamic_cluster_named_like_a_static_one_is_nacked_and_nothing_applied() {
    let st = addr("127.0.0.1:1001");
    let (rt, sink) = with_statics(vec![static_cluster("static", &[st])], vec![]).await;
    sink.set_clusters(vec![eds_cluster("a")]).await.unwrap();
    let before = clusters(&rt);

    let err = sink
        .set_clusters(vec![
            eds_cluster("b"),
            static_cluster("static", &[addr("127.0.0.1:2002")]),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        NackError {
            kind: Some(ResourceType::Cluster),
            name: "static".into(),
            message: "name already used by static_resources in the bootstrap".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "cluster static: name already used by static_resources in the bootstrap"
    );
    // The whole set is refused: `b` is not added, the static cluster keeps
    // its hosts, the previous dynamic set stays in force.
    assert_eq!(clusters(&rt), before);
}

#[tokio::test]
async fn a_dynamic_listener_named_like_a_static_one_is_nacked_and_nothing_applied() {
    let (rt, sink) = with_statics(
        vec![static_cluster("c", &[addr("127.0.0.1:1001")])],
        vec![tcp_listener("static", any_port(), "c")],
    )
    .await;
    let static_addr = listener_addr(&rt, "static");
    sink.set_listeners(vec![tcp_listener("a", any_port(), "c")])
        .await
        .unwrap();

    let err = sink
        .set_listeners(vec![
            tcp_listener("b", any_port(), "c"),
            tcp_listener("static", any_port(), "c"),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        NackError {
            kind: Some(ResourceType::Listener),
            name: "static".into(),
            message: "name already used by static_resources in the bootstrap".into(),
        }
    );
    assert_eq!(listener_names(&rt), ["a", "static"]);
    assert_eq!(listener_addr(&rt, "static"), static_addr);
}

#[tokio::test]
async fn a_load_assignment_named_like_a_static_cluster_is_acked_and_changes_nothing() {
    // Only EDS clusters take load assignments: one named like a static
    // cluster is accepted (no name check here) and leaves its hosts alone.
    let st = addr("127.0.0.1:1001");
    let (rt, sink) = with_statics(vec![static_cluster("static", &[st])], vec![]).await;
    sink.set_clusters(vec![eds_cluster("e")]).await.unwrap();

    let other = addr("127.0.0.1:2002");
    let la = |name: &str| LoadAssignment {
        name: name.into(),
        endpoints: vec![Endpoint {
            addr: other,
            weight: 1,
        }],
    };
    sink.set_load_assignments(vec![la("static"), la("e")])
        .await
        .unwrap();
    assert_eq!(
        clusters(&rt),
        [
            ("e".into(), true, vec![other]),
            ("static".into(), false, vec![st]),
        ]
    );
}

#[tokio::test]
async fn route_configurations_pass_through_to_the_runtime() {
    let (_rt, sink) =
        with_statics(vec![static_cluster("c", &[addr("127.0.0.1:1001")])], vec![]).await;
    let rc = |name: &str| RouteConfig {
        name: name.into(),
        virtual_hosts: vec![],
    };
    sink.set_route_configs(vec![rc("r1"), rc("r2")])
        .await
        .unwrap();
    // The runtime's own refusals reach the xDS client unchanged.
    let err = sink
        .set_route_configs(vec![rc("r1"), rc("r1")])
        .await
        .unwrap_err();
    assert_eq!(err.kind, Some(ResourceType::Route));
    assert_eq!(err.name, "r1");
    assert_eq!(err.message, "duplicate route configuration name");
}

#[tokio::test]
async fn the_runtimes_refusals_of_the_merged_set_name_the_dynamic_resource() {
    let (rt, sink) = with_statics(
        vec![static_cluster("c", &[addr("127.0.0.1:1001")])],
        vec![tcp_listener("static", any_port(), "c")],
    )
    .await;
    let static_addr = listener_addr(&rt, "static");

    let err = sink
        .set_clusters(vec![eds_cluster("a"), eds_cluster("a")])
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.name.as_str(), err.message.as_str()),
        (Some(ResourceType::Cluster), "a", "duplicate cluster name")
    );

    // Static resources come first in the merged set, so a dynamic listener
    // on a static one's address is the one refused.
    let err = sink
        .set_listeners(vec![tcp_listener("dyn", static_addr, "c")])
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.name.as_str()),
        (Some(ResourceType::Listener), "dyn")
    );
    assert_eq!(
        err.message,
        format!("address {static_addr} is in use by listener static")
    );
    assert_eq!(listener_names(&rt), ["static"]);
    assert_eq!(clusters(&rt).len(), 1);
}

#[tokio::test]
async fn check_refuses_a_listener_whose_address_another_socket_holds() {
    let (_rt, sink) = with_statics(vec![], vec![]).await;
    // A socket without SO_REUSEPORT: our listeners cannot share its port.
    let held = std::net::TcpListener::bind(any_port()).unwrap();
    let held_addr = held.local_addr().unwrap();

    let err = sink
        .check(&Decoded::Listener(tcp_listener("taken", held_addr, "c")))
        .unwrap_err();
    assert_eq!(
        (err.kind, err.name.as_str()),
        (Some(ResourceType::Listener), "taken")
    );
    assert!(
        err.message
            .starts_with(&format!("cannot bind {held_addr}: ")),
        "{err}"
    );

    sink.check(&Decoded::Listener(tcp_listener("free", any_port(), "c")))
        .unwrap();
    // Only listeners are checked before they are applied.
    sink.check(&Decoded::Cluster(static_cluster("c", &[held_addr])))
        .unwrap();
    drop(held);
    sink.check(&Decoded::Listener(tcp_listener("taken", held_addr, "c")))
        .unwrap();
}

/// An HTTP/1.1 backend that answers every request `200 hello`.
async fn hello_backend() -> SocketAddr {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(b"hello")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// `GET path` with `Connection: close`: the whole response, or `None` if
/// nothing accepts the connection.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn plan(admin: SocketAddr, clusters: Vec<Cluster>, listeners: Vec<Listener>) -> Plan {
    Plan {
        node_id: "node".into(),
        node_cluster: "test".into(),
        admin,
        xds: None,
        clusters,
        listeners,
        concurrency: 1,
        drain_time: None,
    }
}

#[tokio::test]
async fn serve_proxies_a_static_plan_then_returns_on_shutdown() {
    let backend = hello_backend().await;
    let (front, admin) = (free_addr(), free_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        plan(
            admin,
            vec![static_cluster("backend", &[backend])],
            vec![http_listener("front", front, "backend")],
        ),
        async move {
            let _ = stopped.await;
        },
    ));

    let resp = eventually("the listener answers", || get(front, "/x")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello"), "{resp}");
    let ready = eventually("the admin API answers", || get(admin, "/ready")).await;
    assert!(ready.ends_with("LIVE\n"), "{ready}");

    stop.send(()).unwrap();
    let returned = tokio::time::timeout(DEADLINE, task).await;
    returned
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    // Everything it bound is released.
    assert!(TcpStream::connect(front).await.is_err());
    assert!(TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn serve_drains_in_order_when_shutdown_fires() {
    // An echo backend behind a TCP proxy: a connection stays open for as
    // long as the client keeps it.
    let echo = TcpListener::bind(any_port()).await.unwrap();
    let backend = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (front, admin) = (free_addr(), free_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut p = plan(
        admin,
        vec![static_cluster("backend", &[backend])],
        vec![tcp_listener("front", front, "backend")],
    );
    // Far longer than the test waits: serve returns because the connection
    // ended, not because the drain time ran out.
    p.drain_time = Some(Duration::from_secs(600));
    let mut task = tokio::spawn(serve(p, async move {
        let _ = stopped.await;
    }));

    let mut conn = eventually("the listener accepts", || async {
        TcpStream::connect(front).await.ok()
    })
    .await;
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    stop.send(()).unwrap();
    // 1. The admin API says so first; 3. the listener stops accepting.
    eventually("/ready reports DRAINING", || async {
        get(admin, "/ready")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 503") && r.ends_with("DRAINING\n"))
    })
    .await;
    eventually("the listener refuses new connections", || async {
        TcpStream::connect(front).await.err()
    })
    .await;
    // The open connection still works while the listener drains.
    conn.write_all(b"pong").await.unwrap();
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut task)
            .await
            .is_err(),
        "serve returned while a connection was draining"
    );

    // Once it ends, serve finishes and releases the admin address.
    drop(conn);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("serve returns once the last connection ended")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn serve_names_static_resources_it_cannot_apply() {
    let held = std::net::TcpListener::bind(any_port()).unwrap();
    let taken = held.local_addr().unwrap();
    let never = std::future::pending::<()>();
    let err = serve(
        plan(
            any_port(),
            vec![static_cluster("backend", &[addr("127.0.0.1:1001")])],
            vec![tcp_listener("front", taken, "backend")],
        ),
        never,
    )
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with(&format!(
            "static_resources: listener front: cannot bind {taken}: "
        )),
        "{text}"
    );

    // The admin address is bound after the static resources are applied.
    let err = serve(
        plan(
            taken,
            vec![static_cluster("backend", &[addr("127.0.0.1:1001")])],
            vec![],
        ),
        std::future::pending::<()>(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").starts_with(&format!("binding admin address {taken}: ")),
        "{err:#}"
    );
}
