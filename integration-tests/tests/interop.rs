//! The interop matrix: every xDS client against the same protocol checks.
//!
//! Clients (rows): Envoy over SotW and delta ADS, pylon-proxy over SotW and
//! delta ADS, Python grpcio, Node @grpc/grpc-js-xds, grpc-go and grpc-java
//! (proxyless, SotW; grpc-go and grpc-java call backends of their own
//! implementation, the others grpcio's).
//! Each runs against one pylon-xds whose `nodes:` section gives proxies the
//! HTTP listener `front` and gRPC clients the service `greeter.example:50051`;
//! other resources exist that no selection names. Checks (columns), each a
//! test `<check>::<client>`:
//!
//! 1. `first_sync`: the client holds exactly its selection (pylon-xds's view
//!    and, for proxies, the proxy's config dump) and traffic flows.
//! 2. `add_change_remove`: a listener (proxies) or service (gRPC) is added, an
//!    endpoint set changed, the addition removed; each is observed at the
//!    client (traffic, config dump) within a deadline.
//! 3. `nack`: a resource the client rejects (proxies: a listener on an address
//!    already taken; gRPC: a Listener without `api_listener`) is NACKed, shown
//!    as ERROR with the client's message, and not sent again (no response of
//!    that type for a while after the NACK); the fix is then applied.
//! 4. `restart`: pylon-xds restarts on the same YAML; the client keeps serving
//!    (no failed request or call), reconnects, and holds the same versions.
//! 5. `stale_nonce`: a scripted raw client with the client's node selection,
//!    protocol and subscription pattern sends a stale nonce; it is counted and
//!    ignored: the next response it gets is the one an edit causes.
//! 6. `requested_before_it_exists`: gRPC clients dial a service before it is
//!    in the YAML; proxies start before their listener exists (their wildcard
//!    subscription asks for it); it arrives when it is added.
//! 7. `mutual_tls`: pylon-xds serves over mutual TLS with a `clients:` rule
//!    for the client's certificate; the client, bootstrapped as `pylon-xds
//!    bootstrap --tls-*` (`--grpc` for gRPC) prints, syncs and serves, takes
//!    an edit, and keeps its stream across a renewal of the server's
//!    certificate. A client that cannot use the bootstrap's TLS channel
//!    credentials (grpc-js-xds 1.14: no `tls` type; grpc-java 1.85: `tls`
//!    ignores the files and trusts the JVM's default roots only) is recorded
//!    as such after checking that it indeed never connects, and why.
//!
//! Each cell's result is recorded (`integration_tests::interop`) and
//! `scripts/test.sh` writes the table into README.md.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use control_plane::bootstrap::{grpc_bootstrap, BootstrapOptions};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use integration_tests::assert_eventually;
use integration_tests::backends::HttpServer;
use integration_tests::dataplane::{DataPlane, Flavour, Kind};
use integration_tests::grpc_clients::{ClientKind, GrpcBackends, GrpcClient};
use integration_tests::http;
use integration_tests::interop::{CheckId, ClientId, Recorder};
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::pylon::{Ads, MutualTls, Pylon};
use integration_tests::tls::Pki;
use integration_tests::traffic::TrafficLoop;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

/// Deadline for anything pushed to a client.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long "not sent again" is watched after a NACK.
const QUIET: Duration = Duration::from_secs(2);
/// Deadline of one gRPC call.
const CALL: Duration = Duration::from_secs(2);

const GREETER: &str = "greeter.example:50051";

macro_rules! matrix {
    ($($check:ident => $id:ident),* $(,)?) => {$(
        mod $check {
            use integration_tests::interop::{CheckId, ClientId};

            #[tokio::test(flavor = "multi_thread")]
            async fn envoy_sotw() { super::run(ClientId::EnvoySotw, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn envoy_delta() { super::run(ClientId::EnvoyDelta, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn pylon_sotw() { super::run(ClientId::PylonSotw, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn pylon_delta() { super::run(ClientId::PylonDelta, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn grpcio() { super::run(ClientId::Grpcio, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn grpc_js() { super::run(ClientId::GrpcJs, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn grpc_go() { super::run(ClientId::GrpcGo, CheckId::$id).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn grpc_java() { super::run(ClientId::GrpcJava, CheckId::$id).await }
        }
    )*};
}

matrix!(
    first_sync => FirstSync,
    add_change_remove => Edits,
    nack => Nack,
    restart => Restart,
    stale_nonce => StaleNonce,
    requested_before_it_exists => RequestedBeforeItExists,
    mutual_tls => MutualTls,
);

async fn run(client: ClientId, check: CheckId) {
    let recorder = Recorder::start(client, check);
    if check == CheckId::MutualTls {
        if let Some(limit) = tls_limit(client) {
            if cannot_use_tls(client, limit).await {
                recorder.unsupported();
            } else {
                recorder.skip();
            }
            return;
        }
    }
    let Some(world) = World::start(client, check).await else {
        recorder.skip();
        return;
    };
    match check {
        CheckId::FirstSync => first_sync(world).await,
        CheckId::Edits => add_change_remove(world).await,
        CheckId::Nack => nack(world).await,
        CheckId::Restart => restart(world).await,
        CheckId::StaleNonce => stale_nonce(world).await,
        CheckId::RequestedBeforeItExists => requested_before_it_exists(world).await,
        CheckId::MutualTls => mutual_tls(world).await,
    }
    recorder.pass();
}

// ---------------------------------------------------------------------------
// The config

/// What the YAML holds; every check edits one of these and writes it.
#[derive(Debug, Clone)]
struct Spec {
    web: Vec<SocketAddr>,
    web_timeout_s: u32,
    /// Proxies' HTTP listener (`front`), when present.
    front: Option<SocketAddr>,
    /// Extra proxy listeners (name, address), HTTP to `web`, in the proxies'
    /// selection.
    extra_listeners: Vec<(String, SocketAddr)>,
    /// A second HTTP listener `side` on this address, in the proxies'
    /// selection, routing to its own cluster `side` (these endpoints), with
    /// this route timeout in seconds when set.
    side: Option<(SocketAddr, Vec<SocketAddr>, Option<u32>)>,
    /// A listener nobody selects.
    unused: SocketAddr,
    greeter: Vec<SocketAddr>,
    /// Extra gRPC services (host, port, endpoints), in the gRPC selection.
    extra_services: Vec<(String, u16, Vec<SocketAddr>)>,
    /// A plain (non-API) listener named as a gRPC target, in the gRPC
    /// selection: gRPC clients reject it.
    plain_grpc_listener: Option<(String, SocketAddr)>,
    /// A `clients:` section (check 7).
    clients: Option<String>,
}

impl Spec {
    fn yaml(&self) -> String {
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // `web` is health-checked: an endpoint removed from it while healthy
        // must still leave rotation at once (check 2).
        let mut y = format!(
            "clusters:\n  - name: web\n    connect_timeout: {}s\n    endpoints: [{}]\n    \
             health_check: {{tcp: {{}}, interval: 200ms, timeout: 200ms}}\n  \
             - name: unused\n    endpoints: [127.0.0.1:9]\n",
            self.web_timeout_s,
            list(&self.web)
        );
        if let Some((_, eps, _)) = &self.side {
            y += &format!("  - name: side\n    endpoints: [{}]\n", list(eps));
        }
        y += "listeners:\n";
        let http = |name: &str, addr: SocketAddr| {
            format!(
                "  - name: \"{name}\"\n    address: {addr}\n    http:\n      routes: [{{prefix: /, cluster: web}}]\n"
            )
        };
        let mut proxy_listeners = Vec::new();
        if let Some(front) = self.front {
            y += &http("front", front);
            proxy_listeners.push("front".to_string());
        }
        for (name, addr) in &self.extra_listeners {
            y += &http(name, *addr);
            proxy_listeners.push(name.clone());
        }
        if let Some((addr, _, timeout)) = &self.side {
            let timeout = timeout
                .map(|t| format!(", timeout: {t}s"))
                .unwrap_or_default();
            y += &format!(
                "  - name: side\n    address: {addr}\n    http:\n      routes: [{{prefix: /, cluster: side{timeout}}}]\n"
            );
            proxy_listeners.push("side".to_string());
        }
        y += &format!(
            "  - name: unused-l\n    address: {}\n    tcp_proxy: {{cluster: unused}}\n",
            self.unused
        );
        let mut grpc_listeners = vec![GREETER.to_string()];
        if let Some((name, addr)) = &self.plain_grpc_listener {
            y += &format!(
                "  - name: \"{name}\"\n    address: {addr}\n    tcp_proxy: {{cluster: web}}\n"
            );
            grpc_listeners.push(name.clone());
        }
        y += &format!(
            "grpc_services:\n  - name: greeter.example\n    port: 50051\n    endpoints: [{}]\n",
            list(&self.greeter)
        );
        for (host, port, eps) in &self.extra_services {
            y += &format!(
                "  - name: {host}\n    port: {port}\n    endpoints: [{}]\n",
                list(eps)
            );
            grpc_listeners.push(format!("{host}:{port}"));
        }
        let quoted = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        y += &format!(
            "nodes:\n  - name: proxies\n    match: {{id: \"proxy-*\"}}\n    listeners: [{}]\n  \
             - name: grpc\n    match: {{id: \"grpc-*\"}}\n    listeners: [{}]\n",
            quoted(&proxy_listeners),
            quoted(&grpc_listeners)
        );
        if let Some(c) = &self.clients {
            y += c;
        }
        y
    }
}

// ---------------------------------------------------------------------------
// The client under test

enum Under {
    Proxy(DataPlane),
    Grpc(GrpcClient),
}

/// One check's world: backends, pylon-xds, and the client under test.
struct World {
    id: ClientId,
    node: String,
    spec: Spec,
    /// The PKI of check 7 (pylon-xds over mutual TLS).
    pki: Option<(Pki, MutualTls)>,
    pylon: Pylon,
    under: Under,
    web: Vec<HttpServer>,
    grpc: Option<GrpcBackends>,
}

fn flavour(id: ClientId) -> Flavour {
    let kind = match id {
        ClientId::EnvoySotw | ClientId::EnvoyDelta => Kind::Envoy,
        _ => Kind::Pylon,
    };
    Flavour::new(kind, if id.is_delta() { Ads::Delta } else { Ads::Sotw })
}

fn grpc_kind(id: ClientId) -> ClientKind {
    match id {
        ClientId::GrpcJs => ClientKind::Node,
        ClientId::GrpcGo => ClientKind::Go,
        ClientId::GrpcJava => ClientKind::Java,
        _ => ClientKind::Python,
    }
}

impl World {
    /// Backends, pylon-xds on the initial spec and, except for check 6 with a
    /// proxy, the client, ready. `None` when a tool is missing (outside CI).
    async fn start(id: ClientId, check: CheckId) -> Option<World> {
        let node = format!(
            "{}-{}-{}",
            if id.is_proxy() { "proxy" } else { "grpc" },
            id.key(),
            check.key()
        );
        let mut web = Vec::new();
        let mut grpc = None;
        let proxy_bin;
        if id.is_proxy() {
            proxy_bin = Some(flavour(id).binary_or_skip()?);
            for i in 0..2u8 {
                web.push(
                    HttpServer::start(loopback(2 + i), &format!("web-{i}"))
                        .await
                        .unwrap(),
                );
            }
        } else {
            proxy_bin = None;
            if !grpc_kind(id).tools_or_skip() {
                return None;
            }
            let backends = grpc_kind(id).backends();
            grpc = Some(
                GrpcBackends::start_kind(backends, &["g0", "g1", "g2"])
                    .await
                    .unwrap(),
            );
        }
        let greeter = grpc
            .as_ref()
            .map(|g| g.addrs().values().copied().collect())
            .unwrap_or_default();
        let late_proxy = id.is_proxy() && check == CheckId::RequestedBeforeItExists;
        let spec = Spec {
            web: web.iter().map(HttpServer::addr).collect(),
            web_timeout_s: 5,
            front: (!late_proxy).then(|| free_addr(LOOPBACK).unwrap()),
            extra_listeners: Vec::new(),
            side: None,
            unused: free_addr(LOOPBACK).unwrap(),
            greeter,
            extra_services: Vec::new(),
            plain_grpc_listener: None,
            clients: None,
        };
        let pki = (check == CheckId::MutualTls).then(|| {
            let pki = Pki::new("pylon interop CA").unwrap();
            let server = pki.server("pylon-xds").unwrap();
            let client = pki
                .client(
                    "client",
                    &format!("spiffe://pylon.test/interop/{}", id.key()),
                )
                .unwrap();
            let tls = MutualTls {
                server,
                ca: pki.ca().to_path_buf(),
                client,
            };
            (pki, tls)
        });
        let mut spec = spec;
        if pki.is_some() {
            spec.clients = Some(format!(
                "clients:\n  - identity: \"spiffe://pylon.test/interop/{}\"\n    nodes: {{id: \"{node}\"}}\n",
                id.key()
            ));
        }
        let pylon = Pylon::start_with(&spec.yaml(), pki.as_ref().map(|(_, t)| t.clone()))
            .await
            .unwrap();
        let under = if id.is_proxy() {
            let bin = proxy_bin.as_ref()?;
            Under::Proxy(start_proxy(bin, id, &pylon, &node).await)
        } else {
            let bootstrap = grpc_bootstrap(&BootstrapOptions {
                node_id: node.clone(),
                node_cluster: "grpc".into(),
                xds: vec![pylon.xds_addr().unwrap().to_string().parse().unwrap()],
                delta: false,
                admin: "127.0.0.1:0".parse().unwrap(),
                tls: pylon.client_tls(),
            });
            let c = GrpcClient::start_with_bootstrap(grpc_kind(id), &bootstrap, &node)
                .await
                .unwrap()?;
            Under::Grpc(c)
        };
        let mut w = World {
            id,
            node,
            spec,
            pki,
            pylon,
            under,
            web,
            grpc,
        };
        if !id.is_proxy() {
            // A gRPC channel connects (and subscribes) on its first call.
            assert_eventually!(DEADLINE, "the greeter answers", async || {
                let c = w.calls(GREETER, 3).await?;
                ensure!(c.total_ok() == 3, "{c:?}");
                Ok(())
            });
        }
        Some(w)
    }

    fn write(&self) {
        self.pylon.write_config_atomic(&self.spec.yaml()).unwrap();
    }

    fn proxy(&self) -> &DataPlane {
        match &self.under {
            Under::Proxy(dp) => dp,
            Under::Grpc(_) => panic!("not a proxy"),
        }
    }

    fn grpc(&mut self) -> &mut GrpcClient {
        match &mut self.under {
            Under::Grpc(c) => c,
            Under::Proxy(_) => panic!("not a gRPC client"),
        }
    }

    fn backend(&self, name: &str) -> SocketAddr {
        self.grpc.as_ref().unwrap().addr(name).unwrap()
    }

    fn front(&self) -> SocketAddr {
        self.spec.front.unwrap()
    }

    /// The client's log, for failure messages.
    fn log_tail(&self) -> String {
        match &self.under {
            Under::Proxy(dp) => dp.log_tail(30),
            Under::Grpc(c) => c.log_tail(30),
        }
    }

    /// What pylon-xds records for the client's node, per type: `held`
    /// (name -> version) and `subscribed` over all its streams (grpcio opens
    /// one per channel target), and the state, nonces and NACK of the stream
    /// in the worst state (ERROR, then STALE, SYNCED, NOT_SENT).
    async fn node_types(&self) -> anyhow::Result<serde_json::Value> {
        let status = self.pylon.status().await?;
        let streams: Vec<&serde_json::Value> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["node"] == self.node.as_str())
            .collect();
        ensure!(!streams.is_empty(), "{} not connected", self.node);
        let rank = |s: &serde_json::Value| match s["state"].as_str() {
            Some("ERROR") => 3,
            Some("STALE") => 2,
            Some("SYNCED") => 1,
            _ => 0,
        };
        let mut out = serde_json::Map::new();
        for ty in ["cds", "eds", "lds", "rds"] {
            let mut worst = streams[0]["types"][ty].clone();
            let mut held = serde_json::Map::new();
            let mut subscribed = std::collections::BTreeSet::new();
            for s in &streams {
                let t = &s["types"][ty];
                if rank(t) > rank(&worst) {
                    worst = t.clone();
                }
                if let Some(h) = t["held"].as_object() {
                    held.extend(h.clone());
                }
                for n in t["subscribed"].as_array().into_iter().flatten() {
                    subscribed.insert(n.as_str().unwrap_or("").to_string());
                }
            }
            worst["held"] = serde_json::Value::Object(held);
            worst["subscribed"] = serde_json::json!(subscribed);
            out.insert(ty.to_string(), worst);
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Calls `target` `n` times through the gRPC client.
    async fn calls(
        &mut self,
        target: &str,
        n: usize,
    ) -> anyhow::Result<integration_tests::grpc_clients::CallCounts> {
        self.grpc().call(&format!("xds:///{target}"), n, CALL).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

async fn start_proxy(bin: &std::path::Path, id: ClientId, pylon: &Pylon, node: &str) -> DataPlane {
    let dp = DataPlane::start(bin, flavour(id), pylon, node)
        .await
        .unwrap();
    if let Err(e) = dp.admin().wait_ready(DEADLINE).await {
        panic!("{e:#}\n{}", dp.log_tail(40));
    }
    dp
}

fn held(types: &serde_json::Value, ty: &str) -> Vec<String> {
    types[ty]["held"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn state(types: &serde_json::Value, ty: &str) -> String {
    types[ty]["state"].as_str().unwrap_or("").to_string()
}

/// Per type, `held` as name -> version.
fn versions(types: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, String>> {
    ["cds", "eds", "lds", "rds"]
        .iter()
        .map(|ty| {
            let m = types[*ty]["held"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (ty.to_string(), m)
        })
        .collect()
}

/// GETs `/` through `addr` `n` times; answers by backend id.
async fn gets(addr: SocketAddr, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = http::get(addr, "/").await?;
        ensure!(r.status == 200, "GET {addr}/: {} {}", r.status, r.body);
        *out.entry(r.body).or_insert(0) += 1;
    }
    Ok(out)
}

/// Waits until every type pylon-xds serves the node is SYNCED and it holds
/// exactly `want` (per type: cds, eds, lds, rds).
async fn wait_synced(w: &World, want: [&[&str]; 4]) -> serde_json::Value {
    assert_eventually!(
        DEADLINE,
        format!("{} SYNCED with {want:?}", w.node),
        async || {
            let t = w.node_types().await?;
            for (ty, names) in ["cds", "eds", "lds", "rds"].iter().zip(want) {
                let got = held(&t, ty);
                ensure!(got == names, "{ty} held {got:?}; {t}");
                // A type with nothing to hold may never have been asked for
                // (a proxy requests EDS and RDS only for clusters and
                // listeners it has).
                let st = state(&t, ty);
                ensure!(
                    st == "SYNCED" || (names.is_empty() && st == "NOT_SENT"),
                    "{ty} {st}; {t}"
                );
            }
            Ok(t)
        }
    )
}

/// Waits until the node is SYNCED and the last `ty` response of each of its
/// streams carried one resource, while it holds what `held` says of `ty`
/// (over all its streams; the other types are not checked). With SotW, a
/// push of load assignments or route configurations leaves out those that
/// did not change; this checks that a client keeps them (the caller then
/// uses them).
async fn only_the_change_was_sent(w: &World, ty: &str, held_all: [&[&str]; 4]) {
    let index = ["cds", "eds", "lds", "rds"]
        .iter()
        .position(|t| *t == ty)
        .unwrap();
    let want = held_all[index];
    assert_eventually!(
        DEADLINE,
        format!("{ty}: the last push carried one resource; {want:?} held"),
        async || {
            let t = w.node_types().await?;
            ensure!(held(&t, ty) == want, "{ty} held {:?}; {t}", held(&t, ty));
            ensure!(state(&t, ty) == "SYNCED", "{t}");
            let status = w.pylon.status().await?;
            for s in status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["node"] == w.node.as_str())
            {
                let sent = &s["types"][ty]["sent_resources"];
                ensure!(sent == 1, "{ty} sent_resources {sent}: {s}");
            }
            Ok(())
        }
    );
}

/// The proxies' resources: `front` (and its route configuration) and `web`.
const PROXY_VIEW: [&[&str]; 4] = [&["web"], &["web"], &["front"], &["front"]];
const GRPC_VIEW: [&[&str]; 4] = [&[GREETER], &[GREETER], &[GREETER], &[GREETER]];

// ---------------------------------------------------------------------------
// 1. First sync

async fn first_sync(mut w: World) {
    if w.id.is_proxy() {
        let admin = w.proxy().admin();
        assert_eventually!(DEADLINE, "proxy config = selection", async || {
            let dump = admin.config_dump().await?;
            ensure!(
                dump.dynamic_clusters() == ["web"],
                "{:?}",
                dump.dynamic_clusters()
            );
            ensure!(
                dump.active_listeners() == ["front"],
                "{:?}",
                dump.active_listeners()
            );
            Ok(())
        });
        wait_synced(&w, PROXY_VIEW).await;
        let got = assert_eventually!(DEADLINE, "traffic through front", async || gets(
            w.front(),
            4
        )
        .await);
        assert_eq!(got.values().sum::<usize>(), 4, "{got:?}");
    } else {
        let got = assert_eventually!(DEADLINE, "round robin over g0..g2", async || {
            let c = w.calls(GREETER, 6).await?;
            ensure!(
                c.total_errors() == 0 && ["g0", "g1", "g2"].iter().all(|b| c.ok_from(b) == 2),
                "{c:?}"
            );
            Ok(c)
        });
        assert_eq!(got.total_ok(), 6);
        wait_synced(&w, GRPC_VIEW).await;
    }
    w.pylon.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Add, change, remove

async fn add_change_remove(mut w: World) {
    if w.id.is_proxy() {
        // Add two listeners: `extra` (to `web`) and `side`, with its own
        // cluster (web-1), so that the client holds two load assignments
        // and three route configurations.
        let extra = free_addr(LOOPBACK).unwrap();
        let side = free_addr(LOOPBACK).unwrap();
        w.spec.extra_listeners.push(("extra".into(), extra));
        w.spec.side = Some((side, vec![w.web[1].addr()], None));
        w.write();
        assert_eventually!(DEADLINE, "the added listener serves", async || gets(
            extra, 2
        )
        .await);
        assert_eventually!(DEADLINE, "side serves", async || gets(side, 2).await);
        let both = [
            &["side", "web"][..],
            &["side", "web"],
            &["extra", "front", "side"],
            &["extra", "front", "side"],
        ];
        wait_synced(&w, both).await;
        // Change the endpoints of `web`: web-0, healthy and health-checked,
        // is removed; only web-1 answers, and web-0 gets nothing more.
        w.spec.web = vec![w.web[1].addr()];
        w.write();
        assert_eventually!(DEADLINE, "only web-1 behind front", async || {
            let got = gets(w.front(), 4).await?;
            ensure!(got.get("web-1") == Some(&4), "{got:?}");
            Ok(())
        });
        let served = w.web[0].served();
        let got = gets(w.front(), 6).await.unwrap();
        assert_eq!(got.get("web-1"), Some(&6), "{got:?}");
        assert_eq!(w.web[0].served(), served, "a removed host took requests");
        // The push carried `web`'s load assignment alone (SotW too); the
        // client kept `side`'s, which still routes.
        only_the_change_was_sent(&w, "eds", both).await;
        let got = gets(side, 2).await.unwrap();
        assert_eq!(got.get("web-1"), Some(&2), "{got:?}");
        // Change `side`'s route configuration: the push carries it alone,
        // and `front` and `extra` keep theirs.
        w.spec.side = Some((side, vec![w.web[1].addr()], Some(9)));
        w.write();
        only_the_change_was_sent(&w, "rds", both).await;
        for addr in [w.front(), extra, side] {
            gets(addr, 2).await.unwrap();
        }
        // Remove the listeners: gone from the proxy, ports closed.
        w.spec.extra_listeners.clear();
        w.spec.side = None;
        w.write();
        let admin = w.proxy().admin();
        assert_eventually!(DEADLINE, "the listeners removed", async || {
            let l = admin.config_dump().await?.active_listeners();
            ensure!(l == ["front"], "{l:?}");
            for addr in [extra, side] {
                ensure!(
                    tokio::net::TcpStream::connect(addr).await.is_err(),
                    "{addr} still accepts"
                );
            }
            Ok(())
        });
        wait_synced(&w, PROXY_VIEW).await;
    } else {
        let g0 = w.backend("g0");
        let g2 = w.backend("g2");
        // Add a service.
        w.spec
            .extra_services
            .push(("second.example".into(), 50052, vec![g0]));
        w.write();
        assert_eventually!(DEADLINE, "the added service answers", async || {
            let c = w.calls("second.example:50052", 2).await?;
            ensure!(c.ok_from("g0") == 2, "{c:?}");
            Ok(())
        });
        // Change the greeter's endpoints: only g2 answers.
        w.spec.greeter = vec![g2];
        w.write();
        assert_eventually!(DEADLINE, "only g2 behind the greeter", async || {
            let c = w.calls(GREETER, 4).await?;
            ensure!(c.ok_from("g2") == 4, "{c:?}");
            Ok(())
        });
        // The push carried the greeter's load assignment alone; the client
        // kept the other service's, which still answers.
        let second = "second.example:50052";
        only_the_change_was_sent(&w, "eds", [&[], &[GREETER, second], &[], &[]]).await;
        let c = w.calls(second, 2).await.unwrap();
        assert_eq!(c.ok_from("g0"), 2, "{c:?}");
        // Remove the added service: calls to it fail.
        w.spec.extra_services.clear();
        w.write();
        assert_eventually!(DEADLINE, "the removed service fails", async || {
            let c = w.calls("second.example:50052", 2).await?;
            ensure!(c.total_ok() == 0, "{c:?}");
            Ok(())
        });
        assert_eventually!(DEADLINE, "pylon-xds no longer sends it", async || {
            let t = w.node_types().await?;
            ensure!(held(&t, "lds") == [GREETER], "{t}");
            Ok(())
        });
    }
    w.pylon.stop().await;
}

// ---------------------------------------------------------------------------
// 3. A resource the client rejects

async fn nack(mut w: World) {
    // Keeps an address busy for the proxies' rejected listener.
    let blocker = std::net::TcpListener::bind(free_addr(LOOPBACK).unwrap()).unwrap();
    let taken = blocker.local_addr().unwrap();
    let fixed = free_addr(LOOPBACK).unwrap();
    let bad_target = "plain.example:50053";
    if w.id.is_proxy() {
        wait_synced(&w, PROXY_VIEW).await;
        w.spec.extra_listeners.push(("taken".into(), taken));
    } else {
        wait_synced(&w, GRPC_VIEW).await;
        w.spec.plain_grpc_listener = Some((bad_target.into(), free_addr(LOOPBACK).unwrap()));
    }
    w.write();
    if !w.id.is_proxy() {
        // The client asks for the listener when it dials the target.
        let c = w.calls(bad_target, 1).await.unwrap();
        assert_eq!(c.total_ok(), 0, "{c:?}");
    }
    let t = assert_eventually!(DEADLINE, "LDS NACK recorded", async || {
        let t = w.node_types().await?;
        ensure!(state(&t, "lds") == "ERROR", "{t}");
        Ok(t)
    });
    let lds = &t["lds"];
    let message = lds["last_nack"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty(), "{lds}");
    let nonce = lds["sent_nonce"].clone();
    assert_eq!(lds["last_nack"]["nonce"], nonce, "{lds}");
    eprintln!("{}: NACK message: {message}", w.id.key());
    // Visible over CSDS: the rejected listener is in ERROR with the message.
    let csds = csds_listener_errors(&w).await;
    let rejected = if w.id.is_proxy() { "taken" } else { bad_target };
    assert!(
        csds.iter()
            .any(|(name, details)| name == rejected && details == &message),
        "CSDS ERROR entries: {csds:?}"
    );
    // Not sent again: no LDS response after the NACK for a while, although
    // the client keeps talking (a proxy ACKs other types; gRPC re-requests).
    let deadline = tokio::time::Instant::now() + QUIET;
    while tokio::time::Instant::now() < deadline {
        let t = w.node_types().await.unwrap();
        assert_eq!(
            t["lds"]["sent_nonce"], nonce,
            "LDS resent after a NACK: {t}"
        );
        assert_eq!(state(&t, "lds"), "ERROR", "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rest keeps working.
    if w.id.is_proxy() {
        gets(w.front(), 2).await.unwrap();
    } else {
        let c = w.calls(GREETER, 3).await.unwrap();
        assert_eq!(c.total_ok(), 3, "{c:?}");
    }
    // The next good edit is applied.
    if w.id.is_proxy() {
        w.spec.extra_listeners = vec![("taken".into(), fixed)];
        w.write();
        assert_eventually!(DEADLINE, "the fixed listener serves", async || gets(
            fixed, 2
        )
        .await);
        wait_synced(
            &w,
            [&["web"], &["web"], &["front", "taken"], &["front", "taken"]],
        )
        .await;
    } else {
        let g1 = w.backend("g1");
        w.spec.plain_grpc_listener = None;
        w.spec
            .extra_services
            .push(("plain.example".into(), 50053, vec![g1]));
        w.write();
        assert_eventually!(DEADLINE, "the fixed service answers", async || {
            let c = w.calls(bad_target, 2).await?;
            ensure!(c.ok_from("g1") == 2, "{c:?}");
            Ok(())
        });
        assert_eventually!(DEADLINE, "LDS SYNCED again", async || {
            let t = w.node_types().await?;
            ensure!(state(&t, "lds") == "SYNCED", "{t}");
            Ok(())
        });
    }
    drop(blocker);
    w.pylon.stop().await;
}

/// (listener name, error details) of every Listener CSDS reports in ERROR
/// for the client's node.
async fn csds_listener_errors(w: &World) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, NodeMatcher, StringMatcher,
    };
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::status::v3::{ClientStatusRequest, ConfigStatus};
    let addr = w.pylon.xds_addr().unwrap();
    let mut client = ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let resp = client
        .fetch_client_status(ClientStatusRequest {
            node_matchers: vec![NodeMatcher {
                node_id: Some(StringMatcher {
                    ignore_case: false,
                    match_pattern: Some(MatchPattern::Exact(w.node.clone())),
                }),
                node_metadatas: Vec::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.config
        .iter()
        .flat_map(|c| c.generic_xds_configs.iter())
        .filter(|g| {
            g.type_url.ends_with("envoy.config.listener.v3.Listener")
                && g.config_status == ConfigStatus::Error as i32
        })
        .map(|g| {
            let details = g.error_state.as_ref().map(|e| e.details.clone());
            (g.name.clone(), details.unwrap_or_default())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 4. pylon-xds restarted with the same YAML

async fn restart(mut w: World) {
    let view = if w.id.is_proxy() {
        PROXY_VIEW
    } else {
        GRPC_VIEW
    };
    if !w.id.is_proxy() {
        assert_eventually!(DEADLINE, "greeter answers", async || {
            let c = w.calls(GREETER, 3).await?;
            ensure!(c.total_ok() == 3, "{c:?}");
            Ok(())
        });
    }
    let before = versions(&wait_synced(&w, view).await);
    let dump_before = match &w.under {
        Under::Proxy(dp) => Some(dp.admin().config_dump().await.unwrap().versions()),
        Under::Grpc(_) => None,
    };
    let traffic = w.id.is_proxy().then(|| TrafficLoop::start(w.front(), "/"));

    w.pylon.stop().await;
    // Served while the control plane is down.
    if let Some(t) = &traffic {
        let start = t.tally().ok_total();
        assert_eventually!(DEADLINE, "traffic while pylon-xds is down", async || {
            let now = t.tally().ok_total();
            ensure!(now >= start + 20, "{now} requests");
            Ok(())
        });
    } else {
        let c = w.calls(GREETER, 10).await.unwrap();
        assert_eq!(c.total_ok(), 10, "calls while pylon-xds is down: {c:?}");
    }
    w.pylon.start_again().await.unwrap();
    let after = versions(&wait_synced(&w, view).await);
    assert_eq!(before, after, "versions changed across the restart");
    if let Some(t) = traffic {
        let tally = t.stop().await;
        assert!(
            tally.failures.is_empty(),
            "failed requests: {:?}",
            tally.failures
        );
        assert!(tally.ok_total() > 0);
    } else {
        let c = w.calls(GREETER, 6).await.unwrap();
        assert_eq!(c.total_ok(), 6, "{c:?}");
    }
    if let (Under::Proxy(dp), Some(b)) = (&w.under, dump_before) {
        let a = dp.admin().config_dump().await.unwrap().versions();
        assert_eq!(b, a, "the proxy's resource versions changed");
    }
    w.pylon.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Stale nonce, from a scripted raw client with the client's profile

/// The stale nonces pylon-xds counted of `ty` on the raw client's stream.
async fn stale_nonce_count(w: &World, ty: &str) -> u64 {
    let raw = raw_node(w).id;
    w.pylon
        .node_status(&raw)
        .await
        .unwrap()
        .map_or(0, |n| n["types"][ty]["stale_nonces"].as_u64().unwrap_or(0))
}

fn raw_node(w: &World) -> Node {
    Node {
        id: format!("{}-raw", w.node),
        cluster: "raw".into(),
        ..Default::default()
    }
}

async fn stale_nonce(mut w: World) {
    let view = if w.id.is_proxy() {
        PROXY_VIEW
    } else {
        GRPC_VIEW
    };
    wait_synced(&w, view).await;
    let addr = w.pylon.xds_addr().unwrap();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // Proxies subscribe to clusters by wildcard; gRPC clients name the load
    // assignment they want.
    let (type_url, short, names): (&str, &str, Vec<String>) = if w.id.is_proxy() {
        (
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "cds",
            Vec::new(),
        )
    } else {
        (
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "eds",
            vec![GREETER.to_string()],
        )
    };
    if w.id.is_delta() {
        let (tx, rx) = mpsc::channel(8);
        let mut rx_resp = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let req = |nonce: &str| DeltaDiscoveryRequest {
            node: Some(raw_node(&w)),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(req("")).await.unwrap();
        let r1: DeltaDiscoveryResponse = next(&mut rx_resp).await;
        assert_eq!(
            r1.resources
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
        tx.send(req(&r1.nonce)).await.unwrap(); // ACK
        tx.send(req("stale-nonce")).await.unwrap();
        wait_count(&w, short, 1).await;
        w.spec.web_timeout_s = 7;
        w.write();
        let r2: DeltaDiscoveryResponse = next(&mut rx_resp).await;
        assert_ne!(r2.nonce, r1.nonce);
        assert_eq!(r2.resources.len(), 1, "{r2:?}");
        assert_ne!(
            r2.resources[0].version, r1.resources[0].version,
            "a duplicate push"
        );
        let c =
            Cluster::decode(r2.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
        assert_eq!(c.connect_timeout.unwrap().seconds, 7);
    } else {
        let (tx, rx) = mpsc::channel(8);
        let mut rx_resp = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let req = |names: Vec<String>, version: &str, nonce: &str| DiscoveryRequest {
            node: Some(raw_node(&w)),
            type_url: type_url.into(),
            resource_names: names,
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(req(names.clone(), "", "")).await.unwrap();
        let r1: DiscoveryResponse = next(&mut rx_resp).await;
        assert_eq!(r1.resources.len(), 1, "{r1:?}");
        tx.send(req(names.clone(), &r1.version_info, &r1.nonce))
            .await
            .unwrap();
        // Stale, and asking for one more name: a server honouring it would
        // answer with the same content again.
        let mut more = names.clone();
        more.push("also-this".into());
        tx.send(req(more, &r1.version_info, "stale-nonce"))
            .await
            .unwrap();
        wait_count(&w, short, 1).await;
        // The next response is the one the edit causes.
        if w.id.is_proxy() {
            w.spec.web_timeout_s = 7;
        } else {
            w.spec.greeter.pop();
        }
        w.write();
        let r2: DiscoveryResponse = next(&mut rx_resp).await;
        assert_ne!(r2.nonce, r1.nonce);
        assert_ne!(r2.version_info, r1.version_info, "a duplicate push");
        if w.id.is_proxy() {
            let c = Cluster::decode(r2.resources[0].value.as_slice()).unwrap();
            assert_eq!(c.connect_timeout.unwrap().seconds, 7);
        } else {
            let cla = ClusterLoadAssignment::decode(r2.resources[0].value.as_slice()).unwrap();
            assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
        }
    }
    // The real client took the edit as usual.
    wait_synced(&w, view).await;
    if !w.id.is_proxy() {
        assert_eventually!(DEADLINE, "calls reach g0 and g1 only", async || {
            let c = w.calls(GREETER, 4).await?;
            ensure!(c.ok_from("g0") == 2 && c.ok_from("g1") == 2, "{c:?}");
            Ok(())
        });
    }
    w.pylon.stop().await;
}

async fn next<T>(rx: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.next())
        .await
        .expect("a response before the deadline")
        .expect("the stream is open")
        .expect("no gRPC error")
}

async fn wait_count(w: &World, ty: &str, want: u64) {
    assert_eventually!(DEADLINE, format!("stale {ty} nonce counted"), async || {
        let n = stale_nonce_count(w, ty).await;
        ensure!(n == want, "stale {ty} nonces on the raw stream: {n}");
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 6. Requested before it exists

async fn requested_before_it_exists(mut w: World) {
    if w.id.is_proxy() {
        // The proxy started with nothing for it: its wildcard subscriptions
        // ask for listeners and clusters that do not exist yet.
        wait_synced(&w, [&[], &[], &[], &[]]).await;
        let front = free_addr(LOOPBACK).unwrap();
        w.spec.front = Some(front);
        w.write();
        assert_eventually!(DEADLINE, "front arrives and serves", async || gets(
            front, 2
        )
        .await);
        wait_synced(&w, PROXY_VIEW).await;
    } else {
        let late = "late.example:50054";
        let c = w.calls(late, 1).await.unwrap();
        assert_eq!(c.total_ok(), 0, "{c:?}");
        assert_eventually!(DEADLINE, "asked for and not sent", async || {
            let t = w.node_types().await?;
            let subscribed = t["lds"]["subscribed"].to_string();
            ensure!(subscribed.contains(late), "{t}");
            ensure!(!held(&t, "lds").iter().any(|n| n == late), "{t}");
            Ok(())
        });
        let g1 = w.backend("g1");
        w.spec
            .extra_services
            .push(("late.example".into(), 50054, vec![g1]));
        w.write();
        assert_eventually!(DEADLINE, "the late service answers", async || {
            let c = w.calls(late, 2).await?;
            ensure!(c.ok_from("g1") == 2, "{c:?}");
            Ok(())
        });
    }
    w.pylon.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Over mutual TLS

/// Renews pylon-xds's certificate in place (written beside, renamed over)
/// and waits until it is loaded.
async fn renew_server_certificate(w: &World) {
    let (pki, tls) = w.pki.as_ref().unwrap();
    let renewed = pki.server("pylon-xds-renewed").unwrap();
    for (from, to) in [
        (&renewed.cert, &tls.server.cert),
        (&renewed.key, &tls.server.key),
    ] {
        let tmp = to.with_extension("renewed");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    assert_eventually!(DEADLINE, "the renewed certificate loaded", async || {
        let s = w.pylon.status().await?;
        ensure!(
            s["transport"]["xds_tls"]["reloads"] == 1,
            "{}",
            s["transport"]
        );
        Ok(())
    });
}

/// The streams of the node, by id, from `/status`.
async fn stream_ids(w: &World) -> Vec<u64> {
    let s = w.pylon.status().await.unwrap();
    s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node"] == w.node.as_str())
        .filter_map(|n| n["stream"].as_u64())
        .collect()
}

async fn mutual_tls(mut w: World) {
    let s = w.pylon.status().await.unwrap();
    assert_eq!(s["transport"]["xds"], "mutual_tls");
    if w.id.is_proxy() {
        let types = wait_synced(&w, PROXY_VIEW).await;
        assert!(!types.is_null());
        let streams = stream_ids(&w).await;
        // An edit over the TLS stream.
        w.spec.web = vec![w.web[1].addr()];
        w.write();
        assert_eventually!(DEADLINE, "only web-1 behind front", async || {
            let got = gets(w.front(), 4).await?;
            ensure!(got.get("web-1") == Some(&4), "{got:?}");
            Ok(())
        });
        // The server's certificate renewed: the stream stays, the next edit
        // arrives over it.
        renew_server_certificate(&w).await;
        w.spec.web = vec![w.web[0].addr()];
        w.write();
        assert_eventually!(DEADLINE, "only web-0 behind front", async || {
            let got = gets(w.front(), 4).await?;
            ensure!(got.get("web-0") == Some(&4), "{got:?}");
            Ok(())
        });
        assert_eq!(stream_ids(&w).await, streams, "the stream was re-opened");
    } else {
        wait_synced(&w, GRPC_VIEW).await;
        let (g1, g2) = (w.backend("g1"), w.backend("g2"));
        w.spec.greeter = vec![g1];
        w.write();
        assert_eventually!(DEADLINE, "only g1 behind the greeter", async || {
            let c = w.calls(GREETER, 3).await?;
            ensure!(c.ok_from("g1") == 3, "{c:?}");
            Ok(())
        });
        renew_server_certificate(&w).await;
        w.spec.greeter = vec![g2];
        w.write();
        assert_eventually!(DEADLINE, "only g2 behind the greeter", async || {
            let c = w.calls(GREETER, 3).await?;
            ensure!(c.ok_from("g2") == 3, "{c:?}");
            Ok(())
        });
    }
    let n = w.node_types().await.unwrap();
    assert!(!n.is_null());
    w.pylon.stop().await;
}

/// Why a proxyless client cannot reach a mutual-TLS pylon-xds with the
/// bootstrap `pylon-xds bootstrap --grpc --tls-*` prints.
#[derive(Debug, Clone, Copy)]
struct TlsLimit {
    /// What its log shows of the failed attempt, when it shows anything.
    evidence: Option<&'static str>,
}

/// The clients that cannot do check 7, by what the release in the matrix
/// does with the bootstrap's `{"type": "tls", "config": {...}}`.
fn tls_limit(id: ClientId) -> Option<TlsLimit> {
    match id {
        // @grpc/grpc-js-xds 1.14 accepts only `google_default` and
        // `insecure` channel credentials: it never dials.
        ClientId::GrpcJs => Some(TlsLimit { evidence: None }),
        // grpc-java 1.85's `tls` channel credentials ignore the config (gRFC
        // A65's files): TLS with the JVM's default trust roots and no client
        // certificate, so the handshake fails on pylon-xds's certificate,
        // which the test CA signed.
        ClientId::GrpcJava => Some(TlsLimit {
            evidence: Some("PKIX path building failed"),
        }),
        _ => None,
    }
}

/// Whether the client `id`, bootstrapped with TLS channel credentials (the
/// CA that signed pylon-xds's certificate, and a client certificate that a
/// `clients:` rule accepts), indeed never reaches a mutual-TLS pylon-xds,
/// for the reason `limit` gives. `false` when its runtime is missing outside
/// CI.
async fn cannot_use_tls(id: ClientId, limit: TlsLimit) -> bool {
    let kind = grpc_kind(id);
    if !kind.tools_or_skip() {
        return false;
    }
    let node = format!("{}-tls", id.key());
    let identity = format!("spiffe://pylon.test/interop/{}", id.key());
    let pki = Pki::new("pylon interop CA").unwrap();
    let tls = MutualTls {
        server: pki.server("pylon-xds").unwrap(),
        ca: pki.ca().to_path_buf(),
        client: pki.client("client", &identity).unwrap(),
    };
    let yaml = format!(
        "grpc_services:\n  - {{name: greeter.example, port: 50051, endpoints: [127.0.0.1:9]}}\n\
         clients:\n  - identity: \"{identity}\"\n    nodes: {{id: \"{node}\"}}\n"
    );
    let pylon = Pylon::start_with(&yaml, Some(tls)).await.unwrap();
    let bootstrap = grpc_bootstrap(&BootstrapOptions {
        node_id: node.clone(),
        node_cluster: "grpc".into(),
        xds: vec![pylon.xds_addr().unwrap().to_string().parse().unwrap()],
        delta: false,
        admin: "127.0.0.1:0".parse().unwrap(),
        tls: pylon.client_tls(),
    });
    let Some(mut c) = GrpcClient::start_with_bootstrap(kind, &bootstrap, &node)
        .await
        .unwrap()
    else {
        return false;
    };
    let counts = c.call(&format!("xds:///{GREETER}"), 2, CALL).await.unwrap();
    assert_eq!(
        counts.total_ok(),
        0,
        "{} answered over TLS: {counts:?}",
        id.label()
    );
    assert!(
        w_absent(&pylon, &node).await,
        "{} reached pylon-xds over TLS: the matrix and README are out of date",
        id.label()
    );
    if let Some(evidence) = limit.evidence {
        // The failed call is logged with its cause before it is answered.
        let log = c.log_tail(200);
        assert!(
            log.contains(evidence),
            "{} failed over TLS, but not with {evidence:?}: the README's reason may be \
             out of date\n{log}",
            id.label()
        );
    }
    c.stop().await.unwrap();
    pylon.shutdown().await;
    true
}

async fn w_absent(pylon: &Pylon, node: &str) -> bool {
    pylon.node_status(node).await.unwrap().is_none()
}
