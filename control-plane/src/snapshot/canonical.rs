//! Content hashes of encoded resources that do not depend on the order in
//! which protobuf map entries happen to be encoded.
//!
//! prost writes a message's fields in field-number order and the values of a
//! repeated field in order, so an encoding is deterministic except for map
//! fields (a `Struct` in metadata, `typed_per_filter_config`, ...), whose
//! entries follow `HashMap` iteration order and differ between two builds of
//! the same YAML. [`hash`] walks the encoded bytes with the message's
//! descriptor and feeds the hasher each field as it comes, except map
//! entries: each entry is hashed on its own, and a map's entry hashes are fed
//! sorted. `google.protobuf.Any` values are resolved through the descriptor
//! pool and walked the same way, since a typed config may hold maps too.
//!
//! Nothing is decoded into a tree: memory is the entry hashes of the maps
//! open along the current path, and time is linear in the bytes (the earlier
//! canonical-JSON form took about 250 bytes of memory per byte of YAML).

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use sha2::{Digest, Sha256};

/// Messages nested deeper than this are hashed as raw bytes (the YAML
/// loader's depth limit keeps real configs far below it).
const MAX_DEPTH: usize = 100;

const ANY: &str = "google.protobuf.Any";

/// The canonical hash of `bytes`, an encoded `desc`; `None` when the bytes do
/// not parse as protobuf.
pub fn hash(pool: &DescriptorPool, desc: &MessageDescriptor, bytes: &[u8]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    walk(pool, desc, bytes, &mut h, 0)?;
    Some(h.finalize().into())
}

/// A map field's entries, hashed one by one, waiting for the field to end.
struct Entries {
    number: u32,
    hashes: Vec<[u8; 32]>,
}

impl Entries {
    fn flush(self, h: &mut Sha256) {
        let Entries { number, mut hashes } = self;
        hashes.sort_unstable();
        h.update([b'M']);
        h.update(number.to_le_bytes());
        h.update((hashes.len() as u64).to_le_bytes());
        for e in hashes {
            h.update(e);
        }
    }
}

fn walk(
    pool: &DescriptorPool,
    desc: &MessageDescriptor,
    mut bytes: &[u8],
    h: &mut Sha256,
    depth: usize,
) -> Option<()> {
    if depth > MAX_DEPTH {
        h.update([b'r']);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        return Some(());
    }
    let any = desc.full_name() == ANY;
    // An `Any`'s type URL (field 1), which prost writes before its value.
    let mut type_url: Option<&[u8]> = None;
    let mut map: Option<Entries> = None;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).ok()?;
        let wire = key & 7;
        if map.as_ref().is_some_and(|m| m.number != number) {
            map.take()?.flush(h);
        }
        match wire {
            0 => {
                let v = varint(&mut bytes)?;
                h.update([b'v']);
                h.update(number.to_le_bytes());
                h.update(v.to_le_bytes());
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let (v, rest) = bytes.split_at_checked(n)?;
                bytes = rest;
                h.update([b'f']);
                h.update(number.to_le_bytes());
                h.update(v);
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (data, rest) = bytes.split_at_checked(len)?;
                bytes = rest;
                let field = desc.get_field(number);
                let message = field.as_ref().and_then(|f| match f.kind() {
                    Kind::Message(m) => Some((m, f.is_map())),
                    _ => None,
                });
                match message {
                    Some((entry, true)) => {
                        let mut eh = Sha256::new();
                        walk(pool, &entry, data, &mut eh, depth + 1)?;
                        map.get_or_insert_with(|| Entries {
                            number,
                            hashes: Vec::new(),
                        })
                        .hashes
                        .push(eh.finalize().into());
                    }
                    Some((inner, false)) => nested(pool, &inner, number, data, h, depth)?,
                    // `Any.value` (field 2): the message its type URL names.
                    None if any && number == 2 => match type_url.and_then(|u| packed_type(pool, u))
                    {
                        Some(inner) => nested(pool, &inner, number, data, h, depth)?,
                        None => raw(number, data, h),
                    },
                    None => {
                        if any && number == 1 {
                            type_url = Some(data);
                        }
                        raw(number, data, h)
                    }
                }
            }
            _ => return None,
        }
    }
    if let Some(m) = map {
        m.flush(h);
    }
    Some(())
}

/// The message type an `Any`'s type URL names, if the pool knows it.
fn packed_type(pool: &DescriptorPool, url: &[u8]) -> Option<MessageDescriptor> {
    let url = std::str::from_utf8(url).ok()?;
    pool.get_message_by_name(url.rsplit('/').next()?)
}

/// A nested message: framed, then walked.
fn nested(
    pool: &DescriptorPool,
    desc: &MessageDescriptor,
    number: u32,
    data: &[u8],
    h: &mut Sha256,
    depth: usize,
) -> Option<()> {
    h.update([b'm']);
    h.update(number.to_le_bytes());
    walk(pool, desc, data, h, depth + 1)?;
    h.update([b'e']);
    Some(())
}

/// A length-delimited field fed as it is (string, bytes, packed scalars).
fn raw(number: u32, data: &[u8], h: &mut Sha256) {
    h.update([b'b']);
    h.update(number.to_le_bytes());
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// Reads a base-128 varint.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind as V, Any, Struct, Value};
    use prost::Message;

    fn pool() -> &'static DescriptorPool {
        pylon::descriptor_pool()
    }

    fn cluster_desc() -> MessageDescriptor {
        pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .unwrap()
    }

    fn strukt(keys: &[&str]) -> Struct {
        Struct {
            fields: keys
                .iter()
                .map(|k| {
                    let v = Value {
                        kind: Some(V::StringValue(format!("value of {k}"))),
                    };
                    (k.to_string(), v)
                })
                .collect(),
        }
    }

    /// Two encodings of one cluster whose metadata maps were built in a
    /// different order: the bytes differ, the hash does not.
    #[test]
    fn map_entry_order_does_not_change_the_hash() {
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut encodings = std::collections::BTreeSet::new();
        let mut hashes = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let c = Cluster {
                name: "a".into(),
                metadata: Some(Metadata {
                    filter_metadata: [
                        ("x".to_string(), strukt(&refs)),
                        ("y".to_string(), strukt(&refs[..3])),
                    ]
                    .into(),
                    // A Struct behind an Any: resolved and canonicalised too.
                    typed_filter_metadata: [(
                        "t".to_string(),
                        Any {
                            type_url: "type.googleapis.com/google.protobuf.Struct".into(),
                            value: strukt(&refs).encode_to_vec(),
                        },
                    )]
                    .into(),
                }),
                ..Default::default()
            };
            let bytes = c.encode_to_vec();
            hashes.insert(hash(pool(), &cluster_desc(), &bytes).unwrap());
            encodings.insert(bytes);
        }
        assert!(
            encodings.len() > 1,
            "HashMap order did not vary; the test proves nothing"
        );
        assert_eq!(hashes.len(), 1);
    }

    #[test]
    fn content_changes_change_the_hash() {
        let base = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let h = |c: &Cluster| hash(pool(), &cluster_desc(), &c.encode_to_vec()).unwrap();
        let renamed = Cluster {
            name: "b".into(),
            ..base.clone()
        };
        assert_ne!(h(&base), h(&renamed));
        let with_map = |v: &str| Cluster {
            metadata: Some(Metadata {
                filter_metadata: [("x".to_string(), strukt(&[v]))].into(),
                ..Default::default()
            }),
            ..base.clone()
        };
        assert_ne!(h(&with_map("p")), h(&with_map("q")));
        // Garbage is not a message.
        assert_eq!(hash(pool(), &cluster_desc(), &[0xff, 0xff]), None);
    }
}
