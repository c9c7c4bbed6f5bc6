//! pylon-proxy's conversion of xDS resources (the bytes of an `Any` of each
//! type it consumes) into its validated model: a resource it cannot honour is
//! a NACK, never a crash. The first byte picks the type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let types = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
    let _ = data_plane::model::decode(types[usize::from(pick) % types.len()], bytes);
});
