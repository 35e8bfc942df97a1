//! A whole SPDY/3 server connection fed hostile bytes: the read loop, stream table, flow
//! control and GOAWAY handling never panic, and every stream and task ends with the input.
#![no_main]
use concord::stream::spdy::Conn;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = data.to_vec();
    rt.block_on(async move {
        let io = tokio::io::join(std::io::Cursor::new(data), tokio::io::sink());
        let (conn, mut streams) = Conn::server(io);
        let drain = async {
            while let Some(mut s) = streams.recv().await {
                let _ = s.header("streamtype").map(str::len);
                tokio::spawn(async move { while s.read().await.is_some() {} });
            }
        };
        // The input ends, so the connection must end: every stream and the stream list close.
        tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .expect("the connection ended with its input");
        conn.closed().cancel();
    });
});
