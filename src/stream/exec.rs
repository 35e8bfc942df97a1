//! An exec session: a process in a running container, its stdio over the channels (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize), the exit status on the error channel, the process
//! killed when the client goes away.

use std::sync::Arc;
use std::time::Duration;

use crate::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::link::{In, Input, Link, Out};
pub use super::link::{ERROR, RESIZE, STDERR, STDIN, STDOUT};
use super::ws::Protocol;
use super::Context;
use crate::exec::{Command, Exec};

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

/// Runs `req` over `link`.
pub async fn run(ctx: &Arc<Context>, req: cri::ExecRequest, link: Link) -> Result<(), Error> {
    let Link { out, mut input } = link;
    let exec_id = format!("stream-{:016x}", fastrand::u64(..));
    let mut exec = Exec::new(&ctx.containerd, &ctx.layout, &req.container_id, &exec_id);
    let result = session(ctx, &req, &out, &mut input, &mut exec).await;
    exec.finish().await;
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
    input: &mut In,
    exec: &mut Exec,
) -> Result<(), Error> {
    let command = Command {
        cmd: &req.cmd,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    };
    let stdio = exec.start(&command).await?;
    let mut stdin = stdio.stdin;
    let pumps: Vec<_> = [(stdio.stdout, STDOUT), (stdio.stderr, STDERR)]
        .into_iter()
        .filter_map(|(receiver, channel)| Some(pump(receiver?, channel, out.clone())))
        .collect();
    let exec = &*exec;
    let wait = exec.wait();
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
                        let _ = exec.close_stdin().await;
                    }
                }
                Input::Resize { width, height } => {
                    let _ = exec.resize(width, height).await;
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
            tracing::debug!(container_id = req.container_id, exec_id = exec.exec_id(), why, "exec stream ended; killing the process");
            let _ = exec.kill().await;
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
