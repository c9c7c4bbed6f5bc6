//! What a concise `https` health check becomes: the check runs over TLS while
//! proxied connections stay TCP passthrough.
//!
//! Envoy picks a cluster's transport socket per connection: proxied
//! connections by the endpoint's metadata, health checks by the check's
//! `transport_socket_match_criteria`. So the cluster gets one
//! `transport_socket_matches` entry whose `match` is a key no endpoint
//! carries ([`MATCH_KEY`]), holding an `UpstreamTlsContext` (`sni`, and the
//! CA as a `filename` on the proxy's host, never inline), and the check names
//! that key in its criteria. The cluster's own `transport_socket` stays
//! unset (plain TCP).
//!
//! This file owns that shape and the checks of an `https` block; pylon-xds
//! never reads the CA file (it lives on the proxy's host).

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};

use super::issue::Issue;
use super::proto::pack;
use super::schema::HttpsCheck;

/// The match key of the TLS entry; no endpoint carries it, so only the
/// health check selects the entry.
pub const MATCH_KEY: &str = "pylon.health_check";
/// Its value.
pub const MATCH_VALUE: &str = "tls";
/// The entry's name (Envoy names its stats after it).
pub const ENTRY_NAME: &str = "health-check-tls";

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// `{pylon.health_check: tls}`: the entry's `match`, and the check's criteria.
pub fn match_criteria() -> Struct {
    Struct {
        fields: [(
            MATCH_KEY.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(MATCH_VALUE.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// The cluster's `transport_socket_matches` entry for `https`.
pub fn socket_match(https: &HttpsCheck) -> TransportSocketMatch {
    let validation_context_type = https.ca.as_ref().map(|ca| {
        ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(ca.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let context = UpstreamTlsContext {
        common_tls_context: validation_context_type.map(|v| CommonTlsContext {
            validation_context_type: Some(v),
            ..Default::default()
        }),
        sni: https.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocketMatch {
        name: ENTRY_NAME.to_string(),
        r#match: Some(match_criteria()),
        transport_socket: Some(TransportSocket {
            name: TLS_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
                UPSTREAM_TLS,
                &context,
            ))),
        }),
    }
}

/// Exactly one of `ca` (an absolute path) and `insecure_skip_verify: true`;
/// `sni`, when given, a host name.
pub fn validate(https: &HttpsCheck, path: &str, issues: &mut Vec<Issue>) {
    match (&https.ca, https.insecure_skip_verify) {
        (None, false) => issues.push(Issue::new(
            path,
            "an https health check needs `ca: /path/to/ca.crt` (the CA file on the proxy's host) \
             or `insecure_skip_verify: true`",
        )),
        (Some(_), true) => issues.push(Issue::new(
            format!("{path}.insecure_skip_verify"),
            "`ca` and `insecure_skip_verify: true` contradict each other; keep one",
        )),
        (Some(ca), false) if !ca.starts_with('/') => issues.push(Issue::new(
            format!("{path}.ca"),
            format!(
                "`{ca}` is not an absolute path: the proxy reads the CA file from its own \
                 host, whatever its working directory"
            ),
        )),
        _ => {}
    }
    if let Some(sni) = &https.sni {
        let ok = !sni.is_empty()
            && sni.len() <= 253
            && sni
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            issues.push(Issue::new(
                format!("{path}.sni"),
                format!("sni `{sni}` is not a host name"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use prost::Message;

    fn errors(text: &str) -> String {
        match load_str("pylon.yaml", text) {
            Ok(_) => "loaded".to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn https_check_becomes_a_tls_entry_only_the_check_selects() {
        let r = load_str(
            "pylon.yaml",
            "clusters:\n- name: api\n  health_check:\n    https: {path: /readyz, ca: /etc/pylon/ca.crt, sni: kubernetes}\n  endpoints: [127.0.0.1:6443]\n",
        )
        .unwrap();
        let c = &r.clusters[0];
        assert!(c.transport_socket.is_none(), "proxied traffic stays plain");
        assert_eq!(c.transport_socket_matches.len(), 1);
        let m = &c.transport_socket_matches[0];
        assert_eq!(m.name, ENTRY_NAME);
        assert_eq!(m.r#match, Some(match_criteria()));
        let hc = &c.health_checks[0];
        assert_eq!(hc.transport_socket_match_criteria, Some(match_criteria()));
        let Some(
            envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker::HttpHealthCheck(
                http,
            ),
        ) = &hc.health_checker
        else {
            panic!("not an HTTP check: {hc:?}")
        };
        assert_eq!(http.path, "/readyz");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = m
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            panic!("no typed_config")
        };
        assert_eq!(any.type_url, UPSTREAM_TLS);
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(ctx.sni, "kubernetes");
        let Some(ValidationContextType::ValidationContext(v)) = ctx
            .common_tls_context
            .and_then(|c| c.validation_context_type)
        else {
            panic!("no validation context")
        };
        assert_eq!(
            v.trusted_ca.and_then(|d| d.specifier),
            Some(data_source::Specifier::Filename(
                "/etc/pylon/ca.crt".to_string()
            ))
        );

        // insecure_skip_verify: no validation context at all, no SNI.
        let r = load_str(
            "pylon.yaml",
            "clusters:\n- name: api\n  health_check:\n    https: {path: /readyz, insecure_skip_verify: true}\n  endpoints: [127.0.0.1:6443]\n",
        )
        .unwrap();
        let m = &r.clusters[0].transport_socket_matches[0];
        let Some(transport_socket::ConfigType::TypedConfig(any)) = m
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            panic!("no typed_config")
        };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(ctx, UpstreamTlsContext::default());
    }

    #[test]
    fn https_check_errors_are_positioned() {
        let table = [
            (
                "clusters:\n- name: a\n  health_check:\n    https: {path: /readyz}\n",
                "pylon.yaml:4:12: clusters[0].health_check.https: an https health check needs `ca: /path/to/ca.crt` (the CA file on the proxy's host) or `insecure_skip_verify: true`",
            ),
            (
                "clusters:\n- name: a\n  health_check:\n    https: {path: /readyz, ca: ca.crt}\n",
                "pylon.yaml:4:32: clusters[0].health_check.https.ca: `ca.crt` is not an absolute path: the proxy reads the CA file from its own host, whatever its working directory",
            ),
            (
                "clusters:\n- name: a\n  health_check:\n    https: {path: /readyz, ca: /ca.crt, insecure_skip_verify: true}\n",
                "pylon.yaml:4:63: clusters[0].health_check.https.insecure_skip_verify: `ca` and `insecure_skip_verify: true` contradict each other; keep one",
            ),
            (
                "clusters:\n- name: a\n  health_check:\n    tcp: {}\n    https: {path: readyz, insecure_skip_verify: true, sni: 'a b'}\n",
                "pylon.yaml:3:3: clusters[0].health_check: health check has both `tcp` and `https`; keep one\n\
                 pylon.yaml:5:19: clusters[0].health_check.https.path: health check path must start with `/`\n\
                 pylon.yaml:5:60: clusters[0].health_check.https.sni: sni `a b` is not a host name",
            ),
            (
                "clusters:\n- name: a\n  health_check:\n    https: {path: /, insecure_skip_verify: true, verify: false}\n",
                "pylon.yaml:4:50: clusters[0].health_check.https.verify: unknown field `verify`, expected one of `path`, `host`, `expected_statuses`, `ca`, `insecure_skip_verify`, `sni`",
            ),
        ];
        for (text, want) in table {
            assert_eq!(errors(text), want, "{text}");
        }
    }
}
