//! pylon-xds over mutual TLS, against real gRPC clients with a test PKI:
//! who gets in (a certificate from the client CA, unexpired), what a
//! certificate's identity may claim (the `clients:` rules, reloaded live),
//! who may read CSDS, certificate rotation without dropping streams, and the
//! refusal to serve plaintext beyond loopback.
//!
//! `mutual_tls_end_to_end` runs on real Envoy and pylon-proxy, SotW and
//! delta: each bootstrapped as `pylon-xds bootstrap --tls-ca --tls-cert
//! --tls-key` prints, gets its config, takes a live edit, keeps its stream
//! across a renewal of the server's certificate, and a node its certificate
//! may not claim gets nothing. The proxyless gRPC clients over mutual TLS
//! are cells of the interop matrix (`interop.rs`, check 7).

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use control_plane::{Running, ServeOptions};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use integration_tests::assert_eventually;
use integration_tests::backends::HttpServer;
use integration_tests::config::{Cluster, Listener, PylonConfig, Route};
use integration_tests::dataplane::{DataPlane, Flavour};
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::pylon::{MutualTls, Pylon};
use integration_tests::tls::{CertFiles, Leaf, Pki};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DEADLINE: Duration = Duration::from_secs(15);
const CDS: &str = pylon::type_url::CLUSTER;

fn config(clusters: &[&str], rules: &str) -> String {
    let mut y = String::from("clusters:\n");
    for c in clusters {
        y += &format!("  - {{name: {c}, endpoints: [127.0.0.1:9]}}\n");
    }
    y + rules
}

const RULES: &str = "\
clients:
  - identity: \"spiffe://pylon.test/edge/*\"
    nodes: {cluster: edge, id: \"edge-*\"}
  - identity: \"spiffe://pylon.test/ops\"
    csds: true
";

/// pylon-xds serving `yaml` over mutual TLS (`pki`'s CA) on 127.0.0.1:0.
async fn serve(dir: &Path, yaml: &str, server: &CertFiles, pki: &Pki) -> Running {
    let path = dir.join("pylon.yaml");
    std::fs::write(&path, yaml).unwrap();
    control_plane::serve(ServeOptions {
        tls: Some(pylon::tls::Files {
            cert: server.cert.clone(),
            key: server.key.clone(),
            ca: Some(pki.ca().to_path_buf()),
        }),
        debounce: Duration::from_millis(20),
        ..ServeOptions::new(
            path,
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
        )
    })
    .await
    .unwrap()
}

/// A TLS channel to `addr` trusting `pki`'s CA, presenting `client` if given.
async fn channel(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&CertFiles>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca())?))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&c.cert)?,
            std::fs::read(&c.key)?,
        ));
    }
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// An ADS stream for `node` on `ch`, with its first CDS request sent.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(ch: Channel, id: &str, cluster: &str) -> Result<Ads, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                cluster: cluster.into(),
                ..Default::default()
            }),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = AggregatedDiscoveryServiceClient::new(ch)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    /// The next response, or the status that ended the stream.
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(DEADLINE, self.rx.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(tonic::Status::cancelled("stream ended without a status")),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "no response within the deadline",
            )),
        }
    }

    async fn ack(&self, r: &DiscoveryResponse) {
        self.tx
            .send(DiscoveryRequest {
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                type_url: CDS.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn cluster_count(r: &DiscoveryResponse) -> usize {
    r.resources.len()
}

async fn metrics(running: &Running) -> String {
    let (code, body) = control_plane::admin::get(running.admin_addr.unwrap(), "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    body
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_bind_identities_to_nodes_and_csds() {
    let pki = Pki::new("pylon test CA").unwrap();
    let other = Pki::new("another CA").unwrap();
    let server = pki.server("pylon-xds").unwrap();
    let edge = pki.client("edge", "spiffe://pylon.test/edge/1").unwrap();
    let ops = pki.client("ops", "spiffe://pylon.test/ops").unwrap();
    let stranger = pki.client("stranger", "spiffe://pylon.test/other").unwrap();
    let foreign = other
        .client("foreign", "spiffe://pylon.test/edge/1")
        .unwrap();
    let expired = pki
        .issue(
            "expired",
            &Leaf {
                uri: Some("spiffe://pylon.test/edge/1"),
                expired: true,
                ..Leaf::default()
            },
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path(), &config(&["a"], RULES), &server, &pki).await;
    let addr = running.xds_addr;

    // An edge certificate gets its own node's config...
    let mut good = Ads::open(
        channel(addr, &pki, Some(&edge)).await.unwrap(),
        "edge-1",
        "edge",
    )
    .await
    .unwrap();
    let r = good.next().await.unwrap();
    assert_eq!(cluster_count(&r), 1);
    good.ack(&r).await;

    // ...but not another node's: PERMISSION_DENIED, counted, logged.
    let mut bad = Ads::open(
        channel(addr, &pki, Some(&edge)).await.unwrap(),
        "core-1",
        "core",
    )
    .await
    .unwrap();
    let status = bad.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spiffe://pylon.test/edge/1"),
        "{status:?}"
    );
    assert!(status.message().contains("\"core-1\""), "{status:?}");
    // An identity no rule names.
    let mut unknown = Ads::open(
        channel(addr, &pki, Some(&stranger)).await.unwrap(),
        "edge-2",
        "edge",
    )
    .await
    .unwrap();
    assert_eq!(
        unknown.next().await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let m = metrics(&running).await;
    assert_eq!(
        metric(
            &m,
            "pylon_xds_denied_streams_total{reason=\"node_not_allowed\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            "pylon_xds_denied_streams_total{reason=\"unknown_identity\"}"
        ),
        1
    );

    // No certificate, one from another CA, an expired one: refused during
    // the handshake; nothing reaches the xDS server.
    let before = metric(&m, "pylon_xds_tls_handshake_failures_total");
    for (what, client) in [
        ("no certificate", None),
        ("another CA", Some(&foreign)),
        ("expired", Some(&expired)),
    ] {
        let refused = match channel(addr, &pki, client).await {
            Err(_) => true,
            Ok(ch) => Ads::open(ch, "edge-9", "edge").await.is_err(),
        };
        assert!(refused, "{what}: a stream opened");
    }
    assert_eventually!(DEADLINE, "three handshake failures counted", async || {
        let n = metric(
            &metrics(&running).await,
            "pylon_xds_tls_handshake_failures_total",
        );
        ensure!(n >= before + 3, "{n}");
        Ok(())
    });

    // The refusals left the good stream alone: an edit reaches it.
    std::fs::write(dir.path().join("pylon.yaml"), config(&["a", "b"], RULES)).unwrap();
    let r = good.next().await.unwrap();
    assert_eq!(cluster_count(&r), 2);
    good.ack(&r).await;

    // CSDS: only for identities with `csds: true`.
    let csds = |ch: Channel| async move {
        ClientStatusDiscoveryServiceClient::new(ch)
            .fetch_client_status(ClientStatusRequest::default())
            .await
    };
    let denied = csds(channel(addr, &pki, Some(&edge)).await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let answer = csds(channel(addr, &pki, Some(&ops)).await.unwrap())
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<String> = answer
        .config
        .iter()
        .filter_map(|c| c.node.as_ref().map(|n| n.id.clone()))
        .collect();
    assert_eq!(nodes, ["edge-1"]);
    let meta = answer.config[0]
        .node
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap();
    assert_eq!(
        meta.fields["pylon.certificate_identity"].kind,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "spiffe://pylon.test/edge/1".into()
        ))
    );

    // /status names each stream's certificate identity and the transport.
    let s = running.status();
    let s = serde_json::to_value(&s).unwrap();
    assert_eq!(s["transport"]["xds"], "mutual_tls", "{s}");
    assert_eq!(
        s["nodes"][0]["identity"], "spiffe://pylon.test/edge/1",
        "{s}"
    );

    // A rule change that no longer allows the node closes its stream.
    let narrowed = RULES.replace("id: \"edge-*\"", "id: \"edge-9*\"");
    std::fs::write(
        dir.path().join("pylon.yaml"),
        config(&["a", "b"], &narrowed),
    )
    .unwrap();
    let status = assert_eventually!(DEADLINE, "the edge-1 stream closed", async || {
        match good.next().await {
            Err(s) => Ok(s),
            Ok(r) => anyhow::bail!("still served: {}", r.version_info),
        }
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    running.shutdown().await;
}

/// The server's certificate is renewed in place: established streams keep
/// going, new connections get the new certificate; a mismatched pair is an
/// error in `/status` and the last good pair stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_serves_new_connections_without_dropping_streams() {
    let pki = Pki::new("pylon test CA").unwrap();
    let first = pki.server("first").unwrap();
    let edge = pki.client("edge", "spiffe://pylon.test/edge/1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The server reads its pair from fixed paths, as from a secret volume.
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let served = CertFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let running = serve(dir.path(), &config(&["a"], RULES), &served, &pki).await;
    let addr = running.xds_addr;
    let mut stream = Ads::open(
        channel(addr, &pki, Some(&edge)).await.unwrap(),
        "edge-1",
        "edge",
    )
    .await
    .unwrap();
    let r = stream.next().await.unwrap();
    stream.ack(&r).await;
    let not_after = |s: &serde_json::Value| s["transport"]["xds_tls"]["reloads"].as_u64();
    assert_eq!(
        not_after(&serde_json::to_value(running.status()).unwrap()),
        Some(0)
    );

    // Renewal: written beside, renamed over (as cert-manager and editors do).
    let second = pki.server("second").unwrap();
    for (from, to) in [(&second.cert, &cert), (&second.key, &key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    assert_eventually!(DEADLINE, "the renewed certificate loaded", async || {
        let s = serde_json::to_value(running.status())?;
        ensure!(not_after(&s) == Some(1), "{}", s["transport"]);
        ensure!(
            s["transport"]["xds_tls"]["last_error"].is_null(),
            "{}",
            s["transport"]
        );
        Ok(())
    });
    // A new connection is served the new certificate.
    let presented = presented_certificate(addr, &pki, &edge).await.unwrap();
    let second_der = rustls::pki_types::pem::PemObject::from_pem_file(&second.cert).unwrap();
    assert_eq!(presented, second_der);
    // The established stream still receives pushes.
    std::fs::write(dir.path().join("pylon.yaml"), config(&["a", "b"], RULES)).unwrap();
    assert_eq!(cluster_count(&stream.next().await.unwrap()), 2);

    // A key that does not belong to the certificate: refused, reported.
    let stray = pki.server("stray").unwrap();
    let tmp = key.with_extension("new");
    std::fs::copy(&stray.key, &tmp).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    assert_eventually!(DEADLINE, "the mismatched pair reported", async || {
        let s = serde_json::to_value(running.status())?;
        let e = s["transport"]["xds_tls"]["last_error"]
            .as_str()
            .unwrap_or("");
        ensure!(
            e.contains("do not make a certificate and its key"),
            "{}",
            s["transport"]
        );
        Ok(())
    });
    let presented = presented_certificate(addr, &pki, &edge).await.unwrap();
    assert_eq!(presented, second_der, "the last good pair stays in use");
    let m = metrics(&running).await;
    assert_eq!(
        metric(&m, "pylon_xds_tls_files_valid{listener=\"xds\"}"),
        0,
        "{m}"
    );
    assert!(
        metric(&m, "pylon_xds_tls_reload_errors{listener=\"xds\"}") >= 1,
        "{m}"
    );

    running.shutdown().await;
}

/// The leaf certificate a TLS handshake with `addr` is presented.
async fn presented_certificate(
    addr: SocketAddr,
    pki: &Pki,
    client: &CertFiles,
) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    let tls = pylon::tls::ClientTls::load(
        pki.ca().to_path_buf(),
        Some((client.cert.clone(), client.key.clone())),
        &[b"h2"],
    )?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let s = tls.connect("localhost", tcp).await?;
    let cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .context("no server certificate")?;
    Ok(cert.into_owned())
}

/// Plaintext is for loopback: anything else is refused before a socket is
/// bound, with a message that says how to add TLS. No traffic is sent.
#[tokio::test]
async fn plaintext_beyond_loopback_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pylon.yaml");
    std::fs::write(&path, config(&["a"], "")).unwrap();
    let opts = |xds: &str, admin: &str| {
        ServeOptions::new(
            path.clone(),
            xds.parse().unwrap(),
            Some(admin.parse().unwrap()),
        )
    };
    let e = control_plane::serve(opts("0.0.0.0:0", "127.0.0.1:0"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing to serve xDS in plaintext on 0.0.0.0:0"),
        "{e}"
    );
    assert!(e.contains("--tls-cert FILE --tls-key FILE"), "{e}");
    assert!(e.contains("--insecure"), "{e}");
    let e = control_plane::serve(opts("127.0.0.1:0", "0.0.0.0:0"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing to serve the admin API in plaintext on 0.0.0.0:0"),
        "{e}"
    );
}

/// With `--allow-inline-secrets`, a private key written inline is served to
/// the nodes selected for it, and never shown by CSDS.
#[tokio::test(flavor = "multi_thread")]
async fn csds_never_shows_an_inline_private_key() {
    let key = "-----BEGIN PRIVATE KEY-----\nTHIS-IS-THE-SECRET\n-----END PRIVATE KEY-----\n";
    let yaml = format!(
        r#"static_resources:
  clusters:
  - name: upstream
    type: STATIC
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{filename: /etc/envoy/tls.crt}}
            private_key: {{inline_string: {key:?}}}
    load_assignment: {{endpoints: []}}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pylon.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let opts = || ServeOptions::new(path.clone(), "127.0.0.1:0".parse().unwrap(), None);
    // Refused by default...
    let e = control_plane::serve(opts()).await.unwrap_err();
    assert!(format!("{e:#}").contains("--allow-inline-secrets"), "{e:#}");
    // ...served when allowed.
    let running = control_plane::serve(ServeOptions {
        allow_inline_secrets: true,
        ..opts()
    })
    .await
    .unwrap();
    let ch = Channel::from_shared(format!("http://{}", running.xds_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ads = Ads::open(ch.clone(), "edge-1", "edge").await.unwrap();
    let r = ads.next().await.unwrap();
    assert!(String::from_utf8_lossy(&r.resources[0].value).contains("THIS-IS-THE-SECRET"));
    ads.ack(&r).await;
    let shown = assert_eventually!(DEADLINE, "CSDS shows the ACKed cluster", async || {
        let answer = ClientStatusDiscoveryServiceClient::new(ch.clone())
            .fetch_client_status(ClientStatusRequest::default())
            .await?
            .into_inner();
        let configs = &answer
            .config
            .first()
            .context("no node")?
            .generic_xds_configs;
        let cds = configs
            .iter()
            .find(|c| c.type_url == CDS && c.xds_config.is_some())
            .context("no cluster with its content")?;
        Ok(cds.xds_config.clone().unwrap().value)
    });
    let text = String::from_utf8_lossy(&shown);
    assert!(!text.contains("THIS-IS-THE-SECRET"), "{text}");
    assert!(text.contains("[redacted by pylon-xds]"), "{text}");
    running.shutdown().await;
}

integration_tests::every_data_plane!(mutual_tls_end_to_end);

async fn mutual_tls_end_to_end(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let pki = Pki::new("pylon test CA").unwrap();
    // The server's pair at fixed paths, renewed in place below.
    let dir = tempfile::tempdir().unwrap();
    let server = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let first = pki.server("first").unwrap();
    std::fs::copy(&first.cert, &server.cert).unwrap();
    std::fs::copy(&first.key, &server.key).unwrap();
    let node = format!("mtls-{flavour}");
    let client = pki
        .client("proxy", "spiffe://pylon.test/proxies/edge")
        .unwrap();
    let rules =
        "clients:\n  - identity: \"spiffe://pylon.test/proxies/*\"\n    nodes: {id: \"mtls-*\"}\n";
    let web = [
        HttpServer::start(loopback(2), "web-0").await.unwrap(),
        HttpServer::start(loopback(2), "web-1").await.unwrap(),
    ];
    let front = free_addr(LOOPBACK).unwrap();
    let mut config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web[0].addr()]))
        .listener(Listener::http(
            "front",
            front,
            vec![Route::prefix("/", "web")],
        ));
    let tls = MutualTls {
        server: server.clone(),
        ca: pki.ca().to_path_buf(),
        client: client.clone(),
    };
    let pylon = Pylon::start_with(&(config.to_yaml() + rules), Some(tls))
        .await
        .unwrap();
    let dp = DataPlane::start(&bin, flavour, &pylon, &node)
        .await
        .unwrap();
    if let Err(e) = dp.admin().wait_ready(DEADLINE).await {
        panic!("{e:#}\n{}", dp.log());
    }
    let first_stream = integration_tests::scenario::wait_node(&pylon, &dp).await;
    let answered = |id: &'static str| async move {
        assert_eventually!(DEADLINE, format!("GET / answered by {id}"), async || {
            let r = integration_tests::http::get(front, "/").await?;
            ensure!(r.status == 200 && r.body == id, "{} {}", r.status, r.body);
            Ok(())
        });
    };
    answered("web-0").await;
    let s = pylon.status().await.unwrap();
    assert_eq!(s["transport"]["xds"], "mutual_tls");
    assert_eq!(first_stream["identity"], "spiffe://pylon.test/proxies/edge");

    // A live edit over the TLS stream.
    config.cluster_mut("web").unwrap().endpoints = vec![web[1].addr()];
    pylon
        .write_config_atomic(&(config.to_yaml() + rules))
        .unwrap();
    answered("web-1").await;

    // The server's certificate is renewed in place: the stream stays (same
    // stream id), the next edit arrives over it, and a new connection is
    // served the new certificate.
    let second = pki.server("second").unwrap();
    for (from, to) in [(&second.cert, &server.cert), (&second.key, &server.key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    assert_eventually!(DEADLINE, "the renewed certificate loaded", async || {
        let s = pylon.status().await?;
        ensure!(
            s["transport"]["xds_tls"]["reloads"] == 1,
            "{}",
            s["transport"]
        );
        Ok(())
    });
    config.cluster_mut("web").unwrap().endpoints = vec![web[0].addr()];
    pylon
        .write_config_atomic(&(config.to_yaml() + rules))
        .unwrap();
    answered("web-0").await;
    let now = integration_tests::scenario::wait_node(&pylon, &dp).await;
    assert_eq!(
        now["stream"], first_stream["stream"],
        "the stream was re-opened"
    );
    let presented = presented_certificate(pylon.xds_addr().unwrap(), &pki, &client)
        .await
        .unwrap();
    let second_der = rustls::pki_types::pem::PemObject::from_pem_file(&second.cert).unwrap();
    assert_eq!(presented, second_der);

    // The same certificate claiming a node its identity may not: refused,
    // never configured; the first proxy is not affected.
    let intruder = DataPlane::start(&bin, flavour, &pylon, &format!("intruder-{flavour}"))
        .await
        .unwrap();
    assert_eventually!(DEADLINE, "the intruder's stream denied", async || {
        let (code, m) = control_plane::admin::get(pylon_admin(&pylon), "/metrics").await?;
        ensure!(code == 200);
        let n = metric(
            &m,
            "pylon_xds_denied_streams_total{reason=\"node_not_allowed\"}",
        );
        ensure!(n >= 1, "{n}");
        Ok(())
    });
    assert!(
        intruder
            .admin()
            .wait_ready(Duration::from_secs(2))
            .await
            .is_err(),
        "the intruder got a config"
    );
    answered("web-0").await;
    pylon.shutdown().await;
}

fn pylon_admin(pylon: &Pylon) -> SocketAddr {
    pylon.admin_addr().unwrap()
}

/// pylon-proxy over mutual TLS from flags alone (`--xds-ca`, `--xds-cert`,
/// `--xds-key`), no bootstrap.
#[tokio::test(flavor = "multi_thread")]
async fn pylon_proxy_flags_reach_a_mutual_tls_server() {
    let Some(bin) = integration_tests::pylon_proxy::binary_or_skip() else {
        return;
    };
    let pki = Pki::new("pylon test CA").unwrap();
    let server = pki.server("pylon-xds").unwrap();
    let client = pki
        .client("proxy", "spiffe://pylon.test/proxies/edge")
        .unwrap();
    let web = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let front = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web.addr()]))
        .listener(Listener::http(
            "front",
            front,
            vec![Route::prefix("/", "web")],
        ));
    let tls = MutualTls {
        server,
        ca: pki.ca().to_path_buf(),
        client: client.clone(),
    };
    let pylon = Pylon::start_with(&config.to_yaml(), Some(tls))
        .await
        .unwrap();
    let admin = free_addr(LOOPBACK).unwrap();
    let mut child = std::process::Command::new(bin)
        .args([
            "--xds",
            &pylon.xds_addr().unwrap().to_string(),
            "--node-id",
            "flags-1",
        ])
        .arg("--xds-ca")
        .arg(pki.ca())
        .arg("--xds-cert")
        .arg(&client.cert)
        .arg("--xds-key")
        .arg(&client.key)
        .args(["--xds-sni", "localhost", "--admin", &admin.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = async {
        assert_eventually!(DEADLINE, "traffic through the proxy", async || {
            let r = integration_tests::http::get(front, "/").await?;
            ensure!(
                r.status == 200 && r.body == "web-0",
                "{} {}",
                r.status,
                r.body
            );
            Ok(())
        });
    };
    served.await;
    let n = pylon.node_status("flags-1").await.unwrap().unwrap();
    assert_eq!(n["identity"], "spiffe://pylon.test/proxies/edge");
    let _ = child.kill();
    let _ = child.wait();
    pylon.shutdown().await;
}

/// The admin API over TLS (`--admin-tls-cert/--admin-tls-key`): a TLS client
/// gets `/status`; plaintext gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_over_tls() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let pki = Pki::new("pylon test CA").unwrap();
    let admin_pair = pki.server("admin").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pylon.yaml");
    std::fs::write(&path, config(&["a"], "")).unwrap();
    let running = control_plane::serve(ServeOptions {
        admin_tls: Some(pylon::tls::Files {
            cert: admin_pair.cert.clone(),
            key: admin_pair.key.clone(),
            ca: None,
        }),
        ..ServeOptions::new(
            path,
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
        )
    })
    .await
    .unwrap();
    let admin = running.admin_addr.unwrap();
    let client = pylon::tls::ClientTls::load(pki.ca().to_path_buf(), None, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut s = client.connect("localhost", tcp).await.unwrap();
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains("\"admin_tls\": {"), "{out}");
    // Plaintext to a TLS listener is not answered.
    assert!(control_plane::admin::get(admin, "/status").await.is_err());
    running.shutdown().await;
}
