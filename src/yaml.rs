//! Reading YAML that comes from outside, shared by pylon-xds's config loader
//! and pylon-proxy's bootstrap reader: the first pass over the text, before
//! any other parser sees it (the structural bounds, and an index from a path
//! such as `clusters[1].endpoints[2]` to a 1-based line and column), and
//! placing serde's errors (`file:line:column: path: message`).
//!
//! **Bounds.** serde_yaml (and the serde visitors behind it) trust their
//! input, so this pass decides whether the text may be parsed at all. It
//! reads yaml-rust2's event stream in a loop (no recursion, so no input can
//! exhaust the stack) and refuses, with the position and path of the
//! offending node:
//! - nesting deeper than [`Limits::max_depth`];
//! - more than [`Limits::max_nodes`] nodes;
//! - anchors and aliases (`&name`, `*name`, `<<: *name`): the schema needs
//!   neither, and a few kilobytes of aliases can expand into gigabytes;
//! - text that is not valid YAML (yaml-rust2's message).
//!
//! The byte-size bound is checked before this pass, by the reader
//! ([`Limits::max_bytes`]).
//!
//! **Positions.** serde reports the position of the first structural error
//! itself; semantic errors are found later, on typed values that no longer
//! know where they came from, so they are placed with this index. It is a
//! tree of path segments (each node knows its parent and its segment), so it
//! takes memory in proportion to the number of nodes and the length of their
//! keys, whatever the depth. Keys are indexed in snake_case, so a
//! native-form file written with the protobuf JSON names (`filterChains`) is
//! found under the same path as one written with the proto field names
//! (`filter_chains`). Only the first document is indexed (serde_yaml refuses
//! a file with several).
//!
//! **Two ways in.** [`scan`] checks the bounds and builds the index;
//! [`check`] (module `shape`) checks the same bounds without it and returns
//! only the layout of the top of the document, for a loader that builds the
//! index only when it needs a position (pylon-xds on a reload: a valid file
//! never does).

use std::collections::HashMap;

mod shape;
pub use shape::{check, Mark, Shape};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
pub type Position = (usize, usize);

/// A serde error placed in the file: position, path and bare message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line and column; (0, 0) when unknown.
    pub position: Position,
    /// The path of the node, like `admin.address` (`.` for the root).
    pub path: String,
    /// The message, without the position and path serde_yaml adds to it.
    pub message: String,
}

/// Places the first error of a serde pass (through `serde_path_to_error`,
/// for its path) over text indexed as `index`.
///
/// prost-reflect reports an unknown field at the map holding it; the key's
/// own position and path are given instead.
pub fn locate(
    error: serde_path_to_error::Error<serde_yaml::Error>,
    index: &PositionIndex,
) -> Located {
    let mut path = error.path().to_string();
    let error = error.into_inner();
    let mut position = error
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = bare_message(&error);
    if message == "failed to parse duration" {
        // prost-reflect's message for a native duration such as `5` or `5m`.
        message.push_str(": native durations are seconds with an `s`, like \"5s\" or \"0.25s\"");
    }
    if let Some(key) = message
        .strip_prefix("unrecognized field name '")
        .and_then(|rest| rest.strip_suffix('\''))
    {
        let parent = if path == "." { "" } else { path.as_str() };
        let key_path = join_key(parent, key);
        if let Some(p) = index.key(&join_key(parent, &snake_case(key))) {
            position = p;
        }
        path = key_path;
    }
    Located {
        position,
        path,
        message,
    }
}

/// serde_yaml's message without the position and path it adds to it (both are
/// reported separately).
pub fn bare_message(error: &serde_yaml::Error) -> String {
    let mut text = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(at) = text.find(&suffix) {
            text.replace_range(at..at + suffix.len(), "");
        }
    }
    // serde_yaml writes `path: message`; a path has no spaces and messages
    // never start with a single bare word and a colon.
    if let Some((prefix, rest)) = text.split_once(": ") {
        if !prefix.is_empty()
            && !prefix.contains(char::is_whitespace)
            && !prefix.starts_with(['`', '\'', '"'])
        {
            text = rest.to_string();
        }
    }
    text
}

/// The 1-based line and column (in characters) of byte `offset` of `bytes`,
/// which are valid UTF-8 up to `offset`.
pub fn line_column(bytes: &[u8], offset: usize) -> Position {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count();
    (line, column)
}

/// Structural bounds on a config file (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest file accepted, in bytes.
    pub max_bytes: usize,
    /// The deepest nesting of maps and sequences accepted. The deepest paths
    /// of the Envoy-native form (a weighted cluster of a route of a virtual
    /// host of an inline route configuration of a filter of a listener) are
    /// about 20 levels.
    pub max_depth: usize,
    /// The most YAML nodes (scalars, maps and sequences) accepted.
    pub max_nodes: usize,
    /// The most resources of each type (clusters, load assignments,
    /// listeners, route configurations) one pylon-xds config may define.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 8 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 2_000_000,
            max_resources: 100_000,
        }
    }
}

/// Why the text may not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Where (0, 0 when unknown).
    pub position: Position,
    /// The path of the node, like `clusters[0].endpoints` (`.` for the root).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Checks `text` against `limits` and indexes its positions.
pub fn scan(text: &str, limits: &Limits) -> Result<PositionIndex, Refused> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(e) => e,
            Err(e) => {
                let m = e.marker();
                return Err(builder.refuse(
                    (m.line(), m.col() + 1),
                    format!("invalid YAML: {}", e.info()),
                ));
            }
        };
        if matches!(ev, Event::StreamEnd) {
            return Ok(builder.index);
        }
        builder.check(&ev, mark, limits)?;
        builder.on_event(ev, mark);
    }
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(Box<str>),
    Index(usize),
}

/// One indexed node: where its value starts and, for a map entry, its key.
#[derive(Debug)]
struct Entry {
    parent: usize,
    segment: Segment,
    value: Option<Position>,
    key: Option<Position>,
    /// For a sequence, how many items it has.
    items: usize,
}

/// Path -> start of the node at that path (values) and of its key (map
/// entries). Entry 0 is the root.
#[derive(Debug)]
pub struct PositionIndex {
    entries: Vec<Entry>,
    children: HashMap<(usize, Segment), usize>,
}

impl Default for PositionIndex {
    fn default() -> Self {
        PositionIndex {
            entries: vec![Entry {
                parent: 0,
                segment: Segment::Index(0),
                value: None,
                key: None,
                items: 0,
            }],
            children: HashMap::new(),
        }
    }
}

impl PositionIndex {
    /// Indexes `text` without bounds (tests and small, trusted texts only).
    #[cfg(test)]
    fn build(text: &str) -> Self {
        let unbounded = Limits {
            max_bytes: usize::MAX,
            max_depth: usize::MAX,
            max_nodes: usize::MAX,
            max_resources: usize::MAX,
        };
        scan(text, &unbounded).unwrap_or_default()
    }

    /// The start of the node at `path`, or of its nearest indexed ancestor.
    ///
    /// A block collection starts on the line after its key (`health_check:`
    /// then `  tcp: {}`); for those the key's position is returned, since the
    /// key is what names the node in the message.
    pub fn value(&self, path: &str) -> Option<Position> {
        let mut found = None;
        let mut node = 0;
        let mut visit = |e: &Entry| {
            if let Some(position) = e.value {
                found = Some(match e.key {
                    Some(key) if key.0 < position.0 => key,
                    _ => position,
                });
            }
        };
        visit(&self.entries[0]);
        for segment in segments(path) {
            match self.children.get(&(node, segment)) {
                Some(&child) => {
                    node = child;
                    visit(&self.entries[node]);
                }
                None => break,
            }
        }
        found
    }

    /// The start of the key of the map entry at `path`, if there is one.
    pub fn key(&self, path: &str) -> Option<Position> {
        let mut node = 0;
        for segment in segments(path) {
            node = *self.children.get(&(node, segment))?;
        }
        self.entries[node].key
    }

    /// How many items the sequence at `path` has (0 if there is none).
    pub fn items(&self, path: &str) -> usize {
        let mut node = 0;
        for segment in segments(path) {
            match self.children.get(&(node, segment)) {
                Some(&child) => node = child,
                None => return 0,
            }
        }
        self.entries[node].items
    }

    /// The path of entry `node`, as the error messages write it.
    fn path_of(&self, mut node: usize) -> String {
        let mut segments = Vec::new();
        while node != 0 {
            let e = &self.entries[node];
            segments.push(&e.segment);
            node = e.parent;
        }
        let mut path = String::new();
        for s in segments.into_iter().rev() {
            match s {
                Segment::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Segment::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        if path.is_empty() {
            path.push('.');
        }
        path
    }

    /// The child of `parent` at `segment`, made if new.
    fn child(&mut self, parent: usize, segment: Segment) -> usize {
        let next = self.entries.len();
        let entries = &mut self.entries;
        *self
            .children
            .entry((parent, segment.clone()))
            .or_insert_with(|| {
                entries.push(Entry {
                    parent,
                    segment,
                    value: None,
                    key: None,
                    items: 0,
                });
                next
            })
    }
}

/// `a.b[2].c` -> `a`, `b`, `2`, `c`. The root is `` or `.`.
fn segments(path: &str) -> impl Iterator<Item = Segment> + '_ {
    path.split('.')
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            let (key, indices) = match part.find('[') {
                Some(at) => (&part[..at], &part[at..]),
                None => (part, ""),
            };
            let key = (!key.is_empty()).then(|| Segment::Key(key.into()));
            let indices = indices
                .split(['[', ']'])
                .filter(|s| !s.is_empty())
                .map(|s| Segment::Index(s.parse().unwrap_or(usize::MAX)));
            key.into_iter().chain(indices)
        })
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
        node: usize,
        /// The entry whose value comes next; `None` while a key is expected.
        key: Option<usize>,
        /// Where the map starts. yaml-rust2 marks a block mapping at the `:`
        /// after its first key, so the first key's position replaces the
        /// mark when it comes earlier.
        start: Marker,
        first_key_seen: bool,
    },
    Seq {
        node: usize,
        index: usize,
    },
    /// A node used as a map key (not a scalar): nothing inside is indexed.
    ComplexKey {
        depth: usize,
    },
}

/// The counters behind the bounds of the module docs.
#[derive(Default)]
struct Bounds {
    /// Maps and sequences open, in every document.
    depth: usize,
    nodes: usize,
}

impl Bounds {
    /// The bounds of the module docs, checked on each event before it is
    /// looked at: `Err` is the message of the refusal.
    fn check(&mut self, ev: &Event, limits: &Limits) -> Result<(), String> {
        match ev {
            Event::Alias(_) => {
                return Err(
                    "YAML aliases (`*name`, `<<: *name`) are not supported: write the value \
                     out in full (Pylon refuses anchors and aliases so that a small file \
                     cannot expand into a huge config)"
                        .to_string(),
                )
            }
            Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) => {
                if anchor(ev).is_some() {
                    return Err(
                        "YAML anchors (`&name`) are not supported: write the value out in \
                         full (Pylon refuses anchors and aliases so that a small file \
                         cannot expand into a huge config)"
                            .to_string(),
                    );
                }
                self.nodes += 1;
                if self.nodes > limits.max_nodes {
                    return Err(format!(
                        "the file has more than {} YAML nodes (values, maps and lists)",
                        limits.max_nodes
                    ));
                }
                if !matches!(ev, Event::Scalar(..)) {
                    self.depth += 1;
                    if self.depth > limits.max_depth {
                        return Err(format!(
                            "nesting deeper than {} levels of maps and lists",
                            limits.max_depth
                        ));
                    }
                }
            }
            Event::MappingEnd | Event::SequenceEnd => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        Ok(())
    }
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    documents: usize,
    bounds: Bounds,
}

/// Follows the nesting inside a node used as a map key (`depth` open
/// collections): `true` once the key has ended.
fn complex_key_ends(depth: &mut usize, ev: &Event) -> bool {
    match ev {
        Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
        Event::MappingEnd | Event::SequenceEnd => {
            *depth = depth.saturating_sub(1);
            return *depth == 0;
        }
        _ => {}
    }
    false
}

/// Where an event names an anchor, if it does.
fn anchor(ev: &Event) -> Option<usize> {
    match ev {
        Event::Scalar(_, _, a, _) | Event::SequenceStart(a, _) | Event::MappingStart(a, _) => {
            Some(*a).filter(|a| *a > 0)
        }
        _ => None,
    }
}

impl Builder {
    fn position(mark: Marker) -> Position {
        // yaml-rust2 counts lines from 1 and columns from 0.
        (mark.line(), mark.col() + 1)
    }

    /// The bounds of the module docs, checked on each event before it is indexed.
    fn check(&mut self, ev: &Event, mark: Marker, limits: &Limits) -> Result<(), Refused> {
        self.bounds
            .check(ev, limits)
            .map_err(|message| self.refuse(Self::position(mark), message))
    }

    /// A [`Refused`] at `position`, for the node being read.
    fn refuse(&self, position: Position, message: String) -> Refused {
        let path = match self
            .stack
            .iter()
            .rev()
            .find(|f| !matches!(f, Frame::ComplexKey { .. }))
        {
            None => ".".to_string(),
            Some(Frame::Map { node, key, .. }) => self.index.path_of(key.unwrap_or(*node)),
            Some(Frame::Seq { node, index }) => {
                let parent = self.index.path_of(*node);
                let parent = if parent == "." { "" } else { parent.as_str() };
                format!("{parent}[{index}]")
            }
            Some(Frame::ComplexKey { .. }) => ".".to_string(),
        };
        Refused {
            position,
            path,
            message,
        }
    }

    /// The entry of a node starting now, or `None` if it is a map key (then
    /// the key is recorded and the caller does not descend into it).
    fn node_entry(&mut self, ev: &Event, mark: Marker) -> Option<usize> {
        match self.stack.last_mut() {
            None => Some(0),
            Some(Frame::Seq { node, index }) => {
                let (node, index) = (*node, *index);
                Some(self.index.child(node, Segment::Index(index)))
            }
            Some(Frame::Map {
                node,
                key,
                start,
                first_key_seen,
            }) => match key {
                Some(key) => Some(*key),
                None => {
                    let node = *node;
                    if !*first_key_seen {
                        *first_key_seen = true;
                        if mark.index() < start.index() {
                            self.index.entries[node].value = Some(Self::position(mark));
                        }
                    }
                    let name = match ev {
                        Event::Scalar(value, ..) => snake_case(value),
                        _ => "?".to_string(),
                    };
                    let entry = self.index.child(node, Segment::Key(name.into()));
                    let e = &mut self.index.entries[entry];
                    e.key.get_or_insert(Self::position(mark));
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(entry);
                    }
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

    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.documents > 1 {
            return;
        }
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            if complex_key_ends(depth, &ev) {
                self.stack.pop();
                // The complex key is done; its value comes next.
                if let Some(Frame::Map { node, .. }) = self.stack.last() {
                    let entry = self.index.child(*node, Segment::Key("?".into()));
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(entry);
                    }
                }
            }
            return;
        }
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(entry) = self.node_entry(&ev, mark) {
                    self.index.entries[entry]
                        .value
                        .get_or_insert(Self::position(mark));
                    self.node_done();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                match self.node_entry(&ev, mark) {
                    Some(entry) => {
                        self.index.entries[entry]
                            .value
                            .get_or_insert(Self::position(mark));
                        self.stack.push(match ev {
                            Event::MappingStart(..) => Frame::Map {
                                node: entry,
                                key: None,
                                start: mark,
                                first_key_seen: false,
                            },
                            _ => Frame::Seq {
                                node: entry,
                                index: 0,
                            },
                        });
                    }
                    None => self.stack.push(Frame::ComplexKey { depth: 1 }),
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Seq { node, index }) = self.stack.pop() {
                    self.index.entries[node].items = index;
                }
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
    fn survives_complex_keys() {
        let index = PositionIndex::build("? [a, b]\n: 1\nc: 2\n");
        assert_eq!(index.value("c"), Some((3, 4)));
    }

    fn refused(text: &str) -> Refused {
        scan(text, &Limits::default()).unwrap_err()
    }

    #[test]
    fn bad_yaml_is_refused_with_its_position_and_path() {
        let r = refused("a: 1\nb: [1\n");
        assert_eq!(r.path, "b[1]");
        assert_eq!(r.position.0, 3);
        assert!(r.message.starts_with("invalid YAML: "), "{r:?}");
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        // Far deeper than any stack would take if this pass recursed.
        let deep = format!("clusters:\n  {}x\n", "- ".repeat(200_000));
        let r = refused(&deep);
        assert_eq!(r.message, "nesting deeper than 64 levels of maps and lists");
        assert_eq!(r.position, (2, 3 + 2 * 63));
        assert!(r.path.starts_with("clusters[0][0][0]"), "{}", r.path);
        let flow = format!("a: {}", "[".repeat(100_000));
        // yaml-rust2's scanner has a flow nesting limit of its own.
        let r = refused(&flow);
        assert!(
            r.message.starts_with("nesting deeper") || r.message.contains("recursion limit"),
            "{r:?}"
        );
        // 64 levels are fine.
        let ok = format!("a:\n  {}x\n", "- ".repeat(63));
        scan(&ok, &Limits::default()).unwrap();
    }

    #[test]
    fn anchors_and_aliases_are_refused() {
        let r = refused("clusters:\n  - name: a\n    endpoints: &e [127.0.0.1:1]\n  - name: b\n    endpoints: *e\n");
        assert_eq!(r.path, "clusters[0].endpoints");
        assert_eq!(r.position.0, 3);
        assert!(r.message.starts_with("YAML anchors (`&name`)"), "{r:?}");
        let r = refused("a: 1\nb: *x\n");
        assert!(r.message.starts_with("invalid YAML") || r.message.starts_with("YAML aliases"));
        let r = refused("base: &b {x: 1}\n");
        assert_eq!(r.path, "base");
    }

    #[test]
    fn node_count_is_bounded() {
        let limits = Limits {
            max_nodes: 10,
            ..Limits::default()
        };
        let r = scan("a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n", &limits).unwrap_err();
        assert_eq!(r.path, "a[7]");
        assert!(r.message.contains("more than 10 YAML nodes"), "{r:?}");
    }

    #[test]
    fn index_size_does_not_grow_with_depth_times_width() {
        // 60 levels of long keys above 10,000 list items: each item is one
        // entry, not a copy of its whole path.
        let mut text = String::new();
        for level in 0..60 {
            text.push_str(&" ".repeat(level * 2));
            text.push_str(&"k".repeat(1000));
            text.push_str(":\n");
        }
        text.push_str(&" ".repeat(120));
        text.push_str("- 1\n");
        for _ in 1..10_000 {
            text.push_str(&" ".repeat(120));
            text.push_str("- 1\n");
        }
        let index = scan(&text, &Limits::default()).unwrap();
        assert_eq!(index.entries.len(), 1 + 60 + 10_000);
        let path = format!("{}[9999]", vec!["k".repeat(1000); 60].join("."));
        assert_eq!(index.value(&path), Some((61 + 9_999, 123)));
    }

    #[test]
    fn segments_split_keys_and_indices() {
        let s: Vec<Segment> = segments("a.b[2][3].c").collect();
        assert_eq!(
            s,
            [
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::Index(2),
                Segment::Index(3),
                Segment::Key("c".into())
            ]
        );
        assert_eq!(segments(".").count(), 0);
        assert_eq!(segments("").count(), 0);
    }
}
