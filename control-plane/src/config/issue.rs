//! What the checks of both forms share: a problem found ([`Issue`]) and the
//! names each form defines and references ([`Catalog`]), which `validate`
//! cross-checks once both forms have been read.
//!
//! This file sits below every check so that `native`, `validate` and
//! `health_tls` all report problems the same way without importing each
//! other.

/// One semantic problem, at a path such as `clusters[1].endpoints[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A name (or address) and the path where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub path: String,
}

impl Named {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Named {
            name: name.into(),
            path: path.into(),
        }
    }
}

/// Everything defined and referenced in one file, from both forms, in file
/// order; the input of `validate::cross_references`.
#[derive(Debug, Default)]
pub struct Catalog {
    pub clusters: Vec<Named>,
    pub listeners: Vec<Named>,
    pub route_configs: Vec<Named>,
    /// Listener socket addresses, written as `ip:port`.
    pub addresses: Vec<Named>,
    /// Every place a cluster is named by a listener, a route or a node selection.
    pub cluster_refs: Vec<Named>,
    /// Every place a listener is named by a node selection.
    pub listener_refs: Vec<Named>,
}
