//! Per-node selection: which part of a snapshot each node receives.
//!
//! This module owns the matching rules of the config's `nodes:` section. A
//! [`Policy`] is an ordered list of [`Selector`]s; a node receives what the
//! first selector that matches it names, and a node that matches none receives
//! everything (the [`DEFAULT_SELECTION`]). A selector names listeners and
//! clusters (or `all` of either); what those listeners use (their route
//! configurations and clusters) and the load assignments of the selected
//! clusters come with them, so a node's view is always consistent.
//!
//! It also owns the `clients:` rules: which certificate identity may claim
//! which nodes over mutual TLS, and which may read CSDS
//! ([`Policy::authorize`], [`Policy::csds_allowed`]).
//!
//! It knows nothing of YAML (`config` builds policies) nor of encoded resources
//! (`snapshot` narrows a snapshot to a selection), nor of TLS (the server
//! hands it the identity a verified certificate names).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Value};
use pylon::tls::Identity;
use serde::Serialize;

/// The selection name of a node that matches no selector: it receives every
/// resource.
pub const DEFAULT_SELECTION: &str = "default";

/// Every selector of one config revision, in file order (first match wins),
/// and its `clients:` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Policy {
    /// The selectors, in file order.
    pub selectors: Vec<Selector>,
    /// Who may claim which node, and read CSDS; empty: no rules.
    pub clients: Vec<ClientRule>,
}

/// One entry of `clients:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ClientRule {
    /// The certificate SANs the rule is for.
    pub identity: IdentityGlob,
    /// The nodes such an identity may claim (`id`, `cluster` globs; `None`
    /// matches any); `None`: no node.
    pub nodes: Option<(Option<Glob>, Option<Glob>)>,
    /// Whether it may read every node's config over CSDS.
    pub csds: bool,
}

/// A glob on one kind of SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityGlob {
    /// On URI SANs.
    Uri(Glob),
    /// On DNS SANs.
    Dns(Glob),
}

impl IdentityGlob {
    fn matches(&self, id: &Identity) -> bool {
        match self {
            IdentityGlob::Uri(g) => id.uris.iter().any(|u| g.matches(u)),
            IdentityGlob::Dns(g) => id.dns.iter().any(|d| g.matches(d)),
        }
    }
}

/// Why a verified identity may not have a stream for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No rule names the identity.
    UnknownIdentity,
    /// Rules name it, but none lets it claim this node.
    NodeNotAllowed,
}

impl Denied {
    /// Every reason, for metrics that start at 0.
    pub const ALL: [Denied; 2] = [Denied::UnknownIdentity, Denied::NodeNotAllowed];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::UnknownIdentity => "unknown_identity",
            Denied::NodeNotAllowed => "node_not_allowed",
        }
    }
}

/// One entry of `nodes:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Selector {
    /// Shown in status, `/nodes` and CSDS.
    pub name: String,
    /// Glob on `node.id`; `None` matches any id.
    pub id: Option<Glob>,
    /// Glob on `node.cluster`; `None` matches any cluster.
    pub cluster: Option<Glob>,
    /// Every key must be present in `node.metadata` with a value matching the
    /// glob (numbers and booleans are matched by their text).
    pub metadata: Vec<(String, Glob)>,
    /// The listeners the node receives.
    pub listeners: Names,
    /// The clusters the node receives besides those its listeners use.
    pub clusters: Names,
}

/// `all`, or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Names {
    /// Every resource of the kind.
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Names {
    /// Whether `name` is selected.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Only(names) => names.contains(name),
        }
    }
}

impl Default for Names {
    fn default() -> Self {
        Names::Only(BTreeSet::new())
    }
}

impl Policy {
    /// The index of the first selector matching `node`; `None` means the
    /// default (everything).
    pub fn select(&self, node: &Node) -> Option<usize> {
        self.selectors.iter().position(|s| s.matches(node))
    }

    /// Whether `identity` (from a verified client certificate) may claim the
    /// node `id` of `cluster`. Without `clients:` rules, any may.
    pub fn authorize(&self, identity: &Identity, id: &str, cluster: &str) -> Result<(), Denied> {
        if self.clients.is_empty() {
            return Ok(());
        }
        let mut known = false;
        for rule in self.clients.iter().filter(|r| r.identity.matches(identity)) {
            known = true;
            if let Some((id_glob, cluster_glob)) = &rule.nodes {
                if id_glob.as_ref().is_none_or(|g| g.matches(id))
                    && cluster_glob.as_ref().is_none_or(|g| g.matches(cluster))
                {
                    return Ok(());
                }
            }
        }
        Err(if known {
            Denied::NodeNotAllowed
        } else {
            Denied::UnknownIdentity
        })
    }

    /// Whether `identity` may read every node's config over CSDS (a rule
    /// naming it says `csds: true`).
    pub fn csds_allowed(&self, identity: &Identity) -> bool {
        self.clients
            .iter()
            .any(|r| r.csds && r.identity.matches(identity))
    }

    /// The selection name for an index returned by [`Policy::select`].
    pub fn name(&self, index: Option<usize>) -> &str {
        index
            .and_then(|i| self.selectors.get(i))
            .map_or(DEFAULT_SELECTION, |s| s.name.as_str())
    }
}

impl Selector {
    /// Whether every condition of this selector holds for `node`.
    pub fn matches(&self, node: &Node) -> bool {
        if self.id.as_ref().is_some_and(|g| !g.matches(&node.id)) {
            return false;
        }
        if self
            .cluster
            .as_ref()
            .is_some_and(|g| !g.matches(&node.cluster))
        {
            return false;
        }
        self.metadata.iter().all(|(key, glob)| {
            node.metadata
                .as_ref()
                .and_then(|m| m.fields.get(key))
                .and_then(value_text)
                .is_some_and(|text| glob.matches(&text))
        })
    }

    /// Whether this selector hands out everything.
    pub fn is_everything(&self) -> bool {
        self.listeners == Names::All && self.clusters == Names::All
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::BoolValue(b) => Some(b.to_string()),
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
            Some(format!("{}", *n as i64))
        }
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A shell-style pattern: `*` matches any run of characters (`/` included),
/// `?` exactly one; everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Glob(String);

impl Glob {
    /// A glob from its text; every text is a valid glob.
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob(pattern.into())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let t: Vec<char> = text.chars().collect();
        // Iterative matching with one backtrack point (the last `*`): linear
        // in practice, never exponential.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Struct;

    #[test]
    fn globs() {
        let cases = [
            ("edge-*", "edge-1", true),
            ("edge-*", "edge-", true),
            ("edge-*", "core-1", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.example:*", "greeter.example:50051", true),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbc", false),
            ("exact", "exact", true),
            ("exact", "exact2", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Glob::new(pattern).matches(text),
                expected,
                "{pattern} ~ {text}"
            );
        }
    }

    fn node(id: &str, cluster: &str, meta: &[(&str, Kind)]) -> Node {
        Node {
            id: id.into(),
            cluster: cluster.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn selector(name: &str) -> Selector {
        Selector {
            name: name.into(),
            id: None,
            cluster: None,
            metadata: Vec::new(),
            listeners: Names::All,
            clusters: Names::default(),
        }
    }

    #[test]
    fn first_match_wins_and_unmatched_nodes_get_the_default() {
        let policy = Policy {
            selectors: vec![
                Selector {
                    id: Some(Glob::new("edge-*")),
                    metadata: vec![("region".into(), Glob::new("eu-*"))],
                    ..selector("edge-eu")
                },
                Selector {
                    cluster: Some(Glob::new("grpc")),
                    ..selector("grpc")
                },
                Selector {
                    metadata: vec![("replicas".into(), Glob::new("3"))],
                    ..selector("three")
                },
            ],
            clients: Vec::new(),
        };
        let eu = node(
            "edge-1",
            "x",
            &[("region", Kind::StringValue("eu-west".into()))],
        );
        let us = node(
            "edge-1",
            "x",
            &[("region", Kind::StringValue("us-east".into()))],
        );
        let grpc = node("client", "grpc", &[]);
        let three = node("n", "c", &[("replicas", Kind::NumberValue(3.0))]);
        let index = |n: &Node| policy.name(policy.select(n)).to_string();
        assert_eq!(index(&eu), "edge-eu");
        assert_eq!(index(&us), DEFAULT_SELECTION);
        assert_eq!(index(&grpc), "grpc");
        assert_eq!(index(&three), "three");
        assert_eq!(index(&Node::default()), DEFAULT_SELECTION);
    }

    #[test]
    fn client_rules_bind_identities_to_nodes() {
        let rule = |identity, nodes: Option<(Option<&str>, Option<&str>)>, csds| ClientRule {
            identity,
            nodes: nodes.map(|(i, c)| (i.map(Glob::new), c.map(Glob::new))),
            csds,
        };
        let policy = Policy {
            selectors: Vec::new(),
            clients: vec![
                rule(
                    IdentityGlob::Uri(Glob::new("spiffe://pylon.test/edge/*")),
                    Some((Some("edge-*"), Some("edge"))),
                    false,
                ),
                rule(IdentityGlob::Dns(Glob::new("*.ops.test")), None, true),
            ],
        };
        let uri = |u: &str| Identity {
            uris: vec![u.to_string()],
            dns: Vec::new(),
        };
        let edge = uri("spiffe://pylon.test/edge/7");
        assert_eq!(policy.authorize(&edge, "edge-7", "edge"), Ok(()));
        assert_eq!(
            policy.authorize(&edge, "core-1", "edge"),
            Err(Denied::NodeNotAllowed)
        );
        assert_eq!(
            policy.authorize(&edge, "edge-7", "core"),
            Err(Denied::NodeNotAllowed)
        );
        assert_eq!(
            policy.authorize(&uri("spiffe://other/edge/7"), "edge-7", "edge"),
            Err(Denied::UnknownIdentity)
        );
        let ops = Identity {
            uris: Vec::new(),
            dns: vec!["a.ops.test".to_string()],
        };
        // CSDS only, no node.
        assert!(policy.csds_allowed(&ops));
        assert!(!policy.csds_allowed(&edge));
        assert_eq!(
            policy.authorize(&ops, "edge-7", "edge"),
            Err(Denied::NodeNotAllowed)
        );
        // No rules: any verified identity may claim any node.
        assert_eq!(Policy::default().authorize(&edge, "x", "y"), Ok(()));
        assert!(!Policy::default().csds_allowed(&ops));
    }
}
