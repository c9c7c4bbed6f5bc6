//! The state-of-the-world side of one ADS stream: requests, ACKs and NACKs.
//!
//! Per stream it tracks the last nonce received and the names last requested
//! for each type. Every request of a type carries the current subscription
//! (`resource_names`): CDS and LDS are empty-name wildcards; EDS and RDS name
//! what the held clusters and listeners need. A NACK carries the previous
//! accepted version and the rejected nonce; an ACK the new version.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, warn};

use pylon::{PerType, ResourceType};

use super::store::Update;
use super::{error_detail, sort_resources, ClientState, Item, Protocol};
use crate::model::NackError;

/// Per-stream SotW state.
#[derive(Debug)]
pub(super) struct SotwStream {
    /// Sent in the first request only.
    node: Option<Node>,
    /// The nonce of the last response of each type.
    nonces: PerType<String>,
    /// The names last requested for each type; `None` before the first
    /// request of that type on this stream.
    requested: PerType<Option<BTreeSet<String>>>,
}

impl SotwStream {
    pub(super) fn new(node: Node) -> Self {
        SotwStream {
            node: Some(node),
            nonces: Default::default(),
            requested: Default::default(),
        }
    }

    fn request(
        &mut self,
        kind: ResourceType,
        names: BTreeSet<String>,
        version: String,
        error: Option<&str>,
    ) -> DiscoveryRequest {
        let req = DiscoveryRequest {
            version_info: version,
            node: self.node.take(),
            resource_names: names.iter().cloned().collect(),
            type_url: kind.type_url().to_string(),
            response_nonce: self.nonces[kind].clone(),
            error_detail: error.map(error_detail),
            ..Default::default()
        };
        self.requested[kind] = Some(names);
        req
    }

    /// Decodes a response into the update to apply and the rejected
    /// resources.
    fn decode(
        kind: ResourceType,
        resp: &DiscoveryResponse,
        cs: &ClientState,
    ) -> (Update, Vec<NackError>) {
        let items = resp
            .resources
            .iter()
            .filter_map(|any| Item::decode(kind, any, None, &resp.version_info))
            .collect();
        let wanted = cs.store.names(kind);
        sort_resources(kind, items, kind.is_full_set(), Vec::new(), &wanted)
    }
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn initial(&mut self, cs: &ClientState) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for kind in ResourceType::ALL {
            let names = cs.store.names(kind);
            // The full-set types (CDS, LDS) are wildcard subscriptions.
            if kind.is_full_set() || !names.is_empty() {
                // After a reconnect, the version held tells the server what we have.
                out.push(self.request(kind, names, cs.version(kind), None));
            }
        }
        out
    }

    async fn on_response(
        &mut self,
        resp: DiscoveryResponse,
        cs: &mut ClientState,
    ) -> Vec<DiscoveryRequest> {
        let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "ignoring a response of a type not subscribed to");
            return Vec::new();
        };
        debug!(r#type = kind.short(), version = %resp.version_info, nonce = %resp.nonce, n = resp.resources.len(), "response");
        self.nonces[kind] = resp.nonce.clone();
        let (update, rejected) = Self::decode(kind, &resp, cs);
        let nack = cs.apply(update, rejected, &resp.version_info).await;
        // The ACK or NACK names the current subscription (a partial NACK may
        // have changed it); a NACK carries the previous accepted version.
        let names = cs.store.names(kind);
        let mut out = Vec::new();
        match nack {
            None => out.push(self.request(kind, names, resp.version_info.clone(), None)),
            Some(e) => out.push(self.request(kind, names, cs.version(kind), Some(&e))),
        }
        out.extend(self.resubscribe(cs));
        out
    }

    fn resubscribe(&mut self, cs: &ClientState) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for kind in [ResourceType::Endpoint, ResourceType::Route] {
            let names = cs.store.names(kind);
            let changed = match &self.requested[kind] {
                Some(sent) => *sent != names,
                None => !names.is_empty(),
            };
            if changed {
                out.push(self.request(kind, names, cs.version(kind), None));
            }
        }
        out
    }
}
