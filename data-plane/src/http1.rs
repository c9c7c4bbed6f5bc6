//! HTTP/1.1 message syntax shared by the downstream server
//! (`listener::http`) and the upstream client (`upstream::client`).
//!
//! Owns what both directions need to read and write HTTP/1.1 messages
//! without copying them into maps: finding the end of a head
//! ([`find_head_end`], so that a head is parsed once, by httparse, when it
//! is complete), where a body ends ([`Framing`], RFC 9112 section 6), the
//! incremental body decoder ([`BodyDecoder`]: lengths, the chunked coding
//! and its trailers, read-until-close), the chunk encoder, and the scans of
//! the few header values framing and connection management depend on
//! (`content-length`, `transfer-encoding`, `Connection` tokens). Nothing
//! here does I/O or allocates per message.
//!
//! Does not own connections, routing or which headers are forwarded (see
//! `listener::http::headers`).

use std::io::Write as _;

/// The most bytes a head may take before the chunked decoder's trailer
/// section is refused (the same bound as Envoy's default header limit).
pub const MAX_TRAILERS: usize = 60 * 1024;

/// Where a message body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the connection closes (responses only).
    Close,
}

/// Why a message's framing or body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// `content-length` is not a number, or two of them differ.
    #[error("invalid content-length")]
    ContentLength,
    /// A transfer coding other than a final `chunked` (requests), or both
    /// `transfer-encoding` and `content-length` in a request.
    #[error("unsupported transfer-encoding")]
    TransferEncoding,
    /// A malformed chunk size line or chunk end.
    #[error("invalid chunk")]
    Chunk,
    /// The trailer section is malformed or larger than [`MAX_TRAILERS`].
    #[error("invalid trailers")]
    Trailers,
    /// The connection ended before the body did.
    #[error("connection closed before the end of the body")]
    Incomplete,
}

/// The offset just past the empty line that ends a head in `buf`, looking
/// from `from` (the length already searched, so that a head arriving in
/// pieces is scanned once). Accepts bare `\n` line ends, as httparse does.
#[inline]
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Back up so that a line end split between two reads is seen.
    let start = from.saturating_sub(3);
    for i in memchr::memchr_iter(b'\n', buf.get(start..)?) {
        let at = start + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
    }
    None
}

/// A `content-length` value: ASCII digits only (no sign, no spaces inside,
/// at most 19 digits).
#[inline]
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// `v` without leading and trailing spaces and tabs.
#[inline]
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

/// Whether the header name or token `s` is `lower` (a lowercase literal of
/// letters, digits and `-`), ASCII case-insensitively.
///
/// Setting bit 0x20 folds `A`-`Z` onto `a`-`z`; the only other bytes it maps
/// onto a letter, a digit or `-` are control characters (and CR onto `-`),
/// which httparse refuses in names and values. So one OR and one compare per
/// eight bytes decide, where `eq_ignore_ascii_case` folds byte by byte.
#[inline]
pub fn eq_lower(s: &[u8], lower: &[u8]) -> bool {
    debug_assert!(!lower.iter().any(u8::is_ascii_uppercase));
    if s.len() != lower.len() {
        return false;
    }
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let (a8, b8) = (s.chunks_exact(8), lower.chunks_exact(8));
    let (a_rest, b_rest) = (a8.remainder(), b8.remainder());
    for (a, b) in a8.zip(b8) {
        let (Ok(a), Ok(b)) = (<[u8; 8]>::try_from(a), <[u8; 8]>::try_from(b)) else {
            return false;
        };
        if u64::from_ne_bytes(a) | FOLD != u64::from_ne_bytes(b) | FOLD {
            return false;
        }
    }
    a_rest.iter().zip(b_rest).all(|(a, b)| a | 0x20 == b | 0x20)
}

/// What a `Connection` header value says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionValue {
    /// The `close` option.
    pub close: bool,
    /// The `keep-alive` option.
    pub keep_alive: bool,
    /// A token other than the connection options `close`, `keep-alive`,
    /// `upgrade` and `http2-settings`: the value names headers to drop.
    pub names_headers: bool,
}

/// Reads a `Connection` value in one pass (the usual single `keep-alive` or
/// `close` without splitting it into tokens).
#[inline]
pub fn connection_value(v: &[u8]) -> ConnectionValue {
    let mut c = ConnectionValue::default();
    if eq_lower(v, b"keep-alive") {
        c.keep_alive = true;
        return c;
    }
    if eq_lower(v, b"close") {
        c.close = true;
        return c;
    }
    for t in tokens(v) {
        if eq_lower(t, b"close") {
            c.close = true;
        } else if eq_lower(t, b"keep-alive") {
            c.keep_alive = true;
        } else if !(eq_lower(t, b"upgrade") || eq_lower(t, b"http2-settings")) {
            c.names_headers = true;
        }
    }
    c
}

/// The comma-separated, trimmed, non-empty tokens of a header value.
#[inline]
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

/// Whether the list value `v` holds `token` (ASCII case-insensitive).
#[inline]
pub fn has_token(v: &[u8], token: &str) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the last coding of a `transfer-encoding` value is `chunked`.
#[inline]
pub fn final_chunked(v: &[u8]) -> bool {
    eq_lower(v, b"chunked") || tokens(v).last().is_some_and(|t| eq_lower(t, b"chunked"))
}

/// What one step of a [`BodyDecoder`] found at the start of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `skip` bytes of framing, then `len` bytes of data (`len > 0`, all in
    /// the buffer). The caller consumes the framing, then reports the data
    /// it consumed with [`BodyDecoder::consumed`].
    Data {
        /// Framing bytes before the data.
        skip: usize,
        /// Data bytes that follow.
        len: usize,
    },
    /// `skip` bytes of framing to consume; then more input is needed.
    More {
        /// Framing bytes to consume.
        skip: usize,
    },
    /// The body is complete after `skip` more bytes. `trailers`, if any, is
    /// the raw trailer section (header lines, each with its line end) at
    /// `buf[start..end]`, within those `skip` bytes.
    End {
        /// Bytes to consume, trailers and the final line end included.
        skip: usize,
        /// `(start, end)` of the trailer lines in the buffer.
        trailers: Option<(usize, usize)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of a body of known length still to come.
    Length(u64),
    /// At a chunk size line.
    Size,
    /// Inside a chunk: bytes still to come.
    Chunk(u64),
    /// After a chunk's data: its line end.
    ChunkEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// Until the connection closes.
    Close,
    /// The body ended.
    Done,
}

/// Reads a body from the bytes of a connection, one step at a time, without
/// copying: each [`Step`] says which bytes at the start of the caller's
/// buffer are framing and which are data.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body framed so.
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// Whether the whole body has been read.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes known to be still to come (`None`: not known).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) | State::Chunk(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Whether the body runs until the connection closes.
    pub fn until_close(&self) -> bool {
        self.state == State::Close
    }

    /// The next step over `buf`, the unconsumed bytes of the connection.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, FramingError> {
        let mut at = 0;
        loop {
            let rest = buf.get(at..).unwrap_or_default();
            match self.state {
                State::Done => {
                    return Ok(Step::End {
                        skip: at,
                        trailers: None,
                    })
                }
                State::Length(n) | State::Chunk(n) => {
                    if rest.is_empty() {
                        return Ok(Step::More { skip: at });
                    }
                    let len = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
                    return Ok(Step::Data { skip: at, len });
                }
                State::Close => {
                    if rest.is_empty() {
                        return Ok(Step::More { skip: at });
                    }
                    return Ok(Step::Data {
                        skip: at,
                        len: rest.len(),
                    });
                }
                State::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        at += used;
                        self.state = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        self.state = State::Chunk(size);
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > 1024 {
                            // A size line that never ends.
                            return Err(FramingError::Chunk);
                        }
                        return Ok(Step::More { skip: at });
                    }
                    Err(_) => return Err(FramingError::Chunk),
                },
                State::ChunkEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = State::Size;
                    }
                    [b'\n', ..] => {
                        at += 1;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(Step::More { skip: at }),
                    _ => return Err(FramingError::Chunk),
                },
                State::Trailers => {
                    // No trailers: the empty line follows at once.
                    match rest {
                        [b'\r', b'\n', ..] => {
                            self.state = State::Done;
                            return Ok(Step::End {
                                skip: at + 2,
                                trailers: None,
                            });
                        }
                        [b'\n', ..] => {
                            self.state = State::Done;
                            return Ok(Step::End {
                                skip: at + 1,
                                trailers: None,
                            });
                        }
                        [] | [b'\r'] => return Ok(Step::More { skip: at }),
                        _ => {}
                    }
                    // Header lines, then an empty line; the section is
                    // consumed as a whole once complete.
                    let Some(end) = find_head_end(rest, 0) else {
                        if rest.len() > MAX_TRAILERS {
                            return Err(FramingError::Trailers);
                        }
                        return Ok(Step::More { skip: at });
                    };
                    let lines_end = if rest.get(end.saturating_sub(2)..end) == Some(b"\r\n") {
                        end - 2
                    } else {
                        end - 1
                    };
                    self.state = State::Done;
                    return Ok(Step::End {
                        skip: at + end,
                        trailers: Some((at, at + lines_end)),
                    });
                }
            }
        }
    }

    /// `n` data bytes of the last [`Step::Data`] were consumed.
    #[inline]
    pub fn consumed(&mut self, n: usize) {
        let n = n as u64;
        match &mut self.state {
            State::Length(left) => {
                *left -= n.min(*left);
                if *left == 0 {
                    self.state = State::Done;
                }
            }
            State::Chunk(left) => {
                *left -= n.min(*left);
                if *left == 0 {
                    self.state = State::ChunkEnd;
                }
            }
            _ => {}
        }
    }

    /// The connection ended: fine only for a body that runs until it does
    /// (which then ends) or one already complete.
    pub fn eof(&mut self) -> Result<(), FramingError> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(FramingError::Incomplete),
        }
    }
}

/// Appends the size line of a chunk of `len` bytes.
#[inline]
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk, with the raw trailer lines (each with its line end), and
/// the empty line that ends the body.
pub fn last_chunk(out: &mut Vec<u8>, trailers: &[u8]) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    if status == 200 {
        // Most responses: one copy.
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(&digits);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
#[inline]
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_lower_folds_case_only() {
        for (s, lower, eq) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"CONTENT-LENGTH", b"content-length", true),
            (b"content-lengtx", b"content-length", false),
            (b"content_length", b"content-length", false),
            (b"Keep-Alive", b"keep-alive", true),
            (b"keep-alivE", b"keep-alive", true),
            (b"keep-alive ", b"keep-alive", false),
            (b"te", b"te", true),
            (b"tE", b"te", true),
            (b"t", b"te", false),
            (b"x-envoy-original-path", b"x-envoy-original-path", true),
            (b"X-Envoy-Original-Pat\xc8", b"x-envoy-original-path", false),
            (b"x-envoy-original-patj", b"x-envoy-original-path", false),
            (b"1OO-continue", b"100-continue", false),
            (b"100-CONTINUE", b"100-continue", true),
            (b"", b"", true),
        ] {
            assert_eq!(
                eq_lower(s, lower),
                eq,
                "{:?} vs {:?}",
                String::from_utf8_lossy(s),
                String::from_utf8_lossy(lower)
            );
            assert_eq!(s.eq_ignore_ascii_case(lower), eq, "reference for {s:?}");
        }
    }

    #[test]
    fn connection_values() {
        let c = |v: &[u8]| connection_value(v);
        assert_eq!(
            c(b"Keep-Alive"),
            ConnectionValue {
                keep_alive: true,
                ..Default::default()
            }
        );
        assert_eq!(
            c(b"close"),
            ConnectionValue {
                close: true,
                ..Default::default()
            }
        );
        assert_eq!(
            c(b"upgrade, CLOSE"),
            ConnectionValue {
                close: true,
                ..Default::default()
            }
        );
        assert_eq!(
            c(b"keep-alive, x-foo"),
            ConnectionValue {
                keep_alive: true,
                names_headers: true,
                ..Default::default()
            }
        );
        assert_eq!(c(b" , http2-settings ,"), ConnectionValue::default());
        assert!(final_chunked(b"Chunked"));
        assert!(final_chunked(b"gzip, chunked"));
        assert!(!final_chunked(b"chunked, gzip"));
    }

    /// Feeds `input` to a decoder `split` bytes at a time, as a connection
    /// would, and returns the data and the trailers.
    fn decode(
        framing: Framing,
        input: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut d = BodyDecoder::new(framing);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut data = Vec::new();
        loop {
            match d.step(&buf)? {
                Step::Data { skip, len } => {
                    data.extend_from_slice(&buf[skip..skip + len]);
                    buf.drain(..skip + len);
                    d.consumed(len);
                }
                Step::More { skip } => {
                    buf.drain(..skip);
                    if fed >= input.len() {
                        d.eof()?;
                        return Ok((data, Vec::new()));
                    }
                    let end = (fed + split).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Step::End { skip, trailers } => {
                    let t = trailers
                        .map(|(s, e)| buf[s..e].to_vec())
                        .unwrap_or_default();
                    buf.drain(..skip);
                    assert!(buf.is_empty() && fed == input.len(), "left: {buf:?}");
                    return Ok((data, t));
                }
            }
        }
    }

    #[test]
    fn heads_end_at_the_first_empty_line() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nh: 1\r\n\r\nbody", 0),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nh: 1\n\nbody", 0), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nh: 1\r\n", 0), None);
        // A line end split across reads is found from where the search stopped.
        let full = b"GET / HTTP/1.1\r\nh: 1\r\n\r\n";
        assert_eq!(find_head_end(full, 22), Some(24));
        assert_eq!(find_head_end(full, 23), Some(24));
    }

    #[test]
    fn header_value_scans() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"+4"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert!(final_chunked(b"gzip, Chunked"));
        assert!(!final_chunked(b"chunked, gzip"));
        assert_eq!(
            tokens(b" a,,b ,").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
    }

    #[test]
    fn bodies_decode_in_any_pieces() {
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\nx-u: 2\r\n\r\n";
        for split in [1, 2, 3, 7, 100] {
            let (data, trailers) = decode(Framing::Chunked, chunked, split).unwrap();
            assert_eq!(data, b"hello world", "split {split}");
            assert_eq!(trailers, b"x-t: 1\r\nx-u: 2\r\n", "split {split}");
            let (data, trailers) =
                decode(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", split).unwrap();
            assert_eq!((data, trailers), (b"abc".to_vec(), Vec::new()));
            let (data, _) = decode(Framing::Length(5), b"hello", split).unwrap();
            assert_eq!(data, b"hello");
            let (data, _) = decode(Framing::Close, b"until the end", split).unwrap();
            assert_eq!(data, b"until the end");
        }
        assert_eq!(decode(Framing::Empty, b"", 1).unwrap().0, b"");
        assert_eq!(
            decode(Framing::Length(6), b"hello", 2),
            Err(FramingError::Incomplete)
        );
        assert_eq!(
            decode(Framing::Chunked, b"zz\r\n", 4),
            Err(FramingError::Chunk)
        );
        assert_eq!(
            decode(Framing::Chunked, b"3\r\nabcX", 8),
            Err(FramingError::Chunk)
        );
        assert_eq!(
            decode(Framing::Chunked, b"3\r\nabc\r\n", 8),
            Err(FramingError::Incomplete)
        );
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        status_line(&mut out, 503);
        chunk_header(&mut out, 255);
        header_line(&mut out, b"a", b"b");
        last_chunk(&mut out, b"x: 1\r\n");
        assert_eq!(
            out,
            b"HTTP/1.1 503 Service Unavailable\r\nff\r\na: b\r\n0\r\nx: 1\r\n\r\n"
        );
    }
}
