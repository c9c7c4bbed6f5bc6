//! Stats primitives, shared by every part of the proxy that counts.
//!
//! A crate-root module below the pipeline: `listener` and `upstream` declare
//! their stats with it without reaching into `runtime`, which only collects
//! them for the admin API.
//!
//! Owns: [`Counter`] and [`Gauge`] (plain atomics, `Relaxed`: a stat is never
//! used to synchronise memory), the `stats_struct!` macro that declares a
//! group of stats with their Envoy names, and [`Scopes`], a name -> stats map
//! so that two listeners with the same `stat_prefix` (or a cluster that is
//! replaced by a changed version of itself) share their counters, as Envoy's
//! stats store does. Does not own the stats of any component: clusters,
//! hosts, listeners and filters declare theirs next to their code.
//!
//! Nothing here is process-global: every runtime has its own stats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (active connections, ...).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one (saturating at zero would need a CAS loop; callers pair every
    /// `dec` with an earlier `inc`, usually through [`GaugeGuard`]).
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds one unless the value is already `max` or more, and says whether
    /// it did: a limit checked and taken in one atomic step. Two callers
    /// racing for the last place may both see it taken, never both get it.
    #[inline]
    pub fn try_inc(&self, max: u64) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Increments a gauge of a shared object now and decrements it when dropped
/// (`cx_active`, `rq_active`, ...).
pub struct GaugeGuard<T> {
    owner: Arc<T>,
    field: fn(&T) -> &Gauge,
}

impl<T> GaugeGuard<T> {
    /// Increments `field(&owner)`.
    pub fn new(owner: Arc<T>, field: fn(&T) -> &Gauge) -> Self {
        field(&owner).inc();
        GaugeGuard { owner, field }
    }

    /// The object whose gauge this guard holds.
    pub fn owner(&self) -> &Arc<T> {
        &self.owner
    }
}

impl<T> Drop for GaugeGuard<T> {
    fn drop(&mut self) {
        (self.field)(&self.owner).dec();
    }
}

impl<T> std::fmt::Debug for GaugeGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GaugeGuard")
    }
}

/// Something that can list its stats under a prefix.
pub trait StatGroup: Default + Send + Sync + 'static {
    /// Appends `(prefix + name, value)` for every stat of the group.
    fn collect(&self, prefix: &str, out: &mut Vec<(String, u64)>);
}

/// Declares a struct of [`Counter`]s and [`Gauge`]s with their Envoy stat names
/// and implements [`StatGroup`] for it.
macro_rules! stats_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident : $kind:ty => $stat:literal),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: $kind,)*
        }

        impl $crate::stats::StatGroup for $name {
            fn collect(&self, prefix: &str, out: &mut Vec<(String, u64)>) {
                $(out.push((format!("{prefix}{}", $stat), self.$field.get()));)*
            }
        }
    };
}
pub(crate) use stats_struct;

/// Stats groups of one kind, by scope name (e.g. `tcp.ingress.`), shared by
/// every user of that name. Entries nobody uses any more are dropped by
/// [`Scopes::prune`].
#[derive(Debug)]
pub struct Scopes<T> {
    map: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for Scopes<T> {
    fn default() -> Self {
        Scopes {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: StatGroup> Scopes<T> {
    /// The group for `prefix`, created on first use. Config path only.
    pub fn get(&self, prefix: &str) -> Arc<T> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = map.get(prefix) {
            return s.clone();
        }
        let s = Arc::new(T::default());
        map.insert(prefix.to_owned(), s.clone());
        s
    }

    /// Drops groups that nothing refers to any more.
    pub fn prune(&self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// Appends every stat of every group.
    pub fn collect(&self, out: &mut Vec<(String, u64)>) {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        for (prefix, s) in map.iter() {
            s.collect(prefix, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    stats_struct! {
        struct Demo {
            a: Counter => "a_total",
            b: Gauge => "sub.b_active",
        }
    }

    #[test]
    fn try_inc_stops_at_the_limit() {
        let g = Gauge::default();
        assert!(g.try_inc(2) && g.try_inc(2));
        assert!(!g.try_inc(2));
        assert_eq!(g.get(), 2);
        g.dec();
        assert!(g.try_inc(2));
        assert!(!Gauge::default().try_inc(0));
    }

    #[test]
    fn scopes_share_and_prune() {
        let scopes: Scopes<Demo> = Scopes::default();
        let one = scopes.get("x.");
        let two = scopes.get("x.");
        one.a.inc();
        two.a.add(2);
        {
            let _g = GaugeGuard::new(two.clone(), |d: &Demo| &d.b);
            assert_eq!(one.b.get(), 1);
        }
        assert_eq!(one.b.get(), 0);
        let mut out = Vec::new();
        scopes.collect(&mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                ("x.a_total".to_owned(), 3),
                ("x.sub.b_active".to_owned(), 0)
            ]
        );
        drop((one, two));
        scopes.prune();
        let mut out = Vec::new();
        scopes.collect(&mut out);
        assert!(out.is_empty());
    }
}
