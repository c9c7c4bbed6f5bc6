//! The bounded first pass without the position index: what a reload runs
//! when the text is most likely valid. It checks the same bounds as
//! [`scan`](super::scan) and learns only the layout of the top of the
//! document (the root mapping's keys, and where each item of the lists at
//! its first two levels starts), which is what the loader needs to count
//! resources and to reuse what did not change since the previous revision.
//! The index, which costs about as much as the parse itself, is built only
//! when something needs a position ([`super::scan`]).

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::{complex_key_ends, Bounds, Limits, Refused};

/// A place in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Characters (not bytes) before it.
    pub index: usize,
    /// 1-based line.
    pub line: usize,
    /// 0-based column, in characters.
    pub col: usize,
}

impl From<Marker> for Mark {
    fn from(m: Marker) -> Self {
        Mark {
            index: m.index(),
            line: m.line(),
            col: m.col(),
        }
    }
}

/// The layout of the top of a document (only the first one: a config file
/// has one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The keys of the root mapping and where each starts, in file order
    /// (empty when the root is not a mapping).
    pub keys: Vec<(String, Mark)>,
    /// The lists at a key of the root mapping (`clusters`) or at a key of a
    /// mapping there (`static_resources.clusters`), and where each of their
    /// items starts (for an item that is a mapping, its first key).
    pub lists: Vec<(String, Vec<Mark>)>,
    /// How many YAML nodes (scalars, maps and lists) the text has: what
    /// [`Limits::max_nodes`] bounds.
    pub nodes: usize,
}

impl Shape {
    /// How many items the list at `path` has (the longest, if the key is
    /// written twice; 0 if there is none).
    pub fn items(&self, path: &str) -> usize {
        self.lists
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, items)| items.len())
            .max()
            .unwrap_or(0)
    }
}

/// Checks `text` against `limits` as [`super::scan`] does (the same
/// refusals, with the same position and path: the text is scanned again to
/// place a refusal), and returns its [`Shape`].
pub fn check(text: &str, limits: &Limits) -> Result<Shape, Refused> {
    let mut bounds = Bounds::default();
    let mut walker = Walker::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let Ok((ev, mark)) = parser.next_token() else {
            return Err(refusal(text, limits));
        };
        if matches!(ev, Event::StreamEnd) {
            let mut shape = walker.shape;
            shape.nodes = bounds.nodes;
            return Ok(shape);
        }
        if bounds.check(&ev, limits).is_err() {
            return Err(refusal(text, limits));
        }
        walker.on_event(&ev, mark);
    }
}

/// The refusal [`super::scan`] gives, with its path.
fn refusal(text: &str, limits: &Limits) -> Refused {
    match super::scan(text, limits) {
        Err(refused) => refused,
        // Cannot happen: both passes read the same events.
        Ok(_) => Refused {
            position: (0, 0),
            path: ".".to_string(),
            message: "invalid YAML".to_string(),
        },
    }
}

enum Frame {
    Map {
        /// The path of this mapping when it is one whose keys are tracked
        /// (the root, `""`, and the mappings at its keys).
        path: Option<String>,
        /// The key whose value comes next (tracked mappings only).
        key: Option<String>,
        expecting_key: bool,
        /// This mapping is an item of tracked list `.0`, started at `.1`
        /// (yaml-rust2 marks a block mapping at its first `:`): its start is
        /// recorded at its first key.
        item_of: Option<(usize, Mark)>,
    },
    Seq {
        /// Which of `Shape::lists` this is, when tracked.
        list: Option<usize>,
    },
    /// A mapping or list used as a map key: nothing inside is looked at.
    ComplexKey { depth: usize },
}

#[derive(Default)]
struct Walker {
    shape: Shape,
    stack: Vec<Frame>,
    documents: usize,
}

impl Walker {
    fn on_event(&mut self, ev: &Event, mark: Marker) {
        if matches!(ev, Event::DocumentStart) {
            self.documents += 1;
        }
        if self.documents > 1 {
            return;
        }
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            if complex_key_ends(depth, ev) {
                self.stack.pop();
                // Its value comes next.
                if let Some(Frame::Map {
                    key, expecting_key, ..
                }) = self.stack.last_mut()
                {
                    *key = None;
                    *expecting_key = false;
                }
            }
            return;
        }
        let mark = Mark::from(mark);
        match ev {
            Event::Scalar(value, ..) => {
                if self.key(value, mark) {
                    return;
                }
                self.item_starts(mark);
                self.value_done();
            }
            Event::Alias(_) => self.value_done(),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if let Some(Frame::Map {
                    expecting_key: true,
                    ..
                }) = self.stack.last()
                {
                    self.stack.push(Frame::ComplexKey { depth: 1 });
                    return;
                }
                let path = self.child_path();
                let is_map = matches!(ev, Event::MappingStart(..));
                let item_of = match self.stack.last() {
                    Some(Frame::Seq { list: Some(list) }) => Some(*list),
                    _ => None,
                };
                if is_map {
                    self.stack.push(Frame::Map {
                        // Keys are tracked at the first two levels only.
                        path: path.filter(|p| !p.contains('.')),
                        key: None,
                        expecting_key: true,
                        item_of: item_of.map(|list| (list, mark)),
                    });
                } else {
                    self.item_starts(mark);
                    let list = path.map(|p| {
                        self.shape.lists.push((p, Vec::new()));
                        self.shape.lists.len() - 1
                    });
                    self.stack.push(Frame::Seq { list });
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    item_of: Some((list, start)),
                    ..
                }) = self.stack.pop()
                {
                    // An empty mapping: no key placed it.
                    self.shape.lists[list].1.push(start);
                }
                self.value_done();
            }
            Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }

    /// A scalar read where a key is expected: recorded, and `true`.
    fn key(&mut self, value: &str, mark: Mark) -> bool {
        let root = self.stack.len() == 1;
        let Some(Frame::Map {
            path,
            key,
            expecting_key,
            item_of,
        }) = self.stack.last_mut()
        else {
            return false;
        };
        if !*expecting_key {
            return false;
        }
        *expecting_key = false;
        if let Some((list, start)) = item_of.take() {
            let first = if mark.index < start.index {
                mark
            } else {
                start
            };
            self.shape.lists[list].1.push(first);
        }
        if path.is_some() {
            *key = Some(value.to_string());
            if root {
                self.shape.keys.push((value.to_string(), mark));
            }
        }
        true
    }

    /// The path of a node starting now, if it sits at a tracked key.
    fn child_path(&self) -> Option<String> {
        match self.stack.last() {
            Some(Frame::Map {
                path: Some(path),
                key: Some(key),
                ..
            }) => Some(if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            }),
            None => Some(String::new()),
            _ => None,
        }
    }

    /// Records a node starting at `mark` if it is an item of a tracked list.
    fn item_starts(&mut self, mark: Mark) {
        if let Some(Frame::Seq { list: Some(list) }) = self.stack.last() {
            self.shape.lists[*list].1.push(mark);
        }
    }

    /// A value has ended: its mapping expects a key again.
    fn value_done(&mut self) {
        if let Some(Frame::Map {
            key, expecting_key, ..
        }) = self.stack.last_mut()
        {
            *key = None;
            *expecting_key = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
clusters:
  - name: a
    endpoints:
      - 127.0.0.1:1
      - {address: 127.0.0.2:1, weight: 2}
  -   name: b
  - {name: c}
  - {}
listeners: []
static_resources:
  listeners:
  - name: l
    filterChains: [{filters: []}]
  clusters: [x, y]
";

    fn mark_of(text: &str, needle: &str) -> usize {
        text.find(needle).unwrap()
    }

    #[test]
    fn finds_root_keys_and_item_starts() {
        let shape = check(TEXT, &Limits::default()).unwrap();
        let keys: Vec<(&str, usize, usize)> = shape
            .keys
            .iter()
            .map(|(k, m)| (k.as_str(), m.line, m.col))
            .collect();
        assert_eq!(
            keys,
            [
                ("clusters", 2, 0),
                ("listeners", 10, 0),
                ("static_resources", 11, 0)
            ]
        );
        let starts = |path: &str| -> Vec<usize> {
            let (_, items) = shape.lists.iter().find(|(p, _)| p == path).unwrap();
            items.iter().map(|m| m.index).collect()
        };
        assert_eq!(
            starts("clusters"),
            [
                mark_of(TEXT, "name: a"),
                mark_of(TEXT, "name: b"),
                mark_of(TEXT, "{name: c}"),
                mark_of(TEXT, "{}"),
            ]
        );
        assert_eq!(shape.items("clusters"), 4);
        assert_eq!(shape.items("listeners"), 0);
        assert_eq!(shape.items("static_resources.listeners"), 1);
        assert_eq!(shape.items("static_resources.clusters"), 2);
        // Deeper lists are not tracked.
        assert_eq!(shape.items("clusters[0].endpoints"), 0);
        assert!(!shape.lists.iter().any(|(p, _)| p.contains("endpoints")));
    }

    #[test]
    fn counts_what_the_index_counts() {
        let shape = check(TEXT, &Limits::default()).unwrap();
        let index = super::super::scan(TEXT, &Limits::default()).unwrap();
        for path in [
            "clusters",
            "listeners",
            "static_resources.listeners",
            "static_resources.clusters",
            "grpc_services",
        ] {
            assert_eq!(shape.items(path), index.items(path), "{path}");
        }
    }

    #[test]
    fn refuses_as_scan_does() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        for text in [
            "a: [[[[1]]]]\n",
            "a: &x 1\nb: *x\n",
            "clusters:\n  - name: a\n    endpoints: [1, 2\n",
            "clusters: [{a: b}, {c: [[[d]]]}]\n",
        ] {
            let got = check(text, &limits).unwrap_err();
            let want = super::super::scan(text, &limits).unwrap_err();
            assert_eq!(got, want, "{text}");
            assert_ne!(got.path, "", "{text}");
        }
    }

    #[test]
    fn complex_keys_and_scalar_roots_are_harmless() {
        let shape = check("? [a, b]\n: 1\nc: [x]\n", &Limits::default()).unwrap();
        assert_eq!(shape.keys.len(), 1);
        assert_eq!(shape.items("c"), 1);
        let shape = check("just text\n", &Limits::default()).unwrap();
        assert!(shape.keys.is_empty() && shape.lists.is_empty());
        let shape = check("a: 1\n---\nb: [1]\n", &Limits::default()).unwrap();
        assert_eq!(shape.keys.len(), 1);
        assert_eq!(shape.items("b"), 0);
    }
}
