//! The current snapshot, the channel that wakes every open stream when it
//! changes, and what each node is served of it.
//!
//! The cache owns "what is being served now" and "what this node receives
//! of it": `source` publishes into it, and a `server` stream, once it knows
//! its node, subscribes with it ([`Cache::subscribe`]) and gets the node's
//! view of each snapshot; which `nodes:` selection applies is decided here,
//! not by the stream. It knows no gRPC and no YAML. Publishing a snapshot
//! whose version equals the current one is a no-op, so an edit that changes
//! nothing (a comment, a reordering) pushes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::selection::Policy;
use crate::snapshot::Snapshot;

/// Holds the current [`Snapshot`] and notifies subscribers of new ones.
#[derive(Debug, Clone)]
pub struct Cache {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Cache {
    /// A cache serving `initial`.
    pub fn new(initial: Snapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(initial));
        Cache { tx: Arc::new(tx) }
    }

    /// Makes `snapshot` current. Returns false (and wakes nobody) when its
    /// version equals the current one.
    pub fn publish(&self, snapshot: Snapshot) -> bool {
        let snapshot = Arc::new(snapshot);
        self.tx.send_if_modified(|cur| {
            if cur.version == snapshot.version {
                false
            } else {
                *cur = snapshot;
                true
            }
        })
    }

    /// Wakes every subscriber without changing the snapshot: how streams,
    /// which are woken only by their client and by new snapshots, learn that
    /// the server is stopping.
    pub fn wake(&self) {
        self.tx.send_modify(|_| {});
    }

    /// The snapshot being served, whole.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees the whole snapshot being served and every later
    /// one (and every [`Cache::wake`]): for a stream that does not know its
    /// node yet, and for readers that serve no node.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// What `node` receives: its view of the snapshot being served and, as a
    /// stream, its view of every later one.
    ///
    /// The view is the one the snapshot's `nodes:` selection picks for the
    /// node (the whole snapshot when none does); views are shared by every
    /// subscriber of the same selection. The node is kept, shared, for the
    /// views of later snapshots (a node cannot change on a stream).
    pub fn subscribe(&self, node: Arc<Node>) -> Subscription {
        let mut rx = self.tx.subscribe();
        let full = rx.borrow_and_update().clone();
        let selector = full.policy().select(&node);
        Subscription {
            view: full.view(selector),
            full,
            selector,
            node,
            changes: WatchStream::from_changes(rx),
        }
    }
}

/// One node's views of the snapshots the cache serves (see
/// [`Cache::subscribe`]).
///
/// As a [`Stream`], it yields the node's view of each snapshot published
/// after the one it was made with (and again on every [`Cache::wake`]); it
/// ends when the cache is gone. A subscriber that is slow to poll sees only
/// the latest snapshot, never a queue of them.
pub struct Subscription {
    node: Arc<Node>,
    /// The latest snapshot seen, whole.
    full: Arc<Snapshot>,
    /// The `nodes:` entry of `full` that matches the node (`None`: none).
    selector: Option<usize>,
    /// What the node receives of `full`.
    view: Arc<Snapshot>,
    changes: WatchStream<Arc<Snapshot>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("node", &self.node.id)
            .field("selection", &self.selection())
            .field("version", &self.full.version)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscribed node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The node's view of the latest snapshot seen: the one the subscription
    /// was made with, or the last one it yielded.
    pub fn current(&self) -> &Arc<Snapshot> {
        &self.view
    }

    /// The name of the `nodes:` entry that chose [`current`](Self::current)
    /// ([`DEFAULT_SELECTION`](crate::selection::DEFAULT_SELECTION) when none
    /// matches the node).
    pub fn selection(&self) -> &str {
        self.full.policy().name(self.selector)
    }

    /// The node policy of the latest snapshot seen (its `clients:` rules say
    /// who may claim the node).
    pub fn policy(&self) -> &Policy {
        self.full.policy()
    }
}

impl Stream for Subscription {
    type Item = Arc<Snapshot>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<Snapshot>>> {
        let this = &mut *self;
        match Pin::new(&mut this.changes).poll_next(cx) {
            Poll::Ready(Some(full)) => {
                this.selector = full.policy().select(&this.node);
                this.view = full.view(this.selector);
                this.full = full;
                Poll::Ready(Some(Arc::clone(&this.view)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[tokio::test]
    async fn publishing_the_same_content_wakes_nobody() {
        let cache = Cache::new(Snapshot::build(Resources::default(), None).unwrap());
        let mut rx = cache.watch();
        rx.borrow_and_update();
        assert!(!cache.publish(Snapshot::build(Resources::default(), None).unwrap()));
        assert!(!rx.has_changed().unwrap());
        let mut r = Resources::default();
        r.clusters
            .push(envoy_types::pb::envoy::config::cluster::v3::Cluster {
                name: "x".into(),
                ..Default::default()
            });
        assert!(cache.publish(Snapshot::build(r, None).unwrap()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().counts(), [1, 0, 0, 0]);
    }

    /// `two_clusters` (a and b) with a `nodes:` entry `only-b` for nodes
    /// whose id starts with `b-`, and `everything` (all listeners and
    /// clusters) for ids starting with `all-`.
    fn selected(mut r: Resources) -> Snapshot {
        use crate::selection::{Glob, Names, Policy, Selector};
        let selector = |name: &str, id: &str, names: Names| Selector {
            name: name.into(),
            id: Some(Glob::new(id)),
            cluster: None,
            metadata: Vec::new(),
            listeners: names.clone(),
            clusters: names,
        };
        r.policy = Policy {
            selectors: vec![
                selector("only-b", "b-*", Names::Only(["b".to_string()].into())),
                selector("everything", "all-*", Names::All),
            ],
            clients: Vec::new(),
        };
        Snapshot::build(r, None).unwrap()
    }

    fn clusters(s: &Snapshot) -> Vec<String> {
        use crate::snapshot::ResourceType;
        let names = s.get(ResourceType::Cluster).resources.keys();
        names.map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_subscriber_gets_its_nodes_selection() {
        use crate::server::tests::{node, Fixture};
        let cache = Cache::new(selected(Fixture::two_clusters()));

        let b = cache.subscribe(Arc::new(node("b-1")));
        assert_eq!(b.selection(), "only-b");
        assert_eq!(clusters(b.current()), ["b"]);
        assert_eq!(b.node().id, "b-1");
        // Every subscriber of a selection shares its view.
        let b2 = cache.subscribe(Arc::new(node("b-2")));
        assert!(Arc::ptr_eq(b.current(), b2.current()));

        // No entry matches: the default selection, the whole snapshot.
        let other = cache.subscribe(Arc::new(node("other")));
        assert_eq!(other.selection(), crate::selection::DEFAULT_SELECTION);
        assert!(Arc::ptr_eq(other.current(), &cache.current()));

        // An entry that selects everything is served the whole snapshot but
        // keeps its own name.
        let all = cache.subscribe(Arc::new(node("all-1")));
        assert_eq!(all.selection(), "everything");
        assert!(Arc::ptr_eq(all.current(), &cache.current()));
    }

    #[test]
    fn a_subscriber_gets_its_view_of_every_new_snapshot_once() {
        use crate::server::tests::{node, Fixture};
        use futures::{FutureExt as _, StreamExt as _};
        let cache = Cache::new(selected(Fixture::one_cluster()));
        let mut b = cache.subscribe(Arc::new(node("b-1")));
        assert!(clusters(b.current()).is_empty());
        // Nothing new yet: the snapshot it was made with is not yielded.
        assert!(b.next().now_or_never().is_none());

        assert!(cache.publish(selected(Fixture::two_clusters())));
        let view = b.next().now_or_never().flatten().expect("a new view");
        assert_eq!(clusters(&view), ["b"]);
        assert!(Arc::ptr_eq(&view, b.current()));
        assert_eq!(view.version, cache.current().version);
        assert!(b.next().now_or_never().is_none());

        // The same content again wakes nobody.
        assert!(!cache.publish(selected(Fixture::two_clusters())));
        assert!(b.next().now_or_never().is_none());

        // Without the cache, the subscription ends.
        drop(cache);
        assert!(b.next().now_or_never().expect("ended").is_none());
    }
}
