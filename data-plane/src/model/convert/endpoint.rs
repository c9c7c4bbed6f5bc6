//! `envoy.config.endpoint.v3.ClusterLoadAssignment` -> [`LoadAssignment`]
//! (EDS, and a STATIC cluster's inline `load_assignment`).
//!
//! Localities are flattened: their hosts form one list, locality and locality
//! weights are not used. Priorities other than 0 are rejected, because
//! flattening them would send traffic to failover hosts.

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment::Policy, lb_endpoint::HostIdentifier, ClusterLoadAssignment,
    Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use envoy_types::pb::envoy::config::core::v3::{Address, Metadata};

use super::{reject_set, required_name, socket_addr, Check};
use crate::model::{Endpoint, LoadAssignment, NackError};

/// The metadata key under which Envoy matches an endpoint to a cluster's
/// `transport_socket_matches`.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

impl TryFrom<&ClusterLoadAssignment> for LoadAssignment {
    type Error = NackError;

    fn try_from(cla: &ClusterLoadAssignment) -> Result<Self, NackError> {
        let convert = || {
            required_name(&cla.cluster_name)?;
            endpoints("", cla)
        };
        match convert() {
            Ok(endpoints) => Ok(LoadAssignment {
                name: cla.cluster_name.clone(),
                endpoints,
            }),
            Err(message) => Err(NackError {
                kind: Some(pylon::ResourceType::Endpoint),
                name: cla.cluster_name.clone(),
                message,
            }),
        }
    }
}

/// The usable endpoints of `cla`, flattened across localities. Endpoints
/// whose EDS `health_status` is UNHEALTHY, DRAINING or TIMEOUT are skipped
/// (Envoy treats all three as unhealthy); UNKNOWN, HEALTHY and DEGRADED are
/// used. `p` prefixes field paths in messages.
pub(super) fn endpoints(p: &str, cla: &ClusterLoadAssignment) -> Check<Vec<Endpoint>> {
    Ok(endpoints_with(p, cla, socket_addr)?
        .into_iter()
        .map(|(addr, weight)| Endpoint { addr, weight })
        .collect())
}

/// Like [`endpoints`], with each endpoint's address converted by `address`
/// (called with the field path prefix, the field name and the field), paired
/// with its weight. A DNS cluster takes host names where EDS takes IPs.
pub(super) fn endpoints_with<T>(
    p: &str,
    cla: &ClusterLoadAssignment,
    address: impl Fn(&str, &str, &Option<Address>) -> Check<T>,
) -> Check<Vec<(T, u32)>> {
    let ClusterLoadAssignment {
        // The caller names the assignment (for an inline one, the cluster).
        cluster_name: _,
        endpoints,
        named_endpoints,
        policy,
    } = cla;
    reject_set!(p; named_endpoints);
    if let Some(policy) = policy {
        let Policy {
            drop_overloads,
            // Spill-over between priorities and localities, which are not used.
            overprovisioning_factor: _,
            weighted_priority_health: _,
            endpoint_stale_after,
        } = policy;
        let p = format!("{p}policy.");
        reject_set!(&p; drop_overloads, endpoint_stale_after);
    }
    let mut out = Vec::new();
    for (i, locality) in endpoints.iter().enumerate() {
        let LocalityLbEndpoints {
            // Flattened: locality and weight are not used.
            locality: _,
            metadata,
            load_balancing_weight: _,
            lb_endpoints,
            priority,
            proximity,
            lb_config,
        } = locality;
        let p = format!("{p}endpoints[{i}].");
        reject_set!(&p; priority, proximity, lb_config);
        no_transport_socket_match(&p, metadata)?;
        for (j, lb) in lb_endpoints.iter().enumerate() {
            if let Some(e) = lb_endpoint(&format!("{p}lb_endpoints[{j}]."), lb, &address)? {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Envoy picks a cluster's `transport_socket_matches` entry for proxied
/// connections by this metadata; pylon-proxy keeps those connections plain,
/// so it refuses what would make Envoy use TLS for them.
fn no_transport_socket_match(p: &str, metadata: &Option<Metadata>) -> Check<()> {
    let set = metadata.as_ref().is_some_and(|m| {
        m.filter_metadata.contains_key(TRANSPORT_SOCKET_MATCH)
            || m.typed_filter_metadata.contains_key(TRANSPORT_SOCKET_MATCH)
    });
    if set {
        Err(format!(
            "{p}metadata.{TRANSPORT_SOCKET_MATCH} is not supported (proxied connections are plain TCP)"
        ))
    } else {
        Ok(())
    }
}

fn lb_endpoint<T>(
    p: &str,
    lb: &LbEndpoint,
    address: impl Fn(&str, &str, &Option<Address>) -> Check<T>,
) -> Check<Option<(T, u32)>> {
    let LbEndpoint {
        health_status,
        // Read by filters pylon-proxy does not have (but see below).
        metadata,
        load_balancing_weight,
        host_identifier,
    } = lb;
    let endpoint = match host_identifier {
        None => return Err(format!("{p}endpoint is required")),
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(format!("{p}endpoint_name is not supported"))
        }
        Some(HostIdentifier::Endpoint(e)) => e,
    };
    let PbEndpoint {
        address: address_field,
        health_check_config,
        // Used for SNI/host rewrite and in admin output only.
        hostname: _,
        additional_addresses,
        // Observability only.
        observability_name: _,
    } = endpoint;
    no_transport_socket_match(p, metadata)?;
    let ep = format!("{p}endpoint.");
    reject_set!(&ep; health_check_config, additional_addresses);
    let addr = address(&ep, "address", address_field)?;
    let weight = match load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(format!("{p}load_balancing_weight must be at least 1"))
        }
        Some(w) => w.value,
    };
    let skip = matches!(
        HealthStatus::try_from(*health_status),
        Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
    );
    Ok((!skip).then_some((addr, weight)))
}
