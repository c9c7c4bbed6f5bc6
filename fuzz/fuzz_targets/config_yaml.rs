//! pylon-xds's config loader on arbitrary bytes: the bounded pre-scan, serde
//! for both forms, validation, translation and the snapshot build. It must
//! return an error, never crash, hang or exhaust memory.
#![no_main]

use control_plane::config::{load_bytes, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resources) = load_bytes("fuzz.yaml", data, &Options::default()) {
        // What loads must also make a consistent snapshot.
        let _ = control_plane::snapshot::Snapshot::build(resources, None)
            .expect("a loaded config builds a snapshot");
    }
});
