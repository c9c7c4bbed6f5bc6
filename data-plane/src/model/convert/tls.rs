//! A cluster's transport sockets -> the TLS its health check runs over.
//!
//! pylon-proxy's proxied connections are plain TCP, so TLS is accepted only
//! where Envoy would use it for health checks alone: a
//! `transport_socket_matches` entry with a non-empty `match` (so no endpoint
//! selects it: endpoint metadata under `envoy.transport_socket_match` is
//! refused in `endpoint`), picked by the health check's
//! `transport_socket_match_criteria` as Envoy picks it (the first entry whose
//! `match` pairs all appear, with equal values, in the criteria). The
//! cluster's own `transport_socket` may only be plain (`raw_buffer`).
//!
//! Of an `UpstreamTlsContext`, `sni` and
//! `common_tls_context.validation_context.trusted_ca.filename` are honoured;
//! any other field set is refused by name. The CA file is read here, so a
//! missing or unreadable file NACKs the cluster as it does on Envoy.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Struct;
use prost::Message;

use super::{reject_set, Check};
use crate::model::{TrustedCa, UpstreamTls};

const TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// A validated `transport_socket_matches` entry: its `match` and, for a TLS
/// socket, the TLS settings (`None`: plain).
#[derive(Debug)]
pub(super) struct SocketMatch {
    labels: Struct,
    tls: Option<UpstreamTls>,
}

/// Checks the cluster's `transport_socket` (plain only) and its
/// `transport_socket_matches`, returning the entries for health checks to pick from.
pub(super) fn socket_matches(
    transport_socket: &Option<TransportSocket>,
    matches: &[TransportSocketMatch],
) -> Check<Vec<SocketMatch>> {
    if let Some(ts) = transport_socket {
        if socket("transport_socket.", ts)?.is_some() {
            return Err(
                "transport_socket: TLS to proxied connections is not supported \
                 (TLS is for health checks only, through transport_socket_matches)"
                    .to_string(),
            );
        }
    }
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let TransportSocketMatch {
                // Names the entry's stats, which pylon-proxy does not keep.
                name: _,
                r#match,
                transport_socket,
            } = m;
            let p = format!("transport_socket_matches[{i}].");
            let labels = r#match.clone().unwrap_or_default();
            if labels.fields.is_empty() {
                return Err(format!(
                    "{p}match: an empty match applies to every endpoint's proxied \
                     connections, which pylon-proxy keeps plain; give it a key that \
                     only a health check's transport_socket_match_criteria names"
                ));
            }
            let tls = match transport_socket {
                None => None,
                Some(ts) => socket(&format!("{p}transport_socket."), ts)?,
            };
            Ok(SocketMatch { labels, tls })
        })
        .collect()
}

/// The TLS a health check with `criteria` runs over: that of the first
/// entry whose labels all appear in `criteria`; none matching (or no
/// criteria) means the cluster's plain socket.
pub(super) fn health_check_tls(
    criteria: &Option<Struct>,
    matches: &[SocketMatch],
) -> Option<UpstreamTls> {
    let criteria = criteria.as_ref()?;
    matches
        .iter()
        .find(|m| {
            m.labels
                .fields
                .iter()
                .all(|(k, v)| criteria.fields.get(k) == Some(v))
        })
        .and_then(|m| m.tls.clone())
}

/// A transport socket: `None` for `raw_buffer`, the TLS settings for `tls`.
fn socket(p: &str, ts: &TransportSocket) -> Check<Option<UpstreamTls>> {
    let TransportSocket {
        // The socket is chosen by the type of `typed_config`.
        name: _,
        config_type,
    } = ts;
    let Some(transport_socket::ConfigType::TypedConfig(any)) = config_type else {
        return Err(format!("{p}typed_config is required"));
    };
    match any.type_url.as_str() {
        RAW_BUFFER => Ok(None),
        TLS => {
            let ctx = UpstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| format!("{p}typed_config does not decode: {e}"))?;
            upstream_tls(&format!("{p}typed_config."), &ctx).map(Some)
        }
        other => Err(format!("{p}typed_config {other} is not supported")),
    }
}

fn upstream_tls(p: &str, ctx: &UpstreamTlsContext) -> Check<UpstreamTls> {
    let UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        // Session resumption only saves handshake work.
        max_session_keys: _,
        enforce_rsa_key_usage,
    } = ctx;
    reject_set!(p;
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        enforce_rsa_key_usage,
    );
    let trusted_ca = match common_tls_context {
        None => None,
        Some(c) => common(&format!("{p}common_tls_context."), c)?,
    };
    Ok(UpstreamTls {
        sni: (!sni.is_empty()).then(|| sni.clone()),
        trusted_ca,
    })
}

fn common(p: &str, c: &CommonTlsContext) -> Check<Option<TrustedCa>> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = c;
    reject_set!(p;
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
    );
    match validation_context_type {
        None => Ok(None),
        Some(ValidationContextType::ValidationContext(v)) => {
            validation(&format!("{p}validation_context."), v)
        }
        Some(_) => Err(format!(
            "{p}only validation_context (with trusted_ca) is supported"
        )),
    }
}

fn validation(p: &str, v: &CertificateValidationContext) -> Check<Option<TrustedCa>> {
    let CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        // A server-side setting: no effect on a client.
        suppress_client_ca_list: _,
    } = v;
    reject_set!(p;
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
    );
    let Some(DataSource {
        watched_directory,
        specifier,
    }) = trusted_ca
    else {
        // Envoy verifies nothing without a CA.
        return Ok(None);
    };
    let p = format!("{p}trusted_ca.");
    reject_set!(&p; watched_directory);
    let filename = match specifier {
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => f,
        _ => {
            return Err(format!(
                "{p}only filename is supported (a CA file on the proxy's host)"
            ))
        }
    };
    let ca = TrustedCa::read(filename).map_err(|e| format!("{p}filename: {e}"))?;
    Ok(Some(ca))
}
