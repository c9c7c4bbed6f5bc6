//! End-to-end scenarios: pylon-xds serving a YAML file to a real Envoy over
//! ADS, with in-process backends behind it. Every scenario runs twice: Envoy
//! bootstrapped for state-of-the-world ADS and for delta ADS.
//!
//! 1. `apiserver_ha`: kubectl through a tcp_proxy to three TLS apiservers,
//!    round robin, active TCP health checks ejecting and re-admitting a backend.
//! 2. `front_proxy`: HTTP routes by prefix, even spread over replicas.
//! 3. `live_edits`: endpoint add/remove, listener add, cluster+listener
//!    removal, route change, each seen at Envoy; a held connection survives.
//! 4. `bad_edit`: broken YAML, then valid YAML naming a missing cluster: each
//!    is reported by `/status` while Envoy keeps the last good config and
//!    traffic flows; the fix is pushed and the error cleared.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use integration_tests::assert_eventually;
use integration_tests::backends::{ApiServer, HttpServer, TcpEcho};
use integration_tests::config::{Cluster, Listener, ListenerKind, PylonConfig, Route};
use integration_tests::envoy::{self, Envoy};
use integration_tests::http;
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::pylon::{Ads, Pylon};
use integration_tests::tls::TestCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Deadline for anything pushed to Envoy or decided by its health checks.
const DEADLINE: Duration = Duration::from_secs(15);

/// Runs a scenario once per ADS flavour, as `<scenario>::sotw` and `<scenario>::delta`.
macro_rules! both_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sotw() {
                super::$scenario(integration_tests::pylon::Ads::Sotw).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn delta() {
                super::$scenario(integration_tests::pylon::Ads::Delta).await
            }
        }
    )*};
}

both_modes!(apiserver_ha, front_proxy, live_edits, bad_edit);

fn node_id(scenario: &str, ads: Ads) -> String {
    format!(
        "{scenario}-{}",
        if ads.is_delta() { "delta" } else { "sotw" }
    )
}

/// pylon-xds on `config`, and an Envoy bootstrapped against it, ready.
async fn stack(bin: &Path, scenario: &str, ads: Ads, config: &PylonConfig) -> (Pylon, Envoy) {
    let pylon = Pylon::start(&config.to_yaml()).await.unwrap();
    let bootstrap = pylon.bootstrap(&node_id(scenario, ads), ads).unwrap();
    assert!(bootstrap.contains("127.0.0.1"), "bootstrap:\n{bootstrap}");
    let envoy = Envoy::start(bin, &node_id(scenario, ads), &bootstrap)
        .await
        .unwrap();
    if let Err(err) = envoy.wait_ready(DEADLINE).await {
        panic!("{err:#}\nbootstrap:\n{bootstrap}");
    }
    // The stream is the flavour asked for, as pylon-xds sees it.
    let node = node_id(scenario, ads);
    let protocol = if ads.is_delta() { "ads-delta" } else { "ads" };
    assert_eventually!(
        DEADLINE,
        format!("{node} on an `{protocol}` stream"),
        async || {
            let status = pylon.status().await?;
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            ensure!(
                nodes
                    .iter()
                    .any(|n| n["node"] == node.as_str() && n["protocol"] == protocol),
                "/status nodes = {nodes:?}"
            );
            Ok(())
        }
    );
    (pylon, envoy)
}

async fn wait_health(envoy: &Envoy, cluster: &str, host: SocketAddr, healthy: bool) {
    let host = host.to_string();
    let what = format!(
        "{cluster}/{host} {}",
        if healthy {
            "healthy"
        } else {
            "failed_active_hc"
        }
    );
    assert_eventually!(DEADLINE, what, async || {
        let c = envoy.clusters().await?;
        let flags = c.health_flags(cluster, &host).unwrap_or("<host absent>");
        if healthy {
            ensure!(flags == "healthy", "health_flags = {flags}");
        } else {
            ensure!(flags.contains("failed_active_hc"), "health_flags = {flags}");
        }
        Ok(())
    });
}

async fn wait_hosts(envoy: &Envoy, cluster: &str, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    assert_eventually!(
        DEADLINE,
        format!("{cluster} hosts = {want:?}"),
        async || {
            let hosts = envoy.clusters().await?.hosts(cluster);
            ensure!(hosts == want, "hosts = {hosts:?}");
            Ok(())
        }
    );
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

/// Runs `kubectl get --raw /healthz` through Envoy and returns the index of the
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

async fn apiserver_ha(ads: Ads) {
    let Some(bin) = envoy::binary_or_skip() else {
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
    let (pylon, envoy) = stack(&bin, "apiserver-ha", ads, &config).await;
    for a in &addrs {
        wait_health(&envoy, "kube-apiserver", *a, true).await;
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
    wait_health(&envoy, "kube-apiserver", addrs[1], false).await;
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 2]);

    // It comes back on the same port: healthy again, and used again. Envoy
    // hands health changes to its workers through `update_merge_window` (1 s
    // by default): a change within a second of the previous one (the ejection
    // above) reaches the load balancer up to a second after `/clusters` shows
    // it, so the first connection to the returning host is awaited.
    apis[1].start_again().await.unwrap();
    assert_eq!(apis[1].addr(), addrs[1]);
    wait_health(&envoy, "kube-apiserver", addrs[1], true).await;
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

async fn front_proxy(ads: Ads) {
    let Some(bin) = envoy::binary_or_skip() else {
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
    let (pylon, envoy) = stack(&bin, "front-proxy", ads, &config).await;
    wait_hosts(&envoy, "service1", &s1_addrs).await;
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

async fn live_edits(ads: Ads) {
    let Some(bin) = envoy::binary_or_skip() else {
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
    let (pylon, envoy) = stack(&bin, "live-edits", ads, &config).await;
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
    wait_hosts(&envoy, "web", &[w[0].addr(), w[1].addr(), w[2].addr()]).await;
    let got = spread(l_front, "/", 9).await;
    assert_eq!(got, counts(&[("web-0", 3), ("web-1", 3), ("web-2", 3)]));

    // Remove an endpoint (written in place).
    config.cluster_mut("web").unwrap().endpoints.remove(0);
    pylon.write_config_in_place(&config.to_yaml()).unwrap();
    wait_hosts(&envoy, "web", &[w[1].addr(), w[2].addr()]).await;
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
        let ls = envoy.listeners().await?;
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
        let dump = envoy.config_dump().await?;
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
            !envoy.clusters().await?.names().contains(&"old".to_string()),
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
    let dump = envoy.config_dump().await.unwrap();
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

/// Envoy still runs the config it had (same versions, same host, listener
/// up) and traffic keeps flowing.
async fn assert_unchanged(
    envoy: &Envoy,
    listen: SocketAddr,
    w0: &HttpServer,
    versions: &BTreeMap<String, String>,
) {
    let got = spread(listen, "/", 10).await;
    assert_eq!(got, counts(&[("web-0", 10)]));
    assert_eq!(
        envoy.clusters().await.unwrap().hosts("web"),
        vec![w0.addr().to_string()]
    );
    let ls = envoy.listeners().await.unwrap();
    assert!(ls.iter().any(|(n, _)| n == "front"), "{ls:?}");
    assert_eq!(&envoy.config_dump().await.unwrap().versions(), versions);
}

async fn bad_edit(ads: Ads) {
    let Some(bin) = envoy::binary_or_skip() else {
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
    let (pylon, envoy) = stack(&bin, "bad-edit", ads, &config).await;
    wait_answer(listen, "/", "web-0").await;
    let status = pylon.status().await.unwrap();
    assert!(
        status["last_reload_error"].is_null(),
        "/status before the bad edit: {status}"
    );

    let versions_before = envoy.config_dump().await.unwrap().versions();

    // Broken YAML (written in place): reported, not pushed.
    let broken = format!(
        "{}  - name: \"unterminated\n    address: [\n",
        config.to_yaml()
    );
    pylon.write_config_in_place(&broken).unwrap();
    let error = wait_reload_error(&pylon, "").await;
    eprintln!("last_reload_error (broken YAML): {error}");
    assert_unchanged(&envoy, listen, &w0, &versions_before).await;

    // Valid YAML, invalid config (a route to a cluster that does not exist,
    // written by rename): reported, not pushed.
    let mut dangling = config.clone();
    dangling.listener_mut("front").unwrap().kind = ListenerKind::Http {
        routes: vec![Route::prefix("/", "no-such-cluster")],
    };
    pylon.write_config_atomic(&dangling.to_yaml()).unwrap();
    let error = wait_reload_error(&pylon, "no-such-cluster").await;
    eprintln!("last_reload_error (dangling route): {error}");
    assert_unchanged(&envoy, listen, &w0, &versions_before).await;

    // The fix (with a change) is pushed.
    config.cluster_mut("web").unwrap().endpoints.push(w1.addr());
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    wait_hosts(&envoy, "web", &[w0.addr(), w1.addr()]).await;
    let got = spread(listen, "/", 4).await;
    assert_eq!(got, counts(&[("web-0", 2), ("web-1", 2)]));
    assert_eventually!(DEADLINE, "/status last_reload_error cleared", async || {
        let status = pylon.status().await?;
        ensure!(status["last_reload_error"].is_null(), "/status = {status}");
        Ok(())
    });

    pylon.shutdown().await;
}
