//! Request bodies kept so that a retry can send them again.
//!
//! Owns [`Replay`]: the body of one request, read from the client once, by
//! whichever attempt is sending it, through a [`BodySource`] (the downstream
//! connection's HTTP/1.1 body, or an HTTP/2 stream's). With a retry policy
//! each chunk is also kept, up to a limit (Envoy's
//! `per_request_buffer_limit_bytes`), so that the next attempt (a new
//! [`Cursor`]) sends what was kept, then goes on reading from the client
//! where the last attempt stopped. A body larger than the limit is no longer
//! kept: the attempt under way goes on streaming it, and the request cannot
//! be retried ([`Replay::replayable`]), as in Envoy. Everything happens in
//! the request's task: no lock, no shared state.
//!
//! Does not decide whether to retry (`listener::retry`) nor send anything.

use std::task::{Context, Poll};

use bytes::Bytes;

/// A piece of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section: header lines, each ending with CRLF.
    Trailers(Bytes),
}

/// Why reading the client's body failed.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct BodyError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where a request body comes from.
pub trait BodySource {
    /// The next piece of the body; `None` once it has ended.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, BodyError>>>;

    /// Once the body has ended: ready when the client went away (closed its
    /// connection). Sources that cannot tell stay pending.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// An attempt's position in a [`Replay`]: the next kept chunk it sends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor(usize);

/// A request body read once and, with a retry policy, kept for retries.
#[derive(Debug)]
pub struct Replay<S> {
    source: S,
    /// Chunks kept for the next attempt (`None`: nothing is kept).
    kept: Option<Vec<Chunk>>,
    kept_bytes: usize,
    limit: usize,
    /// The client's body ended (all of it read).
    ended: bool,
    /// The body outgrew `limit`, or reading it failed.
    lost: bool,
}

impl<S: BodySource> Replay<S> {
    /// A body sent once (no retry policy): nothing is kept.
    pub fn once(source: S, ended: bool) -> Replay<S> {
        Replay {
            source,
            kept: None,
            kept_bytes: 0,
            limit: 0,
            ended,
            lost: false,
        }
    }

    /// A body of which up to `limit` bytes are kept for retries.
    pub fn keeping(source: S, ended: bool, limit: usize) -> Replay<S> {
        Replay {
            source,
            kept: Some(Vec::new()),
            kept_bytes: 0,
            limit,
            ended,
            lost: false,
        }
    }

    /// Whether another attempt can send the body again from its start.
    pub fn replayable(&self) -> bool {
        self.kept.is_some() && !self.lost
    }

    /// Whether the client's body was read in full.
    #[inline]
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The source, for what the request does beside its body.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The next piece for the attempt at `cursor`: a kept one, else the
    /// client's next (kept too while within the limit).
    pub fn poll_next(
        &mut self,
        cursor: &mut Cursor,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Chunk, BodyError>>> {
        if let Some(chunk) = self.kept.as_ref().and_then(|k| k.get(cursor.0)) {
            cursor.0 += 1;
            return Poll::Ready(Some(Ok(chunk.clone())));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let chunk = match std::task::ready!(self.source.poll_chunk(cx)) {
            None => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                self.lost = true;
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(c)) => c,
        };
        if let Chunk::Trailers(_) = chunk {
            // Nothing follows the trailers.
            self.ended = true;
        }
        if let (Some(kept), false) = (&mut self.kept, self.lost) {
            let len = match &chunk {
                Chunk::Data(d) => d.len(),
                Chunk::Trailers(t) => t.len(),
            };
            if self.kept_bytes + len <= self.limit {
                self.kept_bytes += len;
                kept.push(chunk.clone());
                cursor.0 += 1;
            } else {
                // Too large to keep: this attempt streams the rest.
                self.lost = true;
                *kept = Vec::new();
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }

    /// Once the body has ended, whether the client went away.
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.source.poll_gone(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Chunks(VecDeque<&'static [u8]>);

    impl BodySource for Chunks {
        fn poll_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, BodyError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Chunk::Data(Bytes::from_static(c)))),
            )
        }

        fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    fn read(r: &mut Replay<Chunks>, cursor: &mut Cursor, n: usize) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        for _ in 0..n {
            match r.poll_next(cursor, &mut cx) {
                Poll::Ready(Some(Ok(Chunk::Data(d)))) => out.extend_from_slice(&d),
                Poll::Ready(None) => break,
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn a_retry_reads_what_was_kept_then_the_rest() {
        let source = Chunks(VecDeque::from([&b"hello "[..], b"big ", b"world"]));
        let mut r = Replay::keeping(source, false, 1024);
        let mut first = Cursor::default();
        // The first attempt reads one chunk and fails.
        assert_eq!(read(&mut r, &mut first, 1), b"hello ");
        assert!(r.replayable());
        // The retry gets it all, from the start; and again.
        let mut second = Cursor::default();
        assert_eq!(read(&mut r, &mut second, 10), b"hello big world");
        assert!(r.ended());
        let mut third = Cursor::default();
        assert_eq!(read(&mut r, &mut third, 10), b"hello big world");
    }

    #[test]
    fn a_body_over_the_limit_streams_once_and_is_not_replayable() {
        let source = Chunks(VecDeque::from([&b"0123456789"[..], b"abcdef"]));
        let mut r = Replay::keeping(source, false, 12);
        let mut first = Cursor::default();
        assert_eq!(read(&mut r, &mut first, 10), b"0123456789abcdef");
        assert!(!r.replayable());
        // Without a retry policy nothing is kept, and nothing can be retried.
        let source = Chunks(VecDeque::from([&b"x"[..]]));
        let mut r = Replay::once(source, false);
        assert_eq!(read(&mut r, &mut Cursor::default(), 10), b"x");
        assert!(!r.replayable());
    }
}
