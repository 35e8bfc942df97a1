//! One SPDY stream as its users see it: [`Stream`] reads the peer's data in order and grants
//! the window back as it is consumed; [`StreamWriter`] writes this side's half within the
//! peer's windows (once the peer shows it keeps them), finishes or resets it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::conn::{Shared, INITIAL_WINDOW};
use super::frame::{data_frame, Control, FLAG_FIN};
use super::headers::{header, Headers};

/// The largest DATA frame concord writes.
const MAX_DATA: usize = 64 * 1024;
/// Data frames a stream buffers before the connection's reader waits for it.
pub(super) const STREAM_BUFFER: usize = 64;

/// Data for a reader, holding its share of the connection's byte budget until taken.
pub(super) type Chunk = (Vec<u8>, tokio::sync::OwnedSemaphorePermit);

/// The state of one stream inside the connection.
pub(super) struct StreamState {
    /// Where the peer's data goes (None once the peer finished its half).
    pub(super) tx: Option<mpsc::Sender<Chunk>>,
    /// What concord may still send on it.
    pub(super) send_window: i64,
    /// Received bytes not yet granted back.
    unacked: i64,
    /// Reset by either side: writes fail.
    pub(super) reset: bool,
    /// concord finished its half.
    pub(super) finished: bool,
    /// The opener waiting for SYN_REPLY.
    pub(super) reply: Option<oneshot::Sender<bool>>,
}

impl StreamState {
    pub(super) fn new(tx: Option<mpsc::Sender<Chunk>>, window: i64) -> StreamState {
        StreamState {
            tx,
            send_window: window,
            unacked: 0,
            reset: false,
            finished: false,
            reply: None,
        }
    }
}

/// The connection's streams and windows.
pub(super) struct Windows {
    pub(super) streams: HashMap<u32, StreamState>,
    /// What concord may still send on the whole connection.
    pub(super) session_send: i64,
    /// Bytes received on the connection not yet granted back.
    pub(super) session_unacked: i64,
    /// The peer's window for new streams.
    pub(super) initial: i64,
}

/// A stream: the peer's data in order (`read`), and this side's writer.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    rx: mpsc::Receiver<Chunk>,
    writer: StreamWriter,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(super) fn new(
        id: u32,
        headers: Headers,
        rx: mpsc::Receiver<Chunk>,
        shared: Arc<Shared>,
    ) -> Stream {
        Stream {
            id,
            headers,
            rx,
            writer: StreamWriter { id, shared },
        }
    }

    /// The next data the peer sent; None once it finished its half, reset the stream or the
    /// connection ended.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        let (data, budget) = self.rx.recv().await?;
        drop(budget);
        self.writer.consumed(data.len());
        Some(data)
    }

    /// Everything up to the peer's FIN.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(d) = self.read().await {
            all.extend_from_slice(&d);
        }
        all
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl Drop for Stream {
    /// The stream's reader is gone: what the peer still sends is dropped, and the stream is
    /// forgotten once this side finished too.
    fn drop(&mut self) {
        let mut st = self.writer.shared.state.lock();
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.tx = None;
            if s.finished || s.reset {
                st.streams.remove(&self.id);
            }
        }
    }
}

/// Writes one stream's half.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

fn broken(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, what)
}

impl StreamWriter {
    /// Writes `data` (split into frames, within the peer's windows when it keeps them).
    pub async fn write(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = self.reserve(data.len()).await?;
            self.shared
                .write_raw(&data_frame(self.id, 0, &data[..n]))
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends this side's half (an empty DATA frame with FIN); idempotent.
    pub async fn finish(&self) -> std::io::Result<()> {
        {
            let mut st = self.shared.state.lock();
            match st.streams.get_mut(&self.id) {
                Some(s) if s.finished || s.reset => return Ok(()),
                Some(s) => s.finished = true,
                None => return Ok(()),
            }
        }
        self.shared
            .write_raw(&data_frame(self.id, FLAG_FIN, &[]))
            .await?;
        self.shared.forget_if_done(self.id);
        Ok(())
    }

    /// Resets the stream with `status`.
    pub async fn reset(&self, status: u32) -> std::io::Result<()> {
        {
            let mut st = self.shared.state.lock();
            if let Some(s) = st.streams.remove(&self.id) {
                if s.reset {
                    return Ok(());
                }
            }
        }
        self.shared.changed.notify_waiters();
        self.shared
            .send(Control::RstStream {
                id: self.id,
                status,
            })
            .await
    }

    /// Waits for room to send up to `want` bytes; answers how many may go.
    async fn reserve(&self, want: usize) -> std::io::Result<usize> {
        let want = want.min(MAX_DATA);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(n) = self.take_room(want)? {
                return Ok(n);
            }
            if self.shared.closed.is_cancelled() {
                return Err(broken("connection closed"));
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shared.closed.cancelled() => {}
            }
        }
    }

    /// Takes up to `want` bytes of the windows (None: no room now).
    fn take_room(&self, want: usize) -> std::io::Result<Option<usize>> {
        let mut st = self.shared.state.lock();
        let session = st.session_send;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Err(broken("stream closed"));
        };
        if s.reset || s.finished {
            return Err(broken("stream reset or finished"));
        }
        let enforce = self.shared.peer_flow_control.load(Ordering::SeqCst);
        let room = if enforce {
            s.send_window.min(session).max(0) as usize
        } else {
            want
        };
        if room == 0 {
            return Ok(None);
        }
        let n = want.min(room);
        s.send_window -= n as i64;
        st.session_send -= n as i64;
        Ok(Some(n))
    }

    /// `n` bytes of the peer's were consumed: grant them back in batches.
    fn consumed(&self, n: usize) {
        let mut grants = Vec::new();
        {
            let mut st = self.shared.state.lock();
            // concord's receive window is the protocol's default (it announces no other).
            let half = INITIAL_WINDOW / 2;
            if let Some(s) = st.streams.get_mut(&self.id) {
                s.unacked += n as i64;
                if s.unacked >= half && s.tx.is_some() {
                    grants.push((self.id, s.unacked));
                    s.unacked = 0;
                }
            }
            st.session_unacked += n as i64;
            if st.session_unacked >= INITIAL_WINDOW / 2 {
                grants.push((0, st.session_unacked));
                st.session_unacked = 0;
            }
        }
        if grants.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            for (id, delta) in grants {
                let _ = shared.grant(id, delta).await;
            }
        });
    }
}
