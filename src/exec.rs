//! An exec process in a running container, one way for ExecSync and the streaming Exec: the
//! container's process spec with the command, FIFOs under the container's state dir for the
//! stdio concord holds, the process created and started in containerd, waited for (killed on
//! a timeout or when its client goes away), deleted with its FIFOs.
//!
//! What differs between the two stays with the caller: ExecSync captures the output (bounded)
//! and has a timeout; the streaming Exec pumps stdio over the client's streams and is bounded by
//! its client.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::unix::pipe;

use crate::containerd::{Containerd, ContainerdError, TaskIo};
use crate::state_layout::StateLayout;

/// How long a killed process has to exit before concord stops waiting for it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Why an exec process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container's spec has no process to derive the exec's from.
    #[error("the container has no process spec")]
    NoProcessSpec,
    /// The exec's state dir could not be made.
    #[error("exec state dir: {0}")]
    StateDir(#[source] std::io::Error),
    /// A stdio FIFO could not be made or opened.
    #[error("exec fifo: {0}")]
    Fifo(#[source] std::io::Error),
    /// containerd refused a call.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

/// What runs and which of its stdio concord holds.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub cmd: &'a [String],
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    /// Ignored with a terminal (its output is all on stdout).
    pub stderr: bool,
}

/// concord's ends of the process's FIFOs, opened before the shim opens the others.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// One exec process of a container. [`Exec::finish`] deletes it and its FIFOs; dropped before
/// (its caller went away half-way), it is killed and deleted in the background, so that no
/// process runs on nor FIFOs stay behind.
pub struct Exec {
    ctd: Containerd,
    id: String,
    exec_id: String,
    dir: PathBuf,
    /// containerd was asked to create the process.
    created: bool,
    finished: bool,
}

fn fifo(path: &std::path::Path) -> Result<(), ExecError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| ExecError::Fifo(e.into()))
}

impl Exec {
    /// Exec `exec_id` in container `id`; nothing is made until [`Exec::start`].
    pub fn new(ctd: &Containerd, layout: &StateLayout, id: &str, exec_id: &str) -> Exec {
        Exec {
            ctd: ctd.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            dir: layout.exec(id, exec_id),
            created: false,
            finished: false,
        }
    }

    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// Makes the FIFOs `command` asks for and starts the process.
    pub async fn start(&mut self, command: &Command<'_>) -> Result<Stdio, ExecError> {
        let mut process = self
            .ctd
            .container_spec(&self.id)
            .await?
            .and_then(|s| s.process().clone())
            .ok_or(ExecError::NoProcessSpec)?;
        process
            .set_args(Some(command.cmd.to_vec()))
            .set_terminal(Some(command.tty));
        std::fs::create_dir_all(&self.dir).map_err(ExecError::StateDir)?;
        let (io, stdio) = self.fifos(command)?;
        self.created = true;
        self.ctd
            .exec(&self.id, &self.exec_id, &process, &io)
            .await?;
        Ok(stdio)
    }

    /// The FIFOs, concord's ends open: the read ends (non-blocking) before the shim opens the
    /// write ends, so EOF comes only once the process closed them; stdin held read-write so
    /// that its open does not wait for the shim.
    fn fifos(&self, command: &Command<'_>) -> Result<(TaskIo, Stdio), ExecError> {
        let mut io = TaskIo {
            terminal: command.tty,
            ..Default::default()
        };
        let mut stdio = Stdio::default();
        if command.stdin {
            let p = self.dir.join("stdin");
            fifo(&p)?;
            let open = pipe::OpenOptions::new().read_write(true).open_sender(&p);
            stdio.stdin = Some(open.map_err(ExecError::Fifo)?);
            io.stdin = p.display().to_string();
        }
        let outputs = [
            (command.stdout, "stdout", &mut io.stdout, &mut stdio.stdout),
            (
                command.stderr && !command.tty,
                "stderr",
                &mut io.stderr,
                &mut stdio.stderr,
            ),
        ];
        for (wanted, name, path, receiver) in outputs {
            if !wanted {
                continue;
            }
            let p = self.dir.join(name);
            fifo(&p)?;
            let open = pipe::OpenOptions::new().open_receiver(&p);
            *receiver = Some(open.map_err(ExecError::Fifo)?);
            *path = p.display().to_string();
        }
        Ok((io, stdio))
    }

    /// The process's exit code.
    pub async fn wait(&self) -> Result<u32, ContainerdError> {
        self.ctd.wait_process(&self.id, &self.exec_id).await
    }

    /// The exit code, or None when `limit` passed first: the process was killed then.
    pub async fn wait_within(
        &self,
        limit: Option<Duration>,
    ) -> Result<Option<u32>, ContainerdError> {
        let Some(limit) = limit else {
            return self.wait().await.map(Some);
        };
        match tokio::time::timeout(limit, self.wait()).await {
            Ok(code) => code.map(Some),
            Err(_) => {
                self.kill().await?;
                Ok(None)
            }
        }
    }

    /// Kills the process and gives it a moment to exit.
    pub async fn kill(&self) -> Result<(), ContainerdError> {
        self.ctd.kill_process(&self.id, &self.exec_id).await?;
        let _ = tokio::time::timeout(KILL_GRACE, self.wait()).await;
        Ok(())
    }

    /// Ends the process's stdin: it reads EOF.
    pub async fn close_stdin(&self) -> Result<(), ContainerdError> {
        self.ctd.close_stdin(&self.id, &self.exec_id).await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), ContainerdError> {
        self.ctd
            .resize_pty(&self.id, &self.exec_id, width, height)
            .await
    }

    /// Deletes the process (it has exited or was killed) and its FIFOs.
    pub async fn finish(mut self) {
        self.finished = true;
        if self.created {
            let _ = self.ctd.delete_process(&self.id, &self.exec_id).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (ctd, id, exec_id, dir) = (
            self.ctd.clone(),
            self.id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        );
        let created = self.created;
        tracing::debug!(container_id = %id, exec_id = %exec_id, "exec dropped: ending its process");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if created {
                    let _ = ctd.kill_process(&id, &exec_id).await;
                    let _ = tokio::time::timeout(KILL_GRACE, ctd.wait_process(&id, &exec_id)).await;
                    let _ = ctd.delete_process(&id, &exec_id).await;
                }
                let _ = std::fs::remove_dir_all(&dir);
            });
        }
    }
}
