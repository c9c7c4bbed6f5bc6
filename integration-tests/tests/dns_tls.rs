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

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use integration_tests::backends::ApiServer;
use integration_tests::config::{Cluster, Listener, PylonConfig};
use integration_tests::dataplane::{DataPlane, Flavour};
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::scenario::{stack, DEADLINE};
use integration_tests::tls::TestCa;
use integration_tests::{assert_eventually, every_data_plane};

every_data_plane!(apiserver_readyz);

async fn wait_health(dp: &DataPlane, cluster: &str, host: SocketAddr, healthy: bool) {
    let host = host.to_string();
    let what = format!(
        "{cluster}/{host} {}",
        if healthy {
            "healthy"
        } else {
            "failed_active_hc"
        }
    );
    let admin = dp.admin();
    assert_eventually!(DEADLINE, what, async || {
        let c = admin.clusters().await?;
        let flags = c.health_flags(cluster, &host).unwrap_or("<host absent>");
        if healthy {
            ensure!(flags == "healthy", "health_flags = {flags}");
        } else {
            ensure!(flags.contains("failed_active_hc"), "health_flags = {flags}");
        }
        Ok(())
    });
}

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
        wait_health(&dp, "kube-apiserver", *a, true).await;
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
    wait_health(&dp, "kube-apiserver", addrs[1], false).await;
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
    wait_health(&dp, "kube-apiserver", addrs[1], true).await;
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
