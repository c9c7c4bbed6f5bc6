//! Prometheus metrics of one pylon-xds server.
//!
//! Owned here: the registry and every metric handle. Streams and the reloader
//! update them; `admin` encodes them for `/metrics`. Each server has its own
//! [`Metrics`] (no global registry), so tests can run several servers.
//!
//! No label takes a value a client chose (a node id, a type URL): each label
//! has a fixed, small set of values, so what `/metrics` holds does not grow
//! with what clients send. Who NACKed what is in `/nodes` and CSDS.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use pylon::PerType;

/// Label set naming an xDS type (`cds`, `eds`, `lds`, `rds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The type's short name.
    pub r#type: String,
}

/// Why a request was refused: the `reason` label of
/// `pylon_xds_refused_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The node is over `server::limits::MAX_NODE_BYTES`.
    NodeTooLarge,
    /// A name or version is over `server::limits::MAX_NAME_BYTES`.
    NameTooLong,
    /// More than `server::limits::MAX_NAMES_PER_TYPE` names of one type.
    TooManyNames,
    /// Subscribed names over `server::limits::MAX_SUBSCRIBED_BYTES` on one stream.
    SubscriptionTooLarge,
    /// The server already serves `--max-streams` streams.
    TooManyStreams,
    /// A request message over the 4 MiB limit (`OUT_OF_RANGE`).
    RequestTooLarge,
    /// A request that is not valid protobuf (`INTERNAL`).
    Undecodable,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NodeTooLarge => "node_too_large",
            Reason::NameTooLong => "name_too_long",
            Reason::TooManyNames => "too_many_names",
            Reason::SubscriptionTooLarge => "subscription_too_large",
            Reason::TooManyStreams => "too_many_streams",
            Reason::RequestTooLarge => "request_too_large",
            Reason::Undecodable => "undecodable",
        }
    }

    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 7] = [
        Reason::NodeTooLarge,
        Reason::NameTooLong,
        Reason::TooManyNames,
        Reason::SubscriptionTooLarge,
        Reason::TooManyStreams,
        Reason::RequestTooLarge,
        Reason::Undecodable,
    ];
}

/// Label set naming why a request was refused ([`Reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason's label value, e.g. `node_too_large`.
    pub reason: &'static str,
}

/// Label set naming a listener (`xds`, `admin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// The listener.
    pub listener: &'static str,
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
    /// The counters of `pushes`, by `ResourceType` index (counted without
    /// looking the label up).
    push_counters: PerType<Counter>,
    /// Seconds from a snapshot's creation to a response carrying it being queued on a stream.
    pub push_latency: Histogram,
    /// NACKs received, by type.
    pub nacks: Family<TypeLabel, Counter>,
    /// Requests refused by a limit (the stream ends), by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Streams refused because the client's certificate may not claim their
    /// node (`clients:` rules), by reason.
    pub denied_streams: Family<ReasonLabel, Counter>,
    /// CSDS requests refused (no `csds: true` rule for the identity, or a
    /// transport without identities).
    pub denied_csds: Counter,
    /// TLS handshakes refused or timed out on the xDS listener.
    pub tls_handshake_failures: Counter,
    /// Failed reloads of a listener's certificate, key or CA since start (set
    /// at scrape time, see [`Metrics::refresh_tls`]).
    pub tls_reload_errors: Family<ListenerLabel, Gauge>,
    /// 1 while a listener's certificate files load, 0 while the last reload
    /// failed (the last good set stays in use).
    pub tls_files_valid: Family<ListenerLabel, Gauge>,
    /// When a listener's certificate in use expires, in Unix seconds.
    pub tls_certificate_not_after: Family<ListenerLabel, Gauge>,
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
    /// Tasks alive on the tokio runtime serving xDS (set by [`Metrics::refresh_process`]).
    pub tokio_alive_tasks: Gauge,
    /// Resident set size of this process in bytes (set by [`Metrics::refresh_process`]).
    pub resident_memory: Gauge,
    /// Failed lookups of endpoint host names (`crate::dns`).
    pub dns_lookup_failures: Counter,
    /// Endpoint host names whose last lookup failed (their last good
    /// addresses are being served).
    pub dns_names_failing: Gauge,
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
        let push_counters = PerType::from_fn(|ty| {
            pushes
                .get_or_create(&TypeLabel {
                    r#type: ty.short().to_string(),
                })
                .clone()
        });
        let push_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "push_latency_seconds",
            "Time from a snapshot being built to a response carrying it being sent",
            push_latency.clone(),
        );
        let nacks = Family::<TypeLabel, Counter>::default();
        registry.register("nacks", "NACKs received, by type", nacks.clone());
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests refused by a limit, ending their stream, by reason",
            refused.clone(),
        );
        // Every reason from the start, at 0: a rate over a series that
        // appears only with the first refusal misses that refusal.
        for reason in Reason::ALL {
            refused
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
        let denied_streams = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "denied_streams",
            "Streams refused because the client certificate's identity may not claim their node, by reason",
            denied_streams.clone(),
        );
        for d in crate::selection::Denied::ALL {
            denied_streams
                .get_or_create(&ReasonLabel { reason: d.as_str() })
                .inc_by(0);
        }
        let denied_csds = Counter::default();
        registry.register(
            "denied_csds_requests",
            "CSDS requests refused: the identity has no `csds: true` rule, or the transport carries no identity",
            denied_csds.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused (no or an untrusted or expired client certificate, plaintext) or timed out on the xDS listener",
            tls_handshake_failures.clone(),
        );
        let tls_reload_errors = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "tls_reload_errors",
            "Failed reloads of a listener's certificate, key or CA since start; the last good set stays in use",
            tls_reload_errors.clone(),
        );
        let tls_files_valid = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "tls_files_valid",
            "1 while a listener's certificate files load, 0 while the last reload failed",
            tls_files_valid.clone(),
        );
        let tls_certificate_not_after = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "When the certificate a listener presents expires (Unix seconds)",
            tls_certificate_not_after.clone(),
        );
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
        let tokio_alive_tasks = Gauge::default();
        registry.register(
            "tokio_alive_tasks",
            "Tasks alive on the tokio runtime (streams, connections, watchers), read at scrape time",
            tokio_alive_tasks.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the process in bytes (VmRSS), read at scrape time",
            resident_memory.clone(),
        );
        let dns_lookup_failures = Counter::default();
        registry.register(
            "dns_lookup_failures",
            "Failed lookups of endpoint host names (the last good addresses are kept)",
            dns_lookup_failures.clone(),
        );
        let dns_names_failing = Gauge::default();
        registry.register(
            "dns_names_failing",
            "Endpoint host names whose last lookup failed",
            dns_names_failing.clone(),
        );
        Metrics {
            registry,
            dns_lookup_failures,
            dns_names_failing,
            connected_streams,
            pushes,
            push_counters,
            push_latency,
            nacks,
            refused,
            denied_streams,
            denied_csds,
            tls_handshake_failures,
            tls_reload_errors,
            tls_files_valid,
            tls_certificate_not_after,
            stale_nonces,
            unknown_types,
            reloads,
            reload_errors,
            config_valid,
            config_version,
            tokio_alive_tasks,
            resident_memory,
        }
    }

    /// Fills the gauges read at scrape time: the alive tasks of `runtime` (the
    /// one serving xDS, which is not the admin API's) and the process's
    /// resident memory (on Linux). A value that cannot be read keeps its
    /// previous one.
    pub fn refresh_process(&self, runtime: Option<&tokio::runtime::Handle>) {
        if let Some(handle) = runtime {
            let alive = handle.metrics().num_alive_tasks();
            self.tokio_alive_tasks
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
    }

    /// Fills the TLS gauges of `listener` from its TLS state.
    pub fn refresh_tls(&self, listener: &'static str, tls: &pylon::tls::ServerTls) {
        let label = ListenerLabel { listener };
        let status = tls.status();
        self.tls_reload_errors
            .get_or_create(&label)
            .set(i64::try_from(tls.reload_errors()).unwrap_or(i64::MAX));
        self.tls_files_valid
            .get_or_create(&label)
            .set(i64::from(status.last_error.is_none()));
        if let Some(t) = status.not_after_unix {
            self.tls_certificate_not_after.get_or_create(&label).set(t);
        }
    }

    /// Counts a response of `ty` sent.
    pub fn pushed(&self, ty: crate::snapshot::ResourceType) {
        self.push_counters[ty].inc();
    }

    /// Counts a request refused for `reason`.
    pub fn refused(&self, reason: Reason) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a stream denied for `reason`.
    pub fn denied(&self, reason: crate::selection::Denied) {
        self.denied_streams
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
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

/// `VmRSS` from `/proc/self/status`, in bytes; `None` where there is no procfs.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` document, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_parsed_in_bytes() {
        let status = "Name:\tpylon-xds\nVmHWM:\t   9000 kB\nVmRSS:\t   8192 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(8192 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[tokio::test]
    async fn process_gauges_are_filled_at_scrape_time() {
        let m = Metrics::new();
        assert!(m.encode().contains("pylon_xds_tokio_alive_tasks 0"));
        let task = tokio::spawn(std::future::pending::<()>());
        m.refresh_process(Some(&tokio::runtime::Handle::current()));
        let text = m.encode();
        assert!(m.tokio_alive_tasks.get() >= 1, "{text}");
        assert!(!text.contains("pylon_xds_tokio_alive_tasks 0\n"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(m.resident_memory.get() > 1024 * 1024, "{text}");
        }
        task.abort();
    }
}
