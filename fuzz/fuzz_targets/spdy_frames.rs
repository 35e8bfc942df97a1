//! SPDY/3 frames and header blocks: the frame reader, the typed control-frame parser and the
//! zlib header decoder (with the SPDY dictionary) never panic, never allocate past their limits,
//! every control frame parsed encodes back to one that parses the same, and every header block
//! the encoder writes decodes back to the same headers.
#![no_main]
use concord::stream::spdy::{
    parse_control, read_frame, Control, Frame, HeaderDecoder, HeaderEncoder,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = data;
        let mut decoder = HeaderDecoder::default();
        let mut encoder = HeaderEncoder::default();
        let mut check = HeaderDecoder::default();
        while let Ok(Some(frame)) = read_frame(&mut r).await {
            let Frame::Control { kind, flags, body } = frame else {
                continue;
            };
            // The typed parse refuses what is too short and never reads past the body; what
            // it accepts encodes back to a frame that parses to the same control.
            if let Ok(control) = parse_control(kind, &body) {
                if let Control::Settings(entries) = &control {
                    assert!(4 + entries.len() * 8 <= body.len());
                }
                let bytes = control.encode(flags).expect("a parsed frame encodes");
                let mut r = &bytes[..];
                match read_frame(&mut r).await {
                    Ok(Some(Frame::Control {
                        kind: k,
                        flags: f,
                        body: b,
                    })) => {
                        assert_eq!((k, f), (kind, flags));
                        assert_eq!(parse_control(k, &b).expect("re-parse"), control);
                    }
                    other => panic!("{control:?} encoded as {other:?}"),
                }
            }
            // SYN_STREAM's block starts at 10, SYN_REPLY's and HEADERS' at 4: try both.
            for at in [4usize, 10] {
                if let Some(block) = body.get(at..) {
                    if let Ok(headers) = decoder.decode(block) {
                        let bytes = encoder.encode(&headers);
                        let back = check.decode(&bytes).expect("our own header block decodes");
                        assert_eq!(back, headers);
                    }
                }
            }
        }
    });
});
