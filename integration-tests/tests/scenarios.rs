//! End-to-end scenarios: pylon-xds serving a YAML file over ADS to a data
//! plane, with in-process backends behind it. Every scenario is written once
//! against `DataPlane` and runs four times: Envoy and pylon-proxy, each
//! bootstrapped (with the same `pylon-xds bootstrap` output) for
//! state-of-the-world and for delta ADS, as `<scenario>::{envoy,pylon}_{sotw,delta}`.
//!
//! 1. `apiserver_ha`: kubectl through a tcp_proxy to three TLS apiservers,
//!    round robin, active TCP health checks ejecting and re-admitting a backend.
//! 2. `front_proxy`: HTTP routes by prefix, even spread over replicas.
//! 3. `live_edits`: endpoint add/remove, listener add, cluster+listener
//!    removal, route change, each seen at the proxy; a held connection survives.
//! 4. `bad_edit`: broken YAML, then valid YAML naming a missing cluster: each
//!    is reported by `/status` while the proxy keeps the last good config and
//!    traffic flows; the fix is pushed and the error cleared.
//! 5. `control_plane_restart`: pylon-xds is shut down and started again on the
//!    same xDS address, with an edit made while it was down; requests flow
//!    throughout and none fails; the proxy reconnects and takes the edit.
//! 6. `unsupported_cluster`: a cluster with `lb_policy: random` is NACKed by
//!    pylon-proxy (shown in `/status`, the rest keeps working) and ACKed by
//!    Envoy; removing it brings pylon-proxy back to SYNCED.
//! 7. `admin_drain`: an operator drains the proxy with `curl -X POST
//!    /healthcheck/fail` (`/ready` turns 503 `DRAINING`, traffic still
//!    flows) and restores it with `/healthcheck/ok`. The same POST from a web
//!    page (a cross-site `Origin`, or DNS rebinding: the page's name in
//!    `Host`) is refused with 403 by pylon-proxy; Envoy takes it.
//! 8. `removal_drains`: a healthy, health-checked apiserver is removed from
//!    the YAML: once the push lands no kubectl connection reaches it (Envoy
//!    keeps such a host unless `ignore_health_on_host_removal` is set, which
//!    pylon-xds does); a TCP connection already established to a removed
//!    host stays open on both data planes, as Envoy does.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use integration_tests::admin::AdminClient;
use integration_tests::backends::{ApiServer, HttpServer, TcpEcho};
use integration_tests::config::{Cluster, Listener, ListenerKind, PylonConfig, Route};
use integration_tests::dataplane::{DataPlane, Flavour, Kind};
use integration_tests::http;
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::pylon::Pylon;
use integration_tests::scenario::{stack, wait_flags, wait_hosts, wait_node, DEADLINE};
use integration_tests::tls::TestCa;
use integration_tests::traffic::TrafficLoop;
use integration_tests::{assert_eventually, every_data_plane};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

every_data_plane!(
    apiserver_ha,
    front_proxy,
    live_edits,
    bad_edit,
    control_plane_restart,
    unsupported_cluster,
    admin_drain,
    removal_drains,
);

/// Waits until the node's `/status` entry for `ty` (`cds`, `eds`, ...)
/// passes `check`; returns that entry.
async fn wait_type_status(
    pylon: &Pylon,
    dp: &DataPlane,
    ty: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> anyhow::Result<()>,
) -> serde_json::Value {
    let node = dp.node_id();
    assert_eventually!(DEADLINE, format!("{node} {ty}: {what}"), async || {
        let n = pylon.node_status(node).await?.context("not connected")?;
        let t = n["types"][ty].clone();
        check(&t).with_context(|| format!("{ty} = {t}"))?;
        Ok(t)
    })
}

/// `n` GETs of `path` through `listen`; counts by answering replica id.
async fn spread(listen: SocketAddr, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = http::get(listen, path).await.unwrap();
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        *counts.entry(r.body).or_insert(0) += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until GET `path` on `listen` is answered 200 by replica `id`.
async fn wait_answer(listen: SocketAddr, path: &str, id: &str) {
    assert_eventually!(
        DEADLINE,
        format!("GET {listen}{path} answered by {id}"),
        async || {
            let r = http::get(listen, path).await?;
            ensure!(r.status == 200 && r.body == id, "{} {}", r.status, r.body);
            Ok(())
        }
    );
}

// ---------------------------------------------------------------------------
// 1. kube-apiserver HA

/// Runs `kubectl get --raw /healthz` through the proxy and returns the index of the
/// apiserver that took the connection (exactly one must have).
async fn kubectl_healthz(
    kubectl: &Kubectl,
    listen: SocketAddr,
    ca: &TestCa,
    apis: &[ApiServer],
) -> usize {
    let before: Vec<u64> = apis.iter().map(ApiServer::tls_connections).collect();
    let out = kubectl
        .get_raw(listen, ca.ca_path(), "/healthz")
        .await
        .unwrap();
    assert_eq!(out, "ok");
    let grew: Vec<usize> = (0..apis.len())
        .filter(|&i| apis[i].tls_connections() > before[i])
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "connections before {before:?}, after {:?}",
        apis.iter()
            .map(ApiServer::tls_connections)
            .collect::<Vec<_>>()
    );
    grew[0]
}

async fn kubectl_sequence(
    kubectl: &Kubectl,
    listen: SocketAddr,
    ca: &TestCa,
    apis: &[ApiServer],
    n: usize,
) -> Vec<usize> {
    let mut seq = Vec::new();
    for _ in 0..n {
        seq.push(kubectl_healthz(kubectl, listen, ca, apis).await);
    }
    seq
}

/// Round robin over `hosts`: every window of `hosts.len()` consecutive picks
/// holds each host once.
#[track_caller]
fn assert_round_robin(seq: &[usize], hosts: &[usize]) {
    for w in seq.windows(hosts.len()) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, hosts, "not round robin over {hosts:?}: {seq:?}");
    }
}

async fn apiserver_ha(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some(kubectl) = Kubectl::find_or_skip() else {
        return;
    };
    let ca = TestCa::new().unwrap();
    let mut apis = Vec::new();
    for i in 0..3u8 {
        apis.push(
            ApiServer::start(loopback(2 + i), &format!("apiserver-{i}"), &ca)
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<SocketAddr> = apis.iter().map(ApiServer::addr).collect();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("kube-apiserver", &addrs).tcp_health_check(
            Duration::from_millis(200),
            Duration::from_millis(200),
            3,
            2,
        ))
        .listener(Listener::tcp_proxy(
            "kube-apiserver",
            listen,
            "kube-apiserver",
        ));
    let (pylon, dp) = stack(&bin, flavour, "apiserver-ha", &config).await;
    for a in &addrs {
        wait_flags(&dp, "kube-apiserver", *a, "healthy").await;
    }

    // Each kubectl is a new connection: round robin over the three.
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 1, 2]);
    let version = kubectl
        .run(listen, ca.ca_path(), &["version", "-o", "json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    let git = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(git.starts_with("v1.32.4-pylon-apiserver-"), "{version}");

    // One apiserver goes away: health checks eject it, new connections avoid it.
    apis[1].stop().await;
    wait_flags(&dp, "kube-apiserver", addrs[1], "failed_active_hc").await;
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 2]);

    // It comes back on the same port: healthy again, and used again. Envoy
    // hands health changes to its workers through `update_merge_window` (1 s
    // by default): a change within a second of the previous one (the ejection
    // above) reaches the load balancer up to a second after `/clusters` shows
    // it, so the first connection to the returning host is awaited.
    apis[1].start_again().await.unwrap();
    assert_eq!(apis[1].addr(), addrs[1]);
    wait_flags(&dp, "kube-apiserver", addrs[1], "healthy").await;
    let healthy_at = std::time::Instant::now();
    assert_eventually!(
        DEADLINE,
        "a kubectl connection reaches apiserver-1",
        async || {
            let i = kubectl_healthz(&kubectl, listen, &ca, &apis).await;
            ensure!(i == 1, "went to apiserver-{i}");
            Ok(())
        }
    );
    eprintln!(
        "apiserver-1 took connections {:?} after /clusters showed it healthy",
        healthy_at.elapsed()
    );
    let before = apis[1].tls_connections();
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 1, 2]);
    assert_eq!(apis[1].tls_connections() - before, 2);

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Front proxy

async fn front_proxy(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let mut s1 = Vec::new();
    for i in 0..3u8 {
        s1.push(
            HttpServer::start(loopback(2 + i), &format!("service1-{i}"))
                .await
                .unwrap(),
        );
    }
    let s2 = HttpServer::start(loopback(5), "service2-0").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let s1_addrs: Vec<SocketAddr> = s1.iter().map(HttpServer::addr).collect();
    let config = PylonConfig::new()
        .cluster(Cluster::new("service1", &s1_addrs))
        .cluster(Cluster::new("service2", &[s2.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![
                Route::prefix("/service/1", "service1"),
                Route::prefix("/service/2", "service2"),
            ],
        ));
    let (pylon, dp) = stack(&bin, flavour, "front-proxy", &config).await;
    wait_hosts(&dp, "service1", &s1_addrs).await;
    wait_answer(listen, "/service/2", "service2-0").await;

    let got = spread(listen, "/service/1", 30).await;
    assert_eq!(
        got,
        counts(&[("service1-0", 10), ("service1-1", 10), ("service1-2", 10)])
    );
    for s in &s1 {
        assert_eq!(s.served(), 10, "{} served {}", s.id(), s.served());
    }
    let got = spread(listen, "/service/2/anything", 5).await;
    assert_eq!(got, counts(&[("service2-0", 5)]));
    let r = http::get(listen, "/service/3").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Live edits

async fn echo_roundtrip(conn: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    conn.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf)).await??;
    ensure!(buf == msg, "echoed {:?}", String::from_utf8_lossy(&buf));
    Ok(())
}

async fn live_edits(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let echo = TcpEcho::start(loopback(2)).await.unwrap();
    let w: Vec<HttpServer> = vec![
        HttpServer::start(loopback(3), "web-0").await.unwrap(),
        HttpServer::start(loopback(3), "web-1").await.unwrap(),
        HttpServer::start(loopback(3), "web-2").await.unwrap(),
    ];
    let old = HttpServer::start(loopback(4), "old-0").await.unwrap();
    let alt = HttpServer::start(loopback(5), "alt-0").await.unwrap();
    let (l_echo, l_front, l_old, l_new) = (
        free_addr(LOOPBACK).unwrap(),
        free_addr(LOOPBACK).unwrap(),
        free_addr(LOOPBACK).unwrap(),
        free_addr(LOOPBACK).unwrap(),
    );
    let mut config = PylonConfig::new()
        .cluster(Cluster::new("echo", &[echo.addr()]))
        .cluster(Cluster::new("web", &[w[0].addr(), w[1].addr()]))
        .cluster(Cluster::new("old", &[old.addr()]))
        .cluster(Cluster::new("alt", &[alt.addr()]))
        .listener(Listener::tcp_proxy("echo", l_echo, "echo"))
        .listener(Listener::http(
            "front",
            l_front,
            vec![Route::prefix("/", "web")],
        ))
        .listener(Listener::http(
            "old",
            l_old,
            vec![Route::prefix("/", "old")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "live-edits", &config).await;
    let admin = dp.admin();
    wait_answer(l_old, "/", "old-0").await;

    // A connection through a listener no edit touches.
    let mut held = TcpStream::connect(l_echo).await.unwrap();
    echo_roundtrip(&mut held, b"before the edits")
        .await
        .unwrap();

    // Add an endpoint (written by rename).
    config
        .cluster_mut("web")
        .unwrap()
        .endpoints
        .push(w[2].addr());
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_hosts(&dp, "web", &[w[0].addr(), w[1].addr(), w[2].addr()]).await;
    let got = spread(l_front, "/", 9).await;
    assert_eq!(got, counts(&[("web-0", 3), ("web-1", 3), ("web-2", 3)]));

    // Remove an endpoint (written in place).
    config.cluster_mut("web").unwrap().endpoints.remove(0);
    pylon.write_config_in_place(&config.to_yaml()).unwrap();
    wait_hosts(&dp, "web", &[w[1].addr(), w[2].addr()]).await;
    let served0 = w[0].served();
    let got = spread(l_front, "/", 6).await;
    assert_eq!(got, counts(&[("web-1", 3), ("web-2", 3)]));
    assert_eq!(w[0].served(), served0);

    // Add a listener.
    config = config.listener(Listener::http(
        "added",
        l_new,
        vec![Route::prefix("/", "web")],
    ));
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    assert_eventually!(DEADLINE, "listener `added` in /listeners", async || {
        let ls = admin.listeners().await?;
        ensure!(
            ls.iter()
                .any(|(n, a)| n == "added" && *a == l_new.to_string()),
            "{ls:?}"
        );
        Ok(())
    });
    assert_eventually!(DEADLINE, "traffic through `added`", async || {
        let r = http::get(l_new, "/").await?;
        ensure!(
            r.status == 200 && r.body.starts_with("web-"),
            "{} {}",
            r.status,
            r.body
        );
        Ok(())
    });

    // Remove a cluster and the listener using it.
    config.clusters.retain(|c| c.name != "old");
    config.listeners.retain(|l| l.name != "old");
    pylon.write_config_in_place(&config.to_yaml()).unwrap();
    assert_eventually!(DEADLINE, "cluster and listener `old` gone", async || {
        let dump = admin.config_dump().await?;
        let (clusters, listeners) = (dump.dynamic_clusters(), dump.active_listeners());
        ensure!(
            !clusters.contains(&"old".to_string()),
            "clusters {clusters:?}"
        );
        ensure!(
            !listeners.contains(&"old".to_string()),
            "listeners {listeners:?}"
        );
        ensure!(
            !admin.clusters().await?.names().contains(&"old".to_string()),
            "/clusters lists old"
        );
        Ok(())
    });
    assert_eventually!(DEADLINE, "listener `old` stops accepting", async || {
        match http::get(l_old, "/").await {
            Ok(r) => anyhow::bail!("still answered: {} {}", r.status, r.body),
            Err(_) => Ok(()),
        }
    });

    // Change a route.
    config.listener_mut("front").unwrap().kind = ListenerKind::Http {
        routes: vec![Route::prefix("/", "alt")],
    };
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_answer(l_front, "/", "alt-0").await;
    let dump = admin.config_dump().await.unwrap();
    // Routes are in RDS or inline in the listener: look at both.
    let routes =
        serde_json::json!([dump.route_config("front"), dump.listener("front")]).to_string();
    assert!(
        routes.contains(r#""cluster":"alt""#),
        "no route to alt: {routes}"
    );
    assert!(
        !routes.contains(r#""cluster":"web""#),
        "a route to web is left: {routes}"
    );
    let got = spread(l_front, "/x", 3).await;
    assert_eq!(got, counts(&[("alt-0", 3)]));

    // The held connection survived every edit.
    echo_roundtrip(&mut held, b"after the edits").await.unwrap();
    assert_eq!(echo.connections(), 1);

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Bad edit

/// Waits until `/status` reports a reload error containing `needle`.
async fn wait_reload_error(pylon: &Pylon, needle: &str) -> String {
    assert_eventually!(
        DEADLINE,
        format!("/status last_reload_error mentioning `{needle}`"),
        async || {
            let status = pylon.status().await?;
            match status["last_reload_error"].as_str() {
                Some(e) if !e.is_empty() && e.contains(needle) => Ok(e.to_string()),
                _ => anyhow::bail!("/status = {status}"),
            }
        }
    )
}

/// The proxy still runs the config it had (same versions, same host, listener
/// up) and traffic keeps flowing.
async fn assert_unchanged(
    admin: &AdminClient,
    listen: SocketAddr,
    w0: &HttpServer,
    versions: &BTreeMap<String, String>,
) {
    let got = spread(listen, "/", 10).await;
    assert_eq!(got, counts(&[("web-0", 10)]));
    assert_eq!(
        admin.clusters().await.unwrap().hosts("web"),
        vec![w0.addr().to_string()]
    );
    let ls = admin.listeners().await.unwrap();
    assert!(ls.iter().any(|(n, _)| n == "front"), "{ls:?}");
    assert_eq!(&admin.config_dump().await.unwrap().versions(), versions);
}

async fn bad_edit(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let w0 = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let w1 = HttpServer::start(loopback(3), "web-1").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let mut config = PylonConfig::new()
        .cluster(Cluster::new("web", &[w0.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "bad-edit", &config).await;
    let admin = dp.admin();
    wait_answer(listen, "/", "web-0").await;
    let status = pylon.status().await.unwrap();
    assert!(
        status["last_reload_error"].is_null(),
        "/status before the bad edit: {status}"
    );

    let versions_before = admin.config_dump().await.unwrap().versions();

    // Broken YAML (written in place): reported, not pushed.
    let broken = format!(
        "{}  - name: \"unterminated\n    address: [\n",
        config.to_yaml()
    );
    pylon.write_config_in_place(&broken).unwrap();
    // The file is read once its writer closes it: the error is about the
    // unterminated quote, with its line.
    let error =
        wait_reload_error(&pylon, "invalid YAML: invalid indentation in quoted scalar").await;
    eprintln!("last_reload_error (broken YAML): {error}");
    assert_unchanged(&admin, listen, &w0, &versions_before).await;

    // Valid YAML, invalid config (a route to a cluster that does not exist,
    // written by rename): reported, not pushed.
    let mut dangling = config.clone();
    dangling.listener_mut("front").unwrap().kind = ListenerKind::Http {
        routes: vec![Route::prefix("/", "no-such-cluster")],
    };
    pylon.write_config_atomic(&dangling.to_yaml()).unwrap();
    let error = wait_reload_error(&pylon, "no-such-cluster").await;
    eprintln!("last_reload_error (dangling route): {error}");
    assert_unchanged(&admin, listen, &w0, &versions_before).await;

    // The fix (with a change) is pushed.
    config.cluster_mut("web").unwrap().endpoints.push(w1.addr());
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_hosts(&dp, "web", &[w0.addr(), w1.addr()]).await;
    let got = spread(listen, "/", 4).await;
    assert_eq!(got, counts(&[("web-0", 2), ("web-1", 2)]));
    assert_eventually!(DEADLINE, "/status last_reload_error cleared", async || {
        let status = pylon.status().await?;
        ensure!(status["last_reload_error"].is_null(), "/status = {status}");
        Ok(())
    });

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Control plane restart

async fn control_plane_restart(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let w0 = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let w1 = HttpServer::start(loopback(3), "web-1").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let mut config = PylonConfig::new()
        .cluster(Cluster::new("web", &[w0.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (mut pylon, dp) = stack(&bin, flavour, "cp-restart", &config).await;
    let admin = dp.admin();
    wait_answer(listen, "/", "web-0").await;
    let xds = pylon.xds_addr().unwrap();

    // Requests through the proxy from here to the end.
    let traffic = TrafficLoop::start(listen, "/");
    let wait_more = async |n: u64| {
        let from = traffic.tally().ok_total();
        assert_eventually!(DEADLINE, format!("{n} more answers"), async || {
            let t = traffic.tally();
            ensure!(t.ok_total() >= from + n, "{t:?}");
            Ok(())
        });
    };
    wait_more(5).await;

    // The control plane goes away: the proxy sees its stream end and keeps
    // serving the last config.
    pylon.stop().await;
    assert_eventually!(DEADLINE, "the proxy's ADS stream is down", async || {
        ensure!(!admin.xds_connected().await?, "still connected");
        Ok(())
    });
    wait_more(5).await;

    // An edit while it is down, then it comes back on the same address.
    config.cluster_mut("web").unwrap().endpoints.push(w1.addr());
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    pylon.start_again().await.unwrap();
    assert_eq!(pylon.xds_addr().unwrap(), xds);

    // The proxy reconnects and takes the edit.
    wait_node(&pylon, &dp).await;
    assert_eventually!(DEADLINE, "the proxy's ADS stream is up", async || {
        ensure!(admin.xds_connected().await?, "not connected");
        Ok(())
    });
    wait_hosts(&dp, "web", &[w0.addr(), w1.addr()]).await;
    assert_eventually!(DEADLINE, "traffic reaches web-1", async || {
        let t = traffic.tally();
        ensure!(t.ok.get("web-1").is_some_and(|n| *n > 0), "{t:?}");
        Ok(())
    });
    wait_type_status(&pylon, &dp, "eds", "SYNCED", |t| {
        ensure!(t["state"] == "SYNCED");
        Ok(())
    })
    .await;
    wait_more(5).await;

    let tally = traffic.stop().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed across the restart: {:?}",
        tally.failures.len(),
        tally.failures.len() as u64 + tally.ok_total(),
        tally.failures
    );
    assert!(w1.served() > 0 && w0.served() > 0, "{tally:?}");
    eprintln!("{flavour}: {tally:?} across the control plane restart");

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. A cluster pylon-proxy cannot honour

/// pylon-proxy's NACK of a `lb_policy: random` cluster named `rnd`.
const RANDOM_NACK: &str = "cluster rnd: lb_policy RANDOM is not supported";

async fn unsupported_cluster(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let w0 = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let w1 = HttpServer::start(loopback(3), "web-1").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let mut config = PylonConfig::new()
        .cluster(Cluster::new("web", &[w0.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "unsupported", &config).await;
    let admin = dp.admin();
    wait_answer(listen, "/", "web-0").await;
    let synced = |t: &serde_json::Value| {
        ensure!(t["state"] == "SYNCED" && t["acked_version"] == t["sent_version"]);
        Ok(())
    };
    let cds = wait_type_status(&pylon, &dp, "cds", "SYNCED", synced).await;
    let good_version = cds["acked_version"].clone();
    let clusters_before = admin.clusters().await.unwrap().dynamic_names();
    assert_eq!(clusters_before, vec!["web"]);

    // A cluster with a policy only Envoy implements, used by nothing.
    let with_random = config
        .clone()
        .cluster(Cluster::new("rnd", &[w1.addr()]).lb_policy("random"));
    pylon.write_config_atomic(&with_random.to_yaml()).unwrap();
    match flavour.kind {
        Kind::Pylon => {
            let cds = wait_type_status(&pylon, &dp, "cds", "NACKed", |t| {
                ensure!(t["state"] == "ERROR" && t["sent_version"] != good_version);
                Ok(())
            })
            .await;
            let nack = &cds["last_nack"];
            let message = nack["message"].as_str().unwrap_or_default();
            assert!(message.contains(RANDOM_NACK), "{cds}");
            assert_eq!(nack["version"], cds["sent_version"], "{cds}");
            assert_eq!(cds["acked_version"], good_version, "{cds}");
            let dump = admin.config_dump().await.unwrap();
            let own = dump.xds_last_nack().unwrap_or_default();
            assert!(
                own.contains(RANDOM_NACK),
                "pylon-proxy xds.last_nack: {own}"
            );
            // The rest of the config keeps working.
            assert_eq!(
                admin.clusters().await.unwrap().dynamic_names(),
                clusters_before
            );
            assert_eq!(
                admin.clusters().await.unwrap().hosts("web"),
                vec![w0.addr().to_string()]
            );
        }
        Kind::Envoy => {
            let cds = wait_type_status(&pylon, &dp, "cds", "a new version ACKed", |t| {
                synced(t)?;
                ensure!(t["acked_version"] != good_version);
                Ok(())
            })
            .await;
            assert!(cds["last_nack"].is_null(), "{cds}");
            wait_hosts(&dp, "rnd", &[w1.addr()]).await;
        }
    }
    assert_eq!(spread(listen, "/", 5).await, counts(&[("web-0", 5)]));

    // Without it, the config is the last good one again, and it is ACKed.
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_type_status(&pylon, &dp, "cds", "the good version ACKed", |t| {
        synced(t)?;
        ensure!(t["acked_version"] == good_version);
        Ok(())
    })
    .await;
    assert_eventually!(DEADLINE, "only `web` in /clusters", async || {
        let names = admin.clusters().await?.dynamic_names();
        ensure!(names == clusters_before, "{names:?}");
        Ok(())
    });

    // Later edits are pushed and taken as usual.
    config.cluster_mut("web").unwrap().endpoints.push(w1.addr());
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_hosts(&dp, "web", &[w0.addr(), w1.addr()]).await;
    wait_type_status(&pylon, &dp, "eds", "SYNCED", synced).await;
    assert_eq!(
        spread(listen, "/", 4).await,
        counts(&[("web-0", 2), ("web-1", 2)])
    );

    pylon.shutdown().await;
}

async fn admin_drain(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let web = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "admin-drain", &config).await;
    let admin = dp.admin();
    wait_answer(listen, "/", "web-0").await;
    let ready = || async { admin.ready().await.unwrap() };
    assert_eq!(ready().await, (hyper::StatusCode::OK, "LIVE".into()));

    // What curl sends: Host the admin address, no Origin.
    let r = admin.post("/healthcheck/fail").await.unwrap();
    assert_eq!(r.status, hyper::StatusCode::OK, "{}", r.body);
    assert_eq!(
        ready().await,
        (hyper::StatusCode::SERVICE_UNAVAILABLE, "DRAINING".into())
    );
    // Draining fails health checks; it does not stop traffic.
    wait_answer(listen, "/", "web-0").await;
    let r = admin.post("/healthcheck/ok").await.unwrap();
    assert_eq!(r.status, hyper::StatusCode::OK, "{}", r.body);
    assert_eq!(ready().await, (hyper::StatusCode::OK, "LIVE".into()));

    // The same POST from a web page in the operator's browser.
    let admin_host = admin.addr().to_string();
    let from_pages: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "cross-site",
            vec![
                ("host", admin_host.as_str()),
                ("origin", "http://evil.example"),
            ],
        ),
        (
            "DNS rebinding",
            vec![
                ("host", "evil.example:9901"),
                ("origin", "http://evil.example:9901"),
            ],
        ),
    ];
    for (what, headers) in &from_pages {
        let r = admin.post_with("/healthcheck/fail", headers).await.unwrap();
        match flavour.kind {
            Kind::Pylon => {
                assert_eq!(r.status, hyper::StatusCode::FORBIDDEN, "{what}: {}", r.body);
                assert_eq!(
                    ready().await,
                    (hyper::StatusCode::OK, "LIVE".into()),
                    "{what}"
                );
            }
            Kind::Envoy => {
                // Envoy's admin checks neither header.
                assert_eq!(r.status, hyper::StatusCode::OK, "{what}: {}", r.body);
                assert_eq!(ready().await.1, "DRAINING", "{what}");
                admin.post("/healthcheck/ok").await.unwrap();
                assert_eq!(ready().await.1, "LIVE", "{what}");
            }
        }
    }
    if flavour.kind == Kind::Pylon {
        assert!(
            dp.log().contains("admin request refused"),
            "{}",
            dp.log_tail(20)
        );
    }
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Removal drains

/// Which of `echoes` took one more connection than `before` says.
fn grown(echoes: &[TcpEcho], before: &[u64]) -> Vec<usize> {
    (0..echoes.len())
        .filter(|&i| echoes[i].connections() > before[i])
        .collect()
}

async fn removal_drains(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some(kubectl) = Kubectl::find_or_skip() else {
        return;
    };
    let ca = TestCa::new().unwrap();
    let mut apis = Vec::new();
    for i in 0..3u8 {
        apis.push(
            ApiServer::start(loopback(2 + i), &format!("apiserver-{i}"), &ca)
                .await
                .unwrap(),
        );
    }
    let echoes = [
        TcpEcho::start(loopback(5)).await.unwrap(),
        TcpEcho::start(loopback(6)).await.unwrap(),
    ];
    let addrs: Vec<SocketAddr> = apis.iter().map(ApiServer::addr).collect();
    let echo_addrs: Vec<SocketAddr> = echoes.iter().map(TcpEcho::addr).collect();
    let (listen, l_echo) = (free_addr(LOOPBACK).unwrap(), free_addr(LOOPBACK).unwrap());
    // Health checks every 200 ms: a removed host would keep passing them.
    let checked = |c: Cluster| {
        c.tcp_health_check(Duration::from_millis(200), Duration::from_millis(200), 3, 2)
    };
    let mut config = PylonConfig::new()
        .cluster(checked(Cluster::new("kube-apiserver", &addrs)))
        .cluster(checked(Cluster::new("echo", &echo_addrs)))
        .listener(Listener::tcp_proxy(
            "kube-apiserver",
            listen,
            "kube-apiserver",
        ))
        .listener(Listener::tcp_proxy("echo", l_echo, "echo"));
    let (pylon, dp) = stack(&bin, flavour, "removal-drains", &config).await;
    for a in addrs.iter().chain(&echo_addrs) {
        let cluster = if echo_addrs.contains(a) {
            "echo"
        } else {
            "kube-apiserver"
        };
        wait_flags(&dp, cluster, *a, "healthy").await;
    }
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 3).await;
    assert_round_robin(&seq, &[0, 1, 2]);

    // A long-lived connection to one of the echo backends.
    let before: Vec<u64> = echoes.iter().map(TcpEcho::connections).collect();
    let mut held = TcpStream::connect(l_echo).await.unwrap();
    echo_roundtrip(&mut held, b"before the removal")
        .await
        .unwrap();
    let took = grown(&echoes, &before);
    assert_eq!(took.len(), 1, "{before:?}");
    let held_on = took[0];

    // The operator removes apiserver-1 and the echo backend holding the
    // connection, both healthy, in one edit.
    config
        .cluster_mut("kube-apiserver")
        .unwrap()
        .endpoints
        .retain(|a| *a != addrs[1]);
    config
        .cluster_mut("echo")
        .unwrap()
        .endpoints
        .retain(|a| *a != echo_addrs[held_on]);
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_hosts(&dp, "kube-apiserver", &[addrs[0], addrs[2]]).await;
    wait_hosts(&dp, "echo", &[echo_addrs[1 - held_on]]).await;
    assert!(
        apis[1].is_running(),
        "the removed apiserver is still up and healthy"
    );

    // Not one new connection reaches the removed apiserver.
    let to_removed = apis[1].tls_connections();
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 2]);
    assert_eq!(apis[1].tls_connections(), to_removed);
    let before: Vec<u64> = echoes.iter().map(TcpEcho::connections).collect();
    for _ in 0..4 {
        let mut c = TcpStream::connect(l_echo).await.unwrap();
        echo_roundtrip(&mut c, b"new").await.unwrap();
    }
    assert_eq!(echoes[held_on].connections(), before[held_on]);

    // The established connection to the removed host is not cut.
    echo_roundtrip(&mut held, b"after the removal")
        .await
        .unwrap();

    pylon.shutdown().await;
}
