//! The router's decision for one request, and the upstream request head.
//!
//! Owns [`prepare`]: from a request (HTTP/1.1 or HTTP/2, as borrowed
//! slices) to the cluster it goes to, its timeout and retry policy, and the
//! HTTP/1.1 head sent upstream, written once into a reused buffer: the
//! method, the path (normalised, rewritten), the headers that cross the
//! proxy copied as the client wrote them, then what the proxy adds (`host`
//! from an HTTP/2 `:authority`, `x-envoy-original-path`, `te: trailers`,
//! the framing). Or Envoy's local reply when the request goes nowhere (404
//! no route, 503 no cluster, 400 for a path that normalisation refuses).
//!
//! Does not own the route tables (`listener::route`) nor sending (`exchange`).

use std::sync::Arc;
use std::time::Duration;

use crate::http1::{header_line, Framing};
use crate::listener::path;
use crate::listener::route::RouteTable;
use crate::model::RetryPolicy;
use crate::upstream::Cluster;

use super::headers::{self, RequestInfo};
use super::{HttpCtx, LocalReply, Routes};

/// A request as the router sees it, whatever the client's protocol.
#[derive(Debug)]
pub struct Request<'b> {
    /// The method.
    pub method: &'b str,
    /// The request target: origin form (`/path?query`), absolute form, or `*`.
    pub target: &'b str,
    /// HTTP/2's `:authority` (HTTP/1.1 carries `Host` among the headers).
    pub authority: Option<&'b str>,
    /// The headers.
    pub headers: &'b [httparse::Header<'b>],
}

/// Where a request goes, decided before anything is sent.
#[derive(Debug)]
pub struct Forward {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The route timeout (`None`: disabled).
    pub timeout: Option<Duration>,
    /// The retry policy, if any.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Largest body kept for retries.
    pub retry_buffer_limit: usize,
    /// The method is `HEAD` (the response has no body).
    pub head_request: bool,
}

/// Splits a request target into (authority, path-and-query).
fn split_target(target: &str) -> (Option<&str>, &str) {
    let lower = |s: &str, p: &str| {
        s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let rest = if lower(target, "http://") {
        &target[7..]
    } else if lower(target, "https://") {
        &target[8..]
    } else {
        return (None, target);
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (Some(&rest[..i]), &rest[i..]),
        // `http://host?q` has an empty path: `/`.
        Some(i) => (Some(&rest[..i]), &rest[i..]),
        None => (Some(rest), "/"),
    }
}

/// Whether a path the route rewrote may go on a request line.
fn valid_target(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// Decides where `req` goes and writes the upstream request head into `out`
/// (cleared first), framed as `framing` says; or the local reply.
pub fn prepare(
    ctx: &HttpCtx,
    req: &Request<'_>,
    info: &RequestInfo<'_>,
    framing: Framing,
    out: &mut Vec<u8>,
) -> Result<Forward, LocalReply> {
    let (target_authority, raw_pq) = split_target(req.target);
    let normalized;
    let pq: &str = if ctx.normalize_path || ctx.merge_slashes {
        match path::normalize(raw_pq, ctx.normalize_path, ctx.merge_slashes) {
            Ok(p) => {
                normalized = p;
                &normalized
            }
            Err(path::InvalidPath) => {
                ctx.stats.downstream_rq_failed_path_normalization.inc();
                return Err(LocalReply::new(400, ""));
            }
        }
    } else {
        raw_pq
    };
    let host = || {
        info.host
            .and_then(|h| std::str::from_utf8(h).ok())
            .or(req.authority)
            .or(target_authority)
            .unwrap_or("")
    };
    let path_only = memchr::memchr(b'?', pq.as_bytes()).map_or(pq, |i| &pq[..i]);
    let decide = |t: &RouteTable| {
        // A table with only a `*` virtual host never reads the host.
        let host = if t.reads_host() { host() } else { "" };
        let route = t.route(host, path_only, pq)?;
        Some((
            route.cluster.get(),
            route.rewrite(pq),
            route.timeout,
            route.retry.clone(),
            route.retry_buffer_limit,
        ))
    };
    let decision = match &ctx.routes {
        Routes::Inline(t) => decide(t),
        Routes::Rds(slot) => slot.load().as_deref().and_then(decide),
    };
    let Some((cluster, rewrite, timeout, retry, retry_buffer_limit)) = decision else {
        ctx.stats.no_route.inc();
        return Err(LocalReply::new(404, ""));
    };
    let Some(cluster) = cluster else {
        ctx.stats.no_cluster.inc();
        return Err(LocalReply::new(503, ""));
    };
    if rewrite.as_deref().is_some_and(|t| !valid_target(t)) {
        return Err(LocalReply::new(400, ""));
    }
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(rewrite.as_deref().unwrap_or(pq).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    headers::write_request_headers(out, req.headers, info, rewrite.is_some());
    if info.host.is_none() {
        // An HTTP/2 `:authority` (or an absolute-form target) becomes Host.
        if let Some(a) = req.authority.or(target_authority) {
            header_line(out, b"host", a.as_bytes());
        }
    }
    if rewrite.is_some() {
        header_line(out, b"x-envoy-original-path", pq.as_bytes());
    }
    if info.te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) if info.content_length.is_none() => {
            header_line(out, b"content-length", n.to_string().as_bytes());
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(Forward {
        cluster,
        timeout,
        retry,
        retry_buffer_limit,
        head_request: req.method == "HEAD",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a?b"), (None, "/a?b"));
        assert_eq!(split_target("http://h:1/a?b"), (Some("h:1"), "/a?b"));
        assert_eq!(split_target("HTTPS://h"), (Some("h"), "/"));
        assert_eq!(split_target("*"), (None, "*"));
        assert!(valid_target("/a/b?c"));
        assert!(!valid_target("/a b"));
    }
}
