//! SPDY/3.1, the multiplexing protocol kubectl and kubelet have spoken to streaming servers
//! since the beginning (`Upgrade: SPDY/3.1`): frames, stream setup (SYN_STREAM / SYN_REPLY),
//! header blocks compressed with one zlib context per direction seeded with the SPDY/3
//! dictionary, flow control (WINDOW_UPDATE, SETTINGS initial window), PING, GOAWAY and
//! RST_STREAM.
//!
//! [`Conn`] is either side of a connection: the server accepts the streams the client opens,
//! the client (tests, benchmark) opens them. Each stream reads its peer's data in order and
//! writes its own, with FIN to end its half.
//!
//! Flow control: concord grants its peer window back as it consumes data. It honours its peer's
//! windows once the peer shows it keeps them (a WINDOW_UPDATE or a SETTINGS initial window):
//! Go's spdystream, which kubectl and kubelet use, never sends either and ignores windows, so a
//! server that waited for its grants would stop after 64 KiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

pub const VERSION: u16 = 3;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// SETTINGS id of the initial stream window.
const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The window every stream and the session start with.
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// The largest DATA frame concord writes.
const MAX_DATA: usize = 64 * 1024;
/// Data frames a stream buffers before the connection's reader waits for it.
const STREAM_BUFFER: usize = 64;
/// Bytes of the peer's data one connection holds for readers that have not taken it yet: past
/// this the connection is not read until they do (a peer ignoring flow control, as Go's
/// spdystream does, cannot grow concord's memory).
pub const CONNECTION_BUFFER_BYTES: usize = 16 << 20;
/// Streams one connection may have open; more are refused (RST_STREAM REFUSED_STREAM).
pub const MAX_STREAMS: usize = 512;

/// Data for a reader, holding its share of the connection's byte budget until taken.
type Chunk = (Vec<u8>, tokio::sync::OwnedSemaphorePermit);
/// The largest frame accepted (a peer claiming more is a protocol error).
const MAX_FRAME: usize = 4 << 20;
/// The most a decompressed header block may hold, and the most header entries.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
const MAX_HEADERS: usize = 256;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header names and values, then common value fragments.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// A stream's headers: lowercase names, values (several values of one name are one entry
/// each).
pub type Headers = Vec<(String, String)>;

/// The first value of `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Compresses header blocks: one zlib stream for a whole connection direction, each block
/// ended by a sync flush.
pub struct HeaderEncoder(Compress);

impl Default for HeaderEncoder {
    fn default() -> Self {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary())
            .expect("zlib accepts a dictionary before any data");
        HeaderEncoder(c)
    }
}

impl HeaderEncoder {
    pub fn encode(&mut self, headers: &Headers) -> Vec<u8> {
        let mut names: Vec<&str> = Vec::new();
        for (k, _) in headers {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for name in names {
            let value = headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\0");
            let name = name.to_ascii_lowercase();
            for s in [name.as_bytes(), value.as_bytes()] {
                plain.extend_from_slice(&(s.len() as u32).to_be_bytes());
                plain.extend_from_slice(s);
            }
        }
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(plain.len() * 2 + 64);
        loop {
            let done = (self.0.total_in() - start) as usize;
            // The stream's state is ours alone: the only failure would be a bug in zlib.
            let _ = self
                .0
                .compress_vec(&plain[done..], &mut out, FlushCompress::Sync);
            let done = (self.0.total_in() - start) as usize;
            // All input taken and the flush fitted with room to spare: the block is whole.
            if done == plain.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    }
}

/// Decompresses header blocks of one connection direction.
#[derive(Default)]
pub struct HeaderDecoder(Option<Decompress>);

impl HeaderDecoder {
    pub fn decode(&mut self, block: &[u8]) -> std::io::Result<Headers> {
        let d = self.0.get_or_insert_with(|| Decompress::new(true));
        let mut out = Vec::with_capacity((block.len() * 4 + 256).min(MAX_HEADER_BLOCK));
        let mut pos = 0;
        loop {
            let (in_before, out_before) = (d.total_in(), out.len());
            let result = d.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync);
            pos += (d.total_in() - in_before) as usize;
            match result {
                Err(e) if e.needs_dictionary().is_some() => {
                    d.set_dictionary(dictionary())
                        .map_err(|_| bad("header block uses another dictionary than SPDY/3's"))?;
                    continue;
                }
                Err(e) => return Err(bad(format!("header block: {e}"))),
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad("header block larger than 256 KiB"));
            }
            if pos >= block.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            } else if d.total_in() == in_before && out.len() == out_before {
                return Err(bad("header block does not decompress"));
            }
        }
        parse_block(&out)
    }
}

fn parse_block(b: &[u8]) -> std::io::Result<Headers> {
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> std::io::Result<usize> {
        let v = b
            .get(*pos..*pos + 4)
            .ok_or_else(|| bad("truncated header block"))?;
        *pos += 4;
        Ok(u32::from_be_bytes(v.try_into().expect("4 bytes")) as usize)
    };
    let n = u32_at(&mut pos)?;
    if n > MAX_HEADERS {
        return Err(bad(format!(
            "{n} headers in one block (at most {MAX_HEADERS})"
        )));
    }
    let mut headers = Vec::new();
    let mut copied = 0usize;
    for _ in 0..n {
        let field = |pos: &mut usize| -> std::io::Result<String> {
            let len = u32_at(pos)?;
            let s = b
                .get(*pos..*pos + len)
                .ok_or_else(|| bad("truncated header block"))?;
            *pos += len;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let name = field(&mut pos)?.to_ascii_lowercase();
        let value = field(&mut pos)?;
        for v in value.split('\0') {
            copied += name.len() + v.len();
            if copied > MAX_HEADER_BLOCK || headers.len() >= MAX_HEADERS {
                return Err(bad("header block expands beyond its limits"));
            }
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// One frame off the wire.
#[derive(Debug)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        body: Vec<u8>,
    },
}

/// Reads one frame (None at a clean end of the connection).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("a {len}-byte frame (at most {MAX_FRAME})")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(bad(format!("SPDY version {version}, not 3")));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            body,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
            flags,
            data: body,
        }))
    }
}

/// A control frame's bytes.
pub fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A data frame's bytes.
pub fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A control frame's body, parsed with the length SPDY/3 gives its kind: a body too short for
/// its fields is a protocol error (it used to read as stream 0). Trailing bytes are ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum Control<'a> {
    SynStream {
        id: u32,
        block: &'a [u8],
    },
    SynReply {
        id: u32,
        block: &'a [u8],
    },
    RstStream {
        id: u32,
        status: u32,
    },
    /// (id, value) pairs.
    Settings(Vec<(u32, u32)>),
    Ping(u32),
    GoAway,
    Headers {
        id: u32,
        block: &'a [u8],
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    /// A kind SPDY/3 does not define (ignored, as the draft says).
    Unknown(u16),
}

/// Parses the body of a control frame of `kind`.
pub fn parse_control(kind: u16, body: &[u8]) -> std::io::Result<Control<'_>> {
    let need = |n: usize, what: &str| {
        if body.len() < n {
            Err(bad(format!(
                "a {}-byte {what} frame (at least {n})",
                body.len()
            )))
        } else {
            Ok(())
        }
    };
    let id = || be32(body, 0) & 0x7fff_ffff;
    Ok(match kind {
        SYN_STREAM => {
            need(10, "SYN_STREAM")?;
            Control::SynStream {
                id: id(),
                block: &body[10..],
            }
        }
        SYN_REPLY => {
            need(4, "SYN_REPLY")?;
            Control::SynReply {
                id: id(),
                block: &body[4..],
            }
        }
        RST_STREAM => {
            need(8, "RST_STREAM")?;
            Control::RstStream {
                id: id(),
                status: be32(body, 4),
            }
        }
        SETTINGS => {
            need(4, "SETTINGS")?;
            let n = be32(body, 0) as usize;
            if n > (body.len() - 4) / 8 {
                return Err(bad(format!(
                    "SETTINGS claims {n} entries in {} bytes",
                    body.len()
                )));
            }
            Control::Settings(
                (0..n)
                    .map(|i| {
                        let at = 4 + i * 8;
                        (be32(body, at) & 0x00ff_ffff, be32(body, at + 4))
                    })
                    .collect(),
            )
        }
        PING => {
            need(4, "PING")?;
            Control::Ping(be32(body, 0))
        }
        GOAWAY => {
            need(4, "GOAWAY")?;
            Control::GoAway
        }
        HEADERS => {
            need(4, "HEADERS")?;
            Control::Headers {
                id: id(),
                block: &body[4..],
            }
        }
        WINDOW_UPDATE => {
            need(8, "WINDOW_UPDATE")?;
            Control::WindowUpdate {
                id: id(),
                delta: be32(body, 4) & 0x7fff_ffff,
            }
        }
        other => Control::Unknown(other),
    })
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|v| u32::from_be_bytes(v.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

/// The state of one stream inside the connection.
struct StreamState {
    /// Where the peer's data goes (None once the peer finished its half).
    tx: Option<mpsc::Sender<Chunk>>,
    /// What concord may still send on it.
    send_window: i64,
    /// Received bytes not yet granted back.
    unacked: i64,
    /// Reset by either side: writes fail.
    reset: bool,
    /// concord finished its half.
    finished: bool,
    /// The opener waiting for SYN_REPLY.
    reply: Option<oneshot::Sender<bool>>,
}

impl StreamState {
    fn new(tx: Option<mpsc::Sender<Chunk>>, window: i64) -> StreamState {
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

struct Windows {
    streams: HashMap<u32, StreamState>,
    session_send: i64,
    session_unacked: i64,
    initial: i64,
}

struct Shared {
    server: bool,
    write: tokio::sync::Mutex<(Box<dyn AsyncWrite + Send + Unpin>, HeaderEncoder)>,
    state: Mutex<Windows>,
    /// Window grants and resets.
    changed: Notify,
    /// The peer keeps flow control windows (it sent WINDOW_UPDATE or SETTINGS).
    peer_flow_control: AtomicBool,
    next_id: AtomicU32,
    next_ping: AtomicU32,
    pings: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    went_away: AtomicBool,
    /// The last stream the peer opened that was accepted.
    last_peer_id: AtomicU32,
    closed: CancellationToken,
    last_activity: Mutex<Instant>,
    /// [`CONNECTION_BUFFER_BYTES`] as permits, one per byte held for readers.
    buffered: Arc<tokio::sync::Semaphore>,
}

/// One side of a SPDY connection.
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
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
        let mut body = self.id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        self.shared.write_raw(&control(RST_STREAM, 0, &body)).await
    }

    /// Waits for room to send up to `want` bytes; answers how many may go.
    async fn reserve(&self, want: usize) -> std::io::Result<usize> {
        let want = want.min(MAX_DATA);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.state.lock();
                let session = st.session_send;
                let Some(s) = st.streams.get_mut(&self.id) else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "stream closed",
                    ));
                };
                if s.reset || s.finished {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "stream reset or finished",
                    ));
                }
                let enforce = self.shared.peer_flow_control.load(Ordering::SeqCst);
                let room = if enforce {
                    s.send_window.min(session).max(0) as usize
                } else {
                    want
                };
                if room > 0 {
                    let n = want.min(room);
                    s.send_window -= n as i64;
                    st.session_send -= n as i64;
                    return Ok(n);
                }
            }
            if self.shared.closed.is_cancelled() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "connection closed",
                ));
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shared.closed.cancelled() => {}
            }
        }
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
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&(delta as u32).to_be_bytes());
                let _ = shared.write_raw(&control(WINDOW_UPDATE, 0, &body)).await;
            }
        });
    }
}

impl Shared {
    async fn write_raw(&self, frame: &[u8]) -> std::io::Result<()> {
        if self.closed.is_cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "connection closed",
            ));
        }
        let mut w = self.write.lock().await;
        let write = async {
            w.0.write_all(frame).await?;
            w.0.flush().await
        };
        match tokio::time::timeout(super::WRITE_TIMEOUT, write).await {
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
        *self.last_activity.lock() = Instant::now();
        Ok(())
    }

    /// A control frame carrying a compressed header block after `prefix`.
    async fn write_headers(
        &self,
        kind: u16,
        flags: u8,
        prefix: &[u8],
        headers: &Headers,
    ) -> std::io::Result<()> {
        let mut w = self.write.lock().await;
        let mut body = prefix.to_vec();
        body.extend_from_slice(&w.1.encode(headers));
        w.0.write_all(&control(kind, flags, &body)).await?;
        w.0.flush().await?;
        *self.last_activity.lock() = Instant::now();
        Ok(())
    }

    /// Drops a stream both sides finished.
    fn forget_if_done(&self, id: u32) {
        let mut st = self.state.lock();
        if st
            .streams
            .get(&id)
            .is_some_and(|s| s.finished && s.tx.is_none())
        {
            st.streams.remove(&id);
        }
    }
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
            write: tokio::sync::Mutex::new((Box::new(w), HeaderEncoder::default())),
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
            if let Err(e) = read_loop(&reader, &mut r, incoming_tx).await {
                tracing::debug!(error = %e, "spdy connection ended with an error");
            }
            reader.closed.cancel();
            // Readers of every stream see the end; waiting pings learn it too.
            reader.state.lock().streams.clear();
            reader.pings.lock().clear();
            reader.changed.notify_waiters();
            let mut w = reader.write.lock().await;
            let _ = w.0.shutdown().await;
        });
        (Conn { shared }, incoming)
    }

    /// Opens a stream with `headers` (`fin`: this side sends nothing) and waits for the
    /// peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, fin: bool) -> std::io::Result<Stream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            // The id is taken under the write lock: SYN_STREAMs leave in increasing ids, which
            // the peer requires, whatever the number of tasks opening streams.
            let mut w = self.shared.write.lock().await;
            if self.shared.closed.is_cancelled() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "connection closed",
                ));
            }
            let id = self.shared.next_id.fetch_add(2, Ordering::SeqCst);
            {
                let mut st = self.shared.state.lock();
                let mut s = StreamState::new(Some(tx), st.initial);
                s.reply = Some(reply_tx);
                s.finished = fin;
                st.streams.insert(id, s);
            }
            // The reader may have ended (and cleared the streams) since the check above.
            if self.shared.closed.is_cancelled() {
                self.shared.state.lock().streams.remove(&id);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "connection closed",
                ));
            }
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&w.1.encode(&headers));
            let flags = if fin { FLAG_FIN } else { 0 };
            w.0.write_all(&control(SYN_STREAM, flags, &body)).await?;
            w.0.flush().await?;
            *self.shared.last_activity.lock() = Instant::now();
            id
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), reply_rx).await;
        if !matches!(answer, Ok(Ok(true))) {
            self.shared.state.lock().streams.remove(&id);
        }
        match answer {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(std::io::Error::other("stream refused (RST_STREAM)")),
            Ok(Err(_)) => return Err(std::io::Error::other("connection closed")),
            Err(_) => return Err(std::io::Error::other("no SYN_REPLY within 30s")),
        }
        Ok(Stream {
            id,
            headers,
            rx,
            writer: StreamWriter {
                id,
                shared: self.shared.clone(),
            },
        })
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&self) -> std::io::Result<Duration> {
        let id = self.shared.next_ping.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.shared.pings.lock().insert(id, tx);
        let start = Instant::now();
        self.shared
            .write_raw(&control(PING, 0, &id.to_be_bytes()))
            .await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), rx).await;
        self.shared.pings.lock().remove(&id);
        answer
            .map_err(|_| std::io::Error::other("no PING reply"))?
            .map_err(|_| std::io::Error::other("connection closed"))?;
        Ok(start.elapsed())
    }

    /// Announces this side's window for new streams (and so that it keeps windows).
    pub async fn settings_initial_window(&self, window: u32) -> std::io::Result<()> {
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        body.extend_from_slice(&window.to_be_bytes());
        self.shared.write_raw(&control(SETTINGS, 0, &body)).await
    }

    /// Sends GOAWAY: the peer opens no more streams; those open go on.
    pub async fn goaway(&self, status: u32) -> std::io::Result<()> {
        let last = self.shared.last_peer_id.load(Ordering::SeqCst);
        let mut body = last.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        self.shared.write_raw(&control(GOAWAY, 0, &body)).await
    }

    /// Closes the connection (GOAWAY, then the socket).
    pub async fn close(&self) {
        let _ = self.goaway(0).await;
        self.shared.closed.cancel();
        self.shared.changed.notify_waiters();
        let mut w = self.shared.write.lock().await;
        let _ = w.0.shutdown().await;
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

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    r: &mut R,
    incoming: mpsc::Sender<Stream>,
) -> std::io::Result<()> {
    let mut decoder = HeaderDecoder::default();
    let mut last_peer_id = 0u32;
    loop {
        let frame = tokio::select! {
            f = read_frame(r) => f?,
            _ = shared.closed.cancelled() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        *shared.last_activity.lock() = Instant::now();
        match frame {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let tx = {
                    let mut st = shared.state.lock();
                    match st.streams.get_mut(&stream) {
                        Some(s) if flags & FLAG_FIN != 0 => (s.tx.take(), true),
                        Some(s) => (s.tx.clone(), false),
                        None => (None, false),
                    }
                };
                match tx {
                    (Some(tx), fin) => {
                        if !data.is_empty() {
                            // The bytes are taken from the connection's budget first (waiting,
                            // not reading on, while readers hold it all); a reader that went
                            // away drops its data; closing ends the waits.
                            let n = data.len().min(CONNECTION_BUFFER_BYTES) as u32;
                            let budget = tokio::select! {
                                p = shared.buffered.clone().acquire_many_owned(n) => match p {
                                    Ok(p) => p,
                                    Err(_) => return Ok(()),
                                },
                                _ = shared.closed.cancelled() => return Ok(()),
                            };
                            tokio::select! {
                                _ = tx.send((data, budget)) => {}
                                _ = shared.closed.cancelled() => return Ok(()),
                            }
                        }
                        if fin {
                            drop(tx);
                            shared.forget_if_done(stream);
                        }
                    }
                    (None, _) => {
                        // Data for an unknown or finished stream: granted back, dropped.
                        let mut st = shared.state.lock();
                        st.session_unacked += data.len() as i64;
                    }
                }
            }
            Frame::Control { kind, flags, body } => match parse_control(kind, &body)? {
                Control::SynStream { id, block } => {
                    let headers = decoder.decode(block)?;
                    let peer_parity = if shared.server { 1 } else { 0 };
                    let refused = id % 2 != peer_parity
                        || id <= last_peer_id
                        || shared.went_away.load(Ordering::SeqCst);
                    if refused {
                        let mut b = id.to_be_bytes().to_vec();
                        b.extend_from_slice(&PROTOCOL_ERROR.to_be_bytes());
                        shared.write_raw(&control(RST_STREAM, 0, &b)).await?;
                        continue;
                    }
                    if shared.state.lock().streams.len() >= MAX_STREAMS {
                        last_peer_id = id;
                        let mut b = id.to_be_bytes().to_vec();
                        b.extend_from_slice(&REFUSED_STREAM.to_be_bytes());
                        shared.write_raw(&control(RST_STREAM, 0, &b)).await?;
                        continue;
                    }
                    last_peer_id = id;
                    shared.last_peer_id.store(id, Ordering::SeqCst);
                    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                    let fin = flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL) != 0;
                    {
                        let mut st = shared.state.lock();
                        let w = st.initial;
                        let mut s = StreamState::new((!fin).then_some(tx), w);
                        s.finished = flags & FLAG_UNIDIRECTIONAL != 0;
                        st.streams.insert(id, s);
                    }
                    shared
                        .write_headers(SYN_REPLY, 0, &id.to_be_bytes(), &Vec::new())
                        .await?;
                    let stream = Stream {
                        id,
                        headers,
                        rx,
                        writer: StreamWriter {
                            id,
                            shared: shared.clone(),
                        },
                    };
                    let taken = tokio::select! {
                        r = incoming.send(stream) => r.is_ok(),
                        _ = shared.closed.cancelled() => return Ok(()),
                    };
                    if !taken {
                        shared.state.lock().streams.remove(&id);
                        // Nobody takes streams any more.
                        let mut b = id.to_be_bytes().to_vec();
                        b.extend_from_slice(&REFUSED_STREAM.to_be_bytes());
                        shared.write_raw(&control(RST_STREAM, 0, &b)).await?;
                    }
                }
                Control::SynReply { id, block } => {
                    decoder.decode(block)?;
                    let mut st = shared.state.lock();
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
                Control::Headers { block, .. } => {
                    // Decoded only to keep the compression context in step.
                    decoder.decode(block)?;
                }
                Control::RstStream { id, .. } => {
                    if let Some(mut s) = shared.state.lock().streams.remove(&id) {
                        s.reset = true;
                        if let Some(r) = s.reply.take() {
                            let _ = r.send(false);
                        }
                    }
                    shared.changed.notify_waiters();
                }
                Control::Settings(entries) => {
                    for (id, value) in entries {
                        let value = value as i64;
                        if id == SETTINGS_INITIAL_WINDOW_SIZE {
                            let mut st = shared.state.lock();
                            let delta = value - st.initial;
                            st.initial = value;
                            for s in st.streams.values_mut() {
                                s.send_window += delta;
                            }
                            shared.peer_flow_control.store(true, Ordering::SeqCst);
                        }
                    }
                    shared.changed.notify_waiters();
                }
                Control::Ping(id) => {
                    let ours = if shared.server { 0 } else { 1 };
                    if id % 2 == ours {
                        if let Some(w) = shared.pings.lock().remove(&id) {
                            let _ = w.send(());
                        }
                    } else {
                        shared.write_raw(&control(PING, 0, &body)).await?;
                    }
                }
                Control::GoAway => {
                    shared.went_away.store(true, Ordering::SeqCst);
                }
                Control::WindowUpdate { id, delta } => {
                    let delta = delta as i64;
                    {
                        let mut st = shared.state.lock();
                        if id == 0 {
                            st.session_send += delta;
                        } else if let Some(s) = st.streams.get_mut(&id) {
                            s.send_window += delta;
                        }
                    }
                    shared.peer_flow_control.store(true, Ordering::SeqCst);
                    shared.changed.notify_waiters();
                }
                Control::Unknown(_) => {}
            },
        }
        // Grants for data nobody reads (unknown streams) go back too.
        let pending = {
            let mut st = shared.state.lock();
            if st.session_unacked >= INITIAL_WINDOW / 2 && shared.server {
                Some(std::mem::take(&mut st.session_unacked))
            } else {
                None
            }
        };
        if let Some(delta) = pending {
            let mut b = 0u32.to_be_bytes().to_vec();
            b.extend_from_slice(&(delta as u32).to_be_bytes());
            shared.write_raw(&control(WINDOW_UPDATE, 0, &b)).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_control_frames_are_protocol_errors_not_stream_0() {
        for kind in [
            RST_STREAM,
            WINDOW_UPDATE,
            SYN_STREAM,
            SYN_REPLY,
            PING,
            SETTINGS,
        ] {
            assert!(parse_control(kind, &[0, 0, 0]).is_err(), "kind {kind}");
        }
        assert!(parse_control(RST_STREAM, &[0, 0, 0, 5, 0, 0, 0]).is_err());
        assert_eq!(
            parse_control(RST_STREAM, &[0, 0, 0, 5, 0, 0, 0, 3]).unwrap(),
            Control::RstStream { id: 5, status: 3 }
        );
        assert_eq!(
            parse_control(WINDOW_UPDATE, &[0x80, 0, 0, 7, 0x80, 1, 0, 0]).unwrap(),
            Control::WindowUpdate {
                id: 7,
                delta: 0x0001_0000
            }
        );
        // A count past the body.
        assert!(parse_control(SETTINGS, &[0, 0, 0, 2, 0, 0, 0, 7, 0, 1, 0, 0]).is_err());
        assert_eq!(
            parse_control(SETTINGS, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0]).unwrap(),
            Control::Settings(vec![(7, 0x0001_0000)])
        );
        assert_eq!(parse_control(42, &[]).unwrap(), Control::Unknown(42));
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_context() {
        let mut enc = HeaderEncoder::default();
        let mut dec = HeaderDecoder::default();
        for i in 0..5 {
            let h: Headers = vec![
                ("streamtype".into(), "stdout".into()),
                ("port".into(), format!("{}", 8000 + i)),
                ("x-multi".into(), "a".into()),
                ("x-multi".into(), "b".into()),
            ];
            let block = enc.encode(&h);
            assert_eq!(dec.decode(&block).unwrap(), h);
        }
    }

    #[test]
    fn header_blocks_past_their_limits_are_refused() {
        // A value of NULs would give one copy of the name per part.
        let mut plain = 1u32.to_be_bytes().to_vec();
        let (name, value) = (vec![b'n'; 1000], vec![0u8; 100_000]);
        for f in [&name, &value] {
            plain.extend_from_slice(&(f.len() as u32).to_be_bytes());
            plain.extend_from_slice(f);
        }
        assert!(parse_block(&plain).is_err());
        assert!(parse_block(&u32::MAX.to_be_bytes()).is_err());
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err(), "truncated");
        // More than the block limit once decompressed.
        let big: Headers = vec![("x".into(), "y".repeat(MAX_HEADER_BLOCK + 1))];
        let block = HeaderEncoder::default().encode(&big);
        assert!(block.len() < 4096);
        assert!(HeaderDecoder::default().decode(&block).is_err());
    }

    #[test]
    fn frames_encode_as_the_draft_says() {
        let f = control(PING, 0, &7u32.to_be_bytes());
        assert_eq!(f, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        let d = data_frame(5, FLAG_FIN, b"hi");
        assert_eq!(d, [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
    }

    /// A raw peer: SYN_STREAM `id` with no headers.
    fn syn(enc: &mut HeaderEncoder, id: u32) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend(enc.encode(&Vec::new()));
        control(SYN_STREAM, 0, &body)
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
                    assert_eq!(be32(&body, 0), last);
                    assert_eq!(be32(&body, 4), REFUSED_STREAM);
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
