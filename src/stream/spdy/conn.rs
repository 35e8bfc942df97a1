//! One side of a SPDY connection: [`Conn`] opens streams (client), accepts them (server, via
//! the reader in `read`), pings, announces windows, goes away; [`Shared`] is what the
//! connection's tasks share: the write half with its header compression context, the stream
//! table and windows, pending pings.
//!
//! Flow control: concord grants its peer window back as it consumes data. It honours its peer's
//! windows once the peer shows it keeps them (a WINDOW_UPDATE or a SETTINGS initial window):
//! Go's spdystream, which kubectl and kubelet use, never sends either and ignores windows, so a
//! server that waited for its grants would stop after 64 KiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::frame::{Control, FLAG_FIN, SETTINGS_INITIAL_WINDOW_SIZE};
use super::headers::{HeaderEncoder, Headers};
use super::read::Reader;
use super::stream::{Stream, StreamState, Windows, STREAM_BUFFER};

/// The window every stream and the session start with.
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// Bytes of the peer's data one connection holds for readers that have not taken it yet: past
/// this the connection is not read until they do (a peer ignoring flow control, as Go's
/// spdystream does, cannot grow concord's memory).
pub const CONNECTION_BUFFER_BYTES: usize = 16 << 20;
/// Streams one connection may have open; more are refused (RST_STREAM REFUSED_STREAM).
pub const MAX_STREAMS: usize = 512;

/// The connection's write half and this direction's header compression context, locked
/// together: header blocks leave in the order they were compressed, as the peer's one
/// decompression context needs.
pub(super) struct Writer {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    headers: HeaderEncoder,
}

impl Writer {
    async fn frame(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes the control frame `frame` builds around the compressed `headers`.
    async fn with_headers<F>(
        &mut self,
        flags: u8,
        headers: &Headers,
        frame: F,
    ) -> std::io::Result<()>
    where
        F: for<'b> FnOnce(&'b [u8]) -> Control<'b>,
    {
        let block = self.headers.encode(headers);
        let bytes = frame(&block).encode(flags)?;
        self.frame(&bytes).await
    }
}

pub(super) struct Shared {
    pub(super) server: bool,
    write: tokio::sync::Mutex<Writer>,
    pub(super) state: Mutex<Windows>,
    /// Window grants and resets.
    pub(super) changed: Notify,
    /// The peer keeps flow control windows (it sent WINDOW_UPDATE or SETTINGS).
    pub(super) peer_flow_control: AtomicBool,
    next_id: AtomicU32,
    next_ping: AtomicU32,
    pub(super) pings: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    pub(super) went_away: AtomicBool,
    /// The last stream the peer opened that was accepted.
    pub(super) last_peer_id: AtomicU32,
    pub(super) closed: CancellationToken,
    pub(super) last_activity: Mutex<Instant>,
    /// [`CONNECTION_BUFFER_BYTES`] as permits, one per byte held for readers.
    pub(super) buffered: Arc<tokio::sync::Semaphore>,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed")
}

impl Shared {
    pub(super) async fn write_raw(&self, frame: &[u8]) -> std::io::Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed());
        }
        let mut w = self.write.lock().await;
        match tokio::time::timeout(crate::stream::WRITE_TIMEOUT, w.frame(frame)).await {
            Ok(r) => r?,
            Err(_) => {
                // A peer that reads nothing for this long is gone: the connection ends.
                self.closed.cancel();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer read nothing for too long",
                ));
            }
        }
        self.touch();
        Ok(())
    }

    /// Writes a control frame without a header block.
    pub(super) async fn send(&self, frame: Control<'_>) -> std::io::Result<()> {
        self.write_raw(&frame.encode(0)?).await
    }

    /// RST_STREAM for `id`.
    pub(super) async fn reset_stream(&self, id: u32, status: u32) -> std::io::Result<()> {
        self.send(Control::RstStream { id, status }).await
    }

    /// Grants the peer `delta` more bytes on stream `id` (0: the session).
    pub(super) async fn grant(&self, id: u32, delta: i64) -> std::io::Result<()> {
        let delta = delta as u32;
        self.send(Control::WindowUpdate { id, delta }).await
    }

    /// SYN_REPLY (no headers) to the peer's stream `id`.
    pub(super) async fn reply(&self, id: u32) -> std::io::Result<()> {
        let mut w = self.write.lock().await;
        w.with_headers(0, &Vec::new(), |block| Control::SynReply { id, block })
            .await?;
        self.touch();
        Ok(())
    }

    fn touch(&self) {
        *self.last_activity.lock() = Instant::now();
    }

    /// Drops a stream both sides finished.
    pub(super) fn forget_if_done(&self, id: u32) {
        let mut st = self.state.lock();
        if st
            .streams
            .get(&id)
            .is_some_and(|s| s.finished && s.tx.is_none())
        {
            st.streams.remove(&id);
        }
    }

    /// The reader ended: readers of every stream see the end, waiting pings learn it too, and
    /// the write half shuts.
    async fn end(&self) {
        self.closed.cancel();
        self.state.lock().streams.clear();
        self.pings.lock().clear();
        self.changed.notify_waiters();
        let mut w = self.write.lock().await;
        let _ = w.io.shutdown().await;
    }
}

/// One side of a SPDY connection.
#[derive(Clone)]
pub struct Conn {
    pub(super) shared: Arc<Shared>,
}

impl Conn {
    /// The server side of `io` (after the HTTP upgrade): the streams the client opens arrive
    /// on the receiver, already replied to.
    pub fn server<IO>(io: IO) -> (Conn, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, true)
    }

    /// The client side of `io`.
    pub fn client<IO>(io: IO) -> (Conn, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, false)
    }

    fn new<IO>(io: IO, server: bool) -> (Conn, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let shared = Arc::new(Shared {
            server,
            write: tokio::sync::Mutex::new(Writer {
                io: Box::new(w),
                headers: HeaderEncoder::default(),
            }),
            state: Mutex::new(Windows {
                streams: HashMap::new(),
                session_send: INITIAL_WINDOW,
                session_unacked: 0,
                initial: INITIAL_WINDOW,
            }),
            changed: Notify::new(),
            peer_flow_control: AtomicBool::new(false),
            next_id: AtomicU32::new(if server { 2 } else { 1 }),
            next_ping: AtomicU32::new(if server { 2 } else { 1 }),
            pings: Mutex::new(HashMap::new()),
            went_away: AtomicBool::new(false),
            last_peer_id: AtomicU32::new(0),
            closed: CancellationToken::new(),
            last_activity: Mutex::new(Instant::now()),
            buffered: Arc::new(tokio::sync::Semaphore::new(CONNECTION_BUFFER_BYTES)),
        });
        let (incoming_tx, incoming) = mpsc::channel(64);
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
            if let Err(e) = Reader::new(reader.clone(), incoming_tx).run(&mut r).await {
                tracing::debug!(error = %e, "spdy connection ended with an error");
            }
            reader.end().await;
        });
        (Conn { shared }, incoming)
    }

    /// Opens a stream with `headers` (`fin`: this side sends nothing) and waits for the
    /// peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, fin: bool) -> std::io::Result<Stream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (reply_tx, reply_rx) = oneshot::channel();
        let shared = &self.shared;
        let id = {
            // The id is taken under the write lock: SYN_STREAMs leave in increasing ids, which
            // the peer requires, whatever the number of tasks opening streams.
            let mut w = shared.write.lock().await;
            if shared.closed.is_cancelled() {
                return Err(closed());
            }
            let id = shared.next_id.fetch_add(2, Ordering::SeqCst);
            {
                let mut st = shared.state.lock();
                let mut s = StreamState::new(Some(tx), st.initial);
                s.reply = Some(reply_tx);
                s.finished = fin;
                st.streams.insert(id, s);
            }
            // The reader may have ended (and cleared the streams) since the check above.
            if shared.closed.is_cancelled() {
                shared.state.lock().streams.remove(&id);
                return Err(closed());
            }
            let flags = if fin { FLAG_FIN } else { 0 };
            w.with_headers(flags, &headers, |block| Control::SynStream { id, block })
                .await?;
            shared.touch();
            id
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), reply_rx).await;
        if !matches!(answer, Ok(Ok(true))) {
            shared.state.lock().streams.remove(&id);
        }
        match answer {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(std::io::Error::other("stream refused (RST_STREAM)")),
            Ok(Err(_)) => return Err(std::io::Error::other("connection closed")),
            Err(_) => return Err(std::io::Error::other("no SYN_REPLY within 30s")),
        }
        Ok(Stream::new(id, headers, rx, shared.clone()))
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&self) -> std::io::Result<Duration> {
        let id = self.shared.next_ping.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.shared.pings.lock().insert(id, tx);
        let start = Instant::now();
        self.shared.send(Control::Ping(id)).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), rx).await;
        self.shared.pings.lock().remove(&id);
        answer
            .map_err(|_| std::io::Error::other("no PING reply"))?
            .map_err(|_| std::io::Error::other("connection closed"))?;
        Ok(start.elapsed())
    }

    /// Announces this side's window for new streams (and so that it keeps windows).
    pub async fn settings_initial_window(&self, window: u32) -> std::io::Result<()> {
        let entries = vec![(SETTINGS_INITIAL_WINDOW_SIZE, window)];
        self.shared.send(Control::Settings(entries)).await
    }

    /// Sends GOAWAY: the peer opens no more streams; those open go on.
    pub async fn goaway(&self, status: u32) -> std::io::Result<()> {
        let last_id = self.shared.last_peer_id.load(Ordering::SeqCst);
        self.shared.send(Control::GoAway { last_id, status }).await
    }

    /// Closes the connection (GOAWAY, then the socket).
    pub async fn close(&self) {
        let _ = self.goaway(0).await;
        self.shared.closed.cancel();
        self.shared.changed.notify_waiters();
        let mut w = self.shared.write.lock().await;
        let _ = w.io.shutdown().await;
    }

    /// Cancelled when the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// When a frame last went either way.
    pub fn last_activity(&self) -> Instant {
        *self.shared.last_activity.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::spdy::frame::*;

    /// A raw peer: SYN_STREAM `id` with no headers.
    fn syn(enc: &mut HeaderEncoder, id: u32) -> Vec<u8> {
        let block = enc.encode(&Vec::new());
        Control::SynStream { id, block: &block }.encode(0).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_ignoring_flow_control_is_held_to_the_byte_budget() {
        use tokio::io::AsyncWriteExt;
        let (a, b) = tokio::io::duplex(1 << 20);
        let (server, mut incoming) = Conn::server(a);
        let (mut br, mut bw) = tokio::io::split(b);
        tokio::spawn(async move { while let Ok(Some(_)) = read_frame(&mut br).await {} });
        let mut enc = HeaderEncoder::default();
        bw.write_all(&syn(&mut enc, 1)).await.unwrap();
        let mut s = incoming.recv().await.unwrap();
        // 40 MiB pushed at a stream nobody reads, windows ignored (as Go's spdystream does).
        let push = tokio::spawn(async move {
            for _ in 0..40 {
                bw.write_all(&data_frame(1, 0, &vec![1u8; 1 << 20]))
                    .await
                    .unwrap();
            }
            bw.write_all(&data_frame(1, FLAG_FIN, &[])).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = CONNECTION_BUFFER_BYTES - server.shared.buffered.available_permits();
        assert!(held <= CONNECTION_BUFFER_BYTES, "{held}");
        assert!(
            !push.is_finished(),
            "the connection was read past its budget"
        );
        // The reader takes it: everything arrives, and the budget is whole again.
        let got = s.read_to_end().await;
        push.await.unwrap();
        assert_eq!(got.len(), 40 << 20);
        assert_eq!(
            server.shared.buffered.available_permits(),
            CONNECTION_BUFFER_BYTES
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_past_the_cap_are_refused() {
        use tokio::io::AsyncWriteExt;
        let (a, b) = tokio::io::duplex(1 << 20);
        let (_server, mut incoming) = Conn::server(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let mut enc = HeaderEncoder::default();
        let mut frames = Vec::new();
        for i in 0..=MAX_STREAMS as u32 {
            frames.extend(syn(&mut enc, 2 * i + 1));
        }
        bw.write_all(&frames).await.unwrap();
        let mut kept = Vec::new();
        for _ in 0..MAX_STREAMS {
            kept.push(incoming.recv().await.unwrap());
        }
        let last = 2 * MAX_STREAMS as u32 + 1;
        loop {
            match read_frame(&mut br).await.unwrap().unwrap() {
                Frame::Control { kind, body, .. } if kind == RST_STREAM => {
                    assert_eq!(
                        parse_control(kind, &body).unwrap(),
                        Control::RstStream {
                            id: last,
                            status: REFUSED_STREAM
                        }
                    );
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(kept.len(), MAX_STREAMS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_flow_ping_and_reset_over_an_in_memory_connection() {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (server, mut incoming) = Conn::server(a);
        let (client, _) = Conn::client(b);
        // Streams opened at once arrive in increasing ids, with their headers.
        let opens = (0..16).map(|i| {
            let c = client.clone();
            async move {
                c.open(vec![("n".to_string(), i.to_string())], false)
                    .await
                    .unwrap()
            }
        });
        let mut opened = futures::future::join_all(opens).await;
        let mut accepted = Vec::new();
        for _ in 0..16 {
            accepted.push(incoming.recv().await.unwrap());
        }
        assert!(accepted.windows(2).all(|w| w[0].id < w[1].id));
        assert!(accepted.iter().all(|s| s.id % 2 == 1));
        for (o, a) in opened.iter().zip(&accepted) {
            assert_eq!(o.id, a.id);
            assert_eq!(o.headers, a.headers);
        }
        // The client keeps windows: 1 MiB from the server crosses 64 KiB windows only as the
        // client grants them back.
        client.settings_initial_window(64 * 1024).await.unwrap();
        assert!(client.ping().await.is_ok());
        let big = vec![7u8; 1 << 20];
        let w = accepted[0].writer();
        let send = tokio::spawn(async move {
            w.write(&big).await.unwrap();
            w.finish().await.unwrap();
        });
        let got = opened[0].read_to_end().await;
        send.await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert!(server.shared.peer_flow_control.load(Ordering::SeqCst));
        // Client to server, FIN on both halves.
        opened[1].writer().write(b"hello").await.unwrap();
        opened[1].writer().finish().await.unwrap();
        assert_eq!(accepted[1].read_to_end().await, b"hello");
        // A reset stream: the peer's reads end, its writes fail.
        accepted[2].writer().reset(CANCEL).await.unwrap();
        assert_eq!(opened[2].read().await, None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(opened[2].writer().write(b"x").await.is_err());
        // GOAWAY, then the connection's end reaches every stream.
        server.close().await;
        assert_eq!(opened[3].read().await, None);
        client.closed().cancelled().await;
        assert!(client.open(Vec::new(), false).await.is_err());
    }
}
