//! ExecSync: a command run in a running container, its stdout and stderr captured (bounded)
//! and its exit code answered. The shim writes each stream into a FIFO under the container's
//! state dir that concord reads until the process closes it. On timeout the process is killed
//! and the call answers DeadlineExceeded, as kubelet expects. The process itself is
//! [`crate::exec`]'s, as the streaming Exec's is.

use std::time::Duration;

use crate::cri;
use tokio::net::unix::pipe;

use super::{ApiError, Server};
use crate::exec::{Command, Exec, ExecError};

/// Output kept per stream (kubelet caps exec output at 16 MiB as well).
const MAX_OUTPUT: u64 = 16 << 20;

impl Server {
    pub async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(ApiError::invalid("cmd", "required"));
        }
        if req.timeout < 0 {
            return Err(ApiError::invalid("timeout", "must not be negative"));
        }
        if state.containers[&id].cri_state() != cri::ContainerState::ContainerRunning {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let exec_id = format!("exec-{:016x}", fastrand::u64(..));
        // A call dropped half-way (kubelet went away, its deadline passed) must not leave the
        // process running or its FIFOs behind: the exec ends both unless the call finishes.
        let mut exec = Exec::new(&self.containerd, &self.config.layout(), &id, &exec_id);
        let command = Command {
            cmd: &req.cmd,
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let stdio = match exec.start(&command).await {
            Ok(stdio) => stdio,
            Err(e) => {
                exec.finish().await;
                return Err(start_error(&id, e));
            }
        };
        // The output is read while the command runs; once it exited, what is left in the
        // pipes is read for a moment more (a process that leaked the pipes to a child that
        // lives on does not hold the call).
        let out_task = stdio.stdout.map(|rx| tokio::spawn(capture(rx)));
        let err_task = stdio.stderr.map(|rx| tokio::spawn(capture(rx)));
        let limit = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let result = exec.wait_within(limit).await;
        exec.finish().await;
        let (stdout, stderr) = (collect(out_task).await, collect(err_task).await);
        let Some(code) = result? else {
            return Err(ApiError::DeadlineExceeded(format!(
                "command {:?} in container {id} timed out after {}s",
                req.cmd, req.timeout
            )));
        };
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: code as i32,
        })
    }
}

/// ExecSync's answer when the process could not start.
fn start_error(id: &str, e: ExecError) -> ApiError {
    match e {
        ExecError::NoProcessSpec => {
            ApiError::FailedPrecondition(format!("container {id} has no process spec"))
        }
        ExecError::StateDir(_) | ExecError::Fifo(_) => ApiError::FailedPrecondition(e.to_string()),
        ExecError::Containerd(e) => e.into(),
    }
}

/// Up to [`MAX_OUTPUT`] of `rx`, the rest drained so the process never blocks on a full pipe.
async fn capture(mut rx: pipe::Receiver) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let _ = (&mut rx).take(MAX_OUTPUT).read_to_end(&mut buf).await;
    let _ = tokio::io::copy(&mut rx, &mut tokio::io::sink()).await;
    buf
}

/// What a capture read, given two seconds more once the process exited.
async fn collect(task: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut t) = task else {
        return Vec::new();
    };
    let out = match tokio::time::timeout(Duration::from_secs(2), &mut t).await {
        Ok(Ok(b)) => b,
        _ => Vec::new(),
    };
    t.abort();
    out
}
