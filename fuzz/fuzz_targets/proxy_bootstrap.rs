//! pylon-proxy's Envoy bootstrap reader on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = data_plane::bootstrap::parse("fuzz.yaml", text);
    }
});
