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
//! It knows nothing of YAML (`config` builds policies) nor of encoded resources
//! (`snapshot` narrows a snapshot to a selection).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Value};
use serde::Serialize;

/// The selection name of a node that matches no selector: it receives every
/// resource.
pub const DEFAULT_SELECTION: &str = "default";

/// Every selector of one config revision, in file order (first match wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Policy {
    /// The selectors, in file order.
    pub selectors: Vec<Selector>,
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
}
