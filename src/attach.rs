//! The stdio of containers whose stdin concord keeps open without a TTY.
//!
//! containerd's shim feeds a process' stdin only from a FIFO, and only in its FIFO mode (its
//! `binary://` log mode gives the process /dev/null). Such a container therefore gets three
//! FIFOs in its state directory: concord holds the stdin FIFO open for writing (the process never
//! sees EOF while concord runs) and copies stdout and stderr into the CRI log itself. After a
//! concord restart the loop attaches again: the shim holds the pipes, so output written while
//! concord was down waits in them and nothing is lost (the process blocks once a pipe is full).
//! stdin is closed by a concord restart, as containerd's own CRI closes it when containerd
//! restarts.
//!
//! Attach sessions read such a container's output from here as it is read from the pipes, so
//! they see it whether or not the container has a log file.
//!
//! TTY containers keep concord's log writer (the shim's console copy supports it) with a stdin
//! FIFO the log writer holds open; see `logwriter`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::broadcast;

use crate::containerd::TaskIo;

/// One attached container.
struct Attached {
    /// The held write end of its stdin FIFO (None once closed).
    stdin: Option<Arc<pipe::Sender>>,
    /// Set by ReopenContainerLog; the pumps reopen the log before their next line.
    reopen: Arc<AtomicBool>,
    /// What the container prints, as it prints it, for attach sessions (whether or not it has
    /// a log file).
    output: broadcast::Sender<Output>,
}

/// A piece of a container's output: its stream ("stdout" or "stderr") and the bytes.
pub type Output = (&'static str, bytes::Bytes);

/// Output pieces an attach session may fall behind by before it loses the oldest.
const OUTPUT_BUFFER: usize = 256;

/// The attached containers by id.
#[derive(Default)]
pub struct Attachments {
    live: Mutex<HashMap<String, Attached>>,
    max_line: usize,
}

/// The FIFOs of container `dir`: stdin, stdout, stderr.
fn fifos(dir: &Path) -> [PathBuf; 3] {
    ["stdin", "stdout", "stderr"].map(|n| dir.join(n))
}

/// The task IO naming the FIFOs of `dir`.
pub fn task_io(dir: &Path) -> TaskIo {
    let [stdin, stdout, stderr] = fifos(dir).map(|p| p.display().to_string());
    TaskIo {
        stdin,
        stdout,
        stderr,
        terminal: false,
    }
}

impl Attachments {
    pub fn new(max_line: usize) -> Arc<Attachments> {
        Arc::new(Attachments {
            live: Mutex::new(HashMap::new()),
            max_line: max_line.max(64),
        })
    }

    /// Whether container `id` is attached now.
    pub fn is_attached(&self, id: &str) -> bool {
        self.live.lock().contains_key(id)
    }

    /// Creates the FIFOs in `dir` when missing, opens their ends (before the shim opens
    /// its own: nothing blocks) and starts copying output to `log_path` ("" discards it).
    /// Attaching an attached container does nothing.
    pub fn attach(self: &Arc<Self>, id: &str, dir: &Path, log_path: &str) -> std::io::Result<()> {
        if self.is_attached(id) {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        for f in fifos(dir) {
            match nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(std::io::Error::from(e)),
            }
        }
        let [stdin, stdout, stderr] = fifos(dir);
        // Read-write: it opens without a reader, and the process never sees EOF.
        let stdin = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&stdin)?;
        let out = pipe::OpenOptions::new().open_receiver(&stdout)?;
        let err = pipe::OpenOptions::new().open_receiver(&stderr)?;
        let reopen = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Mutex::new(LogSink::open(log_path)));
        let (output, _) = broadcast::channel(OUTPUT_BUFFER);
        let pumps = [(out, "stdout"), (err, "stderr")].map(|(rx, stream)| {
            tokio::spawn(pump(
                rx,
                stream,
                self.max_line,
                sink.clone(),
                reopen.clone(),
                output.clone(),
            ))
        });
        self.live.lock().insert(
            id.to_string(),
            Attached {
                stdin: Some(Arc::new(stdin)),
                reopen,
                output,
            },
        );
        // Both streams ended (the process exited and the shim closed them): detach.
        let this = Arc::downgrade(self);
        let id = id.to_string();
        tokio::spawn(async move {
            for p in pumps {
                let _ = p.await;
            }
            if let Some(this) = this.upgrade() {
                this.live.lock().remove(&id);
            }
        });
        Ok(())
    }

    /// Reopens container `id`'s log file before its next line (after kubelet rotated it);
    /// false when it is not attached.
    pub fn reopen(&self, id: &str) -> bool {
        match self.live.lock().get(id) {
            Some(a) => {
                a.reopen.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Container `id`'s output from now on (None: not attached). The receiver sees the channel
    /// closed once both pipes ended (the process exited).
    pub fn output(&self, id: &str) -> Option<broadcast::Receiver<Output>> {
        self.live.lock().get(id).map(|a| a.output.subscribe())
    }

    /// The held stdin of container `id`, to write to (None: not attached, or closed).
    pub fn stdin(&self, id: &str) -> Option<Arc<pipe::Sender>> {
        self.live.lock().get(id).and_then(|a| a.stdin.clone())
    }

    /// Closes container `id`'s stdin: the process reads EOF once no attach session writes.
    pub fn close_stdin(&self, id: &str) {
        if let Some(a) = self.live.lock().get_mut(id) {
            a.stdin = None;
        }
    }

    /// Lets container `id` go: its stdin is closed, its pumps end with the pipes.
    pub fn detach(&self, id: &str) {
        self.live.lock().remove(id);
    }
}

/// The CRI log file of one container (None: discard).
struct LogSink {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl LogSink {
    fn open(path: &str) -> LogSink {
        let path = PathBuf::from(path);
        let file = (!path.as_os_str().is_empty())
            .then(|| {
                open_log(&path)
                    .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot open a container log"))
                    .ok()
            })
            .flatten();
        LogSink { path, file }
    }

    fn write(&mut self, line: &[u8], reopen: &AtomicBool) {
        use std::io::Write;
        if reopen.swap(false, Ordering::SeqCst) {
            match open_log(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen a container log")
                }
            }
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(line) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write a container log");
            }
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // O_NOFOLLOW: a link planted at the log path does not redirect the writes.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

/// Copies one stream, as it arrives, to attach sessions and into the log as CRI entries, as the
/// log writer does: a line per newline, longer ones split into partial entries of `max` bytes.
/// Output without a newline (a prompt, `echo -n`) reaches attach sessions at once; its log entry
/// waits for the line's end (or the stream's).
async fn pump(
    mut rx: pipe::Receiver,
    stream: &'static str,
    max: usize,
    sink: Arc<Mutex<LogSink>>,
    reopen: Arc<AtomicBool>,
    output: broadcast::Sender<Output>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut lines = crate::logwriter::Lines::new(max);
    let write = |partial: bool, content: &[u8]| {
        let line = crate::logwriter::entry(stream, partial, content);
        sink.lock().write(&line, &reopen);
    };
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if output.receiver_count() > 0 {
            let _ = output.send((stream, bytes::Bytes::copy_from_slice(&chunk[..n])));
        }
        lines.push(&chunk[..n], write);
    }
    lines.finish(write);
}
