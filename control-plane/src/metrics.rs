//! Prometheus metrics of one pylon-xds server.
//!
//! Owned here: the registry and every metric handle. Streams and the reloader
//! update them; `admin` encodes them for `/metrics`. Each server has its own
//! [`Metrics`] (no global registry), so tests can run several servers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set naming an xDS type (`cds`, `eds`, `lds`, `rds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The type's short name.
    pub r#type: String,
}

/// Label set of a NACK.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NackLabels {
    /// The node id that rejected the response.
    pub node: String,
    /// The rejected type's short name.
    pub r#type: String,
}

/// Label set naming the config version in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The snapshot version.
    pub version: String,
}

/// Every metric of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open xDS streams.
    pub connected_streams: Gauge,
    /// Responses sent, by type.
    pub pushes: Family<TypeLabel, Counter>,
    /// Seconds from a snapshot's creation to a response carrying it being queued on a stream.
    pub push_latency: Histogram,
    /// NACKs received, by node and type.
    pub nacks: Family<NackLabels, Counter>,
    /// Requests ignored because their nonce was not the latest one sent.
    pub stale_nonces: Family<TypeLabel, Counter>,
    /// Requests for a type URL Pylon does not serve.
    pub unknown_types: Counter,
    /// Successful reloads that changed the snapshot.
    pub reloads: Counter,
    /// Reload attempts rejected (bad YAML, failed validation).
    pub reload_errors: Counter,
    /// 1 while the file on disk is valid, 0 while an invalid edit is being ignored.
    pub config_valid: Gauge,
    /// 1 for the version being served.
    pub config_version: Family<VersionLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under `pylon_xds_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pylon_xds");
        let connected_streams = Gauge::default();
        registry.register(
            "connected_streams",
            "Open xDS streams",
            connected_streams.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register("pushes", "xDS responses sent, by type", pushes.clone());
        let push_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "push_latency_seconds",
            "Time from a snapshot being built to a response carrying it being sent",
            push_latency.clone(),
        );
        let nacks = Family::<NackLabels, Counter>::default();
        registry.register("nacks", "NACKs received, by node and type", nacks.clone());
        let stale_nonces = Family::<TypeLabel, Counter>::default();
        registry.register(
            "stale_nonces",
            "Requests ignored because their nonce was stale",
            stale_nonces.clone(),
        );
        let unknown_types = Counter::default();
        registry.register(
            "unknown_type_requests",
            "Requests for a type URL that is not served",
            unknown_types.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "reloads",
            "Reloads that published a new snapshot",
            reloads.clone(),
        );
        let reload_errors = Counter::default();
        registry.register(
            "reload_errors",
            "Reloads rejected because the file was invalid",
            reload_errors.clone(),
        );
        let config_valid = Gauge::default();
        registry.register(
            "config_valid",
            "1 while the config file is valid, 0 while an invalid edit is ignored",
            config_valid.clone(),
        );
        let config_version = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "config_version_info",
            "The snapshot version being served (value 1)",
            config_version.clone(),
        );
        Metrics {
            registry,
            connected_streams,
            pushes,
            push_latency,
            nacks,
            stale_nonces,
            unknown_types,
            reloads,
            reload_errors,
            config_valid,
            config_version,
        }
    }

    /// Records that `version` is now served.
    pub fn set_version(&self, version: &str) {
        self.config_version.clear();
        self.config_version
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
