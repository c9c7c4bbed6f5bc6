//! Secret material written inline in Envoy resources: finding it (validation
//! refuses it unless `--allow-inline-secrets`) and redacting it (CSDS never
//! shows it, whatever the validation allowed).
//!
//! A resource pylon-xds serves is sent to every node selected for it and is
//! readable over CSDS, so a private key written into it travels to places it
//! should not. The secrets are the TLS contexts' private keys, PKCS #12
//! bundles, key passwords and session ticket keys, when given as
//! `inline_string` or `inline_bytes`; a `filename:` (read on the proxy's
//! host) or an `environment_variable:` is fine. The TLS contexts are found in
//! a cluster's `transport_socket` and `transport_socket_matches`, and in a
//! listener's filter chains (and its default one).
//!
//! This module works on protos only: it knows no YAML (`config` turns what
//! it finds into positioned errors) and no gRPC (`server::csds` redacts).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    downstream_tls_context::SessionTicketKeysType, CommonTlsContext, DownstreamTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// What replaces a secret in what CSDS shows.
pub const REDACTED: &str = "[redacted by pylon-xds]";

/// Inline secrets of `cluster`: the path of each (from the cluster, like
/// `transport_socket.typed_config.common_tls_context.tls_certificates[0].private_key`).
pub fn in_cluster(cluster: &Cluster) -> Vec<String> {
    let mut found = Vec::new();
    let mut c = cluster.clone();
    visit_cluster(&mut c, &mut |path, _| found.push(path));
    found
}

/// Inline secrets of `listener`, as [`in_cluster`].
pub fn in_listener(listener: &Listener) -> Vec<String> {
    let mut found = Vec::new();
    let mut l = listener.clone();
    visit_listener(&mut l, &mut |path, _| found.push(path));
    found
}

/// The encoded cluster or listener `any` with every inline secret replaced by
/// [`REDACTED`]; `None` when it holds none (or is another type).
pub fn redacted(any: &Any) -> Option<Any> {
    let mut changed = false;
    let mut redact = |_: String, ds: &mut DataSource| {
        ds.specifier = Some(Specifier::InlineString(REDACTED.to_string()));
        changed = true;
    };
    let value = match any.type_url.as_str() {
        pylon::type_url::CLUSTER => {
            let mut c = Cluster::decode(any.value.as_slice()).ok()?;
            visit_cluster(&mut c, &mut redact);
            c.encode_to_vec()
        }
        pylon::type_url::LISTENER => {
            let mut l = Listener::decode(any.value.as_slice()).ok()?;
            visit_listener(&mut l, &mut redact);
            l.encode_to_vec()
        }
        _ => return None,
    };
    changed.then(|| Any {
        type_url: any.type_url.clone(),
        value,
    })
}

type Visitor<'a> = dyn FnMut(String, &mut DataSource) + 'a;

fn visit_cluster(c: &mut Cluster, f: &mut Visitor<'_>) {
    if let Some(ts) = &mut c.transport_socket {
        socket(ts, "transport_socket", f);
    }
    for (i, m) in c.transport_socket_matches.iter_mut().enumerate() {
        if let Some(ts) = &mut m.transport_socket {
            socket(
                ts,
                &format!("transport_socket_matches[{i}].transport_socket"),
                f,
            );
        }
    }
}

fn visit_listener(l: &mut Listener, f: &mut Visitor<'_>) {
    for (i, chain) in l.filter_chains.iter_mut().enumerate() {
        if let Some(ts) = &mut chain.transport_socket {
            socket(ts, &format!("filter_chains[{i}].transport_socket"), f);
        }
    }
    if let Some(ts) = l
        .default_filter_chain
        .as_mut()
        .and_then(|c| c.transport_socket.as_mut())
    {
        socket(ts, "default_filter_chain.transport_socket", f);
    }
}

/// A transport socket's TLS context, decoded, visited and encoded back (only
/// re-encoded when `f` changed something, so the bytes of a resource without
/// secrets are never touched).
fn socket(ts: &mut TransportSocket, path: &str, f: &mut Visitor<'_>) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &mut ts.config_type else {
        return;
    };
    let path = format!("{path}.typed_config");
    let mut touched = false;
    let mut g = |p: String, ds: &mut DataSource| {
        touched = true;
        f(p, ds);
    };
    match any.type_url.as_str() {
        UPSTREAM_TLS => {
            let Ok(mut ctx) = UpstreamTlsContext::decode(any.value.as_slice()) else {
                return;
            };
            if let Some(common) = &mut ctx.common_tls_context {
                common_tls(common, &format!("{path}.common_tls_context"), &mut g);
            }
            if touched {
                any.value = ctx.encode_to_vec();
            }
        }
        DOWNSTREAM_TLS => {
            let Ok(mut ctx) = DownstreamTlsContext::decode(any.value.as_slice()) else {
                return;
            };
            if let Some(common) = &mut ctx.common_tls_context {
                common_tls(common, &format!("{path}.common_tls_context"), &mut g);
            }
            if let Some(SessionTicketKeysType::SessionTicketKeys(keys)) =
                &mut ctx.session_ticket_keys_type
            {
                for (i, k) in keys.keys.iter_mut().enumerate() {
                    inline(k, format!("{path}.session_ticket_keys.keys[{i}]"), &mut g);
                }
            }
            if touched {
                any.value = ctx.encode_to_vec();
            }
        }
        _ => {}
    }
}

fn common_tls(common: &mut CommonTlsContext, path: &str, f: &mut Visitor<'_>) {
    for (i, cert) in common.tls_certificates.iter_mut().enumerate() {
        let at = format!("{path}.tls_certificates[{i}]");
        for (name, ds) in [
            ("private_key", cert.private_key.as_mut()),
            ("pkcs12", cert.pkcs12.as_mut()),
            ("password", cert.password.as_mut()),
        ] {
            if let Some(ds) = ds {
                inline(ds, format!("{at}.{name}"), f);
            }
        }
    }
}

fn inline(ds: &mut DataSource, path: String, f: &mut Visitor<'_>) {
    if matches!(
        ds.specifier,
        Some(Specifier::InlineBytes(_) | Specifier::InlineString(_))
    ) {
        f(path, ds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;

    fn tls_socket(key: Specifier) -> TransportSocket {
        let ctx = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: Some(DataSource {
                        specifier: Some(Specifier::InlineString(
                            "-----BEGIN CERTIFICATE-----".into(),
                        )),
                        ..Default::default()
                    }),
                    private_key: Some(DataSource {
                        specifier: Some(key),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: UPSTREAM_TLS.into(),
                value: ctx.encode_to_vec(),
            })),
        }
    }

    #[test]
    fn inline_private_keys_are_found_and_redacted() {
        let secret = "-----BEGIN PRIVATE KEY-----\nMIIE...";
        let c = Cluster {
            name: "c".into(),
            transport_socket_matches: vec![TransportSocketMatch {
                name: "hc".into(),
                transport_socket: Some(tls_socket(Specifier::InlineString(secret.into()))),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            in_cluster(&c),
            ["transport_socket_matches[0].transport_socket.typed_config.common_tls_context.tls_certificates[0].private_key"]
        );
        let any = Any {
            type_url: pylon::type_url::CLUSTER.into(),
            value: c.encode_to_vec(),
        };
        let r = redacted(&any).unwrap();
        let text = String::from_utf8_lossy(&r.value);
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{text}");
        assert!(text.contains(REDACTED));
        // The certificate (not a secret) is left as it was.
        assert!(text.contains("BEGIN CERTIFICATE"));
        assert!(in_cluster(&Cluster::decode(r.value.as_slice()).unwrap()).len() == 1);
    }

    #[test]
    fn files_and_environment_variables_are_not_secrets_inline() {
        for key in [
            Specifier::Filename("/etc/envoy/tls.key".into()),
            Specifier::EnvironmentVariable("TLS_KEY".into()),
        ] {
            let c = Cluster {
                transport_socket: Some(tls_socket(key)),
                ..Default::default()
            };
            assert!(in_cluster(&c).is_empty());
            let any = Any {
                type_url: pylon::type_url::CLUSTER.into(),
                value: c.encode_to_vec(),
            };
            assert_eq!(redacted(&any), None);
        }
    }
}
