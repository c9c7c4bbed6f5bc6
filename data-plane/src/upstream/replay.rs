//! Request bodies kept so that a retry can send them again.
//!
//! Owns [`Replay`]: the downstream body of a request whose route has a retry
//! policy. It is read from the client once, by whichever attempt is sending
//! it, and each chunk is kept (up to a limit, Envoy's
//! `per_request_buffer_limit_bytes`) so that the next attempt
//! ([`Replay::reader`]) sends what was kept, then goes on reading from the
//! client where the last attempt stopped. A body larger than the limit is no
//! longer kept: the attempt under way goes on streaming it, and the request
//! cannot be retried ([`Replay::replayable`]), as in Envoy. A new reader
//! supersedes the previous one, whose next read fails, so two attempts never
//! share the client's stream.
//!
//! Does not decide whether to retry (`listener::retry`) nor send anything
//! (`pool`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::HeaderMap;

/// The error type of request bodies on their way upstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct State {
    source: Incoming,
    /// The client's body ended (all of it read).
    ended: bool,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    recorded: usize,
    limit: usize,
    /// The body outgrew `limit`: nothing is kept any more.
    overflowed: bool,
    /// Reading from the client failed.
    failed: bool,
    /// The reader allowed to read.
    generation: u64,
}

/// A request body read once and kept for retries (see the module docs).
#[derive(Debug)]
pub struct Replay {
    state: Mutex<State>,
}

impl Replay {
    /// Keeps up to `limit` bytes of `source`.
    pub fn new(source: Incoming, limit: usize) -> Arc<Replay> {
        let ended = source.is_end_stream();
        Arc::new(Replay {
            state: Mutex::new(State {
                source,
                ended,
                chunks: Vec::new(),
                trailers: None,
                recorded: 0,
                limit,
                overflowed: false,
                failed: false,
                generation: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether another attempt can send the body again from its start.
    pub fn replayable(&self) -> bool {
        let st = self.lock();
        !st.overflowed && !st.failed
    }

    /// A reading of the body from its start, for the next attempt; the
    /// previous reading fails from now on.
    pub fn reader(self: &Arc<Self>) -> ReplayBody {
        let mut st = self.lock();
        st.generation += 1;
        ReplayBody {
            replay: self.clone(),
            generation: st.generation,
            next: 0,
            trailers_sent: false,
        }
    }
}

/// One attempt's reading of a [`Replay`].
#[derive(Debug)]
pub struct ReplayBody {
    replay: Arc<Replay>,
    generation: u64,
    /// The next kept chunk to send.
    next: usize,
    trailers_sent: bool,
}

/// The error of a reading superseded by a retry's.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
pub struct Superseded;

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut st = this.replay.lock();
        if st.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = st.chunks.get(this.next) {
            let chunk = chunk.clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if st.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = &st.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut st.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                st.failed = true;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if st.source.is_end_stream() {
            st.ended = true;
        }
        let frame = match frame.into_data() {
            Ok(data) => {
                if !st.overflowed {
                    if st.recorded + data.len() <= st.limit {
                        st.recorded += data.len();
                        st.chunks.push(data.clone());
                        this.next += 1;
                    } else {
                        // Too large to keep: this attempt streams the rest.
                        st.overflowed = true;
                        st.chunks = Vec::new();
                        this.next = 0;
                    }
                }
                Frame::data(data)
            }
            Err(frame) => {
                if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    st.ended = true;
                    this.trailers_sent = true;
                }
                frame
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let st = self.replay.lock();
        st.generation == self.generation
            && st.ended
            && self.next >= st.chunks.len()
            && (self.trailers_sent || st.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let st = self.replay.lock();
        let kept: u64 = st
            .chunks
            .get(self.next..)
            .unwrap_or_default()
            .iter()
            .map(|c| c.len() as u64)
            .sum();
        if st.ended {
            return SizeHint::with_exact(kept);
        }
        let source = st.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(source.lower() + kept);
        if let Some(upper) = source.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    /// Serves one connection and hands each request's body to `f`.
    async fn with_incoming<F, Fut>(body: &'static [&'static [u8]], f: F)
    where
        F: FnOnce(Incoming) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let f = Arc::new(Mutex::new(Some(f)));
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let f = f.lock().unwrap().take();
                async move {
                    if let Some(f) = f {
                        f(req.into_body()).await;
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(String::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
            .iter()
            .map(|b| Ok(Frame::data(Bytes::from_static(b))))
            .collect();
        let stream = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let req = Request::post("/").body(stream).unwrap();
        sender.send_request(req).await.unwrap();
        server.abort();
    }

    async fn read_all(b: ReplayBody) -> Result<Vec<u8>, BoxError> {
        Ok(b.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_retry_reads_what_was_kept_then_the_rest() {
        with_incoming(&[b"hello ", b"big ", b"world"], |incoming| async move {
            let replay = Replay::new(incoming, 1024);
            let mut first = replay.reader();
            // The first attempt reads one chunk and fails.
            let f = first.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "hello ");
            assert!(replay.replayable());
            // The retry gets it all, from the start; the first reader is done.
            let second = replay.reader();
            assert!(first.frame().await.unwrap().is_err());
            assert_eq!(read_all(second).await.unwrap(), b"hello big world");
            // And again.
            let third = replay.reader();
            assert!(third.size_hint().exact() == Some(15));
            assert_eq!(read_all(third).await.unwrap(), b"hello big world");
        })
        .await;
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_once_and_is_not_replayable() {
        with_incoming(&[b"0123456789", b"abcdef"], |incoming| async move {
            let replay = Replay::new(incoming, 12);
            let first = replay.reader();
            assert_eq!(read_all(first).await.unwrap(), b"0123456789abcdef");
            assert!(!replay.replayable());
        })
        .await;
    }
}
