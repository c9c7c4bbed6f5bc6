//! Many pylon-xds replicas on one etcd: real etcd members (Debian's
//! `etcd-server`), real `pylon-xds` processes, and real Envoy and
//! pylon-proxy, all on loopback.
//!
//! 1. `apply_validates_then_writes_once`: an invalid file writes nothing and
//!    is reported with file:line:column; two `apply` processes racing on
//!    the same revision: exactly one wins, the other fails naming both
//!    revisions, and etcd holds exactly the winner's bytes.
//! 2. `rollback_restores_bytes_on_every_replica`: three replicas serve the
//!    same version of each revision; `rollback` writes an older revision
//!    back byte for byte and every replica serves its version again;
//!    `history` and `diff` show the revisions and what changed.
//! 3. `invalid_revision_keeps_the_last_good`: a revision written around the
//!    CLI that is invalid: every replica keeps serving the last good one and
//!    reports the invalid revision in `/status`.
//! 4. `replicas_fail_over` (Envoy and pylon-proxy, SotW and delta): a proxy
//!    bootstrapped with all three replicas, traffic flowing throughout,
//!    while the replica it is connected to is SIGKILLed (an edit made while
//!    it is down reaches the proxy), the etcd leader is SIGKILLed (an edit
//!    then still lands), and a replica is restarted while etcd is entirely
//!    down (it serves its cached revision). No request fails; after each
//!    failover the replica the proxy lands on sends no new version for
//!    unchanged content (`/nodes`), and the proxy's config dump keeps its
//!    versions.
//! 5. `grpc_bootstrap_lists_every_replica`: `bootstrap --grpc --xds A,B`
//!    lists both; grpcio (gRFC A71) starts on the second when the first is
//!    down and keeps calling when the replica it uses dies; grpc-js-xds 1.14
//!    uses only the first server (checked, so the README stays true).
//! 6. `etcd_over_mutual_tls`: `apply` and `serve` with `--etcd-ca`,
//!    `--etcd-cert` and `--etcd-key` against a member that requires client
//!    certificates; without the client certificate, a clear refusal.
//! 7. `watch_file_syncs_and_stops_at_a_conflict`: `apply --watch-file`
//!    writes each save; an edit made in etcd meanwhile is not overwritten.
//!
//! The tests here run one at a time (each starts a three-member etcd
//! cluster and up to three replicas): a lock serialises them.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use integration_tests::backends::HttpServer;
use integration_tests::config::{Cluster, Listener, PylonConfig, Route};
use integration_tests::dataplane::{DataPlane, Flavour};
use integration_tests::etcd::EtcdCluster;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::replica::Replica;
use integration_tests::traffic::TrafficLoop;
use integration_tests::{assert_eventually, every_data_plane};
use serde_json::Value;

every_data_plane!(replicas_fail_over);

/// Deadline for anything replicas or proxies must converge on.
const DEADLINE: Duration = Duration::from_secs(20);
/// The key every test keeps its config at.
const KEY: &str = "/pylon/config";
/// At most this many requests per traffic loop (10 ms apart: minutes).
const MAX_REQUESTS: u64 = 30_000;

/// One test at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The etcd and pylon-xds binaries, or `None` after reporting one missing.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let etcd = integration_tests::etcd::binary_or_skip()?;
    let xds = integration_tests::replica::binary_or_skip()?;
    Some((etcd, xds))
}

/// What a `pylon-xds` command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn pylon_xds(bin: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pylon-xds apply FILE --etcd URL`, which must succeed; returns the
/// revision it wrote.
async fn apply(bin: &Path, url: &str, file: &Path) -> i64 {
    let r = pylon_xds(bin, &["apply", file.to_str().unwrap(), "--etcd", url]).await;
    assert_eq!(r.code, 0, "apply failed: {r:?}");
    written_revision(&r.stdout).unwrap_or_else(|| panic!("no revision written: {r:?}"))
}

/// The N of `wrote etcd revision N` in apply's output.
fn written_revision(stdout: &str) -> Option<i64> {
    let at = stdout.find("wrote etcd revision ")?;
    stdout[at + "wrote etcd revision ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Waits until every running replica passes `check` on its `/status`;
/// returns their statuses.
async fn wait_replicas(
    replicas: &[Replica],
    what: &str,
    check: impl Fn(&Value) -> anyhow::Result<()>,
) -> Vec<Value> {
    assert_eventually!(DEADLINE, what.to_string(), async || {
        let mut all = Vec::new();
        for r in replicas.iter().filter(|r| r.is_running()) {
            let s = r.status().await?;
            check(&s).with_context(|| format!("{}: {s}", r.name()))?;
            all.push(s);
        }
        Ok(all)
    })
}

/// Waits until every running replica serves etcd revision `rev` (and no
/// reload error); returns the version they all serve.
async fn serving(replicas: &[Replica], rev: i64) -> String {
    let statuses = wait_replicas(
        replicas,
        &format!("every replica serves revision {rev}"),
        |s| {
            ensure!(
                s["etcd"]["revision"] == rev,
                "revision {}",
                s["etcd"]["revision"]
            );
            ensure!(s["last_reload_error"].is_null(), "reload error");
            Ok(())
        },
    )
    .await;
    let versions: Vec<&str> = statuses
        .iter()
        .map(|s| s["version"].as_str().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] == w[1]),
        "replicas serve different versions of one revision: {versions:?}"
    );
    versions[0].to_string()
}

fn config(listen: SocketAddr, endpoints: &[SocketAddr]) -> PylonConfig {
    PylonConfig::new()
        .cluster(Cluster::new("web", endpoints))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ))
}

// ---------------------------------------------------------------------------
// 1. apply: validation first, then one compare-and-swap

#[tokio::test(flavor = "multi_thread")]
async fn apply_validates_then_writes_once() {
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(&etcd_bin, 3).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr(LOOPBACK).unwrap();

    // Invalid: the same errors as `validate`, and nothing written.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "clusters:\n  - name: web\n    endpoints: [127.0.0.1:70000]\n",
    );
    let r = pylon_xds(&xds, &["apply", bad.to_str().unwrap(), "--etcd", &url]).await;
    assert_eq!(r.code, 1, "{r:?}");
    let want = format!(
        "{}:3:17: clusters[0].endpoints[0]: port 70000",
        bad.display()
    );
    assert!(r.stderr.contains(&want), "{want}\n{r:?}");
    assert!(r.stderr.contains("nothing written"), "{r:?}");
    assert_eq!(
        etcd.get(KEY).await.unwrap(),
        None,
        "an invalid file was written"
    );

    let a = config(listen, &["127.0.0.2:7001".parse().unwrap()]);
    let base = apply(&xds, &url, &write(dir.path(), "a.yaml", &a.to_yaml())).await;

    // Two writers, both based on `base`, start together: one wins.
    let mut b = a.clone();
    b.cluster_mut("web").unwrap().endpoints = vec!["127.0.0.3:7001".parse().unwrap()];
    let mut c = a.clone();
    c.cluster_mut("web").unwrap().endpoints = vec!["127.0.0.4:7001".parse().unwrap()];
    let (b_file, c_file) = (
        write(dir.path(), "b.yaml", &b.to_yaml()),
        write(dir.path(), "c.yaml", &c.to_yaml()),
    );
    let base_arg = base.to_string();
    let run = |file: PathBuf| {
        let (xds, url, base) = (xds.clone(), url.clone(), base_arg.clone());
        async move {
            let args = [
                "apply",
                file.to_str().unwrap(),
                "--etcd",
                &url,
                "--expect-revision",
                &base,
            ];
            pylon_xds(&xds, &args).await
        }
    };
    let (rb, rc) = tokio::join!(run(b_file.clone()), run(c_file.clone()));
    let (winner, loser, winner_file) = match (rb.code, rc.code) {
        (0, 2) => (rb, rc, b_file.clone()),
        (2, 0) => (rc, rb, c_file),
        _ => panic!("not exactly one winner:\n{rb:?}\n{rc:?}"),
    };
    let won = written_revision(&winner.stdout).unwrap();
    assert!(
        loser.stderr.contains(&format!(
            "the etcd key is at revision {won}, not at revision {base}"
        )),
        "the loser must name both revisions: {loser:?}"
    );
    assert!(loser.stderr.contains("nothing written"), "{loser:?}");
    let (rev, bytes) = etcd.get(KEY).await.unwrap().unwrap();
    assert_eq!(rev, won);
    assert_eq!(
        bytes,
        std::fs::read(&winner_file).unwrap(),
        "etcd holds the winner's content"
    );

    // Without a pin, a write based on a revision someone else replaced
    // fails the same way: simulated by a write between read and swap is
    // not reachable from outside, so pin the stale base again.
    let r = pylon_xds(
        &xds,
        &[
            "apply",
            b_file.to_str().unwrap(),
            "--etcd",
            &url,
            "--expect-revision",
            &base_arg,
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("pylon-xds diff {base} {won}")),
        "{r:?}"
    );
    eprintln!("concurrent apply: winner {winner:?}\nloser {loser:?}");
}

// ---------------------------------------------------------------------------
// 2. rollback, history and diff across three replicas

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_bytes_on_every_replica() {
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(&etcd_bin, 3).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let a = config(listen, &["127.0.0.2:7001".parse().unwrap()]);
    // Comments are part of the bytes a rollback restores.
    let a_text = format!("# revision A, as written\n{}", a.to_yaml());
    let a_file = write(dir.path(), "a.yaml", &a_text);
    let rev_a = apply(&xds, &url, &a_file).await;

    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&xds, &format!("r{i}"), &url).await.unwrap());
    }
    let version_a = serving(&replicas, rev_a).await;

    let mut b = a.clone();
    b.cluster_mut("web")
        .unwrap()
        .endpoints
        .push("127.0.0.3:7001".parse().unwrap());
    let rev_b = apply(&xds, &url, &write(dir.path(), "b.yaml", &b.to_yaml())).await;
    let version_b = serving(&replicas, rev_b).await;
    assert_ne!(version_a, version_b);

    let h = pylon_xds(&xds, &["history", "--etcd", &url]).await;
    assert_eq!(h.code, 0, "{h:?}");
    let lines: Vec<&str> = h.stdout.lines().collect();
    let row_b = lines
        .iter()
        .find(|l| l.starts_with(&format!("{rev_b} *")))
        .unwrap();
    assert!(
        row_b.contains(&version_b) && row_b.contains("~1 load assignment"),
        "{}",
        h.stdout
    );
    assert!(row_b.contains("(apply "), "{}", h.stdout);
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&format!("{rev_a} ")))
        .unwrap();
    assert!(row_a.contains(&version_a), "{}", h.stdout);
    let d = pylon_xds(
        &xds,
        &[
            "diff",
            &rev_a.to_string(),
            &rev_b.to_string(),
            "--etcd",
            &url,
        ],
    )
    .await;
    assert_eq!(d.code, 0, "{d:?}");
    assert!(
        d.stdout.contains("  ~ load assignment web\n"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout
            .contains(&format!("version {version_a} -> {version_b}")),
        "{}",
        d.stdout
    );

    let r = pylon_xds(&xds, &["rollback", &rev_a.to_string(), "--etcd", &url]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let rev_c = written_revision(&r.stdout).unwrap();
    let (rev, bytes) = etcd.get(KEY).await.unwrap().unwrap();
    assert_eq!(rev, rev_c);
    assert_eq!(bytes, a_text.as_bytes(), "rollback must restore the bytes");
    let version_c = serving(&replicas, rev_c).await;
    assert_eq!(
        version_c, version_a,
        "the earlier content must serve the earlier versions"
    );
    let h = pylon_xds(&xds, &["history", "--etcd", &url]).await;
    assert!(
        h.stdout.contains(&format!("(rollback to {rev_a})")),
        "{}",
        h.stdout
    );
    eprintln!("{}", h.stdout);
}

// ---------------------------------------------------------------------------
// 3. An invalid revision written around the CLI

#[tokio::test(flavor = "multi_thread")]
async fn invalid_revision_keeps_the_last_good() {
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(&etcd_bin, 3).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let good = config(listen, &["127.0.0.2:7001".parse().unwrap()]);
    let rev = apply(&xds, &url, &write(dir.path(), "good.yaml", &good.to_yaml())).await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&xds, &format!("r{i}"), &url).await.unwrap());
    }
    let version = serving(&replicas, rev).await;

    // As `etcdctl put` would: a route to a cluster that does not exist.
    let mut bad = good.clone();
    bad.listener_mut("front").unwrap().kind = integration_tests::config::ListenerKind::Http {
        routes: vec![Route::prefix("/", "nowhere")],
    };
    let bad = bad.to_yaml();
    let bad_rev = etcd.put(KEY, bad.as_bytes()).await.unwrap();
    let needle = format!("etcd:{KEY}@{bad_rev}:");
    wait_replicas(
        &replicas,
        "every replica reports the invalid revision",
        |s| {
            let e = s["last_reload_error"].as_str().unwrap_or_default();
            ensure!(
                e.contains(&needle) && e.contains("nowhere"),
                "last_reload_error {e:?}"
            );
            ensure!(s["etcd"]["invalid_revision"] == bad_rev);
            ensure!(
                s["etcd"]["revision"] == rev,
                "the last good revision is served"
            );
            ensure!(s["version"] == version.as_str());
            Ok(())
        },
    )
    .await;
    // `pylon-xds status` says so and exits 1.
    let admin = replicas[0].admin_addr().to_string();
    let st = pylon_xds(&xds, &["status", "--admin", &admin]).await;
    assert_eq!(st.code, 1, "{st:?}");
    assert!(
        st.stdout
            .contains(&format!("revision {bad_rev} cannot be served")),
        "{}",
        st.stdout
    );
    // A fixed revision is served again.
    let mut fixed = good.clone();
    fixed
        .cluster_mut("web")
        .unwrap()
        .endpoints
        .push("127.0.0.3:7001".parse().unwrap());
    let rev2 = apply(
        &xds,
        &url,
        &write(dir.path(), "fixed.yaml", &fixed.to_yaml()),
    )
    .await;
    serving(&replicas, rev2).await;
}

// ---------------------------------------------------------------------------
// 4. Failover under traffic

/// The replica the proxy's ADS stream is on now, and its `/nodes` entry.
async fn connected_replica(replicas: &[Replica], node: &str) -> (usize, Value) {
    assert_eventually!(
        DEADLINE,
        format!("{node} connected to a replica"),
        async || {
            let mut found = Vec::new();
            for (i, r) in replicas.iter().enumerate().filter(|(_, r)| r.is_running()) {
                if let Some(n) = r.node(node).await? {
                    found.push((i, n));
                }
            }
            ensure!(found.len() == 1, "streams on {} replicas", found.len());
            Ok(found.remove(0))
        }
    )
}

/// Waits until the node's stream on `replica` has every type in sync.
async fn wait_synced(replica: &Replica, node: &str) -> Value {
    assert_eventually!(
        DEADLINE,
        format!("{node} SYNCED on {}", replica.name()),
        async || {
            let n = replica.node(node).await?.context("no stream")?;
            for ty in ["cds", "eds", "lds", "rds"] {
                ensure!(
                    n["types"][ty]["state"] == "SYNCED",
                    "{ty}: {}",
                    n["types"][ty]
                );
            }
            Ok(n)
        }
    )
}

/// Waits until the node's stream on `replica` has every type in sync, and
/// returns the stream: after a failover nothing new may have been sent.
async fn synced_without_new_versions(
    replica: &Replica,
    node: &str,
    before: &BTreeMap<String, String>,
) -> Value {
    assert_eventually!(
        DEADLINE,
        format!("{node} SYNCED on {}", replica.name()),
        async || {
            let n = replica.node(node).await?.context("no stream")?;
            for ty in ["cds", "eds", "lds", "rds"] {
                let t = &n["types"][ty];
                ensure!(t["state"] == "SYNCED", "{ty}: {t}");
                // Nothing sent, or only the version the proxy already held.
                if let Some(sent) = t["sent_version"].as_str() {
                    ensure!(
                        before.get(ty).map(String::as_str) == Some(sent),
                        "{ty}: new version {sent} sent (held {:?})",
                        before.get(ty)
                    );
                }
            }
            Ok(n)
        }
    )
}

/// The version of each type the proxy holds, as the replica records it.
fn acked_versions(node: &Value) -> BTreeMap<String, String> {
    ["cds", "eds", "lds", "rds"]
        .into_iter()
        .filter_map(|ty| {
            let t = &node["types"][ty];
            let v = t["acked_version"]
                .as_str()
                .or_else(|| t["sent_version"].as_str())?;
            Some((ty.to_string(), v.to_string()))
        })
        .collect()
}

/// Waits until the proxy's `web` cluster has exactly `want` as hosts.
async fn wait_hosts(dp: &DataPlane, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    let admin = dp.admin();
    assert_eventually!(DEADLINE, format!("web hosts = {want:?}"), async || {
        let hosts = admin.clusters().await?.hosts("web");
        ensure!(hosts == want, "hosts = {hosts:?}");
        Ok(())
    });
}

async fn replicas_fail_over(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut etcd = EtcdCluster::start(&etcd_bin, 3).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<HttpServer> = futures_join(2..6).await;
    let listen = free_addr(LOOPBACK).unwrap();
    let mut cfg = config(listen, &[w[0].addr()]);
    let rev = apply(&xds, &url, &write(dir.path(), "c0.yaml", &cfg.to_yaml())).await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&xds, &format!("r{i}"), &url).await.unwrap());
    }
    serving(&replicas, rev).await;

    let node = format!("replicas-{flavour}");
    let addrs: Vec<SocketAddr> = replicas.iter().map(Replica::xds_addr).collect();
    let dp = DataPlane::start_replicas(&bin, flavour, &addrs, &node)
        .await
        .unwrap();
    dp.admin().wait_ready(DEADLINE).await.unwrap();
    wait_hosts(&dp, &[w[0].addr()]).await;
    let traffic = TrafficLoop::start_bounded(listen, "/", MAX_REQUESTS);
    let more = async |n: u64| {
        let from = traffic.tally().ok_total();
        assert_eventually!(DEADLINE, format!("{n} more answers"), async || {
            let t = traffic.tally();
            ensure!(t.ok_total() >= from + n, "{t:?}");
            Ok(())
        });
    };
    more(5).await;
    let mut figures = Vec::new();

    // (a) The replica the proxy is connected to dies; an edit is made while
    // it is down; it comes back.
    let (victim, _) = connected_replica(&replicas, &node).await;
    let n = wait_synced(&replicas[victim], &node).await;
    let held = acked_versions(&n);
    let dump = dp.admin().config_dump().await.unwrap().versions();
    let t0 = Instant::now();
    replicas[victim].kill().await.unwrap();
    let (landed, _) = connected_replica(&replicas, &node).await;
    assert_ne!(landed, victim);
    let stream = synced_without_new_versions(&replicas[landed], &node, &held).await;
    figures.push(format!(
        "replica {} killed: the proxy resumed on {} after {:?}",
        replicas[victim].name(),
        replicas[landed].name(),
        t0.elapsed()
    ));
    assert_eq!(
        dp.admin().config_dump().await.unwrap().versions(),
        dump,
        "the proxy's versions changed across the failover"
    );
    // The delta stream's CDS and LDS answered the resumed wildcard with no
    // resource; EDS and RDS sent nothing at all.
    if flavour.ads.is_delta() {
        for ty in ["eds", "rds"] {
            assert!(
                stream["types"][ty]["sent_version"].is_null(),
                "{ty}: {stream}\nbefore: {n}"
            );
        }
    }
    more(5).await;
    cfg.cluster_mut("web").unwrap().endpoints.push(w[1].addr());
    let rev = apply(&xds, &url, &write(dir.path(), "c1.yaml", &cfg.to_yaml())).await;
    serving(&replicas, rev).await;
    wait_hosts(&dp, &[w[0].addr(), w[1].addr()]).await;
    replicas[victim].restart().await.unwrap();
    serving(&replicas, rev).await;
    more(5).await;

    // (b) The etcd leader dies; an edit still lands on every replica and
    // reaches the proxy.
    let leader = etcd.leader().await.unwrap();
    let t0 = Instant::now();
    etcd.kill(leader).await.unwrap();
    cfg.cluster_mut("web").unwrap().endpoints.push(w[2].addr());
    let rev = apply(&xds, &url, &write(dir.path(), "c2.yaml", &cfg.to_yaml())).await;
    figures.push(format!(
        "etcd leader m{leader} killed: the next apply wrote after {:?}",
        t0.elapsed()
    ));
    serving(&replicas, rev).await;
    wait_hosts(&dp, &[w[0].addr(), w[1].addr(), w[2].addr()]).await;
    figures.push(format!(
        "  and every replica and the proxy had it {:?} after the kill",
        t0.elapsed()
    ));
    etcd.restart(leader).await.unwrap();
    etcd.wait_writable(DEADLINE).await.unwrap();
    more(5).await;

    // (c) etcd entirely down: replicas keep serving, and one restarted now
    // serves its cached revision. The proxy is moved onto it by killing
    // the replica it is on.
    let (on, _) = connected_replica(&replicas, &node).await;
    let before = acked_versions(&wait_synced(&replicas[on], &node).await);
    let dump = dp.admin().config_dump().await.unwrap().versions();
    for i in 0..3 {
        etcd.kill(i).await.unwrap();
    }
    wait_replicas(&replicas, "every replica shows the etcd outage", |s| {
        ensure!(s["etcd"]["connected"] == false);
        ensure!(s["etcd"]["outage_since_unix_ms"].is_u64());
        Ok(())
    })
    .await;
    for r in &replicas {
        let ready = integration_tests::http::get(r.admin_addr(), "/readyz")
            .await
            .unwrap();
        assert_eq!(
            ready.status,
            200,
            "{} not ready during the outage",
            r.name()
        );
    }
    let restarted = (on + 1) % 3;
    replicas[restarted].kill().await.unwrap();
    let t0 = Instant::now();
    replicas[restarted].restart().await.unwrap();
    figures.push(format!(
        "replica {} restarted with etcd down: ready from its cache after {:?}",
        replicas[restarted].name(),
        t0.elapsed()
    ));
    let s = replicas[restarted].status().await.unwrap();
    assert_eq!(s["etcd"]["served_from_cache"], true, "{s}");
    assert_eq!(s["etcd"]["revision"], rev, "{s}");
    assert_eq!(s["etcd"]["connected"], false, "{s}");
    // Everyone serves the same version of the same revision.
    wait_replicas(
        &replicas,
        "the cached revision's version everywhere",
        |st| {
            ensure!(st["version"] == s["version"]);
            Ok(())
        },
    )
    .await;
    // Send the proxy to the restarted replica: kill the other two.
    for i in (0..3).filter(|i| *i != restarted) {
        replicas[i].kill().await.unwrap();
    }
    let (landed, _) = connected_replica(&replicas, &node).await;
    assert_eq!(landed, restarted);
    synced_without_new_versions(&replicas[restarted], &node, &before).await;
    assert_eq!(dp.admin().config_dump().await.unwrap().versions(), dump);
    more(5).await;

    // etcd and the replicas come back; an edit reaches everyone.
    for i in 0..3 {
        etcd.restart(i).await.unwrap();
    }
    etcd.wait_writable(DEADLINE).await.unwrap();
    for i in (0..3).filter(|i| *i != restarted) {
        replicas[i].restart().await.unwrap();
    }
    cfg.cluster_mut("web").unwrap().endpoints.push(w[3].addr());
    let rev = apply(&xds, &url, &write(dir.path(), "c3.yaml", &cfg.to_yaml())).await;
    serving(&replicas, rev).await;
    wait_replicas(&replicas, "connected to etcd again", |s| {
        ensure!(s["etcd"]["connected"] == true);
        ensure!(s["etcd"]["served_from_cache"] == false);
        Ok(())
    })
    .await;
    let all: Vec<SocketAddr> = w.iter().map(HttpServer::addr).collect();
    wait_hosts(&dp, &all).await;
    more(5).await;

    let tally = traffic.stop().await;
    let total = tally.failures.len() as u64 + tally.ok_total();
    assert!(
        tally.failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        tally.failures.len(),
        tally.failures
    );
    eprintln!(
        "{flavour}: {total} requests, 0 failed\n  {}",
        figures.join("\n  ")
    );
}

/// HTTP backends `web-N` on `127.0.0.N`, for N in `ids`.
async fn futures_join(ids: std::ops::Range<u8>) -> Vec<HttpServer> {
    let mut out = Vec::new();
    for n in ids {
        out.push(
            HttpServer::start(loopback(n), &format!("web-{n}"))
                .await
                .unwrap(),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// 5. Proxyless gRPC clients and several replicas

/// `pylon-xds bootstrap --grpc --xds A,B` for node `node`.
async fn grpc_bootstrap(bin: &Path, node: &str, xds: &[SocketAddr]) -> String {
    let list: Vec<String> = xds.iter().map(ToString::to_string).collect();
    let r = pylon_xds(
        bin,
        &[
            "bootstrap",
            "--grpc",
            "--node-id",
            node,
            "--xds",
            &list.join(","),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_bootstrap_lists_every_replica() {
    use integration_tests::grpc_clients::{ClientKind, GrpcBackends, GrpcClient};
    if !ClientKind::Node.tools_or_skip() {
        return;
    }
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(&etcd_bin, 3).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let backends = GrpcBackends::start(&["g1"]).await.unwrap();
    let yaml = format!(
        "grpc_services:\n  - {{name: greeter.example, port: 50051, endpoints: [{}]}}\n",
        backends.addr("g1").unwrap()
    );
    let rev = apply(&xds, &url, &write(dir.path(), "g.yaml", &yaml)).await;
    let mut replicas = Vec::new();
    for i in 0..2 {
        replicas.push(Replica::start(&xds, &format!("r{i}"), &url).await.unwrap());
    }
    serving(&replicas, rev).await;
    let target = "xds:///greeter.example:50051";
    let call = Duration::from_secs(5);
    let dead = free_addr(LOOPBACK).unwrap();

    // grpcio: the first server is down, the second serves.
    let boot = grpc_bootstrap(&xds, "py-1", &[dead, replicas[0].xds_addr()]).await;
    let mut py = GrpcClient::start_with_bootstrap(ClientKind::Python, &boot, "py-1")
        .await
        .unwrap()
        .unwrap();
    let c = py.call(target, 3, call).await.unwrap();
    assert_eq!(c.ok_from("g1"), 3, "grpcio did not fall back: {c:?}");
    assert!(replicas[0].node("py-1").await.unwrap().is_some());

    // grpcio on replica 0 with replica 1 listed second: r0 dies, calls go on.
    let boot = grpc_bootstrap(
        &xds,
        "py-2",
        &[replicas[0].xds_addr(), replicas[1].xds_addr()],
    )
    .await;
    let mut py2 = GrpcClient::start_with_bootstrap(ClientKind::Python, &boot, "py-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(py2.call(target, 2, call).await.unwrap().ok_from("g1"), 2);
    replicas[0].kill().await.unwrap();
    let c = py2.call(target, 5, call).await.unwrap();
    assert_eq!(c.ok_from("g1"), 5, "calls after the replica died: {c:?}");

    // grpc-js-xds 1.14: only the first server is used (no gRFC A71).
    let boot = grpc_bootstrap(&xds, "js-1", &[dead, replicas[1].xds_addr()]).await;
    let mut js = GrpcClient::start_with_bootstrap(ClientKind::Node, &boot, "js-1")
        .await
        .unwrap()
        .unwrap();
    let c = js.call(target, 1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        c.total_ok(),
        0,
        "grpc-js-xds fell back to the second xDS server: the README is out of date ({c:?})"
    );
    assert!(replicas[1].node("js-1").await.unwrap().is_none());
    py.stop().await.unwrap();
    py2.stop().await.unwrap();
    js.stop().await.unwrap();
    backends.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// 6. TLS to etcd

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_mutual_tls() {
    use integration_tests::etcd::ClientTls;
    use integration_tests::tls::Pki;
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let pki = Pki::new("etcd test CA").unwrap();
    let tls = ClientTls {
        ca: pki.ca().to_path_buf(),
        server: pki.server("etcd").unwrap(),
        client: pki.client("pylon-xds", "spiffe://pylon.test/xds").unwrap(),
    };
    let etcd = EtcdCluster::start_with(&etcd_bin, 1, Some(tls.clone()))
        .await
        .unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "t.yaml",
        &config(
            free_addr(LOOPBACK).unwrap(),
            &["127.0.0.2:7001".parse().unwrap()],
        )
        .to_yaml(),
    );
    let flags: Vec<String> = [
        "--etcd-ca",
        tls.ca.to_str().unwrap(),
        "--etcd-cert",
        tls.client.cert.to_str().unwrap(),
        "--etcd-key",
        tls.client.key.to_str().unwrap(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // Without a client certificate the member refuses: a clear error.
    let r = pylon_xds(
        &xds,
        &[
            "apply",
            file.to_str().unwrap(),
            "--etcd",
            &url,
            "--etcd-ca",
            tls.ca.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("etcd is unreachable"), "{r:?}");
    assert_eq!(etcd.get(KEY).await.unwrap(), None);
    eprintln!("apply without a client certificate: {}", r.stderr.trim());
    // With it, apply writes and a replica serves.
    let mut args = vec!["apply", file.to_str().unwrap(), "--etcd", &url];
    args.extend(flags.iter().map(String::as_str));
    let r = pylon_xds(&xds, &args).await;
    assert_eq!(r.code, 0, "{r:?}");
    let rev = written_revision(&r.stdout).unwrap();
    let replica = Replica::start_with(&xds, "tls", &url, &flags)
        .await
        .unwrap();
    serving(std::slice::from_ref(&replica), rev).await;
}

// ---------------------------------------------------------------------------
// 7. apply --watch-file

#[tokio::test(flavor = "multi_thread")]
async fn watch_file_syncs_and_stops_at_a_conflict() {
    let Some((etcd_bin, xds)) = tools() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(&etcd_bin, 1).await.unwrap();
    let url = etcd.url(KEY);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let mut cfg = config(listen, &["127.0.0.2:7001".parse().unwrap()]);
    let file = write(dir.path(), "pylon.yaml", &cfg.to_yaml());
    let log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
    let mut child = tokio::process::Command::new(&xds)
        .args([
            "apply",
            "--watch-file",
            file.to_str().unwrap(),
            "--etcd",
            &url,
        ])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let holds = async |bytes: Vec<u8>| {
        assert_eventually!(DEADLINE, "etcd holds the file", async || {
            let now = etcd.get(KEY).await?.map(|(_, b)| b);
            ensure!(
                now.as_deref() == Some(bytes.as_slice()),
                "etcd holds {now:?}"
            );
            Ok(())
        });
    };
    holds(cfg.to_yaml().into_bytes()).await;
    // A save (by rename, as editors do) is written.
    cfg.cluster_mut("web")
        .unwrap()
        .endpoints
        .push("127.0.0.3:7001".parse().unwrap());
    let tmp = write(dir.path(), "pylon.yaml.tmp", &cfg.to_yaml());
    std::fs::rename(&tmp, &file).unwrap();
    holds(cfg.to_yaml().into_bytes()).await;
    // Someone edits etcd directly; the next save must not overwrite it.
    let theirs = format!("# theirs\n{}", cfg.to_yaml());
    etcd.put(KEY, theirs.as_bytes()).await.unwrap();
    cfg.cluster_mut("web")
        .unwrap()
        .endpoints
        .push("127.0.0.4:7001".parse().unwrap());
    std::fs::write(&file, cfg.to_yaml()).unwrap();
    let log_path = dir.path().join("watch.log");
    assert_eventually!(DEADLINE, "the conflict is logged", async || {
        let log = std::fs::read_to_string(&log_path)?;
        ensure!(log.contains("written by someone else"), "{log}");
        Ok(())
    });
    assert_eq!(etcd.get(KEY).await.unwrap().unwrap().1, theirs.as_bytes());
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
