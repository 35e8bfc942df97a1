//! The connection's reader: frames in order off the wire, each kind to its handler. It
//! accepts the peer's streams (or refuses them: wrong parity, ids going back, past GOAWAY or
//! the stream cap), routes DATA to stream readers within the connection's byte budget, and
//! applies the peer's resets, settings, window grants and pings.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::conn::{Shared, CONNECTION_BUFFER_BYTES, INITIAL_WINDOW, MAX_STREAMS};
use super::frame::{
    parse_control, read_frame, Control, Frame, FLAG_FIN, FLAG_UNIDIRECTIONAL, PROTOCOL_ERROR,
    REFUSED_STREAM, SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::headers::HeaderDecoder;
use super::stream::{Stream, StreamState, STREAM_BUFFER};

/// Whether the reader goes on; Break: the connection closed while a handler waited.
type Next = std::io::Result<ControlFlow<()>>;

const GO_ON: Next = Ok(ControlFlow::Continue(()));

pub(super) struct Reader {
    shared: Arc<Shared>,
    /// The peer's header compression context.
    decoder: HeaderDecoder,
    /// The last stream id the peer opened (accepted, or refused for the cap): the next must
    /// be higher.
    last_peer_id: u32,
    /// Where accepted streams go.
    incoming: mpsc::Sender<Stream>,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, incoming: mpsc::Sender<Stream>) -> Reader {
        Reader {
            shared,
            decoder: HeaderDecoder::default(),
            last_peer_id: 0,
            incoming,
        }
    }

    /// Reads until the connection ends (Ok: a clean end or a close on this side).
    pub(super) async fn run<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<()> {
        loop {
            let frame = tokio::select! {
                f = read_frame(r) => f?,
                _ = self.shared.closed.cancelled() => return Ok(()),
            };
            let Some(frame) = frame else { return Ok(()) };
            *self.shared.last_activity.lock() = Instant::now();
            let next = match frame {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => self.on_data(stream, flags, data).await?,
                Frame::Control { kind, flags, body } => {
                    self.on_control(flags, parse_control(kind, &body)?).await?
                }
            };
            if next.is_break() {
                return Ok(());
            }
            self.grant_unread().await?;
        }
    }

    async fn on_control(&mut self, flags: u8, frame: Control<'_>) -> Next {
        match frame {
            Control::SynStream { id, block } => return self.on_syn_stream(id, flags, block).await,
            Control::SynReply { id, block } => {
                self.decoder.decode(block)?;
                self.on_syn_reply(id, flags);
            }
            Control::Headers { block, .. } => {
                // Decoded only to keep the compression context in step.
                self.decoder.decode(block)?;
            }
            Control::RstStream { id, .. } => self.on_reset(id),
            Control::Settings(entries) => self.on_settings(&entries),
            Control::Ping(id) => self.on_ping(id).await?,
            Control::GoAway { .. } => self.shared.went_away.store(true, Ordering::SeqCst),
            Control::WindowUpdate { id, delta } => self.on_window_update(id, delta),
            Control::Unknown(_) => {}
        }
        GO_ON
    }

    async fn on_data(&mut self, stream: u32, flags: u8, data: Vec<u8>) -> Next {
        let shared = &self.shared;
        let tx = {
            let mut st = shared.state.lock();
            match st.streams.get_mut(&stream) {
                Some(s) if flags & FLAG_FIN != 0 => s.tx.take(),
                Some(s) => s.tx.clone(),
                None => None,
            }
        };
        let Some(tx) = tx else {
            // Data for an unknown or finished stream: granted back, dropped.
            shared.state.lock().session_unacked += data.len() as i64;
            return GO_ON;
        };
        if !data.is_empty() {
            // The bytes are taken from the connection's budget first (waiting, not reading
            // on, while readers hold it all); a reader that went away drops its data; closing
            // ends the waits.
            let n = data.len().min(CONNECTION_BUFFER_BYTES) as u32;
            let budget = tokio::select! {
                p = shared.buffered.clone().acquire_many_owned(n) => match p {
                    Ok(p) => p,
                    Err(_) => return Ok(ControlFlow::Break(())),
                },
                _ = shared.closed.cancelled() => return Ok(ControlFlow::Break(())),
            };
            tokio::select! {
                _ = tx.send((data, budget)) => {}
                _ = shared.closed.cancelled() => return Ok(ControlFlow::Break(())),
            }
        }
        if flags & FLAG_FIN != 0 {
            drop(tx);
            shared.forget_if_done(stream);
        }
        GO_ON
    }

    /// The peer opens a stream: refused, or replied to and handed to the acceptor.
    async fn on_syn_stream(&mut self, id: u32, flags: u8, block: &[u8]) -> Next {
        let headers = self.decoder.decode(block)?;
        let shared = self.shared.clone();
        let peer_parity = if shared.server { 1 } else { 0 };
        if id % 2 != peer_parity
            || id <= self.last_peer_id
            || shared.went_away.load(Ordering::SeqCst)
        {
            shared.reset_stream(id, PROTOCOL_ERROR).await?;
            return GO_ON;
        }
        self.last_peer_id = id;
        if shared.state.lock().streams.len() >= MAX_STREAMS {
            shared.reset_stream(id, REFUSED_STREAM).await?;
            return GO_ON;
        }
        shared.last_peer_id.store(id, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let fin = flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL) != 0;
        {
            let mut st = shared.state.lock();
            let mut s = StreamState::new((!fin).then_some(tx), st.initial);
            s.finished = flags & FLAG_UNIDIRECTIONAL != 0;
            st.streams.insert(id, s);
        }
        shared.reply(id).await?;
        let stream = Stream::new(id, headers, rx, shared.clone());
        let taken = tokio::select! {
            r = self.incoming.send(stream) => r.is_ok(),
            _ = shared.closed.cancelled() => return Ok(ControlFlow::Break(())),
        };
        if !taken {
            shared.state.lock().streams.remove(&id);
            // Nobody takes streams any more.
            shared.reset_stream(id, REFUSED_STREAM).await?;
        }
        GO_ON
    }

    /// The peer accepted a stream this side opened.
    fn on_syn_reply(&self, id: u32, flags: u8) {
        let mut st = self.shared.state.lock();
        if let Some(s) = st.streams.get_mut(&id) {
            if let Some(r) = s.reply.take() {
                let _ = r.send(true);
            }
            if flags & FLAG_FIN != 0 {
                s.tx = None;
                if s.finished {
                    st.streams.remove(&id);
                }
            }
        }
    }

    fn on_reset(&self, id: u32) {
        if let Some(mut s) = self.shared.state.lock().streams.remove(&id) {
            s.reset = true;
            if let Some(r) = s.reply.take() {
                let _ = r.send(false);
            }
        }
        self.shared.changed.notify_waiters();
    }

    fn on_settings(&self, entries: &[(u32, u32)]) {
        for &(id, value) in entries {
            if id == SETTINGS_INITIAL_WINDOW_SIZE {
                let value = value as i64;
                let mut st = self.shared.state.lock();
                let delta = value - st.initial;
                st.initial = value;
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                }
                self.shared.peer_flow_control.store(true, Ordering::SeqCst);
            }
        }
        self.shared.changed.notify_waiters();
    }

    /// The echo of a PING of ours, or the peer's PING to echo.
    async fn on_ping(&self, id: u32) -> std::io::Result<()> {
        let ours = if self.shared.server { 0 } else { 1 };
        if id % 2 == ours {
            if let Some(w) = self.shared.pings.lock().remove(&id) {
                let _ = w.send(());
            }
            Ok(())
        } else {
            self.shared.send(Control::Ping(id)).await
        }
    }

    fn on_window_update(&self, id: u32, delta: u32) {
        let delta = delta as i64;
        {
            let mut st = self.shared.state.lock();
            if id == 0 {
                st.session_send += delta;
            } else if let Some(s) = st.streams.get_mut(&id) {
                s.send_window += delta;
            }
        }
        self.shared.peer_flow_control.store(true, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }

    /// Grants for data nobody reads (unknown streams) go back too.
    async fn grant_unread(&self) -> std::io::Result<()> {
        let pending = {
            let mut st = self.shared.state.lock();
            if st.session_unacked >= INITIAL_WINDOW / 2 && self.shared.server {
                Some(std::mem::take(&mut st.session_unacked))
            } else {
                None
            }
        };
        match pending {
            Some(delta) => self.shared.grant(0, delta).await,
            None => Ok(()),
        }
    }
}
