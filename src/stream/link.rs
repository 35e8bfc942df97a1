//! What an exec or attach session sees of its client, whichever protocol carries it: the
//! client's input (stdin, its end, terminal sizes, the client going away) and an output with
//! the channels stdout, stderr and error.
//!
//! Over WebSocket each message names its channel in its first byte; over SPDY each channel is
//! a stream the client opened, named by its `streamType` header.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::spdy::{self, StreamWriter};
use super::ws::{Protocol, CLOSE_SIGNAL};
use super::Sender;
use crate::metrics::Metrics;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// How long a SPDY client has to open the streams its request needs (kubelet's figure).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the client sent.
#[derive(Debug)]
pub enum Input {
    Stdin(Vec<u8>),
    /// The client's stdin ended.
    StdinEnd,
    Resize {
        width: u32,
        height: u32,
    },
    /// The client went away or closed the session.
    Gone(&'static str),
}

/// The session's output.
pub enum Output {
    Ws(Arc<Sender<super::BoxWrite>>),
    Spdy {
        conn: spdy::Conn,
        streams: Arc<Mutex<HashMap<u8, StreamWriter>>>,
        metrics: Arc<Metrics>,
        kind: &'static str,
    },
}

/// A session's link to its client: output shared by its pumps, input for its loop.
pub struct Link {
    pub out: Arc<Out>,
    pub input: In,
}

/// The sending side.
pub struct Out {
    output: Output,
    pub protocol: Protocol,
    /// When anything last went either way.
    activity: Arc<Mutex<Instant>>,
}

/// The receiving side.
pub struct In {
    rx: mpsc::Receiver<Queued>,
    activity: Arc<Mutex<Instant>>,
}

/// Bytes of stdin one session holds that the process has not taken yet; past this the client
/// is not read until it does (a client pushing gigabytes into `exec -i sleep` holds this much).
pub const SESSION_INPUT_BYTES: usize = 8 << 20;

/// Input with its share of the session's stdin budget, released once taken.
type Queued = (Input, Option<tokio::sync::OwnedSemaphorePermit>);

/// The sending side of a session's input queue: stdin is held to [`SESSION_INPUT_BYTES`].
#[derive(Clone)]
struct InputTx {
    tx: mpsc::Sender<Queued>,
    budget: Arc<tokio::sync::Semaphore>,
}

impl InputTx {
    fn channel() -> (InputTx, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(64);
        let budget = Arc::new(tokio::sync::Semaphore::new(SESSION_INPUT_BYTES));
        (InputTx { tx, budget }, rx)
    }

    /// Queues `input`; stdin waits for its bytes' share of the budget. Err: the session ended.
    async fn send(&self, input: Input) -> Result<(), ()> {
        let permit = match &input {
            Input::Stdin(d) => {
                let n = d.len().clamp(1, SESSION_INPUT_BYTES) as u32;
                Some(
                    self.budget
                        .clone()
                        .acquire_many_owned(n)
                        .await
                        .map_err(|_| ())?,
                )
            }
            _ => None,
        };
        self.tx.send((input, permit)).await.map_err(|_| ())
    }
}

impl Link {
    fn new(output: Output, rx: mpsc::Receiver<Queued>, protocol: Protocol) -> Link {
        let activity = Arc::new(Mutex::new(Instant::now()));
        Link {
            out: Arc::new(Out {
                output,
                protocol,
                activity: activity.clone(),
            }),
            input: In { rx, activity },
        }
    }
}

impl Out {
    /// `data` on `channel` (a channel the client did not open drops it).
    pub async fn send(&self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        *self.activity.lock() = Instant::now();
        match &self.output {
            Output::Ws(tx) => tx.send(channel, data).await,
            Output::Spdy {
                streams,
                metrics,
                kind,
                ..
            } => {
                let w = streams.lock().get(&channel).cloned();
                match w {
                    Some(w) => {
                        metrics
                            .stream_bytes
                            .with_label_values(&[kind, "out"])
                            .inc_by(data.len() as u64);
                        w.write(data).await
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// Ends the session: every output channel ends, then the connection.
    pub async fn close(&self) {
        match &self.output {
            Output::Ws(tx) => tx.close().await,
            Output::Spdy { conn, streams, .. } => {
                let writers: Vec<_> = streams.lock().values().cloned().collect();
                for w in writers {
                    let _ = w.finish().await;
                }
                let _ = conn.goaway(0).await;
                // The client closes once it read every stream to its end.
                let closed = conn.closed();
                let _ = tokio::time::timeout(Duration::from_secs(2), closed.cancelled()).await;
                conn.close().await;
            }
        }
    }
}

impl In {
    /// The next input; `Gone("idle timeout")` when nothing went either way for `idle`.
    pub async fn next(&mut self, idle: Duration) -> Input {
        loop {
            let deadline = *self.activity.lock() + idle;
            tokio::select! {
                i = self.rx.recv() => {
                    *self.activity.lock() = Instant::now();
                    // The budget share goes with the queue entry: the session holds the data now.
                    return i.map(|(input, _)| input).unwrap_or(Input::Gone("client went away"));
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if *self.activity.lock() + idle <= Instant::now() {
                        return Input::Gone("idle timeout");
                    }
                }
            }
        }
    }
}

fn resize(data: &[u8]) -> Option<Input> {
    let size: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some(size_of(&size))
}

/// A terminal size, {"Width":..,"Height":..} (a missing dimension is 0).
fn size_of(size: &serde_json::Value) -> Input {
    let dim = |k: &str| size[k].as_u64().unwrap_or(0) as u32;
    Input::Resize {
        width: dim("Width"),
        height: dim("Height"),
    }
}

/// A WebSocket session over `io` speaking `protocol`.
pub fn ws<IO>(io: IO, protocol: Protocol, metrics: Arc<Metrics>, kind: &'static str) -> Link
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = Sender::split(io, protocol, metrics, kind);
    let (input_tx, input) = InputTx::channel();
    let sender = tx.clone();
    tokio::spawn(async move {
        let why = loop {
            let (channel, data) = match sender.receive(&mut rx).await {
                Ok(m) => m,
                Err(why) => break why,
            };
            let input = match channel {
                STDIN => Input::Stdin(data),
                CLOSE_SIGNAL if data.first() == Some(&STDIN) => Input::StdinEnd,
                RESIZE => match resize(&data) {
                    Some(r) => r,
                    None => continue,
                },
                _ => continue,
            };
            if input_tx.send(input).await.is_err() {
                return;
            }
        };
        let _ = input_tx.send(Input::Gone(why)).await;
    });
    Link::new(Output::Ws(tx), input, protocol)
}

/// Which streams a remote-command request needs.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A SPDY remote-command session: waits until the client opened the error stream and a
/// stream for each of stdin, stdout and stderr the request asked for (a resize stream may
/// come at any time).
pub async fn spdy(
    conn: spdy::Conn,
    incoming: mpsc::Receiver<spdy::Stream>,
    protocol: Protocol,
    wanted: Wanted,
    metrics: Arc<Metrics>,
    kind: &'static str,
) -> Result<Link, Error> {
    let streams: Arc<Mutex<HashMap<u8, StreamWriter>>> = Arc::default();
    let (input_tx, input) = InputTx::channel();
    // Arrivals matter only until the session starts; a client opening streams without end
    // afterwards fills this and is not heard (try_send), instead of growing a queue.
    let (arrived_tx, mut arrived) = mpsc::channel(16);
    let router = Router {
        outputs: streams.clone(),
        arrived: arrived_tx,
        input: input_tx.clone(),
        metrics: metrics.clone(),
        kind,
    };
    tokio::spawn(router.run(incoming));
    let closed = conn.closed();
    tokio::spawn(async move {
        closed.cancelled().await;
        let _ = input_tx.send(Input::Gone("client went away")).await;
    });
    let mut need: Vec<u8> = vec![ERROR];
    if wanted.stdin {
        need.push(STDIN);
    }
    if wanted.stdout {
        need.push(STDOUT);
    }
    if wanted.stderr && !wanted.tty {
        need.push(STDERR);
    }
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !need.is_empty() {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some(c)) => need.retain(|n| *n != c),
            Ok(None) => return Err("the client went away before opening its streams".into()),
            Err(_) => {
                conn.close().await;
                return Err(format!(
                    "timed out waiting for the client to open its streams (missing {need:?})"
                )
                .into());
            }
        }
    }
    Ok(Link::new(
        Output::Spdy {
            conn,
            streams,
            metrics,
            kind,
        },
        input,
        protocol,
    ))
}

/// Where a SPDY session's streams go as the client opens them: output streams to the
/// session's writers, stdin and resizes to its input.
struct Router {
    outputs: Arc<Mutex<HashMap<u8, StreamWriter>>>,
    arrived: mpsc::Sender<u8>,
    input: InputTx,
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Router {
    async fn run(self, mut incoming: mpsc::Receiver<spdy::Stream>) {
        while let Some(mut s) = incoming.recv().await {
            let channel = match s.header("streamtype").unwrap_or("") {
                "error" => ERROR,
                "stdout" => STDOUT,
                "stderr" => STDERR,
                "stdin" => STDIN,
                "resize" => RESIZE,
                other => {
                    tracing::debug!(stream_type = other, "unexpected spdy stream refused");
                    let _ = s.writer().reset(spdy::REFUSED_STREAM).await;
                    continue;
                }
            };
            if matches!(channel, ERROR | STDOUT | STDERR) {
                // Registered before the session can start, so that no output is dropped.
                self.outputs.lock().insert(channel, s.writer());
            }
            let _ = self.arrived.try_send(channel);
            match channel {
                STDIN => {
                    let (tx, m, kind) = (self.input.clone(), self.metrics.clone(), self.kind);
                    tokio::spawn(async move {
                        while let Some(d) = s.read().await {
                            m.stream_bytes
                                .with_label_values(&[kind, "in"])
                                .inc_by(d.len() as u64);
                            if tx.send(Input::Stdin(d)).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(Input::StdinEnd).await;
                    });
                }
                RESIZE => {
                    tokio::spawn(resizes(s, self.input.clone()));
                }
                _ => {
                    // The client's half of an output stream carries nothing; it is drained so
                    // that its end is seen.
                    tokio::spawn(async move { while s.read().await.is_some() {} });
                }
            }
        }
    }
}

/// A resize stream: a sequence of JSON objects, {"Width":..,"Height":..}.
async fn resizes(mut s: spdy::Stream, tx: InputTx) {
    let mut buf = Vec::new();
    while let Some(d) = s.read().await {
        buf.extend_from_slice(&d);
        let mut values =
            serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
        let mut used = 0;
        while let Some(next) = values.next() {
            let v = match next {
                Ok(v) => v,
                // Incomplete: wait for more. Malformed: dropped.
                Err(e) if e.is_eof() => break,
                Err(_) => {
                    used = buf.len();
                    break;
                }
            };
            used = values.byte_offset();
            if tx.send(size_of(&v)).await.is_err() {
                return;
            }
        }
        buf.drain(..used);
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}
