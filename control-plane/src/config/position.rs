//! Where each node of the file starts: an index from a path such as
//! `clusters[1].endpoints[2]` to a 1-based line and column.
//!
//! serde reports the position of the first structural error itself; semantic
//! errors are found later, on typed values that no longer know where they came
//! from, so they are placed with this index. It is built from yaml-rust2's
//! parser events (each carries a `Marker`), independently of serde_yaml.
//!
//! Keys are indexed in snake_case, so a native-form file written with the
//! protobuf JSON names (`filterChains`) is found under the same path as one
//! written with the proto field names (`filter_chains`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
pub type Position = (usize, usize);

/// Path -> start of the node at that path (values) and of its key (map entries).
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes the first document of `text`. A file yaml-rust2 cannot parse
    /// gives a partial (possibly empty) index: positions are then unknown, never
    /// wrong, and serde_yaml reports the syntax error itself.
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        // Errors are ignored on purpose, see above.
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        builder.index
    }

    /// The start of the node at `path`, or of its nearest indexed ancestor.
    ///
    /// A block collection starts on the line after its key (`health_check:`
    /// then `  tcp: {}`); for those the key's position is returned, since the
    /// key is what names the node in the message.
    pub fn value(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(&position) = self.values.get(path) {
                return Some(match self.keys.get(path) {
                    Some(&key) if key.0 < position.0 => key,
                    _ => position,
                });
            }
            path = parent(path)?;
        }
    }

    /// The start of the key of the map entry at `path`, if there is one.
    pub fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }
}

/// The path one segment up: `a.b[2]` -> `a.b` -> `a` -> `` (the root).
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a map key onto a path.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `filterChains` -> `filter_chains`; snake_case keys are returned unchanged.
pub fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
        /// Where the map starts. yaml-rust2 marks a block mapping at the `:`
        /// after its first key, so the first key's position replaces the
        /// mark when it comes earlier.
        start: Marker,
        first_key_seen: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
    /// A node used as a map key (not a scalar): nothing inside is indexed.
    ComplexKey {
        depth: usize,
    },
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    documents: usize,
}

impl Builder {
    fn position(mark: Marker) -> Position {
        // yaml-rust2 counts lines from 1 and columns from 0.
        (mark.line(), mark.col() + 1)
    }

    /// The path of a node starting now, or `None` if it is a map key (then the
    /// key is recorded and the caller does not descend into it).
    fn node_path(&mut self, ev: &Event, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
            Some(Frame::Map {
                path,
                key,
                start,
                first_key_seen,
            }) => match key {
                Some(key) => Some(join_key(path, key)),
                None => {
                    if !*first_key_seen {
                        *first_key_seen = true;
                        if mark.index() < start.index() {
                            self.index.values.insert(path.clone(), Self::position(mark));
                        }
                    }
                    let name = match ev {
                        Event::Scalar(value, ..) => snake_case(value),
                        _ => "?".to_string(),
                    };
                    let full = join_key(path, &name);
                    self.index
                        .keys
                        .entry(full)
                        .or_insert_with(|| Self::position(mark));
                    *key = Some(name);
                    None
                }
            },
            Some(Frame::ComplexKey { .. }) => None,
        }
    }

    /// A node (scalar, alias or collection) has ended: advance the parent.
    fn node_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Seq { index, .. }) => *index += 1,
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::ComplexKey { .. }) | None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.documents > 1 {
            return;
        }
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
                Event::MappingEnd | Event::SequenceEnd => {
                    *depth -= 1;
                    if *depth == 0 {
                        self.stack.pop();
                        // The complex key is done; its value comes next.
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some("?".to_string());
                        }
                    }
                }
                _ => {}
            }
            return;
        }
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(path) = self.node_path(&ev, mark) {
                    self.index
                        .values
                        .entry(path)
                        .or_insert_with(|| Self::position(mark));
                    self.node_done();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => match self.node_path(&ev, mark) {
                Some(path) => {
                    self.index
                        .values
                        .entry(path.clone())
                        .or_insert_with(|| Self::position(mark));
                    self.stack.push(match ev {
                        Event::MappingStart(..) => Frame::Map {
                            path,
                            key: None,
                            start: mark,
                            first_key_seen: false,
                        },
                        _ => Frame::Seq { path, index: 0 },
                    });
                }
                None => self.stack.push(Frame::ComplexKey { depth: 1 }),
            },
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.node_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
clusters:
  - name: a
    endpoints:
      - 127.0.0.1:1
      - {address: 127.0.0.2:1, weight: 2}
static_resources:
  listeners:
  - name: l
    filterChains: [{filters: []}]
";

    #[test]
    fn indexes_values_and_keys() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(index.value(""), Some((1, 1)));
        // A block collection is placed at its key.
        assert_eq!(index.value("clusters"), Some((1, 1)));
        assert_eq!(index.value("clusters[0].endpoints"), Some((3, 5)));
        assert_eq!(index.value("clusters[0]"), Some((2, 5)));
        assert_eq!(index.value("clusters[0].name"), Some((2, 11)));
        assert_eq!(index.key("clusters[0].name"), Some((2, 5)));
        assert_eq!(index.value("clusters[0].endpoints[0]"), Some((4, 9)));
        assert_eq!(index.value("clusters[0].endpoints[1]"), Some((5, 9)));
        assert_eq!(
            index.value("clusters[0].endpoints[1].weight"),
            Some((5, 40))
        );
        assert_eq!(
            index.value("static_resources.listeners[0].filter_chains[0].filters"),
            Some((9, 30))
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(
            index.value("clusters[0].health_check.interval"),
            Some((2, 5))
        );
        assert_eq!(index.value("clusters[7]"), Some((1, 1)));
        assert_eq!(index.key("clusters[0].nothing"), None);
    }

    #[test]
    fn survives_complex_keys_and_bad_yaml() {
        let index = PositionIndex::build("? [a, b]\n: 1\nc: 2\n");
        assert_eq!(index.value("c"), Some((3, 4)));
        // An unterminated flow sequence: whatever was indexed before the error
        // stays usable.
        let index = PositionIndex::build("a: 1\nb: [1\n");
        assert_eq!(index.value("a"), Some((1, 4)));
    }
}
