//! State-of-the-world xDS streams (aggregated or single-type).
//!
//! [`SotwStream`] is the per-stream protocol state machine, free of I/O: it
//! takes a request or a new snapshot and returns the responses to send, in
//! order. `server::Driver` runs it on a gRPC stream. The rules it implements
//! are rules 1 to 7 of `docs/xds-protocol.md`:
//!
//! - nonces are per type; a request carrying an older nonce is stale and
//!   ignored (counted);
//! - a request with `error_detail` is a NACK: it is recorded and the rejected
//!   content is never sent again; only new content is;
//! - LDS/CDS responses carry the full set; an empty first LDS/CDS request is a
//!   (legacy) wildcard until the client names resources; `*` is an explicit one;
//! - names requested before they exist are remembered and sent when they appear;
//!   a request that adds names is answered even if nothing changed;
//! - after every CDS (LDS) response, the next EDS (RDS) request is answered
//!   even if unchanged, because Envoy waits for it to finish warming;
//! - on a new snapshot, types are sent clusters, endpoints, listeners, routes;
//!   clusters that disappear are kept in an interim CDS response until the
//!   listeners and routes that used them have been replaced, then removed;
//! - **a new snapshot's EDS and RDS responses carry only the load
//!   assignments and route configurations that changed.** The protocol asks
//!   for the full set in LDS and CDS responses only; for the other types a
//!   client keeps what a response leaves out (Envoy updates only the
//!   subscriptions a response names, gRPC clients mark EDS and RDS as not
//!   needing every resource in each response, pylon-proxy merges), which the
//!   interop matrix checks against every client. Answers to requests (a
//!   first request, new names, the warming answer) carry everything
//!   requested, and so do responses to a wildcard EDS or RDS subscription.
//!
//! What the client holds is recorded as the map of the snapshot (or view) it
//! was brought up to date with, shared with the snapshot, so an up-to-date
//! stream keeps no copy of it. On a new snapshot only the names that changed
//! since that map are looked at ([`TypeSnapshot::changes_from`]).
//!
//! [`TypeSnapshot::changes_from`]: crate::snapshot::TypeSnapshot::changes_from

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;
use tracing::{debug, warn};

use super::limits::{check_name_count, check_names, check_subscribed_bytes};
use super::wire::Outgoing;
use crate::registry::{Held, NameSet, StreamGuard};
use crate::snapshot::{intern, Resource, ResourceMap, ResourceType, Snapshot};
use pylon::PerType;

pub use super::limits::MAX_NAMES_PER_TYPE;

/// The type a request is about: `Ok(None)` for a type URL that is not served
/// (ignored and counted by the caller). An empty type URL is required to be
/// set on ADS (`INVALID_ARGUMENT`); on a single-type service it is that type.
pub(super) fn request_type(
    type_url: &str,
    only: Option<ResourceType>,
) -> Result<Option<ResourceType>, Status> {
    if type_url.is_empty() {
        return match only {
            Some(ty) => Ok(Some(ty)),
            None => Err(Status::invalid_argument(
                "type_url is required on an aggregated (ADS) stream",
            )),
        };
    }
    Ok(ResourceType::from_type_url(type_url))
}

/// Whether `nonce`, as a client sent it, is `n` as this server wrote it
/// (decimal, no sign, no leading zero), without formatting `n`.
pub(super) fn is_nonce(nonce: &str, n: u64) -> bool {
    !nonce.is_empty()
        && nonce.len() <= 20
        && nonce.bytes().all(|b| b.is_ascii_digit())
        && (nonce.len() == 1 || !nonce.starts_with('0'))
        && nonce.parse::<u64>() == Ok(n)
}

/// Logs that a client asked for a type that is not served (the type URL
/// cut short, at most [`Registry::client_warnings`] lines a second).
///
/// [`Registry::client_warnings`]: crate::registry::Registry::client_warnings
pub(super) fn warn_unknown_type(guard: &StreamGuard, type_url: &str) {
    if let Some(suppressed) = guard.client_warnings().allow() {
        warn!(
            node = guard.node(),
            type_url = %pylon::throttle::truncate(type_url, 200),
            suppressed,
            "request for a type that is not served; ignored"
        );
    }
}

/// Logs a NACK (its message cut short, at most
/// [`Registry::client_warnings`] lines a second).
///
/// [`Registry::client_warnings`]: crate::registry::Registry::client_warnings
pub(super) fn warn_nack(guard: &StreamGuard, ty: ResourceType, version: &str, message: &str) {
    if let Some(suppressed) = guard.client_warnings().allow() {
        warn!(
            node = guard.node(),
            r#type = ty.short(),
            %version,
            message = %pylon::throttle::truncate(message, 1024),
            suppressed,
            "NACK"
        );
    }
}

#[derive(Debug, Default)]
struct TypeState {
    /// A request of this type has arrived on this stream.
    seen: bool,
    wildcard: bool,
    /// Shared with the registry entry and with streams naming the same
    /// resources; interned against the snapshot.
    names: NameSet,
    /// The nonce of the last response of this type; 0 before the first.
    last_nonce: u64,
    sent_version: Option<Arc<str>>,
    /// The map (of the snapshot or view served) whose resources in the
    /// subscription's scope the client holds; `None` before the first
    /// response.
    held: Option<ResourceMap>,
    /// Answer the next request even if nothing changed (warming).
    always_respond: bool,
    /// Bytes of `names` (for the stream's limit on subscribed names).
    name_bytes: usize,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The resources of `map` the subscription covers, in name order.
    fn select(&self, map: &ResourceMap) -> Vec<Arc<Resource>> {
        if self.wildcard {
            map.values().cloned().collect()
        } else {
            self.names
                .iter()
                .filter_map(|n| map.get(n).cloned())
                .collect()
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

/// What one type sends on a new snapshot.
enum Push {
    /// Everything in scope (LDS, CDS, wildcards).
    Full,
    /// Only these resources, which changed (EDS, RDS).
    Changed(Vec<Arc<Resource>>),
}

/// The protocol state of one SotW stream.
#[derive(Debug)]
pub struct SotwStream {
    types: PerType<TypeState>,
    nonce: u64,
    only: Option<ResourceType>,
    guard: StreamGuard,
}

impl SotwStream {
    /// A stream serving every type (`only: None`, ADS) or one type.
    pub fn new(guard: StreamGuard, only: Option<ResourceType>) -> Self {
        SotwStream {
            types: Default::default(),
            nonce: 0,
            only,
            guard,
        }
    }

    /// Handles one request against the snapshot currently served.
    pub fn on_request(
        &mut self,
        req: DiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Vec<Outgoing<DiscoveryResponse>>, Status> {
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
        check_name_count(metrics, ty, req.resource_names.len())?;
        check_names(
            metrics,
            ty,
            "resource name",
            req.resource_names.iter().map(String::as_str),
        )?;
        let other_types_bytes: usize = ResourceType::ALL
            .into_iter()
            .filter(|&o| o != ty)
            .map(|o| self.types[o].name_bytes)
            .sum();
        let t = &mut self.types[ty];
        let initial = t.last_nonce == 0;
        if !initial && !is_nonce(&req.response_nonce, t.last_nonce) {
            if req.response_nonce.is_empty() {
                // A client that lost track of the stream's nonces: answer it.
                debug!(
                    node = self.guard.node(),
                    r#type = ty.short(),
                    "request without nonce on a live stream"
                );
            } else {
                self.guard.stale_nonce(ty);
                debug!(node = self.guard.node(), r#type = ty.short(), nonce = %req.response_nonce, "stale nonce; ignored");
                return Ok(Vec::new());
            }
        }
        let nack = req.error_detail.as_ref();
        if let Some(err) = nack {
            let rejected = t.sent_version.as_deref().unwrap_or_default();
            warn_nack(&self.guard, ty, rejected, &err.message);
            self.guard
                .nacked(ty, rejected, &req.response_nonce, &err.message);
        } else if !req.response_nonce.is_empty() {
            self.guard.acked(ty, &req.version_info);
        }

        let explicit_wildcard = req
            .resource_names
            .iter()
            .any(|n| n == pylon::type_url::WILDCARD);
        let was_wildcard = t.wildcard;
        let named = req
            .resource_names
            .iter()
            .filter(|n| *n != pylon::type_url::WILDCARD);
        if !t.seen {
            t.seen = true;
            t.wildcard = explicit_wildcard || (ty.is_full_set() && named.clone().next().is_none());
        } else if explicit_wildcard {
            t.wildcard = true;
        } else if named.clone().next().is_some() || !ty.is_full_set() {
            // A legacy wildcard lasts while the client keeps naming nothing.
            t.wildcard = false;
        }
        // Most requests are ACKs repeating the subscription: compare before
        // building anything.
        let same_names = {
            let mut given: Vec<&str> = named.clone().map(String::as_str).collect();
            given.sort_unstable();
            given.dedup();
            given.len() == t.names.len()
                && given.iter().zip(t.names.iter()).all(|(a, b)| *a == &**b)
        };
        let grew = (t.wildcard && !was_wildcard)
            || (!same_names && named.clone().any(|n| !t.names.contains(n.as_str())));
        if t.wildcard != was_wildcard || !same_names {
            let names: BTreeSet<String> = req
                .resource_names
                .into_iter()
                .filter(|n| n != pylon::type_url::WILDCARD)
                .collect();
            let bytes = names.iter().map(String::len).sum();
            check_subscribed_bytes(self.guard.metrics(), other_types_bytes + bytes)?;
            t.name_bytes = bytes;
            let all = &snap.get(ty).resources;
            let set = Arc::new(names.into_iter().map(|n| intern(all, n)).collect());
            t.names = self.guard.share_names(set);
            self.guard.subscribed(ty, t.wildcard, Arc::clone(&t.names));
        }
        let respond = initial || grew || (t.always_respond && nack.is_none());
        if !respond {
            return Ok(Vec::new());
        }
        t.always_respond = false;
        let map = Arc::clone(&snap.get(ty).resources);
        let resources = t.select(&map);
        Ok(vec![self.respond(ty, snap, resources, &map, "")])
    }

    /// Handles a new snapshot: sends whatever changed for this stream, in
    /// make-before-break order.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        let mut pushes: Vec<(ResourceType, Push)> = Vec::new();
        // Clusters the client holds that the new snapshot drops: kept in an
        // interim CDS response while listeners/routes that used them change.
        let mut retiring: Vec<Arc<Resource>> = Vec::new();
        for ty in ResourceType::ALL {
            let t = &mut self.types[ty];
            let view = snap.get(ty);
            let held = match &t.held {
                Some(h) if t.seen && !Arc::ptr_eq(h, &view.resources) => Arc::clone(h),
                _ => continue,
            };
            let changes = view.changes_from(&held);
            let in_scope: Vec<&Arc<str>> = changes.iter().filter(|n| t.in_scope(n)).collect();
            if in_scope.is_empty() {
                t.held = Some(Arc::clone(&view.resources));
                continue;
            }
            if ty == ResourceType::Cluster {
                retiring = in_scope
                    .iter()
                    .filter(|n| !view.resources.contains_key(**n))
                    .filter_map(|n| held.get(*n).cloned())
                    .collect();
            }
            if ty.is_full_set() || t.wildcard {
                pushes.push((ty, Push::Full));
                continue;
            }
            let changed: Vec<Arc<Resource>> = in_scope
                .iter()
                .filter_map(|n| view.resources.get(*n).cloned())
                .collect();
            if changed.is_empty() {
                // Only removals, which a SotW EDS or RDS response cannot say.
                t.held = Some(Arc::clone(&view.resources));
            } else {
                pushes.push((ty, Push::Changed(changed)));
            }
        }
        let later_types_change = pushes
            .iter()
            .any(|(t, _)| matches!(t, ResourceType::Listener | ResourceType::Route));
        let two_phase = !retiring.is_empty() && later_types_change;
        let mut out = Vec::new();
        for (ty, push) in pushes {
            let map = Arc::clone(&snap.get(ty).resources);
            let (resources, suffix) = match push {
                Push::Full if ty == ResourceType::Cluster && two_phase => {
                    let mut all = self.types[ty].select(&map);
                    all.extend(retiring.iter().cloned());
                    all.sort_by(|a, b| a.name.cmp(&b.name));
                    (all, "-retiring")
                }
                Push::Full => (self.types[ty].select(&map), ""),
                Push::Changed(changed) => (changed, ""),
            };
            out.push(self.respond(ty, snap, resources, &map, suffix));
        }
        if two_phase {
            let map = Arc::clone(&snap.get(ResourceType::Cluster).resources);
            let all = self.types[ResourceType::Cluster].select(&map);
            out.push(self.respond(ResourceType::Cluster, snap, all, &map, ""));
        }
        let latency = snap.created.elapsed().as_secs_f64();
        for _ in &out {
            self.guard.metrics().push_latency.observe(latency);
        }
        out
    }

    /// A response of `ty` carrying `resources`, after which the client
    /// holds the in-scope resources of `map`.
    fn respond(
        &mut self,
        ty: ResourceType,
        snap: &Snapshot,
        resources: Vec<Arc<Resource>>,
        map: &ResourceMap,
        version_suffix: &str,
    ) -> Outgoing<DiscoveryResponse> {
        self.nonce += 1;
        let nonce = self.nonce;
        let served = &snap.get(ty).version;
        let version: Arc<str> = if version_suffix.is_empty() {
            Arc::clone(served)
        } else {
            Arc::from(format!("{served}{version_suffix}"))
        };
        let t = &mut self.types[ty];
        self.guard
            .sent(ty, &version, nonce, resources.len(), t.held(map));
        self.guard.metrics().pushed(ty);
        debug!(node = self.guard.node(), r#type = ty.short(), version = %version, nonce, n = resources.len(), "send");
        t.last_nonce = nonce;
        t.sent_version = Some(Arc::clone(&version));
        t.held = Some(Arc::clone(map));
        match ty {
            ResourceType::Cluster => self.types[ResourceType::Endpoint].always_respond = true,
            ResourceType::Listener => self.types[ResourceType::Route].always_respond = true,
            _ => {}
        }
        Outgoing {
            message: DiscoveryResponse {
                version_info: version.to_string(),
                type_url: ty.type_url().to_string(),
                nonce: nonce.to_string(),
                ..Default::default()
            },
            resources,
        }
    }
}

impl super::Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = Outgoing<DiscoveryResponse>;

    fn on_request(
        &mut self,
        req: DiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Vec<Outgoing<DiscoveryResponse>>, Status> {
        SotwStream::on_request(self, req, snap)
    }

    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        SotwStream::on_snapshot(self, snap)
    }

    fn guard(&self) -> &StreamGuard {
        &self.guard
    }

    fn guard_mut(&mut self) -> &mut StreamGuard {
        &mut self.guard
    }

    fn take_node(
        req: &mut DiscoveryRequest,
    ) -> Option<envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.take()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::Registry;
    use crate::server::tests::{node, snapshot, Fixture};
    use envoy_types::pb::google::rpc;

    fn stream(reg: &Arc<Registry>) -> SotwStream {
        SotwStream::new(reg.open("ads", None, None).unwrap(), None)
    }

    fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            node: Some(node("n1")),
            ..Default::default()
        }
    }

    fn with_type(type_url: &str, r: DiscoveryRequest) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            ..r
        }
    }

    /// The names of the resources `resp` carries, read back from its encoding.
    fn names(resp: &Outgoing<DiscoveryResponse>) -> Vec<String> {
        let mut buf = Vec::new();
        resp.encode(&mut buf);
        crate::server::tests::names_of(
            &DiscoveryResponse::decode(buf.as_slice()).unwrap().resources,
        )
    }

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Arc::new(Metrics::new())))
    }

    #[test]
    fn wildcard_full_set_then_ack_then_push() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v1)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["a", "b"]);
        // ACK: nothing to send.
        let ack = req(
            ResourceType::Cluster,
            &[],
            &out[0].version_info,
            &out[0].nonce,
        );
        assert!(s.on_request(ack, &v1).unwrap().is_empty());
        assert_eq!(reg.list()[0].types[ResourceType::Cluster].state(), "SYNCED");
        // A cluster removed: full set without it.
        let v2 = snapshot(&Fixture::one_cluster());
        let out2 = s.on_snapshot(&v2);
        assert_eq!(out2.len(), 1);
        assert_eq!(names(&out2[0]), ["a"]);
        assert_ne!(out2[0].version_info, out[0].version_info);
        // Same content again: nothing.
        assert!(s.on_snapshot(&snapshot(&Fixture::one_cluster())).is_empty());
    }

    #[test]
    fn stale_nonce_is_ignored_and_counted() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let first = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v1)
            .unwrap();
        let second = s.on_snapshot(&snapshot(&Fixture::one_cluster()));
        assert_eq!(second.len(), 1);
        // The client ACKs the first response after the second was sent: stale.
        let stale = req(
            ResourceType::Cluster,
            &[],
            &first[0].version_info,
            &first[0].nonce,
        );
        assert!(s.on_request(stale, &v1).unwrap().is_empty());
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_stale_nonces_total{type=\"cds\"} 1"));
    }

    #[test]
    fn nack_is_recorded_and_not_resent() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v1)
            .unwrap();
        let mut nack = req(ResourceType::Cluster, &[], "", &out[0].nonce);
        nack.error_detail = Some(rpc::Status {
            code: 3,
            message: "cluster a: bad".into(),
            details: vec![],
        });
        assert!(s.on_request(nack, &v1).unwrap().is_empty());
        // The same content published again is not resent.
        assert!(s
            .on_snapshot(&snapshot(&Fixture::two_clusters()))
            .is_empty());
        let st = &reg.list()[0];
        assert_eq!(st.types[ResourceType::Cluster].state(), "ERROR");
        assert_eq!(
            st.types[ResourceType::Cluster]
                .last_nack
                .as_ref()
                .unwrap()
                .message,
            "cluster a: bad"
        );
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_nacks_total{type=\"cds\"} 1"));
        // New content is sent normally.
        assert_eq!(s.on_snapshot(&snapshot(&Fixture::one_cluster())).len(), 1);
    }

    #[test]
    fn eds_names_requested_before_they_exist_arrive_later() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::one_cluster());
        let out = s
            .on_request(req(ResourceType::Endpoint, &["a", "b"], "", ""), &v1)
            .unwrap();
        assert_eq!(names(&out[0]), ["a"]);
        let ack = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &out[0].version_info,
            &out[0].nonce,
        );
        assert!(s.on_request(ack, &v1).unwrap().is_empty());
        // Only the load assignment that appeared: the client keeps `a`.
        let out = s.on_snapshot(&snapshot(&Fixture::two_clusters()));
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["b"]);
        let eds = &reg.list()[0].types[ResourceType::Endpoint];
        assert_eq!(eds.held.sorted().len(), 2, "{:?}", eds.held);
        assert_eq!(eds.sent_resources, 1);
    }

    #[test]
    fn eds_pushes_carry_what_changed_and_answers_carry_everything() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let c = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v1)
            .unwrap();
        s.on_request(
            req(ResourceType::Cluster, &[], &c[0].version_info, &c[0].nonce),
            &v1,
        )
        .unwrap();
        let e = s
            .on_request(req(ResourceType::Endpoint, &["a", "b"], "", ""), &v1)
            .unwrap();
        assert_eq!(names(&e[0]), ["a", "b"]);
        let ack = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &e[0].version_info,
            &e[0].nonce,
        );
        assert!(s.on_request(ack, &v1).unwrap().is_empty());
        // b's endpoints move: the push carries b alone, with the new version.
        let v2 = snapshot(&Fixture::two_clusters_b_moved());
        let out = s.on_snapshot(&v2);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, ResourceType::Endpoint.type_url());
        assert_eq!(names(&out[0]), ["b"]);
        assert_ne!(out[0].version_info, e[0].version_info);
        let eds = reg.list()[0].types[ResourceType::Endpoint].clone();
        let served = &v2.get(ResourceType::Endpoint).resources;
        assert_eq!(
            eds.held.sorted(),
            [("a", &*served["a"].version), ("b", &*served["b"].version)]
        );
        // The same content again: nothing.
        assert!(s
            .on_snapshot(&snapshot(&Fixture::two_clusters_b_moved()))
            .is_empty());
        // A cluster change makes the next EDS request a warming one: it is
        // answered with everything requested.
        let v3 = snapshot(&Fixture::two_clusters_timeout_changed());
        let pushed = s.on_snapshot(&v3);
        let kinds: Vec<&str> = pushed
            .iter()
            .map(|r| ResourceType::from_type_url(&r.type_url).unwrap().short())
            .collect();
        // b moves back too: CDS (full set) and the EDS change.
        assert_eq!(kinds, ["cds", "eds"]);
        assert_eq!(names(&pushed[1]), ["b"]);
        let warming = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &pushed[1].version_info,
            &pushed[1].nonce,
        );
        let answer = s.on_request(warming, &v3).unwrap();
        assert_eq!(names(&answer[0]), ["a", "b"]);
    }

    #[test]
    fn a_wildcard_eds_subscription_gets_the_full_set() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Endpoint, &["*"], "", ""), &v1)
            .unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
        let out = s.on_snapshot(&snapshot(&Fixture::two_clusters_b_moved()));
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn new_names_are_answered_without_a_version_change() {
        let reg = registry();
        let mut s = stream(&reg);
        let v = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Endpoint, &["a"], "", ""), &v)
            .unwrap();
        let more = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &out[0].version_info,
            &out[0].nonce,
        );
        let out2 = s.on_request(more, &v).unwrap();
        assert_eq!(out2.len(), 1);
        assert_eq!(names(&out2[0]), ["a", "b"]);
        assert_eq!(out2[0].version_info, out[0].version_info);
    }

    #[test]
    fn eds_is_answered_after_a_cluster_push_even_if_unchanged() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters());
        let c = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v1)
            .unwrap();
        let e = s
            .on_request(req(ResourceType::Endpoint, &["a", "b"], "", ""), &v1)
            .unwrap();
        s.on_request(
            req(ResourceType::Cluster, &[], &c[0].version_info, &c[0].nonce),
            &v1,
        )
        .unwrap();
        let ack = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &e[0].version_info,
            &e[0].nonce,
        );
        assert!(s.on_request(ack.clone(), &v1).unwrap().is_empty());
        // A cluster changes but endpoints do not: Envoy re-requests EDS to warm.
        let v2 = snapshot(&Fixture::two_clusters_timeout_changed());
        let pushed = s.on_snapshot(&v2);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].type_url, ResourceType::Cluster.type_url());
        let again = s.on_request(ack.clone(), &v2).unwrap();
        assert_eq!(
            again.len(),
            1,
            "EDS must be answered while the cluster warms"
        );
        assert_eq!(names(&again[0]), ["a", "b"]);
        // Only once.
        let ack2 = req(
            ResourceType::Endpoint,
            &["a", "b"],
            &again[0].version_info,
            &again[0].nonce,
        );
        assert!(s.on_request(ack2, &v2).unwrap().is_empty());
    }

    #[test]
    fn removed_clusters_outlive_the_listeners_that_used_them() {
        let reg = registry();
        let mut s = stream(&reg);
        let v1 = snapshot(&Fixture::two_clusters_listener_on_b());
        for ty in [ResourceType::Cluster, ResourceType::Listener] {
            let out = s.on_request(req(ty, &[], "", ""), &v1).unwrap();
            s.on_request(req(ty, &[], &out[0].version_info, &out[0].nonce), &v1)
                .unwrap();
        }
        let out = s.on_snapshot(&snapshot(&Fixture::one_cluster_listener_on_a()));
        let kinds: Vec<(&str, Vec<String>)> = out
            .iter()
            .map(|r| {
                (
                    ResourceType::from_type_url(&r.type_url).unwrap().short(),
                    names(r),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("cds", vec!["a".to_string(), "b".to_string()]),
                ("lds", vec!["l".to_string()]),
                ("cds", vec!["a".to_string()]),
            ]
        );
    }

    #[test]
    fn legacy_wildcard_ends_when_names_are_given_and_star_is_explicit() {
        let reg = registry();
        let mut s = stream(&reg);
        let v = snapshot(&Fixture::two_clusters());
        let out = s
            .on_request(req(ResourceType::Cluster, &["a"], "", ""), &v)
            .unwrap();
        assert_eq!(names(&out[0]), ["a"]);
        let star = req(
            ResourceType::Cluster,
            &["*"],
            &out[0].version_info,
            &out[0].nonce,
        );
        let out = s.on_request(star, &v).unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn empty_type_url_is_invalid_on_ads_and_implicit_on_single_type_services() {
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let mut ads = stream(&reg);
        let err = ads
            .on_request(with_type("", req(ResourceType::Cluster, &[], "", "")), &v)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let mut cds = SotwStream::new(
            reg.open("cds", None, None).unwrap(),
            Some(ResourceType::Cluster),
        );
        let out = cds
            .on_request(with_type("", req(ResourceType::Cluster, &[], "", "")), &v)
            .unwrap();
        assert_eq!(out[0].type_url, ResourceType::Cluster.type_url());
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn unknown_types_are_ignored_and_counted_and_the_stream_goes_on() {
        let reg = registry();
        let mut s = stream(&reg);
        let v = snapshot(&Fixture::two_clusters());
        let bogus = with_type(
            "type.googleapis.com/envoy.config.nothing.v3.Bogus",
            req(ResourceType::Cluster, &["x"], "", ""),
        );
        assert!(s.on_request(bogus.clone(), &v).unwrap().is_empty());
        assert!(s.on_request(bogus, &v).unwrap().is_empty());
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_unknown_type_requests_total 2"));
        let out = s
            .on_request(req(ResourceType::Cluster, &[], "", ""), &v)
            .unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn long_names_and_too_many_name_bytes_end_the_stream_with_resource_exhausted() {
        use crate::server::limits::{MAX_NAME_BYTES, MAX_SUBSCRIBED_BYTES};
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let err = stream(&reg)
            .on_request(req(ResourceType::Endpoint, &["a", &long], "", ""), &v)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

        // 3 MiB of EDS names, then 2 MiB of RDS names: over the stream's
        // 4 MiB; 1 MiB of RDS names fits, and a smaller EDS list makes room.
        let names = |ty: &str, n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("{ty}{i:0>width$}", width = MAX_NAME_BYTES - 1))
                .collect()
        };
        let with = |ty: ResourceType, names: Vec<String>| DiscoveryRequest {
            resource_names: names,
            ..req(ty, &[], "", "")
        };
        let mut s = stream(&reg);
        assert!(s
            .on_request(with(ResourceType::Endpoint, names("e", 3072)), &v)
            .is_ok());
        assert!(s
            .on_request(with(ResourceType::Route, names("r", 1024)), &v)
            .is_ok());
        assert_eq!(4096 * MAX_NAME_BYTES, MAX_SUBSCRIBED_BYTES);
        assert!(s
            .on_request(with(ResourceType::Endpoint, names("e", 1024)), &v)
            .is_ok());
        assert!(s
            .on_request(with(ResourceType::Route, names("r", 3072)), &v)
            .is_ok());
        let err = s
            .on_request(with(ResourceType::Endpoint, names("e", 1025)), &v)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        let text = reg.metrics().encode();
        for line in [
            "pylon_xds_refused_requests_total{reason=\"name_too_long\"} 1",
            "pylon_xds_refused_requests_total{reason=\"subscription_too_large\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn too_many_names_end_the_stream_with_resource_exhausted() {
        let reg = registry();
        let v = snapshot(&Fixture::two_clusters());
        let many: Vec<String> = (0..MAX_NAMES_PER_TYPE).map(|i| format!("n{i}")).collect();
        let mut at_cap = req(ResourceType::Endpoint, &["a"], "", "");
        at_cap.resource_names = many.clone();
        at_cap.resource_names[0] = "a".into();
        let mut s = stream(&reg);
        let out = s.on_request(at_cap, &v).unwrap();
        assert_eq!(names(&out[0]), ["a"]);
        let mut over = req(ResourceType::Endpoint, &[], "", &out[0].nonce);
        over.resource_names = many;
        over.resource_names.push("b".into());
        let err = s.on_request(over, &v).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("100001 eds"), "{}", err.message());
    }

    #[test]
    fn single_type_services_reject_other_types() {
        let reg = registry();
        let mut s = SotwStream::new(
            reg.open("cds", None, None).unwrap(),
            Some(ResourceType::Cluster),
        );
        let v = snapshot(&Fixture::two_clusters());
        assert!(s
            .on_request(req(ResourceType::Listener, &[], "", ""), &v)
            .is_err());
        assert_eq!(
            s.on_request(req(ResourceType::Cluster, &[], "", ""), &v)
                .unwrap()
                .len(),
            1
        );
    }
}
