//! What changes between two revisions of the config, resource by resource:
//! what `apply` shows before writing, and what `history` and `diff` print.
//!
//! Owned here: comparing two snapshots by type and name, using the
//! resources' content-hashed versions (so a change of comments or key order
//! is no change), and writing the result for people. Not owned: reading
//! revisions (`etcd`).

use std::fmt::Write as _;

use crate::snapshot::{ResourceType, Snapshot};

/// What happened to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// In the new revision only.
    Added,
    /// In both, with different content.
    Changed,
    /// In the old revision only.
    Removed,
}

impl ChangeKind {
    fn sign(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Changed => '~',
            ChangeKind::Removed => '-',
        }
    }
}

/// One resource that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its type.
    pub ty: ResourceType,
    /// Its name.
    pub name: String,
    /// Added, changed or removed.
    pub kind: ChangeKind,
}

/// The differences between two revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Resources that differ, by type then name.
    pub changes: Vec<Change>,
    /// The snapshot versions differ though no resource does: the `nodes:`
    /// selections or `clients:` rules changed.
    pub policy_changed: bool,
    /// The old revision's version (`None`: there was none, or it was invalid).
    pub from_version: Option<String>,
    /// The new revision's version.
    pub to_version: String,
}

/// The word for a resource type in diffs.
pub fn type_word(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "cluster",
        ResourceType::Endpoint => "load assignment",
        ResourceType::Listener => "listener",
        ResourceType::Route => "route configuration",
    }
}

/// Compares `old` (`None`: nothing) with `new`.
pub fn diff(old: Option<&Snapshot>, new: &Snapshot) -> Diff {
    let mut changes = Vec::new();
    for ty in ResourceType::ALL {
        let after = &new.get(ty).resources;
        match old {
            None => changes.extend(after.keys().map(|name| Change {
                ty,
                name: name.to_string(),
                kind: ChangeKind::Added,
            })),
            Some(old) => {
                let before = &old.get(ty).resources;
                for (name, r) in after.iter() {
                    let kind = match before.get(name) {
                        None => ChangeKind::Added,
                        Some(b) if b.version != r.version => ChangeKind::Changed,
                        Some(_) => continue,
                    };
                    changes.push(Change {
                        ty,
                        name: name.to_string(),
                        kind,
                    });
                }
                changes.extend(
                    before
                        .keys()
                        .filter(|n| !after.contains_key(*n))
                        .map(|name| Change {
                            ty,
                            name: name.to_string(),
                            kind: ChangeKind::Removed,
                        }),
                );
            }
        }
    }
    changes.sort_by(|a, b| (a.ty, &a.name).cmp(&(b.ty, &b.name)));
    let policy_changed = old.is_some_and(|o| o.version != new.version) && changes.is_empty();
    Diff {
        changes,
        policy_changed,
        from_version: old.map(|o| o.version.clone()),
        to_version: new.version.clone(),
    }
}

impl Diff {
    /// Whether nothing served differs.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.policy_changed
    }

    /// One line: `+1 cluster, ~2 listeners, -1 route configuration`, or
    /// `no change`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for kind in [ChangeKind::Added, ChangeKind::Changed, ChangeKind::Removed] {
            for ty in ResourceType::ALL {
                let n = self
                    .changes
                    .iter()
                    .filter(|c| c.kind == kind && c.ty == ty)
                    .count();
                if n > 0 {
                    let word = type_word(ty);
                    let plural = if n == 1 { "" } else { "s" };
                    parts.push(format!("{}{n} {word}{plural}", kind.sign()));
                }
            }
        }
        if self.policy_changed {
            parts.push("nodes:/clients: rules changed".to_string());
        }
        if parts.is_empty() {
            "no change".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// One line per change (`  + cluster web-2`), then the versions.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let _ = writeln!(out, "  {} {} {}", c.kind.sign(), type_word(c.ty), c.name);
        }
        if self.policy_changed {
            let _ = writeln!(
                out,
                "  ~ the nodes: selections or clients: rules (no resource changed)"
            );
        }
        if self.is_empty() {
            let _ = writeln!(out, "  (no change to what is served)");
        }
        let from = self.from_version.as_deref().unwrap_or("-");
        let _ = writeln!(out, "  version {from} -> {}", self.to_version);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(yaml: &str) -> Snapshot {
        let r = crate::config::load_str("t.yaml", yaml).unwrap();
        Snapshot::build(r, None).unwrap()
    }

    const BASE: &str = "
clusters:
  - name: a
    endpoints: [127.0.0.1:1001]
  - name: b
    endpoints: [127.0.0.1:1002]
listeners:
  - name: l
    address: 127.0.0.1:8000
    tcp_proxy: {cluster: a}
";

    #[test]
    fn resources_are_added_changed_and_removed_by_type_and_name() {
        let old = snap(BASE);
        let new = snap(
            "
clusters:
  - name: a
    endpoints: [127.0.0.1:1009]
  - name: c
    endpoints: [127.0.0.1:1003]
listeners:
  - name: l
    address: 127.0.0.1:8000
    tcp_proxy: {cluster: a}
",
        );
        let d = diff(Some(&old), &new);
        let lines: Vec<String> = d
            .changes
            .iter()
            .map(|c| format!("{:?} {} {}", c.kind, type_word(c.ty), c.name))
            .collect();
        assert_eq!(
            lines,
            [
                "Removed cluster b",
                "Added cluster c",
                "Changed load assignment a",
                "Removed load assignment b",
                "Added load assignment c",
            ]
        );
        assert_eq!(
            d.summary(),
            "+1 cluster, +1 load assignment, ~1 load assignment, -1 cluster, -1 load assignment"
        );
        assert!(d.render().contains("  - cluster b\n"), "{}", d.render());
    }

    #[test]
    fn comments_and_key_order_are_no_change() {
        let old = snap(BASE);
        let new = snap(&format!("# a comment\n{BASE}"));
        let d = diff(Some(&old), &new);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.summary(), "no change");
        let from_nothing = diff(None, &new);
        assert_eq!(from_nothing.changes.len(), 5);
        assert!(from_nothing
            .changes
            .iter()
            .all(|c| c.kind == ChangeKind::Added));
    }

    #[test]
    fn a_selection_change_alone_is_named() {
        let old = snap(BASE);
        let new = snap(&format!(
            "{BASE}nodes:\n  - name: edge\n    match: {{id: \"edge-*\"}}\n    listeners: all\n"
        ));
        let d = diff(Some(&old), &new);
        assert!(d.policy_changed && !d.is_empty());
        assert_eq!(d.summary(), "nodes:/clients: rules changed");
    }
}
