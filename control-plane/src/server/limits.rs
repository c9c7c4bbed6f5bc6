//! How much one client may make pylon-xds hold, and how it is refused
//! beyond that.
//!
//! xDS clients are not authenticated: anyone who reaches the port chooses
//! its node, its resource names and how many streams it opens. What a
//! stream keeps (its node, the names it subscribes to, what a delta client
//! says it holds) is therefore bounded here, per stream and per server, and
//! a request that would exceed a bound ends its stream with a status naming
//! the limit. Every refusal is counted in `pylon_xds_refused_requests_total`
//! by [`Reason`]; none is labelled with anything the client chose.
//!
//! Size limits end the stream with `RESOURCE_EXHAUSTED` (as the count of
//! names already did): the client sent more than this server keeps, and the
//! same request would be refused again. The stream limit answers
//! `UNAVAILABLE`: this server is full, and a client should try another or
//! retry later.

use tonic::Status;

use crate::metrics::Metrics;
/// Why a request was refused; defined beside the metric it labels.
pub use crate::metrics::Reason;
use crate::snapshot::ResourceType;

/// The largest `Node` a stream may present, encoded (id, cluster, metadata,
/// locality, extensions, everything). Envoy's own node, with its list of
/// extensions, is a few KiB.
pub const MAX_NODE_BYTES: usize = 64 * 1024;

/// The longest resource name (or `initial_resource_versions` version) a
/// request may carry. Real names are cluster, listener and route names; a
/// config with a longer one is refused by validation.
pub use crate::resources::MAX_NAME_BYTES;

/// The most bytes of resource names one stream may subscribe to, all types
/// together, counting names and versions a delta client declares in
/// `initial_resource_versions`. 100,000 names of 40 bytes fit.
pub const MAX_SUBSCRIBED_BYTES: usize = 4 * 1024 * 1024;

/// The most resource names one stream may subscribe to for one type (SotW:
/// in one request; delta: in total, and in `initial_resource_versions`).
///
/// Well above any real fleet (one name per cluster or route configuration).
pub const MAX_NAMES_PER_TYPE: usize = 100_000;

/// Default for `--max-streams`; the registry, which counts open streams,
/// enforces it.
pub use crate::registry::DEFAULT_MAX_STREAMS;

/// Counts a refusal for `reason` and returns `status` to end the stream with.
pub fn refuse(metrics: &Metrics, reason: Reason, status: Status) -> Status {
    metrics.refused(reason);
    status
}

/// `RESOURCE_EXHAUSTED` when a node encodes to more than [`MAX_NODE_BYTES`].
pub fn check_node(metrics: &Metrics, encoded_len: usize) -> Result<(), Status> {
    if encoded_len > MAX_NODE_BYTES {
        return Err(refuse(
            metrics,
            Reason::NodeTooLarge,
            Status::resource_exhausted(format!(
                "the node is {encoded_len} bytes encoded; at most {MAX_NODE_BYTES} are accepted \
                 (id, cluster, metadata and the rest together)"
            )),
        ));
    }
    Ok(())
}

/// `RESOURCE_EXHAUSTED` when one of `names` (a `what`: "resource name",
/// "version") is longer than [`MAX_NAME_BYTES`].
pub fn check_names<'a>(
    metrics: &Metrics,
    ty: ResourceType,
    what: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    match names.into_iter().find(|n| n.len() > MAX_NAME_BYTES) {
        Some(long) => Err(refuse(
            metrics,
            Reason::NameTooLong,
            Status::resource_exhausted(format!(
                "a {} {what} of {} bytes ({}); at most {MAX_NAME_BYTES} bytes are accepted",
                ty.short(),
                long.len(),
                pylon::throttle::truncate(long, 64)
            )),
        )),
        None => Ok(()),
    }
}

/// `RESOURCE_EXHAUSTED` when `count` names of `ty` exceed [`MAX_NAMES_PER_TYPE`].
pub fn check_name_count(metrics: &Metrics, ty: ResourceType, count: usize) -> Result<(), Status> {
    if count > MAX_NAMES_PER_TYPE {
        return Err(refuse(
            metrics,
            Reason::TooManyNames,
            Status::resource_exhausted(format!(
                "{count} {} resource names on one stream; at most {MAX_NAMES_PER_TYPE} are served per type",
                ty.short()
            )),
        ));
    }
    Ok(())
}

/// `RESOURCE_EXHAUSTED` when a stream's subscribed names add up to more
/// than [`MAX_SUBSCRIBED_BYTES`].
pub fn check_subscribed_bytes(metrics: &Metrics, bytes: usize) -> Result<(), Status> {
    if bytes > MAX_SUBSCRIBED_BYTES {
        return Err(refuse(
            metrics,
            Reason::SubscriptionTooLarge,
            Status::resource_exhausted(format!(
                "the stream's resource names add up to {bytes} bytes; at most {MAX_SUBSCRIBED_BYTES} \
                 are kept per stream"
            )),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_only() {
        let m = Metrics::new();
        assert!(check_node(&m, MAX_NODE_BYTES).is_ok());
        let st = check_node(&m, MAX_NODE_BYTES + 1).unwrap_err();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        let at_cap = "n".repeat(MAX_NAME_BYTES);
        let over = "n".repeat(MAX_NAME_BYTES + 1);
        let ty = ResourceType::Endpoint;
        assert!(check_names(&m, ty, "resource name", [at_cap.as_str()]).is_ok());
        let st = check_names(&m, ty, "resource name", ["a", over.as_str()]).unwrap_err();
        assert!(st.message().contains("1025 bytes"), "{st:?}");
        assert!(st.message().len() < 300, "{st:?}");
        assert!(check_subscribed_bytes(&m, MAX_SUBSCRIBED_BYTES).is_ok());
        assert!(check_subscribed_bytes(&m, MAX_SUBSCRIBED_BYTES + 1).is_err());
        let text = m.encode();
        for (reason, n) in [
            ("node_too_large", 1),
            ("name_too_long", 1),
            ("subscription_too_large", 1),
            ("too_many_streams", 0),
        ] {
            let line = format!("pylon_xds_refused_requests_total{{reason=\"{reason}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
