//! The CDI spec file parser (YAML or JSON from /etc/cdi, /var/run/cdi): never panics on any
//! bytes; what it accepts is valid by the CDI rules (a known version, a vendor/class kind,
//! device names that qualify), and applying any accepted device's edits never panics.
#![no_main]
use concord::oci::cdi::{apply, parse, parse_qualified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 << 10 {
        return;
    }
    let Ok(spec) = parse(data) else {
        return;
    };
    assert!(spec.kind.contains('/'), "{spec:?}");
    for d in &spec.devices {
        let name = format!("{}={}", spec.kind, d.name);
        assert!(parse_qualified(&name).is_ok(), "{name}");
        let edits = [spec.container_edits.clone(), d.container_edits.clone()];
        let _ = apply(&mut concord::oci::spec_opts::blank_spec(), &edits);
    }
});
