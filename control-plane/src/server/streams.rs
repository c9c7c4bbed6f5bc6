//! The streaming xDS methods on the wire: request decoding and response
//! framing.
//!
//! tonic's generated servers encode a stream's responses into one buffer per
//! stream that grows to the largest response and is reused, never shrunk,
//! until the stream ends, and decode its requests through a buffer of 8 KiB
//! kept for as long. An xDS stream's largest response is usually its first
//! (the whole config), and streams live for days, so every connected node
//! would keep buffers it uses once. [`XdsStreams`] wraps a generated service,
//! serves its two streaming methods itself and hands every other method (the
//! unary `Fetch*`) to it unchanged. ADS has no other method, so it wraps no
//! generated server ([`AdsOnly`]); the standalone services' generated traits
//! still require the streaming methods, which are never called.
//!
//! - Each response is encoded into an allocation of exactly its size, owned
//!   by the frame, and freed once written to the socket.
//! - Requests are decoded by [`Requests`] straight from the HTTP/2 data
//!   frames; only a message split across frames is copied, into a buffer
//!   freed once the message is complete. The size limit and the errors are
//!   tonic's (`OUT_OF_RANGE` from the length prefix, `INTERNAL` for bytes
//!   that are not the message); compression stays unsupported, as in the
//!   generated servers built without tonic's compression features.
//! - The response body is the stream's [`Driver`](super::Driver): there is
//!   no task or queue per stream besides what HTTP/2 keeps.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use http_body::{Body as _, Frame};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    DiscoveryRequest, DiscoveryResponse,
};

use super::wire::{Outgoing, WireMessage};
use super::XdsServer;
use crate::snapshot::ResourceType;

/// The gRPC message header: a compression flag and a big-endian length.
const HEADER_LEN: usize = 5;

/// A generated xDS service whose `Stream*` and `Delta*` methods are served
/// with per-message response buffers (see the module docs).
#[derive(Debug, Clone)]
pub struct XdsStreams<S> {
    generated: S,
    server: XdsServer,
    /// `None` for ADS, else the one type of a standalone service.
    only: Option<ResourceType>,
    /// Method names, e.g. `StreamAggregatedResources`.
    sotw_method: &'static str,
    delta_method: &'static str,
    max_request_bytes: usize,
}

impl<S> XdsStreams<S> {
    /// Serves `sotw_method` and `delta_method` of `generated` from `server`;
    /// requests over `max_request_bytes` end their stream with `OUT_OF_RANGE`.
    pub fn new(
        generated: S,
        server: XdsServer,
        only: Option<ResourceType>,
        (sotw_method, delta_method): (&'static str, &'static str),
        max_request_bytes: usize,
    ) -> Self {
        XdsStreams {
            generated,
            server,
            only,
            sotw_method,
            delta_method,
            max_request_bytes,
        }
    }
}

impl<S: NamedService> NamedService for XdsStreams<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for XdsStreams<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let (server, only, max) = (self.server.clone(), self.only, self.max_request_bytes);
        if method == self.sotw_method {
            Box::pin(async move {
                Ok(serve::<DiscoveryRequest, DiscoveryResponse, _>(
                    req,
                    max,
                    |r| server.sotw(r, only),
                ))
            })
        } else if method == self.delta_method {
            Box::pin(async move {
                Ok(serve::<DeltaDiscoveryRequest, DeltaDiscoveryResponse, _>(
                    req,
                    max,
                    |r| server.delta(r, only),
                ))
            })
        } else {
            // `poll_ready` of the generated services is always ready.
            let mut generated = self.generated.clone();
            Box::pin(async move { generated.call(req).await })
        }
    }
}

/// The service behind ADS's two streaming methods: ADS has no other method,
/// so any other path answers `UNIMPLEMENTED`, as a generated server answers a
/// method it does not know.
#[derive(Debug, Clone, Copy)]
pub struct AdsOnly;

impl NamedService for AdsOnly {
    const NAME: &'static str = aggregated_discovery_service_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for AdsOnly {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(Status::unimplemented("").into_http()))
    }
}

/// Decodes `req` as a stream of `Req`, runs `handler`, and frames what it
/// answers.
fn serve<Req, Resp, D>(
    req: http::Request<Body>,
    max_request_bytes: usize,
    handler: impl FnOnce(Request<Requests<Req>>) -> Result<Response<D>, Status>,
) -> http::Response<Body>
where
    Req: Message + Default + Send + 'static,
    Resp: WireMessage + Send + 'static,
    D: Stream<Item = Result<Outgoing<Resp>, Status>> + Unpin + Send + 'static,
{
    if let Some(encoding) = req.headers().get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            return Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(encoding.as_bytes())
            ))
            .into_http();
        }
    }
    let req = req.map(|body| Requests::new(body, max_request_bytes));
    let (metadata, responses, extensions) = match handler(Request::from_http(req)) {
        Ok(response) => response.into_parts(),
        // Refused before it started (the server is full).
        Err(status) => return status.into_http(),
    };
    let mut resp = http::Response::new(Body::new(Framed {
        responses,
        done: false,
    }));
    *resp.headers_mut() = metadata.into_headers();
    *resp.extensions_mut() = extensions;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// The client's messages, decoded one at a time from a request body.
///
/// A message that arrives whole in one data frame is decoded from the frame
/// itself; a message split across frames is gathered into `partial`, which
/// is freed once it is decoded. Between messages the decoder holds nothing.
pub struct Requests<Req> {
    body: Body,
    /// The rest of the last data frame, not yet decoded.
    chunk: Bytes,
    /// The start of a message split across frames.
    partial: Vec<u8>,
    max: usize,
    done: bool,
    _message: PhantomData<fn() -> Req>,
}

impl<Req> std::fmt::Debug for Requests<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("buffered", &(self.chunk.len() + self.partial.len()))
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<Req: Message + Default> Requests<Req> {
    /// Messages of `body`, each of at most `max` bytes.
    pub fn new(body: Body, max: usize) -> Self {
        Requests {
            body,
            chunk: Bytes::new(),
            partial: Vec::new(),
            max,
            done: false,
            _message: PhantomData,
        }
    }

    /// The length a message header announces, checked.
    fn length(&self, header: &[u8]) -> Result<usize, Status> {
        match header[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ))
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1) while receiving request"
                )))
            }
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max
            )));
        }
        Ok(len)
    }

    /// The next whole message of what was received, if any.
    fn next_message(&mut self) -> Result<Option<Req>, Status> {
        let decode = |bytes: &[u8]| Req::decode(bytes).map_err(|e| Status::internal(e.to_string()));
        if self.partial.is_empty() {
            if self.chunk.len() >= HEADER_LEN {
                let len = self.length(&self.chunk[..HEADER_LEN])?;
                if self.chunk.len() >= HEADER_LEN + len {
                    let msg = decode(&self.chunk[HEADER_LEN..HEADER_LEN + len])?;
                    self.chunk.advance(HEADER_LEN + len);
                    if self.chunk.is_empty() {
                        // Let go of the connection's buffer the frame was cut from.
                        self.chunk = Bytes::new();
                    }
                    return Ok(Some(msg));
                }
            }
            // The start of a message: keep it, not the whole frame.
            self.partial.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
            return Ok(None);
        }
        // Complete the header, then the message, from the new frame.
        if self.partial.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.partial.len()).min(self.chunk.len());
            self.partial.extend_from_slice(&self.chunk[..take]);
            self.chunk.advance(take);
            if self.partial.len() < HEADER_LEN {
                return Ok(None);
            }
        }
        let len = self.length(&self.partial[..HEADER_LEN])?;
        let missing = HEADER_LEN + len - self.partial.len();
        let take = missing.min(self.chunk.len());
        if self.partial.capacity() < HEADER_LEN + len {
            self.partial
                .reserve_exact(HEADER_LEN + len - self.partial.len());
        }
        self.partial.extend_from_slice(&self.chunk[..take]);
        self.chunk.advance(take);
        if take < missing {
            return Ok(None);
        }
        let msg = decode(&self.partial[HEADER_LEN..])?;
        self.partial = Vec::new();
        if self.chunk.is_empty() {
            self.chunk = Bytes::new();
        }
        Ok(Some(msg))
    }
}

impl<Req: Message + Default> Stream for Requests<Req> {
    type Item = Result<Req, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.chunk.is_empty() {
                match this.next_message() {
                    Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                    Ok(None) => {}
                    Err(status) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                continue;
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.chunk = data;
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    // A client that resets its stream is gone: no error to report.
                    if status.code() == Code::Cancelled {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if !this.partial.is_empty() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "Unexpected EOF decoding stream.",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// A response body: one data frame per message, then the status trailers.
struct Framed<S> {
    responses: S,
    done: bool,
}

impl<S, M> http_body::Body for Framed<S>
where
    S: Stream<Item = Result<Outgoing<M>, Status>> + Unpin,
    M: WireMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match Pin::new(&mut self.responses).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => match frame(&message) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(status) => status,
            },
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            tracing::warn!(error = %e, "cannot write the gRPC status trailers");
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One length-prefixed gRPC message in an allocation of exactly its size.
fn frame<M: WireMessage>(message: &Outgoing<M>) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("a {len}-byte response is too large for gRPC"))
    })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode(&mut buf);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_exact_and_prefixed() {
        let m = Outgoing {
            message: DiscoveryResponse {
                version_info: "v1".into(),
                nonce: "7".into(),
                ..Default::default()
            },
            resources: Vec::new(),
        };
        let f = frame(&m).unwrap();
        assert_eq!(f.len(), HEADER_LEN + m.encoded_len());
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            m.encoded_len()
        );
        assert_eq!(
            DiscoveryResponse::decode(&f[HEADER_LEN..]).unwrap(),
            m.into_proto()
        );
    }
}
