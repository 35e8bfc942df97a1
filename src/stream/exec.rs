//! An exec session: a process in a running container, its stdio over the channels (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize), the exit status on the error channel, the process
//! killed when the client goes away.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::link::{Input, Link, Out};
pub use super::link::{ERROR, RESIZE, STDERR, STDIN, STDOUT};
use super::ws::Protocol;
use super::Context;
use crate::containerd::TaskIo;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The error channel's message for an exit `code` (None: nothing to send).
pub fn exit_status(protocol: Protocol, cmd: &[String], code: u32) -> Option<String> {
    let failure = format!(
        "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
    );
    if protocol.version >= 4 {
        Some(if code == 0 {
            serde_json::json!({"metadata": {}, "status": "Success"}).to_string()
        } else {
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": failure,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
        })
    } else {
        (code != 0).then_some(failure)
    }
}

/// The error channel's message for a failure before the process ran.
pub fn failure(protocol: Protocol, message: &str) -> String {
    if protocol.version >= 4 {
        serde_json::json!({"metadata": {}, "status": "Failure", "message": message,
            "reason": "InternalError"})
        .to_string()
    } else {
        message.to_string()
    }
}

fn fifo(path: &std::path::Path) -> std::io::Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)
}

/// Runs `req` over `link`.
pub async fn run(ctx: &Arc<Context>, req: cri::ExecRequest, link: Link) -> Result<(), Error> {
    let Link { out, mut input } = link;
    let id = req.container_id.clone();
    let exec_id = format!("stream-{:016x}", fastrand::u64(..));
    let dir = ctx.layout.exec(&id, &exec_id);
    let result = session(ctx, &req, &out, &mut input, &id, &exec_id, &dir).await;
    let _ = ctx.containerd.delete_process(&id, &exec_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = &result {
        let _ = out
            .send(ERROR, failure(out.protocol, &e.to_string()).as_bytes())
            .await;
    }
    out.close().await;
    result
}

/// Copies `receiver` to `channel` until it ends.
pub fn pump(
    mut receiver: pipe::Receiver,
    channel: u8,
    out: Arc<Out>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match receiver.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.send(channel, &buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

async fn session(
    ctx: &Arc<Context>,
    req: &cri::ExecRequest,
    out: &Arc<Out>,
    input: &mut super::link::In,
    id: &str,
    exec_id: &str,
    dir: &std::path::Path,
) -> Result<(), Error> {
    let mut process = ctx
        .containerd
        .container_spec(id)
        .await?
        .and_then(|s| s.process().clone())
        .ok_or("the container has no process spec")?;
    process
        .set_args(Some(req.cmd.clone()))
        .set_terminal(Some(req.tty));
    std::fs::create_dir_all(dir)?;
    let mut io = TaskIo {
        terminal: req.tty,
        ..Default::default()
    };
    // The read ends open before the shim opens the write ends; stdin is held read-write so its
    // open does not wait for the shim.
    let mut stdin = None;
    if req.stdin {
        let p = dir.join("stdin");
        fifo(&p)?;
        stdin = Some(pipe::OpenOptions::new().read_write(true).open_sender(&p)?);
        io.stdin = p.display().to_string();
    }
    let mut outputs = Vec::new();
    for (wanted, name, channel) in [
        (req.stdout, "stdout", STDOUT),
        (req.stderr && !req.tty, "stderr", STDERR),
    ] {
        if !wanted {
            continue;
        }
        let p = dir.join(name);
        fifo(&p)?;
        let receiver = pipe::OpenOptions::new().open_receiver(&p)?;
        if channel == STDOUT {
            io.stdout = p.display().to_string();
        } else {
            io.stderr = p.display().to_string();
        }
        outputs.push((receiver, channel));
    }
    ctx.containerd.exec(id, exec_id, &process, &io).await?;
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(receiver, channel)| pump(receiver, channel, out.clone()))
        .collect();

    let wait = ctx.containerd.wait_process(id, exec_id);
    tokio::pin!(wait);
    let client = async {
        loop {
            match input.next(ctx.idle_timeout).await {
                Input::Gone(why) => return why,
                Input::Stdin(data) => {
                    if let Some(s) = &mut stdin {
                        if s.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // The client's stdin ended: the process reads EOF.
                Input::StdinEnd => {
                    if stdin.take().is_some() {
                        let _ = ctx.containerd.close_stdin(id, exec_id).await;
                    }
                }
                Input::Resize { width, height } => {
                    let _ = ctx.containerd.resize_pty(id, exec_id, width, height).await;
                }
            }
        }
    };
    tokio::select! {
        code = &mut wait => {
            let code = code?;
            // What the process wrote before it exited reaches the client first.
            for p in pumps {
                let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
            }
            if let Some(status) = exit_status(out.protocol, &req.cmd, code) {
                out.send(ERROR, status.as_bytes()).await?;
            }
            Ok(())
        }
        why = client => {
            tracing::debug!(container_id = id, exec_id, why, "exec stream ended; killing the process");
            let _ = ctx.containerd.kill_process(id, exec_id).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut wait).await;
            for p in pumps {
                p.abort();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_on_the_error_channel_by_protocol_version() {
        let v4 = Protocol::parse("v4.channel.k8s.io").unwrap();
        let v1 = Protocol::parse("channel.k8s.io").unwrap();
        let cmd = vec!["false".to_string()];
        let ok: serde_json::Value =
            serde_json::from_str(&exit_status(v4, &cmd, 0).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value =
            serde_json::from_str(&exit_status(v4, &cmd, 7).unwrap()).unwrap();
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "7");
        assert_eq!(exit_status(v1, &cmd, 0), None);
        assert!(exit_status(v1, &cmd, 7).unwrap().contains("exit code 7"));
    }
}
