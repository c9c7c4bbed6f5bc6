//! Request path normalisation: the HttpConnectionManager's `normalize_path`
//! and `merge_slashes`, with Envoy's meaning. Both apply to the path before
//! the query, before route matching, and the result is what goes upstream.
//!
//! `normalize_path` is RFC 3986 normalisation as Envoy does it (through
//! Chromium's URL canonicaliser):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; every other escape is kept as written (`%2F` stays, case too),
//!   and a `%` that does not start an escape is kept;
//! - `\` is read as `/`;
//! - characters that may not appear in a path (`"`, `<`, `>`, `` ` ``, `{`,
//!   `}`, `|`, `^`, controls, space and non-ASCII bytes) are percent-encoded;
//! - `.` and `..` segments are removed (RFC 3986 5.2.4), `%2e` forms
//!   included; `..` never climbs above the root;
//! - a path that does not start with `/` gets one;
//! - `%00` makes the path invalid: the request is answered 400.
//!
//! `merge_slashes` collapses runs of `/` into one (after `normalize_path`
//! when both are on, as in Envoy). Neither touches the query.
//!
//! Owns only the string transformation; the HTTP handling decides what to
//! do with the result (see `listener::http`).

use std::borrow::Cow;

/// A path `normalize_path` refuses (it holds `%00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPath;

/// The path-and-query `pq` with its path normalised as configured; borrowed
/// when nothing changed.
pub fn normalize(pq: &str, rfc: bool, merge: bool) -> Result<Cow<'_, str>, InvalidPath> {
    let (path, query) = match pq.find('?') {
        Some(i) => pq.split_at(i),
        None => (pq, ""),
    };
    let mut out: Cow<'_, str> = Cow::Borrowed(path);
    if rfc && needs_rfc(path) {
        let normal = remove_dot_segments(&decode(path)?);
        if normal != path {
            out = Cow::Owned(normal);
        }
    }
    if merge && out.contains("//") {
        out = Cow::Owned(merge_slashes(&out));
    }
    Ok(match out {
        Cow::Borrowed(_) => Cow::Borrowed(pq),
        Cow::Owned(mut p) => {
            p.push_str(query);
            Cow::Owned(p)
        }
    })
}

/// Whether `c` is an RFC 3986 unreserved character.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Whether `c` must be percent-encoded in a path.
fn escaped(c: u8) -> bool {
    c <= b' ' || c >= 0x7f || matches!(c, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^')
}

/// Whether normalising could change `path`: the common path without escapes,
/// backslashes, dot segments or characters to escape is left alone after one
/// scan.
fn needs_rfc(path: &str) -> bool {
    let b = path.as_bytes();
    if !b.starts_with(b"/") {
        return true;
    }
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%' || c == b'\\' || escaped(c) || (c == b'.' && i > 0 && b[i - 1] == b'/')
    })
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes unreserved escapes, turns `\` into `/`, escapes what may not stay
/// raw, and makes the path absolute.
fn decode(path: &str) -> Result<String, InvalidPath> {
    const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len() + 1);
    if !b.starts_with(b"/") && !b.starts_with(b"\\") {
        out.push('/');
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let pair = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            );
            if let (Some(hi), Some(lo)) = pair {
                let v = hi * 16 + lo;
                if v == 0 {
                    return Err(InvalidPath);
                }
                if unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push_str(&path[i..i + 3]);
                }
                i += 3;
                continue;
            }
            out.push('%');
        } else if c == b'\\' {
            out.push('/');
        } else if escaped(c) {
            out.push('%');
            out.push(char::from(UPPER_HEX[usize::from(c >> 4)]));
            out.push(char::from(UPPER_HEX[usize::from(c & 0xf)]));
        } else {
            out.push(char::from(c));
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 5.2.4 on an absolute path: `.` segments go, `..` removes the
/// segment before it (never the root); a final `.` or `..` leaves a
/// trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.get(1..).unwrap_or("").split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
        if i == last && matches!(seg, "." | "..") {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in kept {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Runs of `/` become one; a leading and a trailing `/` are kept.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push('/');
    }
    let mut first = true;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if !first {
            out.push('/');
        }
        out.push_str(seg);
        first = false;
    }
    if path.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_path_table() {
        // Cases from Envoy's path utility tests and from Envoy 1.40 itself
        // (what it forwarded upstream for each request path).
        let table: &[(&str, Result<&str, InvalidPath>)] = &[
            ("/xyz", Ok("/xyz")),
            ("/x/y/z", Ok("/x/y/z")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/b/./c", Ok("/a/b/c")),
            ("a/b/../c", Ok("/a/c")),
            ("/a/b/../../../../c", Ok("/c")),
            ("/a/..\\c", Ok("/c")),
            ("/a\\..\\b", Ok("/b")),
            ("/%c0%af", Ok("/%c0%af")),
            ("/%5c%25", Ok("/%5c%25")),
            ("/a/b/%2E%2E/c", Ok("/a/c")),
            ("/a/b/%2e%2e/c", Ok("/a/c")),
            ("/a/b/%2E./c", Ok("/a/c")),
            ("/a/b/%2E/c", Ok("/a/b/c")),
            ("..", Ok("/")),
            ("/../a/b", Ok("/a/b")),
            ("/./a/b", Ok("/a/b")),
            ("/.%2e/x", Ok("/x")),
            ("/A/B/C", Ok("/A/B/C")),
            ("/a/%2F%2f/c", Ok("/a/%2F%2f/c")),
            ("/a/b/..", Ok("/a/")),
            ("/a/%2e", Ok("/a/")),
            ("/%2E%2e/", Ok("/")),
            ("/a/.../b", Ok("/a/.../b")),
            ("/a/..b/c", Ok("/a/..b/c")),
            ("/a/..%2f..", Ok("/a/..%2f..")),
            ("/a;b/../c", Ok("/c")),
            ("/%61/b", Ok("/a/b")),
            ("/x%7e%41%2d", Ok("/x~A-")),
            ("/%7b%7B", Ok("/%7b%7B")),
            ("/%25", Ok("/%25")),
            ("/%2541", Ok("/%2541")),
            ("/x%zz", Ok("/x%zz")),
            ("/x%2", Ok("/x%2")),
            ("/x%", Ok("/x%")),
            ("/\"x{}", Ok("/%22x%7B%7D")),
            ("/x|y^z", Ok("/x%7Cy%5Ez")),
            ("/`x", Ok("/%60x")),
            ("/<x>", Ok("/%3Cx%3E")),
            ("/x\u{e9}", Ok("/x%C3%A9")),
            ("/[x]", Ok("/[x]")),
            ("/'x", Ok("/'x")),
            ("/!$&()*+,;=:@", Ok("/!$&()*+,;=:@")),
            ("/a//b", Ok("/a//b")),
            ("//", Ok("//")),
            ("/", Ok("/")),
            ("/.well-known/x", Ok("/.well-known/x")),
            ("/x%00y", Err(InvalidPath)),
            ("/xyz/.%00../abc", Err(InvalidPath)),
            ("/xyz/AAAAA%%0000/abc", Err(InvalidPath)),
            // The query is left alone.
            ("/a/../b?q=/a/../b//c&x=%41", Ok("/b?q=/a/../b//c&x=%41")),
            ("/x?q=/a/../b//c", Ok("/x?q=/a/../b//c")),
        ];
        for (input, want) in table {
            let got = normalize(input, true, false).map(|p| p.into_owned());
            assert_eq!(got, want.map(str::to_owned), "{input}");
        }
    }

    #[test]
    fn merge_slashes_table() {
        // Envoy's cases (path utility tests), plus both options together.
        let table: &[(&str, &str)] = &[
            ("", ""),
            ("a//b/c", "a/b/c"),
            ("/a//b/c/", "/a/b/c/"),
            ("a//b/c/", "a/b/c/"),
            ("/a", "/a"),
            ("//a/b/c", "/a/b/c"),
            ("/a//b/c", "/a/b/c"),
            ("/a/b/c//", "/a/b/c/"),
            ("/a///b/c", "/a/b/c"),
            ("/a////b/c", "/a/b/c"),
            ("/a//b?a=///c", "/a/b?a=///c"),
            ("/a//b?", "/a/b?"),
            ("//a/?b", "/a/?b"),
            ("//", "//"),
        ];
        for (input, want) in table {
            assert_eq!(
                normalize(input, false, true),
                Ok(Cow::Borrowed(*want)),
                "{input}"
            );
        }
        assert_eq!(
            normalize("//a/./b//../c//", true, true).map(Cow::into_owned),
            Ok("/a/b/c/".to_owned())
        );
        assert_eq!(
            normalize("/a/..//b", true, true).map(Cow::into_owned),
            Ok("/b".to_owned())
        );
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        for pq in ["/service/1?x=1", "/a/b/c", "/.well-known/x", "/a//b"] {
            let rfc = normalize(pq, true, false).unwrap();
            assert!(matches!(rfc, Cow::Borrowed(p) if p == pq), "{pq}");
        }
        assert!(matches!(
            normalize("/a/b", true, true),
            Ok(Cow::Borrowed(_))
        ));
    }
}
