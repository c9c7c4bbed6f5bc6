//! End-to-end scenarios of issue 9 (readiness over TLS, DNS endpoints), each
//! on Envoy and pylon-proxy over SotW and delta ADS
//! (`<scenario>::{envoy,pylon}_{sotw,delta}`):
//!
//! 1. `apiserver_readyz`: kubectl through a tcp_proxy to three TLS
//!    apiservers health-checked with `https: {path: /readyz, ca}`. An
//!    apiserver whose `/readyz` turns 500 while its port stays open is
//!    ejected (`/failed_active_hc`) and gets no new kubectl connection; it
//!    comes back when `/readyz` is 200 again. The checks ran over TLS (the
//!    apiservers saw `/readyz` requests), kubectl's own TLS went end to end.
//! 2. `dns_clusters_follow_answers`: native STRICT_DNS and LOGICAL_DNS
//!    clusters (passed through by pylon-xds, resolved by the proxy through
//!    dnsmasq on loopback, `typed_dns_resolver_config`). Under traffic, the
//!    name moves from one backend to another, then gains one: requests
//!    follow, none fails.
//! 3. `xds_resolves_names`: a concise cluster with `web.test:PORT`; pylon-xds
//!    resolves it (`--dns-server` = dnsmasq) and serves the addresses over
//!    EDS. The answer moves under traffic and the requests follow; dnsmasq
//!    stops: the lookup failure shows in `/status` and the metrics while the
//!    last addresses keep serving; dnsmasq returns with a second address:
//!    the error clears and both backends serve. No request fails.
//! 4. `seed_front_proxy`: the seed's v2 front-proxy file, cut from the seed
//!    document as written, through `pylon-xds migrate`, with only what must
//!    change to run here substituted (the listener's address and the ports,
//!    and dnsmasq as the clusters' resolver so `service1`/`service2` resolve
//!    to loopback backends), served by pylon-xds; and
//!    `seed_front_proxy_as_bootstrap`: the same with `migrate --bootstrap`,
//!    run directly by `pylon-proxy -c` and `envoy -c`. `/service/1` and
//!    `/service/2` reach their backends, round robin over the replicas.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{ensure, Context as _};
use integration_tests::backends::{ApiServer, HttpServer};
use integration_tests::config::{Cluster, Listener, PylonConfig, Route};
use integration_tests::dataplane::{DataPlane, Flavour, Kind};
use integration_tests::dnsmasq::{self, Dnsmasq};
use integration_tests::http;
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::scenario::{stack, stack_with_dns, wait_flags, DEADLINE};
use integration_tests::tls::TestCa;
use integration_tests::traffic::TrafficLoop;
use integration_tests::{assert_eventually, every_data_plane};

every_data_plane!(
    apiserver_readyz,
    dns_clusters_follow_answers,
    xds_resolves_names,
    seed_front_proxy
);

// ---------------------------------------------------------------------------
// 1. kube-apiserver readiness over TLS

/// Runs `kubectl get --raw /healthz` through the proxy and returns the index
/// of the apiserver that served it (exactly one must have; health checks are
/// not counted: they are not kubectl).
async fn kubectl_healthz(
    kubectl: &Kubectl,
    listen: SocketAddr,
    ca: &TestCa,
    apis: &[ApiServer],
) -> usize {
    let before: Vec<u64> = apis.iter().map(ApiServer::kubectl_requests).collect();
    let out = kubectl
        .get_raw(listen, ca.ca_path(), "/healthz")
        .await
        .unwrap();
    assert_eq!(out, "ok");
    let after: Vec<u64> = apis.iter().map(ApiServer::kubectl_requests).collect();
    let grew: Vec<usize> = (0..apis.len()).filter(|&i| after[i] > before[i]).collect();
    assert_eq!(
        grew.len(),
        1,
        "kubectl requests before {before:?}, after {after:?}"
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

async fn apiserver_readyz(flavour: Flavour) {
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
        .cluster(Cluster::new("kube-apiserver", &addrs).https_health_check(
            "/readyz",
            Some(ca.ca_path()),
            Duration::from_millis(200),
            Duration::from_secs(1),
            3,
            2,
        ))
        .listener(Listener::tcp_proxy(
            "kube-apiserver",
            listen,
            "kube-apiserver",
        ));
    let (pylon, dp) = stack(&bin, flavour, "apiserver-readyz", &config).await;
    for a in &addrs {
        wait_flags(&dp, "kube-apiserver", *a, "healthy").await;
    }
    // The checks are GET /readyz over TLS: only a completed handshake shows
    // the apiserver a request.
    for a in &apis {
        assert!(
            a.paths().iter().any(|p| p == "/readyz"),
            "{} saw no /readyz: {:?}",
            a.id(),
            a.paths()
        );
        assert_eq!(a.kubectl_requests(), 0);
    }

    // kubectl's TLS goes end to end (it verifies the apiserver with the CA),
    // round robin over the three.
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 1, 2]);

    // apiserver-1 loses readiness; its port stays open (a TCP check would
    // keep it). The first 500 ejects it.
    apis[1].set_ready(false);
    let unready_at = std::time::Instant::now();
    wait_flags(&dp, "kube-apiserver", addrs[1], "failed_active_hc").await;
    eprintln!(
        "{flavour}: apiserver-1 ejected {:?} after /readyz turned 500 (interval 200 ms)",
        unready_at.elapsed()
    );
    assert!(apis[1].is_running());
    assert!(tokio::net::TcpStream::connect(addrs[1]).await.is_ok());
    let before = apis[1].kubectl_requests();
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 2]);
    assert_eq!(
        apis[1].kubectl_requests(),
        before,
        "the unready apiserver got a kubectl connection"
    );

    // Ready again: healthy after `healthy_threshold` checks, and used again.
    // Envoy hands health changes to its workers through
    // `update_merge_window` (1 s), so the first connection is awaited.
    apis[1].set_ready(true);
    wait_flags(&dp, "kube-apiserver", addrs[1], "healthy").await;
    assert_eventually!(
        DEADLINE,
        "a kubectl connection reaches apiserver-1",
        async || {
            let i = kubectl_healthz(&kubectl, listen, &ca, &apis).await;
            ensure!(i == 1, "went to apiserver-{i}");
            Ok(())
        }
    );
    let seq = kubectl_sequence(&kubectl, listen, &ca, &apis, 6).await;
    assert_round_robin(&seq, &[0, 1, 2]);

    drop(dp);
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// DNS helpers

/// Replicas answering their id, all on one port (a DNS answer carries
/// addresses; the port is the cluster's), on `127.0.0.<n>` for each `n`.
/// `h2c`: they speak HTTP/2 with prior knowledge too.
async fn replicas_on_one_port(ids: &[(&str, u8)], h2c: bool) -> (Vec<HttpServer>, u16) {
    'port: for _ in 0..20 {
        let first = HttpServer::start_at(SocketAddr::new(loopback(ids[0].1), 0), ids[0].0, h2c)
            .await
            .unwrap();
        let port = first.addr().port();
        let mut servers = vec![first];
        for (id, n) in &ids[1..] {
            match HttpServer::start_at(SocketAddr::new(loopback(*n), port), id, h2c).await {
                Ok(s) => servers.push(s),
                // Someone holds that port on this address: try another.
                Err(_) => continue 'port,
            }
        }
        return (servers, port);
    }
    panic!("no port free on every replica address");
}

fn ip(n: u8) -> IpAddr {
    loopback(n)
}

/// The c-ares resolver config pointing at `dns`, as a YAML flow map.
fn cares(dns: SocketAddr) -> String {
    format!(
        "{{name: envoy.network.dns_resolver.cares, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, resolvers: [{{socket_address: {{address: \"{}\", port_value: {}}}}}], dns_resolver_options: {{no_default_search_domain: true}}}}}}",
        dns.ip(),
        dns.port()
    )
}

/// A native DNS cluster (`kind`: STRICT_DNS or LOGICAL_DNS) on `host:port`,
/// refreshed every 200 ms, resolved by `dns`.
fn dns_cluster(name: &str, kind: &str, host: &str, port: u16, dns: SocketAddr) -> String {
    format!(
        "name: {name}\ntype: {kind}\nconnect_timeout: 1s\ndns_refresh_rate: 0.2s\ndns_lookup_family: V4_ONLY\n\
typed_dns_resolver_config: {}\n\
load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}}}]}}]}}",
        cares(dns)
    )
}

/// Waits until `n` GETs in a row of `path` are all answered by one of `ids`
/// (each at least once when `all`).
async fn wait_only(listen: SocketAddr, path: &str, ids: &[&str], all: bool) {
    assert_eventually!(
        DEADLINE,
        format!("GET {path} answered only by {ids:?}"),
        async || {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..(4 * ids.len()) {
                let r = http::get(listen, path).await?;
                ensure!(r.status == 200, "{} {}", r.status, r.body);
                *seen.entry(r.body).or_default() += 1;
            }
            ensure!(
                seen.keys().all(|k| ids.contains(&k.as_str())),
                "answered by {seen:?}"
            );
            if all {
                ensure!(seen.len() == ids.len(), "answered by {seen:?}");
            }
            Ok(())
        }
    );
}

/// The dnsmasq binary, or `None` after reporting it missing.
fn dnsmasq_or_skip() -> Option<std::path::PathBuf> {
    dnsmasq::binary_or_skip()
}

// ---------------------------------------------------------------------------
// 2. DNS clusters resolved by the proxy

async fn dns_clusters_follow_answers(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some(dnsmasq_bin) = dnsmasq_or_skip() else {
        return;
    };
    let (servers, port) = replicas_on_one_port(&[("web-a", 11), ("web-b", 12)], false).await;
    let dns = Dnsmasq::start(dnsmasq_bin, &[("web.test", ip(11))])
        .await
        .unwrap();
    let (http_listen, tcp_listen) = (free_addr(LOOPBACK).unwrap(), free_addr(LOOPBACK).unwrap());
    let config = PylonConfig::new()
        .native_cluster_yaml(&dns_cluster(
            "web-strict",
            "STRICT_DNS",
            "web.test",
            port,
            dns.addr(),
        ))
        .native_cluster_yaml(&dns_cluster(
            "web-logical",
            "LOGICAL_DNS",
            "web.test",
            port,
            dns.addr(),
        ))
        .listener(Listener::http(
            "front",
            http_listen,
            vec![Route::prefix("/", "web-strict")],
        ))
        // LOGICAL_DNS applies the answer to new connections: a tcp_proxy
        // makes one per request (an HTTP pool would reuse its old ones).
        .listener(Listener::tcp_proxy("logical", tcp_listen, "web-logical"));
    let (pylon, dp) = stack(&bin, flavour, "dns-clusters", &config).await;
    wait_only(http_listen, "/strict", &["web-a"], true).await;
    wait_only(tcp_listen, "/logical", &["web-a"], true).await;

    let strict = TrafficLoop::start(http_listen, "/strict");
    let logical = TrafficLoop::start(tcp_listen, "/logical");
    // The name moves to the other backend: both clusters follow.
    dns.set(&[("web.test", ip(12))]).await.unwrap();
    let moved_at = std::time::Instant::now();
    wait_only(http_listen, "/strict", &["web-b"], true).await;
    let strict_followed = moved_at.elapsed();
    wait_only(tcp_listen, "/logical", &["web-b"], true).await;
    eprintln!(
        "{flavour}: after the answer moved, STRICT_DNS followed within {strict_followed:?}, \
         LOGICAL_DNS within {:?} (dns_refresh_rate 200 ms)",
        moved_at.elapsed()
    );
    // It gains one: STRICT_DNS uses both, LOGICAL_DNS the first.
    dns.set(&[("web.test", ip(12)), ("web.test", ip(11))])
        .await
        .unwrap();
    wait_only(http_listen, "/strict", &["web-a", "web-b"], true).await;
    let (strict, logical) = (strict.stop().await, logical.stop().await);
    for (name, t) in [("STRICT_DNS", &strict), ("LOGICAL_DNS", &logical)] {
        assert!(
            t.failures.is_empty(),
            "{name}: {} of {} requests failed: {:?}",
            t.failures.len(),
            t.failures.len() as u64 + t.ok_total(),
            t.failures
        );
        assert!(
            t.ok.contains_key("web-a") && t.ok.contains_key("web-b"),
            "{name}: {:?}",
            t.ok
        );
    }
    // The proxy looked the name up itself, again and again.
    let stats = dp.admin().stats().await.unwrap();
    assert!(
        stats
            .get("cluster.web-strict.update_success")
            .copied()
            .unwrap_or(0)
            >= 3,
        "{:?}",
        stats
            .iter()
            .filter(|(k, _)| k.starts_with("cluster.web-strict.update"))
            .collect::<Vec<_>>()
    );
    drop(servers);
    drop(dp);
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Names resolved by pylon-xds

async fn xds_resolves_names(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some(dnsmasq_bin) = dnsmasq_or_skip() else {
        return;
    };
    let (servers, port) = replicas_on_one_port(&[("web-a", 13), ("web-b", 14)], false).await;
    let mut dns = Dnsmasq::start(dnsmasq_bin, &[("web.test", ip(13))])
        .await
        .unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let name = format!("web.test:{port}");
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[]).names(&[&name], Duration::from_millis(200)))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (pylon, dp) =
        stack_with_dns(&bin, flavour, "xds-names", &config.to_yaml(), dns.addr()).await;
    wait_only(listen, "/", &["web-a"], true).await;
    let traffic = TrafficLoop::start(listen, "/");

    // The answer moves: pylon-xds pushes the new address, requests follow.
    dns.set(&[("web.test", ip(14))]).await.unwrap();
    let moved_at = std::time::Instant::now();
    wait_only(listen, "/", &["web-b"], true).await;
    eprintln!(
        "{flavour}: requests followed the answer pylon-xds pushed within {:?} (dns_refresh 200 ms)",
        moved_at.elapsed()
    );
    let entry = |status: &serde_json::Value| -> serde_json::Value {
        status["dns"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == "web.test")
            .cloned()
            .unwrap_or_default()
    };
    let s = entry(&pylon.status().await.unwrap());
    assert_eq!(
        s["addresses"],
        serde_json::json!([ip(14).to_string()]),
        "{s}"
    );
    assert_eq!(s["used_by"], serde_json::json!(["web"]), "{s}");
    assert!(s["last_error"].is_null(), "{s}");

    // The DNS server goes away: the failure shows, the last addresses stay.
    dns.stop().await.unwrap();
    let admin = pylon.admin_addr().unwrap();
    assert_eventually!(DEADLINE, "the lookup failure in /status", async || {
        let s = entry(&pylon.status().await?);
        ensure!(s["last_error"].is_string(), "{s}");
        ensure!(
            s["addresses"] == serde_json::json!([ip(14).to_string()]),
            "{s}"
        );
        let metrics = http::get(admin, "/metrics").await?.body;
        ensure!(
            metrics.contains("pylon_xds_dns_names_failing 1"),
            "{}",
            metrics
                .lines()
                .filter(|l| l.contains("dns"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    });
    let failures = http::get(admin, "/metrics").await.unwrap().body;
    assert!(
        failures
            .lines()
            .any(|l| l.starts_with("pylon_xds_dns_lookup_failures_total ") && !l.ends_with(" 0")),
        "{failures}"
    );
    wait_only(listen, "/", &["web-b"], true).await;

    // It comes back with a second address: the error clears, both serve.
    dns.set_before_start(&[("web.test", ip(14)), ("web.test", ip(13))])
        .unwrap();
    dns.start_again().await.unwrap();
    assert_eventually!(DEADLINE, "the lookup error cleared", async || {
        let s = entry(&pylon.status().await?);
        ensure!(s["last_error"].is_null(), "{s}");
        ensure!(s["addresses"].as_array().map_or(0, Vec::len) == 2, "{s}");
        Ok(())
    });
    wait_only(listen, "/", &["web-a", "web-b"], true).await;
    let t = traffic.stop().await;
    assert!(
        t.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        t.failures.len(),
        t.failures.len() as u64 + t.ok_total(),
        t.failures
    );
    drop(servers);
    drop(dp);
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. The seed's front proxy, as written

/// The seed front proxy's `envoy.yaml`, cut from the seed document as
/// written: from `static_resources:` to its admin's `port_value: 8001`.
fn seed_front_proxy_file() -> Option<String> {
    let path = integration_tests::workspace_root().join("../shared/seeds/004_8771ba3f8aabcd48.txt");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return integration_tests::missing_tool(
            "the seed document",
            &format!("{} (shared/ beside the workspace)", path.display()),
        );
    };
    let start = doc.find("\nstatic_resources:\n")? + 1;
    let end = start + doc[start..].find("port_value: 8001")? + "port_value: 8001".len();
    Some(format!("{}\n", &doc[start..end]))
}

/// The seed file through `pylon-xds migrate` (`--bootstrap` with `bootstrap`),
/// then only what must change to run here: the listener on `listen`, the
/// clusters' port, dnsmasq as the clusters' resolver, and the admin on `admin`.
fn migrated_seed(
    listen: SocketAddr,
    port: u16,
    dns: SocketAddr,
    bootstrap: Option<SocketAddr>,
) -> String {
    let seed = seed_front_proxy_file().expect("the seed front proxy file");
    let (migrated, changes) = control_plane::config::migrate(
        "front-envoy.yaml",
        seed.as_bytes(),
        &Default::default(),
        bootstrap.is_some(),
    )
    .unwrap();
    assert!(changes >= 10, "{migrated}");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&migrated).unwrap();
    let sock = |v: &mut serde_yaml::Value, a: SocketAddr| {
        let sa = &mut v["socket_address"];
        sa["address"] = a.ip().to_string().into();
        sa["port_value"] = u64::from(a.port()).into();
    };
    let l = &mut doc["static_resources"]["listeners"][0];
    assert_eq!(l["address"]["socket_address"]["port_value"], 80);
    sock(&mut l["address"], listen);
    let resolver: serde_yaml::Value = serde_yaml::from_str(&cares(dns)).unwrap();
    for c in doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
    {
        let sa = &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(sa["port_value"], 80);
        sa["port_value"] = u64::from(port).into();
        c["typed_dns_resolver_config"] = resolver.clone();
    }
    if let Some(admin) = bootstrap {
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["port_value"],
            8001
        );
        sock(&mut doc["admin"]["address"], admin);
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Backends for the seed: service1 on two replicas, service2 on one, all
/// speaking HTTP/1.1 and h2c (the seed's clusters use HTTP/2 upstream), and
/// dnsmasq giving `service1` and `service2` their addresses.
async fn seed_backends(dnsmasq_bin: std::path::PathBuf) -> (Vec<HttpServer>, u16, Dnsmasq) {
    let (servers, port) = replicas_on_one_port(
        &[("service1-0", 21), ("service1-1", 22), ("service2-0", 23)],
        true,
    )
    .await;
    let dns = Dnsmasq::start(
        dnsmasq_bin,
        &[
            ("service1", ip(21)),
            ("service1", ip(22)),
            ("service2", ip(23)),
        ],
    )
    .await
    .unwrap();
    (servers, port, dns)
}

/// `/service/1` round robin over its two replicas, `/service/2` to its one.
async fn assert_seed_routes(listen: SocketAddr) {
    wait_only(listen, "/service/1", &["service1-0", "service1-1"], true).await;
    wait_only(listen, "/service/2", &["service2-0"], true).await;
    let mut seq = Vec::new();
    for _ in 0..10 {
        let r = http::get(listen, "/service/1").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        seq.push(r.body);
    }
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "not round robin: {seq:?}");
    }
}

async fn seed_front_proxy(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some(dnsmasq_bin) = dnsmasq_or_skip() else {
        return;
    };
    if seed_front_proxy_file().is_none() {
        return;
    }
    let (_servers, port, dns) = seed_backends(dnsmasq_bin).await;
    let listen = free_addr(LOOPBACK).unwrap();
    let yaml = migrated_seed(listen, port, dns.addr(), None);
    let pylon = integration_tests::pylon::Pylon::start(&yaml)
        .await
        .with_context(|| yaml.clone())
        .unwrap();
    let node = format!("seed-front-proxy-{flavour}");
    let dp = DataPlane::start(&bin, flavour, &pylon, &node)
        .await
        .unwrap();
    dp.admin().wait_ready(DEADLINE).await.unwrap();
    assert_seed_routes(listen).await;
    if flavour.kind == Kind::Pylon {
        // The clusters reached the proxy as written: STRICT_DNS, resolved there.
        let stats = dp.admin().stats().await.unwrap();
        assert!(
            stats
                .get("cluster.service1.update_success")
                .copied()
                .unwrap_or(0)
                >= 1
        );
    }
    drop(dp);
    pylon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_front_proxy_as_bootstrap() {
    let Some(dnsmasq_bin) = dnsmasq_or_skip() else {
        return;
    };
    if seed_front_proxy_file().is_none() {
        return;
    }
    let (_servers, port, dns) = seed_backends(dnsmasq_bin).await;
    if let Some(bin) = integration_tests::pylon_proxy::binary_or_skip() {
        let listen = free_addr(LOOPBACK).unwrap();
        let proxy = integration_tests::pylon_proxy::PylonProxy::start(&bin, "seed", |admin| {
            migrated_seed(listen, port, dns.addr(), Some(admin))
        })
        .await
        .unwrap();
        proxy.admin_client().wait_ready(DEADLINE).await.unwrap();
        assert_seed_routes(listen).await;
        proxy.stop().await.unwrap();
    }
    if let Some(bin) = integration_tests::envoy::binary_or_skip() {
        let listen = free_addr(LOOPBACK).unwrap();
        let boot = migrated_seed(
            listen,
            port,
            dns.addr(),
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let envoy = integration_tests::envoy::Envoy::start(&bin, "seed", &boot)
            .await
            .unwrap();
        envoy.wait_ready(DEADLINE).await.unwrap();
        assert_seed_routes(listen).await;
        envoy.stop().await.unwrap();
    }
}
