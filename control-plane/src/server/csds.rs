//! The Client Status Discovery Service (`envoy.service.status.v3`): which
//! config each connected node holds, resource by resource, and whether it is
//! SYNCED, STALE, NOT_SENT or in ERROR (with the client's NACK message).
//!
//! This file owns the translation of the registry's view of streams into
//! `ClientConfig`s and the node matchers of a `ClientStatusRequest`. It holds
//! no state: every answer is a fresh read of the registry and the cache.
//!
//! Per resource, of one type on one stream:
//! - a name the client holds (was sent): SYNCED when the last response of the
//!   type was ACKed, STALE while it is unanswered, ERROR when it was NACKed;
//! - a name the client asked for that it was never sent (it does not exist, or
//!   its node selection does not include it): NOT_SENT.
//!
//! A node with several streams (standalone CDS and LDS, say) is one
//! `ClientConfig` with the resources of all its streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, struct_matcher::path_segment::Segment,
    value_matcher::MatchPattern as ValuePattern, NodeMatcher, StringMatcher, StructMatcher,
};
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    client_config::GenericXdsConfig, ClientConfig, ClientStatusRequest, ClientStatusResponse,
    ConfigStatus,
};
use envoy_types::pb::google::protobuf::{value::Kind, Timestamp, Value};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::registry::{StreamStatus, TypeStatus};
use crate::snapshot::{ResourceType, Snapshot};

/// The `node.metadata` key under which CSDS reports a node's certificate
/// identity.
pub const IDENTITY_KEY: &str = "pylon.certificate_identity";

/// The CSDS service over the server's registry and cache.
#[derive(Debug, Clone)]
pub struct Csds {
    shared: Arc<Shared>,
}

impl Csds {
    /// A CSDS service reading `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Csds { shared }
    }

    /// The tonic service.
    pub fn service(self) -> ClientStatusDiscoveryServiceServer<Self> {
        ClientStatusDiscoveryServiceServer::new(self)
    }

    /// Answers one request: every connected node matching any of the request's
    /// matchers (every node when there are none).
    pub fn answer(&self, req: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        for m in &req.node_matchers {
            check_matcher(m)?;
        }
        let snap = self.shared.cache.current();
        let mut nodes: BTreeMap<String, Vec<StreamStatus>> = BTreeMap::new();
        for s in self.shared.registry.list() {
            let node = s.node_proto.clone().unwrap_or_default();
            if req.node_matchers.is_empty() || req.node_matchers.iter().any(|m| matches(m, &node)) {
                // By the full id: `s.node` is cut for display.
                nodes.entry(node.id.clone()).or_default().push(s);
            }
        }
        let config = nodes
            .into_values()
            .map(|streams| client_config(&streams, &snap, !req.exclude_resource_contents))
            .collect();
        Ok(ClientStatusResponse { config })
    }
}

fn client_config(streams: &[StreamStatus], snap: &Snapshot, contents: bool) -> ClientConfig {
    let mut generic_xds_configs = Vec::new();
    for s in streams {
        for ty in ResourceType::ALL {
            resources(ty, &s.types[ty], snap, contents, &mut generic_xds_configs);
        }
    }
    let mut node = streams
        .first()
        .and_then(|s| s.node_proto.as_deref().cloned());
    // Over mutual TLS, the certificate identity the node connected with, in
    // a metadata key of Pylon's own (CSDS has no field for it).
    if let (Some(n), Some(id)) = (
        node.as_mut(),
        streams.iter().find_map(|s| s.identity.clone()),
    ) {
        n.metadata
            .get_or_insert_with(Default::default)
            .fields
            .insert(
                IDENTITY_KEY.to_string(),
                Value {
                    kind: Some(Kind::StringValue(id)),
                },
            );
    }
    ClientConfig {
        node,
        generic_xds_configs,
        client_scope: String::new(),
        ..Default::default()
    }
}

fn resources(
    ty: ResourceType,
    t: &TypeStatus,
    snap: &Snapshot,
    contents: bool,
    out: &mut Vec<GenericXdsConfig>,
) {
    let (config_status, client_status) = match t.state() {
        "SYNCED" => (ConfigStatus::Synced, ClientResourceStatus::Acked),
        "ERROR" => (ConfigStatus::Error, ClientResourceStatus::Nacked),
        "STALE" => (ConfigStatus::Stale, ClientResourceStatus::Requested),
        _ => (ConfigStatus::NotSent, ClientResourceStatus::Requested),
    };
    let error_state = (config_status == ConfigStatus::Error)
        .then_some(t.last_nack.as_ref())
        .flatten()
        .map(|n| UpdateFailureState {
            failed_configuration: None,
            last_update_attempt: Some(timestamp(n.at_unix_ms)),
            details: n.message.clone(),
            version_info: n.version.clone(),
        });
    let last_updated = t.updated_at_unix_ms.map(timestamp);
    for (name, version) in t.held.sorted() {
        // What the stream sent (SotW), else the served resource if the
        // client holds that version (delta).
        let body = contents
            .then(|| {
                t.held.body(name).cloned().or_else(|| {
                    snap.get(ty)
                        .resources
                        .get(name)
                        .filter(|r| &*r.version == version)
                        .map(|r| r.body.clone())
                })
            })
            .flatten()
            // Secrets written inline (with --allow-inline-secrets) are never shown.
            .map(|b| crate::secrets::redacted(&b).unwrap_or(b));
        out.push(GenericXdsConfig {
            type_url: ty.type_url().to_string(),
            name: name.to_string(),
            version_info: version.to_string(),
            xds_config: body,
            last_updated,
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state: error_state.clone(),
            is_static_resource: false,
        });
    }
    for name in t.subscribed.iter().filter(|n| t.held.version(n).is_none()) {
        out.push(GenericXdsConfig {
            type_url: ty.type_url().to_string(),
            name: name.to_string(),
            config_status: ConfigStatus::NotSent as i32,
            client_status: if t.sent_nonce.is_some() {
                ClientResourceStatus::DoesNotExist
            } else {
                ClientResourceStatus::Requested
            } as i32,
            ..Default::default()
        });
    }
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp {
        seconds: (unix_ms / 1000) as i64,
        nanos: ((unix_ms % 1000) * 1_000_000) as i32,
    }
}

/// Rejects matchers this server cannot evaluate, rather than silently
/// matching nothing (or everything).
fn check_matcher(m: &NodeMatcher) -> Result<(), Status> {
    if let Some(id) = &m.node_id {
        check_string(id)?;
    }
    for s in &m.node_metadatas {
        match s.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
            Some(ValuePattern::StringMatch(sm)) => check_string(sm)?,
            Some(ValuePattern::BoolMatch(_) | ValuePattern::PresentMatch(_)) => {}
            _ => {
                return Err(Status::unimplemented(
                    "node_metadatas: only string_match, bool_match and present_match are supported",
                ))
            }
        }
        if s.path.iter().any(|p| p.segment.is_none()) || s.path.is_empty() {
            return Err(Status::invalid_argument(
                "node_metadatas: every path segment needs a key",
            ));
        }
    }
    Ok(())
}

fn check_string(m: &StringMatcher) -> Result<(), Status> {
    match &m.match_pattern {
        Some(
            MatchPattern::Exact(_)
            | MatchPattern::Prefix(_)
            | MatchPattern::Suffix(_)
            | MatchPattern::Contains(_),
        ) => Ok(()),
        Some(_) => Err(Status::unimplemented(
            "string matchers: only exact, prefix, suffix and contains are supported",
        )),
        None => Err(Status::invalid_argument("string matcher without a pattern")),
    }
}

fn matches(m: &NodeMatcher, node: &Node) -> bool {
    m.node_id
        .as_ref()
        .is_none_or(|sm| string_matches(sm, &node.id))
        && m.node_metadatas.iter().all(|s| metadata_matches(s, node))
}

fn string_matches(m: &StringMatcher, text: &str) -> bool {
    let (text, fold) = if m.ignore_case {
        (text.to_lowercase(), true)
    } else {
        (text.to_string(), false)
    };
    let norm = |p: &str| {
        if fold {
            p.to_lowercase()
        } else {
            p.to_string()
        }
    };
    match &m.match_pattern {
        Some(MatchPattern::Exact(p)) => text == norm(p),
        Some(MatchPattern::Prefix(p)) => text.starts_with(&norm(p)),
        Some(MatchPattern::Suffix(p)) => text.ends_with(&norm(p)),
        Some(MatchPattern::Contains(p)) => text.contains(&norm(p)),
        _ => false,
    }
}

fn metadata_matches(s: &StructMatcher, node: &Node) -> bool {
    let mut fields = node.metadata.as_ref().map(|m| &m.fields);
    let mut value: Option<&Value> = None;
    for (i, seg) in s.path.iter().enumerate() {
        let Some(Segment::Key(key)) = &seg.segment else {
            return false;
        };
        value = fields.and_then(|f| f.get(key));
        if i + 1 < s.path.len() {
            fields = match value.and_then(|v| v.kind.as_ref()) {
                Some(Kind::StructValue(st)) => Some(&st.fields),
                _ => None,
            };
        }
    }
    let kind = value.and_then(|v| v.kind.as_ref());
    match s.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(ValuePattern::StringMatch(sm)) => {
            matches!(kind, Some(Kind::StringValue(text)) if string_matches(sm, text))
        }
        Some(ValuePattern::BoolMatch(b)) => matches!(kind, Some(Kind::BoolValue(v)) if v == b),
        Some(ValuePattern::PresentMatch(present)) => kind.is_some() == *present,
        _ => false,
    }
}

impl Csds {
    /// Whether the client of `req` may read every node's config: always on a
    /// loopback plaintext listener (local tooling), over mutual TLS when a
    /// `clients:` rule naming its certificate says `csds: true`, never
    /// otherwise (TLS without client certificates, `--insecure` plaintext).
    fn permit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let allowed = match self.shared.transport {
            super::Transport::LocalPlaintext => true,
            super::Transport::MutualTls => super::identity(req)
                .is_some_and(|id| self.shared.cache.current().policy().csds_allowed(&id)),
            super::Transport::Tls | super::Transport::InsecurePlaintext => false,
        };
        if allowed {
            return Ok(());
        }
        self.shared.registry.metrics().denied_csds.inc();
        let who = super::identity(req)
            .map(|id| crate::registry::display(&id.display()))
            .unwrap_or_else(|| "an anonymous client".to_string());
        Err(Status::permission_denied(format!(
            "{who} may not read client status: CSDS is answered on a loopback plaintext \
             listener, or over mutual TLS to identities a `clients:` rule gives `csds: true`"
        )))
    }
}

type StatusOut = ReceiverStream<Result<ClientStatusResponse, Status>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = StatusOut;

    async fn stream_client_status(
        &self,
        req: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<StatusOut>, Status> {
        self.permit(&req)?;
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = requests.next().await {
                let answer = this.answer(&req);
                let stop = answer.is_err();
                if tx.send(answer).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_client_status(
        &self,
        req: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        self.permit(&req)?;
        self.answer(req.get_ref()).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::{struct_matcher::PathSegment, ValueMatcher};
    use envoy_types::pb::google::protobuf::Struct;

    fn node() -> Node {
        Node {
            id: "Edge-1".into(),
            metadata: Some(Struct {
                fields: [(
                    "region".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("eu-west".into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        }
    }

    fn id(pattern: MatchPattern, ignore_case: bool) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                ignore_case,
                match_pattern: Some(pattern),
            }),
            node_metadatas: Vec::new(),
        }
    }

    #[test]
    fn node_matchers() {
        let n = node();
        assert!(matches(
            &id(MatchPattern::Exact("Edge-1".into()), false),
            &n
        ));
        assert!(!matches(
            &id(MatchPattern::Exact("edge-1".into()), false),
            &n
        ));
        assert!(matches(&id(MatchPattern::Exact("edge-1".into()), true), &n));
        assert!(matches(&id(MatchPattern::Prefix("Edge".into()), false), &n));
        assert!(matches(&id(MatchPattern::Suffix("-1".into()), false), &n));
        assert!(!matches(
            &id(MatchPattern::Contains("core".into()), false),
            &n
        ));
        let meta = |key: &str, value: &str| NodeMatcher {
            node_id: None,
            node_metadatas: vec![StructMatcher {
                path: vec![PathSegment {
                    segment: Some(Segment::Key(key.into())),
                }],
                value: Some(ValueMatcher {
                    match_pattern: Some(ValuePattern::StringMatch(StringMatcher {
                        ignore_case: false,
                        match_pattern: Some(MatchPattern::Prefix(value.into())),
                    })),
                }),
            }],
        };
        assert!(matches(&meta("region", "eu-"), &n));
        assert!(!matches(&meta("region", "us-"), &n));
        assert!(!matches(&meta("zone", "eu-"), &n));
        assert!(check_matcher(&meta("region", "eu")).is_ok());
    }
}
