//! Which headers cross the proxy, on raw `(name, value)` slices.
//!
//! Owns the one pass over a request's headers that reads what framing,
//! connection management and routing need ([`scan_request`]), the copy of
//! the request headers that go upstream ([`write_request_headers`]) and of
//! the response headers that go downstream ([`write_response_headers`], or
//! [`response_header_map`] for HTTP/2 clients). Header names are compared
//! ASCII case-insensitively, by length first; nothing is copied into a map
//! on the HTTP/1.1 path.
//!
//! Hop-by-hop headers are not forwarded either way (`connection`,
//! `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`), nor the
//! headers a `Connection` header names (RFC 9110 7.6.1). For requests,
//! Envoy's rules apply: ten or more `Connection` tokens, or naming
//! `x-forwarded-for`, `-host`, `-proto` or a pseudo-header, refuse the
//! request (400); `close`, `keep-alive`, `upgrade` and `http2-settings` name
//! no header; `host` and `te` are never dropped that way; `expect` is not
//! forwarded (the proxy answers `100 Continue` itself) and `te` only as
//! `te: trailers` when it holds `trailers`.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http1::{self, eq_lower, header_line, tokens};

/// What a header name is, for the headers that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Connection,
    KeepAlive,
    ProxyConnection,
    TransferEncoding,
    Upgrade,
    Expect,
    Te,
    Host,
    ContentLength,
    Date,
    OriginalPath,
    Other,
}

#[inline]
fn classify(name: &[u8]) -> Name {
    let is = |n: &[u8]| eq_lower(name, n);
    match name.len() {
        2 if is(b"te") => Name::Te,
        4 if is(b"host") => Name::Host,
        4 if is(b"date") => Name::Date,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::KeepAlive,
        14 if is(b"content-length") => Name::ContentLength,
        16 if is(b"proxy-connection") => Name::ProxyConnection,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        21 if is(b"x-envoy-original-path") => Name::OriginalPath,
        _ => Name::Other,
    }
}

/// Headers removed in both directions.
#[inline]
fn hop_by_hop(n: Name) -> bool {
    matches!(
        n,
        Name::Connection
            | Name::KeepAlive
            | Name::ProxyConnection
            | Name::TransferEncoding
            | Name::Upgrade
    )
}

/// Most tokens a request's `Connection` header may carry (Envoy's limit).
const MAX_CONNECTION_TOKENS: usize = 10;

/// Why a request's headers are refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// Ten or more `Connection` tokens.
    TooManyTokens,
    /// `Connection` names `x-forwarded-for`, `-host`, `-proto` or a
    /// pseudo-header: dropping those would hide where the request came from.
    Protected,
    /// `content-length` invalid, or two different ones.
    ContentLength,
    /// A `transfer-encoding` other than a final `chunked`, in an HTTP/1.0
    /// request, or beside `content-length`.
    TransferEncoding,
}

/// Connection tokens that name no header (`close`, `keep-alive` and
/// `upgrade` are connection options; `http2-settings` belongs to h2c upgrades).
fn is_connection_option(token: &[u8]) -> bool {
    eq_lower(token, b"close")
        || eq_lower(token, b"keep-alive")
        || eq_lower(token, b"upgrade")
        || eq_lower(token, b"http2-settings")
}

/// What one pass over a request's headers found.
#[derive(Debug, Default)]
pub struct RequestInfo<'b> {
    /// The first `Host` value.
    pub host: Option<&'b [u8]>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The headers `Connection` names (never `host` or `te`).
    nominated: Vec<&'b [u8]>,
    /// The `content-length`, if any.
    pub content_length: Option<u64>,
    /// A `transfer-encoding` header is present; whether its last coding is chunked.
    pub transfer_encoding: Option<bool>,
    /// `te` holds `trailers`.
    pub te_trailers: bool,
    /// `expect: 100-continue`.
    pub expect_continue: bool,
}

/// Reads what framing, connection management and routing need from a
/// request's headers, applying Envoy's `Connection` rules.
pub fn scan_request<'b>(headers: &[httparse::Header<'b>]) -> Result<RequestInfo<'b>, BadRequest> {
    let mut info = RequestInfo::default();
    let mut connection_tokens = 0;
    for h in headers {
        let v: &'b [u8] = h.value;
        match classify(h.name.as_bytes()) {
            Name::Host if info.host.is_none() => info.host = Some(http1::trim(v)),
            Name::Connection => {
                for token in tokens(v) {
                    connection_tokens += 1;
                    if eq_lower(token, b"close") {
                        info.close = true;
                    } else if eq_lower(token, b"keep-alive") {
                        info.keep_alive = true;
                    }
                    if is_connection_option(token) {
                        continue;
                    }
                    let protected = token.first() == Some(&b':')
                        || [
                            &b"x-forwarded-for"[..],
                            b"x-forwarded-host",
                            b"x-forwarded-proto",
                        ]
                        .iter()
                        .any(|p| token.eq_ignore_ascii_case(p));
                    if protected {
                        return Err(BadRequest::Protected);
                    }
                    // The request's Host stays (Envoy keeps it as :authority,
                    // out of the nominated headers' reach); `te` is
                    // sanitised with the fixed list.
                    // Framing headers are not the client's to drop either.
                    if !matches!(
                        classify(token),
                        Name::Host | Name::Te | Name::ContentLength | Name::TransferEncoding
                    ) {
                        info.nominated.push(token);
                    }
                }
            }
            Name::ContentLength => {
                let n = http1::parse_content_length(v).ok_or(BadRequest::ContentLength)?;
                if info.content_length.is_some_and(|l| l != n) {
                    return Err(BadRequest::ContentLength);
                }
                info.content_length = Some(n);
            }
            Name::TransferEncoding => {
                // Several headers make one list: the last coding decides.
                info.transfer_encoding = Some(http1::final_chunked(v));
            }
            Name::Te => {
                info.te_trailers |= http1::has_token(v, "trailers");
            }
            Name::Expect => {
                info.expect_continue |= http1::has_token(v, "100-continue");
            }
            _ => {}
        }
    }
    if connection_tokens >= MAX_CONNECTION_TOKENS {
        return Err(BadRequest::TooManyTokens);
    }
    Ok(info)
}

impl RequestInfo<'_> {
    #[inline]
    fn nominated(&self, name: &[u8]) -> bool {
        !self.nominated.is_empty() && self.nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Appends the request headers that go upstream: all but the hop-by-hop
/// ones, `expect`, `te` and those `Connection` names; `x-envoy-original-path`
/// too when `replacing_original_path` (the router sets its own). The caller
/// adds `te: trailers`, framing and the like.
pub fn write_request_headers(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    info: &RequestInfo<'_>,
    replacing_original_path: bool,
) {
    for h in headers {
        let name = h.name.as_bytes();
        match classify(name) {
            n if hop_by_hop(n) => continue,
            Name::Expect | Name::Te => continue,
            Name::OriginalPath if replacing_original_path => continue,
            Name::Host | Name::ContentLength => {}
            _ => {
                if info.nominated(name) {
                    continue;
                }
            }
        }
        header_line(out, name, h.value);
    }
}

/// What the response's headers say beside the status.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseInfo {
    /// A `date` header is present.
    pub has_date: bool,
}

/// The headers a response's `Connection` header names (any name: the
/// upstream's word).
fn response_nominated<'b>(headers: &[httparse::Header<'b>]) -> Vec<&'b [u8]> {
    let mut names = Vec::new();
    for h in headers {
        if classify(h.name.as_bytes()) == Name::Connection {
            names.extend(tokens(h.value).filter(|t| {
                !is_connection_option(t)
                    && !matches!(classify(t), Name::ContentLength | Name::TransferEncoding)
            }));
        }
    }
    names
}

/// Appends the response headers that go downstream: all but the hop-by-hop
/// ones and those `Connection` names; `content-length` too when
/// `drop_length` (the body is re-framed).
///
/// `raw` is the head the headers were parsed from (empty if they were not):
/// headers that follow each other there, each line ending right after its
/// value, are copied as one run of bytes rather than line by line.
pub fn write_response_headers(
    out: &mut Vec<u8>,
    raw: &[u8],
    headers: &[httparse::Header<'_>],
    drop_length: bool,
) -> ResponseInfo {
    let mut info = ResponseInfo::default();
    let start = out.len();
    let mut nominated: Option<Vec<&[u8]>> = None;
    let mut run = Run::new(raw);
    for h in headers {
        let name = h.name.as_bytes();
        match classify(name) {
            Name::Connection => {
                // Usually a lone `keep-alive` or `close`: only a value
                // that names headers needs the second look.
                if nominated.is_none() && http1::connection_value(h.value).names_headers {
                    nominated = Some(response_nominated(headers));
                }
                continue;
            }
            // A header left out ends the pending run by itself: the next
            // kept line no longer follows it in `raw`.
            n if hop_by_hop(n) => continue,
            Name::ContentLength if drop_length => continue,
            Name::Date => info.has_date = true,
            _ => {}
        }
        run.push(out, name, h.value);
    }
    run.flush(out);
    if let Some(names) = nominated.filter(|n| !n.is_empty()) {
        // Rare: take the nominated ones out again.
        remove_lines(out, start, &names);
    }
    info
}

/// Kept header lines that stand next to each other in the raw head, waiting
/// to be copied in one piece.
struct Run<'r> {
    raw: &'r [u8],
    /// `raw[start..end]` is pending (`start == end`: nothing is).
    start: usize,
    end: usize,
}

impl<'r> Run<'r> {
    fn new(raw: &'r [u8]) -> Self {
        Run {
            raw,
            start: 0,
            end: 0,
        }
    }

    /// Where `s` starts in `raw`, if it lies inside it.
    #[inline]
    fn offset(&self, s: &[u8]) -> Option<usize> {
        let at = (s.as_ptr() as usize).checked_sub(self.raw.as_ptr() as usize)?;
        (at + s.len() <= self.raw.len()).then_some(at)
    }

    /// Adds the line `name: value`: to the pending run when it follows it
    /// in `raw` and ends with CRLF right after the value, else on its own.
    #[inline]
    fn push(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let line = self
            .offset(name)
            .zip(self.offset(value))
            .and_then(|(n, v)| {
                let end = v + value.len();
                (self.raw.get(end..end + 2) == Some(b"\r\n")).then_some((n, end + 2))
            });
        match line {
            Some((n, end)) if n == self.end && self.start != self.end => self.end = end,
            Some((n, end)) => {
                self.flush(out);
                (self.start, self.end) = (n, end);
            }
            None => {
                self.flush(out);
                header_line(out, name, value);
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.start != self.end {
            out.extend_from_slice(self.raw.get(self.start..self.end).unwrap_or_default());
            self.start = self.end;
        }
    }
}

/// Removes the header lines named `names` from those written at `start`
/// and after.
fn remove_lines(out: &mut Vec<u8>, start: usize, names: &[&[u8]]) {
    let mut kept = Vec::with_capacity(out.len());
    kept.extend_from_slice(out.get(..start).unwrap_or_default());
    for line in out
        .get(start..)
        .unwrap_or_default()
        .split_inclusive(|&b| b == b'\n')
    {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        kept.extend_from_slice(line);
    }
    *out = kept;
}

/// The response headers for an HTTP/2 client: as [`write_response_headers`]
/// chooses them (`content-length` dropped when `drop_length`), in a map.
pub fn response_header_map(headers: &[httparse::Header<'_>], drop_length: bool) -> HeaderMap {
    let nominated = response_nominated(headers);
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = h.name.as_bytes();
        match classify(name) {
            n if hop_by_hop(n) => continue,
            Name::ContentLength if drop_length => continue,
            _ => {}
        }
        if nominated.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) else {
            continue;
        };
        map.append(k, v);
    }
    map
}

/// An HTTP/2 request's headers as `(name, value)` slices, for the same
/// handling as HTTP/1.1's.
pub fn slices(map: &HeaderMap) -> Vec<httparse::Header<'_>> {
    map.iter()
        .map(|(k, v)| httparse::Header {
            name: k.as_str(),
            value: v.as_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
        pairs
            .iter()
            .map(|(k, v)| httparse::Header {
                name: k,
                value: v.as_bytes(),
            })
            .collect()
    }

    fn lines(out: &[u8]) -> Vec<String> {
        let mut l: Vec<String> = String::from_utf8_lossy(out)
            .split("\r\n")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        l.sort_unstable();
        l
    }

    #[test]
    fn request_headers_stripped() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<&'static [&'static str], BadRequest>,
        );
        let table: &[Case] = &[
            (
                &[
                    ("host", "a"),
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("expect", "100-continue"),
                    ("te", "trailers"),
                ],
                Ok(&["host: a"]),
            ),
            (&[("Host", "a"), ("te", "gzip")], Ok(&["Host: a"])),
            // Nominated headers go; options and unknown names are ignored.
            (
                &[
                    ("connection", "x-hop, close"),
                    ("Connection", "X-Other,,"),
                    ("x-hop", "1"),
                    ("X-OTHER", "2"),
                    ("x-keep", "3"),
                    ("proxy-connection", "x"),
                ],
                Ok(&["x-keep: 3"]),
            ),
            // Host and te are never removed through Connection.
            (
                &[
                    ("host", "a"),
                    ("connection", "host, te, upgrade, http2-settings"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                ],
                Ok(&["host: a"]),
            ),
            (
                &[
                    ("connection", "x-forwarded-for"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
                Err(BadRequest::Protected),
            ),
            (
                &[("connection", "X-Forwarded-Proto")],
                Err(BadRequest::Protected),
            ),
            (&[("connection", ":path")], Err(BadRequest::Protected)),
            (
                &[("connection", "a,b,c,d,e,f,g,h,i,j")],
                Err(BadRequest::TooManyTokens),
            ),
            (
                &[("connection", "a,b,c,d,e,f,g,h,i"), ("a", "1"), ("j", "2")],
                Ok(&["j: 2"]),
            ),
            (
                &[("content-length", "1"), ("content-length", "2")],
                Err(BadRequest::ContentLength),
            ),
        ];
        for (input, want) in table {
            let headers = h(input);
            let got = scan_request(&headers).map(|info| {
                let mut out = Vec::new();
                write_request_headers(&mut out, &headers, &info, false);
                lines(&out)
            });
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{input:?}");
        }
        let headers = h(&[("te", "gzip, Trailers"), ("expect", "100-Continue")]);
        let info = scan_request(&headers).unwrap();
        assert!(info.te_trailers && info.expect_continue);
        let headers = h(&[("x-envoy-original-path", "/x"), ("a", "1")]);
        let info = scan_request(&headers).unwrap();
        let mut out = Vec::new();
        write_request_headers(&mut out, &headers, &info, true);
        assert_eq!(lines(&out), ["a: 1"]);
    }

    #[test]
    fn response_headers_stripped() {
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        let table: &[Case] = &[
            (
                &[
                    ("content-type", "text/plain"),
                    ("connection", "keep-alive, x-resp-hop"),
                    ("x-resp-hop", "1"),
                    ("x-resp-keep", "2"),
                    ("keep-alive", "timeout=5"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                ],
                &["content-type: text/plain", "x-resp-keep: 2"],
            ),
            // No Connection header: only the fixed list.
            (&[("x-a", "1"), ("proxy-connection", "close")], &["x-a: 1"]),
        ];
        for (input, want) in table {
            let headers = h(input);
            let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
            write_response_headers(&mut out, &[], &headers, false);
            let mut got = lines(&out);
            got.retain(|l| !l.starts_with("HTTP/"));
            assert_eq!(got, *want, "{input:?}");
            let map = response_header_map(&headers, false);
            let mut got: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            got.sort_unstable();
            assert_eq!(got, *want, "{input:?}");
        }
        let headers = h(&[("Content-Length", "2"), ("Date", "x")]);
        let mut out = Vec::new();
        let info = write_response_headers(&mut out, &[], &headers, true);
        assert!(info.has_date);
        assert_eq!(lines(&out), ["Date: x"]);
    }

    #[test]
    fn response_headers_copied_in_runs_from_the_raw_head() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate:Mon\r\nx-pad: a  \r\n\
            Content-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            ETag: \"1\"\r\nX-Last:\tz\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut slots);
        assert!(r.parse(raw).unwrap().is_complete());
        let headers = r.headers;
        for (drop_length, want) in [
            (
                false,
                &b"Server: nginx\r\nDate:Mon\r\nx-pad: a\r\nContent-Length: 2\r\nETag: \"1\"\r\nX-Last:\tz\r\n"[..],
            ),
            (
                true,
                b"Server: nginx\r\nDate:Mon\r\nx-pad: a\r\nETag: \"1\"\r\nX-Last:\tz\r\n",
            ),
        ] {
            let mut out = Vec::new();
            let info = write_response_headers(&mut out, raw, headers, drop_length);
            assert!(info.has_date);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
            // Line by line (no raw head) gives the same headers.
            let mut plain = Vec::new();
            write_response_headers(&mut plain, &[], headers, drop_length);
            assert_eq!(lines(&plain).len(), lines(&out).len());
        }
        // A Connection value that names a header takes it out of the runs too.
        let raw: &[u8] =
            b"HTTP/1.1 200 OK\r\nA: 1\r\nX-Hop: 2\r\nB: 3\r\nConnection: x-hop\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut slots);
        assert!(r.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        write_response_headers(&mut out, raw, r.headers, false);
        assert_eq!(out, b"A: 1\r\nB: 3\r\n");
    }
}
