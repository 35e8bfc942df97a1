//! Port forwarding over a WebSocket: for the i-th requested port, channel 2i carries data and
//! 2i+1 errors; each channel's first server message is the port (2 bytes, little endian).
//! concord itself connects to `127.0.0.1:<port>` inside the pod's network namespace (a thread
//! enters it, connects, and the socket stays in it): no socat or nsenter.

use std::sync::Arc;
use std::time::Duration;

use crate::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy;
use super::ws::Protocol;
use super::{Context, Sender};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long one half of a SPDY stream pair waits for the other (kubelet's stream creation
/// timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to `127.0.0.1:port` in the network namespace at `netns`.
pub async fn connect_in(
    netns: std::path::PathBuf,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || {
        // A thread of its own: it enters the namespace and is never reused by another task.
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let s = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
    })
    .await
    .map_err(std::io::Error::other)??;
    tokio::net::TcpStream::from_std(stream)
}

/// The pod's network namespace file.
fn netns_of(ctx: &Context, sandbox_id: &str) -> Result<std::path::PathBuf, Error> {
    let state = ctx.journal.state();
    let s = state
        .sandboxes
        .get(sandbox_id)
        .filter(|s| s.ready())
        .ok_or_else(|| format!("pod sandbox {sandbox_id} is not ready"))?;
    match (&s.netns_path, s.pid) {
        (Some(p), _) => Ok(p.into()),
        (None, Some(pid)) => Ok(format!("/proc/{pid}/ns/net").into()),
        _ => Err(format!("pod sandbox {sandbox_id} has no network namespace").into()),
    }
}

/// Ports one WebSocket port-forward carries: each takes two channel bytes (2i data, 2i+1
/// errors), and a channel is one byte.
pub const MAX_PORTS: usize = 128;

/// Runs `req` over the upgraded WebSocket connection `io`; `query` may name the ports (`port=N`) when the
/// request does not.
pub async fn run<IO>(
    ctx: &Arc<Context>,
    req: cri::PortForwardRequest,
    protocol: Protocol,
    query: &str,
    io: IO,
) -> Result<(), Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = Sender::split(io, protocol, ctx.metrics.clone(), "portforward");
    let mut ports: Vec<u16> = req
        .port
        .iter()
        .filter_map(|p| u16::try_from(*p).ok())
        .collect();
    if ports.is_empty() {
        ports = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("port="))
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "{} ports; at most {MAX_PORTS} in one port-forward",
            ports.len()
        )
        .into());
    }
    let netns = netns_of(ctx, &req.pod_sandbox_id)?;
    let mut writers = Vec::new();
    let mut pumps = Vec::new();
    // Traffic either way keeps the session: a download the client only reads is not idle.
    let last_activity = Arc::new(parking_lot::Mutex::new(std::time::Instant::now()));
    for (i, port) in ports.iter().enumerate() {
        let (data, err) = (2 * i as u8, 2 * i as u8 + 1);
        tx.send(data, &port.to_le_bytes()).await?;
        tx.send(err, &port.to_le_bytes()).await?;
        match connect_in(netns.clone(), *port).await {
            Ok(conn) => {
                let (mut cr, cw) = conn.into_split();
                writers.push(Some(cw));
                let tx = tx.clone();
                let last_activity = last_activity.clone();
                pumps.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(data, &buf[..n]).await.is_err() {
                                    return;
                                }
                                *last_activity.lock() = std::time::Instant::now();
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                writers.push(None);
                let msg = format!(
                    "error forwarding port {port} to pod {}: {e}",
                    req.pod_sandbox_id
                );
                tx.send(err, msg.as_bytes()).await?;
            }
        }
    }
    'session: loop {
        // One receive future across timer wake-ups: dropping it mid-frame would lose bytes.
        let receive = tx.receive(&mut rx);
        tokio::pin!(receive);
        let (channel, data) = loop {
            let deadline = *last_activity.lock() + ctx.idle_timeout;
            tokio::select! {
                m = &mut receive => match m {
                    Ok(m) => break m,
                    Err(_) => break 'session,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if *last_activity.lock() + ctx.idle_timeout <= std::time::Instant::now() {
                        tracing::debug!(sandbox_id = req.pod_sandbox_id, "port-forward idle timeout");
                        break 'session;
                    }
                }
            }
        };
        *last_activity.lock() = std::time::Instant::now();
        if channel % 2 != 0 {
            continue;
        }
        if let Some(Some(w)) = writers.get_mut(channel as usize / 2) {
            if w.write_all(&data).await.is_err() {
                writers[channel as usize / 2] = None;
            }
        }
    }
    for p in pumps {
        p.abort();
    }
    tx.close().await;
    Ok(())
}

/// Runs `req` over a SPDY connection (`portforward.k8s.io`): for each forwarded connection the
/// client opens an error and a data stream with the same `requestID` and the `port` header.
pub async fn run_spdy(
    ctx: &Arc<Context>,
    req: cri::PortForwardRequest,
    conn: spdy::Conn,
    mut incoming: tokio::sync::mpsc::Receiver<spdy::Stream>,
) -> Result<(), Error> {
    let netns = match netns_of(ctx, &req.pod_sandbox_id) {
        Ok(n) => n,
        Err(e) => {
            conn.close().await;
            return Err(e);
        }
    };
    // Streams waiting for their other half, by request id, since when.
    type Half = Option<spdy::Stream>;
    let mut pairs: std::collections::HashMap<String, (Half, Half, std::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        let deadline = conn.last_activity() + ctx.idle_timeout;
        let stream = tokio::select! {
            s = incoming.recv() => s,
            _ = tokio::time::sleep_until(deadline.into()) => {
                if conn.last_activity() + ctx.idle_timeout <= std::time::Instant::now() {
                    tracing::debug!(sandbox_id = req.pod_sandbox_id, "port-forward idle timeout");
                    break;
                }
                continue;
            }
        };
        let Some(stream) = stream else { break };
        // A half whose other half did not come within the stream creation timeout is reset
        // (kubelet's rule), so an unpaired stream holds nothing for long.
        let now = std::time::Instant::now();
        let stale: Vec<String> = pairs
            .iter()
            .filter(|(_, (_, _, since))| now.duration_since(*since) > PAIR_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some((e, d, _)) = pairs.remove(&k) {
                for s in [e, d].into_iter().flatten() {
                    let _ = s.writer().reset(spdy::CANCEL).await;
                }
            }
        }
        let kind = stream.header("streamtype").unwrap_or("").to_string();
        if kind != "error" && kind != "data" {
            tracing::debug!(stream_type = kind, "unexpected port-forward stream refused");
            let _ = stream.writer().reset(spdy::REFUSED_STREAM).await;
            continue;
        }
        // Clients from before requestID pair an error stream with the data stream opened next.
        let request_id = match stream.header("requestid") {
            Some(r) => r.to_string(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let entry = pairs.entry(request_id.clone()).or_insert((None, None, now));
        let slot = if kind == "error" {
            &mut entry.0
        } else {
            &mut entry.1
        };
        if let Some(old) = slot.replace(stream) {
            // A second stream of the same kind and request: the first is refused.
            let _ = old.writer().reset(spdy::PROTOCOL_ERROR).await;
        }
        if !matches!(pairs.get(&request_id), Some((Some(_), Some(_), _))) {
            continue;
        }
        if let Some((Some(err), Some(data), _)) = pairs.remove(&request_id) {
            tokio::spawn(forward(
                ctx.clone(),
                netns.clone(),
                req.pod_sandbox_id.clone(),
                err,
                data,
            ));
        }
    }
    conn.close().await;
    Ok(())
}

/// One forwarded connection: the data stream to and from `127.0.0.1:<port>` in the pod, a
/// failure on the error stream.
async fn forward(
    ctx: Arc<Context>,
    netns: std::path::PathBuf,
    sandbox_id: String,
    err: spdy::Stream,
    mut data: spdy::Stream,
) {
    let (err_w, data_w) = (err.writer(), data.writer());
    let port = match data.header("port").map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        other => {
            let msg = format!("invalid port header {other:?}: a port-forward data stream needs a port between 1 and 65535");
            let _ = err_w.write(msg.as_bytes()).await;
            let _ = err_w.finish().await;
            let _ = data_w.finish().await;
            return;
        }
    };
    let conn = match connect_in(netns, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
            let _ = err_w.write(msg.as_bytes()).await;
            let _ = err_w.finish().await;
            let _ = data_w.finish().await;
            return;
        }
    };
    let (mut cr, mut cw) = conn.into_split();
    let bytes = |dir: &str| {
        ctx.metrics
            .stream_bytes
            .with_label_values(&["portforward", dir])
    };
    let (bytes_in, bytes_out) = (bytes("in"), bytes("out"));
    let up = async {
        while let Some(d) = data.read().await {
            bytes_in.inc_by(d.len() as u64);
            if cw.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes_out.inc_by(n as u64);
                    if data_w.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = data_w.finish().await;
    };
    // The pod closing its side ends the forward (as kubelet and containerd do); the client
    // ending its side only half-closes the connection to the pod.
    tokio::pin!(up);
    tokio::pin!(down);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut up => down.await,
    }
    let _ = err_w.finish().await;
    drop(err);
}
