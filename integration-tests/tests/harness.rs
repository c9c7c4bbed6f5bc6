//! Self-tests of the harness against real tools, independent of pylon-xds:
//! Envoy starts from a static bootstrap, its admin API parses, traffic flows
//! through it to in-process backends, and health checks are observable.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::assert_eventually;
use integration_tests::backends::{ApiServer, HttpServer, TcpEcho};
use integration_tests::envoy::{self, Envoy};
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::tls::TestCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(15);

fn static_cluster(name: &str, hosts: &[SocketAddr], hc: bool) -> String {
    let eps: String = hosts
        .iter()
        .map(|h| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}\n",
                h.ip(),
                h.port()
            )
        })
        .collect();
    let hc = if hc {
        "    health_checks:\n    - { timeout: 0.2s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 3, healthy_threshold: 2, tcp_health_check: {} }\n"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{hc}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{eps}"
    )
}

fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> String {
    format!(
        "  - name: {name}\n    address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {name}\n          cluster: {cluster}\n",
        addr.ip(),
        addr.port()
    )
}

fn static_bootstrap(listeners: &[String], clusters: &[String]) -> String {
    format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        listeners.concat(),
        clusters.concat()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_static_tcp_proxy_to_echo() {
    let Some(bin) = envoy::binary_or_skip() else {
        return;
    };
    let echo = TcpEcho::start(loopback(2)).await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let bootstrap = static_bootstrap(
        &[tcp_listener("echo", listen, "echo")],
        &[static_cluster("echo", &[echo.addr()], false)],
    );
    let envoy = Envoy::start(&bin, "static-echo", &bootstrap).await.unwrap();
    assert!(envoy.admin().ip().is_loopback());
    envoy.wait_ready(DEADLINE).await.unwrap();

    let listeners = envoy.listeners().await.unwrap();
    assert_eq!(listeners, vec![("echo".to_string(), listen.to_string())]);

    let mut conn = TcpStream::connect(listen).await.unwrap();
    conn.write_all(b"ping through envoy").await.unwrap();
    let mut buf = [0u8; 18];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through envoy");
    assert_eq!(echo.connections(), 1);

    let clusters = envoy.clusters().await.unwrap();
    let host = echo.addr().to_string();
    assert_eq!(clusters.hosts("echo"), vec![host.clone()]);
    assert_eq!(clusters.health_flags("echo", &host), Some("healthy"));
    assert_eq!(clusters.host_counter("echo", &host, "cx_total"), 1);
    let dump = envoy.config_dump().await.unwrap();
    assert!(dump.section("ClustersConfigDump").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_round_robin_and_health_checks_are_observable() {
    let Some(bin) = envoy::binary_or_skip() else {
        return;
    };
    let replicas = [
        HttpServer::start(loopback(2), "r1").await.unwrap(),
        HttpServer::start(loopback(3), "r2").await.unwrap(),
        HttpServer::start(loopback(4), "r3").await.unwrap(),
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr()).collect();
    let listen = free_addr(LOOPBACK).unwrap();
    let bootstrap = static_bootstrap(
        &[tcp_listener("rr", listen, "rr")],
        &[static_cluster("rr", &addrs, true)],
    );
    let envoy = Envoy::start(&bin, "static-rr", &bootstrap).await.unwrap();
    envoy.wait_ready(DEADLINE).await.unwrap();
    assert_eventually!(DEADLINE, "all three hosts healthy", async || {
        let c = envoy.clusters().await?;
        for a in &addrs {
            let f = c.health_flags("rr", &a.to_string());
            anyhow::ensure!(f == Some("healthy"), "{a}: {f:?}");
        }
        Ok(())
    });
    for _ in 0..9 {
        let r = integration_tests::http::get(listen, "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    let served: Vec<u64> = replicas.iter().map(|r| r.served()).collect();
    assert_eq!(served, vec![3, 3, 3]);

    replicas[1].stop().await;
    let down = addrs[1].to_string();
    assert_eventually!(DEADLINE, "r2 failed_active_hc", async || {
        let c = envoy.clusters().await?;
        let f = c.health_flags("rr", &down).unwrap_or_default().to_string();
        anyhow::ensure!(f.contains("failed_active_hc"), "health_flags = {f}");
        Ok(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_through_static_envoy_tcp_passthrough() {
    let Some(bin) = envoy::binary_or_skip() else {
        return;
    };
    let Some(kubectl) = Kubectl::find_or_skip() else {
        return;
    };
    let ca = TestCa::new().unwrap();
    let api = ApiServer::start(loopback(5), "a1", &ca).await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let bootstrap = static_bootstrap(
        &[tcp_listener("api", listen, "api")],
        &[static_cluster("api", &[api.addr()], false)],
    );
    let envoy = Envoy::start(&bin, "static-kubectl", &bootstrap)
        .await
        .unwrap();
    envoy.wait_ready(DEADLINE).await.unwrap();
    let out = kubectl
        .get_raw(listen, ca.ca_path(), "/healthz")
        .await
        .unwrap();
    assert_eq!(out, "ok");
    // kubectl asks /version first, on the same connection.
    assert_eq!(
        api.paths().last().map(String::as_str),
        Some("/healthz"),
        "{:?}",
        api.paths()
    );
    assert_eq!(api.tls_connections(), 1);
}
