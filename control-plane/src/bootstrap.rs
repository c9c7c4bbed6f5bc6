//! `pylon-xds bootstrap`: what connects a client to this server over ADS,
//! for Envoy (and pylon-proxy, which reads the same file) or for proxyless
//! gRPC clients (`--grpc`).
//!
//! The Envoy bootstrap is YAML Envoy reads as is: node identity, admin
//! address, ADS (state-of-the-world or delta) over an HTTP/2 cluster pointing
//! at pylon-xds (STATIC for IP addresses, STRICT_DNS when a host name is
//! given; with TLS, an `UpstreamTlsContext` reading its files on the proxy's
//! host and checking the server's name), and CDS/LDS through ADS. Several
//! replicas (`--xds A,B,C`) are several endpoints of that one cluster: the
//! proxy's ADS stream goes to one of them, and to another when it breaks.
//! Strings are emitted as JSON strings (valid YAML), so any node id is safe.
//!
//! The gRPC bootstrap is the JSON of gRFC A27 (`xds_servers`, `node`), with
//! gRFC A65's `tls` channel credentials when TLS files are given; several
//! replicas are several `xds_servers`, in order (gRFC A71: a client uses
//! the first it can reach).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Where pylon-xds is: a host (an IP address or a name) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    /// An IP address or a host name.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::str::FromStr for XdsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: the host is empty"));
        }
        Ok(XdsAddress {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for XdsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// TLS to pylon-xds: files on the client's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA pylon-xds's certificate chains to.
    pub ca: PathBuf,
    /// The client certificate and key (mutual TLS).
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// The name pylon-xds's certificate must carry (default: the host).
    pub sni: Option<String>,
}

/// What the printed bootstrap contains.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// Where pylon-xds is: one address per replica, at least one.
    pub xds: Vec<XdsAddress>,
    /// Use delta (incremental) ADS instead of state-of-the-world.
    pub delta: bool,
    /// Envoy's admin address.
    pub admin: SocketAddr,
    /// TLS to pylon-xds.
    pub tls: Option<ClientTlsFiles>,
}

/// The name of the static cluster that reaches pylon-xds.
pub const XDS_CLUSTER: &str = "pylon_xds";

impl BootstrapOptions {
    /// Refuses what no bootstrap could honour: no address, or replicas of
    /// different host names over TLS without `--tls-sni` (Envoy checks one
    /// name for the whole cluster).
    pub fn check(&self) -> Result<(), String> {
        let Some(first) = self.xds.first() else {
            return Err("--xds needs at least one HOST:PORT".to_string());
        };
        if let Some(tls) = &self.tls {
            if tls.sni.is_none() && self.xds.iter().any(|a| a.host != first.host) {
                return Err(format!(
                    "the replicas in --xds have different hosts ({}): over TLS, Envoy checks one \
                     name for all of them, so give it with --tls-sni NAME (a name every replica's \
                     certificate carries)",
                    self.xds
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The host checked against pylon-xds's certificate when no SNI is given.
    fn first_host(&self) -> &str {
        self.xds.first().map_or("", |a| a.host.as_str())
    }
}

/// The `transport_socket` of the xDS cluster, indented for its place.
fn envoy_tls(tls: &ClientTlsFiles, host: &str) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let p = |p: &PathBuf| q(&p.display().to_string());
    let name = tls.sni.clone().unwrap_or_else(|| host.to_string());
    let san_type = if name.parse::<IpAddr>().is_ok() {
        "IP_ADDRESS"
    } else {
        "DNS"
    };
    let cert = match &tls.cert_key {
        Some((c, k)) => format!(
            "\n            tls_certificates:\n              - certificate_chain: {{ filename: {} }}\n                private_key: {{ filename: {} }}",
            p(c),
            p(k)
        ),
        None => String::new(),
    };
    format!(
        r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {name}
          common_tls_context:
            alpn_protocols: [h2]{cert}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names:
                - san_type: {san_type}
                  matcher: {{ exact: {name} }}"#,
        name = q(&name),
        ca = p(&tls.ca),
    )
}

/// Renders the Envoy bootstrap YAML.
pub fn envoy_bootstrap(o: &BootstrapOptions) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let api_type = if o.delta { "DELTA_GRPC" } else { "GRPC" };
    let ip = o.xds.iter().all(|a| a.host.parse::<IpAddr>().is_ok());
    let tls = o
        .tls
        .as_ref()
        .map(|t| envoy_tls(t, o.first_host()))
        .unwrap_or_default();
    let endpoints: String = o
        .xds
        .iter()
        .map(|a| {
            format!(
                "\n              - endpoint:\n                  address:\n                    \
                 socket_address: {{ address: {}, port_value: {} }}",
                q(&a.host),
                a.port
            )
        })
        .collect();
    format!(
        r#"# Envoy bootstrap generated by `pylon-xds bootstrap`: everything but the
# connection to pylon-xds arrives over ADS ({mode}).
node:
  id: {id}
  cluster: {cluster}
admin:
  address:
    socket_address: {{ address: {admin_ip}, port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - envoy_grpc: {{ cluster_name: {xds_cluster} }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
    - name: {xds_cluster}
      type: {xds_type}
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": {http_opts}
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive: {{ interval: 30s, timeout: 5s }}
      load_assignment:
        cluster_name: {xds_cluster}
        endpoints:
          - lb_endpoints:{endpoints}{tls}
"#,
        mode = if o.delta {
            "delta"
        } else {
            "state of the world"
        },
        id = q(&o.node_id),
        cluster = q(&o.node_cluster),
        admin_ip = q(&o.admin.ip().to_string()),
        admin_port = o.admin.port(),
        xds_cluster = XDS_CLUSTER,
        http_opts = q(pylon::type_url::HTTP_PROTOCOL_OPTIONS),
        xds_type = if ip { "STATIC" } else { "STRICT_DNS" },
    )
}

/// Renders the proxyless gRPC bootstrap JSON (what `GRPC_XDS_BOOTSTRAP`
/// names).
pub fn grpc_bootstrap(o: &BootstrapOptions) -> String {
    let creds = match &o.tls {
        None => serde_json::json!([{"type": "insecure"}]),
        Some(t) => {
            let mut config = serde_json::json!({"ca_certificate_file": t.ca});
            if let Some((c, k)) = &t.cert_key {
                config["certificate_file"] = serde_json::json!(c);
                config["private_key_file"] = serde_json::json!(k);
            }
            serde_json::json!([{"type": "tls", "config": config}])
        }
    };
    let servers: Vec<serde_json::Value> = o
        .xds
        .iter()
        .map(|a| {
            serde_json::json!({
                "server_uri": a.to_string(),
                "channel_creds": creds,
                "server_features": ["xds_v3"],
            })
        })
        .collect();
    let doc = serde_json::json!({
        "xds_servers": servers,
        "node": {"id": o.node_id, "cluster": o.node_cluster, "locality": {}},
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_is_valid_envoy_yaml() {
        for delta in [false, true] {
            let y = envoy_bootstrap(&BootstrapOptions {
                node_id: "edge-1 \"quoted\"".into(),
                node_cluster: "edge".into(),
                xds: vec!["127.0.0.1:18000".parse().unwrap()],
                delta,
                admin: "127.0.0.1:9901".parse().unwrap(),
                tls: None,
            });
            // Parse it as Envoy would: the Bootstrap proto, unknown fields rejected.
            let desc = pylon::descriptor_pool()
                .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
                .unwrap();
            let de = serde_yaml::Deserializer::from_str(&y);
            let msg = prost_reflect::DynamicMessage::deserialize(desc, de).unwrap();
            let json = serde_json::to_value(&msg).unwrap();
            assert_eq!(json["node"]["id"], "edge-1 \"quoted\"");
            assert_eq!(
                json["dynamicResources"]["adsConfig"]["apiType"],
                if delta { "DELTA_GRPC" } else { "GRPC" }
            );
        }
    }

    fn with_tls(host: &str) -> BootstrapOptions {
        BootstrapOptions {
            node_id: "edge-1".into(),
            node_cluster: "edge".into(),
            xds: vec![format!("{host}:18000").parse().unwrap()],
            delta: true,
            admin: "127.0.0.1:9901".parse().unwrap(),
            tls: Some(ClientTlsFiles {
                ca: "/etc/pylon/ca.crt".into(),
                cert_key: Some(("/etc/pylon/edge.crt".into(), "/etc/pylon/edge.key".into())),
                sni: None,
            }),
        }
    }

    fn parse(y: &str) -> serde_json::Value {
        let desc = pylon::descriptor_pool()
            .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
            .unwrap();
        let msg =
            prost_reflect::DynamicMessage::deserialize(desc, serde_yaml::Deserializer::from_str(y))
                .unwrap();
        serde_json::to_value(&msg).unwrap()
    }

    #[test]
    fn tls_and_host_names_make_a_checked_dns_cluster() {
        let j = parse(&envoy_bootstrap(&with_tls("pylon-xds.example")));
        let c = &j["staticResources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        let ts = &c["transportSocket"]["typedConfig"];
        assert_eq!(ts["sni"], "pylon-xds.example");
        let common = &ts["commonTlsContext"];
        assert_eq!(common["alpnProtocols"][0], "h2");
        assert_eq!(
            common["tlsCertificates"][0]["privateKey"]["filename"],
            "/etc/pylon/edge.key"
        );
        let v = &common["validationContext"];
        assert_eq!(v["trustedCa"]["filename"], "/etc/pylon/ca.crt");
        assert_eq!(v["matchTypedSubjectAltNames"][0]["sanType"], "DNS");
        assert_eq!(
            v["matchTypedSubjectAltNames"][0]["matcher"]["exact"],
            "pylon-xds.example"
        );
        // An IP address: a STATIC cluster, and the SAN checked is an IP.
        let j = parse(&envoy_bootstrap(&with_tls("10.1.2.3")));
        let c = &j["staticResources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert_eq!(
            c["transportSocket"]["typedConfig"]["commonTlsContext"]["validationContext"]
                ["matchTypedSubjectAltNames"][0]["sanType"],
            "IP_ADDRESS"
        );
    }

    #[test]
    fn the_grpc_bootstrap_carries_a65_tls_credentials() {
        let j: serde_json::Value =
            serde_json::from_str(&grpc_bootstrap(&with_tls("pylon-xds.example"))).unwrap();
        let server = &j["xds_servers"][0];
        assert_eq!(server["server_uri"], "pylon-xds.example:18000");
        assert_eq!(server["server_features"][0], "xds_v3");
        let creds = &server["channel_creds"][0];
        assert_eq!(creds["type"], "tls");
        assert_eq!(creds["config"]["ca_certificate_file"], "/etc/pylon/ca.crt");
        assert_eq!(creds["config"]["certificate_file"], "/etc/pylon/edge.crt");
        assert_eq!(creds["config"]["private_key_file"], "/etc/pylon/edge.key");
        assert_eq!(j["node"]["id"], "edge-1");
        let plain = BootstrapOptions {
            tls: None,
            ..with_tls("127.0.0.1")
        };
        let j: serde_json::Value = serde_json::from_str(&grpc_bootstrap(&plain)).unwrap();
        assert_eq!(j["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
    }

    #[test]
    fn several_replicas_are_endpoints_of_one_cluster_and_several_grpc_servers() {
        let addrs = |s: &[&str]| {
            s.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<XdsAddress>>()
        };
        let mut o = BootstrapOptions {
            xds: addrs(&["127.0.0.1:18000", "127.0.0.2:18000", "[::1]:18001"]),
            tls: None,
            ..with_tls("127.0.0.1")
        };
        assert_eq!(o.check(), Ok(()));
        let j = parse(&envoy_bootstrap(&o));
        let c = &j["staticResources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        let eps: Vec<String> = c["loadAssignment"]["endpoints"][0]["lbEndpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let sa = &e["endpoint"]["address"]["socketAddress"];
                format!("{} {}", sa["address"].as_str().unwrap(), sa["portValue"])
            })
            .collect();
        assert_eq!(eps, ["127.0.0.1 18000", "127.0.0.2 18000", "::1 18001"]);
        let g: serde_json::Value = serde_json::from_str(&grpc_bootstrap(&o)).unwrap();
        let uris: Vec<&str> = g["xds_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["server_uri"].as_str().unwrap())
            .collect();
        assert_eq!(uris, ["127.0.0.1:18000", "127.0.0.2:18000", "[::1]:18001"]);
        // A host name among them: STRICT_DNS.
        o.xds = addrs(&["127.0.0.1:18000", "pylon-xds-1.example:18000"]);
        let j = parse(&envoy_bootstrap(&o));
        assert_eq!(j["staticResources"]["clusters"][0]["type"], "STRICT_DNS");
        // Over TLS, different hosts need one name to check.
        let tls = with_tls("127.0.0.1").tls;
        o.tls = tls.clone();
        let e = o.check().unwrap_err();
        assert!(e.contains("--tls-sni"), "{e}");
        o.tls = tls.map(|t| ClientTlsFiles {
            sni: Some("pylon-xds.example".into()),
            ..t
        });
        assert_eq!(o.check(), Ok(()));
        let j = parse(&envoy_bootstrap(&o));
        assert_eq!(
            j["staticResources"]["clusters"][0]["transportSocket"]["typedConfig"]["sni"],
            "pylon-xds.example"
        );
        o.xds.clear();
        assert!(o.check().is_err());
    }

    #[test]
    fn xds_addresses_parse_with_names_and_ipv6() {
        let a: XdsAddress = "[::1]:18000".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.to_string().as_str()),
            ("::1", 18000, "[::1]:18000")
        );
        assert!("localhost".parse::<XdsAddress>().is_err());
        assert!("localhost:http".parse::<XdsAddress>().is_err());
    }
}
