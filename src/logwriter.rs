//! The container log writer: the program containerd's shim runs for a task's stdio
//! (`binary://<concord>?concord-log-writer=1&path=..&pidfile=..&max=..`). The shim hands it the
//! container's stdout and stderr as fds 3 and 4 and waits for fd 5 to close; it then writes
//! every line in the CRI log format (`<RFC3339Nano> <stdout|stderr> <F|P> <content>`) until both
//! streams end. It is a child of the shim, not of concord, so logs keep flowing while concord is
//! down or restarting. SIGUSR1 reopens the file (ReopenContainerLog after kubelet rotated it).
//! With `stdin=<fifo>` (a TTY container with stdin) it also holds that FIFO open for writing
//! as long as it runs, so the container's stdin stays open whether concord runs or not.
//!
//! # Protocol
//! A writer outlives the concord that started it (it is the shim's child), so an upgraded concord
//! meets writers started by an older one, and an older writer's binary may be gone from disk. The
//! contract between the two is versioned by [`PROTOCOL`], the value of the marker key:
//!
//! * **v1** (every concord so far): the arguments are key-value pairs: `concord-log-writer=1`,
//!   `path` (the log file), `pidfile`, `max` (line length before a partial entry), `stdin` (a
//!   FIFO to hold open); the shim passes stdout, stderr and a ready fd as fds 3, 4 and 5. The
//!   writer writes its bare pid to the pid file and removes it at exit; SIGUSR1 reopens the log
//!   file; SIGTERM is ignored (it drains to EOF). concord finds a writer by that pid file and
//!   recognises it by its command line (the marker key and the container id in the pid file path).
//!
//! Rules that keep old and new working together: a writer ignores keys it does not know and runs
//! an invocation of a newer protocol with the keys it knows (logs must keep flowing); a change a
//! writer must understand adds a key and bumps [`PROTOCOL`]; the pid file's content and SIGUSR1
//! stay as they are, since concord must handle writers of every version still running.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The query key that marks a log-writer invocation; its value is the [`PROTOCOL`] version.
pub const MARKER: &str = "concord-log-writer";

/// The log-writer protocol version this concord speaks (see the module docs).
pub const PROTOCOL: u32 = 1;

/// Default longest log line before it is split into partial entries (containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

/// Whether `args` (without the program name) are a log-writer invocation.
pub fn is_invocation(args: &[String]) -> bool {
    protocol(args).is_some()
}

/// The protocol version of a log-writer invocation (a marker without a number is v1); None when
/// `args` are not one.
pub fn protocol(args: &[String]) -> Option<u32> {
    args.chunks(2)
        .find(|kv| kv[0] == MARKER)
        .map(|kv| kv.get(1).and_then(|v| v.parse().ok()).unwrap_or(1))
}

/// What an invocation asks of the writer.
#[derive(Debug, PartialEq)]
pub struct Invocation {
    pub protocol: u32,
    pub path: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub stdin: Option<PathBuf>,
    pub max: usize,
    /// Keys this writer does not know (from a newer concord): ignored.
    pub unknown: Vec<String>,
}

impl Invocation {
    /// Parses the shim's arguments (key value pairs, values query-encoded).
    pub fn parse(args: &[String]) -> Invocation {
        let mut inv = Invocation {
            protocol: protocol(args).unwrap_or(PROTOCOL),
            path: None,
            pidfile: None,
            stdin: None,
            max: MAX_LINE,
            unknown: Vec::new(),
        };
        for kv in args.chunks(2) {
            let v = kv.get(1).map(|v| decode(v)).unwrap_or_default();
            match kv[0].as_str() {
                "path" => inv.path = Some(PathBuf::from(v)),
                "pidfile" => inv.pidfile = Some(PathBuf::from(v)),
                "stdin" => inv.stdin = Some(PathBuf::from(v)),
                "max" => inv.max = v.parse().unwrap_or(inv.max),
                MARKER => {}
                other => inv.unknown.push(other.to_string()),
            }
        }
        inv.max = inv.max.max(64);
        inv
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The log file, reopened on request.
struct Sink {
    path: PathBuf,
    file: File,
}

impl Sink {
    fn open(path: &Path) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // O_NOFOLLOW: a link planted at the log path does not redirect the writes.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
    }

    fn write(&mut self, line: &[u8]) {
        if REOPEN.swap(false, Ordering::SeqCst) {
            match Sink::open(&self.path) {
                Ok(f) => self.file = f,
                Err(e) => eprintln!("concord log writer: reopening {}: {e}", self.path.display()),
            }
        }
        if let Err(e) = self.file.write_all(line) {
            eprintln!("concord log writer: writing {}: {e}", self.path.display());
        }
    }
}

/// One CRI log entry.
pub fn entry(stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let ts = crate::containerd::rfc3339_nano(std::time::SystemTime::now());
    let mut line = Vec::with_capacity(content.len() + 48);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// Copies one stream into the sink as CRI entries.
fn pump(input: File, stream: &'static str, max: usize, sink: Arc<Mutex<Sink>>) {
    let r = BufReader::with_capacity(64 * 1024, input);
    frame(r, stream, max, |line| {
        sink.lock().expect("log sink").write(line)
    });
}

/// Frames `input` as CRI log entries of `stream`, each handed to `emit`: an entry per line
/// (without its newline), a line longer than `max` split into partial entries, the last bytes
/// before EOF a full entry. Stops at EOF or a read error.
pub fn frame(mut r: impl BufRead, stream: &str, max: usize, mut emit: impl FnMut(&[u8])) {
    let mut buf = Vec::new();
    let max = max.max(1);
    loop {
        buf.clear();
        // Read up to a newline, but never more than `max` bytes into one entry.
        let n = match std::io::Read::take(&mut r, max as u64).read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let full = buf.last() == Some(&b'\n');
        let content = if full { &buf[..n - 1] } else { &buf[..n] };
        // Without a newline: partial when the line goes on (max reached), full at EOF.
        let partial = !full && n >= max;
        emit(&entry(stream, partial, content));
    }
}

/// Runs the log writer with the shim's arguments (key value pairs); answers the exit code.
pub fn run(args: &[String]) -> i32 {
    let Invocation {
        protocol,
        path,
        pidfile,
        stdin,
        max,
        unknown,
    } = Invocation::parse(args);
    if protocol > PROTOCOL || !unknown.is_empty() {
        eprintln!(
            "concord log writer: protocol v{protocol} from a newer concord (this writer speaks \
             v{PROTOCOL}); ignoring {unknown:?}"
        );
    }
    let Some(path) = path else {
        eprintln!("concord log writer: no path");
        return 2;
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_usr1),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &action);
        // The shim sends SIGTERM once the streams are closed: drain to EOF instead of dying.
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    let file = match Sink::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("concord log writer: opening {}: {e}", path.display());
            return 1;
        }
    };
    if let Some(p) = &pidfile {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(p, std::process::id().to_string());
    }
    // Read-write: the open never blocks, and the FIFO keeps a writer while we run.
    let _stdin = match stdin.map(|p| OpenOptions::new().read(true).write(true).open(&p)) {
        Some(Err(e)) => {
            eprintln!("concord log writer: opening the stdin fifo: {e}");
            return 1;
        }
        held => held,
    };
    let sink = Arc::new(Mutex::new(Sink { path, file }));
    // SAFETY: the shim passes these descriptors (stdout, stderr, ready) and nothing else owns them.
    let (out, err, ready) = unsafe {
        (
            File::from_raw_fd(3),
            File::from_raw_fd(4),
            File::from_raw_fd(5),
        )
    };
    drop(ready); // tells the shim we are ready
    let threads: Vec<_> = [(out, "stdout"), (err, "stderr")]
        .into_iter()
        .map(|(f, stream)| {
            let sink = sink.clone();
            std::thread::spawn(move || pump(f, stream, max, sink))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_in_the_cri_log_format() {
        let e = String::from_utf8(entry("stdout", false, b"hello")).unwrap();
        let parts: Vec<&str> = e.splitn(4, ' ').collect();
        assert!(parts[0].ends_with('Z') && parts[0].contains('.'), "{e}");
        assert_eq!(&parts[1..], ["stdout", "F", "hello\n"]);
    }

    #[test]
    fn long_lines_split_into_partial_entries_and_eof_ends_a_full_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let src = dir.path().join("in");
        std::fs::write(&src, b"0123456789abcdefghij-tail\nshort\nno-newline").unwrap();
        let sink = Arc::new(Mutex::new(Sink {
            path: path.clone(),
            file: Sink::open(&path).unwrap(),
        }));
        pump(File::open(&src).unwrap(), "stderr", 64, sink);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.splitn(4, ' ').collect();
                (p[2], p[3])
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("F", "0123456789abcdefghij-tail"),
                ("F", "short"),
                ("F", "no-newline")
            ]
        );
        let long = dir.path().join("long");
        std::fs::write(&long, [b'x'; 150]).unwrap();
        let path2 = dir.path().join("d.log");
        let sink = Arc::new(Mutex::new(Sink {
            path: path2.clone(),
            file: Sink::open(&path2).unwrap(),
        }));
        pump(File::open(&long).unwrap(), "stdout", 64, sink);
        let tags: Vec<String> = std::fs::read_to_string(&path2)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').nth(2).unwrap().to_string())
            .collect();
        assert_eq!(tags, ["P", "P", "F"]);
    }

    /// The arguments the shim hands the writer for a URI that concord 0aa31ca (protocol v1)
    /// formed: `binary://<writer>?concord-log-writer=1&path=..&pidfile=..&max=..&stdin=..`.
    fn v1_arguments() -> Vec<String> {
        [
            "concord-log-writer",
            "1",
            "path",
            "/var/log/pods/ns_p_u/c/0.log",
            "pidfile",
            "/var/lib/concord/containers/abc/log-writer.pid",
            "max",
            "16384",
            "stdin",
            "/var/lib/concord/containers/abc/stdin",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_v1_invocation_parses_as_v1() {
        let inv = Invocation::parse(&v1_arguments());
        assert_eq!(
            inv,
            Invocation {
                protocol: 1,
                path: Some("/var/log/pods/ns_p_u/c/0.log".into()),
                pidfile: Some("/var/lib/concord/containers/abc/log-writer.pid".into()),
                stdin: Some("/var/lib/concord/containers/abc/stdin".into()),
                max: 16384,
                unknown: vec![],
            }
        );
    }

    #[test]
    fn a_newer_invocation_runs_with_the_keys_this_writer_knows() {
        let mut args = v1_arguments();
        args[1] = "7".into();
        args.extend(["rotate".to_string(), "10Mi".to_string()]);
        let inv = Invocation::parse(&args);
        assert_eq!(inv.protocol, 7);
        assert_eq!(inv.unknown, ["rotate"]);
        assert_eq!(inv.path, Invocation::parse(&v1_arguments()).path);
        // A bare marker (no version) is v1; not an invocation at all: None.
        assert_eq!(protocol(&[MARKER.into()]), Some(1));
        assert_eq!(protocol(&["path".into(), "/x".into()]), None);
    }

    #[test]
    fn arguments_are_decoded_pairs() {
        assert!(is_invocation(&[
            "path".into(),
            "/x".into(),
            MARKER.into(),
            "1".into()
        ]));
        assert!(!is_invocation(&["pull".into(), "busybox".into()]));
        assert_eq!(decode("/a%20b%26c"), "/a b&c");
    }
}
