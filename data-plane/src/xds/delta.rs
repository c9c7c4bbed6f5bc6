//! The incremental (delta) side of one ADS stream.
//!
//! The first request of each type carries `initial_resource_versions`: what
//! the client holds (name -> version) from before a reconnect, so the server
//! sends only what changed. CDS and LDS are subscribed as wildcards (empty
//! `resource_names_subscribe`, as Envoy does); EDS and RDS by name, with
//! later changes sent as subscribe/unsubscribe diffs. An ACK or NACK carries
//! only the nonce (and, for a NACK, `error_detail`).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tracing::{debug, warn};

use pylon::{PerType, ResourceType};

use super::store::Update;
use super::{error_detail, sort_resources, ClientState, Item, Protocol};
use crate::model::NackError;

/// Per-stream delta state.
#[derive(Debug)]
pub(super) struct DeltaStream {
    /// Sent in the first request only.
    node: Option<Node>,
    /// Names subscribed to on this stream for EDS and RDS; `None` before the
    /// first request of that type.
    subscribed: PerType<Option<BTreeSet<String>>>,
}

impl DeltaStream {
    pub(super) fn new(node: Node) -> Self {
        DeltaStream {
            node: Some(node),
            subscribed: Default::default(),
        }
    }

    fn request(&mut self, kind: ResourceType) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: kind.type_url().to_string(),
            ..Default::default()
        }
    }

    /// Decodes a response into the update to apply and the rejected
    /// resources.
    fn decode(
        kind: ResourceType,
        resp: &DeltaDiscoveryResponse,
        cs: &ClientState,
    ) -> (Update, Vec<NackError>) {
        let mut items = Vec::with_capacity(resp.resources.len());
        for r in &resp.resources {
            let Resource {
                name,
                version,
                resource,
                // xdstp names, VHDS aliases and response metadata: unused.
                resource_name: _,
                aliases: _,
                cache_control: _,
                metadata: _,
                // Resource TTLs are not implemented: a resource stays until
                // removed (the server's heartbeats are harmless).
                ttl: _,
            } = r;
            let Some(any) = resource else {
                // A resource without a body only refreshes a TTL, which
                // pylon-proxy does not use.
                debug!(r#type = kind.short(), name = %name, "resource without a body; ignored");
                continue;
            };
            let Some(mut item) = Item::decode(kind, any, Some(name), version) else {
                continue;
            };
            if let Ok(d) = &item.result {
                if d.name() != name {
                    item.result = Err(NackError {
                        kind: Some(kind),
                        name: d.name().to_string(),
                        message: format!("sent under the name {name:?}"),
                    });
                    item.name = (!name.is_empty()).then(|| name.clone());
                }
            }
            items.push(item);
        }
        let removed = resp
            .removed_resources
            .iter()
            .cloned()
            .chain(resp.removed_resource_names.iter().map(|r| r.name.clone()))
            .collect();
        let wanted = cs.store.names(kind);
        sort_resources(kind, items, false, removed, &wanted)
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn initial(&mut self, cs: &ClientState) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for kind in ResourceType::ALL {
            let names = cs.store.names(kind);
            // The full-set types (CDS, LDS) are wildcard subscriptions.
            if !kind.is_full_set() && names.is_empty() {
                continue;
            }
            let mut req = self.request(kind);
            req.resource_names_subscribe = names.iter().cloned().collect();
            req.initial_resource_versions = cs
                .store
                .versions(kind)
                .into_iter()
                .filter(|(name, _)| kind.is_full_set() || names.contains(name))
                .collect();
            self.subscribed[kind] = Some(names);
            out.push(req);
        }
        out
    }

    async fn on_response(
        &mut self,
        resp: DeltaDiscoveryResponse,
        cs: &mut ClientState,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "ignoring a response of a type not subscribed to");
            return Vec::new();
        };
        debug!(
            r#type = kind.short(), version = %resp.system_version_info, nonce = %resp.nonce,
            updates = resp.resources.len(), removed = resp.removed_resources.len(), "delta response"
        );
        let (update, rejected) = Self::decode(kind, &resp, cs);
        let nack = cs.apply(update, rejected, &resp.system_version_info).await;
        let mut ack = self.request(kind);
        ack.response_nonce = resp.nonce;
        ack.error_detail = nack.as_deref().map(error_detail);
        let mut out = vec![ack];
        out.extend(self.resubscribe(cs));
        out
    }

    fn resubscribe(&mut self, cs: &ClientState) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for kind in [ResourceType::Endpoint, ResourceType::Route] {
            let names = cs.store.names(kind);
            let sent = self.subscribed[kind].clone().unwrap_or_default();
            let subscribe: Vec<String> = names.difference(&sent).cloned().collect();
            let unsubscribe: Vec<String> = sent.difference(&names).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            let mut req = self.request(kind);
            req.resource_names_subscribe = subscribe;
            req.resource_names_unsubscribe = unsubscribe;
            self.subscribed[kind] = Some(names);
            out.push(req);
        }
        out
    }
}
