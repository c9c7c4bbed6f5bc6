//! The four xDS resource types both planes speak, and a map with one slot per
//! type.
//!
//! Both binaries name a type the same way: `ResourceType` for the type itself
//! (its type URL, its short name for logs and metrics, its full-set rule) and
//! `PerType<T>` for anything kept once per type (stream state, counters,
//! versions, statuses). Nothing else spells the four types.

use std::fmt;
use std::ops::{Index, IndexMut};

/// The four resource types Pylon serves and pylon-proxy subscribes to, in
/// make-before-break order: clusters, then endpoints, then listeners, then
/// routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster = 0,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint = 1,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener = 2,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route = 3,
}

impl ResourceType {
    /// Every type, in the order a stream requests and sends them.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => crate::type_url::CLUSTER,
            ResourceType::Endpoint => crate::type_url::ENDPOINT,
            ResourceType::Listener => crate::type_url::LISTENER,
            ResourceType::Route => crate::type_url::ROUTE,
        }
    }

    /// The type a type URL names, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The protobuf message's full name (the type URL without its prefix).
    pub fn message_name(self) -> &'static str {
        let url = self.type_url();
        url.strip_prefix("type.googleapis.com/").unwrap_or(url)
    }

    /// The short name used in logs, metrics and status: "cds", "eds", "lds",
    /// "rds".
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    /// The resource in words, as error messages name it: "cluster", "load
    /// assignment", "listener", "route configuration".
    pub fn noun(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoint => "load assignment",
            ResourceType::Listener => "listener",
            ResourceType::Route => "route configuration",
        }
    }

    /// Whether a state-of-the-world response of this type carries the full set
    /// (LDS, CDS): a resource left out is deleted, and an empty first request
    /// means wildcard. EDS and RDS responses may carry only what changed.
    pub fn is_full_set(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One `T` per resource type, indexed by [`ResourceType`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PerType<T>([T; 4]);

impl<T> PerType<T> {
    /// A map built by calling `f` once per type, in [`ResourceType::ALL`]
    /// order.
    pub fn from_fn(mut f: impl FnMut(ResourceType) -> T) -> Self {
        PerType(ResourceType::ALL.map(&mut f))
    }

    /// A map of the values given in [`ResourceType::ALL`] order.
    pub fn from_array(values: [T; 4]) -> Self {
        PerType(values)
    }

    /// The slots with their types, in [`ResourceType::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(self.0.iter())
    }

    /// The slots with their types, mutable, in [`ResourceType::ALL`] order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ResourceType, &mut T)> {
        ResourceType::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// The values alone, in [`ResourceType::ALL`] order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// A map of `f` applied to every slot.
    pub fn map<U>(self, mut f: impl FnMut(ResourceType, T) -> U) -> PerType<U> {
        let mut types = ResourceType::ALL.into_iter();
        PerType(self.0.map(|v| match types.next() {
            Some(ty) => f(ty, v),
            // `ALL` has exactly as many entries as the array has slots.
            None => unreachable!("PerType has one slot per ResourceType"),
        }))
    }
}

/// The slots with their types, by value, in [`ResourceType::ALL`] order.
impl<T> IntoIterator for PerType<T> {
    type Item = (ResourceType, T);
    type IntoIter =
        std::iter::Zip<std::array::IntoIter<ResourceType, 4>, std::array::IntoIter<T, 4>>;
    fn into_iter(self) -> Self::IntoIter {
        ResourceType::ALL.into_iter().zip(self.0)
    }
}

impl<T> Index<ResourceType> for PerType<T> {
    type Output = T;
    fn index(&self, ty: ResourceType) -> &T {
        &self.0[ty as usize]
    }
}

impl<T> IndexMut<ResourceType> for PerType<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        &mut self.0[ty as usize]
    }
}

/// Serialised as an object keyed by the types' short names (`cds`, `eds`,
/// `lds`, `rds`), in [`ResourceType::ALL`] order.
impl<T: serde::Serialize> serde::Serialize for PerType<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        for (ty, v) in self.iter() {
            map.serialize_entry(ty.short(), v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for ty in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(ty.type_url()), Some(ty));
            assert!(ty.type_url().ends_with(ty.message_name()));
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x.Y"), None);
        assert_eq!(ResourceType::Endpoint.short(), "eds");
        assert_eq!(ResourceType::Route.to_string(), "rds");
    }

    #[test]
    fn only_lds_and_cds_are_full_sets() {
        let full: Vec<_> = ResourceType::ALL
            .into_iter()
            .filter(|t| t.is_full_set())
            .collect();
        assert_eq!(full, [ResourceType::Cluster, ResourceType::Listener]);
    }

    #[test]
    fn per_type_indexes_by_type() {
        let mut m = PerType::from_fn(|t| t.short().len() + t as usize);
        assert_eq!(m[ResourceType::Cluster], 3);
        assert_eq!(m[ResourceType::Route], 6);
        m[ResourceType::Listener] = 0;
        let seen: Vec<_> = m.iter().map(|(t, v)| (t, *v)).collect();
        assert_eq!(
            seen,
            [
                (ResourceType::Cluster, 3),
                (ResourceType::Endpoint, 4),
                (ResourceType::Listener, 0),
                (ResourceType::Route, 6)
            ]
        );
        let names = m.map(|t, _| t.noun());
        assert_eq!(names[ResourceType::Endpoint], "load assignment");
        for (_, v) in m.iter_mut() {
            *v += 1;
        }
        assert_eq!(m.values().sum::<usize>(), 17);
    }

    #[test]
    fn per_type_serialises_keyed_by_short_name() {
        let m = PerType::from_fn(|t| t as u8);
        let yaml = serde_yaml::to_string(&m).unwrap();
        assert_eq!(yaml, "cds: 0\neds: 1\nlds: 2\nrds: 3\n");
    }
}
