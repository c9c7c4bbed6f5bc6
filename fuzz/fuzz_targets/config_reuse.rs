//! The reload shortcut against reading the whole file: the input is two
//! revisions of a config separated by a 0xFF byte (never part of UTF-8
//! text), read one after the other through one memo, as the reloader reads
//! an edit. The second must load exactly as reading it whole does: the same
//! resources or the same errors, and a snapshot built from either serves
//! the same versions and bytes.
#![no_main]

use control_plane::config::{load_bytes, load_bytes_reusing, Memo, Options};
use control_plane::resources::Resources;
use control_plane::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let options = Options::default();
    let mut memo = Memo::default();
    for revision in [first, second] {
        let reused = load_bytes_reusing("fuzz.yaml", revision, &options, &mut memo);
        let whole = load_bytes("fuzz.yaml", revision, &options);
        if let (Ok(a), Ok(b)) = (&reused, &whole) {
            let build = |r: &Resources| Snapshot::build(r.clone(), None).map_err(|e| e.to_string());
            match (build(a), build(b)) {
                (Ok(a), Ok(b)) => assert_eq!(
                    (&a.version, a.served()),
                    (&b.version, b.served()),
                    "the shortcut serves another snapshot"
                ),
                (a, b) => assert_eq!(a.err(), b.err(), "the shortcut serves another snapshot"),
            }
        }
        assert_eq!(
            reused.map(Resources::comparable),
            whole.map(Resources::comparable),
            "the shortcut read another config"
        );
    }
});
