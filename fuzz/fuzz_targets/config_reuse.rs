//! The reload shortcut against reading the whole file: the input is two
//! revisions of a config separated by a 0xFF byte (never part of UTF-8
//! text), read one after the other through one memo, as the reloader reads
//! an edit. The second must load exactly as reading it whole does: the same
//! resources or the same errors, and a snapshot built from either serves
//! the same versions and bytes.
#![no_main]

use control_plane::config::{load_bytes, load_bytes_reusing, Memo, Options};
use control_plane::resources::Resources;
use control_plane::snapshot::{ResourceType, Snapshot};
use libfuzzer_sys::fuzz_target;

/// What a snapshot of `r` serves: its version, and each resource's type,
/// name, version and bytes (or why it cannot be built).
fn served(r: &Resources) -> Result<(String, Vec<(String, String, Vec<u8>)>), String> {
    let s = Snapshot::build(r.clone(), None).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for ty in ResourceType::ALL {
        for (name, res) in s.get(ty).resources.iter() {
            out.push((
                format!("{ty:?}/{name}"),
                res.version.to_string(),
                res.body.value.clone(),
            ));
        }
    }
    Ok((s.version, out))
}

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
            assert_eq!(served(a), served(b), "the shortcut serves another snapshot");
        }
        assert_eq!(
            reused.map(Resources::comparable),
            whole.map(Resources::comparable),
            "the shortcut read another config"
        );
    }
});
