//! A dead or failing backend costs no failed connection or request: issue 9,
//! asserted through what clients see, on Envoy and pylon-proxy alike, over
//! SotW and delta ADS (`<scenario>::{envoy,pylon}_{sotw,delta}`).
//!
//! 1. `dead_backend`: three API servers behind the TCP proxy (kubectl) and
//!    three HTTP replicas behind the front proxy, health-checked as in
//!    `examples/kube-apiserver.yaml` but every 2 s, so that the active
//!    checks take several seconds to eject a dead host. A kubectl loop and
//!    an HTTP loop run while one backend of each is killed: its listening
//!    socket is closed (connects are refused, as with a crashed process) and
//!    its open connections with it. A call in flight at that moment may be
//!    cut, which is not what the issue is about, so only calls *started
//!    after* the kill has taken effect are counted. With the concise form's
//!    defaults (three TCP connect attempts) and `retries: {}` on the route,
//!    none of them fails, before the ejection or after, and the dead hosts
//!    show the connect failures that were retried.
//! 2. `dead_backend_without_retries`: the same with one connect attempt and
//!    no retries (Envoy's defaults): calls fail until the health checks
//!    eject the dead hosts. Counted, to show what the first scenario saves.
//! 3. `outlier_ejection`: an HTTP replica starts answering 503. With
//!    `consecutive_5xx: 3` it is ejected (`/failed_outlier_check` in
//!    `/clusters`), and returned to service once it answers 200 again and
//!    the ejection time has passed; with retries on `5xx` no client request
//!    fails meanwhile.
//! 4. `removed_host_kept_while_healthy`: a native cluster with
//!    `ignore_health_on_host_removal: false` (Envoy's default, which
//!    pylon-xds keeps when written): a healthy host removed from its
//!    endpoints stays, flagged `/pending_dynamic_removal`, and takes traffic
//!    until its first failed health check drops it.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use integration_tests::backends::{ApiServer, HttpServer};
use integration_tests::config::{
    Cluster, Listener, NativeCluster, OutlierDetection, PylonConfig, Retries, Route,
};
use integration_tests::dataplane::{DataPlane, Flavour};
use integration_tests::http;
use integration_tests::kubectl::Kubectl;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::scenario::{stack, wait_flags, wait_hosts, DEADLINE};
use integration_tests::tls::TestCa;
use integration_tests::traffic::{CallLoop, Calls, TrafficLoop};
use integration_tests::{assert_eventually, every_data_plane};
use tokio::time::Instant;

every_data_plane!(
    dead_backend,
    dead_backend_without_retries,
    outlier_ejection,
    removed_host_kept_while_healthy,
);

/// Long enough for a loop of kubectl runs to gather its calls.
const LONG_DEADLINE: Duration = Duration::from_secs(90);

async fn stat(dp: &DataPlane, name: &str) -> u64 {
    dp.admin()
        .stats()
        .await
        .unwrap()
        .get(name)
        .copied()
        .unwrap_or(0)
}

/// Waits until `loop_` has `n` calls started at or after `t`.
async fn wait_calls(what: &str, loop_: &CallLoop, t: Instant, n: u64) {
    assert_eventually!(LONG_DEADLINE, format!("{n} {what} calls"), async || {
        let c = loop_.since(t);
        ensure!(c.total() >= n, "{} so far", c.total());
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 1 and 2. A dead backend

/// What the loops saw from the kill on, split at the ejection.
struct DeadBackendRun {
    kubectl_before: Calls,
    kubectl_after: Calls,
    http_before: Calls,
    http_after: Calls,
    /// `cx_connect_fail` of the dead API server and the dead replica.
    connect_fails: (u64, u64),
}

/// Kills one API server and one HTTP replica under a kubectl loop and an
/// HTTP loop; returns what the loops saw from the kill on.
async fn run_dead_backend(
    flavour: Flavour,
    scenario: &str,
    retries: bool,
) -> Option<DeadBackendRun> {
    let bin = flavour.binary_or_skip()?;
    let kubectl = Arc::new(Kubectl::find_or_skip()?);
    let ca = TestCa::new().unwrap();
    let mut apis = Vec::new();
    for i in 0..3u8 {
        apis.push(
            ApiServer::start(loopback(2 + i), &format!("apiserver-{i}"), &ca)
                .await
                .unwrap(),
        );
    }
    let mut webs = Vec::new();
    for i in 0..3u8 {
        webs.push(
            HttpServer::start(loopback(5 + i), &format!("web-{i}"))
                .await
                .unwrap(),
        );
    }
    let api_addrs: Vec<SocketAddr> = apis.iter().map(ApiServer::addr).collect();
    let web_addrs: Vec<SocketAddr> = webs.iter().map(HttpServer::addr).collect();
    let (l_kube, l_front) = (free_addr(LOOPBACK).unwrap(), free_addr(LOOPBACK).unwrap());
    // examples/kube-apiserver.yaml's checks, every 2 s instead of 10 s: a
    // dead host is ejected 4 to 6 s after it died.
    let checked =
        |c: Cluster| c.tcp_health_check(Duration::from_secs(2), Duration::from_secs(1), 3, 2);
    let mut kube = Listener::tcp_proxy("kube-apiserver", l_kube, "kube-apiserver");
    let mut route = Route::prefix("/", "web");
    if retries {
        route = route.retries(Retries::default());
    } else {
        kube = kube.max_connect_attempts(1);
    }
    let config = PylonConfig::new()
        .cluster(checked(Cluster::new("kube-apiserver", &api_addrs)))
        .cluster(checked(Cluster::new("web", &web_addrs)))
        .listener(kube)
        .listener(Listener::http("front", l_front, vec![route]));
    let (pylon, dp) = stack(&bin, flavour, scenario, &config).await;
    for a in &api_addrs {
        wait_flags(&dp, "kube-apiserver", *a, "healthy").await;
    }
    for a in &web_addrs {
        wait_flags(&dp, "web", *a, "healthy").await;
    }

    let ca_path = ca.ca_path().to_path_buf();
    let k = kubectl.clone();
    let kube_loop = CallLoop::start(Duration::from_millis(10), move || {
        let (k, ca_path) = (k.clone(), ca_path.clone());
        async move {
            let out = k.get_raw(l_kube, &ca_path, "/healthz").await?;
            ensure!(out == "ok", "kubectl printed {out:?}");
            Ok("ok".to_string())
        }
    });
    let http_loop = CallLoop::start(Duration::from_millis(10), move || async move {
        let r = http::get(l_front, "/").await?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
        Ok(r.body)
    });
    let started = Instant::now();
    wait_calls("kubectl", &kube_loop, started, 3).await;
    wait_calls("HTTP", &http_loop, started, 3).await;
    let warm_up = (kube_loop.since(started), http_loop.since(started));
    assert!(
        warm_up.0.failures.is_empty() && warm_up.1.failures.is_empty(),
        "{flavour}: calls failed before the kill: {warm_up:?}"
    );

    // Kill one of each: listening socket and connections closed.
    apis[1].stop().await;
    webs[1].stop().await;
    let killed = Instant::now();
    wait_flags(&dp, "kube-apiserver", api_addrs[1], "failed_active_hc").await;
    wait_flags(&dp, "web", web_addrs[1], "failed_active_hc").await;
    let ejected = Instant::now();
    // At least 20 calls of each since the kill, 10 of them after the ejection.
    for (what, l) in [("kubectl", &kube_loop), ("HTTP", &http_loop)] {
        wait_calls(what, l, killed, 20).await;
        wait_calls(what, l, ejected, 10).await;
    }
    let run = DeadBackendRun {
        kubectl_before: kube_loop.between(killed, ejected),
        kubectl_after: kube_loop.since(ejected),
        http_before: http_loop.between(killed, ejected),
        http_after: http_loop.since(ejected),
        connect_fails: {
            let c = dp.admin().clusters().await.unwrap();
            (
                c.host_counter(
                    "kube-apiserver",
                    &api_addrs[1].to_string(),
                    "cx_connect_fail",
                ),
                c.host_counter("web", &web_addrs[1].to_string(), "cx_connect_fail"),
            )
        },
    };
    kube_loop.stop().await;
    http_loop.stop().await;
    eprintln!(
        "{flavour} ({scenario}), calls started after the kill: kubectl {} before the ejection ({} failed), {} after ({} failed); HTTP {} before ({} failed), {} after ({} failed); ejected {:?} after the kill; connect failures to the dead hosts: apiserver {}, replica {}",
        run.kubectl_before.total(),
        run.kubectl_before.failures.len(),
        run.kubectl_after.total(),
        run.kubectl_after.failures.len(),
        run.http_before.total(),
        run.http_before.failures.len(),
        run.http_after.total(),
        run.http_after.failures.len(),
        ejected - killed,
        run.connect_fails.0,
        run.connect_fails.1,
    );
    pylon.shutdown().await;
    Some(run)
}

async fn dead_backend(flavour: Flavour) {
    let Some(run) = run_dead_backend(flavour, "dead-backend", true).await else {
        return;
    };
    for (what, calls) in [
        ("kubectl before the ejection", &run.kubectl_before),
        ("kubectl after the ejection", &run.kubectl_after),
        ("HTTP before the ejection", &run.http_before),
        ("HTTP after the ejection", &run.http_after),
    ] {
        assert!(
            calls.failures.is_empty(),
            "{flavour}: {} of {} {what} calls failed: {:?}",
            calls.failures.len(),
            calls.total(),
            calls.failures
        );
    }
    // The dead hosts were tried, and the retries hid it.
    assert!(
        run.connect_fails.0 >= 1 && run.connect_fails.1 >= 1,
        "{flavour}: no connect failure to the dead hosts ({:?}): the scenario tested nothing",
        run.connect_fails
    );
    assert!(!run.http_after.ok.contains_key("web-1"));
}

async fn dead_backend_without_retries(flavour: Flavour) {
    let Some(run) = run_dead_backend(flavour, "dead-no-retries", false).await else {
        return;
    };
    // Round robin sends about one call in three to the dead host until the
    // health checks eject it; after that, none fails.
    assert!(
        !run.kubectl_before.failures.is_empty() && !run.http_before.failures.is_empty(),
        "{flavour}: without retries some calls should fail before the ejection: kubectl {:?}, HTTP {:?}",
        run.kubectl_before,
        run.http_before
    );
    assert!(
        run.kubectl_after.failures.is_empty(),
        "{:?}",
        run.kubectl_after
    );
    assert!(run.http_after.failures.is_empty(), "{:?}", run.http_after);
}

// ---------------------------------------------------------------------------
// 3. Outlier detection

async fn outlier_ejection(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let mut webs = Vec::new();
    for i in 0..3u8 {
        webs.push(
            HttpServer::start(loopback(2 + i), &format!("web-{i}"))
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<SocketAddr> = webs.iter().map(HttpServer::addr).collect();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(
            Cluster::new("web", &addrs).outlier_detection(OutlierDetection {
                consecutive_5xx: Some(3),
                interval: Some(Duration::from_millis(500)),
                base_ejection_time: Some(Duration::from_secs(3)),
                ..Default::default()
            }),
        )
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web").retries(Retries {
                on: Some(vec!["5xx".into()]),
                ..Default::default()
            })],
        ));
    let (pylon, dp) = stack(&bin, flavour, "outlier", &config).await;
    wait_hosts(&dp, "web", &addrs).await;
    let traffic = TrafficLoop::start(listen, "/");
    assert_eventually!(DEADLINE, "every replica answers", async || {
        let t = traffic.tally();
        ensure!(t.ok.len() == 3, "{t:?}");
        Ok(())
    });

    // web-1 starts failing: three 503 in a row eject it.
    webs[1].set_status(503);
    wait_flags(&dp, "web", addrs[1], "failed_outlier_check").await;
    let ejected = std::time::Instant::now();
    let prefix = "cluster.web.outlier_detection.";
    assert_eq!(stat(&dp, &format!("{prefix}ejections_active")).await, 1);
    assert!(stat(&dp, &format!("{prefix}ejections_enforced_consecutive_5xx")).await >= 1);
    assert!(stat(&dp, &format!("{prefix}ejections_detected_consecutive_5xx")).await >= 1);
    let answered = webs[1].served();

    // It recovers, and is back once the ejection time (3 s) has passed.
    webs[1].set_status(200);
    wait_flags(&dp, "web", addrs[1], "healthy").await;
    let out_for = ejected.elapsed();
    assert!(
        out_for >= Duration::from_millis(2_500),
        "{flavour}: back after only {out_for:?}"
    );
    assert_eq!(stat(&dp, &format!("{prefix}ejections_active")).await, 0);
    assert_eventually!(DEADLINE, "web-1 takes requests again", async || {
        ensure!(webs[1].served() > answered, "{}", webs[1].served());
        Ok(())
    });
    let tally = traffic.stop().await;
    assert!(
        tally.failures.is_empty(),
        "{flavour}: {} of {} requests failed: {:?}",
        tally.failures.len(),
        tally.failures.len() as u64 + tally.ok_total(),
        tally.failures
    );
    let retried = stat(&dp, "cluster.web.upstream_rq_retry").await;
    let retry_success = stat(&dp, "cluster.web.upstream_rq_retry_success").await;
    assert!(
        retried >= 3 && retry_success >= 3,
        "{retried} {retry_success}"
    );
    eprintln!(
        "{flavour}: {} requests, none failed; web-1 out for {out_for:?}; {retried} retries ({retry_success} succeeded)",
        tally.ok_total()
    );
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. A removed host kept while it passes its health checks

async fn removed_host_kept_while_healthy(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let w0 = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let w1 = HttpServer::start(loopback(3), "web-1").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let mut config = PylonConfig::new()
        .native_cluster(NativeCluster {
            ignore_health_on_host_removal: Some(false),
            ..NativeCluster::new("keep", &[w0.addr(), w1.addr()], Duration::from_millis(200))
        })
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "keep")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "removed-kept", &config).await;
    wait_flags(&dp, "keep", w0.addr(), "healthy").await;
    wait_flags(&dp, "keep", w1.addr(), "healthy").await;

    // web-1 leaves the endpoints while healthy. (Envoy's config dump shows
    // the hosts in force, the kept one included: the push is seen in the
    // EDS version the node ACKed.)
    let node = dp.node_id().to_string();
    let eds_acked = async || -> anyhow::Result<serde_json::Value> {
        let n = pylon.node_status(&node).await?.context("not connected")?;
        let t = &n["types"]["eds"];
        ensure!(t["state"] == "SYNCED", "eds = {t}");
        Ok(t["acked_version"].clone())
    };
    let before = assert_eventually!(DEADLINE, "EDS synced", eds_acked);
    config.native_cluster_mut("keep").unwrap().endpoints = vec![w0.addr()];
    pylon.write_config_atomic(&config.to_yaml()).unwrap();
    assert_eventually!(DEADLINE, "the push has landed", async || {
        let now = eds_acked().await?;
        ensure!(now != before, "EDS still at {now}");
        Ok(())
    });
    // It is kept, flagged, and still takes requests.
    wait_flags(&dp, "keep", w1.addr(), "pending_dynamic_removal").await;
    wait_hosts(&dp, "keep", &[w0.addr(), w1.addr()]).await;
    let before = w1.served();
    for _ in 0..4 {
        let r = http::get(listen, "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        w1.served() > before,
        "{flavour}: the kept host took no request"
    );

    // Its first failed check drops it.
    w1.stop().await;
    wait_hosts(&dp, "keep", &[w0.addr()]).await;
    for _ in 0..4 {
        let r = http::get(listen, "/")
            .await
            .context("after the removal")
            .unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "web-0"));
    }
    pylon.shutdown().await;
}
