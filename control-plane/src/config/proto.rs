//! Envoy proto building blocks that both forms use: the ADS config source, an
//! EDS cluster over ADS, the defaults Pylon gives clusters and locality groups,
//! and packing a message in an `Any`.
//!
//! This file sits below `translate` (concise form), `native` (native form)
//! and `health_tls`, so that a resource gets the same shape whichever form it
//! was written in.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
    Locality,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;

/// `ads: {}` with `resource_api_version: V3`: fetch the resource over the same
/// ADS stream that delivered the resource naming it.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Makes `cluster` an EDS cluster whose endpoints come over ADS.
pub fn make_eds(cluster: &mut Cluster) {
    cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
    cluster.eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(ads_config_source()),
        service_name: String::new(),
    });
}

/// Makes a host removed from the cluster's endpoints leave it at once, even
/// while it passes active health checks. Envoy's default keeps such a host
/// (and sends it new connections) until a health check fails, so removing a
/// healthy backend from the YAML would not take it out of rotation.
/// `ignore_health_on_host_removal` is an Envoy field; gRPC clients ignore it.
pub fn drain_removed_hosts(cluster: &mut Cluster) {
    cluster.ignore_health_on_host_removal = true;
}

/// Gives every locality without a weight the weight 1, and an empty
/// `locality` to every group without one. gRPC's xDS client ignores
/// localities without a weight and rejects (NACKs) groups without a
/// `locality`, so either would leave gRPC clients with no endpoints while
/// Envoy works.
pub fn default_locality_weights(cla: &mut ClusterLoadAssignment) {
    for locality in &mut cla.endpoints {
        if locality.load_balancing_weight.is_none() {
            locality.load_balancing_weight = Some(UInt32Value { value: 1 });
        }
        if locality.locality.is_none() {
            locality.locality = Some(Locality::default());
        }
    }
}

/// `message` packed in an `Any` of type `type_url`.
pub fn pack(type_url: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;

    #[test]
    fn locality_weights_default_to_one() {
        let mut cla = ClusterLoadAssignment {
            endpoints: vec![
                LocalityLbEndpoints::default(),
                LocalityLbEndpoints {
                    load_balancing_weight: Some(UInt32Value { value: 7 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        default_locality_weights(&mut cla);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        assert_eq!(
            cla.endpoints[1].load_balancing_weight,
            Some(UInt32Value { value: 7 })
        );
    }
}
