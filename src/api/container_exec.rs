//! ExecSync: a command run in a running container, its stdout and stderr captured (bounded)
//! and its exit code answered. The shim writes each stream into a FIFO under the container's
//! state dir that concord reads until the process closes it. On timeout the process is killed
//! and the call answers DeadlineExceeded, as kubelet expects.

use std::time::Duration;

use k8s_cri::v1 as cri;

use super::{ApiError, Runtime};
use crate::containerd::TaskIo;

/// Output kept per stream (kubelet caps exec output at 16 MiB as well).
const MAX_OUTPUT: u64 = 16 << 20;

impl Runtime {
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
        let spec = self.containerd.container_spec(&id).await?;
        let mut process = spec.and_then(|s| s.process().clone()).ok_or_else(|| {
            ApiError::FailedPrecondition(format!("container {id} has no process spec"))
        })?;
        process
            .set_args(Some(req.cmd.clone()))
            .set_terminal(Some(false));
        let exec_id = format!("exec-{:016x}", fastrand::u64(..));
        let dir = self.config.layout().exec(&id, &exec_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::FailedPrecondition(format!("exec state dir: {e}")))?;
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let fifo = |p: &std::path::Path| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| ApiError::FailedPrecondition(format!("exec fifo: {e}")))?;
            // Opened (non-blocking) before the shim opens the write end: EOF comes only once the
            // process closed it.
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| ApiError::FailedPrecondition(format!("exec fifo: {e}")))
        };
        let readers = fifo(&out).and_then(|o| Ok((o, fifo(&err)?)));
        let (out_rx, err_rx) = match readers {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // A call dropped half-way (kubelet went away, its deadline passed) must not leave the
        // process running or its FIFOs behind: the guard ends both unless the call finishes.
        let mut guard = ExecGuard {
            ctd: self.containerd.clone(),
            id: id.clone(),
            exec_id: exec_id.clone(),
            dir: dir.clone(),
            armed: true,
        };
        let io = TaskIo {
            stdin: String::new(),
            stdout: out.display().to_string(),
            stderr: err.display().to_string(),
            terminal: false,
        };
        let capture = |rx: tokio::net::unix::pipe::Receiver| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let mut rx = rx;
            let _ = (&mut rx).take(MAX_OUTPUT).read_to_end(&mut buf).await;
            // Drain what is past the limit so the process never blocks on a full pipe.
            let _ = tokio::io::copy(&mut rx, &mut tokio::io::sink()).await;
            buf
        };
        let run = async {
            self.containerd.exec(&id, &exec_id, &process, &io).await?;
            let wait = self.containerd.wait_process(&id, &exec_id);
            let code = if req.timeout > 0 {
                match tokio::time::timeout(Duration::from_secs(req.timeout as u64), wait).await {
                    Ok(code) => code?,
                    Err(_) => {
                        self.containerd.kill_process(&id, &exec_id).await?;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            self.containerd.wait_process(&id, &exec_id),
                        )
                        .await;
                        return Err(ApiError::DeadlineExceeded(format!(
                            "command {:?} in container {id} timed out after {}s",
                            req.cmd, req.timeout
                        )));
                    }
                }
            } else {
                wait.await?
            };
            Ok(code)
        };
        // The output is read while the command runs; once it exited, what is left in the
        // pipes is read for a moment more (a process that leaked the pipes to a child that
        // lives on does not hold the call).
        let out_task = tokio::spawn(capture(out_rx));
        let err_task = tokio::spawn(capture(err_rx));
        let result = run.await;
        let _ = self.containerd.delete_process(&id, &exec_id).await;
        let collect = |mut t: tokio::task::JoinHandle<Vec<u8>>| async move {
            let out = match tokio::time::timeout(Duration::from_secs(2), &mut t).await {
                Ok(Ok(b)) => b,
                _ => Vec::new(),
            };
            t.abort();
            out
        };
        let (stdout, stderr) = (collect(out_task).await, collect(err_task).await);
        let _ = std::fs::remove_dir_all(&dir);
        guard.armed = false;
        let code = result?;
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: code as i32,
        })
    }
}

/// Ends an ExecSync's process and removes its FIFOs when the call is dropped before it did.
struct ExecGuard {
    ctd: crate::containerd::Containerd,
    id: String,
    exec_id: String,
    dir: std::path::PathBuf,
    armed: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (ctd, id, exec_id, dir) = (
            self.ctd.clone(),
            self.id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        );
        tracing::debug!(container_id = %id, exec_id = %exec_id, "ExecSync dropped: ending its process");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = ctd.kill_process(&id, &exec_id).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), ctd.wait_process(&id, &exec_id))
                        .await;
                let _ = ctd.delete_process(&id, &exec_id).await;
                let _ = std::fs::remove_dir_all(&dir);
            });
        }
    }
}
