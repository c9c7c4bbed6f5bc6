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

use super::{reject_set, required_name, socket_addr, Check};
use crate::model::{Endpoint, LoadAssignment, NackError};

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
                kind: "load assignment",
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
            // Flattened: locality, its metadata and weight are not used.
            locality: _,
            metadata: _,
            load_balancing_weight: _,
            lb_endpoints,
            priority,
            proximity,
            lb_config,
        } = locality;
        let p = format!("{p}endpoints[{i}].");
        reject_set!(&p; priority, proximity, lb_config);
        for (j, lb) in lb_endpoints.iter().enumerate() {
            if let Some(e) = lb_endpoint(&format!("{p}lb_endpoints[{j}]."), lb)? {
                out.push(e);
            }
        }
    }
    Ok(out)
}

fn lb_endpoint(p: &str, lb: &LbEndpoint) -> Check<Option<Endpoint>> {
    let LbEndpoint {
        health_status,
        // Read by filters pylon-proxy does not have.
        metadata: _,
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
        address,
        health_check_config,
        // Used for SNI/host rewrite and in admin output only.
        hostname: _,
        additional_addresses,
        // Observability only.
        observability_name: _,
    } = endpoint;
    let ep = format!("{p}endpoint.");
    reject_set!(&ep; health_check_config, additional_addresses);
    let addr = socket_addr(&ep, "address", address)?;
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
    Ok((!skip).then_some(Endpoint { addr, weight }))
}
