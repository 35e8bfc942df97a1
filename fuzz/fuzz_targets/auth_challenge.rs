//! A registry's `WWW-Authenticate` header: parsing never panics and never invents a parameter
//! name that is not in the header.
#![no_main]
use concord::image::registry::parse_challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = std::str::from_utf8(data) else {
        return;
    };
    let (scheme, params) = parse_challenge(h);
    assert!(h.contains(scheme.as_str()));
    let lower = h.to_ascii_lowercase();
    for k in params.keys() {
        assert!(lower.contains(k.as_str()), "{k:?} not in {h:?}");
    }
});
