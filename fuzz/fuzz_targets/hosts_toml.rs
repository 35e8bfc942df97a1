//! `certs.d/<host>/hosts.toml`, written by an admin but parsed on every pull: never panics,
//! and every endpoint it yields is a usable URL for the host.
#![no_main]
use concord::image::hosts::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/concord/certs.d/registry.test/hosts.toml");
    if let Ok(endpoints) = parse(path, text, "registry.test") {
        assert!(!endpoints.is_empty());
        assert!(endpoints.iter().filter(|e| !e.mirror).count() <= 1);
        for e in &endpoints {
            assert!(
                e.base.starts_with("http://") || e.base.starts_with("https://"),
                "{}",
                e.base
            );
        }
    }
});
