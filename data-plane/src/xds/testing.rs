//! Test helpers: a recording [`ConfigSink`] and resource builders (model
//! types and the Envoy protos a control plane would send).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as PbLbPolicy},
    Cluster as PbCluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, AggregatedConfigSource,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, Listener as PbListener,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route as PbRoute, RouteAction as PbRouteAction,
    RouteConfiguration, RouteMatch, VirtualHost as PbVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy, TcpProxy as PbTcpProxy,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use pylon::type_url;
use tokio::sync::Notify;

use super::ConfigSink;
use crate::model::*;
use pylon::ResourceType;

/// One recorded sink call: the names it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Clusters(Vec<String>),
    LoadAssignments(Vec<String>),
    Listeners(Vec<String>),
    RouteConfigs(Vec<String>),
}

/// A [`ConfigSink`] that records calls and can be told to reject a type.
#[derive(Debug, Default)]
pub struct FakeSink {
    calls: Mutex<Vec<Call>>,
    reject: Mutex<HashMap<ResourceType, NackError>>,
    reject_named: Mutex<HashMap<ResourceType, NackError>>,
    unfit: Mutex<Vec<NackError>>,
    endpoints: Mutex<Vec<LoadAssignment>>,
    clusters: Mutex<Vec<Cluster>>,
    notify: Notify,
}

impl FakeSink {
    /// The calls so far, emptying the record.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Waits (up to 5 s) until `n` calls are recorded, then takes them.
    pub async fn wait_calls(&self, n: usize) -> Vec<Call> {
        self.wait_calls_within(n, Duration::from_secs(5)).await
    }

    /// Waits (up to `max`) until `n` calls are recorded, then takes them.
    pub async fn wait_calls_within(&self, n: usize, max: Duration) -> Vec<Call> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if self.calls.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(max, wait).await.is_err() {
            panic!(
                "timed out waiting for {n} sink calls; got {:?}",
                self.calls.lock().unwrap()
            );
        }
        self.take()
    }

    /// Makes the next calls for `kind` fail with `err`.
    pub fn reject(&self, kind: ResourceType, err: NackError) {
        self.reject.lock().unwrap().insert(kind, err);
    }

    /// Makes the next calls for `kind` that carry the resource `err` names
    /// fail with `err`.
    pub fn reject_named(&self, kind: ResourceType, err: NackError) {
        self.reject_named.lock().unwrap().insert(kind, err);
    }

    /// Makes [`ConfigSink::check`] refuse the resource `err` names.
    pub fn refuse_in_check(&self, err: NackError) {
        self.unfit.lock().unwrap().push(err);
    }

    /// Stops rejecting `kind`.
    pub fn accept(&self, kind: ResourceType) {
        self.reject.lock().unwrap().remove(&kind);
        self.reject_named.lock().unwrap().remove(&kind);
    }

    /// The last load assignments given.
    pub fn endpoints(&self) -> Vec<LoadAssignment> {
        self.endpoints.lock().unwrap().clone()
    }

    /// The last clusters given.
    pub fn clusters(&self) -> Vec<Cluster> {
        self.clusters.lock().unwrap().clone()
    }

    fn record(&self, kind: ResourceType, call: Call) -> Result<(), NackError> {
        if let Some(e) = self.reject.lock().unwrap().get(&kind) {
            return Err(e.clone());
        }
        let names = match &call {
            Call::Clusters(n)
            | Call::LoadAssignments(n)
            | Call::Listeners(n)
            | Call::RouteConfigs(n) => n,
        };
        if let Some(e) = self.reject_named.lock().unwrap().get(&kind) {
            if names.contains(&e.name) {
                return Err(e.clone());
            }
        }
        self.calls.lock().unwrap().push(call);
        self.notify.notify_waiters();
        Ok(())
    }
}

#[tonic::async_trait]
impl ConfigSink for FakeSink {
    async fn set_clusters(&self, v: Vec<Cluster>) -> Result<(), NackError> {
        let names = v.iter().map(|c| c.name.clone()).collect();
        self.record(ResourceType::Cluster, Call::Clusters(names))?;
        *self.clusters.lock().unwrap() = v;
        Ok(())
    }
    async fn set_load_assignments(&self, v: Vec<LoadAssignment>) -> Result<(), NackError> {
        let names = v.iter().map(|c| c.name.clone()).collect();
        self.record(ResourceType::Endpoint, Call::LoadAssignments(names))?;
        *self.endpoints.lock().unwrap() = v;
        Ok(())
    }
    async fn set_listeners(&self, v: Vec<Listener>) -> Result<(), NackError> {
        self.record(
            ResourceType::Listener,
            Call::Listeners(v.into_iter().map(|c| c.name).collect()),
        )
    }
    async fn set_route_configs(&self, v: Vec<RouteConfig>) -> Result<(), NackError> {
        self.record(
            ResourceType::Route,
            Call::RouteConfigs(v.into_iter().map(|c| c.name).collect()),
        )
    }
    fn check(&self, resource: &Decoded) -> Result<(), NackError> {
        match self
            .unfit
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.name == resource.name())
        {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

// Model builders.

/// An EDS cluster whose service name is its name.
pub fn eds(name: &str) -> Cluster {
    Cluster::new(
        name,
        Discovery::Eds {
            service_name: name.into(),
        },
    )
}

/// A load assignment with `n` loopback endpoints (ports 8081..).
pub fn cla(name: &str, n: u16) -> LoadAssignment {
    LoadAssignment {
        name: name.into(),
        endpoints: (0..n)
            .map(|i| Endpoint {
                addr: ([127, 0, 0, 1], 8081 + i).into(),
                weight: 1,
            })
            .collect(),
    }
}

/// A TCP proxy listener on 127.0.0.1:6443 to `cluster`.
pub fn tcp(name: &str, cluster: &str) -> Listener {
    Listener {
        name: name.into(),
        addr: ([127, 0, 0, 1], 6443).into(),
        kind: ListenerKind::Tcp(TcpProxy {
            stat_prefix: name.into(),
            cluster: cluster.into(),
            max_connect_attempts: 1,
            idle_timeout: Some(Duration::from_secs(3600)),
        }),
    }
}

/// An HTTP listener on 127.0.0.1:8000 whose routes come over RDS as `routes`.
pub fn http_rds(name: &str, routes: &str) -> Listener {
    Listener {
        name: name.into(),
        addr: ([127, 0, 0, 1], 8000).into(),
        kind: ListenerKind::Http(HttpManager {
            stat_prefix: name.into(),
            routes: RouteSource::Rds(routes.into()),
            limits: Default::default(),
            normalize_path: false,
            merge_slashes: false,
        }),
    }
}

/// One virtual host `*` routing `/` to `cluster`.
pub fn route_config(name: &str, cluster: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                path: PathMatch::Prefix("/".into()),
                action: RouteAction {
                    cluster: cluster.into(),
                    prefix_rewrite: None,
                    timeout: Some(Duration::from_secs(15)),
                    retry_policy: None,
                    per_request_buffer_limit_bytes: None,
                },
            }],
            retry_policy: None,
            per_request_buffer_limit_bytes: None,
        }],
    }
}

// Proto builders (what a control plane sends).

fn pack(url: &str, m: &impl Message) -> Any {
    Any {
        type_url: url.into(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

fn sock(port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

/// An EDS cluster over ADS.
pub fn pb_eds(name: &str) -> Any {
    pb_cluster(PbCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..Default::default()
    })
}

/// A STATIC cluster with loopback endpoints on `ports`.
pub fn pb_static(name: &str, ports: &[u16]) -> Any {
    let cla = ClusterLoadAssignment::decode(pb_cla(name, ports).value.as_slice()).unwrap();
    pb_cluster(PbCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(cla),
        ..Default::default()
    })
}

/// A cluster the client must reject (MAGLEV).
pub fn pb_maglev(name: &str) -> Any {
    pb_cluster(PbCluster {
        name: name.into(),
        lb_policy: PbLbPolicy::Maglev as i32,
        ..Default::default()
    })
}

pub fn pb_cluster(c: PbCluster) -> Any {
    pack(type_url::CLUSTER, &c)
}

/// A load assignment with loopback endpoints on `ports`.
pub fn pb_cla(name: &str, ports: &[u16]) -> Any {
    pack(
        type_url::ENDPOINT,
        &ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: ports
                    .iter()
                    .map(|&p| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(PbEndpoint {
                            address: sock(p),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

/// A tcp_proxy listener on 127.0.0.1:6443 to `cluster`.
pub fn pb_tcp(name: &str, cluster: &str) -> Any {
    let config = PbTcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    pb_listener(name, 6443, pack(type_url::TCP_PROXY, &config))
}

/// An HTTP listener on 127.0.0.1:8000 with routes `routes` over RDS.
pub fn pb_http_rds(name: &str, routes: &str) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: routes.into(),
        })),
        http_filters: vec![HttpFilter {
            name: type_url::ROUTER_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                type_url::ROUTER,
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pb_listener(name, 8000, pack(type_url::HTTP_CONNECTION_MANAGER, &hcm))
}

fn pb_listener(name: &str, port: u16, config: Any) -> Any {
    let filter_name = if config.type_url == type_url::TCP_PROXY {
        type_url::TCP_PROXY_FILTER
    } else {
        type_url::HCM_FILTER
    };
    pack(
        type_url::LISTENER,
        &PbListener {
            name: name.into(),
            address: sock(port),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: filter_name.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(config)),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

/// A listener without an address (rejected: `listener <name>: address is required`).
pub fn pb_bad_listener(name: &str) -> Any {
    pack(
        type_url::LISTENER,
        &PbListener {
            name: name.into(),
            ..Default::default()
        },
    )
}

/// One virtual host `*` routing `/` to `cluster`.
pub fn pb_routes(name: &str, cluster: &str) -> Any {
    pack(
        type_url::ROUTE,
        &RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![PbVirtualHost {
                name: name.into(),
                domains: vec!["*".into()],
                routes: vec![PbRoute {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(PbRouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            cluster.into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}
