//! Responses as the stream state machines build them, and their encoding.
//!
//! A snapshot holds every resource already encoded, once, behind an `Arc`.
//! Building a `DiscoveryResponse` would copy each resource's bytes into an
//! `Any` per stream, only to encode them again right after. An [`Outgoing`]
//! response instead carries the message's own fields and the shared
//! resources; [`Outgoing::encode`] writes the exact bytes of the full message
//! (the resources as entries of its `resources` field, after the other
//! fields, which protobuf parsers accept in any order).
//! [`Outgoing::into_proto`] builds the full message for code that needs one.

use std::ops::Deref;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as WireResource,
};
use prost::bytes::BufMut;
use prost::encoding::{self, WireType};
use prost::Message;

use crate::snapshot::Resource;

/// The field number of `resources` in both response messages.
const RESOURCES: u32 = 2;

/// A response: the message's own fields (its `resources` empty) and the
/// resources it carries, shared with the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing<M> {
    /// Every field but `resources`.
    pub message: M,
    /// The resources, in order.
    pub resources: Vec<Arc<Resource>>,
}

impl<M> Deref for Outgoing<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.message
    }
}

/// A response message whose `resources` field [`Outgoing`] can write from
/// shared resources.
pub trait WireMessage: Message + Sized {
    /// Encoded length of `r` as one entry of the `resources` field, tag
    /// included.
    fn resource_len(r: &Resource) -> usize;
    /// Writes `r` as one entry of the `resources` field.
    fn encode_resource(r: &Resource, buf: &mut impl BufMut);
    /// The message with `resources` filled in.
    fn with_resources(self, resources: &[Arc<Resource>]) -> Self;
}

impl<M: WireMessage> Outgoing<M> {
    /// Length of the encoded full message.
    pub fn encoded_len(&self) -> usize {
        self.message.encoded_len()
            + self
                .resources
                .iter()
                .map(|r| M::resource_len(r))
                .sum::<usize>()
    }

    /// Writes the full message; `buf` must have room for [`Self::encoded_len`].
    pub fn encode(&self, buf: &mut impl BufMut) {
        self.message.encode_raw(buf);
        for r in &self.resources {
            M::encode_resource(r, buf);
        }
    }

    /// The full message, each resource copied in.
    pub fn into_proto(self) -> M {
        self.message.with_resources(&self.resources)
    }
}

impl WireMessage for DiscoveryResponse {
    fn resource_len(r: &Resource) -> usize {
        encoding::message::encoded_len(RESOURCES, &r.body)
    }

    fn encode_resource(r: &Resource, buf: &mut impl BufMut) {
        encoding::message::encode(RESOURCES, &r.body, buf);
    }

    fn with_resources(mut self, resources: &[Arc<Resource>]) -> Self {
        self.resources = resources.iter().map(|r| r.body.clone()).collect();
        self
    }
}

/// Length of a delta `Resource` message's fields: `version` (1), `resource`
/// (2), `name` (3). Empty strings are left out, as prost does (proto3).
fn delta_resource_body_len(r: &Resource) -> usize {
    string_len(1, &r.version) + encoding::message::encoded_len(2, &r.body) + string_len(3, &r.name)
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn encode_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

impl WireMessage for DeltaDiscoveryResponse {
    fn resource_len(r: &Resource) -> usize {
        let body = delta_resource_body_len(r);
        encoding::key_len(RESOURCES) + encoding::encoded_len_varint(body as u64) + body
    }

    fn encode_resource(r: &Resource, buf: &mut impl BufMut) {
        encoding::encode_key(RESOURCES, WireType::LengthDelimited, buf);
        encoding::encode_varint(delta_resource_body_len(r) as u64, buf);
        encode_string(1, &r.version, buf);
        encoding::message::encode(2, &r.body, buf);
        encode_string(3, &r.name, buf);
    }

    fn with_resources(mut self, resources: &[Arc<Resource>]) -> Self {
        self.resources = resources
            .iter()
            .map(|r| WireResource {
                name: r.name.to_string(),
                version: r.version.to_string(),
                resource: Some(r.body.clone()),
                ..Default::default()
            })
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn resources() -> Vec<Arc<Resource>> {
        ["a", "bb", ""]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Arc::new(Resource {
                    name: Arc::from(*name),
                    version: Arc::from(format!("v{i}")),
                    body: Any {
                        type_url: pylon::type_url::CLUSTER.into(),
                        // Long enough for a two-byte length varint.
                        value: vec![i as u8; 200 * i],
                    },
                })
            })
            .collect()
    }

    fn check<M: WireMessage + Clone + PartialEq + Default + std::fmt::Debug>(message: M) {
        let out = Outgoing {
            message,
            resources: resources(),
        };
        let mut buf = Vec::new();
        out.encode(&mut buf);
        assert_eq!(buf.len(), out.encoded_len());
        let full = out.clone().into_proto();
        assert_eq!(M::decode(buf.as_slice()).unwrap(), full);
        assert_eq!(full.encoded_len(), buf.len());
    }

    #[test]
    fn sotw_encoding_matches_the_full_message() {
        check(DiscoveryResponse {
            version_info: "v7".into(),
            type_url: pylon::type_url::CLUSTER.into(),
            nonce: "3".into(),
            ..Default::default()
        });
    }

    #[test]
    fn delta_encoding_matches_the_full_message() {
        check(DeltaDiscoveryResponse {
            system_version_info: "v7".into(),
            type_url: pylon::type_url::CLUSTER.into(),
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
            ..Default::default()
        });
    }
}
