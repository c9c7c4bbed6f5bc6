//! The streaming xDS methods on the wire: request decoding by tonic, response
//! framing here.
//!
//! tonic's generated servers encode a stream's responses into one buffer per
//! stream that grows to the largest response and is reused, never shrunk,
//! until the stream ends. An xDS stream's largest response is usually its
//! first (the whole config), and streams live for days, so every connected
//! node would keep a buffer the size of the config. [`XdsStreams`] wraps a
//! generated service, serves its two streaming methods itself and hands every
//! other method (the unary `Fetch*`) to it unchanged. Each response is encoded
//! into an allocation of exactly its size, owned by the frame, and freed once
//! written to the socket.
//!
//! Requests are decoded as before, by tonic's [`Streaming`] with the same
//! message size limit; compression stays unsupported, as in the generated
//! servers built without tonic's compression features.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use http_body::Frame;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codec::Codec;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
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
                Ok(serve::<DiscoveryRequest, DiscoveryResponse>(
                    req,
                    max,
                    |r| server.sotw(r, only),
                ))
            })
        } else if method == self.delta_method {
            Box::pin(async move {
                Ok(serve::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>(
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

/// Decodes `req` as a stream of `Req`, runs `handler`, and frames what it
/// answers.
fn serve<Req, Resp>(
    req: http::Request<Body>,
    max_request_bytes: usize,
    handler: impl FnOnce(
        Request<Streaming<Req>>,
    )
        -> Result<Response<ReceiverStream<Result<Outgoing<Resp>, Status>>>, Status>,
) -> http::Response<Body>
where
    Req: Message + Default + Send + 'static,
    Resp: WireMessage + Send + 'static,
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
    let decoder = ProstCodec::<Resp, Req>::default().decoder();
    let req = req.map(|body| Streaming::new_request(decoder, body, None, Some(max_request_bytes)));
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
