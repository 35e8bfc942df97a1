//! Port forwarding over a WebSocket: for the i-th requested port, channel 2i carries data and
//! 2i+1 errors; each channel's first server message is the port (2 bytes, little endian).
//! concord itself connects to `127.0.0.1:<port>` inside the pod's network namespace (a thread
//! enters it, connects, and the socket stays in it): no socat or nsenter.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ws::{self, Opcode, Protocol};
use super::{Context, Sender};

type Error = Box<dyn std::error::Error + Send + Sync>;

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

/// Runs `req` over the upgraded connection `io`; `query` may name the ports (`port=N`) when the
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
    let (r, w) = tokio::io::split(io);
    let tx = Arc::new(Sender::new(w, protocol, ctx.metrics.clone(), "portforward"));
    let mut rx = ws::Reader::new(r);
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
    let netns = netns_of(ctx, &req.pod_sandbox_id)?;
    let mut writers = Vec::new();
    let mut pumps = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, err) = (2 * i as u8, 2 * i as u8 + 1);
        tx.send(data, &port.to_le_bytes()).await?;
        tx.send(err, &port.to_le_bytes()).await?;
        match connect_in(netns.clone(), *port).await {
            Ok(conn) => {
                let (mut cr, cw) = conn.into_split();
                writers.push(Some(cw));
                let tx = tx.clone();
                pumps.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(data, &buf[..n]).await.is_err() {
                                    return;
                                }
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
    loop {
        let msg = match tokio::time::timeout(ctx.idle_timeout, rx.next()).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        match msg.op {
            Opcode::Close => break,
            Opcode::Ping => {
                let _ = tx.control(Opcode::Pong, &msg.data).await;
            }
            Opcode::Text | Opcode::Binary => {
                let Some((channel, data)) = protocol.decode(&msg.data) else {
                    continue;
                };
                if channel % 2 != 0 {
                    continue;
                }
                ctx.metrics
                    .stream_bytes
                    .with_label_values(&["portforward", "in"])
                    .inc_by(data.len() as u64);
                if let Some(Some(w)) = writers.get_mut(channel as usize / 2) {
                    if w.write_all(&data).await.is_err() {
                        writers[channel as usize / 2] = None;
                    }
                }
            }
            _ => {}
        }
    }
    for p in pumps {
        p.abort();
    }
    tx.close().await;
    Ok(())
}
