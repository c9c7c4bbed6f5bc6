//! `pylon-xds render`: what a node would receive, as protobuf JSON.
//!
//! Owned here: turning one snapshot (or a node selection's view of it) into
//! a JSON document that lists every resource with its name, its version
//! and its content, by type, with each type's version and the snapshot's.
//! Operators read it to see exactly what their Envoys will get; the fleet
//! benchmark hands it to another control plane so that both serve the same
//! resources.
//!
//! The content is the protobuf JSON mapping with the proto field names
//! (`connect_timeout`, not `connectTimeout`), as Envoy writes its config
//! dump, and `"@type"` in every `Any`. **No secret material is printed:** a
//! private key, PKCS #12 bundle, key password or session ticket key written
//! inline is replaced as CSDS replaces it ([`crate::secrets::redacted`]).
//!
//! Host names in endpoints are not resolved (as `validate`): the running
//! server serves their addresses; the document lists such names under
//! `unresolved_host_names`. This module knows no gRPC and reads no files.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};

use crate::resources::NamedEndpoint;
use crate::snapshot::{ResourceType, Snapshot};

/// Why a resource could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The descriptor set has no such message (a build defect).
    #[error("{type_url}: not in Pylon's descriptor set")]
    UnknownType {
        /// The resource's type.
        type_url: String,
    },
    /// The encoded resource did not decode, or could not be written as JSON.
    #[error("{kind} {name:?}: {message}")]
    Resource {
        /// "cds", "eds", "lds" or "rds".
        kind: &'static str,
        /// The resource name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// The key each type is listed under.
fn key(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "clusters",
        ResourceType::Endpoint => "endpoints",
        ResourceType::Listener => "listeners",
        ResourceType::Route => "routes",
    }
}

/// The document for `node` (the whole revision when `None`, as a node that
/// matches no `nodes:` entry gets). `unresolved` lists the `host:port`
/// endpoints the running server would resolve.
pub fn render(
    snapshot: Arc<Snapshot>,
    node: Option<&Node>,
    unresolved: &[String],
) -> Result<Value, RenderError> {
    let view = match node {
        Some(n) => snapshot.view(snapshot.policy().select(n)),
        None => snapshot,
    };
    let mut doc = Map::new();
    doc.insert("version".into(), json!(view.version));
    doc.insert("selection".into(), json!(view.selection));
    if let Some(n) = node {
        doc.insert("node".into(), json!({"id": n.id, "cluster": n.cluster}));
    }
    for ty in ResourceType::ALL {
        let t = view.get(ty);
        let resources = t
            .resources
            .values()
            .map(|r| {
                Ok(json!({
                    "name": &*r.name,
                    "version": &*r.version,
                    "resource": any_json(ty, &r.name, &r.body)?,
                }))
            })
            .collect::<Result<Vec<_>, RenderError>>()?;
        doc.insert(
            key(ty).into(),
            json!({"type_url": ty.type_url(), "version": &*t.version, "resources": resources}),
        );
    }
    if !unresolved.is_empty() {
        doc.insert("unresolved_host_names".into(), json!(unresolved));
    }
    Ok(Value::Object(doc))
}

/// The `host:port` endpoints of `names` (see [`crate::resources::Resources`]),
/// sorted and without repeats.
pub fn host_names(names: &[crate::resources::NamedAssignment]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .flat_map(|a| a.endpoints.iter())
        .filter_map(|e| match e {
            NamedEndpoint::Name { host, port, .. } => Some(format!("{host}:{port}")),
            NamedEndpoint::Fixed(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `body` (its secrets redacted) as protobuf JSON with `"@type"`.
fn any_json(ty: ResourceType, name: &str, body: &Any) -> Result<Value, RenderError> {
    let body = crate::secrets::redacted(body).unwrap_or_else(|| body.clone());
    let pool = pylon::descriptor_pool();
    let full_name = body
        .type_url
        .strip_prefix("type.googleapis.com/")
        .unwrap_or(&body.type_url);
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| RenderError::UnknownType {
            type_url: body.type_url.clone(),
        })?;
    let failed = |message: String| RenderError::Resource {
        kind: ty.short(),
        name: name.to_string(),
        message,
    };
    let msg = DynamicMessage::decode(desc, body.value.as_slice())
        .map_err(|e| failed(format!("does not decode: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let value = msg
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| failed(format!("cannot be written as JSON: {e}")))?;
    let mut out = Map::new();
    out.insert("@type".into(), json!(body.type_url));
    if let Value::Object(fields) = value {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_bytes, Options};

    fn snapshot(yaml: &str, options: &Options) -> Arc<Snapshot> {
        let r = load_bytes("pylon.yaml", yaml.as_bytes(), options).unwrap();
        Arc::new(Snapshot::build(r, None).unwrap())
    }

    const YAML: &str = "clusters:\n  - name: web\n    connect_timeout: 2s\n    endpoints: [127.0.0.1:8081]\n  - name: spare\n    endpoints: [127.0.0.1:8082]\nlisteners:\n  - name: front\n    address: 127.0.0.1:8000\n    http:\n      routes: [{prefix: /, cluster: web}]\nnodes:\n  - name: edge\n    match: {id: \"edge-*\"}\n    listeners: [front]\n";

    #[test]
    fn every_resource_with_its_version_and_proto_field_names() {
        let snap = snapshot(YAML, &Options::default());
        let doc = render(Arc::clone(&snap), None, &[]).unwrap();
        assert_eq!(doc["version"], json!(snap.version));
        assert_eq!(doc["selection"], "default");
        let clusters = doc["clusters"]["resources"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        let spare = &clusters[0];
        assert_eq!(spare["name"], "spare");
        assert_eq!(
            spare["version"],
            json!(&*snap.get(ResourceType::Cluster).resources["spare"].version)
        );
        assert_eq!(
            spare["resource"]["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(clusters[1]["resource"]["connect_timeout"], "2s");
        assert_eq!(
            doc["clusters"]["version"],
            json!(&*snap.get(ResourceType::Cluster).version)
        );
        // Nested Anys are written with their type too.
        let hcm = &doc["listeners"]["resources"][0]["resource"]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(
            hcm["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(hcm["rds"]["route_config_name"], "front");
    }

    #[test]
    fn a_node_gets_its_selection() {
        let snap = snapshot(YAML, &Options::default());
        let node = Node {
            id: "edge-1".into(),
            ..Default::default()
        };
        let doc = render(snap, Some(&node), &[]).unwrap();
        assert_eq!(doc["selection"], "edge");
        let names: Vec<&str> = doc["clusters"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web"]);
    }

    #[test]
    fn inline_secrets_are_never_printed() {
        let secret = "-----BEGIN PRIVATE KEY-----MIIEsecret";
        let yaml = format!(
            "static_resources:\n  clusters:\n  - name: tls\n    type: STATIC\n    load_assignment:\n      cluster_name: tls\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 443}}}}}}}}]}}]\n    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        common_tls_context:\n          tls_certificates:\n          - certificate_chain: {{filename: /etc/tls.crt}}\n            private_key: {{inline_string: \"{secret}\"}}\n"
        );
        let options = Options {
            allow_inline_secrets: true,
            ..Options::default()
        };
        let doc = render(snapshot(&yaml, &options), None, &[]).unwrap();
        let text = doc.to_string();
        assert!(!text.contains("MIIEsecret"), "{text}");
        assert!(text.contains(crate::secrets::REDACTED), "{text}");
        assert!(text.contains("/etc/tls.crt"), "{text}");
    }
}
