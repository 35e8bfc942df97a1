//! Image reference parsing: never panics; what parses prints to a reference that parses to
//! the same thing (the name concord stores is stable).
#![no_main]
use concord::image::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let printed = r.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again.to_string(), printed, "from {s:?}");
        let _ = (r.repository(), r.object(), r.tagged());
    }
});
