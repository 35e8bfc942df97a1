//! An attach session: a running container's output as it prints it, and its stdin.
//!
//! Output of a container whose pipes concord holds (stdin without a TTY) comes from concord's
//! copier as it reads it (`crate::attach`), with or without a log file. Other containers' output
//! comes from their CRI log, followed from its end as the log writer appends to it, rotation
//! (ReopenContainerLog) included; a TTY container without a log path has no output to attach
//! to. Either way the container keeps logging while attached and several sessions see the same
//! output.
//!
//! stdin (a container created with stdin): without a TTY concord holds the stdin FIFO itself
//! (`crate::attach`) and writes to it; with a TTY the session opens the FIFO the shim reads. When
//! the client's stdin ends, a `stdin_once` container's stdin is closed and the session goes on
//! until the container exits; otherwise the session ends (the container's stdin stays open). A
//! `stdin_once` container's stdin is also closed when its first attach session goes away.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cri;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::unix::pipe;

use super::exec::failure;
use super::link::{Input, Link, Out, ERROR, STDERR, STDOUT};
use super::Context;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the log is looked at when nothing new was in it.
const POLL: Duration = Duration::from_millis(25);

/// Runs `req` over `link`.
pub async fn run(ctx: &Arc<Context>, req: cri::AttachRequest, link: Link) -> Result<(), Error> {
    let Link { out, mut input } = link;
    let result = session(ctx, &req, &out, &mut input).await;
    match &result {
        Err(e) => {
            let _ = out
                .send(ERROR, failure(out.protocol, &e.to_string()).as_bytes())
                .await;
        }
        Ok(()) if out.protocol.version >= 4 => {
            let ok = serde_json::json!({"metadata": {}, "status": "Success"}).to_string();
            let _ = out.send(ERROR, ok.as_bytes()).await;
        }
        Ok(()) => {}
    }
    out.close().await;
    result
}

/// Where the session writes the client's stdin.
enum Stdin {
    /// concord's own held FIFO (no TTY).
    Held(Arc<pipe::Sender>),
    /// The TTY's stdin FIFO, opened for this session.
    Fifo(pipe::Sender),
}

impl Stdin {
    async fn write(&self, mut data: &[u8]) -> std::io::Result<()> {
        let s = match self {
            Stdin::Held(s) => s.as_ref(),
            Stdin::Fifo(s) => s,
        };
        while !data.is_empty() {
            s.writable().await?;
            match s.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn running(ctx: &Context, id: &str) -> bool {
    ctx.journal
        .state()
        .containers
        .get(id)
        .is_some_and(|c| c.cri_state() == cri::ContainerState::ContainerRunning)
}

async fn session(
    ctx: &Arc<Context>,
    req: &cri::AttachRequest,
    out: &Arc<Out>,
    input: &mut super::link::In,
) -> Result<(), Error> {
    let id = req.container_id.as_str();
    let rec = ctx
        .journal
        .state()
        .containers
        .get(id)
        .cloned()
        .ok_or_else(|| format!("container {id} is gone"))?;
    if !running(ctx, id) {
        return Err(format!("container {id} is not running").into());
    }
    let (tty, stdin_once) = (rec.config.tty, rec.config.stdin_once);
    let mut stdin = None;
    if req.stdin && rec.config.stdin {
        stdin = if tty {
            let fifo = ctx.layout.container(id).join("stdin");
            Some(Stdin::Fifo(
                pipe::OpenOptions::new()
                    .open_sender(&fifo)
                    .map_err(|e| format!("opening the container's stdin: {e}"))?,
            ))
        } else {
            ctx.attachments.stdin(id).map(Stdin::Held)
        };
    }
    // concord's held FIFO (no TTY) goes, and the shim's copy of stdin closes (Tasks.CloseIO,
    // as containerd's CRI does): the process reads EOF.
    let close_container_stdin = || async {
        if !tty {
            ctx.attachments.close_stdin(id);
        }
        let _ = ctx.containerd.close_stdin(id, "").await;
    };

    // The output source is taken before any input is: what the input makes the container
    // print is after the starting point. A container whose pipes concord holds (stdin, no TTY)
    // is followed as it prints, log file or not; others through their CRI log.
    let mut follow = None;
    let wanted = (req.stdout, req.stderr && !tty);
    let held = (req.stdout || req.stderr)
        .then(|| ctx.attachments.output(id))
        .flatten();
    if let Some(rx) = held {
        follow = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            follow_output(rx, out.clone(), wanted),
        )));
    } else if !rec.log_path.is_empty() && (req.stdout || req.stderr) {
        let path = PathBuf::from(&rec.log_path);
        let at = open_log(&path, true)
            .await
            .map_err(|e| format!("opening the container's log {}: {e}", path.display()))?;
        follow = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            follow_log(ctx.clone(), id.to_string(), path, at, out.clone(), wanted),
        )));
    }
    let exited = async {
        match follow {
            Some(f) => {
                let _ = f.await;
            }
            None => {
                while running(ctx, id) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    tokio::pin!(exited);
    loop {
        tokio::select! {
            _ = &mut exited => return Ok(()),
            i = input.next(ctx.idle_timeout) => match i {
                Input::Stdin(data) => {
                    if let Some(s) = &stdin {
                        // A container that does not read its stdin must not keep the session
                        // from seeing it exit.
                        tokio::select! {
                            r = s.write(&data) => if r.is_err() {
                                stdin = None;
                            },
                            _ = &mut exited => return Ok(()),
                        }
                    }
                }
                Input::StdinEnd if stdin_once && stdin.is_some() => {
                    stdin = None;
                    close_container_stdin().await;
                }
                Input::StdinEnd => {
                    if stdin.is_some() {
                        tracing::debug!(container_id = id, "attach: the client's stdin ended");
                        return Ok(());
                    }
                }
                Input::Resize { width, height } => {
                    if tty {
                        let _ = ctx.containerd.resize_pty(id, "", width, height).await;
                    }
                }
                Input::Gone(why) => {
                    tracing::debug!(container_id = id, why, "attach stream ended");
                    if stdin_once && stdin.take().is_some() {
                        close_container_stdin().await;
                    }
                    return Ok(());
                }
            },
        }
    }
}

/// The log at `path`, its inode and the position reading starts at (its end or start).
async fn open_log(path: &Path, at_end: bool) -> std::io::Result<(tokio::fs::File, u64, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let ino = f.metadata().await?.ino();
    let pos = if at_end {
        f.seek(SeekFrom::End(0)).await?
    } else {
        0
    };
    Ok((f, ino, pos))
}

/// Sends what is appended to the CRI log at `path` after `at`, until the container stopped
/// and the log has no more; `wanted`: stdout, stderr.
async fn follow_log(
    ctx: Arc<Context>,
    id: String,
    path: PathBuf,
    at: (tokio::fs::File, u64, u64),
    out: Arc<Out>,
    wanted: (bool, bool),
) {
    let (stdout, stderr) = wanted;
    let (mut file, mut ino, mut pos) = at;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stopped_seen = false;
    loop {
        let n = file.read(&mut buf).await.unwrap_or(0);
        if n > 0 {
            pos += n as u64;
            pending.extend_from_slice(&buf[..n]);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                if let Some((stream, data)) = parse_entry(&line[..line.len() - 1]) {
                    let (wanted, channel) = if stream == "stderr" {
                        (stderr, STDERR)
                    } else {
                        (stdout, STDOUT)
                    };
                    if wanted && out.send(channel, &data).await.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        // Rotated (a new file under the path) or truncated: read the new one from its start.
        if let Ok(m) = tokio::fs::metadata(&path).await {
            if m.ino() != ino || m.len() < pos {
                if let Ok((f, i, p)) = open_log(&path, false).await {
                    (file, ino, pos) = (f, i, p);
                    pending.clear();
                    continue;
                }
            }
        }
        if stopped_seen {
            return;
        }
        if !running(&ctx, &id) {
            // One more look: the writer may still be flushing the last lines.
            stopped_seen = true;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends a held container's output as it prints it, until its pipes close (it exited);
/// `wanted`: stdout, stderr. A session too slow to keep up loses the oldest pieces.
async fn follow_output(
    mut rx: tokio::sync::broadcast::Receiver<crate::attach::Output>,
    out: Arc<Out>,
    wanted: (bool, bool),
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let (stream, data) = match rx.recv().await {
            Ok(piece) => piece,
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(lost = n, "attach: output lost by a slow client");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let (wanted, channel) = if stream == "stderr" {
            (wanted.1, STDERR)
        } else {
            (wanted.0, STDOUT)
        };
        if wanted && out.send(channel, &data).await.is_err() {
            return;
        }
    }
}

/// One CRI log entry (`<time> <stream> <P|F> <content>`): its stream and content, with the
/// newline a full entry ends with.
fn parse_entry(line: &[u8]) -> Option<(&str, Vec<u8>)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let mut data = content.to_vec();
    if !tag.starts_with(b"P") {
        data.push(b'\n');
    }
    Some((stream, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_give_their_stream_and_content() {
        let (s, d) = parse_entry(b"2026-11-27T00:00:00.1Z stdout F hello world").unwrap();
        assert_eq!((s, d.as_slice()), ("stdout", &b"hello world\n"[..]));
        let (s, d) = parse_entry(b"2026-11-27T00:00:00.1Z stderr P part").unwrap();
        assert_eq!((s, d.as_slice()), ("stderr", &b"part"[..]));
        let (_, d) = parse_entry(b"2026-11-27T00:00:00.1Z stdout F").unwrap();
        assert_eq!(d, b"\n");
        assert!(parse_entry(b"garbage").is_none());
    }
}
