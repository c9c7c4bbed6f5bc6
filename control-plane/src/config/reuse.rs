//! Reading only what changed: a reload that keeps, from the previous
//! revision, every concise cluster whose text did not change.
//!
//! A one-endpoint edit of a file with a thousand clusters changes one item
//! of `clusters:`; parsing and translating the other 999 again was most of
//! a reload's cost. The bounded first pass ([`pylon::yaml::check`]) says
//! where each item of the root's `clusters` list starts; each item is then
//! a YAML document of its own (its `-` turned into a space keeps every
//! column), and the rest of the file is the file without the `clusters`
//! entry. Items are looked up by their exact text, so only new or changed
//! ones are parsed and translated.
//!
//! Two more steps make a one-item edit cost about one item:
//! [`check_edit`] runs the bounded first pass over the edited item's lines
//! alone when nothing else changed, and each [`Entry`] keeps its cluster
//! translated and encoded ([`Encoded`]), so later revisions serve it as it
//! is.
//!
//! This is only a shortcut to the same result: when the layout is not the
//! plain one (a flow list, an item on the key's line, non-ASCII text, the
//! key written twice) or when any part fails to parse, the loader reads the
//! whole file the usual way, and that way writes the error messages.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost::Message as _;
use pylon::yaml::{Limits, Mark, Shape};

use super::address::Target;
use super::{schema, translate};
use crate::resources::Encoded;

/// The clusters of the previous revision, as parsed, by the text of their
/// item. Held by whoever reloads the same source over and over (the file
/// watcher, the etcd watcher).
#[derive(Debug, Default)]
pub struct Memo {
    clusters: HashMap<String, Arc<Entry>>,
    /// The last revision cut, to compare the next one with.
    last: Option<Last>,
}

/// One item of `clusters` as read and, once a revision has served it, as
/// served.
#[derive(Debug)]
pub struct Entry {
    /// The item, parsed.
    pub cluster: Arc<schema::Cluster>,
    encoded: OnceLock<Option<Arc<Encoded>>>,
}

impl Entry {
    fn new(cluster: schema::Cluster) -> Entry {
        Entry {
            cluster: Arc::new(cluster),
            encoded: OnceLock::new(),
        }
    }

    /// The cluster translated and encoded (once: later revisions share
    /// it); `None` when some of its endpoints are host names, whose
    /// addresses `crate::dns` fills into its load assignment.
    pub fn encoded(&self) -> Option<Arc<Encoded>> {
        self.encoded
            .get_or_init(|| {
                let c = &self.cluster;
                if c.endpoints
                    .iter()
                    .any(|e| matches!(e.address, Target::Name(_)))
                {
                    return None;
                }
                let (cluster, endpoints) = translate::cluster(c);
                Some(Arc::new(Encoded {
                    name: c.name.clone(),
                    cluster: cluster.encode_to_vec(),
                    endpoints: endpoints.encode_to_vec(),
                    inline_secrets: crate::secrets::in_cluster(&cluster),
                    served: OnceLock::new(),
                }))
            })
            .clone()
    }
}

/// A revision that passed the first pass and was cut into items.
#[derive(Debug)]
struct Last {
    text: String,
    shape: Shape,
    limits: Limits,
    /// Each item of `clusters`: where its line starts, and its `-`'s column.
    lines: Vec<(usize, usize)>,
    /// Where the `clusters` entry ends.
    end: usize,
    /// The memo's entry of each item, once they all parsed (empty until).
    entries: Vec<Arc<Entry>>,
}

impl Memo {
    /// How many items it holds (the clusters of the last revision read
    /// through it).
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// `text` cut for reuse: the rest of the file, and the items of `clusters`
/// as documents of their own.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The file without its `clusters` entry.
    pub rest: String,
    /// Each item of `clusters`, its `-` replaced by a space.
    pub items: Vec<String>,
    /// Where each item's line starts, and its `-`'s column.
    lines: Vec<(usize, usize)>,
    /// Where the `clusters` entry ends.
    end: usize,
}

/// Cuts `text` as the module docs say, or `None` when its layout is not the
/// plain one.
pub fn split(text: &str, shape: &Shape) -> Option<Split> {
    if !text.is_ascii() {
        // Marks count characters; for ASCII they are byte offsets too.
        return None;
    }
    let mut at = shape
        .keys
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "clusters");
    let (position, (_, key)) = at.next()?;
    if at.next().is_some() || key.col != 0 {
        return None;
    }
    let mut lists = shape.lists.iter().filter(|(p, _)| p == "clusters");
    let (_, starts) = lists.next()?;
    if lists.next().is_some() || starts.is_empty() {
        return None;
    }
    // The entry runs to the next key of the root (which starts a line).
    let end = match shape.keys.get(position + 1) {
        Some((_, next)) if next.col == 0 => next.index,
        Some(_) => return None,
        None => text.len(),
    };
    // Each item: from the start of the line of its `-` to the start of the
    // next item's line.
    let mut lines = Vec::with_capacity(starts.len());
    for start in starts {
        let line = text[..start.index].rfind('\n').map_or(0, |n| n + 1);
        let lead = &text[line..start.index];
        let dash = lead.trim_start_matches(' ');
        let after = dash.strip_prefix('-')?;
        if line <= key.index || after.is_empty() || !after.trim_start_matches(' ').is_empty() {
            return None;
        }
        lines.push((line, lead.len() - dash.len()));
    }
    let mut items = Vec::with_capacity(lines.len());
    for (i, &(line, dash)) in lines.iter().enumerate() {
        let until = lines.get(i + 1).map_or(end, |(next, _)| *next);
        if until <= line || until > end {
            return None;
        }
        items.push(item_doc(text, line, dash, until));
    }
    let rest = without(text, key.index, end);
    Some(Split {
        rest,
        items,
        lines,
        end,
    })
}

/// The item whose line starts at `line` with its `-` at column `dash`, to
/// `until`, as a document of its own: the `-` turned into a space.
fn item_doc(text: &str, line: usize, dash: usize, until: usize) -> String {
    let mut doc = String::with_capacity(until - line);
    doc.push_str(&text[line..line + dash]);
    doc.push(' ');
    doc.push_str(&text[line + dash + 1..until]);
    doc
}

/// `text` without the `clusters` entry, which runs from `key` to `end`.
fn without(text: &str, key: usize, end: usize) -> String {
    let mut rest = String::with_capacity(text.len() - (end - key));
    rest.push_str(&text[..key]);
    rest.push_str(&text[end..]);
    rest
}

/// The rest of the file (without `clusters`), parsed; `None` when it does
/// not parse or holds a `clusters` entry after all.
fn read_rest(rest: &str) -> Option<schema::File> {
    let file = match serde_yaml::from_str::<Option<schema::File>>(rest) {
        Ok(Some(file)) => file,
        Ok(None) => schema::File::default(),
        Err(_) => return None,
    };
    file.clusters.is_empty().then_some(file)
}

/// The [`Shape`] of `text` without running the first pass over all of it,
/// when `text` differs from the last revision cut through `memo` only
/// within the lines of one item of `clusters`: `None` otherwise, and the
/// caller runs the whole first pass ([`pylon::yaml::check`]).
///
/// Why the shape is the one the whole pass would give:
/// - everything before the item's line, and its indentation, `-` and the
///   character after it, are the previous revision's, so the scanner
///   reaches the item in the state it did then; everything after its last
///   line is the previous revision's too, from the start of a line;
/// - the item's lines, read alone as a one-item list at the same columns,
///   pass the bounds (one level less deep: the root mapping is not there),
///   and every line after the first is blank or indented past the `-`: no
///   quote, flow collection or block scalar is left open at its end, and
///   nothing in it closes the list or starts another item;
/// - so the rest of the file reads as before, with its places moved by the
///   change in length, and the file's node count changes by the item's.
pub fn check_edit(memo: &Memo, text: &str, limits: &Limits) -> Option<Edit> {
    let last = memo.last.as_ref()?;
    if last.limits != *limits || text.len() > limits.max_bytes {
        return None;
    }
    let (old, new) = (last.text.as_bytes(), text.as_bytes());
    let p = common_prefix(old, new);
    if p == old.len() && p == new.len() {
        return Some(Edit {
            shape: last.shape.clone(),
            item: None,
        });
    }
    let room = old.len().min(new.len()) - p;
    let old_end = old.len() - common_suffix(&old[p..], &new[p..]).min(room);
    // The item whose lines hold every changed byte.
    let k = last
        .lines
        .partition_point(|&(line, _)| line <= p)
        .checked_sub(1)?;
    let (line, dash) = last.lines[k];
    let until = last.lines.get(k + 1).map_or(last.end, |&(next, _)| next);
    if p < line + dash + 2 || old_end > until {
        return None;
    }
    let new_until = (until + new.len()).checked_sub(old.len())?;
    // The item's lines end where a line ends, as they did.
    if new_until < new.len() && new.get(new_until.checked_sub(1)?) != Some(&b'\n') {
        return None;
    }
    let region = text.get(line..new_until)?;
    let old_region = last.text.get(line..until)?;
    // A lone `\r` breaks a line for YAML but not for the check below.
    let lone_cr = |t: &[u8]| (0..t.len()).any(|i| t[i] == b'\r' && t.get(i + 1) != Some(&b'\n'));
    if !region.is_ascii()
        || lone_cr(region.as_bytes())
        || region.split('\n').skip(1).any(|l| {
            let body = l.trim_start_matches(' ');
            !body.is_empty() && l.len() - body.len() <= dash
        })
    {
        return None;
    }
    let alone = Limits {
        max_depth: limits.max_depth.checked_sub(1)?,
        ..*limits
    };
    let before = pylon::yaml::check(old_region, &alone).ok()?;
    let after = pylon::yaml::check(region, &alone).ok()?;
    let [(root, starts)] = after.lists.as_slice() else {
        return None;
    };
    let [start] = starts.as_slice() else {
        return None;
    };
    if !root.is_empty() || !after.keys.is_empty() {
        return None;
    }
    let nodes = (last.shape.nodes + after.nodes).checked_sub(before.nodes)?;
    if nodes > limits.max_nodes {
        return None;
    }
    let mut shape = last.shape.clone();
    shape.nodes = nodes;
    // Line breaks as YAML counts them: `\n`, `\r\n` and a lone `\r`.
    let lines = |t: &str| {
        let t = t.as_bytes();
        (0..t.len())
            .filter(|&i| t[i] == b'\n' || (t[i] == b'\r' && t.get(i + 1) != Some(&b'\n')))
            .count()
    };
    let (grown, added) = (new.len() >= old.len(), lines(region) >= lines(old_region));
    let (bytes, count) = (
        new.len().abs_diff(old.len()),
        lines(region).abs_diff(lines(old_region)),
    );
    let shift = |m: &mut Mark| {
        if m.index >= until {
            m.index = if grown {
                m.index + bytes
            } else {
                m.index - bytes
            };
            m.line = if added {
                m.line + count
            } else {
                m.line - count
            };
        }
    };
    for (_, mark) in &mut shape.keys {
        shift(mark);
    }
    for (_, marks) in &mut shape.lists {
        marks.iter_mut().for_each(shift);
    }
    let (_, items) = shape.lists.iter_mut().find(|(p, _)| p == "clusters")?;
    let item = items.get_mut(k)?;
    *item = Mark {
        index: line + start.index,
        line: item.line + start.line - 1,
        col: start.col,
    };
    Some(Edit {
        shape,
        item: Some(k),
    })
}

/// What [`check_edit`] found.
#[derive(Debug)]
pub struct Edit {
    /// The shape of the new text.
    pub shape: Shape,
    /// The item of `clusters` that changed (`None`: the text did not).
    item: Option<usize>,
}

/// How many leading bytes `a` and `b` share.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
        i += CHUNK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// How many trailing bytes `a` and `b` share.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 64;
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + CHUNK <= n && a[n - i - CHUNK..n - i] == b[n - i - CHUNK..n - i] {
        i += CHUNK;
    }
    while i < n && a[n - i - 1] == b[n - i - 1] {
        i += 1;
    }
    i
}

/// Reads `text`, whose first pass gave `shape`, through `memo`: cut as the
/// module docs say and read with [`read`], which also gives the memo's
/// entry of each cluster. Remembers the revision for
/// [`check_edit`] when it is cut. `None` when the layout is not cut or a
/// part does not parse.
pub fn load(
    text: &str,
    shape: &Shape,
    limits: &Limits,
    memo: &mut Memo,
    edit: Option<&Edit>,
) -> Option<(schema::File, Vec<Arc<Entry>>)> {
    if let Some(read) = edit.and_then(|edit| read_edit(text, shape, edit.item, memo)) {
        return Some(read);
    }
    let Some(split) = split(text, shape) else {
        memo.last = None;
        return None;
    };
    memo.last = Some(Last {
        text: text.to_string(),
        shape: shape.clone(),
        limits: *limits,
        lines: split.lines.clone(),
        end: split.end,
        entries: Vec::new(),
    });
    let read = read(split, memo)?;
    if let Some(last) = &mut memo.last {
        last.entries.clone_from(&read.1);
    }
    Some(read)
}

/// [`load`] after [`check_edit`] found that only `item` changed (or
/// nothing): the other items are the last revision's entries, without
/// cutting or looking up their text again. `None` when the edited item or
/// the rest does not parse, or its first line is not the plain layout (the
/// caller cuts and reads the usual way).
fn read_edit(
    text: &str,
    shape: &Shape,
    item: Option<usize>,
    memo: &mut Memo,
) -> Option<(schema::File, Vec<Arc<Entry>>)> {
    let Memo { clusters, last } = memo;
    let last = last.as_mut()?;
    if last.entries.len() != last.lines.len() {
        return None;
    }
    let moved = |at: usize| (at + text.len()).checked_sub(last.text.len());
    let end = moved(last.end)?;
    // The edited item, read before anything is changed.
    let edited = match item {
        Some(k) => {
            let (line, dash) = *last.lines.get(k)?;
            let old_until = last.lines.get(k + 1).map_or(last.end, |l| l.0);
            let until = moved(old_until)?;
            // Between the `-` and the item's first key: spaces only.
            let (_, starts) = shape.lists.iter().find(|(p, _)| p == "clusters")?;
            let lead = text.get(line + dash + 1..starts.get(k)?.index)?;
            if !lead.bytes().all(|b| b == b' ') || until > text.len() {
                return None;
            }
            let doc = item_doc(text, line, dash, until);
            let entry = match clusters.get(&doc) {
                Some(entry) => Arc::clone(entry),
                None => Arc::new(Entry::new(serde_yaml::from_str(&doc).ok()?)),
            };
            Some((k, item_doc(&last.text, line, dash, old_until), doc, entry))
        }
        None => None,
    };
    let key = shape.keys.iter().find(|(k, _)| k == "clusters")?.1.index;
    let mut file = read_rest(&without(text, key, end))?;
    if let Some((k, old_doc, doc, entry)) = edited {
        clusters.remove(&old_doc);
        clusters.insert(doc, Arc::clone(&entry));
        last.entries[k] = entry;
        // At or after the item's old end, which moved without underflow.
        let (new_len, old_len) = (text.len(), last.text.len());
        for l in last.lines.iter_mut().skip(k + 1) {
            l.0 = l.0 + new_len - old_len;
        }
    }
    last.text.clear();
    last.text.push_str(text);
    last.shape.clone_from(shape);
    last.end = end;
    file.clusters = last
        .entries
        .iter()
        .map(|e| Arc::clone(&e.cluster))
        .collect();
    Some((file, last.entries.clone()))
}

/// The file read from a [`Split`]: the rest parsed, and each item taken from
/// `memo` or parsed. `None` when anything does not parse (the caller reads
/// the whole file instead, for its error messages). `memo` ends up holding
/// exactly the items of this revision.
pub fn read(split: Split, memo: &mut Memo) -> Option<(schema::File, Vec<Arc<Entry>>)> {
    let mut file = read_rest(&split.rest)?;
    let mut kept = HashMap::with_capacity(split.items.len());
    let mut entries = Vec::with_capacity(split.items.len());
    for text in split.items {
        let entry = match memo.clusters.get(&text).or_else(|| kept.get(&text)) {
            Some(entry) => Arc::clone(entry),
            None => Arc::new(Entry::new(serde_yaml::from_str(&text).ok()?)),
        };
        entries.push(Arc::clone(&entry));
        kept.insert(text, entry);
    }
    memo.clusters = kept;
    file.clusters = entries.iter().map(|e| Arc::clone(&e.cluster)).collect();
    Some((file, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon::yaml::{check, Limits};

    fn split_of(text: &str) -> Option<Split> {
        split(text, &check(text, &Limits::default()).unwrap())
    }

    #[test]
    fn cuts_items_and_keeps_the_rest() {
        let text = "\
# head
listeners: []
clusters:
  # about a
  - name: a
    endpoints: [127.0.0.1:1]
  -   name: b

  - {name: c}
nodes: []
";
        let s = split_of(text).unwrap();
        assert_eq!(s.rest, "# head\nlisteners: []\nnodes: []\n");
        assert_eq!(
            s.items,
            [
                "    name: a\n    endpoints: [127.0.0.1:1]\n",
                "      name: b\n\n",
                "    {name: c}\n",
            ]
        );
        let mut memo = Memo::default();
        let (file, _) = read(s, &mut memo).unwrap();
        let names: Vec<&str> = file.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(memo.len(), 3);
    }

    #[test]
    fn declines_layouts_it_does_not_cut() {
        for text in [
            "clusters: [{name: a}]\n",
            "clusters:\n- name: é\n",
            "clusters:\n-\n  name: a\n",
            "clusters: []\n",
            "listeners: []\n",
            "clusters:\n  - name: a\nclusters:\n  - name: b\n",
        ] {
            assert_eq!(split_of(text), None, "{text}");
        }
    }

    #[test]
    fn a_part_that_does_not_parse_gives_none() {
        let mut memo = Memo::default();
        for text in [
            "clusters:\n  - name: a\n    endpoint: [127.0.0.1:1]\n",
            "clusters:\n  - name: a\nlisteners: 7\n",
            "clusters:\n  - name: a\nnodes: []\nclusters: []\n",
            "clusters:\n  - - a\n",
        ] {
            if let Some(s) = split_of(text) {
                assert!(read(s, &mut memo).is_none(), "{text}");
            }
        }
    }

    #[test]
    fn an_edit_inside_one_item_reads_only_that_item() {
        let limits = Limits::default();
        let one = "clusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n  - name: b\nnodes: []\n";
        let mut memo = Memo::default();
        let shape = check(one, &limits).unwrap();
        let (_, before) = load(one, &shape, &limits, &mut memo, None).unwrap();
        let two = one.replace("127.0.0.1:1]", "127.0.0.1:2, 127.0.0.2:2]");
        let edit = check_edit(&memo, &two, &limits).unwrap();
        assert_eq!(edit.item, Some(0));
        assert_eq!(Ok(&edit.shape), check(&two, &limits).as_ref());
        let (file, after) = read_edit(&two, &edit.shape, edit.item, &mut memo).unwrap();
        assert_eq!(file.clusters[0].endpoints.len(), 2);
        assert!(!Arc::ptr_eq(&before[0], &after[0]));
        assert!(Arc::ptr_eq(&before[1], &after[1]));
        assert_eq!(memo.len(), 2);
        // An edit that adds an item is not one item's edit.
        let three = two.replace("nodes", "  - name: c\nnodes");
        assert!(check_edit(&memo, &three, &limits).is_none());
    }

    #[test]
    fn reuses_unchanged_items_and_forgets_removed_ones() {
        let mut memo = Memo::default();
        let one = "clusters:\n  - name: a\n  - name: b\n";
        read(split_of(one).unwrap(), &mut memo).unwrap();
        let a = Arc::clone(&memo.clusters["    name: a\n"].cluster);
        let two = "clusters:\n  - name: a\n  - name: c\n";
        read(split_of(two).unwrap(), &mut memo).unwrap();
        assert!(Arc::ptr_eq(&a, &memo.clusters["    name: a\n"].cluster));
        assert!(!memo.clusters.contains_key("    name: b\n"));
        assert_eq!(memo.len(), 2);
    }
}

/// The shortcut against reading the whole file, on the shipped examples and
/// on a sequence of operator edits of a larger file: the same resources and
/// the same errors, revision after revision.
#[cfg(test)]
mod same_result {
    use super::super::{load_bytes, load_bytes_reusing, Options};
    use super::Memo;
    use crate::resources::Resources;
    use crate::snapshot::Snapshot;

    fn clusters(n: usize, port: u16) -> String {
        let mut s = String::from("# fleet\nclusters:\n");
        for i in 0..n {
            s.push_str(&format!(
                "  - name: c-{i}\n    endpoints: [127.0.0.1:{}, 127.0.0.2:{port}]\n",
                10000 + i
            ));
        }
        s
    }

    fn revisions() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut texts: Vec<String> = ["kube-apiserver", "front-proxy", "mixed-fleet"]
            .iter()
            .map(|name| std::fs::read_to_string(format!("{dir}/{name}.yaml")).unwrap())
            .collect();
        let listener =
            "listeners:\n  - name: l\n    address: 127.0.0.1:7000\n    tcp_proxy: {cluster: c-1}\n";
        let base = clusters(20, 20000);
        texts.extend([
            base.clone(),
            // One endpoint changed.
            clusters(20, 20001),
            // A cluster added, one removed, a comment between items.
            base.replace("  - name: c-3\n", "  # c-3 goes\n  - name: c-3b\n")
                + "  - name: c-20\n    endpoints: []\n",
            // A listener after the clusters, then before them.
            base.clone() + listener,
            format!("{listener}{base}"),
            // A health check on one cluster.
            base.replace(
                "  - name: c-5\n",
                "  - name: c-5\n    health_check:\n      tcp: {}\n      interval: 2s\n",
            ),
            // Errors: an unknown field in an item, a duplicate name, a bad
            // port, a dangling reference, an unknown top-level key, the key
            // written twice.
            base.replace("  - name: c-7\n", "  - name: c-7\n    endpoint: []\n"),
            base.replace("name: c-8\n", "name: c-9\n"),
            base.replace("127.0.0.2:20000]\n  - name: c-2", "127.0.0.2:70000]\n  - name: c-2"),
            base.clone() + "listeners:\n  - name: l\n    address: 127.0.0.1:7000\n    tcp_proxy: {cluster: nope}\n",
            base.clone() + "cluster: []\n",
            base.clone() + "clusters:\n  - name: again\n",
            // Back to good, then the same again.
            clusters(20, 20002),
            clusters(20, 20002),
            // Other layouts: flow style, items at the key's column.
            "clusters: [{name: a, endpoints: [127.0.0.1:1]}]\n".to_string(),
            "clusters:\n- name: a\n  endpoints:\n  - 127.0.0.1:1\n- name: b\n".to_string(),
            "clusters:\n- name: a\n  endpoints:\n  - 127.0.0.1:2\n- name: b\n".to_string(),
            String::new(),
        ]);
        texts
    }

    #[test]
    fn reusing_reads_what_the_whole_file_says() {
        let options = Options::default();
        let mut memo = Memo::default();
        for (i, text) in revisions().iter().enumerate() {
            let whole =
                load_bytes("pylon.yaml", text.as_bytes(), &options).map(Resources::comparable);
            let reused = load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo)
                .map(Resources::comparable);
            assert_eq!(whole, reused, "revision {i}:\n{text}");
            // The shortcut was taken for the plain layout, and the six
            // broken revisions are refused.
            if i == 4 {
                assert_eq!(memo.len(), 20);
            }
            assert_eq!(
                whole.is_err(),
                (9..=14).contains(&i) || i == 20,
                "revision {i}"
            );
        }
        // The last good revision read through the shortcut is remembered.
        assert!(!memo.is_empty());
    }

    /// Character-level edits, most of them inside one item: wherever
    /// [`super::check_edit`] answers, it answers what the whole first pass
    /// does, and the file reads the same both ways. Some bounds are set low
    /// enough for edits to cross them.
    #[test]
    fn edits_inside_an_item_check_as_the_whole_file_does() {
        let base = clusters(12, 20000)
            + "  - name: deep\n    endpoints:\n      - {address: 127.0.0.1:9, weight: 2}\n    health_check:\n      tcp: {}\n"
            + "listeners:\n  - name: l\n    address: 127.0.0.1:7000\n    tcp_proxy: {cluster: c-1}\n";
        let mut options = Options::default();
        options.limits.max_depth = 5;
        options.limits.max_nodes = pylon::yaml::check(&base, &options.limits).unwrap().nodes + 6;
        let alphabet = b" \n\n  -:\"'[]{}|>#a1,&*!?%@`\t\r";
        let mut seed: u64 = 0xed17;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            usize::try_from(seed >> 33).unwrap() % n.max(1)
        };
        let mut memo = Memo::default();
        let mut text = base.clone();
        let (mut edits, mut refused) = (0, 0);
        for round in 0..6000 {
            if round % 5 == 0 {
                text = base.clone();
                load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo).unwrap();
            }
            let mut bytes = text.clone().into_bytes();
            // Inside the clusters list, most of the time.
            let from = if next(8) == 0 {
                0
            } else {
                "# fleet\nclusters:\n".len()
            };
            let at = from + next(bytes.len() - from);
            let last = bytes.len() - 1;
            let c = alphabet[next(alphabet.len())];
            match next(4) {
                0 => {
                    bytes.remove(at.min(last));
                }
                1 => bytes[at.min(last)] = c,
                2 => bytes
                    .splice(at..at, b"\n      x: [1, {y: 2}]".iter().copied())
                    .for_each(drop),
                _ => bytes.insert(at, c),
            }
            text = String::from_utf8(bytes).unwrap();
            let whole_pass = pylon::yaml::check(&text, &options.limits);
            if let Some(edit) = super::check_edit(&memo, &text, &options.limits) {
                assert_eq!(Ok(edit.shape), whole_pass, "round {round}:\n{text}");
                edits += 1;
            } else if whole_pass.is_err() {
                refused += 1;
            }
            let whole = load_bytes("pylon.yaml", text.as_bytes(), &options);
            let reused = load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo);
            if let (Ok(whole), Ok(reused)) = (&whole, &reused) {
                let build =
                    |r: &Resources| Snapshot::build(r.clone(), None).map_err(|e| e.to_string());
                match (build(whole), build(reused)) {
                    (Ok(a), Ok(b)) => assert_eq!(
                        (&a.version, a.served()),
                        (&b.version, b.served()),
                        "round {round}:\n{text}"
                    ),
                    (a, b) => assert_eq!(a.err(), b.err(), "round {round}:\n{text}"),
                }
            }
            assert_eq!(
                whole.map(Resources::comparable),
                reused.map(Resources::comparable),
                "round {round}:\n{text}"
            );
        }
        assert!(
            edits > 800 && refused > 100,
            "{edits} checked as edits, {refused} refused"
        );
    }

    /// Line-level mutations of a file with every layout the shortcut cuts
    /// (and some it declines), each revision read both ways in sequence
    /// through one memo: deletions, duplicates, indentation shifts, stray
    /// dashes and colons, comments, flow and block scalars.
    #[test]
    fn mutated_revisions_read_the_same_both_ways() {
        let base = "\
# head
clusters:
  - name: a
    connect_timeout: 2s
    endpoints:
      - 127.0.0.1:1001
      - {address: 127.0.0.2:1001, weight: 2}
  - name: b
    endpoints: [127.0.0.1:1002]
    health_check:
      tcp: {}
      interval: 3s
  # between
  - name: c
    lb_policy: least_request
    endpoints: [127.0.0.1:1003, 127.0.0.2:1003]
  - {name: d, endpoints: [127.0.0.1:1004]}
listeners:
  - name: l
    address: 127.0.0.1:7000
    tcp_proxy: {cluster: a}
";
        let extra = [
            "  - name: e",
            "    endpoints: []",
            "  -",
            "  - - x",
            "- name: f",
            "    name: g",
            "      - 127.0.0.3:1",
            "  # note",
            "",
            "clusters: []",
            "nodes: []",
            "    description: |",
            "      text",
            "    endpoints: [127.0.0.1:1,",
            "      127.0.0.2:1]",
            "  - name: \"q\"",
            "    endpoints: [\"127.0.0.9:9\"]",
            "---",
            "listeners: []",
        ];
        let options = Options::default();
        let mut memo = Memo::default();
        let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
        // A fixed linear congruential sequence: the same revisions every run.
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            usize::try_from(seed >> 33).unwrap() % n.max(1)
        };
        let (mut ok, mut refused, mut cut, mut edits) = (0, 0, 0, 0);
        for round in 0..400 {
            if round % 3 == 0 {
                lines = base.lines().map(str::to_string).collect();
            }
            let at = next(lines.len() + 1);
            match next(6) {
                0 if !lines.is_empty() => {
                    lines.remove(at.min(lines.len() - 1));
                }
                1 if at < lines.len() => {
                    let line = lines[at].clone();
                    lines.insert(at, line);
                }
                2 if at < lines.len() => {
                    let line = lines[at].clone();
                    lines[at] = if next(2) == 0 {
                        format!("  {line}")
                    } else {
                        line.trim_start_matches(' ').to_string()
                    };
                }
                3 if at < lines.len() => {
                    let port = 1000 + next(9000);
                    lines[at] = lines[at].replace("1001", &port.to_string());
                }
                _ => lines.insert(at, extra[next(extra.len())].to_string()),
            }
            let text = lines.join("\n") + "\n";
            // The first pass over the edited item alone gives what the
            // whole pass gives.
            if let Some(edit) = super::check_edit(&memo, &text, &options.limits) {
                assert_eq!(
                    Ok(edit.shape),
                    pylon::yaml::check(&text, &options.limits),
                    "round {round}:\n{text}"
                );
                edits += 1;
            }
            let whole =
                load_bytes("pylon.yaml", text.as_bytes(), &options).map(Resources::comparable);
            let reused = load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo)
                .map(Resources::comparable);
            assert_eq!(whole, reused, "round {round}:\n{text}");
            if let Ok(shape) = pylon::yaml::check(&text, &options.limits) {
                cut += usize::from(super::split(&text, &shape).is_some());
            }
            if whole.is_ok() {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        // Both kinds of revision were exercised, most through the shortcut.
        assert!(
            ok > 40 && refused > 40 && cut > 120 && edits > 40,
            "{ok} good, {refused} refused, {cut} cut, {edits} checked as edits"
        );
    }
}
