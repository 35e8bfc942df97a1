//! WebSocket frames from a client (RFC 6455) and the Kubernetes channel protocols on top: the
//! frame reader refuses what the RFC forbids and never holds more than one message's limit;
//! every message that decodes on a channel encodes back to the same frame payload.
#![no_main]
use concord::stream::ws::{Protocol, Reader, CHANNEL_PROTOCOLS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frames)) = data.split_first() else {
        return;
    };
    let name = CHANNEL_PROTOCOLS[pick as usize % CHANNEL_PROTOCOLS.len()];
    let proto = Protocol::parse(name).expect("a protocol concord lists parses");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = Reader::from_client(frames);
        while let Ok(Some(msg)) = r.next().await {
            if let Some((channel, payload)) = proto.decode(&msg.data) {
                if channel == concord::stream::ws::CLOSE_SIGNAL && proto.version >= 5 {
                    continue;
                }
                let (_, encoded) = proto.encode(channel, &payload);
                let (c2, p2) = proto.decode(&encoded).expect("our own frame decodes");
                assert_eq!((c2, p2), (channel, payload));
            }
        }
    });
});
