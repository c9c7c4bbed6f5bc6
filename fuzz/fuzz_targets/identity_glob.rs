//! pylon-xds's `clients:` matching on arbitrary rules and identities: the
//! globs of a rule (URI SAN, node id and cluster) against a certificate's
//! SANs and a claimed node. Must answer, never crash or run away (the glob
//! matcher is iterative with one backtrack point).
#![no_main]

use control_plane::selection::{ClientRule, Glob, IdentityGlob, Policy};
use libfuzzer_sys::fuzz_target;
use pylon::tls::Identity;

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: uri glob, id glob, cluster glob, uri, id, cluster.
    let text = String::from_utf8_lossy(data);
    let mut f = text.split('\0');
    let mut next = || f.next().unwrap_or("").to_string();
    let (uri_glob, id_glob, cluster_glob) = (next(), next(), next());
    let (uri, id, cluster) = (next(), next(), next());
    let policy = Policy {
        selectors: Vec::new(),
        clients: vec![ClientRule {
            identity: IdentityGlob::Uri(Glob::new(uri_glob.clone())),
            nodes: Some((Some(Glob::new(id_glob)), Some(Glob::new(cluster_glob)))),
            csds: true,
        }],
    };
    let identity = Identity {
        uris: vec![uri.clone()],
        dns: Vec::new(),
    };
    let allowed = policy.authorize(&identity, &id, &cluster);
    // A rule whose identity glob does not match can never allow.
    if !Glob::new(uri_glob).matches(&uri) {
        assert!(allowed.is_err());
    }
    let _ = policy.csds_allowed(&identity);
});
