//! The W3C `traceparent` a gRPC caller sends (kubelet with tracing on; anyone on the socket):
//! never panics on any text; what it accepts has non-zero ids and reads back the same once
//! written in the canonical form.
#![no_main]
use concord::daemon::otlp::parse_traceparent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((trace, span, sampled)) = parse_traceparent(text) else {
        return;
    };
    assert!(trace != 0 && span != 0, "{text:?}");
    let canonical = format!("00-{trace:032x}-{span:016x}-{:02x}", sampled as u8);
    assert_eq!(parse_traceparent(&canonical), Some((trace, span, sampled)));
});
