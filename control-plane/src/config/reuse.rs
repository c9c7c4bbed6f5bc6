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
//! This is only a shortcut to the same result: when the layout is not the
//! plain one (a flow list, an item on the key's line, non-ASCII text, the
//! key written twice) or when any part fails to parse, the loader reads the
//! whole file the usual way, and that way writes the error messages.

use std::collections::HashMap;
use std::sync::Arc;

use pylon::yaml::Shape;

use super::schema;

/// The clusters of the previous revision, as parsed, by the text of their
/// item. Held by whoever reloads the same source over and over (the file
/// watcher, the etcd watcher).
#[derive(Debug, Default)]
pub struct Memo {
    clusters: HashMap<String, Arc<schema::Cluster>>,
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
        let mut item = String::with_capacity(until - line);
        item.push_str(&text[line..line + dash]);
        item.push(' ');
        item.push_str(&text[line + dash + 1..until]);
        items.push(item);
    }
    let mut rest = String::with_capacity(text.len() - (end - key.index));
    rest.push_str(&text[..key.index]);
    rest.push_str(&text[end..]);
    Some(Split { rest, items })
}

/// The file read from a [`Split`]: the rest parsed, and each item taken from
/// `memo` or parsed. `None` when anything does not parse (the caller reads
/// the whole file instead, for its error messages). `memo` ends up holding
/// exactly the items of this revision.
pub fn read(split: Split, memo: &mut Memo) -> Option<schema::File> {
    let mut file = match serde_yaml::from_str::<Option<schema::File>>(&split.rest) {
        Ok(Some(file)) => file,
        Ok(None) => schema::File::default(),
        Err(_) => return None,
    };
    if !file.clusters.is_empty() {
        return None;
    }
    let mut kept = HashMap::with_capacity(split.items.len());
    let mut clusters = Vec::with_capacity(split.items.len());
    for text in split.items {
        let item = match memo.clusters.get(&text).or_else(|| kept.get(&text)) {
            Some(cluster) => Arc::clone(cluster),
            None => Arc::new(serde_yaml::from_str::<schema::Cluster>(&text).ok()?),
        };
        clusters.push(schema::Cluster::clone(&item));
        kept.insert(text, item);
    }
    memo.clusters = kept;
    file.clusters = clusters;
    Some(file)
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
        let file = read(s, &mut memo).unwrap();
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
    fn reuses_unchanged_items_and_forgets_removed_ones() {
        let mut memo = Memo::default();
        let one = "clusters:\n  - name: a\n  - name: b\n";
        read(split_of(one).unwrap(), &mut memo).unwrap();
        let a = Arc::clone(&memo.clusters["    name: a\n"]);
        let two = "clusters:\n  - name: a\n  - name: c\n";
        read(split_of(two).unwrap(), &mut memo).unwrap();
        assert!(Arc::ptr_eq(&a, &memo.clusters["    name: a\n"]));
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
            let whole = load_bytes("pylon.yaml", text.as_bytes(), &options);
            let reused = load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo);
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
        let (mut ok, mut refused, mut cut) = (0, 0, 0);
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
            let whole = load_bytes("pylon.yaml", text.as_bytes(), &options);
            let reused = load_bytes_reusing("pylon.yaml", text.as_bytes(), &options, &mut memo);
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
            ok > 40 && refused > 40 && cut > 120,
            "{ok} good, {refused} refused, {cut} cut"
        );
    }
}
