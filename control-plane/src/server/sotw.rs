//! State-of-the-world xDS streams (aggregated or single-type).
//!
//! [`SotwStream`] is the per-stream protocol state machine, free of I/O: it
//! takes a request or a new snapshot and returns the responses to send, in
//! order. `server::drive` runs it on a gRPC stream. The rules it implements are in
//! `shared/reference/xds-protocol.md`:
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
//!   listeners and routes that used them have been replaced, then removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;
use tracing::{debug, warn};

use super::limits::{check_name_count, check_names, check_subscribed_bytes};
use super::wire::Outgoing;
use crate::metrics::TypeLabel;
use crate::registry::{Held, StreamGuard};
use crate::snapshot::{intern, Resource, ResourceMap, ResourceType, Snapshot};

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
    /// Shared with the registry entry; interned against the snapshot.
    names: Arc<BTreeSet<Arc<str>>>,
    last_nonce: Option<String>,
    sent_version: Option<String>,
    /// What the last response of this type carried (shared with the registry
    /// entry; for a wildcard, with the snapshot).
    sent: ResourceMap,
    /// Answer the next request even if nothing changed (warming).
    always_respond: bool,
    /// The view content (`TypeSnapshot::content`) `sent` was selected from,
    /// while the subscription has not changed since: the same content would
    /// select the same resources.
    sent_from: Option<String>,
    /// Bytes of `names` (for the stream's limit on subscribed names).
    name_bytes: usize,
}

/// The protocol state of one SotW stream.
#[derive(Debug)]
pub struct SotwStream {
    types: [TypeState; 4],
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
        let node = self.guard.node().to_string();
        let other_types_bytes: usize = ResourceType::ALL
            .into_iter()
            .filter(|&o| o != ty)
            .map(|o| self.types[o as usize].name_bytes)
            .sum();
        let t = &mut self.types[ty as usize];
        let initial = t.last_nonce.is_none();
        if !initial && t.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            if req.response_nonce.is_empty() {
                // A client that lost track of the stream's nonces: answer it.
                debug!(
                    node,
                    r#type = ty.short(),
                    "request without nonce on a live stream"
                );
            } else {
                self.guard.stale_nonce(ty);
                debug!(node, r#type = ty.short(), nonce = %req.response_nonce, "stale nonce; ignored");
                return Ok(Vec::new());
            }
        }
        let nack = req.error_detail.as_ref();
        if let Some(err) = nack {
            let rejected = t.sent_version.clone().unwrap_or_default();
            warn_nack(&self.guard, ty, &rejected, &err.message);
            self.guard
                .nacked(ty, &rejected, &req.response_nonce, &err.message);
        } else if !req.response_nonce.is_empty() {
            self.guard.acked(ty, &req.version_info);
        }

        let explicit_wildcard = req
            .resource_names
            .iter()
            .any(|n| n == pylon::type_url::WILDCARD);
        let names: BTreeSet<String> = req
            .resource_names
            .into_iter()
            .filter(|n| n != pylon::type_url::WILDCARD)
            .collect();
        let was_wildcard = t.wildcard;
        if !t.seen {
            t.seen = true;
            t.wildcard = explicit_wildcard || (ty.is_full_set() && names.is_empty());
        } else if explicit_wildcard {
            t.wildcard = true;
        } else if !names.is_empty() || !ty.is_full_set() {
            // A legacy wildcard lasts while the client keeps naming nothing.
            t.wildcard = false;
        }
        let grew =
            (t.wildcard && !was_wildcard) || names.iter().any(|n| !t.names.contains(n.as_str()));
        // Most requests are ACKs repeating the subscription: keep it (and copy
        // it into the registry) only when it changed.
        let same_names = names.len() == t.names.len()
            && names.iter().zip(t.names.iter()).all(|(a, b)| *a == **b);
        if t.wildcard != was_wildcard || !same_names {
            let bytes = names.iter().map(String::len).sum();
            check_subscribed_bytes(self.guard.metrics(), other_types_bytes + bytes)?;
            t.name_bytes = bytes;
            let all = &snap.get(ty).resources;
            t.names = Arc::new(names.into_iter().map(|n| intern(all, n)).collect());
            t.sent_from = None;
            self.guard.subscribed(ty, t.wildcard, Arc::clone(&t.names));
        }
        let respond = initial || grew || (t.always_respond && nack.is_none());
        if !respond {
            return Ok(Vec::new());
        }
        t.always_respond = false;
        Ok(vec![self.respond(ty, snap, &BTreeMap::new(), "")])
    }

    /// Handles a new snapshot: sends whatever changed for this stream, in
    /// make-before-break order.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        let mut out = Vec::new();
        let changed: Vec<ResourceType> = ResourceType::ALL
            .into_iter()
            .filter(|&ty| {
                let t = &self.types[ty as usize];
                t.seen
                    && t.sent_from.as_ref() != Some(&snap.get(ty).content)
                    && !same_content(&t.sent, &self.select(ty, snap))
            })
            .collect();
        // Clusters the stream holds that the new snapshot drops: keep them in an
        // interim CDS response while listeners/routes that used them change.
        let cds = &self.types[ResourceType::Cluster as usize];
        let retiring: BTreeMap<Arc<str>, Arc<Resource>> = cds
            .sent
            .iter()
            .filter(|(name, _)| {
                !snap
                    .get(ResourceType::Cluster)
                    .resources
                    .contains_key(*name)
            })
            .map(|(n, r)| (n.clone(), Arc::clone(r)))
            .collect();
        let later_types_change = changed
            .iter()
            .any(|t| matches!(t, ResourceType::Listener | ResourceType::Route));
        let two_phase = !retiring.is_empty() && later_types_change;
        for &ty in &changed {
            if ty == ResourceType::Cluster && two_phase {
                out.push(self.respond(ty, snap, &retiring, "-retiring"));
            } else {
                out.push(self.respond(ty, snap, &BTreeMap::new(), ""));
            }
        }
        if two_phase {
            out.push(self.respond(ResourceType::Cluster, snap, &BTreeMap::new(), ""));
        }
        let latency = snap.created.elapsed().as_secs_f64();
        for _ in &out {
            self.guard.metrics().push_latency.observe(latency);
        }
        out
    }

    /// The resources of `ty` this stream should hold in `snap`.
    fn select(&self, ty: ResourceType, snap: &Snapshot) -> ResourceMap {
        let t = &self.types[ty as usize];
        let all = &snap.get(ty).resources;
        if t.wildcard {
            Arc::clone(all)
        } else {
            Arc::new(
                t.names
                    .iter()
                    .filter_map(|n| all.get(n).map(|r| (Arc::clone(&r.name), Arc::clone(r))))
                    .collect(),
            )
        }
    }

    fn respond(
        &mut self,
        ty: ResourceType,
        snap: &Snapshot,
        extra: &BTreeMap<Arc<str>, Arc<Resource>>,
        version_suffix: &str,
    ) -> Outgoing<DiscoveryResponse> {
        let mut selected = self.select(ty, snap);
        if !extra.is_empty() {
            let all = Arc::make_mut(&mut selected);
            for (n, r) in extra {
                all.entry(n.clone()).or_insert_with(|| Arc::clone(r));
            }
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = format!("{}{}", snap.get(ty).version, version_suffix);
        let resources = selected.values().cloned().collect();
        self.guard
            .sent(ty, &version, &nonce, Held::Sent(Arc::clone(&selected)));
        self.guard.metrics().pushes.get_or_create(&label(ty)).inc();
        debug!(node = self.guard.node(), r#type = ty.short(), %version, %nonce, n = selected.len(), "send");
        let t = &mut self.types[ty as usize];
        t.last_nonce = Some(nonce.clone());
        t.sent_version = Some(version.clone());
        t.sent = selected;
        t.sent_from = extra.is_empty().then(|| snap.get(ty).content.clone());
        match ty {
            ResourceType::Cluster => {
                self.types[ResourceType::Endpoint as usize].always_respond = true
            }
            ResourceType::Listener => {
                self.types[ResourceType::Route as usize].always_respond = true
            }
            _ => {}
        }
        Outgoing {
            message: DiscoveryResponse {
                version_info: version,
                type_url: ty.type_url().to_string(),
                nonce,
                ..Default::default()
            },
            resources,
        }
    }
}

fn same_content(
    a: &BTreeMap<Arc<str>, Arc<Resource>>,
    b: &BTreeMap<Arc<str>, Arc<Resource>>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
}

fn label(ty: ResourceType) -> TypeLabel {
    TypeLabel {
        r#type: ty.short().to_string(),
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
        assert_eq!(reg.list()[0].types.cds.state(), "SYNCED");
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
        assert_eq!(st.types.cds.state(), "ERROR");
        assert_eq!(
            st.types.cds.last_nack.as_ref().unwrap().message,
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
        let out = s.on_snapshot(&snapshot(&Fixture::two_clusters()));
        assert_eq!(out.len(), 1);
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
