//! The current snapshot, and the channel that wakes every open stream when it changes.
//!
//! The cache owns "what is being served now". It knows no gRPC and no YAML:
//! `source` publishes into it, `server` streams subscribe to it. Publishing a
//! snapshot whose version equals the current one is a no-op, so an edit that
//! changes nothing (a comment, a reordering) pushes nothing.

use std::sync::Arc;

use tokio::sync::watch;

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

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees the current snapshot and every later one.
    ///
    /// Every node receives the whole config for now; per-node selection will
    /// narrow what a subscriber sees here.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[tokio::test]
    async fn publishing_the_same_content_wakes_nobody() {
        let cache = Cache::new(Snapshot::build(Resources::default(), None).unwrap());
        let mut rx = cache.subscribe();
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
}
