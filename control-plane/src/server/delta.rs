//! Incremental (delta) xDS streams (aggregated or single-type).
//!
//! [`DeltaStream`] is the per-stream state machine, free of I/O;
//! `server::Driver` runs it. What the client holds is recorded **at send
//! time** (name -> version): a resource is never sent twice with the same
//! version, and a NACKed version is therefore not resent; the next different
//! version is. Rules:
//!
//! - subscription changes are applied even when the request's nonce is stale;
//! - the first wildcard request is answered even when there is nothing to send;
//! - after a reconnect, `initial_resource_versions` seeds what the client holds,
//!   so identical versions are not resent and different ones are;
//! - an explicit (re)subscription of a name forces it to be sent again (Envoy
//!   re-subscribes while warming a cluster and waits for the answer);
//! - `removed_resources` lists only names the client holds that no longer
//!   exist, never names that never existed;
//! - a wildcard client that unsubscribes a name gets an answer;
//! - on a new snapshot: cluster updates, endpoints, listeners, routes, and
//!   cluster removals last. A changed cluster's load assignment is resent so a
//!   warming cluster completes. Removed endpoints and routes go last too.
//!
//! Once a client is up to date, what it holds is the map of the snapshot (or
//! view) it was brought up to date with, shared with the snapshot: no
//! per-stream copy of names and versions. A new snapshot is compared with
//! that map through the names that changed since
//! ([`TypeSnapshot::changes_from`]), so a push costs a stream the changes,
//! not its whole subscription. An explicit name -> version map is kept only
//! while a subscription changes and after a reconnect, until the client is
//! up to date again.
//!
//! [`TypeSnapshot::changes_from`]: crate::snapshot::TypeSnapshot::changes_from

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tonic::Status;
use tracing::debug;

use super::limits::{check_name_count, check_names, check_subscribed_bytes};
use super::sotw::{is_nonce, request_type, warn_nack, warn_unknown_type};
use super::wire::Outgoing;
use crate::registry::{Held, NameSet, StreamGuard};
use crate::snapshot::{intern, Resource, ResourceMap, ResourceType, Snapshot};
use pylon::PerType;

#[derive(Debug, Default)]
struct TypeState {
    seen: bool,
    wildcard: bool,
    /// Shared with the registry entry and with streams naming the same
    /// resources (copied on write).
    names: NameSet,
    /// What the client holds, when it is up to date: exactly the resources
    /// of this map (a snapshot's or view's) that the subscription covers.
    held_map: Option<ResourceMap>,
    /// What the client holds otherwise: name -> version, all in the
    /// subscription's scope.
    held_versions: Arc<HashMap<Arc<str>, Arc<str>>>,
    /// The nonce of the last response of this type; 0 before the first.
    last_nonce: u64,
    sent_version: Option<Arc<str>>,
    /// Bytes of `names`, and of the names and versions declared in
    /// `initial_resource_versions` (for the stream's limit on subscribed
    /// names).
    name_bytes: usize,
    declared_bytes: usize,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the client holds as an explicit map, to change it.
    fn versions(&mut self) -> &mut HashMap<Arc<str>, Arc<str>> {
        if let Some(map) = self.held_map.take() {
            let held = map
                .iter()
                .filter(|(n, _)| self.in_scope(n))
                .map(|(n, r)| (Arc::clone(n), Arc::clone(&r.version)))
                .collect();
            self.held_versions = Arc::new(held);
        }
        Arc::make_mut(&mut self.held_versions)
    }

    /// The client is up to date with `map`.
    fn synced(&mut self, map: &ResourceMap) {
        self.held_map = Some(Arc::clone(map));
        if !self.held_versions.is_empty() {
            self.held_versions = Arc::default();
        }
    }

    fn holds(&self, name: &str) -> bool {
        match &self.held_map {
            Some(m) => self.in_scope(name) && m.contains_key(name),
            None => self.held_versions.contains_key(name),
        }
    }

    /// What the registry shows the client holds once it has `map`.
    fn held(&self, map: &ResourceMap) -> Held {
        Held::Scoped {
            map: Arc::clone(map),
            names: (!self.wildcard).then(|| Arc::clone(&self.names)),
        }
    }
}

/// Updates and removals of one type for one response.
#[derive(Debug, Default)]
struct Diff {
    updates: Vec<Arc<Resource>>,
    removed: Vec<String>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.removed.is_empty()
    }
}

/// The protocol state of one delta stream.
#[derive(Debug)]
pub struct DeltaStream {
    types: PerType<TypeState>,
    nonce: u64,
    only: Option<ResourceType>,
    guard: StreamGuard,
}

impl DeltaStream {
    /// A stream serving every type (`only: None`, ADS) or one type.
    pub fn new(guard: StreamGuard, only: Option<ResourceType>) -> Self {
        DeltaStream {
            types: Default::default(),
            nonce: 0,
            only,
            guard,
        }
    }

    /// Handles one request against the snapshot currently served.
    pub fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Vec<Outgoing<DeltaDiscoveryResponse>>, Status> {
        let Some(ty) = request_type(&req.type_url, self.only)? else {
            self.guard.metrics().unknown_types.inc();
            warn_unknown_type(&self.guard, &req.type_url);
            return Ok(Vec::new());
        };
        if self.only.is_some_and(|o| o != ty) {
            return Err(Status::invalid_argument(format!(
                "this service serves {}, not {}",
                self.only.map(|o| o.type_url()).unwrap_or_default(),
                req.type_url
            )));
        }
        let metrics = self.guard.metrics();
        check_name_count(metrics, ty, req.resource_names_subscribe.len())?;
        check_name_count(metrics, ty, req.initial_resource_versions.len())?;
        let names = req
            .resource_names_subscribe
            .iter()
            .chain(&req.resource_names_unsubscribe)
            .chain(req.initial_resource_versions.keys());
        check_names(metrics, ty, "resource name", names.map(String::as_str))?;
        let versions = req.initial_resource_versions.values();
        check_names(metrics, ty, "version", versions.map(String::as_str))?;
        let t = &mut self.types[ty];
        let stale = !req.response_nonce.is_empty()
            && t.last_nonce != 0
            && !is_nonce(&req.response_nonce, t.last_nonce);
        if stale {
            self.guard.stale_nonce(ty);
            debug!(node = self.guard.node(), r#type = ty.short(), nonce = %req.response_nonce, "stale nonce; applying subscription changes only");
        } else if let Some(err) = &req.error_detail {
            let rejected = t.sent_version.as_deref().unwrap_or_default();
            warn_nack(&self.guard, ty, rejected, &err.message);
            self.guard
                .nacked(ty, rejected, &req.response_nonce, &err.message);
        } else if !req.response_nonce.is_empty() {
            if let Some(v) = &t.sent_version {
                self.guard.acked(ty, v);
            }
        }

        let first = !t.seen;
        // The subscription may change: copy it (and what the client holds)
        // only then. Most requests are ACKs.
        let resubscribed = first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty();
        if resubscribed {
            t.versions();
        }
        // Names and versions are interned against the snapshot: a stream
        // keeps pointers, not copies.
        let all = &snap.get(ty).resources;
        if first {
            t.seen = true;
            t.declared_bytes = req
                .initial_resource_versions
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum();
            if !req.initial_resource_versions.is_empty() {
                let held = req.initial_resource_versions.into_iter().map(|(n, v)| {
                    let version = all
                        .get(n.as_str())
                        .filter(|r| *r.version == *v)
                        .map_or_else(|| Arc::from(v), |r| Arc::clone(&r.version));
                    (intern(all, n), version)
                });
                t.versions().extend(held);
            }
            t.wildcard = ty.is_full_set() && req.resource_names_subscribe.is_empty();
        }
        for name in req.resource_names_subscribe {
            if name == pylon::type_url::WILDCARD {
                t.wildcard = true;
            } else {
                if !first && t.holds(&name) {
                    t.versions().remove(name.as_str());
                }
                if !t.names.contains(name.as_str()) {
                    t.name_bytes += name.len();
                    Arc::make_mut(&mut t.names).insert(intern(all, name));
                }
            }
        }
        let mut wildcard_unsubscribed = false;
        for name in req.resource_names_unsubscribe {
            if name == pylon::type_url::WILDCARD {
                t.wildcard = false;
            } else {
                if t.names.contains(name.as_str()) {
                    t.name_bytes -= name.len();
                    Arc::make_mut(&mut t.names).remove(name.as_str());
                }
                wildcard_unsubscribed |= t.wildcard;
            }
        }
        // Subscriptions add up over a delta stream: cap the total, in names
        // of this type and in bytes of all types.
        check_name_count(self.guard.metrics(), ty, t.names.len())?;
        let bytes: usize = self
            .types
            .values()
            .map(|t| t.name_bytes + t.declared_bytes)
            .sum();
        check_subscribed_bytes(self.guard.metrics(), bytes)?;
        let t = &mut self.types[ty];
        let out_of_scope = |t: &TypeState| t.held_versions.keys().any(|n| !t.names.contains(n));
        if t.held_map.is_none() && !t.wildcard && out_of_scope(t) {
            let names = Arc::clone(&t.names);
            t.versions().retain(|n, _| names.contains(n));
        }
        if resubscribed {
            t.names = self.guard.share_names(Arc::clone(&t.names));
            self.guard.subscribed(ty, t.wildcard, Arc::clone(&t.names));
        }
        if first && t.held_map.is_none() && !t.held_versions.is_empty() {
            // After a reconnect the client already holds these.
            self.guard
                .seeded(ty, Held::Versions(Arc::clone(&t.held_versions)));
        }
        let diff = self.diff(ty, snap);
        let answer_anyway = (first && self.types[ty].wildcard) || wildcard_unsubscribed;
        let out = if diff.is_empty() && !answer_anyway {
            Vec::new()
        } else {
            vec![self.respond(ty, snap, diff)]
        };
        // Whether or not anything was sent, the client now holds exactly
        // what it sees of the snapshot.
        self.types[ty].synced(&snap.get(ty).resources);
        Ok(out)
    }

    /// Handles a new snapshot: updates in make-before-break order, cluster removals last.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        let mut out = Vec::new();
        let mut cds = self.diff(ResourceType::Cluster, snap);
        let cds_removed = std::mem::take(&mut cds.removed);
        let mut eds = self.diff(ResourceType::Endpoint, snap);
        let eds_removed = std::mem::take(&mut eds.removed);
        if !cds.updates.is_empty() {
            // A changed cluster warms until it gets its load assignment again.
            let t = &self.types[ResourceType::Endpoint];
            let served = &snap.get(ResourceType::Endpoint).resources;
            if t.seen {
                let mut resend = false;
                for c in &cds.updates {
                    let again =
                        t.in_scope(&c.name) && !eds.updates.iter().any(|r| r.name == c.name);
                    if let Some(r) = served.get(&c.name).filter(|_| again) {
                        eds.updates.push(Arc::clone(r));
                        resend = true;
                    }
                }
                if resend {
                    eds.updates.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
            out.push(self.respond(ResourceType::Cluster, snap, cds));
        }
        // Endpoints and routes of a retiring cluster or listener are removed
        // with it, at the end; listener removals break nothing and go in order.
        if !eds.is_empty() {
            out.push(self.respond(ResourceType::Endpoint, snap, eds));
        }
        let lds = self.diff(ResourceType::Listener, snap);
        if !lds.is_empty() {
            out.push(self.respond(ResourceType::Listener, snap, lds));
        }
        let mut rds = self.diff(ResourceType::Route, snap);
        let rds_removed = std::mem::take(&mut rds.removed);
        if !rds.is_empty() {
            out.push(self.respond(ResourceType::Route, snap, rds));
        }
        for (ty, removed) in [
            (ResourceType::Cluster, cds_removed),
            (ResourceType::Endpoint, eds_removed),
            (ResourceType::Route, rds_removed),
        ] {
            if !removed.is_empty() {
                let diff = Diff {
                    updates: Vec::new(),
                    removed,
                };
                out.push(self.respond(ty, snap, diff));
            }
        }
        // Everything the stream sees is sent now.
        for ty in ResourceType::ALL {
            let t = &mut self.types[ty];
            if t.seen {
                t.synced(&snap.get(ty).resources);
            }
        }
        let latency = snap.created.elapsed().as_secs_f64();
        for _ in &out {
            self.guard.metrics().push_latency.observe(latency);
        }
        out
    }

    /// What the client lacks of `ty` (new or changed resources in its
    /// scope) and holds in vain (names in scope no longer served).
    fn diff(&self, ty: ResourceType, snap: &Snapshot) -> Diff {
        let t = &self.types[ty];
        let view = snap.get(ty);
        let all = &view.resources;
        if !t.seen {
            return Diff::default();
        }
        let mut updates = Vec::new();
        let mut removed = Vec::new();
        let client = &t.held_versions;
        match &t.held_map {
            Some(held) if Arc::ptr_eq(held, all) => {}
            Some(held) => {
                // Only what changed since the map the client holds.
                for name in view.changes_from(held).iter() {
                    if !t.in_scope(name) {
                        continue;
                    }
                    match (all.get(name), held.get(name)) {
                        (Some(r), _) => updates.push(Arc::clone(r)),
                        (None, Some(_)) => removed.push(name.to_string()),
                        (None, None) => {}
                    }
                }
            }
            None if t.wildcard => {
                // Everything the client holds is in scope.
                let mut held = 0;
                for r in all.values() {
                    match client.get(&r.name) {
                        Some(v) if *v == r.version => held += 1,
                        Some(_) => {
                            held += 1;
                            updates.push(Arc::clone(r));
                        }
                        None => updates.push(Arc::clone(r)),
                    }
                }
                if held < client.len() {
                    removed = client
                        .keys()
                        .filter(|n| !all.contains_key(*n))
                        .map(|n| n.to_string())
                        .collect();
                    removed.sort();
                }
            }
            None => {
                // The client holds only names it subscribes to. Names and
                // resources are both ordered by name: one merge walk.
                let mut served = all.iter().peekable();
                for name in t.names.iter() {
                    while served.next_if(|(n, _)| *n < name).is_some() {}
                    match served.next_if(|(n, _)| *n == name) {
                        Some((_, r)) if client.get(name) != Some(&r.version) => {
                            updates.push(Arc::clone(r));
                        }
                        Some(_) => {}
                        None if client.contains_key(name) => removed.push(name.to_string()),
                        None => {}
                    }
                }
            }
        }
        Diff { updates, removed }
    }

    fn respond(
        &mut self,
        ty: ResourceType,
        snap: &Snapshot,
        diff: Diff,
    ) -> Outgoing<DeltaDiscoveryResponse> {
        self.nonce += 1;
        let nonce = self.nonce;
        let version = Arc::clone(&snap.get(ty).version);
        let t = &mut self.types[ty];
        t.last_nonce = nonce;
        t.sent_version = Some(Arc::clone(&version));
        // Responses of one batch are made together, so the client holds the
        // snapshot's view once the last of them is applied.
        let held = t.held(&snap.get(ty).resources);
        self.guard
            .sent(ty, &version, nonce, diff.updates.len(), held);
        self.guard.metrics().pushed(ty);
        debug!(
            node = self.guard.node(), r#type = ty.short(), version = %version, nonce,
            updates = diff.updates.len(), removed = diff.removed.len(), "send delta"
        );
        Outgoing {
            message: DeltaDiscoveryResponse {
                system_version_info: version.to_string(),
                type_url: ty.type_url().to_string(),
                removed_resources: diff.removed,
                nonce: nonce.to_string(),
                ..Default::default()
            },
            resources: diff.updates,
        }
    }
}

impl super::Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = Outgoing<DeltaDiscoveryResponse>;

    fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Vec<Outgoing<DeltaDiscoveryResponse>>, Status> {
        DeltaStream::on_request(self, req, snap)
    }

    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        DeltaStream::on_snapshot(self, snap)
    }

    fn guard(&self) -> &StreamGuard {
        &self.guard
    }

    fn guard_mut(&mut self) -> &mut StreamGuard {
        &mut self.guard
    }

    fn take_node(
        req: &mut DeltaDiscoveryRequest,
    ) -> Option<envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.take()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::{Held, Registry};
    use crate::server::sotw::MAX_NAMES_PER_TYPE;
    use crate::server::tests::{names_of, node, snapshot, Fixture};
    use envoy_types::pb::google::rpc;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Arc::new(Metrics::new())))
    }

    fn req(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            node: Some(node("n1")),
            ..Default::default()
        }
    }

    /// The names of the resources `r` carries, read back from its encoding.
    fn names(r: &Outgoing<DeltaDiscoveryResponse>) -> Vec<String> {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        let anys: Vec<_> = DeltaDiscoveryResponse::decode(buf.as_slice())
            .unwrap()
            .resources
            .iter()
            .filter_map(|r| r.resource.clone())
            .collect();
        names_of(&anys)
    }

    #[test]
    fn first_wildcard_request_is_answered_even_when_empty() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let empty = snapshot(&Fixture::empty());
        let out = s
            .on_request(req(ResourceType::Listener, &[], &[], ""), &empty)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty());
    }

    #[test]
    fn updates_and_removals_are_incremental() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Cluster, &[], &[], ""), &v1)
            .unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
        assert!(s
            .on_request(req(ResourceType::Cluster, &[], &[], &out[0].nonce), &v1)
            .unwrap()
            .is_empty());
        let out = s.on_snapshot(&snapshot(&Fixture::one_cluster()));
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty());
        assert_eq!(out[0].removed_resources, ["b"]);
        let out = s.on_snapshot(&snapshot(&Fixture::two_clusters_timeout_changed()));
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn reconnect_with_initial_versions_resends_only_differences() {
        let reg = registry();
        let v1 = snapshot(&Fixture::two_clusters());
        let a = v1.get(ResourceType::Cluster).resources["a"]
            .version
            .to_string();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let mut r = req(ResourceType::Cluster, &[], &[], "");
        r.initial_resource_versions =
            [("a".to_string(), a), ("b".to_string(), "old".to_string())].into();
        let out = s.on_request(r, &v1).unwrap();
        assert_eq!(names(&out[0]), ["b"]);
    }

    #[test]
    fn never_existing_names_are_not_listed_as_removed() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::one_cluster());
        let out = s
            .on_request(req(ResourceType::Endpoint, &["a", "ghost"], &[], ""), &v1)
            .unwrap();
        assert_eq!(names(&out[0]), ["a"]);
        assert!(out[0].removed_resources.is_empty());
        // "ghost" appears later and is sent.
        let out = s.on_snapshot(&snapshot(&Fixture::with_ghost()));
        assert_eq!(out.iter().flat_map(names).collect::<Vec<_>>(), ["ghost"]);
    }

    #[test]
    fn stale_nonce_still_applies_subscriptions_and_nack_is_not_resent() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::two_clusters());
        let first = s
            .on_request(req(ResourceType::Endpoint, &["a"], &[], ""), &v1)
            .unwrap();
        let second = s
            .on_request(
                req(ResourceType::Endpoint, &["b"], &[], &first[0].nonce),
                &v1,
            )
            .unwrap();
        assert_eq!(names(&second[0]), ["b"]);
        // Stale nonce (first) but a new subscription: still applied... to a name that does
        // not exist, so nothing to send.
        assert!(s
            .on_request(
                req(ResourceType::Endpoint, &["zzz"], &[], &first[0].nonce),
                &v1
            )
            .unwrap()
            .is_empty());
        let mut nack = req(ResourceType::Endpoint, &[], &[], &second[0].nonce);
        nack.error_detail = Some(rpc::Status {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        assert!(s.on_request(nack, &v1).unwrap().is_empty());
        assert!(s
            .on_snapshot(&snapshot(&Fixture::two_clusters()))
            .is_empty());
        assert_eq!(reg.list()[0].types[ResourceType::Endpoint].state(), "ERROR");
    }

    #[test]
    fn changed_cluster_gets_its_endpoints_again_and_removals_come_last() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::two_clusters_listener_on_b());
        for ty in [ResourceType::Cluster, ResourceType::Listener] {
            s.on_request(req(ty, &[], &[], ""), &v1).unwrap();
        }
        s.on_request(req(ResourceType::Endpoint, &["a", "b"], &[], ""), &v1)
            .unwrap();
        let out = s.on_snapshot(&snapshot(&Fixture::one_cluster_listener_on_a_changed()));
        let order: Vec<(&str, Vec<String>, Vec<String>)> = out
            .iter()
            .map(|r| {
                (
                    ResourceType::from_type_url(&r.type_url).unwrap().short(),
                    names(r),
                    r.removed_resources.clone(),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                ("cds", vec!["a".into()], vec![]),
                ("eds", vec!["a".into()], vec![]),
                ("lds", vec!["l".into()], vec![]),
                ("cds", vec![], vec!["b".into()]),
                ("eds", vec![], vec!["b".into()]),
            ]
        );
    }

    #[test]
    fn empty_type_url_is_invalid_on_ads_and_unknown_types_are_ignored() {
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let bogus = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.nothing.v3.Bogus".into(),
            ..req(ResourceType::Cluster, &["x"], &[], "")
        };
        assert!(s.on_request(bogus, &v).unwrap().is_empty());
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_unknown_type_requests_total 1"));
        let out = s
            .on_request(req(ResourceType::Cluster, &[], &[], ""), &v)
            .unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
        let empty = DeltaDiscoveryRequest {
            type_url: String::new(),
            ..req(ResourceType::Cluster, &[], &[], &out[0].nonce)
        };
        let err = s.on_request(empty, &v).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        // A single-type service knows its type.
        let mut eds = DeltaStream::new(
            reg.open("eds-delta", None, None).unwrap(),
            Some(ResourceType::Endpoint),
        );
        let implicit = DeltaDiscoveryRequest {
            type_url: String::new(),
            ..req(ResourceType::Endpoint, &["b"], &[], "")
        };
        let out = eds.on_request(implicit, &v).unwrap();
        assert_eq!(out[0].type_url, ResourceType::Endpoint.type_url());
    }

    #[test]
    fn long_names_and_too_many_name_bytes_end_the_stream_with_resource_exhausted() {
        use crate::server::limits::{MAX_NAME_BYTES, MAX_SUBSCRIBED_BYTES};
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let eds = |sub: Vec<String>, unsub: Vec<String>| DeltaDiscoveryRequest {
            resource_names_subscribe: sub,
            resource_names_unsubscribe: unsub,
            ..req(ResourceType::Endpoint, &[], &[], "")
        };
        let seeded = |name: &str, version: &str| DeltaDiscoveryRequest {
            initial_resource_versions: [(name.to_string(), version.to_string())].into(),
            ..req(ResourceType::Cluster, &[], &[], "")
        };
        for bad in [
            eds(vec![long.clone()], vec![]),
            eds(vec![], vec![long.clone()]),
            seeded(&long, "v1"),
            seeded("a", &long),
        ] {
            let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
            let err = s.on_request(bad, &v).unwrap_err();
            assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        }

        // Names of exactly the longest length, 1 MiB a request, over two
        // types: 4 MiB in all is accepted, one name more is not.
        let name = |ty: &str, i: usize| format!("{ty}{i:0>width$}", width = MAX_NAME_BYTES - 1);
        let batch = |ty: &str, from: usize| -> Vec<String> {
            (from..from + 1024).map(|i| name(ty, i)).collect()
        };
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        for (ty, from) in [("e", 0), ("e", 1024)] {
            assert!(s.on_request(eds(batch(ty, from), vec![]), &v).is_ok());
        }
        for from in [0, 1024] {
            let rds = DeltaDiscoveryRequest {
                resource_names_subscribe: batch("r", from),
                ..req(ResourceType::Route, &[], &[], "")
            };
            assert!(s.on_request(rds, &v).is_ok());
        }
        assert_eq!(4096 * MAX_NAME_BYTES, MAX_SUBSCRIBED_BYTES);
        // Unsubscribing makes room.
        let swap = eds(vec![name("x", 0)], vec![name("e", 0)]);
        assert!(s.on_request(swap, &v).is_ok());
        let err = s
            .on_request(eds(vec![name("x", 1)], vec![]), &v)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("4194304"), "{err:?}");
        let text = reg.metrics().encode();
        for line in [
            "pylon_xds_refused_requests_total{reason=\"name_too_long\"} 4",
            "pylon_xds_refused_requests_total{reason=\"subscription_too_large\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn subscriptions_beyond_the_cap_end_the_stream_with_resource_exhausted() {
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let half = MAX_NAMES_PER_TYPE / 2 + 1;
        let batch =
            |from: usize| -> Vec<String> { (from..from + half).map(|i| format!("n{i}")).collect() };
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let first = DeltaDiscoveryRequest {
            resource_names_subscribe: batch(0),
            ..req(ResourceType::Endpoint, &[], &[], "")
        };
        assert!(s.on_request(first, &v).unwrap().is_empty());
        // The same names again (Envoy re-subscribes while warming) are not new.
        let again = DeltaDiscoveryRequest {
            resource_names_subscribe: batch(0),
            ..req(ResourceType::Endpoint, &[], &[], "")
        };
        assert!(s.on_request(again, &v).is_ok());
        let more = DeltaDiscoveryRequest {
            resource_names_subscribe: batch(half),
            ..req(ResourceType::Endpoint, &[], &[], "")
        };
        let err = s.on_request(more, &v).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);

        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let seeded = DeltaDiscoveryRequest {
            initial_resource_versions: (0..=MAX_NAMES_PER_TYPE)
                .map(|i| (format!("n{i}"), "v".to_string()))
                .collect(),
            ..req(ResourceType::Cluster, &[], &[], "")
        };
        let err = s.on_request(seeded, &v).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn an_up_to_date_client_is_held_as_the_snapshot_and_sent_what_changed() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Endpoint, &["a", "b"], &[], ""), &v1)
            .unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
        // What it holds is the snapshot's own map, not a copy.
        let held = |reg: &Registry| reg.list()[0].types[ResourceType::Endpoint].held.clone();
        match held(&reg) {
            Held::Scoped { map, names } => {
                assert!(Arc::ptr_eq(&map, &v1.get(ResourceType::Endpoint).resources));
                assert_eq!(names.unwrap().len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let v2 = snapshot(&Fixture::two_clusters_b_moved());
        let out = s.on_snapshot(&v2);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(
            out[0].resources[0].version,
            v2.get(ResourceType::Endpoint).resources["b"].version
        );
        // A re-subscription to a held name sends it again (Envoy warming).
        let again = s
            .on_request(req(ResourceType::Endpoint, &["a"], &[], &out[0].nonce), &v2)
            .unwrap();
        assert_eq!(names(&again[0]), ["a"]);
        // Unsubscribing leaves the rest; a removal of a held name is sent.
        assert!(s
            .on_request(
                req(ResourceType::Endpoint, &[], &["a"], &again[0].nonce),
                &v2
            )
            .unwrap()
            .is_empty());
        let gone = s.on_snapshot(&snapshot(&Fixture::one_cluster()));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].removed_resources, ["b"]);
        assert!(held(&reg).is_empty());
    }

    #[test]
    fn wildcard_unsubscribe_is_answered() {
        let reg = registry();
        let mut s = DeltaStream::new(reg.open("ads-delta", None, None).unwrap(), None);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Cluster, &[], &[], ""), &v1)
            .unwrap();
        let out = s
            .on_request(req(ResourceType::Cluster, &[], &["a"], &out[0].nonce), &v1)
            .unwrap();
        assert_eq!(out.len(), 1);
    }
}
